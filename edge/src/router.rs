//! The router: every route the edge answers, which gate guards it, and the layers around all
//! of them. Handlers live with what they serve: checks in [`crate::check`], usage and dead
//! letters in [`crate::usage_api`], OFREP in [`crate::ofrep`], status, readiness and metrics in
//! [`crate::ops`].
//!
//! | routes | gate |
//! |---|---|
//! | `/v1/check`, `/v1/usage`, `/v1/accounts/{id}/entitlements`, `/ofrep/v1/…` | a service token when any is configured ([`auth::service`]) |
//! | `/v1/dead-letter…` | an operator token, always ([`auth::operator`]) |
//! | `/v1/status`, `/healthz`, `/readyz`, `/metrics`, `/openapi.json` | none |
//!
//! Unknown routes and methods answer problem+json; every request body is bounded
//! ([`BoundedBodyLayer`]).

use axum::Router;
use axum::http::StatusCode;
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Tokens;
use crate::gate::{BoundedBodyLayer, GateLayer};
use crate::problem::problem;
use crate::state::EdgeState;
use crate::usage_api;
use crate::{auth, check, ofrep, ops};

/// `GET /healthz` — the process answers.
#[utoipa::path(get, path = "/healthz", tag = "ops",
    responses((status = 200, description = "Alive: `{\"status\": \"ok\"}`.", body = crate::openapi::Alive)))]
pub(crate) async fn healthz() -> axum::Json<serde_json::Value> {
    axum::Json(json!({ "status": "ok" }))
}

/// Every route, registered with its operation (`routes!`: a route has the path of its
/// handler's `#[utoipa::path]`), behind the gate `tokens` decide; what
/// [`crate::openapi::document`] documents.
pub(crate) fn routes(tokens: &Tokens) -> OpenApiRouter<EdgeState> {
    // What product services call: a service token when any is configured.
    let service = OpenApiRouter::new()
        .routes(routes!(check::check, check::check_batch))
        .routes(routes!(usage_api::post_usage))
        .routes(routes!(check::entitlements))
        .routes(routes!(ofrep::evaluate_flag))
        .routes(routes!(ofrep::evaluate_all))
        .route_layer(GateLayer::new({
            let tokens = tokens.clone();
            move |req: &axum::extract::Request| auth::service(&tokens, req.headers())
        }));
    // What operators call: an operator token, always.
    let operator = OpenApiRouter::new()
        .routes(routes!(usage_api::dead_letters))
        .routes(routes!(usage_api::replay_dead_letters))
        .routes(routes!(usage_api::discard_dead_letters))
        .route_layer(GateLayer::new({
            let tokens = tokens.clone();
            move |req: &axum::extract::Request| auth::operator(&tokens, req.headers())
        }));
    OpenApiRouter::new()
        .merge(service)
        .merge(operator)
        .routes(routes!(ops::status))
        .routes(routes!(healthz))
        .routes(routes!(crate::openapi::openapi_json))
        .routes(routes!(ops::readyz))
        .routes(routes!(ops::metrics))
}

/// The edge's whole HTTP surface over `state` (tests drive it with `oneshot`).
pub fn app(state: EdgeState) -> Router {
    let (router, _) = routes(&state.tokens).split_for_parts();
    router
        .fallback(|| async { problem(StatusCode::NOT_FOUND, "route_not_found", "no such route") })
        .method_not_allowed_fallback(|| async {
            problem(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this route",
            )
        })
        // Last, so that it wraps every route and both fallbacks.
        .layer(BoundedBodyLayer)
        .with_state(state)
}

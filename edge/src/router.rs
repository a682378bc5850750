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
use axum::routing::{get, post};
use serde_json::json;

use crate::gate::{BoundedBodyLayer, GateLayer};
use crate::problem::problem;
use crate::state::EdgeState;
use crate::usage_api::{self, dead_letters, discard_dead_letters, replay_dead_letters};
use crate::{auth, check, ofrep, ops};

/// `GET /healthz` — the process answers.
#[utoipa::path(get, path = "/healthz", tag = "ops",
    responses((status = 200, description = "Alive: `{\"status\": \"ok\"}`.", body = crate::openapi::Alive)))]
pub(crate) async fn healthz() -> axum::Json<serde_json::Value> {
    axum::Json(json!({ "status": "ok" }))
}

/// The edge's whole HTTP surface over `state` (tests drive it with `oneshot`).
pub fn app(state: EdgeState) -> Router {
    // What product services call: a service token when any is configured.
    let service = Router::new()
        .route("/v1/check", get(check::check).post(check::check_batch))
        .route("/v1/usage", post(usage_api::post_usage))
        .route("/v1/accounts/{id}/entitlements", get(check::entitlements))
        .route("/ofrep/v1/evaluate/flags/{key}", post(ofrep::evaluate_flag))
        .route("/ofrep/v1/evaluate/flags", post(ofrep::evaluate_all))
        .route_layer(GateLayer::new({
            let tokens = state.tokens.clone();
            move |req: &axum::extract::Request| auth::service(&tokens, req.headers())
        }));
    // What operators call: an operator token, always.
    let operator = Router::new()
        .route("/v1/dead-letter", get(dead_letters))
        .route("/v1/dead-letter/replay", post(replay_dead_letters))
        .route("/v1/dead-letter/discard", post(discard_dead_letters))
        .route_layer(GateLayer::new({
            let tokens = state.tokens.clone();
            move |req: &axum::extract::Request| auth::operator(&tokens, req.headers())
        }));
    Router::new()
        .merge(service)
        .merge(operator)
        .route("/v1/status", get(ops::status))
        .route("/healthz", get(healthz))
        .route(crate::openapi::PATH, get(crate::openapi::openapi_json))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
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

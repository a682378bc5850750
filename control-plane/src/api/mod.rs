//! The routers: `dashboard` (customer API token), `internal` (edge token), `admin` (admin
//! token), `webhooks` (the provider's signature), `dev` (development mode only), `panel` (an
//! agent token) and `panel_web` (the NinjaPanel's web page, a client of `panel`). A router only
//! extracts, calls one service function of a domain and renders; no router runs SQL or calls a
//! payment provider.

pub mod admin;
pub mod dashboard;
pub mod dev;
pub mod extract;
pub mod internal;
pub mod openapi;
pub mod panel;
pub mod panel_web;
mod shapes;
pub mod views;
pub mod webhooks;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{Error, Kind};
use crate::health;
use crate::http::extract::BODY_BYTES_MAX;
use crate::state::AppState;

/// The routes registered together with their operations (`routes!`: a route has the path of
/// its handler's `#[utoipa::path]`): every router but the panel's, which
/// [`openapi`] lists and `tests/openapi.rs` holds to its router.
pub(crate) fn documented(dev_mode: bool, with_simulator: bool) -> OpenApiRouter<AppState> {
    let mut router = OpenApiRouter::new()
        .merge(dashboard::routes())
        .merge(internal::routes())
        .merge(admin::routes())
        .merge(webhooks::routes())
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(openapi::openapi_json));
    if dev_mode {
        router = router.merge(dev::routes(with_simulator));
    }
    router
}

/// Every route of the control plane.
pub fn app(state: AppState) -> Router {
    let (router, _) = documented(state.dev_mode, state.simulator.is_some()).split_for_parts();
    router
        .merge(panel::routes())
        .merge(panel_web::routes())
        .fallback(|| async { Error::new(Kind::NotFound, "route_not_found", "no such route") })
        .method_not_allowed_fallback(|| async {
            Error::new(
                Kind::MethodNotAllowed,
                "method_not_allowed",
                "method not allowed on this route",
            )
        })
        .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
        .with_state(state)
}

/// `GET /healthz` — the process answers.
#[utoipa::path(get, path = "/healthz", tag = "ops",
    responses((status = 200, description = "Alive: `{\"status\": \"ok\"}`.", body = shapes::Alive)))]
async fn healthz() -> impl IntoResponse {
    axum::Json(json!({ "status": "ok" }))
}

/// `GET /readyz` — PostgreSQL (both databases) and Redis answer.
#[utoipa::path(get, path = "/readyz", tag = "ops", responses(
    (status = 200, description = "Ready.", body = health::Readiness),
    (status = 503, description = "Not ready: which dependency is away.", body = health::Readiness),
))]
async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let r = health::readiness(&state).await;
    let status = if r.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(r))
}

/// `GET /metrics` — Prometheus metrics (OpenMetrics text).
#[utoipa::path(get, path = "/metrics", tag = "ops", responses(
    (status = 200, description = "The metrics.", content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8", body = String),
))]
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

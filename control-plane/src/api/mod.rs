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
use axum::routing::get;
use serde_json::json;

use crate::error::{Error, Kind};
use crate::health;
use crate::http::extract::BODY_BYTES_MAX;
use crate::state::AppState;

/// Every route of the control plane.
pub fn app(state: AppState) -> Router {
    let mut router = Router::new()
        .merge(dashboard::routes())
        .merge(internal::routes())
        .merge(admin::routes())
        .merge(panel::routes())
        .merge(panel_web::routes())
        .merge(webhooks::routes())
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route(openapi::PATH, get(openapi::openapi_json));
    if state.dev_mode {
        router = router.merge(dev::routes(state.simulator.is_some()));
    }
    router
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

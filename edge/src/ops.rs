//! The operational endpoints, open to every caller: `GET /v1/status` (what this edge runs,
//! its usage buffer, and — to callers with a token — its recent denials), `GET /readyz` and
//! `GET /metrics` (OpenMetrics text).

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::auth;
use crate::state::EdgeState;

/// `GET /v1/status` — what this edge runs, its usage buffer and dead letters, and (to callers
/// with a service or operator token only: they name accounts) its recent denials.
#[utoipa::path(
    get, path = "/v1/status", tag = "ops",
    security((), ("service" = []), ("operator" = [])),
    responses(
        (status = 200, description = "What this edge runs; its recent denials only to callers with a token.", body = crate::openapi::EdgeStatusView),
    ),
)]
pub(crate) async fn status(
    State(state): State<EdgeState>,
    headers: axum::http::HeaderMap,
) -> Response {
    let caller = state.tokens.caller(&headers);
    let mut body = json!({
        "edge_id": state.edge_id,
        "bundle_version": state.bundle_version(),
        "stale": state.is_stale(),
        "restored_unconfirmed": state.restored_waiting(),
        "stream_positions": state.stream_positions(),
        "cached_accounts": state.cache.entry_count(),
        "usage": state.usage.get().map(|u| u.status()),
    });
    if caller == auth::Caller::Anonymous {
        body["recent_denials"] = json!(null);
        body["recent_denials_hidden"] =
            json!("account ids are shown to callers with a service or operator token");
    } else {
        body["recent_denials"] = json!(state.recent_denials());
    }
    axum::Json(body).into_response()
}

/// `GET /readyz` — ready once a bundle is installed and the usage log works (after a failed
/// fsync it refuses usage until the edge restarts: take it out of rotation, restart it).
#[utoipa::path(
    get, path = "/readyz", tag = "ops",
    responses(
        (status = 200, description = "Ready.", body = crate::openapi::Readiness),
        (status = 503, description = "Not ready: no bundle, or the usage log failed.", body = crate::openapi::Readiness),
    ),
)]
pub(crate) async fn readyz(State(state): State<EdgeState>) -> Response {
    let bundle = state.bundle_version();
    let usage_failed = state.usage.get().is_some_and(|u| u.store_failed());
    let ready = bundle.is_some() && !usage_failed;
    let body = json!({ "ready": ready, "bundle_version": bundle, "usage_store_failed": usage_failed,
                       "stale": state.is_stale(), "edge_id": state.edge_id });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

#[utoipa::path(
    get, path = "/metrics", tag = "ops",
    responses(
        (status = 200, description = "The metrics (OpenMetrics text).", content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8", body = String),
    ),
)]
pub(crate) async fn metrics(State(state): State<EdgeState>) -> Response {
    state
        .metrics
        .cached_accounts
        .set(i64::try_from(state.cache.entry_count()).unwrap_or(i64::MAX));
    state
        .metrics
        .cached_bytes
        .set(i64::try_from(state.cache.estimated_bytes()).unwrap_or(i64::MAX));
    if let Some(usage) = state.usage.get() {
        usage.refresh_gauges();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

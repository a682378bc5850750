//! The internal API edges call (`/internal/v1`, edge token): facts, bundles, fleet status,
//! usage and quota leases. Each handler extracts, calls one service function and renders.

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tollgate_protocol::internal_api::{self, BundleQuery, EdgeStatus};
use tollgate_protocol::usage::{
    AccountUsage, LeaseGrant, LeaseRelease, LeaseRequest, UsageAck, UsageBatch,
};
use tollgate_protocol::{AccountFacts, FactsBatch, FactsRequest};

use super::extract::Edge;
use crate::error::Result;
use crate::http::idempotency::IdempotencyKey;
use crate::http::{Json, Path, Query};
use crate::ids::AccountId;
use crate::rollout::{self, ForEdge};
use crate::state::AppState;
use crate::{devtools, entitlements, usage};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/internal/v1/accounts/{id}/facts", get(facts))
        .route(internal_api::FACTS_BATCH_PATH, post(facts_batch))
        .route(internal_api::BUNDLE_PATH, get(bundle))
        .route("/internal/v1/edges/{edge_id}/status", post(edge_status))
        .route(
            internal_api::USAGE_PATH,
            post(ingest_usage).layer(DefaultBodyLimit::max(usage::BODY_BYTES_MAX)),
        )
        .route(internal_api::LEASE_PATH, post(lease))
        .route(internal_api::LEASE_RELEASE_PATH, post(release))
        .route("/internal/v1/accounts/{id}/usage", get(account_usage))
        .route(internal_api::CLOCK_PATH, get(clock))
}

/// `GET /internal/v1/clock` — edges in development follow its offset.
async fn clock(State(state): State<AppState>, _: Edge) -> axum::Json<internal_api::ClockReading> {
    axum::Json(devtools::clock_reading(&state))
}

/// `GET /internal/v1/accounts/{id}/facts`
async fn facts(
    State(state): State<AppState>,
    _: Edge,
    Path(id): Path<AccountId>,
) -> Result<axum::Json<AccountFacts>> {
    Ok(axum::Json(entitlements::facts_of(&state, id).await?))
}

/// `POST /internal/v1/facts`
async fn facts_batch(
    State(state): State<AppState>,
    _: Edge,
    Json(req): Json<FactsRequest>,
) -> Result<axum::Json<FactsBatch>> {
    let facts = entitlements::facts_of_many(&state, &req.accounts).await?;
    Ok(axum::Json(FactsBatch { facts }))
}

/// `GET /internal/v1/bundle?edge_id=…` — the bundle meant for this edge (ETag / 304).
async fn bundle(
    State(state): State<AppState>,
    _: Edge,
    headers: HeaderMap,
    Query(q): Query<BundleQuery>,
) -> Result<Response> {
    let if_none_match = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok());
    Ok(
        match rollout::bundle_for(&state, &q.edge_id, if_none_match).await? {
            ForEdge::NotModified { etag } => {
                (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response()
            }
            ForEdge::Bundle { bytes, etag } => {
                let mut resp = (StatusCode::OK, bytes).into_response();
                let h = resp.headers_mut();
                h.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                );
                if let Ok(v) = HeaderValue::from_str(&etag) {
                    h.insert(header::ETAG, v);
                }
                resp
            }
        },
    )
}

/// `POST /internal/v1/edges/{edge_id}/status`
async fn edge_status(
    State(state): State<AppState>,
    _: Edge,
    Path(edge_id): Path<String>,
    Json(body): Json<EdgeStatus>,
) -> Result<StatusCode> {
    rollout::report_status(&state, &edge_id, body).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /internal/v1/usage` — a batch an edge flushed; `Idempotency-Key` is its `batch_id`.
async fn ingest_usage(
    State(state): State<AppState>,
    _: Edge,
    IdempotencyKey(key): IdempotencyKey,
    Json(batch): Json<UsageBatch>,
) -> Result<axum::Json<UsageAck>> {
    Ok(axum::Json(
        usage::ingest_batch(&state, key.as_str(), &batch).await?,
    ))
}

/// `POST /internal/v1/leases`
async fn lease(
    State(state): State<AppState>,
    _: Edge,
    Json(req): Json<LeaseRequest>,
) -> Result<axum::Json<LeaseGrant>> {
    Ok(axum::Json(usage::leases::request(&state, &req).await?))
}

/// `POST /internal/v1/leases/release`
async fn release(
    State(state): State<AppState>,
    _: Edge,
    Json(rel): Json<LeaseRelease>,
) -> Result<StatusCode> {
    usage::leases::give_back(&state, &rel).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /internal/v1/accounts/{id}/usage`
async fn account_usage(
    State(state): State<AppState>,
    _: Edge,
    Path(id): Path<AccountId>,
) -> Result<axum::Json<AccountUsage>> {
    Ok(axum::Json(usage::for_edge(&state, id).await?))
}

//! The internal API edges call (`/internal/v1`, edge token): facts, bundles, fleet status,
//! usage and quota leases. Each handler extracts, calls one service function and renders.

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tollgate_protocol::internal_api::{self, BundleQuery, EdgeStatus};
use tollgate_protocol::usage::{
    AccountUsage, LeaseGrant, LeaseRelease, LeaseRequest, UsageAck, UsageBatch,
};
use tollgate_protocol::{AccountFacts, FactsBatch, FactsRequest};
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

use super::extract::Edge;
use super::openapi::IdempotencyHeader;
use crate::error::Result;
use crate::http::idempotency::IdempotencyKey;
use crate::http::{Json, Path, Query};
use crate::ids::AccountId;
use crate::rollout::{self, ForEdge};
use crate::state::AppState;
use crate::{devtools, entitlements, usage};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(facts))
        .routes(routes!(facts_batch))
        .routes(routes!(bundle))
        .routes(routes!(edge_status))
        .routes(routes!(ingest_usage).layer(DefaultBodyLimit::max(usage::BODY_BYTES_MAX)))
        .routes(routes!(lease))
        .routes(routes!(release))
        .routes(routes!(account_usage))
        .routes(routes!(clock))
}

/// `GET /internal/v1/clock` — edges in development follow its offset.
#[utoipa::path(
    get, path = "/internal/v1/clock", tag = "internal",
    security(("edge" = [])),
    responses(
        (status = 200, description = "The control plane's clock.", body = tollgate_protocol::internal_api::ClockReading),
    ),
)]
async fn clock(State(state): State<AppState>, _: Edge) -> axum::Json<internal_api::ClockReading> {
    axum::Json(devtools::clock_reading(&state))
}

/// `GET /internal/v1/accounts/{id}/facts`
#[utoipa::path(
    get, path = "/internal/v1/accounts/{id}/facts", tag = "internal",
    security(("edge" = [])),
    params(("id" = uuid::Uuid, Path, description = "The account's id.")),
    responses(
        (status = 200, description = "The account's facts.", body = AccountFacts),
    ),
)]
async fn facts(
    State(state): State<AppState>,
    _: Edge,
    Path(id): Path<AccountId>,
) -> Result<axum::Json<AccountFacts>> {
    Ok(axum::Json(entitlements::facts_of(&state, id).await?))
}

/// `POST /internal/v1/facts`
#[utoipa::path(
    post, path = "/internal/v1/facts", tag = "internal",
    security(("edge" = [])),
    request_body = FactsRequest,
    responses(
        (status = 200, description = "The facts of the accounts that exist.", body = FactsBatch),
        (status = 413, description = "`batch_too_large`: more than 256 accounts."),
    ),
)]
async fn facts_batch(
    State(state): State<AppState>,
    _: Edge,
    Json(req): Json<FactsRequest>,
) -> Result<axum::Json<FactsBatch>> {
    let facts = entitlements::facts_of_many(&state, &req.accounts).await?;
    Ok(axum::Json(FactsBatch { facts }))
}

/// `GET /internal/v1/bundle?edge_id=…` — the bundle meant for this edge (ETag / 304).
#[utoipa::path(
    get, path = "/internal/v1/bundle", tag = "internal",
    security(("edge" = [])),
    params(BundleQuery, ("If-None-Match" = Option<String>, Header, description = "The ETag of the bundle the edge holds.")),
    responses(
        (status = 200, description = "The signed bundle meant for this edge.", content_type = "application/octet-stream", body = Vec<u8>, headers(("ETag" = String))),
        (status = 304, description = "The edge holds it already."),
        (status = 404, description = "`no_active_bundle`."),
        (status = 422, description = "`invalid_edge_id`."),
    ),
)]
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
#[utoipa::path(
    post, path = "/internal/v1/edges/{edge_id}/status", tag = "internal",
    security(("edge" = [])),
    params(("edge_id" = String, Path, description = "The edge's id.")),
    request_body = EdgeStatus,
    responses(
        (status = 204, description = "Recorded."),
        (status = 422, description = "`invalid_edge_id`."),
    ),
)]
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
#[utoipa::path(
    post, path = "/internal/v1/usage", tag = "internal",
    security(("edge" = [])),
    params(IdempotencyHeader),
    request_body = UsageBatch,
    responses(
        (status = 200, description = "Each event accepted or rejected.", body = UsageAck),
    ),
)]
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
#[utoipa::path(
    post, path = "/internal/v1/leases", tag = "internal",
    security(("edge" = [])),
    request_body = LeaseRequest,
    responses(
        (status = 200, description = "The lease granted (possibly none).", body = LeaseGrant),
        (status = 422, description = "`invalid_lease`."),
    ),
)]
async fn lease(
    State(state): State<AppState>,
    _: Edge,
    Json(req): Json<LeaseRequest>,
) -> Result<axum::Json<LeaseGrant>> {
    Ok(axum::Json(usage::leases::request(&state, &req).await?))
}

/// `POST /internal/v1/leases/release`
#[utoipa::path(
    post, path = "/internal/v1/leases/release", tag = "internal",
    security(("edge" = [])),
    request_body = LeaseRelease,
    responses(
        (status = 204, description = "Given back."),
        (status = 422, description = "`invalid_lease`."),
    ),
)]
async fn release(
    State(state): State<AppState>,
    _: Edge,
    Json(rel): Json<LeaseRelease>,
) -> Result<StatusCode> {
    usage::leases::give_back(&state, &rel).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /internal/v1/accounts/{id}/usage`
#[utoipa::path(
    get, path = "/internal/v1/accounts/{id}/usage", tag = "internal",
    security(("edge" = [])),
    params(("id" = uuid::Uuid, Path, description = "The account's id.")),
    responses(
        (status = 200, description = "The account's current-period aggregates.", body = AccountUsage),
    ),
)]
async fn account_usage(
    State(state): State<AppState>,
    _: Edge,
    Path(id): Path<AccountId>,
) -> Result<axum::Json<AccountUsage>> {
    Ok(axum::Json(usage::for_edge(&state, id).await?))
}

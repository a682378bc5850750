//! The internal API edges use: account facts (bundles and fleet status live in `rollout`).
//! Authenticated with the edge token (`http::auth::require_secret`).

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use tollgate_protocol::{AccountFacts, AccountId};

use crate::entitlements;
use crate::http::{ApiError, ApiResult, Path};
use crate::state::AppState;

/// Proof that the caller presented the edge token.
pub struct EdgeAuth;

impl FromRequestParts<AppState> for EdgeAuth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        crate::http::auth::require_secret(parts, &state.edge_token, "edge token")?;
        Ok(Self)
    }
}

/// `GET /internal/v1/accounts/{id}/facts`
pub async fn facts(
    State(state): State<AppState>,
    _: EdgeAuth,
    Path(id): Path<AccountId>,
) -> ApiResult<axum::Json<AccountFacts>> {
    let mut conn = state.cf.acquire().await?;
    entitlements::stored_facts(&mut conn, id)
        .await?
        .map(axum::Json)
        .ok_or_else(|| {
            ApiError::new(
                axum::http::StatusCode::NOT_FOUND,
                "unknown_account",
                "no such account",
            )
        })
}

/// `POST /internal/v1/facts {"accounts": [...]}` — the facts of up to
/// [`tollgate_protocol::FACTS_BATCH_MAX`] accounts in one query; unknown accounts are absent.
pub async fn facts_batch(
    State(state): State<AppState>,
    _: EdgeAuth,
    crate::http::Json(req): crate::http::Json<tollgate_protocol::FactsRequest>,
) -> ApiResult<axum::Json<tollgate_protocol::FactsBatch>> {
    if req.accounts.len() > tollgate_protocol::FACTS_BATCH_MAX {
        return Err(ApiError::new(
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            "batch_too_large",
            format!(
                "at most {} accounts per request",
                tollgate_protocol::FACTS_BATCH_MAX
            ),
        ));
    }
    let mut conn = state.cf.acquire().await?;
    let facts = entitlements::stored_facts_many(&mut conn, &req.accounts).await?;
    Ok(axum::Json(tollgate_protocol::FactsBatch { facts }))
}

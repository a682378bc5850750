//! The internal API edges use: account facts (bundles and fleet status live in `rollout`).
//! Authenticated with the edge
//! token (constant-time comparison).

use axum::extract::{FromRequestParts, State};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use secrecy::ExposeSecret;
use tollgate_protocol::{AccountFacts, AccountId};

use crate::entitlements;
use crate::http::{ApiError, ApiResult, Path};
use crate::state::AppState;

/// Proof that the caller presented the edge token.
pub struct EdgeAuth;

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl FromRequestParts<AppState> for EdgeAuth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let presented = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                ApiError::unauthorized(
                    "missing_credentials",
                    "send Authorization: Bearer <edge token>",
                )
            })?;
        if constant_time_eq(
            presented.as_bytes(),
            state.edge_token.expose_secret().as_bytes(),
        ) {
            Ok(Self)
        } else {
            Err(ApiError::unauthorized(
                "invalid_token",
                "the edge token is not valid",
            ))
        }
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

#[cfg(test)]
mod tests {
    #[test]
    fn constant_time_eq_compares_content_and_length() {
        assert!(super::constant_time_eq(b"abc", b"abc"));
        assert!(!super::constant_time_eq(b"abc", b"abd"));
        assert!(!super::constant_time_eq(b"abc", b"abcd"));
    }
}

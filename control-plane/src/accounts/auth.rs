//! Bearer-token authentication for the Dashboard: a token sees exactly one account.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use tollgate_protocol::AccountId;

use super::{store, token_hash};
use crate::http::ApiError;
use crate::state::AppState;

/// The account the request's token belongs to.
#[derive(Debug, Clone, Copy)]
pub struct Authed(pub AccountId);

impl FromRequestParts<AppState> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = crate::http::auth::bearer(parts, "api token")?;
        let mut conn = state.cf.acquire().await?;
        match store::account_for_token(&mut conn, &token_hash(token)).await? {
            Some(id) => Ok(Self(id)),
            None => Err(ApiError::unauthorized(
                "invalid_token",
                "the API token is not valid",
            )),
        }
    }
}

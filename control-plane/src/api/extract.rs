//! Who is calling, per router: a customer's API token (Dashboard), the edge token (internal
//! API), a platform engineer's admin token and name (admin API).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use crate::accounts;
use crate::actor::Actor;
use crate::error::Error;
use crate::http::auth::{bearer, require_secret};
use crate::ids::AccountId;
use crate::state::AppState;

/// The account the request's API token belongs to: a token sees exactly one account.
#[derive(Debug, Clone, Copy)]
pub struct Customer(pub AccountId);

impl FromRequestParts<AppState> for Customer {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        let token = bearer(parts, "api token")?;
        accounts::authenticate(state, token).await.map(Self)
    }
}

/// Proof that the caller presented the edge token.
pub struct Edge;

impl FromRequestParts<AppState> for Edge {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        require_secret(parts, &state.edge_token, "edge token")?;
        Ok(Self)
    }
}

pub const ACTOR_HEADER: &str = "tollgate-actor";
pub const ACTOR_BYTES_MAX: usize = 128;

/// An authenticated platform engineer (admin token) and the name they act under.
pub struct Platform(pub Actor);

impl FromRequestParts<AppState> for Platform {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        require_secret(parts, &state.admin_token, "admin token")?;
        let actor = parts
            .headers
            .get(ACTOR_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|a| !a.is_empty() && a.len() <= ACTOR_BYTES_MAX)
            .ok_or_else(|| {
                Error::bad_request(
                    "actor_required",
                    "send Tollgate-Actor: <your name> (1-128 characters)",
                )
            })?;
        Ok(Self(Actor::Platform(actor.to_owned())))
    }
}

/// A support agent (agent token) and its role; each panel route checks the role it needs.
pub struct AgentCaller(pub crate::agents::Agent);

impl FromRequestParts<AppState> for AgentCaller {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        let token = bearer(parts, "agent token")?;
        crate::agents::authenticate(state, token).await.map(Self)
    }
}

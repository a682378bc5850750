//! Support agents of the NinjaPanel: created, listed and revoked by the platform (admin
//! token), each with one [`Role`] and a token of its own (only its SHA-256 is stored).
//!
//! Roles are ordered: a `billing_admin` may do what a `support` agent may, who may do what a
//! `viewer` may. What each panel route requires is declared by the route ([`Role::allows`]).

pub mod store;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::accounts::tokens::token_hash;
use crate::actor::Actor;
use crate::error::{Error, Result};
use crate::ids::AgentId;
use crate::state::AppState;

/// What an agent may do.
#[derive(
    utoipa::ToSchema,
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    sqlx::Type,
)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
#[schema(as = AgentRole)]
pub enum Role {
    /// Reads everything, changes nothing.
    Viewer,
    /// Notes, entitlement overrides, trial extensions, dunning retries, requiring a new payment
    /// method.
    Support,
    /// Credits, refunds, voids, bans and disputes too.
    BillingAdmin,
}

impl Role {
    /// Whether an agent of this role may do what `required` may.
    pub fn allows(self, required: Role) -> bool {
        self >= required
    }
}

/// An agent, as the admin API shows it.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Agent {
    pub id: AgentId,
    pub email: String,
    pub role: Role,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl Agent {
    /// Refuses (403 `forbidden_for_role`) what this agent's role may not do.
    pub fn require(&self, role: Role) -> Result<()> {
        if self.role.allows(role) {
            Ok(())
        } else {
            Err(Error::forbidden(
                "forbidden_for_role",
                format!(
                    "this needs the {} role; the agent is a {}",
                    role.as_str(),
                    self.role.as_str()
                ),
            ))
        }
    }
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Support => "support",
            Self::BillingAdmin => "billing_admin",
        }
    }
}

/// `POST /admin/v1/agents`.
#[derive(utoipa::ToSchema, Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewAgent {
    #[schema(format = Email, max_length = 254)]
    pub email: String,
    pub role: Role,
}

/// A created agent and its token (shown once).
#[derive(utoipa::ToSchema, Debug, Clone, Serialize)]
#[schema(as = AgentCreated)]
pub struct Created {
    pub agent: Agent,
    pub token: String,
}

fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes);
    format!("tga_{}", hex::encode(bytes))
}

/// Creates an agent (409 `agent_exists` while one with the email is live).
pub async fn create(state: &AppState, by: &Actor, input: &NewAgent) -> Result<Created> {
    let email = input.email.trim();
    if !crate::accounts::valid_email(email) || crate::accounts::has_control(email) {
        return Err(Error::unprocessable(
            "invalid_email",
            "an agent's email is an address (3-254 characters, one @)",
        ));
    }
    let token = new_token();
    let mut conn = state.cf.acquire().await?;
    let agent = store::insert(
        &mut conn,
        AgentId::new_v7(),
        email,
        input.role,
        &token_hash(&token),
        &by.name(),
        state.clock.now(),
    )
    .await?
    .ok_or_else(|| Error::conflict("agent_exists", "an agent with this email exists"))?;
    tracing::info!(agent_id = %agent.id, role = agent.role.as_str(), by = %by.name(), "agent created");
    Ok(Created { agent, token })
}

pub async fn list(state: &AppState) -> Result<Vec<Agent>> {
    let mut conn = state.cf.acquire().await?;
    Ok(store::list(&mut conn).await?)
}

/// Revokes an agent: its token stops working at once.
pub async fn revoke(state: &AppState, by: &Actor, id: AgentId) -> Result<Agent> {
    let mut conn = state.cf.acquire().await?;
    let agent = store::revoke(&mut conn, id, state.clock.now())
        .await?
        .ok_or_else(|| Error::not_found("agent"))?;
    tracing::info!(agent_id = %id, by = %by.name(), "agent revoked");
    Ok(agent)
}

/// The live agent a token belongs to (401 otherwise).
pub async fn authenticate(state: &AppState, token: &str) -> Result<Agent> {
    let mut conn = state.cf.acquire().await?;
    store::by_token(&mut conn, &token_hash(token))
        .await?
        .ok_or_else(|| Error::unauthorized("invalid_token", "unknown or revoked agent token"))
}

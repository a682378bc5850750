//! SQL of agents (cf `agents`).

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use super::{Agent, Role};
use crate::ids::AgentId;

const COLUMNS: &str = "id, email, role, created_by, created_at, revoked_at";

/// Inserts an agent; `None` when a live one has the email.
pub async fn insert(
    conn: &mut PgConnection,
    id: AgentId,
    email: &str,
    role: Role,
    token_hash: &[u8],
    created_by: &str,
    now: DateTime<Utc>,
) -> sqlx::Result<Option<Agent>> {
    sqlx::query_as(sqlf!(
        "INSERT INTO agents (id, email, role, token_hash, created_by, created_at)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (lower(email)) WHERE revoked_at IS NULL DO NOTHING
         RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(email)
    .bind(role)
    .bind(token_hash)
    .bind(created_by)
    .bind(now)
    .fetch_optional(conn)
    .await
}

pub async fn list(conn: &mut PgConnection) -> sqlx::Result<Vec<Agent>> {
    sqlx::query_as(sqlf!(
        "SELECT {COLUMNS} FROM agents ORDER BY created_at, id"
    ))
    .fetch_all(conn)
    .await
}

pub async fn revoke(
    conn: &mut PgConnection,
    id: AgentId,
    now: DateTime<Utc>,
) -> sqlx::Result<Option<Agent>> {
    sqlx::query_as(sqlf!(
        "UPDATE agents SET revoked_at = coalesce(revoked_at, $2) WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(now)
    .fetch_optional(conn)
    .await
}

pub async fn by_token(conn: &mut PgConnection, token_hash: &[u8]) -> sqlx::Result<Option<Agent>> {
    sqlx::query_as(sqlf!(
        "SELECT {COLUMNS} FROM agents WHERE token_hash = $1 AND revoked_at IS NULL"
    ))
    .bind(token_hash)
    .fetch_optional(conn)
    .await
}

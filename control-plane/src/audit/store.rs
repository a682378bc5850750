//! SQL of `agent_actions` (the same table in cf and billing_prod).

use sqlx::PgConnection;

use super::{Action, Write};
use crate::ids::{AccountId, AgentId};

#[derive(Debug, sqlx::FromRow)]
pub struct Stored {
    pub request_hash: Vec<u8>,
    pub response: serde_json::Value,
}

pub async fn find(
    conn: &mut PgConnection,
    agent: AgentId,
    key: &str,
) -> sqlx::Result<Option<Stored>> {
    sqlx::query_as(
        "SELECT request_hash, response FROM agent_actions WHERE agent_id = $1 AND idempotency_key = $2",
    )
    .bind(agent)
    .bind(key)
    .fetch_optional(conn)
    .await
}

/// Writes the row; `false` when one under the same key exists.
pub async fn insert(
    conn: &mut PgConnection,
    w: &Write<'_>,
    account: Option<AccountId>,
    hash: &[u8],
    before: &serde_json::Value,
    after: &serde_json::Value,
    response: &serde_json::Value,
) -> sqlx::Result<bool> {
    Ok(sqlx::query(
        "INSERT INTO agent_actions (id, agent_id, agent_email, idempotency_key, request_hash,
             action, account_id, target, reason, before, after, response, at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
         ON CONFLICT (agent_id, idempotency_key) DO NOTHING",
    )
    .bind(uuid::Uuid::now_v7())
    .bind(w.agent.id)
    .bind(&w.agent.email)
    .bind(w.key.as_str())
    .bind(hash)
    .bind(w.action)
    .bind(account.map(|a| a.0))
    .bind(&w.target)
    .bind(w.reason.as_str())
    .bind(before)
    .bind(after)
    .bind(response)
    .bind(w.now)
    .execute(conn)
    .await?
    .rows_affected()
        == 1)
}

pub async fn of_account(
    conn: &mut PgConnection,
    account: AccountId,
    limit: i64,
) -> sqlx::Result<Vec<Action>> {
    sqlx::query_as(
        "SELECT id, agent_email, action, target, reason, before, after, at FROM agent_actions
         WHERE account_id = $1 ORDER BY at DESC, id DESC LIMIT $2",
    )
    .bind(account.0)
    .bind(limit)
    .fetch_all(conn)
    .await
}

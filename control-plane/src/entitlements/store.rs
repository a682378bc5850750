//! SQL for entitlement facts (cf_prod `entitlement_facts`).

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgConnection;
use tollgate_protocol::AccountFacts;
use uuid::Uuid;

use super::StreamId;
use crate::ids::AccountId;
use crate::outbox::Topic;

fn decode(v: Value) -> sqlx::Result<AccountFacts> {
    serde_json::from_value(v).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

/// Stored facts of an account.
pub async fn stored_facts(
    conn: &mut PgConnection,
    account: AccountId,
) -> sqlx::Result<Option<AccountFacts>> {
    let row: Option<(Value,)> =
        sqlx::query_as("SELECT facts FROM entitlement_facts WHERE account_id = $1")
            .bind(account.0)
            .fetch_optional(conn)
            .await?;
    row.map(|(v,)| decode(v)).transpose()
}

/// Stored facts of several accounts (those that have some), one query.
pub async fn stored_facts_many(
    conn: &mut PgConnection,
    accounts: &[AccountId],
) -> sqlx::Result<Vec<AccountFacts>> {
    let ids: Vec<Uuid> = accounts.iter().map(|a| a.0).collect();
    let rows: Vec<(Value,)> =
        sqlx::query_as("SELECT facts FROM entitlement_facts WHERE account_id = ANY($1)")
            .bind(&ids)
            .fetch_all(conn)
            .await?;
    rows.into_iter().map(|(v,)| decode(v)).collect()
}

pub async fn store_facts(
    conn: &mut PgConnection,
    facts: &AccountFacts,
    now: DateTime<Utc>,
) -> sqlx::Result<()> {
    let json = serde_json::to_value(facts).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    sqlx::query(
        "INSERT INTO entitlement_facts (account_id, version, facts, updated_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (account_id) DO UPDATE SET version = EXCLUDED.version, facts = EXCLUDED.facts,
             updated_at = EXCLUDED.updated_at",
    )
    .bind(facts.account_id.0)
    .bind(facts.version)
    .bind(json)
    .bind(now)
    .execute(conn)
    .await
    .map(drop)
}

/// Records the shard stream and id an account's facts were just published under, in the
/// relay's transaction (never moving it back within a shard's stream).
pub async fn record_published(
    conn: &mut PgConnection,
    account: AccountId,
    shard: u16,
    id: StreamId,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE entitlement_facts
            SET published_stream_shard = $4, published_stream_ms = $2, published_stream_seq = $3
          WHERE account_id = $1
            AND (published_stream_shard IS DISTINCT FROM $4
                 OR (published_stream_ms, published_stream_seq) < ($2, $3))",
    )
    .bind(account.0)
    .bind(id.ms)
    .bind(id.seq)
    .bind(i32::from(shard))
    .execute(conn)
    .await
    .map(drop)
}

/// The newest stream id any account of `shard` was published under.
pub async fn newest_published(
    conn: &mut PgConnection,
    shard: u16,
) -> sqlx::Result<Option<StreamId>> {
    let row: Option<(i64, i64)> = sqlx::query_as(
        "SELECT published_stream_ms, published_stream_seq FROM entitlement_facts
          WHERE published_stream_shard = $1
          ORDER BY published_stream_ms DESC, published_stream_seq DESC LIMIT 1",
    )
    .bind(i32::from(shard))
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|(ms, seq)| StreamId { ms, seq }))
}

/// Enqueues a publish of every account of `shard` published after `after` (unless one is
/// queued already); returns how many.
pub async fn republish_after(
    conn: &mut PgConnection,
    shard: u16,
    after: StreamId,
    now: DateTime<Utc>,
) -> sqlx::Result<u64> {
    sqlx::query(
        "INSERT INTO outbox (id, topic, payload, created_at, available_at)
         SELECT gen_random_uuid(), $1, jsonb_build_object('account_id', f.account_id), $2, $2
           FROM entitlement_facts f
          WHERE f.published_stream_shard = $5
            AND (f.published_stream_ms, f.published_stream_seq) > ($3, $4)
            AND NOT EXISTS (
                SELECT 1 FROM outbox o
                 WHERE o.processed_at IS NULL AND o.topic = $1
                   AND o.payload->>'account_id' = f.account_id::text)",
    )
    .bind(Topic::EntitlementsPublish)
    .bind(now)
    .bind(after.ms)
    .bind(after.seq)
    .bind(i32::from(shard))
    .execute(conn)
    .await
    .map(|r| r.rows_affected())
}

/// Accounts in dunning whose stored facts' `days_past_due` is not what `now` makes it.
pub async fn days_past_due_stale(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
    limit: i64,
) -> sqlx::Result<Vec<AccountId>> {
    let ids: Vec<(uuid::Uuid,)> = sqlx::query_as(
        "SELECT a.id FROM accounts a JOIN entitlement_facts f ON f.account_id = a.id
         WHERE a.past_due_since IS NOT NULL
           AND greatest(floor(extract(epoch FROM ($1 - a.past_due_since)) / 86400), 0)::bigint
               IS DISTINCT FROM coalesce((f.facts->>'days_past_due')::bigint, 0)
         ORDER BY a.id LIMIT $2",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    Ok(ids.into_iter().map(|(id,)| AccountId(id)).collect())
}

//! SQL of disputes (billing_prod `disputes`, `dispute_events`).

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use super::{Dispute, DisputeStatus};
use crate::ids::DisputeId;

const COLUMNS: &str = "id, provider, provider_dispute_id, account_id, invoice_id,
    provider_payment_id, amount_minor, currency, status, reason, observed_at, opened_at, closed_at";

/// A dispute as first seen.
pub struct New<'a> {
    pub provider: &'a str,
    pub provider_dispute_id: &'a str,
    pub account_id: Uuid,
    pub invoice_id: Option<Uuid>,
    pub provider_payment_id: &'a str,
    pub amount_minor: i64,
    pub currency: &'a str,
    pub status: DisputeStatus,
    pub reason: Option<&'a str>,
    pub observed_at: DateTime<Utc>,
}

/// The dispute, locked; inserted as `n` when it is new (then `true`).
pub async fn upsert_for_update(
    conn: &mut PgConnection,
    n: &New<'_>,
    now: DateTime<Utc>,
) -> sqlx::Result<(Dispute, bool)> {
    let inserted = sqlx::query(
        "INSERT INTO disputes (id, provider, provider_dispute_id, account_id, invoice_id,
             provider_payment_id, amount_minor, currency, status, reason, observed_at, opened_at,
             closed_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12,
             CASE WHEN $9 IN ('won', 'lost', 'closed') THEN $12 END)
         ON CONFLICT (provider, provider_dispute_id) DO NOTHING",
    )
    .bind(Uuid::now_v7())
    .bind(n.provider)
    .bind(n.provider_dispute_id)
    .bind(n.account_id)
    .bind(n.invoice_id)
    .bind(n.provider_payment_id)
    .bind(n.amount_minor)
    .bind(n.currency)
    .bind(n.status)
    .bind(n.reason)
    .bind(n.observed_at)
    .bind(now)
    .execute(&mut *conn)
    .await?
    .rows_affected()
        == 1;
    let d = sqlx::query_as(sqlf!(
        "SELECT {COLUMNS} FROM disputes WHERE provider = $1 AND provider_dispute_id = $2
         FOR UPDATE"
    ))
    .bind(n.provider)
    .bind(n.provider_dispute_id)
    .fetch_one(conn)
    .await?;
    Ok((d, inserted))
}

/// Moves a dispute to what the provider said at `observed_at`.
pub async fn update(
    conn: &mut PgConnection,
    id: DisputeId,
    status: DisputeStatus,
    amount_minor: i64,
    reason: Option<&str>,
    observed_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> sqlx::Result<Dispute> {
    sqlx::query_as(sqlf!(
        "UPDATE disputes SET status = $2, amount_minor = $3, reason = coalesce($4, reason),
             observed_at = $5,
             closed_at = CASE WHEN $2 IN ('won', 'lost', 'closed') THEN $6 END
         WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(status)
    .bind(amount_minor)
    .bind(reason)
    .bind(observed_at)
    .bind(now)
    .fetch_one(conn)
    .await
}

/// Notes that a read found nothing new (the reconciler waits its interval again).
pub async fn touch(
    conn: &mut PgConnection,
    id: DisputeId,
    observed_at: DateTime<Utc>,
) -> sqlx::Result<()> {
    sqlx::query("UPDATE disputes SET observed_at = greatest(observed_at, $2) WHERE id = $1")
        .bind(id)
        .bind(observed_at)
        .execute(conn)
        .await
        .map(drop)
}

/// [`touch`] by the provider's id.
pub async fn touch_provider(
    conn: &mut PgConnection,
    provider: &str,
    provider_dispute_id: &str,
    observed_at: DateTime<Utc>,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE disputes SET observed_at = greatest(observed_at, $3)
         WHERE provider = $1 AND provider_dispute_id = $2",
    )
    .bind(provider)
    .bind(provider_dispute_id)
    .bind(observed_at)
    .execute(conn)
    .await
    .map(drop)
}

pub async fn record_event(
    conn: &mut PgConnection,
    id: DisputeId,
    status: DisputeStatus,
    cause: &str,
    observed_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO dispute_events (dispute_id, status, cause, observed_at, recorded_at)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(id)
    .bind(status)
    .bind(cause)
    .bind(observed_at)
    .bind(now)
    .execute(conn)
    .await
    .map(drop)
}

pub async fn of_account(conn: &mut PgConnection, account: Uuid) -> sqlx::Result<Vec<Dispute>> {
    sqlx::query_as(sqlf!(
        "SELECT {COLUMNS} FROM disputes WHERE account_id = $1 ORDER BY opened_at DESC, id"
    ))
    .bind(account)
    .fetch_all(conn)
    .await
}

pub async fn by_provider_id(
    conn: &mut PgConnection,
    provider: &str,
    provider_dispute_id: &str,
) -> sqlx::Result<Option<Dispute>> {
    sqlx::query_as(sqlf!(
        "SELECT {COLUMNS} FROM disputes WHERE provider = $1 AND provider_dispute_id = $2"
    ))
    .bind(provider)
    .bind(provider_dispute_id)
    .fetch_optional(conn)
    .await
}

/// `(status, cause, observed_at)` of a dispute's changes, oldest first.
pub async fn history(
    conn: &mut PgConnection,
    id: DisputeId,
) -> sqlx::Result<Vec<(DisputeStatus, String, DateTime<Utc>)>> {
    sqlx::query_as(
        "SELECT status, cause, observed_at FROM dispute_events WHERE dispute_id = $1 ORDER BY id",
    )
    .bind(id)
    .fetch_all(conn)
    .await
}

/// Open disputes at `providers` not read since `before`, oldest first.
pub async fn stale_open(
    conn: &mut PgConnection,
    providers: &[&str],
    before: DateTime<Utc>,
    limit: i64,
) -> sqlx::Result<Vec<(String, String)>> {
    sqlx::query_as(
        "SELECT provider, provider_dispute_id FROM disputes
         WHERE closed_at IS NULL AND observed_at < $1 AND provider = ANY($2)
         ORDER BY observed_at LIMIT $3",
    )
    .bind(before)
    .bind(providers)
    .bind(limit)
    .fetch_all(conn)
    .await
}

pub async fn list(
    conn: &mut PgConnection,
    status: Option<DisputeStatus>,
    limit: i64,
) -> sqlx::Result<Vec<Dispute>> {
    sqlx::query_as(sqlf!(
        "SELECT {COLUMNS} FROM disputes WHERE ($1::text IS NULL OR status = $1)
         ORDER BY opened_at DESC, id DESC LIMIT $2"
    ))
    .bind(status)
    .bind(limit)
    .fetch_all(conn)
    .await
}

pub async fn by_id(conn: &mut PgConnection, id: DisputeId) -> sqlx::Result<Option<Dispute>> {
    sqlx::query_as(sqlf!("SELECT {COLUMNS} FROM disputes WHERE id = $1"))
        .bind(id)
        .fetch_optional(conn)
        .await
}

//! SQL of outbound events (cf_prod `webhook_endpoints`, `lifecycle_events`,
//! `webhook_deliveries`).

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use super::{Delivery, DeliveryStatus, Endpoint};
use crate::ids::AccountId;

/// Records an event; `false` when one with this id exists.
pub async fn insert_event(
    conn: &mut PgConnection,
    id: Uuid,
    kind: &str,
    account: Option<AccountId>,
    payload: &Value,
    now: DateTime<Utc>,
) -> sqlx::Result<bool> {
    Ok(sqlx::query(
        "INSERT INTO lifecycle_events (id, type, account_id, payload, occurred_at)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING",
    )
    .bind(id)
    .bind(kind)
    .bind(account.map(|a| a.0))
    .bind(payload)
    .bind(now)
    .execute(conn)
    .await?
    .rows_affected()
        == 1)
}

/// One pending delivery per enabled endpoint that wants `kind`.
pub async fn fan_out(
    conn: &mut PgConnection,
    event: Uuid,
    kind: &str,
    now: DateTime<Utc>,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO webhook_deliveries (id, event_id, endpoint_id, status, next_attempt_at, created_at)
         SELECT gen_random_uuid(), $1, e.id, 'pending', $3, $3 FROM webhook_endpoints e
         WHERE e.enabled AND (cardinality(e.events) = 0 OR $2 = ANY(e.events))
         ON CONFLICT (event_id, endpoint_id) DO NOTHING",
    )
    .bind(event)
    .bind(kind)
    .bind(now)
    .execute(conn)
    .await
    .map(drop)
}

pub async fn insert_endpoint(
    conn: &mut PgConnection,
    url: &str,
    secret: &str,
    events: &[String],
    actor: &str,
    now: DateTime<Utc>,
) -> sqlx::Result<Endpoint> {
    sqlx::query_as(
        "INSERT INTO webhook_endpoints (id, url, secret, events, created_by, created_at)
         VALUES ($1, $2, $3, $4, $5, $6)
         RETURNING id, url, events, enabled, created_by, created_at",
    )
    .bind(Uuid::now_v7())
    .bind(url)
    .bind(secret)
    .bind(events)
    .bind(actor)
    .bind(now)
    .fetch_one(conn)
    .await
}

pub async fn endpoints(conn: &mut PgConnection) -> sqlx::Result<Vec<Endpoint>> {
    sqlx::query_as(
        "SELECT id, url, events, enabled, created_by, created_at FROM webhook_endpoints
         ORDER BY created_at, id",
    )
    .fetch_all(conn)
    .await
}

/// A claimed delivery with what its POST needs.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Due {
    pub id: Uuid,
    pub event_id: Uuid,
    #[sqlx(rename = "type")]
    pub kind: String,
    pub payload: Value,
    pub occurred_at: DateTime<Utc>,
    pub url: String,
    pub secret: String,
    /// Counting this one.
    pub attempts: i32,
}

/// Claims due deliveries: their next attempt moves to `lease_until` (another worker skips
/// them meanwhile) and the attempt is counted.
pub async fn claim_due(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
    limit: i64,
) -> sqlx::Result<Vec<Due>> {
    sqlx::query_as(
        "WITH due AS (
             SELECT id FROM webhook_deliveries WHERE status = 'pending' AND next_attempt_at <= $1
             ORDER BY next_attempt_at, id LIMIT $3 FOR UPDATE SKIP LOCKED),
         claimed AS (
             UPDATE webhook_deliveries d SET next_attempt_at = $2, attempts = d.attempts + 1
             FROM due WHERE d.id = due.id RETURNING d.id, d.event_id, d.endpoint_id, d.attempts)
         SELECT c.id, c.event_id, e.type, e.payload, e.occurred_at, w.url, w.secret, c.attempts
         FROM claimed c JOIN lifecycle_events e ON e.id = c.event_id
         JOIN webhook_endpoints w ON w.id = c.endpoint_id",
    )
    .bind(now)
    .bind(lease_until)
    .bind(limit)
    .fetch_all(conn)
    .await
}

pub async fn delivered(
    conn: &mut PgConnection,
    id: Uuid,
    status: i32,
    now: DateTime<Utc>,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE webhook_deliveries SET status = 'delivered', next_attempt_at = NULL,
             last_status = $2, last_error = NULL, delivered_at = $3
         WHERE id = $1 AND status = 'pending'",
    )
    .bind(id)
    .bind(status)
    .bind(now)
    .execute(conn)
    .await
    .map(drop)
}

/// A failed attempt: tried again at `next`, or `failed` for good when `None`.
pub async fn attempt_failed(
    conn: &mut PgConnection,
    id: Uuid,
    status: Option<i32>,
    error: &str,
    next: Option<DateTime<Utc>>,
) -> sqlx::Result<()> {
    let error: String = error.chars().take(500).collect();
    sqlx::query(
        "UPDATE webhook_deliveries SET last_status = $2, last_error = $3,
             status = CASE WHEN $4::timestamptz IS NULL THEN 'failed' ELSE 'pending' END,
             next_attempt_at = $4
         WHERE id = $1 AND status = 'pending'",
    )
    .bind(id)
    .bind(status)
    .bind(error)
    .bind(next)
    .execute(conn)
    .await
    .map(drop)
}

const DELIVERY_COLUMNS: &str = "d.id, d.event_id, e.type, d.endpoint_id, w.url, d.status,
    d.attempts, d.next_attempt_at, d.last_status, d.last_error, d.delivered_at, d.created_at";

pub async fn deliveries(
    conn: &mut PgConnection,
    status: Option<DeliveryStatus>,
    limit: i64,
) -> sqlx::Result<Vec<Delivery>> {
    sqlx::query_as(sqlf!(
        "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries d
         JOIN lifecycle_events e ON e.id = d.event_id JOIN webhook_endpoints w ON w.id = d.endpoint_id
         WHERE $1::text IS NULL OR d.status = $1
         ORDER BY d.created_at DESC, d.id DESC LIMIT $2"
    ))
    .bind(status)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Pending again from `now`, with a fresh schedule.
pub async fn replay(
    conn: &mut PgConnection,
    id: Uuid,
    now: DateTime<Utc>,
) -> sqlx::Result<Option<Delivery>> {
    let n = sqlx::query(
        "UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = $2, attempts = 0,
             delivered_at = NULL WHERE id = $1",
    )
    .bind(id)
    .bind(now)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if n == 0 {
        return Ok(None);
    }
    sqlx::query_as(sqlf!(
        "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries d
         JOIN lifecycle_events e ON e.id = d.event_id JOIN webhook_endpoints w ON w.id = d.endpoint_id
         WHERE d.id = $1"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await
}

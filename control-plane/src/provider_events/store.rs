//! SQL of provider webhooks (cf_prod `provider_events`).

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgConnection;

/// A stored event's handling.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Stored {
    pub processed_at: Option<DateTime<Utc>>,
}

/// Stores the event unless it is there; returns its row.
#[allow(clippy::too_many_arguments)]
pub async fn admit(
    conn: &mut PgConnection,
    provider: &str,
    id: &str,
    kind: &str,
    object_id: Option<&str>,
    payload: &Value,
    now: DateTime<Utc>,
) -> sqlx::Result<Stored> {
    sqlx::query(
        "INSERT INTO provider_events (id, provider, type, object_id, payload, received_at)
         VALUES ($1, $6, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING",
    )
    .bind(id)
    .bind(kind)
    .bind(object_id)
    .bind(payload)
    .bind(now)
    .bind(provider)
    .execute(&mut *conn)
    .await?;
    sqlx::query_as("SELECT processed_at FROM provider_events WHERE id = $1")
        .bind(id)
        .fetch_one(conn)
        .await
}

pub async fn processed(
    conn: &mut PgConnection,
    id: &str,
    applied: &str,
    now: DateTime<Utc>,
) -> sqlx::Result<()> {
    sqlx::query("UPDATE provider_events SET processed_at = $2, applied = $3 WHERE id = $1")
        .bind(id)
        .bind(now)
        .bind(applied)
        .execute(conn)
        .await
        .map(drop)
}

pub async fn times(
    conn: &mut PgConnection,
    id: &str,
) -> sqlx::Result<Option<(DateTime<Utc>, Option<DateTime<Utc>>)>> {
    sqlx::query_as("SELECT received_at, processed_at FROM provider_events WHERE id = $1")
        .bind(id)
        .fetch_optional(conn)
        .await
}

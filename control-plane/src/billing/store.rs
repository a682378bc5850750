//! SQL for billing schedules and the inbox (billing_prod).

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

use super::{Schedule, ScheduleEvent};
use crate::ids::{EventId, SubscriptionId};

/// Records the event id; `false` when it was applied before.
pub async fn admit(
    conn: &mut PgConnection,
    event_id: EventId,
    now: DateTime<Utc>,
) -> sqlx::Result<bool> {
    let fresh = sqlx::query(
        "INSERT INTO inbox (event_id, topic, processed_at) VALUES ($1, 'billing.schedule', $2)
         ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(event_id)
    .bind(now)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(fresh == 1)
}

/// Writes the schedule unless a newer revision is stored; whether it wrote.
pub async fn upsert_schedule(
    conn: &mut PgConnection,
    ev: &ScheduleEvent,
    now: DateTime<Utc>,
) -> sqlx::Result<bool> {
    let written = sqlx::query(
        "INSERT INTO billing_schedules (subscription_id, account_id, plan_key, amount_minor, currency,
             interval, next_bill_at, status, source_seq, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10)
         ON CONFLICT (subscription_id) DO UPDATE SET
             plan_key = EXCLUDED.plan_key, amount_minor = EXCLUDED.amount_minor,
             currency = EXCLUDED.currency, interval = EXCLUDED.interval,
             next_bill_at = EXCLUDED.next_bill_at, status = EXCLUDED.status,
             source_seq = EXCLUDED.source_seq, updated_at = EXCLUDED.updated_at
         WHERE billing_schedules.source_seq < EXCLUDED.source_seq",
    )
    .bind(ev.subscription_id)
    .bind(ev.account_id.0)
    .bind(&ev.plan_key)
    .bind(ev.amount_minor)
    .bind(&ev.currency)
    .bind(&ev.interval)
    .bind(ev.next_bill_at)
    .bind(ev.status)
    .bind(ev.revision)
    .bind(now)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(written == 1)
}

pub async fn get_schedule(
    conn: &mut PgConnection,
    subscription: SubscriptionId,
) -> sqlx::Result<Option<Schedule>> {
    sqlx::query_as(
        "SELECT subscription_id, plan_key, amount_minor, currency, next_bill_at, status, source_seq
         FROM billing_schedules WHERE subscription_id = $1",
    )
    .bind(subscription)
    .fetch_optional(conn)
    .await
}

/// Deletes up to 10,000 inbox ids processed before `before`; returns how many.
pub async fn prune_inbox(pool: &PgPool, before: DateTime<Utc>) -> sqlx::Result<u64> {
    sqlx::query(
        "DELETE FROM inbox WHERE event_id IN (
             SELECT event_id FROM inbox WHERE processed_at < $1 ORDER BY processed_at LIMIT 10000)",
    )
    .bind(before)
    .execute(pool)
    .await
    .map(|r| r.rows_affected())
}

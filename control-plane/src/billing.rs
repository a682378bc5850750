//! billing_prod's side of subscriptions: billing schedules, fed by cf's outbox.
//!
//! [`handle_schedule_event`] is an idempotent consumer: the event id goes into `inbox` in the
//! same billing transaction as the schedule upsert, so a redelivered event changes nothing; and
//! a schedule is only overwritten by a *newer* subscription revision, so events applied out of
//! order cannot resurrect a canceled subscription.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgConnection;
use tollgate_protocol::AccountId;
use uuid::Uuid;

use crate::state::AppState;

/// Outbox payload of `billing.schedule`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleEvent {
    pub subscription_id: Uuid,
    pub account_id: AccountId,
    pub plan_key: String,
    pub amount_minor: i64,
    pub currency: String,
    pub interval: String,
    /// When the next period is to be charged; `None` when the subscription will not renew.
    pub next_bill_at: Option<DateTime<Utc>>,
    /// `active` or `canceled`.
    pub status: String,
    pub revision: i64,
}

pub async fn handle_schedule_event(
    state: &AppState,
    event_id: Uuid,
    payload: &Value,
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    let ev: ScheduleEvent = serde_json::from_value(payload.clone())?;
    let mut tx = state.billing.begin().await?;
    apply_schedule_event(&mut tx, event_id, &ev, now).await?;
    tx.commit().await?;
    Ok(())
}

/// Applies one event; returns whether it changed anything.
pub async fn apply_schedule_event(
    conn: &mut PgConnection,
    event_id: Uuid,
    ev: &ScheduleEvent,
    now: DateTime<Utc>,
) -> anyhow::Result<bool> {
    anyhow::ensure!(
        ev.amount_minor >= 0,
        "negative schedule amount {}",
        ev.amount_minor
    );
    let fresh = sqlx::query(
        "INSERT INTO inbox (event_id, topic, processed_at) VALUES ($1, 'billing.schedule', $2)
         ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(event_id)
    .bind(now)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if fresh == 0 {
        return Ok(false);
    }
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
    .bind(&ev.status)
    .bind(ev.revision)
    .bind(now)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(written == 1)
}

/// A billing schedule as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Schedule {
    pub subscription_id: Uuid,
    pub plan_key: String,
    pub amount_minor: i64,
    pub currency: String,
    pub next_bill_at: Option<DateTime<Utc>>,
    pub status: String,
    pub source_seq: i64,
}

pub async fn get_schedule(
    conn: &mut PgConnection,
    subscription: Uuid,
) -> sqlx::Result<Option<Schedule>> {
    sqlx::query_as(
        "SELECT subscription_id, plan_key, amount_minor, currency, next_bill_at, status, source_seq
         FROM billing_schedules WHERE subscription_id = $1",
    )
    .bind(subscription)
    .fetch_optional(conn)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::PgPool;

    fn event(sub: Uuid, status: &str, revision: i64) -> ScheduleEvent {
        ScheduleEvent {
            subscription_id: sub,
            account_id: AccountId::new_v7(),
            plan_key: "pro".into(),
            amount_minor: 2900,
            currency: "USD".into(),
            interval: "month".into(),
            next_bill_at: (status == "active").then(Utc::now),
            status: status.into(),
            revision,
        }
    }

    #[sqlx::test(migrations = "../migrations/billing")]
    async fn schedule_events_apply_once_and_never_go_backwards(pool: PgPool) -> anyhow::Result<()> {
        let mut conn = pool.acquire().await?;
        let sub = Uuid::now_v7();
        let (e1, e2) = (Uuid::now_v7(), Uuid::now_v7());
        let now = Utc::now();
        assert!(apply_schedule_event(&mut conn, e1, &event(sub, "active", 1), now).await?);
        assert!(
            !apply_schedule_event(&mut conn, e1, &event(sub, "active", 1), now).await?,
            "redelivery is a no-op"
        );
        assert!(apply_schedule_event(&mut conn, e2, &event(sub, "canceled", 2), now).await?);
        // An older revision delivered late does not resurrect the schedule.
        assert!(
            !apply_schedule_event(&mut conn, Uuid::now_v7(), &event(sub, "active", 1), now).await?
        );
        let s = get_schedule(&mut conn, sub).await?.expect("schedule");
        assert_eq!(
            (s.status.as_str(), s.source_seq, s.next_bill_at),
            ("canceled", 2, None)
        );
        Ok(())
    }
}

//! Billing in billing_prod: what each subscription is to be charged and when. Today it keeps
//! the billing schedules, fed by cf's outbox; renewals, invoices with metered lines and
//! off-session charges build on them.
//!
//! [`on_schedule`] is an idempotent consumer of `billing.schedule`: the event id goes into
//! `inbox` in the same billing transaction as the schedule upsert, so a redelivered event
//! changes nothing; and a schedule is only overwritten by a *newer* subscription revision, so
//! events applied out of order cannot resurrect a canceled subscription. Inbox ids are pruned
//! with the outbox's retention window ([`prune_inbox`]).

pub mod pricing;
pub mod store;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

use crate::ids::{AccountId, EventId, SubscriptionId};
use crate::outbox::Delivery;
use crate::state::AppState;

/// Whether a schedule still bills.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum ScheduleStatus {
    Active,
    Canceled,
}

/// Outbox payload of `billing.schedule`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleEvent {
    pub subscription_id: SubscriptionId,
    pub account_id: AccountId,
    pub plan_key: String,
    pub amount_minor: i64,
    pub currency: String,
    pub interval: String,
    /// When the next period is to be charged; `None` when the subscription will not renew.
    pub next_bill_at: Option<DateTime<Utc>>,
    pub status: ScheduleStatus,
    pub revision: i64,
}

/// A billing schedule as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Schedule {
    pub subscription_id: SubscriptionId,
    pub plan_key: String,
    pub amount_minor: i64,
    pub currency: String,
    pub next_bill_at: Option<DateTime<Utc>>,
    pub status: ScheduleStatus,
    pub source_seq: i64,
}

/// The consumer of `billing.schedule` (in its own billing transaction).
pub async fn on_schedule(state: &AppState, d: &Delivery) -> anyhow::Result<()> {
    let ev: ScheduleEvent = d.payload()?;
    let mut tx = state.billing.begin().await?;
    apply_schedule_event(&mut tx, d.id, &ev, d.now).await?;
    tx.commit().await?;
    Ok(())
}

/// Applies one event; returns whether it changed anything.
pub async fn apply_schedule_event(
    conn: &mut PgConnection,
    event_id: EventId,
    ev: &ScheduleEvent,
    now: DateTime<Utc>,
) -> anyhow::Result<bool> {
    anyhow::ensure!(
        ev.amount_minor >= 0,
        "negative schedule amount {}",
        ev.amount_minor
    );
    if !store::admit(conn, event_id, now).await? {
        return Ok(false);
    }
    Ok(store::upsert_schedule(conn, ev, now).await?)
}

pub async fn get_schedule(
    conn: &mut PgConnection,
    subscription: SubscriptionId,
) -> sqlx::Result<Option<Schedule>> {
    store::get_schedule(conn, subscription).await
}

/// Deletes inbox ids processed before `before`; returns how many.
pub async fn prune_inbox(state: &AppState, before: DateTime<Utc>) -> sqlx::Result<u64> {
    store::prune_inbox(&state.billing, before).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::PgPool;

    fn event(sub: SubscriptionId, status: ScheduleStatus, revision: i64) -> ScheduleEvent {
        ScheduleEvent {
            subscription_id: sub,
            account_id: AccountId::new_v7(),
            plan_key: "pro".into(),
            amount_minor: 2900,
            currency: "USD".into(),
            interval: "month".into(),
            next_bill_at: (status == ScheduleStatus::Active).then(Utc::now),
            status,
            revision,
        }
    }

    #[sqlx::test(migrations = "../migrations/billing")]
    async fn schedule_events_apply_once_and_never_go_backwards(pool: PgPool) -> anyhow::Result<()> {
        use ScheduleStatus::{Active, Canceled};
        let mut conn = pool.acquire().await?;
        let sub = SubscriptionId::new_v7();
        let (e1, e2) = (EventId::new_v7(), EventId::new_v7());
        let now = Utc::now();
        assert!(apply_schedule_event(&mut conn, e1, &event(sub, Active, 1), now).await?);
        assert!(
            !apply_schedule_event(&mut conn, e1, &event(sub, Active, 1), now).await?,
            "redelivery is a no-op"
        );
        assert!(apply_schedule_event(&mut conn, e2, &event(sub, Canceled, 2), now).await?);
        // An older revision delivered late does not resurrect the schedule.
        assert!(
            !apply_schedule_event(&mut conn, EventId::new_v7(), &event(sub, Active, 1), now)
                .await?
        );
        let s = get_schedule(&mut conn, sub).await?.expect("schedule");
        assert_eq!(
            (s.status, s.source_seq, s.next_bill_at),
            (Canceled, 2, None)
        );
        Ok(())
    }
}

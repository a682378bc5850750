//! Subscriptions: created by a completed checkout ([`crate::checkout`]) from what it sold,
//! listed, canceled now or at period end (and ended by the maintenance worker when that
//! period is over).
//!
//! Every subscription change writes, in the same cf transaction, an `entitlements.recompute`
//! and a `billing.schedule` outbox row ([`announce`]).

pub mod store;

use chrono::{DateTime, Months, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use tollgate_protocol::SubscriptionStatus;
use tollgate_rules::Interval;
use uuid::Uuid;

use crate::billing::{ScheduleEvent, ScheduleStatus};
use crate::error::{Error, Result};
use crate::ids::{AccountId, SubscriptionId};
use crate::outbox::{self, Topic};
use crate::state::AppState;

/// A subscription.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Subscription {
    pub id: SubscriptionId,
    pub plan: String,
    #[sqlx(try_from = "String")]
    pub status: SubscriptionStatus,
    pub amount_minor: i64,
    pub currency: String,
    /// The billing interval it was sold with (`month`, `year`).
    pub interval: String,
    pub current_period_start: DateTime<Utc>,
    pub current_period_end: DateTime<Utc>,
    pub cancel_at_period_end: bool,
    pub canceled_at: Option<DateTime<Utc>>,
    /// Grows by one with every change (billing never applies an older one).
    pub revision: i64,
    #[sqlx(try_from = "Uuid")]
    pub account_id: AccountId,
    pub created_at: DateTime<Utc>,
}

/// What a checkout sold: the subscription is created from this snapshot, whatever the catalog
/// says by the time the payment completes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sold {
    pub plan: String,
    pub amount_minor: i64,
    pub currency: String,
    pub interval: Interval,
}

/// `POST /v1/subscriptions/{id}/cancel` as the customer sends it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cancel {
    pub at_period_end: bool,
}

/// End of the period that starts at `start`.
pub fn period_end(start: DateTime<Utc>, interval: Interval) -> Option<DateTime<Utc>> {
    let months = match interval {
        Interval::Month => 1,
        Interval::Year => 12,
    };
    start.checked_add_months(Months::new(months))
}

pub fn subscription_exists() -> Error {
    Error::conflict(
        "subscription_exists",
        "the account already has a live subscription; cancel it first",
    )
}

/// The account's live (trialing, active or past-due) subscription, in the caller's
/// transaction.
pub async fn live(
    conn: &mut PgConnection,
    account: AccountId,
) -> sqlx::Result<Option<Subscription>> {
    store::live(conn, account).await
}

/// One subscription by id, in the caller's transaction.
pub async fn get(
    conn: &mut PgConnection,
    id: SubscriptionId,
) -> sqlx::Result<Option<Subscription>> {
    store::get(conn, id).await
}

fn schedule_event(sub: &Subscription) -> ScheduleEvent {
    let canceled = sub.status == SubscriptionStatus::Canceled;
    let renews = !canceled && !sub.cancel_at_period_end;
    ScheduleEvent {
        subscription_id: sub.id,
        account_id: sub.account_id,
        plan_key: sub.plan.clone(),
        amount_minor: sub.amount_minor,
        currency: sub.currency.clone(),
        interval: sub.interval.clone(),
        next_bill_at: renews.then_some(sub.current_period_end),
        status: if canceled {
            ScheduleStatus::Canceled
        } else {
            ScheduleStatus::Active
        },
        revision: sub.revision,
    }
}

/// Announces a subscription change to entitlements and billing (same transaction).
async fn announce(
    conn: &mut PgConnection,
    sub: &Subscription,
    now: DateTime<Utc>,
) -> sqlx::Result<()> {
    outbox::account_changed(conn, sub.account_id, now).await?;
    outbox::enqueue(conn, Topic::BillingSchedule, &schedule_event(sub), now).await?;
    Ok(())
}

/// A new subscription from what was sold, announced in the caller's transaction.
pub async fn create(
    conn: &mut PgConnection,
    account: AccountId,
    sold: &Sold,
    now: DateTime<Utc>,
) -> Result<Subscription> {
    let end =
        period_end(now, sold.interval).ok_or_else(|| Error::internal("period end overflows"))?;
    let sub = store::insert(conn, SubscriptionId::new_v7(), account, sold, now, end)
        .await
        .map_err(
            |e| match e.as_database_error().and_then(|d| d.constraint()) {
                Some("subscriptions_one_live_per_account") => subscription_exists(),
                _ => Error::from(e),
            },
        )?;
    announce(conn, &sub, now).await?;
    Ok(sub)
}

/// The account's subscriptions, newest first.
pub async fn list(state: &AppState, account: AccountId) -> Result<Vec<Subscription>> {
    let mut conn = state.cf.acquire().await?;
    Ok(store::list(&mut conn, account).await?)
}

/// Cancels now (entitlements go at once) or at the end of the period.
pub async fn cancel(
    state: &AppState,
    account: AccountId,
    id: SubscriptionId,
    cmd: &Cancel,
) -> Result<Subscription> {
    let mut tx = state.cf.begin().await?;
    let sub = store::get_of_for_update(&mut tx, account, id)
        .await?
        .ok_or_else(|| Error::not_found("subscription"))?;
    if sub.status == SubscriptionStatus::Canceled {
        return Err(Error::conflict(
            "subscription_canceled",
            "this subscription is already canceled",
        ));
    }
    let now = state.clock.now();
    let sub = if cmd.at_period_end {
        store::cancel_at_period_end(&mut tx, id).await?
    } else {
        store::cancel_now(&mut tx, id, now).await?
    };
    announce(&mut tx, &sub, now).await?;
    tx.commit().await?;
    state.outbox_wake.notify_one();
    tracing::info!(account_id = %account, subscription_id = %id, at_period_end = cmd.at_period_end, "subscription cancel");
    Ok(sub)
}

/// Subscriptions set to cancel at period end whose period is over are canceled (announced in
/// the same transaction). Returns how many.
pub async fn end_due(state: &AppState) -> anyhow::Result<usize> {
    let now = state.clock.now();
    let mut tx = state.cf.begin().await?;
    let ending = store::end_due(&mut tx, now).await?;
    for sub in &ending {
        announce(&mut tx, sub, now).await?;
    }
    tx.commit().await?;
    Ok(ending.len())
}

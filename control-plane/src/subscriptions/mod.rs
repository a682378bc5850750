//! Subscriptions: created by a completed checkout ([`crate::checkout`]) from what it sold,
//! listed, canceled now or at period end (and ended by the maintenance worker when that
//! period is over).
//!
//! Every subscription change writes, in the same cf transaction, an `entitlements.recompute`
//! and a `billing.schedule` outbox row ([`announce`]).

pub mod addons;
pub mod change;
pub mod store;

use chrono::{DateTime, Months, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use tollgate_protocol::SubscriptionStatus;
use tollgate_rules::Interval;
use uuid::Uuid;

use crate::billing::{FirstPayment, Proration, ScheduleEvent, ScheduleStatus, Started, Terms};
use crate::dunning::policy::Exhaustion;
use crate::error::{Error, Result};
use crate::events::{self, EventType};
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
    /// What it bills besides its price (metered usage), as sold.
    #[sqlx(json)]
    pub terms: Terms,
    /// Every period boundary is this plus a whole number of intervals.
    pub billing_anchor: DateTime<Utc>,
    /// A change the next renewal applies (a downgrade at period end).
    pub pending_change: Option<sqlx::types::Json<change::PendingChange>>,
}

/// What a checkout sold: the subscription is created from this snapshot, whatever the catalog
/// says by the time the payment completes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sold {
    pub plan: String,
    pub amount_minor: i64,
    pub currency: String,
    pub interval: Interval,
    pub terms: Terms,
}

/// `POST /v1/subscriptions/{id}/cancel` as the customer sends it.
#[derive(utoipa::ToSchema, Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cancel {
    pub at_period_end: bool,
}

/// End of the period that starts at `start`.
pub fn period_end(start: DateTime<Utc>, interval: Interval) -> Option<DateTime<Utc>> {
    boundary(start, interval, 1)
}

fn months(interval: Interval) -> u32 {
    match interval {
        Interval::Month => 1,
        Interval::Year => 12,
    }
}

/// The `k`-th period boundary from `anchor` (calendar months, clamped to the month's end).
pub fn boundary(anchor: DateTime<Utc>, interval: Interval, k: u32) -> Option<DateTime<Utc>> {
    anchor.checked_add_months(Months::new(months(interval).checked_mul(k)?))
}

/// The period of `anchor`'s boundaries that holds `at`: `[start, end)`.
pub fn period_containing(
    anchor: DateTime<Utc>,
    interval: Interval,
    at: DateTime<Utc>,
) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    let approx =
        u32::try_from((at - anchor).num_days().max(0) / (31 * i64::from(months(interval)))).ok()?;
    let k = (approx.max(1)..approx.checked_add(40)?)
        .find(|k| boundary(anchor, interval, *k).is_some_and(|b| b > at))?;
    Some((
        boundary(anchor, interval, k - 1)?,
        boundary(anchor, interval, k)?,
    ))
}

/// The first period boundary from `anchor` after `after`.
pub fn next_boundary(
    anchor: DateTime<Utc>,
    interval: Interval,
    after: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    // Jump close by whole months, then step: no drift, no loop over years of periods.
    let approx =
        u32::try_from((after - anchor).num_days().max(0) / (31 * i64::from(months(interval))))
            .ok()?;
    (approx.max(1)..approx.checked_add(40)?)
        .filter_map(|k| boundary(anchor, interval, k))
        .find(|b| *b > after)
}

pub fn subscription_exists() -> Error {
    Error::conflict(
        "subscription_exists",
        "the account already has a live subscription; cancel it first",
    )
}

/// The account's live (trialing, active, past-due or unpaid) subscription, in the caller's
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

fn schedule_event(
    sub: &Subscription,
    started: Option<Started>,
    change: Option<Proration>,
) -> ScheduleEvent {
    let canceled = sub.status == SubscriptionStatus::Canceled;
    let renews = !canceled && sub.status != SubscriptionStatus::Unpaid && !sub.cancel_at_period_end;
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
        period_start: Some(sub.current_period_start),
        period_end: Some(sub.current_period_end),
        terms: sub.terms.clone(),
        started,
        change,
    }
}

/// Announces a subscription change to entitlements and billing (same transaction); `started`
/// when the change began a billing period.
async fn announce(
    conn: &mut PgConnection,
    sub: &Subscription,
    started: Option<Started>,
    now: DateTime<Utc>,
) -> sqlx::Result<()> {
    announce_with(conn, sub, started, None, now).await
}

async fn announce_with(
    conn: &mut PgConnection,
    sub: &Subscription,
    started: Option<Started>,
    change: Option<Proration>,
    now: DateTime<Utc>,
) -> sqlx::Result<()> {
    outbox::account_changed(conn, sub.account_id, now).await?;
    let kind = match (&started, sub.status) {
        (_, SubscriptionStatus::Canceled) => EventType::SubscriptionCanceled,
        (Some(Started::First { .. }), _) => EventType::SubscriptionCreated,
        _ => EventType::SubscriptionUpdated,
    };
    events::record(
        conn,
        kind,
        Some(sub.account_id),
        &serde_json::json!({
            "subscription_id": sub.id,
            "plan": sub.plan,
            "status": sub.status,
            "amount_minor": sub.amount_minor,
            "currency": sub.currency,
            "current_period_end": sub.current_period_end,
            "cancel_at_period_end": sub.cancel_at_period_end,
            "addons": addons::quantities(&sub.terms.addons),
        }),
        now,
    )
    .await?;
    outbox::enqueue(
        conn,
        Topic::BillingSchedule,
        &schedule_event(sub, started, change),
        now,
    )
    .await?;
    Ok(())
}

/// A new subscription from what was sold, announced in the caller's transaction.
pub async fn create(
    conn: &mut PgConnection,
    account: AccountId,
    sold: &Sold,
    paid: Option<FirstPayment>,
    now: DateTime<Utc>,
) -> Result<Subscription> {
    // Periods start on a whole second: edges and usage place events by the anchor in unix
    // milliseconds, and every boundary derives from it.
    let start = chrono::SubsecRound::trunc_subsecs(now, 0);
    // A trial is the first period; the paid periods are anchored on its end.
    let (status, end) = if sold.terms.trial_days > 0 {
        let end = start + chrono::TimeDelta::days(i64::from(sold.terms.trial_days));
        (SubscriptionStatus::Trialing, end)
    } else {
        let end = period_end(start, sold.interval)
            .ok_or_else(|| Error::internal("period end overflows"))?;
        (SubscriptionStatus::Active, end)
    };
    let anchor = if status == SubscriptionStatus::Trialing {
        end
    } else {
        start
    };
    let sub = store::insert(
        conn,
        &store::NewSubscription {
            id: SubscriptionId::new_v7(),
            account,
            sold,
            status,
            start,
            end,
            anchor,
        },
    )
    .await
    .map_err(
        |e| match e.as_database_error().and_then(|d| d.constraint()) {
            Some("subscriptions_one_live_per_account") => subscription_exists(),
            _ => Error::from(e),
        },
    )?;
    announce(conn, &sub, Some(Started::First { paid }), now).await?;
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
    let sub = match cancel_in(&mut tx, Some(account), id, cmd, state.clock.now()).await {
        Ok(sub) => sub,
        Err(e) => {
            // Now, not when the pooled connection is next used: the row stays locked until then.
            tx.rollback().await?;
            return Err(e);
        }
    };
    tx.commit().await?;
    state.outbox_wake.notify_waiters();
    tracing::info!(account_id = %account, subscription_id = %id, at_period_end = cmd.at_period_end, "subscription cancel");
    Ok(sub)
}

/// A support agent cancels subscription `id` (any account's), audited with the cancel.
pub async fn cancel_by_agent(
    state: &AppState,
    w: &crate::audit::Write<'_>,
    id: SubscriptionId,
    cmd: &Cancel,
) -> Result<Subscription> {
    let out = crate::audit::audited(&state.cf, w, async |tx| {
        let before = store::get(tx, id)
            .await?
            .ok_or_else(|| Error::not_found("subscription"))?;
        let after = cancel_in(tx, None, id, cmd, w.now).await?;
        let mut e = crate::audit::Effect::new(
            serde_json::json!({ "status": before.status, "cancel_at_period_end": before.cancel_at_period_end }),
            serde_json::json!({ "status": after.status, "cancel_at_period_end": after.cancel_at_period_end }),
            after,
        );
        e.account = Some(before.account_id);
        Ok(e)
    })
    .await?;
    state.outbox_wake.notify_waiters();
    Ok(out)
}

/// How an agent's cancel settles the period the customer paid for.
#[derive(utoipa::ToSchema, Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelRefund {
    /// Nothing is refunded (the default).
    #[default]
    None,
    /// The unused share of the period's payment goes back to the customer.
    Prorated,
}

/// What an agent's cancel answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentCanceled {
    pub subscription: Subscription,
    pub refund: Option<crate::billing::refunds::Refunded>,
}

/// A support agent cancels subscription `id` ([`cancel_by_agent`]) and, with
/// [`CancelRefund::Prorated`], refunds what is left unused of the period it paid for
/// ([`crate::billing::refunds::refund_unused`]: only with a cancel now). The refund follows the
/// cancel's commit, never inside its transaction (it calls the provider): a repeat of the same
/// request replays the cancel and finishes the refund, under a key derived from the cancel's.
pub async fn cancel_for_agent(
    state: &AppState,
    w: &crate::audit::Write<'_>,
    id: SubscriptionId,
    cmd: &Cancel,
    refund: CancelRefund,
) -> Result<AgentCanceled> {
    if refund == CancelRefund::Prorated && cmd.at_period_end {
        return Err(Error::unprocessable(
            "refund_needs_cancel_now",
            "a prorated refund comes with a cancel now (at_period_end: false)",
        ));
    }
    let sub = cancel_by_agent(state, w, id, cmd).await?;
    let refund = match refund {
        CancelRefund::None => None,
        CancelRefund::Prorated => {
            let key = crate::idempotency::Key::parse(&format!(
                "cancel-refund-{}",
                crate::audit::resource_id(w).simple()
            ))?;
            crate::billing::refunds::refund_unused(state, w.agent, &key, w.reason, &sub).await?
        }
    };
    Ok(AgentCanceled {
        subscription: sub,
        refund,
    })
}

/// The cancel in the caller's transaction; `account` scopes it to one account's subscription.
async fn cancel_in(
    tx: &mut PgConnection,
    account: Option<AccountId>,
    id: SubscriptionId,
    cmd: &Cancel,
    now: DateTime<Utc>,
) -> Result<Subscription> {
    let found = match account {
        Some(a) => store::get_of_for_update(tx, a, id).await?,
        None => store::get_for_update(tx, id).await?,
    };
    let sub_status = match found {
        None => return Err(Error::not_found("subscription")),
        Some(s) if s.status == SubscriptionStatus::Canceled => {
            return Err(Error::conflict(
                "subscription_canceled",
                "this subscription is already canceled",
            ));
        }
        Some(s) => s.status,
    };
    // An unpaid subscription has no period left to run out: it ends now.
    let sub = if cmd.at_period_end && sub_status != SubscriptionStatus::Unpaid {
        store::cancel_at_period_end(tx, id).await?
    } else {
        store::cancel_now(tx, id, now).await?
    };
    announce(tx, &sub, None, now).await?;
    Ok(sub)
}

/// Subscriptions set to cancel at period end whose period is over are canceled (announced in
/// the same transaction). Returns how many.
pub async fn end_due(state: &AppState) -> anyhow::Result<usize> {
    let now = state.clock.now();
    let mut tx = state.cf.begin().await?;
    let ending = store::end_due(&mut tx, now).await?;
    for sub in &ending {
        announce(&mut tx, sub, None, now).await?;
    }
    tx.commit().await?;
    Ok(ending.len())
}

/// Starts the next period of live subscriptions whose period ended (and that renew), in
/// batches claimed with `FOR UPDATE SKIP LOCKED`: each renewal is announced with the period it
/// started, and billing makes that period's invoice. A subscription several periods behind
/// (the clock jumped) renews once per pass. Returns how many renewed.
pub async fn renew_due(state: &AppState, batch: i64) -> anyhow::Result<usize> {
    let now = state.clock.now();
    let mut tx = state.cf.begin().await?;
    let due = store::claim_renewals(&mut tx, now, batch).await?;
    for sub in &due {
        let interval = Interval::parse(&sub.interval)
            .ok_or_else(|| anyhow::anyhow!("subscription {} interval {}", sub.id, sub.interval))?;
        let end = next_boundary(sub.billing_anchor, interval, sub.current_period_end)
            .ok_or_else(|| anyhow::anyhow!("subscription {} period end overflows", sub.id))?;
        let renewed = store::advance_period(&mut tx, sub.id, end).await?;
        let started = if sub.status == SubscriptionStatus::Trialing {
            Started::TrialEnded
        } else {
            Started::Renewal {
                previous_start: sub.current_period_start,
            }
        };
        announce(&mut tx, &renewed, Some(started), now).await?;
    }
    tx.commit().await?;
    if !due.is_empty() {
        tracing::info!(renewed = due.len(), "subscriptions renewed");
    }
    Ok(due.len())
}

/// `billing.payment_failed`: an off-session charge of the subscription's invoice failed; while
/// that invoice is still owed (read from billing's side of the delivery, `billing`), an active
/// subscription becomes `past_due` (announced to entitlements and billing). Idempotent: a
/// repeat finds it past due already.
pub async fn on_payment_failed(
    state: &AppState,
    billing: &mut PgConnection,
    d: &crate::outbox::Delivery,
) -> anyhow::Result<()> {
    let ev: crate::billing::charges::PaymentFailed = d.payload()?;
    let Some(id) = ev.subscription_id else {
        return Ok(());
    };
    if !crate::billing::invoices::still_owed(billing, ev.invoice_id).await? {
        return Ok(());
    }
    set_status_if(
        state,
        id,
        SubscriptionStatus::Active,
        SubscriptionStatus::PastDue,
        d.now,
    )
    .await
}

/// `billing.invoice_paid` (and `billing.invoice_voided`): a `past_due` or `unpaid`
/// subscription whose invoice got paid (or voided) is active again. An `unpaid` one whose
/// period ended meanwhile resumes with the period of today (same anchor; the periods it was unpaid through are not billed), announced as a
/// renewal so billing invoices it.
pub async fn on_invoice_paid(state: &AppState, d: &crate::outbox::Delivery) -> anyhow::Result<()> {
    let ev: crate::billing::charges::InvoicePaid = d.payload()?;
    let Some(id) = ev.subscription_id else {
        return Ok(());
    };
    let mut tx = state.cf.begin().await?;
    let Some(sub) = store::get_for_update(&mut tx, id).await? else {
        tx.rollback().await?;
        return Ok(());
    };
    let now = d.now;
    let (resumed, started) = match sub.status {
        SubscriptionStatus::PastDue => (
            store::set_status(&mut tx, id, SubscriptionStatus::Active).await?,
            None,
        ),
        SubscriptionStatus::Unpaid if sub.current_period_end > now => (
            store::set_status(&mut tx, id, SubscriptionStatus::Active).await?,
            None,
        ),
        SubscriptionStatus::Unpaid => {
            let interval = Interval::parse(&sub.interval)
                .ok_or_else(|| anyhow::anyhow!("subscription {id} interval {}", sub.interval))?;
            let (start, end) = period_containing(sub.billing_anchor, interval, now)
                .ok_or_else(|| anyhow::anyhow!("subscription {id} period overflows"))?;
            (
                store::resume_unpaid(&mut tx, id, start, end).await?,
                Some(Started::Renewal {
                    previous_start: sub.current_period_start,
                }),
            )
        }
        _ => {
            tx.rollback().await?;
            return Ok(());
        }
    };
    announce(&mut tx, &resumed, started, now).await?;
    tx.commit().await?;
    state.outbox_wake.notify_waiters();
    tracing::info!(subscription_id = %id, from = sub.status.as_str(), "subscription active again: its invoice was paid or voided");
    Ok(())
}

/// `billing.invoice_uncollectible`: dunning gave the subscription's invoice up; the
/// subscription is canceled now, or kept as `unpaid` under that policy (announced to
/// entitlements and billing). Idempotent: a repeat finds it canceled or unpaid.
pub async fn on_invoice_uncollectible(
    state: &AppState,
    d: &crate::outbox::Delivery,
) -> anyhow::Result<()> {
    let ev: crate::dunning::InvoiceUncollectible = d.payload()?;
    let Some(id) = ev.subscription_id else {
        return Ok(());
    };
    let mut tx = state.cf.begin().await?;
    if store::get_for_update(&mut tx, id).await?.is_none_or(|sub| {
        matches!(
            sub.status,
            SubscriptionStatus::Canceled | SubscriptionStatus::Unpaid
        )
    }) {
        tx.rollback().await?;
        return Ok(());
    }
    let sub = match state.dunning.on_exhaustion {
        Exhaustion::Cancel => store::cancel_now(&mut tx, id, d.now).await?,
        Exhaustion::Unpaid => store::set_status(&mut tx, id, SubscriptionStatus::Unpaid).await?,
    };
    announce(&mut tx, &sub, None, d.now).await?;
    tx.commit().await?;
    state.outbox_wake.notify_waiters();
    tracing::warn!(subscription_id = %id, invoice_id = %ev.invoice_id, status = sub.status.as_str(), "subscription ended by dunning: its invoice is uncollectible");
    Ok(())
}

async fn set_status_if(
    state: &AppState,
    id: SubscriptionId,
    from: SubscriptionStatus,
    to: SubscriptionStatus,
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    let mut tx = state.cf.begin().await?;
    if store::get_for_update(&mut tx, id)
        .await?
        .is_none_or(|sub| sub.status != from)
    {
        tx.rollback().await?;
        return Ok(());
    }
    let sub = store::set_status(&mut tx, id, to).await?;
    announce(&mut tx, &sub, None, now).await?;
    tx.commit().await?;
    state.outbox_wake.notify_waiters();
    tracing::info!(subscription_id = %id, from = from.as_str(), to = to.as_str(), "subscription status");
    Ok(())
}

/// Longest a support agent extends a trial by at once, days.
pub const TRIAL_EXTENSION_DAYS_MAX: i64 = 90;

/// A support agent extends a trialing subscription's trial by `days` (1 to
/// [`TRIAL_EXTENSION_DAYS_MAX`]): its period, and so its first charge, moves later. 409
/// `not_trialing` otherwise. Audited with the period end before and after.
pub async fn extend_trial(
    state: &AppState,
    w: &crate::audit::Write<'_>,
    id: SubscriptionId,
    days: i64,
) -> Result<Subscription> {
    if !(1..=TRIAL_EXTENSION_DAYS_MAX).contains(&days) {
        return Err(Error::unprocessable(
            "invalid_days",
            format!("a trial is extended by 1 to {TRIAL_EXTENSION_DAYS_MAX} days"),
        ));
    }
    let out = crate::audit::audited(&state.cf, w, async |tx| {
        let sub = store::get_for_update(tx, id)
            .await?
            .ok_or_else(|| Error::not_found("subscription"))?;
        if sub.status != SubscriptionStatus::Trialing {
            return Err(Error::conflict(
                "not_trialing",
                "only a subscription in its trial can have the trial extended",
            ));
        }
        let end = sub
            .current_period_end
            .checked_add_signed(chrono::TimeDelta::days(days))
            .ok_or_else(|| Error::unprocessable("invalid_days", "the trial end overflows"))?;
        let after = store::set_period_end(tx, id, end).await?;
        announce(tx, &after, None, w.now).await?;
        let mut e = crate::audit::Effect::new(
            serde_json::json!({ "trial_end": sub.current_period_end }),
            serde_json::json!({ "trial_end": after.current_period_end }),
            after,
        );
        e.account = Some(sub.account_id);
        Ok(e)
    })
    .await?;
    state.outbox_wake.notify_waiters();
    Ok(out)
}

/// The billing anchors of those `accounts` that have a live subscription (usage counts their
/// monthly and yearly meters in its periods).
pub async fn anchors(
    state: &AppState,
    accounts: &[AccountId],
) -> Result<std::collections::HashMap<AccountId, DateTime<Utc>>> {
    let mut conn = state.cf.acquire().await?;
    Ok(store::anchors(&mut conn, accounts).await?)
}

/// Whether the account ever had a subscription (trials are for the first one).
pub async fn had_any(conn: &mut PgConnection, account: AccountId) -> sqlx::Result<bool> {
    Ok(!store::list(conn, account).await?.is_empty())
}

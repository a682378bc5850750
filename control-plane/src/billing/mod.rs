//! Billing in billing_prod: schedules, invoices, off-session charges.
//!
//! The lifecycle, each step one domain function:
//! 1. cf owns the subscription and rolls its period over ([`crate::subscriptions::renew_due`]);
//!    every revision reaches billing as a `billing.schedule` event. A revision that *started* a
//!    period ([`Started`]) makes its invoice: the first period's one is already paid (the
//!    checkout's on-session charge), a renewal's is a **draft** holding the fixed price for the
//!    coming period (in advance).
//! 2. A draft waits for the late-usage grace window, then [`invoices::finalize_due`] prices the
//!    metered usage of the period that ended (in arrears) by the terms it was sold with
//!    ([`Terms`], [`pricing`]), applies the customer's credit, numbers it and posts it to the
//!    [`crate::ledger`]: it is `open` and immutable.
//! 3. [`charges::charge_due`] collects open invoices off-session through the gateway, one
//!    `charge_attempts` row per try, the provider's idempotency key derived from the attempt.
//! 4. A finalised invoice is corrected only by a new document, a [`credit_notes`] note.
//!
//! Workers claim their rows with `FOR UPDATE SKIP LOCKED` in batches: any number of processes
//! run them, none leads.
//!
//! [`on_schedule`] is an idempotent consumer of `billing.schedule`: the event id goes into
//! `inbox` in the same billing transaction as its effects, so a redelivered event changes
//! nothing; a schedule is only overwritten by a *newer* subscription revision, so events
//! applied out of order cannot resurrect a canceled subscription; and an invoice exists once
//! per subscription period (a unique index), whichever revision announced it. Inbox ids are
//! pruned with the outbox's retention window ([`prune_inbox`]).

pub mod charges;
pub mod credit_notes;
pub mod credits;
pub mod invoices;
pub mod pass;
pub mod payments;
pub mod pdf;
pub mod pricing;
pub mod provider_payments;
pub mod refunds;
pub mod store;
pub mod voids;

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

/// What a subscription bills besides its fixed price, as it was sold: each metered feature's
/// pricing and the quantity the plan includes, and the add-ons it holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Terms {
    pub meters: Vec<MeterTerms>,
    /// Days of free trial the subscription starts with (0: none): nothing is charged and no
    /// usage billed until the trial ends.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub trial_days: u32,
    /// The add-ons held, by key, each billed per period in advance like the plan.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addons: Vec<AddonTerms>,
}

/// An add-on a subscription holds: how many, at the unit price it was sold at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddonTerms {
    pub addon: String,
    pub name: String,
    pub quantity: i64,
    pub unit_amount_minor: i64,
}

impl AddonTerms {
    /// `quantity × unit price` for one period.
    pub fn amount_minor(&self) -> Result<i64, crate::money::Overflow> {
        crate::money::mul(self.quantity, self.unit_amount_minor)
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeterTerms {
    /// The metered feature's key (its usage is counted under it).
    pub meter: String,
    /// What the plan grants before usage is billed (`None`: unlimited).
    pub included: Option<i64>,
    pub pricing: tollgate_rules::ir::Pricing,
}

impl Terms {
    /// The terms `plan` sells with: its meters, each with the plan's grant of the feature (no
    /// grant includes nothing).
    pub fn of_plan(plan: &tollgate_rules::Plan) -> Self {
        Self {
            meters: plan
                .meters
                .iter()
                .map(|m| MeterTerms {
                    meter: m.feature.clone(),
                    included: plan
                        .grants
                        .iter()
                        .find(|g| g.feature == m.feature)
                        .map_or(Some(0), |g| g.limit),
                    pricing: m.pricing.clone(),
                })
                .collect(),
            trial_days: 0,
            addons: Vec::new(),
        }
    }

    /// What the add-ons cost per period.
    pub fn addons_minor(&self) -> Result<i64, crate::money::Overflow> {
        self.addons
            .iter()
            .try_fold(0, |acc, a| crate::money::add(acc, a.amount_minor()?))
    }
}

/// The first period's on-session payment (the checkout's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirstPayment {
    /// The checkout that paid.
    pub checkout_id: crate::ids::CheckoutId,
    /// The provider's payment (`pi_…`).
    pub provider_payment_id: String,
    /// The gateway that took it (`stripe`, `simulated`).
    pub processor: String,
    pub amount_minor: i64,
}

/// A revision that started a billing period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Started {
    /// The subscription's first period; `paid` unless the plan is free.
    First { paid: Option<FirstPayment> },
    /// A renewal: the period that ended began at `previous_start` (its usage is billed now).
    Renewal { previous_start: DateTime<Utc> },
    /// The first paid period after a free trial (the trial's usage is not billed).
    TrialEnded,
}

/// A plan or add-on change applied mid-period: the unused part of the old price is credited,
/// the rest of the period at the new price charged, each by [`pricing::PRORATION_RULE`]
/// ([`invoices::proration_lines`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proration {
    /// The invoice the change makes (chosen by cf, so every path makes the same one).
    pub invoice_id: crate::ids::InvoiceId,
    pub at: DateTime<Utc>,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    pub from_plan: String,
    pub from_amount_minor: i64,
    pub to_plan: String,
    pub to_amount_minor: i64,
    /// The add-ons held before and after (both empty for a change of plan alone).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_addons: Vec<AddonTerms>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to_addons: Vec<AddonTerms>,
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
    /// The subscription's current period (absent in events written before invoicing existed).
    #[serde(default)]
    pub period_start: Option<DateTime<Utc>>,
    #[serde(default)]
    pub period_end: Option<DateTime<Utc>>,
    #[serde(default)]
    pub terms: Terms,
    /// Set when this revision started a period: billing makes that period's invoice.
    #[serde(default)]
    pub started: Option<Started>,
    /// Set when this revision changed the plan mid-period: billing makes its proration invoice.
    #[serde(default)]
    pub change: Option<Proration>,
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
    apply_schedule_event(&mut tx, d.id, &ev, state.usage_grace, d.now).await?;
    tx.commit().await?;
    Ok(())
}

/// Applies one event; returns whether it changed anything.
pub async fn apply_schedule_event(
    conn: &mut PgConnection,
    event_id: EventId,
    ev: &ScheduleEvent,
    grace: chrono::TimeDelta,
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
    let written = store::upsert_schedule(conn, ev, now).await?;
    let invoiced = match &ev.started {
        Some(started) => invoices::open_period(conn, ev, started, grace, now).await?,
        None => false,
    };
    let prorated = match &ev.change {
        Some(p) => invoices::open_change(conn, ev, p, now).await?.is_some(),
        None => false,
    };
    Ok(written || invoiced || prorated)
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

    const G: chrono::TimeDelta = chrono::TimeDelta::hours(1);

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
            period_start: None,
            period_end: None,
            terms: Terms::default(),
            started: None,
            change: None,
        }
    }

    #[sqlx::test(migrations = "../migrations/billing")]
    async fn schedule_events_apply_once_and_never_go_backwards(pool: PgPool) -> anyhow::Result<()> {
        use ScheduleStatus::{Active, Canceled};
        let mut conn = pool.acquire().await?;
        let sub = SubscriptionId::new_v7();
        let (e1, e2) = (EventId::new_v7(), EventId::new_v7());
        let now = Utc::now();
        assert!(apply_schedule_event(&mut conn, e1, &event(sub, Active, 1), G, now).await?);
        assert!(
            !apply_schedule_event(&mut conn, e1, &event(sub, Active, 1), G, now).await?,
            "redelivery is a no-op"
        );
        assert!(apply_schedule_event(&mut conn, e2, &event(sub, Canceled, 2), G, now).await?);
        // An older revision delivered late does not resurrect the schedule.
        assert!(
            !apply_schedule_event(&mut conn, EventId::new_v7(), &event(sub, Active, 1), G, now)
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

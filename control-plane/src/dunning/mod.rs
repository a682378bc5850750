//! Dunning in billing_prod: what happens after an off-session charge failed.
//!
//! * A failed charge (`billing.payment_failed`) opens a **case** for its invoice, once
//!   ([`on_payment_failed`]). A soft decline schedules the next retry by the [`Policy`] and sets
//!   the level (1–4) by how many retries failed; a **hard** decline (stolen, lost, fraudulent,
//!   `do_not_honor`, expired card, no usable method: [`policy::is_hard`]) schedules none and
//!   waits for a new payment method.
//! * Retries ([`retry_due`], maintenance) hand the invoice back to the off-session charger: each
//!   retry is a charge attempt of its own with its own provider idempotency key. The charger
//!   never starts one while an on-session payment of the invoice is in flight.
//! * The retry after the last one the policy allows **exhausts** the case: the invoice becomes
//!   `uncollectible` and its remaining amount is written off to bad debt in the ledger; cf
//!   learns it through `billing.invoice_uncollectible` (the subscription is canceled).
//! * Any payment of the invoice (a retry, the customer paying on-session, a retry asked for by a
//!   new payment method: [`on_payment_method_added`]) **recovers** the case
//!   ([`on_invoice_paid`]; the write-off is reversed where the payment is booked,
//!   [`crate::billing::invoices::record_payment`]).
//!
//! After each step the account's snapshot ([`AccountDunning`]: level, past due since, payment
//! method required, bad debt) is stored under the next version and sent to cf
//! (`billing.dunning_changed`), which applies only newer ones: the facts, the ban for bad debt
//! and the Dashboard follow. Every step is a row of the case's history.

pub mod policy;
pub mod store;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::billing::charges::{AttemptPresence, InvoicePaid, PaymentFailed};
use crate::billing::invoices::{self, InvoiceStatus};
use crate::ids::{AccountId, InvoiceId, SubscriptionId};
use crate::ledger::{self, Header, TxKind};
use crate::money::Currency;
use crate::outbox::{self, Delivery, Topic};
use crate::state::AppState;

pub use policy::Policy;

/// Where a case stands.
#[derive(
    utoipa::ToSchema, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type,
)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum CaseStatus {
    /// Retries are scheduled.
    Retrying,
    /// A hard decline: nothing is retried until a new payment method is added.
    AwaitingPaymentMethod,
    /// Every retry failed: the invoice is uncollectible and written off.
    Exhausted,
    /// The invoice got paid.
    Recovered,
}

/// What a row of a case's history records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum EventKind {
    Opened,
    RetryScheduled,
    RetryStarted,
    PaymentFailed,
    HardDecline,
    PaymentMethodAdded,
    Exhausted,
    Recovered,
}

/// A dunning case.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Case {
    pub id: Uuid,
    pub invoice_id: InvoiceId,
    #[sqlx(try_from = "Uuid")]
    pub account_id: AccountId,
    pub subscription_id: Option<SubscriptionId>,
    pub currency: Currency,
    pub status: CaseStatus,
    pub level: i32,
    pub retries: i32,
    pub next_retry_at: Option<DateTime<Utc>>,
    pub last_code: Option<String>,
    pub written_off_minor: i64,
    pub opened_at: DateTime<Utc>,
    pub exhausted_at: Option<DateTime<Utc>>,
    pub recovered_at: Option<DateTime<Utc>>,
}

/// What dunning says about an account: payload of `billing.dunning_changed` (with `version`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountDunning {
    /// The highest level of its open cases (0: none).
    pub level: i32,
    /// When its oldest unpaid case opened.
    pub past_due_since: Option<DateTime<Utc>>,
    /// A hard decline or an exhausted case: a new payment method is needed.
    pub payment_method_required: bool,
    /// Written off and not recovered, in minor units.
    pub bad_debt_minor: i64,
}

/// Payload of `billing.dunning_changed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DunningChanged {
    pub account_id: AccountId,
    pub version: i64,
    #[serde(flatten)]
    pub state: AccountDunning,
    /// The step that made this snapshot, when the customer is told about it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<Step>,
    /// When the snapshot was written (wall clock, unix µs), for propagation metrics: the
    /// edges measure a dunning step from here (not part of the webhook event).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed_at_us: Option<i64>,
}

/// What a customer is told at a step of dunning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum StepKind {
    /// The first failure (or one that needs a new payment method).
    PaymentFailed,
    RetryScheduled,
    /// The last retry is scheduled.
    FinalWarning,
    Uncollectible,
    Recovered,
}

/// A step of a case, as the customer hears of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub kind: StepKind,
    pub invoice_id: InvoiceId,
    #[serde(default)]
    pub invoice_number: Option<String>,
    pub amount_minor: i64,
    #[serde(default)]
    pub currency: Option<Currency>,
    #[serde(default)]
    pub next_retry_at: Option<DateTime<Utc>>,
}

impl Step {
    fn of(
        kind: StepKind,
        inv: &invoices::Invoice,
        amount_minor: i64,
        next: Option<DateTime<Utc>>,
    ) -> Self {
        Self {
            kind,
            invoice_id: inv.id,
            invoice_number: inv.number.clone(),
            amount_minor,
            currency: Some(inv.currency),
            next_retry_at: next,
        }
    }
}

/// Payload of `billing.invoice_uncollectible`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceUncollectible {
    pub invoice_id: InvoiceId,
    pub account_id: AccountId,
    pub subscription_id: Option<SubscriptionId>,
    pub written_off_minor: i64,
    pub currency: Currency,
}

/// Payload of cf's `dunning.payment_method_added`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentMethodAdded {
    pub account_id: AccountId,
}

/// The consumer of `billing.payment_failed` (in billing's relay transaction).
pub async fn on_payment_failed(
    state: &AppState,
    conn: &mut PgConnection,
    d: &Delivery,
) -> anyhow::Result<()> {
    let ev: PaymentFailed = d.payload()?;
    let now = d.now;
    let Some(inv) = crate::billing::store::invoice_for_update(conn, ev.invoice_id).await? else {
        anyhow::bail!("invoice {} of a failed payment vanished", ev.invoice_id);
    };
    if !matches!(
        inv.status,
        InvoiceStatus::Open | InvoiceStatus::Uncollectible
    ) || inv.amount_remaining_minor <= 0
    {
        return Ok(());
    }
    let cause = ev.decline_code.clone().unwrap_or_else(|| ev.code.clone());
    if ev.presence == AttemptPresence::OnSession {
        // The customer's own try: noted on a case there is, nothing rescheduled.
        if let Some(case) = store::of_invoice_for_update(conn, inv.id).await? {
            store::record(
                conn,
                case.id,
                EventKind::PaymentFailed,
                case.level,
                &format!("on-session: {cause}"),
                now,
            )
            .await?;
        }
        return Ok(());
    }
    let (mut case, opened) = store::open_for_update(
        conn,
        inv.id,
        ev.account_id,
        ev.subscription_id,
        inv.currency,
        now,
    )
    .await?;
    if opened {
        store::record(conn, case.id, EventKind::Opened, 1, &cause, now).await?;
    } else {
        store::record(
            conn,
            case.id,
            EventKind::PaymentFailed,
            case.level,
            &cause,
            now,
        )
        .await?;
    }
    case.last_code = Some(cause.clone());
    let owed = inv.amount_remaining_minor;
    let step = match case.status {
        CaseStatus::Recovered => return Ok(()),
        CaseStatus::Exhausted => {
            // A retry a new payment method asked for failed too: it stays written off.
            store::save(conn, &case, now).await?;
            Step::of(StepKind::PaymentFailed, &inv, owed, None)
        }
        _ if policy::is_hard(&ev.code, ev.decline_code.as_deref()) => {
            case.status = CaseStatus::AwaitingPaymentMethod;
            case.next_retry_at = None;
            store::save(conn, &case, now).await?;
            store::record(
                conn,
                case.id,
                EventKind::HardDecline,
                case.level,
                &cause,
                now,
            )
            .await?;
            Step::of(StepKind::PaymentFailed, &inv, owed, None)
        }
        _ => {
            let failed = u32::try_from(case.retries).unwrap_or(u32::MAX);
            match state.dunning.next_retry(case.opened_at, failed) {
                Some(at) => {
                    case.status = CaseStatus::Retrying;
                    case.level = state.dunning.level(failed);
                    case.next_retry_at = Some(at.max(now));
                    store::save(conn, &case, now).await?;
                    let when = at.to_rfc3339();
                    store::record(
                        conn,
                        case.id,
                        EventKind::RetryScheduled,
                        case.level,
                        &when,
                        now,
                    )
                    .await?;
                    let last = state
                        .dunning
                        .next_retry(case.opened_at, failed + 1)
                        .is_none();
                    let kind = match (opened, last) {
                        (true, _) => StepKind::PaymentFailed,
                        (false, true) => StepKind::FinalWarning,
                        (false, false) => StepKind::RetryScheduled,
                    };
                    Step::of(kind, &inv, owed, case.next_retry_at)
                }
                None => {
                    exhaust(conn, &mut case, &inv, now).await?;
                    Step::of(StepKind::Uncollectible, &inv, owed, None)
                }
            }
        }
    };
    refresh_account(conn, ev.account_id, Some(step), now).await
}

/// The case is used up: the invoice uncollectible, its remaining amount written off.
async fn exhaust(
    conn: &mut PgConnection,
    case: &mut Case,
    inv: &invoices::Invoice,
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    let amount = inv.amount_remaining_minor.max(0);
    store::set_uncollectible(conn, inv.id, now).await?;
    let header = Header {
        kind: TxKind::WriteOff,
        reference: inv.id.to_string(),
        account: inv.account_id,
        currency: inv.currency,
        description: format!(
            "invoice {} written off after dunning",
            inv.number.as_deref().unwrap_or("")
        ),
    };
    if let Some(tx) = ledger::write_off(header, amount)? {
        ledger::post(conn, &tx, now).await?;
    }
    case.status = CaseStatus::Exhausted;
    case.level = 4;
    case.next_retry_at = None;
    case.written_off_minor = amount;
    case.exhausted_at = Some(now);
    store::save(conn, case, now).await?;
    store::record(
        conn,
        case.id,
        EventKind::Exhausted,
        4,
        &format!("{amount} written off"),
        now,
    )
    .await?;
    outbox::enqueue(
        conn,
        Topic::BillingInvoiceUncollectible,
        &InvoiceUncollectible {
            invoice_id: inv.id,
            account_id: inv.account_id,
            subscription_id: inv.subscription_id,
            written_off_minor: amount,
            currency: inv.currency,
        },
        now,
    )
    .await?;
    tracing::warn!(invoice_id = %inv.id, account_id = %inv.account_id, amount, "dunning exhausted: invoice written off");
    Ok(())
}

/// The consumer of `billing.invoice_paid`: the invoice's case, if any, is recovered.
pub async fn on_invoice_paid(conn: &mut PgConnection, d: &Delivery) -> anyhow::Result<()> {
    let ev: InvoicePaid = d.payload()?;
    let step = crate::billing::store::invoice(conn, ev.invoice_id)
        .await?
        .map(|inv| Step::of(StepKind::Recovered, &inv, inv.amount_due_minor, None));
    close(
        conn,
        ev.invoice_id,
        ev.account_id,
        "invoice paid",
        step,
        d.now,
    )
    .await
}

/// A support agent voided `invoice`: its case (if any) ends here, in the void's transaction;
/// nothing is owed, so the customer is told nothing by dunning.
pub async fn on_invoice_voided(
    conn: &mut PgConnection,
    invoice: InvoiceId,
    account: AccountId,
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    close(conn, invoice, account, "invoice voided", None, now).await
}

/// Ends the invoice's case as recovered (`cause` says how) and refreshes the account's
/// dunning snapshot. Idempotent: a recovered case stays as it is.
async fn close(
    conn: &mut PgConnection,
    invoice: InvoiceId,
    account: AccountId,
    cause: &str,
    step: Option<Step>,
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    let Some(mut case) = store::of_invoice_for_update(conn, invoice).await? else {
        return Ok(());
    };
    if case.status == CaseStatus::Recovered {
        return Ok(());
    }
    case.status = CaseStatus::Recovered;
    case.next_retry_at = None;
    case.recovered_at = Some(now);
    store::save(conn, &case, now).await?;
    store::record(conn, case.id, EventKind::Recovered, case.level, cause, now).await?;
    refresh_account(conn, account, step, now).await
}

/// The consumer of cf's `dunning.payment_method_added` (its own billing transaction, applied
/// once through billing's inbox): the account's cases waiting for a method, and exhausted ones,
/// are retried at once.
pub async fn on_payment_method_added(state: &AppState, d: &Delivery) -> anyhow::Result<()> {
    let ev: PaymentMethodAdded = d.payload()?;
    let mut tx = state.billing.begin().await?;
    if !crate::billing::store::admit(&mut tx, d.id, d.now).await? {
        tx.rollback().await?;
        return Ok(());
    }
    let cases = store::unrecovered_for_update(&mut tx, ev.account_id).await?;
    if cases.is_empty() {
        // Not in dunning: nothing to retry, nothing to tell cf.
        tx.commit().await?;
        return Ok(());
    }
    for mut case in cases {
        store::record(
            &mut tx,
            case.id,
            EventKind::PaymentMethodAdded,
            case.level,
            "retrying at once",
            d.now,
        )
        .await?;
        match case.status {
            CaseStatus::AwaitingPaymentMethod | CaseStatus::Retrying => {
                case.status = CaseStatus::Retrying;
                case.next_retry_at = Some(d.now);
                store::save(&mut tx, &case, d.now).await?;
            }
            CaseStatus::Exhausted => {
                store::charge_at(&mut tx, case.invoice_id, d.now).await?;
            }
            CaseStatus::Recovered => {}
        }
    }
    refresh_account(&mut tx, ev.account_id, None, d.now).await?;
    tx.commit().await?;
    state.billing_outbox_wake.notify_waiters();
    Ok(())
}

/// A support agent's retry of invoice `invoice` now (the next maintenance pass charges it),
/// whatever the schedule says; 404 without a case, 409 `not_in_dunning` once it is recovered.
/// Audited in billing_prod with the case's change.
pub async fn retry_now(
    state: &AppState,
    w: &crate::audit::Write<'_>,
    invoice: InvoiceId,
) -> crate::error::Result<Case> {
    use crate::error::Error;
    let out = crate::audit::audited(&state.billing, w, async |tx| {
        let mut case = store::of_invoice_for_update(tx, invoice)
            .await?
            .ok_or_else(|| Error::not_found("dunning case"))?;
        if case.status == CaseStatus::Recovered {
            return Err(Error::conflict(
                "not_in_dunning",
                "this invoice's dunning case is recovered",
            ));
        }
        let before =
            serde_json::json!({ "status": case.status, "next_retry_at": case.next_retry_at });
        store::record(
            tx,
            case.id,
            EventKind::RetryScheduled,
            case.level,
            &format!("retry now by {}", w.agent.email),
            w.now,
        )
        .await?;
        if case.status == CaseStatus::Exhausted {
            store::charge_at(tx, case.invoice_id, w.now).await?;
        } else {
            case.status = CaseStatus::Retrying;
            case.next_retry_at = Some(w.now);
            store::save(tx, &case, w.now).await?;
        }
        let after =
            serde_json::json!({ "status": case.status, "next_retry_at": case.next_retry_at });
        let account = case.account_id;
        let mut e = crate::audit::Effect::new(before, after, case);
        e.account = Some(account);
        Ok(e)
    })
    .await?;
    state.billing_outbox_wake.notify_waiters();
    Ok(out)
}

/// Hands the cases whose retry is due to the off-session charger, in batches claimed with
/// `FOR UPDATE SKIP LOCKED`. Returns how many.
pub async fn retry_due(state: &AppState, batch: i64) -> anyhow::Result<usize> {
    let now = state.clock.now();
    let mut tx = state.billing.begin().await?;
    let due = store::claim_due(&mut tx, now, batch).await?;
    for mut case in due.iter().cloned() {
        case.next_retry_at = None;
        if store::charge_at(&mut tx, case.invoice_id, now).await? {
            case.retries += 1;
            store::record(
                &mut tx,
                case.id,
                EventKind::RetryStarted,
                case.level,
                &format!("retry {}", case.retries),
                now,
            )
            .await?;
        }
        store::save(&mut tx, &case, now).await?;
    }
    tx.commit().await?;
    Ok(due.len())
}

/// Recomputes the account's snapshot from its cases, stores it under the next version and
/// sends it to cf, in the caller's transaction.
async fn refresh_account(
    conn: &mut PgConnection,
    account: AccountId,
    step: Option<Step>,
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    let cases = store::unrecovered_for_update(conn, account).await?;
    let state = AccountDunning {
        level: cases.iter().map(|c| c.level).max().unwrap_or(0),
        past_due_since: cases.iter().map(|c| c.opened_at).min(),
        payment_method_required: cases.iter().any(|c| {
            matches!(
                c.status,
                CaseStatus::AwaitingPaymentMethod | CaseStatus::Exhausted
            )
        }),
        bad_debt_minor: crate::money::sum(cases.iter().map(|c| c.written_off_minor))?,
    };
    let version = store::put_account(conn, account, &state, now).await?;
    outbox::enqueue(
        conn,
        Topic::BillingDunningChanged,
        &DunningChanged {
            account_id: account,
            version,
            state,
            step,
            changed_at_us: Some(crate::clock::wall_us()),
        },
        now,
    )
    .await?;
    Ok(())
}

/// What the Dashboard shows of an account's dunning: its oldest open case.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Standing {
    pub level: i32,
    pub status: CaseStatus,
    pub days_past_due: i64,
    pub next_retry_at: Option<DateTime<Utc>>,
    pub invoice: InvoiceId,
    pub opened_at: DateTime<Utc>,
}

/// The account's current dunning, if any.
pub async fn current(state: &AppState, account: AccountId) -> sqlx::Result<Option<Standing>> {
    let mut conn = state.billing.acquire().await?;
    let now = state.clock.now();
    Ok(store::current(&mut conn, account).await?.map(|c| Standing {
        level: c.level,
        status: c.status,
        days_past_due: (now - c.opened_at).num_days().max(0),
        next_retry_at: c.next_retry_at,
        invoice: c.invoice_id,
        opened_at: c.opened_at,
    }))
}

/// A case and its history, by invoice (tests, the support panel).
pub async fn case_of(
    state: &AppState,
    invoice: InvoiceId,
) -> sqlx::Result<Option<(Case, Vec<(DateTime<Utc>, EventKind, i32, String)>)>> {
    let mut tx = state.billing.begin().await?;
    let Some(case) = store::of_invoice_for_update(&mut tx, invoice).await? else {
        tx.rollback().await?;
        return Ok(None);
    };
    let history = store::history(&mut tx, case.id).await?;
    tx.rollback().await?;
    Ok(Some((case, history)))
}

//! Invoices: made when a period starts ([`open_period`]), finalised after the late-usage grace
//! window ([`finalize_due`]), read by the customer ([`list`], [`get`]).
//!
//! Amounts: `subtotal = total = Σ lines` (no tax or discounts yet); the customer's credit is
//! applied up to a positive total (`credit_applied`); `amount_due = max(total, 0) − credit
//! applied`. A negative total (a downgrade's proration) becomes customer credit. The database
//! checks the same equations, and a finalised invoice's amounts and lines cannot change.

use chrono::{DateTime, Datelike, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

use super::pricing::{self, TierCharge};
use super::store;
use super::{AddonTerms, Proration, ScheduleEvent, Started, Terms};
use crate::error::{Error, Result};
use crate::ids::{AccountId, InvoiceId, SubscriptionId};
use crate::ledger::{self, Header, Revenue, RevenueLine, TxKind};
use crate::money::{self, Currency};
use crate::state::AppState;

#[derive(
    utoipa::ToSchema, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type,
)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum InvoiceStatus {
    Draft,
    Open,
    Paid,
    Uncollectible,
    Void,
}

/// Why an invoice exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum InvoiceReason {
    /// The first period, paid at checkout.
    SubscriptionCreate,
    /// A renewal.
    SubscriptionCycle,
    /// A plan change's proration.
    SubscriptionUpdate,
}

#[derive(
    utoipa::ToSchema, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type,
)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum LineKind {
    Plan,
    Addon,
    Metered,
    /// A plan change's proration.
    Proration,
    /// An add-on quantity change's proration.
    AddonProration,
}

/// One line of an invoice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    pub kind: LineKind,
    pub description: String,
    pub quantity: i64,
    pub amount_minor: i64,
    /// Metered lines: the meter billed.
    pub meter: Option<String>,
    /// Tiered pricing: how the quantity fell into the tiers.
    pub tiers: Option<Vec<TierCharge>>,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    /// The plan, meter or add-on key the line earns revenue from (the ledger's revenue
    /// account).
    #[serde(skip)]
    pub revenue_key: String,
}

impl Line {
    fn revenue(&self) -> Revenue {
        let k = self.revenue_key.clone();
        match self.kind {
            LineKind::Plan | LineKind::Proration => Revenue::Plan(k),
            LineKind::Addon | LineKind::AddonProration => Revenue::Addon(k),
            LineKind::Metered => Revenue::Meter(k),
        }
    }
}

/// An invoice with its lines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invoice {
    pub id: InvoiceId,
    pub account_id: AccountId,
    pub subscription_id: Option<SubscriptionId>,
    pub number: Option<String>,
    pub status: InvoiceStatus,
    pub reason: InvoiceReason,
    pub currency: Currency,
    pub subtotal_minor: i64,
    pub credit_applied_minor: i64,
    pub total_minor: i64,
    pub amount_due_minor: i64,
    pub amount_paid_minor: i64,
    /// What credit notes credited against this invoice in all.
    pub credit_noted_minor: i64,
    /// The part of that which reduced what the invoice asks for (the rest became credit).
    pub amount_credited_minor: i64,
    /// What is still owed: `amount_due − amount_paid − amount_credited`.
    pub amount_remaining_minor: i64,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    pub usage_start: Option<DateTime<Utc>>,
    pub usage_end: Option<DateTime<Utc>>,
    pub finalize_at: DateTime<Utc>,
    pub finalized_at: Option<DateTime<Utc>>,
    pub paid_at: Option<DateTime<Utc>>,
    pub voided_at: Option<DateTime<Utc>>,
    pub action_required: bool,
    pub created_at: DateTime<Utc>,
    pub lines: Vec<Line>,
}

impl Invoice {
    /// Whether a payment can still be taken for it: open, or written off by dunning (a late
    /// payment recovers it).
    pub fn collectable(&self) -> bool {
        matches!(
            self.status,
            InvoiceStatus::Open | InvoiceStatus::Uncollectible
        )
    }
}

/// The amounts of an invoice from its lines and the credit available.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub subtotal_minor: i64,
    pub total_minor: i64,
    pub credit_applied_minor: i64,
    pub amount_due_minor: i64,
}

impl Totals {
    pub fn of(lines: &[Line], credit_available: i64) -> Result<Self, money::Overflow> {
        let total = money::sum(lines.iter().map(|l| l.amount_minor))?;
        let applied = credit_available.clamp(0, total.max(0));
        Ok(Self {
            subtotal_minor: total,
            total_minor: total,
            credit_applied_minor: applied,
            amount_due_minor: total.max(0) - applied,
        })
    }
}

fn day(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d").to_string()
}

/// The fixed line of a plan for one period.
pub fn plan_line(plan: &str, amount_minor: i64, start: DateTime<Utc>, end: DateTime<Utc>) -> Line {
    Line {
        kind: LineKind::Plan,
        description: format!("{plan} plan, {} to {}", day(start), day(end)),
        quantity: 1,
        amount_minor,
        meter: None,
        tiers: None,
        period_start: start,
        period_end: end,
        revenue_key: plan.to_owned(),
    }
}

/// One line per add-on held, for one period (in advance, like the plan's).
pub fn addon_lines(
    addons: &[AddonTerms],
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Result<Vec<Line>, money::Overflow> {
    addons
        .iter()
        .map(|a| {
            Ok(Line {
                kind: LineKind::Addon,
                description: format!(
                    "{} × {}, {} to {}",
                    a.quantity,
                    a.name,
                    day(start),
                    day(end)
                ),
                quantity: a.quantity,
                amount_minor: a.amount_minor()?,
                meter: None,
                tiers: None,
                period_start: start,
                period_end: end,
                revenue_key: a.addon.clone(),
            })
        })
        .collect()
}

/// The metered lines for `usage` (meter → quantity) under `terms`, for `[start, end)`. A meter
/// with no usage and nothing to bill gets no line.
pub fn metered_lines(
    terms: &Terms,
    usage: &[(String, i64)],
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Result<Vec<Line>, money::Overflow> {
    let mut lines = Vec::new();
    for m in &terms.meters {
        let quantity = usage
            .iter()
            .filter(|(k, _)| *k == m.meter)
            .map(|(_, q)| *q)
            .sum::<i64>();
        if quantity == 0 {
            continue;
        }
        let priced = pricing::price(&m.pricing, m.included, quantity)?;
        let tiered = !priced.tiers.is_empty();
        let included = match m.included {
            Some(n) if !tiered && n > 0 => format!(", {n} included"),
            None if !tiered => ", unlimited included".to_owned(),
            _ => String::new(),
        };
        lines.push(Line {
            kind: LineKind::Metered,
            description: format!(
                "{} usage, {} to {}: {quantity} units{included}",
                m.meter,
                day(start),
                day(end)
            ),
            quantity,
            amount_minor: priced.amount_minor,
            meter: Some(m.meter.clone()),
            tiers: tiered.then_some(priced.tiers),
            period_start: start,
            period_end: end,
            revenue_key: m.meter.clone(),
        });
    }
    Ok(lines)
}

/// How long a plan change's invoice waits for its on-session payment before the off-session
/// charger collects it.
pub const CHANGE_ON_SESSION_WINDOW: TimeDelta = TimeDelta::minutes(30);

/// The lines of a mid-period change by [`pricing::PRORATION_RULE`]: for the plan and for each
/// add-on whose quantity changed, a credit for the unused part of the old amount and a charge
/// for the rest of the period at the new one (what did not change gets no line). The
/// invoice's total is their sum.
pub fn proration_lines(p: &Proration) -> Result<Vec<Line>, money::Overflow> {
    let period = (p.period_end - p.period_start).num_seconds();
    let remaining = (p.period_end - p.at).num_seconds();
    let line = |kind: LineKind, what: String, key: &str, quantity: i64, amount_minor: i64| Line {
        kind,
        description: format!("{what}, {} to {}", day(p.at), day(p.period_end)),
        quantity,
        amount_minor,
        meter: None,
        tiers: None,
        period_start: p.at,
        period_end: p.period_end,
        revenue_key: key.to_owned(),
    };
    let mut lines = Vec::new();
    if p.from_plan != p.to_plan || p.from_amount_minor != p.to_amount_minor {
        let credit = pricing::prorate(p.from_amount_minor, remaining, period);
        let charge = pricing::prorate(p.to_amount_minor, remaining, period);
        lines.push(line(
            LineKind::Proration,
            format!("Unused time on {} plan", p.from_plan),
            &p.from_plan,
            1,
            -credit,
        ));
        lines.push(line(
            LineKind::Proration,
            format!("Remaining time on {} plan", p.to_plan),
            &p.to_plan,
            1,
            charge,
        ));
    }
    let mut keys: Vec<&str> = p
        .from_addons
        .iter()
        .chain(&p.to_addons)
        .map(|a| a.addon.as_str())
        .collect();
    keys.sort_unstable();
    keys.dedup();
    for key in keys {
        let from = p.from_addons.iter().find(|a| a.addon == key);
        let to = p.to_addons.iter().find(|a| a.addon == key);
        if from == to {
            continue;
        }
        if let Some(a) = from {
            let credit = pricing::prorate(a.amount_minor()?, remaining, period);
            lines.push(line(
                LineKind::AddonProration,
                format!("Unused time on {} × {}", a.quantity, a.name),
                key,
                a.quantity,
                -credit,
            ));
        }
        if let Some(a) = to {
            let charge = pricing::prorate(a.amount_minor()?, remaining, period);
            lines.push(line(
                LineKind::AddonProration,
                format!("Remaining time on {} × {}", a.quantity, a.name),
                key,
                a.quantity,
                charge,
            ));
        }
    }
    Ok(lines)
}

/// Makes and finalises the invoice of a mid-period plan change (idempotent by its id): a
/// positive total is owed (paid on-session by the change, else collected off-session after
/// [`CHANGE_ON_SESSION_WINDOW`]), a negative one becomes customer credit. Returns the invoice
/// when made now.
pub async fn open_change(
    conn: &mut PgConnection,
    ev: &ScheduleEvent,
    p: &Proration,
    now: DateTime<Utc>,
) -> anyhow::Result<Option<Invoice>> {
    let currency: Currency = ev.currency.parse()?;
    let lines = proration_lines(p)?;
    let draft = store::NewInvoice {
        id: p.invoice_id,
        account: ev.account_id,
        subscription: Some(ev.subscription_id),
        reason: InvoiceReason::SubscriptionUpdate,
        currency,
        period: (p.at, p.period_end),
        usage: None,
        terms: &ev.terms,
        finalize_at: now,
        now,
    };
    if !store::insert_draft(conn, &draft, &lines).await? {
        return Ok(None);
    }
    let inv = store::invoice_for_update(conn, p.invoice_id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("draft {} vanished", p.invoice_id))?;
    let credit = ledger::credit_held(conn, ev.account_id, currency).await?;
    let inv = finalize_in(conn, inv, credit, now, now + CHANGE_ON_SESSION_WINDOW).await?;
    Ok(Some(inv))
}

/// Makes the invoice of the period a schedule event started (idempotent: one per subscription,
/// period and reason). Returns whether it was made now.
pub async fn open_period(
    conn: &mut PgConnection,
    ev: &ScheduleEvent,
    started: &Started,
    grace: TimeDelta,
    now: DateTime<Utc>,
) -> anyhow::Result<bool> {
    let (Some(start), Some(end)) = (ev.period_start, ev.period_end) else {
        anyhow::bail!("a period-start event without its period");
    };
    let currency: Currency = ev.currency.parse()?;
    let trial = matches!(started, Started::First { .. }) && ev.terms.trial_days > 0;
    let lines = if trial {
        let mut line = plan_line(&ev.plan_key, 0, start, end);
        line.description = format!(
            "{} plan, free trial of {} days, {} to {}",
            ev.plan_key,
            ev.terms.trial_days,
            day(start),
            day(end)
        );
        let mut lines = vec![line];
        // The add-ons are free for the trial too.
        for mut a in addon_lines(&ev.terms.addons, start, end)? {
            a.amount_minor = 0;
            a.description = format!("{}, free trial", a.description);
            lines.push(a);
        }
        lines
    } else {
        let mut lines = vec![plan_line(&ev.plan_key, ev.amount_minor, start, end)];
        lines.extend(addon_lines(&ev.terms.addons, start, end)?);
        lines
    };
    let (reason, usage, finalize_at) = match started {
        Started::First { .. } => (InvoiceReason::SubscriptionCreate, None, now),
        Started::Renewal { previous_start } => (
            InvoiceReason::SubscriptionCycle,
            Some((*previous_start, start)),
            start + grace,
        ),
        Started::TrialEnded => (InvoiceReason::SubscriptionCycle, None, now),
    };
    let draft = store::NewInvoice {
        id: InvoiceId::new_v7(),
        account: ev.account_id,
        subscription: Some(ev.subscription_id),
        reason,
        currency,
        period: (start, end),
        usage,
        terms: &ev.terms,
        finalize_at,
        now,
    };
    if !store::insert_draft(conn, &draft, &lines).await? {
        return Ok(false);
    }
    if let Started::First { paid } = started {
        // The first period: finalised at once; paid on-session by the checkout (or free).
        let inv = store::invoice_for_update(conn, draft.id)
            .await?
            .ok_or_else(|| anyhow::anyhow!("draft {} vanished", draft.id))?;
        let paid_at_checkout = paid.as_ref().filter(|p| p.amount_minor > 0);
        let credit = if paid_at_checkout.is_some() {
            // The customer paid the whole price on-session; credit waits for the next invoice.
            0
        } else {
            ledger::credit_held(conn, ev.account_id, currency).await?
        };
        let inv = finalize_in(conn, inv, credit, now, now).await?;
        if let Some(p) = paid_at_checkout {
            record_payment(
                conn,
                &inv,
                &format!("checkout:{}", p.checkout_id),
                &p.processor,
                p.amount_minor.min(inv.amount_due_minor),
                now,
            )
            .await?;
        }
    }
    Ok(true)
}

/// Finalises `inv` (a draft, locked by the caller): prices its metered usage, applies up to
/// `credit_available`, numbers it, posts it to the ledger. An invoice with nothing due is paid
/// at once.
pub async fn finalize_in(
    conn: &mut PgConnection,
    inv: Invoice,
    credit_available: i64,
    now: DateTime<Utc>,
    charge_at: DateTime<Utc>,
) -> anyhow::Result<Invoice> {
    anyhow::ensure!(
        inv.status == InvoiceStatus::Draft,
        "invoice {} is not a draft",
        inv.id
    );
    let mut lines: Vec<Line> = inv
        .lines
        .iter()
        .filter(|l| l.kind != LineKind::Metered)
        .cloned()
        .collect();
    if let (Some(us), Some(ue)) = (inv.usage_start, inv.usage_end) {
        let terms = store::invoice_terms(conn, inv.id).await?;
        let usage = store::usage_between(conn, inv.account_id, us, ue).await?;
        lines.extend(metered_lines(&terms, &usage, us, ue)?);
    }
    let totals = Totals::of(&lines, credit_available)?;
    let number = store::next_number(conn, now.year()).await?;
    store::replace_lines(conn, inv.id, &lines).await?;
    store::finalize(conn, inv.id, &number, &totals, now, charge_at).await?;
    let header = Header {
        kind: TxKind::InvoiceFinalized,
        reference: inv.id.to_string(),
        account: inv.account_id,
        currency: inv.currency,
        description: format!("invoice {number}"),
    };
    let revenue: Vec<RevenueLine> = lines
        .iter()
        .map(|l| RevenueLine {
            source: l.revenue(),
            amount_minor: l.amount_minor,
        })
        .collect();
    if let Some(tx) = ledger::invoice_finalized(header, &revenue, totals.credit_applied_minor)? {
        ledger::post(conn, &tx, now).await?;
    }
    let inv = store::invoice_for_update(conn, inv.id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("invoice vanished"))?;
    crate::outbox::enqueue(
        conn,
        crate::outbox::Topic::BillingInvoiceFinalized,
        &InvoiceFinalized {
            invoice_id: inv.id,
            account_id: inv.account_id,
            subscription_id: inv.subscription_id,
            number: number.clone(),
            currency: inv.currency,
            total_minor: inv.total_minor,
            amount_due_minor: inv.amount_due_minor,
            status: inv.status,
        },
        now,
    )
    .await?;
    Ok(inv)
}

/// Payload of `billing.invoice_finalized`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceFinalized {
    pub invoice_id: InvoiceId,
    pub account_id: AccountId,
    pub subscription_id: Option<SubscriptionId>,
    pub number: String,
    pub currency: Currency,
    pub total_minor: i64,
    pub amount_due_minor: i64,
    /// `open`, or `paid` when nothing was due.
    pub status: InvoiceStatus,
}

/// Books a payment of `amount_minor` against an open invoice (the ledger's `payment`,
/// referenced by what paid it) and marks the invoice paid when nothing is left due. Returns
/// whether the invoice is now paid.
pub async fn record_payment(
    conn: &mut PgConnection,
    inv: &Invoice,
    reference: &str,
    processor: &str,
    amount_minor: i64,
    now: DateTime<Utc>,
) -> anyhow::Result<bool> {
    let header = Header {
        kind: TxKind::Payment,
        reference: reference.to_owned(),
        account: inv.account_id,
        currency: inv.currency,
        description: format!(
            "payment of invoice {}",
            inv.number.as_deref().unwrap_or("draft")
        ),
    };
    if inv.status == InvoiceStatus::Uncollectible {
        // Written off by dunning and paid after all: owed again first, then paid.
        let reversal = Header {
            kind: TxKind::WriteOffReversal,
            reference: inv.id.to_string(),
            account: inv.account_id,
            currency: inv.currency,
            description: format!(
                "write-off of invoice {} reversed: paid",
                inv.number.as_deref().unwrap_or("")
            ),
        };
        if let Some(tx) = ledger::write_off_reversal(reversal, inv.amount_remaining_minor)? {
            ledger::post(conn, &tx, now).await?;
        }
    }
    if let Some(tx) = ledger::payment(header, processor, amount_minor)? {
        ledger::post(conn, &tx, now).await?;
    }
    let paid = money::add(inv.amount_paid_minor, amount_minor)?;
    Ok(store::mark_paid(conn, inv.id, paid, now).await?)
}

/// Finalises up to `batch` drafts whose grace window ended, claimed with `FOR UPDATE SKIP
/// LOCKED`, in one transaction. Returns them as finalised.
pub async fn finalize_due(state: &AppState, batch: i64) -> anyhow::Result<Vec<Invoice>> {
    let now = state.clock.now();
    let mut tx = state.billing.begin().await?;
    let due = store::claim_drafts(&mut tx, now, batch).await?;
    let mut done = Vec::with_capacity(due.len());
    for id in due {
        let Some(inv) = store::invoice_for_update(&mut tx, id).await? else {
            continue;
        };
        let credit = ledger::credit_held(&mut tx, inv.account_id, inv.currency).await?;
        done.push(finalize_in(&mut tx, inv, credit, now, now).await?);
    }
    tx.commit().await?;
    if !done.is_empty() {
        tracing::info!(invoices = done.len(), "invoices finalised");
    }
    Ok(done)
}

/// One of the account's invoices as a PDF: its file name (`TG-2026-000001.pdf`) and bytes.
pub async fn pdf(state: &AppState, account: AccountId, id: InvoiceId) -> Result<(String, Vec<u8>)> {
    let inv = get(state, account, id).await?;
    let acct = crate::accounts::get(state, account).await?;
    let to = super::pdf::BillTo {
        name: acct.name.clone(),
        email: acct.email.clone(),
        account_id: account.to_string(),
    };
    let name = format!("{}.pdf", inv.number.as_deref().unwrap_or("draft-invoice"));
    let bytes = tokio::task::spawn_blocking(move || super::pdf::render(&inv, &to))
        .await
        .map_err(Error::internal)?;
    Ok((name, bytes))
}

/// Most invoices one page holds.
pub const PAGE_MAX: i64 = 100;

/// `GET /v1/invoices` paging: `limit` (1..=100, default 10) invoices after `starting_after`
/// (the last id of the previous page).
#[derive(utoipa::IntoParams, Debug, Clone, Default, Deserialize)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct Page {
    pub limit: Option<i64>,
    pub starting_after: Option<InvoiceId>,
}

/// One page of an account's invoices, newest first, and whether more follow.
pub async fn list(
    state: &AppState,
    account: AccountId,
    page: &Page,
) -> Result<(Vec<Invoice>, bool)> {
    let limit = page.limit.unwrap_or(10);
    if !(1..=PAGE_MAX).contains(&limit) {
        return Err(Error::bad_request(
            "invalid_limit",
            format!("limit must be 1..={PAGE_MAX}"),
        ));
    }
    let mut conn = state.billing.acquire().await?;
    if let Some(after) = page.starting_after {
        let mine = store::invoice(&mut conn, after)
            .await?
            .is_some_and(|i| i.account_id == account);
        if !mine {
            return Err(Error::not_found("invoice"));
        }
    }
    let mut list = store::list_invoices(&mut conn, account, limit + 1, page.starting_after).await?;
    let more = list.len() as i64 > limit;
    list.truncate(usize::try_from(limit).unwrap_or(0));
    Ok((list, more))
}

/// One of the account's invoices (`not_found` for another account's id).
pub async fn get(state: &AppState, account: AccountId, id: InvoiceId) -> Result<Invoice> {
    let mut conn = state.billing.acquire().await?;
    store::invoice(&mut conn, id)
        .await?
        .filter(|i| i.account_id == account)
        .ok_or_else(|| Error::not_found("invoice"))
}

/// The billing side of an account's view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccountBilling {
    /// What the account owes (positive) or holds as credit (negative), per the ledger.
    pub balance_minor: i64,
    /// The currency it is billed in (its latest invoice's; USD before any).
    pub currency: Currency,
    /// An open invoice waits for the customer to authenticate a payment.
    pub action_required: bool,
}

pub async fn account_billing(state: &AppState, account: AccountId) -> Result<AccountBilling> {
    let mut conn = state.billing.acquire().await?;
    let (currency, action_required) = store::billing_summary(&mut conn, account).await?;
    let currency = currency.unwrap_or(Currency::USD);
    let balance_minor = balance(&mut conn, account, currency).await?;
    Ok(AccountBilling {
        balance_minor,
        currency,
        action_required,
    })
}

/// What the account owes (positive) or holds as credit (negative), per the ledger, in
/// `currency`.
pub async fn balance(
    conn: &mut PgConnection,
    account: AccountId,
    currency: Currency,
) -> Result<i64> {
    let receivable = ledger::balance(
        &mut *conn,
        account,
        &ledger::LedgerAccount::Receivable,
        currency,
    )
    .await?;
    let credit = ledger::credit_held(conn, account, currency).await?;
    money::sub(receivable, credit).map_err(|_| Error::internal("balance overflows"))
}

/// Whether the invoice is still owed (open, something left to pay).
pub async fn still_owed(conn: &mut PgConnection, id: InvoiceId) -> sqlx::Result<bool> {
    Ok(store::invoice(conn, id)
        .await?
        .is_some_and(|i| i.collectable() && i.amount_remaining_minor > 0))
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// A change's lines sum to its total exactly, each is bounded by its price, and the
        /// total is within one minor unit of the exact prorated difference.
        #[test]
        fn proration_lines_sum_to_the_total_and_stay_within_their_prices(
            from in 0i64..10_000_000,
            to in 0i64..10_000_000,
            period_secs in 1i64..40_000_000,
            elapsed in 0i64..40_000_000,
        ) {
            let start = Utc.with_ymd_and_hms(2027, 1, 31, 10, 0, 0).single().unwrap();
            let end = start + TimeDelta::seconds(period_secs);
            let at = start + TimeDelta::seconds(elapsed.min(period_secs));
            let p = Proration {
                invoice_id: InvoiceId::new_v7(),
                at,
                period_start: start,
                period_end: end,
                from_plan: "a".into(),
                from_amount_minor: from,
                to_plan: "b".into(),
                to_amount_minor: to,
                from_addons: Vec::new(),
                to_addons: Vec::new(),
            };
            let lines = proration_lines(&p).unwrap();
            let t = Totals::of(&lines, 0).unwrap();
            prop_assert_eq!(t.total_minor, lines[0].amount_minor + lines[1].amount_minor);
            prop_assert!(-lines[0].amount_minor <= from && lines[1].amount_minor <= to);
            prop_assert!(lines[0].amount_minor <= 0 && lines[1].amount_minor >= 0);
            let remaining = (end - at).num_seconds();
            let exact = (i128::from(to) - i128::from(from)) * i128::from(remaining);
            let got = i128::from(t.total_minor) * i128::from(period_secs);
            prop_assert!((exact - got).abs() <= i128::from(period_secs));
            prop_assert_eq!(t.amount_due_minor, t.total_minor.max(0));
        }

        /// Add-on quantity changes: only what changed gets lines, the lines sum to the total,
        /// each within its amount, the total within one minor unit per line of the exact
        /// prorated difference.
        #[test]
        fn addon_proration_lines_cover_exactly_what_changed(
            from in proptest::collection::btree_map(0u8..4, (0i64..100, 0i64..1_000_000), 0..4),
            to in proptest::collection::btree_map(0u8..4, (0i64..100, 0i64..1_000_000), 0..4),
            period_secs in 1i64..40_000_000,
            elapsed in 0i64..40_000_000,
        ) {
            let held = |m: &std::collections::BTreeMap<u8, (i64, i64)>| -> Vec<AddonTerms> {
                m.iter()
                    .filter(|(_, (q, _))| *q > 0)
                    .map(|(k, (q, u))| AddonTerms {
                        addon: format!("a{k}"),
                        name: format!("A{k}"),
                        quantity: *q,
                        unit_amount_minor: *u,
                    })
                    .collect()
            };
            let (from, to) = (held(&from), held(&to));
            let start = Utc.with_ymd_and_hms(2027, 1, 31, 10, 0, 0).single().unwrap();
            let end = start + TimeDelta::seconds(period_secs);
            let at = start + TimeDelta::seconds(elapsed.min(period_secs));
            let p = Proration {
                invoice_id: InvoiceId::new_v7(),
                at,
                period_start: start,
                period_end: end,
                from_plan: "pro".into(),
                from_amount_minor: 2900,
                to_plan: "pro".into(),
                to_amount_minor: 2900,
                from_addons: from.clone(),
                to_addons: to.clone(),
            };
            let lines = proration_lines(&p).unwrap();
            let t = Totals::of(&lines, 0).unwrap();
            prop_assert_eq!(t.total_minor, lines.iter().map(|l| l.amount_minor).sum::<i64>());
            prop_assert!(lines.iter().all(|l| l.kind == LineKind::AddonProration));
            let changed = |a: &AddonTerms, other: &[AddonTerms]| !other.contains(a);
            let credited: Vec<&AddonTerms> = from.iter().filter(|a| changed(a, &to)).collect();
            let charged: Vec<&AddonTerms> = to.iter().filter(|a| changed(a, &from)).collect();
            prop_assert_eq!(lines.len(), credited.len() + charged.len());
            for l in &lines {
                let bound = from.iter().chain(&to)
                    .filter(|a| a.addon == l.revenue_key && a.quantity == l.quantity)
                    .map(|a| a.amount_minor().unwrap())
                    .max()
                    .unwrap();
                prop_assert!(l.amount_minor.abs() <= bound);
            }
            let remaining = i128::from((end - at).num_seconds());
            let sum = |v: &[&AddonTerms]| v.iter().map(|a| i128::from(a.amount_minor().unwrap())).sum::<i128>();
            let exact = (sum(&charged) - sum(&credited)) * remaining;
            let got = i128::from(t.total_minor) * i128::from(period_secs);
            let n = i128::try_from(lines.len()).unwrap().max(1);
            prop_assert!((exact - got).abs() <= n * i128::from(period_secs));
        }
    }

    #[sqlx::test(migrations = "../migrations/billing")]
    async fn a_finalised_invoice_cannot_be_edited_or_deleted(pool: sqlx::PgPool) {
        let mut conn = pool.acquire().await.unwrap();
        let now = Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).single().unwrap();
        let id = InvoiceId::new_v7();
        let terms = Terms::default();
        let draft = store::NewInvoice {
            id,
            account: AccountId::new_v7(),
            subscription: None,
            reason: InvoiceReason::SubscriptionUpdate,
            currency: Currency::USD,
            period: (now, now + TimeDelta::days(30)),
            usage: None,
            terms: &terms,
            finalize_at: now,
            now,
        };
        let lines = vec![plan_line("pro", 2900, now, now + TimeDelta::days(30))];
        assert!(
            store::insert_draft(&mut conn, &draft, &lines)
                .await
                .unwrap()
        );
        // A draft's lines may change; a finalised invoice's may not.
        store::replace_lines(&mut conn, id, &lines).await.unwrap();
        let inv = store::invoice_for_update(&mut conn, id)
            .await
            .unwrap()
            .unwrap();
        let inv = finalize_in(&mut conn, inv, 0, now, now).await.unwrap();
        assert_eq!(
            (inv.status, inv.amount_due_minor),
            (InvoiceStatus::Open, 2900)
        );
        assert!(store::replace_lines(&mut conn, id, &lines).await.is_err());
        for sql in [
            "UPDATE invoices SET total_minor = 1, subtotal_minor = 1, amount_due_minor = 1",
            "UPDATE invoices SET number = 'TG-X'",
            "UPDATE invoices SET status = 'draft', number = NULL, finalized_at = NULL",
            "DELETE FROM invoices",
            "UPDATE invoice_lines SET amount_minor = 1",
            "DELETE FROM invoice_lines",
        ] {
            let err = sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&mut *conn)
                .await
                .unwrap_err();
            assert!(
                err.to_string().contains("finalised") || err.to_string().contains("never deleted"),
                "{sql}: {err}"
            );
        }
        // Its status still moves on; a paid invoice stays paid.
        assert!(store::mark_paid(&mut conn, id, 2900, now).await.unwrap());
        let err = sqlx::query("UPDATE invoices SET status = 'void'")
            .execute(&mut *conn)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("final"), "{err}");
    }
}

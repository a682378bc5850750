//! Plan changes: previewed without writing anything ([`preview`]), applied under an
//! Idempotency-Key ([`change`]), and a pending cancel undone ([`resume`]).
//!
//! * An **upgrade** (a higher price per period) applies now: the unused part of the old price
//!   is credited and the rest of the period at the new price charged, by the proration rule
//!   ([`crate::billing::pricing::PRORATION_RULE`], [`crate::billing::invoices::proration_lines`]),
//!   on one invoice that is charged on-session at once (3-D Secure possible: the answer then
//!   carries the client secret, and `POST /v1/invoices/{id}/confirm` finishes it). A payment
//!   that fails leaves the invoice open: the off-session charger and dunning collect it.
//! * A **downgrade** applies at the period end by default (the renewal starts the next period
//!   on the new plan); `{"when": "now"}` prorates it now, its negative total becoming customer
//!   credit that the next invoices use.
//!
//! Every change reaches entitlements and billing through the outbox like any other revision;
//! the proration invoice's id is chosen here, so the change's own call and billing's consumer
//! make the same invoice once.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use tollgate_protocol::SubscriptionStatus;

use super::{Subscription, addons, announce, announce_with, next_boundary, schedule_event, store};
use crate::billing::invoices::{self, Invoice, Line, Totals};
use crate::billing::payments::{self, PayInvoice, Payment};
use crate::billing::{Proration, Terms};
use crate::error::{Error, Kind, Result};
use crate::idempotency::{self, Ran};
use crate::ids::{AccountId, InvoiceId, SubscriptionId};
use crate::money::{self, Currency};
use crate::state::AppState;
use crate::{catalog, ledger, payment_methods};

/// When a change applies.
#[derive(utoipa::ToSchema, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum When {
    Now,
    PeriodEnd,
}

/// `POST /v1/subscriptions/{id}/preview-change` and `…/change` as the customer sends them: a
/// new plan, new add-on quantities (key → quantity, 0 removes; add-ons not named stay as
/// they are), or both.
#[derive(utoipa::ToSchema, Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangePlan {
    #[schema(example = "enterprise")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addons: Option<BTreeMap<String, i64>>,
    /// Default: now for an upgrade, at period end for a downgrade.
    #[serde(default)]
    pub when: Option<When>,
}

/// What a change switches the subscription to (kept on it until the period end for a
/// scheduled one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingChange {
    pub plan: String,
    pub amount_minor: i64,
    pub terms: Terms,
}

#[derive(utoipa::ToSchema, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Upgrade,
    Downgrade,
}

/// What a change would do, computed without writing.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Preview {
    pub direction: Direction,
    pub when: When,
    pub effective_at: DateTime<Utc>,
    /// Proration lines (now) or the next period's line (at period end).
    pub lines: Vec<Line>,
    pub currency: Currency,
    pub total_minor: i64,
    pub credit_applied_minor: i64,
    pub amount_due_minor: i64,
}

/// A change as decided from the subscription, the catalog and the request.
struct Decided {
    to: PendingChange,
    direction: Direction,
    when: When,
    /// What the subscription costs per period after the change.
    new_total: i64,
    /// Now: the proration of the rest of the period.
    proration: Option<Proration>,
}

async fn decide(
    conn: &mut PgConnection,
    sub: &Subscription,
    input: &ChangePlan,
    invoice_id: InvoiceId,
    now: DateTime<Utc>,
) -> Result<Decided> {
    if !sub.status.grants() {
        return Err(Error::conflict(
            "subscription_canceled",
            "this subscription is canceled; buy a plan instead",
        ));
    }
    if input.plan.is_none() && input.addons.is_none() {
        return Err(Error::unprocessable(
            "nothing_to_change",
            "name a plan, add-ons, or both",
        ));
    }
    let catalog = catalog::load(conn).await.map_err(Error::internal)?;
    let interval = tollgate_rules::Interval::parse(&sub.interval)
        .ok_or_else(|| Error::internal("subscription interval"))?;
    // Another plan sells at its price and terms now; the same plan keeps what it was sold at.
    let (plan_key, plan_amount, terms) = match input.plan.as_deref() {
        Some(key) if key != sub.plan => {
            let plan = catalog.plan(key).ok_or_else(|| {
                Error::unprocessable("unknown_plan", format!("there is no plan `{key}`"))
            })?;
            if plan.currency != sub.currency || plan.interval != interval {
                return Err(Error::unprocessable(
                    "plan_change_unsupported",
                    format!(
                        "`{}` is billed in {} per {}; changes keep the currency and interval ({} per {})",
                        plan.key,
                        plan.currency,
                        plan.interval.as_str(),
                        sub.currency,
                        sub.interval
                    ),
                ));
            }
            (plan.key.clone(), plan.price_minor, Terms::of_plan(plan))
        }
        Some(_) if input.addons.is_none() => {
            return Err(Error::conflict(
                "same_plan",
                "the subscription is on this plan already",
            ));
        }
        _ => (
            sub.plan.clone(),
            sub.amount_minor,
            Terms {
                addons: Vec::new(),
                ..sub.terms.clone()
            },
        ),
    };
    let addons = addons::select(
        &catalog,
        &sub.currency,
        interval,
        &sub.terms.addons,
        input.addons.as_ref().unwrap_or(&BTreeMap::new()),
    )?;
    if plan_key == sub.plan && addons == sub.terms.addons {
        return Err(Error::conflict(
            "no_change",
            "the subscription has these add-ons already",
        ));
    }
    let overflow = |_| Error::unprocessable("amount_too_large", "the change overflows");
    let per_period = |amount: i64, addons: &[crate::billing::AddonTerms]| {
        addons
            .iter()
            .try_fold(amount, |acc, a| money::add(acc, a.amount_minor()?))
    };
    let old_total = per_period(sub.amount_minor, &sub.terms.addons).map_err(overflow)?;
    let new_total = per_period(plan_amount, &addons).map_err(overflow)?;
    let direction = if new_total > old_total {
        Direction::Upgrade
    } else {
        Direction::Downgrade
    };
    // During a free trial nothing was paid: a change applies now and prorates nothing (the
    // new plan's price applies from the trial's end). Crediting "unused" trial time would pay
    // the customer for a period they never paid for.
    let in_trial = sub.status == SubscriptionStatus::Trialing;
    let when = input.when.unwrap_or(match direction {
        _ if in_trial => When::Now,
        Direction::Upgrade => When::Now,
        Direction::Downgrade => When::PeriodEnd,
    });
    let proration = (when == When::Now && !in_trial).then(|| Proration {
        invoice_id,
        at: now.clamp(sub.current_period_start, sub.current_period_end),
        period_start: sub.current_period_start,
        period_end: sub.current_period_end,
        from_plan: sub.plan.clone(),
        from_amount_minor: sub.amount_minor,
        to_plan: plan_key.clone(),
        to_amount_minor: plan_amount,
        from_addons: sub.terms.addons.clone(),
        to_addons: addons.clone(),
    });
    let to = PendingChange {
        plan: plan_key,
        amount_minor: plan_amount,
        terms: Terms { addons, ..terms },
    };
    Ok(Decided {
        to,
        direction,
        when,
        new_total,
        proration,
    })
}

/// The invoice lines a change would produce, without writing anything.
pub async fn preview(
    state: &AppState,
    account: AccountId,
    id: SubscriptionId,
    input: &ChangePlan,
) -> Result<Preview> {
    let now = state.clock.now();
    let mut conn = state.cf.acquire().await?;
    let sub = store::get(&mut conn, id)
        .await?
        .filter(|s| s.account_id == account)
        .ok_or_else(|| Error::not_found("subscription"))?;
    let d = decide(&mut conn, &sub, input, InvoiceId::new_v7(), now).await?;
    drop(conn);
    let currency: Currency = sub
        .currency
        .parse()
        .map_err(|_| Error::internal("subscription currency"))?;
    let (lines, effective_at) = match (&d.proration, d.when) {
        (Some(p), _) => (
            invoices::proration_lines(p).map_err(|_| Error::internal("preview overflows"))?,
            p.at,
        ),
        // In a trial: nothing to pay now.
        (None, When::Now) => (Vec::new(), now),
        (None, When::PeriodEnd) => {
            let interval = tollgate_rules::Interval::parse(&sub.interval)
                .ok_or_else(|| Error::internal("subscription interval"))?;
            let next_end = next_boundary(sub.billing_anchor, interval, sub.current_period_end)
                .ok_or_else(|| Error::internal("period end overflows"))?;
            let mut lines = vec![invoices::plan_line(
                &d.to.plan,
                d.to.amount_minor,
                sub.current_period_end,
                next_end,
            )];
            lines.extend(
                invoices::addon_lines(&d.to.terms.addons, sub.current_period_end, next_end)
                    .map_err(|_| Error::internal("preview overflows"))?,
            );
            (lines, sub.current_period_end)
        }
    };
    let credit = {
        let mut billing = state.billing.acquire().await?;
        ledger::credit_held(&mut billing, account, currency).await?
    };
    let t = Totals::of(&lines, credit).map_err(|_| Error::internal("preview overflows"))?;
    Ok(Preview {
        direction: d.direction,
        when: d.when,
        effective_at,
        lines,
        currency,
        total_minor: t.total_minor,
        credit_applied_minor: t.credit_applied_minor,
        amount_due_minor: t.amount_due_minor,
    })
}

/// How the on-session payment of a change's invoice went.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum ChangePayment {
    /// Nothing to pay now (a scheduled change, or credit covered it).
    None,
    Paid,
    RequiresAction {
        client_secret: String,
    },
    Processing,
    /// Declined or unavailable: the invoice stays open and is collected off-session.
    Failed {
        code: String,
    },
}

/// What a change answers (stored in its idempotency record).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Changed {
    pub subscription: Subscription,
    pub invoice: Option<Invoice>,
    pub payment: ChangePayment,
}

/// Applies a plan change (see the module doc).
pub async fn change(
    state: &AppState,
    account: AccountId,
    id: SubscriptionId,
    key: idempotency::Key,
    input: &ChangePlan,
) -> Result<Ran<Changed>> {
    let request = idempotency::Request::new(
        account.to_string(),
        key,
        &format!("POST /v1/subscriptions/{id}/change"),
        input,
    )?;
    let now = state.clock.now();
    idempotency::run(
        &state.cf,
        &request,
        now,
        async |tx, resource| {
            let sub = store::get_of_for_update(tx, account, id)
                .await?
                .ok_or_else(|| Error::not_found("subscription"))?;
            apply(tx, &sub, input, InvoiceId(resource), now).await
        },
        async |attempt, reserved| {
            state.outbox_wake.notify_waiters();
            let invoice_id = InvoiceId(attempt.resource());
            let (sub, proration) = match reserved {
                Some(r) => r,
                None => {
                    let mut conn = state.cf.acquire().await?;
                    let sub = store::get(&mut conn, id)
                        .await?
                        .ok_or_else(|| Error::not_found("subscription"))?;
                    (sub, None)
                }
            };
            let invoice = open_invoice(state, &sub, proration.as_ref(), invoice_id).await?;
            let payment = match &invoice {
                Some(inv) if inv.status == invoices::InvoiceStatus::Open => {
                    let key = idempotency::Key::parse(&format!(
                        "change-{}",
                        attempt.resource().simple()
                    ))?;
                    pay_now(state, account, inv.id, key).await?
                }
                Some(inv) if inv.status == invoices::InvoiceStatus::Paid && inv.total_minor > 0 => {
                    ChangePayment::Paid
                }
                _ => ChangePayment::None,
            };
            let invoice = match &invoice {
                Some(inv) => Some(invoices::get(state, account, inv.id).await?),
                None => None,
            };
            let answer = Ok(Changed {
                subscription: sub,
                invoice,
                payment,
            });
            attempt.store(&state.cf, answer).await
        },
    )
    .await
}

/// A change applied to `sub` (locked by the caller) in the caller's cf transaction, its
/// proration invoice (if any) to be `invoice`: the checks, the switch (or the scheduled
/// switch) and its announcement. Returns the subscription as changed and its proration.
async fn apply(
    tx: &mut PgConnection,
    sub: &Subscription,
    input: &ChangePlan,
    invoice: InvoiceId,
    now: DateTime<Utc>,
) -> Result<(Subscription, Option<Proration>)> {
    let (account, id) = (sub.account_id, sub.id);
    if sub.status == SubscriptionStatus::Unpaid {
        return Err(Error::conflict(
            "subscription_unpaid",
            "this subscription's invoice is unpaid: pay it (or cancel) first",
        ));
    }
    if let Some(acct) = crate::accounts::store::get_account(tx, account, false).await? {
        crate::accounts::require_usable_method(&acct)?;
    }
    let d = decide(tx, sub, input, invoice, now).await?;
    if d.proration.is_some()
        && d.direction == Direction::Upgrade
        && d.new_total > 0
        && payment_methods::charge_target(tx, account).await?.is_none()
    {
        return Err(Error::unprocessable(
            "payment_method_required",
            "an upgrade is paid at once: add a payment method first",
        ));
    }
    let sub = match (&d.proration, d.when) {
        (Some(p), _) => {
            let sub = store::change_plan(tx, id, &d.to).await?;
            announce_with(tx, &sub, None, Some(p.clone()), now).await?;
            sub
        }
        // In a trial: switched now, nothing to prorate.
        (None, When::Now) => {
            let sub = store::change_plan(tx, id, &d.to).await?;
            announce(tx, &sub, None, now).await?;
            sub
        }
        (None, When::PeriodEnd) => {
            let sub = store::set_pending_change(tx, id, Some(&d.to)).await?;
            announce(tx, &sub, None, now).await?;
            sub
        }
    };
    tracing::info!(account_id = %account, subscription_id = %id, to = %d.to.plan, when = ?d.when, "plan change");
    Ok((sub, d.proration))
}

/// The change's invoice (`invoice`), made now when the change prorated (billing's consumer of
/// the announcement would make the same one; idempotent by its id), as it is.
async fn open_invoice(
    state: &AppState,
    sub: &Subscription,
    proration: Option<&Proration>,
    invoice: InvoiceId,
) -> Result<Option<Invoice>> {
    Ok(match proration {
        Some(p) => {
            let ev = schedule_event(sub, None, Some(p.clone()));
            let mut tx = state.billing.begin().await?;
            invoices::open_change(&mut tx, &ev, p, state.clock.now())
                .await
                .map_err(Error::internal)?;
            tx.commit().await?;
            Some(invoices::get(state, sub.account_id, invoice).await?)
        }
        None => invoices::get(state, sub.account_id, invoice).await.ok(),
    })
}

/// What an agent's plan change answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentChanged {
    pub subscription: Subscription,
    /// The proration invoice, when the change made one (collected off-session).
    pub invoice: Option<Invoice>,
}

/// A support agent changes subscription `id` (any account's) with the checks and proration
/// of the customer's [`change`], audited in the change's cf transaction. The customer is not
/// there to authenticate a payment: an upgrade's proration invoice is collected off-session,
/// as a renewal's is.
pub async fn change_by_agent(
    state: &AppState,
    w: &crate::audit::Write<'_>,
    id: SubscriptionId,
    input: &ChangePlan,
) -> Result<AgentChanged> {
    let invoice_id = InvoiceId(crate::audit::resource_id(w));
    let (sub, proration): (Subscription, Option<Proration>) =
        crate::audit::audited(&state.cf, w, async |tx| {
            let before = store::get_for_update(tx, id)
                .await?
                .ok_or_else(|| Error::not_found("subscription"))?;
            let (after, proration) = apply(tx, &before, input, invoice_id, w.now).await?;
            let shown = |s: &Subscription| {
                serde_json::json!({ "plan": s.plan, "amount_minor": s.amount_minor,
                    "addons": s.terms.addons, "pending_change": s.pending_change })
            };
            let mut e =
                crate::audit::Effect::new(shown(&before), shown(&after), (after, proration));
            e.account = Some(before.account_id);
            Ok(e)
        })
        .await?;
    state.outbox_wake.notify_waiters();
    let invoice = open_invoice(state, &sub, proration.as_ref(), invoice_id).await?;
    Ok(AgentChanged {
        subscription: sub,
        invoice,
    })
}

/// The change's invoice, paid on-session with the default method at once.
async fn pay_now(
    state: &AppState,
    account: AccountId,
    invoice: InvoiceId,
    key: idempotency::Key,
) -> Result<ChangePayment> {
    let ran = payments::pay(state, account, invoice, key, &PayInvoice::default()).await?;
    Ok(match ran.outcome {
        Ok(Payment::Paid(_)) => ChangePayment::Paid,
        Ok(Payment::RequiresAction { client_secret, .. }) => {
            ChangePayment::RequiresAction { client_secret }
        }
        Ok(Payment::Processing(_)) => ChangePayment::Processing,
        Err(e) if e.kind == Kind::Internal => return Err(e),
        Err(e) => ChangePayment::Failed {
            code: e
                .extra
                .get("decline_code")
                .and_then(|v| v.as_str())
                .map_or_else(|| e.code.to_string(), str::to_owned),
        },
    })
}

/// Undoes a pending cancel at period end (`409 not_canceling` when there is none).
pub async fn resume(
    state: &AppState,
    account: AccountId,
    id: SubscriptionId,
) -> Result<Subscription> {
    let mut tx = state.cf.begin().await?;
    let refused = match store::get_of_for_update(&mut tx, account, id).await? {
        None => Some(Error::not_found("subscription")),
        Some(s) if s.status == SubscriptionStatus::Canceled => Some(Error::conflict(
            "subscription_canceled",
            "this subscription has ended; buy a plan instead",
        )),
        Some(s) if !s.cancel_at_period_end => Some(Error::conflict(
            "not_canceling",
            "this subscription is not set to cancel",
        )),
        Some(_) => None,
    };
    if let Some(e) = refused {
        // Now: a dropped transaction keeps the row locked until its connection is reused.
        tx.rollback().await?;
        return Err(e);
    }
    let now = state.clock.now();
    let sub = store::resume(&mut tx, id).await?;
    announce(&mut tx, &sub, None, now).await?;
    tx.commit().await?;
    state.outbox_wake.notify_waiters();
    Ok(sub)
}

//! A support agent refunds (part of) a paid invoice through the gateway that took the money:
//! the provider call first, under a provider idempotency key derived from the agent's
//! `Idempotency-Key` (a repeat or a retry after a crash reaches the same refund), no
//! transaction open; then the ledger's `refund` (`refunds` → `cash:<processor>`) and the audit
//! row in one billing transaction, referenced by the provider's refund id — the reference the
//! provider's own `charge.refunded` webhook books under, so it is booked once.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::charges::AttemptStatus;
use super::invoices::{InvoiceReason, InvoiceStatus};
use super::store;
use crate::agents::Agent;
use crate::audit::{self, Effect, Reason, Write};
use crate::error::{Error, Result};
use crate::idempotency::Key;
use crate::ids::{AccountId, InvoiceId};
use crate::ledger::{self, Header, TxKind};
use crate::money::Currency;
use crate::state::AppState;
use crate::subscriptions::Subscription;

/// What a refund answers.
#[derive(utoipa::ToSchema, Debug, Clone, Serialize, Deserialize)]
pub struct Refunded {
    pub invoice_id: InvoiceId,
    pub account_id: AccountId,
    pub refund_id: String,
    pub amount_minor: i64,
    pub currency: Currency,
    pub processor: String,
}

/// The payment an invoice was paid with.
struct Paid {
    payment: String,
    processor: String,
    amount_minor: i64,
}

/// Refunds `amount_minor` (all of the payment when `None`) of invoice `id`'s payment.
pub async fn refund_invoice(
    state: &AppState,
    w: &Write<'_>,
    id: InvoiceId,
    amount_minor: Option<i64>,
) -> Result<Refunded> {
    if let Some(done) = audit::replayed(&state.billing, w).await? {
        return Ok(done);
    }
    let (inv, paid) = {
        let mut conn = state.billing.acquire().await?;
        let inv = store::invoice(&mut conn, id)
            .await?
            .ok_or_else(|| Error::not_found("invoice"))?;
        let paid = store::attempts_of(&mut conn, id)
            .await?
            .into_iter()
            .filter(|a| a.status == AttemptStatus::Succeeded)
            .find_map(|a| {
                a.provider_payment_id.clone().map(|p| Paid {
                    payment: p,
                    processor: a.processor.clone(),
                    amount_minor: a.amount_minor,
                })
            });
        (inv, paid)
    };
    let paid = match (paid, inv.subscription_id) {
        (Some(p), _) => Some(p),
        // The first invoice was paid on-session by the checkout that bought the subscription.
        (None, Some(sub))
            if inv.reason == InvoiceReason::SubscriptionCreate
                && inv.status == InvoiceStatus::Paid
                && inv.amount_paid_minor > 0 =>
        {
            crate::checkout::first_payment(state, sub)
                .await?
                .map(|f| Paid {
                    payment: f.provider_payment_id,
                    processor: f.processor,
                    amount_minor: inv.amount_paid_minor.min(f.amount_minor),
                })
        }
        (None, _) => None,
    };
    let Some(Paid {
        payment,
        processor,
        amount_minor: paid_minor,
    }) = paid
    else {
        return Err(Error::conflict(
            "no_refundable_payment",
            "this invoice has no payment to refund (nothing was paid, or credit paid it)",
        ));
    };
    let amount = amount_minor.unwrap_or(paid_minor);
    if amount <= 0 || amount > paid_minor {
        return Err(Error::unprocessable(
            "invalid_amount",
            format!("a refund is 1 to {paid_minor} minor units"),
        ));
    }
    let key = crate::idempotency::provider_key("panel-refund", audit::resource_id(w));
    let r = state
        .gateway_named(&processor)?
        .refund(&payment, amount, &key)
        .await?;
    let answer = Refunded {
        invoice_id: id,
        account_id: inv.account_id,
        refund_id: r.id.clone(),
        amount_minor: r.amount_minor,
        currency: inv.currency,
        processor: processor.clone(),
    };
    audit::audited(&state.billing, w, async |tx| {
        let header = Header {
            kind: TxKind::Refund,
            reference: format!("refund:{}:{}", processor, r.id),
            account: inv.account_id,
            currency: inv.currency,
            description: format!(
                "refund {} of invoice {}",
                r.id,
                inv.number.as_deref().unwrap_or("")
            ),
        };
        if let Some(t) =
            ledger::refund(header, &processor, r.amount_minor).map_err(Error::internal)?
        {
            ledger::post(tx, &t, w.now).await.map_err(Error::internal)?;
        }
        let mut e = Effect::new(
            json!({ "payment": payment }),
            json!({ "refund_id": r.id, "amount_minor": r.amount_minor }),
            answer.clone(),
        );
        e.account = Some(inv.account_id);
        Ok(e)
    })
    .await
}

/// The part of `paid_minor` (for the period `[start, end)`) not yet used at `at`, rounded
/// down to the minor unit: all of it before the period, none after it.
pub fn unused_share(
    paid_minor: i64,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    at: DateTime<Utc>,
) -> i64 {
    if paid_minor <= 0 || at >= end {
        return 0;
    }
    if at <= start {
        return paid_minor;
    }
    let total = i128::from((end - start).num_milliseconds());
    let left = i128::from((end - at).num_milliseconds());
    // left < total, so the share is below paid_minor and fits.
    i64::try_from(i128::from(paid_minor) * left / total).unwrap_or(0)
}

/// Refunds what subscription `sub` (canceled now, at `canceled_at`) did not use of the period
/// it paid for: its period invoice's payment times the share of the period left. Audited as
/// the agent's `invoice.refund` under `key` (derived from the cancel's, so that a repeat of
/// the cancel reaches the same refund). `None` when nothing was paid for the period or
/// nothing of it is left.
pub async fn refund_unused(
    state: &AppState,
    agent: &Agent,
    key: &Key,
    reason: &Reason,
    sub: &Subscription,
) -> Result<Option<Refunded>> {
    let Some(at) = sub.canceled_at else {
        return Err(Error::internal(
            "a prorated refund of a subscription not canceled",
        ));
    };
    let inv = {
        let mut conn = state.billing.acquire().await?;
        store::period_invoice(&mut conn, sub.id, sub.current_period_start).await?
    };
    let Some(inv) = inv else {
        return Ok(None);
    };
    let amount = unused_share(
        inv.amount_paid_minor,
        sub.current_period_start,
        sub.current_period_end,
        at,
    );
    if amount == 0 {
        return Ok(None);
    }
    let w = Write::new(agent, key, reason, "invoice.refund", state.clock.now()).on(
        Some(sub.account_id),
        inv.id.to_string(),
        json!({ "amount_minor": amount, "prorated_for": sub.id }),
    );
    refund_invoice(state, &w, inv.id, Some(amount))
        .await
        .map(Some)
}

#[cfg(test)]
mod tests {
    use super::unused_share;
    use chrono::{TimeDelta, TimeZone, Utc};

    #[test]
    fn the_unused_share_is_rounded_down_and_never_more_than_paid() {
        let start = Utc.with_ymd_and_hms(2026, 1, 15, 12, 0, 0).unwrap();
        let end = Utc.with_ymd_and_hms(2026, 2, 15, 12, 0, 0).unwrap();
        let at = |days| start + TimeDelta::days(days);
        // 2900 × 21/31 = 1964.5 → 1964.
        assert_eq!(unused_share(2900, start, end, at(10)), 1964);
        assert_eq!(unused_share(2900, start, end, start), 2900);
        assert_eq!(unused_share(2900, start, end, at(-3)), 2900);
        assert_eq!(unused_share(2900, start, end, end), 0);
        assert_eq!(unused_share(2900, start, end, at(40)), 0);
        assert_eq!(unused_share(0, start, end, at(1)), 0);
        assert_eq!(unused_share(-5, start, end, at(1)), 0);
        // The widest amount does not overflow, and stays below what was paid.
        let share = unused_share(i64::MAX, start, end, start + TimeDelta::milliseconds(1));
        assert!(share < i64::MAX && share > i64::MAX / 2, "{share}");
    }
}

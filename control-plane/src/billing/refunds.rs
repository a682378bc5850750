//! A support agent refunds (part of) a paid invoice through the gateway that took the money:
//! the provider call first, under a provider idempotency key derived from the agent's
//! `Idempotency-Key` (a repeat or a retry after a crash reaches the same refund), no
//! transaction open; then the ledger's `refund` (`refunds` → `cash:<processor>`) and the audit
//! row in one billing transaction, referenced by the provider's refund id — the reference the
//! provider's own `charge.refunded` webhook books under, so it is booked once.

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::charges::AttemptStatus;
use super::store;
use crate::audit::{self, Effect, Write};
use crate::error::{Error, Result};
use crate::ids::{AccountId, InvoiceId};
use crate::ledger::{self, Header, TxKind};
use crate::money::Currency;
use crate::state::AppState;

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
            .find_map(|a| a.provider_payment_id.clone().map(|p| (a, p)));
        (inv, paid)
    };
    let Some((attempt, payment)) = paid else {
        return Err(Error::conflict(
            "no_refundable_payment",
            "this invoice has no payment charged by Tollgate to refund (a first invoice paid at checkout is refunded at the provider)",
        ));
    };
    let amount = amount_minor.unwrap_or(attempt.amount_minor);
    if amount <= 0 || amount > attempt.amount_minor {
        return Err(Error::unprocessable(
            "invalid_amount",
            format!("a refund is 1 to {} minor units", attempt.amount_minor),
        ));
    }
    let key = crate::idempotency::provider_key("panel-refund", audit::resource_id(w));
    let r = state
        .gateway_named(&attempt.processor)?
        .refund(&payment, amount, &key)
        .await?;
    let answer = Refunded {
        invoice_id: id,
        account_id: inv.account_id,
        refund_id: r.id.clone(),
        amount_minor: r.amount_minor,
        currency: attempt.currency,
        processor: attempt.processor.clone(),
    };
    audit::audited(&state.billing, w, async |tx| {
        let header = Header {
            kind: TxKind::Refund,
            reference: format!("refund:{}:{}", attempt.processor, r.id),
            account: inv.account_id,
            currency: attempt.currency,
            description: format!(
                "refund {} of invoice {}",
                r.id,
                inv.number.as_deref().unwrap_or("")
            ),
        };
        if let Some(t) =
            ledger::refund(header, &attempt.processor, r.amount_minor).map_err(Error::internal)?
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

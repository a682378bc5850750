//! A support agent voids an open invoice that should not have been owed (a billing mistake,
//! a goodwill settlement): in one billing transaction with its audit row, the invoice becomes
//! `void` (never charged again), the ledger books `invoice_voided` (what it still asked for
//! leaves the receivable, credit applied to it returns to the customer), its dunning case ends,
//! and billing's outbox tells cf (`billing.invoice_voided`), which makes the subscription the
//! invoice held past due active again and records `invoice.voided` for the account's webhooks.
//!
//! Only an open invoice with nothing paid is voided: a paid one is refunded, a partly paid one
//! corrected with a credit note, a written-off one is bad debt already.

use serde_json::json;

use super::charges::InvoicePaid;
use super::invoices::{Invoice, InvoiceStatus};
use super::store;
use crate::audit::{self, Effect, Write};
use crate::error::{Error, Result};
use crate::ids::InvoiceId;
use crate::ledger::{self, Header, TxKind};
use crate::outbox::{self, Topic};
use crate::state::AppState;

/// Voids invoice `id` (see the module doc) and answers it as it is now.
pub async fn void_invoice(state: &AppState, w: &Write<'_>, id: InvoiceId) -> Result<Invoice> {
    let inv = audit::audited(&state.billing, w, async |tx| {
        let inv = store::invoice_for_update(tx, id)
            .await?
            .ok_or_else(|| Error::not_found("invoice"))?;
        refuse(&inv)?;
        if store::attempt_in_flight(tx, id).await? {
            return Err(Error::conflict(
                "payment_in_progress",
                "a payment of this invoice is in progress; void it once that is settled",
            ));
        }
        let header = Header {
            kind: TxKind::InvoiceVoided,
            reference: id.to_string(),
            account: inv.account_id,
            currency: inv.currency,
            description: format!("invoice {} voided", inv.number.as_deref().unwrap_or("")),
        };
        if let Some(t) =
            ledger::invoice_voided(header, inv.amount_remaining_minor, inv.credit_applied_minor)
                .map_err(Error::internal)?
        {
            ledger::post(tx, &t, w.now).await.map_err(Error::internal)?;
        }
        if !store::void(tx, id, w.now).await? {
            return Err(Error::internal(
                "an open invoice locked for voiding was not open",
            ));
        }
        crate::dunning::on_invoice_voided(tx, id, inv.account_id, w.now)
            .await
            .map_err(Error::internal)?;
        outbox::enqueue(
            tx,
            Topic::BillingInvoiceVoided,
            &InvoicePaid {
                invoice_id: id,
                account_id: inv.account_id,
                subscription_id: inv.subscription_id,
                amount_minor: 0,
                currency: inv.currency,
            },
            w.now,
        )
        .await?;
        let after = store::invoice(tx, id)
            .await?
            .ok_or_else(|| Error::internal("voided invoice vanished"))?;
        let mut e = Effect::new(
            json!({ "status": inv.status, "amount_remaining_minor": inv.amount_remaining_minor }),
            json!({ "status": after.status, "amount_remaining_minor": 0 }),
            after,
        );
        e.account = Some(inv.account_id);
        Ok(e)
    })
    .await?;
    state.billing_outbox_wake.notify_waiters();
    tracing::info!(invoice_id = %id, agent = %w.agent.email, "invoice voided");
    Ok(inv)
}

/// Why `inv` cannot be voided, if it cannot.
fn refuse(inv: &Invoice) -> Result<()> {
    let refused = |code: &'static str, detail: &str| {
        Err(Error::conflict(code, detail.to_owned()).with("invoice_id", inv.id.to_string()))
    };
    match inv.status {
        InvoiceStatus::Open if inv.amount_paid_minor > 0 => refused(
            "invoice_partly_paid",
            "part of this invoice is paid: issue a credit note for the rest instead",
        ),
        InvoiceStatus::Open => Ok(()),
        InvoiceStatus::Draft => refused("invoice_draft", "this invoice is not finalised yet"),
        InvoiceStatus::Paid => refused(
            "invoice_paid",
            "this invoice is paid: refund it instead of voiding it",
        ),
        InvoiceStatus::Void => refused("invoice_void", "this invoice is void already"),
        InvoiceStatus::Uncollectible => refused(
            "invoice_uncollectible",
            "this invoice was written off as bad debt; a payment still recovers it",
        ),
    }
}

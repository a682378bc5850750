//! Payments as the provider knows them, mapped back to what we booked: whose a provider
//! payment is ([`owner_of`]), and refunds made of it at the provider ([`record_refunds`]).
//!
//! A payment is ours when the ledger holds its `payment`: a charge attempt's
//! (`charge:<attempt>`) or a checkout's (`checkout:<checkout>`). A payment we never booked (a
//! duplicate checkout payment Tollgate refunded itself) has no owner, so nothing about it is
//! booked either.

use sqlx::PgConnection;

use crate::error::{Error, Result};
use crate::ids::{AccountId, InvoiceId};
use crate::ledger::{self, Header, TxKind};
use crate::money::Currency;
use crate::state::AppState;

/// Whose a provider payment is, as the ledger booked it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub account_id: AccountId,
    /// The invoice it paid, when a charge attempt paid one.
    pub invoice_id: Option<InvoiceId>,
    /// The provider's payment id as we stored it.
    pub payment_id: String,
    /// The gateway holding the money (`cash:<processor>`).
    pub processor: String,
    pub currency: Currency,
    /// What the ledger booked as paid.
    pub amount_minor: i64,
}

/// The ids a provider may name one payment by: Braintree's webhooks name a transaction by its
/// legacy id, the GraphQL API (and our records) by `base64("transaction_" + legacy)`.
fn aliases(payment_id: &str) -> Vec<String> {
    use base64::Engine as _;
    let mut ids = vec![payment_id.to_owned()];
    if payment_id.bytes().all(|b| b.is_ascii_alphanumeric()) && payment_id.len() <= 64 {
        ids.push(
            base64::engine::general_purpose::STANDARD.encode(format!("transaction_{payment_id}")),
        );
    }
    ids
}

/// Whose provider payment `payment_id` is (`None`: not one we booked).
pub async fn owner_of(state: &AppState, payment_id: &str) -> Result<Option<Owner>> {
    let ids = aliases(payment_id);
    let mut billing = state.billing.acquire().await?;
    let attempt: Option<(uuid::Uuid, uuid::Uuid, String)> = sqlx::query_as(
        "SELECT id, invoice_id, provider_payment_id FROM charge_attempts
         WHERE provider_payment_id = ANY($1) AND status = 'succeeded' LIMIT 1",
    )
    .bind(&ids)
    .fetch_optional(&mut *billing)
    .await?;
    if let Some((attempt, invoice, pid)) = attempt {
        return booked(
            &mut billing,
            &format!("charge:{attempt}"),
            Some(invoice),
            pid,
        )
        .await;
    }
    let checkout: Option<(uuid::Uuid, String)> = {
        let mut cf = state.cf.acquire().await?;
        sqlx::query_as(
            "SELECT id, payment_intent_id FROM checkouts
             WHERE payment_intent_id = ANY($1) AND status = 'succeeded' LIMIT 1",
        )
        .bind(&ids)
        .fetch_optional(&mut *cf)
        .await?
    };
    match checkout {
        Some((c, pid)) => booked(&mut billing, &format!("checkout:{c}"), None, pid).await,
        None => Ok(None),
    }
}

/// The ledger's `payment` under `reference`, as an owner.
async fn booked(
    conn: &mut PgConnection,
    reference: &str,
    invoice: Option<uuid::Uuid>,
    payment_id: String,
) -> Result<Option<Owner>> {
    let row: Option<(uuid::Uuid, String, String, i64)> = sqlx::query_as(
        "SELECT t.account_id, t.currency, e.ledger_account, e.amount_minor
         FROM ledger_transactions t JOIN ledger_entries e ON e.transaction_id = t.id
         WHERE t.kind = 'payment' AND t.reference = $1 AND e.ledger_account LIKE 'cash:%'",
    )
    .bind(reference)
    .fetch_optional(conn)
    .await?;
    let Some((account, currency, cash, amount)) = row else {
        return Ok(None);
    };
    let currency: Currency = currency
        .parse()
        .map_err(|_| Error::internal(format!("ledger currency {currency}")))?;
    Ok(Some(Owner {
        account_id: AccountId::from(account),
        invoice_id: invoice.map(InvoiceId),
        payment_id,
        processor: cash.trim_start_matches("cash:").to_owned(),
        currency,
        amount_minor: amount,
    }))
}

/// Books the refunds the provider holds of payment `payment_id` that the ledger does not
/// (each once, by the provider's refund id: `refund:<processor>:<id>`). Returns how many
/// were new; `None` when the payment is not ours.
pub async fn record_refunds(state: &AppState, payment_id: &str) -> Result<Option<usize>> {
    let Some(owner) = owner_of(state, payment_id).await? else {
        return Ok(None);
    };
    let refunds = state
        .gateway_named(&owner.processor)?
        .refunds_of(&owner.payment_id)
        .await?;
    let now = state.clock.now();
    let mut tx = state.billing.begin().await?;
    let mut new = 0;
    for r in refunds {
        if r.amount_minor <= 0 {
            continue;
        }
        let header = Header {
            kind: TxKind::Refund,
            reference: format!("refund:{}:{}", owner.processor, r.id),
            account: owner.account_id,
            currency: owner.currency,
            description: format!("refund {} of payment {}", r.id, owner.payment_id),
        };
        if let Some(t) =
            ledger::refund(header, &owner.processor, r.amount_minor).map_err(Error::internal)?
            && !ledger::post(&mut tx, &t, now)
                .await
                .map_err(Error::internal)?
                .replayed
        {
            new += 1;
        }
    }
    tx.commit().await?;
    if new > 0 {
        tracing::info!(payment_id, new, "refunds made at the provider booked");
    }
    Ok(Some(new))
}

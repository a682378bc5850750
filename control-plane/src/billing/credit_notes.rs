//! Credit notes: the only correction of a finalised invoice ([`issue`]), a new numbered
//! document that never edits the invoice.
//!
//! A note credits part or all of what an invoice charged (its positive total, less the notes
//! before it). On an **open** invoice it first reduces what the invoice still asks for; what
//! is left over — and the whole note on a **paid** invoice — becomes customer credit that the
//! next invoices use. An open invoice the note settles in full is paid (and its subscription
//! active again, through `billing.invoice_paid`). One balanced ledger transaction books it:
//! the `refunds` contra-revenue account is debited, the receivable and the customer's credit
//! credited ([`crate::ledger::credit_note`]).
//!
//! Refused: drafts (nothing is final yet), void and uncollectible invoices (nothing is owed,
//! and a written-off receivable is not there to reduce), an open invoice with a payment in
//! flight (the charge would then collect what the note took off), and more than is left to
//! credit. Issuing is idempotent by key: the note's id derives from the invoice and the key, so
//! the same request again returns the same note, and another request under the key is refused.
//! Money back through the provider is a refund, not a note.

use chrono::{DateTime, Datelike, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use uuid::Uuid;

use super::charges::InvoicePaid;
use super::invoices::{Invoice, InvoiceStatus};
use super::store;
use crate::error::{Error, Result};
use crate::idempotency;
use crate::ids::{AccountId, CreditNoteId, InvoiceId};
use crate::ledger::{self, Header, TxKind};
use crate::money::Currency;
use crate::outbox::{self, Topic};
use crate::state::AppState;

/// Longest memo, in characters.
pub const MEMO_CHARS_MAX: usize = 500;

/// Why a note was issued (Stripe's reasons, and a service issue).
#[derive(
    utoipa::ToSchema, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type,
)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum CreditNoteReason {
    Duplicate,
    Fraudulent,
    OrderChange,
    ProductUnsatisfactory,
    ServiceIssue,
}

/// A credit note as issued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct CreditNote {
    pub id: CreditNoteId,
    /// `CN-YYYY-NNNNNN`, gapless per year.
    pub number: String,
    pub invoice_id: InvoiceId,
    #[sqlx(try_from = "Uuid")]
    pub account_id: AccountId,
    pub currency: Currency,
    pub amount_minor: i64,
    /// The part that reduced what the invoice still asked for.
    pub reduced_due_minor: i64,
    /// The part that became customer credit.
    pub credited_minor: i64,
    pub reason: CreditNoteReason,
    pub memo: String,
    pub issued_by: String,
    pub created_at: DateTime<Utc>,
}

/// What the issuer asks for.
#[derive(utoipa::ToSchema, Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssueCreditNote {
    pub amount_minor: i64,
    pub reason: CreditNoteReason,
    /// Why, in words: shown to the customer and kept as the record of the correction.
    pub memo: String,
}

/// Whether the note was issued now or is the one the key issued before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    pub note: CreditNote,
    pub replayed: bool,
}

/// The note's id for a key: the same invoice and key always give the same note (the first
/// 16 bytes of SHA-256 over both, marked as a version 8 UUID).
pub fn note_id(invoice: InvoiceId, key: &idempotency::Key) -> CreditNoteId {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(b"tollgate:credit_note:")
        .chain_update(invoice.0.as_bytes())
        .chain_update(key.as_str().as_bytes())
        .finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    CreditNoteId(uuid::Builder::from_custom_bytes(bytes).into_uuid())
}

fn validate(req: &IssueCreditNote) -> Result<String> {
    if req.amount_minor <= 0 {
        return Err(Error::unprocessable(
            "invalid_amount",
            "a credit note credits a positive amount of minor units",
        ));
    }
    let memo = req.memo.trim();
    if memo.is_empty()
        || memo.chars().count() > MEMO_CHARS_MAX
        || memo.chars().any(char::is_control)
    {
        return Err(Error::unprocessable(
            "invalid_memo",
            format!("the memo is 1 to {MEMO_CHARS_MAX} printable characters"),
        ));
    }
    Ok(memo.to_owned())
}

/// How a note of `amount` splits on `inv`: (reduces what it asks for, becomes credit), or why
/// it cannot be issued.
pub fn split(inv: &Invoice, amount: i64) -> Result<(i64, i64)> {
    let refused = |code: &'static str, detail: &str| {
        Err(Error::conflict(code, detail.to_owned()).with("invoice_id", inv.id.to_string()))
    };
    match inv.status {
        InvoiceStatus::Open | InvoiceStatus::Paid => {}
        InvoiceStatus::Draft => {
            return refused("invoice_draft", "this invoice is not finalised yet");
        }
        InvoiceStatus::Void => return refused("invoice_void", "this invoice is void"),
        InvoiceStatus::Uncollectible => {
            return refused(
                "invoice_uncollectible",
                "this invoice was written off; nothing is owed to reduce",
            );
        }
    }
    let creditable = inv.total_minor.max(0) - inv.credit_noted_minor;
    if amount > creditable {
        return Err(Error::unprocessable(
            "credit_note_too_large",
            format!("at most {creditable} minor units of this invoice are left to credit"),
        )
        .with("creditable_minor", creditable));
    }
    let reduced = if inv.status == InvoiceStatus::Open {
        amount.min(inv.amount_remaining_minor.max(0))
    } else {
        0
    };
    Ok((reduced, amount - reduced))
}

/// Issues a credit note on an invoice (see the module doc), in one billing transaction:
/// `account` is the one it must belong to (`None`: any, for the platform's own API).
/// `issued_by` names who (the admin actor, a support agent).
pub async fn issue(
    state: &AppState,
    account: Option<AccountId>,
    invoice: InvoiceId,
    issued_by: &str,
    key: &idempotency::Key,
    req: &IssueCreditNote,
) -> Result<Issued> {
    let memo = validate(req)?;
    let id = note_id(invoice, key);
    let now = state.clock.now();
    let mut tx = state.billing.begin().await?;
    let issued = issue_in(&mut tx, account, invoice, id, issued_by, req, &memo, now).await;
    match issued {
        Ok(issued) => {
            tx.commit().await?;
            if !issued.replayed {
                // A note that settles the invoice announced it on billing's outbox.
                state.billing_outbox_wake.notify_waiters();
                tracing::info!(credit_note = %issued.note.number, invoice_id = %invoice, amount_minor = issued.note.amount_minor, issued_by, "credit note issued");
            }
            Ok(issued)
        }
        Err(e) => {
            // Now: the invoice row stays locked until a dropped transaction's connection is
            // reused.
            tx.rollback().await?;
            Err(e)
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn issue_in(
    conn: &mut PgConnection,
    account: Option<AccountId>,
    invoice: InvoiceId,
    id: CreditNoteId,
    issued_by: &str,
    req: &IssueCreditNote,
    memo: &str,
    now: DateTime<Utc>,
) -> Result<Issued> {
    let inv = store::invoice_for_update(conn, invoice)
        .await?
        .filter(|i| account.is_none_or(|a| i.account_id == a))
        .ok_or_else(|| Error::not_found("invoice"))?;
    let account = inv.account_id;
    if let Some(note) = store::credit_note(conn, id).await? {
        if note.invoice_id == invoice
            && note.amount_minor == req.amount_minor
            && note.reason == req.reason
            && note.memo == memo
        {
            return Ok(Issued {
                note,
                replayed: true,
            });
        }
        return Err(Error::unprocessable(
            "idempotency_key_reused",
            "this Idempotency-Key issued another credit note",
        ));
    }
    let (reduced, credited) = split(&inv, req.amount_minor)?;
    if reduced > 0 && store::attempt_in_flight(conn, invoice).await? {
        return Err(Error::conflict(
            "payment_in_progress",
            "a payment of this invoice is in progress; credit it once that is settled",
        )
        .with("invoice_id", invoice.to_string()));
    }
    let number = store::next_credit_note_number(conn, now.year()).await?;
    let note = CreditNote {
        id,
        number,
        invoice_id: invoice,
        account_id: account,
        currency: inv.currency,
        amount_minor: req.amount_minor,
        reduced_due_minor: reduced,
        credited_minor: credited,
        reason: req.reason,
        memo: memo.to_owned(),
        issued_by: issued_by.to_owned(),
        created_at: now,
    };
    store::insert_credit_note(conn, &note).await?;
    let settled = store::add_credit(conn, invoice, req.amount_minor, reduced, now).await?;
    let header = Header {
        kind: TxKind::CreditNote,
        reference: id.to_string(),
        account,
        currency: inv.currency,
        description: format!(
            "credit note {} for invoice {}",
            note.number,
            inv.number.as_deref().unwrap_or("")
        ),
    };
    if let Some(tx) = ledger::credit_note(header, reduced, credited).map_err(Error::internal)? {
        ledger::post(conn, &tx, now)
            .await
            .map_err(Error::internal)?;
    }
    if settled {
        outbox::enqueue(
            conn,
            Topic::BillingInvoicePaid,
            &InvoicePaid {
                invoice_id: invoice,
                account_id: account,
                subscription_id: inv.subscription_id,
                amount_minor: 0,
                currency: inv.currency,
            },
            now,
        )
        .await?;
    }
    Ok(Issued {
        note,
        replayed: false,
    })
}

/// The notes of one of the account's invoices, oldest first (`not_found` for another
/// account's invoice).
pub async fn of_invoice(
    state: &AppState,
    account: AccountId,
    invoice: InvoiceId,
) -> Result<Vec<CreditNote>> {
    let mut conn = state.billing.acquire().await?;
    store::invoice(&mut conn, invoice)
        .await?
        .filter(|i| i.account_id == account)
        .ok_or_else(|| Error::not_found("invoice"))?;
    Ok(store::credit_notes_of(&mut conn, invoice).await?)
}

//! The double-entry ledger in billing_prod: every finalised invoice, payment, credit, refund and
//! write-off is one balanced [`Transaction`], posted once, never updated.
//!
//! * A [`Draft`] collects postings; [`Draft::seal`] is the only way to a [`Transaction`], and it
//!   refuses one whose postings do not sum to zero (checked in `i128`, so no overflow hides an
//!   imbalance). [`post`] takes only sealed transactions; the database checks the sum again at
//!   commit (migration `billing/0006_ledger.sql`), so no path writes an unbalanced one.
//! * Debits are positive, credits negative. Balances are sums of entries and nothing else
//!   ([`balance`]): the receivable of a customer is what its open invoices still ask for, its
//!   `credit` balance (negated) is the credit it holds.
//! * [`post`] is idempotent by `(kind, reference)`: posting the same business event again
//!   returns the first transaction; posting a *different* one under the same reference is an
//!   error (a bug upstream), never a silent second entry.
//!
//! The business transactions are built here too ([`invoice_finalized`], [`payment`],
//! [`refund`], [`credit`], [`credit_note`], [`write_off`]), so every caller books the same event
//! the same way.

pub mod store;

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::ids::AccountId;
use crate::money::Currency;

/// Longest key after `revenue:plan:` and friends (the catalog's key bound).
pub const KEY_BYTES_MAX: usize = tollgate_protocol::usage::limits::KEY_BYTES_MAX;
/// Longest processor name after `cash:`.
pub const PROCESSOR_BYTES_MAX: usize = 32;

/// What revenue is earned from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Revenue {
    Plan(String),
    Meter(String),
    Addon(String),
}

/// One account of the chart of accounts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LedgerAccount {
    /// What a customer owes (asset).
    Receivable,
    /// What we owe a customer as credit (liability).
    Credit,
    /// Money held at a payment processor (asset).
    Cash(String),
    /// Income, by plan, meter or add-on.
    Revenue(Revenue),
    /// Money or credit given back (contra-revenue).
    Refunds,
    /// Receivables written off (expense).
    BadDebt,
    /// Money a processor withholds while a dispute of it is open (asset).
    Disputed,
    /// Money lost to disputes (expense).
    Chargebacks,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    #[error("`{0}` is not a ledger account")]
    BadAccount(String),
    #[error("a posting of {0} minor units: debits and credits are positive amounts")]
    NegativeAmount(i64),
    #[error("the transaction's postings sum to {0}, not zero")]
    Unbalanced(i128),
    #[error("a transaction needs at least two postings, this one has {0}")]
    TooFewPostings(usize),
    #[error("reference `{0}` is empty or longer than 200 bytes")]
    BadReference(String),
    #[error("amount out of range")]
    Overflow,
    #[error("{kind} `{reference}` was posted before with other entries")]
    ConflictingRepost { kind: TxKind, reference: String },
}

fn valid_key(s: &str, max: usize, extra: &[u8]) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || extra.contains(&b))
}

impl LedgerAccount {
    /// `cash:<processor>`; processors are lower-case (`stripe`, `simulated`, `braintree`).
    pub fn cash(processor: &str) -> Result<Self, LedgerError> {
        let ok = valid_key(processor, PROCESSOR_BYTES_MAX, &[])
            && !processor.bytes().any(|b| b.is_ascii_uppercase());
        ok.then(|| Self::Cash(processor.to_owned()))
            .ok_or_else(|| LedgerError::BadAccount(format!("cash:{processor}")))
    }

    pub fn revenue(source: Revenue) -> Result<Self, LedgerError> {
        let key = match &source {
            Revenue::Plan(k) | Revenue::Meter(k) | Revenue::Addon(k) => k,
        };
        if valid_key(key, KEY_BYTES_MAX, b".-") {
            Ok(Self::Revenue(source))
        } else {
            Err(LedgerError::BadAccount(format!("revenue:…:{key}")))
        }
    }
}

impl fmt::Display for LedgerAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Receivable => f.write_str("receivable"),
            Self::Credit => f.write_str("credit"),
            Self::Refunds => f.write_str("refunds"),
            Self::BadDebt => f.write_str("bad_debt"),
            Self::Disputed => f.write_str("disputed"),
            Self::Chargebacks => f.write_str("chargebacks"),
            Self::Cash(p) => write!(f, "cash:{p}"),
            Self::Revenue(Revenue::Plan(k)) => write!(f, "revenue:plan:{k}"),
            Self::Revenue(Revenue::Meter(k)) => write!(f, "revenue:meter:{k}"),
            Self::Revenue(Revenue::Addon(k)) => write!(f, "revenue:addon:{k}"),
        }
    }
}

impl FromStr for LedgerAccount {
    type Err = LedgerError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || LedgerError::BadAccount(s.to_owned());
        match s {
            "receivable" => return Ok(Self::Receivable),
            "credit" => return Ok(Self::Credit),
            "refunds" => return Ok(Self::Refunds),
            "bad_debt" => return Ok(Self::BadDebt),
            "disputed" => return Ok(Self::Disputed),
            "chargebacks" => return Ok(Self::Chargebacks),
            _ => {}
        }
        if let Some(p) = s.strip_prefix("cash:") {
            return Self::cash(p).map_err(|_| bad());
        }
        let source = if let Some(k) = s.strip_prefix("revenue:plan:") {
            Revenue::Plan(k.to_owned())
        } else if let Some(k) = s.strip_prefix("revenue:meter:") {
            Revenue::Meter(k.to_owned())
        } else if let Some(k) = s.strip_prefix("revenue:addon:") {
            Revenue::Addon(k.to_owned())
        } else {
            return Err(bad());
        };
        Self::revenue(source).map_err(|_| bad())
    }
}

/// The business event a transaction books.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum TxKind {
    /// An invoice became owed (and any credit applied to it).
    InvoiceFinalized,
    /// A payment of an invoice arrived.
    Payment,
    /// Credit granted to a customer outside an invoice (support, goodwill).
    Credit,
    /// A correction of a finalised invoice.
    CreditNote,
    /// Money returned through the processor.
    Refund,
    /// A receivable given up as bad debt.
    WriteOff,
    /// A write-off undone: the invoice got paid after all.
    WriteOffReversal,
    /// A dispute opened: the processor withholds the disputed money.
    DisputeOpened,
    /// A dispute won: the withheld money returns.
    DisputeWon,
    /// A dispute lost: the withheld money is gone.
    DisputeLost,
    /// An open invoice voided: what it still asked for is no longer owed.
    InvoiceVoided,
}

impl fmt::Display for TxKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::InvoiceFinalized => "invoice_finalized",
            Self::Payment => "payment",
            Self::Credit => "credit",
            Self::CreditNote => "credit_note",
            Self::Refund => "refund",
            Self::WriteOff => "write_off",
            Self::WriteOffReversal => "write_off_reversal",
            Self::DisputeOpened => "dispute_opened",
            Self::DisputeWon => "dispute_won",
            Self::DisputeLost => "dispute_lost",
            Self::InvoiceVoided => "invoice_voided",
        })
    }
}

/// One signed posting: debit positive, credit negative.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Posting {
    pub account: LedgerAccount,
    pub amount_minor: i64,
}

/// What a transaction is about, before its postings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub kind: TxKind,
    /// The id of what it books (invoice, charge attempt, credit, refund).
    pub reference: String,
    /// The customer.
    pub account: AccountId,
    pub currency: Currency,
    pub description: String,
}

/// A transaction being assembled. Zero amounts are dropped; negative amounts are refused.
#[derive(Debug, Clone)]
pub struct Draft {
    header: Header,
    postings: Vec<Posting>,
    error: Option<LedgerError>,
}

/// A balanced transaction: only [`Draft::seal`] makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    header: Header,
    postings: Vec<Posting>,
}

impl Draft {
    pub fn new(header: Header) -> Self {
        Self {
            header,
            postings: Vec::new(),
            error: None,
        }
    }

    fn push(mut self, account: LedgerAccount, signed: Option<i64>, raw: i64) -> Self {
        match signed {
            _ if raw < 0 => {
                self.error.get_or_insert(LedgerError::NegativeAmount(raw));
            }
            Some(0) => {}
            Some(amount_minor) => self.postings.push(Posting {
                account,
                amount_minor,
            }),
            None => {
                self.error.get_or_insert(LedgerError::Overflow);
            }
        }
        self
    }

    /// Debits `account` by `amount_minor` (≥ 0).
    pub fn debit(self, account: LedgerAccount, amount_minor: i64) -> Self {
        self.push(account, Some(amount_minor), amount_minor)
    }

    /// Credits `account` by `amount_minor` (≥ 0).
    pub fn credit(self, account: LedgerAccount, amount_minor: i64) -> Self {
        self.push(account, amount_minor.checked_neg(), amount_minor)
    }

    /// A signed posting: positive debits, negative credits.
    pub fn signed(self, account: LedgerAccount, amount_minor: i64) -> Self {
        if amount_minor >= 0 {
            self.debit(account, amount_minor)
        } else {
            // i64::MIN has no positive counterpart: refuse rather than wrap.
            match amount_minor.checked_neg() {
                Some(a) => self.credit(account, a),
                None => self.push(account, None, 0),
            }
        }
    }

    /// The balanced transaction, `Ok(None)` when every amount was zero (nothing to book), or
    /// why it cannot be written.
    pub fn seal(self) -> Result<Option<Transaction>, LedgerError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let r = &self.header.reference;
        if r.is_empty() || r.len() > 200 {
            return Err(LedgerError::BadReference(r.clone()));
        }
        if self.postings.is_empty() {
            return Ok(None);
        }
        let sum: i128 = self
            .postings
            .iter()
            .map(|p| i128::from(p.amount_minor))
            .sum();
        if sum != 0 {
            return Err(LedgerError::Unbalanced(sum));
        }
        if self.postings.len() < 2 {
            return Err(LedgerError::TooFewPostings(self.postings.len()));
        }
        Ok(Some(Transaction {
            header: self.header,
            postings: self.postings,
        }))
    }
}

impl Transaction {
    pub fn header(&self) -> &Header {
        &self.header
    }

    pub fn postings(&self) -> &[Posting] {
        &self.postings
    }

    /// The postings in a canonical order, to compare two transactions.
    fn canonical(&self) -> Vec<Posting> {
        let mut p = self.postings.clone();
        p.sort();
        p
    }
}

/// A transaction as posted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Posted {
    pub id: Uuid,
    /// The same event was posted before; nothing new was written.
    pub replayed: bool,
}

/// Writes a sealed transaction — in the caller's database transaction when there is one (a
/// savepoint of it), else in its own; idempotent by `(kind, reference)` (see the module doc).
pub async fn post(
    conn: &mut PgConnection,
    tx: &Transaction,
    now: DateTime<Utc>,
) -> anyhow::Result<Posted> {
    let mut db = sqlx::Connection::begin(conn).await?;
    let id = Uuid::now_v7();
    if store::insert_transaction(&mut db, id, tx, now).await? {
        store::insert_entries(&mut db, id, &tx.postings).await?;
        db.commit().await?;
        return Ok(Posted {
            id,
            replayed: false,
        });
    }
    let h = &tx.header;
    let (first_id, first) = store::existing(&mut db, h.kind, &h.reference).await?;
    db.commit().await?;
    if first.header.account != h.account
        || first.header.currency != h.currency
        || first.canonical() != tx.canonical()
    {
        return Err(LedgerError::ConflictingRepost {
            kind: h.kind,
            reference: h.reference.clone(),
        }
        .into());
    }
    Ok(Posted {
        id: first_id,
        replayed: true,
    })
}

/// The balance of `account` for one customer and currency: the sum of its entries.
pub async fn balance(
    conn: &mut PgConnection,
    customer: AccountId,
    account: &LedgerAccount,
    currency: Currency,
) -> sqlx::Result<i64> {
    store::balance(conn, customer, account, currency).await
}

/// The amount of the posted transaction `(kind, reference)` (the sum of its debits).
pub async fn amount_of(
    conn: &mut PgConnection,
    kind: TxKind,
    reference: &str,
) -> sqlx::Result<Option<i64>> {
    store::amount_of(conn, kind, reference).await
}

/// The credit a customer holds (the `credit` liability, as a positive amount).
pub async fn credit_held(
    conn: &mut PgConnection,
    customer: AccountId,
    currency: Currency,
) -> sqlx::Result<i64> {
    Ok(-balance(conn, customer, &LedgerAccount::Credit, currency).await?)
}

// ---- The business transactions ------------------------------------------------------------

/// One revenue line of an invoice: what it earns from and its signed amount (negative for a
/// proration credit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevenueLine {
    pub source: Revenue,
    pub amount_minor: i64,
}

/// An invoice becoming owed: each line's revenue is credited (a negative line debited), the
/// receivable debited with the total; a negative total becomes customer credit; credit applied
/// to the invoice moves from `credit` to reduce the receivable. The receivable grows by exactly
/// the invoice's amount due.
pub fn invoice_finalized(
    header: Header,
    lines: &[RevenueLine],
    credit_applied_minor: i64,
) -> Result<Option<Transaction>, LedgerError> {
    let total = crate::money::sum(lines.iter().map(|l| l.amount_minor))
        .map_err(|_| LedgerError::Overflow)?;
    if credit_applied_minor > total.max(0) {
        return Err(LedgerError::Unbalanced(
            i128::from(credit_applied_minor) - i128::from(total),
        ));
    }
    let mut d = Draft::new(header);
    for l in lines {
        let acct = LedgerAccount::revenue(l.source.clone())?;
        d = d.signed(
            acct,
            l.amount_minor.checked_neg().ok_or(LedgerError::Overflow)?,
        );
    }
    if total >= 0 {
        d = d.debit(LedgerAccount::Receivable, total);
    } else {
        d = d.signed(LedgerAccount::Credit, total);
    }
    d.debit(LedgerAccount::Credit, credit_applied_minor)
        .credit(LedgerAccount::Receivable, credit_applied_minor)
        .seal()
}

/// A payment received through `processor`.
pub fn payment(
    header: Header,
    processor: &str,
    amount_minor: i64,
) -> Result<Option<Transaction>, LedgerError> {
    Draft::new(header)
        .debit(LedgerAccount::cash(processor)?, amount_minor)
        .credit(LedgerAccount::Receivable, amount_minor)
        .seal()
}

/// Money returned through `processor`.
pub fn refund(
    header: Header,
    processor: &str,
    amount_minor: i64,
) -> Result<Option<Transaction>, LedgerError> {
    Draft::new(header)
        .debit(LedgerAccount::Refunds, amount_minor)
        .credit(LedgerAccount::cash(processor)?, amount_minor)
        .seal()
}

/// Credit granted to a customer (applied to its next invoices).
pub fn credit(header: Header, amount_minor: i64) -> Result<Option<Transaction>, LedgerError> {
    Draft::new(header)
        .debit(LedgerAccount::Refunds, amount_minor)
        .credit(LedgerAccount::Credit, amount_minor)
        .seal()
}

/// A credit note: revenue given back (the `refunds` contra-revenue account is debited), the
/// part that reduces what the invoice still asks for out of the receivable, the rest as
/// customer credit.
pub fn credit_note(
    header: Header,
    reduced_due_minor: i64,
    credited_minor: i64,
) -> Result<Option<Transaction>, LedgerError> {
    let total =
        crate::money::add(reduced_due_minor, credited_minor).map_err(|_| LedgerError::Overflow)?;
    Draft::new(header)
        .debit(LedgerAccount::Refunds, total)
        .credit(LedgerAccount::Receivable, reduced_due_minor)
        .credit(LedgerAccount::Credit, credited_minor)
        .seal()
}

/// An open invoice voided: its revenue is given back (`refunds`, as a credit note books it),
/// what it still asked for leaves the receivable, and credit applied to it returns to the
/// customer.
pub fn invoice_voided(
    header: Header,
    remaining_minor: i64,
    credit_returned_minor: i64,
) -> Result<Option<Transaction>, LedgerError> {
    let total = crate::money::add(remaining_minor, credit_returned_minor)
        .map_err(|_| LedgerError::Overflow)?;
    Draft::new(header)
        .debit(LedgerAccount::Refunds, total)
        .credit(LedgerAccount::Receivable, remaining_minor)
        .credit(LedgerAccount::Credit, credit_returned_minor)
        .seal()
}

/// A write-off undone (the invoice is owed again, then paid).
pub fn write_off_reversal(
    header: Header,
    amount_minor: i64,
) -> Result<Option<Transaction>, LedgerError> {
    Draft::new(header)
        .debit(LedgerAccount::Receivable, amount_minor)
        .credit(LedgerAccount::BadDebt, amount_minor)
        .seal()
}

/// A receivable given up.
pub fn write_off(header: Header, amount_minor: i64) -> Result<Option<Transaction>, LedgerError> {
    Draft::new(header)
        .debit(LedgerAccount::BadDebt, amount_minor)
        .credit(LedgerAccount::Receivable, amount_minor)
        .seal()
}

/// A dispute's money movement at `processor`: opened, the processor withholds it (`cash` →
/// `disputed`); won, it returns (`disputed` → `cash`); lost, it is gone (`disputed` →
/// `chargebacks`). The header's kind says which.
pub fn dispute(
    header: Header,
    processor: &str,
    amount_minor: i64,
) -> Result<Option<Transaction>, LedgerError> {
    let cash = LedgerAccount::cash(processor)?;
    let draft = Draft::new(header.clone());
    match header.kind {
        TxKind::DisputeOpened => draft
            .debit(LedgerAccount::Disputed, amount_minor)
            .credit(cash, amount_minor),
        TxKind::DisputeWon => draft
            .debit(cash, amount_minor)
            .credit(LedgerAccount::Disputed, amount_minor),
        TxKind::DisputeLost => draft
            .debit(LedgerAccount::Chargebacks, amount_minor)
            .credit(LedgerAccount::Disputed, amount_minor),
        other => return Err(LedgerError::BadAccount(format!("{other} is not a dispute"))),
    }
    .seal()
}

#[cfg(test)]
mod tests;

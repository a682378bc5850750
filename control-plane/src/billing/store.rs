//! SQL of billing (billing_prod): schedules, the inbox, invoices and their lines.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::charges::{AttemptPresence, AttemptStatus, ChargeAttempt};
use super::credit_notes::CreditNote;
use super::invoices::{Invoice, InvoiceReason, InvoiceStatus, Line, LineKind, Totals};
use super::pricing::TierCharge;
use super::{Schedule, ScheduleEvent, Terms};
use crate::ids::{AccountId, ChargeAttemptId, CreditNoteId, EventId, InvoiceId, SubscriptionId};
use crate::money::Currency;

/// Records the event id; `false` when it was applied before.
pub async fn admit(
    conn: &mut PgConnection,
    event_id: EventId,
    now: DateTime<Utc>,
) -> sqlx::Result<bool> {
    let fresh = sqlx::query(
        "INSERT INTO inbox (event_id, topic, processed_at) VALUES ($1, 'billing.schedule', $2)
         ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(event_id)
    .bind(now)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(fresh == 1)
}

/// Writes the schedule unless a newer revision is stored; whether it wrote.
pub async fn upsert_schedule(
    conn: &mut PgConnection,
    ev: &ScheduleEvent,
    now: DateTime<Utc>,
) -> sqlx::Result<bool> {
    let written = sqlx::query(
        "INSERT INTO billing_schedules (subscription_id, account_id, plan_key, amount_minor, currency,
             interval, next_bill_at, status, source_seq, created_at, updated_at, terms,
             period_start, period_end)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10, $11, $12, $13)
         ON CONFLICT (subscription_id) DO UPDATE SET
             plan_key = EXCLUDED.plan_key, amount_minor = EXCLUDED.amount_minor,
             currency = EXCLUDED.currency, interval = EXCLUDED.interval,
             next_bill_at = EXCLUDED.next_bill_at, status = EXCLUDED.status,
             source_seq = EXCLUDED.source_seq, updated_at = EXCLUDED.updated_at,
             terms = EXCLUDED.terms, period_start = EXCLUDED.period_start,
             period_end = EXCLUDED.period_end
         WHERE billing_schedules.source_seq < EXCLUDED.source_seq",
    )
    .bind(ev.subscription_id)
    .bind(ev.account_id.0)
    .bind(&ev.plan_key)
    .bind(ev.amount_minor)
    .bind(&ev.currency)
    .bind(&ev.interval)
    .bind(ev.next_bill_at)
    .bind(ev.status)
    .bind(ev.revision)
    .bind(now)
    .bind(sqlx::types::Json(&ev.terms))
    .bind(ev.period_start)
    .bind(ev.period_end)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(written == 1)
}

pub async fn get_schedule(
    conn: &mut PgConnection,
    subscription: SubscriptionId,
) -> sqlx::Result<Option<Schedule>> {
    sqlx::query_as(
        "SELECT subscription_id, plan_key, amount_minor, currency, next_bill_at, status, source_seq
         FROM billing_schedules WHERE subscription_id = $1",
    )
    .bind(subscription)
    .fetch_optional(conn)
    .await
}

/// Deletes up to 10,000 inbox ids processed before `before`; returns how many.
pub async fn prune_inbox(pool: &PgPool, before: DateTime<Utc>) -> sqlx::Result<u64> {
    sqlx::query(
        "DELETE FROM inbox WHERE event_id IN (
             SELECT event_id FROM inbox WHERE processed_at < $1 ORDER BY processed_at LIMIT 10000)",
    )
    .bind(before)
    .execute(pool)
    .await
    .map(|r| r.rows_affected())
}

// ---- Invoices -----------------------------------------------------------------------------

/// A draft as made when its period starts.
pub struct NewInvoice<'a> {
    pub id: InvoiceId,
    pub account: AccountId,
    pub subscription: Option<SubscriptionId>,
    pub reason: InvoiceReason,
    pub currency: Currency,
    pub period: (DateTime<Utc>, DateTime<Utc>),
    pub usage: Option<(DateTime<Utc>, DateTime<Utc>)>,
    pub terms: &'a Terms,
    pub finalize_at: DateTime<Utc>,
    pub now: DateTime<Utc>,
}

/// Inserts a draft with its lines; `false` when the period's invoice exists already.
pub async fn insert_draft(
    conn: &mut PgConnection,
    d: &NewInvoice<'_>,
    lines: &[Line],
) -> sqlx::Result<bool> {
    let total: i64 = lines.iter().map(|l| l.amount_minor).sum();
    let inserted = sqlx::query(
        "INSERT INTO invoices (id, account_id, subscription_id, status, reason, currency,
             subtotal_minor, credit_applied_minor, total_minor, amount_due_minor, amount_paid_minor,
             period_start, period_end, usage_start, usage_end, terms, finalize_at,
             created_at, updated_at)
         VALUES ($1, $2, $3, 'draft', $4, $5, $6, 0, $6, greatest($6, 0), 0, $7, $8, $9, $10, $11,
             $12, $13, $13)
         ON CONFLICT DO NOTHING",
    )
    .bind(d.id)
    .bind(d.account.0)
    .bind(d.subscription)
    .bind(d.reason)
    .bind(d.currency)
    .bind(total)
    .bind(d.period.0)
    .bind(d.period.1)
    .bind(d.usage.map(|u| u.0))
    .bind(d.usage.map(|u| u.1))
    .bind(sqlx::types::Json(d.terms))
    .bind(d.finalize_at)
    .bind(d.now)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Ok(false);
    }
    replace_lines(conn, d.id, lines).await?;
    Ok(true)
}

/// Replaces a draft's lines (the database refuses it for a finalised invoice).
pub async fn replace_lines(
    conn: &mut PgConnection,
    invoice: InvoiceId,
    lines: &[Line],
) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM invoice_lines WHERE invoice_id = $1")
        .bind(invoice)
        .execute(&mut *conn)
        .await?;
    let mut kinds = Vec::with_capacity(lines.len());
    let mut descriptions = Vec::with_capacity(lines.len());
    let mut quantities = Vec::with_capacity(lines.len());
    let mut amounts = Vec::with_capacity(lines.len());
    let mut keys = Vec::with_capacity(lines.len());
    let mut meters = Vec::with_capacity(lines.len());
    let mut tiers = Vec::with_capacity(lines.len());
    let mut starts = Vec::with_capacity(lines.len());
    let mut ends = Vec::with_capacity(lines.len());
    for l in lines {
        kinds.push(l.kind);
        descriptions.push(l.description.clone());
        quantities.push(l.quantity);
        amounts.push(l.amount_minor);
        keys.push(l.revenue_key.clone());
        meters.push(l.meter.clone());
        tiers.push(
            l.tiers
                .as_ref()
                .map(|t| serde_json::to_value(t).unwrap_or_default()),
        );
        starts.push(l.period_start);
        ends.push(l.period_end);
    }
    sqlx::query(
        "INSERT INTO invoice_lines (invoice_id, position, kind, description, quantity, amount_minor,
             revenue_key, meter, tiers, period_start, period_end)
         SELECT $1, (o - 1)::int, k, d, q, a, r, m, t, s, e
         FROM UNNEST($2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::text[], $7::text[],
                     $8::jsonb[], $9::timestamptz[], $10::timestamptz[])
              WITH ORDINALITY AS x (k, d, q, a, r, m, t, s, e, o)",
    )
    .bind(invoice)
    .bind(&kinds)
    .bind(&descriptions)
    .bind(&quantities)
    .bind(&amounts)
    .bind(&keys)
    .bind(&meters)
    .bind(&tiers)
    .bind(&starts)
    .bind(&ends)
    .execute(conn)
    .await?;
    Ok(())
}

const INVOICE_COLUMNS: &str = "id, account_id, subscription_id, number, status, reason, currency,
    subtotal_minor, credit_applied_minor, total_minor, amount_due_minor, amount_paid_minor,
    credit_noted_minor, amount_credited_minor, amount_remaining_minor,
    period_start, period_end, usage_start, usage_end, finalize_at, finalized_at, paid_at,
    voided_at, action_required, created_at";

#[derive(sqlx::FromRow)]
struct InvoiceRow {
    id: InvoiceId,
    account_id: Uuid,
    subscription_id: Option<SubscriptionId>,
    number: Option<String>,
    status: InvoiceStatus,
    reason: InvoiceReason,
    currency: Currency,
    subtotal_minor: i64,
    credit_applied_minor: i64,
    total_minor: i64,
    amount_due_minor: i64,
    amount_paid_minor: i64,
    credit_noted_minor: i64,
    amount_credited_minor: i64,
    amount_remaining_minor: i64,
    period_start: DateTime<Utc>,
    period_end: DateTime<Utc>,
    usage_start: Option<DateTime<Utc>>,
    usage_end: Option<DateTime<Utc>>,
    finalize_at: DateTime<Utc>,
    finalized_at: Option<DateTime<Utc>>,
    paid_at: Option<DateTime<Utc>>,
    voided_at: Option<DateTime<Utc>>,
    action_required: bool,
    created_at: DateTime<Utc>,
}

impl InvoiceRow {
    fn with(self, lines: Vec<Line>) -> Invoice {
        Invoice {
            id: self.id,
            account_id: AccountId::from(self.account_id),
            subscription_id: self.subscription_id,
            number: self.number,
            status: self.status,
            reason: self.reason,
            currency: self.currency,
            subtotal_minor: self.subtotal_minor,
            credit_applied_minor: self.credit_applied_minor,
            total_minor: self.total_minor,
            amount_due_minor: self.amount_due_minor,
            amount_paid_minor: self.amount_paid_minor,
            credit_noted_minor: self.credit_noted_minor,
            amount_credited_minor: self.amount_credited_minor,
            amount_remaining_minor: self.amount_remaining_minor,
            period_start: self.period_start,
            period_end: self.period_end,
            usage_start: self.usage_start,
            usage_end: self.usage_end,
            finalize_at: self.finalize_at,
            finalized_at: self.finalized_at,
            paid_at: self.paid_at,
            voided_at: self.voided_at,
            action_required: self.action_required,
            created_at: self.created_at,
            lines,
        }
    }
}

type LineRow = (
    Uuid,
    LineKind,
    String,
    i64,
    i64,
    String,
    Option<String>,
    Option<sqlx::types::Json<Vec<TierCharge>>>,
    DateTime<Utc>,
    DateTime<Utc>,
);

async fn lines_of(conn: &mut PgConnection, ids: &[Uuid]) -> sqlx::Result<HashMap<Uuid, Vec<Line>>> {
    let rows: Vec<LineRow> = sqlx::query_as(
        "SELECT invoice_id, kind, description, quantity, amount_minor, revenue_key, meter, tiers,
             period_start, period_end
         FROM invoice_lines WHERE invoice_id = ANY($1) ORDER BY invoice_id, position",
    )
    .bind(ids)
    .fetch_all(conn)
    .await?;
    let mut by: HashMap<Uuid, Vec<Line>> = HashMap::new();
    for (id, kind, description, quantity, amount_minor, revenue_key, meter, tiers, s, e) in rows {
        by.entry(id).or_default().push(Line {
            kind,
            description,
            quantity,
            amount_minor,
            meter,
            tiers: tiers.map(|t| t.0),
            period_start: s,
            period_end: e,
            revenue_key,
        });
    }
    Ok(by)
}

async fn with_lines(conn: &mut PgConnection, rows: Vec<InvoiceRow>) -> sqlx::Result<Vec<Invoice>> {
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id.0).collect();
    let mut lines = lines_of(conn, &ids).await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let l = lines.remove(&r.id.0).unwrap_or_default();
            r.with(l)
        })
        .collect())
}

pub async fn invoice(conn: &mut PgConnection, id: InvoiceId) -> sqlx::Result<Option<Invoice>> {
    let row: Option<InvoiceRow> = sqlx::query_as(sqlf!(
        "SELECT {INVOICE_COLUMNS} FROM invoices WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(with_lines(conn, row.into_iter().collect()).await?.pop())
}

pub async fn invoice_for_update(
    conn: &mut PgConnection,
    id: InvoiceId,
) -> sqlx::Result<Option<Invoice>> {
    let row: Option<InvoiceRow> = sqlx::query_as(sqlf!(
        "SELECT {INVOICE_COLUMNS} FROM invoices WHERE id = $1 FOR UPDATE"
    ))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(with_lines(conn, row.into_iter().collect()).await?.pop())
}

/// The paid invoice that bought subscription `sub`'s period starting at `start` (its first or
/// a renewal's), if there is one.
pub async fn period_invoice(
    conn: &mut PgConnection,
    sub: SubscriptionId,
    start: DateTime<Utc>,
) -> sqlx::Result<Option<Invoice>> {
    let row: Option<InvoiceRow> = sqlx::query_as(sqlf!(
        "SELECT {INVOICE_COLUMNS} FROM invoices
         WHERE subscription_id = $1 AND period_start = $2 AND status = 'paid'
           AND reason IN ('subscription_create', 'subscription_cycle')
         ORDER BY created_at DESC LIMIT 1"
    ))
    .bind(sub)
    .bind(start)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(with_lines(conn, row.into_iter().collect()).await?.pop())
}

pub async fn list_invoices(
    conn: &mut PgConnection,
    account: AccountId,
    limit: i64,
    starting_after: Option<InvoiceId>,
) -> sqlx::Result<Vec<Invoice>> {
    let rows: Vec<InvoiceRow> = sqlx::query_as(sqlf!(
        "SELECT {INVOICE_COLUMNS} FROM invoices
         WHERE account_id = $1
           AND ($2::uuid IS NULL OR (created_at, id) < (
                SELECT created_at, id FROM invoices WHERE id = $2 AND account_id = $1))
         ORDER BY created_at DESC, id DESC LIMIT $3"
    ))
    .bind(account.0)
    .bind(starting_after)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    with_lines(conn, rows).await
}

pub async fn invoice_terms(conn: &mut PgConnection, id: InvoiceId) -> sqlx::Result<Terms> {
    let terms: sqlx::types::Json<Terms> =
        sqlx::query_scalar("SELECT terms FROM invoices WHERE id = $1")
            .bind(id)
            .fetch_one(conn)
            .await?;
    Ok(terms.0)
}

/// Each meter's usage counted in periods that start within `[start, end)`.
pub async fn usage_between(
    conn: &mut PgConnection,
    account: AccountId,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> sqlx::Result<Vec<(String, i64)>> {
    sqlx::query_as(
        "SELECT meter, sum(value)::bigint FROM usage_aggregates
         WHERE account_id = $1 AND period_start >= $2 AND period_start < $3
         GROUP BY meter ORDER BY meter",
    )
    .bind(account.0)
    .bind(start)
    .bind(end)
    .fetch_all(conn)
    .await
}

/// The next invoice number of `year` (`TG-2027-000001`), gapless: taken in the finalising
/// transaction, so a rolled-back finalisation gives its number back.
pub async fn next_number(conn: &mut PgConnection, year: i32) -> sqlx::Result<String> {
    let n: i64 = sqlx::query_scalar(
        "INSERT INTO invoice_numbers (year, last) VALUES ($1, 1)
         ON CONFLICT (year) DO UPDATE SET last = invoice_numbers.last + 1 RETURNING last",
    )
    .bind(year)
    .fetch_one(conn)
    .await?;
    Ok(format!("TG-{year}-{n:06}"))
}

/// Numbers and opens a draft with its final amounts; nothing due ⇒ paid at once. The
/// off-session charger takes it from `charge_at`.
pub async fn finalize(
    conn: &mut PgConnection,
    id: InvoiceId,
    number: &str,
    t: &Totals,
    now: DateTime<Utc>,
    charge_at: DateTime<Utc>,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE invoices SET number = $2, subtotal_minor = $3, total_minor = $4,
             credit_applied_minor = $5, amount_due_minor = $6, finalized_at = $7, updated_at = $7,
             status = CASE WHEN $6 = 0 THEN 'paid' ELSE 'open' END,
             paid_at = CASE WHEN $6 = 0 THEN $7 END,
             next_charge_at = CASE WHEN $6 = 0 THEN NULL ELSE $8 END
         WHERE id = $1 AND status = 'draft'",
    )
    .bind(id)
    .bind(number)
    .bind(t.subtotal_minor)
    .bind(t.total_minor)
    .bind(t.credit_applied_minor)
    .bind(t.amount_due_minor)
    .bind(now)
    .bind(charge_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records `amount_paid`; the invoice is paid (and no longer charged) once it covers what is
/// due. Returns whether it is paid now.
pub async fn mark_paid(
    conn: &mut PgConnection,
    id: InvoiceId,
    amount_paid: i64,
    now: DateTime<Utc>,
) -> sqlx::Result<bool> {
    let paid: bool = sqlx::query_scalar(
        "UPDATE invoices SET amount_paid_minor = $2, updated_at = $3, action_required = false,
             status = CASE WHEN $2 + amount_credited_minor >= amount_due_minor THEN 'paid' ELSE status END,
             paid_at = CASE WHEN $2 + amount_credited_minor >= amount_due_minor THEN $3 ELSE paid_at END,
             next_charge_at = CASE WHEN $2 + amount_credited_minor >= amount_due_minor THEN NULL
                                   ELSE next_charge_at END
         WHERE id = $1 RETURNING status = 'paid'",
    )
    .bind(id)
    .bind(amount_paid)
    .bind(now)
    .fetch_one(conn)
    .await?;
    Ok(paid)
}

/// Drafts whose grace window ended, locked for this transaction (others skip them).
pub async fn claim_drafts(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
    limit: i64,
) -> sqlx::Result<Vec<InvoiceId>> {
    sqlx::query_scalar(
        "SELECT id FROM invoices WHERE status = 'draft' AND finalize_at <= $1
         ORDER BY finalize_at, id LIMIT $2 FOR UPDATE SKIP LOCKED",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(conn)
    .await
}

// ---- Charge attempts ----------------------------------------------------------------------

/// Open invoices due for an off-session charge, claimed: their `next_charge_at` is cleared in
/// this transaction (the attempt takes over). Returns (invoice, account, amount, currency).
pub async fn claim_chargeable(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
    limit: i64,
) -> sqlx::Result<Vec<(InvoiceId, AccountId, i64, Currency)>> {
    let rows: Vec<(InvoiceId, Uuid, i64, Currency)> = sqlx::query_as(
        "UPDATE invoices SET next_charge_at = NULL, updated_at = $1
         WHERE id IN (SELECT id FROM invoices
                      WHERE status IN ('open', 'uncollectible') AND next_charge_at <= $1
                        AND amount_remaining_minor > 0
                        AND NOT EXISTS (SELECT 1 FROM charge_attempts a WHERE a.invoice_id = invoices.id
                                        AND a.status IN ('pending', 'requires_action'))
                      ORDER BY next_charge_at, id LIMIT $2 FOR UPDATE SKIP LOCKED)
         RETURNING id, account_id, amount_remaining_minor, currency",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(i, a, m, c)| (i, AccountId::from(a), m, c))
        .collect())
}

pub struct NewAttempt<'a> {
    pub id: ChargeAttemptId,
    pub invoice: InvoiceId,
    pub account: AccountId,
    pub amount_minor: i64,
    pub currency: Currency,
    pub presence: AttemptPresence,
    pub processor: &'a str,
    /// The provider's payment method (`pm_…`) an on-session attempt pays with.
    pub payment_method: Option<&'a str>,
    pub idempotency_key: &'a str,
    pub retry_at: DateTime<Utc>,
    pub now: DateTime<Utc>,
}

const ATTEMPT_COLUMNS: &str = "id, invoice_id, account_id, amount_minor, currency, presence,
    status, processor, payment_method, provider_payment_id, decline_code, error,
    idempotency_key, created_at, completed_at";

pub async fn insert_attempt(
    conn: &mut PgConnection,
    a: &NewAttempt<'_>,
) -> sqlx::Result<ChargeAttempt> {
    sqlx::query_as(sqlf!(
        "INSERT INTO charge_attempts (id, invoice_id, account_id, amount_minor, currency, presence,
             status, processor, idempotency_key, created_at, next_try_at, payment_method)
         VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7, $8, $9, $10, $11) RETURNING {ATTEMPT_COLUMNS}"
    ))
    .bind(a.id)
    .bind(a.invoice)
    .bind(a.account.0)
    .bind(a.amount_minor)
    .bind(a.currency)
    .bind(a.presence)
    .bind(a.processor)
    .bind(a.idempotency_key)
    .bind(a.now)
    .bind(a.retry_at)
    .bind(a.payment_method)
    .fetch_one(conn)
    .await
}

/// Off-session attempts still pending past their retry time, claimed until `retry_at`.
pub async fn claim_stale_attempts(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
    retry_at: DateTime<Utc>,
    limit: i64,
) -> sqlx::Result<Vec<ChargeAttempt>> {
    sqlx::query_as(sqlf!(
        "UPDATE charge_attempts SET next_try_at = $2
         WHERE id IN (SELECT id FROM charge_attempts
                      WHERE status = 'pending' AND presence = 'off_session' AND next_try_at <= $1
                      ORDER BY next_try_at, id LIMIT $3 FOR UPDATE SKIP LOCKED)
         RETURNING {ATTEMPT_COLUMNS}"
    ))
    .bind(now)
    .bind(retry_at)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Pins a pending attempt not pinned yet to the method (and gateway) it charges; false when
/// another driver pinned or recorded it first.
pub async fn pin_attempt(
    conn: &mut PgConnection,
    id: ChargeAttemptId,
    processor: &str,
    payment_method: &str,
) -> sqlx::Result<bool> {
    let pinned = sqlx::query(
        "UPDATE charge_attempts SET processor = $2, payment_method = $3
          WHERE id = $1 AND status = 'pending' AND payment_method IS NULL",
    )
    .bind(id)
    .bind(processor)
    .bind(payment_method)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(pinned == 1)
}

pub async fn attempt_for_update(
    conn: &mut PgConnection,
    id: ChargeAttemptId,
) -> sqlx::Result<Option<ChargeAttempt>> {
    sqlx::query_as(sqlf!(
        "SELECT {ATTEMPT_COLUMNS} FROM charge_attempts WHERE id = $1 FOR UPDATE"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await
}

pub async fn attempts_of(
    conn: &mut PgConnection,
    invoice: InvoiceId,
) -> sqlx::Result<Vec<ChargeAttempt>> {
    sqlx::query_as(sqlf!(
        "SELECT {ATTEMPT_COLUMNS} FROM charge_attempts WHERE invoice_id = $1 ORDER BY created_at, id"
    ))
    .bind(invoice)
    .fetch_all(conn)
    .await
}

pub async fn note_provider_payment(
    conn: &mut PgConnection,
    id: ChargeAttemptId,
    provider_payment: &str,
) -> sqlx::Result<()> {
    sqlx::query("UPDATE charge_attempts SET provider_payment_id = $2 WHERE id = $1")
        .bind(id)
        .bind(provider_payment)
        .execute(conn)
        .await
        .map(drop)
}

pub async fn complete_attempt(
    conn: &mut PgConnection,
    id: ChargeAttemptId,
    status: AttemptStatus,
    provider_payment: Option<&str>,
    decline_code: Option<&str>,
    error: Option<&str>,
    now: DateTime<Utc>,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE charge_attempts SET status = $2,
             provider_payment_id = coalesce($3, provider_payment_id), decline_code = $4,
             error = $5, completed_at = $6, next_try_at = NULL
         WHERE id = $1",
    )
    .bind(id)
    .bind(status)
    .bind(provider_payment)
    .bind(decline_code)
    .bind(error)
    .bind(now)
    .execute(conn)
    .await
    .map(drop)
}

pub async fn set_action_required(
    conn: &mut PgConnection,
    invoice: InvoiceId,
    required: bool,
    now: DateTime<Utc>,
) -> sqlx::Result<()> {
    sqlx::query("UPDATE invoices SET action_required = $2, updated_at = $3 WHERE id = $1")
        .bind(invoice)
        .bind(required)
        .bind(now)
        .execute(conn)
        .await
        .map(drop)
}

/// The currency of the account's latest invoice, and whether an open invoice waits for the
/// customer's authentication.
pub async fn billing_summary(
    conn: &mut PgConnection,
    account: AccountId,
) -> sqlx::Result<(Option<Currency>, bool)> {
    let currency: Option<Currency> = sqlx::query_scalar(
        "SELECT currency FROM invoices WHERE account_id = $1 ORDER BY created_at DESC, id DESC LIMIT 1",
    )
    .bind(account.0)
    .fetch_optional(&mut *conn)
    .await?;
    let action: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM invoices WHERE account_id = $1 AND status = 'open' AND action_required)",
    )
    .bind(account.0)
    .fetch_one(conn)
    .await?;
    Ok((currency, action))
}

/// On-session attempts the customer left: waiting for authentication since before `before`,
/// or pending (the request never came back) since before `before`. Locked.
pub async fn abandoned_on_session(
    conn: &mut PgConnection,
    before: DateTime<Utc>,
    limit: i64,
) -> sqlx::Result<Vec<ChargeAttempt>> {
    sqlx::query_as(sqlf!(
        "SELECT {ATTEMPT_COLUMNS} FROM charge_attempts
         WHERE presence = 'on_session'
           AND ((status = 'requires_action' AND completed_at < $1)
                OR (status = 'pending' AND created_at < $1))
         ORDER BY created_at, id LIMIT $2 FOR UPDATE SKIP LOCKED"
    ))
    .bind(before)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Drafts past their grace window by `as_of`, open invoices due for a charge by then, and
/// what those ask for by currency.
pub async fn count_due(
    conn: &mut PgConnection,
    as_of: DateTime<Utc>,
) -> sqlx::Result<(i64, i64, Vec<(Currency, i64)>)> {
    let drafts: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM invoices WHERE status = 'draft' AND finalize_at <= $1",
    )
    .bind(as_of)
    .fetch_one(&mut *conn)
    .await?;
    let rows: Vec<(Currency, i64, i64)> = sqlx::query_as(
        "SELECT currency, count(*), sum(amount_remaining_minor)::bigint FROM invoices
         WHERE status = 'open' AND next_charge_at <= $1 AND amount_remaining_minor > 0
         GROUP BY currency ORDER BY currency",
    )
    .bind(as_of)
    .fetch_all(conn)
    .await?;
    let charges = rows.iter().map(|r| r.1).sum();
    Ok((
        drafts,
        charges,
        rows.into_iter().map(|(c, _, a)| (c, a)).collect(),
    ))
}

// ---- Credit notes -------------------------------------------------------------------------

const CREDIT_NOTE_COLUMNS: &str = "id, number, invoice_id, account_id, currency, amount_minor,
    reduced_due_minor, credited_minor, reason, memo, issued_by, created_at";

pub async fn credit_note(
    conn: &mut PgConnection,
    id: CreditNoteId,
) -> sqlx::Result<Option<CreditNote>> {
    sqlx::query_as(sqlf!(
        "SELECT {CREDIT_NOTE_COLUMNS} FROM credit_notes WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// An invoice's notes, oldest first.
pub async fn credit_notes_of(
    conn: &mut PgConnection,
    invoice: InvoiceId,
) -> sqlx::Result<Vec<CreditNote>> {
    sqlx::query_as(sqlf!(
        "SELECT {CREDIT_NOTE_COLUMNS} FROM credit_notes WHERE invoice_id = $1
         ORDER BY created_at, number"
    ))
    .bind(invoice)
    .fetch_all(conn)
    .await
}

/// Gapless credit note numbers, one counter per year, taken in the issuing transaction.
pub async fn next_credit_note_number(conn: &mut PgConnection, year: i32) -> sqlx::Result<String> {
    let n: i64 = sqlx::query_scalar(
        "INSERT INTO credit_note_numbers (year, last) VALUES ($1, 1)
         ON CONFLICT (year) DO UPDATE SET last = credit_note_numbers.last + 1 RETURNING last",
    )
    .bind(year)
    .fetch_one(conn)
    .await?;
    Ok(format!("CN-{year}-{n:06}"))
}

pub async fn insert_credit_note(conn: &mut PgConnection, n: &CreditNote) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO credit_notes (id, number, invoice_id, account_id, currency, amount_minor,
             reduced_due_minor, credited_minor, reason, memo, issued_by, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(n.id)
    .bind(&n.number)
    .bind(n.invoice_id)
    .bind(n.account_id.0)
    .bind(n.currency)
    .bind(n.amount_minor)
    .bind(n.reduced_due_minor)
    .bind(n.credited_minor)
    .bind(n.reason)
    .bind(&n.memo)
    .bind(&n.issued_by)
    .bind(n.created_at)
    .execute(conn)
    .await
    .map(drop)
}

/// Adds a note's amounts to its invoice; an open invoice left owing nothing is paid. Returns
/// whether the note settled it.
pub async fn add_credit(
    conn: &mut PgConnection,
    invoice: InvoiceId,
    amount: i64,
    reduced_due: i64,
    now: DateTime<Utc>,
) -> sqlx::Result<bool> {
    sqlx::query_scalar(
        "WITH before AS (SELECT status FROM invoices WHERE id = $1)
         UPDATE invoices SET credit_noted_minor = credit_noted_minor + $2,
             amount_credited_minor = amount_credited_minor + $3, updated_at = $4,
             status = CASE WHEN status = 'open' AND amount_remaining_minor - $3 <= 0
                           THEN 'paid' ELSE status END,
             paid_at = CASE WHEN status = 'open' AND amount_remaining_minor - $3 <= 0
                            THEN $4 ELSE paid_at END,
             next_charge_at = CASE WHEN amount_remaining_minor - $3 <= 0 THEN NULL
                                   ELSE next_charge_at END,
             action_required = action_required AND amount_remaining_minor - $3 > 0
         WHERE id = $1
         RETURNING (SELECT status FROM before) = 'open' AND status = 'paid'",
    )
    .bind(invoice)
    .bind(amount)
    .bind(reduced_due)
    .bind(now)
    .fetch_one(conn)
    .await
}

/// Whether a payment of the invoice is in flight (`pending` or waiting for authentication).
pub async fn attempt_in_flight(conn: &mut PgConnection, invoice: InvoiceId) -> sqlx::Result<bool> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM charge_attempts WHERE invoice_id = $1
                        AND status IN ('pending', 'requires_action'))",
    )
    .bind(invoice)
    .fetch_one(conn)
    .await
}

/// The attempt in flight (pending or requires_action) whose provider payment is `pi`.
pub async fn attempt_by_payment(
    conn: &mut PgConnection,
    pi: &str,
) -> sqlx::Result<Option<ChargeAttempt>> {
    sqlx::query_as(sqlf!(
        "SELECT {ATTEMPT_COLUMNS} FROM charge_attempts
         WHERE provider_payment_id = $1 AND status IN ('pending', 'requires_action')"
    ))
    .bind(pi)
    .fetch_optional(conn)
    .await
}

/// Voids an open invoice: nothing is charged for it again. Returns whether it was open.
pub async fn void(
    conn: &mut PgConnection,
    id: InvoiceId,
    now: DateTime<Utc>,
) -> sqlx::Result<bool> {
    Ok(sqlx::query(
        "UPDATE invoices SET status = 'void', voided_at = $2, next_charge_at = NULL,
             action_required = false, updated_at = $2
         WHERE id = $1 AND status = 'open'",
    )
    .bind(id)
    .bind(now)
    .execute(conn)
    .await?
    .rows_affected()
        == 1)
}

//! SQL of dunning (billing_prod `dunning_cases`, `dunning_events`, `dunning_accounts`).

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use super::{AccountDunning, Case, EventKind};
use crate::ids::{AccountId, InvoiceId, SubscriptionId};
use crate::money::Currency;

const CASE_COLUMNS: &str = "id, invoice_id, account_id, subscription_id, currency, status, level,
    retries, next_retry_at, last_code, written_off_minor, opened_at, exhausted_at, recovered_at";

/// The invoice's case, locked; opened (level 1) when it has none.
pub async fn open_for_update(
    conn: &mut PgConnection,
    invoice: InvoiceId,
    account: AccountId,
    subscription: Option<SubscriptionId>,
    currency: Currency,
    now: DateTime<Utc>,
) -> sqlx::Result<(Case, bool)> {
    let opened = sqlx::query(
        "INSERT INTO dunning_cases (id, invoice_id, account_id, subscription_id, currency, status,
             level, opened_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, 'retrying', 1, $6, $6)
         ON CONFLICT (invoice_id) DO NOTHING",
    )
    .bind(Uuid::now_v7())
    .bind(invoice)
    .bind(account.0)
    .bind(subscription)
    .bind(currency)
    .bind(now)
    .execute(&mut *conn)
    .await?
    .rows_affected()
        == 1;
    let case = of_invoice_for_update(conn, invoice)
        .await?
        .ok_or(sqlx::Error::RowNotFound)?;
    Ok((case, opened))
}

pub async fn of_invoice_for_update(
    conn: &mut PgConnection,
    invoice: InvoiceId,
) -> sqlx::Result<Option<Case>> {
    sqlx::query_as(sqlf!(
        "SELECT {CASE_COLUMNS} FROM dunning_cases WHERE invoice_id = $1 FOR UPDATE"
    ))
    .bind(invoice)
    .fetch_optional(conn)
    .await
}

/// Writes a case's state back.
pub async fn save(conn: &mut PgConnection, c: &Case, now: DateTime<Utc>) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE dunning_cases SET status = $2, level = $3, retries = $4, next_retry_at = $5,
             last_code = $6, written_off_minor = $7, exhausted_at = $8, recovered_at = $9,
             updated_at = $10
         WHERE id = $1",
    )
    .bind(c.id)
    .bind(c.status)
    .bind(c.level)
    .bind(c.retries)
    .bind(c.next_retry_at)
    .bind(&c.last_code)
    .bind(c.written_off_minor)
    .bind(c.exhausted_at)
    .bind(c.recovered_at)
    .bind(now)
    .execute(conn)
    .await
    .map(drop)
}

/// Appends a row to the case's history.
pub async fn record(
    conn: &mut PgConnection,
    case: Uuid,
    kind: EventKind,
    level: i32,
    cause: &str,
    now: DateTime<Utc>,
) -> sqlx::Result<()> {
    let cause: String = cause.chars().take(500).collect();
    sqlx::query(
        "INSERT INTO dunning_events (case_id, seq, at, kind, level, cause)
         SELECT $1, coalesce(max(seq), 0) + 1, $2, $3, $4, $5 FROM dunning_events WHERE case_id = $1",
    )
    .bind(case)
    .bind(now)
    .bind(kind)
    .bind(level)
    .bind(if cause.is_empty() { "-".to_owned() } else { cause })
    .execute(conn)
    .await
    .map(drop)
}

/// A case's history, oldest first: (time, kind, level, cause).
pub async fn history(
    conn: &mut PgConnection,
    case: Uuid,
) -> sqlx::Result<Vec<(DateTime<Utc>, EventKind, i32, String)>> {
    sqlx::query_as(
        "SELECT at, kind, level, cause FROM dunning_events WHERE case_id = $1 ORDER BY seq",
    )
    .bind(case)
    .fetch_all(conn)
    .await
}

/// Cases whose retry is due, locked (others skip them).
pub async fn claim_due(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
    limit: i64,
) -> sqlx::Result<Vec<Case>> {
    sqlx::query_as(sqlf!(
        "SELECT {CASE_COLUMNS} FROM dunning_cases
         WHERE status = 'retrying' AND next_retry_at <= $1
         ORDER BY next_retry_at, id LIMIT $2 FOR UPDATE SKIP LOCKED"
    ))
    .bind(now)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// The account's cases that are not recovered, locked.
pub async fn unrecovered_for_update(
    conn: &mut PgConnection,
    account: AccountId,
) -> sqlx::Result<Vec<Case>> {
    sqlx::query_as(sqlf!(
        "SELECT {CASE_COLUMNS} FROM dunning_cases
         WHERE account_id = $1 AND status <> 'recovered' ORDER BY opened_at, id FOR UPDATE"
    ))
    .bind(account.0)
    .fetch_all(conn)
    .await
}

/// The account's case that decides what it sees (the oldest open one).
pub async fn current(conn: &mut PgConnection, account: AccountId) -> sqlx::Result<Option<Case>> {
    sqlx::query_as(sqlf!(
        "SELECT {CASE_COLUMNS} FROM dunning_cases
         WHERE account_id = $1 AND status <> 'recovered' ORDER BY opened_at, id LIMIT 1"
    ))
    .bind(account.0)
    .fetch_optional(conn)
    .await
}

/// Stores the account's new snapshot under the next version; returns it.
pub async fn put_account(
    conn: &mut PgConnection,
    account: AccountId,
    s: &AccountDunning,
    now: DateTime<Utc>,
) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "INSERT INTO dunning_accounts (account_id, version, level, past_due_since,
             payment_method_required, bad_debt_minor, updated_at)
         VALUES ($1, 1, $2, $3, $4, $5, $6)
         ON CONFLICT (account_id) DO UPDATE SET version = dunning_accounts.version + 1,
             level = EXCLUDED.level, past_due_since = EXCLUDED.past_due_since,
             payment_method_required = EXCLUDED.payment_method_required,
             bad_debt_minor = EXCLUDED.bad_debt_minor, updated_at = EXCLUDED.updated_at
         RETURNING version",
    )
    .bind(account.0)
    .bind(s.level)
    .bind(s.past_due_since)
    .bind(s.payment_method_required)
    .bind(s.bad_debt_minor)
    .bind(now)
    .fetch_one(conn)
    .await
}

/// Sets when the charger next tries the invoice (an open or uncollectible one).
pub async fn charge_at(
    conn: &mut PgConnection,
    invoice: InvoiceId,
    at: DateTime<Utc>,
) -> sqlx::Result<bool> {
    Ok(sqlx::query(
        "UPDATE invoices SET next_charge_at = $2, updated_at = $2
         WHERE id = $1 AND status IN ('open', 'uncollectible') AND amount_remaining_minor > 0",
    )
    .bind(invoice)
    .bind(at)
    .execute(conn)
    .await?
    .rows_affected()
        == 1)
}

/// Marks the invoice uncollectible (nothing charges it until a retry is asked for).
pub async fn set_uncollectible(
    conn: &mut PgConnection,
    invoice: InvoiceId,
    now: DateTime<Utc>,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE invoices SET status = 'uncollectible', next_charge_at = NULL, updated_at = $2
         WHERE id = $1 AND status = 'open'",
    )
    .bind(invoice)
    .bind(now)
    .execute(conn)
    .await
    .map(drop)
}

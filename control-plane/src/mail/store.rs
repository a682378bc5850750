//! SQL of emails (cf_prod `emails`).

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use super::Email;
use crate::dunning::StepKind;
use crate::ids::AccountId;

const EMAIL_COLUMNS: &str = "id, account_id, kind, to_address, subject, text_body, html_body,
    status, attempts, next_attempt_at, last_error, sent_at, created_at";

#[allow(clippy::too_many_arguments)]
pub async fn insert(
    conn: &mut PgConnection,
    account: AccountId,
    kind: StepKind,
    to: &str,
    subject: &str,
    text: &str,
    html: &str,
    now: DateTime<Utc>,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO emails (id, account_id, kind, to_address, subject, text_body, html_body,
             status, next_attempt_at, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', $8, $8)",
    )
    .bind(Uuid::now_v7())
    .bind(account.0)
    .bind(kind)
    .bind(to)
    .bind(subject)
    .bind(text)
    .bind(html)
    .bind(now)
    .execute(conn)
    .await
    .map(drop)
}

pub async fn of_account(conn: &mut PgConnection, account: AccountId) -> sqlx::Result<Vec<Email>> {
    sqlx::query_as(sqlf!(
        "SELECT {EMAIL_COLUMNS} FROM emails WHERE account_id = $1 ORDER BY created_at, id"
    ))
    .bind(account.0)
    .fetch_all(conn)
    .await
}

/// Claims due emails: their next attempt moves to `lease_until` and the attempt is counted.
pub async fn claim_due(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
    limit: i64,
) -> sqlx::Result<Vec<Email>> {
    sqlx::query_as(sqlf!(
        "UPDATE emails SET next_attempt_at = $2, attempts = attempts + 1
         WHERE id IN (SELECT id FROM emails WHERE status = 'pending' AND next_attempt_at <= $1
                      ORDER BY next_attempt_at, id LIMIT $3 FOR UPDATE SKIP LOCKED)
         RETURNING {EMAIL_COLUMNS}"
    ))
    .bind(now)
    .bind(lease_until)
    .bind(limit)
    .fetch_all(conn)
    .await
}

pub async fn sent(conn: &mut PgConnection, id: Uuid, now: DateTime<Utc>) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE emails SET status = 'sent', sent_at = $2, next_attempt_at = NULL, last_error = NULL
         WHERE id = $1 AND status = 'pending'",
    )
    .bind(id)
    .bind(now)
    .execute(conn)
    .await
    .map(drop)
}

/// A failed send: tried again at `next`, or `failed` for good.
pub async fn failed(
    conn: &mut PgConnection,
    id: Uuid,
    error: &str,
    next: Option<DateTime<Utc>>,
) -> sqlx::Result<()> {
    let error: String = error.chars().take(500).collect();
    sqlx::query(
        "UPDATE emails SET last_error = $2,
             status = CASE WHEN $3::timestamptz IS NULL THEN 'failed' ELSE 'pending' END,
             next_attempt_at = $3
         WHERE id = $1 AND status = 'pending'",
    )
    .bind(id)
    .bind(error)
    .bind(next)
    .execute(conn)
    .await
    .map(drop)
}

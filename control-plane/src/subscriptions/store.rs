//! SQL for subscriptions (cf_prod).

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use super::{Sold, Subscription};
use crate::ids::{AccountId, SubscriptionId};

const SUB_COLUMNS: &str =
    "id, plan_key AS plan, status, amount_minor, currency, interval, current_period_start,
    current_period_end, cancel_at_period_end, canceled_at, revision, account_id, created_at,
    terms, billing_anchor, pending_change";

pub async fn live(
    conn: &mut PgConnection,
    account: AccountId,
) -> sqlx::Result<Option<Subscription>> {
    sqlx::query_as(sqlf!(
        "SELECT {SUB_COLUMNS} FROM subscriptions WHERE account_id = $1 AND status IN ('trialing', 'active', 'past_due', 'unpaid')"
    ))
    .bind(account.0)
    .fetch_optional(conn)
    .await
}

pub async fn get(
    conn: &mut PgConnection,
    id: SubscriptionId,
) -> sqlx::Result<Option<Subscription>> {
    sqlx::query_as(sqlf!(
        "SELECT {SUB_COLUMNS} FROM subscriptions WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// One of the account's subscriptions, locked (None for another account's id).
pub async fn get_of_for_update(
    conn: &mut PgConnection,
    account: AccountId,
    id: SubscriptionId,
) -> sqlx::Result<Option<Subscription>> {
    sqlx::query_as(sqlf!(
        "SELECT {SUB_COLUMNS} FROM subscriptions WHERE id = $1 AND account_id = $2 FOR UPDATE"
    ))
    .bind(id)
    .bind(account.0)
    .fetch_optional(conn)
    .await
}

pub async fn list(conn: &mut PgConnection, account: AccountId) -> sqlx::Result<Vec<Subscription>> {
    sqlx::query_as(sqlf!(
        "SELECT {SUB_COLUMNS} FROM subscriptions WHERE account_id = $1 ORDER BY created_at DESC"
    ))
    .bind(account.0)
    .fetch_all(conn)
    .await
}

/// A subscription as created.
pub struct NewSubscription<'a> {
    pub id: SubscriptionId,
    pub account: AccountId,
    pub sold: &'a Sold,
    pub status: tollgate_protocol::SubscriptionStatus,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub anchor: DateTime<Utc>,
}

pub async fn insert(
    conn: &mut PgConnection,
    n: &NewSubscription<'_>,
) -> sqlx::Result<Subscription> {
    let sold = n.sold;
    sqlx::query_as(sqlf!(
        "INSERT INTO subscriptions (id, account_id, plan_key, status, amount_minor, currency, interval,
             current_period_start, current_period_end, cancel_at_period_end, revision, created_at,
             terms, billing_anchor)
         VALUES ($1, $2, $3, $10, $4, $5, $6, $7, $8, false, 1, $7, $9, $11)
         RETURNING {SUB_COLUMNS}"
    ))
    .bind(n.id)
    .bind(n.account.0)
    .bind(&sold.plan)
    .bind(sold.amount_minor)
    .bind(&sold.currency)
    .bind(sold.interval.as_str())
    .bind(n.start)
    .bind(n.end)
    .bind(sqlx::types::Json(&sold.terms))
    .bind(n.status.as_str())
    .bind(n.anchor)
    .fetch_one(conn)
    .await
}

pub async fn cancel_at_period_end(
    conn: &mut PgConnection,
    id: SubscriptionId,
) -> sqlx::Result<Subscription> {
    sqlx::query_as(sqlf!(
        "UPDATE subscriptions SET cancel_at_period_end = true, revision = revision + 1 WHERE id = $1 RETURNING {SUB_COLUMNS}"
    ))
    .bind(id)
    .fetch_one(conn)
    .await
}

pub async fn cancel_now(
    conn: &mut PgConnection,
    id: SubscriptionId,
    now: DateTime<Utc>,
) -> sqlx::Result<Subscription> {
    sqlx::query_as(sqlf!(
        "UPDATE subscriptions SET status = 'canceled', canceled_at = $2, revision = revision + 1 WHERE id = $1
         RETURNING {SUB_COLUMNS}"
    ))
    .bind(id)
    .bind(now)
    .fetch_one(conn)
    .await
}

/// Cancels up to 500 subscriptions set to cancel at period end whose period ended by `now`
/// (rows another replica holds are skipped).
pub async fn end_due(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
) -> sqlx::Result<Vec<Subscription>> {
    sqlx::query_as(sqlf!(
        "UPDATE subscriptions SET status = 'canceled', canceled_at = current_period_end, revision = revision + 1
         WHERE id IN (SELECT id FROM subscriptions
                      WHERE cancel_at_period_end AND status <> 'canceled' AND current_period_end <= $1
                      ORDER BY current_period_end LIMIT 500 FOR UPDATE SKIP LOCKED)
         RETURNING {SUB_COLUMNS}"
    ))
    .bind(now)
    .fetch_all(conn)
    .await
}

/// Live subscriptions whose period ended by `now` and that renew, locked (rows another
/// process holds are skipped).
pub async fn claim_renewals(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
    limit: i64,
) -> sqlx::Result<Vec<Subscription>> {
    sqlx::query_as(sqlf!(
        "SELECT {SUB_COLUMNS} FROM subscriptions
         WHERE NOT cancel_at_period_end AND status IN ('trialing', 'active', 'past_due')
           AND current_period_end <= $1
         ORDER BY current_period_end, id LIMIT $2 FOR UPDATE SKIP LOCKED"
    ))
    .bind(now)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Starts the next period `[current end, end)`, applying a pending change.
pub async fn advance_period(
    conn: &mut PgConnection,
    id: SubscriptionId,
    end: DateTime<Utc>,
) -> sqlx::Result<Subscription> {
    sqlx::query_as(sqlf!(
        "UPDATE subscriptions SET current_period_start = current_period_end,
             current_period_end = $2, revision = revision + 1,
             status = CASE WHEN status = 'trialing' THEN 'active' ELSE status END,
             plan_key = coalesce(pending_change->>'plan', plan_key),
             amount_minor = coalesce((pending_change->>'amount_minor')::bigint, amount_minor),
             terms = coalesce(pending_change->'terms', terms),
             pending_change = NULL
         WHERE id = $1 RETURNING {SUB_COLUMNS}"
    ))
    .bind(id)
    .bind(end)
    .fetch_one(conn)
    .await
}

/// Switches the plan now (a mid-period change); clears any pending one.
pub async fn change_plan(
    conn: &mut PgConnection,
    id: SubscriptionId,
    to: &super::change::PendingChange,
) -> sqlx::Result<Subscription> {
    sqlx::query_as(sqlf!(
        "UPDATE subscriptions SET plan_key = $2, amount_minor = $3, terms = $4,
             pending_change = NULL, revision = revision + 1
         WHERE id = $1 RETURNING {SUB_COLUMNS}"
    ))
    .bind(id)
    .bind(&to.plan)
    .bind(to.amount_minor)
    .bind(sqlx::types::Json(&to.terms))
    .fetch_one(conn)
    .await
}

/// Sets (or clears) the change the next renewal applies.
pub async fn set_pending_change(
    conn: &mut PgConnection,
    id: SubscriptionId,
    to: Option<&super::change::PendingChange>,
) -> sqlx::Result<Subscription> {
    sqlx::query_as(sqlf!(
        "UPDATE subscriptions SET pending_change = $2, revision = revision + 1
         WHERE id = $1 RETURNING {SUB_COLUMNS}"
    ))
    .bind(id)
    .bind(to.map(sqlx::types::Json))
    .fetch_one(conn)
    .await
}

/// Undoes a pending cancel at period end.
pub async fn resume(conn: &mut PgConnection, id: SubscriptionId) -> sqlx::Result<Subscription> {
    sqlx::query_as(sqlf!(
        "UPDATE subscriptions SET cancel_at_period_end = false, revision = revision + 1
         WHERE id = $1 RETURNING {SUB_COLUMNS}"
    ))
    .bind(id)
    .fetch_one(conn)
    .await
}

pub async fn get_for_update(
    conn: &mut PgConnection,
    id: SubscriptionId,
) -> sqlx::Result<Option<Subscription>> {
    sqlx::query_as(sqlf!(
        "SELECT {SUB_COLUMNS} FROM subscriptions WHERE id = $1 FOR UPDATE"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await
}

pub async fn set_status(
    conn: &mut PgConnection,
    id: SubscriptionId,
    status: tollgate_protocol::SubscriptionStatus,
) -> sqlx::Result<Subscription> {
    sqlx::query_as(sqlf!(
        "UPDATE subscriptions SET status = $2, revision = revision + 1 WHERE id = $1
         RETURNING {SUB_COLUMNS}"
    ))
    .bind(id)
    .bind(status.as_str())
    .fetch_one(conn)
    .await
}

/// Moves the current period's end (a trial extended).
pub async fn set_period_end(
    conn: &mut PgConnection,
    id: SubscriptionId,
    end: DateTime<Utc>,
) -> sqlx::Result<Subscription> {
    sqlx::query_as(sqlf!(
        "UPDATE subscriptions SET current_period_end = $2, revision = revision + 1
         WHERE id = $1 RETURNING {SUB_COLUMNS}"
    ))
    .bind(id)
    .bind(end)
    .fetch_one(conn)
    .await
}

/// An `unpaid` subscription paid at last: active again, in the period `[start, end)`.
pub async fn resume_unpaid(
    conn: &mut PgConnection,
    id: SubscriptionId,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> sqlx::Result<Subscription> {
    sqlx::query_as(sqlf!(
        "UPDATE subscriptions SET status = 'active', current_period_start = $2,
             current_period_end = $3, revision = revision + 1
         WHERE id = $1 RETURNING {SUB_COLUMNS}"
    ))
    .bind(id)
    .bind(start)
    .bind(end)
    .fetch_one(conn)
    .await
}

pub async fn anchors(
    conn: &mut PgConnection,
    accounts: &[AccountId],
) -> sqlx::Result<std::collections::HashMap<AccountId, DateTime<Utc>>> {
    let ids: Vec<uuid::Uuid> = accounts.iter().map(|a| a.0).collect();
    let rows: Vec<(uuid::Uuid, DateTime<Utc>)> = sqlx::query_as(
        "SELECT account_id, billing_anchor FROM subscriptions
         WHERE account_id = ANY($1) AND status IN ('trialing', 'active', 'past_due', 'unpaid')",
    )
    .bind(&ids)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(a, t)| (AccountId::from(a), t))
        .collect())
}

/// Live subscriptions whose period ended by `as_of` and that renew.
pub async fn count_renewals(conn: &mut PgConnection, as_of: DateTime<Utc>) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "SELECT count(*) FROM subscriptions
         WHERE NOT cancel_at_period_end AND status IN ('trialing', 'active', 'past_due')
           AND current_period_end <= $1",
    )
    .bind(as_of)
    .fetch_one(conn)
    .await
}

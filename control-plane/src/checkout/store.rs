//! SQL for checkouts (cf_prod).

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use tollgate_rules::Plan;

use super::{Checkout, CheckoutStatus, RefundReason};
use crate::ids::{AccountId, CheckoutId, PaymentMethodId, SubscriptionId};

const CHECKOUT_COLUMNS: &str = "id, plan_key AS plan, status, amount_minor, currency, interval,
    bundle_version, payment_method_id, client_secret, decline_code, subscription_id,
    refund_reason, expires_at, payment_intent_id, provider_key, account_id, created_at, terms";

/// One checkout; `lock` takes its row lock.
pub async fn get(
    conn: &mut PgConnection,
    id: CheckoutId,
    lock: bool,
) -> sqlx::Result<Option<Checkout>> {
    let lock = if lock { " FOR UPDATE" } else { "" };
    sqlx::query_as(sqlf!(
        "SELECT {CHECKOUT_COLUMNS} FROM checkouts WHERE id = $1{lock}"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// One account's checkout (None for another account's id).
pub async fn get_of(
    conn: &mut PgConnection,
    account: AccountId,
    id: CheckoutId,
) -> sqlx::Result<Option<Checkout>> {
    Ok(get(conn, id, false)
        .await?
        .filter(|c| c.account_id == account))
}

/// The checkout that paid for subscription `sub` and started it, if one did.
pub async fn of_subscription(
    conn: &mut PgConnection,
    sub: SubscriptionId,
) -> sqlx::Result<Option<Checkout>> {
    sqlx::query_as(sqlf!(
        "SELECT {CHECKOUT_COLUMNS} FROM checkouts
         WHERE subscription_id = $1 AND status = 'succeeded'"
    ))
    .bind(sub)
    .fetch_optional(conn)
    .await
}

/// The account's checkout still waiting for payment or authentication, if any.
pub async fn open_of(
    conn: &mut PgConnection,
    account: AccountId,
) -> sqlx::Result<Option<CheckoutId>> {
    let open: Option<(CheckoutId,)> = sqlx::query_as(
        "SELECT id FROM checkouts WHERE account_id = $1 AND status IN ('pending', 'requires_action')",
    )
    .bind(account.0)
    .fetch_optional(conn)
    .await?;
    Ok(open.map(|(id,)| id))
}

/// A pending checkout and its snapshot of what is sold.
pub struct NewCheckout<'a> {
    pub id: CheckoutId,
    pub account: AccountId,
    pub plan: &'a Plan,
    pub payment_method: Option<PaymentMethodId>,
    pub bundle_version: Option<i64>,
    pub provider_key: String,
    pub expires_at: DateTime<Utc>,
    pub now: DateTime<Utc>,
    /// What is charged for the first period: the plan's price plus its add-ons'.
    pub amount_minor: i64,
    /// What the plan bills besides its price, as sold now.
    pub terms: crate::billing::Terms,
}

pub async fn insert_pending(
    conn: &mut PgConnection,
    c: &NewCheckout<'_>,
) -> sqlx::Result<Checkout> {
    sqlx::query_as(sqlf!(
        "INSERT INTO checkouts (id, account_id, plan_key, payment_method_id, amount_minor, currency, interval,
             bundle_version, provider_key, status, expires_at, created_at, updated_at, terms)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'pending', $10, $11, $11, $12)
         RETURNING {CHECKOUT_COLUMNS}"
    ))
    .bind(c.id)
    .bind(c.account.0)
    .bind(&c.plan.key)
    .bind(c.payment_method)
    .bind(c.amount_minor)
    .bind(&c.plan.currency)
    .bind(c.plan.interval.as_str())
    .bind(c.bundle_version)
    .bind(&c.provider_key)
    .bind(c.expires_at)
    .bind(c.now)
    .bind(sqlx::types::Json(&c.terms))
    .fetch_one(conn)
    .await
}

/// A checkout's new state. `pi`, `client_secret`, `decline`, `subscription` and the refund
/// fields overwrite only when given.
pub struct Update<'a> {
    pub status: CheckoutStatus,
    pub pi: Option<&'a str>,
    pub client_secret: Option<&'a str>,
    pub decline: Option<&'a str>,
    pub subscription: Option<SubscriptionId>,
    pub refund_reason: Option<RefundReason>,
    pub refund_id: Option<&'a str>,
}

impl Update<'_> {
    /// Only the status changes.
    pub fn status(status: CheckoutStatus) -> Self {
        Self {
            status,
            pi: None,
            client_secret: None,
            decline: None,
            subscription: None,
            refund_reason: None,
            refund_id: None,
        }
    }
}

/// Writes a checkout's new state; the client secret is kept only while it requires action.
pub async fn update(
    conn: &mut PgConnection,
    id: CheckoutId,
    u: Update<'_>,
    now: DateTime<Utc>,
) -> sqlx::Result<Checkout> {
    sqlx::query_as(sqlf!(
        "UPDATE checkouts SET status = $2,
             payment_intent_id = COALESCE($3, payment_intent_id),
             client_secret = CASE WHEN $2 = 'requires_action' THEN COALESCE($4, client_secret) END,
             decline_code = COALESCE($5, decline_code),
             subscription_id = COALESCE($6, subscription_id),
             refund_reason = COALESCE($7, refund_reason),
             refund_id = COALESCE($8, refund_id),
             updated_at = $9
         WHERE id = $1 RETURNING {CHECKOUT_COLUMNS}"
    ))
    .bind(id)
    .bind(u.status)
    .bind(u.pi)
    .bind(u.client_secret)
    .bind(u.decline)
    .bind(u.subscription)
    .bind(u.refund_reason)
    .bind(u.refund_id)
    .bind(now)
    .fetch_one(conn)
    .await
}

/// Checkouts the reconciler settles: pending since before `pending_before`, waiting for
/// authentication past their expiry at `now`, or refunding; oldest first.
pub async fn due(
    conn: &mut PgConnection,
    pending_before: DateTime<Utc>,
    now: DateTime<Utc>,
    limit: i64,
) -> sqlx::Result<Vec<(CheckoutId, CheckoutStatus)>> {
    sqlx::query_as(
        "SELECT id, status FROM checkouts
          WHERE (status = 'pending' AND created_at <= $1)
             OR (status = 'requires_action' AND expires_at <= $2)
             OR status = 'refunding'
          ORDER BY created_at LIMIT $3",
    )
    .bind(pending_before)
    .bind(now)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// The waiting checkout (pending or requires_action) whose provider payment is `pi`.
pub async fn waiting_by_payment(
    conn: &mut PgConnection,
    pi: &str,
) -> sqlx::Result<Option<Checkout>> {
    sqlx::query_as(sqlf!(
        "SELECT {CHECKOUT_COLUMNS} FROM checkouts
         WHERE payment_intent_id = $1 AND status IN ('pending', 'requires_action')"
    ))
    .bind(pi)
    .fetch_optional(conn)
    .await
}

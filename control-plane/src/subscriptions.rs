//! Subscriptions: created by a completed checkout ([`crate::checkout`]) from what it sold,
//! listed, canceled now or at period end.
//!
//! Every subscription change writes, in the same cf transaction, an
//! `entitlements.recompute` and a `billing.schedule` outbox row.

use axum::extract::State;
use chrono::{DateTime, Months, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::PgConnection;
use tollgate_protocol::AccountId;
use tollgate_rules::Interval;
use uuid::Uuid;

use crate::accounts::auth::Authed;
use crate::billing::ScheduleEvent;
use crate::http::{ApiError, ApiResult, Json, Path};
use crate::state::AppState;
use crate::{entitlements, outbox};

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Subscription {
    pub id: Uuid,
    pub plan: String,
    pub status: String,
    pub amount_minor: i64,
    pub currency: String,
    /// The billing interval it was sold with (`month`, `year`).
    pub interval: String,
    pub current_period_start: DateTime<Utc>,
    pub current_period_end: DateTime<Utc>,
    pub cancel_at_period_end: bool,
    pub canceled_at: Option<DateTime<Utc>>,
    #[serde(skip)]
    pub revision: i64,
    #[serde(skip)]
    pub account_id: Uuid,
    pub created_at: DateTime<Utc>,
}

const SUB_COLUMNS: &str =
    "id, plan_key AS plan, status, amount_minor, currency, interval, current_period_start,
    current_period_end, cancel_at_period_end, canceled_at, revision, account_id, created_at";

/// What a checkout sold: the subscription is created from this snapshot, whatever the catalog
/// says by the time the payment completes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sold {
    pub plan: String,
    pub amount_minor: i64,
    pub currency: String,
    pub interval: Interval,
}

/// End of the period that starts at `start`.
pub fn period_end(start: DateTime<Utc>, interval: Interval) -> Option<DateTime<Utc>> {
    let months = match interval {
        Interval::Month => 1,
        Interval::Year => 12,
    };
    start.checked_add_months(Months::new(months))
}

pub async fn live_subscription(
    conn: &mut PgConnection,
    account: AccountId,
) -> sqlx::Result<Option<Subscription>> {
    sqlx::query_as(sqlf!(
        "SELECT {SUB_COLUMNS} FROM subscriptions WHERE account_id = $1 AND status IN ('trialing', 'active', 'past_due')"
    ))
    .bind(account.0)
    .fetch_optional(conn)
    .await
}

/// One subscription by id.
pub async fn get(conn: &mut PgConnection, id: Uuid) -> sqlx::Result<Option<Subscription>> {
    sqlx::query_as(sqlf!(
        "SELECT {SUB_COLUMNS} FROM subscriptions WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await
}

fn schedule_event(sub: &Subscription) -> ScheduleEvent {
    let renews = sub.status != "canceled" && !sub.cancel_at_period_end;
    ScheduleEvent {
        subscription_id: sub.id,
        account_id: AccountId(sub.account_id),
        plan_key: sub.plan.clone(),
        amount_minor: sub.amount_minor,
        currency: sub.currency.clone(),
        interval: sub.interval.clone(),
        next_bill_at: renews.then_some(sub.current_period_end),
        status: if sub.status == "canceled" {
            "canceled"
        } else {
            "active"
        }
        .to_owned(),
        revision: sub.revision,
    }
}

/// Announces a subscription change to entitlements and billing (same transaction).
async fn announce(
    conn: &mut PgConnection,
    sub: &Subscription,
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    entitlements::request_recompute(conn, AccountId(sub.account_id), now).await?;
    outbox::enqueue(
        conn,
        outbox::TOPIC_BILLING_SCHEDULE,
        &schedule_event(sub),
        now,
    )
    .await?;
    Ok(())
}

/// A new subscription from what was sold, announced in the caller's transaction.
pub async fn create_subscription(
    conn: &mut PgConnection,
    account: AccountId,
    sold: &Sold,
    now: DateTime<Utc>,
) -> Result<Subscription, ApiError> {
    let end =
        period_end(now, sold.interval).ok_or_else(|| ApiError::internal("period end overflows"))?;
    let sub: Subscription = sqlx::query_as(sqlf!(
        "INSERT INTO subscriptions (id, account_id, plan_key, status, amount_minor, currency, interval,
             current_period_start, current_period_end, cancel_at_period_end, revision, created_at)
         VALUES ($1, $2, $3, 'active', $4, $5, $6, $7, $8, false, 1, $7) RETURNING {SUB_COLUMNS}"
    ))
    .bind(Uuid::now_v7())
    .bind(account.0)
    .bind(&sold.plan)
    .bind(sold.amount_minor)
    .bind(&sold.currency)
    .bind(sold.interval.as_str())
    .bind(now)
    .bind(end)
    .fetch_one(&mut *conn)
    .await
    .map_err(|e| match e.as_database_error().and_then(|d| d.constraint()) {
        Some("subscriptions_one_live_per_account") => subscription_exists(),
        _ => ApiError::from(e),
    })?;
    announce(conn, &sub, now)
        .await
        .map_err(ApiError::internal)?;
    Ok(sub)
}

pub fn subscription_exists() -> ApiError {
    ApiError::conflict(
        "subscription_exists",
        "the account already has a live subscription; cancel it first",
    )
}

/// `GET /v1/subscriptions`
pub async fn list(
    State(state): State<AppState>,
    Authed(account): Authed,
) -> ApiResult<axum::Json<Value>> {
    let mut conn = state.cf.acquire().await?;
    let subs: Vec<Subscription> = sqlx::query_as(sqlf!(
        "SELECT {SUB_COLUMNS} FROM subscriptions WHERE account_id = $1 ORDER BY created_at DESC"
    ))
    .bind(account.0)
    .fetch_all(&mut *conn)
    .await?;
    Ok(axum::Json(json!({ "data": subs })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CancelRequest {
    pub at_period_end: bool,
}

/// `POST /v1/subscriptions/{id}/cancel`
pub async fn cancel(
    State(state): State<AppState>,
    Authed(account): Authed,
    Path(id): Path<Uuid>,
    Json(body): Json<CancelRequest>,
) -> ApiResult<axum::Json<Subscription>> {
    let mut tx = state.cf.begin().await?;
    let sub: Subscription = sqlx::query_as(sqlf!(
        "SELECT {SUB_COLUMNS} FROM subscriptions WHERE id = $1 AND account_id = $2 FOR UPDATE"
    ))
    .bind(id)
    .bind(account.0)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| ApiError::not_found("subscription"))?;
    if sub.status == "canceled" {
        return Err(ApiError::conflict(
            "subscription_canceled",
            "this subscription is already canceled",
        ));
    }
    let now = state.clock.now();
    let sub: Subscription = if body.at_period_end {
        sqlx::query_as(sqlf!(
            "UPDATE subscriptions SET cancel_at_period_end = true, revision = revision + 1 WHERE id = $1 RETURNING {SUB_COLUMNS}"
        ))
        .bind(id)
        .fetch_one(&mut *tx)
        .await?
    } else {
        sqlx::query_as(sqlf!(
            "UPDATE subscriptions SET status = 'canceled', canceled_at = $2, revision = revision + 1 WHERE id = $1
             RETURNING {SUB_COLUMNS}"
        ))
        .bind(id)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?
    };
    announce(&mut tx, &sub, now)
        .await
        .map_err(ApiError::internal)?;
    tx.commit().await?;
    state.outbox_wake.notify_one();
    tracing::info!(account_id = %account, subscription_id = %id, at_period_end = body.at_period_end, "subscription cancel");
    Ok(axum::Json(sub))
}

/// Time-driven transitions, run by the maintenance worker and after a dev clock advance:
/// subscriptions set to cancel at period end whose period ended, checkouts nobody else will
/// settle ([`crate::checkout::reconcile`]), abandoned payment-method set-ups, expired
/// idempotency records. Returns how many rows changed.
pub async fn run_maintenance(state: &AppState) -> anyhow::Result<usize> {
    let now = state.clock.now();
    let mut changed = 0;
    let mut tx = state.cf.begin().await?;
    let ending: Vec<Subscription> = sqlx::query_as(sqlf!(
        "UPDATE subscriptions SET status = 'canceled', canceled_at = current_period_end, revision = revision + 1
         WHERE id IN (SELECT id FROM subscriptions
                      WHERE cancel_at_period_end AND status <> 'canceled' AND current_period_end <= $1
                      ORDER BY current_period_end LIMIT 500 FOR UPDATE SKIP LOCKED)
         RETURNING {SUB_COLUMNS}"
    ))
    .bind(now)
    .fetch_all(&mut *tx)
    .await?;
    for sub in &ending {
        announce(&mut tx, sub, now).await?;
    }
    changed += ending.len();
    tx.commit().await?;
    // Provider calls happen outside any transaction from here on.
    changed += crate::checkout::reconcile(state).await?;
    changed += crate::accounts::payment_methods::reconcile_abandoned(
        state,
        chrono::TimeDelta::seconds(state.checkout_expiry_secs),
    )
    .await?;
    crate::http::idempotency::sweep(&state.cf, now).await?;
    if changed > 0 {
        state.outbox_wake.notify_one();
    }
    Ok(changed)
}

//! Subscription purchase (on-session checkout with 3-D Secure), listing and cancellation.
//!
//! A checkout charges the first period while the customer is present. The provider payment's
//! idempotency key is derived from the account and the client's `Idempotency-Key`
//! (`tollgate-checkout-{account}-{key}`), so a retry after any crash can never charge twice.
//! When the card asks for authentication the checkout waits (`requires_action`) until the
//! customer confirms, or expires after `checkout_expiry_secs` (23 h, as Stripe's
//! `incomplete_expired`) on the injectable clock.
//!
//! Every subscription change writes, in the same cf transaction, an
//! `entitlements.recompute` and a `billing.schedule` outbox row.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Months, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::PgConnection;
use tollgate_protocol::AccountId;
use tollgate_rules::{Interval, Plan};
use uuid::Uuid;

use crate::accounts::auth::Authed;
use crate::accounts::http::gateway_error;
use crate::accounts::payment_methods::{self, decline_error};
use crate::billing::ScheduleEvent;
use crate::gateways::{GatewayAmount, PaymentRequest, PaymentStatus, Presence};
use crate::http::idempotency::{self, IdempotencyKey};
use crate::http::{ApiError, ApiResult, Json, Path};
use crate::metrics::CheckoutOutcome;
use crate::state::AppState;
use crate::{catalog, entitlements, outbox};

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Subscription {
    pub id: Uuid,
    pub plan: String,
    pub status: String,
    pub amount_minor: i64,
    pub currency: String,
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
    "id, plan_key AS plan, status, amount_minor, currency, current_period_start,
    current_period_end, cancel_at_period_end, canceled_at, revision, account_id, created_at";

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Checkout {
    pub id: Uuid,
    pub plan: String,
    pub status: String,
    pub amount_minor: i64,
    pub currency: String,
    pub payment_method_id: Option<Uuid>,
    pub client_secret: Option<String>,
    pub decline_code: Option<String>,
    pub subscription_id: Option<Uuid>,
    pub expires_at: DateTime<Utc>,
    #[serde(skip)]
    pub payment_intent_id: Option<String>,
    pub created_at: DateTime<Utc>,
}

const CHECKOUT_COLUMNS: &str =
    "id, plan_key AS plan, status, amount_minor, currency, payment_method_id,
    client_secret, decline_code, subscription_id, expires_at, payment_intent_id, created_at";

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

fn schedule_event(sub: &Subscription, interval: Interval) -> ScheduleEvent {
    let renews = sub.status != "canceled" && !sub.cancel_at_period_end;
    ScheduleEvent {
        subscription_id: sub.id,
        account_id: AccountId(sub.account_id),
        plan_key: sub.plan.clone(),
        amount_minor: sub.amount_minor,
        currency: sub.currency.clone(),
        interval: interval.as_str().to_owned(),
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
    let interval = plan_interval(conn, &sub.plan).await?;
    entitlements::request_recompute(conn, AccountId(sub.account_id), now).await?;
    outbox::enqueue(
        conn,
        outbox::TOPIC_BILLING_SCHEDULE,
        &schedule_event(sub, interval),
        now,
    )
    .await?;
    Ok(())
}

async fn plan_interval(conn: &mut PgConnection, plan: &str) -> anyhow::Result<Interval> {
    let (interval,): (String,) = sqlx::query_as("SELECT interval FROM plans WHERE key = $1")
        .bind(plan)
        .fetch_one(conn)
        .await?;
    Interval::parse(&interval).ok_or_else(|| anyhow::anyhow!("plan {plan} has interval {interval}"))
}

async fn create_subscription(
    conn: &mut PgConnection,
    account: AccountId,
    plan: &Plan,
    now: DateTime<Utc>,
) -> Result<Subscription, ApiError> {
    let end =
        period_end(now, plan.interval).ok_or_else(|| ApiError::internal("period end overflows"))?;
    let sub: Subscription = sqlx::query_as(sqlf!(
        "INSERT INTO subscriptions (id, account_id, plan_key, status, amount_minor, currency, current_period_start,
             current_period_end, cancel_at_period_end, revision, created_at)
         VALUES ($1, $2, $3, 'active', $4, $5, $6, $7, false, 1, $6) RETURNING {SUB_COLUMNS}"
    ))
    .bind(Uuid::now_v7())
    .bind(account.0)
    .bind(&plan.key)
    .bind(plan.price_minor)
    .bind(&plan.currency)
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

fn subscription_exists() -> ApiError {
    ApiError::conflict(
        "subscription_exists",
        "the account already has a live subscription; cancel it first",
    )
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckoutRequest {
    pub plan: String,
    #[serde(default)]
    pub payment_method: Option<Uuid>,
}

fn problem_response(err: &ApiError) -> (StatusCode, Value) {
    (err.status, err.body())
}

fn render(status: StatusCode, body: Value) -> Response {
    let mut r = (status, axum::Json(body)).into_response();
    if status.is_client_error() {
        r.headers_mut().insert(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static(crate::http::problem::PROBLEM_JSON),
        );
    }
    r
}

/// `POST /v1/checkout`
pub async fn checkout(
    State(state): State<AppState>,
    Authed(account): Authed,
    key: IdempotencyKey,
    Json(body): Json<CheckoutRequest>,
) -> ApiResult<Response> {
    let scope = account.to_string();
    let hash = idempotency::request_hash("POST /v1/checkout", &body)?;
    let mut tx = state.cf.begin().await?;
    if let Some(stored) = idempotency::begin(&mut tx, &scope, &key, &hash).await? {
        return Ok(idempotency::replay(stored));
    }
    let now = state.clock.now();
    let catalog = catalog::load(&mut tx).await.map_err(ApiError::internal)?;
    let plan = catalog.plan(&body.plan).cloned().ok_or_else(|| {
        ApiError::unprocessable("unknown_plan", format!("there is no plan `{}`", body.plan))
    })?;
    // Serialise purchases per account.
    let acct = sqlx::query_as::<_, crate::accounts::Account>(
        "SELECT id, email, name, standing, gateway_customer_id, default_payment_method_id, created_at
         FROM accounts WHERE id = $1 FOR UPDATE",
    )
    .bind(account.0)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| ApiError::not_found("account"))?;
    if acct.status == "banned" {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "account_banned",
            "this account cannot buy plans",
        ));
    }
    if live_subscription(&mut tx, account).await?.is_some() {
        return Err(subscription_exists());
    }
    let open: Option<(Uuid,)> = sqlx::query_as(
        "SELECT id FROM checkouts WHERE account_id = $1 AND status = 'requires_action'",
    )
    .bind(account.0)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some((open,)) = open {
        return Err(ApiError::conflict(
            "checkout_in_progress",
            "another checkout is waiting for authentication",
        )
        .with("checkout_id", open.to_string()));
    }

    let checkout_id = Uuid::now_v7();
    let new = NewCheckout {
        id: checkout_id,
        account,
        plan: &plan,
        payment_method: None,
        payment_intent: None,
        client_secret: None,
        status: "succeeded",
        decline_code: None,
        subscription: None,
        expires_at: now + TimeDelta::seconds(state.checkout_expiry_secs),
        now,
    };
    let (status, resp) = if plan.price_minor == 0 {
        let (sub, c) = complete(&mut tx, &state, new).await?;
        (
            StatusCode::CREATED,
            json!({ "checkout": c, "subscription": sub }),
        )
    } else {
        let pm_id = body
            .payment_method
            .or(acct.default_payment_method_id)
            .ok_or_else(|| {
                ApiError::unprocessable(
                    "payment_method_required",
                    "this plan needs a payment method",
                )
            })?;
        let pm = payment_methods::get(&mut tx, account, pm_id, false)
            .await?
            .ok_or_else(|| ApiError::not_found("payment method"))?;
        if pm.status != "ready" {
            return Err(ApiError::conflict(
                "payment_method_not_ready",
                "finish setting up this payment method first",
            ));
        }
        let provider_key = format!("tollgate-checkout-{account}-{}", key.0);
        let description = format!("Tollgate {} plan, first period", plan.key);
        let outcome = state
            .gateway
            .create_payment(PaymentRequest {
                customer: &acct.stripe_customer_id,
                payment_method: &pm.gateway_pm_id,
                amount: GatewayAmount {
                    amount_minor: plan.price_minor,
                    currency: &plan.currency,
                },
                presence: Presence::OnSession,
                idempotency_key: &provider_key,
                description: &description,
            })
            .await
            .map_err(gateway_error)?;
        let pi = Some(outcome.payment_intent_id.as_str()).filter(|s| !s.is_empty());
        let new = NewCheckout {
            payment_method: Some(pm.id),
            payment_intent: pi,
            ..new
        };
        match outcome.status {
            PaymentStatus::Succeeded => {
                let (sub, c) = complete(&mut tx, &state, new).await?;
                (
                    StatusCode::CREATED,
                    json!({ "checkout": c, "subscription": sub }),
                )
            }
            PaymentStatus::RequiresAction { client_secret } => {
                let waiting = NewCheckout {
                    client_secret: Some(&client_secret),
                    status: "requires_action",
                    ..new
                };
                let c = insert_checkout(&mut tx, &waiting).await?;
                state.metrics.checkout(CheckoutOutcome::RequiresAction);
                (
                    StatusCode::ACCEPTED,
                    json!({ "checkout": c, "status": "requires_action", "client_secret": client_secret,
                            "next_action": { "type": "use_stripe_sdk" } }),
                )
            }
            PaymentStatus::Processing => {
                let c = insert_checkout(
                    &mut tx,
                    &NewCheckout {
                        status: "requires_action",
                        ..new
                    },
                )
                .await?;
                (
                    StatusCode::ACCEPTED,
                    json!({ "checkout": c, "status": "processing" }),
                )
            }
            PaymentStatus::Failed(d) => {
                let decline_code = d.decline_code.as_deref().or(Some(&d.code));
                insert_checkout(
                    &mut tx,
                    &NewCheckout {
                        status: "failed",
                        decline_code,
                        ..new
                    },
                )
                .await?;
                state.metrics.checkout(CheckoutOutcome::Declined);
                problem_response(&decline_error(&d).with("checkout_id", checkout_id.to_string()))
            }
            PaymentStatus::Canceled => {
                return Err(ApiError::internal("a new payment came back canceled"));
            }
        }
    };
    idempotency::finish(&mut tx, &scope, &key, &hash, status, &resp, now).await?;
    tx.commit().await?;
    state.outbox_wake.notify_one();
    Ok(render(status, resp))
}

/// The first period is paid (or free): the subscription and the checkout row, in the
/// caller's transaction.
async fn complete(
    conn: &mut PgConnection,
    state: &AppState,
    checkout: NewCheckout<'_>,
) -> Result<(Subscription, Checkout), ApiError> {
    let sub = create_subscription(conn, checkout.account, checkout.plan, checkout.now).await?;
    let c = insert_checkout(
        conn,
        &NewCheckout {
            subscription: Some(sub.id),
            ..checkout
        },
    )
    .await?;
    state.metrics.checkout(CheckoutOutcome::Succeeded);
    Ok((sub, c))
}

/// A checkout row about to be written.
#[derive(Clone, Copy)]
struct NewCheckout<'a> {
    id: Uuid,
    account: AccountId,
    plan: &'a Plan,
    payment_method: Option<Uuid>,
    payment_intent: Option<&'a str>,
    client_secret: Option<&'a str>,
    status: &'a str,
    decline_code: Option<&'a str>,
    subscription: Option<Uuid>,
    expires_at: DateTime<Utc>,
    now: DateTime<Utc>,
}

async fn insert_checkout(
    conn: &mut PgConnection,
    c: &NewCheckout<'_>,
) -> Result<Checkout, ApiError> {
    sqlx::query_as(sqlf!(
        "INSERT INTO checkouts (id, account_id, plan_key, payment_method_id, amount_minor, currency, payment_intent_id,
             client_secret, status, decline_code, subscription_id, expires_at, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13) RETURNING {CHECKOUT_COLUMNS}"
    ))
    .bind(c.id)
    .bind(c.account.0)
    .bind(&c.plan.key)
    .bind(c.payment_method)
    .bind(c.plan.price_minor)
    .bind(&c.plan.currency)
    .bind(c.payment_intent)
    .bind(c.client_secret)
    .bind(c.status)
    .bind(c.decline_code)
    .bind(c.subscription)
    .bind(c.expires_at)
    .bind(c.now)
    .fetch_one(conn)
    .await
    .map_err(|e| match e.as_database_error().and_then(|d| d.constraint()) {
        Some("checkouts_one_open_per_account") => {
            ApiError::conflict("checkout_in_progress", "another checkout is waiting for authentication")
        }
        _ => ApiError::from(e),
    })
}

async fn get_checkout(
    conn: &mut PgConnection,
    account: AccountId,
    id: Uuid,
    lock: bool,
) -> sqlx::Result<Option<Checkout>> {
    let lock = if lock { " FOR UPDATE" } else { "" };
    sqlx::query_as(sqlf!(
        "SELECT {CHECKOUT_COLUMNS} FROM checkouts WHERE id = $1 AND account_id = $2{lock}"
    ))
    .bind(id)
    .bind(account.0)
    .fetch_optional(conn)
    .await
}

async fn set_checkout_status(
    conn: &mut PgConnection,
    id: Uuid,
    status: &str,
    decline_code: Option<&str>,
    subscription: Option<Uuid>,
    now: DateTime<Utc>,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE checkouts SET status = $2, decline_code = COALESCE($3, decline_code),
             subscription_id = COALESCE($4, subscription_id), client_secret = NULL, updated_at = $5
         WHERE id = $1",
    )
    .bind(id)
    .bind(status)
    .bind(decline_code)
    .bind(subscription)
    .bind(now)
    .execute(conn)
    .await
    .map(drop)
}

fn checkout_expired() -> ApiError {
    ApiError::new(
        StatusCode::GONE,
        "checkout_expired",
        "the checkout expired before it was authenticated; start a new one",
    )
}

/// `GET /v1/checkout/{id}`
pub async fn get_checkout_handler(
    State(state): State<AppState>,
    Authed(account): Authed,
    Path(id): Path<Uuid>,
) -> ApiResult<axum::Json<Checkout>> {
    let mut conn = state.cf.acquire().await?;
    get_checkout(&mut conn, account, id, false)
        .await?
        .map(axum::Json)
        .ok_or_else(|| ApiError::not_found("checkout"))
}

/// `POST /v1/checkout/{id}/confirm` — after the customer completed 3-D Secure.
pub async fn confirm_checkout(
    State(state): State<AppState>,
    Authed(account): Authed,
    Path(id): Path<Uuid>,
) -> ApiResult<Response> {
    let mut tx = state.cf.begin().await?;
    let c = get_checkout(&mut tx, account, id, true)
        .await?
        .ok_or_else(|| ApiError::not_found("checkout"))?;
    let now = state.clock.now();
    match c.status.as_str() {
        "succeeded" => {
            let sub = match c.subscription_id {
                Some(s) => {
                    sqlx::query_as::<_, Subscription>(sqlf!(
                        "SELECT {SUB_COLUMNS} FROM subscriptions WHERE id = $1"
                    ))
                    .bind(s)
                    .fetch_optional(&mut *tx)
                    .await?
                }
                None => None,
            };
            return Ok(render(
                StatusCode::OK,
                json!({ "checkout": c, "subscription": sub }),
            ));
        }
        "failed" => {
            let mut e = ApiError::new(
                StatusCode::PAYMENT_REQUIRED,
                "card_declined",
                "the payment was declined",
            );
            if let Some(code) = &c.decline_code {
                e = e.with("decline_code", code.clone());
            }
            return Err(e);
        }
        "expired" => return Err(checkout_expired()),
        _ => {}
    }
    if now >= c.expires_at {
        expire(&state, &mut tx, &c, now).await?;
        tx.commit().await?;
        return Err(checkout_expired());
    }
    let Some(pi) = c.payment_intent_id.clone() else {
        return Err(ApiError::internal("open checkout without payment intent"));
    };
    let outcome = state
        .gateway
        .retrieve_payment(&pi)
        .await
        .map_err(gateway_error)?;
    match outcome.status {
        PaymentStatus::Succeeded => {
            let catalog = catalog::load(&mut tx).await.map_err(ApiError::internal)?;
            let plan = catalog
                .plan(&c.plan)
                .cloned()
                .ok_or_else(|| ApiError::internal("checkout plan left the catalog"))?;
            let sub = create_subscription(&mut tx, account, &plan, now).await?;
            set_checkout_status(&mut tx, c.id, "succeeded", None, Some(sub.id), now).await?;
            let c = get_checkout(&mut tx, account, id, false).await?;
            tx.commit().await?;
            state.outbox_wake.notify_one();
            state.metrics.checkout(CheckoutOutcome::Succeeded);
            Ok(render(
                StatusCode::OK,
                json!({ "checkout": c, "subscription": sub }),
            ))
        }
        PaymentStatus::RequiresAction { client_secret } => Err(ApiError::conflict(
            "authentication_required",
            "the customer has not completed authentication yet",
        )
        .with("client_secret", client_secret)),
        PaymentStatus::Processing => Err(ApiError::conflict(
            "payment_processing",
            "the provider is still processing",
        )),
        PaymentStatus::Failed(d) => {
            set_checkout_status(
                &mut tx,
                c.id,
                "failed",
                d.decline_code.as_deref().or(Some(&d.code)),
                None,
                now,
            )
            .await?;
            tx.commit().await?;
            state.metrics.checkout(CheckoutOutcome::Declined);
            Err(decline_error(&d))
        }
        PaymentStatus::Canceled => {
            set_checkout_status(&mut tx, c.id, "expired", None, None, now).await?;
            tx.commit().await?;
            Err(checkout_expired())
        }
    }
}

/// Cancels the provider payment (best effort: an already-canceled one is fine) and marks the
/// checkout expired.
async fn expire(
    state: &AppState,
    conn: &mut PgConnection,
    c: &Checkout,
    now: DateTime<Utc>,
) -> Result<(), ApiError> {
    if let Some(pi) = &c.payment_intent_id
        && let Err(e) = state.gateway.cancel_payment(pi).await
    {
        tracing::warn!(checkout_id = %c.id, error = %e, "could not cancel the expired checkout's payment");
    }
    set_checkout_status(conn, c.id, "expired", None, None, now).await?;
    state.metrics.checkout(CheckoutOutcome::Expired);
    Ok(())
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
/// subscriptions set to cancel at period end whose period ended, and checkouts past expiry.
/// Returns how many rows changed.
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
    let expiring: Vec<Checkout> = sqlx::query_as(sqlf!(
        "SELECT {CHECKOUT_COLUMNS} FROM checkouts WHERE status = 'requires_action' AND expires_at <= $1
         ORDER BY expires_at LIMIT 500 FOR UPDATE SKIP LOCKED"
    ))
    .bind(now)
    .fetch_all(&mut *tx)
    .await?;
    for c in &expiring {
        expire(state, &mut tx, c, now)
            .await
            .map_err(|e| anyhow::anyhow!("expire checkout: {}", e.detail))?;
    }
    changed += expiring.len();
    tx.commit().await?;
    if changed > 0 {
        state.outbox_wake.notify_one();
    }
    Ok(changed)
}

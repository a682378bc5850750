//! On-session checkout: the first period's payment while the customer is present, with 3-D
//! Secure when the card asks, and the subscription it buys.
//!
//! # No lock across the provider call
//!
//! A purchase runs in three steps, and no transaction or row lock is held while the provider
//! works:
//!
//! 1. **Reserve** (one short transaction): the `Idempotency-Key` ([`crate::http::idempotency`]),
//!    the account's checks (not banned, no live subscription, no other purchase in flight —
//!    the partial unique index `checkouts_one_open_per_account` makes concurrent purchases
//!    lose cleanly) and a `pending` checkout row holding the **snapshot** of what is sold: plan,
//!    price, currency, interval and the stable bundle's version.
//! 2. **Call** the provider (no transaction) with a provider idempotency key derived from the
//!    checkout id, so repeating the call — a client's retry, a resume after a crash, the
//!    reconciler — can never charge twice.
//! 3. **Settle** (one short transaction, under the checkout row's lock): whatever the provider
//!    said is applied to the checkout if it is still waiting for it; a concurrent settle of the
//!    same checkout finds it settled and changes nothing.
//!
//! A provider that fails or times out leaves the checkout `pending`: the client's retry with
//! the same key resumes it, and so does [`reconcile`] (the maintenance worker) after
//! [`PENDING_RECONCILE_SECS`].
//!
//! # No payment without its purchase
//!
//! A succeeded payment always ends in the subscription its snapshot describes, at the snapshot's
//! price, whatever the catalog became meanwhile — except when the plan is no longer sold when
//! the purchase completes (a promotion dropped it: the edges' bundle no longer grants it): then
//! the payment is refunded in full (`refunding` → `refunded`, `refund_reason`
//! `plan_withdrawn`), never kept for nothing. Expiry looks at the payment first: a checkout past
//! its expiry whose payment succeeded (the customer passed 3-D Secure and closed the tab) is
//! completed; one still waiting is canceled at the provider first (and completed if the
//! provider says it succeeded meanwhile); one the provider cannot be asked about is left for
//! the next pass. A customer abandons a waiting checkout with `POST /v1/checkout/{id}/cancel`.
//!
//! # States
//!
//! `pending` → `requires_action` → `succeeded` | `failed` | `expired` | `canceled`, and a paid
//! checkout whose plan was withdrawn → `refunding` → `refunded`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::PgConnection;
use tollgate_protocol::AccountId;
use tollgate_rules::Interval;
use uuid::Uuid;

use crate::accounts::auth::Authed;
use crate::accounts::http::gateway_error;
use crate::accounts::payment_methods::{self, decline_error};
use crate::catalog;
use crate::gateways::{
    GatewayAmount, GatewayError, PaymentOutcome, PaymentRequest, PaymentStatus, Presence,
};
use crate::http::idempotency::{self, Begun, IdempotencyKey, Reservation};
use crate::http::{ApiError, ApiResult, Json, Path};
use crate::metrics::CheckoutOutcome;
use crate::state::AppState;
use crate::subscriptions::{self, Subscription};

/// A pending checkout older than this is settled by the reconciler (the provider call of its
/// request failed or the process died), s: past the idempotency lease, so a client's own
/// retry goes first.
pub const PENDING_RECONCILE_SECS: i64 = 2 * idempotency::LEASE_SECS;
/// Checkouts one maintenance pass settles at most.
pub const RECONCILE_BATCH_MAX: i64 = 100;

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Checkout {
    pub id: Uuid,
    pub plan: String,
    pub status: String,
    pub amount_minor: i64,
    pub currency: String,
    pub interval: String,
    /// The stable rule bundle when the checkout was made (what its plan granted then).
    pub bundle_version: Option<i64>,
    pub payment_method_id: Option<Uuid>,
    pub client_secret: Option<String>,
    pub decline_code: Option<String>,
    pub subscription_id: Option<Uuid>,
    pub refund_reason: Option<String>,
    pub expires_at: DateTime<Utc>,
    #[serde(skip)]
    pub payment_intent_id: Option<String>,
    #[serde(skip)]
    pub provider_key: Option<String>,
    #[serde(skip)]
    pub account_id: Uuid,
    pub created_at: DateTime<Utc>,
}

const CHECKOUT_COLUMNS: &str = "id, plan_key AS plan, status, amount_minor, currency, interval,
    bundle_version, payment_method_id, client_secret, decline_code, subscription_id,
    refund_reason, expires_at, payment_intent_id, provider_key, account_id, created_at";

impl Checkout {
    /// What was sold: the snapshot the subscription is created from.
    fn snapshot(&self) -> Result<subscriptions::Sold, ApiError> {
        Ok(subscriptions::Sold {
            plan: self.plan.clone(),
            amount_minor: self.amount_minor,
            currency: self.currency.clone(),
            interval: Interval::parse(&self.interval)
                .ok_or_else(|| ApiError::internal("checkout interval"))?,
        })
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckoutRequest {
    pub plan: String,
    #[serde(default)]
    pub payment_method: Option<Uuid>,
}

fn render(status: StatusCode, body: Value) -> Response {
    let mut r = (status, axum::Json(body)).into_response();
    if status.is_client_error() || status.is_server_error() {
        r.headers_mut().insert(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static(crate::http::problem::PROBLEM_JSON),
        );
    }
    r
}

fn problem(err: &ApiError) -> (StatusCode, Value) {
    (err.status, err.body())
}

async fn get(conn: &mut PgConnection, id: Uuid, lock: bool) -> sqlx::Result<Option<Checkout>> {
    let lock = if lock { " FOR UPDATE" } else { "" };
    sqlx::query_as(sqlf!(
        "SELECT {CHECKOUT_COLUMNS} FROM checkouts WHERE id = $1{lock}"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// One account's checkout (None for another account's id).
async fn get_of(
    conn: &mut PgConnection,
    account: AccountId,
    id: Uuid,
) -> sqlx::Result<Option<Checkout>> {
    Ok(get(conn, id, false)
        .await?
        .filter(|c| c.account_id == account.0))
}

/// Writes a checkout's new state. `pi`, `client_secret`, `decline`, `subscription` and
/// `refund` overwrite only when given.
#[derive(Default)]
struct Update<'a> {
    status: &'a str,
    pi: Option<&'a str>,
    client_secret: Option<&'a str>,
    decline: Option<&'a str>,
    subscription: Option<Uuid>,
    refund_reason: Option<&'a str>,
    refund_id: Option<&'a str>,
}

async fn update(
    conn: &mut PgConnection,
    id: Uuid,
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

/// How a checkout ended up after settling.
enum Settled {
    /// Paid (or free): the subscription exists.
    Subscribed(Checkout, Subscription),
    /// Waiting for the customer's authentication (`client_secret` for the browser).
    RequiresAction(Checkout, String),
    /// The provider is still working on it.
    Processing(Checkout),
    Failed(Checkout, crate::gateways::Decline),
    Expired(Checkout),
    Canceled(Checkout),
    /// Paid, but the plan is no longer sold: refunded (or being refunded).
    Refunded(Checkout),
}

/// The paid (or free) purchase becomes its subscription, from the snapshot — unless the plan is
/// no longer sold or the account got a subscription meanwhile: then the payment is to be
/// refunded (`refunding`; [`refund`] finishes it after the transaction). Under the checkout's
/// row lock, in the caller's transaction.
async fn complete_paid(
    state: &AppState,
    conn: &mut PgConnection,
    c: &Checkout,
    pi: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Settled, ApiError> {
    let sold: Option<(bool,)> = sqlx::query_as("SELECT sold FROM plans WHERE key = $1")
        .bind(&c.plan)
        .fetch_optional(&mut *conn)
        .await?;
    let reason = if !sold.is_some_and(|(s,)| s) {
        Some("plan_withdrawn")
    } else if subscriptions::live_subscription(conn, AccountId(c.account_id))
        .await?
        .is_some()
    {
        Some("subscription_exists")
    } else {
        None
    };
    if let Some(reason) = reason {
        let paid = c.amount_minor > 0;
        let c = update(
            conn,
            c.id,
            Update {
                status: if paid { "refunding" } else { "failed" },
                pi,
                refund_reason: Some(reason),
                ..Update::default()
            },
            now,
        )
        .await?;
        tracing::warn!(checkout_id = %c.id, reason, "paid checkout cannot complete: refunding");
        return Ok(Settled::Refunded(c));
    }
    let sub =
        subscriptions::create_subscription(conn, AccountId(c.account_id), &c.snapshot()?, now)
            .await?;
    let c = update(
        conn,
        c.id,
        Update {
            status: "succeeded",
            pi,
            subscription: Some(sub.id),
            ..Update::default()
        },
        now,
    )
    .await?;
    state.metrics.checkout(CheckoutOutcome::Succeeded);
    Ok(Settled::Subscribed(c, sub))
}

/// Applies what the provider said about a checkout's payment, under its row lock, in the
/// caller's transaction. A checkout that is no longer waiting (settled concurrently) is
/// described as it is. `expiring`: the checkout is past its expiry (a payment still waiting
/// was canceled at the provider by the caller).
async fn settle(
    state: &AppState,
    conn: &mut PgConnection,
    id: Uuid,
    outcome: &PaymentOutcome,
    now: DateTime<Utc>,
) -> Result<Settled, ApiError> {
    let c = get(conn, id, true)
        .await?
        .ok_or_else(|| ApiError::not_found("checkout"))?;
    if !matches!(c.status.as_str(), "pending" | "requires_action") {
        return describe(conn, c).await;
    }
    let pi = Some(outcome.payment_intent_id.as_str()).filter(|s| !s.is_empty());
    Ok(match &outcome.status {
        PaymentStatus::Succeeded => complete_paid(state, conn, &c, pi, now).await?,
        PaymentStatus::RequiresAction { client_secret } => {
            let c = update(
                conn,
                id,
                Update {
                    status: "requires_action",
                    pi,
                    client_secret: Some(client_secret),
                    ..Update::default()
                },
                now,
            )
            .await?;
            Settled::RequiresAction(c, client_secret.clone())
        }
        PaymentStatus::Processing => {
            let c = update(
                conn,
                id,
                Update {
                    status: "requires_action",
                    pi,
                    ..Update::default()
                },
                now,
            )
            .await?;
            Settled::Processing(c)
        }
        PaymentStatus::Failed(d) => {
            let c = update(
                conn,
                id,
                Update {
                    status: "failed",
                    pi,
                    decline: Some(d.decline_code.as_deref().unwrap_or(&d.code)),
                    ..Update::default()
                },
                now,
            )
            .await?;
            state.metrics.checkout(CheckoutOutcome::Declined);
            Settled::Failed(c, d.clone())
        }
        PaymentStatus::Canceled => {
            let c = update(
                conn,
                id,
                Update {
                    status: "expired",
                    pi,
                    ..Update::default()
                },
                now,
            )
            .await?;
            state.metrics.checkout(CheckoutOutcome::Expired);
            Settled::Expired(c)
        }
    })
}

/// A settled checkout, as [`Settled`].
async fn describe(conn: &mut PgConnection, c: Checkout) -> Result<Settled, ApiError> {
    Ok(match c.status.as_str() {
        "succeeded" => {
            let sub = match c.subscription_id {
                Some(id) => subscriptions::get(conn, id).await?,
                None => None,
            }
            .ok_or_else(|| ApiError::internal("succeeded checkout without subscription"))?;
            Settled::Subscribed(c, sub)
        }
        "failed" => {
            let code = c
                .decline_code
                .clone()
                .unwrap_or_else(|| "card_declined".into());
            Settled::Failed(
                c,
                crate::gateways::Decline {
                    code: "card_declined".into(),
                    decline_code: Some(code),
                    message: "the payment was declined".into(),
                },
            )
        }
        "expired" => Settled::Expired(c),
        "canceled" => Settled::Canceled(c),
        "refunding" | "refunded" => Settled::Refunded(c),
        "requires_action" => match c.client_secret.clone() {
            Some(secret) => Settled::RequiresAction(c, secret),
            None => Settled::Processing(c),
        },
        _ => Settled::Processing(c),
    })
}

/// The answer a purchase request gets for a settled checkout.
fn answer(s: &Settled) -> (StatusCode, Value) {
    match s {
        Settled::Subscribed(c, sub) => (
            StatusCode::CREATED,
            json!({ "checkout": c, "subscription": sub }),
        ),
        Settled::RequiresAction(c, secret) => (
            StatusCode::ACCEPTED,
            json!({ "checkout": c, "status": "requires_action", "client_secret": secret,
                    "next_action": { "type": "use_stripe_sdk" } }),
        ),
        Settled::Processing(c) => (
            StatusCode::ACCEPTED,
            json!({ "checkout": c, "status": "processing" }),
        ),
        Settled::Failed(c, d) => problem(&decline_error(d).with("checkout_id", c.id.to_string())),
        Settled::Expired(c) => problem(&checkout_expired().with("checkout_id", c.id.to_string())),
        Settled::Canceled(c) => problem(
            &ApiError::conflict("checkout_canceled", "this checkout was canceled")
                .with("checkout_id", c.id.to_string()),
        ),
        Settled::Refunded(c) => problem(&refunded(c)),
    }
}

fn refunded(c: &Checkout) -> ApiError {
    let why = match c.refund_reason.as_deref() {
        Some("subscription_exists") => "the account already has a live subscription",
        _ => "the plan is no longer sold",
    };
    ApiError::conflict(
        "checkout_refunded",
        format!("{why}: the payment is refunded in full and nothing was bought"),
    )
    .with("checkout_id", c.id.to_string())
    .with("refund_reason", c.refund_reason.clone().unwrap_or_default())
}

fn checkout_expired() -> ApiError {
    ApiError::new(
        StatusCode::GONE,
        "checkout_expired",
        "the checkout expired before it was authenticated; start a new one",
    )
}

/// Refunds a `refunding` checkout's payment in full (idempotent: the provider key is derived
/// from the checkout), then marks it `refunded`. A provider failure leaves it `refunding` for
/// the reconciler.
async fn refund(state: &AppState, id: Uuid) -> Result<(), ApiError> {
    let c = {
        let mut conn = state.cf.acquire().await?;
        get(&mut conn, id, false)
            .await?
            .ok_or_else(|| ApiError::not_found("checkout"))?
    };
    if c.status != "refunding" {
        return Ok(());
    }
    let Some(pi) = &c.payment_intent_id else {
        return Err(ApiError::internal("refunding checkout without a payment"));
    };
    let r = state
        .gateway
        .refund(
            pi,
            c.amount_minor,
            &idempotency::provider_key("refund", c.id),
        )
        .await
        .map_err(gateway_error)?;
    let mut tx = state.cf.begin().await?;
    let now = state.clock.now();
    if get(&mut tx, id, true)
        .await?
        .is_some_and(|c| c.status == "refunding")
    {
        update(
            &mut tx,
            id,
            Update {
                status: "refunded",
                refund_id: Some(&r.id),
                ..Update::default()
            },
            now,
        )
        .await?;
    }
    tx.commit().await?;
    tracing::info!(checkout_id = %id, refund_id = %r.id, amount_minor = r.amount_minor, "checkout refunded");
    Ok(())
}

/// After a settle's commit: finishes a refund it started (best effort: the reconciler retries).
async fn after_settle(state: &AppState, s: &Settled) {
    if let Settled::Refunded(c) = s
        && c.status == "refunding"
        && let Err(e) = refund(state, c.id).await
    {
        tracing::warn!(checkout_id = %c.id, error = %e.detail, "refund not done yet; the reconciler retries");
    }
    state.outbox_wake.notify_one();
}

/// Step 2 for a pending checkout: the provider's PaymentIntent, created (or, on a repeat,
/// found again by the provider key).
async fn charge(state: &AppState, c: &Checkout) -> Result<PaymentOutcome, GatewayError> {
    let (customer, pm) = {
        let mut conn = state
            .cf
            .acquire()
            .await
            .map_err(|e| GatewayError::Unavailable(e.to_string()))?;
        let acct = crate::accounts::store::get_account(&mut conn, AccountId(c.account_id))
            .await
            .map_err(|e| GatewayError::Unavailable(e.to_string()))?
            .ok_or_else(|| GatewayError::NotFound("account".into()))?;
        let pm = match c.payment_method_id {
            Some(id) => payment_methods::get(&mut conn, AccountId(c.account_id), id, false)
                .await
                .map_err(|e| GatewayError::Unavailable(e.to_string()))?
                .ok_or_else(|| GatewayError::NotFound("payment method".into()))?,
            None => {
                return Err(GatewayError::Invalid(
                    "a paid checkout without a payment method".into(),
                ));
            }
        };
        (acct.stripe_customer_id, pm.gateway_pm_id)
    };
    let key = c
        .provider_key
        .clone()
        .unwrap_or_else(|| idempotency::provider_key("checkout", c.id));
    let description = format!("Tollgate {} plan, first period", c.plan);
    state
        .gateway
        .create_payment(PaymentRequest {
            customer: &customer,
            payment_method: &pm,
            amount: GatewayAmount {
                amount_minor: c.amount_minor,
                currency: &c.currency,
            },
            presence: Presence::OnSession,
            idempotency_key: &key,
            description: &description,
        })
        .await
}

/// `POST /v1/checkout` — see the module doc for the three steps.
pub async fn checkout(
    State(state): State<AppState>,
    Authed(account): Authed,
    key: IdempotencyKey,
    Json(body): Json<CheckoutRequest>,
) -> ApiResult<Response> {
    let scope = account.to_string();
    let hash = idempotency::request_hash("POST /v1/checkout", &body)?;
    let now = state.clock.now();
    let mut tx = state.cf.begin().await?;
    let begun = idempotency::reserve(&mut tx, &scope, &key, &hash, Uuid::now_v7(), now).await?;
    let reservation = match begun {
        Begun::Replay(stored) => return Ok(idempotency::replay(stored)),
        Begun::Resume(r) => {
            tx.commit().await?;
            return resume(&state, r).await;
        }
        Begun::Fresh(r) => r,
    };
    let c =
        match reserve_checkout(&state, &mut tx, account, &body, reservation.resource, now).await? {
            Reserved::Free(settled) => {
                let (status, resp) = answer(&settled);
                idempotency::complete(&mut tx, &reservation, status, &resp).await?;
                tx.commit().await?;
                after_settle(&state, &settled).await;
                return Ok(render(status, resp));
            }
            Reserved::Pending(c) => c,
        };
    tx.commit().await?;
    pay(&state, &reservation, &c).await
}

/// Steps 2 and 3 for a pending checkout of this request.
async fn pay(state: &AppState, reservation: &Reservation, c: &Checkout) -> ApiResult<Response> {
    let outcome = match charge(state, c).await {
        Ok(o) => o,
        Err(GatewayError::Unavailable(e)) => {
            // Unknown whether the provider charged: the checkout stays pending; the client's
            // retry (same key) or the reconciler settles it.
            idempotency::release(&state.cf, reservation).await?;
            return Err(ApiError::unavailable("payment_provider_unavailable", e)
                .with("checkout_id", c.id.to_string()));
        }
        Err(e) => {
            // The provider refused the request itself: nothing was charged.
            let err = gateway_error(e);
            let mut tx = state.cf.begin().await?;
            if let Some(stored) = idempotency::completed(&mut tx, reservation).await? {
                return Ok(idempotency::replay(stored));
            }
            if get(&mut tx, c.id, true)
                .await?
                .is_some_and(|c| c.status == "pending")
            {
                update(
                    &mut tx,
                    c.id,
                    Update {
                        status: "failed",
                        decline: Some(err.code),
                        ..Update::default()
                    },
                    state.clock.now(),
                )
                .await?;
            }
            let (status, resp) = problem(&err.clone().with("checkout_id", c.id.to_string()));
            idempotency::complete(&mut tx, reservation, status, &resp).await?;
            tx.commit().await?;
            return Ok(render(status, resp));
        }
    };
    let mut tx = state.cf.begin().await?;
    if let Some(stored) = idempotency::completed(&mut tx, reservation).await? {
        return Ok(idempotency::replay(stored));
    }
    let settled = settle(state, &mut tx, c.id, &outcome, state.clock.now()).await?;
    if let Settled::RequiresAction(..) = settled {
        state.metrics.checkout(CheckoutOutcome::RequiresAction);
    }
    let (status, resp) = answer(&settled);
    idempotency::complete(&mut tx, reservation, status, &resp).await?;
    tx.commit().await?;
    after_settle(state, &settled).await;
    Ok(render(status, resp))
}

/// A request whose earlier attempt stopped before its answer was stored: the checkout it
/// reserved is paid for again (the provider key makes that the same payment) or described as
/// the reconciler left it.
async fn resume(state: &AppState, reservation: Reservation) -> ApiResult<Response> {
    let c = {
        let mut conn = state.cf.acquire().await?;
        get(&mut conn, reservation.resource, false).await?
    };
    let Some(c) = c else {
        return Err(ApiError::internal(
            "an in-progress checkout key without its checkout",
        ));
    };
    if c.status == "pending" {
        return pay(state, &reservation, &c).await;
    }
    let mut tx = state.cf.begin().await?;
    let settled = describe(&mut tx, c).await?;
    let (status, resp) = answer(&settled);
    idempotency::complete(&mut tx, &reservation, status, &resp).await?;
    tx.commit().await?;
    Ok(render(status, resp))
}

/// What step 1 left.
enum Reserved {
    /// A free plan: subscribed at once.
    Free(Settled),
    /// A paid plan: the pending checkout to pay.
    Pending(Checkout),
}

/// Step 1: the account's checks and the pending checkout with its snapshot, in the caller's
/// transaction (the account row is locked only there).
async fn reserve_checkout(
    state: &AppState,
    tx: &mut PgConnection,
    account: AccountId,
    body: &CheckoutRequest,
    id: Uuid,
    now: DateTime<Utc>,
) -> Result<Reserved, ApiError> {
    let catalog = catalog::load(tx).await.map_err(ApiError::internal)?;
    let plan = catalog.plan(&body.plan).cloned().ok_or_else(|| {
        ApiError::unprocessable("unknown_plan", format!("there is no plan `{}`", body.plan))
    })?;
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
    if subscriptions::live_subscription(tx, account)
        .await?
        .is_some()
    {
        return Err(subscriptions::subscription_exists());
    }
    let open: Option<(Uuid,)> = sqlx::query_as(
        "SELECT id FROM checkouts WHERE account_id = $1 AND status IN ('pending', 'requires_action')",
    )
    .bind(account.0)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some((open,)) = open {
        return Err(in_progress(open));
    }
    let stable: Option<(Option<i64>,)> =
        sqlx::query_as("SELECT stable_version FROM rule_rollout WHERE id = 1")
            .fetch_optional(&mut *tx)
            .await?;
    let pm = if plan.price_minor == 0 {
        None
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
        let pm = payment_methods::get(tx, account, pm_id, false)
            .await?
            .ok_or_else(|| ApiError::not_found("payment method"))?;
        if pm.status != "ready" {
            return Err(ApiError::conflict(
                "payment_method_not_ready",
                "finish setting up this payment method first",
            ));
        }
        Some(pm.id)
    };
    let c: Checkout = sqlx::query_as(sqlf!(
        "INSERT INTO checkouts (id, account_id, plan_key, payment_method_id, amount_minor, currency, interval,
             bundle_version, provider_key, status, expires_at, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'pending', $10, $11, $11) RETURNING {CHECKOUT_COLUMNS}"
    ))
    .bind(id)
    .bind(account.0)
    .bind(&plan.key)
    .bind(pm)
    .bind(plan.price_minor)
    .bind(&plan.currency)
    .bind(plan.interval.as_str())
    .bind(stable.and_then(|(v,)| v))
    .bind(idempotency::provider_key("checkout", id))
    .bind(now + TimeDelta::seconds(state.checkout_expiry_secs))
    .bind(now)
    .fetch_one(&mut *tx)
    .await
    .map_err(|e| match e.as_database_error().and_then(|d| d.constraint()) {
        Some("checkouts_one_open_per_account") => in_progress(id),
        _ => ApiError::from(e),
    })?;
    if plan.price_minor == 0 {
        return Ok(Reserved::Free(
            complete_paid(state, tx, &c, None, now).await?,
        ));
    }
    Ok(Reserved::Pending(c))
}

fn in_progress(open: Uuid) -> ApiError {
    ApiError::conflict(
        "checkout_in_progress",
        "another purchase of this account is waiting for payment or authentication; confirm or cancel it first",
    )
    .with("checkout_id", open.to_string())
}

/// `GET /v1/checkout/{id}`
pub async fn get_checkout_handler(
    State(state): State<AppState>,
    Authed(account): Authed,
    Path(id): Path<Uuid>,
) -> ApiResult<axum::Json<Checkout>> {
    let mut conn = state.cf.acquire().await?;
    get_of(&mut conn, account, id)
        .await?
        .map(axum::Json)
        .ok_or_else(|| ApiError::not_found("checkout"))
}

/// The answer `confirm` and `cancel` give for a checkout that is no longer waiting.
fn settled_answer(s: &Settled) -> Result<Response, ApiError> {
    match s {
        Settled::Subscribed(c, sub) => Ok(render(
            StatusCode::OK,
            json!({ "checkout": c, "subscription": sub }),
        )),
        Settled::RequiresAction(_, secret) => Err(ApiError::conflict(
            "authentication_required",
            "the customer has not completed authentication yet",
        )
        .with("client_secret", secret.clone())),
        Settled::Processing(_) => Err(ApiError::conflict(
            "payment_processing",
            "the provider is still processing",
        )),
        Settled::Failed(_, d) => Err(decline_error(d)),
        Settled::Expired(_) => Err(checkout_expired()),
        Settled::Canceled(_) => Err(ApiError::new(
            StatusCode::GONE,
            "checkout_canceled",
            "this checkout was canceled",
        )),
        Settled::Refunded(c) => Err(refunded(c)),
    }
}

/// `POST /v1/checkout/{id}/confirm` — after the customer completed 3-D Secure. The payment is
/// read with no transaction open, then settled; a succeeded payment completes the purchase
/// even past the checkout's expiry.
pub async fn confirm_checkout(
    State(state): State<AppState>,
    Authed(account): Authed,
    Path(id): Path<Uuid>,
) -> ApiResult<Response> {
    let c = {
        let mut conn = state.cf.acquire().await?;
        get_of(&mut conn, account, id)
            .await?
            .ok_or_else(|| ApiError::not_found("checkout"))?
    };
    if c.status == "pending" {
        return Err(ApiError::conflict(
            "payment_processing",
            "the payment is being created; retry in a moment",
        ));
    }
    if c.status != "requires_action" {
        let mut conn = state.cf.acquire().await?;
        return settled_answer(&describe(&mut conn, c).await?);
    }
    let Some(pi) = c.payment_intent_id.clone() else {
        return Err(ApiError::internal("waiting checkout without a payment"));
    };
    let outcome = state
        .gateway
        .retrieve_payment(&pi)
        .await
        .map_err(gateway_error)?;
    let now = state.clock.now();
    if now >= c.expires_at && outcome.status != PaymentStatus::Succeeded {
        // Past its expiry and not paid: cancel at the provider (which says if it got paid
        // after all), then settle.
        let outcome = state
            .gateway
            .cancel_payment(&pi)
            .await
            .map_err(gateway_error)?;
        let mut tx = state.cf.begin().await?;
        let settled = settle(&state, &mut tx, id, &outcome, now).await?;
        tx.commit().await?;
        after_settle(&state, &settled).await;
        return settled_answer(&settled);
    }
    let mut tx = state.cf.begin().await?;
    let settled = settle(&state, &mut tx, id, &outcome, now).await?;
    tx.commit().await?;
    after_settle(&state, &settled).await;
    settled_answer(&settled)
}

/// `POST /v1/checkout/{id}/cancel` — the customer abandons a waiting checkout: its payment is
/// canceled at the provider first. If the provider says it was paid meanwhile, the purchase
/// completes instead (`409 checkout_already_paid`, with the subscription).
pub async fn cancel_checkout(
    State(state): State<AppState>,
    Authed(account): Authed,
    Path(id): Path<Uuid>,
) -> ApiResult<Response> {
    let c = {
        let mut conn = state.cf.acquire().await?;
        get_of(&mut conn, account, id)
            .await?
            .ok_or_else(|| ApiError::not_found("checkout"))?
    };
    match c.status.as_str() {
        "canceled" => return Ok(render(StatusCode::OK, json!({ "checkout": c }))),
        "pending" => {
            return Err(ApiError::conflict(
                "payment_processing",
                "the payment is being created; retry in a moment",
            ));
        }
        "requires_action" => {}
        _ => {
            return Err(ApiError::conflict(
                "checkout_not_cancelable",
                format!(
                    "this checkout is {} and can no longer be canceled",
                    c.status
                ),
            ));
        }
    }
    let Some(pi) = c.payment_intent_id.clone() else {
        return Err(ApiError::internal("waiting checkout without a payment"));
    };
    let outcome = state
        .gateway
        .cancel_payment(&pi)
        .await
        .map_err(gateway_error)?;
    let now = state.clock.now();
    let mut tx = state.cf.begin().await?;
    let settled = if outcome.status == PaymentStatus::Canceled {
        let c = get(&mut tx, id, true)
            .await?
            .ok_or_else(|| ApiError::not_found("checkout"))?;
        if c.status == "requires_action" {
            Settled::Canceled(
                update(
                    &mut tx,
                    id,
                    Update {
                        status: "canceled",
                        ..Update::default()
                    },
                    now,
                )
                .await?,
            )
        } else {
            describe(&mut tx, c).await?
        }
    } else {
        settle(&state, &mut tx, id, &outcome, now).await?
    };
    tx.commit().await?;
    after_settle(&state, &settled).await;
    match settled {
        Settled::Canceled(c) => {
            tracing::info!(checkout_id = %id, "checkout canceled by the customer");
            Ok(render(StatusCode::OK, json!({ "checkout": c })))
        }
        Settled::Subscribed(c, sub) => Err(ApiError::conflict(
            "checkout_already_paid",
            "the payment went through before the cancel: the purchase is complete",
        )
        .with(
            "checkout",
            serde_json::to_value(&c).map_err(ApiError::internal)?,
        )
        .with(
            "subscription",
            serde_json::to_value(&sub).map_err(ApiError::internal)?,
        )),
        other => settled_answer(&other),
    }
}

/// The maintenance worker's part: settles checkouts nobody will settle otherwise, never
/// holding a transaction across a provider call (each checkout: provider calls, then one short
/// transaction). A provider that cannot be reached leaves the checkout for the next pass.
/// * `pending` for longer than [`PENDING_RECONCILE_SECS`]: the payment is created again with
///   its provider key (the provider answers with the first one, if there was one) and settled.
/// * `requires_action` past its expiry: the payment is read; paid → completed; else canceled
///   at the provider and settled (completed if it got paid after all).
/// * `refunding`: the refund is retried.
///
/// Returns how many checkouts changed state.
pub async fn reconcile(state: &AppState) -> anyhow::Result<usize> {
    let now = state.clock.now();
    let due: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT id, status FROM checkouts
          WHERE (status = 'pending' AND created_at <= $1)
             OR (status = 'requires_action' AND expires_at <= $2)
             OR status = 'refunding'
          ORDER BY created_at LIMIT $3",
    )
    .bind(now - TimeDelta::seconds(PENDING_RECONCILE_SECS))
    .bind(now)
    .bind(RECONCILE_BATCH_MAX)
    .fetch_all(&state.cf)
    .await?;
    let mut changed = 0;
    for (id, status) in due {
        match reconcile_one(state, id, &status).await {
            Ok(true) => changed += 1,
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(checkout_id = %id, error = %e.detail, "checkout not reconciled; next pass")
            }
        }
    }
    Ok(changed)
}

async fn reconcile_one(state: &AppState, id: Uuid, status: &str) -> Result<bool, ApiError> {
    if status == "refunding" {
        refund(state, id).await?;
        return Ok(true);
    }
    let c = {
        let mut conn = state.cf.acquire().await?;
        get(&mut conn, id, false).await?
    };
    let Some(c) = c.filter(|c| c.status == status) else {
        return Ok(false);
    };
    let outcome = if status == "pending" {
        charge(state, &c).await.map_err(gateway_error)?
    } else {
        let Some(pi) = &c.payment_intent_id else {
            return Err(ApiError::internal("waiting checkout without a payment"));
        };
        let read = state
            .gateway
            .retrieve_payment(pi)
            .await
            .map_err(gateway_error)?;
        if read.status == PaymentStatus::Succeeded {
            read
        } else {
            state
                .gateway
                .cancel_payment(pi)
                .await
                .map_err(gateway_error)?
        }
    };
    let mut tx = state.cf.begin().await?;
    let settled = settle(state, &mut tx, id, &outcome, state.clock.now()).await?;
    tx.commit().await?;
    let what = match &settled {
        Settled::Subscribed(..) => "completed",
        Settled::Refunded(..) => "refunding",
        Settled::Expired(..) | Settled::Canceled(..) => "expired",
        Settled::Failed(..) => "failed",
        Settled::RequiresAction(..) | Settled::Processing(..) => "waiting",
    };
    tracing::info!(checkout_id = %id, outcome = what, "checkout reconciled");
    after_settle(state, &settled).await;
    Ok(!matches!(
        settled,
        Settled::RequiresAction(..) | Settled::Processing(..)
    ))
}

//! Payment methods: client-side PaymentMethod ids (as Stripe.js produces) attached to the
//! account's customer through a SetupIntent. Raw card numbers are never accepted.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::PgConnection;
use tollgate_protocol::AccountId;
use uuid::Uuid;

use super::auth::Authed;
use super::http::gateway_error;
use super::store;
use crate::gateways::{Decline, SetupOutcome, SetupStatus};
use crate::http::idempotency::{self, IdempotencyKey};
use crate::http::{ApiError, ApiResult, Json, Path};
use crate::state::AppState;

pub const PM_ID_BYTES_MAX: usize = 255;
/// The decline code gateways report for a canceled SetupIntent.
pub const CANCELED_CODE: &str = "setup_intent_canceled";

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddPaymentMethod {
    pub payment_method: String,
    #[serde(default)]
    pub make_default: bool,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct PaymentMethod {
    pub id: Uuid,
    pub status: String,
    pub brand: Option<String>,
    pub last4: Option<String>,
    pub exp_month: Option<i32>,
    pub exp_year: Option<i32>,
    #[serde(skip)]
    pub gateway_pm_id: String,
    #[serde(skip)]
    pub setup_intent_id: String,
    #[serde(skip)]
    pub client_secret: Option<String>,
    #[serde(skip)]
    pub make_default: bool,
    pub created_at: DateTime<Utc>,
}

/// Digits in a row (spaces and dashes between them allowed) from which a value is taken for a
/// card number: the shortest card numbers have 12.
pub const CARD_DIGITS_MIN: usize = 12;

/// Whether `s` holds something that may be a card number: [`CARD_DIGITS_MIN`] or more digits
/// in a row, spaces or dashes between them allowed (`4242 4242 …`, `pm_4242424242424242`).
pub fn looks_like_card_number(s: &str) -> bool {
    let mut run = 0usize;
    for c in s.chars() {
        if c.is_ascii_digit() {
            run += 1;
            if run >= CARD_DIGITS_MIN {
                return true;
            }
        } else if !(run > 0 && (c == ' ' || c == '-')) {
            run = 0;
        }
    }
    false
}

/// Refuses anything that is not a provider payment-method id. What may be a card number gets
/// its own code and is never echoed back, logged, or sent to the provider.
pub fn validate_pm_id(pm: &str) -> Result<(), ApiError> {
    if looks_like_card_number(pm) {
        return Err(ApiError::unprocessable(
            "raw_card_number_refused",
            "card numbers are never accepted; tokenize the card client-side and send its pm_… id",
        ));
    }
    let ok = pm.starts_with("pm_")
        && pm.len() <= PM_ID_BYTES_MAX
        && pm.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ApiError::unprocessable(
            "invalid_payment_method",
            "payment_method must be a pm_… id",
        ))
    }
}

pub fn decline_error(d: &Decline) -> ApiError {
    let mut e = ApiError::new(
        StatusCode::PAYMENT_REQUIRED,
        "card_declined",
        d.message.clone(),
    )
    .with("provider_code", d.code.clone());
    if let Some(code) = &d.decline_code {
        e = e.with("decline_code", code.clone());
    }
    e
}

const PM_COLUMNS: &str =
    "id, status, brand, last4, exp_month, exp_year, gateway_pm_id, setup_intent_id,
    client_secret, make_default, created_at";

#[allow(clippy::too_many_arguments)]
async fn insert(
    conn: &mut PgConnection,
    id: Uuid,
    account: AccountId,
    gateway: &str,
    outcome: &SetupOutcome,
    status: &str,
    client_secret: Option<&str>,
    make_default: bool,
    now: DateTime<Utc>,
) -> sqlx::Result<PaymentMethod> {
    sqlx::query_as(sqlf!(
        "INSERT INTO payment_methods (id, account_id, gateway, gateway_pm_id, setup_intent_id, status,
             client_secret, make_default, brand, last4, exp_month, exp_year, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13) RETURNING {PM_COLUMNS}"
    ))
    .bind(id)
    .bind(account.0)
    .bind(gateway)
    .bind(&outcome.payment_method_id)
    .bind(&outcome.setup_intent_id)
    .bind(status)
    .bind(client_secret)
    .bind(make_default)
    .bind(&outcome.card.brand)
    .bind(&outcome.card.last4)
    .bind(outcome.card.exp_month)
    .bind(outcome.card.exp_year)
    .bind(now)
    .fetch_one(conn)
    .await
}

/// One payment method of one account (None for other accounts' ids).
pub async fn get(
    conn: &mut PgConnection,
    account: AccountId,
    id: Uuid,
    lock: bool,
) -> sqlx::Result<Option<PaymentMethod>> {
    let lock = if lock { " FOR UPDATE" } else { "" };
    sqlx::query_as(sqlf!(
        "SELECT {PM_COLUMNS} FROM payment_methods WHERE id = $1 AND account_id = $2{lock}"
    ))
    .bind(id)
    .bind(account.0)
    .fetch_optional(conn)
    .await
}

pub async fn list(conn: &mut PgConnection, account: AccountId) -> sqlx::Result<Vec<PaymentMethod>> {
    sqlx::query_as(sqlf!(
        "SELECT {PM_COLUMNS} FROM payment_methods WHERE account_id = $1 AND status NOT IN ('failed', 'canceled') ORDER BY created_at"
    ))
    .bind(account.0)
    .fetch_all(conn)
    .await
}

async fn mark_ready(
    conn: &mut PgConnection,
    pm: &PaymentMethod,
    account: AccountId,
    now: DateTime<Utc>,
) -> sqlx::Result<()> {
    sqlx::query("UPDATE payment_methods SET status = 'ready', client_secret = NULL, updated_at = $2 WHERE id = $1")
        .bind(pm.id)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    set_default_if_wanted(conn, account, pm.id, pm.make_default).await
}

/// The first ready method becomes the default; later ones only when asked.
async fn set_default_if_wanted(
    conn: &mut PgConnection,
    account: AccountId,
    pm: Uuid,
    wanted: bool,
) -> sqlx::Result<()> {
    let Some(acct) = store::get_account(conn, account).await? else {
        return Ok(());
    };
    if wanted || acct.default_payment_method_id.is_none() {
        store::set_default_payment_method(conn, account, pm).await?;
    }
    Ok(())
}

fn requires_action_body(pm: &PaymentMethod, client_secret: &str) -> Value {
    json!({
        "payment_method": pm,
        "status": "requires_action",
        "client_secret": client_secret,
        "next_action": { "type": "use_stripe_sdk" },
    })
}

/// `POST /v1/payment-methods` — the key's reservation (short transaction), the provider's
/// SetupIntent (no transaction), then the payment-method row with the stored response (short
/// transaction). See [`crate::http::idempotency`].
pub async fn add(
    State(state): State<AppState>,
    Authed(account): Authed,
    key: IdempotencyKey,
    Json(body): Json<AddPaymentMethod>,
) -> ApiResult<Response> {
    validate_pm_id(&body.payment_method)?;
    let scope = account.to_string();
    let hash = idempotency::request_hash("POST /v1/payment-methods", &body)?;
    let now = state.clock.now();
    let mut tx = state.cf.begin().await?;
    let acct = store::get_account(&mut tx, account)
        .await?
        .ok_or_else(|| ApiError::not_found("account"))?;
    let begun = idempotency::reserve(&mut tx, &scope, &key, &hash, Uuid::now_v7(), now).await?;
    tx.commit().await?;
    let reservation = match begun {
        idempotency::Begun::Replay(stored) => return Ok(idempotency::replay(stored)),
        idempotency::Begun::Fresh(r) | idempotency::Begun::Resume(r) => r,
    };
    let provider_key = idempotency::provider_key("pm", reservation.resource);
    let outcome = match state
        .gateway
        .setup_payment_method(
            &acct.stripe_customer_id,
            &body.payment_method,
            &provider_key,
        )
        .await
    {
        Ok(o) => o,
        Err(e) => {
            idempotency::release(&state.cf, &reservation).await?;
            return Err(gateway_error(e));
        }
    };
    let mut tx = state.cf.begin().await?;
    if let Some(stored) = idempotency::completed(&mut tx, &reservation).await? {
        return Ok(idempotency::replay(stored));
    }
    let gw = state.gateway.name();
    let id = reservation.resource;
    let (status, resp) = match &outcome.status {
        SetupStatus::Succeeded => {
            let pm = insert(
                &mut tx,
                id,
                account,
                gw,
                &outcome,
                "ready",
                None,
                body.make_default,
                now,
            )
            .await?;
            set_default_if_wanted(&mut tx, account, pm.id, body.make_default).await?;
            (
                StatusCode::CREATED,
                json!({ "payment_method": pm, "status": "ready" }),
            )
        }
        SetupStatus::RequiresAction { client_secret } => {
            let pm = insert(
                &mut tx,
                id,
                account,
                gw,
                &outcome,
                "requires_action",
                Some(client_secret),
                body.make_default,
                now,
            )
            .await?;
            (
                StatusCode::ACCEPTED,
                requires_action_body(&pm, client_secret),
            )
        }
        SetupStatus::Pending => {
            let pm = insert(
                &mut tx,
                id,
                account,
                gw,
                &outcome,
                "pending",
                None,
                body.make_default,
                now,
            )
            .await?;
            (
                StatusCode::ACCEPTED,
                json!({ "payment_method": pm, "status": "processing" }),
            )
        }
        SetupStatus::Failed(d) => {
            let err = decline_error(d);
            (err.status, err.body())
        }
    };
    idempotency::complete(&mut tx, &reservation, status, &resp).await?;
    tx.commit().await?;
    if status.is_client_error() {
        let mut r = (status, axum::Json(resp)).into_response();
        r.headers_mut().insert(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static(crate::http::problem::PROBLEM_JSON),
        );
        return Ok(r);
    }
    Ok((status, axum::Json(resp)).into_response())
}

fn ready_body(pm: &PaymentMethod) -> Response {
    (
        StatusCode::OK,
        axum::Json(json!({ "payment_method": pm, "status": "ready" })),
    )
        .into_response()
}

/// What the provider's SetupIntent says, applied to a waiting payment method under its row
/// lock (another confirm, or the reconciler, may have applied it first: then nothing
/// changes). Returns the method after.
async fn apply_setup(
    conn: &mut PgConnection,
    account: AccountId,
    id: Uuid,
    outcome: &SetupOutcome,
    now: DateTime<Utc>,
) -> Result<PaymentMethod, ApiError> {
    let pm = get(conn, account, id, true)
        .await?
        .ok_or_else(|| ApiError::not_found("payment method"))?;
    if !matches!(pm.status.as_str(), "requires_action" | "pending") {
        return Ok(pm);
    }
    match &outcome.status {
        SetupStatus::Succeeded => mark_ready(conn, &pm, account, now).await?,
        SetupStatus::Failed(d) => {
            // Canceled (abandoned, reconciled) or refused by the provider.
            let status = if d.code == CANCELED_CODE {
                "canceled"
            } else {
                "failed"
            };
            sqlx::query("UPDATE payment_methods SET status = $3, client_secret = NULL, updated_at = $2 WHERE id = $1")
                .bind(pm.id)
                .bind(now)
                .bind(status)
                .execute(&mut *conn)
                .await?;
        }
        SetupStatus::RequiresAction { .. } | SetupStatus::Pending => {}
    }
    get(conn, account, id, false)
        .await?
        .ok_or_else(|| ApiError::not_found("payment method"))
}

/// `POST /v1/payment-methods/{id}/confirm` — after the customer authenticated. The provider
/// is asked with no transaction open; the answer is applied under the row's lock.
pub async fn confirm(
    State(state): State<AppState>,
    Authed(account): Authed,
    Path(id): Path<Uuid>,
) -> ApiResult<Response> {
    let pm = {
        let mut conn = state.cf.acquire().await?;
        get(&mut conn, account, id, false)
            .await?
            .ok_or_else(|| ApiError::not_found("payment method"))?
    };
    match pm.status.as_str() {
        "ready" => return Ok(ready_body(&pm)),
        "failed" | "canceled" => {
            return Err(ApiError::conflict(
                "payment_method_failed",
                "this payment method failed to set up; add it again",
            ));
        }
        _ => {}
    }
    let outcome = state
        .gateway
        .retrieve_setup(&pm.setup_intent_id)
        .await
        .map_err(gateway_error)?;
    let mut tx = state.cf.begin().await?;
    let pm = apply_setup(&mut tx, account, id, &outcome, state.clock.now()).await?;
    tx.commit().await?;
    match pm.status.as_str() {
        "ready" => Ok(ready_body(&pm)),
        "failed" | "canceled" => match outcome.status {
            SetupStatus::Failed(d) => Err(decline_error(&d)),
            _ => Err(ApiError::conflict(
                "payment_method_failed",
                "this payment method failed to set up; add it again",
            )),
        },
        _ => match outcome.status {
            SetupStatus::RequiresAction { client_secret } => Err(ApiError::conflict(
                "authentication_required",
                "the customer has not completed authentication yet",
            )
            .with("client_secret", client_secret)),
            _ => Err(ApiError::conflict(
                "setup_processing",
                "the provider is still processing",
            )),
        },
    }
}

/// Set-ups abandoned at 3-D Secure for longer than `after` (the maintenance worker): the
/// provider's SetupIntent is read and, when still waiting, canceled; what the provider says
/// is applied. A provider that cannot be reached leaves the method as it is, for the next
/// pass. Returns how many changed.
pub async fn reconcile_abandoned(
    state: &AppState,
    after: chrono::TimeDelta,
) -> anyhow::Result<usize> {
    let now = state.clock.now();
    let waiting: Vec<(Uuid, Uuid, String)> = sqlx::query_as(
        "SELECT id, account_id, setup_intent_id FROM payment_methods
          WHERE status IN ('pending', 'requires_action') AND created_at <= $1
          ORDER BY created_at LIMIT 100",
    )
    .bind(now - after)
    .fetch_all(&state.cf)
    .await?;
    let mut changed = 0;
    for (id, account, setup) in waiting {
        let outcome = match state.gateway.cancel_setup(&setup).await {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(payment_method_id = %id, error = %e, "abandoned set-up not reconciled; next pass");
                continue;
            }
        };
        let mut tx = state.cf.begin().await?;
        let before = get(&mut tx, AccountId(account), id, true)
            .await?
            .map(|p| p.status);
        let pm = apply_setup(&mut tx, AccountId(account), id, &outcome, now)
            .await
            .map_err(|e| anyhow::anyhow!("{}", e.detail))?;
        if before.as_deref() != Some(pm.status.as_str()) {
            changed += 1;
        }
        tx.commit().await?;
    }
    Ok(changed)
}

/// `GET /v1/payment-methods`
pub async fn list_handler(
    State(state): State<AppState>,
    Authed(account): Authed,
) -> ApiResult<axum::Json<Value>> {
    let mut conn = state.cf.acquire().await?;
    let acct = store::get_account(&mut conn, account)
        .await?
        .ok_or_else(|| ApiError::not_found("account"))?;
    let items = list(&mut conn, account).await?;
    Ok(axum::Json(
        json!({ "data": items, "default_payment_method_id": acct.default_payment_method_id }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::accounts::store::insert_account;
    use crate::gateways::CardSummary;
    use sqlx::PgPool;

    #[sqlx::test(migrations = "../migrations/cf")]
    async fn payment_methods_are_scoped_to_their_account(pool: PgPool) -> sqlx::Result<()> {
        let mut conn = pool.acquire().await?;
        let now = Utc::now();
        let (a, b) = (AccountId::new_v7(), AccountId::new_v7());
        insert_account(
            &mut conn,
            a,
            "a@example.com",
            "A",
            "simulated",
            "cus_a",
            now,
        )
        .await?;
        insert_account(
            &mut conn,
            b,
            "b@example.com",
            "B",
            "simulated",
            "cus_b",
            now,
        )
        .await?;
        let outcome = SetupOutcome {
            setup_intent_id: "seti_1".into(),
            payment_method_id: "pm_1".into(),
            card: CardSummary {
                brand: Some("visa".into()),
                last4: Some("4242".into()),
                exp_month: Some(1),
                exp_year: Some(2030),
            },
            status: SetupStatus::Succeeded,
        };
        let pm = insert(
            &mut conn,
            Uuid::now_v7(),
            a,
            "simulated",
            &outcome,
            "ready",
            None,
            false,
            now,
        )
        .await?;
        assert_eq!(
            (pm.last4.as_deref(), pm.status.as_str()),
            (Some("4242"), "ready")
        );
        assert!(get(&mut conn, a, pm.id, false).await?.is_some());
        assert!(
            get(&mut conn, b, pm.id, true).await?.is_none(),
            "another account's method is invisible"
        );
        assert_eq!(list(&mut conn, a).await?.len(), 1);
        assert!(list(&mut conn, b).await?.is_empty());
        set_default_if_wanted(&mut conn, a, pm.id, false).await?;
        let acct = crate::accounts::store::get_account(&mut conn, a)
            .await?
            .expect("account");
        assert_eq!(
            acct.default_payment_method_id,
            Some(pm.id),
            "the first method becomes the default"
        );
        Ok(())
    }

    #[test]
    fn only_pm_ids_are_accepted() {
        assert!(validate_pm_id("pm_card_visa").is_ok());
        assert_eq!(
            validate_pm_id("4242 4242 4242 4242").expect_err("pan").code,
            "raw_card_number_refused"
        );
        assert_eq!(
            validate_pm_id("4242424242424242").expect_err("pan").code,
            "raw_card_number_refused"
        );
        for card_like in [
            "pm_4242424242424242",
            "pm_4242-4242-4242-4242",
            "pm_card_4000002500003155",
            "4000 0025 0000 3155",
        ] {
            let e = validate_pm_id(card_like).expect_err("card-like");
            assert_eq!(e.code, "raw_card_number_refused", "{card_like}");
            assert!(
                !e.detail.contains("4242") && !e.detail.contains("3155"),
                "echoed: {}",
                e.detail
            );
        }
        assert!(
            validate_pm_id("pm_1N3bXY2eZvKYlo2C0123").is_ok(),
            "a real Stripe id"
        );
        assert_eq!(
            validate_pm_id("card_123").expect_err("other").code,
            "invalid_payment_method"
        );
        assert_eq!(
            validate_pm_id("pm_x;drop").expect_err("chars").code,
            "invalid_payment_method"
        );
    }
}

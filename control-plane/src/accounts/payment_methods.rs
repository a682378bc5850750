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

/// Refuses anything that is not a provider payment-method id; card numbers get their own code.
pub fn validate_pm_id(pm: &str) -> Result<(), ApiError> {
    let digits = pm.chars().filter(char::is_ascii_digit).count();
    if digits >= 12
        && pm
            .chars()
            .all(|c| c.is_ascii_digit() || c == ' ' || c == '-')
    {
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
    .bind(Uuid::now_v7())
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
        "SELECT {PM_COLUMNS} FROM payment_methods WHERE account_id = $1 AND status <> 'failed' ORDER BY created_at"
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

/// `POST /v1/payment-methods`
pub async fn add(
    State(state): State<AppState>,
    Authed(account): Authed,
    key: IdempotencyKey,
    Json(body): Json<AddPaymentMethod>,
) -> ApiResult<Response> {
    validate_pm_id(&body.payment_method)?;
    let scope = account.to_string();
    let hash = idempotency::request_hash("POST /v1/payment-methods", &body)?;
    let mut tx = state.cf.begin().await?;
    if let Some(stored) = idempotency::begin(&mut tx, &scope, &key, &hash).await? {
        return Ok(idempotency::replay(stored));
    }
    let now = state.clock.now();
    let acct = store::get_account(&mut tx, account)
        .await?
        .ok_or_else(|| ApiError::not_found("account"))?;
    let provider_key = format!("tollgate-pm-{account}-{}", key.0);
    let outcome = state
        .gateway
        .setup_payment_method(
            &acct.stripe_customer_id,
            &body.payment_method,
            &provider_key,
        )
        .await
        .map_err(gateway_error)?;
    let gw = state.gateway.name();
    let (status, resp) = match &outcome.status {
        SetupStatus::Succeeded => {
            let pm = insert(
                &mut tx,
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
                account,
                gw,
                &outcome,
                "requires_action",
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
    idempotency::finish(&mut tx, &scope, &key, &hash, status, &resp, now).await?;
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

/// `POST /v1/payment-methods/{id}/confirm` — after the customer authenticated.
pub async fn confirm(
    State(state): State<AppState>,
    Authed(account): Authed,
    Path(id): Path<Uuid>,
) -> ApiResult<Response> {
    let mut tx = state.cf.begin().await?;
    let pm = get(&mut tx, account, id, true)
        .await?
        .ok_or_else(|| ApiError::not_found("payment method"))?;
    match pm.status.as_str() {
        "ready" => {
            return Ok((
                StatusCode::OK,
                axum::Json(json!({ "payment_method": pm, "status": "ready" })),
            )
                .into_response());
        }
        "failed" => {
            return Err(ApiError::conflict(
                "payment_method_failed",
                "this payment method failed to set up; add it again",
            ));
        }
        _ => {}
    }
    let now = state.clock.now();
    let outcome = state
        .gateway
        .retrieve_setup(&pm.setup_intent_id)
        .await
        .map_err(gateway_error)?;
    match outcome.status {
        SetupStatus::Succeeded => {
            mark_ready(&mut tx, &pm, account, now).await?;
            let pm = get(&mut tx, account, id, false)
                .await?
                .ok_or_else(|| ApiError::not_found("payment method"))?;
            tx.commit().await?;
            Ok((
                StatusCode::OK,
                axum::Json(json!({ "payment_method": pm, "status": "ready" })),
            )
                .into_response())
        }
        SetupStatus::RequiresAction { client_secret } => Err(ApiError::conflict(
            "authentication_required",
            "the customer has not completed authentication yet",
        )
        .with("client_secret", client_secret)),
        SetupStatus::Pending => Err(ApiError::conflict(
            "setup_processing",
            "the provider is still processing",
        )),
        SetupStatus::Failed(d) => {
            sqlx::query("UPDATE payment_methods SET status = 'failed', client_secret = NULL, updated_at = $2 WHERE id = $1")
                .bind(pm.id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Err(decline_error(&d))
        }
    }
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

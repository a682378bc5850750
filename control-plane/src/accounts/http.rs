//! Dashboard endpoints for accounts.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tollgate_protocol::AccountId;
use uuid::Uuid;

use super::{Account, auth::Authed, derive_token, store, token_hash, validate_new_account};
use crate::entitlements;
use crate::gateways::GatewayError;
use crate::http::idempotency::{self, IdempotencyKey};
use crate::http::{ApiError, ApiResult, Json};
use crate::state::AppState;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignUp {
    pub email: String,
    pub name: String,
}

/// Scope of a sign-up's idempotency key (no account exists yet): the hash of the e-mail
/// address, so unrelated clients reusing a simple key do not collide (and a key alone names
/// nothing).
fn signup_scope(email: &str) -> String {
    format!(
        "signup:{}",
        hex::encode(Sha256::digest(email.to_ascii_lowercase().as_bytes()))
    )
}

/// How long after sign-up a replay still returns the API token, s. Later replays return the
/// account without it: whoever learns the (key, email, name) of a sign-up a day later gets no
/// credential.
pub const TOKEN_REPLAY_SECS: i64 = 600;

/// `POST /v1/accounts` — creates the account, its provider customer and an API token:
/// validation and the key's reservation (short transaction), the provider call (no
/// transaction), then the account, token and outbox row with the stored response (short
/// transaction). See [`crate::http::idempotency`].
pub async fn create_account(
    State(state): State<AppState>,
    key: IdempotencyKey,
    Json(body): Json<SignUp>,
) -> ApiResult<Response> {
    let input = validate_new_account(&body.email, &body.name)
        .map_err(|errs| ApiError::unprocessable("invalid_account", errs.join("; ")))?;
    let hash = idempotency::request_hash("POST /v1/accounts", &body)?;
    let scope = signup_scope(&input.email);
    let now = state.clock.now();
    let mut tx = state.cf.begin().await?;
    let begun =
        idempotency::reserve(&mut tx, &scope, &key, &hash, AccountId::new_v7().0, now).await?;
    tx.commit().await?;
    let reservation = match begun {
        idempotency::Begun::Replay(stored) => return Ok(replay_signup(&state, stored, now)),
        idempotency::Begun::Fresh(r) | idempotency::Begun::Resume(r) => r,
    };
    let id = AccountId(reservation.resource);
    // Derived from the account id this key reserved: a resumed attempt gets the same customer.
    let provider_key = idempotency::provider_key("signup", id.0);
    let customer = match state
        .gateway
        .create_customer(&input.email, &input.name, &provider_key)
        .await
    {
        Ok(c) => c,
        Err(e) => {
            idempotency::release(&state.cf, &reservation).await?;
            return Err(gateway_error(e));
        }
    };
    let mut tx = state.cf.begin().await?;
    if let Some(stored) = idempotency::completed(&mut tx, &reservation).await? {
        // A slower attempt of the same request finished first.
        return Ok(replay_signup(&state, stored, now));
    }
    let account = store::insert_account(
        &mut tx,
        id,
        &input.email,
        &input.name,
        state.gateway.name(),
        &customer.id,
        now,
    )
    .await?;
    let token_id = Uuid::now_v7();
    let token = derive_token(&state.token_secret, token_id);
    store::insert_token(&mut tx, token_id, id, &token_hash(&token), now).await?;
    entitlements::request_recompute(&mut tx, id, now).await?;
    let stored = json!({ "account": account, "token_id": token_id });
    idempotency::complete(&mut tx, &reservation, StatusCode::CREATED, &stored).await?;
    tx.commit().await?;
    state.outbox_wake.notify_one();
    tracing::info!(account_id = %id, "account created");
    Ok((
        StatusCode::CREATED,
        axum::Json(signup_body(&account, Some(&token))),
    )
        .into_response())
}

fn signup_body(account: &impl Serialize, token: Option<&str>) -> Value {
    json!({ "account": account, "api_token": token })
}

/// The stored sign-up response holds the token id, never the token: derive it again — within
/// [`TOKEN_REPLAY_SECS`] of the sign-up only.
fn replay_signup(state: &AppState, stored: idempotency::Stored, now: DateTime<Utc>) -> Response {
    let token_id = stored
        .body
        .get("token_id")
        .and_then(Value::as_str)
        .and_then(|s| Uuid::parse_str(s).ok());
    let (Some(token_id), Some(account)) = (token_id, stored.body.get("account")) else {
        return idempotency::replay(stored);
    };
    let fresh = now - stored.created_at <= TimeDelta::seconds(TOKEN_REPLAY_SECS);
    let token = fresh.then(|| derive_token(&state.token_secret, token_id));
    let mut body = signup_body(account, token.as_deref());
    if !fresh {
        body["api_token_replay_expired"] = json!(true);
    }
    idempotency::replay(idempotency::Stored { body, ..stored })
}

/// `GET /v1/account`
pub async fn get_account(
    State(state): State<AppState>,
    Authed(id): Authed,
) -> ApiResult<axum::Json<Account>> {
    let mut conn = state.cf.acquire().await?;
    store::get_account(&mut conn, id)
        .await?
        .map(axum::Json)
        .ok_or_else(|| ApiError::not_found("account"))
}

/// Maps provider failures that are not declines.
pub fn gateway_error(err: GatewayError) -> ApiError {
    match err {
        GatewayError::Unavailable(e) => ApiError::unavailable("payment_provider_unavailable", e),
        // Never echoed: the provider's message names what was sent.
        GatewayError::NotFound(e) => {
            tracing::debug!(error = %e, "payment provider object not found");
            ApiError::unprocessable(
                "invalid_payment_method",
                "the payment provider does not know this payment method",
            )
        }
        GatewayError::Invalid(e) => {
            tracing::warn!(error = %e, "payment provider rejected a request");
            ApiError::unprocessable(
                "payment_provider_rejected",
                "the payment provider rejected the request",
            )
        }
    }
}

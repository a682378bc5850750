//! Dashboard endpoints for accounts.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
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

/// Scope of sign-up idempotency keys (no account exists yet).
const SIGNUP_SCOPE: &str = "signup";

/// `POST /v1/accounts` — creates the account, its provider customer and an API token.
pub async fn create_account(
    State(state): State<AppState>,
    key: IdempotencyKey,
    Json(body): Json<SignUp>,
) -> ApiResult<Response> {
    let input = validate_new_account(&body.email, &body.name)
        .map_err(|errs| ApiError::unprocessable("invalid_account", errs.join("; ")))?;
    let hash = idempotency::request_hash("POST /v1/accounts", &body)?;
    let mut tx = state.cf.begin().await?;
    if let Some(stored) = idempotency::begin(&mut tx, SIGNUP_SCOPE, &key, &hash).await? {
        return Ok(replay_signup(&state, stored));
    }
    let now = state.clock.now();
    // Derived from the client's key, so a retry after a crash reuses the same customer.
    let provider_key = format!(
        "tollgate-signup-{}",
        hex::encode(Sha256::digest(key.0.as_bytes()))
    );
    let customer = state
        .gateway
        .create_customer(&input.email, &input.name, &provider_key)
        .await
        .map_err(gateway_error)?;
    let id = AccountId::new_v7();
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
    idempotency::finish(
        &mut tx,
        SIGNUP_SCOPE,
        &key,
        &hash,
        StatusCode::CREATED,
        &stored,
        now,
    )
    .await?;
    tx.commit().await?;
    state.outbox_wake.notify_one();
    tracing::info!(account_id = %id, "account created");
    Ok((
        StatusCode::CREATED,
        axum::Json(signup_body(&account, &token)),
    )
        .into_response())
}

fn signup_body(account: &Account, token: &str) -> Value {
    json!({ "account": account, "api_token": token })
}

/// The stored sign-up response holds the token id, never the token: derive it again.
fn replay_signup(state: &AppState, stored: idempotency::Stored) -> Response {
    let token_id = stored
        .body
        .get("token_id")
        .and_then(Value::as_str)
        .and_then(|s| Uuid::parse_str(s).ok());
    let (Some(token_id), Some(account)) = (token_id, stored.body.get("account")) else {
        return idempotency::replay(stored);
    };
    let body =
        json!({ "account": account, "api_token": derive_token(&state.token_secret, token_id) });
    idempotency::replay(idempotency::Stored {
        status: stored.status,
        body,
    })
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
        GatewayError::NotFound(e) => ApiError::unprocessable(
            "invalid_payment_method",
            format!("the payment provider does not know this object ({e})"),
        ),
        GatewayError::Invalid(e) => {
            tracing::warn!(error = %e, "payment provider rejected a request");
            ApiError::unprocessable(
                "payment_provider_rejected",
                "the payment provider rejected the request",
            )
        }
    }
}

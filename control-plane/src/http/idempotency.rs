//! `Idempotency-Key` handling for POSTs that create things or move money.
//!
//! The guarded effect and the key's record are written in **one** cf transaction:
//! 1. [`begin`] takes a transaction-scoped advisory lock on (scope, key) so concurrent first
//!    attempts queue up, then looks the key up. A stored record with the same request hash is
//!    replayed; a different hash is `422 idempotency_key_reused`.
//! 2. The handler performs its effect in the same transaction (provider calls inside carry
//!    their own idempotency keys derived from our ids, so a retry after a crash is safe).
//! 3. [`finish`] stores the response; the commit makes effect and record visible together.

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::PgConnection;

use super::problem::ApiError;

pub const HEADER: &str = "idempotency-key";
pub const KEY_BYTES_MAX: usize = 255;

/// A validated client-supplied key (1–255 visible ASCII characters).
#[derive(Debug, Clone)]
pub struct IdempotencyKey(pub String);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let Some(raw) = parts.headers.get(HEADER) else {
            return Err(ApiError::bad_request(
                "idempotency_key_required",
                "this request needs an Idempotency-Key header",
            ));
        };
        let key = raw.to_str().ok().filter(|k| {
            !k.is_empty() && k.len() <= KEY_BYTES_MAX && k.bytes().all(|b| b.is_ascii_graphic())
        });
        match key {
            Some(k) => Ok(Self(k.to_owned())),
            None => Err(ApiError::bad_request(
                "invalid_idempotency_key",
                format!("Idempotency-Key must be 1-{KEY_BYTES_MAX} visible ASCII characters"),
            )),
        }
    }
}

/// Hash of what makes two requests "the same": the route and the canonical JSON body.
pub fn request_hash(route: &str, body: &impl Serialize) -> Result<Vec<u8>, ApiError> {
    let json = serde_json::to_vec(body).map_err(ApiError::internal)?;
    let mut h = Sha256::new();
    h.update(route.as_bytes());
    h.update([0]);
    h.update(&json);
    Ok(h.finalize().to_vec())
}

/// A response stored under a key.
#[derive(Debug, Clone)]
pub struct Stored {
    pub status: StatusCode,
    pub body: Value,
}

/// Locks the key for this transaction and returns the stored response, if any.
pub async fn begin(
    conn: &mut PgConnection,
    scope: &str,
    key: &IdempotencyKey,
    request_hash: &[u8],
) -> Result<Option<Stored>, ApiError> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1), hashtext($2))")
        .bind(scope)
        .bind(&key.0)
        .execute(&mut *conn)
        .await?;
    let row: Option<(Vec<u8>, i32, Value)> = sqlx::query_as(
        "SELECT request_hash, response_status, response_body FROM idempotency_keys
         WHERE scope = $1 AND key = $2",
    )
    .bind(scope)
    .bind(&key.0)
    .fetch_optional(&mut *conn)
    .await?;
    match row {
        None => Ok(None),
        Some((hash, _, _)) if hash != request_hash => Err(ApiError::unprocessable(
            "idempotency_key_reused",
            "this Idempotency-Key was used with a different request",
        )),
        Some((_, status, body)) => {
            let status = u16::try_from(status)
                .ok()
                .and_then(|s| StatusCode::from_u16(s).ok())
                .ok_or_else(|| ApiError::internal("stored idempotent status out of range"))?;
            Ok(Some(Stored { status, body }))
        }
    }
}

/// Stores the response under the key, in the caller's transaction.
pub async fn finish(
    conn: &mut PgConnection,
    scope: &str,
    key: &IdempotencyKey,
    request_hash: &[u8],
    status: StatusCode,
    body: &Value,
    now: DateTime<Utc>,
) -> Result<(), ApiError> {
    sqlx::query(
        "INSERT INTO idempotency_keys (scope, key, request_hash, response_status, response_body, created_at)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(scope)
    .bind(&key.0)
    .bind(request_hash)
    .bind(i32::from(status.as_u16()))
    .bind(body)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Renders a stored response again, marked as a replay.
pub fn replay(stored: Stored) -> axum::response::Response {
    use axum::http::HeaderValue;
    use axum::response::IntoResponse;
    let is_problem = stored.status.is_client_error() || stored.status.is_server_error();
    let mut resp = (stored.status, axum::Json(stored.body)).into_response();
    if is_problem {
        resp.headers_mut().insert(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static(super::problem::PROBLEM_JSON),
        );
    }
    resp.headers_mut()
        .insert("idempotent-replayed", HeaderValue::from_static("true"));
    resp
}

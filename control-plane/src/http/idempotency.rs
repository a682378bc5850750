//! `Idempotency-Key` handling for POSTs that create things or move money, in two steps around
//! the provider call, so that nothing holds a transaction or a lock while a provider works.
//!
//! 1. [`reserve`], in the caller's short transaction (the one that also writes the operation's
//!    own reservation, e.g. a `pending` checkout): inserts the key's record `in_progress` with a
//!    lease ([`LEASE_SECS`]) and the id of what the operation creates, and answers
//!    [`Begun::Fresh`]. Or it finds the record: completed with the same request hash →
//!    [`Begun::Replay`]; another hash → `422 idempotency_key_reused`; in progress with a live
//!    lease → `409 idempotency_key_in_use` (the same request, concurrently); in progress past
//!    its lease → [`Begun::Resume`] with the operation's id (an earlier attempt crashed, or its
//!    provider call failed): the caller picks up where it stopped. The primary key, not a
//!    read-then-write, decides between concurrent first attempts.
//! 2. The provider call, outside any transaction, with a provider idempotency key derived from
//!    the operation's id ([`provider_key`]: bounded length, the same on every resume), so the
//!    provider answers a resumed call with what it did the first time.
//! 3. [`complete`] stores the response in the transaction that writes the outcome; [`release`]
//!    ends the lease early after a provider failure, so the client's retry resumes at once.
//!
//! Scopes: the account id for the Dashboard; for sign-up (no account yet) the hash of the
//! e-mail address, so unrelated clients reusing a simple key do not collide. Records are swept
//! [`RETENTION_HOURS`] after they were made ([`sweep`]), as Stripe's keys expire.

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::PgConnection;
use uuid::Uuid;

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

/// How long an attempt holds its key before another may resume it, s: longer than a provider
/// call may take (the gateways time out after 30 s).
pub const LEASE_SECS: i64 = 60;
/// Records older than this are swept; a key may then be used again.
pub const RETENTION_HOURS: i64 = 24;

/// A response stored under a key.
#[derive(Debug, Clone)]
pub struct Stored {
    pub status: StatusCode,
    pub body: Value,
    /// When the operation was first attempted (sign-up replays the token only shortly after).
    pub created_at: DateTime<Utc>,
}

/// A key this attempt holds until [`complete`] (or [`release`]).
#[derive(Debug, Clone)]
pub struct Reservation {
    pub scope: String,
    pub key: String,
    pub request_hash: Vec<u8>,
    /// What the operation creates (a checkout, an account, a payment method): the same on
    /// every resume.
    pub resource: Uuid,
    pub created_at: DateTime<Utc>,
}

/// What [`reserve`] found.
#[derive(Debug)]
pub enum Begun {
    /// First attempt: perform the operation, creating `resource`.
    Fresh(Reservation),
    /// An earlier attempt of this request stopped before its outcome was stored: continue it
    /// (its reservation rows exist; its provider call may or may not have happened).
    Resume(Reservation),
    /// Done before: answer this again.
    Replay(Stored),
}

/// A provider idempotency key for `operation` on `resource`: bounded length whatever the
/// client's key, and the same on every resume of the same request.
pub fn provider_key(operation: &str, resource: Uuid) -> String {
    format!("tollgate-{operation}-{}", resource.simple())
}

fn stored_status(status: i32) -> Result<StatusCode, ApiError> {
    u16::try_from(status)
        .ok()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .ok_or_else(|| ApiError::internal("stored idempotent status out of range"))
}

/// Reserves `key` in `scope` for a request with `request_hash` that will create `resource`
/// (see the module doc).
pub async fn reserve(
    conn: &mut PgConnection,
    scope: &str,
    key: &IdempotencyKey,
    request_hash: &[u8],
    resource: Uuid,
    now: DateTime<Utc>,
) -> Result<Begun, ApiError> {
    let lease = now + TimeDelta::seconds(LEASE_SECS);
    let inserted = sqlx::query(
        "INSERT INTO idempotency_keys (scope, key, request_hash, state, resource_id, locked_until, created_at)
         VALUES ($1, $2, $3, 'in_progress', $4, $5, $6)
         ON CONFLICT (scope, key) DO NOTHING",
    )
    .bind(scope)
    .bind(&key.0)
    .bind(request_hash)
    .bind(resource)
    .bind(lease)
    .bind(now)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    let reservation = |resource: Uuid, created_at: DateTime<Utc>| Reservation {
        scope: scope.to_owned(),
        key: key.0.clone(),
        request_hash: request_hash.to_vec(),
        resource,
        created_at,
    };
    if inserted == 1 {
        return Ok(Begun::Fresh(reservation(resource, now)));
    }
    type Row = (
        Vec<u8>,
        String,
        Option<i32>,
        Option<Value>,
        Option<Uuid>,
        Option<DateTime<Utc>>,
        DateTime<Utc>,
    );
    let (hash, state, status, body, resource_id, locked_until, created_at): Row = sqlx::query_as(
        "SELECT request_hash, state, response_status, response_body, resource_id, locked_until, created_at
           FROM idempotency_keys WHERE scope = $1 AND key = $2 FOR UPDATE",
    )
    .bind(scope)
    .bind(&key.0)
    .fetch_one(&mut *conn)
    .await?;
    if hash != request_hash {
        return Err(ApiError::unprocessable(
            "idempotency_key_reused",
            "this Idempotency-Key was used with a different request",
        ));
    }
    if state == "completed" {
        let (Some(status), Some(body)) = (status, body) else {
            return Err(ApiError::internal(
                "completed idempotency record without a response",
            ));
        };
        return Ok(Begun::Replay(Stored {
            status: stored_status(status)?,
            body,
            created_at,
        }));
    }
    if locked_until.is_some_and(|until| until > now) {
        return Err(ApiError::conflict(
            "idempotency_key_in_use",
            "a request with this Idempotency-Key is in progress; retry after it finished",
        ));
    }
    let resource =
        resource_id.ok_or_else(|| ApiError::internal("in-progress record without a resource"))?;
    sqlx::query("UPDATE idempotency_keys SET locked_until = $3 WHERE scope = $1 AND key = $2")
        .bind(scope)
        .bind(&key.0)
        .bind(lease)
        .execute(&mut *conn)
        .await?;
    Ok(Begun::Resume(reservation(resource, created_at)))
}

/// Locks the reservation's record in the caller's transaction (the one about to write the
/// outcome) and returns its response if another attempt of the same request completed it
/// meanwhile (a resume that overtook a slow attempt): then the caller answers that instead.
pub async fn completed(
    conn: &mut PgConnection,
    r: &Reservation,
) -> Result<Option<Stored>, ApiError> {
    type Row = (String, Option<i32>, Option<Value>, DateTime<Utc>);
    let row: Option<Row> = sqlx::query_as(
        "SELECT state, response_status, response_body, created_at FROM idempotency_keys
          WHERE scope = $1 AND key = $2 FOR UPDATE",
    )
    .bind(&r.scope)
    .bind(&r.key)
    .fetch_optional(&mut *conn)
    .await?;
    match row {
        Some((state, Some(status), Some(body), created_at)) if state == "completed" => {
            Ok(Some(Stored {
                status: stored_status(status)?,
                body,
                created_at,
            }))
        }
        _ => Ok(None),
    }
}

/// Stores the response under the reservation's key, in the caller's transaction (the one that
/// writes the outcome).
pub async fn complete(
    conn: &mut PgConnection,
    r: &Reservation,
    status: StatusCode,
    body: &Value,
) -> Result<(), ApiError> {
    sqlx::query(
        "UPDATE idempotency_keys SET state = 'completed', response_status = $3, response_body = $4,
                locked_until = NULL
          WHERE scope = $1 AND key = $2",
    )
    .bind(&r.scope)
    .bind(&r.key)
    .bind(i32::from(status.as_u16()))
    .bind(body)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Ends the reservation's lease now (the provider call failed and may be retried): the next
/// attempt with the key resumes instead of waiting.
pub async fn release(pool: &sqlx::PgPool, r: &Reservation) -> Result<(), ApiError> {
    sqlx::query(
        "UPDATE idempotency_keys SET locked_until = NULL
          WHERE scope = $1 AND key = $2 AND state = 'in_progress'",
    )
    .bind(&r.scope)
    .bind(&r.key)
    .execute(pool)
    .await?;
    Ok(())
}

/// Deletes records older than [`RETENTION_HOURS`]; returns how many.
pub async fn sweep(pool: &sqlx::PgPool, now: DateTime<Utc>) -> sqlx::Result<u64> {
    sqlx::query("DELETE FROM idempotency_keys WHERE created_at < $1")
        .bind(now - TimeDelta::hours(RETENTION_HOURS))
        .execute(pool)
        .await
        .map(|r| r.rows_affected())
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

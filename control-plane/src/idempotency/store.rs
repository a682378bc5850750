//! SQL of the idempotency records (cf `idempotency_keys`).

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// A record's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum State {
    InProgress,
    Completed,
}

/// What [`reserve`] found under the key.
#[derive(Debug)]
pub enum Found {
    /// No record: one was inserted for `resource`.
    Fresh { resource: Uuid },
    /// In progress past its lease: the lease is taken over.
    Resume { resource: Uuid },
    /// Done before, with this outcome.
    Completed {
        outcome: Value,
        created_at: DateTime<Utc>,
    },
    /// Another request used the key.
    Reused,
    /// The same request is in progress.
    InUse,
}

#[derive(sqlx::FromRow)]
struct Record {
    request_hash: Vec<u8>,
    state: State,
    outcome: Option<Value>,
    resource_id: Option<Uuid>,
    locked_until: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
}

/// Inserts the key's record `in_progress` until `lease`, or reports what holds the key (and
/// takes over an expired lease).
pub async fn reserve(
    conn: &mut PgConnection,
    scope: &str,
    key: &str,
    request_hash: &[u8],
    resource: Uuid,
    now: DateTime<Utc>,
    lease: DateTime<Utc>,
) -> sqlx::Result<Found> {
    let inserted = sqlx::query(
        "INSERT INTO idempotency_keys (scope, key, request_hash, state, resource_id, locked_until, created_at)
         VALUES ($1, $2, $3, 'in_progress', $4, $5, $6)
         ON CONFLICT (scope, key) DO NOTHING",
    )
    .bind(scope)
    .bind(key)
    .bind(request_hash)
    .bind(resource)
    .bind(lease)
    .bind(now)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if inserted == 1 {
        return Ok(Found::Fresh { resource });
    }
    let r: Record = sqlx::query_as(
        "SELECT request_hash, state, outcome, resource_id, locked_until, created_at
           FROM idempotency_keys WHERE scope = $1 AND key = $2 FOR UPDATE",
    )
    .bind(scope)
    .bind(key)
    .fetch_one(&mut *conn)
    .await?;
    if r.request_hash != request_hash {
        return Ok(Found::Reused);
    }
    match (r.state, r.outcome) {
        (State::Completed, Some(outcome)) => {
            return Ok(Found::Completed {
                outcome,
                created_at: r.created_at,
            });
        }
        (State::Completed, None) => {
            return Err(sqlx::Error::Protocol(
                "completed idempotency record without an outcome".into(),
            ));
        }
        (State::InProgress, _) => {}
    }
    if r.locked_until.is_some_and(|until| until > now) {
        return Ok(Found::InUse);
    }
    let resource = r.resource_id.ok_or_else(|| {
        sqlx::Error::Protocol("in-progress idempotency record without a resource".into())
    })?;
    sqlx::query("UPDATE idempotency_keys SET locked_until = $3 WHERE scope = $1 AND key = $2")
        .bind(scope)
        .bind(key)
        .bind(lease)
        .execute(&mut *conn)
        .await?;
    Ok(Found::Resume { resource })
}

/// The record's outcome if it is completed, locking it (in the caller's transaction).
pub async fn completed(
    conn: &mut PgConnection,
    scope: &str,
    key: &str,
) -> sqlx::Result<Option<(Value, DateTime<Utc>)>> {
    let row: Option<(State, Option<Value>, DateTime<Utc>)> = sqlx::query_as(
        "SELECT state, outcome, created_at FROM idempotency_keys
          WHERE scope = $1 AND key = $2 FOR UPDATE",
    )
    .bind(scope)
    .bind(key)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(match row {
        Some((State::Completed, Some(outcome), at)) => Some((outcome, at)),
        _ => None,
    })
}

/// Stores the outcome and ends the lease.
pub async fn complete(
    conn: &mut PgConnection,
    scope: &str,
    key: &str,
    outcome: &Value,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE idempotency_keys SET state = 'completed', outcome = $3, locked_until = NULL
          WHERE scope = $1 AND key = $2",
    )
    .bind(scope)
    .bind(key)
    .bind(outcome)
    .execute(&mut *conn)
    .await
    .map(drop)
}

/// Ends an in-progress record's lease now (a completed one is left as it is).
pub async fn release(pool: &PgPool, scope: &str, key: &str) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE idempotency_keys SET locked_until = NULL
          WHERE scope = $1 AND key = $2 AND state = 'in_progress'",
    )
    .bind(scope)
    .bind(key)
    .execute(pool)
    .await
    .map(drop)
}

/// Deletes records made before `before`; returns how many.
pub async fn delete_before(pool: &PgPool, before: DateTime<Utc>) -> sqlx::Result<u64> {
    sqlx::query("DELETE FROM idempotency_keys WHERE created_at < $1")
        .bind(before)
        .execute(pool)
        .await
        .map(|r| r.rows_affected())
}

//! Idempotency keys for the operations that create things or move money, in two steps around
//! the provider call, so that nothing holds a transaction or a lock while a provider works.
//! [`run`] is the one wrapper every such operation goes through (sign-up, adding a payment
//! method, checkout):
//!
//! 1. **Reserve**, in one short transaction: the key's record is inserted `in_progress` with a
//!    lease ([`LEASE_SECS`]) and the id of what the operation creates, and the operation's own
//!    first step runs in the same transaction (e.g. a `pending` checkout with its snapshot):
//!    both are written or neither. Or the record exists: completed with the same request hash
//!    → its stored outcome is answered again (a replay); another hash → `422
//!    idempotency_key_reused`; in progress with a live lease → `409 idempotency_key_in_use`
//!    (the same request, concurrently); in progress past its lease → the operation *resumes*
//!    with the same id (an earlier attempt crashed, or its provider call failed). The primary
//!    key, not a read-then-write, decides between concurrent first attempts.
//! 2. **Proceed**: the provider call, outside any transaction, with a provider idempotency key
//!    derived from the operation's id ([`provider_key`]: bounded length, the same on every
//!    resume), so the provider answers a resumed call with what it did the first time. Then the
//!    transaction that writes the outcome also stores it ([`Attempt::complete`]), after
//!    checking that no other attempt of the same request completed first
//!    ([`Attempt::overtaken`]).
//! 3. An operation that fails without storing an outcome (the provider was away, the database
//!    failed) ends its lease at once, so the client's retry resumes without waiting.
//!
//! What is stored is the operation's typed outcome — its value or its [`Error`] (a decline is
//! an outcome: every retry is declined the same way) — and each interface renders it, first
//! time and replay alike. The outcome types' JSON shape is therefore stored data: a change to
//! it must still read the records of the last 24 h (or migrate them).
//!
//! Scopes: the account id for the Dashboard; for sign-up (no account yet) the hash of the
//! e-mail address, so unrelated clients reusing a simple key do not collide. Records are swept
//! [`RETENTION_HOURS`] after they were made ([`sweep`]), as Stripe's keys expire.

pub mod store;

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::error::{Error, Result};

/// Longest key, bytes.
pub const KEY_BYTES_MAX: usize = 255;
/// How long an attempt holds its key before another may resume it, s: longer than a provider
/// call may take (the gateways time out after 30 s).
pub const LEASE_SECS: i64 = 60;
/// Records older than this are swept; a key may then be used again.
pub const RETENTION_HOURS: i64 = 24;

/// A client's `Idempotency-Key`: 1–255 visible ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key(String);

impl Key {
    pub fn parse(raw: &str) -> Result<Self> {
        if !raw.is_empty()
            && raw.len() <= KEY_BYTES_MAX
            && raw.bytes().all(|b| b.is_ascii_graphic())
        {
            Ok(Self(raw.to_owned()))
        } else {
            Err(Error::bad_request(
                "invalid_idempotency_key",
                format!("Idempotency-Key must be 1-{KEY_BYTES_MAX} visible ASCII characters"),
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One request under one key: where the key lives, and the hash of what makes two requests
/// "the same" (the operation and its canonical input).
#[derive(Debug, Clone)]
pub struct Request {
    scope: String,
    key: Key,
    hash: Vec<u8>,
}

impl Request {
    pub fn new(scope: String, key: Key, operation: &str, input: &impl Serialize) -> Result<Self> {
        let json = serde_json::to_vec(input).map_err(Error::internal)?;
        let mut h = Sha256::new();
        h.update(operation.as_bytes());
        h.update([0]);
        h.update(&json);
        Ok(Self {
            scope,
            key,
            hash: h.finalize().to_vec(),
        })
    }
}

/// What an operation answered: its value or its error, kept under the key.
pub type Outcome<T> = Result<T>;

/// An operation's answer, and whether it is a replay of one stored earlier.
#[derive(Debug)]
pub struct Ran<T> {
    pub outcome: Outcome<T>,
    /// When the stored outcome was first made, if this answer replays it.
    pub replay_of: Option<DateTime<Utc>>,
}

impl<T> Ran<T> {
    pub fn now(outcome: Outcome<T>) -> Self {
        Self {
            outcome,
            replay_of: None,
        }
    }

    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Ran<U> {
        Ran {
            outcome: self.outcome.map(f),
            replay_of: self.replay_of,
        }
    }
}

/// A key this attempt holds until it stores the outcome.
#[derive(Debug, Clone)]
pub struct Attempt {
    scope: String,
    key: String,
    /// What the operation creates: the same on every resume.
    resource: Uuid,
}

impl Attempt {
    /// What the operation creates (a checkout, an account, a payment method).
    pub fn resource(&self) -> Uuid {
        self.resource
    }

    /// Locks the record in the caller's transaction (the one about to write the outcome) and
    /// returns the stored outcome if another attempt of the same request completed it
    /// meanwhile (a resume that overtook a slow attempt): the caller answers that instead and
    /// writes nothing.
    pub async fn overtaken<T: DeserializeOwned>(
        &self,
        conn: &mut PgConnection,
    ) -> Result<Option<Outcome<T>>> {
        match store::completed(conn, &self.scope, &self.key).await? {
            Some((outcome, _)) => Ok(Some(decode(outcome)?)),
            None => Ok(None),
        }
    }

    /// Stores the outcome, in the caller's transaction (the one that writes it).
    pub async fn complete<T: Serialize>(
        &self,
        conn: &mut PgConnection,
        outcome: &Outcome<T>,
    ) -> Result<()> {
        let value = serde_json::to_value(outcome).map_err(Error::internal)?;
        store::complete(conn, &self.scope, &self.key, &value).await?;
        Ok(())
    }

    /// Stores `answer` in a transaction of its own (for an operation whose effects another
    /// database already holds) — unless another attempt completed the request first: then
    /// that one's stored answer is returned instead.
    pub async fn store<T: Serialize + DeserializeOwned>(
        &self,
        cf: &PgPool,
        answer: Outcome<T>,
    ) -> Outcome<T> {
        let mut tx = cf.begin().await?;
        if let Some(done) = self.overtaken(&mut tx).await? {
            tx.rollback().await?;
            return done;
        }
        self.complete(&mut tx, &answer).await?;
        tx.commit().await?;
        answer
    }
}

fn decode<T: DeserializeOwned>(stored: serde_json::Value) -> Result<Outcome<T>> {
    serde_json::from_value(stored)
        .map_err(|e| Error::internal(format_args!("stored idempotent outcome unreadable: {e}")))
}

/// A provider idempotency key for `operation` on `resource`: bounded length whatever the
/// client's key, and the same on every resume of the same request.
pub fn provider_key(operation: &str, resource: Uuid) -> String {
    format!("tollgate-{operation}-{}", resource.simple())
}

/// Runs an operation under its key (see the module doc). `reserve` is the operation's first
/// step, in the key's transaction, for a first attempt only (it gets the id of what the
/// operation creates); an error there writes nothing, the key included. `proceed` does the
/// rest: `Some` with what `reserve` returned for a first attempt, `None` for a resume. It
/// must store its outcome with [`Attempt::complete`] in the transaction that writes it.
pub async fn run<T, R>(
    cf: &PgPool,
    request: &Request,
    now: DateTime<Utc>,
    reserve: impl AsyncFnOnce(&mut PgConnection, Uuid) -> Result<R>,
    proceed: impl AsyncFnOnce(&Attempt, Option<R>) -> Result<T>,
) -> Result<Ran<T>>
where
    T: DeserializeOwned,
{
    let lease = now + TimeDelta::seconds(LEASE_SECS);
    let mut tx = cf.begin().await?;
    let found = store::reserve(
        &mut tx,
        &request.scope,
        request.key.as_str(),
        &request.hash,
        Uuid::now_v7(),
        now,
        lease,
    )
    .await?;
    let (attempt, reserved) = match found {
        store::Found::Fresh { resource } => {
            let reserved = match reserve(&mut tx, resource).await {
                Ok(r) => r,
                // Rolled back with the key: as if the request never came. Explicitly and now:
                // a dropped transaction would keep its row locks until its pooled connection
                // is next used (a refused plan change kept the subscription locked, and the
                // renewal skipped it).
                Err(e) => {
                    tx.rollback().await?;
                    return Ok(Ran::now(Err(e)));
                }
            };
            tx.commit().await?;
            let attempt = Attempt {
                scope: request.scope.clone(),
                key: request.key.as_str().to_owned(),
                resource,
            };
            (attempt, Some(reserved))
        }
        store::Found::Resume { resource } => {
            tx.commit().await?;
            let attempt = Attempt {
                scope: request.scope.clone(),
                key: request.key.as_str().to_owned(),
                resource,
            };
            (attempt, None)
        }
        store::Found::Completed {
            outcome,
            created_at,
        } => {
            tx.commit().await?;
            return Ok(Ran {
                outcome: decode(outcome)?,
                replay_of: Some(created_at),
            });
        }
        store::Found::Reused => {
            return Err(Error::unprocessable(
                "idempotency_key_reused",
                "this Idempotency-Key was used with a different request",
            ));
        }
        store::Found::InUse => {
            return Err(Error::conflict(
                "idempotency_key_in_use",
                "a request with this Idempotency-Key is in progress; retry after it finished",
            ));
        }
    };
    let outcome = proceed(&attempt, reserved).await;
    if outcome.is_err() {
        // Unless the operation stored this outcome (then this changes nothing), its lease ends
        // now: the client's retry resumes at once.
        store::release(cf, &attempt.scope, &attempt.key).await?;
    }
    Ok(Ran::now(outcome))
}

/// Deletes records older than [`RETENTION_HOURS`]; returns how many.
pub async fn sweep(cf: &PgPool, now: DateTime<Utc>) -> sqlx::Result<u64> {
    store::delete_before(cf, now - TimeDelta::hours(RETENTION_HOURS)).await
}

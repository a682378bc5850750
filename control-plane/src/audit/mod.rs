//! The audit of panel writes (`agent_actions`, in cf and in billing_prod): every write a
//! support agent makes is one row — agent, action, target, reason, the state before and after,
//! and what was answered — written in the same transaction as the write's effect, in the
//! database that holds the effect. The table is append-only (a trigger refuses `UPDATE` and
//! `DELETE`).
//!
//! The row doubles as the write's idempotency record: [`audited`] answers a repeat of the same
//! `Idempotency-Key` by the same agent with the stored answer (422 `idempotency_key_reused`
//! when the request differs), and two concurrent first attempts commit once — the second's
//! insert meets the first's row and its effects roll back.

pub mod store;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};

use crate::agents::Agent;
use crate::error::{Error, Result};
use crate::idempotency::Key;
use crate::ids::AccountId;

/// Shortest and longest reason an agent gives, characters.
pub const REASON_CHARS: (usize, usize) = (3, 2000);

/// Text an agent writes: no control characters but line breaks and tabs (PostgreSQL refuses
/// NUL in text, and nothing else belongs in a note).
pub fn printable(s: &str) -> bool {
    !s.chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t' && c != '\r')
}

/// Why an agent does something: 3 to 2,000 characters, not blank, printable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reason(String);

impl Reason {
    pub fn parse(raw: Option<&str>) -> Result<Self> {
        let r = raw.map(str::trim).unwrap_or_default();
        let n = r.chars().count();
        if n < REASON_CHARS.0 || n > REASON_CHARS.1 || !printable(r) {
            return Err(Error::unprocessable(
                "reason_required",
                "every panel write carries a reason (3-2000 printable characters)",
            ));
        }
        Ok(Self(r.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One panel write about to happen.
pub struct Write<'a> {
    pub agent: &'a Agent,
    pub key: &'a Key,
    /// `account.ban`, `invoice.void`, ….
    pub action: &'static str,
    pub account: Option<AccountId>,
    /// What it acts on (an account, invoice, override id).
    pub target: String,
    pub reason: &'a Reason,
    /// The request as sent (its hash tells a repeat from a different request).
    pub request: Value,
    pub now: DateTime<Utc>,
}

impl<'a> Write<'a> {
    /// A write by `agent` under `key`, for `reason`, at `now`; what it acts on follows
    /// ([`Write::on`]).
    pub fn new(
        agent: &'a Agent,
        key: &'a Key,
        reason: &'a Reason,
        action: &'static str,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            agent,
            key,
            action,
            account: None,
            target: String::new(),
            reason,
            request: Value::Null,
            now,
        }
    }

    /// What it acts on: the account, the target's id, the request as sent.
    pub fn on(mut self, account: Option<AccountId>, target: String, request: Value) -> Self {
        self.account = account;
        self.target = target;
        self.request = request;
        self
    }
}

/// What a write's effect reports: the state before and after, and its answer.
pub struct Effect<T> {
    pub before: Value,
    pub after: Value,
    pub answer: T,
    /// The account, when only the effect knows it (an invoice's owner).
    pub account: Option<AccountId>,
}

impl<T> Effect<T> {
    pub fn new(before: Value, after: Value, answer: T) -> Self {
        Self {
            before,
            after,
            answer,
            account: None,
        }
    }
}

fn hash(w: &Write<'_>) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(w.action.as_bytes());
    h.update([0]);
    h.update(w.target.as_bytes());
    h.update([0]);
    h.update(w.reason.as_str().as_bytes());
    h.update([0]);
    h.update(w.request.to_string().as_bytes());
    h.finalize().to_vec()
}

fn replay<T: DeserializeOwned>(stored: store::Stored, hash: &[u8]) -> Result<T> {
    if stored.request_hash != hash {
        return Err(Error::unprocessable(
            "idempotency_key_reused",
            "this Idempotency-Key was used for another request",
        ));
    }
    serde_json::from_value(stored.response).map_err(Error::internal)
}

/// What a write answered before, if this agent's key was used already (a write whose effect
/// starts with a provider call asks this first, so a repeat never calls the provider again).
pub async fn replayed<T: DeserializeOwned>(pool: &PgPool, w: &Write<'_>) -> Result<Option<T>> {
    let mut conn = pool.acquire().await?;
    match store::find(&mut conn, w.agent.id, w.key.as_str()).await? {
        Some(stored) => replay(stored, &hash(w)).map(Some),
        None => Ok(None),
    }
}

/// A stable id for what this agent's key makes (a provider idempotency key derives from it).
pub fn resource_id(w: &Write<'_>) -> uuid::Uuid {
    let mut h = Sha256::new();
    h.update(w.agent.id.0.as_bytes());
    h.update(w.key.as_str().as_bytes());
    let d = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    uuid::Builder::from_random_bytes(b).into_uuid()
}

/// Runs a panel write's `effect` in one transaction of `pool` with its audit row (see the
/// module doc). An error from `effect` writes nothing.
pub async fn audited<T>(
    pool: &PgPool,
    w: &Write<'_>,
    effect: impl AsyncFnOnce(&mut PgConnection) -> Result<Effect<T>>,
) -> Result<T>
where
    T: Serialize + DeserializeOwned,
{
    let h = hash(w);
    let mut tx = pool.begin().await?;
    if let Some(stored) = store::find(&mut tx, w.agent.id, w.key.as_str()).await? {
        tx.rollback().await?;
        return replay(stored, &h);
    }
    let e = match effect(&mut tx).await {
        Ok(e) => e,
        Err(err) => {
            tx.rollback().await?;
            // A concurrent first attempt under the same key may have committed while this one
            // waited for its row lock, and its effect is why this one failed (`already
            // canceled`): the repeat answers what the first did.
            let mut conn = pool.acquire().await?;
            return match store::find(&mut conn, w.agent.id, w.key.as_str()).await? {
                Some(stored) => replay(stored, &h),
                None => Err(err),
            };
        }
    };
    let response = serde_json::to_value(&e.answer).map_err(Error::internal)?;
    let account = e.account.or(w.account);
    if !store::insert(&mut tx, w, account, &h, &e.before, &e.after, &response).await? {
        // A concurrent first attempt under the same key committed first.
        tx.rollback().await?;
        let mut conn = pool.acquire().await?;
        let stored = store::find(&mut conn, w.agent.id, w.key.as_str())
            .await?
            .ok_or_else(|| Error::internal("audit row vanished"))?;
        return replay(stored, &h);
    }
    tx.commit().await?;
    tracing::info!(agent = %w.agent.email, action = w.action, target = %w.target, "panel write");
    Ok(e.answer)
}

/// One audited action, as the timeline shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Action {
    pub id: uuid::Uuid,
    pub agent_email: String,
    pub action: String,
    pub target: String,
    pub reason: String,
    pub before: Value,
    pub after: Value,
    pub at: DateTime<Utc>,
}

/// The audited actions on `account` in `pool`'s database, newest first.
pub async fn of_account(pool: &PgPool, account: AccountId, limit: i64) -> Result<Vec<Action>> {
    let mut conn = pool.acquire().await?;
    Ok(store::of_account(&mut conn, account, limit).await?)
}

//! Support agents' per-account overrides of one feature (`entitlement_overrides`): grant (with
//! an optional limit) or deny, optionally until a time. The live ones are part of the
//! account's facts, so they reach the edges through the facts path and decide with the reason
//! `override`; an expired one is removed by the maintenance pass ([`expire_due`]), which
//! republishes the facts.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::PgConnection;
use tollgate_protocol::FeatureOverride;

use crate::audit::{self, Effect, Write};
use crate::error::{Error, Result};
use crate::ids::{AccountId, AgentId, OverrideId};
use crate::outbox;
use crate::state::AppState;

/// `grant` or `deny`.
#[derive(
    utoipa::ToSchema, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type,
)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum Mode {
    Grant,
    Deny,
}

/// One override.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Override {
    pub id: OverrideId,
    pub feature_key: String,
    pub mode: Mode,
    #[sqlx(rename = "limit_value")]
    pub limit: Option<i64>,
    pub expires_at: Option<DateTime<Utc>>,
    pub created_by: AgentId,
    pub created_at: DateTime<Utc>,
    pub removed_at: Option<DateTime<Utc>>,
}

/// What an agent asks for.
#[derive(utoipa::ToSchema, Debug, Clone, Serialize, Deserialize)]
pub struct NewOverride {
    /// A feature of the bundle.
    #[schema(example = "sso")]
    pub feature: String,
    pub mode: Mode,
    #[serde(default)]
    pub limit: Option<i64>,
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str =
    "id, feature_key, mode, limit_value, expires_at, created_by, created_at, removed_at";

/// Sets an override of `input.feature` (replacing a live one of the same feature).
pub async fn add(
    state: &AppState,
    w: &Write<'_>,
    account: AccountId,
    input: &NewOverride,
) -> Result<Override> {
    if input.mode == Mode::Deny && input.limit.is_some() {
        return Err(Error::unprocessable(
            "invalid_override",
            "a deny takes no limit",
        ));
    }
    if input.limit.is_some_and(|l| l < 0) {
        return Err(Error::unprocessable(
            "invalid_override",
            "a limit is 0 or more",
        ));
    }
    if input.feature.is_empty()
        || input.feature.len() > 128
        || input.feature.chars().any(char::is_control)
    {
        return Err(Error::unprocessable("unknown_feature", "no such feature"));
    }
    if input.expires_at.is_some_and(|t| t <= w.now) {
        return Err(Error::unprocessable(
            "invalid_override",
            "expires_at is in the future",
        ));
    }
    let out = audit::audited(&state.cf, w, async |tx| {
        crate::accounts::store::get_account(tx, account, true)
            .await?
            .ok_or_else(|| Error::not_found("account"))?;
        let known: Option<(String,)> = feature(tx, &input.feature).await?;
        if known.is_none() {
            return Err(Error::unprocessable(
                "unknown_feature",
                format!("no feature `{}`", input.feature),
            ));
        }
        let before = remove_live(tx, account, &input.feature, w.now).await?;
        let o: Override = sqlx::query_as(sqlf!(
            "INSERT INTO entitlement_overrides (id, account_id, feature_key, mode, limit_value,
                 expires_at, created_by, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {COLUMNS}"
        ))
        .bind(OverrideId::new_v7())
        .bind(account.0)
        .bind(&input.feature)
        .bind(input.mode)
        .bind(input.limit)
        .bind(input.expires_at)
        .bind(w.agent.id)
        .bind(w.now)
        .fetch_one(&mut *tx)
        .await?;
        outbox::account_changed(tx, account, w.now).await?;
        Ok(Effect::new(json!(before), json!(o), o))
    })
    .await?;
    state.outbox_wake.notify_waiters();
    Ok(out)
}

/// Removes override `id` of `account` (404 for another account's or a removed one).
pub async fn remove(
    state: &AppState,
    w: &Write<'_>,
    account: AccountId,
    id: OverrideId,
) -> Result<Override> {
    let out = audit::audited(&state.cf, w, async |tx| {
        let before: Option<Override> = sqlx::query_as(sqlf!(
            "SELECT {COLUMNS} FROM entitlement_overrides
             WHERE id = $1 AND account_id = $2 AND removed_at IS NULL FOR UPDATE"
        ))
        .bind(id)
        .bind(account.0)
        .fetch_optional(&mut *tx)
        .await?;
        let before = before.ok_or_else(|| Error::not_found("override"))?;
        let after: Override = sqlx::query_as(sqlf!(
            "UPDATE entitlement_overrides SET removed_at = $2 WHERE id = $1 RETURNING {COLUMNS}"
        ))
        .bind(id)
        .bind(w.now)
        .fetch_one(&mut *tx)
        .await?;
        outbox::account_changed(tx, account, w.now).await?;
        Ok(Effect::new(json!(before), json!(after), after))
    })
    .await?;
    state.outbox_wake.notify_waiters();
    Ok(out)
}

async fn feature(conn: &mut PgConnection, key: &str) -> sqlx::Result<Option<(String,)>> {
    sqlx::query_as("SELECT key FROM features WHERE key = $1")
        .bind(key)
        .fetch_optional(conn)
        .await
}

async fn remove_live(
    conn: &mut PgConnection,
    account: AccountId,
    feature: &str,
    now: DateTime<Utc>,
) -> sqlx::Result<Option<Override>> {
    sqlx::query_as(sqlf!(
        "UPDATE entitlement_overrides SET removed_at = $3
         WHERE account_id = $1 AND feature_key = $2 AND removed_at IS NULL RETURNING {COLUMNS}"
    ))
    .bind(account.0)
    .bind(feature)
    .bind(now)
    .fetch_optional(conn)
    .await
}

/// The account's live overrides at `now` (an expired one no longer counts, removed or not).
pub async fn live(
    conn: &mut PgConnection,
    account: AccountId,
    now: DateTime<Utc>,
) -> sqlx::Result<Vec<Override>> {
    sqlx::query_as(sqlf!(
        "SELECT {COLUMNS} FROM entitlement_overrides
         WHERE account_id = $1 AND removed_at IS NULL AND (expires_at IS NULL OR expires_at > $2)
         ORDER BY feature_key"
    ))
    .bind(account.0)
    .bind(now)
    .fetch_all(conn)
    .await
}

/// The overrides as facts carry them.
pub fn as_facts(live: &[Override]) -> std::collections::BTreeMap<String, FeatureOverride> {
    live.iter()
        .map(|o| {
            let f = match o.mode {
                Mode::Deny => FeatureOverride::Deny,
                Mode::Grant => FeatureOverride::Grant { limit: o.limit },
            };
            (o.feature_key.clone(), f)
        })
        .collect()
}

/// Every override of the account, newest first (the 360° view).
pub async fn of_account(state: &AppState, account: AccountId) -> Result<Vec<Override>> {
    let mut conn = state.cf.acquire().await?;
    Ok(sqlx::query_as(sqlf!(
        "SELECT {COLUMNS} FROM entitlement_overrides WHERE account_id = $1
         ORDER BY created_at DESC, id DESC LIMIT 100"
    ))
    .bind(account.0)
    .fetch_all(&mut *conn)
    .await?)
}

/// Removes the overrides that expired by now and recomputes their accounts' facts. Returns how
/// many expired.
pub async fn expire_due(state: &AppState, batch: i64) -> anyhow::Result<usize> {
    let now = state.clock.now();
    let mut tx = state.cf.begin().await?;
    let expired: Vec<(uuid::Uuid,)> = sqlx::query_as(
        "UPDATE entitlement_overrides SET removed_at = expires_at
         WHERE id IN (SELECT id FROM entitlement_overrides
                      WHERE removed_at IS NULL AND expires_at <= $1
                      ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED)
         RETURNING account_id",
    )
    .bind(now)
    .bind(batch)
    .fetch_all(&mut *tx)
    .await?;
    for (account,) in &expired {
        outbox::account_changed(&mut tx, AccountId::from(*account), now).await?;
    }
    tx.commit().await?;
    if !expired.is_empty() {
        state.outbox_wake.notify_waiters();
    }
    Ok(expired.len())
}

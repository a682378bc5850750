//! Entitlement facts: what the control plane knows about an account that decides its features,
//! versioned per account and published to edges.
//!
//! Facts are recomputed by the outbox relay (never inline in a Dashboard request), stored in
//! `entitlement_facts` with a version that grows by one whenever they change, and published to
//! the Redis change stream plus an L2 copy. Decisions are *not* computed here: edges evaluate
//! the facts with the stable (or canary) rule bundle's WebAssembly module.

use chrono::{DateTime, Utc};
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgConnection;
use tollgate_protocol::{
    AccountFacts, AccountId, AccountStanding, ChangeEvent, SubscriptionFacts, SubscriptionStatus,
    redis_keys,
};
use uuid::Uuid;

use crate::outbox;
use crate::state::AppState;

/// Outbox payload of both entitlement topics.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccountEvent {
    pub account_id: AccountId,
}

/// Locks the account and computes its facts from current state; `version` is left at 0.
pub async fn compute_facts(
    conn: &mut PgConnection,
    account: AccountId,
) -> anyhow::Result<Option<AccountFacts>> {
    let row: Option<(String,)> =
        sqlx::query_as("SELECT standing FROM accounts WHERE id = $1 FOR UPDATE")
            .bind(account.0)
            .fetch_optional(&mut *conn)
            .await?;
    let Some((standing,)) = row else {
        return Ok(None);
    };
    let standing = match standing.as_str() {
        "banned" => AccountStanding::Banned,
        _ => AccountStanding::Active,
    };
    let sub: Option<(String, String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT plan_key, status, current_period_end FROM subscriptions
         WHERE account_id = $1 AND status IN ('trialing', 'active', 'past_due')",
    )
    .bind(account.0)
    .fetch_optional(&mut *conn)
    .await?;
    let subscription = match sub {
        None => None,
        Some((plan, status, end)) => Some(SubscriptionFacts {
            plan,
            status: SubscriptionStatus::parse(&status)
                .ok_or_else(|| anyhow::anyhow!("subscription status {status} is unknown"))?,
            current_period_end_ms: end.timestamp_millis(),
        }),
    };
    Ok(Some(AccountFacts {
        account_id: account,
        version: 0,
        standing,
        subscription,
        ..AccountFacts::new(account, 0)
    }))
}

/// Stored facts of an account.
pub async fn stored_facts(
    conn: &mut PgConnection,
    account: AccountId,
) -> sqlx::Result<Option<AccountFacts>> {
    let row: Option<(Value,)> =
        sqlx::query_as("SELECT facts FROM entitlement_facts WHERE account_id = $1")
            .bind(account.0)
            .fetch_optional(conn)
            .await?;
    row.map(|(v,)| serde_json::from_value(v).map_err(|e| sqlx::Error::Decode(Box::new(e))))
        .transpose()
}

/// Stored facts of several accounts (those that have some), one query.
pub async fn stored_facts_many(
    conn: &mut PgConnection,
    accounts: &[AccountId],
) -> sqlx::Result<Vec<AccountFacts>> {
    let ids: Vec<Uuid> = accounts.iter().map(|a| a.0).collect();
    let rows: Vec<(Value,)> =
        sqlx::query_as("SELECT facts FROM entitlement_facts WHERE account_id = ANY($1)")
            .bind(&ids)
            .fetch_all(conn)
            .await?;
    rows.into_iter()
        .map(|(v,)| serde_json::from_value(v).map_err(|e| sqlx::Error::Decode(Box::new(e))))
        .collect()
}

/// Recomputes and, when changed, stores the next version. Returns the current facts.
pub async fn recompute(
    conn: &mut PgConnection,
    account: AccountId,
    now: DateTime<Utc>,
) -> anyhow::Result<Option<(AccountFacts, bool)>> {
    let Some(mut fresh) = compute_facts(conn, account).await? else {
        return Ok(None);
    };
    let current = stored_facts(conn, account).await?;
    if let Some(cur) = &current {
        fresh.version = cur.version;
        if *cur == fresh {
            return Ok(Some((fresh, false)));
        }
    }
    fresh.version = current.map_or(1, |c| c.version + 1);
    sqlx::query(
        "INSERT INTO entitlement_facts (account_id, version, facts, updated_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (account_id) DO UPDATE SET version = EXCLUDED.version, facts = EXCLUDED.facts,
             updated_at = EXCLUDED.updated_at",
    )
    .bind(account.0)
    .bind(fresh.version)
    .bind(serde_json::to_value(&fresh)?)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(Some((fresh, true)))
}

pub async fn handle_recompute(
    _state: &AppState,
    conn: &mut PgConnection,
    payload: &Value,
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    let ev: AccountEvent = serde_json::from_value(payload.clone())?;
    if let Some((facts, true)) = recompute(conn, ev.account_id, now).await? {
        tracing::debug!(account_id = %ev.account_id, version = facts.version, "facts changed");
        outbox::enqueue(conn, outbox::TOPIC_PUBLISH, &ev, now).await?;
    }
    Ok(())
}

/// Keeps the L2 copy monotonic: replaces it only with a higher version.
const SET_IF_NEWER: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, decoded = pcall(cjson.decode, cur)
  if ok and tonumber(decoded['version']) >= tonumber(ARGV[1]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[2])
return 1
";

pub async fn handle_publish(
    state: &AppState,
    conn: &mut PgConnection,
    payload: &Value,
) -> anyhow::Result<()> {
    let ev: AccountEvent = serde_json::from_value(payload.clone())?;
    let Some(facts) = stored_facts(conn, ev.account_id).await? else {
        return Ok(());
    };
    publish(state, &facts).await
}

/// Publishes facts to the change stream and the L2 copy.
pub async fn publish(state: &AppState, facts: &AccountFacts) -> anyhow::Result<()> {
    let facts_json = serde_json::to_string(facts)?;
    let event = ChangeEvent {
        facts: facts.clone(),
        committed_at_ms: chrono::Utc::now().timestamp_millis(),
    };
    let event_json = serde_json::to_string(&event)?;
    let mut redis = state.redis.clone();
    let _: i64 = redis::Script::new(SET_IF_NEWER)
        .key(state.redis_keys.facts(&facts.account_id))
        .arg(facts.version)
        .arg(&facts_json)
        .invoke_async(&mut redis)
        .await?;
    let opts = redis::streams::StreamMaxlen::Approx(redis_keys::CHANGE_STREAM_MAXLEN);
    let _: String = redis
        .xadd_maxlen(
            state.redis_keys.stream(),
            opts,
            "*",
            &[(redis_keys::CHANGE_FIELD, event_json)],
        )
        .await?;
    state.metrics.facts_published.inc();
    Ok(())
}

/// Enqueues a recompute for an account in the caller's transaction.
pub async fn request_recompute(
    conn: &mut PgConnection,
    account: AccountId,
    now: DateTime<Utc>,
) -> sqlx::Result<Uuid> {
    outbox::enqueue(
        conn,
        outbox::TOPIC_RECOMPUTE,
        &AccountEvent {
            account_id: account,
        },
        now,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounts::store::insert_account;
    use sqlx::PgPool;

    #[sqlx::test(migrations = "../migrations/cf")]
    async fn versions_grow_only_when_facts_change(pool: PgPool) -> anyhow::Result<()> {
        let mut conn = pool.acquire().await?;
        let now = Utc::now();
        let id = AccountId::new_v7();
        insert_account(
            &mut conn,
            id,
            "a@example.com",
            "A",
            "simulated",
            "cus_a",
            now,
        )
        .await?;
        let (f1, changed) = recompute(&mut conn, id, now).await?.expect("exists");
        assert!(changed);
        assert_eq!((f1.version, f1.subscription.is_none()), (1, true));
        let (f2, changed) = recompute(&mut conn, id, now).await?.expect("exists");
        assert!(!changed, "same facts, same version");
        assert_eq!(f2.version, 1);
        sqlx::query("UPDATE accounts SET standing = 'banned' WHERE id = $1")
            .bind(id.0)
            .execute(&mut *conn)
            .await?;
        let (f3, changed) = recompute(&mut conn, id, now).await?.expect("exists");
        assert!(changed);
        assert_eq!((f3.version, f3.standing), (2, AccountStanding::Banned));
        assert_eq!(stored_facts(&mut conn, id).await?, Some(f3));
        assert!(
            recompute(&mut conn, AccountId::new_v7(), now)
                .await?
                .is_none()
        );
        Ok(())
    }
}

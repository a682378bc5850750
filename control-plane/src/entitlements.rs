//! Entitlement facts: what the control plane knows about an account that decides its features,
//! versioned per account and published to edges.
//!
//! Facts are recomputed by the outbox relay (never inline in a Dashboard request), stored in
//! `entitlement_facts` with a version that grows by one whenever they change, and published to
//! the Redis change stream plus an L2 copy. Decisions are *not* computed here: edges evaluate
//! the facts with the stable (or canary) rule bundle's WebAssembly module.
//!
//! # A Redis that lost writes
//!
//! Redis holds nothing authoritative, but edges fill from its L2 copies. Restored from an
//! older snapshot (or failed over to a lagging replica), it would hand out facts older than
//! `entitlement_facts`, and its stream would no longer hold what edges read. Edges notice the
//! stream part themselves (the last entry they applied is gone) and revalidate from the control
//! plane, skipping L2 meanwhile. For L2 the control plane records, per account, the stream id
//! its facts were last published under; the maintenance worker compares the newest of those
//! with the stream's newest id every second ([`repair_redis_if_behind`]). When Redis is behind,
//! exactly the accounts published after its newest entry are published again through the
//! outbox: their L2 copies are set back to the current versions and the stream carries them to
//! every edge.

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

/// Publishes an account's current facts and records the stream id they went out under.
pub async fn handle_publish(
    state: &AppState,
    conn: &mut PgConnection,
    payload: &Value,
) -> anyhow::Result<()> {
    let ev: AccountEvent = serde_json::from_value(payload.clone())?;
    let Some(facts) = stored_facts(conn, ev.account_id).await? else {
        return Ok(());
    };
    if let Some(id) = publish(state, &facts).await? {
        record_published(conn, ev.account_id, id).await?;
    }
    Ok(())
}

/// A change-stream id, `ms-seq`, ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct StreamId {
    pub ms: i64,
    pub seq: i64,
}

impl StreamId {
    pub fn parse(id: &str) -> Option<Self> {
        let (ms, seq) = id.split_once('-')?;
        Some(Self {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

/// Records the stream id an account's facts were just published under, in the relay's
/// transaction (never moving it back).
pub async fn record_published(
    conn: &mut PgConnection,
    account: AccountId,
    id: StreamId,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE entitlement_facts SET published_stream_ms = $2, published_stream_seq = $3
          WHERE account_id = $1
            AND (published_stream_ms IS NULL
                 OR (published_stream_ms, published_stream_seq) < ($2, $3))",
    )
    .bind(account.0)
    .bind(id.ms)
    .bind(id.seq)
    .execute(conn)
    .await
    .map(drop)
}

/// When Redis holds less than was published (see the module doc), republishes through the
/// outbox every account published after its stream's newest entry (unless a publish of it is
/// already queued). Returns how many accounts were queued (0: Redis is whole).
pub async fn repair_redis_if_behind(state: &AppState) -> anyhow::Result<u64> {
    let mut redis = state.redis.clone();
    let newest: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
        .arg(state.redis_keys.stream())
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut redis)
        .await?;
    let in_redis = newest
        .ids
        .first()
        .and_then(|e| StreamId::parse(&e.id))
        .unwrap_or(StreamId { ms: 0, seq: 0 });
    let published: Option<(i64, i64)> = sqlx::query_as(
        "SELECT published_stream_ms, published_stream_seq FROM entitlement_facts
          WHERE published_stream_ms IS NOT NULL
          ORDER BY published_stream_ms DESC, published_stream_seq DESC LIMIT 1",
    )
    .fetch_optional(&state.cf)
    .await?;
    let Some((ms, seq)) = published else {
        return Ok(0);
    };
    if in_redis >= (StreamId { ms, seq }) {
        return Ok(0);
    }
    let now = state.clock.now();
    let mut tx = state.cf.begin().await?;
    let queued = sqlx::query(
        "INSERT INTO outbox (id, topic, payload, created_at, available_at)
         SELECT gen_random_uuid(), $1, jsonb_build_object('account_id', f.account_id), $2, $2
           FROM entitlement_facts f
          WHERE (f.published_stream_ms, f.published_stream_seq) > ($3, $4)
            AND NOT EXISTS (
                SELECT 1 FROM outbox o
                 WHERE o.processed_at IS NULL AND o.topic = $1
                   AND o.payload->>'account_id' = f.account_id::text)",
    )
    .bind(outbox::TOPIC_PUBLISH)
    .bind(now)
    .bind(in_redis.ms)
    .bind(in_redis.seq)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(outbox::NOTIFY_CHANNEL)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    if queued > 0 {
        state.metrics.redis_repairs.inc();
        tracing::warn!(
            redis_newest = ?in_redis,
            published_newest = ?StreamId { ms, seq },
            republished = queued,
            "Redis holds less than was published (restored from an older snapshot?): republishing what it lost"
        );
    }
    Ok(queued)
}

/// Publishes facts to the change stream and the L2 copy; returns the stream entry's id.
pub async fn publish(state: &AppState, facts: &AccountFacts) -> anyhow::Result<Option<StreamId>> {
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
    let id: String = redis
        .xadd_maxlen(
            state.redis_keys.stream(),
            opts,
            "*",
            &[(redis_keys::CHANGE_FIELD, event_json)],
        )
        .await?;
    state.metrics.facts_published.inc();
    Ok(StreamId::parse(&id))
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

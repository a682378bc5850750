//! Publishing facts to Redis (the change stream and the L2 copies), and repairing a Redis that
//! lost writes.
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

use redis::AsyncCommands;
use tollgate_protocol::{AccountFacts, ChangeEvent, redis_keys};

use super::{StreamId, store};
use crate::state::AppState;

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
    let published = {
        let mut conn = state.cf.acquire().await?;
        store::newest_published(&mut conn).await?
    };
    let Some(published) = published else {
        return Ok(0);
    };
    if in_redis >= published {
        return Ok(0);
    }
    let mut tx = state.cf.begin().await?;
    let queued = store::republish_after(&mut tx, in_redis, state.clock.now()).await?;
    crate::outbox::notify(&mut tx).await?;
    tx.commit().await?;
    if queued > 0 {
        state.metrics.redis_repairs.inc();
        tracing::warn!(
            redis_newest = ?in_redis,
            published_newest = ?published,
            republished = queued,
            "Redis holds less than was published (restored from an older snapshot?): republishing what it lost"
        );
    }
    Ok(queued)
}

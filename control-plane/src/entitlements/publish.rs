//! Publishing facts to Redis (the account's shard stream and its L2 copy), and repairing a
//! Redis that lost writes.
//!
//! # One script, one slot
//!
//! [`publish`] runs one Lua script: it replaces the L2 copy only with a higher version, and
//! appends the change to the account's shard stream (`XADD … MAXLEN ~`), atomically. Both keys
//! carry the shard's hash tag (`protocol::redis_keys`), so on a Redis Cluster the script runs
//! on the one node owning that slot. When that node is down the publish fails and the outbox
//! retries it with its backoff (the other shards' publishes go on); nothing is published twice
//! out of order, since the edge applies facts by version.
//!
//! # A Redis that lost writes
//!
//! Redis holds nothing authoritative, but edges fill from its L2 copies. Restored from an
//! older snapshot (or failed over to a lagging replica), it would hand out facts older than
//! `entitlement_facts`, and its stream would no longer hold what edges read. Edges notice the
//! stream part themselves (the last entry they applied is gone) and revalidate from the control
//! plane, skipping L2 meanwhile. For L2 the control plane records, per account, the shard and
//! stream id its facts were last published under; the maintenance worker compares, per shard,
//! the newest of those with that shard stream's newest id every second
//! ([`repair_redis_if_behind`]). When a shard is behind (a cluster node restored alone loses
//! only its own shards), exactly its accounts published after its newest entry are published
//! again through the outbox: their L2 copies are set back to the current versions and the
//! stream carries them to every edge.

use tollgate_protocol::{AccountFacts, ChangeEvent, redis_keys};

use super::{StreamId, store};
use crate::state::AppState;

/// Keeps the L2 copy (`KEYS[1]`) monotonic — replaced only with a higher version (`ARGV[1]`,
/// the facts `ARGV[2]`) — and appends the change event (`ARGV[4]`) to the shard stream
/// (`KEYS[2]`, trimmed to about `ARGV[3]` entries); returns the entry's id. Both keys are in
/// one slot.
const PUBLISH: &str = r"
local cur = redis.call('GET', KEYS[1])
local newer = true
if cur then
  local ok, decoded = pcall(cjson.decode, cur)
  if ok and tonumber(decoded['version']) >= tonumber(ARGV[1]) then newer = false end
end
if newer then redis.call('SET', KEYS[1], ARGV[2]) end
return redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', ARGV[5], ARGV[4])
";

/// Publishes facts to the account's shard stream and its L2 copy; returns the shard and the
/// stream entry's id. `changed_at_us` is when the change behind them was written (wall clock,
/// unix µs), carried to the edges and observed in `tollgate_cp_change_publish_milliseconds`.
pub async fn publish(
    state: &AppState,
    facts: &AccountFacts,
    changed_at_us: Option<i64>,
) -> anyhow::Result<Option<(u16, StreamId)>> {
    let facts_json = serde_json::to_string(facts)?;
    let event = ChangeEvent {
        facts: facts.clone(),
        committed_at_ms: chrono::Utc::now().timestamp_millis(),
        changed_at_us,
    };
    let event_json = serde_json::to_string(&event)?;
    let keys = &state.redis_keys;
    let shard = keys.shard_of(&facts.account_id);
    let mut redis = state.redis.clone();
    // EVAL rather than EVALSHA: on a cluster, loading a script goes to every master, and would
    // fail while any one is down, even for shards on the others.
    let id: String = redis::cmd("EVAL")
        .arg(PUBLISH)
        .arg(2)
        .arg(keys.facts(&facts.account_id))
        .arg(keys.stream(shard))
        .arg(facts.version)
        .arg(&facts_json)
        .arg(redis_keys::CHANGE_STREAM_MAXLEN)
        .arg(&event_json)
        .arg(redis_keys::CHANGE_FIELD)
        .query_async(&mut redis)
        .await?;
    state.metrics.facts_published.inc();
    if let Some(at) = changed_at_us {
        let lag_ms = crate::clock::wall_us().saturating_sub(at).max(0) as f64 / 1e3;
        state.metrics.change_publish_ms.observe(lag_ms);
    }
    Ok(StreamId::parse(&id).map(|id| (shard, id)))
}

/// When a shard stream holds less than was published to it (see the module doc), republishes
/// through the outbox every account of that shard published after the stream's newest entry
/// (unless a publish of it is already queued). Every shard is checked, also when one fails (its
/// node down); the first failure is returned after. Returns how many accounts were queued (0:
/// Redis is whole).
pub async fn repair_redis_if_behind(state: &AppState) -> anyhow::Result<u64> {
    let mut queued = 0;
    let mut first_error = None;
    for shard in 0..state.redis_keys.shards() {
        match repair_shard(state, shard).await {
            Ok(n) => queued += n,
            Err(e) => {
                first_error.get_or_insert(e.context(format!("stream shard {shard}")));
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(queued),
    }
}

async fn repair_shard(state: &AppState, shard: u16) -> anyhow::Result<u64> {
    let mut redis = state.redis.clone();
    let newest: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
        .arg(state.redis_keys.stream(shard))
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
        store::newest_published(&mut conn, shard).await?
    };
    let Some(published) = published else {
        return Ok(0);
    };
    if in_redis >= published {
        return Ok(0);
    }
    let mut tx = state.cf.begin().await?;
    let queued = store::republish_after(&mut tx, shard, in_redis, state.clock.now()).await?;
    crate::outbox::notify(&mut tx).await?;
    tx.commit().await?;
    if queued > 0 {
        state.metrics.redis_repairs.inc();
        tracing::warn!(
            shard,
            redis_newest = ?in_redis,
            published_newest = ?published,
            republished = queued,
            "a stream shard holds less than was published (Redis restored from an older snapshot?): republishing what it lost"
        );
    }
    Ok(queued)
}

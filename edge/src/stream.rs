//! Follows the Redis change stream — one follower task per stream shard (see
//! `tollgate_protocol::redis_keys`: accounts are spread over the shards by a hash of their id)
//! — and applies each event to the cache.
//!
//! Each shard's follower has its own connection ([`RedisClient::dedicated`]: its blocking
//! `XREAD` would stall anything multiplexed beside it), so on a Redis Cluster each reads from
//! the node owning its shard, and a node that is down stops only its own shards: their
//! accounts answer `stale` and are refetched from the control plane (`run.rs`'s poller) until
//! the node is back, while the other shards keep flowing.
//!
//! Where a shard's follower starts: at the shard's position saved with the facts snapshot when
//! the edge restored one (every change made while the edge was down is then read and applied),
//! else at the shard stream's newest id (the cache is empty, so nothing older matters). It
//! resumes from the last id it applied after any error or reconnect.
//!
//! Gaps: when a shard's stream no longer holds what follows that id — trimmed past it, Redis
//! flushed, recreated, or restored from a snapshot older than what the edge already read — the
//! edge cannot know what it missed. It revalidates the shard's cached accounts from the control
//! plane, and stops trusting the Redis L2 copy for [`L2_DISTRUST_MS`] (a Redis that lost writes
//! holds old facts there too, until the control plane repairs it).
//!
//! Restored facts answer `stale: true` until they are known to be current: every shard's
//! follower read from its saved position up to its stream's end with no gap (then every change
//! since the snapshot was applied), or the account was refetched.

use std::time::Duration;

use redis::streams::{StreamReadOptions, StreamReadReply};
use tollgate_protocol::redis_conn::{RedisClient, RedisConn};
use tollgate_protocol::{ChangeEvent, redis_keys};

use crate::state::EdgeState;

/// How long one XREAD blocks.
pub const BLOCK_MS: usize = 1_000;
/// Events per XREAD at most.
pub const READ_COUNT_MAX: usize = 512;
/// Pause after a failed read before trying again.
pub const RETRY_DELAY_MS_MIN: u64 = 100;
/// Retry delays double up to this while Redis stays away.
pub const RETRY_DELAY_MS_MAX: u64 = 5_000;

/// A connection of its own: a blocking XREAD must not stall the L2 reads that share the
/// multiplexed connection, and it needs a response timeout longer than its block.
async fn connect(client: &RedisClient) -> redis::RedisResult<RedisConn> {
    client
        .dedicated(Duration::from_millis(BLOCK_MS as u64 + RESPONSE_MARGIN_MS))
        .await
}

/// How long the L2 copy is not used for fills after a gap, ms: long enough for the control
/// plane to notice Redis lost writes and republish what changed (it checks every second).
pub const L2_DISTRUST_MS: i64 = 30_000;

/// The id of the first entry at or after `id`, if any (`XRANGE key id + COUNT 1`): `Some(id)`
/// itself when the stream still holds the last entry this edge applied.
async fn first_at_or_after(
    redis: &mut RedisConn,
    stream_key: &str,
    id: &str,
) -> redis::RedisResult<Option<String>> {
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(stream_key)
        .arg(id)
        .arg("+")
        .arg("COUNT")
        .arg(1)
        .query_async(redis)
        .await?;
    Ok(reply.ids.into_iter().next().map(|e| e.id))
}

/// Whether stream id `a` (`ms-seq`) is strictly after `b`; unparsable ids compare as a gap.
pub fn stream_id_after(a: &str, b: &str) -> bool {
    let parse = |s: &str| {
        let (ms, seq) = s.split_once('-')?;
        Some((ms.parse::<u64>().ok()?, seq.parse::<u64>().ok()?))
    };
    match (parse(a), parse(b)) {
        (Some(a), Some(b)) => a > b,
        _ => true,
    }
}

/// How much longer than the XREAD block a reply may take before the connection is presumed dead.
pub const RESPONSE_MARGIN_MS: u64 = 2_000;

/// Follows every shard of the change stream (one task each) until `shutdown`.
pub async fn follow(
    state: EdgeState,
    client: RedisClient,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let tasks: Vec<_> = (0..state.shards())
        .map(|shard| {
            tokio::spawn(follow_shard(
                state.clone(),
                client.clone(),
                shard,
                shutdown.clone(),
            ))
        })
        .collect();
    for task in tasks {
        let _ = task.await;
    }
}

/// Follows one shard's stream (see the module doc).
pub async fn follow_shard(
    state: EdgeState,
    client: RedisClient,
    shard: u16,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let keys = state.upstream.keys().clone();
    let stream_key = keys.stream(shard);
    let mut conn: Option<RedisConn> = None;
    // Resume where the restored snapshot stopped, when there is one.
    let mut last_id: Option<String> = state.stream_position(shard);
    // Restored entries become current once every shard's follower has read from its position
    // to its stream's end without a gap.
    let mut confirming = last_id.is_some() && !state.restored_confirmed();
    // The stream state of the last gap acted on (the first id after the last one applied): a
    // gap that persists (stream still missing, nothing newer to read) is acted on once, and
    // every new one again.
    let mut last_gap: Option<Option<String>> = None;
    let mut retry_ms = RETRY_DELAY_MS_MIN;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let step = async {
            if conn.is_none() {
                conn = Some(connect(&client).await?);
            }
            let Some(redis) = conn.as_mut() else {
                return Ok(());
            };
            let from = match &last_id {
                Some(id) => id.clone(),
                None => {
                    let newest: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
                        .arg(&stream_key)
                        .arg("+")
                        .arg("-")
                        .arg("COUNT")
                        .arg(1)
                        .query_async(redis)
                        .await?;
                    let id = newest
                        .ids
                        .first()
                        .map_or_else(|| "0-0".to_owned(), |e| e.id.clone());
                    last_id = Some(id.clone());
                    // What is cached from now on is current to this position: fills fetch the
                    // current facts, and every later change is read from here.
                    state.set_stream_position(shard, Some(id.clone()));
                    id
                }
            };
            let opts = StreamReadOptions::default()
                .block(BLOCK_MS)
                .count(READ_COUNT_MAX);
            let reply: Option<StreamReadReply> = redis::AsyncCommands::xread_options(
                redis,
                &[stream_key.as_str()],
                &[from.as_str()],
                &opts,
            )
            .await?;
            // Gap check, after the read: the last entry applied must still be in the stream
            // (then what the read returned follows it without a hole, since trimming only cuts
            // the oldest entries). It is not when the stream was flushed, recreated, trimmed
            // past it, or restored from a snapshot older than it: changes may be lost, so every
            // cached account is revalidated instead of trusted.
            if from != "0-0" {
                let found = first_at_or_after(redis, &stream_key, &from).await?;
                if found.as_deref() == Some(from.as_str()) {
                    last_gap = None;
                } else if last_gap.as_ref() != Some(&found) {
                    tracing::warn!(shard, last_applied = %from, next = ?found, "change stream gap: revalidating the shard's cached accounts");
                    state.metrics.stream_gaps.inc();
                    state.distrust_l2_for(L2_DISTRUST_MS);
                    // What was restored cannot be confirmed by reading on: only refetches can.
                    confirming = false;
                    let st = state.clone();
                    tokio::spawn(async move { st.revalidate_shards(|s| s == shard).await });
                    last_gap = Some(found);
                }
            }
            let mut read = 0usize;
            for key in reply.into_iter().flat_map(|r| r.keys) {
                for entry in key.ids {
                    read += 1;
                    if let Some(raw) = entry.get::<String>(redis_keys::CHANGE_FIELD) {
                        match serde_json::from_str::<ChangeEvent>(&raw) {
                            Ok(ev) => state.apply_change(ev),
                            Err(e) => {
                                tracing::warn!(id = %entry.id, error = %e, "unreadable change event")
                            }
                        }
                    }
                    last_id = Some(entry.id);
                }
            }
            if read > 0 {
                state.set_stream_position(shard, last_id.clone());
            }
            // Fewer than a full read: this edge has applied everything up to the stream's end.
            if confirming && read < READ_COUNT_MAX {
                confirming = false;
                tracing::info!(shard, position = ?last_id, "caught up from the saved stream position");
                state.shard_caught_up(shard);
            }
            state.mark_stream_read(shard);
            Ok::<(), redis::RedisError>(())
        };
        tokio::select! {
            r = step => {
                if let Err(e) = r {
                    tracing::warn!(shard, error = %e, "change stream read failed; reconnecting");
                    conn = None;
                    tokio::time::sleep(Duration::from_millis(retry_ms)).await;
                    retry_ms = (retry_ms * 2).min(RETRY_DELAY_MS_MAX);
                } else {
                    retry_ms = RETRY_DELAY_MS_MIN;
                }
            }
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn stream_ids_compare_by_milliseconds_then_sequence() {
        assert!(super::stream_id_after("2-0", "1-9"));
        assert!(super::stream_id_after("1-10", "1-9"));
        assert!(!super::stream_id_after("1-9", "1-9"));
        assert!(!super::stream_id_after("1-0", "2-0"));
        assert!(
            super::stream_id_after("x", "1-0"),
            "unreadable ids are treated as a gap"
        );
    }
}

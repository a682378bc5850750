//! Follows the Redis change stream and applies each event to the cache.
//!
//! Starts from the stream's newest id at boot (the cache is empty then, so nothing older
//! matters) and resumes from the last id it applied after any error or reconnect. When the
//! stream no longer holds that id (trimmed past it, Redis flushed or replaced), the edge
//! cannot know what it missed and revalidates every cached account instead of trusting it.

use std::sync::atomic::Ordering;
use std::time::Duration;

use redis::streams::{StreamReadOptions, StreamReadReply};
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

/// A dedicated connection: a blocking XREAD must not stall the L2 reads that share the
/// multiplexed connection, and it needs a response timeout longer than its block.
async fn connect(client: &redis::Client) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(
        Duration::from_millis(BLOCK_MS as u64 + RESPONSE_MARGIN_MS),
    ));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

/// What `XINFO STREAM` tells about trimming and recreation.
struct StreamInfo {
    entries_added: Option<u64>,
    max_deleted_id: Option<String>,
}

/// `XINFO STREAM` of the change stream; `None` when the key does not exist.
async fn stream_info(
    redis: &mut redis::aio::MultiplexedConnection,
) -> redis::RedisResult<Option<StreamInfo>> {
    let reply: redis::RedisResult<redis::Value> = redis::cmd("XINFO")
        .arg("STREAM")
        .arg(redis_keys::CHANGE_STREAM)
        .query_async(redis)
        .await;
    let value = match reply {
        Ok(v) => v,
        Err(e) if e.to_string().to_ascii_lowercase().contains("no such key") => return Ok(None),
        Err(e) => return Err(e),
    };
    let pairs: Vec<(redis::Value, redis::Value)> = match value {
        redis::Value::Map(m) => m,
        redis::Value::Array(items) => {
            let mut it = items.into_iter();
            let mut out = Vec::new();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                out.push((k, v));
            }
            out
        }
        _ => Vec::new(),
    };
    let text = |v: &redis::Value| -> Option<String> {
        match v {
            redis::Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
            redis::Value::SimpleString(s) => Some(s.clone()),
            redis::Value::Int(i) => Some(i.to_string()),
            _ => None,
        }
    };
    let mut info = StreamInfo {
        entries_added: None,
        max_deleted_id: None,
    };
    for (k, v) in &pairs {
        match text(k).as_deref() {
            Some("entries-added") => info.entries_added = text(v).and_then(|s| s.parse().ok()),
            Some("max-deleted-entry-id") => info.max_deleted_id = text(v).filter(|s| s != "0-0"),
            _ => {}
        }
    }
    Ok(Some(info))
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

pub async fn follow(
    state: EdgeState,
    client: redis::Client,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut conn: Option<redis::aio::MultiplexedConnection> = None;
    let mut last_id: Option<String> = None;
    // The stream state of the last gap acted on: a gap that persists (stream still missing,
    // nothing newer to read past the trim point) is acted on once, and every new one again.
    let mut last_gap: Option<(Option<u64>, Option<String>)> = None;
    let mut entries_added: Option<u64> = None;
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
                        .arg(redis_keys::CHANGE_STREAM)
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
                    id
                }
            };
            // Gap check (XINFO STREAM, Redis ≥ 7): the stream is gone (flushed), was
            // recreated (its `entries-added` counter went backwards), or trimmed entries this
            // edge never read (`max-deleted-entry-id` past the last one applied). Changes may be
            // lost, so every cached account is revalidated instead of trusted.
            if from != "0-0" {
                let info = stream_info(redis).await?;
                let marker = info.as_ref().map_or((None, None), |i| {
                    (i.entries_added, i.max_deleted_id.clone())
                });
                let gap = match info {
                    None => true,
                    Some(info) => {
                        let recreated = matches!((info.entries_added, entries_added), (Some(now), Some(before)) if now < before);
                        let trimmed_past = info
                            .max_deleted_id
                            .as_deref()
                            .is_some_and(|d| stream_id_after(d, &from));
                        if info.entries_added.is_some() {
                            entries_added = info.entries_added;
                        }
                        recreated || trimmed_past
                    }
                };
                if !gap {
                    last_gap = None;
                } else if last_gap.as_ref() != Some(&marker) {
                    tracing::warn!(last_applied = %from, "change stream gap: revalidating every cached account");
                    state.metrics.stream_gaps.inc();
                    let st = state.clone();
                    tokio::spawn(async move { st.revalidate_all().await });
                    last_gap = Some(marker);
                }
            }
            let opts = StreamReadOptions::default()
                .block(BLOCK_MS)
                .count(READ_COUNT_MAX);
            let reply: Option<StreamReadReply> = redis::AsyncCommands::xread_options(
                redis,
                &[redis_keys::CHANGE_STREAM],
                &[from.as_str()],
                &opts,
            )
            .await?;
            state
                .stream_ok_at_ms
                .store(crate::now_ms(), Ordering::Relaxed);
            for key in reply.into_iter().flat_map(|r| r.keys) {
                for entry in key.ids {
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
            Ok::<(), redis::RedisError>(())
        };
        tokio::select! {
            r = step => {
                if let Err(e) = r {
                    tracing::warn!(error = %e, "change stream read failed; reconnecting");
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

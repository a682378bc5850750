//! Follows the Redis change stream and applies each event to the cache.
//!
//! Starts from the stream's newest id at boot (the cache is empty then, so nothing older
//! matters) and resumes from the last id it applied after any error or reconnect.

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
pub const RETRY_DELAY_MS: u64 = 250;

pub async fn follow(state: EdgeState, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let Some(mut redis) = state.redis.clone() else {
        return;
    };
    let mut last_id: Option<String> = None;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let step = async {
            let from = match &last_id {
                Some(id) => id.clone(),
                None => {
                    let newest: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
                        .arg(redis_keys::CHANGE_STREAM)
                        .arg("+")
                        .arg("-")
                        .arg("COUNT")
                        .arg(1)
                        .query_async(&mut redis)
                        .await?;
                    let id = newest
                        .ids
                        .first()
                        .map_or_else(|| "0-0".to_owned(), |e| e.id.clone());
                    last_id = Some(id.clone());
                    id
                }
            };
            let opts = StreamReadOptions::default()
                .block(BLOCK_MS)
                .count(READ_COUNT_MAX);
            let reply: Option<StreamReadReply> = redis::AsyncCommands::xread_options(
                &mut redis,
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
                    tracing::warn!(error = %e, "change stream read failed; retrying");
                    tokio::time::sleep(Duration::from_millis(RETRY_DELAY_MS)).await;
                }
            }
            _ = shutdown.changed() => return,
        }
    }
}

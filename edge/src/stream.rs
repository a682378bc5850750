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

/// How much longer than the XREAD block a reply may take before the connection is presumed dead.
pub const RESPONSE_MARGIN_MS: u64 = 2_000;

pub async fn follow(
    state: EdgeState,
    client: redis::Client,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut conn: Option<redis::aio::MultiplexedConnection> = None;
    let mut last_id: Option<String> = None;
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

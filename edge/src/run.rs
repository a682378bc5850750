//! Running the edge: build the state from the configuration, restore what the last run saved
//! (bundle, facts, usage log), start the background tasks (usage flusher, L2 connection,
//! bundle follower, facts snapshots, stale poller, change-stream follower), serve until
//! SIGTERM / Ctrl-C, then stop every task.

use std::time::Duration;

use anyhow::Context;

use crate::cache::CacheLimits;
use crate::config::Config;
use crate::state::{self, EdgeState};
use crate::upstream::{L2, Upstream};
use crate::{bundles, router, stream, usage};

/// How often cached accounts are refetched from the control plane while their change-stream
/// shard is unavailable (Redis, or the shard's node, down): freshness degrades to this
/// interval instead of stopping.
pub const STALE_POLL_MS: u64 = 2_000;

async fn poll_while_stale(state: EdgeState, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(STALE_POLL_MS)) => {}
            _ = shutdown.changed() => return,
        }
        // Only the accounts of shards whose stream is unavailable (their node down) are
        // refetched, and restored entries not confirmed yet.
        if state.is_stale() || state.restored_waiting() {
            state.revalidate_shards(|s| state.shard_stale(s)).await;
        }
    }
}

/// Runs the edge until SIGTERM / Ctrl-C.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let redis = tollgate_protocol::redis_conn::RedisClient::open(&config.redis.target)
        .context("redis url")?;
    // L2 connects in the background: a Redis that is down at boot only sends misses to the
    // control plane until it answers.
    let l2 = L2::default();
    let upstream = Upstream::new(
        &config.control_plane_url,
        config.edge_token.clone(),
        Duration::from_millis(config.upstream_timeout_ms),
        l2.clone(),
    )?
    .with_fill_limits(config.fill_limits)
    .with_redis_keys(config.redis.keys.clone());
    let state = EdgeState::new(
        state::EdgeOptions {
            edge_id: config.edge_id.clone(),
            cache_limits: CacheLimits {
                entries_max: config.cache_entries_max,
                bytes_max: config.cache_bytes_max,
            },
            freshness_budget_ms: config.freshness_budget_ms,
            negative_ttl_ms: config.negative_ttl_ms,
            tokens: config.tokens.clone(),
        },
        upstream,
    );
    let engine = tollgate_rules::host::RulesEngine::new().context("wasmtime engine")?;
    // The last good bundle answers at once, even with the control plane down.
    bundles::load_persisted(&state, &engine, &config.trusted_keys, &config.data_dir);
    // Restored facts answer stale until the follower has read every change since they were
    // saved (it resumes at their stream position), or they are refetched.
    let restored = bundles::restore_facts(&state, &config.data_dir);
    state.set_restored(restored.accounts as u64);
    // Usage recovered from disk is flushed as soon as the control plane answers.
    let usage = state
        .open_usage(&usage::UsageOptions::in_data_dir(
            &config.data_dir,
            config.usage_buffer_bytes_max,
            config.usage_dead_letter_bytes_max,
        ))
        .context("usage log")?;
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let flusher = tokio::spawn(usage::flush_loop(
        state.clone(),
        usage,
        Duration::from_millis(config.usage_flush_ms),
        shutdown_rx.clone(),
    ));
    let l2_task = tokio::spawn({
        let (client, shutdown) = (redis.clone(), shutdown_rx.clone());
        async move { l2.connect(client, shutdown).await }
    });
    let bundle_task = tokio::spawn(bundles::follow(
        state.clone(),
        engine,
        config.trusted_keys.clone(),
        config.data_dir.clone(),
        Duration::from_millis(config.bundle_poll_ms),
        shutdown_rx.clone(),
    ));
    let snapshots = tokio::spawn(bundles::snapshot_facts(
        state.clone(),
        config.data_dir.clone(),
        shutdown_rx.clone(),
    ));
    let poller = tokio::spawn(poll_while_stale(state.clone(), shutdown_rx.clone()));
    let follower = tokio::spawn(stream::follow(state.clone(), redis, shutdown_rx.clone()));
    let clock_task = tokio::spawn(follow_clock(
        state.clone(),
        config.follow_clock,
        Duration::from_millis(config.bundle_poll_ms.min(1_000)),
        shutdown_rx.clone(),
    ));
    let listener = tokio::net::TcpListener::bind(config.listen_addr)
        .await
        .context("bind")?;
    tracing::info!(addr = %config.listen_addr, edge_id = %config.edge_id, "edge listening");
    axum::serve(listener, router::app(state))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("serve")?;
    let _ = shutdown_tx.send(true);
    let _ = tokio::join!(
        bundle_task,
        follower,
        snapshots,
        poller,
        l2_task,
        flusher,
        clock_task
    );
    tracing::info!("edge stopped");
    Ok(())
}

/// Development: reads the control plane's clock every `every` and follows its offset.
async fn follow_clock(
    state: EdgeState,
    enabled: bool,
    every: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    if !enabled {
        return;
    }
    loop {
        match state.upstream.clock().await {
            Ok(c) => {
                if c.offset_ms > crate::clock::offset_ms() {
                    tracing::info!(offset_ms = c.offset_ms, "following the development clock");
                }
                crate::clock::follow(c.offset_ms);
            }
            Err(e) => tracing::debug!(error = %e, "control plane clock not read"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
    }
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

//! The transactional outbox of cf_prod and its relay.
//!
//! A change that another store must learn about writes an outbox row **in the same
//! transaction** as the change ([`enqueue`]); the commit delivers a `NOTIFY` that wakes the
//! relay. The relay claims rows with `FOR UPDATE SKIP LOCKED` (so N control-plane replicas
//! share the work and never double-process), applies each with an idempotent handler, and marks
//! it processed in the claiming transaction. A failing row is retried with exponential backoff
//! (`attempts`, `available_at`, `last_error` record why); nothing is dropped.
//!
//! Topics:
//! * `entitlements.recompute` `{account_id}` — recompute the account's facts; bumps the version
//!   if they changed and enqueues `entitlements.publish` in the same transaction.
//! * `entitlements.publish` `{account_id}` — publish the account's *current* facts to Redis
//!   (stream + L2). Runs only after the facts committed; at-least-once (edges keep the highest
//!   version, so a repeat is harmless).
//! * `billing.schedule` `{subscription…}` — upsert the billing schedule in billing_prod through
//!   its inbox (idempotent by event id, and never applying an older subscription revision).

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgConnection;
use sqlx::postgres::PgListener;
use uuid::Uuid;

use crate::metrics::{Topic, TopicLabels};
use crate::state::AppState;
use crate::{billing, entitlements};

pub const NOTIFY_CHANNEL: &str = "tollgate_outbox";
/// Rows claimed per relay transaction.
pub const CLAIM_BATCH_MAX: i64 = 64;
/// Backoff for a failing row: 2^attempts seconds, capped.
pub const RETRY_DELAY_SECS_MAX: i64 = 300;

pub const TOPIC_RECOMPUTE: &str = "entitlements.recompute";
pub const TOPIC_PUBLISH: &str = "entitlements.publish";
pub const TOPIC_BILLING_SCHEDULE: &str = "billing.schedule";

/// Writes an outbox row in the caller's transaction and notifies the relay on commit.
pub async fn enqueue(
    conn: &mut PgConnection,
    topic: &str,
    payload: &impl Serialize,
    now: DateTime<Utc>,
) -> sqlx::Result<Uuid> {
    let id = Uuid::now_v7();
    let payload = serde_json::to_value(payload).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    sqlx::query(
        "INSERT INTO outbox (id, topic, payload, created_at, available_at) VALUES ($1, $2, $3, $4, $4)",
    )
    .bind(id)
    .bind(topic)
    .bind(payload)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(NOTIFY_CHANNEL)
        .execute(&mut *conn)
        .await?;
    Ok(id)
}

#[derive(Debug, sqlx::FromRow)]
struct Claimed {
    id: Uuid,
    topic: String,
    payload: Value,
    attempts: i32,
}

/// Claims and applies one batch. Returns how many rows were handled (0 = nothing due).
pub async fn relay_once(state: &AppState) -> anyhow::Result<usize> {
    let now = state.clock.now();
    let mut tx = state.cf.begin().await?;
    let rows: Vec<Claimed> = sqlx::query_as(
        "SELECT id, topic, payload, attempts FROM outbox
         WHERE processed_at IS NULL AND available_at <= $1
         ORDER BY available_at, id
         LIMIT $2
         FOR UPDATE SKIP LOCKED",
    )
    .bind(now)
    .bind(CLAIM_BATCH_MAX)
    .fetch_all(&mut *tx)
    .await?;
    let n = rows.len();
    for row in rows {
        let topic = match row.topic.as_str() {
            TOPIC_RECOMPUTE => Topic::EntitlementsRecompute,
            TOPIC_PUBLISH => Topic::EntitlementsPublish,
            TOPIC_BILLING_SCHEDULE => Topic::BillingSchedule,
            _ => Topic::Unknown,
        };
        let labels = TopicLabels { topic };
        // Each row runs under a savepoint so one failure does not undo the others.
        let mut sp = sqlx::Connection::begin(&mut *tx).await?;
        let result = apply(state, &mut sp, row.id, &row.topic, &row.payload, now).await;
        match result {
            Ok(()) => {
                sqlx::query(
                    "UPDATE outbox SET processed_at = $2, attempts = attempts + 1 WHERE id = $1",
                )
                .bind(row.id)
                .bind(now)
                .execute(&mut *sp)
                .await?;
                sp.commit().await?;
                state.metrics.outbox_processed.get_or_create(&labels).inc();
            }
            Err(err) => {
                sp.rollback().await?;
                let delay = 1_i64
                    .checked_shl(row.attempts.clamp(0, 16) as u32)
                    .unwrap_or(RETRY_DELAY_SECS_MAX);
                let delay = delay.min(RETRY_DELAY_SECS_MAX);
                tracing::warn!(outbox_id = %row.id, topic = %row.topic, attempts = row.attempts + 1, error = %err, "outbox event failed; will retry");
                sqlx::query(
                    "UPDATE outbox SET attempts = attempts + 1, last_error = $2, available_at = $3 WHERE id = $1",
                )
                .bind(row.id)
                .bind(format!("{err:#}"))
                .bind(now + TimeDelta::seconds(delay))
                .execute(&mut *tx)
                .await?;
                state.metrics.outbox_failures.get_or_create(&labels).inc();
            }
        }
    }
    tx.commit().await?;
    Ok(n)
}

async fn apply(
    state: &AppState,
    conn: &mut PgConnection,
    event_id: Uuid,
    topic: &str,
    payload: &Value,
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    match topic {
        TOPIC_RECOMPUTE => entitlements::handle_recompute(state, conn, payload, now).await,
        TOPIC_PUBLISH => entitlements::handle_publish(state, conn, payload).await,
        TOPIC_BILLING_SCHEDULE => {
            billing::handle_schedule_event(state, event_id, payload, now).await
        }
        other => anyhow::bail!("unknown outbox topic {other}"),
    }
}

/// The relay loop: drains due rows, then waits for a NOTIFY, an in-process wake-up, or the
/// poll interval (which also picks up rows whose backoff ended).
pub async fn run_relay(
    state: AppState,
    poll: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut listener = match PgListener::connect_with(&state.cf).await {
        Ok(mut l) => match l.listen(NOTIFY_CHANNEL).await {
            Ok(()) => Some(l),
            Err(e) => {
                tracing::warn!(error = %e, "LISTEN failed; relay falls back to polling");
                None
            }
        },
        Err(e) => {
            tracing::warn!(error = %e, "no listener connection; relay falls back to polling");
            None
        }
    };
    loop {
        if *shutdown.borrow() {
            return;
        }
        match relay_once(&state).await {
            Ok(n) if n > 0 => continue,
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "outbox relay pass failed"),
        }
        let notified = async {
            match listener.as_mut() {
                Some(l) => {
                    if l.recv().await.is_err() {
                        // The listener reconnects on the next recv; avoid a hot loop meanwhile.
                        tokio::time::sleep(poll).await;
                    }
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = notified => {}
            _ = state.outbox_wake.notified() => {}
            _ = tokio::time::sleep(poll) => {}
            _ = shutdown.changed() => return,
        }
    }
}

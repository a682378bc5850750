//! The relay: claims due rows, hands each to its topic's consumer, backs failures off.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use sqlx::PgConnection;
use sqlx::postgres::PgListener;

use super::{Delivery, Host, NOTIFY_CHANNEL, Topic};
use crate::ids::EventId;

/// Rows claimed per relay transaction.
pub const CLAIM_BATCH_MAX: i64 = 64;
/// Backoff for a failing row: 2^attempts seconds, capped.
pub const RETRY_DELAY_SECS_MAX: i64 = 300;

#[derive(Debug, sqlx::FromRow)]
struct Claimed {
    id: EventId,
    topic: Topic,
    payload: serde_json::Value,
    attempts: i32,
}

/// Which topics one relay loop claims. A process runs one loop per lane over the same table,
/// so a change the edges wait for (a few milliseconds of work) never queues behind slower
/// work of other topics claimed first (a billing schedule's invoice, a burst of renewals).
/// Lanes split topics, never one topic, so each topic's rows are still taken in order.
#[derive(Debug, Clone, Copy)]
pub struct Lane {
    pub name: &'static str,
    topics: &'static [Topic],
    /// The lane claims every topic *but* `topics`.
    except: bool,
}

impl Lane {
    /// Every topic.
    pub const ALL: Lane = Lane {
        name: "all",
        topics: &[],
        except: true,
    };

    /// Only `topics`.
    pub const fn only(name: &'static str, topics: &'static [Topic]) -> Self {
        Self {
            name,
            topics,
            except: false,
        }
    }

    /// Every topic but `topics` (the rest next to [`Lane::only`] the same list).
    pub const fn except(name: &'static str, topics: &'static [Topic]) -> Self {
        Self {
            name,
            topics,
            except: true,
        }
    }

    fn topic_names(&self) -> Vec<&'static str> {
        self.topics.iter().map(|t| t.as_str()).collect()
    }
}

/// Claims and applies one batch of any topic. Returns how many rows were handled (0 = nothing
/// due).
pub async fn relay_once<H: Host>(host: &H) -> anyhow::Result<usize> {
    relay_lane_once(host, Lane::ALL).await
}

/// Claims and applies one batch of `lane`'s topics. Returns how many rows were handled.
pub async fn relay_lane_once<H: Host>(host: &H, lane: Lane) -> anyhow::Result<usize> {
    let now = host.now();
    let mut tx = host.pool().begin().await?;
    let rows: Vec<Claimed> = sqlx::query_as(
        "SELECT id, topic, payload, attempts FROM outbox
         WHERE processed_at IS NULL AND available_at <= $1
           AND (topic = ANY($3)) <> $4
         ORDER BY available_at, id
         LIMIT $2
         FOR UPDATE SKIP LOCKED",
    )
    .bind(now)
    .bind(CLAIM_BATCH_MAX)
    .bind(lane.topic_names())
    .bind(lane.except)
    .fetch_all(&mut *tx)
    .await?;
    let n = rows.len();
    let mut rows = rows;
    let mut after_commit = Vec::new();
    if n == 1
        && let Some(row) = rows.pop()
    {
        // A pass of one row (the usual case: one change, alone) runs it without a savepoint:
        // two round trips fewer on the way every change takes to the edges. Its failure rolls
        // the whole transaction back and is recorded after it.
        let delivery = Delivery::new(row.id, row.topic, row.payload.clone(), now);
        match consume(host, &mut tx, &delivery).await {
            Ok(()) => {
                mark_done(&mut tx, row.id, now).await?;
                tx.commit().await?;
                host.count(row.topic, true);
                after_commit.extend(delivery.take_after_commit());
            }
            Err(err) => {
                tx.rollback().await?;
                let mut conn = host.pool().acquire().await?;
                record_failure(&mut conn, &row, &err, now).await?;
                host.count(row.topic, false);
            }
        }
    } else {
        for row in rows {
            let delivery = Delivery::new(row.id, row.topic, row.payload.clone(), now);
            // Each row runs under a savepoint so one failure does not undo the others.
            let mut sp = sqlx::Connection::begin(&mut *tx).await?;
            match consume(host, &mut sp, &delivery).await {
                Ok(()) => {
                    mark_done(&mut sp, row.id, now).await?;
                    sp.commit().await?;
                    host.count(row.topic, true);
                    after_commit.extend(delivery.take_after_commit());
                }
                Err(err) => {
                    sp.rollback().await?;
                    record_failure(&mut tx, &row, &err, now).await?;
                    host.count(row.topic, false);
                }
            }
        }
        tx.commit().await?;
    }
    // The deliveries' fast paths, now that their writes are durable (in order, before the next
    // pass: a fast path marks its durable twin done first).
    for work in after_commit {
        work.await;
    }
    Ok(n)
}

/// Hands a delivery to its topic's consumer.
async fn consume<H: Host>(
    host: &H,
    conn: &mut PgConnection,
    delivery: &Delivery,
) -> anyhow::Result<()> {
    match host.consumers().of(delivery.topic) {
        Some(consume) => consume(host, conn, delivery).await,
        None => Err(anyhow::anyhow!(
            "no consumer registered for {}",
            delivery.topic.as_str()
        )),
    }
}

async fn mark_done(conn: &mut PgConnection, id: EventId, now: DateTime<Utc>) -> sqlx::Result<()> {
    sqlx::query("UPDATE outbox SET processed_at = $2, attempts = attempts + 1 WHERE id = $1")
        .bind(id)
        .bind(now)
        .execute(conn)
        .await
        .map(drop)
}

/// Records a failed delivery and when to retry it (2^attempts seconds, capped), unless another
/// relay took it meanwhile (a one-row pass has rolled back, releasing the row, before this):
/// then that relay's outcome stands and this one is not counted twice.
async fn record_failure(
    conn: &mut PgConnection,
    row: &Claimed,
    err: &anyhow::Error,
    now: DateTime<Utc>,
) -> sqlx::Result<()> {
    let delay = 1_i64
        .checked_shl(row.attempts.clamp(0, 16).unsigned_abs())
        .unwrap_or(RETRY_DELAY_SECS_MAX)
        .min(RETRY_DELAY_SECS_MAX);
    tracing::warn!(outbox_id = %row.id, topic = row.topic.as_str(), attempts = row.attempts + 1, error = %err, "outbox event failed; will retry");
    sqlx::query(
        "UPDATE outbox SET attempts = attempts + 1, last_error = $2, available_at = $3
          WHERE id = $1 AND processed_at IS NULL AND attempts = $4",
    )
    .bind(row.id)
    .bind(format!("{err:#}"))
    .bind(now + TimeDelta::seconds(delay))
    .bind(row.attempts)
    .execute(conn)
    .await
    .map(drop)
}

/// The relay loop: drains due rows, then waits for a NOTIFY, an in-process wake-up, or the
/// poll interval (which also picks up rows whose backoff ended).
pub async fn run_relay<H: Host>(
    host: H,
    lane: Lane,
    poll: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut listener = match PgListener::connect_with(host.pool()).await {
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
        // Registered before the pass: a wake-up while it runs (`notify_waiters`, which every
        // lane of the process hears) is not lost.
        let woken = host.wake().notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        match relay_lane_once(&host, lane).await {
            Ok(n) if n > 0 => continue,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), lane = lane.name, "outbox relay pass failed");
            }
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
            _ = woken => {}
            _ = tokio::time::sleep(poll) => {}
            _ = shutdown.changed() => return,
        }
    }
}

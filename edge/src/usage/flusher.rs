//! The flusher: the oldest synced, unacknowledged events go to the control plane in batches
//! (idempotency key from the edge id and the seq range); what it rejects, and records this
//! edge cannot use, are dead-lettered; a batch refused whole is narrowed down to its poison.
//! See "Flusher", "Poison never blocks" and "Crashes" in [`super`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use tollgate_protocol::usage::{UsageAck, UsageBatch};

use crate::dead_letter::DeadEntry;
use crate::upstream::{Upstream, UpstreamError};

use super::counters::Counted;
use super::{SWEEP_MS, Usage, decode, lock};

/// Most events in one flush to the control plane.
pub const FLUSH_EVENTS_MAX: usize = 1_000;
/// Most payload bytes in one flush.
pub const FLUSH_BYTES_MAX: usize = 1 << 20;
// A batch of both bounds fits what the control plane accepts (the protocol's batch limits, with
// room for the JSON around the events).
const _: () = assert!(
    FLUSH_EVENTS_MAX <= tollgate_protocol::usage::limits::BATCH_EVENTS_MAX
        && FLUSH_BYTES_MAX * 2 <= tollgate_protocol::usage::limits::BATCH_BODY_BYTES_MAX
);
pub const BACKOFF_MS_MIN: u64 = 100;
pub const BACKOFF_MS_MAX: u64 = 10_000;
/// A single event the control plane refuses as a batch this many times in a row is
/// dead-lettered.
pub const REFUSALS_BEFORE_DEAD_LETTER: u32 = 3;

/// How flushing goes, for `/v1/status` and the batch size.
#[derive(utoipa::ToSchema, Debug, Clone, serde::Serialize)]
pub struct FlushStatus {
    /// Events per batch now (halved while a refused batch is being narrowed down).
    pub batch_events_max: usize,
    pub last_ok_at_ms: Option<i64>,
    pub last_error: Option<String>,
    pub consecutive_failures: u64,
    /// (seq, refusals) of a single event the control plane keeps refusing.
    #[serde(skip)]
    pub(super) refused_head: Option<(u64, u32)>,
}

/// What one flush did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flushed {
    /// Nothing waits.
    Idle,
    /// `sent` events answered by the control plane (stored, duplicates or rejected),
    /// `dead_lettered` set aside; records up to the batch's end are gone from the log.
    Batch { sent: usize, dead_lettered: usize },
    /// The control plane refused the batch as a whole: the next one is half as large.
    Narrowed { batch_events_max: usize },
}

impl Usage {
    /// Notes a flush failure for `/v1/status`.
    pub(super) fn flush_failed(&self, e: &UpstreamError) {
        let mut f = lock(&self.flush);
        f.last_error = Some(e.to_string());
        f.consecutive_failures = f.consecutive_failures.saturating_add(1);
    }

    /// One flush: sends the oldest synced batch, dead-letters what cannot go on, acks it.
    pub async fn flush_once(
        &self,
        upstream: &Upstream,
        edge_id: &str,
    ) -> Result<Flushed, UpstreamError> {
        let limit = lock(&self.flush).batch_events_max;
        let records = lock(&self.log).unacked(limit, FLUSH_BYTES_MAX);
        let (Some(first), Some(last)) = (records.first(), records.last()) else {
            return Ok(Flushed::Idle);
        };
        let (first, upto) = (first.seq, last.seq + 1);
        let mut events = Vec::with_capacity(records.len());
        let mut seqs = Vec::with_capacity(records.len());
        let mut dead = Vec::new();
        for r in &records {
            match decode(r) {
                Ok(e) => {
                    events.push(e);
                    seqs.push(r.seq);
                }
                Err(d) => {
                    tracing::error!(seq = r.seq, code = %d.code, detail = %d.detail, "unusable usage record: dead-lettered");
                    dead.push(*d);
                }
            }
        }
        let mut aggregates = Vec::new();
        let mut late = 0;
        if !events.is_empty() {
            let batch = UsageBatch {
                batch_id: batch_id(edge_id, first, upto),
                edge_id: edge_id.to_owned(),
                events,
            };
            match upstream.flush_usage(&batch).await {
                Ok(ack) => {
                    let ack: UsageAck = ack;
                    late = ack.late.len();
                    for r in ack.rejected {
                        let i = r.index as usize;
                        let (Some(e), Some(seq)) = (batch.events.get(i), seqs.get(i)) else {
                            tracing::error!(
                                index = r.index,
                                "the control plane rejected an event the batch does not hold"
                            );
                            continue;
                        };
                        tracing::warn!(seq, account_id = %e.account, id = %e.id, code = %r.code, "usage event rejected by the control plane: dead-lettered");
                        let mut d = DeadEntry::new(*seq, r.code, r.detail);
                        d.event = Some(e.clone());
                        dead.push(d);
                    }
                    aggregates = ack.aggregates;
                }
                Err(UpstreamError::Refused { status, detail }) => {
                    self.metrics.flush_refusals.inc();
                    let mut f = lock(&self.flush);
                    f.last_error = Some(format!("batch refused: {status} {detail}"));
                    if records.len() > 1 {
                        f.batch_events_max = (records.len() / 2).max(1);
                        tracing::warn!(
                            status,
                            events = records.len(),
                            next = f.batch_events_max,
                            "usage batch refused as a whole: narrowing it down"
                        );
                        return Ok(Flushed::Narrowed {
                            batch_events_max: f.batch_events_max,
                        });
                    }
                    let refusals = match f.refused_head {
                        Some((seq, n)) if seq == first => n + 1,
                        _ => 1,
                    };
                    f.refused_head = Some((first, refusals));
                    if refusals < REFUSALS_BEFORE_DEAD_LETTER {
                        return Err(UpstreamError::Refused { status, detail });
                    }
                    drop(f);
                    let e = &batch.events[0];
                    tracing::error!(seq = first, account_id = %e.account, id = %e.id, status, %detail, "the control plane keeps refusing this usage event: dead-lettered");
                    let mut d =
                        DeadEntry::new(first, "batch_refused", format!("{status} {detail}"));
                    d.event = Some(e.clone());
                    dead.push(d);
                }
                Err(e) => return Err(e),
            }
            events = batch.events;
        }
        let dead_lettered = dead.len();
        if !dead.is_empty() {
            // Durably set aside before the log forgets them.
            let d = self.dead.clone();
            let appended = tokio::task::spawn_blocking(move || lock(&d).append(dead))
                .await
                .map_err(|e| UpstreamError::Unavailable(e.to_string()))?
                .map_err(|e| UpstreamError::Unavailable(format!("dead-letter file: {e}")))?;
            self.metrics.dead_lettered.inc_by(appended.written as u64);
            self.metrics
                .dead_letter_dropped
                .inc_by(appended.dropped as u64);
        }
        // The ack cursor is written and fsynced: off the async workers.
        let log = self.log.clone();
        tokio::task::spawn_blocking(move || lock(&log).ack(upto))
            .await
            .map_err(|e| UpstreamError::Unavailable(e.to_string()))?
            .map_err(|e| UpstreamError::Unavailable(e.to_string()))?;
        // The aggregates first, then the pending counts: a check in between counts these events
        // twice (denies early), never not at all.
        self.remember(aggregates);
        let counted: Vec<Counted> = events.iter().map(Counted::of).collect();
        let empty = lock(&self.log).pending_records() == 0;
        self.counters.acked(&counted, empty);
        self.metrics.events_flushed.inc_by(events.len() as u64);
        if late > 0 {
            tracing::warn!(
                late,
                "the control plane counted some usage in the current period (past its grace window)"
            );
        }
        {
            let mut f = lock(&self.flush);
            f.batch_events_max = (f.batch_events_max * 2).min(FLUSH_EVENTS_MAX);
            f.refused_head = None;
            f.last_ok_at_ms = Some(crate::clock::now_ms());
            f.last_error = None;
            f.consecutive_failures = 0;
        }
        self.refresh_gauges();
        Ok(Flushed::Batch {
            sent: events.len(),
            dead_lettered,
        })
    }
}

/// The flush's idempotency key: the same batch (edge, seq range) always has the same key.
pub fn batch_id(edge_id: &str, first: u64, upto: u64) -> uuid::Uuid {
    use sha2::Digest;
    let digest = sha2::Sha256::new()
        .chain_update(edge_id.as_bytes())
        .chain_update(first.to_le_bytes())
        .chain_update(upto.to_le_bytes())
        .finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

/// What the flusher needs from the edge it runs in: the control plane it flushes to (and
/// gives leases back to), and this edge's id. The edge's state implements it: the usage store
/// never depends on the state, the state depends on the store.
pub trait FlushTarget: Send + Sync + 'static {
    fn upstream(&self) -> &Upstream;
    fn edge_id(&self) -> &str;
}

/// Flushes until shutdown: after each commit, or every `interval` at the latest; sweeps idle
/// leases every [`SWEEP_MS`].
pub async fn flush_loop(
    state: impl FlushTarget,
    usage: Arc<Usage>,
    interval: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut backoff = BACKOFF_MS_MIN;
    let mut swept = Instant::now();
    loop {
        if swept.elapsed() >= Duration::from_millis(SWEEP_MS) {
            swept = Instant::now();
            let idle = usage.take_leases(false);
            usage
                .give_back(state.upstream(), state.edge_id(), idle)
                .await;
        }
        match usage.flush_once(state.upstream(), state.edge_id()).await {
            Ok(Flushed::Batch { .. } | Flushed::Narrowed { .. }) => {
                backoff = BACKOFF_MS_MIN;
            }
            Ok(Flushed::Idle) => {
                backoff = BACKOFF_MS_MIN;
                tokio::select! {
                    _ = usage.committed.notified() => {}
                    _ = tokio::time::sleep(interval) => {}
                    _ = shutdown.changed() => break,
                }
            }
            Err(e) => {
                usage.metrics.flush_failures.inc();
                usage.flush_failed(&e);
                // Full jitter: anywhere in [0, backoff].
                let wait = rand::random_range(0..=backoff);
                tracing::warn!(error = %e, retry_ms = wait, pending = usage.pending_events(), "usage flush failed");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
                    _ = shutdown.changed() => break,
                }
                backoff = (backoff * 2).min(BACKOFF_MS_MAX);
            }
        }
    }
    usage
        .release_unused(state.upstream(), state.edge_id())
        .await;
}

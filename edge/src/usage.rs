//! Metered usage at the edge: `POST /v1/usage` → durable log (group commit, fsync before the
//! 202) → flusher → control plane; and the usage a metered check compares with its quota.
//!
//! * **Group commit.** Requests hand their encoded events to one writer thread through a
//!   channel. The writer takes whatever is queued (a group), appends every request's events
//!   to the [`UsageLog`], `fdatasync`s once, then answers every request of the group. The
//!   commit window is [`COMMIT_WINDOW`]: zero added delay — a group is what arrived while the
//!   previous fsync ran, so the window is one fsync long under load and nothing waits when
//!   idle. At most [`GROUP_EVENTS_MAX`] events share one fsync.
//! * **Flusher.** Sends the oldest synced, un-acknowledged events in batches of at most
//!   [`FLUSH_EVENTS_MAX`] with an idempotency key derived from the edge id and the batch's seq
//!   range (a retry after a crash sends the same key); the control plane deduplicates by event
//!   id. Events are deleted (acked in the log) only after the control plane's answer.
//!   Failures back off exponentially with full jitter, from [`BACKOFF_MS_MIN`] to
//!   [`BACKOFF_MS_MAX`].
//! * **Full buffer.** When un-acknowledged bytes reach the bound, new usage gets `503` with
//!   `Retry-After`, a metric and a log line — never a silent drop.
//! * **Metered checks.** The usage a check compares with the quota is the last aggregate the
//!   control plane sent (with every flush acknowledgement, and fetched when the edge has none
//!   or it is older than [`AGGREGATE_TTL_MS`]) plus, for additive aggregations (sum, count),
//!   this edge's events not yet acknowledged.

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tollgate_protocol::AccountId;
use tollgate_protocol::usage::{MeterAggregate, MeterSpec, UsageAck, UsageBatch, UsageEvent};

use crate::usage_log::{LogError, LogOptions, UsageLog};

/// Added delay before a group commits: none (see the module docs).
pub const COMMIT_WINDOW: Duration = Duration::ZERO;
/// Most events one fsync covers.
pub const GROUP_EVENTS_MAX: usize = 8_192;
/// Most events in one flush to the control plane.
pub const FLUSH_EVENTS_MAX: usize = 1_000;
/// Most payload bytes in one flush.
pub const FLUSH_BYTES_MAX: usize = 1 << 20;
pub const BACKOFF_MS_MIN: u64 = 100;
pub const BACKOFF_MS_MAX: u64 = 10_000;
/// An aggregate older than this is refetched by the next metered check of that account.
pub const AGGREGATE_TTL_MS: u64 = 5_000;
/// What `Retry-After` says when the buffer is full, seconds.
pub const FULL_RETRY_AFTER_S: u64 = 5;

/// Why usage could not be stored.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error(
        "the usage buffer is full ({pending_bytes} of {max_pending_bytes} bytes waiting for the control plane)"
    )]
    Full {
        pending_bytes: u64,
        max_pending_bytes: u64,
    },
    #[error("the usage log failed: {0}")]
    Failed(String),
}

struct AppendRequest {
    payloads: Vec<Vec<u8>>,
    events: Vec<(AccountId, String, i64, i64)>,
    reply: tokio::sync::oneshot::Sender<Result<Range<u64>, StoreError>>,
}

/// Not-yet-acknowledged usage of one (account, meter, period start).
type PendingKey = (AccountId, String, i64);

/// This edge's unacknowledged usage of one key: quantities summed, events counted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    pub quantity: i64,
    pub events: i64,
}

impl Pending {
    fn add(&mut self, quantity: i64) {
        self.quantity += quantity;
        self.events += 1;
    }
}

/// A slice of an account's quota this edge holds for one meter and period: it may let
/// `granted` units be used here; `used` counts the usage stored here since the lease began.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub granted: i64,
    pub used: i64,
    /// When the control plane last had nothing left to grant: checks deny without asking
    /// again for [`EXHAUSTED_RECHECK_MS`].
    pub exhausted_at: Option<Instant>,
}

/// How long an exhausted quota is trusted before the control plane is asked again, ms.
pub const EXHAUSTED_RECHECK_MS: u64 = 1_000;

impl Lease {
    pub fn remaining(&self) -> i64 {
        self.granted - self.used
    }
}

struct Aggregate {
    value: MeterAggregate,
    fetched: Instant,
}

/// The edge's usage store: log, writer thread, pending counters, last aggregates.
pub struct Usage {
    log: Arc<Mutex<UsageLog>>,
    writer: mpsc::Sender<AppendRequest>,
    counters: Arc<Counters>,
    aggregates: Mutex<HashMap<(AccountId, String), Aggregate>>,
    /// Wakes the flusher when new events were committed.
    pub committed: Arc<tokio::sync::Notify>,
    pub metrics: UsageMetrics,
    pub max_pending_bytes: u64,
}

/// Counters the usage path keeps (registered in, and rendered by,
/// [`crate::metrics::EdgeMetrics`]; clones share the values).
#[derive(Default, Clone)]
pub struct UsageMetrics {
    pub events_accepted: prometheus_client::metrics::counter::Counter,
    pub events_invalid: prometheus_client::metrics::counter::Counter,
    pub events_refused_full: prometheus_client::metrics::counter::Counter,
    pub events_flushed: prometheus_client::metrics::counter::Counter,
    pub flush_failures: prometheus_client::metrics::counter::Counter,
    pub commit_groups: prometheus_client::metrics::counter::Counter,
    pub pending_events: prometheus_client::metrics::gauge::Gauge,
    pub pending_bytes: prometheus_client::metrics::gauge::Gauge,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The event's (account, meter, quantity, timestamp) for the pending counters.
fn counted(e: &UsageEvent) -> (AccountId, String, i64, i64) {
    (e.account, e.meter.clone(), e.quantity, e.timestamp_ms)
}

fn set_gauges(metrics: &UsageMetrics, log: &UsageLog) {
    let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    metrics.pending_events.set(gauge(log.pending_records()));
    metrics.pending_bytes.set(gauge(log.pending_bytes()));
}

impl Usage {
    /// Opens (recovering) the log under `dir` and starts the writer thread. `meters` gives the
    /// period of each meter, to key pending counters by period.
    pub fn open(
        dir: &Path,
        max_pending_bytes: u64,
        meters: impl Fn(&str) -> Option<MeterSpec> + Send + Sync + 'static,
        metrics: UsageMetrics,
    ) -> Result<Arc<Self>, LogError> {
        let (log, report) = UsageLog::open(
            dir,
            LogOptions {
                max_pending_bytes,
                ..LogOptions::default()
            },
        )?;
        tracing::info!(
            records = report.records,
            torn_tail_bytes = report.torn_tail_bytes,
            corrupt_records = report.corrupt_records,
            "usage log recovered"
        );
        let counters = Arc::new(Counters {
            pending: Mutex::default(),
            leases: Mutex::default(),
            meters: Box::new(meters),
        });
        // Replayed from the log's memory, not copied: it may hold up to the buffer bound.
        let recovered: Vec<_> = log
            .synced()
            .filter_map(|r| postcard::from_bytes::<UsageEvent>(&r.payload).ok())
            .map(|e| counted(&e))
            .collect();
        counters.committed(&recovered);
        let log = Arc::new(Mutex::new(log));
        let (writer, rx) = mpsc::channel::<AppendRequest>();
        let committed = Arc::new(tokio::sync::Notify::new());
        let usage = Arc::new(Self {
            log: log.clone(),
            writer,
            counters: counters.clone(),
            aggregates: Mutex::default(),
            committed: committed.clone(),
            metrics: metrics.clone(),
            max_pending_bytes,
        });
        std::thread::Builder::new()
            .name("usage-writer".into())
            .spawn(move || write_groups(&rx, &log, &counters, &committed, &metrics))
            .map_err(LogError::Io)?;
        Ok(usage)
    }

    /// Stores events durably: returns once they are fsynced (their seqs), or why not.
    pub async fn store(&self, events: &[UsageEvent]) -> Result<Range<u64>, StoreError> {
        let payloads = events
            .iter()
            .map(|e| postcard::to_allocvec(e).map_err(|e| StoreError::Failed(e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        let (reply, rx) = tokio::sync::oneshot::channel();
        let req = AppendRequest {
            payloads,
            events: events.iter().map(counted).collect(),
            reply,
        };
        self.writer
            .send(req)
            .map_err(|_| StoreError::Failed("the usage writer stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Failed("the usage writer stopped".into()))?
    }

    /// Un-acknowledged usage of this edge for `meter` in the period starting at `period_start`.
    pub fn pending(&self, account: AccountId, meter: &str, period_start: i64) -> Pending {
        lock(&self.counters.pending)
            .get(&(account, meter.to_owned(), period_start))
            .copied()
            .unwrap_or_default()
    }

    /// The last aggregate the control plane sent for the period holding `now_ms`, if it is
    /// younger than [`AGGREGATE_TTL_MS`].
    pub fn fresh_aggregate(
        &self,
        account: AccountId,
        meter: &str,
        now_ms: i64,
    ) -> Option<MeterAggregate> {
        self.last_aggregate(account, meter, now_ms)
            .filter(|(_, age)| *age < Duration::from_millis(AGGREGATE_TTL_MS))
            .map(|(a, _)| a)
    }

    /// The last aggregate for the period holding `now_ms`, however old, with its age: what a
    /// check uses while the control plane cannot be asked.
    pub fn last_aggregate(
        &self,
        account: AccountId,
        meter: &str,
        now_ms: i64,
    ) -> Option<(MeterAggregate, Duration)> {
        let aggregates = lock(&self.aggregates);
        let a = aggregates.get(&(account, meter.to_owned()))?;
        let current = a.value.period_start_ms <= now_ms && now_ms < a.value.period_end_ms;
        current.then(|| (a.value.clone(), a.fetched.elapsed()))
    }

    /// Remembers aggregates the control plane sent (a newer period or a larger event count
    /// replaces what is held).
    pub fn remember(&self, aggregates: impl IntoIterator<Item = MeterAggregate>) {
        let mut held = lock(&self.aggregates);
        for a in aggregates {
            let key = (a.account, a.meter.clone());
            let replace = held.get(&key).is_none_or(|h| {
                a.period_start_ms > h.value.period_start_ms
                    || (a.period_start_ms == h.value.period_start_ms && a.events >= h.value.events)
            });
            if replace {
                held.insert(
                    key,
                    Aggregate {
                        value: a,
                        fetched: Instant::now(),
                    },
                );
            }
        }
    }

    /// The lease held for a key, if any.
    pub fn lease(&self, account: AccountId, meter: &str, period_start: i64) -> Option<Lease> {
        lock(&self.counters.leases)
            .get(&(account, meter.to_owned(), period_start))
            .copied()
    }

    /// Adds a grant to a lease, creating it (its `used` starting at this edge's pending usage
    /// of the key, which no lease covered yet) when new. Returns the lease after.
    pub fn add_grant(
        &self,
        account: AccountId,
        meter: &str,
        period_start: i64,
        granted: i64,
    ) -> Lease {
        let key = (account, meter.to_owned(), period_start);
        let pending = self.pending(account, meter, period_start).quantity;
        let mut leases = lock(&self.counters.leases);
        let l = leases.entry(key).or_insert(Lease {
            granted: 0,
            used: pending,
            exhausted_at: None,
        });
        l.granted += granted;
        l.exhausted_at = (granted == 0).then(Instant::now);
        *l
    }

    /// Every lease's unused units, removing the leases: what a stopping edge gives back.
    pub fn take_unused(&self) -> Vec<(AccountId, String, i64, i64)> {
        lock(&self.counters.leases)
            .drain()
            .filter(|(_, l)| l.remaining() > 0)
            .map(|((a, m, start), l)| (a, m, start, l.remaining()))
            .collect()
    }

    /// Gives every unused lease back to the control plane (best effort: a lease not given
    /// back only leaves its units unused until the period ends).
    pub async fn release_unused(&self, upstream: &crate::upstream::Upstream, edge_id: &str) {
        for (account, meter, period_start_ms, units) in self.take_unused() {
            let rel = tollgate_protocol::usage::LeaseRelease {
                account,
                meter,
                edge_id: edge_id.to_owned(),
                period_start_ms,
                units,
            };
            if let Err(e) = upstream.release(&rel).await {
                tracing::warn!(account_id = %account, units, error = %e, "lease not given back");
            }
        }
    }

    /// Events waiting for the control plane.
    pub fn pending_events(&self) -> u64 {
        lock(&self.log).pending_records()
    }

    /// One flush: sends the oldest synced batch, acks it on success. `Ok(0)` when nothing
    /// waits.
    pub async fn flush_once(
        &self,
        upstream: &crate::upstream::Upstream,
        edge_id: &str,
    ) -> Result<usize, crate::upstream::UpstreamError> {
        let records = lock(&self.log).unacked(FLUSH_EVENTS_MAX, FLUSH_BYTES_MAX);
        let (Some(first), Some(last)) = (records.first(), records.last()) else {
            return Ok(0);
        };
        let (first, upto) = (first.seq, last.seq + 1);
        let mut events = Vec::with_capacity(records.len());
        for r in &records {
            match postcard::from_bytes::<UsageEvent>(&r.payload) {
                Ok(e) => events.push(e),
                // The log's checksum passed, so this is a bug or a version skew, not damage.
                Err(e) => tracing::error!(seq = r.seq, error = %e, "undecodable usage record"),
            }
        }
        let batch = UsageBatch {
            batch_id: batch_id(edge_id, first, upto),
            edge_id: edge_id.to_owned(),
            events,
        };
        let ack: UsageAck = upstream.flush_usage(&batch).await?;
        // The ack cursor is written and fsynced: off the async workers.
        let log = self.log.clone();
        tokio::task::spawn_blocking(move || lock(&log).ack(upto))
            .await
            .map_err(|e| crate::upstream::UpstreamError::Unavailable(e.to_string()))?
            .map_err(|e| crate::upstream::UpstreamError::Unavailable(e.to_string()))?;
        // The aggregates first, then the pending counts: a check in between counts these events
        // twice (denies early), never not at all.
        self.remember(ack.aggregates);
        self.counters.acked(&batch.events);
        self.metrics
            .events_flushed
            .inc_by(batch.events.len() as u64);
        if !ack.late.is_empty() || !ack.rejected.is_empty() {
            tracing::warn!(
                late = ack.late.len(),
                rejected = ack.rejected.len(),
                "the control plane counted some usage in another period or in no meter"
            );
        }
        set_gauges(&self.metrics, &lock(&self.log));
        Ok(batch.events.len())
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

/// The counts stored usage keeps, by (account, meter, period start): what is not yet
/// acknowledged, and the leases it uses.
struct Counters {
    pending: Mutex<HashMap<PendingKey, Pending>>,
    leases: Mutex<HashMap<PendingKey, Lease>>,
    /// The meters of the bundle in force (for their periods).
    meters: Box<MetersFn>,
}

/// The meter a key names, in the bundle in force.
type MetersFn = dyn Fn(&str) -> Option<MeterSpec> + Send + Sync;

impl Counters {
    fn key(&self, account: AccountId, meter: &str, ts: i64) -> PendingKey {
        let start = (self.meters)(meter).map_or(0, |m| m.period.bounds(ts).0);
        (account, meter.to_owned(), start)
    }

    /// Events stored durably (or recovered from the log at start).
    fn committed(&self, events: &[(AccountId, String, i64, i64)]) {
        let mut pending = lock(&self.pending);
        let mut leases = lock(&self.leases);
        for (account, meter, quantity, ts) in events {
            let key = self.key(*account, meter, *ts);
            if let Some(l) = leases.get_mut(&key) {
                l.used += *quantity;
            }
            pending.entry(key).or_default().add(*quantity);
        }
    }

    /// Events the control plane acknowledged: no longer this edge's alone.
    fn acked(&self, events: &[UsageEvent]) {
        let mut pending = lock(&self.pending);
        for e in events {
            let key = self.key(e.account, &e.meter, e.timestamp_ms);
            if let Some(p) = pending.get_mut(&key) {
                p.quantity -= e.quantity;
                p.events -= 1;
                if p.events <= 0 {
                    pending.remove(&key);
                }
            }
        }
    }
}

/// The writer thread: one fsync per group of queued requests.
fn write_groups(
    rx: &mpsc::Receiver<AppendRequest>,
    log: &Mutex<UsageLog>,
    counters: &Counters,
    committed: &tokio::sync::Notify,
    metrics: &UsageMetrics,
) {
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        let mut events = group[0].payloads.len();
        while events < GROUP_EVENTS_MAX {
            match rx.try_recv() {
                Ok(req) => {
                    events += req.payloads.len();
                    group.push(req);
                }
                Err(_) => break,
            }
        }
        let mut log = lock(log);
        let mut results = Vec::with_capacity(group.len());
        for req in &group {
            let refs: Vec<&[u8]> = req.payloads.iter().map(Vec::as_slice).collect();
            results.push(log.append(&refs).map_err(|e| match e {
                LogError::Full {
                    pending_bytes,
                    max_pending_bytes,
                } => StoreError::Full {
                    pending_bytes,
                    max_pending_bytes,
                },
                other => StoreError::Failed(other.to_string()),
            }));
        }
        let synced = if results.iter().any(Result::is_ok) {
            log.sync().map_err(|e| StoreError::Failed(e.to_string()))
        } else {
            Ok(())
        };
        set_gauges(metrics, &log);
        drop(log);
        metrics.commit_groups.inc();
        for (req, result) in group.into_iter().zip(results) {
            let result = match (&synced, result) {
                (Ok(()), Ok(seqs)) => {
                    counters.committed(&req.events);
                    Ok(seqs)
                }
                (Err(e), Ok(_)) => Err(e.clone()),
                (_, Err(e)) => Err(e),
            };
            let _ = req.reply.send(result);
        }
        committed.notify_one();
    }
}

/// Flushes until shutdown: after each commit, or every `interval` at the latest.
pub async fn flush_loop(
    state: crate::state::EdgeState,
    usage: Arc<Usage>,
    interval: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut backoff = BACKOFF_MS_MIN;
    loop {
        match usage.flush_once(&state.upstream, &state.edge_id).await {
            Ok(n) if n > 0 => {
                backoff = BACKOFF_MS_MIN;
                continue;
            }
            Ok(_) => {
                backoff = BACKOFF_MS_MIN;
                tokio::select! {
                    _ = usage.committed.notified() => {}
                    _ = tokio::time::sleep(interval) => {}
                    _ = shutdown.changed() => break,
                }
            }
            Err(e) => {
                usage.metrics.flush_failures.inc();
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
    usage.release_unused(&state.upstream, &state.edge_id).await;
}

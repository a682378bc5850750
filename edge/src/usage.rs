//! Metered usage at the edge: `POST /v1/usage` → durable log (group commit, fsync before the
//! 202) → flusher → control plane; and the usage a metered check compares with its quota.
//!
//! * **Group commit.** Requests hand their encoded events to one writer thread through a
//!   channel. The writer takes whatever is queued (a group), appends every request's events
//!   to the [`UsageLog`], `fdatasync`s once, then answers every request of the group. The
//!   commit window is [`COMMIT_WINDOW`]: zero added delay — a group is what arrived while the
//!   previous fsync ran, so the window is one fsync long under load and nothing waits when
//!   idle. A group stops growing once it holds [`GROUP_EVENTS_MAX`] events (one fsync covers
//!   at most that plus one request's). A request is told its events are stored only after
//!   that fsync, and told they failed only when none were stored.
//! * **Flusher.** Sends the oldest synced, un-acknowledged events in batches of at most
//!   [`FLUSH_EVENTS_MAX`] with an idempotency key derived from the edge id and the batch's seq
//!   range (a retry after a crash sends the same key); the control plane deduplicates by
//!   (account, event id). Events are deleted (acked in the log) only after the control plane's
//!   answer. Unavailability backs off exponentially with full jitter, from [`BACKOFF_MS_MIN`]
//!   to [`BACKOFF_MS_MAX`], forever: nothing is given up while the control plane is away.
//! * **Poison never blocks.** What the control plane rejects event by event (in its ack), and
//!   log records this edge cannot use (undecodable, or breaking the shared bounds of
//!   [`tollgate_protocol::usage::limits`]), go to the [dead-letter file](crate::dead_letter)
//!   before the log forgets them. A batch the control plane refuses as a whole (400, 413,
//!   422) is halved until the refusal is pinned on one event; that event, refused
//!   [`REFUSALS_BEFORE_DEAD_LETTER`] times in a row, is dead-lettered too. The events behind it
//!   flow on.
//! * **Full buffer.** When un-acknowledged bytes reach the bound, new usage gets `503` with
//!   `Retry-After`, a metric and a log line — never a silent drop.
//! * **Metered checks.** The usage a check compares with the quota is the last aggregate the
//!   control plane sent (with every flush acknowledgement, and fetched when the edge has none
//!   or it is older than [`AGGREGATE_TTL_MS`]) plus, for additive aggregations (sum, count),
//!   this edge's events not yet acknowledged.
//! * **Bounded memory.** Pending counters are bounded by the log (each names at least one
//!   un-acknowledged record); aggregates are a cache of at most [`AGGREGATES_MAX`]; leases at
//!   most [`LEASES_MAX`], swept every [`SWEEP_MS`]: a lease idle for [`LEASE_IDLE_MS`] gives
//!   its unused units back. Every counter adds with saturation: no event can make one panic.
//!
//! # Crashes
//!
//! One batch is in flight per edge. After the control plane's answer the flusher, in this
//! order, fsyncs the dead letters, writes the log's ack cursor durably, remembers the
//! aggregates the answer carried, and only then lowers the pending counters: a check in
//! between counts those events twice (denies early), never zero times. A SIGKILL anywhere
//! loses nothing acknowledged and counts nothing twice: an event answered `202` is on disk; an
//! event sent but not acknowledged is sent again, and its (account, id) makes the second
//! delivery a duplicate. At start, recovery truncates a torn tail, rebuilds the pending
//! counters from the un-acknowledged records, and the flusher sends them as soon as the
//! control plane answers.
//!
//! # Quota leases across edges
//!
//! A check of a feature the rules allow with a finite limit (`decide`, in `check.rs`): a
//! `limit` feature denies `denied_quota_exceeded` when the quantity is above the limit; a
//! metered one reads [`usage_of`](Usage::usage_of) (the last aggregate,
//! refetched through `GET /internal/v1/accounts/{id}/usage` when missing or older than
//! [`AGGREGATE_TTL_MS`], plus this edge's unacknowledged usage for `sum` and `count`) into
//! `usage` and `remaining`, then, unless the meter is `soft` (never denies; `remaining` may go
//! negative):
//!
//! * **`sum`: leases** ([`lease_allows`](Usage::lease_allows)). billing_prod
//!   keeps one counter per (account, meter, period) of the units leased out to every edge,
//!   minus those given back (seeded with the period's aggregate on first use), and grants
//!   under its row lock: `need` if it fits the quota (all or nothing), plus as much of `extra`
//!   (the meter's `lease N`, default 100) as still fits. The edge keeps a [`Lease`] per key;
//!   `used` starts at its unacknowledged usage of the key and grows with every event of the
//!   key it commits, checked or not. A check passes without a round trip while
//!   `granted − used ≥ quantity`; otherwise it asks for the shortfall as `need`. A quantity
//!   above the limit is denied without asking; quantity 0 compares the usage read. A grant of
//!   0 denies, and checks needing as much or more deny without asking for
//!   [`EXHAUSTED_RECHECK_MS`]. A lease granted under another quota (a plan change, a new
//!   bundle) is given back before the new quota is used. Idle leases ([`LEASE_IDLE_MS`]) and,
//!   at shutdown, all leases give their unused units back (best effort).
//! * **`count`, `max`, `latest`, `unique_count`** have no lease: the check passes when
//!   `usage + quantity ≤ limit`. So does a `sum` check that cannot lease (no room under
//!   [`LEASES_MAX`], or the control plane unreachable).
//!
//! What this bounds:
//!
//! * **Overspend.** A check reserves nothing: what it allows counts against the lease once the
//!   usage is stored, so checks in flight on one edge may pass against the same units. Over N
//!   edges, checked usage stays within the quota + Σ (checks in flight × their quantity),
//!   whatever the lease size, provided callers report what they checked
//!   (`e2e/tests/quota_across_edges.rs`: 3 edges × 3 workers of quantity 1, at most quota + 9).
//! * **Underspend.** Units leased to an edge that dies without giving them back stay counted
//!   until the period ends: about one lease size per crash. A restarted edge's new lease counts
//!   its recovered unacknowledged usage again (conservative).
//! * **Usage without a check**, or after a denial, is stored and billed, never refused for the
//!   quota. It uses up the reporting edge's lease if it holds one; otherwise it reaches the
//!   counter only through the aggregate a later counter is seeded from.
//! * **Control plane unreachable.** A lease that covers the check keeps answering. Beyond it,
//!   the edge compares with the last aggregate it has for the period, however old (answers
//!   are `stale: true` once it cannot be refetched), plus its own unacknowledged usage: the
//!   overspend is what the other edges used since.
//! * **Without leases** (`count`, `max`, `latest`, `unique_count`) the overspend is what the
//!   other edges used since the last aggregate (at most [`AGGREGATE_TTL_MS`] old while the
//!   control plane answers) plus the checks in flight; for `max`, `latest` and `unique_count`
//!   also this edge's own unflushed usage (not additive).
//!
//! `GET /v1/accounts/{id}/entitlements` shows the same `usage` and applies the same rule as a
//! check of quantity 1 (`quota_fits`, in `check.rs`): for a non-`soft` meter,
//! `denied_quota_exceeded` once `usage + 1 > limit`; it never asks for a lease.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tollgate_protocol::AccountId;
use tollgate_protocol::usage::{
    Aggregation, LeaseRelease, LeaseRequest, MeterAggregate, MeterSpec, UsageAck, UsageBatch,
    UsageEvent, validate_event,
};

use crate::dead_letter::{DeadEntry, DeadLetter};
use crate::durable::{Fs, RealFs};
use crate::metrics::UsageMetrics;
use crate::upstream::{Upstream, UpstreamError};
use crate::usage_log::{LogError, LogOptions, Record, UsageLog};

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
/// A single event the control plane refuses as a batch this many times in a row is
/// dead-lettered.
pub const REFUSALS_BEFORE_DEAD_LETTER: u32 = 3;
/// Aggregates held at most (one per account and meter; least recently used go first).
pub const AGGREGATES_MAX: u64 = 100_000;
/// Leases held at most; past it, checks of new keys compare the aggregate instead.
pub const LEASES_MAX: usize = 100_000;
/// A lease unused this long gives its unused units back at the next sweep, ms.
pub const LEASE_IDLE_MS: u64 = 60_000;
/// How often leases are swept, ms.
pub const SWEEP_MS: u64 = 10_000;
/// Events one dead-letter replay stores per request to the writer.
pub const REPLAY_CHUNK_EVENTS: usize = 1_000;
/// How long an exhausted quota is trusted before the control plane is asked again, ms.
pub const EXHAUSTED_RECHECK_MS: u64 = 1_000;

/// Why usage could not be stored. Either way, nothing of the request was stored.
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

/// An event as the pending counters see it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Counted {
    account: AccountId,
    meter: String,
    quantity: i64,
    timestamp_ms: i64,
}

impl Counted {
    fn of(e: &UsageEvent) -> Self {
        Self {
            account: e.account,
            meter: e.meter.clone(),
            quantity: e.quantity,
            timestamp_ms: e.timestamp_ms,
        }
    }
}

struct AppendRequest {
    payloads: Vec<Vec<u8>>,
    events: Vec<Counted>,
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
        self.quantity = self.quantity.saturating_add(quantity);
        self.events = self.events.saturating_add(1);
    }

    fn sub(&mut self, quantity: i64) {
        self.quantity = self.quantity.saturating_sub(quantity).max(0);
        self.events = self.events.saturating_sub(1);
    }
}

/// A slice of an account's quota this edge holds for one meter and period: it may let
/// `granted` units be used here; `used` counts the usage stored here since the lease began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub granted: i64,
    pub used: i64,
    /// The quota the lease was granted under: a lease of another quota (a downgrade, a new
    /// bundle) is given back, not used.
    pub limit: i64,
    /// When the control plane last could not fit a need, and that need: checks needing as
    /// much or more deny without asking again for [`EXHAUSTED_RECHECK_MS`].
    pub exhausted: Option<(Instant, i64)>,
    pub last_used: Instant,
}

impl Lease {
    pub fn remaining(&self) -> i64 {
        self.granted.saturating_sub(self.used)
    }
}

#[derive(Clone)]
struct Aggregate {
    value: MeterAggregate,
    fetched: Instant,
}

/// Where the usage store keeps its files and how much it may hold.
#[derive(Debug, Clone)]
pub struct UsageOptions {
    /// The log's directory.
    pub dir: PathBuf,
    /// The dead-letter file.
    pub dead_letter: PathBuf,
    pub max_pending_bytes: u64,
    pub dead_letter_bytes_max: u64,
    /// What the log and the dead-letter file write through: [`RealFs`] in production, a
    /// [`crate::durable::FaultyFs`] in tests that make the disk fail.
    pub fs: Arc<dyn Fs>,
}

impl UsageOptions {
    /// The layout under an edge's data directory: `usage/` and `usage-dead-letter.jsonl`.
    pub fn in_data_dir(
        data_dir: &Path,
        max_pending_bytes: u64,
        dead_letter_bytes_max: u64,
    ) -> Self {
        Self {
            dir: data_dir.join("usage"),
            dead_letter: data_dir.join(crate::dead_letter::FILE_NAME),
            max_pending_bytes,
            dead_letter_bytes_max,
            fs: Arc::new(RealFs),
        }
    }
}

/// How flushing goes, for `/v1/status` and the batch size.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FlushStatus {
    /// Events per batch now (halved while a refused batch is being narrowed down).
    pub batch_events_max: usize,
    pub last_ok_at_ms: Option<i64>,
    pub last_error: Option<String>,
    pub consecutive_failures: u64,
    /// (seq, refusals) of a single event the control plane keeps refusing.
    #[serde(skip)]
    refused_head: Option<(u64, u32)>,
}

/// The usage part of `GET /v1/status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct UsageStatus {
    pub pending_events: u64,
    pub pending_bytes: u64,
    pub max_pending_bytes: u64,
    /// The log refuses usage after a failed fsync until the edge restarts.
    pub store_failed: bool,
    pub dead_letter: DeadLetterStatus,
    pub flush: FlushStatus,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct DeadLetterStatus {
    pub events: usize,
    pub bytes: u64,
    pub path: String,
}

/// What a replay did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ReplayReport {
    /// Entries stored in the log again (and removed from the dead-letter file).
    pub replayed: usize,
    /// Entries left: undecodable, still breaking the bounds, or not stored (buffer full).
    pub kept: usize,
}

/// The edge's usage store: log, writer thread, pending counters, last aggregates, leases,
/// dead letters.
pub struct Usage {
    log: Arc<Mutex<UsageLog>>,
    writer: mpsc::Sender<AppendRequest>,
    counters: Arc<Counters>,
    aggregates: moka::sync::Cache<(AccountId, String), Aggregate>,
    dead: Arc<Mutex<DeadLetter>>,
    flush: Mutex<FlushStatus>,
    failed: Arc<AtomicBool>,
    /// Wakes the flusher when new events were committed.
    pub committed: Arc<tokio::sync::Notify>,
    pub metrics: UsageMetrics,
    pub max_pending_bytes: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn gauge(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A log record's event, or why it cannot go to the control plane (as a dead-letter entry).
fn decode(r: &Record) -> Result<UsageEvent, Box<DeadEntry>> {
    match postcard::from_bytes::<UsageEvent>(&r.payload) {
        Ok(e) => match validate_event(&e) {
            Ok(()) => Ok(e),
            Err(err) => {
                let mut d = DeadEntry::new(r.seq, err.code(), err.to_string());
                d.event = Some(e);
                Err(Box::new(d))
            }
        },
        Err(err) => {
            let mut d = DeadEntry::new(r.seq, "undecodable_record", err.to_string());
            d.payload_hex = Some(hex::encode(&r.payload));
            Err(Box::new(d))
        }
    }
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
    /// Opens (recovering) the log and the dead-letter file, and starts the writer thread.
    /// `meters` gives the period of each meter, to key pending counters by period. No record
    /// can stop this: what does not decode or breaks the bounds is left for the flusher to
    /// dead-letter, and counts nowhere.
    pub fn open(
        opts: &UsageOptions,
        meters: impl Fn(&str) -> Option<MeterSpec> + Send + Sync + 'static,
        metrics: UsageMetrics,
    ) -> Result<Arc<Self>, LogError> {
        let (log, report) = UsageLog::open(
            &opts.dir,
            LogOptions {
                max_pending_bytes: opts.max_pending_bytes,
                fs: opts.fs.clone(),
                ..LogOptions::default()
            },
        )?;
        let dead = DeadLetter::open(
            opts.fs.clone(),
            &opts.dead_letter,
            opts.dead_letter_bytes_max,
        )
        .map_err(LogError::Io)?;
        tracing::info!(
            records = report.records,
            torn_tail_bytes = report.torn_tail_bytes,
            corrupt_records = report.corrupt_records,
            dead_letters = dead.len(),
            "usage log recovered"
        );
        let counters = Arc::new(Counters {
            pending: Mutex::default(),
            leases: Mutex::default(),
            meters: Box::new(meters),
        });
        // Replayed from the log's memory, not copied: it may hold up to the buffer bound.
        let recovered: Vec<Counted> = log
            .synced()
            .filter_map(|r| decode(r).ok())
            .map(|e| Counted::of(&e))
            .collect();
        counters.committed(&recovered);
        metrics.pending_events.set(gauge(log.pending_records()));
        metrics.pending_bytes.set(gauge(log.pending_bytes()));
        metrics.dead_letter_events.set(gauge(dead.len() as u64));
        let log = Arc::new(Mutex::new(log));
        let (writer, rx) = mpsc::channel::<AppendRequest>();
        let committed = Arc::new(tokio::sync::Notify::new());
        let failed = Arc::new(AtomicBool::new(false));
        let usage = Arc::new(Self {
            log: log.clone(),
            writer,
            counters: counters.clone(),
            aggregates: moka::sync::Cache::builder()
                .max_capacity(AGGREGATES_MAX)
                .time_to_idle(Duration::from_secs(600))
                .build(),
            dead: Arc::new(Mutex::new(dead)),
            flush: Mutex::new(FlushStatus {
                batch_events_max: FLUSH_EVENTS_MAX,
                last_ok_at_ms: None,
                last_error: None,
                consecutive_failures: 0,
                refused_head: None,
            }),
            failed: failed.clone(),
            committed: committed.clone(),
            metrics: metrics.clone(),
            max_pending_bytes: opts.max_pending_bytes,
        });
        let writer = Writer {
            log,
            counters,
            committed,
            metrics,
            failed,
        };
        std::thread::Builder::new()
            .name("usage-writer".into())
            .spawn(move || writer.run(&rx))
            .map_err(LogError::Io)?;
        Ok(usage)
    }

    /// Stores events durably: returns once they are fsynced (their seqs), or why not (then
    /// none of them was stored). Callers pass events that passed
    /// [`validate_event`]; one that did not would be dead-lettered by the flusher.
    pub async fn store(&self, events: &[UsageEvent]) -> Result<Range<u64>, StoreError> {
        let payloads = events
            .iter()
            .map(|e| postcard::to_allocvec(e).map_err(|e| StoreError::Failed(e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        let (reply, rx) = tokio::sync::oneshot::channel();
        let req = AppendRequest {
            payloads,
            events: events
                .iter()
                .filter(|e| validate_event(e).is_ok())
                .map(Counted::of)
                .collect(),
            reply,
        };
        self.writer
            .send(req)
            .map_err(|_| StoreError::Failed("the usage writer stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Failed("the usage writer stopped".into()))?
    }

    /// Whether the log refuses usage since a failed write or fsync (`/readyz` says so).
    pub fn store_failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
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
        let a = self.aggregates.get(&(account, meter.to_owned()))?;
        let current = a.value.period_start_ms <= now_ms && now_ms < a.value.period_end_ms;
        current.then(|| (a.value, a.fetched.elapsed()))
    }

    /// Remembers aggregates the control plane sent (a newer period or a larger event count
    /// replaces what is held).
    pub fn remember(&self, aggregates: impl IntoIterator<Item = MeterAggregate>) {
        use moka::ops::compute::Op;
        for a in aggregates {
            let key = (a.account, a.meter.clone());
            self.aggregates.entry(key).and_compute_with(|held| {
                let replace = held.is_none_or(|h| {
                    let h = &h.value().value;
                    a.period_start_ms > h.period_start_ms
                        || (a.period_start_ms == h.period_start_ms && a.events >= h.events)
                });
                if replace {
                    Op::Put(Aggregate {
                        value: a,
                        fetched: Instant::now(),
                    })
                } else {
                    Op::Nop
                }
            });
        }
    }

    /// Current-period usage of a metered feature, as a check sees it: the control plane's
    /// aggregate (fetched through `upstream` when missing or older than [`AGGREGATE_TTL_MS`])
    /// plus, for additive aggregations, this edge's unacknowledged events. `true` with it when
    /// the aggregate could not be fetched (the last one, however old, counts; the caller
    /// answers `stale`).
    pub async fn usage_of(
        &self,
        upstream: &Upstream,
        account: AccountId,
        meter: &str,
        spec: &MeterSpec,
    ) -> (i64, bool) {
        let now = crate::clock::now_ms();
        let (start, _) = spec.period.bounds(now);
        let local = self.pending(account, meter, start);
        let aggregate = match self.fresh_aggregate(account, meter, now) {
            Some(a) => Some(a),
            None => match upstream.account_usage(account).await {
                Ok(all) => {
                    self.remember(all.aggregates);
                    // Remembered even when older than the TTL allows: take it from the answer.
                    self.fresh_aggregate(account, meter, now)
                }
                Err(e) => {
                    // The last aggregate however old (stale), plus what this edge added since.
                    tracing::debug!(account_id = %account, error = %e, "usage aggregate unavailable; using the last one");
                    let last = self.last_aggregate(account, meter, now).map(|(a, _)| a);
                    return (combine(spec, last, start, local), true);
                }
            },
        };
        (combine(spec, aggregate, start, local), false)
    }

    /// Whether `quantity` more units of a `sum` meter fit the account's quota, served from this
    /// edge's lease and renewing it (through `upstream`, as `edge_id`) when it runs short. A
    /// renewal asks for what this check needs, all or nothing, plus the meter's lease size: a
    /// check that would be denied takes nothing from the quota, and a lease never holds more
    /// than the lease size beyond what allowed checks needed. A lease granted under another
    /// quota (the account's facts or the bundle changed) is given back first. `None` when there
    /// is no room for another lease, or the control plane could not be asked: the caller
    /// compares the last aggregate instead.
    #[allow(clippy::too_many_arguments)] // the lease key, the quota and the check, and where to ask
    pub async fn lease_allows(
        &self,
        upstream: &Upstream,
        edge_id: &str,
        account: AccountId,
        meter: &str,
        spec: &MeterSpec,
        limit: i64,
        quantity: i64,
    ) -> Option<bool> {
        if quantity > limit {
            // No lease can fit it: denied without asking, nothing reserved.
            return Some(false);
        }
        if quantity == 0 {
            // Asks only whether the quota is not passed yet: the usage read answers that.
            return None;
        }
        let (start, _) = spec.period.bounds(crate::clock::now_ms());
        let (lease, stale_units) = self.lease_under(account, meter, start, limit);
        if let Some(units) = stale_units.filter(|u| *u > 0) {
            let rel = LeaseRelease {
                account,
                meter: meter.to_owned(),
                edge_id: edge_id.to_owned(),
                period_start_ms: start,
                units,
            };
            if let Err(e) = upstream.release(&rel).await {
                tracing::warn!(account_id = %account, meter, units, error = %e, "lease of an old quota not given back");
            }
        }
        let remaining = lease.map_or_else(
            || {
                self.pending(account, meter, start)
                    .quantity
                    .saturating_neg()
            },
            |l| l.remaining(),
        );
        if lease.is_some() && remaining >= quantity {
            return Some(true);
        }
        let need = quantity.saturating_sub(remaining).max(1);
        let recently_refused = lease.and_then(|l| l.exhausted).is_some_and(|(t, refused)| {
            need >= refused && t.elapsed() < Duration::from_millis(EXHAUSTED_RECHECK_MS)
        });
        if recently_refused {
            return Some(false);
        }
        if !self.lease_room(account, meter, start) {
            return None;
        }
        let req = LeaseRequest {
            account,
            meter: meter.to_owned(),
            edge_id: edge_id.to_owned(),
            period_start_ms: start,
            need,
            extra: spec.lease,
            limit,
        };
        match upstream.lease(&req).await {
            Ok(grant) => {
                let l = self.add_grant((account, meter, start), limit, need, grant.granted);
                Some(l.remaining() >= quantity)
            }
            Err(e) => {
                tracing::warn!(account_id = %account, meter, error = %e, "quota lease unavailable; comparing the last aggregate");
                None
            }
        }
    }

    /// The lease held for a key, if any, when it was granted under `limit`. A lease of
    /// another quota is removed and its unused units returned (to give back to the control
    /// plane): the check starts over under the quota in force.
    pub fn lease_under(
        &self,
        account: AccountId,
        meter: &str,
        period_start: i64,
        limit: i64,
    ) -> (Option<Lease>, Option<i64>) {
        let key = (account, meter.to_owned(), period_start);
        let mut leases = lock(&self.counters.leases);
        match leases.get(&key).copied() {
            Some(l) if l.limit == limit => (Some(l), None),
            Some(l) => {
                leases.remove(&key);
                (None, Some(l.remaining().max(0)))
            }
            None => (None, None),
        }
    }

    /// Whether a lease for this key may be held (it is, or there is room for one more).
    pub fn lease_room(&self, account: AccountId, meter: &str, period_start: i64) -> bool {
        let leases = lock(&self.counters.leases);
        leases.len() < LEASES_MAX || leases.contains_key(&(account, meter.to_owned(), period_start))
    }

    /// Adds a grant for a check that needed `need` units to a lease of quota `limit`, creating
    /// it (its `used` starting at this edge's pending usage of the key, which no lease covered
    /// yet) when new. A grant of 0 marks the need as not fitting. Returns the lease after.
    pub fn add_grant(
        &self,
        key: (AccountId, &str, i64),
        limit: i64,
        need: i64,
        granted: i64,
    ) -> Lease {
        let (account, meter, period_start) = key;
        let pending = self.pending(account, meter, period_start).quantity;
        let mut leases = lock(&self.counters.leases);
        let l = leases
            .entry((account, meter.to_owned(), period_start))
            .or_insert(Lease {
                granted: 0,
                used: pending,
                limit,
                exhausted: None,
                last_used: Instant::now(),
            });
        l.granted = l.granted.saturating_add(granted);
        l.exhausted = (granted == 0).then(|| (Instant::now(), need));
        l.last_used = Instant::now();
        *l
    }

    /// Removes leases of ended periods (their counters are moot) and idle ones; returns the
    /// idle ones' unused units to give back. With `all`, every lease (shutdown).
    fn take_leases(&self, all: bool) -> Vec<(AccountId, String, i64, i64)> {
        let now_ms = crate::clock::now_ms();
        let idle = Duration::from_millis(LEASE_IDLE_MS);
        let mut back = Vec::new();
        lock(&self.counters.leases).retain(|(account, meter, start), l| {
            let ended =
                (self.counters.meters)(meter).is_none_or(|m| m.period.bounds(now_ms).0 != *start);
            let keep = !all && !ended && l.last_used.elapsed() < idle;
            if !keep && !ended && l.remaining() > 0 {
                back.push((*account, meter.clone(), *start, l.remaining()));
            }
            keep
        });
        back
    }

    /// Gives unused lease units back to the control plane (best effort: units not given back
    /// only stay unused until the period ends).
    async fn give_back(
        &self,
        upstream: &Upstream,
        edge_id: &str,
        leases: Vec<(AccountId, String, i64, i64)>,
    ) {
        for (account, meter, period_start_ms, units) in leases {
            let rel = LeaseRelease {
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

    /// Gives every unused lease back (shutdown).
    pub async fn release_unused(&self, upstream: &Upstream, edge_id: &str) {
        let all = self.take_leases(true);
        self.give_back(upstream, edge_id, all).await;
    }

    /// Events waiting for the control plane.
    pub fn pending_events(&self) -> u64 {
        lock(&self.log).pending_records()
    }

    /// Sets the gauges from the log and the dead-letter file (at every scrape: they tell the
    /// truth even while nothing is flushed or committed).
    pub fn refresh_gauges(&self) {
        {
            let log = lock(&self.log);
            self.metrics
                .pending_events
                .set(gauge(log.pending_records()));
            self.metrics.pending_bytes.set(gauge(log.pending_bytes()));
        }
        self.metrics
            .dead_letter_events
            .set(gauge(lock(&self.dead).len() as u64));
        self.metrics
            .store_failed
            .set(i64::from(self.store_failed()));
    }

    /// The usage part of `GET /v1/status`.
    pub fn status(&self) -> UsageStatus {
        let (pending_events, pending_bytes) = {
            let log = lock(&self.log);
            (log.pending_records(), log.pending_bytes())
        };
        let dead = lock(&self.dead);
        UsageStatus {
            pending_events,
            pending_bytes,
            max_pending_bytes: self.max_pending_bytes,
            store_failed: self.store_failed(),
            dead_letter: DeadLetterStatus {
                events: dead.len(),
                bytes: dead.bytes(),
                path: dead.path().display().to_string(),
            },
            flush: lock(&self.flush).clone(),
        }
    }

    /// The dead-lettered entries, oldest first, at most `limit`.
    pub fn dead_letters(&self, limit: usize) -> std::io::Result<(usize, Vec<DeadEntry>)> {
        let dead = lock(&self.dead);
        let mut entries = dead.entries()?;
        entries.truncate(limit);
        Ok((dead.len(), entries))
    }

    /// Stores every dead-lettered event that passes the bounds again (new records, same ids)
    /// and removes it from the dead-letter file. See [`crate::dead_letter`].
    pub async fn replay_dead_letters(&self) -> Result<ReplayReport, StoreError> {
        let dead = self.dead.clone();
        let entries = tokio::task::spawn_blocking(move || lock(&dead).entries())
            .await
            .map_err(|e| StoreError::Failed(e.to_string()))?
            .map_err(|e| StoreError::Failed(e.to_string()))?;
        let total = entries.len();
        let replayable: Vec<(u64, UsageEvent)> = entries
            .into_iter()
            .filter_map(|d| Some((d.seq, d.event?)))
            .filter(|(_, e)| validate_event(e).is_ok())
            .collect();
        let mut replayed = HashSet::new();
        for chunk in replayable.chunks(REPLAY_CHUNK_EVENTS) {
            let events: Vec<UsageEvent> = chunk.iter().map(|(_, e)| e.clone()).collect();
            match self.store(&events).await {
                Ok(_) => replayed.extend(chunk.iter().map(|(seq, _)| *seq)),
                Err(e) if replayed.is_empty() => return Err(e),
                Err(e) => {
                    tracing::warn!(error = %e, "dead-letter replay stopped early");
                    break;
                }
            }
        }
        let n = replayed.len();
        let dead = self.dead.clone();
        tokio::task::spawn_blocking(move || lock(&dead).remove(&replayed))
            .await
            .map_err(|e| StoreError::Failed(e.to_string()))?
            .map_err(|e| StoreError::Failed(e.to_string()))?;
        self.refresh_gauges();
        tracing::info!(replayed = n, kept = total - n, "dead letters replayed");
        Ok(ReplayReport {
            replayed: n,
            kept: total - n,
        })
    }

    /// Removes every dead-lettered entry; returns how many.
    pub async fn discard_dead_letters(&self) -> std::io::Result<usize> {
        let dead = self.dead.clone();
        let n = tokio::task::spawn_blocking(move || {
            let mut dead = lock(&dead);
            let all: HashSet<u64> = dead.entries()?.iter().map(|e| e.seq).collect();
            dead.remove(&all)
        })
        .await
        .map_err(std::io::Error::other)??;
        self.refresh_gauges();
        tracing::warn!(discarded = n, "dead letters discarded by an operator");
        Ok(n)
    }

    /// Notes a flush failure for `/v1/status`.
    fn flush_failed(&self, e: &UpstreamError) {
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

/// The usage a check sees: the control plane's aggregate of the current period plus, for
/// additive aggregations, this edge's unacknowledged events.
fn combine(
    spec: &MeterSpec,
    aggregate: Option<MeterAggregate>,
    period_start: i64,
    local: Pending,
) -> i64 {
    let remote = aggregate
        .filter(|a| a.period_start_ms == period_start)
        .map_or(0, |a| a.value);
    match spec.aggregation {
        Aggregation::Sum => remote.saturating_add(local.quantity),
        Aggregation::Count => remote.saturating_add(local.events),
        _ => remote,
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
    fn committed(&self, events: &[Counted]) {
        let mut pending = lock(&self.pending);
        let mut leases = lock(&self.leases);
        for e in events {
            let key = self.key(e.account, &e.meter, e.timestamp_ms);
            if let Some(l) = leases.get_mut(&key) {
                l.used = l.used.saturating_add(e.quantity);
                l.last_used = Instant::now();
            }
            pending.entry(key).or_default().add(e.quantity);
        }
    }

    /// Events the control plane acknowledged (or that were dead-lettered): no longer this
    /// edge's alone. With `log_empty`, nothing is pending any more: whatever is left (keys a
    /// bundle change moved to another period) goes too.
    fn acked(&self, events: &[Counted], log_empty: bool) {
        let mut pending = lock(&self.pending);
        if log_empty {
            pending.clear();
            return;
        }
        for e in events {
            let key = self.key(e.account, &e.meter, e.timestamp_ms);
            if let Some(p) = pending.get_mut(&key) {
                p.sub(e.quantity);
                if p.events <= 0 {
                    pending.remove(&key);
                }
            }
        }
    }
}

/// The writer thread's state.
struct Writer {
    log: Arc<Mutex<UsageLog>>,
    counters: Arc<Counters>,
    committed: Arc<tokio::sync::Notify>,
    metrics: UsageMetrics,
    failed: Arc<AtomicBool>,
}

impl Writer {
    /// One fsync per group of queued requests.
    fn run(&self, rx: &mpsc::Receiver<AppendRequest>) {
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
            self.commit(group);
        }
    }

    fn commit(&self, group: Vec<AppendRequest>) {
        let mut log = lock(&self.log);
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
        if synced.is_err()
            || results
                .iter()
                .any(|r| matches!(r, Err(StoreError::Failed(_))))
        {
            if !self.failed.swap(true, Ordering::Relaxed) {
                tracing::error!("the usage log failed: usage is refused until the edge restarts");
            }
            self.metrics.store_failed.set(1);
        }
        self.metrics
            .pending_events
            .set(gauge(log.pending_records()));
        self.metrics.pending_bytes.set(gauge(log.pending_bytes()));
        drop(log);
        self.metrics.commit_groups.inc();
        for (req, result) in group.into_iter().zip(results) {
            let result = match (&synced, result) {
                (Ok(()), Ok(seqs)) => {
                    self.counters.committed(&req.events);
                    Ok(seqs)
                }
                (Err(e), Ok(_)) => Err(e.clone()),
                (_, Err(e)) => Err(e),
            };
            let _ = req.reply.send(result);
        }
        self.committed.notify_one();
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_counters_saturate_instead_of_overflowing() {
        let mut p = Pending::default();
        p.add(i64::MAX);
        p.add(i64::MAX);
        assert_eq!(
            p,
            Pending {
                quantity: i64::MAX,
                events: 2
            }
        );
        p.sub(i64::MAX);
        p.sub(i64::MAX);
        p.sub(1);
        assert_eq!(p.quantity, 0);
    }
}

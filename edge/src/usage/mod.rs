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
//!
//! # Where it lives
//!
//! | file | holds |
//! |---|---|
//! | `mod.rs` | the store ([`Usage`]): opening and recovery, [`Usage::store`], status; every limit, re-exported from the file that uses it |
//! | `writer.rs` | the writer thread: group commit, one fsync per group |
//! | `counters.rs` | the pending counters of unacknowledged usage ([`Pending`]) |
//! | `flusher.rs` | the flusher: batches, narrowing, dead-lettering, [`flush_loop`] |
//! | `aggregates.rs` | the usage a metered check sees ([`Usage::usage_of`]) |
//! | `leases.rs` | quota leases ([`Usage::lease_allows`], [`Lease`]) |
//! | `dead_letters.rs` | the operator's dead-letter replay and discard |

mod aggregates;
mod counters;
mod dead_letters;
mod flusher;
mod leases;
mod writer;

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tollgate_protocol::AccountId;
use tollgate_protocol::usage::{MeterSpec, UsageEvent, validate_event};

use crate::dead_letter::{DeadEntry, DeadLetter};
use crate::durable::{Fs, RealFs};
use crate::metrics::UsageMetrics;
use crate::usage_log::{LogError, LogOptions, Record, UsageLog};

use aggregates::Aggregate;
use counters::{Counted, Counters};
use writer::{AppendRequest, Writer};

pub use aggregates::{AGGREGATE_TTL_MS, AGGREGATES_MAX};
pub use counters::Pending;
pub use dead_letters::{REPLAY_CHUNK_EVENTS, ReplayReport};
pub use flusher::{
    BACKOFF_MS_MAX, BACKOFF_MS_MIN, FLUSH_BYTES_MAX, FLUSH_EVENTS_MAX, FlushStatus, FlushTarget,
    Flushed, REFUSALS_BEFORE_DEAD_LETTER, batch_id, flush_loop,
};
pub use leases::{EXHAUSTED_RECHECK_MS, LEASE_IDLE_MS, LEASES_MAX, Lease, SWEEP_MS};
pub use writer::{COMMIT_WINDOW, GROUP_EVENTS_MAX};

/// What `Retry-After` says when the buffer is full, seconds.
pub const FULL_RETRY_AFTER_S: u64 = 5;

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

/// The usage part of `GET /v1/status`.
#[derive(utoipa::ToSchema, Debug, Clone, serde::Serialize)]
pub struct UsageStatus {
    pub pending_events: u64,
    pub pending_bytes: u64,
    pub max_pending_bytes: u64,
    /// The log refuses usage after a failed fsync until the edge restarts.
    pub store_failed: bool,
    pub dead_letter: DeadLetterStatus,
    pub flush: FlushStatus,
}

#[derive(utoipa::ToSchema, Debug, Clone, serde::Serialize)]
pub struct DeadLetterStatus {
    pub events: usize,
    pub bytes: u64,
    pub path: String,
}

/// The edge's usage store: log, writer thread, pending counters, last aggregates, leases,
/// dead letters.
pub struct Usage {
    log: Arc<Mutex<UsageLog>>,
    writer: mpsc::Sender<AppendRequest>,
    counters: Arc<Counters>,
    aggregates: moka::sync::Cache<(AccountId, String), Aggregate>,
    /// Accounts whose aggregates are being fetched: concurrent checks of one of them wait for
    /// that fetch (dropping its sender, when it ends, wakes them) instead of each asking.
    fetching: Mutex<std::collections::HashMap<AccountId, tokio::sync::watch::Receiver<()>>>,
    dead: Arc<Mutex<DeadLetter>>,
    flush: Mutex<FlushStatus>,
    failed: Arc<AtomicBool>,
    /// Wakes the flusher when new events were committed.
    pub committed: Arc<tokio::sync::Notify>,
    pub metrics: UsageMetrics,
    pub max_pending_bytes: u64,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub(super) fn gauge(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A log record's event, or why it cannot go to the control plane (as a dead-letter entry).
pub(super) fn decode(r: &Record) -> Result<UsageEvent, Box<DeadEntry>> {
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

impl Usage {
    /// Opens (recovering) the log and the dead-letter file, and starts the writer thread.
    /// `meters` gives the period of each meter, to key pending counters by period. No record
    /// can stop this: what does not decode or breaks the bounds is left for the flusher to
    /// dead-letter, and counts nowhere.
    pub fn open(
        opts: &UsageOptions,
        meters: impl Fn(AccountId, &str) -> Option<(MeterSpec, Option<i64>)> + Send + Sync + 'static,
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
            lease_failures: Mutex::default(),
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
            fetching: Mutex::default(),
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
}

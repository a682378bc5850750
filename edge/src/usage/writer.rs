//! The writer thread: group commit. Requests hand their encoded events over a channel; the
//! writer appends every queued request's events to the log, fsyncs once, then answers them
//! all. See "Group commit" in [`super`].

use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use crate::metrics::UsageMetrics;
use crate::usage_log::{LogError, UsageLog};

use super::counters::{Counted, Counters};
use super::{StoreError, gauge, lock};

/// Added delay before a group commits: none (see "Group commit" in [`super`]).
pub const COMMIT_WINDOW: Duration = Duration::ZERO;
/// Most events one fsync covers.
pub const GROUP_EVENTS_MAX: usize = 8_192;

pub(super) struct AppendRequest {
    pub(super) payloads: Vec<Vec<u8>>,
    pub(super) events: Vec<Counted>,
    pub(super) reply: tokio::sync::oneshot::Sender<Result<Range<u64>, StoreError>>,
}

/// The writer thread's state.
pub(super) struct Writer {
    pub(super) log: Arc<Mutex<UsageLog>>,
    pub(super) counters: Arc<Counters>,
    pub(super) committed: Arc<tokio::sync::Notify>,
    pub(super) metrics: UsageMetrics,
    pub(super) failed: Arc<AtomicBool>,
}

impl Writer {
    /// One fsync per group of queued requests.
    pub(super) fn run(&self, rx: &mpsc::Receiver<AppendRequest>) {
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

//! The usage a metered check sees: the last aggregate the control plane sent (with every
//! flush acknowledgement, or fetched when missing or older than [`AGGREGATE_TTL_MS`]) plus,
//! for additive aggregations, this edge's unacknowledged events. See "Metered checks" in
//! [`super`].

use std::time::{Duration, Instant};

use tollgate_protocol::AccountId;
use tollgate_protocol::usage::{Aggregation, MeterAggregate, MeterSpec};

use crate::upstream::Upstream;

use super::Usage;
use super::counters::Pending;

/// An aggregate older than this is refetched by the next metered check of that account.
pub const AGGREGATE_TTL_MS: u64 = 5_000;
/// Aggregates held at most (one per account and meter; least recently used go first).
pub const AGGREGATES_MAX: u64 = 100_000;
/// How long a check waits for another check's fetch of the same account's aggregates before
/// answering from the last one it holds (stale).
pub const AGGREGATE_WAIT_MS: u64 = 2_000;

/// Ends a fetch of an account's aggregates however it ends (answered, failed, or the request
/// dropped mid-way): the waiters wake and read what it left.
struct Fetching<'a> {
    usage: &'a Usage,
    account: AccountId,
    _done: tokio::sync::watch::Sender<()>,
}

impl Drop for Fetching<'_> {
    fn drop(&mut self) {
        super::lock(&self.usage.fetching).remove(&self.account);
    }
}

#[derive(Clone)]
pub(super) struct Aggregate {
    pub(super) value: MeterAggregate,
    pub(super) fetched: Instant,
}

impl Usage {
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
        let (start, end) = self
            .counters
            .period_bounds(account, meter, now)
            .unwrap_or_else(|| spec.period.bounds(now));
        if let Some(a) = self.fresh_aggregate(account, meter, now) {
            let local = self.pending(account, meter, start);
            return (combine(spec, Some(a), start, local), false);
        }
        // One fetch per account at a time: a burst of checks of an account whose aggregate
        // just aged out costs one request, not one each.
        let leader = {
            let mut fetching = super::lock(&self.fetching);
            match fetching.get(&account) {
                Some(rx) => Err(rx.clone()),
                None => {
                    let (done, rx) = tokio::sync::watch::channel(());
                    fetching.insert(account, rx);
                    Ok(Fetching {
                        usage: self,
                        account,
                        _done: done,
                    })
                }
            }
        };
        let fresh = match leader {
            Err(mut rx) => {
                let _ =
                    tokio::time::timeout(Duration::from_millis(AGGREGATE_WAIT_MS), rx.changed())
                        .await;
                self.fresh_aggregate(account, meter, now)
            }
            Ok(_fetching) => match upstream.account_usage(account).await {
                Ok(all) => {
                    let all = all.map(|u| u.aggregates).unwrap_or_default();
                    // Only when the answer has nothing at all of the meter (an account the
                    // control plane does not know, a meter it does not count yet): nothing
                    // used, remembered for the TTL like an answer, so checks do not ask
                    // again each time. An aggregate of another period start (billing anchors
                    // seen differently) is not "zero".
                    let answered = all.iter().any(|a| a.meter == meter);
                    self.remember(all);
                    if !answered {
                        self.remember([MeterAggregate {
                            account,
                            meter: meter.to_owned(),
                            period_start_ms: start,
                            period_end_ms: end,
                            value: 0,
                            events: 0,
                        }]);
                    }
                    // Remembered even when older than the TTL allows: take it from the answer.
                    self.fresh_aggregate(account, meter, now)
                }
                Err(e) => {
                    tracing::debug!(account_id = %account, error = %e, "usage aggregate unavailable; using the last one");
                    None
                }
            },
        };
        let local = self.pending(account, meter, start);
        match fresh {
            Some(a) => (combine(spec, Some(a), start, local), false),
            // The fetch failed (here or for the check waited for): the last aggregate however
            // old (stale), plus what this edge added since.
            None => {
                let last = self.last_aggregate(account, meter, now).map(|(a, _)| a);
                (combine(spec, last, start, local), true)
            }
        }
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

//! The pending counters: this edge's unacknowledged usage by (account, meter, period start),
//! raised when the writer commits events (or recovery finds them) and lowered when the control
//! plane acknowledged them; a lease's `used` grows with them. See "Metered checks" and
//! "Bounded memory" in [`super`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use tollgate_protocol::AccountId;
use tollgate_protocol::usage::{MeterSpec, UsageEvent};

use super::{Lease, Usage, lock};

/// An event as the pending counters see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Counted {
    account: AccountId,
    meter: String,
    quantity: i64,
    timestamp_ms: i64,
}

impl Counted {
    pub(super) fn of(e: &UsageEvent) -> Self {
        Self {
            account: e.account,
            meter: e.meter.clone(),
            quantity: e.quantity,
            timestamp_ms: e.timestamp_ms,
        }
    }
}

/// Not-yet-acknowledged usage of one (account, meter, period start).
pub(super) type PendingKey = (AccountId, String, i64);

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

/// The counts stored usage keeps, by (account, meter, period start): what is not yet
/// acknowledged, and the leases it uses.
pub(super) struct Counters {
    pub(super) pending: Mutex<HashMap<PendingKey, Pending>>,
    pub(super) leases: Mutex<HashMap<PendingKey, Lease>>,
    /// Keys whose last lease request failed, and when: not asked again before
    /// [`super::leases::LEASE_RETRY_MS`] (bounded like the leases).
    pub(super) lease_failures: Mutex<HashMap<PendingKey, std::time::Instant>>,
    /// The meters of the bundle in force and the accounts' billing anchors (for periods).
    pub(super) meters: Box<MetersFn>,
}

/// The meter a key names, in the bundle in force, with the account's billing anchor (its
/// subscription's, from its facts; `None`: calendar periods).
pub(super) type MetersFn =
    dyn Fn(AccountId, &str) -> Option<(MeterSpec, Option<i64>)> + Send + Sync;

impl Counters {
    /// Start of the period of `account`'s `meter` holding `ts` (0 for an unknown meter).
    pub(super) fn period_start(&self, account: AccountId, meter: &str, ts: i64) -> Option<i64> {
        self.period_bounds(account, meter, ts)
            .map(|(start, _)| start)
    }

    /// The bounds of the account's period of `meter` holding `ts` (its billing anchor's).
    pub(super) fn period_bounds(
        &self,
        account: AccountId,
        meter: &str,
        ts: i64,
    ) -> Option<(i64, i64)> {
        (self.meters)(account, meter).map(|(m, anchor)| m.period.bounds_for(anchor, ts))
    }

    pub(super) fn key(&self, account: AccountId, meter: &str, ts: i64) -> PendingKey {
        let start = self.period_start(account, meter, ts).unwrap_or(0);
        (account, meter.to_owned(), start)
    }

    /// Events stored durably (or recovered from the log at start).
    pub(super) fn committed(&self, events: &[Counted]) {
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
    pub(super) fn acked(&self, events: &[Counted], log_empty: bool) {
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

impl Usage {
    /// Un-acknowledged usage of this edge for `meter` in the period starting at `period_start`.
    pub fn pending(&self, account: AccountId, meter: &str, period_start: i64) -> Pending {
        lock(&self.counters.pending)
            .get(&(account, meter.to_owned(), period_start))
            .copied()
            .unwrap_or_default()
    }
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

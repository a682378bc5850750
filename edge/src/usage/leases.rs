//! Quota leases across edges: the slice of an account's quota this edge may let be used
//! without asking ([`Lease`]), renewed through the control plane when a check runs short, and
//! given back when idle or at shutdown. See "Quota leases across edges" in [`super`].

use std::time::{Duration, Instant};

use tollgate_protocol::AccountId;
use tollgate_protocol::usage::{LeaseRelease, LeaseRequest, MeterSpec};

use crate::upstream::Upstream;

use super::{Usage, lock};

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

/// Leases held at most; past it, checks of new keys compare the aggregate instead.
pub const LEASES_MAX: usize = 100_000;
/// A lease unused this long gives its unused units back at the next sweep, ms.
pub const LEASE_IDLE_MS: u64 = 60_000;
/// How often leases are swept, ms.
pub const SWEEP_MS: u64 = 10_000;
/// How long an exhausted quota is trusted before the control plane is asked again, ms.
pub const EXHAUSTED_RECHECK_MS: u64 = 1_000;
/// After a lease request for a key failed (the control plane unreachable, or it does not know
/// the account), checks of that key compare the last aggregate without asking again for this
/// long: a down or refusing control plane costs one request per key and second, not one per
/// check.
pub const LEASE_RETRY_MS: u64 = 1_000;

impl Usage {
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
        let now_ms = crate::clock::now_ms();
        let start = self
            .counters
            .period_start(account, meter, now_ms)
            .unwrap_or_else(|| spec.period.bounds(now_ms).0);
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
        let key = (account, meter.to_owned(), start);
        let failed_recently = lock(&self.counters.lease_failures)
            .get(&key)
            .is_some_and(|t| t.elapsed() < Duration::from_millis(LEASE_RETRY_MS));
        if failed_recently {
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
                lock(&self.counters.lease_failures).remove(&key);
                let l = self.add_grant((account, meter, start), limit, need, grant.granted);
                Some(l.remaining() >= quantity)
            }
            Err(e) => {
                tracing::warn!(account_id = %account, meter, error = %e, "quota lease unavailable; comparing the last aggregate");
                let mut failures = lock(&self.counters.lease_failures);
                if failures.len() >= LEASES_MAX {
                    failures.retain(|_, t| t.elapsed() < Duration::from_millis(LEASE_RETRY_MS));
                }
                if failures.len() < LEASES_MAX {
                    failures.insert(key, Instant::now());
                }
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
    pub(super) fn take_leases(&self, all: bool) -> Vec<(AccountId, String, i64, i64)> {
        let now_ms = crate::clock::now_ms();
        let idle = Duration::from_millis(LEASE_IDLE_MS);
        let mut back = Vec::new();
        lock(&self.counters.leases).retain(|(account, meter, start), l| {
            let ended = self
                .counters
                .period_start(*account, meter, now_ms)
                .is_none_or(|s| s != *start);
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
    pub(super) async fn give_back(
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
}

//! Prometheus metrics under the `tollgate_edge` prefix; labels are closed enums.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum FillSourceLabel {
    Redis,
    ControlPlane,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FillLabels {
    pub source: FillSourceLabel,
}

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum CheckResult {
    Allowed,
    Denied,
    Unavailable,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckLabels {
    pub result: CheckResult,
}

pub struct EdgeMetrics {
    registry: Registry,
    /// The three children of the `checks` family, resolved once: the hot path does no label
    /// lookup.
    pub checks_allowed: Counter,
    pub checks_denied: Counter,
    pub checks_unavailable: Counter,
    pub cache_hits: Counter,
    pub cache_misses: Counter,
    pub coalesced_misses: Counter,
    pub fills_throttled: Counter,
    pub stream_gaps: Counter,
    pub revalidated_accounts: Counter,
    pub fills: Family<FillLabels, Counter>,
    pub changes_applied: Counter,
    pub propagation_ms: Histogram,
    pub cached_accounts: Gauge,
    pub cached_bytes: Gauge,
    pub stream_lag_ms: Gauge,
    pub bundle_installs: Counter,
    pub bundle_failures: Counter,
    pub usage: UsageMetrics,
}

impl EdgeMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tollgate_edge");
        let checks = Family::<CheckLabels, Counter>::default();
        registry.register("checks", "Entitlement checks answered", checks.clone());
        let cache_hits = Counter::default();
        registry.register(
            "cache_hits",
            "Checks answered from the cache",
            cache_hits.clone(),
        );
        let cache_misses = Counter::default();
        registry.register(
            "cache_misses",
            "Checks that had to fill the cache",
            cache_misses.clone(),
        );
        let fills_throttled = Counter::default();
        registry.register(
            "fills_throttled",
            "Misses answered from the fallback policy because this edge's bound on control-plane fills (concurrency or rate) was reached",
            fills_throttled.clone(),
        );
        let stream_gaps = Counter::default();
        registry.register(
            "stream_gaps",
            "Change-stream gaps detected (trimmed past, flushed)",
            stream_gaps.clone(),
        );
        let revalidated_accounts = Counter::default();
        registry.register(
            "revalidated_accounts",
            "Cached accounts updated by a revalidation after a gap",
            revalidated_accounts.clone(),
        );
        let coalesced_misses = Counter::default();
        registry.register(
            "coalesced_misses",
            "Misses that waited for another request's fill of the same account",
            coalesced_misses.clone(),
        );
        let fills = Family::<FillLabels, Counter>::default();
        registry.register("fills", "Cache fills by source", fills.clone());
        let changes_applied = Counter::default();
        registry.register(
            "changes_applied",
            "Change-stream events that updated a cached account",
            changes_applied.clone(),
        );
        let propagation_ms =
            Histogram::new(tollgate_protocol::PROPAGATION_BUCKETS_MS.iter().copied());
        registry.register(
            "propagation_milliseconds",
            "A change written in the control plane (its transaction, before the commit) to this edge applying it to a cached account, ms (wall clocks; events without the change's time, such as republished facts, are counted from their publish)",
            propagation_ms.clone(),
        );
        let bundle_installs = Counter::default();
        registry.register(
            "bundle_installs",
            "Rule bundles verified, tested and swapped in",
            bundle_installs.clone(),
        );
        let bundle_failures = Counter::default();
        registry.register(
            "bundle_failures",
            "Rule bundles refused (signature, module or tests)",
            bundle_failures.clone(),
        );
        let cached_accounts = Gauge::default();
        registry.register(
            "cached_accounts",
            "Accounts in the cache",
            cached_accounts.clone(),
        );
        let cached_bytes = Gauge::default();
        registry.register(
            "cached_bytes",
            "Estimated bytes held by the cache (each entry at least its share of the entry bound)",
            cached_bytes.clone(),
        );
        let stream_lag_ms = Gauge::default();
        registry.register(
            "stream_lag_milliseconds",
            "Age of the newest change event read from the stream when it was read (commit to read), ms",
            stream_lag_ms.clone(),
        );
        let usage = UsageMetrics::default();
        for (name, help, counter) in [
            (
                "usage_events_accepted",
                "Usage events stored durably (answered 202)",
                &usage.events_accepted,
            ),
            (
                "usage_events_invalid",
                "Usage events refused as invalid",
                &usage.events_invalid,
            ),
            (
                "usage_events_refused_full",
                "Usage events refused because the buffer was full",
                &usage.events_refused_full,
            ),
            (
                "usage_events_flushed",
                "Usage events acknowledged by the control plane",
                &usage.events_flushed,
            ),
            (
                "usage_flush_failures",
                "Usage flushes that failed (retried with backoff)",
                &usage.flush_failures,
            ),
            (
                "usage_commit_groups",
                "Group commits (one fsync each)",
                &usage.commit_groups,
            ),
            (
                "usage_flush_refusals",
                "Usage batches the control plane refused as a whole (narrowed down, then dead-lettered)",
                &usage.flush_refusals,
            ),
            (
                "usage_dead_lettered_events",
                "Usage events moved to the dead-letter file (rejected by the control plane, or unusable records)",
                &usage.dead_lettered,
            ),
            (
                "usage_dead_letter_dropped_events",
                "Usage events that should have been dead-lettered but did not fit its byte bound",
                &usage.dead_letter_dropped,
            ),
        ] {
            registry.register(name, help, counter.clone());
        }
        for (name, help, gauge) in [
            (
                "usage_pending_events",
                "Usage events stored but not yet acknowledged by the control plane",
                &usage.pending_events,
            ),
            (
                "usage_pending_bytes",
                "Bytes of usage events stored but not yet acknowledged",
                &usage.pending_bytes,
            ),
            (
                "usage_dead_letter_events",
                "Usage events in the dead-letter file, waiting for an operator to replay or discard them",
                &usage.dead_letter_events,
            ),
            (
                "usage_store_failed",
                "1 when the usage log failed (a write or fsync) and refuses usage until the edge restarts",
                &usage.store_failed,
            ),
        ] {
            registry.register(name, help, gauge.clone());
        }
        let child = |result| checks.get_or_create(&CheckLabels { result }).clone();
        Self {
            registry,
            checks_allowed: child(CheckResult::Allowed),
            checks_denied: child(CheckResult::Denied),
            checks_unavailable: child(CheckResult::Unavailable),
            cache_hits,
            cache_misses,
            coalesced_misses,
            fills_throttled,
            stream_gaps,
            revalidated_accounts,
            fills,
            changes_applied,
            propagation_ms,
            cached_accounts,
            cached_bytes,
            stream_lag_ms,
            bundle_installs,
            bundle_failures,
            usage,
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Counters and gauges of the usage path ([`crate::usage`] updates them; clones share the
/// values). Declared here, beside every other metric, so that metrics depend on no module of
/// the edge: the usage store takes them as a plain struct.
#[derive(Default, Clone)]
pub struct UsageMetrics {
    pub events_accepted: Counter,
    pub events_invalid: Counter,
    pub events_refused_full: Counter,
    pub events_flushed: Counter,
    pub flush_failures: Counter,
    pub flush_refusals: Counter,
    pub commit_groups: Counter,
    pub dead_lettered: Counter,
    pub dead_letter_dropped: Counter,
    pub pending_events: Gauge,
    pub pending_bytes: Gauge,
    pub dead_letter_events: Gauge,
    pub store_failed: Gauge,
}

impl Default for EdgeMetrics {
    fn default() -> Self {
        Self::new()
    }
}

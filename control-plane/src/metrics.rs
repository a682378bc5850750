//! Prometheus metrics under the `tollgate_cp` prefix. Labels are closed enums: never an
//! account id.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use tollgate_protocol::PROPAGATION_BUCKETS_MS;

pub use crate::outbox::Topic;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicLabels {
    pub topic: Topic,
}

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum CheckoutOutcome {
    Succeeded,
    RequiresAction,
    Declined,
    Expired,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckoutLabels {
    pub outcome: CheckoutOutcome,
}

pub struct Metrics {
    pub registry: Registry,
    pub outbox_processed: Family<TopicLabels, Counter>,
    pub outbox_failures: Family<TopicLabels, Counter>,
    pub checkouts: Family<CheckoutLabels, Counter>,
    pub facts_published: Counter,
    /// A change written (its transaction, before the commit) → its facts published to Redis.
    pub change_publish_ms: Histogram,
    /// Times Redis was found holding less than was published (and repaired).
    pub redis_repairs: Counter,
    /// Processed outbox rows and inbox ids deleted past the retention window.
    pub outbox_pruned: Counter,
    pub usage: UsageMetrics,
}

/// Usage ingest (`usage::ingest` through `POST /internal/v1/usage`). `late` is a subset of
/// `accepted`; `accepted + duplicates + rejected` is every event received.
pub struct UsageMetrics {
    pub accepted: Counter,
    pub duplicates: Counter,
    pub late: Counter,
    pub rejected: Counter,
    pub ingest_duration: Histogram,
}

impl UsageMetrics {
    fn register(registry: &mut Registry) -> Self {
        let accepted = Counter::default();
        registry.register(
            "usage_events_accepted",
            "Usage events stored for the first time",
            accepted.clone(),
        );
        let duplicates = Counter::default();
        registry.register(
            "usage_events_duplicates",
            "Usage events whose id was already stored (retries, repeats within a batch)",
            duplicates.clone(),
        );
        let late = Counter::default();
        registry.register(
            "usage_events_late",
            "Usage events that arrived after their period's grace window and were counted in the current period",
            late.clone(),
        );
        let rejected = Counter::default();
        registry.register(
            "usage_events_rejected",
            "Usage events refused one by one (unknown account or meter, bounds, reused ids): not stored, dead-lettered by the edge",
            rejected.clone(),
        );
        // 1 ms .. ~8 s.
        let ingest_duration = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        registry.register_with_unit(
            "usage_ingest_duration",
            "Time to store one usage batch: catalog read and the ingest statement (refused batches are not counted)",
            Unit::Seconds,
            ingest_duration.clone(),
        );
        Self {
            accepted,
            duplicates,
            late,
            rejected,
            ingest_duration,
        }
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tollgate_cp");
        let outbox_processed = Family::<TopicLabels, Counter>::default();
        registry.register(
            "outbox_processed",
            "Outbox events applied",
            outbox_processed.clone(),
        );
        let outbox_failures = Family::<TopicLabels, Counter>::default();
        registry.register(
            "outbox_failures",
            "Outbox event attempts that failed and will be retried",
            outbox_failures.clone(),
        );
        let checkouts = Family::<CheckoutLabels, Counter>::default();
        registry.register(
            "checkouts",
            "Checkout attempts by outcome",
            checkouts.clone(),
        );
        let facts_published = Counter::default();
        registry.register(
            "facts_published",
            "Account facts published to the change stream",
            facts_published.clone(),
        );
        let change_publish_ms = Histogram::new(PROPAGATION_BUCKETS_MS.iter().copied());
        registry.register(
            "change_publish_milliseconds",
            "A change written (in its transaction, before the commit: a checkout, a cancel, a ban, a dunning step) to its account's facts published to the change stream, ms",
            change_publish_ms.clone(),
        );
        let redis_repairs = Counter::default();
        registry.register(
            "redis_repairs",
            "Times Redis held less than was published (a restore from an older snapshot) and what changed since was republished",
            redis_repairs.clone(),
        );
        let outbox_pruned = Counter::default();
        registry.register(
            "outbox_pruned",
            "Processed outbox rows and billing inbox ids deleted past TOLLGATE_OUTBOX_RETENTION_HOURS",
            outbox_pruned.clone(),
        );
        let usage = UsageMetrics::register(&mut registry);
        Self {
            registry,
            outbox_processed,
            outbox_failures,
            checkouts,
            facts_published,
            change_publish_ms,
            redis_repairs,
            outbox_pruned,
            usage,
        }
    }

    /// Counts one checkout attempt's outcome.
    pub fn checkout(&self, outcome: CheckoutOutcome) {
        self.checkouts
            .get_or_create(&CheckoutLabels { outcome })
            .inc();
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

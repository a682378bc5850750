//! Prometheus metrics under the `tollgate_cp` prefix. Labels are closed enums: never an
//! account id.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Topic {
    EntitlementsRecompute,
    EntitlementsPublish,
    BillingSchedule,
    Unknown,
}

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
        Self {
            registry,
            outbox_processed,
            outbox_failures,
            checkouts,
            facts_published,
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

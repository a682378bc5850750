//! Shared application state handed to every router, service and worker.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use secrecy::SecretString;
use sqlx::PgPool;
use tokio::sync::Notify;

use crate::clock::Clock;
use crate::gateways::PaymentGateway;
use crate::gateways::simulated::SimulatedGateway;
use crate::metrics::Metrics;
use crate::outbox::{self, Consumers, Topic};

#[derive(Clone)]
pub struct AppState(pub Arc<Inner>);

pub struct Inner {
    /// cf_prod: accounts, subscriptions, catalog, facts, outbox.
    pub cf: PgPool,
    /// billing_prod: schedules, usage (and later invoices, ledger).
    pub billing: PgPool,
    /// One server or a cluster; reconnects by itself; the relay retries publishing while Redis
    /// (or the node of an account's shard) is away.
    pub redis: tollgate_protocol::redis_conn::RedisConn,
    /// The change streams' and L2's key names (`TOLLGATE_REDIS_KEY_PREFIX`, stream shards).
    pub redis_keys: tollgate_protocol::redis_keys::Keys,
    /// Cards (Stripe, or the simulator in development).
    pub gateway: Arc<dyn PaymentGateway>,
    /// PayPal (Braintree, or the simulator in development); none: PayPal is not offered.
    pub paypal: Option<Arc<dyn PaymentGateway>>,
    /// Outbound webhook deliveries (no redirects followed, [`crate::events::TIMEOUT`]).
    pub http: reqwest::Client,
    /// Present only with the simulated gateway in development mode: completes 3-D Secure.
    pub simulator: Option<Arc<SimulatedGateway>>,
    pub clock: Arc<dyn Clock>,
    pub edge_token: SecretString,
    pub token_secret: SecretString,
    pub admin_token: SecretString,
    /// Keys rule bundles must be signed with.
    pub trusted_keys: tollgate_rules::bundle::TrustedKeys,
    /// Loads and self-tests uploaded bundles.
    pub rules_engine: tollgate_rules::host::RulesEngine,
    pub dev_mode: bool,
    pub checkout_expiry_secs: i64,
    /// How long after a period ends its usage events still count toward it.
    pub usage_grace: chrono::TimeDelta,
    /// Secrets Stripe signs webhooks with (several during a rotation).
    pub stripe_webhook_secrets: Vec<String>,
    /// The Braintree key pairs its webhooks are signed with (the API keys; empty: none
    /// accepted).
    pub braintree_webhook_keys: Vec<crate::provider_events::braintree::KeyPair>,
    /// Where customer emails go (`smtp://host:port`, `smtps://…`); none: they wait unsent.
    pub smtp_url: Option<String>,
    /// Their sender.
    pub mail_from: String,
    /// The control plane's public base URL (links in emails).
    pub public_url: String,
    /// When failed invoices are retried, how levels escalate, what bans.
    pub dunning: crate::dunning::Policy,
    /// How long processed outbox rows and inbox ids are kept.
    pub outbox_retention: chrono::TimeDelta,
    pub metrics: Metrics,
    /// Wakes every lane of the outbox relay (besides PostgreSQL NOTIFY) after in-process writes:
    /// `notify_waiters`, since one wake-up must reach every lane.
    pub outbox_wake: Notify,
    /// The consumer of each outbox topic (registered by the process, see `run`).
    pub consumers: Consumers<AppState>,
    /// The consumers of billing_prod's outbox.
    pub billing_consumers: Consumers<BillingOutbox>,
    /// Wakes every lane of billing_prod's relay (`notify_waiters`).
    pub billing_outbox_wake: Notify,
}

/// The relay host of billing_prod's outbox (the same relay over the billing pool).
#[derive(Clone)]
pub struct BillingOutbox(pub AppState);

impl outbox::Host for BillingOutbox {
    fn pool(&self) -> &PgPool {
        &self.0.billing
    }

    fn now(&self) -> DateTime<Utc> {
        self.0.clock.now()
    }

    fn consumers(&self) -> &Consumers<Self> {
        &self.0.billing_consumers
    }

    fn wake(&self) -> &Notify {
        &self.0.billing_outbox_wake
    }

    fn count(&self, topic: Topic, ok: bool) {
        self.0.count(topic, ok);
    }
}

impl Inner {
    /// The gateway that made something stored with `name` (a method's, an attempt's or a
    /// payment's gateway): later calls about it go there.
    pub fn gateway_named(
        &self,
        name: &str,
    ) -> Result<&dyn PaymentGateway, crate::gateways::GatewayError> {
        if self.gateway.name() == name {
            return Ok(self.gateway.as_ref());
        }
        match &self.paypal {
            Some(p) if p.name() == name => Ok(p.as_ref()),
            _ => Err(crate::gateways::GatewayError::Invalid(format!(
                "no payment gateway named {name} is configured"
            ))),
        }
    }
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl outbox::Host for AppState {
    fn pool(&self) -> &PgPool {
        &self.cf
    }

    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    fn consumers(&self) -> &Consumers<Self> {
        &self.consumers
    }

    fn wake(&self) -> &Notify {
        &self.outbox_wake
    }

    fn count(&self, topic: Topic, ok: bool) {
        let labels = crate::metrics::TopicLabels { topic };
        if ok {
            self.metrics.outbox_processed.get_or_create(&labels).inc();
        } else {
            self.metrics.outbox_failures.get_or_create(&labels).inc();
        }
    }
}

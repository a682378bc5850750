//! The control-plane process: its state, the workers it runs (outbox relay, maintenance) and
//! serving until a shutdown signal.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use secrecy::ExposeSecret;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::sync::Notify;
use tollgate_protocol::redis_conn::RedisClient;
use tollgate_protocol::redis_keys::RedisTarget;

use crate::clock::{Clock, OffsetClock, SystemClock};
use crate::config::Config;
use crate::events::EventType;
use crate::gateways::PaymentGateway;
use crate::gateways::simulated::SimulatedGateway;
use crate::metrics::Metrics;
use crate::outbox::{Consumers, Topic};
use crate::state::BillingOutbox;
use crate::state::{AppState, Inner};
use crate::{
    accounts, api, billing, catalog, dunning, entitlements, events, gateways, maintenance, outbox,
    subscriptions, usage,
};

/// The cf_prod schema, applied at start.
pub static CF_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/cf");
/// The billing_prod schema, applied at start.
pub static BILLING_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/billing");

/// The consumer of each outbox topic: the outbox knows no domain, the process wires them.
fn consumers() -> Consumers<AppState> {
    Consumers::default()
        .on(Topic::EntitlementsRecompute, |state, conn, d| {
            Box::pin(entitlements::on_recompute(state, conn, d))
        })
        .on(Topic::EntitlementsPublish, |state, conn, d| {
            Box::pin(entitlements::on_publish(state, conn, d))
        })
        .on(Topic::BillingSchedule, |state, _, d| {
            Box::pin(billing::on_schedule(state, d))
        })
        .on(Topic::DunningPaymentMethodAdded, |state, _, d| {
            Box::pin(dunning::on_payment_method_added(state, d))
        })
}

/// cf_prod's outbox topics on the way to the edges: a change's facts recomputed, then published.
const FACTS_TOPICS: &[Topic] = &[Topic::EntitlementsRecompute, Topic::EntitlementsPublish];
const FACTS_LANE: outbox::Lane = outbox::Lane::only("facts", FACTS_TOPICS);
const CF_OTHER_LANE: outbox::Lane = outbox::Lane::except("cf", FACTS_TOPICS);
/// billing_prod's dunning snapshots for cf (a step's facts and bans follow from them).
const DUNNING_TOPICS: &[Topic] = &[Topic::BillingDunningChanged];
const DUNNING_LANE: outbox::Lane = outbox::Lane::only("dunning", DUNNING_TOPICS);
const BILLING_OTHER_LANE: outbox::Lane = outbox::Lane::except("billing", DUNNING_TOPICS);

/// The consumers of billing_prod's outbox (they run in its relay's billing transaction).
fn billing_consumers() -> Consumers<BillingOutbox> {
    Consumers::default()
        .on(
            Topic::BillingPaymentFailed,
            |host: &BillingOutbox, conn, d| {
                Box::pin(async move {
                    dunning::on_payment_failed(&host.0, conn, d).await?;
                    subscriptions::on_payment_failed(&host.0, conn, d).await?;
                    events::from_billing(&host.0, d, EventType::PaymentFailed).await
                })
            },
        )
        .on(
            Topic::BillingInvoicePaid,
            |host: &BillingOutbox, conn, d| {
                Box::pin(async move {
                    dunning::on_invoice_paid(conn, d).await?;
                    subscriptions::on_invoice_paid(&host.0, d).await?;
                    events::from_billing(&host.0, d, EventType::InvoicePaid).await
                })
            },
        )
        .on(Topic::BillingInvoiceVoided, |host: &BillingOutbox, _, d| {
            Box::pin(async move {
                subscriptions::on_invoice_paid(&host.0, d).await?;
                events::from_billing(&host.0, d, EventType::InvoiceVoided).await
            })
        })
        .on(
            Topic::BillingInvoiceFinalized,
            |host: &BillingOutbox, _, d| {
                Box::pin(events::from_billing(
                    &host.0,
                    d,
                    EventType::InvoiceFinalized,
                ))
            },
        )
        .on(
            Topic::BillingDisputeChanged,
            |host: &BillingOutbox, _, d| Box::pin(events::from_dispute(&host.0, d)),
        )
        .on(
            Topic::BillingDunningChanged,
            |host: &BillingOutbox, _, d| Box::pin(accounts::on_dunning_changed(&host.0, d)),
        )
        .on(
            Topic::BillingInvoiceUncollectible,
            |host: &BillingOutbox, _, d| {
                Box::pin(async move {
                    subscriptions::on_invoice_uncollectible(&host.0, d).await?;
                    events::from_billing(&host.0, d, EventType::InvoiceUncollectible).await
                })
            },
        )
}

/// Parts of the state a caller may choose (tests pass their own pools and clock, and may wrap
/// the payment gateway, e.g. to make it stall).
pub struct Deps {
    pub cf: PgPool,
    pub billing: PgPool,
    pub redis: tollgate_protocol::redis_conn::RedisConn,
    pub clock: Arc<dyn Clock>,
    /// Wraps the configured gateway (tests: stalls, failures after charging).
    pub wrap_gateway: Option<GatewayWrapper>,
}

/// Wraps a payment gateway in another (see [`Deps::wrap_gateway`]).
pub type GatewayWrapper =
    Box<dyn FnOnce(Arc<dyn PaymentGateway>) -> Arc<dyn PaymentGateway> + Send>;

/// Builds the state: picks the gateway (Stripe when a key is configured, else simulated).
pub fn build_state(config: &Config, deps: Deps) -> anyhow::Result<AppState> {
    let (gateway, simulator): (Arc<dyn PaymentGateway>, Option<Arc<SimulatedGateway>>) =
        match &config.stripe_secret_key {
            Some(key) => {
                let g = gateways::stripe::StripeGateway::new(
                    key.expose_secret(),
                    config.stripe_api_base.as_deref(),
                )
                .context("stripe gateway")?;
                (Arc::new(g), None)
            }
            None => {
                let sim = Arc::new(SimulatedGateway::new(deps.cf.clone()));
                (sim.clone(), Some(sim))
            }
        };
    let gateway = match deps.wrap_gateway {
        Some(wrap) => wrap(gateway),
        None => gateway,
    };
    // PayPal: Braintree when configured, else the simulator (which takes Braintree's test
    // nonces) in dev mode — the very gateway cards use when they are simulated too — else not
    // offered.
    let paypal: Option<Arc<dyn PaymentGateway>> = match &config.braintree {
        Some(bt) => Some(Arc::new(
            gateways::braintree::BraintreeGateway::new(bt.clone()).context("braintree gateway")?,
        )),
        None if config.dev_mode && simulator.is_some() => Some(gateway.clone()),
        None if config.dev_mode => Some(Arc::new(SimulatedGateway::new(deps.cf.clone()))),
        None => None,
    };
    Ok(AppState(Arc::new(Inner {
        cf: deps.cf,
        billing: deps.billing,
        redis: deps.redis,
        gateway,
        paypal,
        http: reqwest::Client::builder()
            .timeout(crate::events::TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .context("http client")?,
        simulator: if config.dev_mode { simulator } else { None },
        clock: deps.clock,
        edge_token: config.edge_token.clone(),
        token_secret: config.token_secret.clone(),
        admin_token: config.admin_token.clone(),
        trusted_keys: config.trusted_keys.clone(),
        rules_engine: tollgate_rules::host::RulesEngine::new().context("wasmtime engine")?,
        dev_mode: config.dev_mode,
        checkout_expiry_secs: config.checkout_expiry_secs,
        usage_grace: chrono::TimeDelta::milliseconds(config.usage_grace_ms),
        dunning: config.dunning.clone(),
        smtp_url: config.smtp_url.clone(),
        stripe_webhook_secrets: config.stripe_webhook_secrets.clone(),
        braintree_webhook_keys: config
            .braintree
            .iter()
            .map(|b| crate::provider_events::braintree::KeyPair {
                public_key: b.public_key.clone(),
                private_key: secrecy::ExposeSecret::expose_secret(&b.private_key).to_owned(),
            })
            .collect(),
        mail_from: config.mail_from.clone(),
        public_url: config.public_url.clone(),
        outbox_retention: chrono::TimeDelta::hours(config.outbox_retention_hours),
        redis_keys: config.redis.keys.clone(),
        metrics: Metrics::new(),
        outbox_wake: Notify::new(),
        consumers: consumers(),
        billing_consumers: billing_consumers(),
        billing_outbox_wake: Notify::new(),
    })))
}

/// Connects to one Redis server at `url`, retrying for up to `wait` (Redis may start after us).
pub async fn connect_redis(
    url: &str,
    wait: Duration,
) -> anyhow::Result<tollgate_protocol::redis_conn::RedisConn> {
    connect_redis_to(&RedisTarget::Single(url.to_owned()), wait).await
}

/// Connects to one Redis server or a cluster, retrying for up to `wait` (Redis may start after
/// us; a cluster connects once one of its nodes answers with the slot map).
pub async fn connect_redis_to(
    target: &RedisTarget,
    wait: Duration,
) -> anyhow::Result<tollgate_protocol::redis_conn::RedisConn> {
    let client = RedisClient::open(target).context("redis url")?;
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match client.shared().await {
            Ok(c) => return Ok(c),
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(error = %e, cluster = client.is_cluster(), "redis not reachable yet; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e).context("redis unreachable"),
        }
    }
}

/// Seconds start-up waits for PostgreSQL and Redis.
pub const STARTUP_WAIT_SECS: u64 = 30;
/// Interval of the maintenance worker.
pub const MAINTENANCE_INTERVAL_MS: u64 = 1_000;

/// Connects both databases and applies their migrations.
pub async fn connect_databases(config: &Config) -> anyhow::Result<(PgPool, PgPool)> {
    let options = PgPoolOptions::new()
        .max_connections(config.db_pool_size)
        .acquire_timeout(Duration::from_secs(STARTUP_WAIT_SECS));
    let cf = options
        .clone()
        .connect(&config.cf_database_url)
        .await
        .context("connect cf database")?;
    let billing = options
        .connect(&config.billing_database_url)
        .await
        .context("connect billing database")?;
    CF_MIGRATOR.run(&cf).await.context("migrate cf database")?;
    BILLING_MIGRATOR
        .run(&billing)
        .await
        .context("migrate billing database")?;
    Ok((cf, billing))
}

/// Runs the control plane until SIGTERM / Ctrl-C.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let (cf, billing) = connect_databases(&config).await?;
    let clock: Arc<dyn Clock> = if config.dev_mode {
        Arc::new(OffsetClock::default())
    } else {
        Arc::new(SystemClock)
    };
    if clock.follows_shared_offset() {
        // The shared development clock: where the other processes are, across restarts.
        clock.follow_offset_ms(crate::clock::load_offset(&cf).await?);
    }
    let created = usage::ensure_partitions(&billing, clock.now())
        .await
        .context("create usage partitions")?;
    tracing::info!(created, "usage partitions ensured");
    if config.seed_demo {
        catalog::seed(&cf, &tollgate_rules::Catalog::demo())
            .await
            .context("seed demo catalog")?;
        tracing::info!("demo catalog seeded");
    }
    let redis =
        connect_redis_to(&config.redis.target, Duration::from_secs(STARTUP_WAIT_SECS)).await?;
    let state = build_state(
        &config,
        Deps {
            cf,
            billing,
            redis,
            clock,
            wrap_gateway: None,
        },
    )?;
    tracing::info!(
        gateway = state.gateway.name(),
        dev_mode = config.dev_mode,
        "control plane starting"
    );

    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let poll = Duration::from_millis(config.relay_poll_ms);
    // One loop per lane: what the edges wait for never queues behind billing work.
    let relay = tokio::spawn(outbox::run_relay(
        state.clone(),
        CF_OTHER_LANE,
        poll,
        shutdown_rx.clone(),
    ));
    let facts_relay = tokio::spawn(outbox::run_relay(
        state.clone(),
        FACTS_LANE,
        poll,
        shutdown_rx.clone(),
    ));
    let billing_relay = tokio::spawn(outbox::run_relay(
        BillingOutbox(state.clone()),
        BILLING_OTHER_LANE,
        poll,
        shutdown_rx.clone(),
    ));
    let dunning_relay = tokio::spawn(outbox::run_relay(
        BillingOutbox(state.clone()),
        DUNNING_LANE,
        poll,
        shutdown_rx.clone(),
    ));
    let maintenance = tokio::spawn(run_maintenance_loop(state.clone(), shutdown_rx.clone()));
    // Webhook receivers are other companies' servers: a slow one never delays billing.
    let webhooks = tokio::spawn(run_webhook_loop(state.clone(), shutdown_rx.clone()));
    let mails = tokio::spawn(run_mail_loop(state.clone(), shutdown_rx.clone()));

    let listener = tokio::net::TcpListener::bind(config.listen_addr)
        .await
        .context("bind")?;
    tracing::info!(addr = %config.listen_addr, "listening");
    axum::serve(listener, api::app(state))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("serve")?;
    let _ = shutdown_tx.send(true);
    let _ = tokio::join!(
        relay,
        facts_relay,
        billing_relay,
        dunning_relay,
        maintenance,
        webhooks,
        mails
    );
    tracing::info!("control plane stopped");
    Ok(())
}

async fn run_maintenance_loop(state: AppState, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    loop {
        if state.clock.follows_shared_offset() {
            match crate::clock::load_offset(&state.cf).await {
                Ok(ms) => state.clock.follow_offset_ms(ms),
                Err(e) => tracing::debug!(error = %e, "development clock not read"),
            }
        }
        if let Err(e) = maintenance::run(&state).await {
            tracing::warn!(error = %format!("{e:#}"), "maintenance pass failed");
        }
        if let Err(e) = entitlements::repair_redis_if_behind(&state).await {
            tracing::debug!(error = %format!("{e:#}"), "Redis publish check failed");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(MAINTENANCE_INTERVAL_MS)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Outbound webhook deliveries attempted per pass.
pub const WEBHOOK_BATCH: i64 = 100;

async fn run_webhook_loop(state: AppState, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    loop {
        if let Err(e) = events::deliver_due(&state, WEBHOOK_BATCH).await {
            tracing::warn!(error = %format!("{e:#}"), "webhook delivery pass failed");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(MAINTENANCE_INTERVAL_MS)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

async fn run_mail_loop(state: AppState, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    loop {
        if let Err(e) = crate::mail::send_due(&state, WEBHOOK_BATCH).await {
            tracing::warn!(error = %format!("{e:#}"), "email pass failed");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(MAINTENANCE_INTERVAL_MS)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutdown signal received");
}

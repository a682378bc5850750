//! Tollgate's control plane: Dashboard and internal HTTP APIs plus the background workers
//! (outbox relay, time-driven maintenance) over cf_prod, billing_prod and Redis.
//!
//! `main.rs` only reads config and calls [`run`]; tests build an [`AppState`] and drive
//! [`app`] directly.

/// `format!` for SQL text assembled only from this crate's constants (column lists, lock
/// clauses), never from input: every value still goes through a bind parameter.
macro_rules! sqlf {
    ($($t:tt)*) => { sqlx::AssertSqlSafe(format!($($t)*)) };
}

pub mod accounts;
pub mod billing;
pub mod catalog;
pub mod checkout;
pub mod clock;
pub mod config;
pub mod dev;
pub mod entitlements;
pub mod gateways;
pub mod http;
pub mod internal;
pub mod metrics;
pub mod outbox;
pub mod rollout;
pub mod state;
pub mod subscriptions;
pub mod usage;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use secrecy::ExposeSecret;
use serde_json::json;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::sync::Notify;

use crate::clock::{Clock, OffsetClock, SystemClock};
use crate::config::Config;
use crate::gateways::PaymentGateway;
use crate::gateways::simulated::SimulatedGateway;
use crate::http::ApiError;
use crate::metrics::Metrics;
use crate::state::{AppState, Inner};

pub static CF_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/cf");
pub static BILLING_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/billing");

/// Every route of the control plane.
pub fn app(state: AppState) -> Router {
    let dashboard = Router::new()
        .route("/v1/plans", get(catalog::list_plans))
        .route("/v1/accounts", post(accounts::http::create_account))
        .route("/v1/account", get(accounts::http::get_account))
        .route(
            "/v1/payment-methods",
            post(accounts::payment_methods::add).get(accounts::payment_methods::list_handler),
        )
        .route(
            "/v1/payment-methods/{id}/confirm",
            post(accounts::payment_methods::confirm),
        )
        .route("/v1/checkout", post(checkout::checkout))
        .route("/v1/checkout/{id}", get(checkout::get_checkout_handler))
        .route(
            "/v1/checkout/{id}/confirm",
            post(checkout::confirm_checkout),
        )
        .route("/v1/checkout/{id}/cancel", post(checkout::cancel_checkout))
        .route("/v1/subscriptions", get(subscriptions::list))
        .route("/v1/subscriptions/{id}/cancel", post(subscriptions::cancel))
        .route("/v1/usage", get(usage::account_usage));
    let internal = Router::new()
        .route("/internal/v1/accounts/{id}/facts", get(internal::facts))
        .route(
            tollgate_protocol::internal_api::FACTS_BATCH_PATH,
            post(internal::facts_batch),
        )
        .route("/internal/v1/bundle", get(rollout::bundle_for_edge))
        .route(
            "/internal/v1/edges/{edge_id}/status",
            post(rollout::edge_status),
        )
        .route(
            tollgate_protocol::internal_api::USAGE_PATH,
            post(usage::ingest_batch).layer(DefaultBodyLimit::max(usage::BODY_BYTES_MAX)),
        )
        .route("/internal/v1/leases", post(usage::lease_handler))
        .route("/internal/v1/leases/release", post(usage::release_handler))
        .route(
            "/internal/v1/accounts/{id}/usage",
            get(usage::internal_account_usage),
        );
    let admin = Router::new()
        .route(
            "/admin/v1/bundles",
            post(rollout::upload)
                .layer(DefaultBodyLimit::max(
                    tollgate_rules::bundle::BUNDLE_BYTES_MAX,
                ))
                .get(rollout::list),
        )
        .route(
            "/admin/v1/bundles/{version}/activate",
            post(rollout::activate),
        )
        .route(
            "/admin/v1/bundles/{version}/promote",
            post(rollout::promote),
        )
        .route("/admin/v1/rollback", post(rollout::rollback))
        .route("/admin/v1/edges", get(rollout::edges))
        .route("/admin/v1/audit", get(rollout::audit_log));
    let mut router = Router::new()
        .merge(dashboard)
        .merge(internal)
        .merge(admin)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_handler));
    if state.dev_mode {
        let mut dev = Router::new()
            .route("/dev/v1/clock", get(dev::clock))
            .route("/dev/v1/clock/advance", post(dev::advance));
        if state.simulator.is_some() {
            dev = dev.route(
                "/dev/v1/simulator/intents/{id}/authenticate",
                post(dev::authenticate),
            );
        }
        router = router.merge(dev);
    }
    router
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "route_not_found", "no such route")
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this route",
            )
        })
        .layer(DefaultBodyLimit::max(http::extract::BODY_BYTES_MAX))
        .with_state(state)
}

async fn healthz() -> impl IntoResponse {
    axum::Json(json!({ "status": "ok" }))
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let cf = sqlx::query("SELECT 1").execute(&state.cf).await.is_ok();
    let billing = sqlx::query("SELECT 1")
        .execute(&state.billing)
        .await
        .is_ok();
    let mut redis = state.redis.clone();
    let redis_ok = redis::cmd("PING")
        .query_async::<String>(&mut redis)
        .await
        .is_ok();
    let ready = cf && billing && redis_ok;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        axum::Json(json!({ "ready": ready, "cf": cf, "billing": billing, "redis": redis_ok })),
    )
}

async fn metrics_handler(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

/// Parts of the state a caller may choose (tests pass their own pools and clock, and may wrap
/// the payment gateway, e.g. to make it stall).
pub struct Deps {
    pub cf: PgPool,
    pub billing: PgPool,
    pub redis: redis::aio::ConnectionManager,
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
    Ok(AppState(Arc::new(Inner {
        cf: deps.cf,
        billing: deps.billing,
        redis: deps.redis,
        gateway,
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
        redis_keys: tollgate_protocol::redis_keys::Keys::new(&config.redis_key_prefix),
        metrics: Metrics::new(),
        outbox_wake: Notify::new(),
    })))
}

/// Connects to Redis, retrying for up to `wait` (Redis may start after us).
pub async fn connect_redis(
    url: &str,
    wait: Duration,
) -> anyhow::Result<redis::aio::ConnectionManager> {
    let client = redis::Client::open(url).context("redis url")?;
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match redis::aio::ConnectionManager::new(client.clone()).await {
            Ok(c) => return Ok(c),
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(error = %e, "redis not reachable yet; retrying");
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

/// Runs the control plane until SIGTERM / Ctrl-C.
pub async fn run(config: Config) -> anyhow::Result<()> {
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
    let clock: Arc<dyn Clock> = if config.dev_mode {
        Arc::new(OffsetClock::default())
    } else {
        Arc::new(SystemClock)
    };
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
    let redis = connect_redis(&config.redis_url, Duration::from_secs(STARTUP_WAIT_SECS)).await?;
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
    let relay = tokio::spawn(outbox::run_relay(
        state.clone(),
        Duration::from_millis(config.relay_poll_ms),
        shutdown_rx.clone(),
    ));
    let maintenance = tokio::spawn(run_maintenance_loop(state.clone(), shutdown_rx.clone()));

    let listener = tokio::net::TcpListener::bind(config.listen_addr)
        .await
        .context("bind")?;
    tracing::info!(addr = %config.listen_addr, "listening");
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("serve")?;
    let _ = shutdown_tx.send(true);
    let _ = tokio::join!(relay, maintenance);
    tracing::info!("control plane stopped");
    Ok(())
}

async fn run_maintenance_loop(state: AppState, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    loop {
        if let Err(e) = subscriptions::run_maintenance(&state).await {
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

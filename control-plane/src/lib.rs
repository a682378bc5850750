//! Tollgate's control plane: accounts, payment methods, checkout, subscriptions, entitlements,
//! usage, rule rollout and billing over cf_prod and billing_prod (locally the databases
//! `tollgate_cf` and `tollgate_billing`) and Redis, behind the Dashboard, internal and admin
//! routers.
//!
//! * Domains own their logic and their SQL (a `store` part each): [`accounts`],
//!   [`payment_methods`], [`catalog`], [`checkout`], [`subscriptions`], [`entitlements`],
//!   [`usage`], [`rollout`], [`billing`]. They take typed ids and commands ([`ids`],
//!   [`actor`]) and return typed results or an [`error::Error`].
//! * Cross-cutting: [`idempotency`] (the two-phase `Idempotency-Key` protocol every
//!   money-moving operation runs under), [`outbox`] (typed topics, the relay, retention),
//!   [`maintenance`] (time-driven transitions), [`gateways`] (payment providers).
//! * Interfaces: [`api`] (route tables: extract, call one service function, render) over
//!   [`http`] (problem+json, extractors, bearer tokens).
//! * The process: [`run`] (state, workers, serving), [`config`], [`state`], [`clock`],
//!   [`metrics`], [`health`], [`devtools`].
//!
//! `main.rs` only reads config and calls [`run::run`]; tests build an [`state::AppState`] and
//! drive [`app`] directly.

/// `format!` for SQL text assembled only from this crate's constants (column lists, lock
/// clauses), never from input: every value still goes through a bind parameter.
macro_rules! sqlf {
    ($($t:tt)*) => { sqlx::AssertSqlSafe(format!($($t)*)) };
}

pub mod accounts;
pub mod actor;
pub mod agents;
pub mod api;
pub mod audit;
pub mod billing;
pub mod catalog;
pub mod checkout;
pub mod cli;
pub mod clock;
pub mod config;
pub mod devtools;
pub mod disputes;
pub mod dunning;
pub mod entitlements;
pub mod error;
pub mod events;
pub mod gateways;
pub mod health;
pub mod http;
pub mod idempotency;
pub mod ids;
pub mod ledger;
pub mod mail;
pub mod maintenance;
pub mod metrics;
pub mod money;
pub mod outbox;
pub mod payment_methods;
pub mod provider_events;
pub mod rollout;
pub mod run;
pub mod state;
pub mod subscriptions;
pub mod usage;

pub use api::app;
pub use run::run;
pub use run::{
    BILLING_MIGRATOR, CF_MIGRATOR, Deps, GatewayWrapper, MAINTENANCE_INTERVAL_MS,
    STARTUP_WAIT_SECS, build_state, connect_redis, connect_redis_to, shutdown_signal,
};

//! Tollgate's edge sidecar: answers product services' entitlement checks from memory.
//!
//! Check path: a sharded in-memory cache of account → materialised decisions ([`cache`]). A miss reads the Redis L2
//! copy, then the control plane's internal API. The Redis change stream keeps cached accounts
//! current (see [`stream`]). Decisions are materialised when facts or the rule bundle change,
//! by the bundle's WebAssembly module (see [`bundles`]); the check path never enters it.
//!
//! This file is the table of contents: every item lives in a module, and the re-exports below
//! keep the crate-root paths other crates use (`tollgate_edge::app`, `tollgate_edge::run`,
//! `tollgate_edge::CheckResponse`, …).

// Serving: the router and what it routes to.
// Who may call which routes (service and operator tokens).
pub mod auth;
// The check path: `GET`/`POST /v1/check`, entitlements, `decide`, the metered-quota rule.
mod check;
// The two tower layers every request crosses: the token gate and the body bound.
pub mod gate;
// OpenFeature Remote Evaluation Protocol routes, over the same `decide`.
pub mod ofrep;
// `GET /v1/status`, `/readyz`, `/metrics`.
mod ops;
// The OpenAPI 3.1 contract, `GET /openapi.json`.
pub mod openapi;
// RFC 9457 problem+json, the edge's one error format.
mod problem;
// `app(state)`: every route, its gate and the layers around them.
mod router;
// `POST /v1/usage` and the dead-letter operator routes.
pub mod usage_api;

// State and what keeps it current.
// Rule bundles: fetch, verify, test, swap; the bundle and facts files on disk.
pub mod bundles;
// The account cache of materialised decisions.
pub mod cache;
// Prometheus metrics under the `tollgate_edge` prefix.
pub mod metrics;
// The edge's shared state: cache, bundle in force, upstream, usage store, denials.
pub mod state;
// The Redis change-stream follower.
pub mod stream;
// The control plane's internal API and the Redis L2 copy.
pub mod upstream;

// Metered usage, durably.
// The usage dead-letter file: events set aside until an operator replays or discards them.
pub mod dead_letter;
// The filesystem seam of every durable write (fault injection in tests) and durable replace.
pub mod durable;
// The usage store: group commit, flusher, pending counters, aggregates, quota leases.
pub mod usage;
// The checksummed, segmented usage log.
pub mod usage_log;

// Process.
// Wall-clock time in unix milliseconds.
mod clock;
// Configuration: defaults < file < environment, validated at start-up.
pub mod config;
// `run(config)`: restore, start the background tasks, serve until SIGTERM.
mod run;

pub use check::{QUANTITY_RULE, decide};
pub use clock::now_ms;
pub use gate::{DRAIN_BYTES_MAX, REQUEST_BODY_BYTES_MAX};
pub use router::app;
pub use run::{STALE_POLL_MS, run};
pub use tollgate_protocol::check::{BATCH_CHECKS_MAX, BatchCheck, BatchRequest, CheckResponse};

/// The allocator the edge binary runs with (and the benchmarks that run an edge in process):
/// mimalloc's per-thread heaps. Under glibc's malloc the usage path spent about half its CPU in
/// malloc/free and their arena locks (`bench/results/profiles/usage-edge-*.svg`).
pub use mimalloc::MiMalloc as Allocator;

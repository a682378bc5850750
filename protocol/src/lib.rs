//! The contract between the control plane, edge sidecars and the product services beside them.
//!
//! Everything that crosses the wire between them is defined here and nowhere else:
//! * [`AccountFacts`] — what the control plane knows about one account that decides its
//!   entitlements, versioned per account (the version only ever grows).
//! * [`ChangeEvent`] — one entry of the Redis change stream: new facts for one account plus the
//!   commit time, so an edge can measure propagation.
//! * [`Decision`] / [`Reason`] — what a check answers for one feature; [`check`] — the edge's
//!   check API as product services call it.
//! * The Redis key names and stream shards both sides agree on ([`redis_keys`]), and how both
//!   connect to one Redis or a Redis Cluster (`redis_conn`, feature `redis`); the internal API's paths, bodies
//!   and edge-id rule ([`internal_api`]); canary membership by edge id ([`canary`]).
//! * [`problem`] — the RFC 9457 error body every API answers.
//! * [`usage`] — meters, usage events, the batches edges flush and their acknowledgements,
//!   aggregates, quota leases, and the bounds every event keeps ([`usage::limits`]), checked
//!   by one function on every side ([`usage::validate_event`]).
//!
//! Encoding is JSON on every channel (HTTP bodies and Redis stream fields); it is small, and
//! both sides are Rust, but JSON keeps the stream readable with `redis-cli` during incidents.

mod decision;
mod facts;

pub mod canary;
pub mod check;
pub mod internal_api;
pub mod problem;
#[cfg(feature = "redis")]
pub mod redis_conn;
pub mod redis_keys;
pub mod usage;

pub use decision::{Decision, Reason};
pub use facts::*;

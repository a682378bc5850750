//! HTTP plumbing every router shares: the one error → problem+json rendering, extractors with
//! problem rejections, bearer tokens, the `Idempotency-Key` header.

pub mod auth;
pub mod extract;
pub mod idempotency;
pub mod problem;

pub use extract::{Json, Path, Query};

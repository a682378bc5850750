//! HTTP plumbing shared by every router: problem responses, extractors, idempotency keys.

pub mod auth;
pub mod extract;
pub mod idempotency;
pub mod problem;

pub use extract::{Json, Path, Query};
pub use problem::{ApiError, ApiResult};

//! Paths of the control plane's internal API used by edges.

use serde::{Deserialize, Serialize};

/// `GET` → [`super::AccountFacts`] (404 when the account does not exist).
pub fn facts_path(account: &super::AccountId) -> String {
    format!("/internal/v1/accounts/{account}/facts")
}
/// `POST` [`super::FactsRequest`] → [`super::FactsBatch`]: the facts of up to
/// [`super::FACTS_BATCH_MAX`] accounts in one round trip (unknown accounts are absent).
pub const FACTS_BATCH_PATH: &str = "/internal/v1/facts";
/// `GET ?`[`BundleQuery`] → the signed rule bundle meant for this edge (`ETag` / `If-None-Match`).
pub const BUNDLE_PATH: &str = "/internal/v1/bundle";
/// `POST` [`EdgeStatus`] → 204: the edge reports what it runs.
pub fn edge_status_path(edge_id: &str) -> String {
    format!("/internal/v1/edges/{edge_id}/status")
}
/// Header carrying the edge token.
pub const EDGE_TOKEN_HEADER: &str = "authorization";
/// `POST` [`super::usage::UsageBatch`] (header `Idempotency-Key` = the batch id) →
/// [`super::usage::UsageAck`].
pub const USAGE_PATH: &str = "/internal/v1/usage";
/// `POST` [`super::usage::LeaseRequest`] → [`super::usage::LeaseGrant`].
pub const LEASE_PATH: &str = "/internal/v1/leases";
/// `POST` [`super::usage::LeaseRelease`] → 204: an edge gives back units it did not use.
pub const LEASE_RELEASE_PATH: &str = "/internal/v1/leases/release";
/// `GET` → [`super::usage::AccountUsage`]: the account's current-period aggregates.
pub fn usage_path(account: &super::AccountId) -> String {
    format!("/internal/v1/accounts/{account}/usage")
}

/// The longest edge id, bytes.
pub const EDGE_ID_BYTES_MAX: usize = 128;

/// What an edge id may be (`TOLLGATE_EDGE_ID`): 1-128 characters of `A-Z a-z 0-9 - _ .`. The
/// edge refuses to start with another; the control plane refuses requests naming another.
pub fn valid_edge_id(id: &str) -> bool {
    (1..=EDGE_ID_BYTES_MAX).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// The query of [`BUNDLE_PATH`].
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams), into_params(parameter_in = Query))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleQuery {
    pub edge_id: String,
}

/// Longest `last_error` of an [`EdgeStatus`] the control plane keeps, characters (a longer one
/// is cut).
pub const LAST_ERROR_CHARS_MAX: usize = 1_000;

/// The body of [`edge_status_path`]: what an edge runs and why its last activation failed.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeStatus {
    /// The bundle serving, if any.
    pub bundle_version: Option<u64>,
    /// The last bundle activation's failure, cleared by a success.
    #[serde(default)]
    pub last_error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edge_ids_are_short_and_plain() {
        assert!(valid_edge_id("edge-1"));
        assert!(valid_edge_id("eu_west.1"));
        assert!(valid_edge_id(&"e".repeat(EDGE_ID_BYTES_MAX)));
        assert!(!valid_edge_id(&"e".repeat(EDGE_ID_BYTES_MAX + 1)));
        assert!(!valid_edge_id(""));
        assert!(!valid_edge_id("edge 1"));
        assert!(!valid_edge_id("edge/1"));
        assert!(!valid_edge_id("édge"));
        assert!(!valid_edge_id("edge\0"));
    }
}

/// `GET` — the control plane's clock: edges in development follow its offset, so advancing
/// the development clock moves their metering periods too.
pub const CLOCK_PATH: &str = "/internal/v1/clock";

/// What [`CLOCK_PATH`] answers.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClockReading {
    /// The control plane's now, unix ms.
    pub now_ms: i64,
    /// How far it is ahead of the wall clock, ms (0 outside development).
    pub offset_ms: i64,
}

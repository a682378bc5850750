//! The one error body of every Tollgate HTTP API: RFC 9457 `application/problem+json` with a
//! stable machine `code`. The control plane (`http::problem`) and the edge (`problem.rs`) render
//! it; this type is its contract (the schema both `GET /openapi.json` documents reference, and
//! what tests and clients read a problem as). Extension members (RFC 9457 §3.2, e.g.
//! `decline_code`, a batch's `rejected`) may follow the five below.

use serde::{Deserialize, Serialize};

/// The media type of a [`Problem`].
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An RFC 9457 problem document.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// `https://tollgate.dev/problems/{code}`.
    #[serde(rename = "type")]
    #[cfg_attr(feature = "openapi", schema(format = "uri"))]
    pub type_uri: String,
    /// The HTTP status's reason phrase.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong, for a person (a 5xx never carries internal detail).
    pub detail: String,
    /// Stable, snake_case (`invoice_already_paid`): what a client branches on.
    pub code: String,
}

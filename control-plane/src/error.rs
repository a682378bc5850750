//! The one error every domain returns and every interface renders.
//!
//! A domain says *what kind* of failure happened ([`Kind`]), a stable machine `code`
//! (snake_case, documented in the README) and a `detail` a client may read; `http::problem`
//! turns it into RFC 9457 `application/problem+json` with the HTTP status of its kind — the only
//! place that mapping exists. Internal failures are logged here with their detail and reach the
//! client without it.
//!
//! An error is also a value the idempotency records keep (a declined purchase is answered the
//! same way on every retry), so it serialises.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::gateways::{Decline, GatewayError};

/// What kind of failure: decides the HTTP status, nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The request itself is malformed (400).
    BadRequest,
    /// No or bad credentials (401).
    Unauthorized,
    /// The provider declined the payment (402).
    PaymentRequired,
    /// The caller may not do this (403).
    Forbidden,
    /// Unknown — or another account's: the two look the same (404).
    NotFound,
    MethodNotAllowed,
    /// The request conflicts with the resource's state (409).
    Conflict,
    /// The resource is gone for good (410).
    Gone,
    /// Too large (413).
    TooLarge,
    UnsupportedMediaType,
    /// Well-formed but invalid (422).
    Unprocessable,
    /// A dependency is away; retrying (with the same Idempotency-Key) is safe (503).
    Unavailable,
    /// A bug or a broken invariant (500); the detail is logged, not answered.
    Internal,
}

/// A failure as a client sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Error {
    pub kind: Kind,
    /// Stable, snake_case, documented in the README.
    pub code: Cow<'static, str>,
    pub detail: String,
    /// Extra members of the problem (e.g. `decline_code`, `checkout_id`).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub extra: Map<String, Value>,
}

/// `Result` with [`Error`] unless told otherwise.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: Kind, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            kind,
            code: Cow::Borrowed(code),
            detail: detail.into(),
            extra: Map::new(),
        }
    }

    /// Adds a member to the problem.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extra.insert(key.to_owned(), value.into());
        self
    }

    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(Kind::BadRequest, code, detail)
    }

    pub fn unprocessable(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(Kind::Unprocessable, code, detail)
    }

    pub fn conflict(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(Kind::Conflict, code, detail)
    }

    pub fn forbidden(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(Kind::Forbidden, code, detail)
    }

    pub fn gone(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(Kind::Gone, code, detail)
    }

    pub fn too_large(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(Kind::TooLarge, code, detail)
    }

    /// The same answer for "does not exist" and "not yours": ids of other accounts must not be
    /// distinguishable from unknown ids.
    pub fn not_found(what: &str) -> Self {
        Self::new(Kind::NotFound, "not_found", format!("no such {what}"))
    }

    pub fn unauthorized(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(Kind::Unauthorized, code, detail)
    }

    /// An internal failure: logged here with its detail, answered without it.
    pub fn internal(err: impl std::fmt::Display) -> Self {
        tracing::error!(error = %err, "internal error");
        Self::new(Kind::Internal, "internal", "internal error")
    }

    /// A dependency is away: logged here, answered with a retry hint.
    pub fn unavailable(code: &'static str, err: impl std::fmt::Display) -> Self {
        tracing::warn!(error = %err, code, "dependency unavailable");
        Self::new(
            Kind::Unavailable,
            code,
            "a dependency is unavailable; retry with the same Idempotency-Key",
        )
    }

    /// A payment or set-up the provider declined (`402 card_declined`, with the provider's
    /// codes).
    pub fn declined(d: &Decline) -> Self {
        let mut e = Self::new(Kind::PaymentRequired, "card_declined", d.message.clone())
            .with("provider_code", d.code.clone());
        if let Some(code) = &d.decline_code {
            e = e.with("decline_code", code.clone());
        }
        e
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.detail)
    }
}

impl From<sqlx::Error> for Error {
    fn from(err: sqlx::Error) -> Self {
        Self::internal(format_args!("database: {err}"))
    }
}

/// Provider failures that are not declines. The provider's own message is never answered: it
/// may name what was sent.
impl From<GatewayError> for Error {
    fn from(err: GatewayError) -> Self {
        match err {
            GatewayError::Unavailable(e) => Self::unavailable("payment_provider_unavailable", e),
            GatewayError::NotFound(e) => {
                tracing::debug!(error = %e, "payment provider object not found");
                Self::unprocessable(
                    "invalid_payment_method",
                    "the payment provider does not know this payment method",
                )
            }
            GatewayError::Invalid(e) => {
                tracing::warn!(error = %e, "payment provider rejected a request");
                Self::unprocessable(
                    "payment_provider_rejected",
                    "the payment provider rejected the request",
                )
            }
        }
    }
}

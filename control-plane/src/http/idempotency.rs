//! The `Idempotency-Key` header (the protocol around it: [`crate::idempotency`]).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use crate::error::Error;
use crate::idempotency::Key;

pub const HEADER: &str = "idempotency-key";
/// Marks a response that replays one stored earlier.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

/// A request's validated `Idempotency-Key` (required).
#[derive(Debug, Clone)]
pub struct IdempotencyKey(pub Key);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let Some(raw) = parts.headers.get(HEADER) else {
            return Err(Error::bad_request(
                "idempotency_key_required",
                "this request needs an Idempotency-Key header",
            ));
        };
        Key::parse(raw.to_str().unwrap_or("")).map(Self)
    }
}

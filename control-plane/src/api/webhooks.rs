//! Webhooks the payment providers send (`/webhooks/…`): no token, the provider's signature
//! instead. Each handler hands the raw body and the signature to its domain.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::post;

use super::views::{json as reply, value};
use crate::error::{Error, Result};
use crate::provider_events;
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new().route("/webhooks/stripe", post(stripe))
}

/// `POST /webhooks/stripe` — `Stripe-Signature` verified, stored once, applied.
async fn stripe(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: std::result::Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response> {
    let body = body.map_err(|_| Error::too_large("body_too_large", "the body is too large"))?;
    let signature = headers
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok());
    let received = provider_events::receive_stripe(&state, signature, &body).await?;
    Ok(reply(StatusCode::OK, value(&received)))
}

//! Webhooks the payment providers send (`/webhooks/…`): no token, the provider's signature
//! instead. Each handler hands the raw body and the signature to its domain.

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::views::{json as reply, value};
use crate::error::{Error, Result};
use crate::provider_events;
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(stripe))
        .routes(routes!(braintree, braintree_challenge))
}

/// `POST /webhooks/stripe` — `Stripe-Signature` verified, stored once, applied.
#[utoipa::path(
    post, path = "/webhooks/stripe", tag = "webhooks",
    params(("Stripe-Signature" = Option<String>, Header, description = "Stripe\'s signature of the body.")),
    request_body(content = Object, description = "A Stripe event, as Stripe sent it (verified as bytes)."),
    responses(
        (status = 200, description = "Received (or a duplicate).", body = crate::provider_events::Received),
        (status = 400, description = "`invalid_signature`, `malformed_json`, `malformed_payload`: not a verified Stripe event."),
        (status = 413, description = "`body_too_large`."),
        (status = 422, description = "`invalid_event`."),
        (status = 503, description = "`webhooks_not_configured`."),
    ),
)]
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

/// `POST /webhooks/braintree` — form fields `bt_signature`, `bt_payload`; verified, stored
/// once, applied.
#[utoipa::path(
    post, path = "/webhooks/braintree", tag = "webhooks",
    request_body(content = super::shapes::BraintreeNotification, content_type = "application/x-www-form-urlencoded", description = "A Braintree webhook notification."),
    responses(
        (status = 200, description = "Received (or a duplicate).", body = crate::provider_events::Received),
        (status = 400, description = "`invalid_signature`, `malformed_payload`: not a verified Braintree notification."),
        (status = 413, description = "`body_too_large`."),
        (status = 422, description = "`invalid_event`."),
        (status = 503, description = "`webhooks_not_configured`."),
    ),
)]
async fn braintree(
    State(state): State<AppState>,
    body: std::result::Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response> {
    let body = body.map_err(|_| Error::too_large("body_too_large", "the body is too large"))?;
    let received = provider_events::receive_braintree(&state, &body).await?;
    Ok(reply(StatusCode::OK, value(&received)))
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct Challenge {
    bt_challenge: Option<String>,
}

/// `GET /webhooks/braintree?bt_challenge=…` — Braintree's endpoint verification.
#[utoipa::path(
    get, path = "/webhooks/braintree", tag = "webhooks",
    params(Challenge),
    responses(
        (status = 200, description = "The answer to Braintree's challenge.", content_type = "text/plain", body = String),
        (status = 400, description = "`invalid_challenge`."),
        (status = 503, description = "`webhooks_not_configured`."),
    ),
)]
async fn braintree_challenge(
    State(state): State<AppState>,
    query: std::result::Result<Query<Challenge>, axum::extract::rejection::QueryRejection>,
) -> Result<Response> {
    let challenge = query
        .ok()
        .and_then(|Query(c)| c.bt_challenge)
        .ok_or_else(|| Error::bad_request("invalid_challenge", "bt_challenge is required"))?;
    let answer = provider_events::braintree_challenge(&state, &challenge)?;
    Ok((StatusCode::OK, answer).into_response())
}

//! Webhooks from the payment provider (`POST /webhooks/stripe`): what Stripe tells us happened
//! to a payment while nobody was asking, e.g. a 3-D Secure payment completed after the
//! customer closed the tab.
//!
//! * **Verified first** ([`verify`]): `Stripe-Signature: t=…,v1=…[,v1=…]`, HMAC-SHA256 of
//!   `{t}.{raw body}` keyed with the endpoint secret's bytes (`whsec_…` as written), any `v1`
//!   under any configured secret (several during a rotation), compared in constant time, `t`
//!   within 300 s of the wall clock (Stripe signs in real time, whatever the dev clock says).
//!   Forged, stale or unsigned: 400, nothing stored.
//! * **Durable before 2xx, once per event id**: the event is stored (`provider_events`) before
//!   it is handled; a repeat of a handled event answers 200 and changes nothing.
//! * **Order-independent**: the payload only names the object; its current state is read from
//!   the provider and applied through the same settle functions the reconcilers use, so two
//!   events out of order, or one lost (the reconcilers repair it), end in the provider's state.
//!
//! Handled: `payment_intent.*` (a checkout's or an invoice's charge attempt),
//! `setup_intent.*` (a card set-up finished after 3-D Secure), `charge.dispute.*` (a dispute:
//! [`crate::disputes`]), `charge.refunded` / `charge.refund.updated` / `refund.*` (refunds made
//! at the provider, booked once each: [`crate::billing::provider_payments::record_refunds`]);
//! recorded as received (handled by nothing): everything else.
//!
//! Braintree's webhooks (`POST /webhooks/braintree`, [`braintree`]) carry disputes: signed
//! with the API key pair, verified, stored once per notification, applied by their timestamp.

pub mod braintree;
pub mod store;

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;

use crate::error::{Error, Result};
use crate::gateways::GatewayError;
use crate::state::AppState;

/// Oldest (and furthest in the future) a signature's timestamp may be, s.
pub const TOLERANCE_SECS: i64 = 300;
/// Largest webhook body accepted.
pub const BODY_BYTES_MAX: usize = 256 * 1024;

fn bad_signature(code: &'static str, detail: &str) -> Error {
    Error::bad_request(code, detail.to_owned())
}

/// Checks a `Stripe-Signature` header against `body` under any of `secrets`, at `now`.
pub fn verify(header: Option<&str>, body: &[u8], secrets: &[String], now: i64) -> Result<()> {
    let header =
        header.ok_or_else(|| bad_signature("missing_signature", "Stripe-Signature is required"))?;
    let mut t = None;
    let mut sigs = Vec::new();
    for pair in header.split(',') {
        match pair.trim().split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => sigs.extend(hex::decode(v).ok()),
            _ => {}
        }
    }
    let t =
        t.ok_or_else(|| bad_signature("invalid_signature", "no timestamp in Stripe-Signature"))?;
    let signed = secrets.iter().any(|secret| {
        sigs.iter().any(|sig| {
            let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.trim().as_bytes()) else {
                return false;
            };
            mac.update(format!("{t}.").as_bytes());
            mac.update(body);
            mac.verify_slice(sig).is_ok()
        })
    });
    if !signed {
        return Err(bad_signature(
            "invalid_signature",
            "the Stripe-Signature does not match this body under any configured secret",
        ));
    }
    if (now - t).abs() > TOLERANCE_SECS {
        return Err(bad_signature(
            "stale_signature",
            "the signature's timestamp is more than 300 s from now (a replay?)",
        ));
    }
    Ok(())
}

/// What a received event came to.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Received {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// Handled before: nothing was done again.
    pub duplicate: bool,
    /// What it changed: `checkout`, `charge`, or `none`.
    pub applied: &'static str,
}

/// Receives one Stripe webhook (see the module doc).
pub async fn receive_stripe(
    state: &AppState,
    signature: Option<&str>,
    body: &[u8],
) -> Result<Received> {
    if state.stripe_webhook_secrets.is_empty() {
        return Err(Error::unavailable(
            "webhooks_not_configured",
            "TOLLGATE_STRIPE_WEBHOOK_SECRETS is not set",
        ));
    }
    if body.len() > BODY_BYTES_MAX {
        return Err(Error::too_large(
            "body_too_large",
            "webhook bodies are at most 256 KiB",
        ));
    }
    verify(
        signature,
        body,
        &state.stripe_webhook_secrets,
        Utc::now().timestamp(),
    )?;
    let event: serde_json::Value = serde_json::from_slice(body)
        .map_err(|_| Error::bad_request("malformed_json", "the webhook body is not JSON"))?;
    let field =
        |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_owned);
    let (Some(id), Some(kind)) = (field(&event, "id"), field(&event, "type")) else {
        return Err(Error::unprocessable(
            "invalid_event",
            "a Stripe event has an `id` and a `type`",
        ));
    };
    let object = event.pointer("/data/object").cloned().unwrap_or_default();
    let object_id = field(&object, "id");
    let payment_of_object = field(&object, "payment_intent");
    let now = state.clock.now();
    {
        let mut conn = state.cf.acquire().await?;
        let stored = store::admit(
            &mut conn,
            "stripe",
            &id,
            &kind,
            object_id.as_deref(),
            &event,
            now,
        )
        .await?;
        if stored.processed_at.is_some() {
            return Ok(Received {
                id,
                kind,
                duplicate: true,
                applied: "none",
            });
        }
    }
    let applied = match (kind.as_str(), object_id.as_deref()) {
        (k, Some(pi)) if k.starts_with("payment_intent.") => apply_payment(state, pi).await?,
        (k, Some(seti)) if k.starts_with("setup_intent.") => apply_setup(state, seti).await?,
        (k, Some(dp)) if k.starts_with("charge.dispute.") => apply_dispute(state, dp, &id).await?,
        (k, _)
            if k == "charge.refunded"
                || k.starts_with("charge.refund.")
                || k.starts_with("refund.") =>
        {
            match payment_of_object.as_deref() {
                Some(pi) => apply_refunds(state, pi).await?,
                None => "none",
            }
        }
        _ => "none",
    };
    let mut conn = state.cf.acquire().await?;
    store::processed(&mut conn, &id, applied, state.clock.now()).await?;
    tracing::info!(event_id = %id, kind = %kind, applied, "stripe webhook");
    Ok(Received {
        id,
        kind,
        duplicate: false,
        applied,
    })
}

/// Applies the provider's current state of payment `pi` to whatever of ours it belongs to.
async fn apply_payment(state: &AppState, pi: &str) -> Result<&'static str> {
    if crate::checkout::reconcile::settle_payment(state, pi).await? {
        return Ok("checkout");
    }
    if crate::billing::charges::settle_payment(state, pi)
        .await
        .map_err(Error::internal)?
    {
        return Ok("charge");
    }
    Ok("none")
}

/// Applies the provider's current state of dispute `dp` (`none`: not a dispute of ours, or one
/// the provider does not know).
async fn apply_dispute(state: &AppState, dp: &str, event_id: &str) -> Result<&'static str> {
    let observed_at = state.clock.now();
    let dispute = match state.gateway.retrieve_dispute(dp).await {
        Ok(d) => d,
        Err(GatewayError::NotFound(_) | GatewayError::Invalid(_)) => return Ok("none"),
        Err(e) => return Err(e.into()),
    };
    let applied = crate::disputes::apply(
        state,
        &crate::disputes::Observation {
            provider: state.gateway.name(),
            state: dispute,
            observed_at,
            cause: event_id,
        },
    )
    .await?;
    Ok(match applied {
        crate::disputes::Applied::NotOurs | crate::disputes::Applied::Unchanged => "none",
        _ => "dispute",
    })
}

/// Settles the waiting card set-up `seti` from the provider's state (`none`: nothing waits).
async fn apply_setup(state: &AppState, seti: &str) -> Result<&'static str> {
    let settled = crate::payment_methods::settle_setup(state, seti).await?;
    Ok(if settled { "payment_method" } else { "none" })
}

/// Books the refunds the provider holds of payment `pi` (`none`: not a payment of ours).
async fn apply_refunds(state: &AppState, pi: &str) -> Result<&'static str> {
    Ok(
        match crate::billing::provider_payments::record_refunds(state, pi).await? {
            Some(_) => "refund",
            None => "none",
        },
    )
}

/// Receives one Braintree webhook: the form fields `bt_signature` and `bt_payload`, verified
/// under the configured key pairs ([`braintree::verify`]), stored once (by the payload's
/// digest: Braintree's notifications carry no id, and a redelivery is the same payload), then
/// applied: a `dispute_*` notification is a dispute observed at the notification's
/// timestamp, so one older than what is held changes nothing.
pub async fn receive_braintree(state: &AppState, body: &[u8]) -> Result<Received> {
    if state.braintree_webhook_keys.is_empty() {
        return Err(Error::unavailable(
            "webhooks_not_configured",
            "Braintree keys (TOLLGATE_BRAINTREE_PUBLIC_KEY, TOLLGATE_BRAINTREE_PRIVATE_KEY) are not set",
        ));
    }
    if body.len() > BODY_BYTES_MAX {
        return Err(Error::too_large(
            "body_too_large",
            "webhook bodies are at most 256 KiB",
        ));
    }
    let mut signature: Option<String> = None;
    let mut payload: Option<String> = None;
    for (k, v) in form_urlencoded::parse(body) {
        match k.as_ref() {
            "bt_signature" => signature = Some(v.into_owned()),
            "bt_payload" => payload = Some(v.into_owned()),
            _ => {}
        }
    }
    let (Some(signature), Some(payload)) = (signature, payload) else {
        return Err(bad_signature(
            "missing_signature",
            "bt_signature and bt_payload are required",
        ));
    };
    let xml = braintree::verify(&signature, &payload, &state.braintree_webhook_keys).map_err(
        |e| match e {
            braintree::WebhookError::MalformedPayload(_) => {
                Error::bad_request("malformed_payload", e.to_string())
            }
            braintree::WebhookError::MissingSignature => {
                bad_signature("missing_signature", &e.to_string())
            }
            _ => bad_signature(
                "invalid_signature",
                "bt_signature does not match this payload under any configured key",
            ),
        },
    )?;
    let n =
        braintree::parse(&xml).map_err(|e| Error::unprocessable("invalid_event", e.to_string()))?;
    let id = {
        use sha2::Digest as _;
        format!("bt_{}", &hex::encode(Sha256::digest(xml.as_bytes()))[..40])
    };
    let dispute_id = n.dispute.as_ref().map(|d| d.id.clone());
    let now = state.clock.now();
    {
        let mut conn = state.cf.acquire().await?;
        let record = serde_json::json!({ "kind": n.kind, "timestamp": n.timestamp, "xml": xml });
        let stored = store::admit(
            &mut conn,
            "braintree",
            &id,
            &n.kind,
            dispute_id.as_deref(),
            &record,
            now,
        )
        .await?;
        if stored.processed_at.is_some() {
            return Ok(Received {
                id,
                kind: n.kind,
                duplicate: true,
                applied: "none",
            });
        }
    }
    let applied = match &n.dispute {
        Some(d) if n.kind.starts_with("dispute_") => {
            let status = braintree_dispute_status(&d.status).ok_or_else(|| {
                Error::unprocessable(
                    "invalid_event",
                    format!(
                        "dispute status `{}` is not one Braintree documents",
                        d.status
                    ),
                )
            })?;
            let payment = d
                .transaction_id
                .clone()
                .or_else(|| d.transaction_order_id.clone())
                .ok_or_else(|| {
                    Error::unprocessable("invalid_event", "the dispute names no transaction")
                })?;
            let applied = crate::disputes::apply(
                state,
                &crate::disputes::Observation {
                    provider: "braintree",
                    state: crate::disputes::DisputeState {
                        id: d.id.clone(),
                        payment_id: payment,
                        amount_minor: d.amount_minor,
                        currency: d.currency.clone(),
                        status,
                        reason: d.reason.clone(),
                    },
                    observed_at: n.timestamp,
                    cause: &id,
                },
            )
            .await?;
            match applied {
                crate::disputes::Applied::NotOurs | crate::disputes::Applied::Unchanged => "none",
                _ => "dispute",
            }
        }
        _ => "none",
    };
    let mut conn = state.cf.acquire().await?;
    store::processed(&mut conn, &id, applied, state.clock.now()).await?;
    tracing::info!(event_id = %id, kind = %n.kind, applied, "braintree webhook");
    Ok(Received {
        id,
        kind: n.kind,
        duplicate: false,
        applied,
    })
}

/// Braintree's dispute statuses in ours: a dispute the merchant accepted (or let expire) is
/// lost.
fn braintree_dispute_status(s: &str) -> Option<crate::disputes::DisputeStatus> {
    use crate::disputes::DisputeStatus as D;
    Some(match s {
        "open" => D::NeedsResponse,
        "disputed" | "under_review" => D::UnderReview,
        "won" => D::Won,
        "lost" | "accepted" | "auto_accepted" | "expired" => D::Lost,
        _ => return None,
    })
}

/// The answer to Braintree's `GET ?bt_challenge=…` endpoint verification.
pub fn braintree_challenge(state: &AppState, challenge: &str) -> Result<String> {
    let key = state.braintree_webhook_keys.first().ok_or_else(|| {
        Error::unavailable("webhooks_not_configured", "Braintree keys are not set")
    })?;
    braintree::challenge_response(challenge, key)
        .map_err(|e| Error::bad_request("invalid_challenge", e.to_string()))
}

/// When an event was received and handled (tests, the support panel).
pub async fn received_at(
    state: &AppState,
    id: &str,
) -> Result<Option<(DateTime<Utc>, Option<DateTime<Utc>>)>> {
    let mut conn = state.cf.acquire().await?;
    Ok(store::times(&mut conn, id).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(secret: &str, t: i64, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(format!("{t}.").as_bytes());
        mac.update(body);
        format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn signatures_follow_stripes_scheme_with_rotation_and_a_replay_window() {
        // The research vector: HMAC_SHA256("whsec_test_secret", "1700000000.{}").
        assert_eq!(
            header("whsec_test_secret", 1_700_000_000, b"{}"),
            "t=1700000000,v1=ceb8863f7208fa249a6cd8f951e993c7563412aca65866f6272283debe143ab3"
        );
        let body = br#"{"id":"evt_1"}"#;
        let now = 1_700_000_000;
        let secrets = vec!["whsec_old".to_owned(), "whsec_new".to_owned()];
        let code = |r: Result<()>| r.err().map(|e| e.code.to_string());
        assert_eq!(
            code(verify(
                Some(&header("whsec_new", now, body)),
                body,
                &secrets,
                now
            )),
            None
        );
        // Two v1s during a rotation: any one that matches will do, wherever it stands.
        let both = format!(
            "{},v1={}",
            header("whsec_other", now, body),
            header("whsec_old", now, body).split("v1=").nth(1).unwrap()
        );
        assert_eq!(code(verify(Some(&both), body, &secrets, now)), None);
        for (h, want) in [
            (header("whsec_forged", now, body), "invalid_signature"),
            (header("whsec_new", now - 301, body), "stale_signature"),
            (header("whsec_new", now + 301, body), "stale_signature"),
            ("v1=abc".to_owned(), "invalid_signature"),
            ("t=1700000000".to_owned(), "invalid_signature"),
            ("t=x,v1=zz".to_owned(), "invalid_signature"),
        ] {
            assert_eq!(
                code(verify(Some(&h), body, &secrets, now)).as_deref(),
                Some(want),
                "{h}"
            );
        }
        assert_eq!(
            code(verify(None, body, &secrets, now)).as_deref(),
            Some("missing_signature")
        );
        // Another body under a valid header is refused.
        let h = header("whsec_new", now, body);
        assert_eq!(
            code(verify(Some(&h), br#"{"id":"evt_2"}"#, &secrets, now)).as_deref(),
            Some("invalid_signature")
        );
    }
}

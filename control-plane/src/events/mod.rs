//! Outbound lifecycle events for the company's own systems, delivered as signed webhooks that
//! follow the Standard Webhooks convention.
//!
//! * A change records its event in its own cf transaction ([`record`]); a change billing made
//!   is recorded by cf's consumer of billing's outbox under the billing event's id
//!   ([`record_once`]), so a redelivered billing event records nothing new. Each event gets one
//!   delivery per enabled endpoint that wants its type.
//! * [`deliver_due`] (maintenance) claims due deliveries with `FOR UPDATE SKIP LOCKED` and a
//!   lease, POSTs them outside any transaction, and records the outcome: a 2xx is delivered;
//!   anything else is retried after 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h and 24 h
//!   (about three days), then `failed`. At least once: a crash after the POST and before the
//!   record sends it again when the lease ends; receivers deduplicate on `webhook-id`.
//! * The request: `webhook-id` (the event id, the same on every attempt), `webhook-timestamp`
//!   (unix seconds of the attempt), `webhook-signature` = `v1,` + base64 of HMAC-SHA256 over
//!   `{id}.{timestamp}.{body}` keyed with the base64-decoded part of the endpoint's `whsec_`
//!   secret ([`sign`]). The body is `{type, timestamp, data}`.
//! * Operators read the delivery log and replay a delivery through the admin API.

pub mod store;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, TimeDelta, Utc};
use futures::StreamExt;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::ids::AccountId;
use crate::state::AppState;

/// Waits after each failed attempt (the Standard Webhooks example schedule).
pub const RETRY_AFTER: [TimeDelta; 9] = [
    TimeDelta::seconds(5),
    TimeDelta::minutes(5),
    TimeDelta::minutes(30),
    TimeDelta::hours(2),
    TimeDelta::hours(5),
    TimeDelta::hours(10),
    TimeDelta::hours(14),
    TimeDelta::hours(20),
    TimeDelta::hours(24),
];
/// A claimed delivery is tried again after this if its outcome was never recorded.
pub const LEASE: TimeDelta = TimeDelta::minutes(2);
/// How long one POST may take.
pub const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);
/// Deliveries in flight at once per pass.
pub const CONCURRENCY: usize = 8;

/// What happened, as the receiving system sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventType {
    #[serde(rename = "invoice.finalized")]
    InvoiceFinalized,
    #[serde(rename = "invoice.paid")]
    InvoicePaid,
    #[serde(rename = "invoice.uncollectible")]
    InvoiceUncollectible,
    #[serde(rename = "invoice.voided")]
    InvoiceVoided,
    #[serde(rename = "invoice.payment_failed")]
    PaymentFailed,
    #[serde(rename = "dunning.changed")]
    DunningChanged,
    #[serde(rename = "subscription.created")]
    SubscriptionCreated,
    #[serde(rename = "subscription.updated")]
    SubscriptionUpdated,
    #[serde(rename = "subscription.canceled")]
    SubscriptionCanceled,
    #[serde(rename = "account.banned")]
    AccountBanned,
    #[serde(rename = "account.unbanned")]
    AccountUnbanned,
    #[serde(rename = "dispute.created")]
    DisputeCreated,
    #[serde(rename = "dispute.updated")]
    DisputeUpdated,
    #[serde(rename = "dispute.closed")]
    DisputeClosed,
}

impl EventType {
    pub const ALL: [EventType; 14] = [
        Self::InvoiceFinalized,
        Self::InvoicePaid,
        Self::InvoiceUncollectible,
        Self::InvoiceVoided,
        Self::PaymentFailed,
        Self::DunningChanged,
        Self::SubscriptionCreated,
        Self::SubscriptionUpdated,
        Self::SubscriptionCanceled,
        Self::AccountBanned,
        Self::AccountUnbanned,
        Self::DisputeCreated,
        Self::DisputeUpdated,
        Self::DisputeClosed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvoiceFinalized => "invoice.finalized",
            Self::InvoicePaid => "invoice.paid",
            Self::InvoiceUncollectible => "invoice.uncollectible",
            Self::InvoiceVoided => "invoice.voided",
            Self::PaymentFailed => "invoice.payment_failed",
            Self::DunningChanged => "dunning.changed",
            Self::SubscriptionCreated => "subscription.created",
            Self::SubscriptionUpdated => "subscription.updated",
            Self::SubscriptionCanceled => "subscription.canceled",
            Self::AccountBanned => "account.banned",
            Self::AccountUnbanned => "account.unbanned",
            Self::DisputeCreated => "dispute.created",
            Self::DisputeUpdated => "dispute.updated",
            Self::DisputeClosed => "dispute.closed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// Records an event in the caller's cf transaction, with its deliveries.
pub async fn record(
    conn: &mut PgConnection,
    kind: EventType,
    account: Option<AccountId>,
    data: &impl Serialize,
    now: DateTime<Utc>,
) -> sqlx::Result<()> {
    record_as(conn, Uuid::now_v7(), kind, account, data, now).await
}

/// A recorded lifecycle event.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct Recorded {
    pub id: Uuid,
    #[sqlx(rename = "type")]
    pub kind: String,
    pub payload: serde_json::Value,
    pub occurred_at: DateTime<Utc>,
}

/// The account's lifecycle events, newest first.
pub async fn of_account(
    state: &AppState,
    account: AccountId,
    limit: i64,
) -> sqlx::Result<Vec<Recorded>> {
    let mut conn = state.cf.acquire().await?;
    sqlx::query_as(
        "SELECT id, type, payload, occurred_at FROM lifecycle_events WHERE account_id = $1
         ORDER BY occurred_at DESC, id DESC LIMIT $2",
    )
    .bind(account.0)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await
}

/// Records an event under `id` (a billing event's id), once, in its own cf transaction.
pub async fn record_once(
    state: &AppState,
    id: Uuid,
    kind: EventType,
    account: Option<AccountId>,
    data: &impl Serialize,
    now: DateTime<Utc>,
) -> sqlx::Result<()> {
    let mut tx = state.cf.begin().await?;
    record_as(&mut tx, id, kind, account, data, now).await?;
    tx.commit().await
}

async fn record_as(
    conn: &mut PgConnection,
    id: Uuid,
    kind: EventType,
    account: Option<AccountId>,
    data: &impl Serialize,
    now: DateTime<Utc>,
) -> sqlx::Result<()> {
    let data = serde_json::to_value(data).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    if store::insert_event(conn, id, kind.as_str(), account, &data, now).await? {
        store::fan_out(conn, id, kind.as_str(), now).await?;
    }
    Ok(())
}

/// Records what a billing event announced (payload as billing wrote it, with `account_id`),
/// once per billing event.
pub async fn from_billing(
    state: &AppState,
    d: &crate::outbox::Delivery,
    kind: EventType,
) -> anyhow::Result<()> {
    let account = d
        .payload
        .get("account_id")
        .and_then(|v| v.as_str())
        .and_then(|s| s.parse().ok());
    record_once(state, d.id.0, kind, account, &d.payload, d.now).await?;
    Ok(())
}

/// Records a `billing.dispute_changed` as `dispute.created`, `dispute.updated` or
/// `dispute.closed`, once per billing event.
pub async fn from_dispute(state: &AppState, d: &crate::outbox::Delivery) -> anyhow::Result<()> {
    let kind = match d.payload.get("change").and_then(|v| v.as_str()) {
        Some("created") => EventType::DisputeCreated,
        Some("closed") => EventType::DisputeClosed,
        _ => EventType::DisputeUpdated,
    };
    from_billing(state, d, kind).await
}

/// The signature header of one attempt.
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
}

/// The HMAC key of a `whsec_` secret.
pub fn secret_key(secret: &str) -> Option<Vec<u8>> {
    BASE64.decode(secret.strip_prefix("whsec_")?).ok()
}

/// A new endpoint secret: `whsec_` + base64 of 32 random bytes.
fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes);
    format!("whsec_{}", BASE64.encode(bytes))
}

/// `POST /admin/v1/webhook-endpoints` as the operator sends it.
#[derive(utoipa::ToSchema, Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewEndpoint {
    pub url: String,
    /// Event types wanted (all when absent or empty).
    #[serde(default)]
    pub events: Vec<String>,
}

/// An endpoint as stored (its secret only in [`Created`]).
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Endpoint {
    pub id: Uuid,
    pub url: String,
    pub events: Vec<String>,
    pub enabled: bool,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
}

/// A new endpoint and its secret, shown this once.
#[derive(utoipa::ToSchema, Debug, Clone, Serialize)]
#[schema(as = WebhookEndpointCreated)]
pub struct Created {
    #[serde(flatten)]
    pub endpoint: Endpoint,
    pub secret: String,
}

/// Registers an endpoint.
pub async fn add_endpoint(state: &AppState, actor: &str, req: &NewEndpoint) -> Result<Created> {
    let url = reqwest::Url::parse(&req.url).ok().filter(|u| {
        matches!(u.scheme(), "http" | "https") && u.host().is_some() && req.url.len() <= 2000
    });
    if url.is_none() {
        return Err(Error::unprocessable(
            "invalid_url",
            "an endpoint is an http(s) URL of at most 2000 characters",
        ));
    }
    if let Some(bad) = req.events.iter().find(|e| EventType::parse(e).is_none()) {
        return Err(Error::unprocessable(
            "unknown_event_type",
            format!("there is no event type `{bad}`"),
        ));
    }
    let secret = new_secret();
    let mut conn = state.cf.acquire().await?;
    let endpoint = store::insert_endpoint(
        &mut conn,
        &req.url,
        &secret,
        &req.events,
        actor,
        state.clock.now(),
    )
    .await?;
    Ok(Created { endpoint, secret })
}

pub async fn endpoints(state: &AppState) -> Result<Vec<Endpoint>> {
    let mut conn = state.cf.acquire().await?;
    Ok(store::endpoints(&mut conn).await?)
}

/// How a delivery stands.
#[derive(
    utoipa::ToSchema, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type,
)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum DeliveryStatus {
    Pending,
    Delivered,
    Failed,
}

/// One delivery of the log.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Delivery {
    pub id: Uuid,
    pub event_id: Uuid,
    #[sqlx(rename = "type")]
    #[serde(rename = "type")]
    pub kind: String,
    pub endpoint_id: Uuid,
    pub url: String,
    pub status: DeliveryStatus,
    pub attempts: i32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// The newest deliveries (of one status when given), at most 100.
pub async fn deliveries(state: &AppState, status: Option<DeliveryStatus>) -> Result<Vec<Delivery>> {
    let mut conn = state.cf.acquire().await?;
    Ok(store::deliveries(&mut conn, status, 100).await?)
}

/// Sends a delivery again from now on (whatever its state), with a fresh retry schedule.
pub async fn replay(state: &AppState, id: Uuid) -> Result<Delivery> {
    let mut conn = state.cf.acquire().await?;
    store::replay(&mut conn, id, state.clock.now())
        .await?
        .ok_or_else(|| Error::not_found("delivery"))
}

/// What one attempt came to.
enum Outcome {
    Delivered(u16),
    Refused(Option<u16>, String),
}

/// Delivers what is due (see the module doc). Returns how many attempts were made.
pub async fn deliver_due(state: &AppState, batch: i64) -> anyhow::Result<usize> {
    let now = state.clock.now();
    let due = {
        let mut tx = state.cf.begin().await?;
        let due = store::claim_due(&mut tx, now, now + LEASE, batch).await?;
        tx.commit().await?;
        due
    };
    if due.is_empty() {
        return Ok(0);
    }
    let attempts = futures::stream::iter(due)
        .map(|d| async move {
            let outcome = post(state, &d).await;
            (d, outcome)
        })
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    let n = attempts.len();
    let now = state.clock.now();
    let mut conn = state.cf.acquire().await?;
    for (d, outcome) in attempts {
        match outcome {
            Outcome::Delivered(status) => {
                store::delivered(&mut conn, d.id, i32::from(status), now).await?;
            }
            Outcome::Refused(status, error) => {
                let wait = usize::try_from(d.attempts - 1)
                    .ok()
                    .and_then(|i| RETRY_AFTER.get(i));
                let next = wait.map(|w| now + *w);
                store::attempt_failed(&mut conn, d.id, status.map(i32::from), &error, next).await?;
                tracing::warn!(delivery = %d.id, url = %d.url, attempts = d.attempts, ?status, %error, "webhook delivery failed");
            }
        }
    }
    Ok(n)
}

async fn post(state: &AppState, d: &store::Due) -> Outcome {
    let Some(key) = secret_key(&d.secret) else {
        return Outcome::Refused(None, "the endpoint's secret is not a whsec_ key".into());
    };
    let body = serde_json::json!({
        "type": d.kind,
        "timestamp": d.occurred_at,
        "data": d.payload,
    });
    let body = match serde_json::to_vec(&body) {
        Ok(b) => b,
        Err(e) => return Outcome::Refused(None, e.to_string()),
    };
    let id = d.event_id.to_string();
    let timestamp = state.clock.now().timestamp();
    let signature = sign(&key, &id, timestamp, &body);
    let sent = state
        .http
        .post(&d.url)
        .header("content-type", "application/json")
        .header("webhook-id", &id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(body)
        .send()
        .await;
    match sent {
        Ok(r) if r.status().is_success() => Outcome::Delivered(r.status().as_u16()),
        Ok(r) => Outcome::Refused(
            Some(r.status().as_u16()),
            format!("answered {}", r.status()),
        ),
        Err(e) => Outcome::Refused(None, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_match_the_standard_webhooks_reference_vector() {
        let key = secret_key("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").expect("key");
        let sig = sign(
            &key,
            "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
            1_649_367_553,
            br#"{"email":"test@example.com","username":"test_user"}"#,
        );
        assert_eq!(sig, "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=");
        assert!(
            secret_key("C2FVsBQIhrscChlQIMV").is_none(),
            "no whsec_ prefix"
        );
        assert!(secret_key(&new_secret()).is_some_and(|k| k.len() == 32));
    }

    #[test]
    fn retries_span_about_three_days() {
        let total: TimeDelta = RETRY_AFTER.iter().copied().sum();
        assert_eq!(total.num_minutes(), 75 * 60 + 35);
        assert!(
            EventType::ALL
                .iter()
                .all(|t| EventType::parse(t.as_str()) == Some(*t))
        );
    }
}

//! How the Dashboard shows domain records: exactly the public fields, under their public
//! names; and how an answer becomes a response (status, body, replay marker).

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use crate::accounts::Account;
use crate::checkout::{Checkout, CheckoutStatus, RefundReason};
use crate::http::idempotency::REPLAYED_HEADER;
use crate::idempotency::Ran;
use crate::ids::{AccountId, CheckoutId, PaymentMethodId, SubscriptionId};
use crate::payment_methods::{PaymentMethod, PaymentMethodStatus};
use crate::subscriptions::Subscription;

#[derive(Debug, Serialize)]
pub struct AccountView<'a> {
    pub id: AccountId,
    pub email: &'a str,
    pub name: &'a str,
    pub status: tollgate_protocol::AccountStanding,
    pub stripe_customer_id: &'a str,
    pub default_payment_method_id: Option<PaymentMethodId>,
    pub created_at: DateTime<Utc>,
}

impl<'a> From<&'a Account> for AccountView<'a> {
    fn from(a: &'a Account) -> Self {
        Self {
            id: a.id,
            email: &a.email,
            name: &a.name,
            status: a.standing,
            stripe_customer_id: &a.gateway_customer_id,
            default_payment_method_id: a.default_payment_method_id,
            created_at: a.created_at,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct PaymentMethodView<'a> {
    pub id: PaymentMethodId,
    pub status: PaymentMethodStatus,
    pub brand: Option<&'a str>,
    pub last4: Option<&'a str>,
    pub exp_month: Option<i32>,
    pub exp_year: Option<i32>,
    pub created_at: DateTime<Utc>,
}

impl<'a> From<&'a PaymentMethod> for PaymentMethodView<'a> {
    fn from(p: &'a PaymentMethod) -> Self {
        Self {
            id: p.id,
            status: p.status,
            brand: p.brand.as_deref(),
            last4: p.last4.as_deref(),
            exp_month: p.exp_month,
            exp_year: p.exp_year,
            created_at: p.created_at,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct CheckoutView<'a> {
    pub id: CheckoutId,
    pub plan: &'a str,
    pub status: CheckoutStatus,
    pub amount_minor: i64,
    pub currency: &'a str,
    pub interval: &'a str,
    pub bundle_version: Option<i64>,
    pub payment_method_id: Option<PaymentMethodId>,
    pub client_secret: Option<&'a str>,
    pub decline_code: Option<&'a str>,
    pub subscription_id: Option<SubscriptionId>,
    pub refund_reason: Option<RefundReason>,
    pub expires_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}

impl<'a> From<&'a Checkout> for CheckoutView<'a> {
    fn from(c: &'a Checkout) -> Self {
        Self {
            id: c.id,
            plan: &c.plan,
            status: c.status,
            amount_minor: c.amount_minor,
            currency: &c.currency,
            interval: &c.interval,
            bundle_version: c.bundle_version,
            payment_method_id: c.payment_method_id,
            client_secret: c.client_secret.as_deref(),
            decline_code: c.decline_code.as_deref(),
            subscription_id: c.subscription_id,
            refund_reason: c.refund_reason,
            expires_at: c.expires_at,
            created_at: c.created_at,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct SubscriptionView<'a> {
    pub id: SubscriptionId,
    pub plan: &'a str,
    pub status: tollgate_protocol::SubscriptionStatus,
    pub amount_minor: i64,
    pub currency: &'a str,
    pub interval: &'a str,
    pub current_period_start: DateTime<Utc>,
    pub current_period_end: DateTime<Utc>,
    pub cancel_at_period_end: bool,
    pub canceled_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

impl<'a> From<&'a Subscription> for SubscriptionView<'a> {
    fn from(s: &'a Subscription) -> Self {
        Self {
            id: s.id,
            plan: &s.plan,
            status: s.status,
            amount_minor: s.amount_minor,
            currency: &s.currency,
            interval: &s.interval,
            current_period_start: s.current_period_start,
            current_period_end: s.current_period_end,
            cancel_at_period_end: s.cancel_at_period_end,
            canceled_at: s.canceled_at,
            created_at: s.created_at,
        }
    }
}

/// A JSON value of a view.
pub fn value(v: &impl Serialize) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// `status` with a JSON body.
pub fn json(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

/// An idempotent operation's answer: its value rendered by `ok`, or its error as a problem;
/// marked `Idempotent-Replayed: true` when it replays one stored earlier.
pub fn ran<T>(ran: Ran<T>, ok: impl FnOnce(T) -> Response) -> Response {
    let mut resp = match ran.outcome {
        Ok(v) => ok(v),
        Err(e) => e.into_response(),
    };
    if ran.replay_of.is_some() {
        resp.headers_mut()
            .insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    }
    resp
}

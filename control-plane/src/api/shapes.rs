//! The shapes of the answers handlers build with `json!` around views and domain records, for
//! the contract only ([`super::openapi`]): a property is required only when every answer of
//! its status carries it. Nothing constructs these (they derive `Serialize` for serde's attributes); `tests/openapi.rs` holds real answers to
//! them, and schemathesis (`e2e/tests/openapi_contract.rs`) every answer it provokes.

#![allow(dead_code)]

use serde::Serialize;
use utoipa::ToSchema;

use super::views::{AccountView, CheckoutView, InvoiceView, PaymentMethodView, SubscriptionView};
use crate::ids::PaymentMethodId;

/// `{"data": [...]}`.
#[derive(Serialize, ToSchema)]
pub struct List<T> {
    pub data: Vec<T>,
}

/// `GET /v1/plans`: what is on sale.
#[derive(Serialize, ToSchema)]
pub struct OnSale {
    pub data: Vec<tollgate_rules::Plan>,
    pub features: Vec<tollgate_rules::Feature>,
    pub addons: Vec<tollgate_rules::Addon>,
}

/// `POST /v1/accounts`.
#[derive(Serialize, ToSchema)]
pub struct SignedUp {
    pub account: AccountView<'static>,
    /// Shown once; `null` on a replay later than the token's replay window.
    pub api_token: Option<String>,
    /// Present (true) on a replay that came too late to carry the token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_token_replay_expired: Option<bool>,
}

/// What the client does next for 3-D Secure.
#[derive(Serialize, ToSchema)]
pub struct NextAction {
    /// `use_stripe_sdk`.
    #[serde(rename = "type")]
    #[schema(example = "use_stripe_sdk")]
    pub kind: String,
}

/// Where a payment step stands.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Ready,
    Paid,
    RequiresAction,
    Processing,
}

/// A payment method added or confirmed: `ready` (201/200), or `requires_action` (with
/// `client_secret` and `next_action`) or `processing` (202).
#[derive(Serialize, ToSchema)]
pub struct PaymentMethodStep {
    pub payment_method: PaymentMethodView<'static>,
    pub status: StepStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_action: Option<NextAction>,
}

/// The account's payment methods and its default.
#[derive(Serialize, ToSchema)]
pub struct Wallet {
    pub data: Vec<PaymentMethodView<'static>>,
    pub default_payment_method_id: Option<PaymentMethodId>,
}

/// A completed purchase.
#[derive(Serialize, ToSchema)]
pub struct Subscribed {
    pub checkout: CheckoutView<'static>,
    pub subscription: SubscriptionView<'static>,
}

/// A purchase waiting for 3-D Secure (`requires_action`) or the provider (`processing`).
#[derive(Serialize, ToSchema)]
pub struct CheckoutStep {
    pub checkout: CheckoutView<'static>,
    pub status: StepStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_action: Option<NextAction>,
}

/// `POST /v1/checkout/{id}/cancel`.
#[derive(Serialize, ToSchema)]
pub struct CheckoutCanceled {
    pub checkout: CheckoutView<'static>,
}

/// A page of invoices, newest first.
#[derive(Serialize, ToSchema)]
pub struct InvoicePage {
    pub data: Vec<InvoiceView<'static>>,
    pub has_more: bool,
}

/// An invoice paid (200), or waiting for 3-D Secure or the provider (202).
#[derive(Serialize, ToSchema)]
pub struct InvoicePayment {
    pub invoice: InvoiceView<'static>,
    pub status: StepStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_action: Option<NextAction>,
}

/// A plan change made (200), or whose invoice waits for 3-D Secure (202, with `status`,
/// `client_secret`, `next_action`).
#[derive(Serialize, ToSchema)]
pub struct PlanChanged {
    pub subscription: SubscriptionView<'static>,
    /// The change's invoice, when it made one.
    pub invoice: Option<InvoiceView<'static>>,
    pub payment: crate::subscriptions::change::ChangePayment,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<StepStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_action: Option<NextAction>,
}

/// One feature's decision for an account.
#[derive(Serialize, ToSchema)]
pub struct FeatureDecision {
    pub feature: String,
    pub decision: tollgate_protocol::Decision,
}

/// An account's decisions under the bundle they were made with.
#[derive(Serialize, ToSchema)]
pub struct Decisions {
    pub bundle_version: i64,
    pub features: Vec<FeatureDecision>,
}

/// `GET /panel/v1/accounts/{id}`: the 360° view.
#[derive(Serialize, ToSchema)]
pub struct AccountOverview {
    pub account: AccountView<'static>,
    pub subscriptions: Vec<SubscriptionView<'static>>,
    pub payment_methods: Vec<PaymentMethodView<'static>>,
    pub default_payment_method_id: Option<PaymentMethodId>,
    /// The newest page.
    pub invoices: Vec<InvoiceView<'static>>,
    pub usage: crate::usage::Usage,
    /// `null` until the account's facts were computed.
    pub decisions: Option<Decisions>,
    pub overrides: Vec<crate::entitlements::overrides::Override>,
    pub notes: Vec<crate::accounts::support::Note>,
    pub disputes: Vec<crate::disputes::Dispute>,
}

/// `GET /admin/v1/bundles`.
#[derive(Serialize, ToSchema)]
pub struct Bundles {
    pub data: Vec<crate::rollout::Listed>,
    /// `null` before the first activation.
    pub rollout: Option<crate::rollout::Rollout>,
}

/// What an activation, promotion or rollback left serving.
#[derive(Serialize, ToSchema)]
pub struct RolloutChange {
    pub stable_version: Option<i64>,
    /// Promotions and rollbacks: the stable version before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_stable: Option<i64>,
    /// Present (true) when nothing changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unchanged: Option<bool>,
    pub canary_version: Option<i64>,
    pub canary_percent: i32,
}

/// `GET /dev/v1/clock`.
#[derive(Serialize, ToSchema)]
pub struct DevNow {
    pub now: chrono::DateTime<chrono::Utc>,
}

/// `POST /dev/v1/clock/advance`.
#[derive(Serialize, ToSchema)]
pub struct DevAdvanced {
    pub now: chrono::DateTime<chrono::Utc>,
    /// How many time-driven transitions ran.
    pub transitions: u64,
}

/// `POST /dev/v1/simulator/intents/{id}/authenticate`.
#[derive(Serialize, ToSchema)]
pub struct DevAuthenticated {
    pub intent: String,
    pub authenticated: bool,
}

/// `GET /healthz`.
#[derive(Serialize, ToSchema)]
pub struct Alive {
    /// `ok`.
    #[schema(example = "ok")]
    pub status: String,
}

/// `POST /webhooks/braintree`'s form.
#[derive(Serialize, ToSchema)]
pub struct BraintreeNotification {
    /// `public_key|signature` pairs, `&`-separated.
    pub bt_signature: String,
    /// The notification, base64 XML.
    pub bt_payload: String,
}

/// `POST /panel/v1/subscriptions/{id}/cancel`.
#[derive(Serialize, ToSchema)]
pub struct AgentCanceled {
    pub subscription: SubscriptionView<'static>,
    pub refund: Option<crate::billing::refunds::Refunded>,
}

/// `POST /panel/v1/subscriptions/{id}/change`.
#[derive(Serialize, ToSchema)]
pub struct AgentChanged {
    pub subscription: SubscriptionView<'static>,
    pub invoice: Option<InvoiceView<'static>>,
}

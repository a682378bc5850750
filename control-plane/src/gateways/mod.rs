//! Payment gateways: the one trait accounts and checkout declare, and its implementations.
//!
//! * [`simulated::SimulatedGateway`] — a model of Stripe's test payment methods whose state
//!   lives in PostgreSQL (its own `sim_*` tables), so it outlives any process; development and
//!   tests only (outside dev mode a Stripe key is required).
//! * [`stripe::StripeGateway`] — `async-stripe` against the real Stripe API or `localstripe`.
//! * [`braintree::BraintreeGateway`] — PayPal billing agreements through Braintree's GraphQL
//!   API. The simulator takes Braintree's test nonces too, so development needs neither.
//!
//! A process has one gateway for cards and one for PayPal (the same simulator in development);
//! what a gateway made is stored with its [`PaymentGateway::name`], and later calls about it go
//! to the gateway of that name ([`crate::state::Inner::gateway_named`]).
//!
//! Every call that can move money or create a provider object takes an idempotency key derived
//! from our own record (checkout id, payment-method id, account id), so a retry never charges
//! or creates twice.

pub mod braintree;
pub mod simulated;
pub mod stripe;

use async_trait::async_trait;

/// Money as the gateway sees it: integer minor units and a lower-case ISO-4217 code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GatewayAmount<'a> {
    pub amount_minor: i64,
    /// ISO-4217, upper-case as we store it (`USD`); implementations convert as they need.
    pub currency: &'a str,
}

/// A provider-side customer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerRef {
    pub id: String,
}

/// Card details safe to store and show (never a number).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CardSummary {
    pub brand: Option<String>,
    pub last4: Option<String>,
    pub exp_month: Option<i32>,
    pub exp_year: Option<i32>,
}

/// Why a provider refused a payment or a set-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decline {
    /// Stripe's error `code`, e.g. `card_declined`, `authentication_required`.
    pub code: String,
    /// Stripe's `decline_code`, e.g. `generic_decline`, `insufficient_funds`.
    pub decline_code: Option<String>,
    pub message: String,
}

/// The state of a SetupIntent that attaches a payment method to a customer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetupStatus {
    Succeeded,
    /// The customer must authenticate (3-D Secure); `client_secret` goes to the browser.
    RequiresAction {
        client_secret: String,
    },
    /// Still waiting on something other than the customer (e.g. processing).
    Pending,
    Failed(Decline),
}

/// What kind of payment method a provider holds.
#[derive(
    utoipa::ToSchema,
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    sqlx::Type,
)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum MethodKind {
    #[default]
    Card,
    /// A PayPal billing agreement (Braintree's vault).
    Paypal,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupOutcome {
    pub setup_intent_id: String,
    /// The provider's payment-method id (`pm_…`; Braintree's GraphQL id) once attached.
    pub payment_method_id: String,
    pub card: CardSummary,
    pub kind: MethodKind,
    /// The PayPal account's email.
    pub payer_email: Option<String>,
    pub status: SetupStatus,
}

/// The state of a PaymentIntent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentStatus {
    Succeeded,
    RequiresAction { client_secret: String },
    Processing,
    Canceled,
    Failed(Decline),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentOutcome {
    pub payment_intent_id: String,
    pub status: PaymentStatus,
}

/// Whether the customer is present to authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    OnSession,
    OffSession,
}

pub struct PaymentRequest<'a> {
    pub customer: &'a str,
    pub payment_method: &'a str,
    pub amount: GatewayAmount<'a>,
    pub presence: Presence,
    pub idempotency_key: &'a str,
    pub description: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundRef {
    pub id: String,
    pub amount_minor: i64,
}

/// Where a dispute (chargeback) of a payment stands, in the provider's words mapped to ours.
#[derive(
    utoipa::ToSchema,
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    serde::Serialize,
    serde::Deserialize,
    sqlx::Type,
)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum DisputeStatus {
    /// An inquiry (Stripe's `warning_*`, Braintree's retrieval): no money withheld yet.
    Inquiry,
    /// The card network took the money back; evidence is due.
    NeedsResponse,
    /// Evidence submitted; the issuer decides.
    UnderReview,
    /// Decided for us: the money comes back.
    Won,
    /// Decided for the cardholder: the money is gone.
    Lost,
    /// An inquiry closed without a dispute (or one prevented): no money moved.
    Closed,
}

impl DisputeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inquiry => "inquiry",
            Self::NeedsResponse => "needs_response",
            Self::UnderReview => "under_review",
            Self::Won => "won",
            Self::Lost => "lost",
            Self::Closed => "closed",
        }
    }

    /// Decided: nothing changes it any more.
    pub fn is_closed(self) -> bool {
        matches!(self, Self::Won | Self::Lost | Self::Closed)
    }

    /// Whether the processor withheld (or kept) the disputed money.
    pub fn withholds(self) -> bool {
        matches!(
            self,
            Self::NeedsResponse | Self::UnderReview | Self::Won | Self::Lost
        )
    }
}

/// A dispute as the provider holds it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisputeState {
    pub id: String,
    /// The disputed payment (PaymentIntent id; Braintree's transaction id).
    pub payment_id: String,
    pub amount_minor: i64,
    /// ISO-4217, upper-case.
    pub currency: String,
    pub status: DisputeStatus,
    pub reason: Option<String>,
}

/// A plan's price as the provider's catalog should hold it: one product per plan, one
/// immutable price per plan and bundle version, found again by its `lookup_key`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PriceSpec<'a> {
    /// The plan's key; the product's id derives from it (`tg_plan_<key>`).
    pub plan: &'a str,
    /// The plan's display name (the product's name follows the latest bundle's).
    pub name: &'a str,
    /// `<plan key>:v<bundle version>`: unique per price, like Stripe's lookup keys.
    pub lookup_key: &'a str,
    pub amount: GatewayAmount<'a>,
    /// `month` or `year`.
    pub interval: &'a str,
}

/// Where a plan's price lives at the provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriceRef {
    pub product_id: String,
    pub price_id: String,
}

/// Transport or provider failures that are not a customer's decline.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The provider could not be reached or answered 5xx/429; retrying with the same
    /// idempotency key is safe and may succeed.
    #[error("payment provider unavailable: {0}")]
    Unavailable(String),
    /// The provider says the object does not exist (e.g. an unknown payment method id).
    /// Retrying does not help.
    #[error("not found at the payment provider: {0}")]
    NotFound(String),
    /// The provider refused the request as malformed (a bug on our side or bad client input,
    /// e.g. a payment-method id that is not a `pm_…`). Retrying does not help.
    #[error("payment provider rejected the request: {0}")]
    Invalid(String),
}

/// What accounts and checkout need from a payment provider.
#[async_trait]
pub trait PaymentGateway: Send + Sync + 'static {
    /// Short name for logs and stored references (`stripe`, `simulated`).
    fn name(&self) -> &'static str;

    /// Creates the provider customer every other process refers to.
    async fn create_customer(
        &self,
        email: &str,
        name: &str,
        idempotency_key: &str,
    ) -> Result<CustomerRef, GatewayError>;

    /// Attaches a client-side payment method (`pm_…`) to the customer through a confirmed
    /// SetupIntent for future off-session use.
    async fn setup_payment_method(
        &self,
        customer: &str,
        payment_method: &str,
        idempotency_key: &str,
    ) -> Result<SetupOutcome, GatewayError>;

    /// Reads a SetupIntent's current state (after the customer authenticated).
    async fn retrieve_setup(&self, setup_intent_id: &str) -> Result<SetupOutcome, GatewayError>;

    /// Cancels a SetupIntent still waiting for the customer (an abandoned set-up); one that can
    /// no longer be canceled (it succeeded meanwhile) comes back in its current state.
    async fn cancel_setup(&self, setup_intent_id: &str) -> Result<SetupOutcome, GatewayError>;

    /// Creates and confirms a PaymentIntent.
    async fn create_payment(&self, req: PaymentRequest<'_>)
    -> Result<PaymentOutcome, GatewayError>;

    /// Reads a PaymentIntent's current state.
    async fn retrieve_payment(
        &self,
        payment_intent_id: &str,
    ) -> Result<PaymentOutcome, GatewayError>;

    /// Cancels a PaymentIntent that was never completed (e.g. an expired checkout); one that
    /// can no longer be canceled (it succeeded meanwhile) comes back in its current state, so
    /// the caller never abandons a payment that went through.
    async fn cancel_payment(&self, payment_intent_id: &str)
    -> Result<PaymentOutcome, GatewayError>;

    /// Makes sure the provider's catalog holds `spec` (its product, and a recurring price
    /// under `spec.lookup_key`): finds what an earlier call created, creates what is missing,
    /// so calling it again — after a crash, concurrently — never creates a second price.
    async fn ensure_price(&self, spec: &PriceSpec<'_>) -> Result<PriceRef, GatewayError>;

    /// Refunds (part of) a succeeded payment.
    async fn refund(
        &self,
        payment_intent_id: &str,
        amount_minor: i64,
        idempotency_key: &str,
    ) -> Result<RefundRef, GatewayError>;

    /// The refunds of a payment that moved (or are moving) money back, whoever made them
    /// (ours, or one made in the provider's dashboard).
    async fn refunds_of(&self, payment_intent_id: &str) -> Result<Vec<RefundRef>, GatewayError>;

    /// Reads a dispute's current state.
    async fn retrieve_dispute(&self, dispute_id: &str) -> Result<DisputeState, GatewayError>;

    /// Answers a dispute: accepts it (the money stays with the cardholder) or contests it with
    /// `evidence` (submitted at once). Returns the dispute's state after; answering a decided
    /// dispute again returns it as it is.
    async fn resolve_dispute(
        &self,
        dispute_id: &str,
        accept: bool,
        evidence: &str,
    ) -> Result<DisputeState, GatewayError>;
}

//! How the Dashboard shows domain records: exactly the public fields, under their public
//! names; and how an answer becomes a response (status, body, replay marker).

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use crate::accounts::Account;
use crate::billing::AddonTerms;
use crate::billing::credit_notes::{CreditNote, CreditNoteReason};
use crate::billing::invoices::{AccountBilling, Invoice, InvoiceStatus, Line, LineKind};
use crate::billing::pricing::TierCharge;
use crate::checkout::{Checkout, CheckoutStatus, RefundReason};
use crate::gateways::MethodKind;
use crate::http::idempotency::REPLAYED_HEADER;
use crate::idempotency::Ran;
use crate::ids::{AccountId, CheckoutId, CreditNoteId, InvoiceId, PaymentMethodId, SubscriptionId};
use crate::money::Currency;
use crate::payment_methods::{PaymentMethod, PaymentMethodStatus};
use crate::subscriptions::Subscription;
use crate::subscriptions::change::{Direction, Preview, When};

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AccountView<'a> {
    pub id: AccountId,
    pub email: &'a str,
    pub name: &'a str,
    pub status: tollgate_protocol::AccountStanding,
    pub stripe_customer_id: &'a str,
    pub default_payment_method_id: Option<PaymentMethodId>,
    pub created_at: DateTime<Utc>,
    /// What the account owes (positive) or holds as credit (negative), in `currency`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub balance_minor: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub currency: Option<Currency>,
    /// An open invoice needs the customer (3-D Secure): pay it on-session.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action_required: Option<bool>,
    /// The same as `status`, under the name the lifecycle uses.
    pub standing: tollgate_protocol::AccountStanding,
    /// A renewal failed for good: buying or changing plans waits for a new payment method.
    pub payment_method_required: bool,
    /// The oldest unpaid invoice's dunning, while there is one (shown with `GET /v1/account`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dunning: Option<Option<crate::dunning::Standing>>,
    pub billing_address: Option<&'a crate::accounts::profile::BillingAddress>,
    pub tax_id: Option<&'a str>,
}

impl<'a> AccountView<'a> {
    pub fn with_billing(mut self, b: &AccountBilling) -> Self {
        self.balance_minor = Some(b.balance_minor);
        self.currency = Some(b.currency);
        self.action_required = Some(b.action_required);
        self
    }

    pub fn with_dunning(mut self, d: Option<crate::dunning::Standing>) -> Self {
        self.dunning = Some(d);
        self
    }
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
            balance_minor: None,
            currency: None,
            action_required: None,
            standing: a.standing,
            payment_method_required: a.payment_method_required,
            dunning: None,
            billing_address: a.billing_address.as_ref().map(|j| &j.0),
            tax_id: a.tax_id.as_deref(),
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PaymentMethodView<'a> {
    pub id: PaymentMethodId,
    pub status: PaymentMethodStatus,
    /// `card` or `paypal`.
    pub kind: MethodKind,
    /// The PayPal account's email (PayPal only).
    pub payer_email: Option<&'a str>,
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
            kind: p.kind,
            payer_email: p.payer_email.as_deref(),
            brand: p.brand.as_deref(),
            last4: p.last4.as_deref(),
            exp_month: p.exp_month,
            exp_year: p.exp_year,
            created_at: p.created_at,
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
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
    /// The add-ons bought with the plan (their price is part of `amount_minor`).
    pub addons: Vec<AddonView<'a>>,
}

/// An add-on held: how many, at what unit price, for how much per period.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AddonView<'a> {
    pub addon: &'a str,
    pub name: &'a str,
    pub quantity: i64,
    pub unit_amount_minor: i64,
    pub amount_minor: i64,
}

fn addon_views(addons: &[AddonTerms]) -> Vec<AddonView<'_>> {
    addons
        .iter()
        .map(|a| AddonView {
            addon: &a.addon,
            name: &a.name,
            quantity: a.quantity,
            unit_amount_minor: a.unit_amount_minor,
            // Bounded when sold (quantity and price limits keep it far from overflow).
            amount_minor: a.amount_minor().unwrap_or(i64::MAX),
        })
        .collect()
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
            addons: addon_views(c.addons()),
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
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
    /// The add-ons held, billed with the plan each period.
    pub addons: Vec<AddonView<'a>>,
    /// A change the period end applies (a downgrade).
    pub pending_change: Option<PendingChangeView<'a>>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PendingChangeView<'a> {
    pub plan: &'a str,
    pub amount_minor: i64,
    pub addons: Vec<AddonView<'a>>,
    pub effective_at: DateTime<Utc>,
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
            addons: addon_views(&s.terms.addons),
            pending_change: s.pending_change.as_ref().map(|c| PendingChangeView {
                plan: &c.plan,
                amount_minor: c.amount_minor,
                addons: addon_views(&c.terms.addons),
                effective_at: s.current_period_end,
            }),
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PreviewView<'a> {
    pub direction: Direction,
    pub when: When,
    pub effective_at: DateTime<Utc>,
    pub currency: Currency,
    pub lines: Vec<InvoiceLineView<'a>>,
    pub total_minor: i64,
    pub credit_applied_minor: i64,
    pub amount_due_minor: i64,
}

impl<'a> From<&'a Preview> for PreviewView<'a> {
    fn from(p: &'a Preview) -> Self {
        Self {
            direction: p.direction,
            when: p.when,
            effective_at: p.effective_at,
            currency: p.currency,
            lines: p.lines.iter().map(InvoiceLineView::from).collect(),
            total_minor: p.total_minor,
            credit_applied_minor: p.credit_applied_minor,
            amount_due_minor: p.amount_due_minor,
        }
    }
}

/// A JSON value of a view.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct InvoiceLineView<'a> {
    pub kind: LineKind,
    pub description: &'a str,
    pub quantity: i64,
    pub amount_minor: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meter: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tiers: Option<&'a [TierCharge]>,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
}

impl<'a> From<&'a Line> for InvoiceLineView<'a> {
    fn from(l: &'a Line) -> Self {
        Self {
            kind: l.kind,
            description: &l.description,
            quantity: l.quantity,
            amount_minor: l.amount_minor,
            meter: l.meter.as_deref(),
            tiers: l.tiers.as_deref(),
            period_start: l.period_start,
            period_end: l.period_end,
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct InvoiceView<'a> {
    pub id: InvoiceId,
    pub number: Option<&'a str>,
    pub status: InvoiceStatus,
    pub currency: Currency,
    pub subtotal_minor: i64,
    pub credit_applied_minor: i64,
    pub total_minor: i64,
    pub amount_due_minor: i64,
    pub amount_paid_minor: i64,
    /// What credit notes credited in all, and the part that reduced what it asks for.
    pub credit_noted_minor: i64,
    pub amount_credited_minor: i64,
    /// What is still owed.
    pub amount_remaining_minor: i64,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    pub subscription_id: Option<SubscriptionId>,
    pub lines: Vec<InvoiceLineView<'a>>,
    pub finalized_at: Option<DateTime<Utc>>,
    pub paid_at: Option<DateTime<Utc>>,
    pub action_required: bool,
    pub created_at: DateTime<Utc>,
}

impl<'a> From<&'a Invoice> for InvoiceView<'a> {
    fn from(i: &'a Invoice) -> Self {
        Self {
            id: i.id,
            number: i.number.as_deref(),
            status: i.status,
            currency: i.currency,
            subtotal_minor: i.subtotal_minor,
            credit_applied_minor: i.credit_applied_minor,
            total_minor: i.total_minor,
            amount_due_minor: i.amount_due_minor,
            amount_paid_minor: i.amount_paid_minor,
            credit_noted_minor: i.credit_noted_minor,
            amount_credited_minor: i.amount_credited_minor,
            amount_remaining_minor: i.amount_remaining_minor,
            period_start: i.period_start,
            period_end: i.period_end,
            subscription_id: i.subscription_id,
            lines: i.lines.iter().map(InvoiceLineView::from).collect(),
            finalized_at: i.finalized_at,
            paid_at: i.paid_at,
            action_required: i.action_required,
            created_at: i.created_at,
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreditNoteView<'a> {
    pub id: CreditNoteId,
    pub number: &'a str,
    pub invoice_id: InvoiceId,
    pub currency: Currency,
    pub amount_minor: i64,
    pub reduced_due_minor: i64,
    pub credited_minor: i64,
    pub reason: CreditNoteReason,
    pub memo: &'a str,
    pub created_at: DateTime<Utc>,
}

impl<'a> From<&'a CreditNote> for CreditNoteView<'a> {
    fn from(n: &'a CreditNote) -> Self {
        Self {
            id: n.id,
            number: &n.number,
            invoice_id: n.invoice_id,
            currency: n.currency,
            amount_minor: n.amount_minor,
            reduced_due_minor: n.reduced_due_minor,
            credited_minor: n.credited_minor,
            reason: n.reason,
            memo: &n.memo,
            created_at: n.created_at,
        }
    }
}

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

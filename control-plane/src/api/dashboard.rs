//! The Dashboard's routes (`/v1`): what a customer's API token may do with its own account.
//! Each handler extracts, calls one service function and renders.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::Customer;
use super::openapi::IdempotencyHeader;
use super::shapes;
use super::views::{
    AccountView, CheckoutView, CreditNoteView, InvoiceView, PaymentMethodView, PreviewView,
    SubscriptionView, json as reply, ran, value,
};
use crate::billing::invoices;
use crate::billing::payments::{self, PayInvoice, Payment};
use crate::checkout::{self, CheckoutRequest, Purchase};
use crate::error::{Error, Result};
use crate::http::idempotency::IdempotencyKey;
use crate::http::{Json, Path, Query};
use crate::ids::{CheckoutId, InvoiceId, PaymentMethodId, SubscriptionId};
use crate::payment_methods::{self, AddPaymentMethod, AddPaypal, Added};
use crate::state::AppState;
use crate::subscriptions::change::{self, ChangePayment, ChangePlan};
use crate::subscriptions::{self, Cancel};
use crate::{accounts, catalog, usage};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_plans))
        .routes(routes!(sign_up))
        .routes(routes!(get_account, update_account))
        .routes(routes!(list_contacts, add_contact))
        .routes(routes!(remove_contact))
        .routes(routes!(list_tokens, create_token))
        .routes(routes!(revoke_token))
        .routes(routes!(remove_payment_method))
        .routes(routes!(make_default_payment_method))
        .routes(routes!(add_payment_method, list_payment_methods))
        .routes(routes!(add_paypal))
        .routes(routes!(confirm_payment_method))
        .routes(routes!(start_checkout))
        .routes(routes!(get_checkout))
        .routes(routes!(confirm_checkout))
        .routes(routes!(cancel_checkout))
        .routes(routes!(list_subscriptions))
        .routes(routes!(cancel_subscription))
        .routes(routes!(preview_change))
        .routes(routes!(change_plan))
        .routes(routes!(resume_subscription))
        .routes(routes!(account_usage))
        .routes(routes!(list_invoices))
        .routes(routes!(get_invoice))
        .routes(routes!(invoice_pdf))
        .routes(routes!(invoice_credit_notes))
        .routes(routes!(pay_invoice))
        .routes(routes!(confirm_invoice_payment))
}

/// `GET /v1/plans` — public: what can be bought.
#[utoipa::path(
    get, path = "/v1/plans", tag = "dashboard",
    responses(
        (status = 200, description = "What is on sale: plans, features, add-ons.", body = shapes::OnSale),
    ),
)]
async fn list_plans(State(state): State<AppState>) -> Result<Response> {
    let catalog = catalog::on_sale(&state).await?;
    Ok(reply(
        StatusCode::OK,
        json!({ "data": catalog.plans, "features": catalog.features, "addons": catalog.addons }),
    ))
}

/// `POST /v1/accounts`
#[utoipa::path(
    post, path = "/v1/accounts", tag = "dashboard",
    params(IdempotencyHeader),
    request_body = crate::accounts::SignUp,
    responses(
        (status = 201, description = "The account and its first API token (shown once).", body = shapes::SignedUp),
        (status = 422, description = "`invalid_account`: a bad email or name."),
        (status = 402, description = "`card_declined` and other declines (`decline_code`), `payment_failed`: the provider declined."),
        (status = 503, description = "`payment_provider_unavailable`: the provider is away; retrying with the same `Idempotency-Key` is safe."),
    ),
)]
async fn sign_up(
    State(state): State<AppState>,
    IdempotencyKey(key): IdempotencyKey,
    Json(body): Json<accounts::SignUp>,
) -> Result<Response> {
    let signed = accounts::sign_up(&state, key, &body).await?;
    Ok(ran(signed, |s| {
        let mut body =
            json!({ "account": AccountView::from(&s.account), "api_token": s.api_token });
        if s.token_replay_expired {
            body["api_token_replay_expired"] = json!(true);
        }
        reply(StatusCode::CREATED, body)
    }))
}

/// `GET /v1/account`
#[utoipa::path(
    get, path = "/v1/account", tag = "dashboard",
    security(("customer" = [])),
    responses(
        (status = 200, description = "The account, its balance and its dunning.", body = AccountView),
    ),
)]
async fn get_account(State(state): State<AppState>, Customer(id): Customer) -> Result<Response> {
    let account = accounts::get(&state, id).await?;
    let billing = invoices::account_billing(&state, id).await?;
    let dunning = crate::dunning::current(&state, id).await?;
    Ok(reply(
        StatusCode::OK,
        value(
            &AccountView::from(&account)
                .with_billing(&billing)
                .with_dunning(dunning),
        ),
    ))
}

fn requires_action(key: &str, record: serde_json::Value, client_secret: &str) -> Response {
    reply(
        StatusCode::ACCEPTED,
        json!({ key: record, "status": "requires_action", "client_secret": client_secret,
                "next_action": { "type": "use_stripe_sdk" } }),
    )
}

/// `POST /v1/payment-methods`
#[utoipa::path(
    post, path = "/v1/payment-methods", tag = "dashboard",
    security(("customer" = [])),
    params(IdempotencyHeader),
    request_body = crate::payment_methods::AddPaymentMethod,
    responses(
        (status = 201, description = "Vaulted: `status` `ready`.", body = shapes::PaymentMethodStep),
        (status = 202, description = "`requires_action` (3-D Secure: `client_secret`, `next_action`) or `processing`.", body = shapes::PaymentMethodStep),
        (status = 409, description = "`authentication_required`, `payment_method_failed`, `setup_processing`."),
        (status = 422, description = "`invalid_payment_method`, `raw_card_number_refused`."),
        (status = 402, description = "`card_declined` and other declines (`decline_code`), `payment_failed`: the provider declined."),
        (status = 503, description = "`payment_provider_unavailable`: the provider is away; retrying with the same `Idempotency-Key` is safe."),
    ),
)]
async fn add_payment_method(
    State(state): State<AppState>,
    Customer(account): Customer,
    IdempotencyKey(key): IdempotencyKey,
    Json(body): Json<AddPaymentMethod>,
) -> Result<Response> {
    let added = payment_methods::add(&state, account, key, &body).await?;
    Ok(ran(added, |a| match a {
        Added::Ready(pm) => reply(
            StatusCode::CREATED,
            json!({ "payment_method": PaymentMethodView::from(&pm), "status": "ready" }),
        ),
        Added::RequiresAction {
            payment_method,
            client_secret,
        } => requires_action(
            "payment_method",
            value(&PaymentMethodView::from(&payment_method)),
            &client_secret,
        ),
        Added::Processing(pm) => reply(
            StatusCode::ACCEPTED,
            json!({ "payment_method": PaymentMethodView::from(&pm), "status": "processing" }),
        ),
    }))
}

/// `POST /v1/payment-methods/paypal`: vaults a PayPal billing agreement (ready at once).
#[utoipa::path(
    post, path = "/v1/payment-methods/paypal", tag = "dashboard",
    security(("customer" = [])),
    params(IdempotencyHeader),
    request_body = crate::payment_methods::AddPaypal,
    responses(
        (status = 201, description = "Vaulted: `status` `ready`.", body = shapes::PaymentMethodStep),
        (status = 202, description = "`processing`.", body = shapes::PaymentMethodStep),
        (status = 422, description = "`invalid_nonce`, `not_a_paypal_nonce`."),
        (status = 402, description = "`card_declined` and other declines (`decline_code`), `payment_failed`: the provider declined."),
        (status = 503, description = "`paypal_unavailable`, `payment_provider_unavailable`."),
    ),
)]
async fn add_paypal(
    State(state): State<AppState>,
    Customer(account): Customer,
    IdempotencyKey(key): IdempotencyKey,
    Json(body): Json<AddPaypal>,
) -> Result<Response> {
    let added = payment_methods::add_paypal(&state, account, key, &body).await?;
    Ok(ran(added, |a| match a {
        Added::Ready(pm) => reply(
            StatusCode::CREATED,
            json!({ "payment_method": PaymentMethodView::from(&pm), "status": "ready" }),
        ),
        Added::RequiresAction { payment_method, .. } | Added::Processing(payment_method) => reply(
            StatusCode::ACCEPTED,
            json!({ "payment_method": PaymentMethodView::from(&payment_method),
                        "status": "processing" }),
        ),
    }))
}

/// `POST /v1/payment-methods/{id}/confirm`
#[utoipa::path(
    post, path = "/v1/payment-methods/{id}/confirm", tag = "dashboard",
    security(("customer" = [])),
    params(("id" = uuid::Uuid, Path, description = "The payment method's id.")),
    responses(
        (status = 200, description = "Ready.", body = shapes::PaymentMethodStep),
        (status = 409, description = "`authentication_required`, `payment_method_failed`, `setup_processing`."),
        (status = 402, description = "`card_declined` and other declines (`decline_code`), `payment_failed`: the provider declined."),
        (status = 503, description = "`payment_provider_unavailable`: the provider is away; retrying with the same `Idempotency-Key` is safe."),
    ),
)]
async fn confirm_payment_method(
    State(state): State<AppState>,
    Customer(account): Customer,
    Path(id): Path<PaymentMethodId>,
) -> Result<Response> {
    let pm = payment_methods::confirm(&state, account, id).await?;
    Ok(reply(
        StatusCode::OK,
        json!({ "payment_method": PaymentMethodView::from(&pm), "status": "ready" }),
    ))
}

/// `GET /v1/payment-methods`
#[utoipa::path(
    get, path = "/v1/payment-methods", tag = "dashboard",
    security(("customer" = [])),
    responses(
        (status = 200, description = "The wallet.", body = shapes::Wallet),
    ),
)]
async fn list_payment_methods(
    State(state): State<AppState>,
    Customer(account): Customer,
) -> Result<Response> {
    let wallet = payment_methods::list(&state, account).await?;
    let data: Vec<_> = wallet.methods.iter().map(PaymentMethodView::from).collect();
    Ok(reply(
        StatusCode::OK,
        json!({ "data": data, "default_payment_method_id": wallet.default_payment_method_id }),
    ))
}

fn subscribed(
    status: StatusCode,
    c: &checkout::Checkout,
    s: &subscriptions::Subscription,
) -> Response {
    reply(
        status,
        json!({ "checkout": CheckoutView::from(c), "subscription": SubscriptionView::from(s) }),
    )
}

/// `POST /v1/checkout`
#[utoipa::path(
    post, path = "/v1/checkout", tag = "dashboard",
    security(("customer" = [])),
    params(IdempotencyHeader),
    request_body = crate::checkout::CheckoutRequest,
    responses(
        (status = 201, description = "Paid: the checkout and the subscription.", body = shapes::Subscribed),
        (status = 202, description = "`requires_action` (3-D Secure) or `processing`.", body = shapes::CheckoutStep),
        (status = 403, description = "`account_banned`."),
        (status = 409, description = "`subscription_exists`, `checkout_in_progress`, `payment_method_not_ready`, `trial_used`, `authentication_required`."),
        (status = 422, description = "`unknown_plan`, `payment_method_required`, `no_trial`, `amount_too_large`, add-on codes."),
        (status = 402, description = "`card_declined` and other declines (`decline_code`), `payment_failed`: the provider declined."),
        (status = 503, description = "`payment_provider_unavailable`: the provider is away; retrying with the same `Idempotency-Key` is safe."),
    ),
)]
async fn start_checkout(
    State(state): State<AppState>,
    Customer(account): Customer,
    IdempotencyKey(key): IdempotencyKey,
    Json(body): Json<CheckoutRequest>,
) -> Result<Response> {
    let bought = checkout::start(&state, account, key, &body).await?;
    Ok(ran(bought, |p| match p {
        Purchase::Subscribed {
            checkout,
            subscription,
        } => subscribed(StatusCode::CREATED, &checkout, &subscription),
        Purchase::RequiresAction {
            checkout,
            client_secret,
        } => requires_action(
            "checkout",
            value(&CheckoutView::from(&checkout)),
            &client_secret,
        ),
        Purchase::Processing { checkout } => reply(
            StatusCode::ACCEPTED,
            json!({ "checkout": CheckoutView::from(&checkout), "status": "processing" }),
        ),
    }))
}

/// `GET /v1/checkout/{id}`
#[utoipa::path(
    get, path = "/v1/checkout/{id}", tag = "dashboard",
    security(("customer" = [])),
    params(("id" = uuid::Uuid, Path, description = "The checkout's id.")),
    responses(
        (status = 200, description = "The checkout.", body = CheckoutView),
    ),
)]
async fn get_checkout(
    State(state): State<AppState>,
    Customer(account): Customer,
    Path(id): Path<CheckoutId>,
) -> Result<Response> {
    let c = checkout::get(&state, account, id).await?;
    Ok(reply(StatusCode::OK, value(&CheckoutView::from(&c))))
}

/// `POST /v1/checkout/{id}/confirm`
#[utoipa::path(
    post, path = "/v1/checkout/{id}/confirm", tag = "dashboard",
    security(("customer" = [])),
    params(("id" = uuid::Uuid, Path, description = "The checkout's id.")),
    responses(
        (status = 200, description = "Paid: the checkout and the subscription.", body = shapes::Subscribed),
        (status = 409, description = "`authentication_required`, `payment_processing`, `checkout_refunded`."),
        (status = 410, description = "`checkout_expired`, `checkout_canceled`."),
        (status = 402, description = "`card_declined` and other declines (`decline_code`), `payment_failed`: the provider declined."),
        (status = 503, description = "`payment_provider_unavailable`: the provider is away; retrying with the same `Idempotency-Key` is safe."),
    ),
)]
async fn confirm_checkout(
    State(state): State<AppState>,
    Customer(account): Customer,
    Path(id): Path<CheckoutId>,
) -> Result<Response> {
    let (c, sub) = checkout::confirm(&state, account, id).await?;
    Ok(subscribed(StatusCode::OK, &c, &sub))
}

/// `POST /v1/checkout/{id}/cancel`
#[utoipa::path(
    post, path = "/v1/checkout/{id}/cancel", tag = "dashboard",
    security(("customer" = [])),
    params(("id" = uuid::Uuid, Path, description = "The checkout's id.")),
    responses(
        (status = 200, description = "Canceled.", body = shapes::CheckoutCanceled),
        (status = 409, description = "`checkout_already_paid` (with `checkout`, `subscription`), `checkout_not_cancelable`."),
        (status = 503, description = "`payment_provider_unavailable`: the provider is away; retrying with the same `Idempotency-Key` is safe."),
    ),
)]
async fn cancel_checkout(
    State(state): State<AppState>,
    Customer(account): Customer,
    Path(id): Path<CheckoutId>,
) -> Result<Response> {
    Ok(match checkout::cancel(&state, account, id).await? {
        checkout::Canceled::Canceled(c) => reply(
            StatusCode::OK,
            json!({ "checkout": CheckoutView::from(&c) }),
        ),
        checkout::Canceled::AlreadyPaid(c, sub) => Error::conflict(
            "checkout_already_paid",
            "the payment went through before the cancel: the purchase is complete",
        )
        .with("checkout", value(&CheckoutView::from(&c)))
        .with("subscription", value(&SubscriptionView::from(&*sub)))
        .into_response(),
    })
}

/// `GET /v1/subscriptions`
#[utoipa::path(
    get, path = "/v1/subscriptions", tag = "dashboard",
    security(("customer" = [])),
    responses(
        (status = 200, description = "The account's subscriptions.", body = shapes::List<SubscriptionView>),
    ),
)]
async fn list_subscriptions(
    State(state): State<AppState>,
    Customer(account): Customer,
) -> Result<Response> {
    let subs = subscriptions::list(&state, account).await?;
    let data: Vec<_> = subs.iter().map(SubscriptionView::from).collect();
    Ok(reply(StatusCode::OK, json!({ "data": data })))
}

/// `POST /v1/subscriptions/{id}/cancel`
#[utoipa::path(
    post, path = "/v1/subscriptions/{id}/cancel", tag = "dashboard",
    security(("customer" = [])),
    params(("id" = uuid::Uuid, Path, description = "The subscription's id.")),
    request_body = crate::subscriptions::Cancel,
    responses(
        (status = 200, description = "The subscription.", body = SubscriptionView),
        (status = 409, description = "`subscription_canceled`."),
    ),
)]
async fn cancel_subscription(
    State(state): State<AppState>,
    Customer(account): Customer,
    Path(id): Path<SubscriptionId>,
    Json(body): Json<Cancel>,
) -> Result<Response> {
    let sub = subscriptions::cancel(&state, account, id, &body).await?;
    Ok(reply(StatusCode::OK, value(&SubscriptionView::from(&sub))))
}

/// `GET /v1/invoices?limit=&starting_after=` — newest first.
#[utoipa::path(
    get, path = "/v1/invoices", tag = "dashboard",
    security(("customer" = [])),
    params(crate::billing::invoices::Page),
    responses(
        (status = 200, description = "A page of invoices, newest first.", body = shapes::InvoicePage),
        (status = 400, description = "`invalid_limit`."),
        (status = 404, description = "`not_found`: `starting_after` names no invoice of the account."),
    ),
)]
async fn list_invoices(
    State(state): State<AppState>,
    Customer(account): Customer,
    Query(page): Query<invoices::Page>,
) -> Result<Response> {
    let (list, has_more) = invoices::list(&state, account, &page).await?;
    let data: Vec<_> = list.iter().map(InvoiceView::from).collect();
    Ok(reply(
        StatusCode::OK,
        json!({ "data": data, "has_more": has_more }),
    ))
}

/// `GET /v1/invoices/{id}`
#[utoipa::path(
    get, path = "/v1/invoices/{id}", tag = "dashboard",
    security(("customer" = [])),
    params(("id" = uuid::Uuid, Path, description = "The invoice's id.")),
    responses(
        (status = 200, description = "The invoice.", body = InvoiceView),
    ),
)]
async fn get_invoice(
    State(state): State<AppState>,
    Customer(account): Customer,
    Path(id): Path<InvoiceId>,
) -> Result<Response> {
    let inv = invoices::get(&state, account, id).await?;
    Ok(reply(StatusCode::OK, value(&InvoiceView::from(&inv))))
}

/// `GET /v1/invoices/{id}/credit-notes` — the invoice's corrections, oldest first.
#[utoipa::path(
    get, path = "/v1/invoices/{id}/credit-notes", tag = "dashboard",
    security(("customer" = [])),
    params(("id" = uuid::Uuid, Path, description = "The invoice's id.")),
    responses(
        (status = 200, description = "The invoice's credit notes, oldest first.", body = shapes::List<CreditNoteView>),
    ),
)]
async fn invoice_credit_notes(
    State(state): State<AppState>,
    Customer(account): Customer,
    Path(id): Path<InvoiceId>,
) -> Result<Response> {
    let notes = crate::billing::credit_notes::of_invoice(&state, account, id).await?;
    let data: Vec<_> = notes.iter().map(CreditNoteView::from).collect();
    Ok(reply(StatusCode::OK, json!({ "data": data })))
}

/// `GET /v1/invoices/{id}/pdf` — `application/pdf`, as an attachment.
#[utoipa::path(
    get, path = "/v1/invoices/{id}/pdf", tag = "dashboard",
    security(("customer" = [])),
    params(("id" = uuid::Uuid, Path, description = "The invoice's id.")),
    responses(
        (status = 200, description = "The invoice as a PDF attachment.", content_type = "application/pdf", body = Vec<u8>),
    ),
)]
async fn invoice_pdf(
    State(state): State<AppState>,
    Customer(account): Customer,
    Path(id): Path<InvoiceId>,
) -> Result<Response> {
    let (name, bytes) = invoices::pdf(&state, account, id).await?;
    Ok((
        StatusCode::OK,
        [
            (
                axum::http::header::CONTENT_TYPE,
                "application/pdf".to_owned(),
            ),
            (
                axum::http::header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        bytes,
    )
        .into_response())
}

fn payment(p: Payment) -> Response {
    match p {
        Payment::Paid(inv) => reply(
            StatusCode::OK,
            json!({ "invoice": InvoiceView::from(&inv), "status": "paid" }),
        ),
        Payment::RequiresAction {
            invoice,
            client_secret,
        } => requires_action(
            "invoice",
            value(&InvoiceView::from(&invoice)),
            &client_secret,
        ),
        Payment::Processing(inv) => reply(
            StatusCode::ACCEPTED,
            json!({ "invoice": InvoiceView::from(&inv), "status": "processing" }),
        ),
    }
}

/// `POST /v1/invoices/{id}/pay` — on-session, `{payment_method?}`.
#[utoipa::path(
    post, path = "/v1/invoices/{id}/pay", tag = "dashboard",
    security(("customer" = [])),
    params(("id" = uuid::Uuid, Path, description = "The invoice's id."), IdempotencyHeader),
    request_body = crate::billing::payments::PayInvoice,
    responses(
        (status = 200, description = "Paid.", body = shapes::InvoicePayment),
        (status = 202, description = "`requires_action` (3-D Secure) or `processing`.", body = shapes::InvoicePayment),
        (status = 409, description = "`payment_in_progress`, `payment_method_not_ready`, an invoice not open."),
        (status = 422, description = "`payment_method_required`."),
        (status = 402, description = "`card_declined` and other declines (`decline_code`), `payment_failed`: the provider declined."),
        (status = 503, description = "`payment_provider_unavailable`: the provider is away; retrying with the same `Idempotency-Key` is safe."),
    ),
)]
async fn pay_invoice(
    State(state): State<AppState>,
    Customer(account): Customer,
    Path(id): Path<InvoiceId>,
    IdempotencyKey(key): IdempotencyKey,
    Json(body): Json<PayInvoice>,
) -> Result<Response> {
    let paid = payments::pay(&state, account, id, key, &body).await?;
    Ok(ran(paid, payment))
}

/// `POST /v1/invoices/{id}/confirm` — after 3-D Secure.
#[utoipa::path(
    post, path = "/v1/invoices/{id}/confirm", tag = "dashboard",
    security(("customer" = [])),
    params(("id" = uuid::Uuid, Path, description = "The invoice's id.")),
    responses(
        (status = 200, description = "Paid.", body = shapes::InvoicePayment),
        (status = 202, description = "Still `requires_action` or `processing`.", body = shapes::InvoicePayment),
        (status = 409, description = "`nothing_to_confirm`."),
        (status = 402, description = "`card_declined` and other declines (`decline_code`), `payment_failed`: the provider declined."),
        (status = 503, description = "`payment_provider_unavailable`: the provider is away; retrying with the same `Idempotency-Key` is safe."),
    ),
)]
async fn confirm_invoice_payment(
    State(state): State<AppState>,
    Customer(account): Customer,
    Path(id): Path<InvoiceId>,
) -> Result<Response> {
    Ok(payment(payments::confirm(&state, account, id).await?))
}

/// `POST /v1/subscriptions/{id}/preview-change` — writes nothing.
#[utoipa::path(
    post, path = "/v1/subscriptions/{id}/preview-change", tag = "dashboard",
    security(("customer" = [])),
    params(("id" = uuid::Uuid, Path, description = "The subscription's id.")),
    request_body = crate::subscriptions::change::ChangePlan,
    responses(
        (status = 200, description = "What the change would invoice; writes nothing.", body = PreviewView),
        (status = 409, description = "`same_plan`, `no_change`, `subscription_canceled`, `subscription_unpaid`."),
        (status = 422, description = "`unknown_plan`, `nothing_to_change`, `plan_change_unsupported`, add-on codes."),
    ),
)]
async fn preview_change(
    State(state): State<AppState>,
    Customer(account): Customer,
    Path(id): Path<SubscriptionId>,
    Json(body): Json<ChangePlan>,
) -> Result<Response> {
    let p = change::preview(&state, account, id, &body).await?;
    Ok(reply(StatusCode::OK, value(&PreviewView::from(&p))))
}

/// `POST /v1/subscriptions/{id}/change`
#[utoipa::path(
    post, path = "/v1/subscriptions/{id}/change", tag = "dashboard",
    security(("customer" = [])),
    params(("id" = uuid::Uuid, Path, description = "The subscription's id."), IdempotencyHeader),
    request_body = crate::subscriptions::change::ChangePlan,
    responses(
        (status = 200, description = "Changed (or scheduled).", body = shapes::PlanChanged),
        (status = 202, description = "The change's invoice waits for 3-D Secure.", body = shapes::PlanChanged),
        (status = 409, description = "`same_plan`, `no_change`, `subscription_canceled`, `subscription_unpaid`, `payment_in_progress`."),
        (status = 422, description = "`unknown_plan`, `nothing_to_change`, `plan_change_unsupported`, `payment_method_required`, add-on codes."),
        (status = 402, description = "`card_declined` and other declines (`decline_code`), `payment_failed`: the provider declined."),
        (status = 503, description = "`payment_provider_unavailable`: the provider is away; retrying with the same `Idempotency-Key` is safe."),
    ),
)]
async fn change_plan(
    State(state): State<AppState>,
    Customer(account): Customer,
    Path(id): Path<SubscriptionId>,
    IdempotencyKey(key): IdempotencyKey,
    Json(body): Json<ChangePlan>,
) -> Result<Response> {
    let changed = change::change(&state, account, id, key, &body).await?;
    Ok(ran(changed, |c| {
        let mut body = json!({
            "subscription": SubscriptionView::from(&c.subscription),
            "invoice": c.invoice.as_ref().map(InvoiceView::from),
            "payment": c.payment,
        });
        if let ChangePayment::RequiresAction { client_secret } = &c.payment {
            body["status"] = json!("requires_action");
            body["client_secret"] = json!(client_secret);
            body["next_action"] = json!({ "type": "use_stripe_sdk" });
            return reply(StatusCode::ACCEPTED, body);
        }
        reply(StatusCode::OK, body)
    }))
}

/// `POST /v1/subscriptions/{id}/resume` — undoes a pending cancel at period end.
#[utoipa::path(
    post, path = "/v1/subscriptions/{id}/resume", tag = "dashboard",
    security(("customer" = [])),
    params(("id" = uuid::Uuid, Path, description = "The subscription's id.")),
    responses(
        (status = 200, description = "The subscription.", body = SubscriptionView),
        (status = 409, description = "`not_canceling`, `subscription_canceled`."),
    ),
)]
async fn resume_subscription(
    State(state): State<AppState>,
    Customer(account): Customer,
    Path(id): Path<SubscriptionId>,
) -> Result<Response> {
    let sub = change::resume(&state, account, id).await?;
    Ok(reply(StatusCode::OK, value(&SubscriptionView::from(&sub))))
}

/// `GET /v1/usage`
#[utoipa::path(
    get, path = "/v1/usage", tag = "dashboard",
    security(("customer" = [])),
    responses(
        (status = 200, description = "Usage of every meter in the current period.", body = crate::usage::Usage),
    ),
)]
async fn account_usage(
    State(state): State<AppState>,
    Customer(account): Customer,
) -> Result<Response> {
    let usage = usage::of_account(&state, account).await?;
    Ok(reply(StatusCode::OK, value(&usage)))
}

/// `PATCH /v1/account {name?, email?, billing_address?, tax_id?}`
#[utoipa::path(
    patch, path = "/v1/account", tag = "dashboard",
    security(("customer" = [])),
    request_body = crate::accounts::profile::Patch,
    responses(
        (status = 200, description = "The account as updated.", body = AccountView),
        (status = 422, description = "`invalid_account`."),
    ),
)]
async fn update_account(
    State(state): State<AppState>,
    Customer(id): Customer,
    Json(patch): Json<accounts::profile::Patch>,
) -> Result<Response> {
    let account = accounts::profile::update(&state, id, &patch).await?;
    Ok(reply(StatusCode::OK, value(&AccountView::from(&account))))
}

/// `GET /v1/account/contacts`
#[utoipa::path(
    get, path = "/v1/account/contacts", tag = "dashboard",
    security(("customer" = [])),
    responses(
        (status = 200, description = "The billing contacts.", body = shapes::List<crate::accounts::profile::Contact>),
    ),
)]
async fn list_contacts(State(state): State<AppState>, Customer(id): Customer) -> Result<Response> {
    let list = accounts::profile::contacts(&state, id).await?;
    Ok(reply(StatusCode::OK, json!({ "data": list })))
}

/// `POST /v1/account/contacts {email, name?}`
#[utoipa::path(
    post, path = "/v1/account/contacts", tag = "dashboard",
    security(("customer" = [])),
    request_body = crate::accounts::profile::NewContact,
    responses(
        (status = 201, description = "The contact.", body = crate::accounts::profile::Contact),
        (status = 409, description = "`contact_exists`."),
        (status = 422, description = "`invalid_contact`, `too_many_contacts`."),
    ),
)]
async fn add_contact(
    State(state): State<AppState>,
    Customer(id): Customer,
    Json(body): Json<accounts::profile::NewContact>,
) -> Result<Response> {
    let c = accounts::profile::add_contact(&state, id, &body).await?;
    Ok(reply(StatusCode::CREATED, json!(c)))
}

/// `DELETE /v1/account/contacts/{id}`
#[utoipa::path(
    delete, path = "/v1/account/contacts/{id}", tag = "dashboard",
    security(("customer" = [])),
    params(("id" = uuid::Uuid, Path, description = "The contact's id.")),
    responses(
        (status = 204, description = "Removed."),
    ),
)]
async fn remove_contact(
    State(state): State<AppState>,
    Customer(id): Customer,
    Path(contact): Path<uuid::Uuid>,
) -> Result<Response> {
    accounts::profile::remove_contact(&state, id, contact).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /v1/tokens` — the account's API tokens (never their secrets).
#[utoipa::path(
    get, path = "/v1/tokens", tag = "dashboard",
    security(("customer" = [])),
    responses(
        (status = 200, description = "The account's API tokens, never their secrets.", body = shapes::List<crate::accounts::profile::TokenInfo>),
    ),
)]
async fn list_tokens(State(state): State<AppState>, Customer(id): Customer) -> Result<Response> {
    let list = accounts::profile::tokens(&state, id).await?;
    Ok(reply(StatusCode::OK, json!({ "data": list })))
}

/// `POST /v1/tokens {label?}` — another token, shown once.
#[utoipa::path(
    post, path = "/v1/tokens", tag = "dashboard",
    security(("customer" = [])),
    request_body = crate::accounts::profile::TokenRequest,
    responses(
        (status = 201, description = "The token, shown once.", body = crate::accounts::profile::NewToken),
        (status = 422, description = "`invalid_token_label`, `too_many_tokens`."),
    ),
)]
async fn create_token(
    State(state): State<AppState>,
    Customer(id): Customer,
    Json(body): Json<accounts::profile::TokenRequest>,
) -> Result<Response> {
    let t = accounts::profile::create_token(&state, id, &body).await?;
    Ok(reply(StatusCode::CREATED, json!(t)))
}

/// `DELETE /v1/tokens/{id}` — revoked at once.
#[utoipa::path(
    delete, path = "/v1/tokens/{id}", tag = "dashboard",
    security(("customer" = [])),
    params(("id" = uuid::Uuid, Path, description = "The token's id.")),
    responses(
        (status = 200, description = "The token, revoked.", body = crate::accounts::profile::TokenInfo),
    ),
)]
async fn revoke_token(
    State(state): State<AppState>,
    Customer(id): Customer,
    Path(token): Path<crate::ids::TokenId>,
) -> Result<Response> {
    let t = accounts::profile::revoke_token(&state, id, token).await?;
    Ok(reply(StatusCode::OK, json!(t)))
}

fn wallet(w: &payment_methods::Wallet) -> Response {
    let data: Vec<_> = w.methods.iter().map(PaymentMethodView::from).collect();
    reply(
        StatusCode::OK,
        json!({ "data": data, "default_payment_method_id": w.default_payment_method_id }),
    )
}

/// `POST /v1/payment-methods/{id}/default`
#[utoipa::path(
    post, path = "/v1/payment-methods/{id}/default", tag = "dashboard",
    security(("customer" = [])),
    params(("id" = uuid::Uuid, Path, description = "The payment method's id.")),
    responses(
        (status = 200, description = "The wallet.", body = shapes::Wallet),
        (status = 409, description = "`payment_method_not_ready`."),
    ),
)]
async fn make_default_payment_method(
    State(state): State<AppState>,
    Customer(account): Customer,
    Path(id): Path<PaymentMethodId>,
) -> Result<Response> {
    Ok(wallet(
        &payment_methods::make_default(&state, account, id).await?,
    ))
}

/// `DELETE /v1/payment-methods/{id}`
#[utoipa::path(
    delete, path = "/v1/payment-methods/{id}", tag = "dashboard",
    security(("customer" = [])),
    params(("id" = uuid::Uuid, Path, description = "The payment method's id.")),
    responses(
        (status = 200, description = "The wallet after the removal.", body = shapes::Wallet),
        (status = 409, description = "`payment_method_in_use`."),
    ),
)]
async fn remove_payment_method(
    State(state): State<AppState>,
    Customer(account): Customer,
    Path(id): Path<PaymentMethodId>,
) -> Result<Response> {
    Ok(wallet(&payment_methods::remove(&state, account, id).await?))
}

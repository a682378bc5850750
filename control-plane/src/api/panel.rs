//! The NinjaPanel's routes (`/panel/v1`): what a support agent may see and do, by role
//! (`viewer` reads; `support` notes, overrides, retries, requiring a payment method;
//! `billing_admin` credits, bans and disputes too). Every write needs an `Idempotency-Key` and
//! a `reason`, and is audited in the transaction of its effect by the domain it calls — the
//! same service functions the Dashboard uses. Each handler extracts, checks the role, calls
//! and renders.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{delete, get, post};
use serde::Deserialize;
use serde_json::json;

use super::extract::AgentCaller;
use super::views::{AccountView, InvoiceView, PaymentMethodView, SubscriptionView, json as reply};
use crate::accounts::{self, support};
use crate::agents::Role;
use crate::audit::{Reason, Write};
use crate::billing::invoices;
use crate::entitlements::{self, overrides};
use crate::error::{Error, Result};
use crate::http::idempotency::IdempotencyKey;
use crate::http::{Json, Path, Query};
use crate::idempotency::Key;
use crate::ids::{AccountId, InvoiceId, OverrideId, SubscriptionId};
use crate::state::AppState;
use crate::{dunning, payment_methods, subscriptions, usage};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/panel/v1/accounts", get(search))
        .route("/panel/v1/accounts/{id}", get(account))
        .route("/panel/v1/accounts/{id}/timeline", get(timeline))
        .route("/panel/v1/accounts/{id}/notes", post(add_note))
        .route("/panel/v1/accounts/{id}/ban", post(ban))
        .route("/panel/v1/accounts/{id}/unban", post(unban))
        .route(
            "/panel/v1/accounts/{id}/require-payment-method",
            post(require_payment_method),
        )
        .route(
            "/panel/v1/accounts/{id}/entitlement-overrides",
            post(add_override),
        )
        .route(
            "/panel/v1/accounts/{id}/entitlement-overrides/{override_id}",
            delete(remove_override),
        )
        .route("/panel/v1/accounts/{id}/credits", post(grant_credit))
        .route("/panel/v1/invoices/{id}/retry", post(retry_invoice))
        .route("/panel/v1/invoices/{id}/refund", post(refund_invoice))
        .route("/panel/v1/invoices/{id}/void", post(void_invoice))
        .route("/panel/v1/disputes", get(list_disputes))
        .route("/panel/v1/disputes/{id}/resolve", post(resolve_dispute))
        .route(
            "/panel/v1/subscriptions/{id}/extend-trial",
            post(extend_trial),
        )
        .route(
            "/panel/v1/subscriptions/{id}/cancel",
            post(cancel_subscription),
        )
        .route(
            "/panel/v1/subscriptions/{id}/change",
            post(change_subscription),
        )
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct SearchQuery {
    q: String,
}

/// `GET /panel/v1/accounts?q=` — by email or name (substring), id or provider customer id.
#[utoipa::path(
    get, path = "/panel/v1/accounts", tag = "panel",
    security(("agent" = [])),
    params(SearchQuery),
    responses(
        (status = 200, description = "(viewer) Accounts whose email or name holds `q`, or whose id or provider customer id is `q`.", body = super::shapes::List<AccountView>),
        (status = 422, description = "`invalid_query`."),
    ),
)]
async fn search(
    State(state): State<AppState>,
    AgentCaller(agent): AgentCaller,
    Query(query): Query<SearchQuery>,
) -> Result<Response> {
    agent.require(Role::Viewer)?;
    let found = support::search(&state, &query.q).await?;
    let data: Vec<_> = found.iter().map(AccountView::from).collect();
    Ok(reply(StatusCode::OK, json!({ "data": data })))
}

/// `GET /panel/v1/accounts/{id}` — the 360° view.
#[utoipa::path(
    get, path = "/panel/v1/accounts/{id}", tag = "panel",
    security(("agent" = [])),
    params(("id" = uuid::Uuid, Path, description = "The account's id.")),
    responses(
        (status = 200, description = "(viewer) The 360° view.", body = super::shapes::AccountOverview),
    ),
)]
async fn account(
    State(state): State<AppState>,
    AgentCaller(agent): AgentCaller,
    Path(id): Path<AccountId>,
) -> Result<Response> {
    agent.require(Role::Viewer)?;
    let acct = accounts::get(&state, id).await?;
    let billing = invoices::account_billing(&state, id).await?;
    let dunning = dunning::current(&state, id).await?;
    let subs = subscriptions::list(&state, id).await?;
    let wallet = payment_methods::list(&state, id).await?;
    let (invoices, _) = invoices::list(&state, id, &invoices::Page::default()).await?;
    let usage = usage::of_account(&state, id).await?;
    let decisions = entitlements::decisions(&state, id).await?;
    let overrides = overrides::of_account(&state, id).await?;
    let notes = support::notes(&state, id).await?;
    let disputes = crate::disputes::of_account(&state, id).await?;
    let decisions = decisions.map(|(version, d)| {
        json!({ "bundle_version": version,
                "features": d.into_iter().map(|(k, d)| json!({ "feature": k, "decision": d })).collect::<Vec<_>>() })
    });
    Ok(reply(
        StatusCode::OK,
        json!({
            "account": AccountView::from(&acct).with_billing(&billing).with_dunning(dunning),
            "subscriptions": subs.iter().map(SubscriptionView::from).collect::<Vec<_>>(),
            "payment_methods": wallet.methods.iter().map(PaymentMethodView::from).collect::<Vec<_>>(),
            "default_payment_method_id": wallet.default_payment_method_id,
            "invoices": invoices.iter().map(InvoiceView::from).collect::<Vec<_>>(),
            "usage": usage,
            "decisions": decisions,
            "overrides": overrides,
            "notes": notes,
            "disputes": disputes,
        }),
    ))
}

/// `GET /panel/v1/accounts/{id}/timeline` — lifecycle events and agent actions, newest first.
#[utoipa::path(
    get, path = "/panel/v1/accounts/{id}/timeline", tag = "panel",
    security(("agent" = [])),
    params(("id" = uuid::Uuid, Path, description = "The account's id.")),
    responses(
        (status = 200, description = "(viewer) Lifecycle events, agent actions and notes, newest first.", body = super::shapes::List<crate::accounts::support::TimelineEntry>),
    ),
)]
async fn timeline(
    State(state): State<AppState>,
    AgentCaller(agent): AgentCaller,
    Path(id): Path<AccountId>,
) -> Result<Response> {
    agent.require(Role::Viewer)?;
    let entries = support::timeline(&state, id).await?;
    Ok(reply(StatusCode::OK, json!({ "data": entries })))
}

/// A write's common fields.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Because {
    /// Why (3-2000 printable characters; audited).
    #[schema(value_type = String, min_length = 3, max_length = 2000, example = "the customer asked")]
    reason: Option<String>,
}

fn write<'a>(
    state: &AppState,
    agent: &'a crate::agents::Agent,
    key: &'a Key,
    reason: &'a Reason,
    action: &'static str,
) -> Write<'a> {
    Write::new(
        agent,
        key,
        reason,
        action,
        crate::clock::Clock::now(&*state.clock),
    )
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NoteBody {
    /// Why (3-2000 printable characters; audited).
    #[schema(value_type = String, min_length = 3, max_length = 2000, example = "the customer asked")]
    reason: Option<String>,
    /// 1-5000 characters.
    #[schema(min_length = 1, max_length = 5000)]
    body: String,
}

/// `POST /panel/v1/accounts/{id}/notes` (support)
#[utoipa::path(
    post, path = "/panel/v1/accounts/{id}/notes", tag = "panel",
    security(("agent" = [])),
    params(("id" = uuid::Uuid, Path, description = "The account's id."), super::openapi::IdempotencyHeader),
    request_body = NoteBody,
    responses(
        (status = 201, description = "(support) The note.", body = crate::accounts::support::Note),
        (status = 422, description = "`reason_required`, `invalid_note`."),
    ),
)]
async fn add_note(
    State(state): State<AppState>,
    AgentCaller(agent): AgentCaller,
    IdempotencyKey(key): IdempotencyKey,
    Path(id): Path<AccountId>,
    Json(b): Json<NoteBody>,
) -> Result<Response> {
    agent.require(Role::Support)?;
    let reason = Reason::parse(b.reason.as_deref())?;
    let w = write(&state, &agent, &key, &reason, "account.note").on(
        Some(id),
        id.to_string(),
        json!({ "body": b.body }),
    );
    let note = support::add_note(&state, &w, id, &b.body).await?;
    Ok(reply(StatusCode::CREATED, json!(note)))
}

async fn standing(
    state: AppState,
    agent: crate::agents::Agent,
    key: Key,
    id: AccountId,
    b: Because,
    banned: bool,
) -> Result<Response> {
    agent.require(Role::BillingAdmin)?;
    let reason = Reason::parse(b.reason.as_deref())?;
    let action = if banned {
        "account.ban"
    } else {
        "account.unban"
    };
    let w = write(&state, &agent, &key, &reason, action).on(Some(id), id.to_string(), json!({}));
    let acct = support::set_banned(&state, &w, id, banned).await?;
    Ok(reply(StatusCode::OK, json!(AccountView::from(&acct))))
}

/// `POST /panel/v1/accounts/{id}/ban` (billing_admin)
#[utoipa::path(
    post, path = "/panel/v1/accounts/{id}/ban", tag = "panel",
    security(("agent" = [])),
    params(("id" = uuid::Uuid, Path, description = "The account's id."), super::openapi::IdempotencyHeader),
    request_body = Because,
    responses(
        (status = 200, description = "(billing_admin) The account, banned.", body = AccountView),
        (status = 422, description = "`reason_required`."),
    ),
)]
async fn ban(
    State(state): State<AppState>,
    AgentCaller(agent): AgentCaller,
    IdempotencyKey(key): IdempotencyKey,
    Path(id): Path<AccountId>,
    Json(b): Json<Because>,
) -> Result<Response> {
    standing(state, agent, key, id, b, true).await
}

/// `POST /panel/v1/accounts/{id}/unban` (billing_admin)
#[utoipa::path(
    post, path = "/panel/v1/accounts/{id}/unban", tag = "panel",
    security(("agent" = [])),
    params(("id" = uuid::Uuid, Path, description = "The account's id."), super::openapi::IdempotencyHeader),
    request_body = Because,
    responses(
        (status = 200, description = "(billing_admin) The account, active.", body = AccountView),
        (status = 422, description = "`reason_required`."),
    ),
)]
async fn unban(
    State(state): State<AppState>,
    AgentCaller(agent): AgentCaller,
    IdempotencyKey(key): IdempotencyKey,
    Path(id): Path<AccountId>,
    Json(b): Json<Because>,
) -> Result<Response> {
    standing(state, agent, key, id, b, false).await
}

/// `POST /panel/v1/accounts/{id}/require-payment-method` (support)
#[utoipa::path(
    post, path = "/panel/v1/accounts/{id}/require-payment-method", tag = "panel",
    security(("agent" = [])),
    params(("id" = uuid::Uuid, Path, description = "The account's id."), super::openapi::IdempotencyHeader),
    request_body = Because,
    responses(
        (status = 200, description = "(support) The account, which must add a payment method.", body = AccountView),
        (status = 422, description = "`reason_required`."),
    ),
)]
async fn require_payment_method(
    State(state): State<AppState>,
    AgentCaller(agent): AgentCaller,
    IdempotencyKey(key): IdempotencyKey,
    Path(id): Path<AccountId>,
    Json(b): Json<Because>,
) -> Result<Response> {
    agent.require(Role::Support)?;
    let reason = Reason::parse(b.reason.as_deref())?;
    let w = write(
        &state,
        &agent,
        &key,
        &reason,
        "account.require_payment_method",
    )
    .on(Some(id), id.to_string(), json!({}));
    let acct = support::require_payment_method(&state, &w, id).await?;
    Ok(reply(StatusCode::OK, json!(AccountView::from(&acct))))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct OverrideBody {
    /// Why (3-2000 printable characters; audited).
    #[schema(value_type = String, min_length = 3, max_length = 2000, example = "the customer asked")]
    reason: Option<String>,
    #[serde(flatten)]
    input: overrides::NewOverride,
}

/// `POST /panel/v1/accounts/{id}/entitlement-overrides` (support)
#[utoipa::path(
    post, path = "/panel/v1/accounts/{id}/entitlement-overrides", tag = "panel",
    security(("agent" = [])),
    params(("id" = uuid::Uuid, Path, description = "The account's id."), super::openapi::IdempotencyHeader),
    request_body = OverrideBody,
    responses(
        (status = 201, description = "(support) The override.", body = crate::entitlements::overrides::Override),
        (status = 422, description = "`reason_required`, `invalid_override`, `unknown_feature`."),
    ),
)]
async fn add_override(
    State(state): State<AppState>,
    AgentCaller(agent): AgentCaller,
    IdempotencyKey(key): IdempotencyKey,
    Path(id): Path<AccountId>,
    Json(b): Json<OverrideBody>,
) -> Result<Response> {
    agent.require(Role::Support)?;
    let reason = Reason::parse(b.reason.as_deref())?;
    let request = serde_json::to_value(&b.input).map_err(Error::internal)?;
    let w = write(&state, &agent, &key, &reason, "entitlement.override").on(
        Some(id),
        b.input.feature.clone(),
        request,
    );
    let o = overrides::add(&state, &w, id, &b.input).await?;
    Ok(reply(StatusCode::CREATED, json!(o)))
}

/// `DELETE /panel/v1/accounts/{id}/entitlement-overrides/{override_id}` (support)
#[utoipa::path(
    delete, path = "/panel/v1/accounts/{id}/entitlement-overrides/{override_id}", tag = "panel",
    security(("agent" = [])),
    params(("id" = uuid::Uuid, Path, description = "The account's id."), ("override_id" = uuid::Uuid, Path, description = "The override's id."), super::openapi::IdempotencyHeader),
    request_body = Because,
    responses(
        (status = 200, description = "(support) The override, removed.", body = crate::entitlements::overrides::Override),
        (status = 422, description = "`reason_required`."),
    ),
)]
async fn remove_override(
    State(state): State<AppState>,
    AgentCaller(agent): AgentCaller,
    IdempotencyKey(key): IdempotencyKey,
    Path((id, override_id)): Path<(AccountId, OverrideId)>,
    Json(b): Json<Because>,
) -> Result<Response> {
    agent.require(Role::Support)?;
    let reason = Reason::parse(b.reason.as_deref())?;
    let w = write(
        &state,
        &agent,
        &key,
        &reason,
        "entitlement.override_removed",
    )
    .on(Some(id), override_id.to_string(), json!({}));
    let o = overrides::remove(&state, &w, id, override_id).await?;
    Ok(reply(StatusCode::OK, json!(o)))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreditBody {
    /// Why (3-2000 printable characters; audited).
    #[schema(value_type = String, min_length = 3, max_length = 2000, example = "the customer asked")]
    reason: Option<String>,
    #[serde(flatten)]
    grant: crate::billing::credits::Grant,
}

/// `POST /panel/v1/accounts/{id}/credits {amount_minor, currency}` (billing_admin)
#[utoipa::path(
    post, path = "/panel/v1/accounts/{id}/credits", tag = "panel",
    security(("agent" = [])),
    params(("id" = uuid::Uuid, Path, description = "The account's id."), super::openapi::IdempotencyHeader),
    request_body = CreditBody,
    responses(
        (status = 201, description = "(billing_admin) The credit granted.", body = crate::billing::credits::Granted),
        (status = 422, description = "`reason_required`, `invalid_amount`, `currency_mismatch`."),
    ),
)]
async fn grant_credit(
    State(state): State<AppState>,
    AgentCaller(agent): AgentCaller,
    IdempotencyKey(key): IdempotencyKey,
    Path(id): Path<AccountId>,
    Json(b): Json<CreditBody>,
) -> Result<Response> {
    agent.require(Role::BillingAdmin)?;
    let reason = Reason::parse(b.reason.as_deref())?;
    let request = serde_json::to_value(&b.grant).map_err(Error::internal)?;
    let w = write(&state, &agent, &key, &reason, "account.credit").on(
        Some(id),
        id.to_string(),
        request,
    );
    let granted = crate::billing::credits::grant(&state, &w, id, &b.grant).await?;
    Ok(reply(StatusCode::CREATED, json!(granted)))
}

/// `POST /panel/v1/invoices/{id}/retry` (support) — a dunning retry now.
#[utoipa::path(
    post, path = "/panel/v1/invoices/{id}/retry", tag = "panel",
    security(("agent" = [])),
    params(("id" = uuid::Uuid, Path, description = "The invoice's id."), super::openapi::IdempotencyHeader),
    request_body = Because,
    responses(
        (status = 200, description = "(support) The dunning case after the retry.", body = crate::dunning::Case),
        (status = 409, description = "`not_in_dunning`, `payment_in_progress`."),
        (status = 422, description = "`reason_required`."),
        (status = 503, description = "`payment_provider_unavailable`."),
    ),
)]
async fn retry_invoice(
    State(state): State<AppState>,
    AgentCaller(agent): AgentCaller,
    IdempotencyKey(key): IdempotencyKey,
    Path(id): Path<InvoiceId>,
    Json(b): Json<Because>,
) -> Result<Response> {
    agent.require(Role::Support)?;
    let reason = Reason::parse(b.reason.as_deref())?;
    let w =
        write(&state, &agent, &key, &reason, "invoice.retry").on(None, id.to_string(), json!({}));
    let case = dunning::retry_now(&state, &w, id).await?;
    Ok(reply(StatusCode::OK, json!(case)))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct DisputeQuery {
    status: Option<crate::disputes::DisputeStatus>,
}

/// `GET /panel/v1/disputes?status=` — every account's disputes, newest first.
#[utoipa::path(
    get, path = "/panel/v1/disputes", tag = "panel",
    security(("agent" = [])),
    params(DisputeQuery),
    responses(
        (status = 200, description = "(viewer) Every account's disputes, newest first.", body = super::shapes::List<crate::disputes::Dispute>),
    ),
)]
async fn list_disputes(
    State(state): State<AppState>,
    AgentCaller(agent): AgentCaller,
    Query(q): Query<DisputeQuery>,
) -> Result<Response> {
    agent.require(Role::Viewer)?;
    let list = crate::disputes::list(&state, q.status).await?;
    Ok(reply(StatusCode::OK, json!({ "data": list })))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ExtendTrial {
    /// Why (3-2000 printable characters; audited).
    #[schema(value_type = String, min_length = 3, max_length = 2000, example = "the customer asked")]
    reason: Option<String>,
    /// 1 to 90.
    #[schema(minimum = 1, maximum = 90)]
    days: i64,
}

/// `POST /panel/v1/subscriptions/{id}/extend-trial {days}` (support)
#[utoipa::path(
    post, path = "/panel/v1/subscriptions/{id}/extend-trial", tag = "panel",
    security(("agent" = [])),
    params(("id" = uuid::Uuid, Path, description = "The subscription's id."), super::openapi::IdempotencyHeader),
    request_body = ExtendTrial,
    responses(
        (status = 200, description = "(support) The subscription.", body = SubscriptionView),
        (status = 409, description = "`not_trialing`."),
        (status = 422, description = "`reason_required`, `invalid_days`."),
    ),
)]
async fn extend_trial(
    State(state): State<AppState>,
    AgentCaller(agent): AgentCaller,
    IdempotencyKey(key): IdempotencyKey,
    Path(id): Path<SubscriptionId>,
    Json(b): Json<ExtendTrial>,
) -> Result<Response> {
    agent.require(Role::Support)?;
    let reason = Reason::parse(b.reason.as_deref())?;
    let w = write(&state, &agent, &key, &reason, "subscription.extend_trial").on(
        None,
        id.to_string(),
        json!({ "days": b.days }),
    );
    let sub = subscriptions::extend_trial(&state, &w, id, b.days).await?;
    Ok(reply(StatusCode::OK, json!(SubscriptionView::from(&sub))))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RefundBody {
    /// Why (3-2000 printable characters; audited).
    #[schema(value_type = String, min_length = 3, max_length = 2000, example = "the customer asked")]
    reason: Option<String>,
    #[serde(default)]
    amount_minor: Option<i64>,
}

/// `POST /panel/v1/invoices/{id}/refund {amount_minor?}` (billing_admin) — through the gateway
/// that took the payment; all of it without an amount.
#[utoipa::path(
    post, path = "/panel/v1/invoices/{id}/refund", tag = "panel",
    security(("agent" = [])),
    params(("id" = uuid::Uuid, Path, description = "The invoice's id."), super::openapi::IdempotencyHeader),
    request_body = RefundBody,
    responses(
        (status = 200, description = "(billing_admin) The refund.", body = crate::billing::refunds::Refunded),
        (status = 409, description = "`no_refundable_payment`."),
        (status = 422, description = "`reason_required`, `invalid_amount`."),
        (status = 503, description = "`payment_provider_unavailable`."),
    ),
)]
async fn refund_invoice(
    State(state): State<AppState>,
    AgentCaller(agent): AgentCaller,
    IdempotencyKey(key): IdempotencyKey,
    Path(id): Path<InvoiceId>,
    Json(b): Json<RefundBody>,
) -> Result<Response> {
    agent.require(Role::BillingAdmin)?;
    let reason = Reason::parse(b.reason.as_deref())?;
    let w = write(&state, &agent, &key, &reason, "invoice.refund").on(
        None,
        id.to_string(),
        json!({ "amount_minor": b.amount_minor }),
    );
    let r = crate::billing::refunds::refund_invoice(&state, &w, id, b.amount_minor).await?;
    Ok(reply(StatusCode::OK, json!(r)))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ResolveBody {
    /// Why (3-2000 printable characters; audited).
    #[schema(value_type = String, min_length = 3, max_length = 2000, example = "the customer asked")]
    reason: Option<String>,
    resolution: crate::disputes::Resolution,
    #[serde(default)]
    evidence: String,
}

/// `POST /panel/v1/disputes/{id}/resolve {resolution: accept | contest, evidence?}`
/// (billing_admin)
#[utoipa::path(
    post, path = "/panel/v1/disputes/{id}/resolve", tag = "panel",
    security(("agent" = [])),
    params(("id" = uuid::Uuid, Path, description = "The dispute's id."), super::openapi::IdempotencyHeader),
    request_body = ResolveBody,
    responses(
        (status = 200, description = "(billing_admin) The dispute.", body = crate::disputes::Dispute),
        (status = 409, description = "`dispute_closed`."),
        (status = 422, description = "`reason_required`, `evidence_required`, `invalid_dispute`."),
        (status = 503, description = "`payment_provider_unavailable`."),
    ),
)]
async fn resolve_dispute(
    State(state): State<AppState>,
    AgentCaller(agent): AgentCaller,
    IdempotencyKey(key): IdempotencyKey,
    Path(id): Path<crate::ids::DisputeId>,
    Json(b): Json<ResolveBody>,
) -> Result<Response> {
    agent.require(Role::BillingAdmin)?;
    let reason = Reason::parse(b.reason.as_deref())?;
    let w = write(&state, &agent, &key, &reason, "dispute.resolve").on(
        None,
        id.to_string(),
        json!({ "resolution": b.resolution, "evidence": b.evidence }),
    );
    let d = crate::disputes::resolve(&state, &w, id, b.resolution, &b.evidence).await?;
    Ok(reply(StatusCode::OK, json!(d)))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CancelBody {
    /// Why (3-2000 printable characters; audited).
    #[schema(value_type = String, min_length = 3, max_length = 2000, example = "the customer asked")]
    reason: Option<String>,
    at_period_end: bool,
    #[serde(default)]
    refund: subscriptions::CancelRefund,
}

/// `POST /panel/v1/subscriptions/{id}/cancel {at_period_end, refund?: none | prorated}`
/// (support; billing_admin with a refund) — the Dashboard's cancel, for any account, audited;
/// `prorated` refunds the unused share of the period through the gateway.
#[utoipa::path(
    post, path = "/panel/v1/subscriptions/{id}/cancel", tag = "panel",
    security(("agent" = [])),
    params(("id" = uuid::Uuid, Path, description = "The subscription's id."), super::openapi::IdempotencyHeader),
    request_body = CancelBody,
    responses(
        (status = 200, description = "(support; billing_admin with `refund: prorated`) The subscription, and the refund of the period's unused share (`null` without one).", body = super::shapes::AgentCanceled),
        (status = 409, description = "`subscription_canceled`, `no_refundable_payment`."),
        (status = 422, description = "`reason_required`, `refund_needs_cancel_now`, `invalid_amount`, `payment_provider_rejected`."),
        (status = 503, description = "`payment_provider_unavailable`."),
    ),
)]
async fn cancel_subscription(
    State(state): State<AppState>,
    AgentCaller(agent): AgentCaller,
    IdempotencyKey(key): IdempotencyKey,
    Path(id): Path<SubscriptionId>,
    Json(b): Json<CancelBody>,
) -> Result<Response> {
    agent.require(match b.refund {
        subscriptions::CancelRefund::None => Role::Support,
        subscriptions::CancelRefund::Prorated => Role::BillingAdmin,
    })?;
    let reason = Reason::parse(b.reason.as_deref())?;
    let w = write(&state, &agent, &key, &reason, "subscription.cancel").on(
        None,
        id.to_string(),
        json!({ "at_period_end": b.at_period_end, "refund": b.refund }),
    );
    let cmd = subscriptions::Cancel {
        at_period_end: b.at_period_end,
    };
    let done = subscriptions::cancel_for_agent(&state, &w, id, &cmd, b.refund).await?;
    Ok(reply(
        StatusCode::OK,
        json!({ "subscription": SubscriptionView::from(&done.subscription), "refund": done.refund }),
    ))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ChangeBody {
    /// Why (3-2000 printable characters; audited).
    #[schema(value_type = String, min_length = 3, max_length = 2000, example = "the customer asked")]
    reason: Option<String>,
    #[serde(default)]
    plan: Option<String>,
    #[serde(default)]
    addons: Option<std::collections::BTreeMap<String, i64>>,
    #[serde(default)]
    when: Option<subscriptions::change::When>,
}

/// `POST /panel/v1/subscriptions/{id}/change {plan?, addons?, when?}` (support) — the
/// Dashboard's change for any account, audited; an upgrade's proration is collected
/// off-session.
#[utoipa::path(
    post, path = "/panel/v1/subscriptions/{id}/change", tag = "panel",
    security(("agent" = [])),
    params(("id" = uuid::Uuid, Path, description = "The subscription's id."), super::openapi::IdempotencyHeader),
    request_body = ChangeBody,
    responses(
        (status = 200, description = "(support) The subscription as changed, and its proration invoice (`null` without one; charged off-session).", body = super::shapes::AgentChanged),
        (status = 402, description = "`payment_method_required`: the account must add a payment method first (its renewal failed for good, or an agent asked for one)."),
        (status = 409, description = "`same_plan`, `no_change`, `subscription_unpaid`, `subscription_canceled`."),
        (status = 422, description = "`reason_required`, `unknown_plan`, `unknown_addon`, `invalid_addon_quantity`, `nothing_to_change`, `plan_change_unsupported`, `payment_method_required`."),
    ),
)]
async fn change_subscription(
    State(state): State<AppState>,
    AgentCaller(agent): AgentCaller,
    IdempotencyKey(key): IdempotencyKey,
    Path(id): Path<SubscriptionId>,
    Json(b): Json<ChangeBody>,
) -> Result<Response> {
    agent.require(Role::Support)?;
    let reason = Reason::parse(b.reason.as_deref())?;
    let change = subscriptions::change::ChangePlan {
        plan: b.plan,
        addons: b.addons,
        when: b.when,
    };
    let w = write(&state, &agent, &key, &reason, "subscription.change").on(
        None,
        id.to_string(),
        json!(change),
    );
    let done = subscriptions::change::change_by_agent(&state, &w, id, &change).await?;
    Ok(reply(
        StatusCode::OK,
        json!({ "subscription": SubscriptionView::from(&done.subscription),
                "invoice": done.invoice.as_ref().map(InvoiceView::from) }),
    ))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct VoidBody {
    /// Why (3-2000 printable characters; audited).
    #[schema(value_type = String, min_length = 3, max_length = 2000, example = "the customer asked")]
    reason: Option<String>,
}

/// `POST /panel/v1/invoices/{id}/void` (billing_admin) — an open invoice with nothing paid is
/// no longer owed.
#[utoipa::path(
    post, path = "/panel/v1/invoices/{id}/void", tag = "panel",
    security(("agent" = [])),
    params(("id" = uuid::Uuid, Path, description = "The invoice's id."), super::openapi::IdempotencyHeader),
    request_body = VoidBody,
    responses(
        (status = 200, description = "(billing_admin) The invoice, `void`.", body = InvoiceView),
        (status = 409, description = "`invoice_paid`, `invoice_partly_paid`, `invoice_uncollectible`, `invoice_void`, `invoice_draft`, `payment_in_progress`."),
        (status = 422, description = "`reason_required`."),
    ),
)]
async fn void_invoice(
    State(state): State<AppState>,
    AgentCaller(agent): AgentCaller,
    IdempotencyKey(key): IdempotencyKey,
    Path(id): Path<InvoiceId>,
    Json(b): Json<VoidBody>,
) -> Result<Response> {
    agent.require(Role::BillingAdmin)?;
    let reason = Reason::parse(b.reason.as_deref())?;
    let w =
        write(&state, &agent, &key, &reason, "invoice.void").on(None, id.to_string(), json!({}));
    let inv = crate::billing::voids::void_invoice(&state, &w, id).await?;
    Ok(reply(StatusCode::OK, json!(InvoiceView::from(&inv))))
}

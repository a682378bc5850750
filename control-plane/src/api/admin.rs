//! The admin API platform engineers call (`/admin/v1`, admin token and `Tollgate-Actor`): rule
//! bundles, the rollout, the fleet and the audit. Each handler extracts, calls one service
//! function and renders.

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

use super::extract::Platform;
use super::openapi::IdempotencyHeader;
use super::shapes;
use super::views::{CreditNoteView, json as reply, value};
use crate::billing::credit_notes::{self, IssueCreditNote};
use crate::catalog;
use crate::error::{Error, Result};
use crate::events::{self, DeliveryStatus, NewEndpoint};
use crate::http::idempotency::IdempotencyKey;
use crate::http::{Json, Path, Query};
use crate::ids::InvoiceId;
use crate::rollout::{self, Change};
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(upload).layer(DefaultBodyLimit::max(
            tollgate_rules::bundle::BUNDLE_BYTES_MAX,
        )))
        .routes(routes!(list))
        .routes(routes!(activate))
        .routes(routes!(promote))
        .routes(routes!(rollback))
        .routes(routes!(edges))
        .routes(routes!(audit))
        .routes(routes!(prices))
        .routes(routes!(issue_credit_note))
        .routes(routes!(add_webhook_endpoint, webhook_endpoints))
        .routes(routes!(webhook_deliveries))
        .routes(routes!(create_agent, list_agents))
        .routes(routes!(revoke_agent))
        .routes(routes!(replay_webhook_delivery))
}

fn change(c: Change) -> Value {
    match c {
        Change::Stable {
            stable_version,
            previous_stable,
        } => json!({ "stable_version": stable_version, "previous_stable": previous_stable,
                     "canary_version": null, "canary_percent": 0 }),
        Change::Unchanged { stable_version } => json!({ "stable_version": stable_version,
                     "unchanged": true, "canary_version": null, "canary_percent": 0 }),
        Change::Canary {
            stable_version,
            canary,
        } => json!({ "stable_version": stable_version, "canary_version": canary.map(|c| c.0),
                     "canary_percent": canary.map_or(0, |c| c.1) }),
    }
}

/// `POST /admin/v1/bundles` — body: the signed bundle file.
#[utoipa::path(
    post, path = "/admin/v1/bundles", tag = "admin",
    security(("admin" = [])),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The signed bundle file (`tollgate-rules build`)."),
    responses(
        (status = 201, description = "Stored.", body = crate::rollout::Summary),
        (status = 200, description = "The same bundle was stored already.", body = crate::rollout::Summary),
        (status = 409, description = "`bundle_version_exists`, `bundle_format_unsupported`."),
        (status = 413, description = "`body_too_large`."),
        (status = 422, description = "`bundle_invalid`, `bundle_module_refused`, `bundle_tests_failed`: verification refused it."),
    ),
)]
async fn upload(
    State(state): State<AppState>,
    Platform(actor): Platform,
    body: std::result::Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response> {
    let body = body.map_err(|_| {
        Error::too_large(
            "body_too_large",
            format!(
                "bundles are limited to {} bytes",
                tollgate_rules::bundle::BUNDLE_BYTES_MAX
            ),
        )
    })?;
    let up = rollout::upload(&state, &actor, body.to_vec()).await?;
    let status = if up.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(reply(status, value(&up.summary)))
}

/// `GET /admin/v1/bundles`
#[utoipa::path(
    get, path = "/admin/v1/bundles", tag = "admin",
    security(("admin" = [])),
    responses(
        (status = 200, description = "Every stored bundle and the rollout.", body = shapes::Bundles),
    ),
)]
async fn list(State(state): State<AppState>, _: Platform) -> Result<Response> {
    let (bundles, rollout) = rollout::list(&state).await?;
    Ok(reply(
        StatusCode::OK,
        json!({ "data": bundles, "rollout": rollout }),
    ))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ActivateRequest {
    canary_percent: i32,
}

/// `POST /admin/v1/bundles/{version}/activate {canary_percent}`
#[utoipa::path(
    post, path = "/admin/v1/bundles/{version}/activate", tag = "admin",
    security(("admin" = [])),
    params(("version" = i64, Path, description = "The bundle version.")),
    request_body = ActivateRequest,
    responses(
        (status = 200, description = "What serves now.", body = shapes::RolloutChange),
        (status = 409, description = "`bundle_format_unsupported`."),
        (status = 422, description = "`invalid_canary_percent`."),
    ),
)]
async fn activate(
    State(state): State<AppState>,
    Platform(actor): Platform,
    Path(version): Path<i64>,
    Json(body): Json<ActivateRequest>,
) -> Result<Response> {
    let c = rollout::activate(&state, &actor, version, body.canary_percent).await?;
    Ok(reply(StatusCode::OK, change(c)))
}

/// `POST /admin/v1/bundles/{version}/promote`
#[utoipa::path(
    post, path = "/admin/v1/bundles/{version}/promote", tag = "admin",
    security(("admin" = [])),
    params(("version" = i64, Path, description = "The bundle version.")),
    responses(
        (status = 200, description = "What serves now.", body = shapes::RolloutChange),
        (status = 409, description = "`bundle_format_unsupported`: this build cannot load it."),
    ),
)]
async fn promote(
    State(state): State<AppState>,
    Platform(actor): Platform,
    Path(version): Path<i64>,
) -> Result<Response> {
    let c = rollout::promote(&state, &actor, version).await?;
    Ok(reply(StatusCode::OK, change(c)))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RollbackRequest {
    #[serde(default)]
    to_version: Option<i64>,
}

/// `POST /admin/v1/rollback {to_version?}`
#[utoipa::path(
    post, path = "/admin/v1/rollback", tag = "admin",
    security(("admin" = [])),
    request_body = RollbackRequest,
    responses(
        (status = 200, description = "What serves now.", body = shapes::RolloutChange),
        (status = 404, description = "`no_active_bundle`, `not_found`: no such version."),
        (status = 409, description = "`nothing_to_roll_back_to`."),
        (status = 422, description = "`invalid_bundle_version`."),
    ),
)]
async fn rollback(
    State(state): State<AppState>,
    Platform(actor): Platform,
    Json(body): Json<RollbackRequest>,
) -> Result<Response> {
    let c = rollout::rollback(&state, &actor, body.to_version).await?;
    Ok(reply(StatusCode::OK, change(c)))
}

/// `GET /admin/v1/edges`
#[utoipa::path(
    get, path = "/admin/v1/edges", tag = "admin",
    security(("admin" = [])),
    responses(
        (status = 200, description = "The fleet.", body = shapes::List<crate::rollout::Edge>),
    ),
)]
async fn edges(State(state): State<AppState>, _: Platform) -> Result<Response> {
    let edges = rollout::edges(&state).await?;
    Ok(reply(StatusCode::OK, json!({ "data": edges })))
}

/// `GET /admin/v1/audit`
#[utoipa::path(
    get, path = "/admin/v1/audit", tag = "admin",
    security(("admin" = [])),
    responses(
        (status = 200, description = "The rollout audit, newest first.", body = shapes::List<crate::rollout::AuditEntry>),
    ),
)]
async fn audit(State(state): State<AppState>, _: Platform) -> Result<Response> {
    let entries = rollout::audit_log(&state).await?;
    Ok(reply(StatusCode::OK, json!({ "data": entries })))
}

/// `POST /admin/v1/agents {email, role}` — a support agent and its token (shown once).
#[utoipa::path(
    post, path = "/admin/v1/agents", tag = "admin",
    security(("admin" = [])),
    request_body = crate::agents::NewAgent,
    responses(
        (status = 201, description = "The agent and its token (shown once).", body = crate::agents::Created),
        (status = 409, description = "`agent_exists`."),
        (status = 422, description = "`invalid_email`."),
    ),
)]
async fn create_agent(
    State(state): State<AppState>,
    Platform(actor): Platform,
    Json(body): Json<crate::agents::NewAgent>,
) -> Result<Response> {
    let created = crate::agents::create(&state, &actor, &body).await?;
    Ok(reply(StatusCode::CREATED, json!(created)))
}

/// `GET /admin/v1/agents`
#[utoipa::path(
    get, path = "/admin/v1/agents", tag = "admin",
    security(("admin" = [])),
    responses(
        (status = 200, description = "The agents.", body = shapes::List<crate::agents::Agent>),
    ),
)]
async fn list_agents(State(state): State<AppState>, _: Platform) -> Result<Response> {
    let agents = crate::agents::list(&state).await?;
    Ok(reply(StatusCode::OK, json!({ "data": agents })))
}

/// `POST /admin/v1/agents/{id}/revoke` — the agent's token stops working.
#[utoipa::path(
    post, path = "/admin/v1/agents/{id}/revoke", tag = "admin",
    security(("admin" = [])),
    params(("id" = uuid::Uuid, Path, description = "The agent's id.")),
    responses(
        (status = 200, description = "The agent, revoked.", body = crate::agents::Agent),
    ),
)]
async fn revoke_agent(
    State(state): State<AppState>,
    Platform(actor): Platform,
    Path(id): Path<crate::ids::AgentId>,
) -> Result<Response> {
    let agent = crate::agents::revoke(&state, &actor, id).await?;
    Ok(reply(StatusCode::OK, json!(agent)))
}

/// `GET /admin/v1/catalog/prices` — every plan price and its state at the payment provider.
#[utoipa::path(
    get, path = "/admin/v1/catalog/prices", tag = "admin",
    security(("admin" = [])),
    responses(
        (status = 200, description = "Every plan price and its state at the provider.", body = shapes::List<crate::catalog::mirror::PlanPrice>),
    ),
)]
async fn prices(State(state): State<AppState>, _: Platform) -> Result<Response> {
    let prices = catalog::mirror::list(&state).await?;
    Ok(reply(StatusCode::OK, json!({ "data": prices })))
}

/// `POST /admin/v1/invoices/{id}/credit-notes` (Idempotency-Key) — a correction of a finalised
/// invoice, issued by the actor.
#[utoipa::path(
    post, path = "/admin/v1/invoices/{id}/credit-notes", tag = "admin",
    security(("admin" = [])),
    params(("id" = uuid::Uuid, Path, description = "The invoice's id."), IdempotencyHeader),
    request_body = crate::billing::credit_notes::IssueCreditNote,
    responses(
        (status = 201, description = "Issued.", body = CreditNoteView),
        (status = 200, description = "A replay: the note issued under this key.", body = CreditNoteView),
        (status = 409, description = "`payment_in_progress`, an invoice not finalised."),
        (status = 422, description = "`invalid_amount`, `invalid_memo`, `credit_note_too_large`."),
    ),
)]
async fn issue_credit_note(
    State(state): State<AppState>,
    Platform(actor): Platform,
    IdempotencyKey(key): IdempotencyKey,
    Path(id): Path<InvoiceId>,
    Json(body): Json<IssueCreditNote>,
) -> Result<Response> {
    let issued = credit_notes::issue(&state, None, id, &actor.name(), &key, &body).await?;
    let status = if issued.replayed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok(reply(status, value(&CreditNoteView::from(&issued.note))))
}

/// `POST /admin/v1/webhook-endpoints` — `{url, events?}` → 201 with the secret, shown once.
#[utoipa::path(
    post, path = "/admin/v1/webhook-endpoints", tag = "admin",
    security(("admin" = [])),
    request_body = crate::events::NewEndpoint,
    responses(
        (status = 201, description = "The endpoint and its signing secret, shown once.", body = crate::events::Created),
        (status = 422, description = "`invalid_url`, `unknown_event_type`."),
    ),
)]
async fn add_webhook_endpoint(
    State(state): State<AppState>,
    Platform(actor): Platform,
    Json(body): Json<NewEndpoint>,
) -> Result<Response> {
    let created = events::add_endpoint(&state, &actor.name(), &body).await?;
    Ok(reply(StatusCode::CREATED, value(&created)))
}

/// `GET /admin/v1/webhook-endpoints`
#[utoipa::path(
    get, path = "/admin/v1/webhook-endpoints", tag = "admin",
    security(("admin" = [])),
    responses(
        (status = 200, description = "The endpoints.", body = shapes::List<crate::events::Endpoint>),
    ),
)]
async fn webhook_endpoints(State(state): State<AppState>, _: Platform) -> Result<Response> {
    let list = events::endpoints(&state).await?;
    Ok(reply(StatusCode::OK, json!({ "data": list })))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct DeliveryFilter {
    #[serde(default)]
    status: Option<DeliveryStatus>,
}

/// `GET /admin/v1/webhook-deliveries?status=` — the delivery log, newest first.
#[utoipa::path(
    get, path = "/admin/v1/webhook-deliveries", tag = "admin",
    security(("admin" = [])),
    params(DeliveryFilter),
    responses(
        (status = 200, description = "The delivery log, newest first.", body = shapes::List<crate::events::Delivery>),
    ),
)]
async fn webhook_deliveries(
    State(state): State<AppState>,
    _: Platform,
    Query(filter): Query<DeliveryFilter>,
) -> Result<Response> {
    let list = events::deliveries(&state, filter.status).await?;
    Ok(reply(StatusCode::OK, json!({ "data": list })))
}

/// `POST /admin/v1/webhook-deliveries/{id}/replay`
#[utoipa::path(
    post, path = "/admin/v1/webhook-deliveries/{id}/replay", tag = "admin",
    security(("admin" = [])),
    params(("id" = uuid::Uuid, Path, description = "The delivery's id.")),
    responses(
        (status = 200, description = "The delivery, queued again.", body = crate::events::Delivery),
    ),
)]
async fn replay_webhook_delivery(
    State(state): State<AppState>,
    _: Platform,
    Path(id): Path<uuid::Uuid>,
) -> Result<Response> {
    let d = events::replay(&state, id).await?;
    Ok(reply(StatusCode::OK, value(&d)))
}

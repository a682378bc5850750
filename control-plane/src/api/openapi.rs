//! The control plane's contract: an OpenAPI 3.1 document generated from the handlers'
//! `#[utoipa::path]` annotations, served at `GET /openapi.json` (no token).
//!
//! * Every route [`super::app`] answers is an operation here and nothing else is. The routers
//!   register each route with its operation (`utoipa_axum`'s `OpenApiRouter` and `routes!`:
//!   the path is the annotation's), so a route cannot exist without its operation; the
//!   NinjaPanel's router is a plain axum one, whose operations [`Contract`] lists. Either way
//!   `tests/openapi.rs` walks the real router and fails on a route missing from the document
//!   or an operation the router does not answer.
//! * An operation's problem responses (`application/problem+json`, [`Problem`]) come from two
//!   places: what its handler annotates (the domain's 402, 409, 410, 503 …), and what its
//!   extractors always can, added by [`complete`]: a token (401; an agent's role, 403; the
//!   admin API's `Tollgate-Actor`, 400), a JSON body (400 `malformed_json`, 413, 415, 422
//!   `invalid_body`), a query (400 `invalid_query`), a path id (404: a malformed id names
//!   nothing), an `Idempotency-Key` (400, 409 `idempotency_key_in_use`, 422
//!   `idempotency_key_reused`). A 4xx/5xx annotated without a body gets the problem body.
//! * Development routes (`/dev/v1`) are in the document only where they are mounted (dev
//!   mode; the simulator's only with the simulated gateway), as the router has them.
//! * Answers the handlers build with `json!` are described by the shapes in
//!   [`super::shapes`]; those of domain types by the types' own `ToSchema`.

use std::sync::OnceLock;

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use tollgate_protocol::problem::{PROBLEM_JSON, Problem};
use utoipa::openapi::path::{Operation, Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{
    ContentBuilder, ObjectBuilder, OpenApi as Document, Ref, RefOr, Required, ResponseBuilder, Type,
};
use utoipa::{IntoParams, OpenApi};

use super::{panel, panel_web};
use crate::state::AppState;

/// Where the document is served.
pub const PATH: &str = "/openapi.json";

/// The security schemes, by the name operations refer to them.
pub mod scheme {
    /// A customer's API token (`tg_…`): the Dashboard.
    pub const CUSTOMER: &str = "customer";
    /// A support agent's token (`tga_…`): the NinjaPanel.
    pub const AGENT: &str = "agent";
    /// The admin token (and a `Tollgate-Actor` header): the admin API.
    pub const ADMIN: &str = "admin";
    /// The edge token: the internal API.
    pub const EDGE: &str = "edge";
}

/// The `Idempotency-Key` request header ([`crate::http::idempotency::IdempotencyKey`]).
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // Read by the extractor; this type only describes it.
pub struct IdempotencyHeader {
    /// The client's id of this request (1-255 visible ASCII characters): a retry with the same
    /// key and content answers what the first did (`Idempotent-Replayed: true`), with other
    /// content `422 idempotency_key_reused`.
    #[param(
        rename = "Idempotency-Key",
        min_length = 1,
        max_length = 255,
        pattern = "^[!-~]+$"
    )]
    pub key: String,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tollgate control plane",
        description = "The Dashboard (`/v1`, a customer's API token), the NinjaPanel (`/panel/v1`, an agent token), the admin API (`/admin/v1`), the internal API edges call (`/internal/v1`), provider webhooks and the operational endpoints. Every error is RFC 9457 `application/problem+json` with a stable `code`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    // The NinjaPanel's router is a plain one (its routes are being added to elsewhere): its
    // operations are listed here. Every other router registers routes with operations.
    paths(
        panel::search,
        panel::account,
        panel::timeline,
        panel::add_note,
        panel::ban,
        panel::unban,
        panel::require_payment_method,
        panel::add_override,
        panel::remove_override,
        panel::grant_credit,
        panel::retry_invoice,
        panel::refund_invoice,
        panel::list_disputes,
        panel::resolve_dispute,
        panel::extend_trial,
        panel::cancel_subscription,
        panel::change_subscription,
        panel::void_invoice,
        panel_web::to_home,
        panel_web::home,
        panel_web::login,
        panel_web::logout,
        panel_web::search,
        panel_web::account,
        panel_web::act,
    ),
    components(schemas(Problem)),
    tags(
        (name = "dashboard", description = "What a customer's API token (`tg_…`) may do with its own account."),
        (name = "panel", description = "The NinjaPanel: support agents (`tga_…`), by role; every write takes an `Idempotency-Key` and a `reason` and is audited."),
        (name = "admin", description = "Platform engineers: the admin token and `Tollgate-Actor`."),
        (name = "internal", description = "What edges call, with the edge token."),
        (name = "webhooks", description = "Payment providers' webhooks: their signature, no token."),
        (name = "ops", description = "Health, readiness, metrics and this document: open."),
        (name = "dev", description = "Development mode only: the advanceable clock and the payment simulator."),
    ),
)]
struct Contract;

/// The document of a control plane in `dev_mode`, `with_simulator` or not: exactly its routes.
pub fn document(dev_mode: bool, with_simulator: bool) -> Document {
    let mut doc = Contract::openapi();
    doc.merge(super::documented(dev_mode, with_simulator).into_openapi());
    complete(&mut doc);
    doc
}

/// `GET /openapi.json` — this document, generated once per process.
#[utoipa::path(
    get, path = "/openapi.json", tag = "ops",
    responses((status = 200, description = "The OpenAPI 3.1 document of this control plane.", content_type = "application/json", body = Object)),
)]
pub(super) async fn openapi_json(State(state): State<AppState>) -> Response {
    static JSON: [OnceLock<String>; 3] = [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    let with_simulator = state.simulator.is_some();
    let variant = usize::from(state.dev_mode) + usize::from(state.dev_mode && with_simulator);
    let json = JSON[variant].get_or_init(|| {
        // A document of plain types always serialises.
        document(state.dev_mode, with_simulator)
            .to_json()
            .unwrap_or_default()
    });
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        json.clone(),
    )
        .into_response()
}

/// Adds the security schemes, the `Tollgate-Actor` header of the admin API, and the problem
/// responses every operation's extractors can give (see the module doc).
pub fn complete(doc: &mut Document) {
    let components = doc.components.get_or_insert_with(Default::default);
    for (name, format, what) in [
        (
            scheme::CUSTOMER,
            "tg_…",
            "A customer's API token, from sign-up or `POST /v1/tokens`.",
        ),
        (
            scheme::AGENT,
            "tga_…",
            "A support agent's token, from `POST /admin/v1/agents`.",
        ),
        (
            scheme::ADMIN,
            "secret",
            "The admin token (`TOLLGATE_ADMIN_TOKEN`); send `Tollgate-Actor` too.",
        ),
        (
            scheme::EDGE,
            "secret",
            "The edge token (`TOLLGATE_EDGE_TOKEN`).",
        ),
    ] {
        let mut http = Http::new(HttpAuthScheme::Bearer);
        http.bearer_format = Some(format.to_owned());
        http.description = Some(what.to_owned());
        components.add_security_scheme(name, SecurityScheme::Http(http));
    }
    for item in doc.paths.paths.values_mut() {
        let path_params = item
            .parameters
            .iter()
            .flatten()
            .any(|p| p.parameter_in == ParameterIn::Path);
        for op in operations(item) {
            complete_operation(op, path_params);
        }
    }
}

fn operations(item: &mut utoipa::openapi::PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        item.get.as_mut(),
        item.put.as_mut(),
        item.post.as_mut(),
        item.delete.as_mut(),
        item.options.as_mut(),
        item.head.as_mut(),
        item.patch.as_mut(),
        item.trace.as_mut(),
    ]
    .into_iter()
    .flatten()
}

fn complete_operation(op: &mut Operation, path_params: bool) {
    let schemes: Vec<String> = op
        .security
        .iter()
        .flatten()
        .flat_map(|s| serde_json::to_value(s).ok())
        .filter_map(|v| v.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>()))
        .flatten()
        .collect();
    let has = |name: &str| schemes.iter().any(|s| s == name);
    if has(scheme::ADMIN) {
        op.parameters
            .get_or_insert_with(Vec::new)
            .push(actor_header());
    }
    let params = op.parameters.as_deref().unwrap_or_default();
    let param_in = |loc: ParameterIn| params.iter().any(|p| p.parameter_in == loc);
    let idempotent = params
        .iter()
        .any(|p| p.parameter_in == ParameterIn::Header && p.name == "Idempotency-Key");
    let webhook = op.tags.iter().flatten().any(|t| t == "webhooks");
    let json_body = !webhook
        && op
            .request_body
            .as_ref()
            .is_some_and(|b| b.content.contains_key("application/json"));
    let mut add: Vec<(&str, &str)> = Vec::new();
    if !schemes.is_empty() {
        add.push((
            "401",
            "`missing_credentials`, `invalid_token`: no or a bad token.",
        ));
    }
    if has(scheme::AGENT) {
        add.push((
            "403",
            "`forbidden_for_role`: the agent's role does not allow this.",
        ));
    }
    if has(scheme::ADMIN) {
        add.push(("400", "`actor_required`: no `Tollgate-Actor`."));
    }
    if json_body {
        add.push(("400", "`malformed_json`: the body is not JSON."));
        add.push(("413", "`body_too_large`."));
        add.push(("415", "`unsupported_media_type`: not `application/json`."));
        add.push((
            "422",
            "`invalid_body`: not an object of the documented fields.",
        ));
    }
    if !webhook && param_in(ParameterIn::Query) {
        add.push(("400", "`invalid_query`."));
    }
    if path_params || param_in(ParameterIn::Path) {
        add.push((
            "404",
            "`not_found`: no such resource (a malformed id names nothing).",
        ));
    }
    if idempotent {
        add.push((
            "400",
            "`idempotency_key_required`, `invalid_idempotency_key`.",
        ));
        add.push((
            "409",
            "`idempotency_key_in_use`: the same key is in progress.",
        ));
        add.push((
            "422",
            "`idempotency_key_reused`: the key came with other content.",
        ));
    }
    add_problems(op, &add);
}

/// Adds each `(status, description)` as a problem response (a status already there keeps its
/// description, extended), and gives every 4xx/5xx without a body the problem body.
pub fn add_problems(op: &mut Operation, add: &[(&str, &str)]) {
    let responses = &mut op.responses.responses;
    for (status, what) in add {
        match responses.get_mut(*status) {
            Some(RefOr::T(r)) => {
                if !r.description.contains(what) {
                    r.description = format!("{} {what}", r.description).trim().to_owned();
                }
            }
            Some(RefOr::Ref(_)) => {}
            None => {
                responses.insert(
                    (*status).to_owned(),
                    RefOr::T(ResponseBuilder::new().description(*what).build()),
                );
            }
        }
    }
    for (status, r) in responses.iter_mut() {
        let problem = status.starts_with('4') || status.starts_with('5');
        if let RefOr::T(r) = r
            && problem
            && r.content.is_empty()
        {
            r.content.insert(
                PROBLEM_JSON.to_owned(),
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("Problem")))
                    .build(),
            );
        }
    }
}

fn actor_header() -> Parameter {
    ParameterBuilder::new()
        .name("Tollgate-Actor")
        .parameter_in(ParameterIn::Header)
        .required(Required::True)
        .description(Some("Who acts (recorded in the audit), 1-128 characters."))
        .schema(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(128))
                .pattern(Some("^[!-~]([ -~]*[!-~])?$")),
        ))
        .build()
}

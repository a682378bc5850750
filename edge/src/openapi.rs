//! The edge's contract: an OpenAPI 3.1 document generated from the handlers' `#[utoipa::path]`
//! annotations, served at `GET /openapi.json` (open, like `/healthz`).
//!
//! Every route [`crate::app`] answers is an operation here and nothing else is: the router
//! registers each route with its operation (`utoipa_axum`'s `OpenApiRouter` and `routes!`), and
//! `tests/openapi.rs` walks it against this document. [`complete`] adds what the layers of
//! [`crate::router`] can answer on any operation: the service gate's 401 (when service tokens
//! are configured), the operator gate's 401 and 403, and the body bound's 400 and 413. OFREP's
//! routes answer their errors in OFREP's own body ([`OfrepError`], `application/json`); every
//! other error is RFC 9457 `application/problem+json` ([`Problem`]).

use std::sync::OnceLock;

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tollgate_protocol::problem::{PROBLEM_JSON, Problem};
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi as Document, Ref, RefOr, ResponseBuilder};
use utoipa::{OpenApi, ToSchema};

use crate::{router, usage_api};

/// Where the document is served.
pub const PATH: &str = "/openapi.json";

/// A service token (`TOLLGATE_EDGE_SERVICE_TOKENS`).
pub const SERVICE: &str = "service";
/// An operator token (`TOLLGATE_EDGE_OPERATOR_TOKENS`).
pub const OPERATOR: &str = "operator";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tollgate edge",
        description = "The sidecar beside a product service: entitlement checks, OpenFeature (OFREP), usage, and its operator and health endpoints. Errors are RFC 9457 `application/problem+json` with a stable `code`, except OFREP's, which use OFREP's error body.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    components(schemas(Problem)),
    tags(
        (name = "checks", description = "What product services call (a service token when any is configured)."),
        (name = "ofrep", description = "The OpenFeature Remote Evaluation Protocol over the same decisions."),
        (name = "usage", description = "Usage events, stored (fsynced) before the answer."),
        (name = "operator", description = "The dead-letter API: an operator token, always."),
        (name = "ops", description = "Status, health, readiness, metrics and this document: open."),
    ),
)]
struct Contract;

/// The edge's document.
pub fn document() -> Document {
    let mut doc = Contract::openapi();
    // The operations do not depend on the tokens; the routes are built only for their document.
    doc.merge(router::routes(&crate::auth::Tokens::default()).into_openapi());
    complete(&mut doc);
    doc
}

/// `GET /openapi.json` — this document.
#[utoipa::path(
    get, path = "/openapi.json", tag = "ops",
    responses((status = 200, description = "The OpenAPI 3.1 document of the edge.", content_type = "application/json", body = Object)),
)]
pub(crate) async fn openapi_json() -> Response {
    static JSON: OnceLock<String> = OnceLock::new();
    // A document of plain types always serialises.
    let json = JSON.get_or_init(|| document().to_json().unwrap_or_default());
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        json.clone(),
    )
        .into_response()
}

/// The security schemes, and the problem responses the router's layers add to operations.
fn complete(doc: &mut Document) {
    let components = doc.components.get_or_insert_with(Default::default);
    for (name, what) in [
        (
            SERVICE,
            "A service token: required on the service routes once any is configured.",
        ),
        (
            OPERATOR,
            "An operator token: always required on the dead-letter API (which answers 403 while none is configured).",
        ),
    ] {
        let mut http = Http::new(HttpAuthScheme::Bearer);
        http.description = Some(what.to_owned());
        components.add_security_scheme(name, SecurityScheme::Http(http));
    }
    for item in doc.paths.paths.values_mut() {
        for op in [
            item.get.as_mut(),
            item.post.as_mut(),
            item.put.as_mut(),
            item.patch.as_mut(),
            item.delete.as_mut(),
        ]
        .into_iter()
        .flatten()
        {
            let schemes: Vec<String> = op
                .security
                .iter()
                .flatten()
                .flat_map(serde_json::to_value)
                .filter_map(|v| v.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>()))
                .flatten()
                .collect();
            let mut add = Vec::new();
            if schemes.iter().any(|s| s == SERVICE) {
                add.push((
                    "401",
                    "`missing_credentials`, `invalid_token`: service tokens are configured and the request has none of them.",
                ));
            }
            if schemes.iter().any(|s| s == OPERATOR) {
                add.push((
                    "401",
                    "`missing_credentials`, `invalid_token`: not an operator token.",
                ));
                add.push((
                    "403",
                    "`operator_tokens_not_configured`: the edge has no operator tokens.",
                ));
            }
            if op.request_body.is_some() {
                add.push(("400", "`unreadable_body`: the body could not be read."));
                add.push(("413", "`body_too_large`: over 1 MiB."));
            }
            add_problems(op, &add);
        }
    }
}

/// Adds each `(status, description)` (an existing status keeps its description, extended) and
/// gives every 4xx/5xx without a body the problem body.
fn add_problems(op: &mut Operation, add: &[(&str, &str)]) {
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
        if let RefOr::T(r) = r
            && (status.starts_with('4') || status.starts_with('5'))
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

// The shapes of answers the handlers build with `json!`, for the contract only (a property is
// required only when every answer carries it). `tests/openapi.rs` holds real answers to them.

/// `GET /v1/check`'s query.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct CheckQuery {
    /// The account's id (a UUID).
    #[param(format = Uuid)]
    pub account: String,
    /// The feature's key.
    #[param(example = "sso")]
    pub feature: String,
    /// Units about to be used of a metered or limit feature, 0 to 2^40 (default 1).
    #[param(minimum = 0, maximum = 1_099_511_627_776_i64)]
    pub quantity: Option<i64>,
}

/// `GET /v1/dead-letter`'s query.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct DeadLetterQuery {
    /// At most this many entries, 1-1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// One feature of `GET /v1/accounts/{id}/entitlements`.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct FeatureEntitlement {
    pub feature: String,
    /// `bool`, `limit` or `metered`.
    pub kind: String,
    pub allowed: bool,
    pub limit: Option<i64>,
    pub reason: tollgate_protocol::Reason,
    /// Metered features with a limit: current-period usage.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remaining: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aggregation: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub soft: Option<bool>,
}

/// `GET /v1/accounts/{id}/entitlements`.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct Entitlements {
    pub account: tollgate_protocol::AccountId,
    pub version: i64,
    pub bundle_version: u64,
    pub stale: bool,
    pub features: Vec<FeatureEntitlement>,
}

/// A Tollgate usage event (`application/json`).
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct UsageEventIn {
    /// Unique per account (a UUIDv7 when absent); may not start with `ce:`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The account's id (a UUID).
    #[schema(format = Uuid)]
    pub account: String,
    /// A meter of the bundle.
    #[schema(example = "api_calls")]
    pub meter: String,
    /// 0 to 2^40.
    #[schema(minimum = 0, maximum = 1_099_511_627_776_i64)]
    pub quantity: i64,
    /// RFC 3339 or unix milliseconds; now when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub timestamp: Option<serde_json::Value>,
    /// Scalars by name.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub properties: Option<serde_json::Value>,
}

/// One event, or an array of them.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum UsageIn {
    One(UsageEventIn),
    Many(Vec<UsageEventIn>),
}

/// A CloudEvents 1.0 usage event.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct CloudEventIn {
    /// `1.0`.
    pub specversion: String,
    pub id: String,
    pub source: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// The account's id.
    pub subject: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// `{meter, quantity, properties?}`.
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
}

/// An accepted event: its index in the request and its stored id.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct AcceptedEvent {
    pub index: u64,
    pub id: String,
}

/// `POST /v1/usage`'s answer.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct UsageAnswer {
    pub accepted: Vec<AcceptedEvent>,
    pub rejected: Vec<usage_api::Refusal>,
}

/// `GET /v1/dead-letter`.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct DeadLetters {
    /// How many entries there are.
    pub total: u64,
    /// The oldest, at most `limit`.
    pub entries: Vec<crate::dead_letter::DeadEntry>,
}

/// `POST /v1/dead-letter/discard`.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct Discarded {
    pub discarded: u64,
}

/// `GET /v1/status`.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct EdgeStatusView {
    pub edge_id: String,
    pub bundle_version: Option<u64>,
    pub stale: bool,
    pub restored_unconfirmed: bool,
    /// Per change-stream shard (index = shard), the last entry applied.
    pub stream_positions: Vec<Option<String>>,
    pub cached_accounts: u64,
    /// `null` on an edge without a usage store.
    pub usage: Option<crate::usage::UsageStatus>,
    /// The last denials; `null` to callers without a token.
    pub recent_denials: Option<Vec<crate::state::Denial>>,
    /// Why `recent_denials` is `null`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recent_denials_hidden: Option<String>,
}

/// `GET /readyz`.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct Readiness {
    pub ready: bool,
    pub bundle_version: Option<u64>,
    pub usage_store_failed: bool,
    pub stale: bool,
    pub edge_id: String,
}

/// `GET /healthz`.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct Alive {
    /// `ok`.
    pub status: String,
}

/// OFREP's evaluation context: the targeting key is the account id.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct OfrepRequest {
    pub context: OfrepContext,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct OfrepContext {
    /// The account's id (a UUID).
    #[schema(format = Uuid)]
    pub targeting_key: String,
}

/// One flag's evaluation.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct OfrepEvaluation {
    pub key: String,
    /// A boolean (bool features) or an integer (the limit; 0 denied, -1 unlimited).
    #[schema(value_type = Object)]
    pub value: serde_json::Value,
    /// `granted` or `denied`.
    pub variant: String,
    /// `TARGETING_MATCH`, `STALE` or `DEFAULT`.
    pub reason: String,
    /// Tollgate's reason, facts and bundle versions, staleness; usage and remaining for
    /// metered features.
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
}

/// The bulk evaluation: each flag evaluated, or `{key, errorCode, errorDetails}`.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct OfrepBulk {
    #[schema(value_type = Vec<Object>)]
    pub flags: Vec<serde_json::Value>,
}

/// OFREP's error body.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct OfrepError {
    /// `PARSE_ERROR`, `TARGETING_KEY_MISSING`, `INVALID_CONTEXT`, `FLAG_NOT_FOUND`, `GENERAL`.
    pub error_code: String,
    pub error_details: String,
    /// The flag's key (single-flag evaluation).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

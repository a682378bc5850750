//! `POST /v1/usage`: one event or a batch, as Tollgate JSON or CloudEvents 1.0 JSON.
//!
//! | `Content-Type` | body |
//! |---|---|
//! | `application/json` (or none) | one event object, or an array of them |
//! | `application/cloudevents+json` | one CloudEvent |
//! | `application/cloudevents-batch+json` | an array of CloudEvents |
//!
//! A Tollgate event: `{id?, account, meter, quantity, timestamp?, properties?}` — `timestamp`
//! RFC 3339 or unix milliseconds (now when absent), `properties` an object of scalars. A
//! CloudEvent: `specversion` `"1.0"`, `id`, `source`, `type`, `subject` = account, `time?`, and
//! `data` = `{meter, quantity, properties?}`; its stored id is `ce:{len(source)}:{source}:{id}`
//! ([`tollgate_protocol::usage::cloudevent_id`]: CloudEvents ids are unique per source, and the
//! length prefix keeps every (source, id) pair distinct). A plain id may not start with `ce:`.
//! Events without an id get a UUIDv7. Ids are per account: two accounts may use the same id.
//!
//! Each event is validated on its own, by the bounds every side shares
//! ([`tollgate_protocol::usage::validate_event`]: quantity `0..=2^40`, key, id, property and
//! timestamp bounds) and against the bundle's meters; an account the edge knows does not exist
//! is refused (`unknown_account`). Two events of one request with the same id and different
//! contents are both refused (`conflicting_duplicate`); identical ones are stored once. The
//! valid ones are stored (fsynced) and the answer lists which were accepted and which refused,
//! with a code per refusal. `202` when at least one was stored, `422` when none was valid. The
//! whole request is refused (problem+json) when the body is too large or unreadable, holds
//! more than [`USAGE_EVENTS_MAX`] events, or nothing of it could be stored (`503` +
//! `Retry-After`: the buffer is full, or the log failed).

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tollgate_protocol::AccountId;
use tollgate_protocol::usage::{Aggregation, UsageEvent, cloudevent_id, limits, validate_event};

use crate::check::QUANTITY_RULE;
use crate::problem::{problem, problem_with};
use crate::state::EdgeState;
use crate::usage::{FULL_RETRY_AFTER_S, StoreError};

/// Largest request body, bytes.
pub const USAGE_BODY_BYTES_MAX: usize = 1 << 20;
/// Most events in one request.
pub const USAGE_EVENTS_MAX: usize = 1_000;
/// How far in the future a timestamp may be (clock skew), ms.
pub const TIMESTAMP_SKEW_MS: i64 = 5 * 60_000;
/// How old a timestamp may be, ms (older usage is refused: its period is long invoiced).
pub const TIMESTAMP_AGE_MS_MAX: i64 = 35 * 86_400_000;

/// One refused event: its index in the request, a stable code and a sentence.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Refusal {
    pub index: usize,
    pub code: &'static str,
    pub detail: String,
}

/// One accepted event of a 202 answer (`openapi::AcceptedEvent`).
#[derive(serde::Serialize)]
struct Accepted<'a> {
    id: &'a str,
    index: usize,
}

/// The 202 answer (`openapi::UsageAnswer`).
#[derive(serde::Serialize)]
struct Acks<'a> {
    accepted: Vec<Accepted<'a>>,
    rejected: &'a [Refusal],
}

fn refuse(index: usize, code: &'static str, detail: impl Into<String>) -> Refusal {
    Refusal {
        index,
        code,
        detail: detail.into(),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Tollgate,
    CloudEvent,
    CloudEventBatch,
}

fn format_of(headers: &HeaderMap) -> Result<Format, String> {
    let Some(ct) = headers.get(header::CONTENT_TYPE) else {
        return Ok(Format::Tollgate);
    };
    let ct = ct
        .to_str()
        .map_err(|_| "unreadable Content-Type".to_owned())?;
    let media = ct
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match media.as_str() {
        "application/json" => Ok(Format::Tollgate),
        "application/cloudevents+json" => Ok(Format::CloudEvent),
        "application/cloudevents-batch+json" => Ok(Format::CloudEventBatch),
        other => Err(format!(
            "Content-Type `{other}` is not application/json, application/cloudevents+json or application/cloudevents-batch+json"
        )),
    }
}

fn timestamp(v: Option<&Value>, now: i64) -> Result<i64, String> {
    match v {
        None | Some(Value::Null) => Ok(now),
        Some(Value::Number(n)) => n
            .as_i64()
            .ok_or_else(|| "timestamp must be whole unix milliseconds".to_owned()),
        Some(Value::String(s)) => chrono::DateTime::parse_from_rfc3339(s)
            .map(|t| t.timestamp_millis())
            .map_err(|e| format!("timestamp `{s}` is not RFC 3339: {e}")),
        Some(_) => Err("timestamp must be an RFC 3339 string or unix milliseconds".into()),
    }
}

fn properties(v: Option<&Value>) -> Result<BTreeMap<String, String>, String> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(BTreeMap::new());
    };
    let Value::Object(map) = v else {
        return Err("properties must be an object".into());
    };
    if map.len() > limits::PROPERTIES_MAX {
        return Err(format!("at most {} properties", limits::PROPERTIES_MAX));
    }
    map.iter()
        .map(|(k, v)| {
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => {
                    return Err(format!(
                        "property `{k}` must be a string, number or boolean"
                    ));
                }
            };
            if k.contains('\0') || text.contains('\0') {
                return Err(format!("property `{k}` contains a NUL character"));
            }
            Ok((k.clone(), text))
        })
        .collect()
}

/// The fields both formats share, once located.
struct Fields<'a> {
    id: Option<String>,
    account: Option<&'a Value>,
    meter: Option<&'a Value>,
    quantity: Option<&'a Value>,
    timestamp: Option<&'a Value>,
    properties: Option<&'a Value>,
}

fn tollgate_fields(
    obj: &serde_json::Map<String, Value>,
) -> Result<Fields<'_>, (&'static str, String)> {
    const KNOWN: [&str; 6] = [
        "id",
        "account",
        "meter",
        "quantity",
        "timestamp",
        "properties",
    ];
    if let Some(k) = obj.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(("unknown_field", format!("unknown field `{k}`")));
    }
    let id = match obj.get("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(("invalid_id", "id must be a string".into())),
    };
    Ok(Fields {
        id,
        account: obj.get("account"),
        meter: obj.get("meter"),
        quantity: obj.get("quantity"),
        timestamp: obj.get("timestamp"),
        properties: obj.get("properties"),
    })
}

fn cloudevent_fields(
    obj: &serde_json::Map<String, Value>,
) -> Result<Fields<'_>, (&'static str, String)> {
    let text = |k: &str| obj.get(k).and_then(Value::as_str);
    if text("specversion") != Some("1.0") {
        return Err(("invalid_cloudevent", "specversion must be \"1.0\"".into()));
    }
    let (Some(id), Some(source)) = (text("id"), text("source")) else {
        return Err((
            "invalid_cloudevent",
            "id and source are required strings".into(),
        ));
    };
    if id.is_empty() || source.is_empty() || text("type").is_none_or(str::is_empty) {
        return Err((
            "invalid_cloudevent",
            "id, source and type must not be empty".into(),
        ));
    }
    if let Some(ct) = text("datacontenttype")
        && !ct.starts_with("application/json")
    {
        return Err((
            "invalid_cloudevent",
            format!("datacontenttype `{ct}`: data must be JSON"),
        ));
    }
    let Some(Value::Object(data)) = obj.get("data") else {
        return Err((
            "invalid_cloudevent",
            "data must be an object {meter, quantity, properties?}".into(),
        ));
    };
    Ok(Fields {
        id: Some(cloudevent_id(source, id)),
        account: obj.get("subject"),
        meter: data.get("meter"),
        quantity: data.get("quantity"),
        timestamp: obj.get("time"),
        properties: data.get("properties"),
    })
}

/// Validates one event against the bundle's meters.
fn event(
    state: &EdgeState,
    format: Format,
    index: usize,
    raw: &Value,
    now: i64,
) -> Result<UsageEvent, Refusal> {
    let Value::Object(obj) = raw else {
        return Err(refuse(
            index,
            "invalid_event",
            "an event must be a JSON object",
        ));
    };
    let fields = match format {
        Format::Tollgate => tollgate_fields(obj),
        Format::CloudEvent | Format::CloudEventBatch => cloudevent_fields(obj),
    }
    .map_err(|(code, detail)| refuse(index, code, detail))?;
    let account_field = if format == Format::Tollgate {
        "account"
    } else {
        "subject"
    };
    let account = fields
        .account
        .and_then(Value::as_str)
        .ok_or_else(|| {
            refuse(
                index,
                "missing_account",
                format!("{account_field} (the account id) is required"),
            )
        })?
        .parse::<AccountId>()
        .map_err(|_| {
            refuse(
                index,
                "invalid_account_id",
                format!("{account_field} must be an account id (UUID)"),
            )
        })?;
    let meter = fields
        .meter
        .and_then(Value::as_str)
        .ok_or_else(|| refuse(index, "missing_meter", "meter is required"))?;
    let Some(spec) = state.meter(meter) else {
        return Err(refuse(
            index,
            "unknown_meter",
            format!(
                "no metered feature `{meter}` in bundle {}",
                state.bundle_version().unwrap_or(0)
            ),
        ));
    };
    let quantity = match fields.quantity {
        Some(Value::Number(n)) => match n.as_i64() {
            Some(q) if tollgate_protocol::usage::quantity_ok(q) => q,
            _ => {
                return Err(refuse(index, "invalid_quantity", QUANTITY_RULE));
            }
        },
        None | Some(Value::Null) => {
            return Err(refuse(index, "missing_quantity", "quantity is required"));
        }
        Some(_) => {
            return Err(refuse(
                index,
                "invalid_quantity",
                "quantity must be a number",
            ));
        }
    };
    let timestamp_ms =
        timestamp(fields.timestamp, now).map_err(|d| refuse(index, "invalid_timestamp", d))?;
    if timestamp_ms > now + TIMESTAMP_SKEW_MS {
        return Err(refuse(
            index,
            "timestamp_in_future",
            format!(
                "timestamp is more than {} s ahead of this edge's clock",
                TIMESTAMP_SKEW_MS / 1000
            ),
        ));
    }
    if timestamp_ms < now - TIMESTAMP_AGE_MS_MAX {
        return Err(refuse(
            index,
            "timestamp_too_old",
            format!(
                "timestamp is more than {} days old",
                TIMESTAMP_AGE_MS_MAX / 86_400_000
            ),
        ));
    }
    let properties =
        properties(fields.properties).map_err(|d| refuse(index, "invalid_properties", d))?;
    if let Aggregation::UniqueCount { property } = &spec.aggregation
        && !properties.contains_key(property)
    {
        return Err(refuse(
            index,
            "missing_property",
            format!("meter `{meter}` counts distinct `{property}`: the event needs that property"),
        ));
    }
    let id = match fields.id {
        Some(id) => {
            let checked = if format == Format::Tollgate {
                tollgate_protocol::usage::validate_plain_id(&id)
            } else {
                Ok(())
            };
            checked.map_err(|e| refuse(index, e.code(), e.to_string()))?;
            id
        }
        None => uuid::Uuid::now_v7().to_string(),
    };
    let event = UsageEvent {
        id,
        account,
        meter: meter.to_owned(),
        quantity,
        timestamp_ms,
        properties,
    };
    // The one validation every side runs: what passes here, the control plane never refuses
    // for its shape.
    validate_event(&event).map_err(|e| refuse(index, e.code(), e.to_string()))?;
    if state.cache.get(&account).is_some_and(|e| !e.has_facts()) {
        return Err(refuse(
            index,
            "unknown_account",
            format!("the control plane says account {account} does not exist"),
        ));
    }
    Ok(event)
}

/// Same (account, id) twice in one request: identical events are stored once, different ones
/// are all refused. Returns the events to store with their request indices, and the indices
/// (with ids) of identical repeats, which answer as accepted.
/// Events with their index in the request.
type Indexed = Vec<(usize, UsageEvent)>;

fn dedupe(valid: Indexed, rejected: &mut Vec<Refusal>) -> (Indexed, Vec<(usize, String)>) {
    use std::collections::HashMap;
    let mut by_key: HashMap<(AccountId, String), Vec<usize>> = HashMap::new();
    for (pos, (_, e)) in valid.iter().enumerate() {
        by_key
            .entry((e.account, e.id.clone()))
            .or_default()
            .push(pos);
    }
    let same = |a: &UsageEvent, b: &UsageEvent| {
        a.meter == b.meter && a.quantity == b.quantity && a.properties == b.properties
    };
    let mut keep = vec![true; valid.len()];
    let mut repeats = Vec::new();
    for positions in by_key.values().filter(|p| p.len() > 1) {
        let first = &valid[positions[0]].1;
        if positions.iter().all(|p| same(first, &valid[*p].1)) {
            for p in &positions[1..] {
                keep[*p] = false;
                repeats.push((valid[*p].0, valid[*p].1.id.clone()));
            }
        } else {
            for p in positions {
                keep[*p] = false;
                rejected.push(refuse(
                    valid[*p].0,
                    "conflicting_duplicate",
                    "this request holds the id twice with different contents",
                ));
            }
        }
    }
    rejected.sort_by_key(|r| r.index);
    let store = valid
        .into_iter()
        .zip(keep)
        .filter_map(|(v, k)| k.then_some(v))
        .collect();
    (store, repeats)
}

#[utoipa::path(
    post, path = "/v1/usage", tag = "usage",
    security((), ("service" = [])),
    request_body(content((crate::openapi::UsageIn = "application/json"), (crate::openapi::CloudEventIn = "application/cloudevents+json"), (Vec<crate::openapi::CloudEventIn> = "application/cloudevents-batch+json")), description = "One event or an array; Tollgate JSON or CloudEvents 1.0."),
    responses(
        (status = 202, description = "At least one event stored (fsynced): which were accepted, which refused and why.", body = crate::openapi::UsageAnswer),
        (status = 400, description = "`malformed_json`, `invalid_body`."),
        (status = 413, description = "`body_too_large`, `too_many_events` (over 1,000)."),
        (status = 415, description = "`unsupported_media_type`."),
        (status = 422, description = "`empty_batch`; `invalid_usage` (no event valid; `accepted`, `rejected` as extensions)."),
        (status = 503, description = "`usage_disabled`, `not_ready`, `usage_buffer_full`, `usage_store_failed` (with `Retry-After`): nothing was stored."),
    ),
)]
pub async fn post_usage(
    State(state): State<EdgeState>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let Some(usage) = state.usage.get().cloned() else {
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "usage_disabled",
            "this edge has no usage store",
        );
    };
    if state.bundle_version().is_none() {
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "no rule bundle loaded yet: meters unknown",
        );
    }
    let format = match format_of(&headers) {
        Ok(f) => f,
        Err(detail) => {
            return problem(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                detail,
            );
        }
    };
    let Ok(bytes) = axum::body::to_bytes(body, USAGE_BODY_BYTES_MAX).await else {
        return problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("a usage request is at most {USAGE_BODY_BYTES_MAX} bytes"),
        );
    };
    let parsed: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => {
            return problem(StatusCode::BAD_REQUEST, "malformed_json", e.to_string());
        }
    };
    let items = match (format, parsed) {
        (Format::CloudEventBatch, Value::Array(items)) => items,
        (Format::CloudEventBatch, _) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                "a CloudEvents batch is a JSON array",
            );
        }
        (Format::CloudEvent, Value::Array(_)) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                "application/cloudevents+json carries one event; use application/cloudevents-batch+json for an array",
            );
        }
        (_, Value::Array(items)) => items,
        (_, one) => vec![one],
    };
    if items.is_empty() {
        return problem(StatusCode::UNPROCESSABLE_ENTITY, "empty_batch", "no events");
    }
    if items.len() > USAGE_EVENTS_MAX {
        return problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_events",
            format!("at most {USAGE_EVENTS_MAX} events per request"),
        );
    }
    let now = crate::clock::now_ms();
    let mut valid = Vec::with_capacity(items.len());
    let mut rejected = Vec::new();
    for (i, raw) in items.iter().enumerate() {
        match event(&state, format, i, raw, now) {
            Ok(e) => valid.push((i, e)),
            Err(r) => rejected.push(r),
        }
    }
    let (valid, repeats) = dedupe(valid, &mut rejected);
    state
        .metrics
        .usage
        .events_invalid
        .inc_by(rejected.len() as u64);
    if valid.is_empty() {
        let mut results = serde_json::Map::new();
        results.insert("accepted".into(), json!([]));
        results.insert("rejected".into(), json!(rejected));
        return problem_with(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_usage",
            "no event in the request is valid",
            results,
        );
    }
    // Identical repeats answer as accepted too (their first occurrence was stored).
    let (indices, valid): (Vec<usize>, Vec<UsageEvent>) = valid.into_iter().unzip();
    match usage.store(&valid).await {
        Ok(_) => {
            state
                .metrics
                .usage
                .events_accepted
                .inc_by(valid.len() as u64);
            let mut accepted: Vec<Accepted<'_>> = indices
                .iter()
                .zip(&valid)
                .map(|(i, e)| Accepted {
                    id: &e.id,
                    index: *i,
                })
                .chain(repeats.iter().map(|(i, id)| Accepted { id, index: *i }))
                .collect();
            accepted.sort_unstable_by_key(|a| a.index);
            // Serialized straight from borrowed fields (no JSON tree per event).
            (
                StatusCode::ACCEPTED,
                axum::Json(Acks {
                    accepted,
                    rejected: &rejected,
                }),
            )
                .into_response()
        }
        Err(StoreError::Full {
            pending_bytes,
            max_pending_bytes,
        }) => {
            state
                .metrics
                .usage
                .events_refused_full
                .inc_by(valid.len() as u64);
            tracing::warn!(
                pending_bytes,
                max_pending_bytes,
                refused = valid.len(),
                "usage buffer full: refusing usage"
            );
            let mut resp = problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "usage_buffer_full",
                format!(
                    "the usage buffer is full ({pending_bytes} of {max_pending_bytes} bytes wait for the control plane); nothing of this request was stored"
                ),
            );
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(FULL_RETRY_AFTER_S));
            resp
        }
        Err(StoreError::Failed(e)) => {
            tracing::error!(error = %e, "usage store failed");
            let mut resp = problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "usage_store_failed",
                "the usage log could not store the events (nothing of this request was stored); retry with the same event ids",
            );
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(1u64));
            resp
        }
    }
}

/// `GET /v1/dead-letter?limit=N` (operator) — the dead-lettered usage, oldest first (at most
/// `limit`, default 100, at most 1,000), and how many there are.
#[utoipa::path(
    get, path = "/v1/dead-letter", tag = "operator",
    params(crate::openapi::DeadLetterQuery),
    security(("operator" = [])),
    responses(
        (status = 200, description = "The dead-lettered usage, oldest first.", body = crate::openapi::DeadLetters),
        (status = 400, description = "`invalid_query`: limit is not 1-1000."),
        (status = 503, description = "`usage_disabled`, `dead_letter_unreadable`."),
    ),
)]
pub async fn dead_letters(
    State(state): State<EdgeState>,
    axum::extract::RawQuery(raw): axum::extract::RawQuery,
) -> Response {
    let Some(usage) = state.usage.get().cloned() else {
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "usage_disabled",
            "this edge has no usage store",
        );
    };
    let limit = form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
        .find(|(k, _)| k == "limit")
        .map(|(_, v)| v.parse::<usize>());
    let limit = match limit {
        None => 100,
        Some(Ok(n)) if (1..=1_000).contains(&n) => n,
        Some(_) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                "limit must be 1-1000",
            );
        }
    };
    let listed = tokio::task::spawn_blocking(move || usage.dead_letters(limit)).await;
    match listed {
        Ok(Ok((total, entries))) => {
            axum::Json(json!({ "total": total, "entries": entries })).into_response()
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "dead-letter file unreadable");
            problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "dead_letter_unreadable",
                "the dead-letter file could not be read",
            )
        }
        Err(_) => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "dead_letter_unreadable",
            "the dead-letter file could not be read",
        ),
    }
}

/// `POST /v1/dead-letter/replay` (operator) — stores every dead-lettered event that passes the
/// bounds again (same ids: the control plane counts each once) and removes it from the file.
#[utoipa::path(
    post, path = "/v1/dead-letter/replay", tag = "operator",
    security(("operator" = [])),
    responses(
        (status = 200, description = "What the replay stored again and what it kept.", body = crate::usage::ReplayReport),
        (status = 503, description = "`usage_disabled`, `replay_failed`."),
    ),
)]
pub async fn replay_dead_letters(State(state): State<EdgeState>) -> Response {
    let Some(usage) = state.usage.get().cloned() else {
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "usage_disabled",
            "this edge has no usage store",
        );
    };
    match usage.replay_dead_letters().await {
        Ok(report) => axum::Json(json!(report)).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "dead-letter replay failed");
            problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "replay_failed",
                e.to_string(),
            )
        }
    }
}

/// `POST /v1/dead-letter/discard` (operator) — removes every dead-lettered entry.
#[utoipa::path(
    post, path = "/v1/dead-letter/discard", tag = "operator",
    security(("operator" = [])),
    responses(
        (status = 200, description = "How many entries were removed.", body = crate::openapi::Discarded),
        (status = 503, description = "`usage_disabled`, `discard_failed`."),
    ),
)]
pub async fn discard_dead_letters(State(state): State<EdgeState>) -> Response {
    let Some(usage) = state.usage.get().cloned() else {
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "usage_disabled",
            "this edge has no usage store",
        );
    };
    match usage.discard_dead_letters().await {
        Ok(n) => axum::Json(json!({ "discarded": n })).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "dead-letter discard failed");
            problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "discard_failed",
                "the dead-letter file could not be rewritten",
            )
        }
    }
}

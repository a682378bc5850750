//! The OpenFeature Remote Evaluation Protocol (OFREP), so any OpenFeature SDK with an OFREP
//! provider can use the sidecar.
//!
//! * `POST /ofrep/v1/evaluate/flags/{key}` `{"context": {"targetingKey": "<account id>", …}}`
//! * `POST /ofrep/v1/evaluate/flags` (bulk): every feature, with an `ETag` that is a hash of
//!   the answer itself (so it changes with anything the answer says: facts, bundle, quota
//!   usage, staleness); `If-None-Match` with a matching tag → 304. `If-None-Match` follows
//!   RFC 9110 §13.1.2: a list of tags, weak comparison (`W/"x"` matches `"x"`), `*` matches any.
//!
//! Mapping: the targeting key is the account id; bool features are boolean flags (`value` =
//! allowed); limit and metered features are integer flags (`value` = the limit when allowed,
//! 0 when denied, -1 for "unlimited"). `variant` is `granted` / `denied`; `reason` is
//! `TARGETING_MATCH` for a decision from the account's facts, `STALE` when the edge is past its
//! freshness budget, `DEFAULT` for an unknown account or the fail-open/closed fallback; Tollgate's
//! own reason code, facts version and bundle version travel in `metadata`. Errors use OFREP's
//! codes: `PARSE_ERROR`, `TARGETING_KEY_MISSING`, `INVALID_CONTEXT` (400), `FLAG_NOT_FOUND`
//! (404), `GENERAL` (503 while no bundle is loaded).

use std::borrow::Cow;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tollgate_protocol::{AccountId, Reason};
use tollgate_rules::ir::FeatureKind;

use crate::cache::RulesView;
use crate::check::decide;
use crate::state::EdgeState;
use tollgate_protocol::check::CheckResponse;

fn error(
    status: StatusCode,
    key: Option<&str>,
    code: &str,
    details: impl Into<String>,
) -> Response {
    let mut body = json!({ "errorCode": code, "errorDetails": details.into() });
    if let Some(k) = key {
        body["key"] = json!(k);
    }
    (status, axum::Json(body)).into_response()
}

/// The account named by the request's evaluation context, or an OFREP error code and detail
/// (always a 400).
fn targeting(body: &Bytes) -> Result<AccountId, (&'static str, String)> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| ("PARSE_ERROR", format!("request body: {e}")))?;
    let Some(context) = value.get("context").and_then(Value::as_object) else {
        return Err((
            "INVALID_CONTEXT",
            "the body needs a `context` object".to_owned(),
        ));
    };
    let Some(targeting_key) = context.get("targetingKey") else {
        return Err((
            "TARGETING_KEY_MISSING",
            "context.targetingKey (the account id) is required".to_owned(),
        ));
    };
    targeting_key
        .as_str()
        .and_then(|s| s.parse::<AccountId>().ok())
        .ok_or_else(|| {
            (
                "INVALID_CONTEXT",
                "context.targetingKey must be an account id (UUID)".to_owned(),
            )
        })
}

fn evaluation(view: &RulesView, key: &str, kind: FeatureKind, r: &CheckResponse<'_>) -> Value {
    let value = match kind {
        FeatureKind::Bool => json!(r.allowed),
        FeatureKind::Limit | FeatureKind::Metered => {
            json!(if r.allowed { r.limit.unwrap_or(-1) } else { 0 })
        }
    };
    let reason = match r.reason {
        Reason::UnknownAccount | Reason::Fallback => "DEFAULT",
        _ if r.stale => "STALE",
        _ => "TARGETING_MATCH",
    };
    let mut out = json!({
        "key": key,
        "value": value,
        "variant": if r.allowed { "granted" } else { "denied" },
        "reason": reason,
        "metadata": {
            "tollgate_reason": r.reason.as_str(),
            "facts_version": r.version,
            "bundle_version": r.bundle_version,
            "stale": r.stale,
            "rules_generation": view.generation,
        },
    });
    // OFREP metadata values are strings, numbers or booleans: present only when known.
    if let Some(usage) = r.usage {
        out["metadata"]["usage"] = json!(usage);
    }
    if let Some(remaining) = r.remaining {
        out["metadata"]["remaining"] = json!(remaining);
    }
    out
}

/// `POST /ofrep/v1/evaluate/flags/{key}`
#[utoipa::path(
    post, path = "/ofrep/v1/evaluate/flags/{key}", tag = "ofrep",
    params(("key" = String, Path, description = "The feature's key.")),
    request_body = crate::openapi::OfrepRequest,
    security((), ("service" = [])),
    responses(
        (status = 200, description = "The evaluation.", body = crate::openapi::OfrepEvaluation),
        (status = 400, description = "`PARSE_ERROR`, `TARGETING_KEY_MISSING`, `INVALID_CONTEXT` (OFREP's body); `unreadable_body` (problem+json).", content_type = "application/json", body = crate::openapi::OfrepError),
        (status = 404, description = "`FLAG_NOT_FOUND`.", content_type = "application/json", body = crate::openapi::OfrepError),
        (status = 503, description = "`GENERAL`: no rule bundle loaded yet.", content_type = "application/json", body = crate::openapi::OfrepError),
    ),
)]
pub async fn evaluate_flag(
    State(state): State<EdgeState>,
    Path(key): Path<String>,
    body: Bytes,
) -> Response {
    let account = match targeting(&body) {
        Ok(a) => a,
        Err((code, detail)) => return error(StatusCode::BAD_REQUEST, Some(&key), code, detail),
    };
    let Some(view) = state.rules.load_full() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            Some(&key),
            "GENERAL",
            "no rule bundle loaded yet",
        );
    };
    let Some(index) = view.feature_index(&key) else {
        return error(
            StatusCode::NOT_FOUND,
            Some(&key),
            "FLAG_NOT_FOUND",
            format!("no feature `{key}`"),
        );
    };
    let kind = view.program.features[index].kind;
    match decide(&state, &view, account, Cow::Borrowed(key.as_str()), 1).await {
        Ok(r) => axum::Json(evaluation(&view, &key, kind, &r)).into_response(),
        Err((_, _, detail)) => error(StatusCode::NOT_FOUND, Some(&key), "FLAG_NOT_FOUND", detail),
    }
}

/// `POST /ofrep/v1/evaluate/flags` — every feature for one account.
#[utoipa::path(
    post, path = "/ofrep/v1/evaluate/flags", tag = "ofrep",
    params(("If-None-Match" = Option<String>, Header, description = "A previous answer's ETag.")),
    request_body = crate::openapi::OfrepRequest,
    security((), ("service" = [])),
    responses(
        (status = 200, description = "Every flag, with an `ETag` (the answer's own hash).", body = crate::openapi::OfrepBulk, headers(("ETag" = String))),
        (status = 304, description = "`If-None-Match` matched: the answer is unchanged."),
        (status = 400, description = "`PARSE_ERROR`, `TARGETING_KEY_MISSING`, `INVALID_CONTEXT` (OFREP's body); `unreadable_body` (problem+json).", content_type = "application/json", body = crate::openapi::OfrepError),
        (status = 503, description = "`GENERAL`: no rule bundle loaded yet.", content_type = "application/json", body = crate::openapi::OfrepError),
    ),
)]
pub async fn evaluate_all(
    State(state): State<EdgeState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let account = match targeting(&body) {
        Ok(a) => a,
        Err((code, detail)) => return error(StatusCode::BAD_REQUEST, None, code, detail),
    };
    let Some(view) = state.rules.load_full() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            None,
            "GENERAL",
            "no rule bundle loaded yet",
        );
    };
    let mut flags = Vec::with_capacity(view.program.features.len());
    for f in &view.program.features {
        match decide(&state, &view, account, Cow::Borrowed(f.key.as_str()), 1).await {
            Ok(r) => {
                flags.push(evaluation(&view, &f.key, f.kind, &r));
            }
            Err((_, _, detail)) => {
                flags.push(json!({ "key": f.key, "errorCode": "GENERAL", "errorDetails": detail }))
            }
        }
    }
    let body = json!({ "flags": flags });
    // The tag is the answer's own hash: whatever changes the answer (a quota used up, a new
    // bundle, stale facts) changes the tag.
    let etag = format!(
        "\"{:016x}\"",
        tollgate_protocol::canary::fnv1a(&body.to_string())
    );
    if headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| if_none_match_hits(v, &etag))
    {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
    }
    let mut resp = axum::Json(body).into_response();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    resp
}

/// Whether an `If-None-Match` value matches `etag` under weak comparison (RFC 9110 §8.8.3.2):
/// `*`, or any listed tag with the same opaque part, `W/` or not.
pub fn if_none_match_hits(value: &str, etag: &str) -> bool {
    let opaque = |t: &str| t.trim().trim_start_matches("W/").to_owned();
    let ours = opaque(etag);
    value.trim() == "*" || value.split(',').any(|t| opaque(t) == ours)
}

#[cfg(test)]
mod tests {
    use super::if_none_match_hits;

    #[test]
    fn if_none_match_takes_lists_weak_tags_and_star() {
        let tag = "\"abc\"";
        for (value, hit) in [
            ("\"abc\"", true),
            ("W/\"abc\"", true),
            ("\"x\", W/\"abc\"", true),
            (" \"x\" ,\"abc\" ", true),
            ("*", true),
            ("\"abcd\"", false),
            ("\"x\", \"y\"", false),
            ("", false),
        ] {
            assert_eq!(if_none_match_hits(value, tag), hit, "{value}");
        }
    }
}

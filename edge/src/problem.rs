//! The edge's one error format: RFC 9457 `application/problem+json` with a stable machine
//! `code` (`https://tollgate.dev/problems/{code}`). Every route, gate and fallback that answers
//! an error answers through here (OFREP's routes excepted: that protocol has its own error
//! body, see [`crate::ofrep`]).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An RFC 9457 problem with a stable `code`.
pub(crate) fn problem(
    status: StatusCode,
    code: &'static str,
    detail: impl Into<String>,
) -> Response {
    problem_with(status, code, detail, serde_json::Map::new())
}

/// [`problem`] with extension members (RFC 9457 §3.2), e.g. per-item results.
pub(crate) fn problem_with(
    status: StatusCode,
    code: &'static str,
    detail: impl Into<String>,
    extensions: serde_json::Map<String, serde_json::Value>,
) -> Response {
    let mut body = json!({
        "type": format!("https://tollgate.dev/problems/{code}"),
        "title": status.canonical_reason().unwrap_or("error"),
        "status": status.as_u16(),
        "code": code,
        "detail": detail.into(),
    });
    if let serde_json::Value::Object(b) = &mut body {
        b.extend(extensions);
    }
    let mut resp = (status, axum::Json(body)).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    resp
}

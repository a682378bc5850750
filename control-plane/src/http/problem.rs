//! RFC 9457 `application/problem+json`: how every [`Error`] reaches an HTTP client, with the
//! status of its [`Kind`]. A 5xx never carries internal detail (that went to the log).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use crate::error::{Error, Kind};

pub const PROBLEM_JSON: &str = "application/problem+json";

/// The HTTP status of a kind of failure.
pub fn status(kind: Kind) -> StatusCode {
    match kind {
        Kind::BadRequest => StatusCode::BAD_REQUEST,
        Kind::Unauthorized => StatusCode::UNAUTHORIZED,
        Kind::PaymentRequired => StatusCode::PAYMENT_REQUIRED,
        Kind::Forbidden => StatusCode::FORBIDDEN,
        Kind::NotFound => StatusCode::NOT_FOUND,
        Kind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        Kind::Conflict => StatusCode::CONFLICT,
        Kind::Gone => StatusCode::GONE,
        Kind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        Kind::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        Kind::Unprocessable => StatusCode::UNPROCESSABLE_ENTITY,
        Kind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Kind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The problem document of an error.
pub fn body(e: &Error) -> Value {
    let status = status(e.kind);
    let mut body = Map::new();
    body.insert(
        "type".into(),
        json!(format!("https://tollgate.dev/problems/{}", e.code)),
    );
    body.insert(
        "title".into(),
        json!(status.canonical_reason().unwrap_or("error")),
    );
    body.insert("status".into(), json!(status.as_u16()));
    body.insert("code".into(), json!(e.code));
    body.insert("detail".into(), json!(e.detail));
    for (k, v) in &e.extra {
        body.insert(k.clone(), v.clone());
    }
    Value::Object(body)
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let mut resp = (status(self.kind), axum::Json(body(&self))).into_response();
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        resp
    }
}

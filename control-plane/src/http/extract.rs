//! Extractors whose rejections use our problem format.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::{Error, Kind};

/// Largest JSON body any Dashboard or panel endpoint accepts.
pub const BODY_BYTES_MAX: usize = 64 * 1024;

/// `axum::Json` with problem+json rejections (`malformed_json`, `invalid_body`,
/// `unsupported_media_type`, `body_too_large`). The body must be a JSON **object**: serde
/// would also read a struct from an array of its fields in order (`["free"]` as
/// `{"plan":"free"}`), which no client means.
pub struct Json<T>(pub T);

fn json_content_type(req: &Request) -> bool {
    let Some(ct) = req
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let media = ct
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    media == "application/json" || (media.starts_with("application/") && media.ends_with("+json"))
}

impl<S, T> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !json_content_type(&req) {
            return Err(Error::new(
                Kind::UnsupportedMediaType,
                "unsupported_media_type",
                "expected Content-Type: application/json",
            ));
        }
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|_| {
                Error::new(
                    Kind::TooLarge,
                    "body_too_large",
                    format!("request bodies are limited to {BODY_BYTES_MAX} bytes"),
                )
            })?;
        match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'{') => {}
            // Not JSON at all: let the parser say where.
            Some(b) if !b"[\"-0123456789tfn".contains(b) => {}
            _ => {
                return Err(Error::unprocessable(
                    "invalid_body",
                    "the body must be a JSON object",
                ));
            }
        }
        match axum::Json::<T>::from_bytes(&bytes) {
            Ok(axum::Json(v)) => Ok(Self(v)),
            Err(rej) => Err(json_rejection(rej)),
        }
    }
}

fn json_rejection(rej: JsonRejection) -> Error {
    match rej {
        JsonRejection::JsonDataError(e) => {
            Error::unprocessable("invalid_body", body_text(&e.body_text()))
        }
        JsonRejection::JsonSyntaxError(e) => {
            Error::bad_request("malformed_json", body_text(&e.body_text()))
        }
        JsonRejection::MissingJsonContentType(_) => Error::new(
            Kind::UnsupportedMediaType,
            "unsupported_media_type",
            "expected Content-Type: application/json",
        ),
        JsonRejection::BytesRejection(_) => Error::new(
            Kind::TooLarge,
            "body_too_large",
            format!("request bodies are limited to {BODY_BYTES_MAX} bytes"),
        ),
        other => Error::bad_request("invalid_body", other.body_text()),
    }
}

/// serde's messages are good but prefixed by axum's own; keep serde's part.
fn body_text(text: &str) -> String {
    text.split_once(": ")
        .map_or(text, |(_, rest)| rest)
        .to_owned()
}

/// `axum::extract::Query` with problem+json rejections (`invalid_query`).
pub struct Query<T>(pub T);

impl<S, T> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Self(v)),
            Err(rej) => Err(query_rejection(rej)),
        }
    }
}

fn query_rejection(rej: QueryRejection) -> Error {
    Error::bad_request("invalid_query", body_text(&rej.body_text()))
}

/// `axum::extract::Path` whose rejection is a 404: a malformed id names nothing.
pub struct Path<T>(pub T);

impl<S, T> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Self(v)),
            Err(PathRejection::FailedToDeserializePathParams(_)) => {
                Err(Error::not_found("resource"))
            }
            Err(other) => Err(Error::internal(other.body_text())),
        }
    }
}

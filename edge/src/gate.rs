//! The two layers every request of the check hot path crosses, written as plain tower services.
//!
//! `axum::middleware::from_fn` boxes a future and clones the inner service on every request;
//! measured on `GET /v1/check` (`bench/`, `edge-check`, 64 connections) the two such layers
//! this edge had cost about an eighth of its throughput. These decide from the request head
//! alone and hand the inner service's own future back, unboxed:
//!
//! * [`Gate`]: a synchronous check of the head (the token check) answers, or the request goes on;
//! * [`BoundedBody`]: a request without a body goes straight on; one with a body is read (and
//!   bounded) first, on a boxed future — bodies are not the hot path.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::response::Response;
use futures::future::{BoxFuture, Either};
use tower::{Layer, Service};

use crate::problem::problem;

/// Answers from the request head when `check` returns a response; otherwise the inner service does.
#[derive(Clone)]
pub struct GateLayer<F>(F);

impl<F> GateLayer<F>
where
    F: Fn(&Request) -> Option<Response> + Clone,
{
    pub fn new(check: F) -> Self {
        GateLayer(check)
    }
}

impl<F: Clone, S> Layer<S> for GateLayer<F> {
    type Service = Gate<F, S>;

    fn layer(&self, inner: S) -> Self::Service {
        Gate {
            check: self.0.clone(),
            inner,
        }
    }
}

#[derive(Clone)]
pub struct Gate<F, S> {
    check: F,
    inner: S,
}

impl<F, S> Service<Request> for Gate<F, S>
where
    F: Fn(&Request) -> Option<Response>,
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<Ready<Result<Response, Infallible>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        match (self.check)(&req) {
            Some(answer) => Either::Left(ready(Ok(answer))),
            None => Either::Right(self.inner.call(req)),
        }
    }
}

/// Largest request body any route takes (the usage API's), bytes.
pub const REQUEST_BODY_BYTES_MAX: usize = crate::usage_api::USAGE_BODY_BYTES_MAX;
/// Bodies past [`REQUEST_BODY_BYTES_MAX`] are still read (and dropped) up to this many bytes,
/// so their `413` reaches the client on a connection that stays usable; past it the
/// connection is closed after the answer (an HTTP/1.1 server cannot answer early otherwise).
pub const DRAIN_BYTES_MAX: usize = 32 << 20;

/// Every request's body, bounded: at most [`REQUEST_BODY_BYTES_MAX`] reach a handler; a larger
/// one is answered `413 body_too_large` after being drained. Requests without a body (the
/// check hot path) pass untouched.
#[derive(Clone, Copy, Default)]
pub struct BoundedBodyLayer;

impl<S> Layer<S> for BoundedBodyLayer {
    type Service = BoundedBody<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BoundedBody { inner }
    }
}

#[derive(Clone)]
pub struct BoundedBody<S> {
    inner: S,
}

fn has_body(req: &Request) -> bool {
    req.headers().contains_key(header::TRANSFER_ENCODING)
        || req
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

impl<S> Service<Request> for BoundedBody<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<S::Future, BoxFuture<'static, Result<Response, Infallible>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        if !has_body(&req) {
            return Either::Left(self.inner.call(req));
        }
        // The service polled ready is the one that must be called: take it, leave a clone.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Either::Right(Box::pin(async move {
            match read_bounded(req).await {
                Ok(req) => inner.call(req).await,
                Err(answer) => Ok(answer),
            }
        }))
    }
}

async fn read_bounded(req: Request) -> Result<Request, Response> {
    use http_body_util::BodyExt;
    let (parts, mut body) = req.into_parts();
    let mut kept = Vec::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Err(problem(
                StatusCode::BAD_REQUEST,
                "unreadable_body",
                "the request body could not be read",
            ));
        };
        if let Some(data) = frame.data_ref() {
            total = total.saturating_add(data.len());
            if total <= REQUEST_BODY_BYTES_MAX {
                kept.extend_from_slice(data);
            } else if total > DRAIN_BYTES_MAX {
                break;
            }
        }
    }
    if total > REQUEST_BODY_BYTES_MAX {
        return Err(problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("a request body is at most {REQUEST_BODY_BYTES_MAX} bytes"),
        ));
    }
    Ok(Request::from_parts(parts, axum::body::Body::from(kept)))
}

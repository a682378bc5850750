//! Who may call the edge.
//!
//! An edge listens on loopback by default: the product service beside it is its only client.
//! Where it must listen on a network (a pod IP, a compose network), two optional token lists
//! protect it, each holding several tokens so one can be rotated without downtime (add the new
//! one, roll the clients, remove the old one):
//!
//! | tokens | env | protects |
//! |---|---|---|
//! | service | `TOLLGATE_EDGE_SERVICE_TOKENS` | checks, entitlements, OFREP, usage; the account ids in `GET /v1/status` |
//! | operator | `TOLLGATE_EDGE_OPERATOR_TOKENS` | the dead-letter API (`/v1/dead-letter…`); the account ids in `GET /v1/status` |
//!
//! With no service tokens the service routes are open (loopback); with no operator tokens the
//! dead-letter API answers `403 operator_tokens_not_configured`. Tokens are sent as
//! `Authorization: Bearer <token>` (the scheme is case-insensitive, RFC 9110) and compared in
//! constant time. Health, readiness and metrics (no account ids) are always open.

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use secrecy::{ExposeSecret, SecretString};

use crate::problem::problem;

/// Shortest token accepted in the configuration: shorter ones are guessable.
pub const TOKEN_CHARS_MIN: usize = 16;

/// The configured token lists.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    pub service: Vec<SecretString>,
    pub operator: Vec<SecretString>,
}

/// What a request's credentials allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// No (valid) token.
    Anonymous,
    Service,
    Operator,
}

/// The bearer token of a request, if it carries one.
fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(header::AUTHORIZATION)?.as_bytes();
    let (scheme, token) = value.split_at_checked(7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| token.trim_ascii())
}

/// Constant time in the contents (the length is not secret).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn any_matches(list: &[SecretString], token: &[u8]) -> bool {
    // Every token is compared, so the time does not tell which one matched.
    list.iter().fold(false, |hit, t| {
        same(t.expose_secret().as_bytes(), token) | hit
    })
}

impl Tokens {
    /// Who the request's token makes the caller.
    pub fn caller(&self, headers: &HeaderMap) -> Caller {
        let Some(token) = bearer(headers) else {
            return Caller::Anonymous;
        };
        if any_matches(&self.operator, token) {
            Caller::Operator
        } else if any_matches(&self.service, token) {
            Caller::Service
        } else {
            Caller::Anonymous
        }
    }

    /// Whether the service routes need a token.
    pub fn service_required(&self) -> bool {
        !self.service.is_empty()
    }
}

fn unauthorized(code: &'static str, detail: &str) -> Response {
    let mut resp = problem(StatusCode::UNAUTHORIZED, code, detail);
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer realm=\"tollgate-edge\""),
    );
    resp
}

/// The gate of the service routes: a service (or operator) token when any is configured.
/// `Some` is the answer to give instead of the route's.
pub fn service(tokens: &Tokens, headers: &HeaderMap) -> Option<Response> {
    if !tokens.service_required() || tokens.caller(headers) != Caller::Anonymous {
        return None;
    }
    Some(match bearer(headers) {
        None => unauthorized(
            "missing_credentials",
            "Authorization: Bearer <service token> is required",
        ),
        Some(_) => unauthorized(
            "invalid_token",
            "the token is not one of this edge's service tokens",
        ),
    })
}

/// The gate of the operator routes: an operator token, which must be configured.
pub fn operator(tokens: &Tokens, headers: &HeaderMap) -> Option<Response> {
    if tokens.operator.is_empty() {
        return Some(problem(
            StatusCode::FORBIDDEN,
            "operator_tokens_not_configured",
            "set TOLLGATE_EDGE_OPERATOR_TOKENS to use the dead-letter API",
        ));
    }
    if tokens.caller(headers) == Caller::Operator {
        return None;
    }
    Some(match bearer(headers) {
        None => unauthorized(
            "missing_credentials",
            "Authorization: Bearer <operator token> is required",
        ),
        Some(_) => unauthorized(
            "invalid_token",
            "the token is not one of this edge's operator tokens",
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, v.parse().expect("header"));
        h
    }

    #[test]
    fn tokens_rotate_and_the_scheme_is_case_insensitive() {
        let t = Tokens {
            service: vec![
                "old-service-token-0001".into(),
                "new-service-token-0002".into(),
            ],
            operator: vec!["operator-token-00001".into()],
        };
        assert_eq!(
            t.caller(&headers("Bearer old-service-token-0001")),
            Caller::Service
        );
        assert_eq!(
            t.caller(&headers("bearer new-service-token-0002")),
            Caller::Service
        );
        assert_eq!(
            t.caller(&headers("BEARER operator-token-00001")),
            Caller::Operator
        );
        assert_eq!(
            t.caller(&headers("Bearer new-service-token-0003")),
            Caller::Anonymous
        );
        assert_eq!(
            t.caller(&headers("Basic b2xkLXNlcnZpY2U=")),
            Caller::Anonymous
        );
        assert_eq!(t.caller(&HeaderMap::new()), Caller::Anonymous);
        assert_eq!(t.caller(&headers("Bearer")), Caller::Anonymous);
    }
}

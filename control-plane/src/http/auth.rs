//! Bearer-token plumbing shared by the Dashboard (per-account API tokens), the edges' internal
//! API (edge token) and the admin API (admin token): one way to read the header, one
//! constant-time comparison, one set of problem codes.

use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use secrecy::{ExposeSecret, SecretString};

use crate::error::Error;

/// Longest token accepted (anything longer is malformed, not looked up).
pub const TOKEN_BYTES_MAX: usize = 256;

/// The request's bearer token. No header: `missing_credentials`; anything but a non-empty
/// `Bearer <token>` of at most [`TOKEN_BYTES_MAX`] bytes: `invalid_token`. The scheme is
/// case-insensitive (RFC 9110 §11.1). `what` names the token in the message ("api token",
/// "edge token").
pub fn bearer<'a>(parts: &'a Parts, what: &str) -> Result<&'a str, Error> {
    let Some(value) = parts.headers.get(AUTHORIZATION) else {
        return Err(Error::unauthorized(
            "missing_credentials",
            format!("send Authorization: Bearer <{what}>"),
        ));
    };
    value
        .to_str()
        .ok()
        .and_then(|v| {
            let (scheme, token) = v.split_at_checked(7)?;
            scheme.eq_ignore_ascii_case("bearer ").then_some(token)
        })
        .map(str::trim)
        .filter(|t| !t.is_empty() && t.len() <= TOKEN_BYTES_MAX)
        .ok_or_else(|| Error::unauthorized("invalid_token", format!("the {what} is malformed")))
}

/// Checks the bearer token against a configured shared secret, in constant time.
pub fn require_secret(parts: &Parts, secret: &SecretString, what: &str) -> Result<(), Error> {
    let presented = bearer(parts, what)?;
    if constant_time_eq(presented.as_bytes(), secret.expose_secret().as_bytes()) {
        Ok(())
    } else {
        Err(Error::unauthorized(
            "invalid_token",
            format!("the {what} is not valid"),
        ))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    #[test]
    fn constant_time_eq_compares_content_and_length() {
        assert!(super::constant_time_eq(b"abc", b"abc"));
        assert!(!super::constant_time_eq(b"abc", b"abd"));
        assert!(!super::constant_time_eq(b"abc", b"abcd"));
    }
}

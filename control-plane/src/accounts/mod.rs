//! Accounts, their API tokens and their payment methods.
//!
//! Creating an account creates the provider Customer every other process refers to, and an
//! API token scoped to that one account. Tokens are derived, never stored: the token is
//! `tg_` + hex(HMAC-SHA256(token_secret, token_id)); only SHA-256 of it is kept. Deriving lets
//! an idempotent replay of sign-up return the same token without the token ever being written
//! down.

pub mod auth;
pub mod http;
pub mod payment_methods;
pub mod store;

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tollgate_protocol::AccountId;
use uuid::Uuid;

/// An account as the Dashboard shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Account {
    pub id: Uuid,
    pub email: String,
    pub name: String,
    #[sqlx(rename = "standing")]
    pub status: String,
    #[sqlx(rename = "gateway_customer_id")]
    pub stripe_customer_id: String,
    pub default_payment_method_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
}

impl Account {
    pub fn account_id(&self) -> AccountId {
        AccountId(self.id)
    }
}

/// Sign-up input after validation.
#[derive(Debug, Clone)]
pub struct NewAccount {
    pub email: String,
    pub name: String,
}

pub const EMAIL_BYTES_MAX: usize = 254;
pub const NAME_BYTES_MAX: usize = 200;

/// Validates sign-up fields; every problem is returned.
pub fn validate_new_account(email: &str, name: &str) -> Result<NewAccount, Vec<String>> {
    let email = email.trim();
    let name = name.trim();
    let mut errors = Vec::new();
    let at = email.find('@');
    let email_ok = email.len() <= EMAIL_BYTES_MAX
        && !email.chars().any(char::is_whitespace)
        && at.is_some_and(|i| i > 0 && i + 1 < email.len() && !email[i + 1..].contains('@'));
    if !email_ok {
        errors.push(format!(
            "email must be an address like name@example.com of at most {EMAIL_BYTES_MAX} bytes"
        ));
    }
    if name.is_empty() || name.len() > NAME_BYTES_MAX {
        errors.push(format!("name must be 1-{NAME_BYTES_MAX} bytes"));
    }
    // PostgreSQL text cannot hold NUL, and no name or address needs a control character:
    // refused here, before anything reaches the provider.
    if email.chars().chain(name.chars()).any(char::is_control) {
        errors.push("email and name must not contain control characters (NUL included)".into());
    }
    if errors.is_empty() {
        Ok(NewAccount {
            email: email.to_owned(),
            name: name.to_owned(),
        })
    } else {
        Err(errors)
    }
}

/// Derives the token for a token id.
pub fn derive_token(secret: &SecretString, token_id: Uuid) -> String {
    // HMAC accepts keys of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose_secret().as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(b"tollgate-api-token-v1\0");
    mac.update(token_id.as_bytes());
    format!("tg_{}", hex::encode(mac.finalize().into_bytes()))
}

/// What is stored for a token: its SHA-256.
pub fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_up_validation_reports_all_problems() {
        assert!(validate_new_account("a@example.com", "Ada").is_ok());
        for (email, name, n) in [
            ("nope", "Ada", 1),
            ("a@", "Ada", 1),
            ("@b", "", 2),
            ("a b@c.d", " ", 2),
            ("a@b@c", "x", 1),
            ("a@example.com", "Ada\0", 1),
            ("a\0@example.com", "Ada", 1),
        ] {
            assert_eq!(
                validate_new_account(email, name).expect_err(email).len(),
                n,
                "{email:?} {name:?}"
            );
        }
    }

    #[test]
    fn tokens_are_deterministic_per_id_and_secret() {
        let s1 = SecretString::from("one".to_owned());
        let s2 = SecretString::from("two".to_owned());
        let id = Uuid::now_v7();
        assert_eq!(derive_token(&s1, id), derive_token(&s1, id));
        assert_ne!(derive_token(&s1, id), derive_token(&s2, id));
        assert_ne!(derive_token(&s1, id), derive_token(&s1, Uuid::now_v7()));
        assert!(derive_token(&s1, id).starts_with("tg_"));
        assert_eq!(token_hash("x").len(), 32);
    }
}

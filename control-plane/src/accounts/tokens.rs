//! API tokens are derived, never stored: the token is `tg_` + hex(HMAC-SHA256(token_secret,
//! token_id)); only SHA-256 of it is kept. Deriving lets a replay of sign-up return the same
//! token without the token ever being written down.

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use crate::ids::TokenId;

/// Derives the token for a token id.
pub fn derive_token(secret: &SecretString, token_id: TokenId) -> String {
    // HMAC accepts keys of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose_secret().as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(b"tollgate-api-token-v1\0");
    mac.update(token_id.0.as_bytes());
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
    fn tokens_are_deterministic_per_id_and_secret() {
        let s1 = SecretString::from("one".to_owned());
        let s2 = SecretString::from("two".to_owned());
        let id = TokenId::new_v7();
        assert_eq!(derive_token(&s1, id), derive_token(&s1, id));
        assert_ne!(derive_token(&s1, id), derive_token(&s2, id));
        assert_ne!(derive_token(&s1, id), derive_token(&s1, TokenId::new_v7()));
        assert!(derive_token(&s1, id).starts_with("tg_"));
        assert_eq!(token_hash("x").len(), 32);
    }
}

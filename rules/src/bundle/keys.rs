//! Signing keys: key ids, the key files (`# Keys` in the [`super`] module doc), the set of
//! trusted keys, and the ed25519 signing and strict verification [`super::verify`] relies on.

use std::collections::BTreeMap;

use ed25519_dalek::Signer;

use super::BundleError;

/// Longest key id.
pub const KEY_ID_CHARS_MAX: usize = 64;

const SECRET_PREFIX: &str = "tollgate-ed25519-secret";
const PUBLIC_PREFIX: &str = "tollgate-ed25519";

/// Whether `id` can name a key: 1–[`KEY_ID_CHARS_MAX`] of `A-Z a-z 0-9 . _ -`.
pub fn is_valid_key_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= KEY_ID_CHARS_MAX
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn check_key_id(id: &str) -> Result<(), BundleError> {
    if is_valid_key_id(id) {
        Ok(())
    } else {
        Err(BundleError::Key(format!(
            "key id `{id}` is not 1-{KEY_ID_CHARS_MAX} characters of A-Z a-z 0-9 . _ -"
        )))
    }
}

fn key_bytes(hex_text: &str) -> Result<[u8; 32], BundleError> {
    let bytes = hex::decode(hex_text.trim())
        .map_err(|e| BundleError::Key(format!("key is not hex: {e}")))?;
    <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| BundleError::Key(format!("key is {} bytes, not 32", bytes.len())))
}

/// Splits `<prefix> <key_id> <hex>` (one line, surrounding whitespace ignored).
fn key_line<'a>(s: &'a str, prefix: &str) -> Result<(&'a str, &'a str), BundleError> {
    let mut words = s.split_whitespace();
    match (words.next(), words.next(), words.next(), words.next()) {
        (Some(p), Some(id), Some(hex), None) if p == prefix => {
            check_key_id(id)?;
            Ok((id, hex))
        }
        _ => Err(BundleError::Key(format!(
            "expected one line `{prefix} <key_id> <hex>`"
        ))),
    }
}

/// A secret signing key. Its `Debug` does not show the secret.
pub struct SigningKey {
    pub key_id: String,
    secret: ed25519_dalek::SigningKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A fresh key from the operating system's random source. The key id should satisfy
    /// [`is_valid_key_id`]; a key with another id cannot be read back from its file.
    pub fn generate(key_id: &str) -> Self {
        Self {
            key_id: key_id.into(),
            secret: ed25519_dalek::SigningKey::generate(&mut rand_core::OsRng),
        }
    }

    /// `tollgate-ed25519-secret <key_id> <hex>` and a newline.
    pub fn to_file_string(&self) -> String {
        format!(
            "{SECRET_PREFIX} {} {}\n",
            self.key_id,
            hex::encode(self.secret.to_bytes())
        )
    }

    pub fn from_file_string(s: &str) -> Result<Self, BundleError> {
        let (id, hex) = key_line(s, SECRET_PREFIX)?;
        Ok(Self {
            key_id: id.into(),
            secret: ed25519_dalek::SigningKey::from_bytes(&key_bytes(hex)?),
        })
    }

    /// The ed25519 signature of `message`.
    pub(super) fn signature(&self, message: &[u8]) -> Vec<u8> {
        self.secret.sign(message).to_bytes().to_vec()
    }

    pub fn public(&self) -> PublicKey {
        PublicKey {
            key_id: self.key_id.clone(),
            key: self.secret.verifying_key(),
        }
    }
}

/// A public key that verifies bundles signed by the [`SigningKey`] of the same id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey {
    pub key_id: String,
    key: ed25519_dalek::VerifyingKey,
}

impl PublicKey {
    /// `tollgate-ed25519 <key_id> <hex>` and a newline.
    pub fn to_file_string(&self) -> String {
        format!("{PUBLIC_PREFIX} {} {}\n", self.key_id, self.hex())
    }

    pub fn from_file_string(s: &str) -> Result<Self, BundleError> {
        let (id, hex) = key_line(s, PUBLIC_PREFIX)?;
        Self::from_parts(id, hex)
    }

    /// The key as lower-case hex (the form [`TrustedKeys::parse_list`] reads).
    pub fn hex(&self) -> String {
        hex::encode(self.key.as_bytes())
    }

    /// Whether `signature` is this key's over `message`, verified strictly
    /// ([`BundleError::BadSignature`] if not, or if it is no ed25519 signature at all).
    pub(super) fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), BundleError> {
        let signature = ed25519_dalek::Signature::from_slice(signature)
            .map_err(|_| BundleError::BadSignature)?;
        self.key
            .verify_strict(message, &signature)
            .map_err(|_| BundleError::BadSignature)
    }

    fn from_parts(id: &str, hex: &str) -> Result<Self, BundleError> {
        check_key_id(id)?;
        let key = ed25519_dalek::VerifyingKey::from_bytes(&key_bytes(hex)?)
            .map_err(|_| BundleError::Key(format!("key `{id}` is not a valid ed25519 key")))?;
        Ok(Self {
            key_id: id.into(),
            key,
        })
    }
}

/// The keys a verifier accepts, by key id.
#[derive(Clone, Debug, Default)]
pub struct TrustedKeys(BTreeMap<String, PublicKey>);

impl TrustedKeys {
    /// A later key with the same id replaces an earlier one.
    pub fn new(keys: Vec<PublicKey>) -> Self {
        Self(keys.into_iter().map(|k| (k.key_id.clone(), k)).collect())
    }

    /// Reads `id1:hex,id2:hex` (the environment and config form); whitespace around entries
    /// is ignored, an empty string is no keys, a key id given twice is an error.
    pub fn parse_list(s: &str) -> Result<Self, BundleError> {
        let mut keys = BTreeMap::new();
        for entry in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (id, hex) = entry
                .split_once(':')
                .ok_or_else(|| BundleError::Key(format!("`{entry}` is not `key_id:hex`")))?;
            let key = PublicKey::from_parts(id.trim(), hex.trim())?;
            if keys.insert(key.key_id.clone(), key).is_some() {
                return Err(BundleError::Key(format!(
                    "key id `{}` given twice",
                    id.trim()
                )));
            }
        }
        Ok(Self(keys))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn get(&self, key_id: &str) -> Option<&PublicKey> {
        self.0.get(key_id)
    }
}

//! Signed rule bundles: what the control plane stores and pushes and what every edge loads.
//!
//! A bundle carries one compiled rule program in two forms — the WebAssembly module the edges
//! run and the lowered [`ir::Program`] (catalog, rules, tests) everything else reads — plus a
//! [`Manifest`] that describes them. As with OPA bundles, **the signature covers a manifest
//! that lists every part's length and SHA-256**: verifying one ed25519 signature over the
//! manifest bytes, then each part against the manifest, authenticates the whole file, and a
//! part that is missing, altered, duplicated or not listed is refused. Nothing in a bundle is
//! used before [`verify`] has passed.
//!
//! # File layout
//!
//! ```text
//! signed:    b"TGBUNDLE" ‖ format (u32 LE) ‖ postcard(SignedEnvelope)
//! unsigned:  b"TGUNSIGN" ‖ format (u32 LE) ‖ postcard(UnsignedEnvelope)
//!
//! SignedEnvelope   { manifest_bytes: Vec<u8>, key_id: String, signature: Vec<u8> (64),
//!                    parts: Vec<(String, Vec<u8>)> }
//! UnsignedEnvelope { manifest_bytes: Vec<u8>, parts: Vec<(String, Vec<u8>)> }
//! manifest_bytes   = postcard(Manifest); the signature is ed25519 over exactly these bytes
//! parts            = "module.wasm" (the module), "program.postcard" (postcard(ir::Program))
//! ```
//!
//! The bundle holds no source text, only its hash (`source_hash` in the manifest): for one
//! file the SHA-256 of its text, for the files of a folder [`sources_hash`], so a folder's
//! bundle has the same format and parts as a file's.
//!
//! `tollgate-rules compile` writes the unsigned form; `tollgate-rules sign` (holding the
//! secret key, off the control plane) turns it into the signed form without touching the
//! manifest or the parts. The envelope is re-encoded, never the manifest, so the signed bytes
//! are exactly the bytes the compiler produced.
//!
//! # What [`verify`] checks, in order (each failure its own [`BundleError`])
//!
//! 1. The file is at most [`BUNDLE_BYTES_MAX`] bytes (`TooLarge`).
//! 2. The magic and the format version ([`FORMAT_VERSION`]), and the envelope decodes with no
//!    trailing bytes (`Malformed`, `UnsupportedFormat`).
//! 3. The signing key id is one of the trusted keys (`UnknownKey`).
//! 4. The signature is valid over the manifest bytes (`BadSignature`, strict verification).
//! 5. The manifest decodes, has this format, and lists each required part once
//!    (`Malformed`, `DuplicatePart`, `MissingPart`).
//! 6. No part appears twice in the file (`DuplicatePart`), every listed part is present
//!    (`MissingPart`) with the listed length and hash (`PartMismatch`), and no part is
//!    unlisted (`UnlistedPart`).
//! 7. The program decodes and matches the manifest: features, plans, add-ons, tests and rule
//!    names are equal (`Malformed`, `ProgramMismatch`).
//! 8. The manifest is one the compiler could have made ([`check_manifest`], which
//!    [`build`] runs too): its version is in [`BUNDLE_VERSION_MIN`]..=[`BUNDLE_VERSION_MAX`]
//!    (`InvalidVersion`), its catalog and names keep the bounds of [`crate::bounds`]
//!    (`Catalog`: keys, display names, prices, trials, meter pricing), and it has features,
//!    plans and tests (`Incomplete`). So a bundle from an older compiler, or made by hand,
//!    that the control plane could not store or an edge should not serve is refused here,
//!    with a typed error, on the upload path and on every edge alike.
//!
//! The module is not compiled here: the host ([`crate::host`]) validates it against the
//! program's shape when it is loaded, and [`crate::compiler::run_tests`] runs the embedded
//! tests before the bundle is activated.
//!
//! # Keys
//!
//! ed25519. Key files are one line of text: `tollgate-ed25519-secret <key_id> <hex>` (written
//! with mode 0600 by the CLI) and `tollgate-ed25519 <key_id> <hex>`. Verifiers hold a set of
//! [`TrustedKeys`] by key id, so keys rotate by trusting the new key, re-signing, then
//! dropping the old one. Key ids are 1–64 characters of `A-Z a-z 0-9 . _ -`.
//!
//! # Limits
//!
//! [`BUNDLE_BYTES_MAX`] for the whole file; decoding is bounded by the input (postcard reads
//! lengths from the input and never allocates past what is there).

mod keys;

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::bounds::{self, CatalogIssue, Missing};
use crate::compiler::{COMPILER_VERSION, Compiled};
use crate::ir;
use crate::lang::Sources;

pub use keys::{KEY_ID_CHARS_MAX, PublicKey, SigningKey, TrustedKeys, is_valid_key_id};

/// Largest bundle file accepted or built.
pub const BUNDLE_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Version of this layout, in the file header and the manifest. Version 3: the module follows
/// ABI 3 (batched evaluation, 1-byte pages, no state but its memory). Version 2 (ABI 2 modules)
/// and version 1 (one `i64` for both "none" and "unlimited") are refused as
/// `UnsupportedFormat` rather than misread: rebuild them from their source.
pub const FORMAT_VERSION: u32 = 3;
/// Magic of a signed bundle file.
pub const SIGNED_MAGIC: &[u8; 8] = b"TGBUNDLE";
/// Magic of an unsigned bundle file (`tollgate-rules compile` output).
pub const UNSIGNED_MAGIC: &[u8; 8] = b"TGUNSIGN";
/// Name of the WebAssembly module part.
pub const MODULE_PART: &str = "module.wasm";
/// Name of the lowered program part (postcard of [`ir::Program`]).
pub const PROGRAM_PART: &str = "program.postcard";
/// Smallest bundle version.
pub const BUNDLE_VERSION_MIN: u64 = 1;
/// Largest bundle version: the control plane stores versions as PostgreSQL `bigint`.
pub const BUNDLE_VERSION_MAX: u64 = i64::MAX as u64;
/// Catalog issues named in a [`BundleError::Catalog`] message; the rest are counted.
pub const CATALOG_ISSUES_SHOWN: usize = 10;

const HEADER_BYTES: usize = 12;

/// One part of a bundle as the manifest lists it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct PartEntry {
    pub name: String,
    /// Lower-case hex SHA-256 of the part's bytes.
    pub sha256: String,
    pub len: u64,
}

/// What a bundle holds; the signed object.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Manifest {
    pub format: u32,
    /// Monotonic version chosen at compile time (default: Unix seconds).
    pub bundle_version: u64,
    /// Lower-case hex SHA-256 of the source text; of a program of several files, see
    /// [`sources_hash`].
    pub source_hash: String,
    pub compiler_version: String,
    pub created_at_ms: i64,
    pub features: Vec<ir::Feature>,
    pub plans: Vec<ir::Plan>,
    pub addons: Vec<ir::Addon>,
    pub tests: Vec<ir::TestCase>,
    pub rule_names: Vec<String>,
    /// Exactly [`MODULE_PART`] and [`PROGRAM_PART`].
    pub parts: Vec<PartEntry>,
}

/// Why a bundle was refused or could not be made. None is helped by retrying with the same
/// bytes; every one means the file is not to be used.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The file is larger than [`BUNDLE_BYTES_MAX`].
    #[error("bundle is {len} bytes, more than the {max} allowed")]
    TooLarge { len: usize, max: usize },
    /// Not a bundle, truncated, or bytes that do not decode.
    #[error("malformed bundle: {0}")]
    Malformed(String),
    /// A bundle of another format version.
    #[error("bundle format {0} is not supported (this build reads format {FORMAT_VERSION})")]
    UnsupportedFormat(u32),
    /// Signed by a key id that is not trusted (never seen, or rotated out).
    #[error("bundle is signed by key `{0}`, which is not trusted")]
    UnknownKey(String),
    /// The signature does not verify over the manifest: tampered, or signed by another key
    /// that reused the id.
    #[error("bundle signature does not verify")]
    BadSignature,
    /// The manifest lists a part that is not in the file, or a required part is not listed.
    #[error("bundle part `{0}` is missing")]
    MissingPart(String),
    /// The file has a part the manifest does not list.
    #[error("bundle part `{0}` is not listed in the manifest")]
    UnlistedPart(String),
    /// A part name appears twice (in the file or in the manifest).
    #[error("bundle part `{0}` appears more than once")]
    DuplicatePart(String),
    /// A part whose length or SHA-256 differs from the manifest's.
    #[error("bundle part `{0}` does not match the manifest's length and hash")]
    PartMismatch(String),
    /// The program part describes another catalog, other tests or other rules than the
    /// manifest.
    #[error("the program in the bundle does not match its manifest")]
    ProgramMismatch,
    /// A version outside [`BUNDLE_VERSION_MIN`]..=[`BUNDLE_VERSION_MAX`].
    #[error(
        "bundle version {0} is outside {BUNDLE_VERSION_MIN}..={BUNDLE_VERSION_MAX} \
         (versions are stored as bigint)"
    )]
    InvalidVersion(u64),
    /// Catalog entries or names outside the bounds of [`crate::bounds`] (a bundle made by an
    /// older compiler, or by hand).
    #[error("the bundle's catalog breaks its bounds: {0}")]
    Catalog(CatalogIssues),
    /// A bundle without features, plans or tests.
    #[error("the bundle has {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))]
    Incomplete(Vec<Missing>),
    /// A key file or key list that does not parse.
    #[error("bad key: {0}")]
    Key(String),
    /// The bundle could not be encoded (building only).
    #[error("cannot encode bundle: {0}")]
    Encode(String),
}

/// The issues of a [`BundleError::Catalog`]; its message names the first
/// [`CATALOG_ISSUES_SHOWN`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogIssues(pub Vec<CatalogIssue>);

impl std::fmt::Display for CatalogIssues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown: Vec<String> = self
            .0
            .iter()
            .take(CATALOG_ISSUES_SHOWN)
            .map(ToString::to_string)
            .collect();
        f.write_str(&shown.join("; "))?;
        match self.0.len().saturating_sub(CATALOG_ISSUES_SHOWN) {
            0 => Ok(()),
            more => write!(f, "; and {more} more"),
        }
    }
}

/// Step 8 of the module doc: what [`build`] refuses to make and [`verify`] refuses to read.
pub fn check_manifest(m: &Manifest) -> Result<(), BundleError> {
    if !(BUNDLE_VERSION_MIN..=BUNDLE_VERSION_MAX).contains(&m.bundle_version) {
        return Err(BundleError::InvalidVersion(m.bundle_version));
    }
    bounds::validate(
        &m.features,
        &m.plans,
        &m.addons,
        m.rule_names.iter().map(String::as_str),
        m.tests.iter().map(|t| t.name.as_str()),
    )
    .map_err(|issues| BundleError::Catalog(CatalogIssues(issues)))?;
    let missing = bounds::missing_parts(m.features.len(), m.plans.len(), m.tests.len());
    if !missing.is_empty() {
        return Err(BundleError::Incomplete(missing));
    }
    Ok(())
}

// Building

/// A bundle before signing: its manifest and its parts.
#[derive(Clone, Debug, PartialEq)]
pub struct UnsignedBundle {
    pub manifest: Manifest,
    pub parts: Vec<(String, Vec<u8>)>,
}

#[derive(Serialize, Deserialize)]
struct SignedEnvelope {
    manifest_bytes: Vec<u8>,
    key_id: String,
    signature: Vec<u8>,
    parts: Vec<(String, Vec<u8>)>,
}

#[derive(Serialize, Deserialize)]
struct UnsignedEnvelope {
    manifest_bytes: Vec<u8>,
    parts: Vec<(String, Vec<u8>)>,
}

/// Lower-case hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn entry(name: &str, bytes: &[u8]) -> PartEntry {
    PartEntry {
        name: name.into(),
        sha256: sha256_hex(bytes),
        len: bytes.len() as u64,
    }
}

/// Domain separation of [`sources_hash`] for several files. A text that starts with a NUL
/// byte does not compile, so no single file's hash is a folder's.
const SOURCES_HASH_PREFIX: &[u8] = b"\0tollgate-rules sources 1\n";

/// The `source_hash` of a program's sources, lower-case hex SHA-256: of one file, its text
/// (what [`build`] records); of several, of `SOURCES_HASH_PREFIX` followed, file by file in
/// compilation order, by the text's length (u64 little-endian) and the text. File names are
/// left out: they change nothing in the program, so a folder moved or a file renamed keeps
/// its hash, while a change in the order of the files changes it.
pub fn sources_hash(sources: &Sources) -> String {
    match sources.files() {
        [one] => sha256_hex(one.text.as_bytes()),
        files => {
            let mut hash = Sha256::new();
            hash.update(SOURCES_HASH_PREFIX);
            for f in files {
                hash.update((f.text.len() as u64).to_le_bytes());
                hash.update(f.text.as_bytes());
            }
            hex::encode(hash.finalize())
        }
    }
}

/// Makes the unsigned bundle of a compiled program. Refuses what [`verify`] would refuse in
/// a manifest ([`check_manifest`]): a version outside
/// [`BUNDLE_VERSION_MIN`]..=[`BUNDLE_VERSION_MAX`] (`InvalidVersion`), for one.
pub fn build(
    compiled: &Compiled,
    source_text: &str,
    bundle_version: u64,
    created_at_ms: i64,
) -> Result<UnsignedBundle, BundleError> {
    build_hashed(
        compiled,
        sha256_hex(source_text.as_bytes()),
        bundle_version,
        created_at_ms,
    )
}

/// [`build`] for a program compiled from `sources` (one file or several), recording
/// [`sources_hash`]. For one file it is [`build`] of its text.
pub fn build_sources(
    compiled: &Compiled,
    sources: &Sources,
    bundle_version: u64,
    created_at_ms: i64,
) -> Result<UnsignedBundle, BundleError> {
    build_hashed(
        compiled,
        sources_hash(sources),
        bundle_version,
        created_at_ms,
    )
}

fn build_hashed(
    compiled: &Compiled,
    source_hash: String,
    bundle_version: u64,
    created_at_ms: i64,
) -> Result<UnsignedBundle, BundleError> {
    let program = &compiled.program;
    let program_bytes =
        postcard::to_allocvec(program).map_err(|e| BundleError::Encode(e.to_string()))?;
    let manifest = Manifest {
        format: FORMAT_VERSION,
        bundle_version,
        source_hash,
        compiler_version: COMPILER_VERSION.into(),
        created_at_ms,
        features: program.features.clone(),
        plans: program.plans.clone(),
        addons: program.addons.clone(),
        tests: program.tests.clone(),
        rule_names: program.rules.iter().map(|r| r.name.clone()).collect(),
        parts: vec![
            entry(MODULE_PART, &compiled.module),
            entry(PROGRAM_PART, &program_bytes),
        ],
    };
    check_manifest(&manifest)?;
    // Check the manifest encodes now, so encode() and sign() cannot meet an error later.
    let manifest_len = postcard::to_allocvec(&manifest)
        .map_err(|e| BundleError::Encode(e.to_string()))?
        .len();
    let bundle = UnsignedBundle {
        manifest,
        parts: vec![
            (MODULE_PART.into(), compiled.module.clone()),
            (PROGRAM_PART.into(), program_bytes),
        ],
    };
    // Header, signature, key id and framing are well under 1 KiB.
    let len = manifest_len + bundle.parts.iter().map(|(_, b)| b.len()).sum::<usize>() + 1024;
    if len > BUNDLE_BYTES_MAX {
        return Err(BundleError::TooLarge {
            len,
            max: BUNDLE_BYTES_MAX,
        });
    }
    Ok(bundle)
}

fn header(magic: &[u8; 8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES);
    out.extend_from_slice(magic);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out
}

/// postcard of a value made only of integers, strings, vectors, options and derive-serialized
/// structs and enums into a growable vector: it cannot fail. Should it ever, the bytes are
/// left empty, which no reader accepts (fail closed rather than panic).
fn encode_infallible<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).unwrap_or_default()
}

impl UnsignedBundle {
    fn manifest_bytes(&self) -> Vec<u8> {
        encode_infallible(&self.manifest)
    }

    /// The unsigned bundle file (`TGUNSIGN` form).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = header(UNSIGNED_MAGIC);
        out.extend(encode_infallible(&UnsignedEnvelope {
            manifest_bytes: self.manifest_bytes(),
            parts: self.parts.clone(),
        }));
        out
    }

    /// Reads an unsigned bundle file. The parts are returned as they are: [`verify`] (after
    /// signing) or [`inspect`] check them against the manifest.
    pub fn decode(b: &[u8]) -> Result<Self, BundleError> {
        let body = body(b, UNSIGNED_MAGIC)?;
        let env: UnsignedEnvelope = decode_exact(body, "envelope")?;
        Ok(Self {
            manifest: decode_exact(&env.manifest_bytes, "manifest")?,
            parts: env.parts,
        })
    }

    /// The signed bundle file: the manifest bytes signed by `key`.
    pub fn sign(&self, key: &SigningKey) -> Vec<u8> {
        let manifest_bytes = self.manifest_bytes();
        let signature = key.signature(&manifest_bytes);
        let mut out = header(SIGNED_MAGIC);
        out.extend(encode_infallible(&SignedEnvelope {
            manifest_bytes,
            key_id: key.key_id.clone(),
            signature,
            parts: self.parts.clone(),
        }));
        out
    }
}

// ---------------------------------------------------------------------------------------------
// Reading and verifying

/// A bundle whose signature, parts and program all checked out.
#[derive(Clone, Debug)]
pub struct VerifiedBundle {
    pub manifest: Manifest,
    pub program: ir::Program,
    pub module: Vec<u8>,
    pub key_id: String,
    /// Lower-case hex SHA-256 of the whole file.
    pub sha256: String,
}

/// A bundle read for display or comparison: parts and program checked against the manifest,
/// the signature (if any) **not** verified.
#[derive(Clone, Debug)]
pub struct InspectedBundle {
    pub manifest: Manifest,
    pub program: ir::Program,
    pub module: Vec<u8>,
    /// The key id a signed bundle names; `None` for an unsigned bundle.
    pub key_id: Option<String>,
    pub sha256: String,
}

fn check_size(bytes: &[u8]) -> Result<(), BundleError> {
    if bytes.len() > BUNDLE_BYTES_MAX {
        return Err(BundleError::TooLarge {
            len: bytes.len(),
            max: BUNDLE_BYTES_MAX,
        });
    }
    Ok(())
}

/// The bytes after the header, once magic and format are right.
fn body<'a>(bytes: &'a [u8], magic: &[u8; 8]) -> Result<&'a [u8], BundleError> {
    check_size(bytes)?;
    if bytes.len() < HEADER_BYTES {
        return Err(BundleError::Malformed(format!(
            "{} bytes is too short for a bundle header",
            bytes.len()
        )));
    }
    let (head, rest) = bytes.split_at(HEADER_BYTES);
    if &head[..8] != magic {
        let what = if &head[..8] == SIGNED_MAGIC {
            "a signed bundle"
        } else if &head[..8] == UNSIGNED_MAGIC {
            "an unsigned bundle (sign it first)"
        } else {
            "not a bundle"
        };
        return Err(BundleError::Malformed(format!(
            "wrong magic: {what}, expected `{}`",
            String::from_utf8_lossy(magic)
        )));
    }
    let mut format = [0u8; 4];
    format.copy_from_slice(&head[8..]);
    let format = u32::from_le_bytes(format);
    if format != FORMAT_VERSION {
        return Err(BundleError::UnsupportedFormat(format));
    }
    Ok(rest)
}

/// Decodes all of `bytes` as one `T`: trailing bytes are refused.
fn decode_exact<'a, T: Deserialize<'a>>(bytes: &'a [u8], what: &str) -> Result<T, BundleError> {
    let (value, rest) = postcard::take_from_bytes(bytes)
        .map_err(|e| BundleError::Malformed(format!("{what} does not decode: {e}")))?;
    if !rest.is_empty() {
        return Err(BundleError::Malformed(format!(
            "{} bytes after the {what}",
            rest.len()
        )));
    }
    Ok(value)
}

/// Verifies a signed bundle file against the trusted keys; see the module doc for the checks.
pub fn verify(bytes: &[u8], trusted: &TrustedKeys) -> Result<VerifiedBundle, BundleError> {
    let env: SignedEnvelope = decode_exact(body(bytes, SIGNED_MAGIC)?, "envelope")?;
    let key = trusted
        .get(&env.key_id)
        .ok_or_else(|| BundleError::UnknownKey(env.key_id.clone()))?;
    key.verify(&env.manifest_bytes, &env.signature)?;
    let (manifest, program, module) = check_contents(&env.manifest_bytes, env.parts)?;
    Ok(VerifiedBundle {
        manifest,
        program,
        module,
        key_id: env.key_id,
        sha256: sha256_hex(bytes),
    })
}

/// Reads a signed or unsigned bundle without verifying a signature, checking everything else
/// [`verify`] checks. For display and comparison (`inspect`, `diff`), never for serving.
pub fn inspect(bytes: &[u8]) -> Result<InspectedBundle, BundleError> {
    check_size(bytes)?;
    let (manifest_bytes, parts, key_id) = if bytes.starts_with(UNSIGNED_MAGIC) {
        let env: UnsignedEnvelope = decode_exact(body(bytes, UNSIGNED_MAGIC)?, "envelope")?;
        (env.manifest_bytes, env.parts, None)
    } else {
        let env: SignedEnvelope = decode_exact(body(bytes, SIGNED_MAGIC)?, "envelope")?;
        (env.manifest_bytes, env.parts, Some(env.key_id))
    };
    let (manifest, program, module) = check_contents(&manifest_bytes, parts)?;
    Ok(InspectedBundle {
        manifest,
        program,
        module,
        key_id,
        sha256: sha256_hex(bytes),
    })
}

/// Steps 5–8 of the module doc: manifest, parts, program, bounds.
fn check_contents(
    manifest_bytes: &[u8],
    parts: Vec<(String, Vec<u8>)>,
) -> Result<(Manifest, ir::Program, Vec<u8>), BundleError> {
    let manifest: Manifest = decode_exact(manifest_bytes, "manifest")?;
    if manifest.format != FORMAT_VERSION {
        return Err(BundleError::UnsupportedFormat(manifest.format));
    }
    let mut listed = HashSet::new();
    for e in &manifest.parts {
        if !listed.insert(e.name.as_str()) {
            return Err(BundleError::DuplicatePart(e.name.clone()));
        }
    }
    for required in [MODULE_PART, PROGRAM_PART] {
        if !listed.contains(required) {
            return Err(BundleError::MissingPart(required.into()));
        }
    }
    let mut present = HashSet::new();
    for (name, _) in &parts {
        if !present.insert(name.as_str()) {
            return Err(BundleError::DuplicatePart(name.clone()));
        }
    }
    let mut module = None;
    let mut program_bytes = None;
    for e in &manifest.parts {
        let (_, bytes) = parts
            .iter()
            .find(|(name, _)| *name == e.name)
            .ok_or_else(|| BundleError::MissingPart(e.name.clone()))?;
        if bytes.len() as u64 != e.len || sha256_hex(bytes) != e.sha256 {
            return Err(BundleError::PartMismatch(e.name.clone()));
        }
        match e.name.as_str() {
            MODULE_PART => module = Some(bytes),
            PROGRAM_PART => program_bytes = Some(bytes),
            _ => {}
        }
    }
    if let Some((name, _)) = parts
        .iter()
        .find(|(name, _)| !listed.contains(name.as_str()))
    {
        return Err(BundleError::UnlistedPart(name.clone()));
    }
    let (Some(module), Some(program_bytes)) = (module, program_bytes) else {
        return Err(BundleError::MissingPart(MODULE_PART.into()));
    };
    let program: ir::Program = decode_exact(program_bytes, "program")?;
    let rule_names: Vec<&str> = program.rules.iter().map(|r| r.name.as_str()).collect();
    if program.features != manifest.features
        || program.plans != manifest.plans
        || program.addons != manifest.addons
        || program.tests != manifest.tests
        || rule_names != manifest.rule_names
    {
        return Err(BundleError::ProgramMismatch);
    }
    check_manifest(&manifest)?;
    let module = module.clone();
    Ok((manifest, program, module))
}

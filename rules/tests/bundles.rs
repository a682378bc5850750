//! Signed bundles: the demo round-trips through build, encode, sign and verify, and every
//! kind of tampering is refused with its own error.

use tollgate_rules::bounds::{Missing, Site};
use tollgate_rules::bundle::{
    self, BUNDLE_BYTES_MAX, BundleError, FORMAT_VERSION, MODULE_PART, PROGRAM_PART, PublicKey,
    SigningKey, TrustedKeys, UnsignedBundle,
};
use tollgate_rules::compiler::{self, COMPILER_VERSION, Compiled};
use tollgate_rules::host::RulesEngine;
use tollgate_rules::lang::SourceFile;

const DEMO: &str = tollgate_rules::DEMO_SOURCE;
const CREATED_AT_MS: i64 = 1_700_000_000_000;

fn compiled() -> Compiled {
    let file = SourceFile {
        name: "demo.tg".into(),
        text: DEMO.into(),
    };
    compiler::compile(&file).expect("demo compiles and its tests pass")
}

fn unsigned() -> UnsignedBundle {
    bundle::build(&compiled(), DEMO, 7, CREATED_AT_MS).expect("builds")
}

fn trusting(keys: &[&SigningKey]) -> TrustedKeys {
    TrustedKeys::new(keys.iter().map(|k| k.public()).collect())
}

/// Offset of `needle` in `haystack`, which must contain it exactly once.
fn find_once(haystack: &[u8], needle: &[u8]) -> usize {
    let hits: Vec<usize> = haystack
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(hits.len(), 1, "needle found {} times", hits.len());
    hits[0]
}

fn flipped(bytes: &[u8], at: usize) -> Vec<u8> {
    let mut out = bytes.to_vec();
    out[at] ^= 0x01;
    out
}

#[test]
fn demo_round_trips_through_sign_and_verify() {
    let compiled = compiled();
    let unsigned = bundle::build(&compiled, DEMO, 7, CREATED_AT_MS).expect("builds");
    assert_eq!(
        UnsignedBundle::decode(&unsigned.encode()).expect("decodes"),
        unsigned
    );
    let key = SigningKey::generate("release-1");
    let signed = unsigned.sign(&key);
    assert!(signed.starts_with(b"TGBUNDLE"));
    assert_eq!(signed, unsigned.sign(&key), "signing is deterministic");

    let v = bundle::verify(&signed, &trusting(&[&key])).expect("verifies");
    assert_eq!(v.key_id, "release-1");
    assert_eq!(v.sha256, bundle::sha256_hex(&signed));
    assert_eq!(v.program, compiled.program);
    assert_eq!(v.module, compiled.module);
    let m = &v.manifest;
    assert_eq!(
        (m.format, m.bundle_version, m.created_at_ms),
        (FORMAT_VERSION, 7, CREATED_AT_MS)
    );
    assert_eq!(m.source_hash, bundle::sha256_hex(DEMO.as_bytes()));
    assert_eq!(m.compiler_version, COMPILER_VERSION);
    assert_eq!(m.features, compiled.program.features);
    assert_eq!(m.plans, compiled.program.plans);
    assert_eq!(m.addons, compiled.program.addons);
    assert_eq!(m.tests.len(), 10);
    assert_eq!(
        m.rule_names,
        ["banned", "late exports", "read-only when dunning"]
    );
    let parts: Vec<(&str, u64)> = m.parts.iter().map(|p| (p.name.as_str(), p.len)).collect();
    assert_eq!(
        parts,
        [
            (MODULE_PART, compiled.module.len() as u64),
            (PROGRAM_PART, unsigned.parts[1].1.len() as u64)
        ]
    );

    // What an edge does next: load the module and run the bundle's own tests against it.
    let rules = RulesEngine::new()
        .expect("engine")
        .load(&v.module, v.program.shape())
        .expect("loads");
    assert_eq!(compiler::run_tests(&v.program, &rules), Ok(10));

    // inspect reads both forms without keys.
    let i = bundle::inspect(&signed).expect("inspects");
    assert_eq!(i.key_id.as_deref(), Some("release-1"));
    let i = bundle::inspect(&unsigned.encode()).expect("inspects unsigned");
    assert_eq!(i.key_id, None);
    assert_eq!(i.program, compiled.program);
}

#[test]
fn a_bundle_signed_by_an_unknown_key_is_refused() {
    let (k1, k2) = (SigningKey::generate("k1"), SigningKey::generate("k2"));
    let signed = unsigned().sign(&k1);
    assert!(matches!(
        bundle::verify(&signed, &trusting(&[&k2])),
        Err(BundleError::UnknownKey(id)) if id == "k1"
    ));
    assert!(matches!(
        bundle::verify(&signed, &TrustedKeys::default()),
        Err(BundleError::UnknownKey(_))
    ));
}

#[test]
fn a_different_key_reusing_a_trusted_id_fails_the_signature() {
    let real = SigningKey::generate("k1");
    let impostor = SigningKey::generate("k1");
    let signed = unsigned().sign(&impostor);
    assert!(matches!(
        bundle::verify(&signed, &trusting(&[&real])),
        Err(BundleError::BadSignature)
    ));
}

#[test]
fn a_flipped_byte_in_the_manifest_fails_the_signature() {
    let key = SigningKey::generate("k1");
    let unsigned = unsigned();
    let signed = unsigned.sign(&key);
    // The source hash is only in the manifest; altering it keeps the manifest decodable.
    let at = find_once(&signed, unsigned.manifest.source_hash.as_bytes());
    let tampered = flipped(&signed, at + 3);
    assert!(matches!(
        bundle::verify(&tampered, &trusting(&[&key])),
        Err(BundleError::BadSignature)
    ));
    // And the signature itself: after the key id ("k1", length 2) and its length (64).
    let sig_at = find_once(&signed, b"\x02k1\x40") + 4;
    assert!(matches!(
        bundle::verify(&flipped(&signed, sig_at + 10), &trusting(&[&key])),
        Err(BundleError::BadSignature)
    ));
}

#[test]
fn a_flipped_byte_in_the_module_part_is_refused() {
    let key = SigningKey::generate("k1");
    let unsigned = unsigned();
    let signed = unsigned.sign(&key);
    let module = &unsigned.parts[0].1;
    let at = find_once(&signed, module) + module.len() / 2;
    assert!(matches!(
        bundle::verify(&flipped(&signed, at), &trusting(&[&key])),
        Err(BundleError::PartMismatch(name)) if name == MODULE_PART
    ));
}

#[test]
fn a_flipped_byte_in_the_program_part_is_refused() {
    let key = SigningKey::generate("k1");
    let unsigned = unsigned();
    let signed = unsigned.sign(&key);
    let program = &unsigned.parts[1].1;
    let at = find_once(&signed, program) + program.len() / 2;
    assert!(matches!(
        bundle::verify(&flipped(&signed, at), &trusting(&[&key])),
        Err(BundleError::PartMismatch(name)) if name == PROGRAM_PART
    ));
}

#[test]
fn a_missing_part_is_refused() {
    let key = SigningKey::generate("k1");
    let mut u = unsigned();
    u.parts.remove(0);
    assert!(matches!(
        bundle::verify(&u.sign(&key), &trusting(&[&key])),
        Err(BundleError::MissingPart(name)) if name == MODULE_PART
    ));
    // A manifest that does not list a required part is refused as well.
    let mut u = unsigned();
    u.manifest.parts.remove(1);
    u.parts.remove(1);
    assert!(matches!(
        bundle::verify(&u.sign(&key), &trusting(&[&key])),
        Err(BundleError::MissingPart(name)) if name == PROGRAM_PART
    ));
}

#[test]
fn an_unlisted_part_is_refused() {
    let key = SigningKey::generate("k1");
    let mut u = unsigned();
    u.parts.push(("notes.txt".into(), b"hello".to_vec()));
    assert!(matches!(
        bundle::verify(&u.sign(&key), &trusting(&[&key])),
        Err(BundleError::UnlistedPart(name)) if name == "notes.txt"
    ));
}

#[test]
fn a_duplicate_part_is_refused() {
    let key = SigningKey::generate("k1");
    // The same part twice, both copies intact.
    let mut u = unsigned();
    u.parts.push(u.parts[0].clone());
    assert!(matches!(
        bundle::verify(&u.sign(&key), &trusting(&[&key])),
        Err(BundleError::DuplicatePart(name)) if name == MODULE_PART
    ));
    // A second copy with other bytes (which one would a reader use?).
    let mut u = unsigned();
    u.parts
        .insert(0, (MODULE_PART.into(), b"\0asm evil".to_vec()));
    assert!(matches!(
        bundle::verify(&u.sign(&key), &trusting(&[&key])),
        Err(BundleError::DuplicatePart(_))
    ));
    // Listed twice in the manifest.
    let mut u = unsigned();
    u.manifest.parts.push(u.manifest.parts[1].clone());
    assert!(matches!(
        bundle::verify(&u.sign(&key), &trusting(&[&key])),
        Err(BundleError::DuplicatePart(name)) if name == PROGRAM_PART
    ));
}

#[test]
fn an_oversize_file_is_refused_before_anything_is_read() {
    let mut bytes = unsigned().sign(&SigningKey::generate("k1"));
    bytes.resize(BUNDLE_BYTES_MAX + 1, 0);
    assert!(matches!(
        bundle::verify(&bytes, &TrustedKeys::default()),
        Err(BundleError::TooLarge { len, max }) if len == BUNDLE_BYTES_MAX + 1 && max == BUNDLE_BYTES_MAX
    ));
    assert!(matches!(
        bundle::inspect(&bytes),
        Err(BundleError::TooLarge { .. })
    ));
}

#[test]
fn truncated_files_are_malformed() {
    let key = SigningKey::generate("k1");
    let signed = unsigned().sign(&key);
    for len in [0, 5, 12, 13, 100, signed.len() / 2, signed.len() - 1] {
        let r = bundle::verify(&signed[..len], &trusting(&[&key]));
        assert!(
            matches!(r, Err(BundleError::Malformed(_))),
            "truncated to {len}: {r:?}"
        );
    }
    let mut trailing = signed.clone();
    trailing.push(0);
    assert!(matches!(
        bundle::verify(&trailing, &trusting(&[&key])),
        Err(BundleError::Malformed(m)) if m.contains("after the envelope")
    ));
}

#[test]
fn wrong_magic_or_format_is_refused() {
    let key = SigningKey::generate("k1");
    let unsigned = unsigned();
    let signed = unsigned.sign(&key);
    let mut wrong = signed.clone();
    wrong[..8].copy_from_slice(b"PK\x03\x04zip!");
    assert!(matches!(
        bundle::verify(&wrong, &trusting(&[&key])),
        Err(BundleError::Malformed(m)) if m.contains("not a bundle")
    ));
    assert!(matches!(
        bundle::verify(&unsigned.encode(), &trusting(&[&key])),
        Err(BundleError::Malformed(m)) if m.contains("unsigned")
    ));
    let mut future = signed.clone();
    future[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
    assert!(matches!(
        bundle::verify(&future, &trusting(&[&key])),
        Err(BundleError::UnsupportedFormat(v)) if v == FORMAT_VERSION + 1
    ));
    // Bundles of the formats before limits were typed (1) and before ABI 3 modules (2) are
    // refused, not misread.
    for format in [1u32, 2] {
        let mut old = signed.clone();
        old[8..12].copy_from_slice(&format.to_le_bytes());
        assert!(matches!(
            bundle::verify(&old, &trusting(&[&key])),
            Err(BundleError::UnsupportedFormat(v)) if v == format
        ));
    }
    assert!(UnsignedBundle::decode(&signed).is_err());
}

#[test]
fn a_program_that_does_not_match_its_manifest_is_refused() {
    let key = SigningKey::generate("k1");
    let mut u = unsigned();
    u.manifest.rule_names.push("hidden".into());
    assert!(matches!(
        bundle::verify(&u.sign(&key), &trusting(&[&key])),
        Err(BundleError::ProgramMismatch)
    ));
    let mut u = unsigned();
    u.manifest.plans[1].price_minor = 1;
    assert!(matches!(
        bundle::verify(&u.sign(&key), &trusting(&[&key])),
        Err(BundleError::ProgramMismatch)
    ));
    // A program part that is listed correctly but does not decode.
    let mut u = unsigned();
    let junk = vec![0xff; 16];
    u.manifest.parts[1].sha256 = bundle::sha256_hex(&junk);
    u.manifest.parts[1].len = junk.len() as u64;
    u.parts[1].1 = junk;
    assert!(matches!(
        bundle::verify(&u.sign(&key), &trusting(&[&key])),
        Err(BundleError::Malformed(m)) if m.contains("program")
    ));
}

#[test]
fn keys_rotate_by_trusting_both_then_dropping_the_old_one() {
    let (old, new) = (SigningKey::generate("2024"), SigningKey::generate("2025"));
    let u = unsigned();
    let (by_old, by_new) = (u.sign(&old), u.sign(&new));
    let both = trusting(&[&old, &new]);
    assert_eq!(bundle::verify(&by_old, &both).expect("old").key_id, "2024");
    assert_eq!(bundle::verify(&by_new, &both).expect("new").key_id, "2025");
    let only_new = trusting(&[&new]);
    assert!(matches!(
        bundle::verify(&by_old, &only_new),
        Err(BundleError::UnknownKey(id)) if id == "2024"
    ));
    assert!(bundle::verify(&by_new, &only_new).is_ok());
    // The same through the environment form.
    let list = format!("2024:{}, 2025:{}", old.public().hex(), new.public().hex());
    let parsed = TrustedKeys::parse_list(&list).expect("parses");
    assert!(bundle::verify(&by_old, &parsed).is_ok());
    assert!(bundle::verify(&by_new, &parsed).is_ok());
}

#[test]
fn key_files_round_trip_and_bad_ones_are_refused() {
    let key = SigningKey::generate("ops.k-1");
    let text = key.to_file_string();
    assert!(text.starts_with("tollgate-ed25519-secret ops.k-1 "));
    let again = SigningKey::from_file_string(&text).expect("parses");
    let u = unsigned();
    assert_eq!(u.sign(&again), u.sign(&key));
    assert!(
        !format!("{key:?}").contains(text.split_whitespace().nth(2).expect("hex")),
        "Debug must not show the secret"
    );

    let public = key.public();
    let text = public.to_file_string();
    assert_eq!(text, format!("tollgate-ed25519 ops.k-1 {}\n", public.hex()));
    assert_eq!(PublicKey::from_file_string(&text).expect("parses"), public);

    for bad in [
        "",
        "tollgate-ed25519 k1",
        "tollgate-ed25519 k1 zz",
        "tollgate-ed25519 k1 abcd",
        "tollgate-ed25519 bad:id 00",
        "ssh-ed25519 k1 00",
        "tollgate-ed25519 k1 00 extra",
    ] {
        assert!(
            matches!(PublicKey::from_file_string(bad), Err(BundleError::Key(_))),
            "{bad:?}"
        );
    }
    // A secret key file is not a public key file and vice versa.
    assert!(PublicKey::from_file_string(&key.to_file_string()).is_err());
    assert!(SigningKey::from_file_string(&public.to_file_string()).is_err());

    assert!(TrustedKeys::parse_list("").expect("empty").is_empty());
    let hex = public.hex();
    for bad in [
        format!("k1{hex}"),
        format!("k1:{hex},k1:{hex}"),
        "k1:00".to_string(),
        format!("k 1:{hex}"),
    ] {
        assert!(
            matches!(TrustedKeys::parse_list(&bad), Err(BundleError::Key(_))),
            "{bad:?}"
        );
    }
}

/// `u` with its program replaced by `program` and the manifest describing it, as an older
/// compiler (or a hand) could have made it: the parts and hashes agree, so only the bounds
/// of the manifest can refuse it.
fn with_program(mut u: UnsignedBundle, program: &tollgate_rules::ir::Program) -> UnsignedBundle {
    let bytes = postcard::to_allocvec(program).expect("encodes");
    u.manifest.features = program.features.clone();
    u.manifest.plans = program.plans.clone();
    u.manifest.addons = program.addons.clone();
    u.manifest.tests = program.tests.clone();
    u.manifest.rule_names = program.rules.iter().map(|r| r.name.clone()).collect();
    for e in &mut u.manifest.parts {
        if e.name == PROGRAM_PART {
            e.sha256 = bundle::sha256_hex(&bytes);
            e.len = bytes.len() as u64;
        }
    }
    for (name, part) in &mut u.parts {
        if name == PROGRAM_PART {
            part.clone_from(&bytes);
        }
    }
    u
}

#[test]
fn a_signed_bundle_whose_catalog_breaks_the_bounds_is_refused_with_a_typed_error() {
    let key = SigningKey::generate("k1");
    let mut program = compiled().program;
    program.plans[1].name = "Pro\0".into();
    program.features[3].key = "a".repeat(129);
    program.plans[2].trial_days = 100_000 * 365;
    let signed = with_program(unsigned(), &program).sign(&key);
    let err = bundle::verify(&signed, &trusting(&[&key])).expect_err("refused");
    let BundleError::Catalog(issues) = &err else {
        panic!("{err:?}")
    };
    let sites: Vec<Site> = issues.0.iter().map(|i| i.site).collect();
    assert_eq!(
        sites,
        [Site::FeatureKey(3), Site::PlanName(1), Site::PlanTrial(2)]
    );
    assert!(
        err.to_string()
            .contains("plan `pro`: the name contains a control character ('\\0')"),
        "{err}"
    );
    // `inspect` (and so `sign`, which inspects first) refuses it too.
    assert!(matches!(
        bundle::inspect(&signed),
        Err(BundleError::Catalog(_))
    ));
    // The message names a bounded number of issues, however many there are.
    let mut many = compiled().program;
    for p in &mut many.plans {
        p.name = String::new();
        p.price_minor = -1;
        p.currency = "usd".into();
        p.trial_days = u32::MAX;
    }
    let signed = with_program(unsigned(), &many).sign(&key);
    let err = bundle::verify(&signed, &trusting(&[&key])).expect_err("refused");
    assert!(err.to_string().ends_with("; and 2 more"), "{err}");
}

#[test]
fn a_signed_bundle_without_tests_or_with_an_unstorable_version_is_refused() {
    let key = SigningKey::generate("k1");
    let mut program = compiled().program;
    program.tests.clear();
    let signed = with_program(unsigned(), &program).sign(&key);
    assert!(matches!(
        bundle::verify(&signed, &trusting(&[&key])),
        Err(BundleError::Incomplete(missing)) if missing == [Missing::Tests]
    ));
    for version in [0, bundle::BUNDLE_VERSION_MAX + 1, u64::MAX] {
        let mut u = unsigned();
        u.manifest.bundle_version = version;
        assert!(
            matches!(
                bundle::verify(&u.sign(&key), &trusting(&[&key])),
                Err(BundleError::InvalidVersion(v)) if v == version
            ),
            "{version}"
        );
        assert!(matches!(
            bundle::build(&compiled(), DEMO, version, CREATED_AT_MS),
            Err(BundleError::InvalidVersion(v)) if v == version
        ));
    }
    let top = bundle::build(&compiled(), DEMO, bundle::BUNDLE_VERSION_MAX, CREATED_AT_MS)
        .expect("the largest version builds");
    assert!(bundle::verify(&top.sign(&key), &trusting(&[&key])).is_ok());
}

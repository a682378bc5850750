//! The rule language end to end: the demo catalog compiles to the legacy catalog's plans, the
//! lowered program and the rendered diagnostics of broken sources are golden files
//! (`UPDATE_EXPECT=1 cargo test -p tollgate-rules` rewrites them for review), and no input
//! makes the compiler panic.

use std::path::Path;

use expect_test::expect_file;
use proptest::prelude::*;
use tollgate_rules::ir::{self, NO_LIMIT};
use tollgate_rules::lang::{Diagnostic, Severity, SourceFile, compile_source};
use tollgate_rules::{Catalog, FeatureKind, Interval};

const DEMO: &str = include_str!("../examples/demo.tg");

fn demo() -> SourceFile {
    SourceFile {
        name: "demo.tg".into(),
        text: DEMO.into(),
    }
}

fn render_all(file: &SourceFile, diags: &[Diagnostic]) -> String {
    diags
        .iter()
        .map(|d| d.render(file))
        .collect::<Vec<_>>()
        .join("\n")
}

fn compile_demo() -> ir::Program {
    let file = demo();
    match compile_source(&file) {
        Ok((program, warnings)) => {
            assert!(warnings.is_empty(), "{}", render_all(&file, &warnings));
            program
        }
        Err(errors) => panic!("demo.tg does not compile:\n{}", render_all(&file, &errors)),
    }
}

#[test]
fn demo_catalog_compiles_to_the_legacy_demo_catalog() {
    let program = compile_demo();
    let legacy = Catalog::demo();
    let features: Vec<(String, FeatureKind, Option<String>)> = program
        .features
        .iter()
        .map(|f| {
            let kind = match f.kind {
                ir::FeatureKind::Bool => FeatureKind::Bool,
                ir::FeatureKind::Limit => FeatureKind::Limit,
                ir::FeatureKind::Metered => FeatureKind::Metered,
            };
            (f.key.clone(), kind, f.period.clone())
        })
        .collect();
    let legacy_features: Vec<(String, FeatureKind, Option<String>)> = legacy
        .features
        .iter()
        .map(|f| (f.key.clone(), f.kind, f.period.clone()))
        .collect();
    assert_eq!(features, legacy_features);

    let plans: Vec<tollgate_rules::Plan> = program
        .plans
        .iter()
        .map(|p| tollgate_rules::Plan {
            key: p.key.clone(),
            name: p.name.clone(),
            price_minor: p.price_minor,
            currency: p.currency.clone(),
            interval: match p.interval {
                ir::Interval::Month => Interval::Month,
                ir::Interval::Year => Interval::Year,
            },
            grants: p
                .grants
                .iter()
                .map(|g| tollgate_rules::Grant {
                    feature: program.features[g.feature as usize].key.clone(),
                    limit: (g.limit != NO_LIMIT).then_some(g.limit),
                })
                .collect(),
        })
        .collect();
    assert_eq!(plans, legacy.plans);
}

#[test]
fn demo_program_lowered_form() {
    let program = compile_demo();
    expect_file!["golden/demo_program.txt"].assert_eq(&format!("{program:#?}\n"));
}

#[test]
fn demo_rules_and_tests_are_all_there() {
    let program = compile_demo();
    let rules: Vec<&str> = program.rules.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(rules, ["banned", "late exports", "read-only when dunning"]);
    assert_eq!(program.tests.len(), 10);
    let len = ir::FactVector::len_for(program.shape());
    assert!(program.tests.iter().all(|t| t.given.0.len() == len));
}

/// Every `tests/diagnostics/*.tg` fails to compile; its rendered diagnostics are the golden
/// file next to it (`.txt`). Each file exercises one class of error.
#[test]
fn broken_sources_render_golden_diagnostics() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/diagnostics");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .expect("diagnostics dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "tg"))
        .collect();
    paths.sort();
    assert!(paths.len() >= 10, "only {} broken sources", paths.len());
    for path in paths {
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let file = SourceFile {
            name: name.clone(),
            text: std::fs::read_to_string(&path).expect("read"),
        };
        let diags = match compile_source(&file) {
            Ok((_, warnings)) => {
                assert!(!warnings.is_empty(), "{name} compiled without a diagnostic");
                warnings
            }
            Err(diags) => {
                assert!(diags.iter().any(|d| d.severity == Severity::Error));
                diags
            }
        };
        let golden = path.with_extension("txt");
        expect_file![golden].assert_eq(&render_all(&file, &diags));
    }
}

fn mutate(text: &str, edits: &[(usize, u8, u8)]) -> String {
    let mut bytes = text.as_bytes().to_vec();
    for &(at, op, byte) in edits {
        if bytes.is_empty() {
            bytes.push(byte);
            continue;
        }
        let at = at % bytes.len();
        match op % 3 {
            0 => bytes.insert(at, byte),
            1 => {
                bytes.remove(at);
            }
            _ => bytes[at] = byte,
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn compile_never_panics_on_arbitrary_text(text in "\\PC{0,400}") {
        let file = SourceFile { name: "fuzz.tg".into(), text };
        if let Err(diags) = compile_source(&file) {
            for d in &diags {
                let _ = d.render(&file);
            }
        }
    }

    #[test]
    fn compile_never_panics_on_language_like_text(
        words in proptest::collection::vec(
            prop_oneof![
                Just("feature"), Just("plan"), Just("addon"), Just("rule"), Just("test"),
                Just("{"), Just("}"), Just("("), Just(")"), Just("="), Just("=="), Just("=>"),
                Just("and"), Just("or"), Just("not"), Just("-"), Just("+"), Just("*"),
                Just("grant"), Just("deny"), Just("all"), Just("metered"), Just("cap"),
                Just("sso"), Just("seats"), Just("\"x\""), Just("1"), Just("99999999999999999999"),
                Just("given"), Just("expect"), Just("\n"), Just(","), Just("price"), Just("USD"),
                Just("per"), Just("month"), Just("when"), Just("usage"), Just("limit"),
            ],
            0..120,
        )
    ) {
        let file = SourceFile { name: "fuzz.tg".into(), text: words.join(" ") };
        if let Err(diags) = compile_source(&file) {
            for d in &diags {
                let _ = d.render(&file);
            }
        }
    }

    #[test]
    fn compile_never_panics_on_mutations_of_the_demo(
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..8)
    ) {
        let file = SourceFile { name: "demo.tg".into(), text: mutate(DEMO, &edits) };
        match compile_source(&file) {
            Ok((program, _)) => {
                let len = ir::FactVector::len_for(program.shape());
                prop_assert!(program.tests.iter().all(|t| t.given.0.len() == len));
            }
            Err(diags) => {
                prop_assert!(diags.iter().any(|d| d.severity == Severity::Error));
                for d in &diags {
                    let _ = d.render(&file);
                }
            }
        }
    }
}

#[test]
fn deep_nesting_and_long_chains_are_refused_not_overflowed() {
    let deep_parens = format!(
        "rule \"r\" when {}banned{} => deny all",
        "(".repeat(100_000),
        ")".repeat(100_000)
    );
    let deep_not = format!(
        "rule \"r\" when {}banned => deny all",
        "not ".repeat(100_000)
    );
    let deep_minus = format!(
        "rule \"r\" when today > {}1 => deny all",
        "- ".repeat(100_000)
    );
    let long_chain = format!(
        "rule \"r\" when today > 1{} => deny all",
        " + 1".repeat(100_000)
    );
    for text in [deep_parens, deep_not, deep_minus, long_chain] {
        let file = SourceFile {
            name: "deep.tg".into(),
            text,
        };
        let errors = compile_source(&file).expect_err("too deep");
        assert!(
            errors.iter().any(|d| d.code == "nesting_too_deep"),
            "{}",
            render_all(&file, &errors)
        );
    }
}

#[test]
fn oversized_input_is_refused() {
    let file = SourceFile {
        name: "big.tg".into(),
        text: "#".repeat(tollgate_rules::lang::MAX_SOURCE_BYTES + 1),
    };
    let errors = compile_source(&file).expect_err("too big");
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].code, "input_too_large");
}

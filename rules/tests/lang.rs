//! The rule language end to end: the demo catalog compiles to the specified catalog, the
//! lowered program and the rendered diagnostics of broken sources are golden files
//! (`UPDATE_EXPECT=1 cargo test -p tollgate-rules` rewrites them for review), and no input
//! makes the compiler panic.

use std::path::Path;

use expect_test::expect_file;
use proptest::prelude::*;
use tollgate_protocol::usage::{Aggregation, MeterPeriod, MeterSpec};
use tollgate_rules::ir::{self, Limit};
use tollgate_rules::lang::{Diagnostic, Severity, SourceFile, compile_source};
use tollgate_rules::{Catalog, FeatureKind, Interval};

const DEMO: &str = tollgate_rules::DEMO_SOURCE;

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

/// The demo catalog the running-system issue specifies, written out: demo.tg must compile to
/// exactly this (and `Catalog::demo()`, which the control plane seeds, is derived from it).
#[test]
fn demo_catalog_compiles_to_the_specified_catalog() {
    compile_demo();
    let catalog = Catalog::demo();
    let features: Vec<(&str, FeatureKind, Option<&str>)> = catalog
        .features
        .iter()
        .map(|f| (f.key.as_str(), f.kind, f.period.as_deref()))
        .collect();
    assert_eq!(
        features,
        [
            ("sso", FeatureKind::Bool, None),
            ("exports", FeatureKind::Bool, None),
            ("seats", FeatureKind::Limit, None),
            ("api_calls", FeatureKind::Metered, Some("month")),
        ]
    );
    type PlanRow<'a> = (
        &'a str,
        &'a str,
        i64,
        &'a str,
        Interval,
        Vec<(&'a str, Option<i64>)>,
    );
    let plans: Vec<PlanRow<'_>> = catalog
        .plans
        .iter()
        .map(|p| {
            let grants = p
                .grants
                .iter()
                .map(|g| (g.feature.as_str(), g.limit))
                .collect();
            (
                p.key.as_str(),
                p.name.as_str(),
                p.price_minor,
                p.currency.as_str(),
                p.interval,
                grants,
            )
        })
        .collect();
    let pro_like = |seats, calls| {
        vec![
            ("sso", None),
            ("exports", None),
            ("seats", Some(seats)),
            ("api_calls", Some(calls)),
        ]
    };
    assert_eq!(
        plans,
        [
            (
                "free",
                "Free",
                0,
                "USD",
                Interval::Month,
                vec![("seats", Some(1)), ("api_calls", Some(1_000))]
            ),
            (
                "pro",
                "Pro",
                2_900,
                "USD",
                Interval::Month,
                pro_like(10, 100_000)
            ),
            (
                "enterprise",
                "Enterprise",
                19_900,
                "USD",
                Interval::Month,
                pro_like(100, 5_000_000)
            ),
        ]
    );
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

/// Every `tests/diagnostics/*.tg` fails to compile (or its tests fail); its rendered
/// diagnostics are the golden file next to it (`.txt`). Each file exercises one class of error.
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
        // Through the whole driver, so failing `test` blocks are golden too.
        let diags = match tollgate_rules::compiler::compile(&file) {
            Ok(compiled) => {
                assert!(
                    !compiled.warnings.is_empty(),
                    "{name} compiled without a diagnostic"
                );
                compiled.warnings
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

fn compile_ok(text: &str) -> ir::Program {
    let file = SourceFile {
        name: "t.tg".into(),
        text: text.into(),
    };
    match compile_source(&file) {
        Ok((program, _)) => program,
        Err(errors) => panic!("{}", render_all(&file, &errors)),
    }
}

const SMALL: &str = "
feature sso: bool
feature seats: limit
feature api_calls: metered per day fail_open
plan basic \"Basic\" { price 100 EUR per year grant seats = unlimited grant api_calls = 10 }
plan pro \"Pro\" { price 200 EUR per year trial 30 days grant sso grant seats = 5 grant api_calls = 10 }
addon more \"More\" { price 5 EUR per year api_calls + 100 grant sso }
";

#[test]
fn test_blocks_lower_to_full_fact_vectors() {
    let program = compile_ok(&format!(
        "{SMALL}
test \"t\" {{
    given plan = pro, usage(api_calls) = 7, addon(more) = 3, dunning_level = 2,
        days_past_due = 9, in_trial = true, today = 20_000, banned = false,
        override(sso) = deny, override(seats) = grant limit 4
    expect sso denied reason override, seats limit 4, api_calls allowed limit unlimited
}}
test \"explicit status wins\" {{
    given status = past_due, plan = basic
    expect seats limit none
}}"
    ));
    let shape = program.shape();
    let [t, u] = program.tests.as_slice() else {
        panic!("{:?}", program.tests)
    };
    let get = |t: &ir::TestCase, f| t.given.get(f, shape);
    use ir::Fact::*;
    assert_eq!(get(t, Plan), 1);
    assert_eq!(
        get(t, Status),
        ir::SubStatus::Active as i64,
        "plan implies active"
    );
    assert_eq!(get(t, Usage(2)), 7);
    assert_eq!(get(t, AddonQty(0)), 3);
    assert_eq!(get(t, DunningLevel), 2);
    assert_eq!(get(t, DaysPastDue), 9);
    assert_eq!(get(t, InTrial), 1);
    assert_eq!(get(t, Today), 20_000);
    assert_eq!(get(t, Banned), 0);
    assert_eq!(get(t, OverrideMode(0)), ir::OVERRIDE_DENY);
    assert_eq!(get(t, OverrideMode(1)), ir::OVERRIDE_GRANT);
    assert_eq!(t.given.override_limit(1, shape), Limit::Finite(4));
    assert_eq!(get(t, OverrideMode(2)), ir::OVERRIDE_NONE);
    assert_eq!(t.given.override_limit(2, shape), Limit::None);
    assert_eq!(
        t.expect,
        vec![
            ir::Expectation {
                feature: 0,
                allowed: Some(false),
                limit: None,
                reason: Some(ir::ReasonCode::Override)
            },
            ir::Expectation {
                feature: 1,
                allowed: None,
                limit: Some(Limit::Finite(4)),
                reason: None
            },
            ir::Expectation {
                feature: 2,
                allowed: Some(true),
                limit: Some(Limit::Unlimited),
                reason: None
            },
        ]
    );
    assert_eq!(get(u, Status), ir::SubStatus::PastDue as i64);
    assert_eq!(get(u, Plan), 0);
    assert_eq!(u.expect[0].limit, Some(Limit::None));
    // Everything not given is as in an empty vector.
    let mut expected = ir::FactVector::empty(shape);
    expected.set(Status, shape, ir::SubStatus::PastDue as i64);
    expected.set(Plan, shape, 0);
    assert_eq!(u.given, expected);
}

#[test]
fn meters_declare_their_aggregation_overage_and_lease() {
    let program = compile_ok(
        "feature users: metered per month unique_count(user_id) soft lease 50\n\
         feature storage: metered per year max\n\
         feature last: metered per day latest\n\
         feature calls: metered per month count\n\
         plan p \"P\" { price 0 USD per month grant users = 10 grant storage = 5 grant last = 1 grant calls = 9 }\n",
    );
    let meters: Vec<_> = program
        .features
        .iter()
        .map(|f| f.meter.clone().expect("metered"))
        .collect();
    assert_eq!(
        meters[0],
        MeterSpec {
            aggregation: Aggregation::UniqueCount {
                property: "user_id".into()
            },
            period: MeterPeriod::Month,
            soft: true,
            lease: 50,
        }
    );
    assert_eq!(
        (
            meters[1].aggregation.clone(),
            meters[1].period,
            meters[1].soft
        ),
        (Aggregation::Max, MeterPeriod::Year, false)
    );
    assert_eq!(meters[2].aggregation, Aggregation::Latest);
    assert_eq!(meters[3].aggregation, Aggregation::Count);
    // The catalog the control plane seeds carries the same meters.
    let catalog = Catalog::from_parts(&program.features, &program.plans, &program.addons);
    assert_eq!(catalog.features[0].meter, Some(meters[0].clone()));

    let file = SourceFile {
        name: "t.tg".into(),
        text: "feature calls: metered per month lease 0\nfeature x: metered per month unique_count()\n"
            .into(),
    };
    let errors = compile_source(&file).expect_err("invalid meters");
    let text = render_all(&file, &errors);
    assert!(
        text.contains("a lease size must not be less than 1"),
        "{text}"
    );
    assert!(text.contains("expected an event property name"), "{text}");
}

#[test]
fn declarations_lower_with_their_options() {
    let program = compile_ok(SMALL);
    assert_eq!(
        program.features[2],
        ir::Feature {
            key: "api_calls".into(),
            kind: ir::FeatureKind::Metered,
            period: Some("day".into()),
            fail_open: true,
            meter: Some(MeterSpec {
                aggregation: Aggregation::Sum,
                period: MeterPeriod::Day,
                soft: false,
                lease: ir::DEFAULT_LEASE,
            }),
        }
    );
    assert!(!program.features[0].fail_open);
    let pro = &program.plans[1];
    assert_eq!(
        (
            pro.price_minor,
            pro.currency.as_str(),
            pro.interval,
            pro.trial_days
        ),
        (200, "EUR", ir::Interval::Year, 30)
    );
    assert_eq!(program.plans[0].grants[0].limit, Limit::Unlimited);
    assert_eq!(
        program.addons[0].effects,
        vec![
            (2, ir::AddonEffect::AddLimit(100)),
            (0, ir::AddonEffect::Grant)
        ]
    );
}

#[test]
fn rule_actions_and_conditions_lower_as_written() {
    use ir::{Action, ArithOp, BoolExpr, CmpOp, Fact, IntExpr, ReasonCode, Target};
    let program = compile_ok(&format!(
        "{SMALL}
rule \"a\" when plan == pro and addon(more) > 0 => grant seats = limit(seats) + 2 * addon(more)
rule \"b\" when not allowed(sso) or override(sso) == grant => limit api_calls = unlimited
rule \"c\" when usage(api_calls) >= 2 + 3 => cap api_calls at usage reason granted_by_rule
rule \"d\" when in_trial => deny metered
rule \"e\" when status != canceled => grant sso"
    ));
    let r: Vec<(&BoolExpr, &Action)> = program.rules.iter().map(|r| (&r.when, &r.action)).collect();
    let fact = |f| IntExpr::Fact(f);
    let c = IntExpr::Const;
    assert_eq!(
        r[0],
        (
            &BoolExpr::And(
                Box::new(BoolExpr::Cmp(CmpOp::Eq, fact(Fact::Plan), c(1))),
                Box::new(BoolExpr::Cmp(CmpOp::Gt, fact(Fact::AddonQty(0)), c(0))),
            ),
            &Action::Grant {
                target: Target::Feature(1),
                limit: Some(IntExpr::Arith(
                    ArithOp::Add,
                    Box::new(IntExpr::LimitOf(1)),
                    Box::new(IntExpr::Arith(
                        ArithOp::Mul,
                        Box::new(c(2)),
                        Box::new(fact(Fact::AddonQty(0)))
                    )),
                )),
                reason: ReasonCode::GrantedByRule,
            }
        )
    );
    assert_eq!(
        r[1],
        (
            &BoolExpr::Or(
                Box::new(BoolExpr::Not(Box::new(BoolExpr::AllowedOf(0)))),
                Box::new(BoolExpr::Cmp(
                    CmpOp::Eq,
                    fact(Fact::OverrideMode(0)),
                    c(ir::OVERRIDE_GRANT)
                )),
            ),
            &Action::SetLimit {
                target: Target::Feature(2),
                value: IntExpr::Unlimited,
                reason: ReasonCode::CappedByRule,
            }
        )
    );
    // Constants are folded.
    assert_eq!(
        r[2],
        (
            &BoolExpr::Cmp(CmpOp::Ge, fact(Fact::Usage(2)), c(5)),
            &Action::CapAtUsage {
                target: Target::Feature(2),
                reason: ReasonCode::GrantedByRule,
            }
        )
    );
    assert_eq!(
        r[3].1,
        &Action::Deny {
            target: Target::AllMetered,
            reason: ReasonCode::DeniedByRule
        }
    );
    assert_eq!(
        r[4].0,
        &BoolExpr::Cmp(
            CmpOp::Ne,
            fact(Fact::Status),
            c(ir::SubStatus::Canceled as i64)
        )
    );
}

#[test]
fn expressions_at_the_depth_limit_compile() {
    // As high and as nested as the parser allows: the checker, the folding and the analysis
    // recurse over it on a test thread's stack.
    let max = tollgate_rules::lang::MAX_EXPR_DEPTH as usize;
    let nest = tollgate_rules::lang::MAX_NESTING as usize;
    let chain = vec!["days_past_due > 1"; max - 2].join(" and ");
    let sum = format!("today{}", " + 1".repeat(max - 2));
    let parens = format!("{}banned{}", "(".repeat(nest), ")".repeat(nest));
    let text = format!(
        "{SMALL}
rule \"chain\" when {chain} or {parens} => deny all
rule \"sum\" when {sum} > 0 => deny all"
    );
    let program = compile_ok(&text);
    assert_eq!(program.rules.len(), 2);
}

#[test]
fn the_example_in_the_module_doc_compiles() {
    let doc = include_str!("../src/lang/mod.rs");
    let example: Vec<&str> = doc
        .lines()
        .skip_while(|l| !l.starts_with("//! # An example"))
        .skip_while(|l| *l != "//! ```text")
        .skip(1)
        .take_while(|l| *l != "//! ```")
        .map(|l| l.strip_prefix("//!").unwrap_or(l).trim_start_matches(' '))
        .collect();
    assert!(example.len() > 10, "example not found");
    let program = compile_ok(&example.join("\n"));
    assert_eq!(
        (
            program.features.len(),
            program.rules.len(),
            program.tests.len()
        ),
        (4, 3, 1)
    );
}

/// Sources near the size limit built to hit every per-item check many times: each must
/// compile (or fail) in linear-ish time, with the diagnostics capped.
#[test]
fn large_sources_stay_fast_and_capped() {
    let max = tollgate_rules::lang::MAX_SOURCE_BYTES;
    let mut many_features = String::new();
    let mut plan = String::from("plan p \"P\" {\n price 1 USD per month\n");
    let mut i = 0;
    while many_features.len() + plan.len() < max - 64 {
        many_features.push_str(&format!("feature f{i}: bool\n"));
        plan.push_str(&format!(" grant f{i}\n grant f{i}\n grant g{i}\n"));
        i += 1;
    }
    plan.push('}');
    let duplicates_and_unknowns = format!("{many_features}{plan}");
    let mut bad_chars = String::new();
    while bad_chars.len() < max - 8 {
        bad_chars.push_str("@ x ( ");
    }
    let one_long_line = format!("rule \"r\" when {} => deny all", "1 + ".repeat(max / 5));
    for (name, text, last_code) in [
        (
            "duplicates_and_unknowns",
            duplicates_and_unknowns,
            "too_many_errors",
        ),
        ("bad_chars_on_one_line", bad_chars, "too_many_errors"),
        ("one_long_expression", one_long_line, "nesting_too_deep"),
    ] {
        assert!(text.len() <= max, "{name} is {} bytes", text.len());
        let started = std::time::Instant::now();
        let file = SourceFile {
            name: name.into(),
            text,
        };
        let errors = compile_source(&file).expect_err(name);
        let rendered = render_all(&file, &errors);
        assert!(
            errors.len() <= tollgate_rules::lang::MAX_DIAGNOSTICS + 1,
            "{name}"
        );
        assert_eq!(errors.last().map(|d| d.code), Some(last_code), "{name}");
        assert!(!rendered.is_empty());
        let took = started.elapsed();
        assert!(took.as_secs() < 10, "{name} took {took:?}");
        eprintln!("{name}: {took:?}");
    }
}

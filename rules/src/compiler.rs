//! The compiler driver: source text → checked program → WebAssembly module → tests run.
//!
//! [`check`] is what `tollgate-rules check` runs and what [`compile`] starts with, so the two
//! refuse exactly the same programs: the front end ([`lang::compile_source`], which also
//! applies the catalog bounds of [`crate::bounds`]), then what a program needs to ship — it
//! fits a module ([`wasm::size_errors`]: `program_too_large`) and has features, plans and
//! test blocks (`no_features`, `no_plans`, `no_tests`; [`crate::bounds::missing_parts`],
//! which bundle verification applies as well).
//!
//! [`compile`] is what `tollgate-rules compile` and the control plane call. It runs
//! [`check`], emits the module ([`wasm::emit`]) and then runs every
//! `test` block of the source twice: through the reference interpreter ([`interp::evaluate`])
//! and, with the `host` feature, through the emitted module under wasmtime. A failing
//! expectation is a `test_failed` error at the test's span; any disagreement between the
//! interpreter and the module is an `internal_error` (a code generator bug, never the rule
//! author's). Every problem is reported at once.
//!
//! [`check_sources`] and [`compile_sources`] do the same for a program of several files (a
//! folder, see [`lang::sources`]); [`check`] and [`compile`] are them for one file.
//!
//! [`run_tests`] runs a program's embedded tests against an already loaded module: edges and
//! the control plane do so before they activate a bundle, so a module that does not decide as
//! its own tests say never serves.

use crate::bounds::{self, Missing};
use crate::interp;
use crate::ir::{self, Limit, RawDecision, TestCase};
use crate::lang::{self, Diagnostic, Severity, SourceFile, Sources, diag::codes};
use crate::wasm;

/// Recorded in every bundle's manifest.
pub const COMPILER_VERSION: &str = concat!("tollgate-rules ", env!("CARGO_PKG_VERSION"));

/// A program that compiled, whose module was emitted and whose tests all passed.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub program: ir::Program,
    /// The WebAssembly module ([`wasm`] documents its contract).
    pub module: Vec<u8>,
    pub warnings: Vec<Diagnostic>,
}

/// Parses, checks and lowers `file`, emits its module and runs its tests through the
/// interpreter and (with the `host` feature) the module.
///
/// `Err` carries every diagnostic, warnings included, in source order, at least one an error:
/// the front end's, or `program_too_large`, or one `test_failed` per failing expectation, or
/// `internal_error` when the module and the interpreter disagree.
pub fn compile(file: &SourceFile) -> Result<Compiled, Vec<Diagnostic>> {
    compile_sources(&Sources::one(file.clone()))
}

/// [`compile`] for a program of several files: each diagnostic names its own file.
pub fn compile_sources(sources: &Sources) -> Result<Compiled, Vec<Diagnostic>> {
    let (program, warnings) = check_sources(sources)?;
    let module = match wasm::emit(&program) {
        Ok(module) => module,
        // `check` refused every program `emit` refuses.
        Err(e) => {
            let mut diags = warnings;
            diags.push(Diagnostic::in_sources(
                sources,
                Severity::Error,
                codes::INTERNAL_ERROR,
                ir::Span::default(),
                format!("the checked program cannot be emitted: {e} (a compiler bug)"),
            ));
            return Err(sorted(sources, diags));
        }
    };
    let mut errors = Vec::new();
    let error = |code, test: &TestCase, message| {
        Diagnostic::in_sources(sources, Severity::Error, code, test.span, message)
    };
    let from_module = module_decisions(&program, &module);
    if let Err(message) = &from_module {
        errors.push(Diagnostic::in_sources(
            sources,
            Severity::Error,
            codes::INTERNAL_ERROR,
            ir::Span::default(),
            format!("the emitted module does not run: {message} (a compiler bug)"),
        ));
    }
    for (i, test) in program.tests.iter().enumerate() {
        let reference = interp::evaluate(&program, &test.given);
        match from_module.as_ref().ok().and_then(|all| all.get(i)) {
            Some(Ok(decisions)) if *decisions != reference => errors.push(error(
                codes::INTERNAL_ERROR,
                test,
                format!(
                    "test `{}`: the WebAssembly module decides {}, the interpreter {} \
                     (a compiler bug)",
                    test.name,
                    describe_all(&program, decisions),
                    describe_all(&program, &reference)
                ),
            )),
            Some(Err(message)) => errors.push(error(
                codes::INTERNAL_ERROR,
                test,
                format!(
                    "test `{}`: the WebAssembly module failed: {message}",
                    test.name
                ),
            )),
            _ => {}
        }
        for message in check_test(&program, test, &reference) {
            errors.push(error(codes::TEST_FAILED, test, message));
        }
    }
    if errors.is_empty() {
        Ok(Compiled {
            program,
            module,
            warnings,
        })
    } else {
        let mut diags = warnings;
        diags.extend(errors);
        Err(sorted(sources, diags))
    }
}

/// Checks `file` as [`compile`] does, without emitting or running anything: the front end,
/// then the module's size limits and the parts a shipped program needs. `Ok` carries the
/// program and its warnings; `Err` every diagnostic, warnings included.
pub fn check(file: &SourceFile) -> Result<(ir::Program, Vec<Diagnostic>), Vec<Diagnostic>> {
    check_sources(&Sources::one(file.clone()))
}

/// [`check`] for a program of several files. What concerns the whole program (no features,
/// too large) is reported at the start of the first file.
pub fn check_sources(sources: &Sources) -> Result<(ir::Program, Vec<Diagnostic>), Vec<Diagnostic>> {
    let (program, warnings) = lang::compile_sources(sources)?;
    let at_start = |code, message: String, note: &str| {
        let mut d =
            Diagnostic::in_sources(sources, Severity::Error, code, ir::Span::default(), message);
        d.note = Some(note.to_owned());
        d
    };
    let mut errors: Vec<Diagnostic> = wasm::size_errors(&program)
        .into_iter()
        .map(|e| {
            at_start(
                codes::PROGRAM_TOO_LARGE,
                e.to_string(),
                "split the catalog, or drop what no plan sells",
            )
        })
        .collect();
    for missing in bounds::missing_parts(
        program.features.len(),
        program.plans.len(),
        program.tests.len(),
    ) {
        errors.push(match missing {
            Missing::Features => at_start(
                codes::NO_FEATURES,
                "the program declares no features, so its bundle would grant nothing".into(),
                "declare one: `feature <key>: bool | limit | metered per month`",
            ),
            Missing::Plans => at_start(
                codes::NO_PLANS,
                "the program declares no plans, so its bundle would sell nothing".into(),
                "declare one: `plan <key> \"<name>\" { price <minor units> <CUR> per month ... }`",
            ),
            Missing::Tests => at_start(
                codes::NO_TESTS,
                "the program has no test blocks, so the control plane and the edges would \
                 install it untested"
                    .into(),
                "add one: `test \"<name>\" { given plan = <key> expect <feature> allowed }`",
            ),
        });
    }
    if errors.is_empty() {
        Ok((program, warnings))
    } else {
        let mut diags = warnings;
        diags.extend(errors);
        Err(sorted(sources, diags))
    }
}

/// Source order (file by file), stable among diagnostics at the same place.
fn sorted(sources: &Sources, mut diags: Vec<Diagnostic>) -> Vec<Diagnostic> {
    sources.sort(&mut diags);
    diags
}

/// Each test's decisions from the module (`Ok` per test, or that test's host error); `Err`
/// when the module cannot be loaded at all.
#[cfg(feature = "host")]
#[allow(clippy::type_complexity)]
fn module_decisions(
    program: &ir::Program,
    module: &[u8],
) -> Result<Vec<Result<Vec<RawDecision>, String>>, String> {
    let engine = crate::host::RulesEngine::new().map_err(|e| e.to_string())?;
    let rules = engine
        .load(module, program.shape())
        .map_err(|e| e.to_string())?;
    Ok(program
        .tests
        .iter()
        .map(|t| rules.evaluate(&t.given).map_err(|e| e.to_string()))
        .collect())
}

/// Without a WebAssembly engine only the interpreter runs the tests.
#[cfg(not(feature = "host"))]
#[allow(clippy::type_complexity)]
fn module_decisions(
    _program: &ir::Program,
    _module: &[u8],
) -> Result<Vec<Result<Vec<RawDecision>, String>>, String> {
    Ok(Vec::new())
}

/// Runs a program's embedded tests against an already loaded module.
///
/// `Ok` is the number of tests run; `Err` lists every failure in words (a failing
/// expectation, or a test the module could not evaluate).
#[cfg(feature = "host")]
pub fn run_tests(
    program: &ir::Program,
    rules: &crate::host::LoadedRules,
) -> Result<usize, Vec<String>> {
    let mut failures = Vec::new();
    if rules.shape() != program.shape() {
        failures.push(format!(
            "the module was loaded for {:?}, the program has {:?}",
            rules.shape(),
            program.shape()
        ));
        return Err(failures);
    }
    for test in &program.tests {
        match rules.evaluate(&test.given) {
            Ok(decisions) => failures.extend(check_test(program, test, &decisions)),
            Err(e) => failures.push(format!("test `{}`: the module failed: {e}", test.name)),
        }
    }
    if failures.is_empty() {
        Ok(program.tests.len())
    } else {
        Err(failures)
    }
}

/// One message per expectation of `test` that `decisions` does not meet, e.g.
/// "test `pro`: expected seats limit 10, got 5 (granted_by_plan)". Only the checks that
/// failed are named.
pub fn check_test(
    program: &ir::Program,
    test: &TestCase,
    decisions: &[RawDecision],
) -> Vec<String> {
    let mut failures = Vec::new();
    for e in &test.expect {
        let feature = program
            .features
            .get(e.feature as usize)
            .map_or("?", |f| f.key.as_str());
        let Some(d) = decisions.get(e.feature as usize) else {
            failures.push(format!(
                "test `{}`: no decision for feature `{feature}`",
                test.name
            ));
            continue;
        };
        let allowed = e.allowed.filter(|a| *a != d.allowed);
        let limit = e.limit.filter(|l| !limit_holds(*l, d));
        let reason = e.reason.filter(|r| *r != d.reason);
        if allowed.is_none() && limit.is_none() && reason.is_none() {
            continue;
        }
        let mut expected = vec![feature.to_string()];
        let mut got = Vec::new();
        if let Some(a) = allowed {
            expected.push(allowed_word(a).into());
            got.push(allowed_word(d.allowed).into());
        }
        if let Some(l) = limit {
            expected.push(format!("limit {}", limit_text(l)));
            got.push(if got.is_empty() {
                limit_text(d.limit)
            } else {
                format!("limit {}", limit_text(d.limit))
            });
        }
        if let Some(r) = reason {
            expected.push(format!("reason {}", r.as_str()));
            got.push(if got.is_empty() {
                d.reason.as_str().into()
            } else {
                format!("reason {}", d.reason.as_str())
            });
        } else {
            got.push(format!("({})", d.reason.as_str()));
        }
        failures.push(format!(
            "test `{}`: expected {}, got {}",
            test.name,
            expected.join(" "),
            got.join(" ")
        ));
    }
    failures
}

/// Whether a decision meets an expected limit: `limit unlimited` only an allowed decision
/// that is unlimited, `limit none` only one without a limit, `limit n` only that number.
fn limit_holds(expected: Limit, d: &RawDecision) -> bool {
    match expected {
        Limit::Unlimited => d.allowed && d.limit == Limit::Unlimited,
        Limit::None => d.limit == Limit::None,
        Limit::Finite(n) => d.limit == Limit::Finite(n),
    }
}

fn allowed_word(allowed: bool) -> &'static str {
    if allowed { "allowed" } else { "denied" }
}

/// A limit as the language writes it: a number, `unlimited` or `none`.
pub fn limit_text(limit: Limit) -> String {
    match limit {
        Limit::None => "none".into(),
        Limit::Finite(n) => n.to_string(),
        Limit::Unlimited => "unlimited".into(),
    }
}

/// One decision in words: "allowed limit 10 (granted_by_plan)", "allowed limit unlimited
/// (granted_by_plan)", "denied (denied_banned)".
pub fn describe(d: &RawDecision) -> String {
    let limit = match d.limit {
        Limit::None => String::new(),
        other => format!(" limit {}", limit_text(other)),
    };
    format!("{}{limit} ({})", allowed_word(d.allowed), d.reason.as_str())
}

fn describe_all(program: &ir::Program, decisions: &[RawDecision]) -> String {
    let parts: Vec<String> = decisions
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let key = program.features.get(i).map_or("?", |f| f.key.as_str());
            format!("{key} {}", describe(d))
        })
        .collect();
    format!("[{}]", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: &str = "
feature sso: bool
feature seats: limit
plan pro \"Pro\" { price 100 USD per month grant sso grant seats = 5 }
test \"ok\" { given plan = pro expect sso allowed, seats limit 5 }
test \"wrong\" {
    given plan = pro
    expect seats limit 10, sso denied reason override
}
";

    fn file(text: &str) -> SourceFile {
        SourceFile {
            name: "t.tg".into(),
            text: text.into(),
        }
    }

    #[test]
    fn failing_expectations_are_test_failed_errors_at_the_test() {
        let errors = compile(&file(SRC)).expect_err("a test fails");
        let messages: Vec<(&str, u32, &str)> = errors
            .iter()
            .map(|d| (d.code, d.line, d.message.as_str()))
            .collect();
        assert_eq!(
            messages,
            [
                (
                    "test_failed",
                    6,
                    "test `wrong`: expected seats limit 10, got 5 (granted_by_plan)"
                ),
                (
                    "test_failed",
                    6,
                    "test `wrong`: expected sso denied reason override, \
                     got allowed reason granted_by_plan"
                ),
            ]
        );
    }

    #[test]
    fn passing_tests_compile_with_a_module() {
        let fixed = SRC.replace("seats limit 10, sso denied reason override", "sso allowed");
        let compiled = compile(&file(&fixed)).expect("compiles");
        assert!(compiled.module.starts_with(b"\0asm"));
        assert_eq!(compiled.program.tests.len(), 2);
        assert!(compiled.warnings.is_empty());
    }

    #[test]
    fn front_end_errors_pass_through() {
        let errors = compile(&file("feature x: nope")).expect_err("broken");
        assert!(errors.iter().any(|d| d.code == "syntax"), "{errors:?}");
    }

    #[cfg(feature = "host")]
    #[test]
    fn run_tests_reports_each_failure_against_a_loaded_module() {
        let fixed = SRC.replace("seats limit 10, sso denied reason override", "sso allowed");
        let compiled = compile(&file(&fixed)).expect("compiles");
        let engine = crate::host::RulesEngine::new().expect("engine");
        let rules = engine
            .load(&compiled.module, compiled.program.shape())
            .expect("loads");
        assert_eq!(run_tests(&compiled.program, &rules), Ok(2));
        // The same module against a program whose tests expect otherwise.
        let mut program = compiled.program.clone();
        program.tests[0].expect[1].limit = Some(Limit::Finite(6));
        let failures = run_tests(&program, &rules).expect_err("fails");
        assert_eq!(
            failures,
            ["test `ok`: expected seats limit 6, got 5 (granted_by_plan)"]
        );
    }
}

//! The commands on a rule source: `check`, `test` and `compile`. A source is a `.tg` file or
//! a folder of them compiled as one program ([`crate::files::read_sources`]); each diagnostic
//! is shown against its own file.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tollgate_rules::bundle;
use tollgate_rules::compiler;
use tollgate_rules::lang::{Diagnostic, Severity, Sources};

use crate::failure::{Failure, Outcome};
use crate::files::{Source, read_sources, write};
use crate::out::{errln, outln};

fn render_all(sources: &Sources, diags: &[Diagnostic]) {
    for d in diags {
        errln!("{}", sources.render(d));
    }
}

fn count(diags: &[Diagnostic], severity: Severity) -> usize {
    diags.iter().filter(|d| d.severity == severity).count()
}

/// Prints the diagnostics of a source that does not compile and fails with
/// `{source}: {summary}`, the summary made from the count of errors (`2 errors`).
fn rejected(
    source: &Source,
    diags: &[Diagnostic],
    summary: impl FnOnce(String) -> String,
) -> Failure {
    render_all(&source.sources, diags);
    let errors = plural(count(diags, Severity::Error), "error");
    Failure::Failed(format!("{}: {}", source.label, summary(errors)))
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("{n} {word}")
    } else {
        format!("{n} {word}s")
    }
}

pub(crate) fn check(path: &Path) -> Outcome {
    let source = read_sources(path)?;
    // The same checks as `compile`, short of running the tests.
    match compiler::check_sources(&source.sources) {
        Ok((program, warnings)) => {
            render_all(&source.sources, &warnings);
            outln!(
                "{}: ok: {}, {}, {}, {}, {}; {}",
                source.label,
                plural(program.features.len(), "feature"),
                plural(program.plans.len(), "plan"),
                plural(program.addons.len(), "add-on"),
                plural(program.rules.len(), "rule"),
                plural(program.tests.len(), "test"),
                plural(warnings.len(), "warning"),
            );
            Ok(())
        }
        Err(diags) => {
            let warnings = plural(count(&diags, Severity::Warning), "warning");
            Err(rejected(&source, &diags, |errors| {
                format!("{errors}, {warnings}")
            }))
        }
    }
}

pub(crate) fn test(path: &Path) -> Outcome {
    let source = read_sources(path)?;
    let sources = &source.sources;
    let (program, _) = compiler::check_sources(sources).map_err(|diags| {
        rejected(&source, &diags, |errors| {
            format!("does not compile ({errors})")
        })
    })?;
    let diags = match compiler::compile_sources(sources) {
        Ok(compiled) => compiled.warnings,
        Err(diags) => diags,
    };
    let (errors, warnings): (Vec<&Diagnostic>, Vec<&Diagnostic>) =
        diags.iter().partition(|d| d.severity == Severity::Error);
    for w in warnings {
        errln!("{}", sources.render(w));
    }
    // A test's diagnostics are those at its span, in its file.
    let at_test = |d: &Diagnostic, t: &tollgate_rules::ir::TestCase| {
        let (file, span) = sources.locate(t.span);
        d.span == span && d.file == file.name
    };
    let mut failed = 0;
    for t in &program.tests {
        let mine: Vec<&&Diagnostic> = errors.iter().filter(|d| at_test(d, t)).collect();
        if mine.is_empty() {
            outln!("test {:?} ... ok", t.name);
        } else {
            failed += 1;
            outln!("test {:?} ... FAILED", t.name);
            for d in mine {
                if source.several_files() {
                    outln!("    {}:{}:{}: {}", d.file, d.line, d.column, d.message);
                } else {
                    outln!("    {}", d.message);
                }
            }
        }
    }
    // Problems not tied to one test (a module that does not run, a program too large).
    let other: Vec<Diagnostic> = errors
        .iter()
        .filter(|d| !program.tests.iter().any(|t| at_test(d, t)))
        .map(|d| (*d).clone())
        .collect();
    render_all(sources, &other);
    let total = program.tests.len();
    if failed == 0 && other.is_empty() {
        outln!("{} of {total} tests passed", total);
        Ok(())
    } else {
        Err(Failure::Failed(format!(
            "{} of {total} tests passed, {failed} failed{}",
            total - failed,
            if other.is_empty() {
                String::new()
            } else {
                format!(", {}", plural(other.len(), "other error"))
            }
        )))
    }
}

pub(crate) fn compile(path: &Path, output: &Path, version: Option<u64>) -> Outcome {
    let source = read_sources(path)?;
    let compiled = compiler::compile_sources(&source.sources)
        .map_err(|diags| rejected(&source, &diags, |errors| errors))?;
    render_all(&source.sources, &compiled.warnings);
    let now = now();
    let version = version.unwrap_or(now.as_secs());
    let created_at_ms = i64::try_from(now.as_millis()).unwrap_or(i64::MAX);
    // One file: the SHA-256 of its text, as always; a folder: `bundle::sources_hash`.
    let unsigned = bundle::build_sources(&compiled, &source.sources, version, created_at_ms)
        .map_err(|e| Failure::Failed(e.to_string()))?;
    let bytes = unsigned.encode();
    write(output, &bytes)?;
    outln!(
        "wrote {} (version {version}, {} bytes, {} tests passed); sign it with `tollgate-rules sign`",
        output.display(),
        bytes.len(),
        compiled.program.tests.len()
    );
    Ok(())
}

fn now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

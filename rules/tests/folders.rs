//! A program of several files (`lang::Sources`, a folder of `.tg` files): the demo split into
//! files compiles to the demo's program and module, each diagnostic names its own file and
//! line (a duplicate across files names both), a syntax error stays in its file, and the
//! bundle records one hash for the files.

use std::path::Path;

use expect_test::expect_file;
use tollgate_rules::bundle::{self, sha256_hex};
use tollgate_rules::compiler;
use tollgate_rules::ir::{self, Span};
use tollgate_rules::lang::{self, Diagnostic, MAX_SOURCE_BYTES, Severity, SourceFile, Sources};

const DEMO: &str = tollgate_rules::DEMO_SOURCE;

fn file(name: &str, text: &str) -> SourceFile {
    SourceFile {
        name: name.into(),
        text: text.into(),
    }
}

/// The demo cut in three where `marks` begin: `demo/catalog.tg` (plans and the add-on),
/// `demo/features.tg` (the header and the features) and `demo/rules.tg` (rules and tests),
/// in the order a folder sorts them, so the plans use features declared in a later file.
fn demo_folder() -> Sources {
    let plans = DEMO.find("plan free").expect("plans");
    let rules = DEMO.find("// Order matters").expect("rules");
    Sources::new(vec![
        file("demo/catalog.tg", &DEMO[plans..rules]),
        file("demo/features.tg", &DEMO[..plans]),
        file("demo/rules.tg", &DEMO[rules..]),
    ])
    .expect("three files")
}

/// Spans are positions in the source, which splitting moves; everything else must be equal.
fn without_spans(mut program: ir::Program) -> ir::Program {
    for r in &mut program.rules {
        r.span = Span::default();
    }
    for t in &mut program.tests {
        t.span = Span::default();
    }
    program
}

/// 1-based line of the first `needle` in `text`.
fn line_of(text: &str, needle: &str) -> u32 {
    let at = text.find(needle).expect("needle");
    u32::try_from(text[..at].matches('\n').count() + 1).expect("small")
}

fn render_all(sources: &Sources, diags: &[Diagnostic]) -> String {
    diags
        .iter()
        .map(|d| sources.render(d))
        .collect::<Vec<_>>()
        .join("\n")
}

fn codes_of(diags: &[Diagnostic]) -> Vec<&'static str> {
    diags.iter().map(|d| d.code).collect()
}

fn source<'a>(sources: &'a Sources, name: &str) -> &'a str {
    &sources.file(name).expect("file").text
}

#[test]
fn the_demo_split_into_a_folder_compiles_to_the_demo_program_and_module() {
    let folder = demo_folder();
    let (program, warnings) =
        compiler::check_sources(&folder).unwrap_or_else(|d| panic!("{}", render_all(&folder, &d)));
    assert!(warnings.is_empty(), "{}", render_all(&folder, &warnings));
    assert_eq!(
        without_spans(program),
        without_spans(tollgate_rules::demo_program())
    );

    let from_folder = compiler::compile_sources(&folder)
        .unwrap_or_else(|d| panic!("{}", render_all(&folder, &d)));
    let from_file =
        compiler::compile(&file("demo.tg", DEMO)).expect("the demo compiles and passes");
    // The module does not depend on where anything was written.
    assert_eq!(from_folder.module, from_file.module);
    assert_eq!(
        without_spans(from_folder.program.clone()),
        without_spans(from_file.program.clone())
    );
    // Both bundles hold the same catalog, rules and tests, and the same module part.
    let a = bundle::build_sources(&from_folder, &folder, 7, 0).expect("folder bundle");
    let b = bundle::build(&from_file, DEMO, 7, 0).expect("file bundle");
    assert_eq!(a.manifest.features, b.manifest.features);
    assert_eq!(a.manifest.plans, b.manifest.plans);
    assert_eq!(a.manifest.addons, b.manifest.addons);
    assert_eq!(a.manifest.rule_names, b.manifest.rule_names);
    assert_eq!(a.manifest.parts[0], b.manifest.parts[0]);
    assert_eq!(a.manifest.parts[0].name, bundle::MODULE_PART);
    assert_eq!(a.manifest.source_hash, bundle::sources_hash(&folder));
    assert_ne!(a.manifest.source_hash, b.manifest.source_hash);
}

#[test]
fn rules_and_tests_of_a_folder_are_located_in_their_own_file() {
    let folder = demo_folder();
    let (program, _) = lang::compile_sources(&folder).expect("compiles");
    let rules = source(&folder, "demo/rules.tg");
    let (f, span) = folder.locate(program.tests[0].span);
    assert_eq!(f.name, "demo/rules.tg");
    assert!(rules[span.start as usize..].starts_with("test \"free\""));
    let (f, span) = folder.locate(program.rules[1].span);
    assert_eq!(f.name, "demo/rules.tg");
    assert!(rules[span.start as usize..].starts_with("rule \"late exports\""));
}

#[test]
fn a_failing_test_in_the_last_file_names_that_file_and_its_line() {
    let mut files = demo_folder().files().to_vec();
    let rules = &mut files[2];
    rules.text = rules.text.replace(
        "expect seats allowed limit 20",
        "expect seats allowed limit 25",
    );
    let folder = Sources::new(files).expect("three files");
    let errors = compiler::compile_sources(&folder).expect_err("a test fails");
    let line = line_of(
        source(&folder, "demo/rules.tg"),
        "test \"extra seats add five per pack\"",
    );
    let found: Vec<(&str, &str, u32, u32)> = errors
        .iter()
        .map(|d| (d.code, d.file.as_str(), d.line, d.column))
        .collect();
    assert_eq!(found, [("test_failed", "demo/rules.tg", line, 1)]);
    let shown = folder.render(&errors[0]);
    assert!(
        shown.starts_with(&format!(
            "demo/rules.tg:{line}:1: error[test_failed]: test `extra seats add five per pack`: \
             expected seats limit 25, got 20 (granted_by_plan)\n\
             {line} | test \"extra seats add five per pack\" {{\n"
        )),
        "{shown}"
    );
}

#[test]
fn an_unknown_feature_in_the_second_file_names_that_file_and_line() {
    let folder = Sources::new(vec![
        file("a.tg", "feature sso: bool\nfeature seats: limit\n"),
        file(
            "b.tg",
            "plan pro \"Pro\" {\n    price 100 USD per month\n    grant sos\n}\n",
        ),
    ])
    .expect("two files");
    let errors = lang::compile_sources(&folder).expect_err("unknown feature");
    assert_eq!(codes_of(&errors), ["unknown_feature"]);
    let d = &errors[0];
    assert_eq!((d.file.as_str(), d.line, d.column), ("b.tg", 3, 11));
    assert_eq!(d.span, Span { start: 55, end: 58 });
    assert!(
        folder
            .render(d)
            .contains("3 |     grant sos\n  |           ^^^\n"),
        "{}",
        folder.render(d)
    );
}

#[test]
fn a_duplicate_across_files_names_both_files() {
    let folder = Sources::new(vec![
        file("features.tg", "feature sso: bool\nfeature seats: limit\n"),
        file(
            "plans.tg",
            "plan pro \"Pro\" { price 1 USD per month grant sso }\n",
        ),
        file(
            "more.tg",
            "# again\nfeature seats: limit\nplan pro \"Pro\" { price 1 USD per month }\n",
        ),
    ])
    .expect("three files");
    let errors = lang::compile_sources(&folder).expect_err("duplicates");
    let found: Vec<(&str, u32, u32, Option<String>)> = errors
        .iter()
        .map(|d| {
            assert_eq!(d.code, "duplicate_definition");
            let first = d
                .related
                .as_ref()
                .map(|r| format!("{}:{}:{}", r.file, r.line, r.column));
            (d.file.as_str(), d.line, d.column, first)
        })
        .collect();
    assert_eq!(
        found,
        [
            ("more.tg", 2, 9, Some("features.tg:2:9".into())),
            ("more.tg", 3, 6, Some("plans.tg:1:6".into())),
        ]
    );
    assert_eq!(
        errors[0].note.as_deref(),
        Some("first defined at features.tg:2:9")
    );
    let related = errors[1].related.as_ref().expect("first definition");
    let plans = source(&folder, "plans.tg");
    assert_eq!(
        &plans[related.span.start as usize..related.span.end as usize],
        "pro"
    );
}

#[test]
fn a_duplicate_within_one_file_of_a_folder_keeps_the_short_note() {
    let folder = Sources::new(vec![
        file("a.tg", "feature sso: bool\n"),
        file("b.tg", "feature x: bool\nfeature x: bool\n"),
    ])
    .expect("two files");
    let errors = lang::compile_sources(&folder).expect_err("duplicate");
    let d = errors
        .iter()
        .find(|d| d.code == "duplicate_definition")
        .expect("duplicate");
    assert_eq!((d.file.as_str(), d.line), ("b.tg", 2));
    assert_eq!(d.note.as_deref(), Some("first defined at 1:9"));
    assert_eq!(d.related.as_ref().map(|r| r.file.as_str()), Some("b.tg"));
}

#[test]
fn a_syntax_error_in_one_file_leaves_the_others_checked() {
    let folder = Sources::new(vec![
        file(
            "a.tg",
            "feature sso: bool\nplan pro \"Pro\" {\n    grant sso\n",
        ),
        file("b.tg", "feature seats limit\n"),
        file(
            "c.tg",
            "test \"t\" { given plan = pro expect seats limit 3, sos allowed }\n",
        ),
    ])
    .expect("three files");
    let errors = lang::compile_sources(&folder).expect_err("broken");
    let found: Vec<(&str, &str, u32)> = errors
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(|d| (d.file.as_str(), d.code, d.line))
        .collect();
    assert_eq!(
        found,
        [
            // The open block ends with its file, not in the next one.
            ("a.tg", "syntax", 4),
            ("b.tg", "syntax", 1),
            // `pro` and `seats` did not parse but are known by name, so only `sos` is
            // unknown.
            ("c.tg", "unknown_feature", 1),
        ]
    );
}

/// `tests/folders/broken/` as the CLI reads a folder (its `.tg` files, sorted): the rendered
/// diagnostics, each against its own file, are the golden file next to it.
#[test]
fn a_broken_folder_renders_golden_diagnostics_naming_each_file() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/folders/broken");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("fixture dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tg"))
        .collect();
    names.sort();
    let files = names
        .iter()
        .map(|n| file(n, &std::fs::read_to_string(dir.join(n)).expect("read")))
        .collect();
    let folder = Sources::new(files).expect("files");
    let errors = compiler::compile_sources(&folder).expect_err("broken");
    expect_file!["folders/broken.txt"].assert_eq(&render_all(&folder, &errors));
}

#[test]
fn one_file_in_a_folder_is_that_file() {
    let alone = file("demo.tg", DEMO);
    let folder = Sources::new(vec![alone.clone()]).expect("one file");
    assert_eq!(folder, Sources::one(alone.clone()));
    assert_eq!(
        lang::compile_sources(&folder).expect("compiles").0,
        lang::compile_source(&alone).expect("compiles").0
    );
    // The bundle of one file records the hash of its text, as `build` always did.
    assert_eq!(bundle::sources_hash(&folder), sha256_hex(DEMO.as_bytes()));
}

#[test]
fn the_sources_hash_covers_each_text_and_their_order_but_not_the_names() {
    let hash = |files: &[(&str, &str)]| {
        bundle::sources_hash(
            &Sources::new(files.iter().map(|(n, t)| file(n, t)).collect()).expect("files"),
        )
    };
    let ab = hash(&[("a.tg", "feature x: bool\n"), ("b.tg", "feature y: bool\n")]);
    assert_eq!(
        ab,
        hash(&[
            ("x/a.tg", "feature x: bool\n"),
            ("y.tg", "feature y: bool\n")
        ])
    );
    assert_ne!(
        ab,
        hash(&[("b.tg", "feature y: bool\n"), ("a.tg", "feature x: bool\n")])
    );
    // Moving text from one file to the next is another program's source.
    assert_ne!(
        ab,
        hash(&[("a.tg", "feature x: bool\nfeature y"), ("b.tg", ": bool\n")])
    );
    assert_ne!(ab, sha256_hex(b"feature x: bool\nfeature y: bool\n"));
}

#[test]
fn files_larger_than_one_source_together_are_refused() {
    let half = "#".repeat(MAX_SOURCE_BYTES / 2 + 1);
    let folder = Sources::new(vec![file("a.tg", &half), file("b.tg", &half)]).expect("files");
    let errors = lang::compile_sources(&folder).expect_err("too large");
    assert_eq!(codes_of(&errors), ["input_too_large"]);
    assert_eq!(errors[0].file, "a.tg");
    assert!(
        errors[0]
            .message
            .starts_with("the 2 source files are 1048578 bytes together"),
        "{}",
        errors[0].message
    );
}

//! Diagnostics: what went wrong, where, and how it is shown to a person.
//!
//! Every diagnostic carries a stable machine `code` (the list is in [`codes`]); the message is
//! for people and may change. Positions are 1-based lines and columns counted in characters
//! (Unicode scalar values), computed from the byte [`Span`] once all passes have run. A
//! program of several files ([`Sources`]) has one span space over all of them; a diagnostic
//! names the file it is in and carries its span, line and column within that file.

use super::{SourceFile, Sources};
use crate::ir::Span;

/// How bad a diagnostic is: errors stop compilation, warnings are returned with the program.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Severity {
    Error,
    Warning,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Warning => "warning",
        }
    }
}

/// The stable diagnostic codes. A code names one check; its message may change, the code not.
pub mod codes {
    /// The source is larger than [`super::super::MAX_SOURCE_BYTES`].
    pub const INPUT_TOO_LARGE: &str = "input_too_large";
    /// A character that starts no token.
    pub const UNEXPECTED_CHAR: &str = "unexpected_char";
    /// A string literal without its closing quote on the same line.
    pub const UNTERMINATED_STRING: &str = "unterminated_string";
    /// An integer literal that does not fit in 64 signed bits.
    pub const INT_OVERFLOW: &str = "int_overflow";
    /// The parser expected one thing and found another.
    pub const SYNTAX: &str = "syntax";
    /// An expression nested deeper than [`super::super::MAX_NESTING`].
    pub const NESTING_TOO_DEEP: &str = "nesting_too_deep";
    /// More than [`super::super::MAX_DIAGNOSTICS`] problems; the rest are not shown.
    pub const TOO_MANY_ERRORS: &str = "too_many_errors";
    pub const UNKNOWN_FEATURE: &str = "unknown_feature";
    pub const UNKNOWN_PLAN: &str = "unknown_plan";
    pub const UNKNOWN_ADDON: &str = "unknown_addon";
    /// A reason that is not one of the decision reason codes.
    pub const UNKNOWN_REASON: &str = "unknown_reason";
    /// A name in an expression or a test that means nothing there (fact, status, function).
    pub const UNKNOWN_NAME: &str = "unknown_name";
    /// A feature, plan, add-on, rule, test, or a clause inside one, defined twice.
    pub const DUPLICATE_DEFINITION: &str = "duplicate_definition";
    /// A value of the wrong type or a feature of the wrong kind.
    pub const TYPE_MISMATCH: &str = "type_mismatch";
    /// A limit or metered feature granted by a plan without its limit.
    pub const MISSING_LIMIT: &str = "missing_limit";
    /// A plan or add-on without a `price`.
    pub const MISSING_PRICE: &str = "missing_price";
    /// A rule whose condition can never hold.
    pub const RULE_NEVER_FIRES: &str = "rule_never_fires";
    /// An amount of money out of its bounds: negative, or above
    /// [`crate::bounds::PRICE_MINOR_MAX`] (prices and meter prices).
    pub const INVALID_MONEY: &str = "invalid_money";
    /// A currency that is not three upper-case letters.
    pub const INVALID_CURRENCY: &str = "invalid_currency";
    /// A feature, plan or add-on key outside the shared key bound
    /// (`tollgate_protocol::usage::validate_key`), or a `unique_count` property that cannot
    /// name an event property.
    pub const INVALID_KEY: &str = "invalid_key";
    /// A plan or add-on display name that is empty, longer than
    /// [`crate::bounds::DISPLAY_NAME_BYTES_MAX`] or holds a control character.
    pub const INVALID_NAME: &str = "invalid_name";
    /// Price tiers whose `up to` bounds do not strictly ascend.
    pub const TIERS_NOT_ASCENDING: &str = "tiers_not_ascending";
    /// Price tiers that are empty, or whose open `then` tier is missing or not last.
    pub const INVALID_TIERS: &str = "invalid_tiers";
    /// A number out of its allowed range (negative limit, zero package size, a trial past
    /// [`crate::bounds::TRIAL_DAYS_MAX`], ...).
    pub const INVALID_VALUE: &str = "invalid_value";
    /// A reason that contradicts its action (`deny ... reason granted_by_rule`).
    pub const REASON_MISMATCH: &str = "reason_mismatch";
    /// A feature named like a keyword of actions (`all`, `metered`).
    pub const RESERVED_NAME: &str = "reserved_name";
    /// A test that expects nothing and so cannot fail.
    pub const EMPTY_TEST: &str = "empty_test";
    /// A bug in the compiler: the checked program broke an invariant of the IR, or the
    /// WebAssembly module and the reference interpreter disagree.
    pub const INTERNAL_ERROR: &str = "internal_error";
    /// A `test` block whose expectation the compiled rules do not meet.
    pub const TEST_FAILED: &str = "test_failed";
    /// A program larger than a WebAssembly module supports (see [`crate::wasm::FEATURES_MAX`]).
    pub const PROGRAM_TOO_LARGE: &str = "program_too_large";
    /// A program without features: its bundle would grant nothing.
    pub const NO_FEATURES: &str = "no_features";
    /// A program without plans: its bundle would sell nothing.
    pub const NO_PLANS: &str = "no_plans";
    /// A program without test blocks: its bundle would pass every self-test untested.
    pub const NO_TESTS: &str = "no_tests";
    /// Warning: a plan meters a feature it does not grant.
    pub const METER_NOT_GRANTED: &str = "meter_not_granted";
    /// Warning: no plan, add-on or rule ever grants the feature.
    pub const FEATURE_NEVER_GRANTED: &str = "feature_never_granted";
}

/// One problem found in a source file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    /// Stable machine code, one of [`codes`].
    pub code: &'static str,
    pub message: String,
    /// Name of the source file.
    pub file: String,
    /// 1-based line of `span.start`.
    pub line: u32,
    /// 1-based column (in characters) of `span.start`.
    pub column: u32,
    /// Byte range within `file`.
    pub span: Span,
    /// Extra help, e.g. where the first definition of a duplicate is.
    pub note: Option<String>,
    /// The other place a diagnostic is about: for a duplicate definition, the first one, which
    /// may be in another file (the note says where too).
    pub related: Option<Location>,
}

/// A place in one source file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// Name of the source file.
    pub file: String,
    /// 1-based line of `span.start`.
    pub line: u32,
    /// 1-based column (in characters) of `span.start`.
    pub column: u32,
    /// Byte range within `file`.
    pub span: Span,
}

impl Diagnostic {
    /// A diagnostic found after [`super::compile_source`] (by the compiler driver running tests,
    /// for example), positioned in `file` at `span`.
    pub fn at(
        file: &SourceFile,
        severity: Severity,
        code: &'static str,
        span: Span,
        message: impl Into<String>,
    ) -> Self {
        let (line, column) = LineIndex::new(&file.text).line_col(&file.text, span.start);
        Self {
            severity,
            code,
            message: message.into(),
            file: file.name.clone(),
            line,
            column,
            span,
            note: None,
            related: None,
        }
    }

    /// A diagnostic found after [`super::compile_sources`], at `span` of the program's span
    /// space (a rule's or a test's span): positioned in the file that span is in.
    pub fn in_sources(
        sources: &Sources,
        severity: Severity,
        code: &'static str,
        span: Span,
        message: impl Into<String>,
    ) -> Self {
        let (file, local) = sources.locate(span);
        Self::at(file, severity, code, local, message)
    }

    /// `file:line:col: error[code]: message`, the source line, a caret line under the span,
    /// and the note if any. Spans across lines are underlined to the end of their first line.
    pub fn render(&self, source: &SourceFile) -> String {
        let mut out = format!(
            "{}:{}:{}: {}[{}]: {}\n",
            self.file,
            self.line,
            self.column,
            self.severity.as_str(),
            self.code,
            self.message
        );
        let start = clamp_to_boundary(&source.text, self.span.start as usize);
        let line_start = source.text[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = source.text[start..]
            .find('\n')
            .map_or(source.text.len(), |i| start + i);
        let line_text = source.text[line_start..line_end].trim_end_matches('\r');
        let end = clamp_to_boundary(&source.text, (self.span.end as usize).max(start));
        let end = end.min(line_start + line_text.len()).max(start);
        let gutter = self.line.to_string();
        let pad = " ".repeat(gutter.len());
        out.push_str(&format!("{gutter} | {line_text}\n"));
        // Keep tabs so the carets line up under the same columns as the text.
        let prefix: String = source.text[line_start..start]
            .chars()
            .map(|c| if c == '\t' { '\t' } else { ' ' })
            .collect();
        let width = source.text[start..end].chars().count().max(1);
        out.push_str(&format!("{pad} | {prefix}{}\n", "^".repeat(width)));
        if let Some(note) = &self.note {
            out.push_str(&format!("{pad} = note: {note}\n"));
        }
        out
    }
}

/// The largest char boundary of `text` at or before `at`.
fn clamp_to_boundary(text: &str, at: usize) -> usize {
    let mut at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// 1-based (line, column) of byte offset `at`, the column counted in characters.
#[cfg(test)]
pub(crate) fn line_col(text: &str, at: u32) -> (u32, u32) {
    LineIndex::new(text).line_col(text, at)
}

/// Start offsets of the lines of a text: positions in O(log lines + line length), so
/// positioning many diagnostics in a large source stays linear.
struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    fn new(text: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Self { starts }
    }

    fn line_col(&self, text: &str, at: u32) -> (u32, u32) {
        let at = clamp_to_boundary(text, at as usize);
        let line = self.starts.partition_point(|s| *s <= at).max(1);
        let start = self.starts.get(line - 1).copied().unwrap_or(0).min(at);
        let column = text.get(start..at).map_or(0, |t| t.chars().count()) + 1;
        (
            u32::try_from(line).unwrap_or(u32::MAX),
            u32::try_from(column).unwrap_or(u32::MAX),
        )
    }
}

/// Where passes put their findings; positions are filled in by [`Diags::finish`].
#[derive(Debug, Default)]
pub(crate) struct Diags {
    /// Each diagnostic with, for duplicates, the span of the first definition (its position
    /// becomes the note in [`Diags::finish`]).
    list: Vec<(Diagnostic, Option<Span>)>,
}

impl Diags {
    pub fn error(&mut self, code: &'static str, span: Span, message: impl Into<String>) {
        self.push(Severity::Error, code, span, message.into(), None);
    }

    pub fn error_with_note(
        &mut self,
        code: &'static str,
        span: Span,
        message: impl Into<String>,
        note: impl Into<String>,
    ) {
        self.push(
            Severity::Error,
            code,
            span,
            message.into(),
            Some(note.into()),
        );
    }

    /// A duplicate definition; the note will say where the first one is.
    pub fn duplicate(&mut self, span: Span, message: impl Into<String>, first: Span) {
        self.push(
            Severity::Error,
            codes::DUPLICATE_DEFINITION,
            span,
            message.into(),
            None,
        );
        if let Some(last) = self.list.last_mut() {
            last.1 = Some(first);
        }
    }

    pub fn warning(&mut self, code: &'static str, span: Span, message: impl Into<String>) {
        self.push(Severity::Warning, code, span, message.into(), None);
    }

    fn push(
        &mut self,
        severity: Severity,
        code: &'static str,
        span: Span,
        message: String,
        note: Option<String>,
    ) {
        self.list.push((
            Diagnostic {
                severity,
                code,
                message,
                file: String::new(),
                line: 0,
                column: 0,
                span,
                note,
                related: None,
            },
            None,
        ));
    }

    pub fn has_errors(&self) -> bool {
        self.list.iter().any(|(d, _)| d.severity == Severity::Error)
    }

    /// [`Self::finish_sources`] for a program of one file.
    #[cfg(test)]
    pub fn finish(self, file: &SourceFile, max: usize) -> Vec<Diagnostic> {
        self.finish_sources(&Sources::one(file.clone()), max)
    }

    /// Sorted by position (file by file, as the span space runs), capped at `max`, with file
    /// name, lines and columns filled in and spans made relative to their file.
    pub fn finish_sources(mut self, sources: &Sources, max: usize) -> Vec<Diagnostic> {
        self.list.sort_by_key(|(d, _)| (d.span.start, d.span.end));
        let total = self.list.len();
        self.list.truncate(max);
        if total > max {
            let span = self.list.last().map(|(d, _)| d.span).unwrap_or_default();
            self.error(
                codes::TOO_MANY_ERRORS,
                span,
                format!("{} more problems not shown", total - max),
            );
        }
        // Line indexes only of the files with something to show.
        let mut indexes: Vec<Option<LineIndex>> = Vec::new();
        indexes.resize_with(sources.files().len(), || None);
        let mut locate = |span: Span| -> Location {
            let (i, local) = sources.locate_index(span);
            let file = &sources.files()[i];
            let (line, column) = match indexes.get_mut(i) {
                Some(slot) => slot
                    .get_or_insert_with(|| LineIndex::new(&file.text))
                    .line_col(&file.text, local.start),
                None => (1, 1),
            };
            Location {
                file: file.name.clone(),
                line,
                column,
                span: local,
            }
        };
        self.list
            .into_iter()
            .map(|(mut d, first)| {
                let at = locate(d.span);
                d.file = at.file;
                d.line = at.line;
                d.column = at.column;
                d.span = at.span;
                if let Some(first) = first {
                    let first = locate(first);
                    let (line, column) = (first.line, first.column);
                    d.note = Some(if first.file == d.file {
                        format!("first defined at {line}:{column}")
                    } else {
                        format!("first defined at {}:{line}:{column}", first.file)
                    });
                    d.related = Some(first);
                }
                d
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_characters_and_clamps() {
        let t = "ab\ncé d\n";
        assert_eq!(line_col(t, 0), (1, 1));
        assert_eq!(line_col(t, 3), (2, 1));
        // 'é' is two bytes: offset 6 is after "cé".
        assert_eq!(line_col(t, 6), (2, 3));
        // Inside 'é' clamps back to its start; past the end clamps to the end.
        assert_eq!(line_col(t, 5), (2, 2));
        assert_eq!(line_col(t, 999), (3, 1));
    }

    #[test]
    fn render_underlines_span_on_its_first_line() {
        let src = SourceFile {
            name: "x.tg".into(),
            text: "feature a: bool\n\tgrant sos\n".into(),
        };
        let mut d = Diags::default();
        d.error(codes::UNKNOWN_FEATURE, Span { start: 23, end: 40 }, "nope");
        let out = d.finish(&src, 10);
        assert_eq!(
            out[0].render(&src),
            "x.tg:2:8: error[unknown_feature]: nope\n2 | \tgrant sos\n  | \t      ^^^\n"
        );
    }
}

//! The source files of one program: a single `.tg` file, or the `.tg` files of a folder
//! compiled as one program.
//!
//! # One program, several files
//!
//! The files are combined before names are resolved: each is lexed and parsed on its own (so
//! a syntax error, even an unclosed `{`, stays in its file and the parser starts afresh in
//! the next), then their items are checked as one file would be, in file order. A plan in one
//! file may grant a feature declared in another, and the order of declaration (the index in
//! the program) runs across the files in their order. Which files a folder holds and in
//! which order is the caller's choice (the CLI: every `*.tg` file, sorted by path).
//!
//! # Spans
//!
//! Spans in the checked program ([`crate::ir::Rule::span`], [`crate::ir::TestCase::span`])
//! are offsets into the files laid end to end, each followed by one byte that belongs to no
//! file, so the end of one file (where "found end of file" points) is not the start of the
//! next. For one file they are its byte offsets, as they always were. A [`Diagnostic`]
//! carries the name of its file and a span, line and column within that file:
//! [`Sources::locate`] turns a program span into those.
//!
//! # Limits
//!
//! At most [`MAX_SOURCE_FILES`] files, with unique names. The files together are held to
//! [`super::MAX_SOURCE_BYTES`], the limit of a single file, by
//! [`super::compile_sources`] (`input_too_large`).

use std::collections::{HashMap, HashSet};

use super::{Diagnostic, SourceFile};
use crate::ir::Span;

/// Most files in one program.
pub const MAX_SOURCE_FILES: usize = 1024;

/// Why a set of files cannot be one program's sources. None goes away by retrying.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourcesError {
    /// No file at all: a program needs at least one.
    #[error("no source files")]
    Empty,
    /// More than [`MAX_SOURCE_FILES`] files.
    #[error("{0} source files, more than the {MAX_SOURCE_FILES} allowed")]
    TooManyFiles(usize),
    /// Two files of the same name: diagnostics could not tell them apart.
    #[error("two source files are both named `{0}`")]
    DuplicateName(String),
}

/// The files of one program, in the order they are compiled; never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sources {
    files: Vec<SourceFile>,
    /// Where each file starts in the program's span space (see the module doc).
    starts: Vec<u32>,
}

impl Sources {
    /// A program of one file, whose spans are its byte offsets.
    pub fn one(file: SourceFile) -> Self {
        Self {
            files: vec![file],
            starts: vec![0],
        }
    }

    /// A program of `files`, in this order.
    pub fn new(files: Vec<SourceFile>) -> Result<Self, SourcesError> {
        if files.is_empty() {
            return Err(SourcesError::Empty);
        }
        if files.len() > MAX_SOURCE_FILES {
            return Err(SourcesError::TooManyFiles(files.len()));
        }
        let mut names = HashSet::with_capacity(files.len());
        for f in &files {
            if !names.insert(f.name.as_str()) {
                return Err(SourcesError::DuplicateName(f.name.clone()));
            }
        }
        // Saturating: sources past `MAX_SOURCE_BYTES` are refused before any span is made.
        let mut starts = Vec::with_capacity(files.len());
        let mut next: u32 = 0;
        for f in &files {
            starts.push(next);
            let len = u32::try_from(f.text.len()).unwrap_or(u32::MAX);
            next = next.saturating_add(len).saturating_add(1);
        }
        Ok(Self { files, starts })
    }

    /// The files, in compilation order.
    pub fn files(&self) -> &[SourceFile] {
        &self.files
    }

    /// The files with the offset each starts at in the program's span space.
    pub(crate) fn with_starts(&self) -> impl Iterator<Item = (&SourceFile, u32)> {
        self.files.iter().zip(self.starts.iter().copied())
    }

    /// Bytes of all the files together.
    pub fn total_bytes(&self) -> usize {
        self.files.iter().map(|f| f.text.len()).sum()
    }

    /// The file named `name`.
    pub fn file(&self, name: &str) -> Option<&SourceFile> {
        self.files.iter().find(|f| f.name == name)
    }

    /// The index of the file a program span starts in (always one of the files: the first
    /// starts at 0), and the span within that file.
    pub(crate) fn locate_index(&self, span: Span) -> (usize, Span) {
        let i = self
            .starts
            .partition_point(|s| *s <= span.start)
            .saturating_sub(1);
        let start = self.starts.get(i).copied().unwrap_or(0);
        let local = Span {
            start: span.start.saturating_sub(start),
            end: span.end.saturating_sub(start),
        };
        (i, local)
    }

    /// The file a program span (of a rule or a test, say) is in, and the span within it.
    pub fn locate(&self, span: Span) -> (&SourceFile, Span) {
        let (i, local) = self.locate_index(span);
        // In bounds: `files` is never empty and `locate_index` gives one of its indices.
        (&self.files[i], local)
    }

    /// Sorts diagnostics into source order: by file (in compilation order), then position;
    /// stable among diagnostics at the same place.
    pub fn sort(&self, diags: &mut [Diagnostic]) {
        let order: HashMap<&str, usize> = self
            .files
            .iter()
            .enumerate()
            .map(|(i, f)| (f.name.as_str(), i))
            .collect();
        diags.sort_by_cached_key(|d| {
            (
                order.get(d.file.as_str()).copied().unwrap_or(usize::MAX),
                d.span.start,
                d.span.end,
            )
        });
    }

    /// [`Diagnostic::render`] against the diagnostic's own file.
    pub fn render(&self, d: &Diagnostic) -> String {
        match self.file(&d.file) {
            Some(file) => d.render(file),
            // Not one of these files: the header and note, under an empty line.
            None => d.render(&SourceFile {
                name: d.file.clone(),
                text: String::new(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, text: &str) -> SourceFile {
        SourceFile {
            name: name.into(),
            text: text.into(),
        }
    }

    #[test]
    fn files_are_laid_end_to_end_with_a_byte_between() {
        let s = Sources::new(vec![file("a", "abc"), file("b", ""), file("c", "xy")]).expect("ok");
        let at = |start, end| {
            let (f, span) = s.locate(Span { start, end });
            (f.name.as_str(), span.start, span.end)
        };
        assert_eq!(at(0, 3), ("a", 0, 3));
        // The end of a file (its `Eof`) is still that file.
        assert_eq!(at(3, 3), ("a", 3, 3));
        assert_eq!(at(4, 4), ("b", 0, 0));
        assert_eq!(at(5, 6), ("c", 0, 1));
        assert_eq!(at(7, 7), ("c", 2, 2));
    }

    #[test]
    fn one_file_keeps_its_offsets() {
        let s = Sources::one(file("a.tg", "feature x: bool\n"));
        let (f, span) = s.locate(Span { start: 8, end: 9 });
        assert_eq!((f.name.as_str(), span), ("a.tg", Span { start: 8, end: 9 }));
    }

    #[test]
    fn no_files_too_many_files_and_duplicate_names_are_refused() {
        assert_eq!(Sources::new(Vec::new()), Err(SourcesError::Empty));
        let many = (0..=MAX_SOURCE_FILES)
            .map(|i| file(&format!("{i}.tg"), ""))
            .collect();
        assert_eq!(
            Sources::new(many),
            Err(SourcesError::TooManyFiles(MAX_SOURCE_FILES + 1))
        );
        assert_eq!(
            Sources::new(vec![file("a.tg", "x"), file("a.tg", "y")]),
            Err(SourcesError::DuplicateName("a.tg".into()))
        );
    }
}

//! The files commands read and write: each read is bounded, each failure names the file.
//!
//! A rule source is a `.tg` file or a folder ([`read_sources`]). A folder's program is every
//! file whose name ends in `.tg` in it and in its subfolders, sorted by path relative to the
//! folder (component by component, in byte order), so the result does not depend on the
//! order the file system lists them in. Files and folders whose names start with `.` are
//! skipped, as are other files; symbolic links are followed to files, not to folders. A
//! folder without a `.tg` file is a usage error. Together the files keep the limit of one
//! file ([`lang::MAX_SOURCE_BYTES`]); there are at most [`lang::MAX_SOURCE_FILES`] of them,
//! at most [`SOURCE_FOLDER_DEPTH_MAX`] folders deep.

use std::io::Read;
use std::path::{Path, PathBuf};

use tollgate_rules::bundle;
use tollgate_rules::lang::{self, SourceFile, Sources};

use crate::failure::{Failure, Outcome};

/// Key files are one short line.
const KEY_FILE_BYTES_MAX: u64 = 4 * 1024;
/// Deepest subfolder read under a rules folder (the folder itself is depth 0).
pub(crate) const SOURCE_FOLDER_DEPTH_MAX: usize = 16;
/// The extension of rule source files.
const SOURCE_EXTENSION: &str = "tg";

/// Reads at most `max` bytes; `None` for a larger file, which is not read further.
fn read_up_to(path: &Path, max: u64) -> Result<Option<Vec<u8>>, Failure> {
    let file = std::fs::File::open(path)
        .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", path.display())))?;
    let mut bytes = Vec::new();
    file.take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", path.display())))?;
    Ok((bytes.len() as u64 <= max).then_some(bytes))
}

/// Reads at most `max` bytes; a larger file is refused rather than read.
fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>, Failure> {
    read_up_to(path, max)?.ok_or_else(|| {
        Failure::Failed(format!(
            "{} is larger than the {max} bytes allowed",
            path.display()
        ))
    })
}

fn utf8(path: &Path, bytes: Vec<u8>) -> Result<SourceFile, Failure> {
    let text = String::from_utf8(bytes)
        .map_err(|_| Failure::Failed(format!("{} is not UTF-8 text", path.display())))?;
    Ok(SourceFile {
        name: path.display().to_string(),
        text,
    })
}

pub(crate) fn read_source(path: &Path) -> Result<SourceFile, Failure> {
    utf8(path, read_bounded(path, lang::MAX_SOURCE_BYTES as u64)?)
}

/// A rule source as the command line names it: one `.tg` file, or a folder of them.
pub(crate) struct Source {
    /// How summaries name it: the file's path, or the folder's with its number of files.
    pub(crate) label: String,
    pub(crate) sources: Sources,
}

impl Source {
    /// More than one file, so messages name the file of each test.
    pub(crate) fn several_files(&self) -> bool {
        self.sources.files().len() > 1
    }
}

/// Reads a `.tg` file, or the `.tg` files of a folder as the module doc says.
pub(crate) fn read_sources(path: &Path) -> Result<Source, Failure> {
    let meta = std::fs::metadata(path)
        .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", path.display())))?;
    if !meta.is_dir() {
        let file = read_source(path)?;
        return Ok(Source {
            label: file.name.clone(),
            sources: Sources::one(file),
        });
    }
    let mut found = Vec::new();
    collect_sources(path, &PathBuf::new(), 0, &mut found)?;
    if found.is_empty() {
        return Err(Failure::Usage(format!(
            "{} holds no .{SOURCE_EXTENSION} files (names starting with `.` are skipped)",
            path.display()
        )));
    }
    found.sort();
    let mut budget = lang::MAX_SOURCE_BYTES as u64;
    let mut files = Vec::with_capacity(found.len());
    for relative in &found {
        let full = path.join(relative);
        let bytes = read_up_to(&full, budget)?.ok_or_else(|| {
            Failure::Failed(format!(
                "the .{SOURCE_EXTENSION} files of {} are larger than the {} bytes allowed \
                 together",
                path.display(),
                lang::MAX_SOURCE_BYTES
            ))
        })?;
        budget -= bytes.len() as u64;
        files.push(utf8(&full, bytes)?);
    }
    let sources =
        Sources::new(files).map_err(|e| Failure::Usage(format!("{}: {e}", path.display())))?;
    Ok(Source {
        label: format!("{} ({} files)", path.display(), found.len()),
        sources,
    })
}

/// Adds to `found` the `.tg` files under `root.join(relative)`, as paths relative to `root`.
fn collect_sources(
    root: &Path,
    relative: &Path,
    depth: usize,
    found: &mut Vec<PathBuf>,
) -> Outcome {
    let dir = root.join(relative);
    let cannot = |e: std::io::Error| Failure::Usage(format!("cannot read {}: {e}", dir.display()));
    for entry in std::fs::read_dir(&dir).map_err(cannot)? {
        let entry = entry.map_err(cannot)?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let path = relative.join(&name);
        let kind = entry.file_type().map_err(cannot)?;
        if kind.is_dir() {
            if depth >= SOURCE_FOLDER_DEPTH_MAX {
                return Err(Failure::Failed(format!(
                    "{}: folders nest more than {SOURCE_FOLDER_DEPTH_MAX} deep",
                    root.display()
                )));
            }
            collect_sources(root, &path, depth + 1, found)?;
            continue;
        }
        if Path::new(&name)
            .extension()
            .is_none_or(|e| e != SOURCE_EXTENSION)
        {
            continue;
        }
        // A link counts if it leads to a file; links to folders are not followed.
        let is_file = kind.is_file() || (kind.is_symlink() && entry.path().is_file());
        if !is_file {
            continue;
        }
        if found.len() >= lang::MAX_SOURCE_FILES {
            return Err(Failure::Failed(format!(
                "{} holds more than the {} .{SOURCE_EXTENSION} files allowed",
                root.display(),
                lang::MAX_SOURCE_FILES
            )));
        }
        found.push(path);
    }
    Ok(())
}

pub(crate) fn read_bundle(path: &Path) -> Result<Vec<u8>, Failure> {
    read_bounded(path, bundle::BUNDLE_BYTES_MAX as u64)
}

pub(crate) fn write(path: &Path, bytes: &[u8]) -> Outcome {
    std::fs::write(path, bytes)
        .map_err(|e| Failure::Usage(format!("cannot write {}: {e}", path.display())))
}

pub(crate) fn read_key_text(path: &Path) -> Result<String, Failure> {
    String::from_utf8(read_bounded(path, KEY_FILE_BYTES_MAX)?)
        .map_err(|_| Failure::Usage(format!("{} is not a key file", path.display())))
}

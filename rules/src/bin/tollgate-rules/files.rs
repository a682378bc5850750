//! The files commands read and write: each read is bounded, each failure names the file.

use std::io::Read;
use std::path::Path;

use tollgate_rules::bundle;
use tollgate_rules::lang::{self, SourceFile};

use crate::failure::{Failure, Outcome};

/// Key files are one short line.
const KEY_FILE_BYTES_MAX: u64 = 4 * 1024;

/// Reads at most `max` bytes; a larger file is refused rather than read.
fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>, Failure> {
    let file = std::fs::File::open(path)
        .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", path.display())))?;
    let mut bytes = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", path.display())))?;
    if bytes.len() as u64 > max {
        return Err(Failure::Failed(format!(
            "{} is larger than the {max} bytes allowed",
            path.display()
        )));
    }
    Ok(bytes)
}

pub(crate) fn read_source(path: &Path) -> Result<SourceFile, Failure> {
    let bytes = read_bounded(path, lang::MAX_SOURCE_BYTES as u64)?;
    let text = String::from_utf8(bytes)
        .map_err(|_| Failure::Failed(format!("{} is not UTF-8 text", path.display())))?;
    Ok(SourceFile {
        name: path.display().to_string(),
        text,
    })
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

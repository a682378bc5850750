//! Durable files: the filesystem seam every durable write goes through, and the one durable
//! replace.
//!
//! # The seam
//!
//! What the edge must not lose goes to disk through [`Fs`]: the usage log (segments, ack
//! cursor, see [`crate::usage_log`]), the dead-letter file ([`crate::dead_letter`]), the saved
//! bundle and the facts snapshot ([`crate::bundles`]). [`Fs`] holds the operations whose
//! failure leaves something half done — open (create, append), write, truncate, `fdatasync`,
//! `fsync`, rename, fsync of a directory. Production uses [`RealFs`]: each method is the one
//! std call it names, no extra syscall (callers hold an `Arc<dyn Fs>` or `&dyn Fs`: one
//! indirect call beside a syscall). Tests pass a [`FaultyFs`], which fails chosen operations
//! with `EIO` as a dying disk does: what a real failed `fdatasync` leaves behind cannot be
//! produced on demand. Reads (`std::fs::read`, listing a directory) are not behind the seam:
//! a failed read is an ordinary error and leaves nothing half done.
//!
//! # Durable replace
//!
//! [`replace`] and [`replace_with`] swap a whole file: write `<path>.tmp` ([`temp_path`]),
//! fsync it, rename it over `<path>`, fsync the directory. A crash or a failure at any step
//! before the rename leaves the previous file as it was (and a stale `.tmp`, which readers
//! ignore and writers overwrite); after the rename, readers see the whole new file, and the
//! directory fsync makes the rename itself survive power loss. Used for the usage log's ack
//! cursor, the dead-letter file's rewrite, the bundle and the facts snapshot.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The filesystem operations durable files need. See the module docs.
pub trait Fs: Send + Sync + fmt::Debug {
    /// Opens `path` the way `how` says (create, create new, truncate, append, read).
    fn open(&self, path: &Path, how: &OpenOptions) -> io::Result<File>;
    /// Writes all of `bytes` at the file's position (its end, for a file opened to append).
    fn write_all(&self, file: &File, bytes: &[u8]) -> io::Result<()>;
    /// Cuts (or extends) the file to `len` bytes.
    fn set_len(&self, file: &File, len: u64) -> io::Result<()>;
    /// `fdatasync`: the file's data, and the metadata needed to read it back, are on disk.
    fn sync_data(&self, file: &File) -> io::Result<()>;
    /// `fsync`: the file's data and all its metadata are on disk.
    fn sync_all(&self, file: &File) -> io::Result<()>;
    /// Renames `from` over `to`, atomically (one filesystem).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Fsyncs the directory `dir`: entries created, renamed or removed in it are on disk.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// The real filesystem: each method is the std call it names.
#[derive(Debug, Clone, Copy, Default)]
pub struct RealFs;

impl Fs for RealFs {
    fn open(&self, path: &Path, how: &OpenOptions) -> io::Result<File> {
        how.open(path)
    }

    fn write_all(&self, mut file: &File, bytes: &[u8]) -> io::Result<()> {
        file.write_all(bytes)
    }

    fn set_len(&self, file: &File, len: u64) -> io::Result<()> {
        file.set_len(len)
    }

    fn sync_data(&self, file: &File) -> io::Result<()> {
        file.sync_data()
    }

    fn sync_all(&self, file: &File) -> io::Result<()> {
        file.sync_all()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

/// An operation of [`Fs`], as [`FaultyFs`] counts and fails them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsOp {
    Open,
    Write,
    SetLen,
    SyncData,
    SyncAll,
    Rename,
    SyncDir,
}

const FS_OPS: usize = 7;

/// Fault injection, for tests: the real filesystem, except that an operation set to fail
/// succeeds its first `ok` calls and fails every later one with `EIO` (as on a dying disk).
/// Counts every call of every operation.
#[derive(Debug, Default)]
pub struct FaultyFs {
    ok: [Option<u64>; FS_OPS],
    calls: [AtomicU64; FS_OPS],
}

impl FaultyFs {
    /// Fails nothing (yet).
    pub fn new() -> Self {
        Self::default()
    }

    /// `op` succeeds `ok` times, then fails every time.
    #[must_use]
    pub fn fail_after(mut self, op: FsOp, ok: u64) -> Self {
        self.ok[op as usize] = Some(ok);
        self
    }

    /// How many times `op` was called (failed calls included).
    pub fn calls(&self, op: FsOp) -> u64 {
        self.calls[op as usize].load(Ordering::Relaxed)
    }

    fn call(&self, op: FsOp) -> io::Result<()> {
        let n = self.calls[op as usize].fetch_add(1, Ordering::Relaxed);
        if self.ok[op as usize].is_some_and(|ok| n >= ok) {
            return Err(io::Error::from_raw_os_error(5));
        }
        Ok(())
    }
}

impl Fs for FaultyFs {
    fn open(&self, path: &Path, how: &OpenOptions) -> io::Result<File> {
        self.call(FsOp::Open)?;
        RealFs.open(path, how)
    }

    fn write_all(&self, file: &File, bytes: &[u8]) -> io::Result<()> {
        self.call(FsOp::Write)?;
        RealFs.write_all(file, bytes)
    }

    fn set_len(&self, file: &File, len: u64) -> io::Result<()> {
        self.call(FsOp::SetLen)?;
        RealFs.set_len(file, len)
    }

    fn sync_data(&self, file: &File) -> io::Result<()> {
        self.call(FsOp::SyncData)?;
        RealFs.sync_data(file)
    }

    fn sync_all(&self, file: &File) -> io::Result<()> {
        self.call(FsOp::SyncAll)?;
        RealFs.sync_all(file)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.call(FsOp::Rename)?;
        RealFs.rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.call(FsOp::SyncDir)?;
        RealFs.sync_dir(dir)
    }
}

/// Where [`replace`] writes before the rename: `<path>.tmp`.
pub fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

/// Fsyncs the directory that holds `path` (the current directory for a bare file name).
pub fn sync_parent(fs: &dyn Fs, path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => fs.sync_dir(dir),
        _ => fs.sync_dir(Path::new(".")),
    }
}

/// Replaces the file at `path` with `bytes`, durably: see the module docs.
pub fn replace(fs: &dyn Fs, path: &Path, bytes: &[u8]) -> io::Result<()> {
    replace_with(fs, path, |out| out.write_all(bytes))
}

/// [`replace`] with the content `write` writes, through a buffer (a large file is streamed,
/// never held whole in memory). An error from `write` leaves the previous file as it was.
pub fn replace_with(
    fs: &dyn Fs,
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<()> {
    let tmp = temp_path(path);
    let file = fs.open(
        &tmp,
        OpenOptions::new().write(true).create(true).truncate(true),
    )?;
    let mut out = io::BufWriter::new(SeamWriter { fs, file: &file });
    let written = write(&mut out).and_then(|()| out.flush());
    // Not dropped: a drop would try to write what a failed write left buffered, again. The
    // temporary file is abandoned then.
    let _ = out.into_parts();
    written?;
    fs.sync_all(&file)?;
    drop(file);
    fs.rename(&tmp, path)?;
    sync_parent(fs, path)
}

/// Writes through the seam, so that a [`FaultyFs`] sees (and may fail) every write.
struct SeamWriter<'a> {
    fs: &'a dyn Fs,
    file: &'a File,
}

impl Write for SeamWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.fs.write_all(self.file, buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A fresh directory path under the system temp dir (not created), removed on drop: for the
/// tests of every module that writes files.
#[cfg(test)]
pub(crate) struct TestDir(pub(crate) PathBuf);

#[cfg(test)]
impl TestDir {
    pub(crate) fn new(name: &str) -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "tollgate-{name}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        Self(path)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

#[cfg(test)]
impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_dir() -> TestDir {
        let dir = TestDir::new("durable");
        std::fs::create_dir_all(&dir.0).expect("mkdir");
        dir
    }

    #[test]
    fn a_replace_that_fails_before_the_rename_leaves_the_previous_file() {
        for (op, ok) in [
            (FsOp::Open, 0),
            (FsOp::Write, 0),
            (FsOp::SyncAll, 0),
            (FsOp::Rename, 0),
        ] {
            let dir = test_dir();
            let path = dir.0.join("file");
            replace(&RealFs, &path, b"before").expect("first replace");
            let faulty = FaultyFs::new().fail_after(op, ok);
            let err = replace(&faulty, &path, b"after").expect_err("fails");
            assert_eq!(err.raw_os_error(), Some(5), "{op:?}");
            assert_eq!(std::fs::read(&path).expect("read"), b"before", "{op:?}");
            assert_eq!(faulty.calls(op), 1, "{op:?}");
        }
    }

    #[test]
    fn a_replace_is_a_temp_file_fsynced_renamed_and_its_directory_fsynced() {
        let dir = test_dir();
        let path = dir.0.join("file");
        let fs = FaultyFs::new();
        replace(&fs, &path, b"whole").expect("replace");
        assert_eq!(std::fs::read(&path).expect("read"), b"whole");
        assert!(!temp_path(&path).exists(), "renamed away");
        for (op, n) in [
            (FsOp::Open, 1),
            (FsOp::Write, 1),
            (FsOp::SyncAll, 1),
            (FsOp::Rename, 1),
            (FsOp::SyncDir, 1),
            (FsOp::SyncData, 0),
        ] {
            assert_eq!(fs.calls(op), n, "{op:?}");
        }
        // A failed directory fsync is reported: the rename happened but may not survive a
        // power loss.
        let fs = FaultyFs::new().fail_after(FsOp::SyncDir, 0);
        assert!(replace(&fs, &path, b"again").is_err());
        assert_eq!(std::fs::read(&path).expect("read"), b"again");
    }

    #[test]
    fn an_operation_set_to_fail_succeeds_its_first_calls_then_never_again() {
        let dir = test_dir();
        let file = File::create(dir.0.join("f")).expect("create");
        let fs = FaultyFs::new().fail_after(FsOp::SyncData, 2);
        let results: Vec<bool> = (0..4).map(|_| fs.sync_data(&file).is_ok()).collect();
        assert_eq!(results, [true, true, false, false]);
        assert!(
            fs.sync_all(&file).is_ok(),
            "other operations are not affected"
        );
    }
}

//! The usage dead-letter file: events the control plane refuses (or this edge cannot read back
//! from its log), set aside so that they never block what follows, and kept until an operator
//! replays or discards them.
//!
//! # What goes here
//!
//! * Events the control plane rejected one by one in its ack (`unknown_account`,
//!   `unknown_meter`, `id_reused`, … — [`tollgate_protocol::usage::RejectedEvent`]).
//! * An event the control plane refused as a whole batch ([`crate::usage`] halves a refused
//!   batch until the refusal is pinned on one event; that one, refused
//!   [`crate::usage::REFUSALS_BEFORE_DEAD_LETTER`] times in a row, lands here as
//!   `batch_refused`).
//! * Log records this edge cannot use: a payload that does not decode (`undecodable_record`,
//!   kept as hex), or an event that breaks the shared bounds (e.g. written by an older edge
//!   before the bounds existed), found when the flusher reaches it.
//!
//! # Format
//!
//! `<data dir>/usage-dead-letter.jsonl`, beside the usage log: one JSON object per line,
//! [`DeadEntry`] (`seq` of the record in the usage log, `at_ms`, `code`, `detail`, and the
//! `event` or `payload_hex`). Readable with `jq`; `GET /v1/dead-letter` lists it.
//!
//! # Crash rules
//!
//! Entries are appended and `fdatasync`ed *before* the usage log acknowledges their records,
//! so a crash in between writes an entry twice at worst: an entry whose `seq` is already in the
//! file is skipped, on append and at open. A torn last line (a crash mid-append) is cut off at
//! open. Removing entries (replay, discard) rewrites the file ([`durable::replace_with`]: temp
//! file, fsync, rename, fsync of the directory). Every write goes through the [`Fs`] seam.
//!
//! # Bound
//!
//! At most `max_bytes` (`TOLLGATE_EDGE_USAGE_DEAD_LETTER_BYTES_MAX`, default 64 MiB): usage for
//! random account ids is refused by the control plane and would otherwise fill the disk.
//! Entries past the bound are dropped — counted in `usage_dead_letter_dropped_events_total`
//! and logged as errors, never silently.
//!
//! # Replay and discard
//!
//! `POST /v1/dead-letter/replay` (operator token) validates every entry's event again and
//! stores the valid ones in the usage log as new records (same event ids: the control plane
//! counts each once), then removes them from this file. `POST /v1/dead-letter/discard`
//! removes every entry. A crash between storing and removing leaves an entry to be replayed
//! again: harmless, for the same reason.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tollgate_protocol::usage::UsageEvent;

use crate::durable::{self, Fs};

/// File name, in the edge's data directory.
pub const FILE_NAME: &str = "usage-dead-letter.jsonl";
/// Longest `detail` kept per entry, bytes (a control plane's problem body can be long).
pub const DETAIL_BYTES_MAX: usize = 1_024;

/// One dead-lettered record.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadEntry {
    /// The record's seq in the usage log (unique per record; replays get new ones).
    pub seq: u64,
    /// When it was set aside, unix ms.
    pub at_ms: i64,
    /// Why: a stable code (the control plane's rejection code, `batch_refused`,
    /// `undecodable_record`, or a bound the event breaks).
    pub code: String,
    pub detail: String,
    /// The event, when the record decoded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<UsageEvent>,
    /// The raw payload, hex, when it did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_hex: Option<String>,
}

impl DeadEntry {
    pub fn new(seq: u64, code: impl Into<String>, detail: impl Into<String>) -> Self {
        let mut detail: String = detail.into();
        if detail.len() > DETAIL_BYTES_MAX {
            let mut cut = DETAIL_BYTES_MAX;
            while !detail.is_char_boundary(cut) {
                cut -= 1;
            }
            detail.truncate(cut);
        }
        Self {
            seq,
            at_ms: crate::clock::now_ms(),
            code: code.into(),
            detail,
            event: None,
            payload_hex: None,
        }
    }
}

/// What an append did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Appended {
    pub written: usize,
    /// Entries whose seq the file already held.
    pub already: usize,
    /// Entries past the byte bound: not kept.
    pub dropped: usize,
}

pub struct DeadLetter {
    fs: Arc<dyn Fs>,
    path: PathBuf,
    file: File,
    bytes: u64,
    seqs: HashSet<u64>,
    max_bytes: u64,
}

impl DeadLetter {
    /// Opens (creating) the file, cutting off a torn last line and noting which seqs it holds.
    /// Every write goes through `fs`.
    pub fn open(fs: Arc<dyn Fs>, path: &Path, max_bytes: u64) -> io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let (entries, good_bytes) = Self::scan(path)?;
        let file = fs.open(
            path,
            OpenOptions::new().create(true).read(true).append(true),
        )?;
        if file.metadata()?.len() > good_bytes {
            fs.set_len(&file, good_bytes)?;
            fs.sync_data(&file)?;
        }
        durable::sync_parent(fs.as_ref(), path)?;
        Ok(Self {
            fs,
            path: path.to_owned(),
            file,
            bytes: good_bytes,
            seqs: entries.iter().map(|e| e.seq).collect(),
            max_bytes,
        })
    }

    /// The entries a file holds (first of each seq) and the length of its whole lines. A line
    /// that does not parse ends the scan there (a torn tail).
    fn scan(path: &Path) -> io::Result<(Vec<DeadEntry>, u64)> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
            Err(e) => return Err(e),
        };
        let mut reader = io::BufReader::new(file);
        let (mut entries, mut seen, mut good) = (Vec::new(), HashSet::new(), 0u64);
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = reader.read_until(b'\n', &mut line)?;
            if n == 0 || line.last() != Some(&b'\n') {
                break;
            }
            let Ok(entry) = serde_json::from_slice::<DeadEntry>(&line) else {
                tracing::error!(path = %path.display(), offset = good, "unreadable dead-letter line: the rest of the file is cut off");
                break;
            };
            good += n as u64;
            if seen.insert(entry.seq) {
                entries.push(entry);
            }
        }
        Ok((entries, good))
    }

    /// Appends entries (skipping seqs already held, dropping what passes the bound) and
    /// fdatasyncs before returning.
    pub fn append(&mut self, entries: Vec<DeadEntry>) -> io::Result<Appended> {
        let mut out = Appended::default();
        let mut buf = Vec::new();
        let mut added = Vec::new();
        for e in entries {
            if self.seqs.contains(&e.seq) || added.contains(&e.seq) {
                out.already += 1;
                continue;
            }
            let mut line = serde_json::to_vec(&e).map_err(io::Error::other)?;
            line.push(b'\n');
            if self.bytes + (buf.len() + line.len()) as u64 > self.max_bytes {
                tracing::error!(seq = e.seq, code = %e.code, event = ?e.event, max_bytes = self.max_bytes,
                    "usage dead-letter file full: entry dropped");
                out.dropped += 1;
                continue;
            }
            buf.extend_from_slice(&line);
            added.push(e.seq);
        }
        if !buf.is_empty() {
            if let Err(err) = self
                .fs
                .write_all(&self.file, &buf)
                .and_then(|()| self.fs.sync_data(&self.file))
            {
                // Whatever part landed is cut off again: the entries were not kept.
                let _ = self.fs.set_len(&self.file, self.bytes);
                return Err(err);
            }
            self.bytes += buf.len() as u64;
            out.written = added.len();
            self.seqs.extend(added);
        }
        Ok(out)
    }

    pub fn len(&self) -> usize {
        self.seqs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every entry, oldest first.
    pub fn entries(&self) -> io::Result<Vec<DeadEntry>> {
        Self::scan(&self.path).map(|(entries, _)| entries)
    }

    /// Rewrites the file without the entries whose seq is in `seqs`; returns how many went.
    pub fn remove(&mut self, seqs: &HashSet<u64>) -> io::Result<usize> {
        let keep: Vec<DeadEntry> = self
            .entries()?
            .into_iter()
            .filter(|e| !seqs.contains(&e.seq))
            .collect();
        let before = self.seqs.len();
        let mut bytes = 0u64;
        durable::replace_with(self.fs.as_ref(), &self.path, |out| {
            for e in &keep {
                let mut line = serde_json::to_vec(e).map_err(io::Error::other)?;
                line.push(b'\n');
                bytes += line.len() as u64;
                out.write_all(&line)?;
            }
            Ok(())
        })?;
        self.file = self
            .fs
            .open(&self.path, OpenOptions::new().read(true).append(true))?;
        self.bytes = bytes;
        self.seqs = keep.iter().map(|e| e.seq).collect();
        Ok(before - self.seqs.len())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::durable::{FaultyFs, FsOp, RealFs, TestDir};

    fn entry(seq: u64) -> DeadEntry {
        DeadEntry::new(seq, "unknown_account", "no account")
    }

    #[test]
    fn entries_survive_reopen_once_each_and_a_torn_tail_is_cut() {
        let dir = TestDir::new("dead-letter");
        let path = dir.path().join(FILE_NAME);
        let mut d = DeadLetter::open(Arc::new(RealFs), &path, 1 << 20).expect("open");
        let a = d
            .append(vec![entry(1), entry(2), entry(2)])
            .expect("append");
        assert_eq!((a.written, a.already, a.dropped), (2, 1, 0));
        // A crash between the dead-letter fsync and the log's ack writes seq 2 again.
        assert_eq!(d.append(vec![entry(2)]).expect("again").already, 1);
        drop(d);
        // A crash mid-append leaves half a line.
        let mut f = OpenOptions::new().append(true).open(&path).expect("f");
        f.write_all(br#"{"seq":3,"at_ms":1,"co"#).expect("torn");
        drop(f);
        let mut d = DeadLetter::open(Arc::new(RealFs), &path, 1 << 20).expect("reopen");
        assert_eq!(d.len(), 2);
        let seqs: Vec<u64> = d.entries().expect("read").iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [1, 2]);
        // The torn bytes are gone: the next append starts on a line of its own.
        d.append(vec![entry(3)]).expect("append");
        drop(d);
        let d = DeadLetter::open(Arc::new(RealFs), &path, 1 << 20).expect("reopen");
        assert_eq!(d.len(), 3);
    }

    #[test]
    fn the_byte_bound_drops_and_counts_instead_of_growing() {
        let dir = TestDir::new("dead-letter");
        let path = dir.path().join(FILE_NAME);
        let one = serde_json::to_vec(&entry(1)).expect("json").len() as u64 + 1;
        let mut d = DeadLetter::open(Arc::new(RealFs), &path, one * 2).expect("open");
        let a = d
            .append(vec![entry(1), entry(2), entry(3)])
            .expect("append");
        assert_eq!((a.written, a.dropped), (2, 1));
        assert!(d.bytes() <= one * 2);
    }

    #[test]
    fn a_failed_fdatasync_keeps_no_entry_of_the_append() {
        let dir = TestDir::new("dead-letter");
        let path = dir.path().join(FILE_NAME);
        let mut d = DeadLetter::open(Arc::new(RealFs), &path, 1 << 20).expect("open");
        d.append(vec![entry(1)]).expect("append");
        drop(d);
        let dying = Arc::new(FaultyFs::new().fail_after(FsOp::SyncData, 0));
        let mut d = DeadLetter::open(dying, &path, 1 << 20).expect("open");
        let bytes = d.bytes();
        assert!(d.append(vec![entry(2), entry(3)]).is_err());
        assert_eq!(
            (d.len(), d.bytes()),
            (1, bytes),
            "cut back to what was kept"
        );
        drop(d);
        let d = DeadLetter::open(Arc::new(RealFs), &path, 1 << 20).expect("reopen");
        let seqs: Vec<u64> = d.entries().expect("read").iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [1]);
    }

    #[test]
    fn removing_entries_rewrites_the_file() {
        let dir = TestDir::new("dead-letter");
        let path = dir.path().join(FILE_NAME);
        let mut d = DeadLetter::open(Arc::new(RealFs), &path, 1 << 20).expect("open");
        d.append(vec![entry(1), entry(2), entry(3)])
            .expect("append");
        assert_eq!(d.remove(&HashSet::from([1, 3])).expect("remove"), 2);
        d.append(vec![entry(4)]).expect("append");
        drop(d);
        let d = DeadLetter::open(Arc::new(RealFs), &path, 1 << 20).expect("reopen");
        let seqs: Vec<u64> = d.entries().expect("read").iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [2, 4]);
    }
}

//! The durable usage log: a checksummed, segmented, append-only log of metered-usage events.
//!
//! Usage events are money. The edge answers `202` for a usage `POST` only after the events are
//! on disk and fsynced, and forgets them only after the control plane acknowledged them. This
//! module is the storage layer of that path: synchronous, no tokio, and blind to what an event
//! says (payloads are opaque bytes). The layer above does group commit: it [`UsageLog::append`]s
//! the events of several requests, calls [`UsageLog::sync`] once, then answers them all; a
//! flusher ships [`UsageLog::unacked`] batches and calls [`UsageLog::ack`] when the control
//! plane confirmed them.
//!
//! # Limits
//!
//! | limit | value |
//! |---|---|
//! | one payload | [`PAYLOAD_BYTES_MAX`] (1 MiB); more is [`LogError::TooLarge`] |
//! | un-acked payload bytes | [`LogOptions::max_pending_bytes`] (default 256 MiB); more is [`LogError::Full`] |
//! | one segment file | [`LogOptions::segment_bytes`] (default 64 MiB); a batch never spans two files, so one batch larger than this makes one larger file |
//!
//! Every un-acked record is also held in memory (a `VecDeque`), so [`UsageLog::unacked`] never
//! reads the disk. Memory is therefore bounded by `max_pending_bytes` plus a small per-record
//! overhead, except right after [`UsageLog::open`]: recovery loads whatever un-acked records the
//! disk holds even if that is more than the bound (appends then get `Full` until acks catch up).
//! Recovery reads one segment file at a time, whole.
//!
//! # On-disk format
//!
//! One directory per log:
//!
//! * `<first seq, 20 digits>.seg` — segment files, e.g. `00000000000000000042.seg`, named by the
//!   seq of the first record written to them, zero-padded so that lexical order is seq order.
//!   A segment is a plain sequence of records (no file header):
//!
//!   ```text
//!   [len: u32 LE][crc32: u32 LE][seq: u64 LE][payload: len bytes]
//!   ```
//!
//!   `crc32` is CRC-32 (IEEE, `crc32fast`) over the 8 seq bytes followed by the payload.
//!   Seqs are consecutive within a file, strictly increasing across the log, and every record of
//!   segment `N` has `N <= seq < ` the next segment's name.
//! * `ack` — the ack cursor: `[magic "TGUA"][floor: u64 LE][crc32 over magic + floor: u32 LE]`.
//!   Every seq below `floor` is acknowledged, and no seq below it is ever issued again. It is
//!   replaced atomically ([`durable::replace`]: write `ack.tmp`, fsync, rename, fsync the
//!   directory). A missing cursor
//!   means floor 0; a damaged one refuses to open ([`LogError::CorruptCursor`]): guessing would
//!   either lose or double-bill usage.
//! * `lock` — held with an exclusive advisory lock while a [`UsageLog`] is open, so two
//!   processes never share a log ([`LogError::Locked`]).
//!
//! # Crash rules
//!
//! * After [`UsageLog::sync`] returns `Ok`, every record appended before it survives power loss:
//!   the active segment is `fdatasync`ed, and the directory is fsynced when a segment file was
//!   created since the last sync. Rolling to a new segment first `fdatasync`s the old one, so
//!   only the last segment can ever have a torn tail.
//! * [`UsageLog::unacked`] returns only synced records: nothing leaves the edge before it is
//!   durable here, so a seq the control plane has seen is never issued again, even when a crash
//!   loses un-synced appends (whose seqs are then reused — they were never answered nor sent).
//! * A failed write is rolled back (the file is truncated to its previous length); if that or
//!   any fsync fails, the log refuses further appends and syncs ([`LogError::Failed`]): after a
//!   failed fsync the page cache no longer tells what is on disk, and only recovery
//!   (re-[`open`](UsageLog::open)) does.
//! * Segment files are deleted only when every seq they can hold is below the durable ack floor
//!   (by name: a segment holds seqs below the next segment's name). Deletion is not fsynced: a
//!   segment that comes back after a crash is deleted again at open.
//!
//! # Recovery ([`UsageLog::open`])
//!
//! Segments whose seqs are all acked are deleted unread. The others are scanned in order:
//!
//! * A damaged record (length past the file end, length above [`PAYLOAD_BYTES_MAX`], or crc
//!   mismatch) with no valid record after it in the **last** segment is a torn tail: the file is
//!   truncated there (and fsynced) and the bytes counted in [`RecoveryReport::torn_tail_bytes`].
//! * Any other damaged record is corruption: counted in [`RecoveryReport::corrupt_records`]
//!   (its bytes in [`RecoveryReport::corrupt_bytes`]), logged with `tracing::error!`, and
//!   skipped. The scan resumes at the next valid record: first where the damaged record's own
//!   length points, else at the first offset holding a record whose crc is valid and whose seq
//!   is plausible (at least the next expected seq, at most one more per 16 skipped bytes). If
//!   none follows in an older segment, the rest of that segment is skipped as one corrupt record.
//! * A record with a valid crc but a seq that is not strictly increasing (or outside its
//!   segment's range) is corrupt too, counted and skipped.
//! * Every kept segment and the directory are then fsynced, so what recovery found is durable
//!   before any of it is shipped; the next seq is the largest of (last record's seq + 1, the ack
//!   floor, the last segment's name).
//!
//! # Why a log of our own, not `redb` or `fjall`
//!
//! The buffer's access pattern is a queue: append at the tail, read and delete at the head,
//! nothing else. A log does exactly that with one `fdatasync` per group commit and no write
//! amplification; an embedded B-tree (`redb`) commits copy-on-write pages with more than one
//! sync, and an LSM (`fjall`) adds its own journal, memtables and compaction for keys we never
//! look up. Owning the format also lets the crash rules above be stated exactly and tested
//! against a model (the proptest below cuts unsynced bytes and tears tails the way power loss
//! does). The cost is this module: checksummed, length-prefixed records, torn-tail recovery,
//! corruption counted and never skipped silently.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::durable::{self, Fs, RealFs};

/// Largest payload of one record. Usage events are small; this bounds a corrupt length field.
pub const PAYLOAD_BYTES_MAX: usize = 1 << 20;
/// `len` + `crc32` + `seq`.
pub const RECORD_HEADER_BYTES: usize = 16;

const SEGMENT_EXTENSION: &str = "seg";
const SEGMENT_NAME_DIGITS: usize = 20;
const CURSOR_FILE: &str = "ack";
const CURSOR_MAGIC: &[u8; 4] = b"TGUA";
const CURSOR_BYTES: usize = 16;
const LOCK_FILE: &str = "lock";

const SEGMENT_BYTES_DEFAULT: u64 = 64 << 20;
const MAX_PENDING_BYTES_DEFAULT: u64 = 256 << 20;

/// Tuning of a [`UsageLog`], and the filesystem it writes through.
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// Roll to a new segment file when a batch would take the active one past this size
    /// (bytes, framing included). Default 64 MiB.
    pub segment_bytes: u64,
    /// Bound on the payload bytes of un-acked records (held on disk and in memory). Default
    /// 256 MiB.
    pub max_pending_bytes: u64,
    /// Every durable write (segments, the ack cursor) goes through it: [`RealFs`] (the
    /// default) in production, a [`durable::FaultyFs`] in tests that make the disk fail.
    pub fs: Arc<dyn Fs>,
}

impl Default for LogOptions {
    fn default() -> Self {
        Self {
            segment_bytes: SEGMENT_BYTES_DEFAULT,
            max_pending_bytes: MAX_PENDING_BYTES_DEFAULT,
            fs: Arc::new(RealFs),
        }
    }
}

/// One usage record: its seq (never reused) and opaque payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub payload: Vec<u8>,
}

/// What [`UsageLog::open`] found on disk.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Un-acked records recovered.
    pub records: u64,
    /// Segment files kept after recovery.
    pub segments: u64,
    /// Bytes truncated off the last segment's end (a torn write; expected after a crash).
    pub torn_tail_bytes: u64,
    /// Damaged records that were not at the tail: counted, logged, skipped. Never expected.
    pub corrupt_records: u64,
    /// Bytes skipped with those corrupt records.
    pub corrupt_bytes: u64,
}

/// Why a [`UsageLog`] call failed.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// Appending would take the un-acked payload bytes past `max_pending_bytes`; nothing was
    /// written. Retrying helps once the control plane acknowledged usage (the edge sheds load
    /// meanwhile).
    #[error("usage buffer full: {pending_bytes} payload bytes un-acked, bound {max_pending_bytes}")]
    Full {
        pending_bytes: u64,
        max_pending_bytes: u64,
    },
    /// One payload is larger than [`PAYLOAD_BYTES_MAX`]; nothing was written. Retrying never
    /// helps.
    #[error("usage payload of {bytes} bytes exceeds the {max_bytes} byte limit")]
    TooLarge { bytes: usize, max_bytes: usize },
    /// Another open log (in this or another process) holds the directory's lock. Retrying helps
    /// only once that one is closed.
    #[error("usage log directory {} is in use", dir.display())]
    Locked { dir: PathBuf },
    /// The ack cursor file is damaged. Retrying never helps; an operator must decide (a wrong
    /// floor either drops or double-bills usage).
    #[error("usage log ack cursor {} is damaged", path.display())]
    CorruptCursor { path: PathBuf },
    /// An earlier write rollback or fsync failed, so what is on disk is unknown; appends and
    /// syncs are refused. Reopen the log (recovery) to continue.
    #[error("usage log failed earlier; reopen it to recover")]
    Failed,
    /// The filesystem said no. A retry may help (e.g. after freeing disk space).
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// A segment that is no longer written to.
#[derive(Debug)]
struct ClosedSegment {
    first_seq: u64,
    path: PathBuf,
}

/// The segment appends go to.
#[derive(Debug)]
struct ActiveSegment {
    first_seq: u64,
    path: PathBuf,
    file: File,
    len_bytes: u64,
}

/// The durable usage log. See the module documentation for format and crash rules.
#[derive(Debug)]
pub struct UsageLog {
    dir: PathBuf,
    opts: LogOptions,
    /// Held (locked) for the log's lifetime.
    _lock: File,
    /// Older segments, oldest first; all their seqs are below `active`'s.
    closed: VecDeque<ClosedSegment>,
    /// `None` only when no segment file exists (then `closed` is empty too).
    active: Option<ActiveSegment>,
    /// Un-acked records, oldest first, including un-synced ones.
    pending: VecDeque<Record>,
    pending_bytes: u64,
    next_seq: u64,
    /// Every record with a seq below this is durable.
    synced_seq: u64,
    /// The durable ack floor.
    acked_seq: u64,
    /// A segment file was created since the last directory fsync.
    dir_dirty: bool,
    failed: bool,
    /// Reused encoding buffer: one `write_all` per append.
    write_buf: Vec<u8>,
}

impl UsageLog {
    /// Opens (creating `dir` if missing) and recovers the log. See the module documentation.
    pub fn open(dir: &Path, opts: LogOptions) -> Result<(Self, RecoveryReport), LogError> {
        std::fs::create_dir_all(dir)?;
        let fs = opts.fs.clone();
        let fs = fs.as_ref();
        let lock = lock_dir(fs, dir)?;
        remove_if_exists(&durable::temp_path(&dir.join(CURSOR_FILE)))?;
        let acked_seq = read_cursor(dir)?;

        let mut segments = list_segments(dir)?;
        let max_name = segments.last().map_or(0, |s| s.first_seq);

        // Segments whose every seq is acked go unread: segment i holds seqs below segment i+1's
        // name.
        let fully_acked = segments
            .windows(2)
            .take_while(|w| w[1].first_seq <= acked_seq)
            .count();
        for seg in segments.drain(..fully_acked) {
            remove_if_exists(&seg.path)?;
        }

        let mut report = RecoveryReport::default();
        let mut pending = VecDeque::new();
        let mut pending_bytes = 0u64;
        let mut last_seq: Option<u64> = None;
        let mut last_len_bytes = 0u64;
        let mut last_has_pending = false;
        for (i, seg) in segments.iter().enumerate() {
            let next_first = segments.get(i + 1).map(|s| s.first_seq);
            let is_last = next_first.is_none();
            let buf = std::fs::read(&seg.path)?;
            let seq_min =
                last_seq.map_or(seg.first_seq, |s| s.saturating_add(1).max(seg.first_seq));
            let scan = scan_segment(&buf, seq_min, next_first.unwrap_or(u64::MAX), is_last);
            for corrupt in &scan.corrupt {
                tracing::error!(
                    segment = %seg.path.display(),
                    offset = corrupt.offset,
                    skipped_bytes = corrupt.bytes,
                    "corrupt usage record skipped"
                );
                report.corrupt_records += 1;
                report.corrupt_bytes += corrupt.bytes;
            }
            let mut has_pending = false;
            for rec in &scan.records {
                last_seq = Some(rec.seq);
                if rec.seq >= acked_seq {
                    let payload = buf.get(rec.payload.clone()).unwrap_or_default().to_vec();
                    pending_bytes += len_u64(payload.len());
                    pending.push_back(Record {
                        seq: rec.seq,
                        payload,
                    });
                    has_pending = true;
                }
            }
            let mut len_bytes = len_u64(buf.len());
            if let Some(at) = scan.torn_at {
                let torn = len_u64(buf.len() - at);
                tracing::warn!(
                    segment = %seg.path.display(),
                    offset = at,
                    torn_bytes = torn,
                    "torn usage log tail truncated"
                );
                let file = fs.open(&seg.path, OpenOptions::new().write(true))?;
                fs.set_len(&file, len_u64(at))?;
                fs.sync_data(&file)?;
                len_bytes = len_u64(at);
                report.torn_tail_bytes += torn;
            }
            if is_last {
                last_len_bytes = len_bytes;
                last_has_pending = has_pending;
            }
        }

        let next_seq = last_seq
            .map_or(0, |s| s.saturating_add(1))
            .max(acked_seq)
            .max(max_name);

        // The last segment becomes the active one, unless everything it holds is acked.
        let mut active = None;
        if let Some(last) = segments.pop() {
            if !last_has_pending && next_seq == acked_seq {
                remove_if_exists(&last.path)?;
            } else {
                let file = fs.open(&last.path, OpenOptions::new().append(true))?;
                fs.sync_data(&file)?;
                active = Some(ActiveSegment {
                    first_seq: last.first_seq,
                    path: last.path,
                    file,
                    len_bytes: last_len_bytes,
                });
            }
        }
        let mut closed = VecDeque::with_capacity(segments.len());
        for seg in segments {
            fs.sync_data(&fs.open(&seg.path, OpenOptions::new().read(true))?)?;
            closed.push_back(seg);
        }
        fs.sync_dir(dir)?;

        report.records = len_u64(pending.len());
        report.segments = len_u64(closed.len()) + u64::from(active.is_some());
        if pending_bytes > opts.max_pending_bytes {
            tracing::warn!(
                pending_bytes,
                max_pending_bytes = opts.max_pending_bytes,
                "recovered usage exceeds the pending bound; appends are refused until acked"
            );
        }
        tracing::info!(
            records = report.records,
            segments = report.segments,
            torn_tail_bytes = report.torn_tail_bytes,
            corrupt_records = report.corrupt_records,
            next_seq,
            acked_seq,
            "usage log recovered"
        );

        let log = Self {
            dir: dir.to_path_buf(),
            opts,
            _lock: lock,
            closed,
            active,
            pending,
            pending_bytes,
            next_seq,
            synced_seq: next_seq,
            acked_seq,
            dir_dirty: false,
            failed: false,
            write_buf: Vec::new(),
        };
        Ok((log, report))
    }

    /// Writes the payloads (no fsync) and returns their seqs (consecutive). All-or-nothing:
    /// `TooLarge` if one payload exceeds [`PAYLOAD_BYTES_MAX`], `Full` if the un-acked bytes plus
    /// these would exceed `max_pending_bytes`; either way nothing is written. The records are
    /// durable (and visible to [`UsageLog::unacked`]) after the next successful
    /// [`UsageLog::sync`].
    pub fn append(&mut self, payloads: &[&[u8]]) -> Result<Range<u64>, LogError> {
        if self.failed {
            return Err(LogError::Failed);
        }
        let first_seq = self.next_seq;
        if payloads.is_empty() {
            return Ok(first_seq..first_seq);
        }
        let mut batch_bytes = 0u64;
        for payload in payloads {
            if payload.len() > PAYLOAD_BYTES_MAX {
                return Err(LogError::TooLarge {
                    bytes: payload.len(),
                    max_bytes: PAYLOAD_BYTES_MAX,
                });
            }
            batch_bytes += len_u64(payload.len());
        }
        if self.pending_bytes.saturating_add(batch_bytes) > self.opts.max_pending_bytes {
            return Err(LogError::Full {
                pending_bytes: self.pending_bytes,
                max_pending_bytes: self.opts.max_pending_bytes,
            });
        }
        let end_seq = first_seq
            .checked_add(len_u64(payloads.len()))
            .ok_or_else(|| io::Error::other("usage log seq space exhausted"))?;

        self.write_buf.clear();
        for (seq, payload) in (first_seq..end_seq).zip(payloads) {
            encode_record(&mut self.write_buf, seq, payload);
        }
        let batch_len = len_u64(self.write_buf.len());

        if let Some(active) = &self.active
            && active.len_bytes > 0
            && active.len_bytes.saturating_add(batch_len) > self.opts.segment_bytes
        {
            self.roll()?;
        }
        if self.active.is_none() {
            let path = segment_path(&self.dir, first_seq);
            let file = self
                .opts
                .fs
                .open(&path, OpenOptions::new().append(true).create_new(true))?;
            self.dir_dirty = true;
            self.active = Some(ActiveSegment {
                first_seq,
                path,
                file,
                len_bytes: 0,
            });
        }
        let Some(active) = self.active.as_mut() else {
            return Err(io::Error::other("usage log has no active segment").into());
        };

        if let Err(e) = self.opts.fs.write_all(&active.file, &self.write_buf) {
            // Roll back a partial write so the next append does not land after garbage.
            if let Err(rollback) = self.opts.fs.set_len(&active.file, active.len_bytes) {
                tracing::error!(
                    segment = %active.path.display(),
                    error = %rollback,
                    "usage log write rollback failed; log refuses appends until reopened"
                );
                self.failed = true;
            }
            return Err(e.into());
        }
        active.len_bytes += batch_len;
        for (seq, payload) in (first_seq..end_seq).zip(payloads) {
            self.pending.push_back(Record {
                seq,
                payload: payload.to_vec(),
            });
        }
        self.pending_bytes += batch_bytes;
        self.next_seq = end_seq;
        Ok(first_seq..end_seq)
    }

    /// `fdatasync`s the active segment (and fsyncs the directory if segments were created since
    /// the last sync). After it returns `Ok`, everything appended before is durable. After an
    /// `Err`, nothing is known: the log refuses further appends and syncs until reopened.
    pub fn sync(&mut self) -> Result<(), LogError> {
        if self.failed {
            return Err(LogError::Failed);
        }
        if self.synced_seq == self.next_seq && !self.dir_dirty {
            return Ok(());
        }
        if let Some(active) = &self.active
            && let Err(e) = self.opts.fs.sync_data(&active.file)
        {
            self.fail("fdatasync of the active segment", &e);
            return Err(e.into());
        }
        if self.dir_dirty {
            if let Err(e) = self.opts.fs.sync_dir(&self.dir) {
                self.fail("fsync of the log directory", &e);
                return Err(e.into());
            }
            self.dir_dirty = false;
        }
        self.synced_seq = self.next_seq;
        Ok(())
    }

    /// The oldest un-acked durable records: at most `max` of them and at most `max_bytes`
    /// payload bytes, but always at least one if any is durable and `max > 0`. Records appended
    /// but not yet synced are not returned (nothing is shipped before it is durable here).
    pub fn unacked(&self, max: usize, max_bytes: usize) -> Vec<Record> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for record in self.synced() {
            if out.len() >= max {
                break;
            }
            let with = bytes.saturating_add(record.payload.len());
            if !out.is_empty() && with > max_bytes {
                break;
            }
            bytes = with;
            out.push(record.clone());
        }
        out
    }

    /// Every synced, un-acked record, oldest first, without copying (what recovery replays
    /// into counters).
    pub fn synced(&self) -> impl Iterator<Item = &Record> {
        self.pending
            .iter()
            .take_while(|record| record.seq < self.synced_seq)
    }

    /// Everything with a seq below `upto` is acknowledged: persists the ack cursor durably,
    /// drops those records from memory and deletes segment files whose records are all acked.
    /// Monotonic: an `upto` at or below the current floor changes nothing (but retries deleting
    /// acked segments). An `upto` beyond the durable records is clamped (a caller bug, logged).
    ///
    /// On `Err` the cursor may or may not have moved on disk, but memory still holds the
    /// records; retrying the same `upto` is safe.
    pub fn ack(&mut self, upto: u64) -> Result<(), LogError> {
        let upto = if upto > self.synced_seq {
            tracing::warn!(
                upto,
                synced_seq = self.synced_seq,
                "ack beyond the durable usage records; clamped"
            );
            self.synced_seq
        } else {
            upto
        };
        if upto > self.acked_seq {
            write_cursor(self.opts.fs.as_ref(), &self.dir, upto)?;
            self.acked_seq = upto;
            while let Some(front) = self.pending.front()
                && front.seq < upto
            {
                self.pending_bytes = self
                    .pending_bytes
                    .saturating_sub(len_u64(front.payload.len()));
                self.pending.pop_front();
            }
        }
        self.delete_acked_segments();
        Ok(())
    }

    /// Un-acked records (synced or not).
    pub fn pending_records(&self) -> u64 {
        len_u64(self.pending.len())
    }

    /// Payload bytes of the un-acked records (synced or not).
    pub fn pending_bytes(&self) -> u64 {
        self.pending_bytes
    }

    /// The seq the next appended record gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Every seq below this is acknowledged (the durable ack cursor).
    pub fn acked_seq(&self) -> u64 {
        self.acked_seq
    }

    /// Makes the active segment durable and closes it; the next append creates a new one.
    fn roll(&mut self) -> Result<(), LogError> {
        let Some(active) = self.active.take() else {
            return Ok(());
        };
        if let Err(e) = self.opts.fs.sync_data(&active.file) {
            self.active = Some(active);
            self.fail("fdatasync of a segment being rolled", &e);
            return Err(e.into());
        }
        self.closed.push_back(ClosedSegment {
            first_seq: active.first_seq,
            path: active.path,
        });
        Ok(())
    }

    /// Deletes segments whose seqs are all below the ack floor. A failure is logged and retried
    /// on the next ack (the floor is already durable, so the records never come back).
    fn delete_acked_segments(&mut self) {
        loop {
            let next_first = match (self.closed.get(1), &self.active) {
                (Some(next), _) => next.first_seq,
                (None, Some(active)) => active.first_seq,
                (None, None) => u64::MAX,
            };
            let Some(oldest) = self.closed.front() else {
                break;
            };
            if next_first > self.acked_seq {
                break;
            }
            if let Err(e) = remove_if_exists(&oldest.path) {
                tracing::error!(segment = %oldest.path.display(), error = %e, "deleting acked usage segment failed");
                return;
            }
            self.closed.pop_front();
        }
        // The active segment goes too once everything written is acked; the next append starts
        // a new one named by the next seq.
        if self.closed.is_empty()
            && self.acked_seq == self.next_seq
            && let Some(active) = &self.active
        {
            if let Err(e) = remove_if_exists(&active.path) {
                tracing::error!(segment = %active.path.display(), error = %e, "deleting acked usage segment failed");
                return;
            }
            self.active = None;
        }
    }

    fn fail(&mut self, what: &str, error: &io::Error) {
        tracing::error!(
            dir = %self.dir.display(),
            error = %error,
            "usage log {what} failed; log refuses appends until reopened"
        );
        self.failed = true;
    }
}

fn encode_record(buf: &mut Vec<u8>, seq: u64, payload: &[u8]) {
    let seq_bytes = seq.to_le_bytes();
    let mut crc = crc32fast::Hasher::new();
    crc.update(&seq_bytes);
    crc.update(payload);
    // The caller checked `payload.len() <= PAYLOAD_BYTES_MAX`, which fits a u32.
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&crc.finalize().to_le_bytes());
    buf.extend_from_slice(&seq_bytes);
    buf.extend_from_slice(payload);
}

/// A valid record found by [`scan_segment`].
#[derive(Debug, PartialEq, Eq)]
struct ScannedRecord {
    seq: u64,
    payload: Range<usize>,
}

/// A run of bytes skipped as one corrupt record.
#[derive(Debug, PartialEq, Eq)]
struct CorruptRun {
    offset: usize,
    bytes: u64,
}

#[derive(Debug, Default, PartialEq, Eq)]
struct SegmentScan {
    records: Vec<ScannedRecord>,
    corrupt: Vec<CorruptRun>,
    /// Offset of a torn tail (last segment only).
    torn_at: Option<usize>,
}

/// What lies at one offset of a segment.
enum Frame {
    /// A record with a valid crc and a seq in the allowed range.
    Valid { seq: u64, payload: Range<usize> },
    /// A record with a valid crc but a seq out of order.
    OutOfOrder { end: usize },
    /// Not a record: truncated, absurd length or crc mismatch.
    Damaged,
}

/// Scans one segment. Records must have `seq_min <= seq < seq_end` and strictly increasing
/// seqs. Pure: the caller logs, truncates and loads.
fn scan_segment(buf: &[u8], seq_min: u64, seq_end: u64, is_last: bool) -> SegmentScan {
    let mut scan = SegmentScan::default();
    let mut seq_min = seq_min;
    let mut pos = 0;
    while pos < buf.len() {
        match frame_at(buf, pos, seq_min, seq_end) {
            Frame::Valid { seq, payload } => {
                pos = payload.end;
                seq_min = seq.saturating_add(1);
                scan.records.push(ScannedRecord { seq, payload });
            }
            Frame::OutOfOrder { end } => {
                scan.corrupt.push(CorruptRun {
                    offset: pos,
                    bytes: len_u64(end - pos),
                });
                pos = end;
            }
            Frame::Damaged => match resync(buf, pos, seq_min, seq_end) {
                Some(next) => {
                    scan.corrupt.push(CorruptRun {
                        offset: pos,
                        bytes: len_u64(next - pos),
                    });
                    pos = next;
                }
                None if is_last => {
                    scan.torn_at = Some(pos);
                    break;
                }
                None => {
                    scan.corrupt.push(CorruptRun {
                        offset: pos,
                        bytes: len_u64(buf.len() - pos),
                    });
                    break;
                }
            },
        }
    }
    scan
}

fn frame_at(buf: &[u8], pos: usize, seq_min: u64, seq_end: u64) -> Frame {
    let (Some(len), Some(crc), Some(seq)) = (
        read_u32(buf, pos),
        read_u32(buf, pos + 4),
        read_u64(buf, pos + 8),
    ) else {
        return Frame::Damaged;
    };
    let Ok(len) = usize::try_from(len) else {
        return Frame::Damaged;
    };
    if len > PAYLOAD_BYTES_MAX {
        return Frame::Damaged;
    }
    let payload = pos + RECORD_HEADER_BYTES..pos + RECORD_HEADER_BYTES + len;
    let Some(checked) = buf.get(pos + 8..payload.end) else {
        return Frame::Damaged;
    };
    if crc32fast::hash(checked) != crc {
        return Frame::Damaged;
    }
    if seq < seq_min || seq >= seq_end {
        return Frame::OutOfOrder { end: payload.end };
    }
    Frame::Valid { seq, payload }
}

/// The offset of the first valid record after a damaged one at `pos`, if any: where its length
/// field points, else the first offset holding a crc-valid record whose seq is plausible
/// (`seq_min` plus at most one per 16 skipped bytes — seqs are consecutive within a segment).
fn resync(buf: &[u8], pos: usize, seq_min: u64, seq_end: u64) -> Option<usize> {
    let window_end = |at: usize| {
        let skipped = len_u64((at - pos) / RECORD_HEADER_BYTES);
        seq_min
            .saturating_add(skipped)
            .saturating_add(1)
            .min(seq_end)
    };
    let is_valid = |at: usize| {
        matches!(
            frame_at(buf, at, seq_min, window_end(at)),
            Frame::Valid { .. }
        )
    };

    if let Some(len) = read_u32(buf, pos).and_then(|l| usize::try_from(l).ok())
        && len <= PAYLOAD_BYTES_MAX
    {
        let next = pos + RECORD_HEADER_BYTES + len;
        if next < buf.len() && is_valid(next) {
            return Some(next);
        }
    }
    let last_start = buf.len().checked_sub(RECORD_HEADER_BYTES)?;
    (pos + 1..=last_start).find(|&at| {
        // Cheap filters before the crc.
        read_u32(buf, at)
            .and_then(|l| usize::try_from(l).ok())
            .is_some_and(|l| l <= PAYLOAD_BYTES_MAX && at + RECORD_HEADER_BYTES + l <= buf.len())
            && read_u64(buf, at + 8).is_some_and(|s| s >= seq_min && s < window_end(at))
            && is_valid(at)
    })
}

fn read_u32(buf: &[u8], at: usize) -> Option<u32> {
    let bytes = buf.get(at..at.checked_add(4)?)?;
    bytes.try_into().ok().map(u32::from_le_bytes)
}

fn read_u64(buf: &[u8], at: usize) -> Option<u64> {
    let bytes = buf.get(at..at.checked_add(8)?)?;
    bytes.try_into().ok().map(u64::from_le_bytes)
}

fn len_u64(len: usize) -> u64 {
    u64::try_from(len).unwrap_or(u64::MAX)
}

fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!(
        "{first_seq:0width$}.{SEGMENT_EXTENSION}",
        width = SEGMENT_NAME_DIGITS
    ))
}

/// The segment files in `dir`, oldest first. Other files are ignored.
fn list_segments(dir: &Path) -> io::Result<Vec<ClosedSegment>> {
    let mut segments = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(first_seq) = name.to_str().and_then(parse_segment_name) else {
            continue;
        };
        if entry.file_type()?.is_file() {
            segments.push(ClosedSegment {
                first_seq,
                path: entry.path(),
            });
        }
    }
    segments.sort_by_key(|s| s.first_seq);
    Ok(segments)
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_EXTENSION)?.strip_suffix('.')?;
    if digits.len() != SEGMENT_NAME_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn lock_dir(fs: &dyn Fs, dir: &Path) -> Result<File, LogError> {
    let lock = fs.open(
        &dir.join(LOCK_FILE),
        OpenOptions::new().create(true).truncate(false).write(true),
    )?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(std::fs::TryLockError::WouldBlock) => Err(LogError::Locked {
            dir: dir.to_path_buf(),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(e.into()),
    }
}

fn read_cursor(dir: &Path) -> Result<u64, LogError> {
    let path = dir.join(CURSOR_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    let floor = read_u64(&bytes, 4);
    let crc = read_u32(&bytes, 12);
    match (floor, crc) {
        (Some(floor), Some(crc))
            if bytes.len() == CURSOR_BYTES
                && bytes.starts_with(CURSOR_MAGIC)
                && bytes.get(..12).is_some_and(|b| crc32fast::hash(b) == crc) =>
        {
            Ok(floor)
        }
        _ => Err(LogError::CorruptCursor { path }),
    }
}

/// Replaces the cursor atomically and durably ([`durable::replace`]).
fn write_cursor(fs: &dyn Fs, dir: &Path, floor: u64) -> io::Result<()> {
    let mut bytes = Vec::with_capacity(CURSOR_BYTES);
    bytes.extend_from_slice(CURSOR_MAGIC);
    bytes.extend_from_slice(&floor.to_le_bytes());
    let crc = crc32fast::hash(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    durable::replace(fs, &dir.join(CURSOR_FILE), &bytes)
}

fn remove_if_exists(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::io::Write;

    use proptest::collection::vec;
    use proptest::prelude::*;

    use super::*;
    use crate::durable::TestDir;

    fn open(dir: &Path, opts: LogOptions) -> (UsageLog, RecoveryReport) {
        UsageLog::open(dir, opts).expect("open usage log")
    }

    /// Segment files and their lengths, oldest first.
    fn segment_lengths(dir: &Path) -> BTreeMap<PathBuf, u64> {
        list_segments(dir)
            .expect("list segments")
            .into_iter()
            .map(|s| {
                let len = std::fs::metadata(&s.path).expect("segment metadata").len();
                (s.path, len)
            })
            .collect()
    }

    fn append_to(path: &Path, bytes: &[u8]) {
        let mut file = OpenOptions::new()
            .append(true)
            .open(path)
            .expect("open segment");
        file.write_all(bytes).expect("append to segment");
    }

    fn flip_byte(path: &Path, offset: usize, mask: u8) {
        let mut bytes = std::fs::read(path).expect("read segment");
        bytes[offset] ^= mask;
        std::fs::write(path, bytes).expect("write segment");
    }

    fn records(entries: &[(u64, &[u8])]) -> Vec<Record> {
        entries
            .iter()
            .map(|&(seq, payload)| Record {
                seq,
                payload: payload.to_vec(),
            })
            .collect()
    }

    fn all_unacked(log: &UsageLog) -> Vec<Record> {
        log.unacked(usize::MAX, usize::MAX)
    }

    fn only_segment(dir: &Path) -> PathBuf {
        let segments = segment_lengths(dir);
        assert_eq!(segments.len(), 1, "{segments:?}");
        segments.into_keys().next().expect("one segment")
    }

    #[test]
    fn appended_and_synced_records_survive_reopen() {
        let dir = TestDir::new("usage-log-round-trip");
        let (mut log, report) = open(&dir.0, LogOptions::default());
        assert_eq!(report, RecoveryReport::default());
        assert_eq!(log.append(&[b"a", b"", b"ccc"]).expect("append"), 0..3);
        assert_eq!(log.append(&[b"dd"]).expect("append"), 3..4);
        log.sync().expect("sync");
        drop(log);

        let (log, report) = open(&dir.0, LogOptions::default());
        assert_eq!(
            report,
            RecoveryReport {
                records: 4,
                segments: 1,
                ..RecoveryReport::default()
            }
        );
        assert_eq!(
            all_unacked(&log),
            records(&[(0, b"a"), (1, b""), (2, b"ccc"), (3, b"dd")])
        );
        assert_eq!(log.next_seq(), 4);
        assert_eq!(log.pending_records(), 4);
        assert_eq!(log.pending_bytes(), 6);
    }

    #[test]
    fn torn_tail_is_truncated_and_later_appends_survive() {
        let mut record = Vec::new();
        encode_record(&mut record, 3, b"a fourth record that never finished");
        let cases: [(&str, Vec<u8>); 5] = [
            ("partial header", record[..10].to_vec()),
            ("partial payload", record[..record.len() - 3].to_vec()),
            ("zeros", vec![0; 64]),
            ("ones", vec![0xff; 40]),
            ("sane length, bad crc", {
                let mut r = record.clone();
                r[20] ^= 1;
                r
            }),
        ];
        for (name, garbage) in cases {
            let dir = TestDir::new("usage-log-torn-tail");
            let (mut log, _) = open(&dir.0, LogOptions::default());
            log.append(&[b"one", b"two", b"three"]).expect("append");
            log.sync().expect("sync");
            drop(log);
            append_to(&only_segment(&dir.0), &garbage);

            let (mut log, report) = open(&dir.0, LogOptions::default());
            assert_eq!(report.torn_tail_bytes, len_u64(garbage.len()), "{name}");
            assert_eq!(report.corrupt_records, 0, "{name}");
            assert_eq!(
                all_unacked(&log),
                records(&[(0, b"one"), (1, b"two"), (2, b"three")]),
                "{name}"
            );
            assert_eq!(log.append(&[b"four"]).expect("append"), 3..4, "{name}");
            log.sync().expect("sync");
            drop(log);

            let (log, report) = open(&dir.0, LogOptions::default());
            assert_eq!(report.torn_tail_bytes, 0, "{name}");
            assert_eq!(report.corrupt_records, 0, "{name}");
            assert_eq!(
                all_unacked(&log),
                records(&[(0, b"one"), (1, b"two"), (2, b"three"), (3, b"four")]),
                "{name}"
            );
        }
    }

    #[test]
    fn damaged_middle_record_is_counted_and_skipped() {
        // Records: 16-byte header + 5-byte payload each; the second starts at offset 21.
        let second = RECORD_HEADER_BYTES + 5;
        let cases = [
            ("payload byte", second + RECORD_HEADER_BYTES + 2, 0x01),
            ("crc byte", second + 5, 0x80),
            ("seq byte", second + 8, 0x01),
            ("length to another sane value", second, 0x04),
            ("length beyond the payload limit", second + 3, 0x40),
        ];
        for (name, offset, mask) in cases {
            let dir = TestDir::new("usage-log-corrupt-middle");
            let (mut log, _) = open(&dir.0, LogOptions::default());
            log.append(&[b"first", b"other", b"third"]).expect("append");
            log.sync().expect("sync");
            drop(log);
            flip_byte(&only_segment(&dir.0), offset, mask);

            let (log, report) = open(&dir.0, LogOptions::default());
            assert_eq!(report.corrupt_records, 1, "{name}");
            assert_eq!(report.corrupt_bytes, 21, "{name}");
            assert_eq!(report.torn_tail_bytes, 0, "{name}");
            assert_eq!(
                all_unacked(&log),
                records(&[(0, b"first"), (2, b"third")]),
                "{name}"
            );
            assert_eq!(log.next_seq(), 3, "{name}");
        }
    }

    #[test]
    fn damaged_tail_of_an_older_segment_is_corruption_not_a_torn_tail() {
        let dir = TestDir::new("usage-log-corrupt-older");
        // One 16 + 4 byte record per segment.
        let opts = LogOptions {
            segment_bytes: 20,
            ..LogOptions::default()
        };
        let (mut log, _) = open(&dir.0, opts.clone());
        for payload in [b"aaaa", b"bbbb", b"cccc"] {
            log.append(&[payload]).expect("append");
        }
        log.sync().expect("sync");
        drop(log);
        let segments: Vec<PathBuf> = segment_lengths(&dir.0).into_keys().collect();
        assert_eq!(segments.len(), 3);
        // An absurd length in the first segment, junk after the second one's record.
        flip_byte(&segments[0], 3, 0xff);
        append_to(&segments[1], &[7; 9]);

        let (log, report) = open(&dir.0, opts);
        assert_eq!(report.corrupt_records, 2);
        assert_eq!(report.corrupt_bytes, 20 + 9);
        assert_eq!(report.torn_tail_bytes, 0);
        assert_eq!(all_unacked(&log), records(&[(1, b"bbbb"), (2, b"cccc")]));
    }

    #[test]
    fn seqs_out_of_order_are_corruption() {
        let dir = TestDir::new("usage-log-out-of-order");
        std::fs::create_dir_all(&dir.0).expect("mkdir");
        let mut bytes = Vec::new();
        for (seq, payload) in [
            (5, b"a"),
            (6, b"b"),
            (6, b"c"),
            (4, b"d"),
            (7, b"e"),
            (7, b"f"),
        ] {
            encode_record(&mut bytes, seq, payload);
        }
        std::fs::write(segment_path(&dir.0, 5), bytes).expect("write segment");

        let (log, report) = open(&dir.0, LogOptions::default());
        assert_eq!(report.corrupt_records, 3);
        assert_eq!(report.torn_tail_bytes, 0);
        assert_eq!(
            all_unacked(&log),
            records(&[(5, b"a"), (6, b"b"), (7, b"e")])
        );
        assert_eq!(log.next_seq(), 8);
    }

    #[test]
    fn ack_drops_records_deletes_acked_segments_and_seqs_keep_increasing() {
        let dir = TestDir::new("usage-log-ack");
        let opts = LogOptions {
            segment_bytes: 40,
            ..LogOptions::default()
        };
        let (mut log, _) = open(&dir.0, opts.clone());
        // Two 16 + 4 byte records fill a segment.
        for payload in [b"r0r0", b"r1r1", b"r2r2", b"r3r3", b"r4r4"] {
            log.append(&[payload]).expect("append");
        }
        log.sync().expect("sync");
        assert_eq!(segment_lengths(&dir.0).len(), 3);

        log.ack(3).expect("ack");
        assert_eq!(all_unacked(&log), records(&[(3, b"r3r3"), (4, b"r4r4")]));
        assert_eq!(log.pending_records(), 2);
        assert_eq!(log.pending_bytes(), 8);
        // Segment 0 (seqs 0, 1) is gone; segment 2 (seqs 2, 3) still holds seq 3.
        let names: Vec<u64> = list_segments(&dir.0)
            .expect("list")
            .iter()
            .map(|s| s.first_seq)
            .collect();
        assert_eq!(names, [2, 4]);
        log.ack(1).expect("older ack is a no-op");
        assert_eq!(log.acked_seq(), 3);
        drop(log);

        let (mut log, report) = open(&dir.0, opts.clone());
        assert_eq!(report.records, 2);
        assert_eq!(all_unacked(&log), records(&[(3, b"r3r3"), (4, b"r4r4")]));
        log.ack(5).expect("ack");
        assert_eq!(log.pending_records(), 0);
        assert!(segment_lengths(&dir.0).is_empty());
        drop(log);

        let (mut log, report) = open(&dir.0, opts.clone());
        assert_eq!(report.records, 0);
        assert_eq!(report.segments, 0);
        assert_eq!(log.next_seq(), 5);
        assert_eq!(log.append(&[b"r5r5"]).expect("append"), 5..6);
        log.sync().expect("sync");
        drop(log);

        let (log, _) = open(&dir.0, opts);
        assert_eq!(all_unacked(&log), records(&[(5, b"r5r5")]));
    }

    #[test]
    fn ack_beyond_synced_records_is_clamped() {
        let dir = TestDir::new("usage-log-ack-clamp");
        let (mut log, _) = open(&dir.0, LogOptions::default());
        log.append(&[b"a", b"b"]).expect("append");
        log.sync().expect("sync");
        log.append(&[b"c"]).expect("append");
        log.ack(100).expect("ack");
        assert_eq!(log.acked_seq(), 2);
        assert_eq!(log.pending_records(), 1);
        log.sync().expect("sync");
        assert_eq!(all_unacked(&log), records(&[(2, b"c")]));
    }

    #[test]
    fn full_buffer_refuses_the_whole_batch_until_acked() {
        let dir = TestDir::new("usage-log-full");
        let opts = LogOptions {
            max_pending_bytes: 100,
            ..LogOptions::default()
        };
        let (mut log, _) = open(&dir.0, opts);
        log.append(&[&[1; 60]]).expect("append");
        log.sync().expect("sync");
        let before = segment_lengths(&dir.0);

        let err = log
            .append(&[&[2; 30], &[3; 20]])
            .expect_err("over the bound");
        assert!(
            matches!(
                err,
                LogError::Full {
                    pending_bytes: 60,
                    max_pending_bytes: 100
                }
            ),
            "{err:?}"
        );
        assert_eq!(segment_lengths(&dir.0), before);
        assert_eq!(log.next_seq(), 1);
        assert_eq!(log.pending_records(), 1);
        assert_eq!(log.pending_bytes(), 60);

        log.ack(1).expect("ack");
        assert_eq!(log.append(&[&[2; 30], &[3; 20]]).expect("append"), 1..3);
        assert_eq!(log.pending_bytes(), 50);
    }

    #[test]
    fn oversized_payload_is_refused_and_nothing_is_written() {
        let dir = TestDir::new("usage-log-too-large");
        let (mut log, _) = open(&dir.0, LogOptions::default());
        let big = vec![0; PAYLOAD_BYTES_MAX + 1];
        let err = log.append(&[b"ok", &big]).expect_err("too large");
        assert!(matches!(err, LogError::TooLarge { .. }), "{err:?}");
        assert_eq!(log.next_seq(), 0);
        assert!(segment_lengths(&dir.0).is_empty());
        let max = vec![0; PAYLOAD_BYTES_MAX];
        assert_eq!(log.append(&[&max]).expect("largest payload"), 0..1);
    }

    #[test]
    fn unacked_returns_only_synced_records_within_limits() {
        let dir = TestDir::new("usage-log-unacked");
        let (mut log, _) = open(&dir.0, LogOptions::default());
        log.append(&[&[1; 10], &[2; 10], &[3; 10], &[4; 10]])
            .expect("append");
        assert!(all_unacked(&log).is_empty(), "nothing before sync");
        log.sync().expect("sync");
        log.append(&[&[5; 10]]).expect("append");

        let seqs = |v: Vec<Record>| v.into_iter().map(|r| r.seq).collect::<Vec<_>>();
        assert_eq!(seqs(all_unacked(&log)), [0, 1, 2, 3]);
        assert_eq!(seqs(log.unacked(2, usize::MAX)), [0, 1]);
        assert_eq!(seqs(log.unacked(usize::MAX, 25)), [0, 1]);
        assert_eq!(seqs(log.unacked(usize::MAX, 3)), [0], "at least one");
        assert_eq!(seqs(log.unacked(0, usize::MAX)), Vec::<u64>::new());
    }

    #[test]
    fn second_open_of_the_same_directory_is_refused() {
        let dir = TestDir::new("usage-log-lock");
        let (log, _) = open(&dir.0, LogOptions::default());
        let err = UsageLog::open(&dir.0, LogOptions::default()).expect_err("locked");
        assert!(matches!(err, LogError::Locked { .. }), "{err:?}");
        drop(log);
        open(&dir.0, LogOptions::default());
    }

    #[test]
    fn a_failed_fdatasync_refuses_appends_and_syncs_until_reopened() {
        let dir = TestDir::new("usage-log-failed-sync");
        let fs = Arc::new(durable::FaultyFs::new().fail_after(durable::FsOp::SyncData, 1));
        let opts = LogOptions {
            fs: fs.clone(),
            ..LogOptions::default()
        };
        let (mut log, _) = open(&dir.0, opts);
        log.append(&[b"kept"]).expect("append");
        log.sync().expect("first sync");
        log.append(&[b"unknown"]).expect("append");
        let err = log.sync().expect_err("the disk fails");
        assert!(
            matches!(&err, LogError::Io(e) if e.raw_os_error() == Some(5)),
            "{err:?}"
        );
        assert!(matches!(log.append(&[b"more"]), Err(LogError::Failed)));
        assert!(matches!(log.sync(), Err(LogError::Failed)));
        assert_eq!(
            fs.calls(durable::FsOp::SyncData),
            2,
            "no fsync after the failure"
        );
        assert_eq!(
            all_unacked(&log),
            records(&[(0, b"kept")]),
            "nothing unsynced ships"
        );
        drop(log);
        // Recovery decides what is on disk: the synced record, at least.
        let (log, _) = open(&dir.0, LogOptions::default());
        assert_eq!(all_unacked(&log)[0], records(&[(0, b"kept")])[0]);
    }

    #[test]
    fn a_failed_cursor_replace_keeps_the_floor_and_the_records() {
        let dir = TestDir::new("usage-log-failed-ack");
        for op in [durable::FsOp::SyncAll, durable::FsOp::Rename] {
            let opts = LogOptions {
                fs: Arc::new(durable::FaultyFs::new().fail_after(op, 0)),
                ..LogOptions::default()
            };
            let (mut log, _) = open(&dir.0, opts);
            if log.pending_records() == 0 {
                log.append(&[b"a", b"b"]).expect("append");
                log.sync().expect("sync");
            }
            assert!(log.ack(1).is_err(), "{op:?}");
            assert_eq!(log.acked_seq(), 0, "{op:?}");
            assert_eq!(
                all_unacked(&log),
                records(&[(0, b"a"), (1, b"b")]),
                "{op:?}"
            );
            drop(log);
            let (log, _) = open(&dir.0, LogOptions::default());
            assert_eq!(log.acked_seq(), 0, "{op:?}");
            assert_eq!(
                all_unacked(&log),
                records(&[(0, b"a"), (1, b"b")]),
                "{op:?}"
            );
        }
    }

    #[test]
    fn damaged_ack_cursor_refuses_to_open() {
        let dir = TestDir::new("usage-log-cursor");
        let (mut log, _) = open(&dir.0, LogOptions::default());
        log.append(&[b"a", b"b"]).expect("append");
        log.sync().expect("sync");
        log.ack(1).expect("ack");
        drop(log);
        flip_byte(&dir.0.join(CURSOR_FILE), 4, 0x02);
        let err = UsageLog::open(&dir.0, LogOptions::default()).expect_err("damaged cursor");
        assert!(matches!(err, LogError::CorruptCursor { .. }), "{err:?}");
    }

    // The model-based crash test.

    #[derive(Debug, Clone)]
    enum Op {
        Append(Vec<Vec<u8>>),
        Sync,
        /// Ack this many of the oldest durable records.
        Ack(usize),
        /// Drop the log. If `lose_unsynced`, every segment is cut back to its length at the last
        /// sync (files created since are deleted), except that the segment active then keeps
        /// `keep_unsynced_bytes` of what was written after it. Then `garbage` is appended to the
        /// last segment (a torn write).
        Crash {
            lose_unsynced: bool,
            keep_unsynced_bytes: u64,
            garbage: Vec<u8>,
        },
        /// Drop and reopen the log (a clean restart: nothing is lost).
        Reopen,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => vec(vec(any::<u8>(), 0..200), 1..5).prop_map(Op::Append),
            3 => Just(Op::Sync),
            2 => (0usize..8).prop_map(Op::Ack),
            1 => (any::<bool>(), 0u64..400, vec(any::<u8>(), 0..64)).prop_map(
                |(lose_unsynced, keep_unsynced_bytes, garbage)| Op::Crash {
                    lose_unsynced,
                    keep_unsynced_bytes,
                    garbage,
                }
            ),
            1 => Just(Op::Reopen),
        ]
    }

    fn model_options() -> LogOptions {
        LogOptions {
            segment_bytes: 600,
            max_pending_bytes: 3000,
            ..LogOptions::default()
        }
    }

    #[derive(Debug, Default)]
    struct Model {
        /// Synced, un-acked records, oldest first.
        durable: Vec<Record>,
        /// Appended since the last sync.
        unsynced: Vec<Record>,
        acked: u64,
        next_seq: u64,
        /// `next_seq` at the last sync or open.
        durable_next_seq: u64,
        /// Segment file lengths at the last sync or open.
        synced_lengths: BTreeMap<PathBuf, u64>,
    }

    impl Model {
        fn pending_bytes(&self) -> u64 {
            self.durable
                .iter()
                .chain(&self.unsynced)
                .map(|r| len_u64(r.payload.len()))
                .sum()
        }
    }

    /// Simulates the disk after a crash; returns whether garbage was appended to a segment.
    fn crash(dir: &Path, model: &Model, lose_unsynced: bool, keep: u64, garbage: &[u8]) -> bool {
        if lose_unsynced {
            let active_at_sync = model.synced_lengths.keys().next_back();
            for (path, len) in segment_lengths(dir) {
                match model.synced_lengths.get(&path) {
                    None => std::fs::remove_file(&path).expect("remove unsynced segment"),
                    Some(&synced) => {
                        let target = if Some(&path) == active_at_sync {
                            synced + keep.min(len - synced)
                        } else {
                            synced
                        };
                        let file = OpenOptions::new()
                            .write(true)
                            .open(&path)
                            .expect("open segment");
                        file.set_len(target.min(len)).expect("truncate segment");
                    }
                }
            }
        }
        match segment_lengths(dir).keys().next_back() {
            Some(last) if !garbage.is_empty() => {
                append_to(last, garbage);
                true
            }
            _ => false,
        }
    }

    /// Checks the invariants after an open and makes what was found the model's durable state.
    fn check_recovery(
        dir: &Path,
        model: &mut Model,
        log: &UsageLog,
        report: &RecoveryReport,
        unsynced_may_be_lost: bool,
        garbage_bytes: u64,
    ) -> Result<(), TestCaseError> {
        prop_assert_eq!(report.corrupt_records, 0);
        prop_assert!(report.torn_tail_bytes >= garbage_bytes);
        let got = all_unacked(log);
        let durable = model.durable.len();
        prop_assert!(got.len() >= durable, "lost synced records");
        prop_assert_eq!(&got[..durable], &model.durable[..]);
        let extra = &got[durable..];
        prop_assert!(extra.len() <= model.unsynced.len(), "records from nowhere");
        prop_assert_eq!(extra, &model.unsynced[..extra.len()]);
        if !unsynced_may_be_lost {
            prop_assert_eq!(
                extra.len(),
                model.unsynced.len(),
                "clean restart lost records"
            );
            prop_assert!(log.next_seq() >= model.next_seq);
        }
        prop_assert!(
            got.iter().all(|r| r.seq >= model.acked),
            "acked record came back"
        );
        prop_assert!(
            log.next_seq() >= model.durable_next_seq,
            "next seq went back"
        );
        prop_assert!(got.last().is_none_or(|r| r.seq < log.next_seq()));
        prop_assert_eq!(report.records, len_u64(got.len()));
        prop_assert_eq!(log.pending_records(), len_u64(got.len()));

        model.durable = got;
        model.unsynced.clear();
        prop_assert_eq!(log.pending_bytes(), model.pending_bytes());
        model.next_seq = log.next_seq();
        model.durable_next_seq = log.next_seq();
        model.synced_lengths = segment_lengths(dir);
        Ok(())
    }

    fn run_model(ops: &[Op]) -> Result<(), TestCaseError> {
        let dir = TestDir::new("usage-log-model");
        let (log, report) = open(&dir.0, model_options());
        prop_assert_eq!(&report, &RecoveryReport::default());
        let mut log = Some(log);
        let mut model = Model::default();
        for op in ops {
            let Some(current) = log.as_mut() else {
                return Err(TestCaseError::fail("log not open"));
            };
            match op {
                Op::Append(payloads) => {
                    let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
                    let batch: u64 = payloads.iter().map(|p| len_u64(p.len())).sum();
                    let result = current.append(&refs);
                    if model.pending_bytes() + batch > model_options().max_pending_bytes {
                        prop_assert!(matches!(result, Err(LogError::Full { .. })), "{result:?}");
                    } else {
                        let seqs = result.map_err(|e| TestCaseError::fail(e.to_string()))?;
                        prop_assert_eq!(
                            seqs.clone(),
                            model.next_seq..model.next_seq + len_u64(payloads.len())
                        );
                        for (seq, payload) in seqs.clone().zip(payloads) {
                            model.unsynced.push(Record {
                                seq,
                                payload: payload.clone(),
                            });
                        }
                        model.next_seq = seqs.end;
                    }
                    prop_assert_eq!(current.next_seq(), model.next_seq);
                    prop_assert_eq!(current.pending_bytes(), model.pending_bytes());
                }
                Op::Sync => {
                    current
                        .sync()
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    let unsynced = std::mem::take(&mut model.unsynced);
                    model.durable.extend(unsynced);
                    model.durable_next_seq = model.next_seq;
                    model.synced_lengths = segment_lengths(&dir.0);
                }
                Op::Ack(count) => {
                    prop_assert_eq!(&all_unacked(current), &model.durable);
                    let count = (*count).min(model.durable.len());
                    let upto = match count.checked_sub(1) {
                        Some(last) => model.durable[last].seq + 1,
                        None => model.acked.saturating_sub(1),
                    };
                    current
                        .ack(upto)
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    model.durable.drain(..count);
                    model.acked = model.acked.max(upto);
                    prop_assert_eq!(current.acked_seq(), model.acked);
                    prop_assert_eq!(&all_unacked(current), &model.durable);
                    // No segment that holds only acked seqs is left.
                    let names: Vec<u64> = list_segments(&dir.0)
                        .expect("list")
                        .iter()
                        .map(|s| s.first_seq)
                        .collect();
                    prop_assert!(names.windows(2).all(|w| w[1] > model.acked), "{names:?}");
                    if model.acked == model.next_seq {
                        prop_assert!(names.is_empty(), "{names:?}");
                    }
                }
                Op::Crash {
                    lose_unsynced,
                    keep_unsynced_bytes,
                    garbage,
                } => {
                    drop(log.take());
                    let torn = crash(
                        &dir.0,
                        &model,
                        *lose_unsynced,
                        *keep_unsynced_bytes,
                        garbage,
                    );
                    let (reopened, report) = open(&dir.0, model_options());
                    let garbage_bytes = if torn { len_u64(garbage.len()) } else { 0 };
                    check_recovery(
                        &dir.0,
                        &mut model,
                        &reopened,
                        &report,
                        *lose_unsynced,
                        garbage_bytes,
                    )?;
                    log = Some(reopened);
                }
                Op::Reopen => {
                    drop(log.take());
                    let (reopened, report) = open(&dir.0, model_options());
                    prop_assert_eq!(report.torn_tail_bytes, 0);
                    check_recovery(&dir.0, &mut model, &reopened, &report, false, 0)?;
                    log = Some(reopened);
                }
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 256,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn crashes_never_lose_synced_usage_nor_resurrect_acked_usage(ops in vec(op(), 1..60)) {
            run_model(&ops)?;
        }
    }
}

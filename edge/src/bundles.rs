//! Rule bundles at the edge: fetch the one meant for this edge (ETag / 304), verify its
//! signature against the trusted keys, compile it under wasmtime, run its embedded tests, and
//! only then swap it in. Any failure keeps the previous bundle serving, is reported to the
//! control plane, and is retried with backoff.
//!
//! The last good bundle is kept on disk (`<data_dir>/bundle.tgb`, replaced durably through
//! [`durable::replace`]: a temporary file, fsynced, renamed, the directory fsynced), and so are the facts of the cached accounts
//! (`<data_dir>/facts.jsonl`, every few seconds and at shutdown, with the position in each
//! change-stream shard they are current to), so a restart with the control plane and Redis both down still answers
//! — with `stale: true` until the follower has read every change made since that position
//! (see [`crate::stream`]), so a grant revoked while the edge was down is never answered as
//! fresh.
//!
//! # Fetch → swap
//!
//! 1. At start, [`load_persisted`] installs `<data_dir>/bundle.tgb` if it still verifies
//!    against the trusted keys and passes its tests (so the edge is ready with the control
//!    plane down), then [`restore_facts`] refills the cache from `facts.jsonl`.
//! 2. [`follow`] polls `GET /internal/v1/bundle?edge_id=…` every `TOLLGATE_EDGE_BUNDLE_POLL_MS`
//!    with `If-None-Match: "v<running>"`; 304, and 404 (no bundle active yet), change nothing.
//! 3. New bytes, on a blocking thread: [`prepare`] (verify → load under wasmtime → embedded
//!    tests), [`persist`] (saved *before* it serves: what serves is what a restart restores),
//!    [`activate`] (a new [`RulesView`](crate::cache::RulesView) with the next generation,
//!    stored with one `ArcSwap`; checks in flight keep the view they loaded), then
//!    [`rematerialise_all`](crate::state::EdgeState::rematerialise_all): every cached account's
//!    decisions are evaluated again from its stored facts, without refetching. Until its turn,
//!    a cache hit answers the entry's previous decisions: a hit never enters WebAssembly.
//! 4. A failure at any step keeps the previous bundle serving, counts `bundle_failures`, and
//!    backs off from [`RETRY_MS_MIN`] to [`RETRY_MS_MAX`]. Every poll ends with
//!    `POST /internal/v1/edges/{id}/status` (the version running, the last error): the fleet
//!    status the control plane shows.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tollgate_rules::bundle::{self, TrustedKeys};
use tollgate_rules::compiler;
use tollgate_rules::host::RulesEngine;

use crate::durable::{self, Fs, RealFs};
use crate::state::EdgeState;

pub const BUNDLE_FILE: &str = "bundle.tgb";
/// Backoff bounds after a failed fetch or a refused bundle.
pub const RETRY_MS_MIN: u64 = 200;
pub const RETRY_MS_MAX: u64 = 30_000;

/// Why a bundle was not installed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("bundle refused: {0}")]
    Verify(#[from] bundle::BundleError),
    #[error("module refused: {0}")]
    Module(#[from] tollgate_rules::host::HostError),
    #[error("embedded tests failed: {0}")]
    Tests(String),
    #[error("could not persist the bundle: {0}")]
    Persist(#[from] std::io::Error),
}

/// A bundle that verified, compiled and passed its embedded tests, not yet serving.
pub struct Prepared {
    pub version: u64,
    program: tollgate_rules::ir::Program,
    loaded: tollgate_rules::host::LoadedRules,
}

/// Verifies the signature, compiles the module under wasmtime and runs the embedded tests.
pub fn prepare(
    engine: &RulesEngine,
    trusted: &TrustedKeys,
    bytes: &[u8],
) -> Result<Prepared, InstallError> {
    let verified = bundle::verify(bytes, trusted)?;
    let loaded = engine.load(&verified.module, verified.program.shape())?;
    compiler::run_tests(&verified.program, &loaded)
        .map_err(|failures| InstallError::Tests(failures.join("; ")))?;
    Ok(Prepared {
        version: verified.manifest.bundle_version,
        program: verified.program,
        loaded,
    })
}

/// Swaps a prepared bundle in (atomically) and re-materialises cached accounts in the
/// background.
pub fn activate(state: &EdgeState, prepared: Prepared) -> u64 {
    state.install_rules(prepared.version, prepared.program, prepared.loaded);
    prepared.version
}

/// [`prepare`] then [`activate`]; returns the version now serving.
pub fn install(
    state: &EdgeState,
    engine: &RulesEngine,
    trusted: &TrustedKeys,
    bytes: &[u8],
) -> Result<u64, InstallError> {
    Ok(activate(state, prepare(engine, trusted, bytes)?))
}

/// Writes `bytes` to `dir/bundle.tgb` durably ([`durable::replace`]: temp file, fsync,
/// rename, fsync dir).
pub fn persist(dir: &Path, bytes: &[u8]) -> std::io::Result<()> {
    persist_on(&RealFs, dir, bytes)
}

/// [`persist`] through the filesystem `fs` (tests make it fail).
pub fn persist_on(fs: &dyn Fs, dir: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    durable::replace(fs, &dir.join(BUNDLE_FILE), bytes)
}

/// Installs the bundle saved by an earlier run, if any (and still valid).
pub fn load_persisted(
    state: &EdgeState,
    engine: &RulesEngine,
    trusted: &TrustedKeys,
    dir: &Path,
) -> Option<u64> {
    let path: PathBuf = dir.join(BUNDLE_FILE);
    let bytes = std::fs::read(&path).ok()?;
    match install(state, engine, trusted, &bytes) {
        Ok(v) => {
            tracing::info!(bundle_version = v, path = %path.display(), "last good bundle restored from disk");
            Some(v)
        }
        Err(e) => {
            tracing::warn!(error = %e, path = %path.display(), "saved bundle refused; waiting for the control plane");
            None
        }
    }
}

/// Polls the control plane for this edge's bundle forever.
pub async fn follow(
    state: EdgeState,
    engine: RulesEngine,
    trusted: TrustedKeys,
    data_dir: PathBuf,
    poll: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut etag: Option<String> = state.bundle_version().map(|v| format!("\"v{v}\""));
    let mut last_error: Option<String> = None;
    let mut retry_ms = RETRY_MS_MIN;
    loop {
        let wait = match state.upstream.bundle(&state.edge_id, etag.as_deref()).await {
            Ok(None) => {
                retry_ms = RETRY_MS_MIN;
                poll
            }
            Ok(Some((bytes, tag))) => {
                // Verification and compilation are CPU work: keep them off the async workers.
                let (st, eng, tr) = (state.clone(), engine.clone(), trusted.clone());
                let dir = data_dir.clone();
                // Saved before it serves: what serves is always what a restart would restore.
                let result = tokio::task::spawn_blocking(move || {
                    let prepared = prepare(&eng, &tr, &bytes)?;
                    persist(&dir, &bytes)?;
                    let v = activate(&st, prepared);
                    st.rematerialise_all();
                    Ok::<u64, InstallError>(v)
                })
                .await;
                match result {
                    Ok(Ok(v)) => {
                        etag = tag;
                        last_error = None;
                        retry_ms = RETRY_MS_MIN;
                        state.metrics.bundle_installs.inc();
                        tracing::info!(bundle_version = v, "bundle active");
                        poll
                    }
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "bundle refused; the previous bundle keeps serving");
                        state.metrics.bundle_failures.inc();
                        last_error = Some(e.to_string());
                        retry_ms = (retry_ms * 2).min(RETRY_MS_MAX);
                        Duration::from_millis(retry_ms)
                    }
                    Err(e) => {
                        last_error = Some(format!("install task failed: {e}"));
                        Duration::from_millis(retry_ms)
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_ms, "bundle fetch failed");
                retry_ms = (retry_ms * 2).min(RETRY_MS_MAX);
                Duration::from_millis(retry_ms)
            }
        };
        if let Err(e) = state
            .upstream
            .report_status(
                &state.edge_id,
                state.bundle_version(),
                last_error.as_deref(),
            )
            .await
        {
            tracing::debug!(error = %e, "status report failed");
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// File holding the facts of the accounts this edge had cached (JSON lines).
pub const FACTS_FILE: &str = "facts.jsonl";

/// The first line of the facts file: which position in each change-stream shard the facts are
/// current to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FactsHeader {
    pub format: u32,
    /// Format 3: per stream shard (index = shard), the last change-stream id applied before
    /// the facts were read (`None`: that shard's follower had read nothing). A restore resumes
    /// each shard from its position when there is one per configured shard; with another
    /// shard count, nothing is resumed and restored accounts are revalidated.
    #[serde(default)]
    pub stream_ids: Vec<Option<String>>,
    /// Format 2 (one unsharded stream, no longer followed): read, never resumed from.
    #[serde(default, skip_serializing)]
    pub stream_id: Option<String>,
    pub saved_at_ms: i64,
}

/// The facts file format that carries a [`FactsHeader`] with per-shard positions.
pub const FACTS_FORMAT: u32 = 3;

/// Writes the facts of every cached account (not unknown ones) durably
/// ([`durable::replace_with`]: temp file, fsync, rename, fsync dir). The header's stream
/// positions are read *before* the facts: every change after it is replayed at restore (facts
/// only move forward, so replaying one already in is harmless), none before it is missed.
/// Returns how many accounts were written.
pub fn persist_facts(state: &EdgeState, dir: &Path) -> std::io::Result<usize> {
    persist_facts_on(&RealFs, state, dir)
}

/// [`persist_facts`] through the filesystem `fs` (tests make it fail).
pub fn persist_facts_on(fs: &dyn Fs, state: &EdgeState, dir: &Path) -> std::io::Result<usize> {
    std::fs::create_dir_all(dir)?;
    let header = FactsHeader {
        format: FACTS_FORMAT,
        // Restored entries not confirmed yet are not current to any position: without one, the
        // next start revalidates instead of resuming.
        stream_ids: if state.restored_waiting() {
            vec![None; usize::from(state.shards())]
        } else {
            state.stream_positions()
        },
        stream_id: None,
        saved_at_ms: crate::clock::now_ms(),
    };
    let mut n = 0;
    durable::replace_with(fs, &dir.join(FACTS_FILE), |out| {
        serde_json::to_writer(&mut *out, &header)?;
        out.write_all(b"\n")?;
        for account in state.cache.accounts() {
            if let Some(facts) = state.cache.peek(&account).and_then(|e| e.facts()) {
                serde_json::to_writer(&mut *out, &facts)?;
                out.write_all(b"\n")?;
                n += 1;
            }
        }
        Ok(())
    })?;
    Ok(n)
}

/// What a restore found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Restored {
    pub accounts: usize,
    /// Unreadable lines, counted and skipped.
    pub skipped: usize,
    /// Per stream shard, the position the facts are current to (its follower resumes there);
    /// empty when the file holds none usable (an older format, another shard count).
    pub stream_ids: Vec<Option<String>>,
}

/// Refills the cache from the saved facts (after the bundle is installed), so a restart with
/// the control plane and Redis both down still answers. Restored entries answer `stale: true`
/// until the follower has caught up from the saved position (or the account is refetched); a
/// file without a position (an older edge's) leaves the follower nothing to resume from, so
/// every restored account is revalidated once the control plane answers.
pub fn restore_facts(state: &EdgeState, dir: &Path) -> Restored {
    let mut out = Restored::default();
    let Some(view) = state.rules.load_full() else {
        return out;
    };
    let Ok(text) = std::fs::read_to_string(dir.join(FACTS_FILE)) else {
        return out;
    };
    let mut lines = text.lines().filter(|l| !l.trim().is_empty()).peekable();
    if let Some(first) = lines.peek()
        && let Ok(header) = serde_json::from_str::<FactsHeader>(first)
    {
        lines.next();
        if header.format == FACTS_FORMAT && header.stream_ids.len() == usize::from(state.shards()) {
            out.stream_ids = header.stream_ids;
        }
    }
    for line in lines {
        match serde_json::from_str::<tollgate_protocol::AccountFacts>(line) {
            Ok(facts) => {
                if state.cache.restore(facts, &view) {
                    out.accounts += 1;
                }
            }
            Err(_) => out.skipped += 1,
        }
    }
    state.set_stream_positions(out.stream_ids.clone());
    tracing::info!(restored = out.accounts, skipped = out.skipped, stream_ids = ?out.stream_ids, "cached facts restored from disk");
    out
}

/// How often the edge saves its cached facts.
pub const FACTS_SNAPSHOT_MS: u64 = 5_000;

/// Saves the cached facts every [`FACTS_SNAPSHOT_MS`] and once more at shutdown.
pub async fn snapshot_facts(
    state: EdgeState,
    dir: PathBuf,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let stop = tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(FACTS_SNAPSHOT_MS)) => false,
            _ = shutdown.changed() => true,
        };
        let (st, d) = (state.clone(), dir.clone());
        match tokio::task::spawn_blocking(move || persist_facts(&st, &d)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "could not save cached facts"),
            Err(e) => tracing::warn!(error = %e, "facts snapshot task failed"),
        }
        if stop {
            return;
        }
    }
}

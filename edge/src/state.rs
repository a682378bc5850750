//! The edge's shared state.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tollgate_protocol::{AccountId, ChangeEvent};
use tollgate_rules::host::LoadedRules;
use tollgate_rules::ir::Program;

use crate::cache::{AccountCache, CacheLimits, Entry, Fill, RulesView};
use crate::metrics::{EdgeMetrics, FillLabels, FillSourceLabel};
use crate::upstream::{FillSource, Upstream, UpstreamError};
use crate::usage::{FlushTarget, Usage};

#[derive(Clone)]
pub struct EdgeState(pub Arc<Inner>);

pub struct Inner {
    pub edge_id: String,
    pub cache: AccountCache,
    /// The rule bundle in force; `None` until the first one is installed (not ready).
    pub rules: ArcSwapOption<RulesView>,
    rules_generation: AtomicU64,
    pub upstream: Upstream,
    /// Per stream shard, its last successful change-stream read (unix ms); answers for the
    /// shard's accounts are stale past the budget.
    stream_ok_at_ms: Box<[AtomicI64]>,
    pub freshness_budget_ms: i64,
    pub negative_ttl_ms: u64,
    pub metrics: EdgeMetrics,
    denials: std::sync::Mutex<std::collections::VecDeque<Denial>>,
    /// The usage store, once attached (`POST /v1/usage` answers 503 without one).
    pub usage: std::sync::OnceLock<Arc<Usage>>,
    /// Who may call which routes.
    pub tokens: crate::auth::Tokens,
    /// Per stream shard, the last change-stream id applied (saved with the facts snapshot,
    /// resumed from).
    stream_positions: std::sync::Mutex<Vec<Option<String>>>,
    /// Per stream shard, whether its follower caught up from the snapshot's position.
    shards_caught_up: std::sync::Mutex<Vec<bool>>,
    /// Restored entries are current: every shard's follower caught up from the snapshot's
    /// position.
    restored_confirmed: AtomicBool,
    /// Restored entries not confirmed by a refetch yet (counted by each revalidation).
    restored_left: AtomicU64,
    /// Fills skip the Redis L2 copy until then (unix ms): after a change-stream gap, L2 may
    /// be older than the control plane.
    l2_distrusted_until_ms: AtomicI64,
}

/// How an edge is set up, beside its upstream.
#[derive(Debug, Clone)]
pub struct EdgeOptions {
    pub edge_id: String,
    pub cache_limits: CacheLimits,
    /// Answers are stale when the change stream has not been read for longer, ms.
    pub freshness_budget_ms: u64,
    /// How long "unknown account" is trusted, ms.
    pub negative_ttl_ms: u64,
    pub tokens: crate::auth::Tokens,
}

impl EdgeOptions {
    /// Defaults for an edge named `edge_id`: 1,000 accounts / 16 MiB, 5 s freshness budget and
    /// negative TTL, no tokens.
    pub fn new(edge_id: &str) -> Self {
        Self {
            edge_id: edge_id.to_owned(),
            cache_limits: CacheLimits {
                entries_max: 1_000,
                bytes_max: 1 << 24,
            },
            freshness_budget_ms: 5_000,
            negative_ttl_ms: 5_000,
            tokens: crate::auth::Tokens::default(),
        }
    }
}

/// Recent denials kept for support ("why was account A denied F at 14:02").
pub const DENIALS_MAX: usize = 1_024;

/// One denial, as the status API shows it.
#[derive(utoipa::ToSchema, Debug, Clone, serde::Serialize)]
pub struct Denial {
    pub at_ms: i64,
    pub account: AccountId,
    pub feature: String,
    pub reason: tollgate_protocol::Reason,
    pub version: i64,
    pub bundle_version: u64,
    pub stale: bool,
}

/// Longest a request waits for another request's fill of the same account.
pub const COALESCED_WAIT_MS_MAX: u64 = 10_000;
/// Accounts a bundle swap re-materialises at a time: their fact vectors are built together
/// and evaluated in calls of the module's batch size (64 accounts for the demo rules).
pub const REMATERIALISE_BATCH: usize = 256;

struct FillGuard<'a> {
    cache: &'a AccountCache,
    account: AccountId,
    armed: bool,
}

impl FillGuard<'_> {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for FillGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.cache.abort_fill(self.account);
        }
    }
}

impl std::ops::Deref for EdgeState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl EdgeState {
    pub fn new(opts: EdgeOptions, upstream: Upstream) -> Self {
        let shards = usize::from(upstream.keys().shards());
        Self(Arc::new(Inner {
            edge_id: opts.edge_id,
            cache: AccountCache::new(opts.cache_limits),
            rules: ArcSwapOption::empty(),
            rules_generation: AtomicU64::new(0),
            upstream,
            stream_ok_at_ms: (0..shards).map(|_| AtomicI64::new(0)).collect(),
            freshness_budget_ms: i64::try_from(opts.freshness_budget_ms).unwrap_or(i64::MAX),
            negative_ttl_ms: opts.negative_ttl_ms,
            metrics: EdgeMetrics::new(),
            denials: std::sync::Mutex::new(std::collections::VecDeque::with_capacity(DENIALS_MAX)),
            usage: std::sync::OnceLock::new(),
            tokens: opts.tokens,
            stream_positions: std::sync::Mutex::new(vec![None; shards]),
            shards_caught_up: std::sync::Mutex::new(vec![false; shards]),
            restored_confirmed: AtomicBool::new(false),
            restored_left: AtomicU64::new(0),
            l2_distrusted_until_ms: AtomicI64::new(0),
        }))
    }

    /// How many change-stream shards this edge follows.
    pub fn shards(&self) -> u16 {
        self.upstream.keys().shards()
    }

    /// Per shard, the last change-stream id applied, if any.
    pub fn stream_positions(&self) -> Vec<Option<String>> {
        self.stream_positions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The last change-stream id applied on `shard`, if any.
    pub fn stream_position(&self, shard: u16) -> Option<String> {
        self.stream_positions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(usize::from(shard))
            .cloned()
            .flatten()
    }

    /// Records the last change-stream id applied on `shard` (its follower).
    pub fn set_stream_position(&self, shard: u16, id: Option<String>) {
        if let Some(p) = self
            .stream_positions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get_mut(usize::from(shard))
        {
            *p = id;
        }
    }

    /// Records every shard's position at once (a restore); positions of another shard count
    /// (an older snapshot) are dropped: nothing is resumed from them.
    pub fn set_stream_positions(&self, ids: Vec<Option<String>>) {
        let mut positions = self
            .stream_positions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if ids.len() == positions.len() {
            *positions = ids;
        } else {
            positions.iter_mut().for_each(|p| *p = None);
        }
    }

    /// `shard`'s follower read from the snapshot's position to its stream's end without a gap;
    /// once every shard's has, restored entries are current.
    pub fn shard_caught_up(&self, shard: u16) {
        let all = {
            let mut done = self
                .shards_caught_up
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(d) = done.get_mut(usize::from(shard)) {
                *d = true;
            }
            done.iter().all(|d| *d)
        };
        if all && !self.restored_confirmed() {
            self.confirm_restored();
            tracing::info!(
                "every stream shard caught up from the saved positions: restored facts are current"
            );
        }
    }

    /// A successful read of `shard`'s stream just now.
    pub fn mark_stream_read(&self, shard: u16) {
        if let Some(at) = self.stream_ok_at_ms.get(usize::from(shard)) {
            at.store(crate::clock::now_ms(), Ordering::Relaxed);
        }
    }

    /// Whether `shard`'s stream has not been read successfully within the freshness budget.
    pub fn shard_stale(&self, shard: u16) -> bool {
        self.stream_ok_at_ms
            .get(usize::from(shard))
            .is_none_or(|at| {
                crate::clock::now_ms() - at.load(Ordering::Relaxed) > self.freshness_budget_ms
            })
    }

    /// Whether restored entries are known to be current.
    pub fn restored_confirmed(&self) -> bool {
        self.restored_confirmed.load(Ordering::Acquire)
    }

    /// Every restored entry is current (the follower caught up from the snapshot's position).
    pub fn confirm_restored(&self) {
        self.restored_confirmed.store(true, Ordering::Release);
        self.restored_left.store(0, Ordering::Relaxed);
    }

    /// Notes how many entries were restored (and wait for confirmation).
    pub fn set_restored(&self, n: u64) {
        self.restored_left.store(n, Ordering::Relaxed);
    }

    /// Whether restored entries are still waiting to be confirmed (the stale poller then
    /// revalidates, even with the stream healthy).
    pub fn restored_waiting(&self) -> bool {
        !self.restored_confirmed() && self.restored_left.load(Ordering::Relaxed) > 0
    }

    /// Fills skip L2 for the next `ms`.
    pub fn distrust_l2_for(&self, ms: i64) {
        self.l2_distrusted_until_ms
            .fetch_max(crate::clock::now_ms().saturating_add(ms), Ordering::Relaxed);
    }

    /// Whether fills may read the L2 copy now.
    pub fn l2_trusted(&self) -> bool {
        crate::clock::now_ms() >= self.l2_distrusted_until_ms.load(Ordering::Relaxed)
    }

    /// Whether an answer from `account`'s entry is stale: its shard's change stream is silent
    /// past the budget (the other shards' do not matter to it), or the entry was restored and
    /// not confirmed since.
    pub fn entry_stale(&self, account: &AccountId, entry: &Entry) -> bool {
        self.shard_stale(self.upstream.keys().shard_of(account))
            || (entry.restored() && !self.restored_confirmed())
    }

    /// Swaps in a verified, self-tested bundle atomically; cached entries re-materialise
    /// lazily on their next check.
    pub fn install_rules(&self, bundle_version: u64, program: Program, rules: LoadedRules) {
        let generation = self.rules_generation.fetch_add(1, Ordering::SeqCst) + 1;
        self.rules.store(Some(Arc::new(RulesView::new(
            bundle_version,
            program,
            rules,
            generation,
        ))));
        tracing::info!(bundle_version, generation, "rule bundle installed");
    }

    /// Re-evaluates every cached account under the current bundle (run off the request path
    /// after a swap; checks keep answering from the previous decisions until their account is
    /// done), [`REMATERIALISE_BATCH`] accounts at a time through the module's batch path.
    pub fn rematerialise_all(&self) {
        let Some(view) = self.rules.load_full() else {
            return;
        };
        let mut done = 0u64;
        for chunk in self.cache.accounts().chunks(REMATERIALISE_BATCH) {
            done += self.cache.rematerialise_many(chunk, &view) as u64;
        }
        tracing::info!(
            bundle_version = view.bundle_version,
            accounts = done,
            "cache re-materialised"
        );
    }

    /// Refetches every cached account from the control plane (never L2: revalidation follows
    /// a change-stream gap, when L2 may have lost writes too, or a Redis outage) in batches of
    /// [`tollgate_protocol::FACTS_BATCH_MAX`], and applies what is newer (or confirms a
    /// restored entry). Used after a gap, when events may have been lost, and periodically
    /// while the stream is unavailable.
    pub async fn revalidate_all(&self) {
        self.revalidate_where(|_| true).await;
    }

    /// [`Self::revalidate_all`] for the cached accounts of the shards `stale` says (a shard
    /// whose stream is unavailable, or had a gap), plus restored entries not confirmed yet.
    pub async fn revalidate_shards(&self, stale: impl Fn(u16) -> bool) {
        let keys = self.upstream.keys().clone();
        let waiting = !self.restored_confirmed();
        self.revalidate_where(|a| {
            stale(keys.shard_of(a)) || (waiting && self.cache.peek(a).is_some_and(|e| e.restored()))
        })
        .await;
    }

    async fn revalidate_where(&self, pick: impl Fn(&AccountId) -> bool) {
        let Some(view) = self.rules.load_full() else {
            return;
        };
        let (mut refreshed, mut failed) = (0u64, 0u64);
        let mut accounts = self.cache.accounts();
        accounts.retain(|a| pick(a));
        for chunk in accounts.chunks(tollgate_protocol::FACTS_BATCH_MAX) {
            match self.upstream.facts_many(chunk, false).await {
                Ok(found) => {
                    for (_, facts, _) in found {
                        if let Some(facts) = facts
                            && self.cache.refresh(facts, &view)
                        {
                            refreshed += 1;
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "revalidation batch failed");
                    failed += chunk.len() as u64;
                }
            }
        }
        self.metrics.revalidated_accounts.inc_by(refreshed);
        if !self.restored_confirmed() {
            let left = self
                .cache
                .accounts()
                .iter()
                .filter(|a| self.cache.peek(a).is_some_and(|e| e.restored()))
                .count();
            self.restored_left.store(left as u64, Ordering::Relaxed);
        }
        tracing::info!(refreshed, failed, "revalidation done");
    }

    /// Remembers a denial in the bounded ring and logs it as a structured event.
    pub fn record_denial(&self, denial: Denial) {
        tracing::debug!(
            target: "tollgate_edge::denials",
            account_id = %denial.account,
            feature = %denial.feature,
            reason = denial.reason.as_str(),
            version = denial.version,
            bundle_version = denial.bundle_version,
            "denied"
        );
        let mut ring = self
            .denials
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if ring.len() == DENIALS_MAX {
            ring.pop_front();
        }
        ring.push_back(denial);
    }

    /// Recent denials, newest first.
    pub fn recent_denials(&self) -> Vec<Denial> {
        let ring = self
            .denials
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        ring.iter().rev().cloned().collect()
    }

    /// The meter of a metered feature of the bundle in force.
    pub fn meter(&self, key: &str) -> Option<tollgate_protocol::usage::MeterSpec> {
        let view = self.rules.load();
        let view = view.as_ref()?;
        let i = view.feature_index(key)?;
        view.program.features[i].meter.clone()
    }

    /// The billing anchor of the account's subscription, from the facts this edge holds:
    /// monthly and yearly meters count in its periods (`None`: calendar periods). Not a read of
    /// the account for eviction: the usage path asks it for every event it counts.
    pub fn billing_anchor(&self, account: AccountId) -> Option<i64> {
        self.cache.peek(&account)?.billing_anchor_ms()
    }

    /// Opens (recovering) this edge's usage store with its meters and metrics, and makes it
    /// the store checks and `POST /v1/usage` use. Returns it for the flusher.
    pub fn open_usage(
        &self,
        opts: &crate::usage::UsageOptions,
    ) -> Result<Arc<Usage>, crate::usage_log::LogError> {
        let usage = Usage::open(opts, self.meters_fn(), self.metrics.usage.clone())?;
        let _ = self.usage.set(usage.clone());
        Ok(usage)
    }

    /// [`Self::meter`] and [`Self::billing_anchor`] as a function for the usage store, holding
    /// the state weakly (the store is part of the state: a strong reference would keep both
    /// alive forever).
    pub fn meters_fn(
        &self,
    ) -> impl Fn(AccountId, &str) -> Option<(tollgate_protocol::usage::MeterSpec, Option<i64>)>
    + Send
    + Sync
    + 'static {
        let weak = Arc::downgrade(&self.0);
        move |account, key| {
            let state = EdgeState(weak.upgrade()?);
            Some((state.meter(key)?, state.billing_anchor(account)))
        }
    }

    /// Current-period usage of a metered feature: the control plane's aggregate (fetched when
    /// missing or old) plus, for additive aggregations, this edge's unacknowledged events; with
    /// whether it is stale (the aggregate could not be fetched). See [`Usage::usage_of`]; 0 and
    /// fresh without a usage store.
    pub async fn usage_of(
        &self,
        account: AccountId,
        meter: &str,
        spec: &tollgate_protocol::usage::MeterSpec,
    ) -> (i64, bool) {
        match self.usage.get() {
            Some(usage) => usage.usage_of(&self.upstream, account, meter, spec).await,
            None => (0, false),
        }
    }

    /// Whether `quantity` more units of a `sum` meter fit the account's quota, served from this
    /// edge's lease; see [`Usage::lease_allows`]. `None` without a usage store: the caller
    /// compares the usage read instead.
    pub async fn lease_allows(
        &self,
        account: AccountId,
        meter: &str,
        spec: &tollgate_protocol::usage::MeterSpec,
        limit: i64,
        quantity: i64,
    ) -> Option<bool> {
        self.usage
            .get()?
            .lease_allows(
                &self.upstream,
                &self.edge_id,
                account,
                meter,
                spec,
                limit,
                quantity,
            )
            .await
    }

    pub fn bundle_version(&self) -> Option<u64> {
        self.rules.load().as_ref().map(|v| v.bundle_version)
    }

    /// Some answers are stale: a change-stream shard has not been read successfully within
    /// the freshness budget (Redis or its node down, or never reached).
    pub fn is_stale(&self) -> bool {
        (0..self.shards()).any(|s| self.shard_stale(s))
    }

    pub fn apply_change(&self, ev: ChangeEvent) {
        let Some(view) = self.rules.load_full() else {
            return;
        };
        // Wall clocks, not the followed development clock (an advance would count as lag).
        // The event's times are another process's word, for metrics only: saturating.
        let now_us = crate::clock::wall_us();
        let since_publish_ms = (now_us / 1_000).saturating_sub(ev.committed_at_ms);
        self.metrics.stream_lag_ms.set(since_publish_ms.max(0));
        let changed_at_us = ev
            .changed_at_us
            .unwrap_or(ev.committed_at_ms.saturating_mul(1_000));
        let since_change_us = now_us.saturating_sub(changed_at_us);
        if self.cache.apply(ev.facts, &view) {
            self.metrics.changes_applied.inc();
            self.metrics
                .propagation_ms
                .observe(since_change_us.max(0) as f64 / 1e3);
        }
    }

    /// Fills, together, the accounts of `accounts` the cache does not hold (one L2 `MGET`, one
    /// control-plane request per [`tollgate_protocol::FACTS_BATCH_MAX`]); accounts another
    /// request is filling are waited for. Failures are left for the per-account path (it
    /// answers from the fallback policy).
    pub async fn fill_many(&self, accounts: &[AccountId], view: &Arc<RulesView>) {
        let mut leaders = Vec::new();
        let mut waiters = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for a in accounts {
            if !seen.insert(*a)
                || self
                    .cache
                    .get(a)
                    .is_some_and(|e| !self.expired_negative(&e))
            {
                continue;
            }
            match self.cache.begin_fill(*a) {
                Fill::Leader => leaders.push(*a),
                Fill::Wait(rx) => waiters.push(rx),
            }
        }
        if !leaders.is_empty() {
            self.metrics.cache_misses.inc_by(leaders.len() as u64);
            match self.upstream.facts_many(&leaders, self.l2_trusted()).await {
                Ok(found) => {
                    for (account, facts, source) in found {
                        let label = match source {
                            FillSource::Redis => FillSourceLabel::Redis,
                            FillSource::ControlPlane => FillSourceLabel::ControlPlane,
                        };
                        self.metrics
                            .fills
                            .get_or_create(&FillLabels { source: label })
                            .inc();
                        self.cache.finish_fill(account, facts, view);
                    }
                }
                Err(e) => {
                    if matches!(e, UpstreamError::Throttled) {
                        self.metrics.fills_throttled.inc();
                    }
                    tracing::debug!(error = %e, accounts = leaders.len(), "batch fill failed");
                    for a in &leaders {
                        self.cache.abort_fill(*a);
                    }
                }
            }
        }
        for mut rx in waiters {
            let _ =
                tokio::time::timeout(Duration::from_millis(COALESCED_WAIT_MS_MAX), rx.changed())
                    .await;
        }
    }

    /// Whether a cached "unknown account" entry is past its TTL.
    fn expired_negative(&self, e: &Entry) -> bool {
        !e.has_facts() && e.age_ms() > self.negative_ttl_ms
    }

    /// The cached entry for an account, filling it on a miss.
    pub async fn entry(
        &self,
        account: AccountId,
        view: &Arc<RulesView>,
    ) -> Result<Arc<Entry>, UpstreamError> {
        if let Some(e) = self.cache.get(&account)
            && !self.expired_negative(&e)
        {
            self.metrics.cache_hits.inc();
            // An entry from an older bundle keeps answering until the background pass
            // re-materialises it: a cache hit never enters WebAssembly.
            return Ok(e);
        }
        self.metrics.cache_misses.inc();
        if let Fill::Wait(mut done) = self.cache.begin_fill(account) {
            // Coalesced: one fetch per cold account, however many requests miss at once.
            self.metrics.coalesced_misses.inc();
            let _ =
                tokio::time::timeout(Duration::from_millis(COALESCED_WAIT_MS_MAX), done.changed())
                    .await;
            return self.cache.get(&account).ok_or_else(|| {
                UpstreamError::Unavailable("the fill this request waited for failed".into())
            });
        }
        // If this request is dropped mid-fetch, the guard ends the fill so waiters wake and the
        // next miss fetches again.
        let guard = FillGuard {
            cache: &self.cache,
            account,
            armed: true,
        };
        let fetched = self.upstream.facts(account, self.l2_trusted()).await;
        guard.disarm();
        match fetched {
            Ok((facts, source)) => {
                let label = match source {
                    FillSource::Redis => FillSourceLabel::Redis,
                    FillSource::ControlPlane => FillSourceLabel::ControlPlane,
                };
                self.metrics
                    .fills
                    .get_or_create(&FillLabels { source: label })
                    .inc();
                Ok(self.cache.finish_fill(account, facts, view))
            }
            Err(e) => {
                if matches!(e, UpstreamError::Throttled) {
                    self.metrics.fills_throttled.inc();
                }
                self.cache.abort_fill(account);
                Err(e)
            }
        }
    }
}

/// The flusher flushes to this edge's control plane, as this edge.
impl FlushTarget for EdgeState {
    fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    fn edge_id(&self) -> &str {
        &self.edge_id
    }
}

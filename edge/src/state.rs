//! The edge's shared state.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tollgate_protocol::{AccountId, ChangeEvent};
use tollgate_rules::host::LoadedRules;
use tollgate_rules::ir::Program;

use crate::cache::{AccountCache, CacheLimits, Entry, Fill, RulesView};
use crate::metrics::{EdgeMetrics, FillLabels, FillSourceLabel};
use crate::upstream::{FillSource, Upstream, UpstreamError};

#[derive(Clone)]
pub struct EdgeState(pub Arc<Inner>);

pub struct Inner {
    pub edge_id: String,
    pub cache: AccountCache,
    /// The rule bundle in force; `None` until the first one is installed (not ready).
    pub rules: ArcSwapOption<RulesView>,
    rules_generation: AtomicU64,
    pub upstream: Upstream,
    /// Last successful change-stream read (unix ms); answers are stale past the budget.
    pub stream_ok_at_ms: AtomicI64,
    pub freshness_budget_ms: i64,
    pub negative_ttl_ms: u64,
    pub metrics: EdgeMetrics,
    denials: std::sync::Mutex<std::collections::VecDeque<Denial>>,
    /// The usage store, once attached (`POST /v1/usage` answers 503 without one).
    pub usage: std::sync::OnceLock<Arc<crate::usage::Usage>>,
}

/// Recent denials kept for support ("why was account A denied F at 14:02").
pub const DENIALS_MAX: usize = 1_024;

/// One denial, as the status API shows it.
#[derive(Debug, Clone, serde::Serialize)]
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
    pub fn new(
        edge_id: String,
        cache_limits: CacheLimits,
        upstream: Upstream,
        freshness_budget_ms: u64,
        negative_ttl_ms: u64,
    ) -> Self {
        Self(Arc::new(Inner {
            edge_id,
            cache: AccountCache::new(cache_limits),
            rules: ArcSwapOption::empty(),
            rules_generation: AtomicU64::new(0),
            upstream,
            stream_ok_at_ms: AtomicI64::new(0),
            freshness_budget_ms: i64::try_from(freshness_budget_ms).unwrap_or(i64::MAX),
            negative_ttl_ms,
            metrics: EdgeMetrics::new(),
            denials: std::sync::Mutex::new(std::collections::VecDeque::with_capacity(DENIALS_MAX)),
            usage: std::sync::OnceLock::new(),
        }))
    }

    /// Swaps in a verified, self-tested bundle atomically; cached entries re-materialise
    /// lazily on their next check.
    pub fn install_rules(&self, bundle_version: u64, program: Program, rules: Option<LoadedRules>) {
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
    /// done).
    pub fn rematerialise_all(&self) {
        let Some(view) = self.rules.load_full() else {
            return;
        };
        let mut done = 0u64;
        for account in self.cache.accounts() {
            if self.cache.rematerialise(account, &view).is_some() {
                done += 1;
            }
        }
        tracing::info!(
            bundle_version = view.bundle_version,
            accounts = done,
            "cache re-materialised"
        );
    }

    /// Refetches every cached account (L2, then the control plane) and applies what is newer.
    /// Used after a change-stream gap, when events may have been lost, and periodically while
    /// the stream is unavailable.
    pub async fn revalidate_all(&self) {
        let Some(view) = self.rules.load_full() else {
            return;
        };
        let (mut refreshed, mut failed) = (0u64, 0u64);
        for account in self.cache.accounts() {
            match self.upstream.facts(account).await {
                Ok((Some(facts), _)) => {
                    if self.cache.apply(facts, &view) {
                        refreshed += 1;
                    }
                }
                Ok((None, _)) => {}
                Err(_) => failed += 1,
            }
        }
        self.metrics.revalidated_accounts.inc_by(refreshed);
        tracing::info!(refreshed, failed, "revalidation done");
    }

    /// Remembers a denial in the bounded ring and logs it as a structured event.
    pub fn record_denial(&self, account: AccountId, resp: &crate::CheckResponse<'_>) {
        tracing::debug!(
            target: "tollgate_edge::denials",
            account_id = %account,
            feature = %resp.feature,
            reason = resp.reason.as_str(),
            version = resp.version,
            bundle_version = resp.bundle_version,
            "denied"
        );
        let denial = Denial {
            at_ms: crate::now_ms(),
            account,
            feature: resp.feature.to_string(),
            reason: resp.reason,
            version: resp.version,
            bundle_version: resp.bundle_version,
            stale: resp.stale,
        };
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

    /// [`Self::meter`] as a function for the usage store, holding the state weakly (the store
    /// is part of the state: a strong reference would keep both alive forever).
    pub fn meters_fn(
        &self,
    ) -> impl Fn(&str) -> Option<tollgate_protocol::usage::MeterSpec> + Send + Sync + 'static {
        let weak = Arc::downgrade(&self.0);
        move |key| weak.upgrade().and_then(|inner| EdgeState(inner).meter(key))
    }

    /// Current-period usage of a metered feature: the control plane's aggregate (fetched when
    /// missing or old) plus, for additive aggregations, this edge's unacknowledged events.
    /// `Err` when the aggregate could not be fetched (the caller answers `stale`).
    pub async fn usage_of(
        &self,
        account: AccountId,
        meter: &str,
        spec: &tollgate_protocol::usage::MeterSpec,
    ) -> (i64, bool) {
        let now = crate::now_ms();
        let (start, _) = spec.period.bounds(now);
        let Some(usage) = self.usage.get() else {
            return (0, false);
        };
        let local = usage.pending(account, meter, start);
        let aggregate = match usage.fresh_aggregate(account, meter, now) {
            Some(a) => Some(a),
            None => match self.upstream.account_usage(account).await {
                Ok(all) => {
                    usage.remember(all.aggregates);
                    // Remembered even when older than the TTL allows: take it from the answer.
                    usage.fresh_aggregate(account, meter, now)
                }
                Err(e) => {
                    // The last aggregate however old (stale), plus what this edge added since.
                    tracing::debug!(account_id = %account, error = %e, "usage aggregate unavailable; using the last one");
                    let last = usage.last_aggregate(account, meter, now).map(|(a, _)| a);
                    return (combine(spec, last, start, local), true);
                }
            },
        };
        (combine(spec, aggregate, start, local), false)
    }

    /// Whether `quantity` more units of a `sum` meter fit the account's quota, served from this
    /// edge's lease and renewing it (asking for the shortfall plus the meter's lease size) when
    /// it runs short. `None` when there is no usage store or the control plane could not be
    /// asked: the caller compares the last aggregate instead.
    pub async fn lease_allows(
        &self,
        account: AccountId,
        meter: &str,
        spec: &tollgate_protocol::usage::MeterSpec,
        limit: i64,
        quantity: i64,
    ) -> Option<bool> {
        let usage = self.usage.get()?;
        let (start, _) = spec.period.bounds(crate::now_ms());
        let lease = usage.lease(account, meter, start);
        let remaining = lease.map_or_else(
            || -usage.pending(account, meter, start).quantity,
            |l| l.remaining(),
        );
        if lease.is_some() && remaining >= quantity {
            return Some(true);
        }
        let recently_exhausted = lease.and_then(|l| l.exhausted_at).is_some_and(|t| {
            t.elapsed() < Duration::from_millis(crate::usage::EXHAUSTED_RECHECK_MS)
        });
        if recently_exhausted {
            return Some(false);
        }
        let req = tollgate_protocol::usage::LeaseRequest {
            account,
            meter: meter.to_owned(),
            edge_id: self.edge_id.clone(),
            period_start_ms: start,
            want: quantity.saturating_sub(remaining).max(0) + spec.lease,
            limit,
        };
        match self.upstream.lease(&req).await {
            Ok(grant) => {
                let l = usage.add_grant(account, meter, start, grant.granted);
                Some(l.remaining() >= quantity)
            }
            Err(e) => {
                tracing::warn!(account_id = %account, meter, error = %e, "quota lease unavailable; comparing the last aggregate");
                None
            }
        }
    }

    pub fn bundle_version(&self) -> Option<u64> {
        self.rules.load().as_ref().map(|v| v.bundle_version)
    }

    /// Answers are stale when the change stream has not been read successfully within the
    /// freshness budget (Redis down, or never reached).
    pub fn is_stale(&self) -> bool {
        crate::now_ms() - self.stream_ok_at_ms.load(Ordering::Relaxed) > self.freshness_budget_ms
    }

    pub fn apply_change(&self, ev: ChangeEvent) {
        let Some(view) = self.rules.load_full() else {
            return;
        };
        let lag_ms = crate::now_ms() - ev.committed_at_ms;
        self.metrics.stream_lag_ms.set(lag_ms.max(0));
        if self.cache.apply(ev.facts, &view) {
            self.metrics.changes_applied.inc();
            self.metrics.propagation_ms.observe(lag_ms.max(0) as f64);
        }
    }

    /// The cached entry for an account, filling it on a miss.
    pub async fn entry(
        &self,
        account: AccountId,
        view: &Arc<RulesView>,
    ) -> Result<Arc<Entry>, UpstreamError> {
        if let Some(e) = self.cache.get(&account) {
            let expired_negative = e.facts.is_none()
                && e.filled_at.elapsed().as_millis() > u128::from(self.negative_ttl_ms);
            if !expired_negative {
                self.metrics.cache_hits.inc();
                // An entry from an older bundle keeps answering until the background pass
                // re-materialises it: a cache hit never enters WebAssembly.
                return Ok(e);
            }
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
        let fetched = self.upstream.facts(account).await;
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
                self.cache.abort_fill(account);
                Err(e)
            }
        }
    }
}

/// The usage a check sees: the control plane's aggregate of the current period plus, for
/// additive aggregations, this edge's unacknowledged events.
fn combine(
    spec: &tollgate_protocol::usage::MeterSpec,
    aggregate: Option<tollgate_protocol::usage::MeterAggregate>,
    period_start: i64,
    local: crate::usage::Pending,
) -> i64 {
    let remote = aggregate
        .filter(|a| a.period_start_ms == period_start)
        .map_or(0, |a| a.value);
    match spec.aggregation {
        tollgate_protocol::usage::Aggregation::Sum => remote + local.quantity,
        tollgate_protocol::usage::Aggregation::Count => remote + local.events,
        _ => remote,
    }
}

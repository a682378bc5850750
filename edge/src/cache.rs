//! The account cache: account → materialised decisions, answered without an await.
//!
//! Entries keep the facts they were evaluated from and the rules generation, so after a bundle
//! swap a background pass re-materialises them from their facts, without refetching; checks
//! keep answering from the previous decisions meanwhile.
//!
//! Fill races: a fetch from L2 / the control plane may return facts older than a change event
//! that arrives while it is in flight. The stream follower therefore also records events for
//! accounts with a fetch in flight ([`AccountCache::begin_fill`]), and a fill inserts the
//! newest of both. The lock that orders them is held only to read and to publish: the
//! WebAssembly evaluation runs outside it, and publishing re-checks that nothing newer landed
//! in between (if something did, the loser evaluates again or steps aside).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Instant;

use moka::sync::Cache;
use tollgate_protocol::{AccountFacts, AccountId, Decision};
use tollgate_rules::facts::{decision, fact_vector};
use tollgate_rules::host::LoadedRules;
use tollgate_rules::interp;
use tollgate_rules::ir::Program;

/// The rule bundle in force: its program, its loaded WebAssembly module, a feature index and a
/// generation number that changes with every install.
pub struct RulesView {
    pub bundle_version: u64,
    pub program: Program,
    /// The verified module: every decision comes from it (the interpreter answers only when
    /// it fails at run time, logged and counted).
    pub rules: LoadedRules,
    pub generation: u64,
    /// Feature key → index in `program.features` (and in an entry's decisions). Shared with
    /// the entries materialised under this view, so an entry of an older bundle is read by
    /// its own bundle's index.
    index: Arc<HashMap<String, usize>>,
}

impl RulesView {
    pub fn new(bundle_version: u64, program: Program, rules: LoadedRules, generation: u64) -> Self {
        let index = Arc::new(
            program
                .features
                .iter()
                .enumerate()
                .map(|(i, f)| (f.key.clone(), i))
                .collect(),
        );
        Self {
            bundle_version,
            program,
            rules,
            generation,
            index,
        }
    }

    pub fn feature_index(&self, key: &str) -> Option<usize> {
        self.index.get(key).copied()
    }

    /// Materialises every feature's decision for one account through the module. The module
    /// passed its embedded tests before install; should it still fail at run time, the
    /// reference interpreter (same semantics, proven equal by property tests) answers and the
    /// failure is logged.
    pub fn decide(&self, facts: &AccountFacts) -> Vec<Decision> {
        let vector = fact_vector(&self.program, facts, crate::clock::now_ms());
        let raw = self.rules.evaluate(&vector).unwrap_or_else(|e| {
            tracing::error!(account_id = %facts.account_id, error = %e, "rule module failed; interpreter answers");
            interp::evaluate(&self.program, &vector)
        });
        raw.into_iter().map(decision).collect()
    }
}

/// One cached account.
#[derive(Debug)]
pub struct Entry {
    /// `None`: the control plane says the account does not exist.
    pub facts: Option<AccountFacts>,
    pub decisions: Vec<Decision>,
    pub generation: u64,
    /// The rule bundle the decisions came from.
    pub bundle_version: u64,
    pub filled_at: Instant,
    /// Restored from the facts snapshot at start and not confirmed since: its answers are
    /// stale until the follower catches up from the snapshot's stream position, or the
    /// account is refetched or changes.
    pub restored: bool,
    /// The feature index of the bundle the decisions came from.
    index: Arc<HashMap<String, usize>>,
}

impl Entry {
    /// An estimate of the memory this entry holds: the struct, its decisions, the facts' heap
    /// parts, plus [`ENTRY_OVERHEAD_BYTES`] for the cache's own bookkeeping.
    pub fn estimated_bytes(&self) -> u64 {
        let facts = self.facts.as_ref().map_or(0, |f| {
            let plan = f.subscription.as_ref().map_or(0, |s| s.plan.capacity());
            // A BTreeMap node per entry, roughly: key, value and the tree's own links.
            let addons: usize = f.addons.keys().map(|k| k.capacity() + 48).sum();
            let overrides: usize = f.overrides.keys().map(|k| k.capacity() + 64).sum();
            std::mem::size_of::<AccountFacts>() + plan + addons + overrides
        });
        let decisions = self.decisions.capacity() * std::mem::size_of::<Decision>();
        (std::mem::size_of::<Self>() + facts + decisions) as u64 + ENTRY_OVERHEAD_BYTES
    }

    pub fn version(&self) -> i64 {
        self.facts.as_ref().map_or(0, |f| f.version)
    }

    /// The decision for `feature` in the bundle this entry was materialised under (which may
    /// be older than the one in force, until the background pass reaches it); `None` when
    /// that bundle has no such feature.
    pub fn decision(&self, feature: &str) -> Option<&Decision> {
        self.decisions.get(*self.index.get(feature)?)
    }

    pub fn materialise(facts: Option<AccountFacts>, view: &RulesView) -> Self {
        let decisions = facts.as_ref().map(|f| view.decide(f)).unwrap_or_default();
        Self {
            facts,
            decisions,
            generation: view.generation,
            bundle_version: view.bundle_version,
            filled_at: Instant::now(),
            restored: false,
            index: view.index.clone(),
        }
    }
}

/// A fill in flight: the newest facts the stream delivered meanwhile, and the channel its
/// waiters watch (dropping the sender, when the fill ends, wakes them all).
struct InFlight {
    newest: Option<AccountFacts>,
    _done: tokio::sync::watch::Sender<()>,
    waiters: tokio::sync::watch::Receiver<()>,
}

/// What a caller that missed should do.
pub enum Fill {
    /// Fetch the facts, then [`AccountCache::finish_fill`] or [`AccountCache::abort_fill`].
    Leader,
    /// Another request is fetching this account: wait for it (`changed()` returns when the
    /// fill ends), then read the cache.
    Wait(tokio::sync::watch::Receiver<()>),
}

/// How much the cache may hold: both bounds apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheLimits {
    pub entries_max: u64,
    /// Estimated heap bytes of cached entries (see [`Entry::estimated_bytes`]).
    pub bytes_max: u64,
}

/// Bookkeeping the estimate adds per entry for moka's own node, its key and the `Arc`
/// (measured: the `cache` bench's resident bytes per account minus the entry's own estimate).
pub const ENTRY_OVERHEAD_BYTES: u64 = 320;

pub struct AccountCache {
    entries: Cache<AccountId, Arc<Entry>>,
    /// Accounts with a fill in flight. Concurrent misses for one account share one fetch.
    in_flight: Mutex<HashMap<AccountId, InFlight>>,
}

fn newer(a: Option<AccountFacts>, b: Option<AccountFacts>) -> Option<AccountFacts> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if b.version > a.version { b } else { a }),
        (a, b) => a.or(b),
    }
}

impl AccountCache {
    /// Both bounds through one moka weight: an entry weighs its estimated bytes, but never less
    /// than `bytes_max / entries_max`, and the capacity is `bytes_max`. So the total weight
    /// stays under `bytes_max` (the byte bound) and at most `entries_max` entries fit (each
    /// weighs at least a `1 / entries_max` share).
    pub fn new(limits: CacheLimits) -> Self {
        let floor = (limits.bytes_max / limits.entries_max.max(1)).max(1);
        Self {
            entries: Cache::builder()
                .max_capacity(limits.bytes_max)
                .weigher(move |_, e: &Arc<Entry>| {
                    u32::try_from(e.estimated_bytes().max(floor)).unwrap_or(u32::MAX)
                })
                .build(),
            in_flight: Mutex::new(HashMap::new()),
        }
    }

    pub fn get(&self, account: &AccountId) -> Option<Arc<Entry>> {
        self.entries.get(account)
    }

    pub fn entry_count(&self) -> u64 {
        self.entries.entry_count()
    }

    /// The weighted size: estimated bytes, each entry counted at least at its floor share.
    pub fn weighted_size(&self) -> u64 {
        self.entries.weighted_size()
    }

    /// Applies pending inserts and evictions now (moka does this lazily; tests and metrics).
    pub fn run_pending_tasks(&self) {
        self.entries.run_pending_tasks();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<AccountId, InFlight>> {
        // A panic while holding this lock leaves only a map of hints behind; keep going.
        self.in_flight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts a fill, or joins the one in flight for this account.
    pub fn begin_fill(&self, account: AccountId) -> Fill {
        let mut in_flight = self.lock();
        if let Some(f) = in_flight.get(&account) {
            return Fill::Wait(f.waiters.clone());
        }
        let (done, waiters) = tokio::sync::watch::channel(());
        in_flight.insert(
            account,
            InFlight {
                newest: None,
                _done: done,
                waiters,
            },
        );
        Fill::Leader
    }

    /// Completes a fill with what was fetched (`None` facts: unknown account), keeping whatever
    /// is newer among the fetch, events seen meanwhile and the current entry.
    pub fn finish_fill(
        &self,
        account: AccountId,
        fetched: Option<AccountFacts>,
        view: &RulesView,
    ) -> Arc<Entry> {
        let mut best = fetched;
        loop {
            // Pick the newest facts under the lock ...
            let candidate = {
                let in_flight = self.lock();
                let seen = in_flight.get(&account).and_then(|f| f.newest.clone());
                let current = self.entries.get(&account).and_then(|e| e.facts.clone());
                newer(newer(best.take(), seen), current)
            };
            // ... evaluate them outside it (WebAssembly: the follower and other fills go on) ...
            let entry = Arc::new(Entry::materialise(candidate.clone(), view));
            // ... and publish unless something newer arrived meanwhile (then go again).
            let mut in_flight = self.lock();
            let seen = in_flight
                .get(&account)
                .and_then(|f| f.newest.as_ref())
                .map(|f| f.version);
            let current = self.entries.get(&account).map(|e| e.version());
            if seen.is_none_or(|v| v <= entry.version())
                && current.is_none_or(|v| v <= entry.version())
            {
                self.entries.insert(account, entry.clone());
                // Only now end the fill: dropping it wakes the waiters, who read the cache.
                in_flight.remove(&account);
                return entry;
            }
            best = candidate;
        }
    }

    /// Abandons a failed fill.
    pub fn abort_fill(&self, account: AccountId) {
        self.lock().remove(&account);
    }

    /// Applies facts from the change stream: updates a cached account if newer, records them
    /// for a fill in flight, ignores accounts this edge does not hold. The module runs outside
    /// the lock; the insert re-checks that nothing newer landed meanwhile.
    pub fn apply(&self, facts: AccountFacts, view: &RulesView) -> bool {
        let account = facts.account_id;
        let version = facts.version;
        {
            let mut in_flight = self.lock();
            if let Some(f) = in_flight.get_mut(&account) {
                f.newest = newer(f.newest.take(), Some(facts.clone()));
            }
            match self.entries.get(&account) {
                Some(e) if e.version() < version => {}
                _ => return false,
            }
        }
        let entry = Arc::new(Entry::materialise(Some(facts), view));
        let _guard = self.lock();
        match self.entries.get(&account) {
            Some(e) if e.version() < version => {
                self.entries.insert(account, entry);
                true
            }
            _ => false,
        }
    }

    /// Caches facts restored from the snapshot, marked [`Entry::restored`], unless the account
    /// is cached or being filled already.
    pub fn restore(&self, facts: AccountFacts, view: &RulesView) -> bool {
        let account = facts.account_id;
        if !matches!(self.begin_fill(account), Fill::Leader) {
            return false;
        }
        if self.entries.contains_key(&account) {
            self.abort_fill(account);
            return false;
        }
        let entry = Arc::new(Entry {
            restored: true,
            ..Entry::materialise(Some(facts), view)
        });
        let mut in_flight = self.lock();
        self.entries.insert(account, entry);
        in_flight.remove(&account);
        true
    }

    /// Applies facts refetched from the control plane (a revalidation): like [`Self::apply`],
    /// and also replaces a restored entry of the same version, which is current now.
    pub fn refresh(&self, facts: AccountFacts, view: &RulesView) -> bool {
        let account = facts.account_id;
        let confirms =
            |e: &Entry| e.version() < facts.version || (e.restored && e.version() == facts.version);
        match self.entries.get(&account) {
            Some(e) if confirms(&e) => {}
            _ => return false,
        }
        let entry = Arc::new(Entry::materialise(Some(facts.clone()), view));
        let _guard = self.lock();
        match self.entries.get(&account) {
            Some(e) if confirms(&e) => {
                self.entries.insert(account, entry);
                true
            }
            _ => false,
        }
    }

    /// Re-evaluates an account's entry for a newer rules generation, outside the lock; the
    /// result replaces the entry only if nobody replaced it meanwhile (a newer event or fill is
    /// already evaluated under the new rules).
    pub fn rematerialise(&self, account: AccountId, view: &RulesView) -> Option<Arc<Entry>> {
        let current = self.entries.get(&account)?;
        if current.generation == view.generation {
            return Some(current);
        }
        let fresh = Arc::new(Entry {
            restored: current.restored,
            ..Entry::materialise(current.facts.clone(), view)
        });
        let _guard = self.lock();
        match self.entries.get(&account) {
            Some(now) if Arc::ptr_eq(&now, &current) => {
                self.entries.insert(account, fresh.clone());
                Some(fresh)
            }
            other => other,
        }
    }

    /// The accounts currently cached.
    pub fn accounts(&self) -> Vec<AccountId> {
        self.entries.iter().map(|(k, _)| *k).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_protocol::{AccountStanding, SubscriptionFacts, SubscriptionStatus};

    fn limits(entries_max: u64) -> CacheLimits {
        CacheLimits {
            entries_max,
            bytes_max: entries_max * 4096,
        }
    }

    fn fill(cache: &AccountCache, view: &RulesView, facts: AccountFacts) {
        cache.begin_fill(facts.account_id);
        cache.finish_fill(facts.account_id, Some(facts), view);
    }

    #[test]
    fn the_cache_holds_at_most_entries_max_accounts() {
        let view = demo_view();
        let cache = AccountCache::new(CacheLimits {
            entries_max: 100,
            bytes_max: 1 << 30,
        });
        for v in 1..=1_000 {
            fill(&cache, &view, facts(AccountId::new_v7(), v, Some("pro")));
        }
        cache.run_pending_tasks();
        let n = cache.entry_count();
        assert!((1..=100).contains(&n), "{n} entries cached");
    }

    #[test]
    fn the_cache_holds_at_most_bytes_max_of_entries() {
        let view = demo_view();
        let one = Entry::materialise(Some(facts(AccountId::new_v7(), 1, Some("pro"))), &view);
        let each = one.estimated_bytes();
        assert!(each > ENTRY_OVERHEAD_BYTES, "{each}");
        // Room for 50 such entries by bytes, 10,000 by count: bytes bind.
        let bytes_max = each * 50;
        let cache = AccountCache::new(CacheLimits {
            entries_max: 10_000,
            bytes_max,
        });
        for v in 1..=1_000 {
            let mut f = facts(AccountId::new_v7(), v, Some("pro"));
            // Bigger accounts weigh more: add-ons make their facts larger.
            if v % 2 == 0 {
                f.addons.insert(format!("addon-with-a-long-name-{v}"), 1);
            }
            fill(&cache, &view, f);
        }
        cache.run_pending_tasks();
        assert!(
            cache.weighted_size() <= bytes_max,
            "{} > {bytes_max}",
            cache.weighted_size()
        );
        let n = cache.entry_count();
        assert!((1..=50).contains(&n), "{n} entries cached");
    }

    fn demo_view() -> RulesView {
        let program = tollgate_rules::demo_program();
        let rules = tollgate_rules::host::RulesEngine::new()
            .expect("engine")
            .load_program(&program)
            .expect("the demo compiles and loads");
        RulesView::new(1, program, rules, 1)
    }

    fn facts(id: AccountId, version: i64, plan: Option<&str>) -> AccountFacts {
        AccountFacts {
            account_id: id,
            version,
            standing: AccountStanding::Active,
            subscription: plan.map(|p| SubscriptionFacts {
                plan: p.into(),
                status: SubscriptionStatus::Active,
                current_period_end_ms: 0,
                billing_anchor_ms: None,
            }),
            ..AccountFacts::new(id, 0)
        }
    }

    #[test]
    fn an_event_during_a_fill_wins_over_the_older_fetch() {
        let view = demo_view();
        let cache = AccountCache::new(limits(100));
        let id = AccountId::new_v7();
        cache.begin_fill(id);
        // The stream delivers v3 while the fetch (which read v2) is in flight.
        assert!(
            !cache.apply(facts(id, 3, Some("pro")), &view),
            "not cached yet"
        );
        let entry = cache.finish_fill(id, Some(facts(id, 2, None)), &view);
        assert_eq!(entry.version(), 3);
        let sso = view.feature_index("sso").expect("sso");
        assert!(entry.decisions[sso].allowed);
    }

    #[test]
    fn stream_updates_only_move_forward_and_skip_unknown_accounts() {
        let view = demo_view();
        let cache = AccountCache::new(limits(100));
        let id = AccountId::new_v7();
        assert!(!cache.apply(facts(id, 1, Some("pro")), &view));
        assert!(
            cache.get(&id).is_none(),
            "accounts the edge does not hold stay out"
        );
        cache.begin_fill(id);
        cache.finish_fill(id, Some(facts(id, 5, Some("pro"))), &view);
        assert!(!cache.apply(facts(id, 4, None), &view), "older is ignored");
        assert!(cache.apply(facts(id, 6, None), &view));
        let e = cache.get(&id).expect("cached");
        assert_eq!(e.version(), 6);
        assert!(!e.decisions[view.feature_index("sso").expect("sso")].allowed);
    }

    #[test]
    fn unknown_accounts_have_version_zero_and_no_decisions() {
        let view = demo_view();
        let cache = AccountCache::new(limits(10));
        let id = AccountId::new_v7();
        cache.begin_fill(id);
        let e = cache.finish_fill(id, None, &view);
        assert_eq!((e.version(), e.decisions.len()), (0, 0));
        // The account is created later: its first event replaces the negative entry.
        assert!(cache.apply(facts(id, 1, None), &view));
    }
}

//! The account cache: account → materialised decisions, answered without an await.
//!
//! Entries keep the facts they were evaluated from and the rules generation, so after a bundle
//! swap a background pass re-materialises them from their facts, without refetching; checks
//! keep answering from the previous decisions meanwhile.
//!
//! Memory: an entry is one allocation of about 150 bytes (the facts in a compact form, the plan
//! name interned, add-ons and overrides boxed only when present) plus its decisions packed at
//! 9 bytes each; the table is sharded `hashbrown` tables of `Arc<Entry>` (one pointer a slot),
//! evicting by CLOCK (a referenced bit per entry, set by reads, cleared by the hand). Both bounds,
//! entries and estimated bytes, hold per shard, so they hold in total.
//!
//! Fill races: a fetch from L2 / the control plane may return facts older than a change event
//! that arrives while it is in flight. The stream follower therefore also records events for
//! accounts with a fetch in flight ([`AccountCache::begin_fill`]), and a fill inserts the
//! newest of both. The lock that orders them is held only to read and to publish: the
//! WebAssembly evaluation runs outside it, and publishing re-checks that nothing newer landed
//! in between (if something did, the loser evaluates again or steps aside).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::time::Instant;

use hashbrown::HashTable;
use hashbrown::hash_table::Entry as Slot;
use tollgate_protocol::{
    AccountFacts, AccountId, AccountStanding, Decision, FeatureOverride, Reason, SubscriptionFacts,
    SubscriptionStatus,
};
use tollgate_rules::facts::{decision, fact_vector};
use tollgate_rules::host::LoadedRules;
use tollgate_rules::interp;
use tollgate_rules::ir::Program;

/// What an entry keeps of the view it was materialised under, shared by all of them: reading
/// an entry of an older bundle goes through its own bundle's feature index.
#[derive(Debug)]
struct Stamp {
    generation: u64,
    bundle_version: u64,
    /// Feature key → index in `program.features` (and in an entry's decisions).
    index: HashMap<String, usize>,
}

/// The rule bundle in force: its program, its loaded WebAssembly module, a feature index and a
/// generation number that changes with every install.
pub struct RulesView {
    pub bundle_version: u64,
    pub program: Program,
    /// The verified module: every decision comes from it (the interpreter answers only when
    /// it fails at run time, logged and counted).
    pub rules: LoadedRules,
    pub generation: u64,
    stamp: Arc<Stamp>,
}

impl RulesView {
    pub fn new(bundle_version: u64, program: Program, rules: LoadedRules, generation: u64) -> Self {
        let index = program
            .features
            .iter()
            .enumerate()
            .map(|(i, f)| (f.key.clone(), i))
            .collect();
        Self {
            bundle_version,
            program,
            rules,
            generation,
            stamp: Arc::new(Stamp {
                generation,
                bundle_version,
                index,
            }),
        }
    }

    pub fn feature_index(&self, key: &str) -> Option<usize> {
        self.stamp.index.get(key).copied()
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

    /// [`Self::decide`] for many accounts, in their order: one call into the module per
    /// [`LoadedRules::batch_max`] of them (a bundle swap re-materialises the cache this way).
    /// Should the module fail, the interpreter answers for all of them, logged.
    pub fn decide_many(&self, facts: &[&AccountFacts]) -> Vec<Vec<Decision>> {
        let now_ms = crate::clock::now_ms();
        let vectors: Vec<_> = facts
            .iter()
            .map(|f| fact_vector(&self.program, f, now_ms))
            .collect();
        let raw = self.rules.evaluate_batch(&vectors).unwrap_or_else(|e| {
            tracing::error!(accounts = facts.len(), error = %e, "rule module failed on a batch; interpreter answers");
            vectors
                .iter()
                .map(|v| interp::evaluate(&self.program, v))
                .collect()
        });
        raw.into_iter()
            .map(|r| r.into_iter().map(decision).collect())
            .collect()
    }
}

/// Every [`Reason`], at the position [`reason_code`] gives it.
const REASONS: [Reason; 13] = [
    Reason::GrantedByPlan,
    Reason::DeniedNotInPlan,
    Reason::DeniedNoSubscription,
    Reason::DeniedBanned,
    Reason::GrantedByAddon,
    Reason::GrantedByRule,
    Reason::DeniedByRule,
    Reason::DeniedPastDue,
    Reason::CappedByRule,
    Reason::Override,
    Reason::UnknownAccount,
    Reason::Fallback,
    Reason::DeniedQuotaExceeded,
];

/// A reason's position in [`REASONS`] (exhaustive: a new reason does not compile until it has
/// one).
fn reason_code(r: Reason) -> u8 {
    match r {
        Reason::GrantedByPlan => 0,
        Reason::DeniedNotInPlan => 1,
        Reason::DeniedNoSubscription => 2,
        Reason::DeniedBanned => 3,
        Reason::GrantedByAddon => 4,
        Reason::GrantedByRule => 5,
        Reason::DeniedByRule => 6,
        Reason::DeniedPastDue => 7,
        Reason::CappedByRule => 8,
        Reason::Override => 9,
        Reason::UnknownAccount => 10,
        Reason::Fallback => 11,
        Reason::DeniedQuotaExceeded => 12,
    }
}

const ALLOWED: u8 = 1;
const HAS_LIMIT: u8 = 2;

/// A decision in 9 bytes: the limit (little-endian, meaningful with [`HAS_LIMIT`]) and a tag:
/// bit 0 allowed, bit 1 has a limit, bits 2.. the reason's code.
#[derive(Debug, Clone, Copy)]
struct Packed([u8; 9]);

impl Packed {
    fn pack(d: &Decision) -> Self {
        let mut b = [0u8; 9];
        b[..8].copy_from_slice(&d.limit.unwrap_or(0).to_le_bytes());
        let allowed = if d.allowed { ALLOWED } else { 0 };
        let has_limit = if d.limit.is_some() { HAS_LIMIT } else { 0 };
        b[8] = allowed | has_limit | (reason_code(d.reason) << 2);
        Self(b)
    }

    fn unpack(self) -> Decision {
        let tag = self.0[8];
        let mut limit = [0u8; 8];
        limit.copy_from_slice(&self.0[..8]);
        Decision {
            allowed: tag & ALLOWED != 0,
            limit: (tag & HAS_LIMIT != 0).then(|| i64::from_le_bytes(limit)),
            // Only `pack` writes tags, from a real reason.
            reason: REASONS
                .get(usize::from(tag >> 2))
                .copied()
                .unwrap_or(Reason::Fallback),
        }
    }
}

/// Distinct plan names interned at most (a catalog has a handful; past this, names are stored
/// per entry).
const PLANS_INTERNED_MAX: usize = 4096;

/// The plan name, shared by every entry on that plan.
fn intern_plan(plan: &str) -> Arc<str> {
    static PLANS: OnceLock<Mutex<HashSet<Arc<str>>>> = OnceLock::new();
    let mut plans = PLANS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(p) = plans.get(plan) {
        return p.clone();
    }
    let p: Arc<str> = Arc::from(plan);
    if plans.len() < PLANS_INTERNED_MAX {
        plans.insert(p.clone());
    }
    p
}

/// The subscription part of stored facts.
#[derive(Debug)]
struct StoredSubscription {
    plan: Arc<str>,
    current_period_end_ms: i64,
    billing_anchor_ms: Option<i64>,
    status: SubscriptionStatus,
}

/// Add-ons and overrides: most accounts have neither, so they live behind one optional box.
#[derive(Debug)]
struct Extras {
    addons: BTreeMap<String, i64>,
    overrides: BTreeMap<String, FeatureOverride>,
}

/// An account's facts without its id (the entry has it), compact.
#[derive(Debug)]
struct StoredFacts {
    version: i64,
    dunning_level: i64,
    days_past_due: i64,
    subscription: Option<StoredSubscription>,
    extras: Option<Box<Extras>>,
    standing: AccountStanding,
}

impl StoredFacts {
    fn store(f: AccountFacts) -> Self {
        let extras = (!f.addons.is_empty() || !f.overrides.is_empty()).then(|| {
            Box::new(Extras {
                addons: f.addons,
                overrides: f.overrides,
            })
        });
        Self {
            version: f.version,
            dunning_level: f.dunning_level,
            days_past_due: f.days_past_due,
            subscription: f.subscription.map(|s| StoredSubscription {
                plan: intern_plan(&s.plan),
                current_period_end_ms: s.current_period_end_ms,
                billing_anchor_ms: s.billing_anchor_ms,
                status: s.status,
            }),
            extras,
            standing: f.standing,
        }
    }

    fn load(&self, account_id: AccountId) -> AccountFacts {
        AccountFacts {
            account_id,
            version: self.version,
            standing: self.standing,
            subscription: self.subscription.as_ref().map(|s| SubscriptionFacts {
                plan: s.plan.to_string(),
                status: s.status,
                current_period_end_ms: s.current_period_end_ms,
                billing_anchor_ms: s.billing_anchor_ms,
            }),
            dunning_level: self.dunning_level,
            days_past_due: self.days_past_due,
            addons: self
                .extras
                .as_ref()
                .map(|x| x.addons.clone())
                .unwrap_or_default(),
            overrides: self
                .extras
                .as_ref()
                .map(|x| x.overrides.clone())
                .unwrap_or_default(),
        }
    }

    /// Heap bytes beyond the entry itself (the interned plan name is counted per entry, a
    /// slight overestimate).
    fn heap_bytes(&self) -> usize {
        let plan = self.subscription.as_ref().map_or(0, |s| s.plan.len());
        let extras = self.extras.as_ref().map_or(0, |x| {
            // A BTreeMap node per entry, roughly: key, value and the tree's own links.
            let addons: usize = x.addons.keys().map(|k| k.len() + 48).sum();
            let overrides: usize = x.overrides.keys().map(|k| k.len() + 64).sum();
            std::mem::size_of::<Extras>() + addons + overrides
        });
        plan + extras
    }
}

/// Milliseconds on a monotonic clock since the first call in this process.
fn monotonic_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    u64::try_from(EPOCH.get_or_init(Instant::now).elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// One cached account.
#[derive(Debug)]
pub struct Entry {
    account_id: AccountId,
    /// `None`: the control plane says the account does not exist.
    facts: Option<StoredFacts>,
    decisions: Box<[Packed]>,
    stamp: Arc<Stamp>,
    filled_at_ms: u64,
    /// Restored from the facts snapshot at start and not confirmed since: its answers are
    /// stale until the follower catches up from the snapshot's stream position, or the
    /// account is refetched or changes.
    restored: bool,
    /// Read since the eviction hand last passed (CLOCK).
    referenced: AtomicBool,
}

/// Bytes the estimate adds per entry for what it does not see: the `Arc` header, the table slot
/// (a pointer and a control byte, at the table's load factor), the allocator's size classes
/// and pages. Measured: the `cache` bench's resident bytes per account at 1M (271 B) minus the
/// entry's own part (183 B for a pro account: the struct, 4 packed decisions, its plan name).
pub const ENTRY_OVERHEAD_BYTES: u64 = 88;

impl Entry {
    /// An estimate of the memory this entry holds: the struct, its decisions, the facts' heap
    /// parts, plus [`ENTRY_OVERHEAD_BYTES`] for the cache's own bookkeeping.
    pub fn estimated_bytes(&self) -> u64 {
        let facts = self.facts.as_ref().map_or(0, StoredFacts::heap_bytes);
        let decisions = self.decisions.len() * std::mem::size_of::<Packed>();
        (std::mem::size_of::<Self>() + facts + decisions) as u64 + ENTRY_OVERHEAD_BYTES
    }

    pub fn account_id(&self) -> AccountId {
        self.account_id
    }

    /// The facts' version (0: an unknown account).
    pub fn version(&self) -> i64 {
        self.facts.as_ref().map_or(0, |f| f.version)
    }

    /// Whether the account exists (`false`: the control plane said it does not).
    pub fn has_facts(&self) -> bool {
        self.facts.is_some()
    }

    /// The facts the decisions were evaluated from (`None`: unknown account), rebuilt.
    pub fn facts(&self) -> Option<AccountFacts> {
        self.facts.as_ref().map(|f| f.load(self.account_id))
    }

    /// The subscription's billing anchor, if it has one.
    pub fn billing_anchor_ms(&self) -> Option<i64> {
        self.facts
            .as_ref()?
            .subscription
            .as_ref()?
            .billing_anchor_ms
    }

    /// The rules generation the decisions came from.
    pub fn generation(&self) -> u64 {
        self.stamp.generation
    }

    /// The rule bundle the decisions came from.
    pub fn bundle_version(&self) -> u64 {
        self.stamp.bundle_version
    }

    /// See the field: restored from the snapshot and not confirmed since.
    pub fn restored(&self) -> bool {
        self.restored
    }

    /// Milliseconds since this entry was evaluated.
    pub fn age_ms(&self) -> u64 {
        monotonic_ms().saturating_sub(self.filled_at_ms)
    }

    /// The decision for `feature` in the bundle this entry was materialised under (which may
    /// be older than the one in force, until the background pass reaches it); `None` when
    /// that bundle has no such feature.
    pub fn decision(&self, feature: &str) -> Option<Decision> {
        self.decision_at(*self.stamp.index.get(feature)?)
    }

    /// The decision for `feature`, at `index` in `view`'s features: read by that index when
    /// the entry was materialised under `view` (the usual case, no lookup by name), else by
    /// its own bundle's index.
    pub fn decision_in(&self, view: &RulesView, index: usize, feature: &str) -> Option<Decision> {
        if self.stamp.generation == view.generation {
            self.decision_at(index)
        } else {
            self.decision(feature)
        }
    }

    /// The decision at `index` of the entry's own bundle.
    pub fn decision_at(&self, index: usize) -> Option<Decision> {
        self.decisions.get(index).map(|p| p.unpack())
    }

    /// How many decisions the entry holds (0: unknown account).
    pub fn decision_count(&self) -> usize {
        self.decisions.len()
    }

    /// Evaluates `facts` (`None`: an unknown account) under `view`.
    pub fn materialise(
        account_id: AccountId,
        facts: Option<AccountFacts>,
        view: &RulesView,
    ) -> Self {
        let decisions = facts.as_ref().map(|f| view.decide(f)).unwrap_or_default();
        Self::decided(account_id, facts, &decisions, view)
    }

    /// An entry of `facts` with the `decisions` `view` made of them (none for an unknown
    /// account).
    fn decided(
        account_id: AccountId,
        facts: Option<AccountFacts>,
        decisions: &[Decision],
        view: &RulesView,
    ) -> Self {
        let decisions = decisions.iter().map(Packed::pack).collect();
        Self {
            account_id,
            facts: facts.map(StoredFacts::store),
            decisions,
            stamp: view.stamp.clone(),
            filled_at_ms: monotonic_ms(),
            restored: false,
            referenced: AtomicBool::new(false),
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

/// At most this many shards.
const SHARDS_MAX: u64 = 64;
/// A shard holds at least this many entries of the bound (fewer shards for small caches, so
/// the per-shard share of the bounds stays meaningful).
const SHARD_ENTRIES_MIN: u64 = 4096;

/// One shard: a table of entries keyed by their account, its estimated bytes, and the CLOCK
/// hand (a bucket index).
#[derive(Default)]
struct Shard {
    table: HashTable<Arc<Entry>>,
    bytes: u64,
    hand: usize,
}

pub struct AccountCache {
    shards: Box<[RwLock<Shard>]>,
    hasher: hashbrown::DefaultHashBuilder,
    /// Each shard's share of the bounds (so the totals hold).
    shard_entries_max: u64,
    shard_bytes_max: u64,
    entries: AtomicU64,
    bytes: AtomicU64,
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
    /// Both bounds hold per shard: each shard may hold `entries_max / shards` entries and
    /// `bytes_max / shards` estimated bytes. Accounts hash evenly, so the totals reach close
    /// to the bounds before evicting.
    pub fn new(limits: CacheLimits) -> Self {
        let shards = (limits.entries_max / SHARD_ENTRIES_MIN)
            .clamp(1, SHARDS_MAX)
            .next_power_of_two()
            .min(SHARDS_MAX);
        Self {
            shards: (0..shards).map(|_| RwLock::default()).collect(),
            hasher: hashbrown::DefaultHashBuilder::default(),
            shard_entries_max: (limits.entries_max / shards).max(1),
            shard_bytes_max: limits.bytes_max / shards,
            entries: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            in_flight: Mutex::new(HashMap::new()),
        }
    }

    fn hash(&self, account: &AccountId) -> u64 {
        self.hasher.hash_one(account)
    }

    /// The shard of a hash: bits the table itself does not use for buckets or tags.
    fn shard(&self, hash: u64) -> &RwLock<Shard> {
        // `shards.len()` is a power of two.
        &self.shards[(hash >> 32) as usize & (self.shards.len() - 1)]
    }

    /// The entry, marked as read (for eviction).
    pub fn get(&self, account: &AccountId) -> Option<Arc<Entry>> {
        let e = self.peek(account)?;
        if !e.referenced.load(Ordering::Relaxed) {
            e.referenced.store(true, Ordering::Relaxed);
        }
        Some(e)
    }

    /// The entry, without marking it as read.
    pub fn peek(&self, account: &AccountId) -> Option<Arc<Entry>> {
        let hash = self.hash(account);
        let shard = self
            .shard(hash)
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        shard
            .table
            .find(hash, |e| e.account_id == *account)
            .cloned()
    }

    pub fn entry_count(&self) -> u64 {
        self.entries.load(Ordering::Relaxed)
    }

    /// The estimated bytes of every cached entry.
    pub fn estimated_bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// How many shards the bounds are split over.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Inserts or replaces the entry of its account, then evicts until the shard is within its
    /// bounds. A new entry starts unreferenced (CLOCK): a stream of one-off accounts cannot
    /// push out the ones read again and again. An entry heavier than
    /// a shard's whole byte share is not kept (nor an older entry of its account): evicting
    /// the rest of the shard for it would not make it fit.
    fn insert(&self, entry: Arc<Entry>) {
        let hash = self.hash(&entry.account_id);
        let mut shard = self
            .shard(hash)
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let shard = &mut *shard;
        let added = entry.estimated_bytes();
        let account = entry.account_id;
        if added > self.shard_bytes_max {
            if let Ok(old) = shard.table.find_entry(hash, |e| e.account_id == account) {
                let (gone, _) = old.remove();
                self.forget(shard, &gone);
            }
            return;
        }
        let hasher = &self.hasher;
        let kept = match shard.table.entry(
            hash,
            |e| e.account_id == account,
            |e| hasher.hash_one(e.account_id),
        ) {
            Slot::Occupied(mut o) => {
                let old = std::mem::replace(o.get_mut(), entry);
                let removed = old.estimated_bytes();
                shard.bytes = shard.bytes.saturating_sub(removed);
                self.bytes.fetch_sub(removed, Ordering::Relaxed);
                o.bucket_index()
            }
            Slot::Vacant(v) => {
                self.entries.fetch_add(1, Ordering::Relaxed);
                v.insert(entry).bucket_index()
            }
        };
        shard.bytes += added;
        self.bytes.fetch_add(added, Ordering::Relaxed);
        self.evict(shard, kept);
    }

    /// CLOCK: the hand walks the buckets; a referenced entry loses its bit and stays, an
    /// unreferenced one goes, until the shard is within both bounds. `keep` (the entry just
    /// written, which fits the shard's byte share by itself) stays; should readers keep
    /// re-marking entries faster than the hand clears them, the walk still ends after two
    /// sweeps and the entry just written goes instead.
    fn evict(&self, shard: &mut Shard, keep: usize) {
        let over = |s: &Shard| {
            s.table.len() as u64 > self.shard_entries_max || s.bytes > self.shard_bytes_max
        };
        let buckets = shard.table.num_buckets();
        // One sweep clears every bit, the next finds every entry unreferenced.
        let mut steps = 2 * buckets + 1;
        while over(shard) && steps > 0 && shard.table.len() > 1 {
            steps -= 1;
            let i = shard.hand % buckets;
            shard.hand = i + 1;
            if i == keep {
                continue;
            }
            match shard.table.get_bucket(i) {
                Some(e) if !e.referenced.swap(false, Ordering::Relaxed) => {}
                _ => continue,
            }
            if let Ok(slot) = shard.table.get_bucket_entry(i) {
                let (gone, _) = slot.remove();
                self.forget(shard, &gone);
            }
        }
        if over(shard)
            && let Ok(slot) = shard.table.get_bucket_entry(keep)
        {
            let (gone, _) = slot.remove();
            self.forget(shard, &gone);
        }
    }

    fn forget(&self, shard: &mut Shard, gone: &Entry) {
        let bytes = gone.estimated_bytes();
        shard.bytes = shard.bytes.saturating_sub(bytes);
        self.bytes.fetch_sub(bytes, Ordering::Relaxed);
        self.entries.fetch_sub(1, Ordering::Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<AccountId, InFlight>> {
        // A panic while holding this lock leaves only a map of hints behind; keep going.
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
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
                let current = self.peek(&account).and_then(|e| e.facts());
                newer(newer(best.take(), seen), current)
            };
            // ... evaluate them outside it (WebAssembly: the follower and other fills go on) ...
            let entry = Arc::new(Entry::materialise(account, candidate.clone(), view));
            // ... and publish unless something newer arrived meanwhile (then go again).
            let mut in_flight = self.lock();
            let seen = in_flight
                .get(&account)
                .and_then(|f| f.newest.as_ref())
                .map(|f| f.version);
            let current = self.peek(&account).map(|e| e.version());
            if seen.is_none_or(|v| v <= entry.version())
                && current.is_none_or(|v| v <= entry.version())
            {
                self.insert(entry.clone());
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
            match self.peek(&account) {
                Some(e) if e.version() < version => {}
                _ => return false,
            }
        }
        let entry = Arc::new(Entry::materialise(account, Some(facts), view));
        let _guard = self.lock();
        match self.peek(&account) {
            Some(e) if e.version() < version => {
                self.insert(entry);
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
        if self.peek(&account).is_some() {
            self.abort_fill(account);
            return false;
        }
        let entry = Arc::new(Entry {
            restored: true,
            ..Entry::materialise(account, Some(facts), view)
        });
        let mut in_flight = self.lock();
        self.insert(entry);
        in_flight.remove(&account);
        true
    }

    /// Applies facts refetched from the control plane (a revalidation): like [`Self::apply`],
    /// and also replaces a restored entry of the same version, which is current now.
    pub fn refresh(&self, facts: AccountFacts, view: &RulesView) -> bool {
        let account = facts.account_id;
        let confirms =
            |e: &Entry| e.version() < facts.version || (e.restored && e.version() == facts.version);
        match self.peek(&account) {
            Some(e) if confirms(&e) => {}
            _ => return false,
        }
        let entry = Arc::new(Entry::materialise(account, Some(facts.clone()), view));
        let _guard = self.lock();
        match self.peek(&account) {
            Some(e) if confirms(&e) => {
                self.insert(entry);
                true
            }
            _ => false,
        }
    }

    /// Re-evaluates an account's entry for a newer rules generation, outside the lock; the
    /// result replaces the entry only if nobody replaced it meanwhile (a newer event or fill is
    /// already evaluated under the new rules).
    pub fn rematerialise(&self, account: AccountId, view: &RulesView) -> Option<Arc<Entry>> {
        let current = self.peek(&account)?;
        if current.generation() == view.generation {
            return Some(current);
        }
        let fresh = Arc::new(Entry {
            restored: current.restored,
            ..Entry::materialise(account, current.facts(), view)
        });
        let _guard = self.lock();
        match self.peek(&account) {
            Some(now) if Arc::ptr_eq(&now, &current) => {
                self.insert(fresh.clone());
                Some(fresh)
            }
            other => other,
        }
    }

    /// [`Self::rematerialise`] for many accounts, their decisions made by one call into the
    /// module per [`LoadedRules::batch_max`] of them; returns how many of them are cached
    /// (under `view` now, or replaced meanwhile by a newer event or fill).
    pub fn rematerialise_many(&self, accounts: &[AccountId], view: &RulesView) -> usize {
        let mut cached = 0;
        let mut stale = Vec::with_capacity(accounts.len());
        for account in accounts {
            if let Some(entry) = self.peek(account) {
                cached += 1;
                if entry.generation() != view.generation {
                    stale.push(entry);
                }
            }
        }
        let facts: Vec<Option<AccountFacts>> = stale.iter().map(|e| e.facts()).collect();
        let mut decided = {
            let known: Vec<&AccountFacts> = facts.iter().flatten().collect();
            view.decide_many(&known).into_iter()
        };
        for (current, facts) in stale.iter().zip(facts) {
            // decide_many answers every account it is given; should it not, the account is
            // decided on its own rather than cached without decisions.
            let decisions = match &facts {
                Some(f) => decided.next().unwrap_or_else(|| view.decide(f)),
                None => Vec::new(),
            };
            let fresh = Arc::new(Entry {
                restored: current.restored,
                ..Entry::decided(current.account_id, facts, &decisions, view)
            });
            let _guard = self.lock();
            if self
                .peek(&current.account_id)
                .is_some_and(|now| Arc::ptr_eq(&now, current))
            {
                self.insert(fresh);
            }
        }
        cached
    }

    /// The accounts currently cached.
    pub fn accounts(&self) -> Vec<AccountId> {
        let mut out = Vec::with_capacity(usize::try_from(self.entry_count()).unwrap_or(0));
        for shard in &self.shards {
            let shard = shard.read().unwrap_or_else(PoisonError::into_inner);
            out.extend(shard.table.iter().map(|e| e.account_id));
        }
        out
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
        let n = cache.entry_count();
        assert!((1..=100).contains(&n), "{n} entries cached");
    }

    #[test]
    fn the_cache_holds_at_most_bytes_max_of_entries() {
        let view = demo_view();
        let id = AccountId::new_v7();
        let one = Entry::materialise(id, Some(facts(id, 1, Some("pro"))), &view);
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
        assert!(
            cache.estimated_bytes() <= bytes_max,
            "{} > {bytes_max}",
            cache.estimated_bytes()
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
        assert!(entry.decision_at(sso).is_some_and(|d| d.allowed));
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
        let sso = view.feature_index("sso").expect("sso");
        assert!(e.decision_at(sso).is_some_and(|d| !d.allowed));
    }

    #[test]
    fn unknown_accounts_have_version_zero_and_no_decisions() {
        let view = demo_view();
        let cache = AccountCache::new(limits(10));
        let id = AccountId::new_v7();
        cache.begin_fill(id);
        let e = cache.finish_fill(id, None, &view);
        assert_eq!((e.version(), e.decision_count()), (0, 0));
        // The account is created later: its first event replaces the negative entry.
        assert!(cache.apply(facts(id, 1, None), &view));
    }

    #[test]
    fn packed_decisions_round_trip_every_reason_and_extreme_limits() {
        for reason in REASONS {
            assert_eq!(REASONS[usize::from(reason_code(reason))], reason);
            for allowed in [false, true] {
                for limit in [None, Some(0), Some(-1), Some(i64::MIN), Some(i64::MAX)] {
                    let d = Decision {
                        allowed,
                        limit,
                        reason,
                    };
                    assert_eq!(Packed::pack(&d).unpack(), d);
                }
            }
        }
    }

    #[test]
    fn stored_facts_come_back_exactly_as_given() {
        let view = demo_view();
        let id = AccountId::new_v7();
        let mut rich = facts(id, i64::MAX, Some("pro-ünïcode-plan"));
        rich.standing = AccountStanding::Banned;
        rich.dunning_level = i64::MIN;
        rich.days_past_due = -3;
        if let Some(s) = rich.subscription.as_mut() {
            s.status = SubscriptionStatus::PastDue;
            s.current_period_end_ms = i64::MIN;
            s.billing_anchor_ms = Some(i64::MAX);
        }
        rich.addons.insert("extra_seats".into(), 5);
        rich.overrides.insert(
            "sso".into(),
            FeatureOverride::Grant {
                limit: Some(i64::MAX),
            },
        );
        rich.overrides
            .insert("audit_log".into(), FeatureOverride::Deny);
        for f in [rich, facts(id, 1, None), facts(id, 2, Some("pro"))] {
            let e = Entry::materialise(id, Some(f.clone()), &view);
            assert_eq!(e.facts(), Some(f.clone()));
            assert_eq!(e.version(), f.version);
            assert_eq!(
                e.billing_anchor_ms(),
                f.subscription.as_ref().and_then(|s| s.billing_anchor_ms)
            );
            // The packed decisions are the module's, unchanged.
            let want = view.decide(&f);
            let got: Vec<_> = (0..e.decision_count())
                .filter_map(|i| e.decision_at(i))
                .collect();
            assert_eq!(got, want);
        }
        let unknown = Entry::materialise(id, None, &view);
        assert_eq!((unknown.facts(), unknown.has_facts()), (None, false));
    }

    #[test]
    fn a_pro_entry_stays_compact() {
        let view = demo_view();
        let id = AccountId::new_v7();
        let e = Entry::materialise(id, Some(facts(id, 1, Some("pro"))), &view);
        // One allocation for the entry, one for its decisions, a slot in the table: the
        // `cache` bench measures the resident bytes; this keeps the layout from creeping.
        assert!(
            std::mem::size_of::<Entry>() <= 144,
            "{}",
            std::mem::size_of::<Entry>()
        );
        assert!(e.estimated_bytes() <= 300, "{}", e.estimated_bytes());
    }

    #[test]
    fn an_account_read_often_survives_a_stream_of_one_off_accounts() {
        let view = demo_view();
        let cache = AccountCache::new(limits(100));
        let hot = AccountId::new_v7();
        fill(&cache, &view, facts(hot, 1, Some("pro")));
        for v in 1..=2_000 {
            assert!(cache.get(&hot).is_some(), "evicted after {v} one-off fills");
            fill(&cache, &view, facts(AccountId::new_v7(), v, Some("pro")));
        }
        assert!(cache.entry_count() <= 100);
    }

    #[test]
    fn an_entry_over_the_whole_byte_bound_is_not_kept_and_evicts_nothing() {
        let view = demo_view();
        let id = AccountId::new_v7();
        let small = Entry::materialise(id, Some(facts(id, 1, Some("pro"))), &view);
        let cache = AccountCache::new(CacheLimits {
            entries_max: 10,
            bytes_max: small.estimated_bytes() * 3,
        });
        let others: Vec<AccountId> = (0..3).map(|_| AccountId::new_v7()).collect();
        for a in &others {
            fill(&cache, &view, facts(*a, 1, Some("pro")));
        }
        let huge = AccountId::new_v7();
        fill(&cache, &view, facts(huge, 1, Some("pro")));
        let mut f = facts(huge, 2, Some("pro"));
        f.addons
            .insert("x".repeat(small.estimated_bytes() as usize * 4), 1);
        // A change makes the cached account too heavy: its older entry goes too.
        cache.apply(f.clone(), &view);
        assert!(cache.peek(&huge).is_none());
        cache.begin_fill(huge);
        let entry = cache.finish_fill(huge, Some(f), &view);
        assert_eq!(entry.version(), 2, "the caller still gets its answer");
        assert!(
            cache.peek(&huge).is_none(),
            "but it is not cached, nor its older version"
        );
        let kept = others.iter().filter(|a| cache.peek(a).is_some()).count();
        assert!(kept >= 2, "the small entries stay: {kept} of 3");
        assert!(cache.estimated_bytes() <= small.estimated_bytes() * 3);
        assert_eq!(cache.entry_count(), kept as u64);
    }

    #[test]
    fn the_bounds_hold_in_total_across_shards_and_threads() {
        let view = demo_view();
        let limits = CacheLimits {
            entries_max: 4 * SHARD_ENTRIES_MIN,
            bytes_max: u64::MAX / 2,
        };
        let cache = AccountCache::new(limits);
        assert_eq!(cache.shard_count(), 4);
        let ids: Vec<AccountId> = (0..3 * limits.entries_max)
            .map(|_| AccountId::new_v7())
            .collect();
        std::thread::scope(|s| {
            for part in ids.chunks(ids.len() / 4) {
                let (cache, view) = (&cache, &view);
                s.spawn(move || {
                    for (i, id) in part.iter().enumerate() {
                        fill(cache, view, facts(*id, 1, Some("pro")));
                        // Readers race the writers on the same shards.
                        let _ = cache.get(&part[i / 2]);
                    }
                });
            }
        });
        let n = cache.entry_count();
        assert!(n <= limits.entries_max, "{n}");
        // Evenly hashed: close to the bound, not far under it.
        assert!(n >= limits.entries_max * 9 / 10, "{n}");
        assert_eq!(cache.accounts().len() as u64, n);
        let bytes: u64 = cache
            .accounts()
            .iter()
            .filter_map(|a| cache.peek(a))
            .map(|e| e.estimated_bytes())
            .sum();
        assert_eq!(cache.estimated_bytes(), bytes);
    }

    #[test]
    fn a_bundle_swap_rematerialises_every_entry_in_batches_as_one_by_one() {
        // 150 accounts (three calls of the module's batch of 64) of every plan, plus unknown
        // ones, under the demo; then a bundle where free has 7 seats.
        let old = demo_view();
        let mut program = tollgate_rules::demo_program();
        let seats = old.feature_index("seats").expect("seats") as u32;
        let free = program
            .plans
            .iter_mut()
            .find(|p| p.key == "free")
            .expect("free");
        free.grants
            .iter_mut()
            .find(|g| g.feature == seats)
            .expect("free grants seats")
            .limit = tollgate_rules::ir::Limit::Finite(7);
        let rules = tollgate_rules::host::RulesEngine::new()
            .expect("engine")
            .load_program(&program)
            .expect("loads");
        let new = RulesView::new(2, program, rules, 2);
        let cache = AccountCache::new(limits(1_000));
        let plans = [Some("free"), Some("pro"), Some("enterprise"), None];
        let mut accounts = Vec::new();
        for i in 0..150 {
            let id = AccountId::new_v7();
            if i % 10 == 9 {
                cache.begin_fill(id);
                cache.finish_fill(id, None, &old);
            } else {
                fill(&cache, &old, facts(id, 1, plans[i % plans.len()]));
            }
            accounts.push(id);
        }
        // One is already under the new bundle: it is left as it is.
        let already = cache.rematerialise(accounts[0], &new).expect("cached");
        let absent = AccountId::new_v7();
        accounts.push(absent);
        assert_eq!(cache.rematerialise_many(&accounts, &new), 150);
        assert!(Arc::ptr_eq(
            &cache.peek(&accounts[0]).expect("cached"),
            &already
        ));
        assert!(cache.peek(&absent).is_none(), "nothing is added");
        let mut free_seats = 0;
        for id in &accounts[..150] {
            let entry = cache.peek(id).expect("still cached");
            assert_eq!(entry.generation(), 2);
            let want: Vec<Decision> = entry.facts().map(|f| new.decide(&f)).unwrap_or_default();
            let got: Vec<Decision> = (0..entry.decision_count())
                .map(|i| entry.decision_at(i).expect("decided"))
                .collect();
            assert_eq!(got, want, "{id}");
            let is_free = entry
                .facts()
                .and_then(|f| f.subscription)
                .is_some_and(|s| s.plan == "free");
            if is_free {
                assert_eq!(got[seats as usize].limit, Some(7));
                free_seats += 1;
            }
        }
        assert!(free_seats > 30, "{free_seats} free accounts checked");
    }

    #[test]
    fn a_batch_the_module_fails_is_decided_by_the_interpreter() {
        use tollgate_rules::testkit::{Hostile, hostile_module};
        let program = tollgate_rules::demo_program();
        let broken = tollgate_rules::host::RulesEngine::new()
            .expect("engine")
            .load(
                &hostile_module(Hostile::Garbage, program.shape()),
                program.shape(),
            )
            .expect("garbage output is only found when it runs");
        let view = RulesView::new(1, program.clone(), broken, 1);
        let all: Vec<AccountFacts> = ["free", "pro", "enterprise"]
            .iter()
            .map(|p| facts(AccountId::new_v7(), 1, Some(p)))
            .collect();
        let refs: Vec<&AccountFacts> = all.iter().collect();
        let got = view.decide_many(&refs);
        let now_ms = crate::clock::now_ms();
        let want: Vec<Vec<Decision>> = all
            .iter()
            .map(|f| {
                tollgate_rules::interp::evaluate(&program, &fact_vector(&program, f, now_ms))
                    .into_iter()
                    .map(decision)
                    .collect()
            })
            .collect();
        assert_eq!(got, want);
        let pro_sso = &got[1][view.feature_index("sso").expect("sso")];
        assert!(pro_sso.allowed, "pro has sso, as the interpreter says");
    }
}

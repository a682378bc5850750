//! The contract between the control plane and edge sidecars.
//!
//! Everything that crosses the wire between them is defined here and nowhere else:
//! * [`AccountFacts`] — what the control plane knows about one account that decides its
//!   entitlements, versioned per account (the version only ever grows).
//! * [`ChangeEvent`] — one entry of the Redis change stream: new facts for one account plus the
//!   commit time, so an edge can measure propagation.
//! * [`Decision`] / [`Reason`] — what a check answers for one feature.
//! * The Redis key names both sides agree on ([`redis_keys`]), the internal API's paths
//!   ([`internal_api`]) and canary membership by edge id ([`canary`]).
//! * [`usage`] — meters, usage events, the batches edges flush and their acknowledgements,
//!   aggregates, quota leases, and the bounds every event keeps ([`usage::limits`]), checked
//!   by one function on every side ([`usage::validate_event`]).
//!
//! Encoding is JSON on every channel (HTTP bodies and Redis stream fields); it is small, and
//! both sides are Rust, but JSON keeps the stream readable with `redis-cli` during incidents.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// An account's id: the one key every store and cache uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AccountId(pub Uuid);

impl AccountId {
    pub fn new_v7() -> Self {
        Self(Uuid::now_v7())
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for AccountId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

/// Account standing as set by support or dunning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountStanding {
    Active,
    Banned,
}

/// Subscription status, as Stripe names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubscriptionStatus {
    Trialing,
    Active,
    PastDue,
    Canceled,
}

impl SubscriptionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Trialing => "trialing",
            Self::Active => "active",
            Self::PastDue => "past_due",
            Self::Canceled => "canceled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "trialing" => Self::Trialing,
            "active" => Self::Active,
            "past_due" => Self::PastDue,
            "canceled" => Self::Canceled,
            _ => return None,
        })
    }

    /// Whether a subscription in this status grants its plan's features.
    pub fn grants(self) -> bool {
        matches!(self, Self::Trialing | Self::Active | Self::PastDue)
    }
}

/// The subscription part of an account's facts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionFacts {
    pub plan: String,
    pub status: SubscriptionStatus,
    /// Unix milliseconds.
    pub current_period_end_ms: i64,
}

/// A support agent's per-account override of one feature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "mode")]
pub enum FeatureOverride {
    Deny,
    Grant { limit: Option<i64> },
}

/// Everything that decides an account's entitlements. Computed and versioned by the control
/// plane; edges evaluate it against the active rule bundle to materialise decisions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountFacts {
    pub account_id: AccountId,
    /// Grows by one with every change that alters the facts. Edges keep the highest they saw.
    pub version: i64,
    pub standing: AccountStanding,
    /// The subscription that currently grants features, if any.
    pub subscription: Option<SubscriptionFacts>,
    /// Dunning escalation level (0: none).
    #[serde(default)]
    pub dunning_level: i64,
    /// Days the oldest unpaid invoice is past due (0: none).
    #[serde(default)]
    pub days_past_due: i64,
    /// Add-on key → quantity.
    #[serde(default)]
    pub addons: BTreeMap<String, i64>,
    /// Feature key → support override.
    #[serde(default)]
    pub overrides: BTreeMap<String, FeatureOverride>,
}

impl AccountFacts {
    /// An active account without subscription, dunning, add-ons or overrides.
    pub fn new(account_id: AccountId, version: i64) -> Self {
        Self {
            account_id,
            version,
            standing: AccountStanding::Active,
            subscription: None,
            dunning_level: 0,
            days_past_due: 0,
            addons: BTreeMap::new(),
            overrides: BTreeMap::new(),
        }
    }
}

/// One entry of the change stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeEvent {
    pub facts: AccountFacts,
    /// When the control plane published the change, after its commit (unix ms, wall clock),
    /// for propagation metrics.
    pub committed_at_ms: i64,
}

/// Most accounts one [`FactsRequest`] may name.
pub const FACTS_BATCH_MAX: usize = 256;

/// An edge asks for the facts of several accounts at once (a batch check, a revalidation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FactsRequest {
    pub accounts: Vec<AccountId>,
}

/// The facts of the accounts of a [`FactsRequest`] that exist, in no particular order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FactsBatch {
    pub facts: Vec<AccountFacts>,
}

/// Why a feature was allowed or denied. Stable strings: product services and support rely on
/// them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    GrantedByPlan,
    DeniedNotInPlan,
    DeniedNoSubscription,
    DeniedBanned,
    GrantedByAddon,
    GrantedByRule,
    DeniedByRule,
    DeniedPastDue,
    CappedByRule,
    Override,
    UnknownAccount,
    /// The edge could not reach the control plane for an account it never saw; the feature's
    /// fail-open / fail-closed policy decided.
    Fallback,
    /// A metered feature's usage plus the requested quantity would pass its quota.
    DeniedQuotaExceeded,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::GrantedByPlan => "granted_by_plan",
            Self::DeniedNotInPlan => "denied_not_in_plan",
            Self::DeniedNoSubscription => "denied_no_subscription",
            Self::DeniedBanned => "denied_banned",
            Self::GrantedByAddon => "granted_by_addon",
            Self::GrantedByRule => "granted_by_rule",
            Self::DeniedByRule => "denied_by_rule",
            Self::DeniedPastDue => "denied_past_due",
            Self::CappedByRule => "capped_by_rule",
            Self::Override => "override",
            Self::UnknownAccount => "unknown_account",
            Self::Fallback => "fallback",
            Self::DeniedQuotaExceeded => "denied_quota_exceeded",
        }
    }
}

/// The decision for one feature of one account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub allowed: bool,
    /// Numeric limit or metered quota, when the feature has one.
    pub limit: Option<i64>,
    pub reason: Reason,
}

/// Redis key names shared by the control plane (writer) and edges (readers), under one
/// prefix (`TOLLGATE_REDIS_KEY_PREFIX`, default `tollgate`), so several deployments (or tests)
/// can share one Redis without reading each other's streams.
pub mod redis_keys {
    /// The prefix when none is configured.
    pub const DEFAULT_PREFIX: &str = "tollgate";
    /// Field of a stream entry holding a JSON [`super::ChangeEvent`].
    pub const CHANGE_FIELD: &str = "event";
    /// Upper bound on stream length (approximate trim); edges that fall further behind than
    /// this revalidate.
    pub const CHANGE_STREAM_MAXLEN: usize = 100_000;

    /// The key names of one deployment.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Keys {
        prefix: String,
    }

    impl Default for Keys {
        fn default() -> Self {
            Self::new(DEFAULT_PREFIX)
        }
    }

    impl Keys {
        pub fn new(prefix: &str) -> Self {
            Self {
                prefix: prefix.to_owned(),
            }
        }

        /// Whether `prefix` is usable: 1-64 characters of `A-Z a-z 0-9 _ . -`.
        pub fn valid_prefix(prefix: &str) -> bool {
            (1..=64).contains(&prefix.len())
                && prefix
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        }

        /// The change stream every edge follows.
        pub fn stream(&self) -> String {
            format!("{}:changes", self.prefix)
        }

        /// L2 copy of one account's facts (JSON [`super::AccountFacts`]).
        pub fn facts(&self, account: &super::AccountId) -> String {
            format!("{}:facts:{account}", self.prefix)
        }
    }
}

/// Which edges run a canary bundle: deterministic by edge id, so the same edges stay canaries
/// while the share grows, and the control plane, tests and tools agree.
pub mod canary {
    /// 64-bit FNV-1a: stable across processes and releases (unlike `DefaultHasher`).
    pub fn fnv1a(s: &str) -> u64 {
        s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
    }

    /// Whether `edge_id` is in a canary of `percent` (0-100) of the fleet.
    pub fn in_canary(edge_id: &str, percent: i32) -> bool {
        percent > 0 && (fnv1a(edge_id) % 100) < u64::try_from(percent).unwrap_or(0)
    }
}

/// Paths of the control plane's internal API used by edges.
pub mod internal_api {
    /// `GET` → [`super::AccountFacts`] (404 when the account does not exist).
    pub fn facts_path(account: &super::AccountId) -> String {
        format!("/internal/v1/accounts/{account}/facts")
    }
    /// `POST` [`super::FactsRequest`] → [`super::FactsBatch`]: the facts of up to
    /// [`super::FACTS_BATCH_MAX`] accounts in one round trip (unknown accounts are absent).
    pub const FACTS_BATCH_PATH: &str = "/internal/v1/facts";
    /// `GET ?edge_id=…` → the signed rule bundle meant for this edge (`ETag` / `If-None-Match`).
    pub const BUNDLE_PATH: &str = "/internal/v1/bundle";
    /// `POST` `{bundle_version, last_error}` → 204: the edge reports what it runs.
    pub fn edge_status_path(edge_id: &str) -> String {
        format!("/internal/v1/edges/{edge_id}/status")
    }
    /// Header carrying the edge token.
    pub const EDGE_TOKEN_HEADER: &str = "authorization";
    /// `POST` [`super::usage::UsageBatch`] (header `Idempotency-Key` = the batch id) →
    /// [`super::usage::UsageAck`].
    pub const USAGE_PATH: &str = "/internal/v1/usage";
    /// `POST` [`super::usage::LeaseRequest`] → [`super::usage::LeaseGrant`].
    pub const LEASE_PATH: &str = "/internal/v1/leases";
    /// `POST` [`super::usage::LeaseRelease`] → 204: an edge gives back units it did not use.
    pub const LEASE_RELEASE_PATH: &str = "/internal/v1/leases/release";
    /// `GET` → [`super::usage::AccountUsage`]: the account's current-period aggregates.
    pub fn usage_path(account: &super::AccountId) -> String {
        format!("/internal/v1/accounts/{account}/usage")
    }
}

/// Metered usage: the events edges buffer and flush, and the aggregates the control plane
/// keeps per account, meter and period.
pub mod usage {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Serialize};

    use super::AccountId;

    /// How a meter's events become one number per account and period.
    #[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum Aggregation {
        /// Sum of quantities.
        Sum,
        /// Number of events.
        Count,
        /// Largest quantity.
        Max,
        /// Number of distinct values of one event property.
        UniqueCount { property: String },
        /// Quantity of the event with the latest timestamp.
        Latest,
    }

    impl Aggregation {
        pub fn as_str(&self) -> &'static str {
            match self {
                Self::Sum => "sum",
                Self::Count => "count",
                Self::Max => "max",
                Self::UniqueCount { .. } => "unique_count",
                Self::Latest => "latest",
            }
        }

        /// Whether the edge may add its not-yet-flushed events to the last aggregate it
        /// received (true for sum and count; max, latest and unique counts are not additive).
        pub fn additive(&self) -> bool {
            matches!(self, Self::Sum | Self::Count)
        }
    }

    /// The calendar period (UTC) a meter's aggregate and quota cover.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum MeterPeriod {
        Day,
        Month,
        Year,
    }

    impl MeterPeriod {
        pub fn as_str(self) -> &'static str {
            match self {
                Self::Day => "day",
                Self::Month => "month",
                Self::Year => "year",
            }
        }

        pub fn parse(s: &str) -> Option<Self> {
            [Self::Day, Self::Month, Self::Year]
                .into_iter()
                .find(|p| p.as_str() == s)
        }

        /// The UTC calendar period holding `at_ms` (unix ms), as `[start, end)` unix ms.
        pub fn bounds(self, at_ms: i64) -> (i64, i64) {
            const DAY_MS: i64 = 86_400_000;
            let day = at_ms.div_euclid(DAY_MS);
            let (y, m, _) = civil_from_days(day);
            let (start, end) = match self {
                Self::Day => (day, day + 1),
                Self::Month => {
                    let next = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                    (days_from_civil(y, m, 1), days_from_civil(next.0, next.1, 1))
                }
                Self::Year => (days_from_civil(y, 1, 1), days_from_civil(y + 1, 1, 1)),
            };
            (start * DAY_MS, end * DAY_MS)
        }
    }

    /// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
    fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let mp = (m + 9) % 12;
        let doy = (153 * mp + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }

    /// The date of a day number since 1970-01-01.
    fn civil_from_days(z: i64) -> (i64, i64, i64) {
        let z = z + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = doy - (153 * mp + 2) / 5 + 1;
        let m = if mp < 10 { mp + 3 } else { mp - 9 };
        let y = yoe + era * 400 + i64::from(m <= 2);
        (y, m, d)
    }

    /// A metered feature's meter, as declared in the rules catalog.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct MeterSpec {
        pub aggregation: Aggregation,
        pub period: MeterPeriod,
        /// Over the quota is allowed (and billed as overage) instead of denied.
        pub soft: bool,
        /// Units an edge leases from the account's remaining quota at a time.
        pub lease: i64,
    }

    /// One usage event as edges store and flush it. `properties` hold scalar values as text.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct UsageEvent {
        /// Unique per account: the caller's id, [`cloudevent_id`] for CloudEvents, or a UUIDv7
        /// the edge assigned. The control plane stores each (account, id) once.
        pub id: String,
        pub account: AccountId,
        pub meter: String,
        pub quantity: i64,
        /// When the usage happened, unix milliseconds.
        pub timestamp_ms: i64,
        #[serde(default)]
        pub properties: BTreeMap<String, String>,
    }

    /// Events an edge flushes in one request; `batch_id` is also its `Idempotency-Key`.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct UsageBatch {
        pub batch_id: uuid::Uuid,
        pub edge_id: String,
        pub events: Vec<UsageEvent>,
    }

    /// One account's aggregate of one meter over one period.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct MeterAggregate {
        pub account: AccountId,
        pub meter: String,
        pub period_start_ms: i64,
        pub period_end_ms: i64,
        pub value: i64,
        /// Events counted (every aggregation).
        pub events: i64,
    }

    /// One event of a [`UsageBatch`] the control plane did not store, and why. The edge moves
    /// it to its dead-letter file (replayable once the cause is gone: the meter deployed, the
    /// account created), never back into the flow.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct RejectedEvent {
        /// Position in the batch.
        pub index: u32,
        pub id: String,
        /// Stable machine code (an [`EventError::code`] or `unknown_account`, `unknown_meter`,
        /// `missing_property`, `id_reused`).
        pub code: String,
        pub detail: String,
    }

    /// The control plane's answer to a [`UsageBatch`]. Every event of the batch is durably
    /// recorded (or was already), or listed in `rejected`, once this is sent: the edge may
    /// delete the batch.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct UsageAck {
        pub batch_id: uuid::Uuid,
        /// Events stored by this request.
        pub accepted: u64,
        /// Events whose (account, id) was already stored with the same contents (a retry).
        pub duplicates: u64,
        /// Ids of events that arrived after their period's grace window and were counted in
        /// the current period instead.
        pub late: Vec<String>,
        /// Events refused one by one (never the whole batch): not stored, not counted.
        #[serde(default)]
        pub rejected: Vec<RejectedEvent>,
        /// The aggregates the batch touched, after it.
        pub aggregates: Vec<MeterAggregate>,
    }

    /// The bounds every usage event keeps, checked by the same code in the rule compiler
    /// (meter keys), the edge (`POST /v1/usage`, the usage log at start-up) and the control
    /// plane (ingest): what one side accepts, the other never refuses for these reasons.
    ///
    /// | what | bound |
    /// |---|---|
    /// | quantity | `0..=`[`QUANTITY_MAX`] (2^40, about 1.1 × 10^12) |
    /// | meter / feature key | 1..=[`KEY_BYTES_MAX`] bytes of `A-Z a-z 0-9 _ . -` |
    /// | event id | 1..=[`EVENT_ID_BYTES_MAX`] bytes, no NUL or control characters |
    /// | properties | at most [`PROPERTIES_MAX`]; keys 1..=[`KEY_BYTES_MAX`] bytes, values at most [`PROPERTY_VALUE_BYTES_MAX`], no NUL |
    /// | timestamp | `0..=`[`TIMESTAMP_MS_MAX`] (1970-01-01 ..= 9999-12-31 UTC) |
    ///
    /// With quantities bounded by 2^40, 2^23 events at the bound still sum below `i64::MAX`;
    /// counters add with saturation all the same, so no sum can overflow.
    pub mod limits {
        /// Largest quantity of one event (and of one check): 2^40.
        pub const QUANTITY_MAX: i64 = 1 << 40;
        /// Longest meter, feature, plan or add-on key, bytes.
        pub const KEY_BYTES_MAX: usize = 128;
        /// Longest event id, bytes (CloudEvents ids include their source).
        pub const EVENT_ID_BYTES_MAX: usize = 512;
        /// Most properties on one event.
        pub const PROPERTIES_MAX: usize = 64;
        /// Longest property value, bytes (a `unique_count` value is part of a primary key).
        pub const PROPERTY_VALUE_BYTES_MAX: usize = 1024;
        /// 9999-12-31T23:59:59.999Z: the last timestamp an event may carry.
        pub const TIMESTAMP_MS_MAX: i64 = 253_402_300_799_999;
        /// Longest edge id, bytes.
        pub const EDGE_ID_BYTES_MAX: usize = 128;
    }

    /// Why an event breaks [`limits`]. Each has a stable [`code`](Self::code).
    #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
    pub enum EventError {
        #[error(
            "id must be 1-{} bytes without NUL or control characters",
            limits::EVENT_ID_BYTES_MAX
        )]
        InvalidId,
        #[error("an id must not start with `ce:` (reserved for CloudEvents)")]
        ReservedId,
        #[error("meter: {0}")]
        InvalidMeter(KeyError),
        #[error("quantity must be a whole number from 0 to {}", limits::QUANTITY_MAX)]
        InvalidQuantity,
        #[error("timestamp must lie in 1970-01-01 ..= 9999-12-31 (UTC)")]
        InvalidTimestamp,
        #[error("{0}")]
        InvalidProperties(String),
    }

    impl EventError {
        pub fn code(&self) -> &'static str {
            match self {
                Self::InvalidId | Self::ReservedId => "invalid_id",
                Self::InvalidMeter(_) => "invalid_meter",
                Self::InvalidQuantity => "invalid_quantity",
                Self::InvalidTimestamp => "invalid_timestamp",
                Self::InvalidProperties(_) => "invalid_properties",
            }
        }
    }

    /// Why a key (meter, feature, plan, add-on) is not one.
    #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
    pub enum KeyError {
        #[error("a key must not be empty")]
        Empty,
        #[error("a key is at most {max} bytes, this one {0}", max = limits::KEY_BYTES_MAX)]
        TooLong(usize),
        #[error("a key is made of A-Z a-z 0-9 _ . - only")]
        BadCharacter,
    }

    /// Whether `key` may name a meter, feature, plan or add-on everywhere it travels (URLs,
    /// PostgreSQL text, metric-free logs): 1..=[`limits::KEY_BYTES_MAX`] bytes of
    /// `A-Z a-z 0-9 _ . -`.
    pub fn validate_key(key: &str) -> Result<(), KeyError> {
        if key.is_empty() {
            return Err(KeyError::Empty);
        }
        if key.len() > limits::KEY_BYTES_MAX {
            return Err(KeyError::TooLong(key.len()));
        }
        if !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        {
            return Err(KeyError::BadCharacter);
        }
        Ok(())
    }

    /// Whether `name` may name an event property (and so a `unique_count` meter's property):
    /// 1..=[`limits::KEY_BYTES_MAX`] bytes without control characters.
    pub fn property_name_ok(name: &str) -> bool {
        !name.is_empty() && name.len() <= limits::KEY_BYTES_MAX && printable(name)
    }

    /// Whether a quantity (of an event, or asked for by a check) is within bounds.
    pub fn quantity_ok(quantity: i64) -> bool {
        (0..=limits::QUANTITY_MAX).contains(&quantity)
    }

    /// Whether `text` is free of NUL and other control characters.
    fn printable(text: &str) -> bool {
        !text.chars().any(char::is_control)
    }

    /// A caller's own event id, as stored: refused when empty, too long, with control
    /// characters, or starting with `ce:` (the CloudEvents namespace, see [`cloudevent_id`]).
    pub fn validate_plain_id(id: &str) -> Result<(), EventError> {
        validate_id(id)?;
        if id.starts_with("ce:") {
            return Err(EventError::ReservedId);
        }
        Ok(())
    }

    fn validate_id(id: &str) -> Result<(), EventError> {
        if id.is_empty() || id.len() > limits::EVENT_ID_BYTES_MAX || !printable(id) {
            return Err(EventError::InvalidId);
        }
        Ok(())
    }

    /// The stored id of a CloudEvent: `ce:{len(source)}:{source}:{id}`. CloudEvents ids are
    /// unique per source; the length prefix makes the pair unambiguous (`/svc` + `X:7` and
    /// `/svc:X` + `7` are two events), and plain ids cannot start with `ce:`.
    pub fn cloudevent_id(source: &str, id: &str) -> String {
        format!("ce:{}:{source}:{id}", source.len())
    }

    /// Every bound of [`limits`] on one event. The edge checks it before accepting an event
    /// and again when it reads the event back from its log; the control plane before storing.
    pub fn validate_event(e: &UsageEvent) -> Result<(), EventError> {
        validate_id(&e.id)?;
        validate_key(&e.meter).map_err(EventError::InvalidMeter)?;
        if !quantity_ok(e.quantity) {
            return Err(EventError::InvalidQuantity);
        }
        if !(0..=limits::TIMESTAMP_MS_MAX).contains(&e.timestamp_ms) {
            return Err(EventError::InvalidTimestamp);
        }
        validate_properties(&e.properties)
    }

    /// The bounds on an event's properties.
    pub fn validate_properties(p: &BTreeMap<String, String>) -> Result<(), EventError> {
        if p.len() > limits::PROPERTIES_MAX {
            return Err(EventError::InvalidProperties(format!(
                "at most {} properties",
                limits::PROPERTIES_MAX
            )));
        }
        for (k, v) in p {
            if !property_name_ok(k) {
                return Err(EventError::InvalidProperties(format!(
                    "property names are 1-{} bytes without control characters",
                    limits::KEY_BYTES_MAX
                )));
            }
            if v.len() > limits::PROPERTY_VALUE_BYTES_MAX || v.contains('\0') {
                return Err(EventError::InvalidProperties(format!(
                    "property `{k}`: values are at most {} bytes without NUL",
                    limits::PROPERTY_VALUE_BYTES_MAX
                )));
            }
        }
        Ok(())
    }

    /// An edge asks for units of an account's quota for one meter and period: `need` units a
    /// check is about to allow (all or nothing: a check that would be denied takes nothing),
    /// plus up to `extra` (the meter's lease size) for the checks after it. `limit` is the
    /// quota the rules give the account (the edge materialised it).
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct LeaseRequest {
        pub account: AccountId,
        pub meter: String,
        pub edge_id: String,
        pub period_start_ms: i64,
        pub need: i64,
        pub extra: i64,
        pub limit: i64,
    }

    /// What the control plane granted: 0 when `need` does not fit the quota (nothing is
    /// reserved then), else `need` plus as much of `extra` as fits; and how much of the quota
    /// is leased out in all, to every edge, after it.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct LeaseGrant {
        pub granted: i64,
        pub leased: i64,
    }

    /// Units of a lease an edge did not use and gives back.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct LeaseRelease {
        pub account: AccountId,
        pub meter: String,
        pub edge_id: String,
        pub period_start_ms: i64,
        pub units: i64,
    }

    /// An account's current-period aggregates, one per meter of the catalog.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct AccountUsage {
        pub account: AccountId,
        pub aggregates: Vec<MeterAggregate>,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meter_periods_are_utc_calendar_periods() {
        use usage::MeterPeriod;
        // 2024-02-29T13:00:00Z, a leap day.
        let at = 1_709_211_600_000;
        let day = 86_400_000;
        assert_eq!(
            MeterPeriod::Day.bounds(at),
            (1_709_164_800_000, 1_709_164_800_000 + day)
        );
        // 2024-02-01 .. 2024-03-01
        assert_eq!(
            MeterPeriod::Month.bounds(at),
            (1_706_745_600_000, 1_709_251_200_000)
        );
        // 2024-01-01 .. 2025-01-01
        assert_eq!(
            MeterPeriod::Year.bounds(at),
            (1_704_067_200_000, 1_735_689_600_000)
        );
        // December rolls into the next year; the end is exclusive.
        let dec = 1_735_689_599_999; // 2024-12-31T23:59:59.999Z
        assert_eq!(
            MeterPeriod::Month.bounds(dec),
            (1_733_011_200_000, 1_735_689_600_000)
        );
        assert_eq!(
            MeterPeriod::Month.bounds(1_735_689_600_000).0,
            1_735_689_600_000
        );
        // Before 1970 too.
        assert_eq!(MeterPeriod::Month.bounds(-1), (-2_678_400_000, 0));
    }

    #[test]
    fn the_shared_event_bounds_hold_at_their_edges() {
        use usage::*;
        let ok = UsageEvent {
            id: "e-1".into(),
            account: AccountId(Uuid::nil()),
            meter: "api_calls".into(),
            quantity: limits::QUANTITY_MAX,
            timestamp_ms: limits::TIMESTAMP_MS_MAX,
            properties: BTreeMap::from([("region".into(), "eu-west-1 ✓".into())]),
        };
        assert_eq!(validate_event(&ok), Ok(()));
        let bad = |f: &dyn Fn(&mut UsageEvent)| {
            let mut e = ok.clone();
            f(&mut e);
            validate_event(&e).map_err(|e| e.code())
        };
        assert_eq!(
            bad(&|e| e.quantity = limits::QUANTITY_MAX + 1),
            Err("invalid_quantity")
        );
        assert_eq!(bad(&|e| e.quantity = i64::MAX), Err("invalid_quantity"));
        assert_eq!(bad(&|e| e.quantity = -1), Err("invalid_quantity"));
        assert_eq!(bad(&|e| e.meter = "m".repeat(129)), Err("invalid_meter"));
        assert_eq!(bad(&|e| e.meter = "m".repeat(128)), Ok(()));
        assert_eq!(bad(&|e| e.meter = "api calls".into()), Err("invalid_meter"));
        assert_eq!(bad(&|e| e.meter = String::new()), Err("invalid_meter"));
        assert_eq!(bad(&|e| e.id = "a\0b".into()), Err("invalid_id"));
        assert_eq!(bad(&|e| e.id = "x".repeat(513)), Err("invalid_id"));
        assert_eq!(bad(&|e| e.timestamp_ms = -1), Err("invalid_timestamp"));
        assert_eq!(
            bad(&|e| e.timestamp_ms = i64::MAX),
            Err("invalid_timestamp")
        );
        assert_eq!(
            bad(&|e| {
                e.properties.insert("k".into(), "v\0".into());
            }),
            Err("invalid_properties")
        );
        assert_eq!(
            bad(&|e| e.properties = (0..65).map(|i| (format!("k{i}"), String::new())).collect()),
            Err("invalid_properties")
        );
        // Sums of bounded quantities cannot overflow for any realistic buffer.
        assert!(limits::QUANTITY_MAX.checked_mul(1 << 22).is_some());
    }

    #[test]
    fn cloudevent_ids_are_unambiguous_and_plain_ids_cannot_imitate_them() {
        use usage::*;
        assert_ne!(cloudevent_id("/svc", "X:7"), cloudevent_id("/svc:X", "7"));
        assert_eq!(cloudevent_id("/search", "req-1"), "ce:7:/search:req-1");
        assert_eq!(
            validate_plain_id("ce:/svc:X:7").map_err(|e| e.code()),
            Err("invalid_id")
        );
        assert_eq!(validate_plain_id("order-1"), Ok(()));
    }

    #[test]
    fn change_event_round_trips_through_json() {
        let ev = ChangeEvent {
            facts: AccountFacts {
                account_id: AccountId(Uuid::nil()),
                version: 7,
                standing: AccountStanding::Active,
                subscription: Some(SubscriptionFacts {
                    plan: "pro".into(),
                    status: SubscriptionStatus::PastDue,
                    current_period_end_ms: 1_700_000_000_000,
                }),
                dunning_level: 0,
                days_past_due: 0,
                addons: BTreeMap::new(),
                overrides: BTreeMap::from([(
                    "sso".to_owned(),
                    FeatureOverride::Grant { limit: None },
                )]),
            },
            committed_at_ms: 1,
        };
        let json = serde_json::to_string(&ev).expect("serialize");
        assert!(json.contains("\"past_due\""), "{json}");
        let back: ChangeEvent = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, ev);
    }

    #[test]
    fn reason_strings_are_stable() {
        for (r, s) in [
            (Reason::GrantedByPlan, "granted_by_plan"),
            (Reason::DeniedNotInPlan, "denied_not_in_plan"),
            (Reason::DeniedNoSubscription, "denied_no_subscription"),
            (Reason::DeniedBanned, "denied_banned"),
            (Reason::UnknownAccount, "unknown_account"),
        ] {
            assert_eq!(r.as_str(), s);
            assert_eq!(serde_json::to_string(&r).expect("ser"), format!("\"{s}\""));
        }
    }
}

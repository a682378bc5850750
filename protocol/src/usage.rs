//! Metered usage: the events edges buffer and flush, and the aggregates the control plane
//! keeps per account, meter and period.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::AccountId;

/// How a meter's events become one number per account and period.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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

impl MeterPeriod {
    /// The period holding `at_ms`: with a billing `anchor` (unix ms; the account's subscription
    /// has one), monthly and yearly periods are the subscription's own — `anchor + k` months
    /// or years ([`anchored_bounds`]); days, and every period of an account without a
    /// subscription, stay UTC calendar periods ([`MeterPeriod::bounds`]).
    pub fn bounds_for(self, anchor_ms: Option<i64>, at_ms: i64) -> (i64, i64) {
        match (self, anchor_ms) {
            (Self::Month, Some(a)) => anchored_bounds(a, 1, at_ms),
            (Self::Year, Some(a)) => anchored_bounds(a, 12, at_ms),
            _ => self.bounds(at_ms),
        }
    }
}

const DAY_MS: i64 = 86_400_000;

fn days_in_month(y: i64, m: i64) -> i64 {
    days_from_civil(
        if m == 12 { y + 1 } else { y },
        if m == 12 { 1 } else { m + 1 },
        1,
    ) - days_from_civil(y, m, 1)
}

/// `anchor_ms` moved by `k × months` calendar months (negative: back), keeping its time of
/// day; the day is clamped to the target month's last (31 Jan plus one month is 28 or 29 Feb,
/// plus two months is 31 Mar: every boundary is computed from the anchor, so periods never
/// drift). `None` past the representable range.
pub fn anchor_boundary(anchor_ms: i64, months: u32, k: i64) -> Option<i64> {
    let day = anchor_ms.div_euclid(DAY_MS);
    let time = anchor_ms.rem_euclid(DAY_MS);
    let (y, m, d) = civil_from_days(day);
    let total = (y.checked_mul(12)? + m - 1).checked_add(k.checked_mul(i64::from(months))?)?;
    let (ny, nm) = (total.div_euclid(12), total.rem_euclid(12) + 1);
    if !(-300_000..=300_000).contains(&ny) {
        return None;
    }
    let nd = d.min(days_in_month(ny, nm));
    days_from_civil(ny, nm, nd)
        .checked_mul(DAY_MS)?
        .checked_add(time)
}

/// The anchored period of `months` months holding `at_ms`, as `[start, end)` unix ms (see
/// [`anchor_boundary`]). A zero `months` counts as one.
pub fn anchored_bounds(anchor_ms: i64, months: u32, at_ms: i64) -> (i64, i64) {
    let months = months.max(1);
    // An estimate from the mean month length, then exact steps (at most a few).
    let mean_ms = 2_629_746_000_i64 * i64::from(months);
    let mut k = (at_ms.saturating_sub(anchor_ms)).div_euclid(mean_ms);
    let at = |k: i64| anchor_boundary(anchor_ms, months, k);
    for _ in 0..8 {
        match (at(k), at(k + 1)) {
            (Some(s), _) if s > at_ms => k -= 1,
            (_, Some(e)) if e <= at_ms => k += 1,
            (Some(s), Some(e)) => return (s, e),
            _ => break,
        }
    }
    // Outside the calendar's range: fall back to the UTC calendar.
    MeterPeriod::Month.bounds(at_ms)
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

/// The date (year, month 1-12, day 1-31) of a day number since 1970-01-01, proleptic Gregorian
/// (Howard Hinnant's days-to-civil): the one calendar conversion every crate uses.
pub fn civil_from_days(z: i64) -> (i64, i64, i64) {
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageBatch {
    pub batch_id: uuid::Uuid,
    pub edge_id: String,
    pub events: Vec<UsageEvent>,
}

/// One account's aggregate of one meter over one period.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
    /// Longest edge id, bytes (the edge id rule: [`crate::internal_api::valid_edge_id`]).
    pub use crate::internal_api::EDGE_ID_BYTES_MAX;
    /// Most events one [`super::UsageBatch`] may carry (the control plane refuses a larger
    /// batch whole; edges flush smaller ones).
    pub const BATCH_EVENTS_MAX: usize = 10_000;
    /// Largest [`super::UsageBatch`] body, bytes: about 1.6 KiB per event of a full batch.
    pub const BATCH_BODY_BYTES_MAX: usize = 16 << 20;
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseGrant {
    pub granted: i64,
    pub leased: i64,
}

/// Units of a lease an edge did not use and gives back.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRelease {
    pub account: AccountId,
    pub meter: String,
    pub edge_id: String,
    pub period_start_ms: i64,
    pub units: i64,
}

/// An account's current-period aggregates, one per meter of the catalog.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountUsage {
    pub account: AccountId,
    pub aggregates: Vec<MeterAggregate>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    /// Unix ms of a UTC date and time.
    fn utc(y: i64, m: i64, d: i64, h: i64, min: i64) -> i64 {
        (days_from_civil(y, m, d) * 24 * 60 + h * 60 + min) * 60_000
    }

    #[test]
    fn anchored_periods_follow_the_anchor_and_never_drift() {
        // Anchored on 31 Jan 2027 10:30: 28 Feb, 31 Mar, 30 Apr, ... each from the anchor.
        let a = utc(2027, 1, 31, 10, 30);
        assert_eq!(anchor_boundary(a, 1, 1), Some(utc(2027, 2, 28, 10, 30)));
        assert_eq!(anchor_boundary(a, 1, 2), Some(utc(2027, 3, 31, 10, 30)));
        assert_eq!(anchor_boundary(a, 1, 3), Some(utc(2027, 4, 30, 10, 30)));
        assert_eq!(anchor_boundary(a, 1, 13), Some(utc(2028, 2, 29, 10, 30)));
        assert_eq!(anchor_boundary(a, 1, -2), Some(utc(2026, 11, 30, 10, 30)));
        assert_eq!(anchor_boundary(a, 12, 1), Some(utc(2028, 1, 31, 10, 30)));
        let mid_march = utc(2027, 3, 15, 0, 0);
        assert_eq!(
            anchored_bounds(a, 1, mid_march),
            (utc(2027, 2, 28, 10, 30), utc(2027, 3, 31, 10, 30))
        );
        // Boundaries belong to the period they start.
        let b = utc(2027, 3, 31, 10, 30);
        assert_eq!(anchored_bounds(a, 1, b).0, b);
        assert_eq!(anchored_bounds(a, 1, b - 1).1, b);
        // Before the anchor too.
        assert_eq!(
            anchored_bounds(a, 1, utc(2026, 12, 31, 10, 29)),
            (utc(2026, 11, 30, 10, 30), utc(2026, 12, 31, 10, 30))
        );
        // Monthly and yearly meters follow the anchor; daily ones stay calendar days.
        let at = utc(2027, 6, 1, 0, 0);
        assert_eq!(
            MeterPeriod::Month.bounds_for(Some(a), at),
            (utc(2027, 5, 31, 10, 30), utc(2027, 6, 30, 10, 30))
        );
        assert_eq!(
            MeterPeriod::Year.bounds_for(Some(a), at),
            (a, utc(2028, 1, 31, 10, 30))
        );
        assert_eq!(
            MeterPeriod::Day.bounds_for(Some(a), at),
            MeterPeriod::Day.bounds(at)
        );
        assert_eq!(
            MeterPeriod::Month.bounds_for(None, at),
            MeterPeriod::Month.bounds(at)
        );
    }

    #[test]
    fn anchored_periods_hold_every_instant_exactly_once() {
        let a = utc(2026, 8, 29, 23, 59);
        let mut t = utc(2025, 1, 1, 0, 0);
        let step = 86_400_000 * 7 + 3_600_000 * 5 + 17;
        while t < utc(2030, 1, 1, 0, 0) {
            let (s, e) = anchored_bounds(a, 1, t);
            assert!(s <= t && t < e, "{t} not in [{s}, {e})");
            assert_eq!(anchored_bounds(a, 1, e).0, e, "contiguous");
            assert!((28..=31).contains(&((e - s) / 86_400_000)), "a month long");
            t += step;
        }
        assert_eq!(anchor_boundary(i64::MAX, 1, 1), None);
        // The whole range an event may carry.
        let last = limits::TIMESTAMP_MS_MAX;
        let (s, e) = anchored_bounds(a, 1, last);
        assert!(s <= last && last < e);
        let (s, e) = anchored_bounds(a, 12, 0);
        assert!(s <= 0 && 0 < e);
    }

    #[test]
    fn meter_periods_are_utc_calendar_periods() {
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
        assert_ne!(cloudevent_id("/svc", "X:7"), cloudevent_id("/svc:X", "7"));
        assert_eq!(cloudevent_id("/search", "req-1"), "ce:7:/search:req-1");
        assert_eq!(
            validate_plain_id("ce:/svc:X:7").map_err(|e| e.code()),
            Err("invalid_id")
        );
        assert_eq!(validate_plain_id("order-1"), Ok(()));
    }
}

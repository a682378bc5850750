//! Which period an event counts toward ([`period_of`], one calendar shared with the edges): an
//! account with a subscription counts monthly and yearly meters in its billing periods (from
//! the subscription's anchor), every other period is a UTC calendar day, month or year; and
//! the grace window after a period ends ([`place`]).

use chrono::{DateTime, TimeDelta, Utc};
use tollgate_protocol::usage::MeterPeriod;

/// The period of kind `period` containing `at`, as `[start, end)`, for an account whose
/// subscription is anchored at `anchor` (`None`: no subscription, UTC calendar periods).
pub fn period_of(
    period: MeterPeriod,
    anchor: Option<DateTime<Utc>>,
    at: DateTime<Utc>,
) -> (DateTime<Utc>, DateTime<Utc>) {
    // One calendar for edges and control plane: the protocol's.
    let anchor = anchor.map(|a| a.timestamp_millis());
    let (start, end) = period.bounds_for(anchor, at.timestamp_millis());
    (from_ms(start), from_ms(end))
}

/// Where one event is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Placement {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub late: bool,
}

/// The event's own period, or the one containing `now` when its own ended more than `grace`
/// before `now`.
pub(crate) fn place(
    period: MeterPeriod,
    anchor: Option<DateTime<Utc>>,
    occurred_at: DateTime<Utc>,
    now: DateTime<Utc>,
    grace: TimeDelta,
) -> Placement {
    let (start, end) = period_of(period, anchor, occurred_at);
    if now - end > grace {
        let (start, end) = period_of(period, anchor, now);
        Placement {
            start,
            end,
            late: true,
        }
    } else {
        Placement {
            start,
            end,
            late: false,
        }
    }
}

pub(crate) fn from_ms(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

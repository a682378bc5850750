//! Time for billing and subscriptions comes from a [`Clock`], never from SQL `now()`.
//!
//! Production uses [`SystemClock`]. Development mode uses [`OffsetClock`], the system time
//! plus an offset a development-only endpoint advances (like Stripe's test clocks), so a
//! 23-hour checkout expiry or a month of renewals runs in a test in seconds.

use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, TimeDelta, Utc};

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;

    /// Moves the clock forward; `None` when this clock cannot be moved (production).
    fn advance(&self, _by: TimeDelta) -> Option<DateTime<Utc>> {
        None
    }
}

/// The wall clock.
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// The wall clock plus an offset that only grows.
#[derive(Debug, Default)]
pub struct OffsetClock {
    offset_ms: AtomicI64,
}

/// Upper bound for one advance: ten years.
pub const ADVANCE_MAX_SECS: i64 = 10 * 366 * 24 * 3600;

impl Clock for OffsetClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now() + TimeDelta::milliseconds(self.offset_ms.load(Ordering::SeqCst))
    }

    fn advance(&self, by: TimeDelta) -> Option<DateTime<Utc>> {
        self.offset_ms
            .fetch_add(by.num_milliseconds(), Ordering::SeqCst);
        Some(self.now())
    }
}

/// A clock that stands still until told otherwise; for tests.
#[derive(Debug)]
pub struct ManualClock {
    now_ms: AtomicI64,
}

impl ManualClock {
    pub fn at(t: DateTime<Utc>) -> Self {
        Self {
            now_ms: AtomicI64::new(t.timestamp_millis()),
        }
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        let ms = self.now_ms.load(Ordering::SeqCst);
        DateTime::from_timestamp_millis(ms).unwrap_or(DateTime::<Utc>::MIN_UTC)
    }

    fn advance(&self, by: TimeDelta) -> Option<DateTime<Utc>> {
        self.now_ms
            .fetch_add(by.num_milliseconds(), Ordering::SeqCst);
        Some(self.now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_clock_moves_forward_by_what_it_is_told() {
        let clock = OffsetClock::default();
        let before = clock.now();
        let after = clock.advance(TimeDelta::hours(23)).expect("advanceable");
        assert!(after - before >= TimeDelta::hours(23));
        assert!(after - before < TimeDelta::hours(23) + TimeDelta::seconds(5));
    }

    #[test]
    fn system_clock_cannot_be_advanced() {
        assert!(SystemClock.advance(TimeDelta::hours(1)).is_none());
    }
}

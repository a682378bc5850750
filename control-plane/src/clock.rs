//! Time for billing and subscriptions comes from a [`Clock`], never from SQL `now()`.
//!
//! Production uses [`SystemClock`]. Development mode uses [`OffsetClock`], the system time
//! plus an offset a development-only endpoint advances (like Stripe's test clocks), so a
//! 23-hour checkout expiry or a month of renewals runs in a test in seconds. The offset lives
//! in cf_prod (`dev_clock`, [`load_offset`], [`advance_offset`]): every control-plane process
//! reloads it each maintenance pass and edges read it from `GET /internal/v1/clock`, so they all
//! read the same time, and a restart keeps it.

use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, TimeDelta, Utc};

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;

    /// Moves the clock forward; `None` when this clock cannot be moved (production).
    fn advance(&self, _by: TimeDelta) -> Option<DateTime<Utc>> {
        None
    }

    /// The offset from the wall clock, ms (0 for the wall clock).
    fn offset_ms(&self) -> i64 {
        0
    }

    /// Whether this clock follows the shared development clock ([`Self::follow_offset_ms`]).
    fn follows_shared_offset(&self) -> bool {
        false
    }

    /// Follows the shared development clock's offset (no-op for other clocks).
    fn follow_offset_ms(&self, _ms: i64) {}
}

/// The wall clock in unix microseconds, for latency metrics only (propagation: a change
/// written here → an edge applying it): never business time, which comes from a [`Clock`].
pub fn wall_us() -> i64 {
    Utc::now().timestamp_micros()
}

/// The shared development clock's offset, ms (0 before the first advance).
pub async fn load_offset(cf: &sqlx::PgPool) -> sqlx::Result<i64> {
    let ms: Option<i64> = sqlx::query_scalar("SELECT offset_ms FROM dev_clock WHERE id = 1")
        .fetch_optional(cf)
        .await?;
    Ok(ms.unwrap_or(0))
}

/// Moves the shared development clock forward by `by_ms`; returns the new offset.
pub async fn advance_offset(
    cf: &sqlx::PgPool,
    by_ms: i64,
    now: DateTime<Utc>,
) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "INSERT INTO dev_clock (id, offset_ms, updated_at) VALUES (1, $1, $2)
         ON CONFLICT (id) DO UPDATE SET offset_ms = dev_clock.offset_ms + $1, updated_at = $2
         RETURNING offset_ms",
    )
    .bind(by_ms)
    .bind(now)
    .fetch_one(cf)
    .await
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

    fn offset_ms(&self) -> i64 {
        self.offset_ms.load(Ordering::SeqCst)
    }

    fn follows_shared_offset(&self) -> bool {
        true
    }

    /// Never moves back: a stale read of the shared offset cannot undo an advance.
    fn follow_offset_ms(&self, ms: i64) {
        self.offset_ms.fetch_max(ms, Ordering::SeqCst);
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

//! Wall-clock time as the edge reads it: unix milliseconds, for business timestamps (usage
//! periods, denials, staleness). Elapsed time within one process uses `Instant` instead.
//!
//! In development (`TOLLGATE_EDGE_FOLLOW_CLOCK=true`) the edge follows the control plane's
//! development clock: it adds the offset `GET /internal/v1/clock` reports ([`follow`]), so an
//! advance of that clock moves this edge's metering periods too. The offset only grows.

use std::sync::atomic::{AtomicI64, Ordering};

static OFFSET_MS: AtomicI64 = AtomicI64::new(0);

/// Now, in unix milliseconds (0 before the epoch, `i64::MAX` past what an `i64` holds), plus
/// the followed development offset.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .saturating_add(OFFSET_MS.load(Ordering::Relaxed))
}

/// The wall clock in unix microseconds, without the followed development offset: for latency
/// metrics only (a change's propagation is measured between the control plane's wall clock and
/// this one).
pub fn wall_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// Follows the control plane's development clock offset (never backwards).
pub fn follow(offset_ms: i64) {
    OFFSET_MS.fetch_max(offset_ms, Ordering::Relaxed);
}

/// The followed offset, ms.
pub fn offset_ms() -> i64 {
    OFFSET_MS.load(Ordering::Relaxed)
}

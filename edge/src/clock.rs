//! Wall-clock time as the edge reads it: unix milliseconds, for business timestamps (usage
//! periods, denials, staleness). Elapsed time within one process uses `Instant` instead.

/// Now, in unix milliseconds (0 before the epoch, `i64::MAX` past what an `i64` holds).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

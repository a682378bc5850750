//! Monthly partitions of `usage_events`: `usage_events_YYYY_MM` plus a default partition. A
//! partition created later adopts the rows the default partition holds for its month (SQL
//! `usage_ensure_partitions`, in the billing migrations).

use chrono::{DateTime, Months, Utc};
use sqlx::PgPool;

use super::store;

/// Monthly partitions ensured at start-up: this many before the current month...
pub const PARTITION_MONTHS_BEHIND: u32 = 1;
/// ...and this many after it.
pub const PARTITION_MONTHS_AHEAD: u32 = 3;

/// Creates the monthly partitions from [`PARTITION_MONTHS_BEHIND`] months before the month of
/// `now` to [`PARTITION_MONTHS_AHEAD`] after it (existing ones are kept); returns how many it
/// created. Called at start-up.
pub async fn ensure_partitions(pool: &PgPool, now: DateTime<Utc>) -> Result<i32, sqlx::Error> {
    let from = now
        .checked_sub_months(Months::new(PARTITION_MONTHS_BEHIND))
        .unwrap_or(now);
    let months =
        i32::try_from(PARTITION_MONTHS_BEHIND + 1 + PARTITION_MONTHS_AHEAD).unwrap_or(i32::MAX);
    store::ensure_partitions(pool, from, months).await
}

//! How long delivered rows are kept: processed outbox rows are deleted once they are older
//! than the retention window (`TOLLGATE_OUTBOX_RETENTION_HOURS`); rows not yet delivered are
//! never deleted, however old. The consumers' own dedup records (billing's inbox) follow the
//! same window: an event whose row is gone can never be delivered again.

use chrono::{DateTime, TimeDelta, Utc};
use sqlx::PgPool;

/// Rows one prune deletes at most (the maintenance worker runs every second; a backlog drains
/// over several passes without one long transaction).
pub const PRUNE_BATCH_MAX: i64 = 10_000;

/// Deletes up to [`PRUNE_BATCH_MAX`] rows processed before `now - window`; returns how many.
pub async fn prune(cf: &PgPool, now: DateTime<Utc>, window: TimeDelta) -> sqlx::Result<u64> {
    sqlx::query(
        "DELETE FROM outbox WHERE id IN (
             SELECT id FROM outbox WHERE processed_at < $1
              ORDER BY processed_at LIMIT $2 FOR UPDATE SKIP LOCKED)",
    )
    .bind(now - window)
    .bind(PRUNE_BATCH_MAX)
    .execute(cf)
    .await
    .map(|r| r.rows_affected())
}

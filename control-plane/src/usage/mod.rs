//! Usage metering in billing_prod: edges flush batches of [`UsageEvent`]s; every event id is
//! stored once, every event is kept, and one aggregate per (account, meter, period) is kept
//! current in the same statement.
//!
//! # Ingest
//!
//! [`ingest`] is one SQL statement per batch (a single statement is atomic in PostgreSQL, so a
//! batch is stored entirely or not at all, and a retry after any failure is safe):
//!
//! 1. Rust refuses events one by one, never the batch (a refused event is listed in
//!    [`UsageAck::rejected`] with a stable code, and the edge moves it to its dead-letter
//!    file): the bounds every side shares ([`tollgate_protocol::usage::validate_event`]: the
//!    same function the edge ran before accepting it), an account that does not exist
//!    (`unknown_account`), a meter no bundle in force declares (`unknown_meter`), a
//!    `unique_count` event without its property (`missing_property`), an (account, id) the
//!    batch holds twice with different contents (`conflicting_duplicate`, every occurrence).
//!    Identical repeats within the batch count once. It then assigns every event its period
//!    and binds one array per column. Only the batch's own shape (size, edge id) refuses the
//!    whole batch: that is an edge bug, not an event's content.
//! 2. `usage_event_ids` admits each (account, event id) once (`ON CONFLICT DO NOTHING
//!    RETURNING`): the primary key, not a read-then-write, decides between concurrent
//!    deliveries. Ids are per account: X's `order-1` and Y's `order-1` are two events. Each
//!    id keeps the SHA-256 of its content (meter, quantity, properties; [`content_sha256`]),
//!    and an id stored before with another content is refused (`id_reused`), not counted as
//!    a duplicate. Only the ids it returns (fresh) go further.
//! 3. Fresh events are appended to `usage_events` (partitioned by month of occurrence).
//! 4. For `unique_count` meters, each (account, meter, period, value) is inserted into
//!    `usage_unique_values` once; the rows actually inserted are the increment.
//! 5. `usage_aggregates` is upserted per (account, meter, period) with the fresh events only:
//!    `sum` adds quantities, `count` adds events, `max` keeps the greatest, `latest` keeps the
//!    quantity of the newest event (ties: greater event id, so arrival order never matters),
//!    `unique_count` adds the new distinct values; `events` always adds the fresh events.
//!    Sums are taken in `numeric` and saturate at `i64::MAX`: no content can fail the
//!    statement (quantities are at most 2^40 anyway).
//! 6. The statement returns the fresh and the reused ids and every aggregate the batch names:
//!    the upserted rows, plus (for keys only duplicates touched) the stored rows as of the
//!    statement.
//!
//! An aggregate is therefore a function of the stored events alone (their `period_start`
//! records where each was counted): it can be rebuilt from `usage_events`.
//!
//! # Periods and the grace window
//!
//! Periods are the account's billing periods for monthly and yearly meters when it has a
//! subscription (anchored on it), else UTC calendar days, months or years ([`period_of`]). An event counts toward the
//! period containing its timestamp, unless that period ended more than the grace window
//! (`TOLLGATE_USAGE_GRACE_MS`, default 1 h) before the control plane's clock: then it counts
//! toward the period containing *now*, is stored with `late = true` and listed in
//! [`UsageAck::late`]. Future timestamps count toward their own period (edges refuse clock
//! skew). Invoicing a period must wait until its grace window has passed.
//!
//! # Meters in force
//!
//! The meters are those of the stable bundle and, for meters only it declares, of the canary
//! bundle ([`crate::catalog::meters`]): usage an edge running the canary accepts is counted
//! under the canary's spec, never dropped. A meter that neither declares is refused
//! (`unknown_meter`) and waits in the edge's dead-letter file until it is deployed and the
//! operator replays it.
//!
//! # Limits
//!
//! | what | limit |
//! |---|---|
//! | events per batch | [`BATCH_EVENTS_MAX`] (else `413 batch_too_large`, the whole batch) |
//! | request body | [`BODY_BYTES_MAX`] |
//! | edge id | [`valid_edge_id`] (else `422`, the whole batch) |
//! | each event | [`tollgate_protocol::usage::limits`] (else that event is rejected) |
//!
//! # Partitions and retention
//!
//! `usage_events` has monthly partitions `usage_events_YYYY_MM` plus a default partition.
//! Start-up calls [`ensure_partitions`] (SQL `usage_ensure_partitions`) for the previous, the
//! current and the next three months; a partition created later adopts the rows the default
//! partition holds for its month. Retention: raw event partitions older than
//! [`RETENTION_MONTHS`] may be detached and archived once their periods are invoiced;
//! `usage_event_ids` rows received before that horizon may be deleted; aggregates and unique
//! values are kept.

pub mod ingest;
pub mod leases;
pub mod partitions;
pub mod periods;
mod store;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use tollgate_protocol::usage::{AccountUsage, MeterAggregate, MeterSpec, UsageAck, UsageBatch};
use uuid::Uuid;

use crate::error::{Error, Kind, Result};
use crate::ids::AccountId;
use crate::state::AppState;
use crate::{accounts, catalog, subscriptions};

pub use ingest::{content_sha256, ingest};
pub use leases::{LEASE_WANT_MAX, grant_for, lease, release};
pub use partitions::{PARTITION_MONTHS_AHEAD, PARTITION_MONTHS_BEHIND, ensure_partitions};
pub use periods::period_of;

/// Edge ids: the protocol's rule.
pub use tollgate_protocol::internal_api::{EDGE_ID_BYTES_MAX, valid_edge_id};
/// Batch bounds: the protocol's (edges flush within them).
pub use tollgate_protocol::usage::limits::{
    BATCH_BODY_BYTES_MAX as BODY_BYTES_MAX, BATCH_EVENTS_MAX,
};
/// Default grace window (`TOLLGATE_USAGE_GRACE_MS`): one hour.
pub const GRACE_MS_DEFAULT: i64 = 3_600_000;
/// Raw events and event ids older than this many months may be archived / deleted.
pub const RETENTION_MONTHS: u32 = 13;

/// Why a batch was not stored.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// More than [`BATCH_EVENTS_MAX`] events. Nothing was stored; the edge must split the batch.
    #[error("a batch carries at most {BATCH_EVENTS_MAX} events, this one {events}")]
    TooLarge { events: usize },
    /// The batch's edge id breaks the limits. Nothing was stored; retrying does not help.
    #[error("edge_id must be 1-{EDGE_ID_BYTES_MAX} characters of A-Z a-z 0-9 - _ .")]
    InvalidEdgeId,
    /// The database failed. Nothing was stored (one atomic statement): retrying the same
    /// batch is safe.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

impl From<IngestError> for Error {
    fn from(err: IngestError) -> Self {
        match err {
            IngestError::TooLarge { .. } => Self::too_large("batch_too_large", err.to_string()),
            IngestError::InvalidEdgeId => {
                Self::unprocessable("invalid_usage_batch", err.to_string())
            }
            IngestError::Database(e) => e.into(),
        }
    }
}

/// Stores a batch an edge flushed; `idempotency_key` must be its `batch_id`. The ack lists
/// what was stored, duplicated, late and refused (see the module doc); the edge may delete the
/// batch once it has it.
pub async fn ingest_batch(
    state: &AppState,
    idempotency_key: &str,
    batch: &UsageBatch,
) -> Result<UsageAck> {
    if Uuid::parse_str(idempotency_key).ok() != Some(batch.batch_id) {
        return Err(Error::unprocessable(
            "idempotency_key_mismatch",
            "Idempotency-Key must be the batch_id",
        ));
    }
    let started = Instant::now();
    let meters = catalog::meters_in_force(state).await?;
    let mut ids: Vec<AccountId> = batch.events.iter().map(|e| e.account).collect();
    ids.sort_unstable();
    ids.dedup();
    let accounts = accounts::existing(state, &ids).await?;
    let anchors = subscriptions::anchors(state, &ids).await?;
    let result = ingest(
        &state.billing,
        &meters,
        &|a| accounts.contains(&a).then(|| anchors.get(&a).copied()),
        batch,
        state.clock.now(),
        state.usage_grace,
    )
    .await;
    let m = &state.metrics.usage;
    // Refused batches never reach the database: they would only blur the latency.
    if matches!(result, Ok(_) | Err(IngestError::Database(_))) {
        m.ingest_duration.observe(started.elapsed().as_secs_f64());
    }
    let ack = result?;
    m.accepted.inc_by(ack.accepted);
    m.duplicates.inc_by(ack.duplicates);
    m.late.inc_by(ingest::to_u64(ack.late.len()));
    m.rejected.inc_by(ingest::to_u64(ack.rejected.len()));
    if !ack.rejected.is_empty() {
        tracing::warn!(
            batch_id = %batch.batch_id,
            edge_id = %batch.edge_id,
            rejected = ack.rejected.len(),
            first_code = %ack.rejected[0].code,
            "usage events refused"
        );
    }
    tracing::debug!(
        batch_id = %batch.batch_id,
        edge_id = %batch.edge_id,
        accepted = ack.accepted,
        duplicates = ack.duplicates,
        late = ack.late.len(),
        rejected = ack.rejected.len(),
        "usage batch stored"
    );
    Ok(ack)
}

/// The account's aggregate of every meter in `meters` for the period containing `now` (value 0
/// and events 0 for meters without events yet), ordered by meter key.
#[tracing::instrument(skip_all, fields(account = %account))]
pub async fn current(
    pool: &PgPool,
    meters: &HashMap<String, MeterSpec>,
    account: AccountId,
    anchor: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<Vec<MeterAggregate>, sqlx::Error> {
    let mut keys: Vec<(&String, DateTime<Utc>, DateTime<Utc>)> = meters
        .iter()
        .map(|(meter, spec)| {
            let (start, end) = period_of(spec.period, anchor, now);
            (meter, start, end)
        })
        .collect();
    keys.sort_by(|a, b| a.0.cmp(b.0));
    let names: Vec<&str> = keys.iter().map(|k| k.0.as_str()).collect();
    let starts: Vec<DateTime<Utc>> = keys.iter().map(|k| k.1).collect();
    let stored: HashMap<String, (i64, i64)> = store::aggregates(pool, account, &names, &starts)
        .await?
        .into_iter()
        .map(|(meter, value, events)| (meter, (value, events)))
        .collect();
    Ok(keys
        .into_iter()
        .map(|(meter, start, end)| {
            let (value, events) = stored.get(meter).copied().unwrap_or((0, 0));
            MeterAggregate {
                account,
                meter: meter.clone(),
                period_start_ms: start.timestamp_millis(),
                period_end_ms: end.timestamp_millis(),
                value,
                events,
            }
        })
        .collect())
}

/// The account's current-period aggregates, as edges read them (`404 unknown_account` for an
/// unknown account, like its facts).
pub async fn for_edge(state: &AppState, account: AccountId) -> Result<AccountUsage> {
    if accounts::existing(state, &[account]).await?.is_empty() {
        return Err(Error::new(
            Kind::NotFound,
            "unknown_account",
            "no such account",
        ));
    }
    let meters = catalog::meters_in_force(state).await?;
    let anchor = subscriptions::anchors(state, &[account])
        .await?
        .remove(&account);
    let aggregates = current(&state.billing, &meters, account, anchor, state.clock.now()).await?;
    Ok(AccountUsage {
        account,
        aggregates,
    })
}

/// A customer's usage of every meter in the current period.
#[derive(utoipa::ToSchema, Debug, Serialize)]
pub struct Usage {
    pub account: AccountId,
    pub meters: Vec<MeterUsage>,
}

#[derive(utoipa::ToSchema, Debug, Serialize)]
pub struct MeterUsage {
    pub meter: String,
    pub aggregation: &'static str,
    pub period: Period,
    pub value: i64,
    pub events: i64,
}

/// `[start, end)`, RFC 3339.
#[derive(utoipa::ToSchema, Debug, Serialize)]
pub struct Period {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// The account's usage of every meter in the current period (the Dashboard's view).
pub async fn of_account(state: &AppState, account: AccountId) -> Result<Usage> {
    let meters = catalog::meters_in_force(state).await?;
    let anchor = subscriptions::anchors(state, &[account])
        .await?
        .remove(&account);
    let aggregates = current(&state.billing, &meters, account, anchor, state.clock.now()).await?;
    // `current` answers exactly the meters it was given.
    let meters = aggregates
        .into_iter()
        .filter_map(|a| {
            let aggregation = meters.get(&a.meter)?.aggregation.as_str();
            Some(MeterUsage {
                aggregation,
                period: Period {
                    start: periods::from_ms(a.period_start_ms),
                    end: periods::from_ms(a.period_end_ms),
                },
                meter: a.meter,
                value: a.value,
                events: a.events,
            })
        })
        .collect();
    Ok(Usage { account, meters })
}

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
//! Periods are UTC calendar days, months or years ([`period_of`]). An event counts toward the
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

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Months, TimeDelta, Utc};
use serde::Serialize;
use sqlx::PgPool;
use tollgate_protocol::AccountId;
use tollgate_protocol::usage::{
    AccountUsage, Aggregation, LeaseGrant, LeaseRelease, LeaseRequest, MeterAggregate, MeterPeriod,
    MeterSpec, RejectedEvent, UsageAck, UsageBatch, UsageEvent,
};
use uuid::Uuid;

use crate::accounts::auth::Authed;
use crate::http::idempotency::IdempotencyKey;
use crate::http::{ApiError, ApiResult, Json, Path};
use crate::internal::EdgeAuth;
use crate::state::AppState;

/// Most events one batch may carry.
pub const BATCH_EVENTS_MAX: usize = 10_000;
/// Largest `POST /internal/v1/usage` body: about 1.6 KiB per event of a full batch.
pub const BODY_BYTES_MAX: usize = 16 << 20;
/// Longest edge id.
pub use tollgate_protocol::internal_api::{EDGE_ID_BYTES_MAX, valid_edge_id};
/// Default grace window (`TOLLGATE_USAGE_GRACE_MS`): one hour.
pub const GRACE_MS_DEFAULT: i64 = 3_600_000;
/// Raw events and event ids older than this many months may be archived / deleted.
pub const RETENTION_MONTHS: u32 = 13;
/// Monthly partitions ensured at start-up: this many before the current month...
pub const PARTITION_MONTHS_BEHIND: u32 = 1;
/// ...and this many after it.
pub const PARTITION_MONTHS_AHEAD: u32 = 3;

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

/// The UTC calendar period of kind `period` containing `at`, as `[start, end)`.
pub fn period_of(period: MeterPeriod, at: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
    // One calendar for edges and control plane: the protocol's.
    let (start, end) = period.bounds(at.timestamp_millis());
    (from_ms(start), from_ms(end))
}

/// Where one event is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Placement {
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    late: bool,
}

/// The event's own period, or the one containing `now` when its own ended more than `grace`
/// before `now`.
fn place(
    period: MeterPeriod,
    occurred_at: DateTime<Utc>,
    now: DateTime<Utc>,
    grace: TimeDelta,
) -> Placement {
    let (start, end) = period_of(period, occurred_at);
    if now - end > grace {
        let (start, end) = period_of(period, now);
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

/// Batch-level checks: the only reasons a whole batch is refused (an edge bug, never an
/// event's content).
fn validate(batch: &UsageBatch) -> Result<(), IngestError> {
    if batch.events.len() > BATCH_EVENTS_MAX {
        return Err(IngestError::TooLarge {
            events: batch.events.len(),
        });
    }
    if !valid_edge_id(&batch.edge_id) {
        return Err(IngestError::InvalidEdgeId);
    }
    Ok(())
}

/// What an event says, for "same id, other content": meter, quantity and properties. Not the
/// timestamp: an edge fills it in when the caller leaves it out, so an honest retry of one
/// event can carry another.
pub fn content_sha256(e: &UsageEvent) -> [u8; 32] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    let mut field = |b: &[u8]| {
        h.update(u64::try_from(b.len()).unwrap_or(u64::MAX).to_le_bytes());
        h.update(b);
    };
    field(e.meter.as_bytes());
    field(&e.quantity.to_le_bytes());
    for (k, v) in &e.properties {
        field(k.as_bytes());
        field(v.as_bytes());
    }
    h.finalize().into()
}

/// One array per column of the ingest statement.
#[derive(Default)]
struct Columns {
    ids: Vec<String>,
    accounts: Vec<Uuid>,
    meters: Vec<String>,
    quantities: Vec<i64>,
    occurred_at: Vec<DateTime<Utc>>,
    period_starts: Vec<DateTime<Utc>>,
    period_ends: Vec<DateTime<Utc>>,
    properties: Vec<serde_json::Value>,
    late: Vec<bool>,
    aggregations: Vec<&'static str>,
    unique_values: Vec<Option<String>>,
    hashes: Vec<Vec<u8>>,
    /// Index in the batch of each row.
    index: Vec<usize>,
}

impl Columns {
    fn push(&mut self, index: usize, e: &UsageEvent, c: Counted, hash: [u8; 32]) {
        self.index.push(index);
        self.ids.push(e.id.clone());
        self.accounts.push(e.account.0);
        self.meters.push(e.meter.clone());
        self.quantities.push(e.quantity);
        self.occurred_at.push(c.occurred_at);
        self.properties.push(serde_json::Value::Object(
            e.properties
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect(),
        ));
        self.period_starts.push(c.at.start);
        self.period_ends.push(c.at.end);
        self.late.push(c.at.late);
        self.aggregations.push(c.aggregation);
        self.unique_values.push(c.unique_value);
        self.hashes.push(hash.to_vec());
    }
}

/// How an event is counted.
struct Counted {
    occurred_at: DateTime<Utc>,
    at: Placement,
    aggregation: &'static str,
    unique_value: Option<String>,
}

/// Why one event of a batch is not stored (the batch goes on without it).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Refusal {
    code: &'static str,
    detail: String,
}

fn refusal(code: &'static str, detail: impl Into<String>) -> Refusal {
    Refusal {
        code,
        detail: detail.into(),
    }
}

/// Where an event counts, or why it cannot be stored.
fn counted(
    meters: &HashMap<String, MeterSpec>,
    account_exists: &(dyn Fn(AccountId) -> bool + Sync),
    e: &UsageEvent,
    now: DateTime<Utc>,
    grace: TimeDelta,
) -> Result<Counted, Refusal> {
    tollgate_protocol::usage::validate_event(e)
        .map_err(|err| refusal(err.code(), err.to_string()))?;
    if !account_exists(e.account) {
        return Err(refusal(
            "unknown_account",
            format!("no account {}", e.account),
        ));
    }
    let Some(spec) = meters.get(&e.meter) else {
        return Err(refusal(
            "unknown_meter",
            format!("no bundle in force (stable or canary) meters `{}`", e.meter),
        ));
    };
    let occurred_at = from_ms(e.timestamp_ms);
    let unique_value = match &spec.aggregation {
        Aggregation::UniqueCount { property } => Some(
            e.properties
                .get(property)
                .ok_or_else(|| {
                    refusal(
                        "missing_property",
                        format!("meter `{}` counts distinct `{property}`", e.meter),
                    )
                })?
                .clone(),
        ),
        _ => None,
    };
    Ok(Counted {
        occurred_at,
        at: place(spec.period, occurred_at, now, grace),
        aggregation: spec.aggregation.as_str(),
        unique_value,
    })
}

/// The ingest statement (see the module doc). Binds: $1 ids, $2 accounts, $3 meters,
/// $4 quantities, $5 occurred_at, $6 period starts, $7 period ends, $8 properties, $9 late
/// flags, $10 aggregation names, $11 unique values, $12 received_at, $13 edge id, $14 batch id,
/// $15 content hashes.
/// Every insert is ordered by its key so concurrent batches take row locks in one order. Sums
/// saturate at `i64::MAX` (in `numeric`) instead of failing the statement.
const INGEST_SQL: &str = r#"
WITH input AS (
    SELECT * FROM UNNEST($1::text[], $2::uuid[], $3::text[], $4::bigint[], $5::timestamptz[],
                         $6::timestamptz[], $7::timestamptz[], $8::jsonb[], $9::bool[],
                         $10::text[], $11::text[], $15::bytea[])
        AS t(event_id, account_id, meter, quantity, occurred_at, period_start, period_end,
             properties, late, aggregation, unique_value, content_sha256)
),
fresh_ids AS (
    INSERT INTO usage_event_ids (account_id, event_id, received_at, content_sha256)
    SELECT account_id, event_id, $12, content_sha256 FROM input ORDER BY account_id, event_id
    ON CONFLICT (account_id, event_id) DO NOTHING
    RETURNING account_id, event_id
),
-- Stored before this statement with another content (the statement's snapshot does not see
-- the rows fresh_ids inserts).
reused AS (
    SELECT i.account_id, i.event_id FROM input i
    JOIN usage_event_ids u USING (account_id, event_id)
    WHERE u.content_sha256 IS NOT NULL AND u.content_sha256 <> i.content_sha256
),
fresh AS (
    SELECT input.* FROM input JOIN fresh_ids USING (account_id, event_id)
),
stored AS (
    INSERT INTO usage_events (event_id, account_id, meter, quantity, occurred_at, period_start,
                              properties, edge_id, batch_id, received_at, late)
    SELECT event_id, account_id, meter, quantity, occurred_at, period_start,
           properties, $13, $14, $12, late
    FROM fresh
),
new_unique AS (
    INSERT INTO usage_unique_values (account_id, meter, period_start, value)
    SELECT DISTINCT account_id, meter, period_start, unique_value FROM fresh
    WHERE aggregation = 'unique_count' AND unique_value IS NOT NULL
    ORDER BY 1, 2, 3, 4
    ON CONFLICT DO NOTHING
    RETURNING account_id, meter, period_start
),
new_unique_counts AS (
    SELECT account_id, meter, period_start, count(*) AS n
    FROM new_unique GROUP BY account_id, meter, period_start
),
increments AS (
    SELECT account_id, meter, period_start, period_end, aggregation,
           count(*) AS events,
           LEAST(sum(quantity), 9223372036854775807)::bigint AS total,
           max(quantity) AS greatest,
           (array_agg(quantity ORDER BY occurred_at DESC, event_id DESC))[1] AS latest_quantity,
           max(occurred_at) AS latest_at,
           (array_agg(event_id ORDER BY occurred_at DESC, event_id DESC))[1] AS latest_event_id
    FROM fresh
    GROUP BY account_id, meter, period_start, period_end, aggregation
),
upserted AS (
    INSERT INTO usage_aggregates AS a (account_id, meter, period_start, period_end, aggregation,
                                       value, events, latest_at, latest_event_id, updated_at)
    SELECT i.account_id, i.meter, i.period_start, i.period_end, i.aggregation,
           CASE i.aggregation
               WHEN 'sum' THEN i.total
               WHEN 'count' THEN i.events
               WHEN 'max' THEN i.greatest
               WHEN 'latest' THEN i.latest_quantity
               WHEN 'unique_count' THEN coalesce(u.n, 0)
           END,
           i.events,
           CASE WHEN i.aggregation = 'latest' THEN i.latest_at END,
           CASE WHEN i.aggregation = 'latest' THEN i.latest_event_id END,
           $12
    FROM increments i
    LEFT JOIN new_unique_counts u USING (account_id, meter, period_start)
    ORDER BY i.account_id, i.meter, i.period_start
    ON CONFLICT (account_id, meter, period_start) DO UPDATE SET
        value = CASE EXCLUDED.aggregation
            WHEN 'max' THEN greatest(a.value, EXCLUDED.value)
            WHEN 'latest' THEN
                CASE WHEN a.latest_at IS NULL
                       OR (EXCLUDED.latest_at, EXCLUDED.latest_event_id) > (a.latest_at, a.latest_event_id)
                     THEN EXCLUDED.value ELSE a.value END
            ELSE LEAST(a.value::numeric + EXCLUDED.value, 9223372036854775807)::bigint
        END,
        latest_at = CASE
            WHEN EXCLUDED.aggregation <> 'latest' THEN NULL
            WHEN a.latest_at IS NULL
              OR (EXCLUDED.latest_at, EXCLUDED.latest_event_id) > (a.latest_at, a.latest_event_id)
            THEN EXCLUDED.latest_at ELSE a.latest_at END,
        latest_event_id = CASE
            WHEN EXCLUDED.aggregation <> 'latest' THEN NULL
            WHEN a.latest_at IS NULL
              OR (EXCLUDED.latest_at, EXCLUDED.latest_event_id) > (a.latest_at, a.latest_event_id)
            THEN EXCLUDED.latest_event_id ELSE a.latest_event_id END,
        events = LEAST(a.events::numeric + EXCLUDED.events, 9223372036854775807)::bigint,
        aggregation = EXCLUDED.aggregation,
        updated_at = EXCLUDED.updated_at
    RETURNING account_id, meter, period_start, period_end, value, events
),
touched AS (
    SELECT DISTINCT account_id, meter, period_start FROM input
),
result AS (
    SELECT account_id, meter, period_start, period_end, value, events FROM upserted
    UNION ALL
    SELECT a.account_id, a.meter, a.period_start, a.period_end, a.value, a.events
    FROM usage_aggregates a JOIN touched t USING (account_id, meter, period_start)
    WHERE NOT EXISTS (
        SELECT 1 FROM upserted u
        WHERE (u.account_id, u.meter, u.period_start) = (t.account_id, t.meter, t.period_start))
)
SELECT ARRAY(SELECT account_id FROM fresh_ids) AS fresh_accounts,
       ARRAY(SELECT event_id FROM fresh_ids) AS fresh_ids,
       ARRAY(SELECT account_id FROM reused) AS reused_accounts,
       ARRAY(SELECT event_id FROM reused) AS reused_ids,
       coalesce(array_agg(account_id ORDER BY account_id, meter, period_start), '{}') AS accounts,
       coalesce(array_agg(meter ORDER BY account_id, meter, period_start), '{}') AS meters,
       coalesce(array_agg(period_start ORDER BY account_id, meter, period_start), '{}') AS starts,
       coalesce(array_agg(period_end ORDER BY account_id, meter, period_start), '{}') AS ends,
       coalesce(array_agg(value ORDER BY account_id, meter, period_start), '{}') AS values,
       coalesce(array_agg(events ORDER BY account_id, meter, period_start), '{}') AS events
FROM result
"#;

#[derive(sqlx::FromRow)]
struct IngestRow {
    fresh_accounts: Vec<Uuid>,
    fresh_ids: Vec<String>,
    reused_accounts: Vec<Uuid>,
    reused_ids: Vec<String>,
    accounts: Vec<Uuid>,
    meters: Vec<String>,
    starts: Vec<DateTime<Utc>>,
    ends: Vec<DateTime<Utc>>,
    values: Vec<i64>,
    events: Vec<i64>,
}

/// Stores a batch: each (account, event id) once, every fresh event, and the aggregates it
/// changes — in one statement (one round trip, atomic). See the module doc.
///
/// Events are refused one by one, never the batch: one that breaks the shared bounds
/// ([`tollgate_protocol::usage::validate_event`]), names an account that does not exist
/// (`account_exists`) or a meter no bundle in force declares, lacks its `unique_count`
/// property, repeats an id of the batch with other content (every such occurrence), or reuses
/// an id stored before with other content, is listed in [`UsageAck::rejected`] and neither
/// stored nor counted.
///
/// `aggregates` of the ack are every aggregate an event of the batch that was not refused
/// names, after the statement. For a duplicate the key is computed as if it arrived now (the
/// same key unless a retry crossed the end of its grace window).
#[tracing::instrument(skip_all, fields(batch_id = %batch.batch_id, edge_id = %batch.edge_id, events = batch.events.len()))]
pub async fn ingest(
    pool: &PgPool,
    meters: &HashMap<String, MeterSpec>,
    account_exists: &(dyn Fn(AccountId) -> bool + Sync),
    batch: &UsageBatch,
    now: DateTime<Utc>,
    grace: TimeDelta,
) -> Result<UsageAck, IngestError> {
    validate(batch)?;
    let mut rejected: Vec<RejectedEvent> = Vec::new();
    let reject = |rejected: &mut Vec<RejectedEvent>, index: usize, e: &UsageEvent, r: Refusal| {
        rejected.push(RejectedEvent {
            index: u32::try_from(index).unwrap_or(u32::MAX),
            id: e.id.clone(),
            code: r.code.to_owned(),
            detail: r.detail,
        });
    };
    // First occurrence of each (account, id) and its content; ids seen with two contents.
    let mut first: HashMap<(AccountId, &str), (usize, [u8; 32])> = HashMap::new();
    let mut conflicting: HashSet<(AccountId, &str)> = HashSet::new();
    for (index, e) in batch.events.iter().enumerate() {
        let hash = content_sha256(e);
        match first.get(&(e.account, e.id.as_str())) {
            Some((_, h)) if *h != hash => {
                conflicting.insert((e.account, e.id.as_str()));
            }
            Some(_) => {}
            None => {
                first.insert((e.account, e.id.as_str()), (index, hash));
            }
        }
    }
    let mut cols = Columns::default();
    for (index, e) in batch.events.iter().enumerate() {
        let key = (e.account, e.id.as_str());
        if conflicting.contains(&key) {
            let r = refusal(
                "conflicting_duplicate",
                "the batch holds this id twice with different contents",
            );
            reject(&mut rejected, index, e, r);
            continue;
        }
        let Some((first_index, hash)) = first.get(&key).copied() else {
            continue;
        };
        if first_index != index {
            continue; // a repeat of an earlier event of the batch: counted once
        }
        match counted(meters, account_exists, e, now, grace) {
            Ok(c) => cols.push(index, e, c, hash),
            Err(r) => reject(&mut rejected, index, e, r),
        }
    }
    let mut ack = UsageAck {
        batch_id: batch.batch_id,
        accepted: 0,
        duplicates: 0,
        late: Vec::new(),
        rejected: Vec::new(),
        aggregates: Vec::new(),
    };
    if !cols.ids.is_empty() {
        let row: IngestRow = sqlx::query_as(INGEST_SQL)
            .bind(&cols.ids)
            .bind(&cols.accounts)
            .bind(&cols.meters)
            .bind(&cols.quantities)
            .bind(&cols.occurred_at)
            .bind(&cols.period_starts)
            .bind(&cols.period_ends)
            .bind(&cols.properties)
            .bind(&cols.late)
            .bind(&cols.aggregations)
            .bind(&cols.unique_values)
            .bind(now)
            .bind(&batch.edge_id)
            .bind(batch.batch_id)
            .bind(&cols.hashes)
            .fetch_one(pool)
            .await?;
        let pairs = |accounts: Vec<Uuid>, ids: Vec<String>| -> HashSet<(Uuid, String)> {
            accounts.into_iter().zip(ids).collect()
        };
        let fresh = pairs(row.fresh_accounts, row.fresh_ids);
        let reused = pairs(row.reused_accounts, row.reused_ids);
        for (i, id) in cols.ids.iter().enumerate() {
            let key = (cols.accounts[i], id.clone());
            if fresh.contains(&key) {
                ack.accepted += 1;
                if cols.late[i] {
                    ack.late.push(id.clone());
                }
            } else if reused.contains(&key) {
                let e = &batch.events[cols.index[i]];
                let r = refusal(
                    "id_reused",
                    "this id was stored before with another meter, quantity or properties",
                );
                reject(&mut rejected, cols.index[i], e, r);
            }
        }
        assert!(
            fresh
                .iter()
                .all(|(a, id)| first.contains_key(&(AccountId(*a), id.as_str()))),
            "the ingest statement stored ids the batch does not hold"
        );
        ack.aggregates = row
            .accounts
            .into_iter()
            .zip(row.meters)
            .zip(row.starts.into_iter().zip(row.ends))
            .zip(row.values.into_iter().zip(row.events))
            .map(
                |(((account, meter), (start, end)), (value, events))| MeterAggregate {
                    account: AccountId(account),
                    meter,
                    period_start_ms: start.timestamp_millis(),
                    period_end_ms: end.timestamp_millis(),
                    value,
                    events,
                },
            )
            .collect();
    }
    rejected.sort_by_key(|r| r.index);
    ack.duplicates =
        to_u64(batch.events.len().saturating_sub(rejected.len())).saturating_sub(ack.accepted);
    ack.rejected = rejected;
    Ok(ack)
}

fn to_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// The account's aggregate of every catalog meter for the period containing `now` (value 0 and
/// events 0 for meters without events yet), ordered by meter key.
#[tracing::instrument(skip_all, fields(account = %account))]
pub async fn current(
    pool: &PgPool,
    meters: &HashMap<String, MeterSpec>,
    account: AccountId,
    now: DateTime<Utc>,
) -> Result<Vec<MeterAggregate>, sqlx::Error> {
    let mut keys: Vec<(&String, DateTime<Utc>, DateTime<Utc>)> = meters
        .iter()
        .map(|(meter, spec)| {
            let (start, end) = period_of(spec.period, now);
            (meter, start, end)
        })
        .collect();
    keys.sort_by(|a, b| a.0.cmp(b.0));
    let names: Vec<&str> = keys.iter().map(|k| k.0.as_str()).collect();
    let starts: Vec<DateTime<Utc>> = keys.iter().map(|k| k.1).collect();
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT a.meter, a.value, a.events
         FROM UNNEST($2::text[], $3::timestamptz[]) AS k(meter, period_start)
         JOIN usage_aggregates a
           ON a.account_id = $1 AND a.meter = k.meter AND a.period_start = k.period_start",
    )
    .bind(account.0)
    .bind(&names)
    .bind(&starts)
    .fetch_all(pool)
    .await?;
    let stored: HashMap<String, (i64, i64)> = rows
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

/// Creates the monthly `usage_events` partitions from [`PARTITION_MONTHS_BEHIND`] months
/// before the month of `now` to [`PARTITION_MONTHS_AHEAD`] after it (existing ones are kept);
/// returns how many it created. Called at start-up.
pub async fn ensure_partitions(pool: &PgPool, now: DateTime<Utc>) -> Result<i32, sqlx::Error> {
    let from = now
        .checked_sub_months(Months::new(PARTITION_MONTHS_BEHIND))
        .unwrap_or(now);
    let months =
        i32::try_from(PARTITION_MONTHS_BEHIND + 1 + PARTITION_MONTHS_AHEAD).unwrap_or(i32::MAX);
    let (created,): (i32,) = sqlx::query_as("SELECT usage_ensure_partitions($1, $2)")
        .bind(from)
        .bind(months)
        .fetch_one(pool)
        .await?;
    Ok(created)
}

async fn meters_of(state: &AppState) -> ApiResult<HashMap<String, MeterSpec>> {
    let mut conn = state.cf.acquire().await?;
    crate::catalog::meters(&mut conn)
        .await
        .map_err(ApiError::internal)
}

impl From<IngestError> for ApiError {
    fn from(err: IngestError) -> Self {
        match err {
            IngestError::TooLarge { .. } => Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "batch_too_large",
                err.to_string(),
            ),
            IngestError::InvalidEdgeId => {
                Self::unprocessable("invalid_usage_batch", err.to_string())
            }
            IngestError::Database(e) => e.into(),
        }
    }
}

/// `POST /internal/v1/usage` — a [`UsageBatch`] from an edge; `Idempotency-Key` must be its
/// `batch_id`. Answers the [`UsageAck`]; the edge may delete the batch once it has it.
pub async fn ingest_batch(
    State(state): State<AppState>,
    _: EdgeAuth,
    key: IdempotencyKey,
    Json(batch): Json<UsageBatch>,
) -> ApiResult<axum::Json<UsageAck>> {
    if Uuid::parse_str(&key.0).ok() != Some(batch.batch_id) {
        return Err(ApiError::unprocessable(
            "idempotency_key_mismatch",
            "Idempotency-Key must be the batch_id",
        ));
    }
    let started = Instant::now();
    // Meters and the batch's accounts over one cf connection.
    let (meters, accounts) = {
        let mut conn = state.cf.acquire().await?;
        let meters = crate::catalog::meters(&mut conn)
            .await
            .map_err(ApiError::internal)?;
        let mut ids: Vec<AccountId> = batch.events.iter().map(|e| e.account).collect();
        ids.sort_unstable();
        ids.dedup();
        (
            meters,
            crate::accounts::store::existing(&mut conn, &ids).await?,
        )
    };
    let result = ingest(
        &state.billing,
        &meters,
        &|a| accounts.contains(&a),
        &batch,
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
    m.late.inc_by(to_u64(ack.late.len()));
    m.rejected.inc_by(to_u64(ack.rejected.len()));
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
    Ok(axum::Json(ack))
}

/// `GET /internal/v1/accounts/{id}/usage` — the account's current-period aggregates (404 for
/// an unknown account, like its facts).
pub async fn internal_account_usage(
    State(state): State<AppState>,
    _: EdgeAuth,
    Path(id): Path<AccountId>,
) -> ApiResult<axum::Json<AccountUsage>> {
    // One cf connection for both reads.
    let meters = {
        let mut conn = state.cf.acquire().await?;
        if crate::accounts::store::get_account(&mut conn, id)
            .await?
            .is_none()
        {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_account",
                "no such account",
            ));
        }
        crate::catalog::meters(&mut conn)
            .await
            .map_err(ApiError::internal)?
    };
    let aggregates = current(&state.billing, &meters, id, state.clock.now()).await?;
    Ok(axum::Json(AccountUsage {
        account: id,
        aggregates,
    }))
}

/// `GET /v1/usage` body.
#[derive(Debug, Serialize)]
pub struct DashboardUsage {
    pub account: AccountId,
    pub meters: Vec<DashboardMeter>,
}

#[derive(Debug, Serialize)]
pub struct DashboardMeter {
    pub meter: String,
    pub aggregation: &'static str,
    pub period: DashboardPeriod,
    pub value: i64,
    pub events: i64,
}

/// `[start, end)`, RFC 3339.
#[derive(Debug, Serialize)]
pub struct DashboardPeriod {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// `GET /v1/usage` — the caller's usage of every meter in the current period.
pub async fn account_usage(
    State(state): State<AppState>,
    Authed(account): Authed,
) -> ApiResult<axum::Json<DashboardUsage>> {
    let meters = meters_of(&state).await?;
    let aggregates = current(&state.billing, &meters, account, state.clock.now()).await?;
    // `current` answers exactly the meters it was given.
    let meters = aggregates
        .into_iter()
        .filter_map(|a| {
            let aggregation = meters.get(&a.meter)?.aggregation.as_str();
            Some(DashboardMeter {
                aggregation,
                period: DashboardPeriod {
                    start: from_ms(a.period_start_ms),
                    end: from_ms(a.period_end_ms),
                },
                meter: a.meter,
                value: a.value,
                events: a.events,
            })
        })
        .collect();
    Ok(axum::Json(DashboardUsage { account, meters }))
}

fn from_ms(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// Largest lease one request may ask for: `need` and `extra` are each at most a quantity.
pub const LEASE_WANT_MAX: i64 = tollgate_protocol::usage::limits::QUANTITY_MAX;

/// What a lease request gets from a counter at `leased` of quota `limit`: `need` when it fits
/// (all or nothing: a check that would be denied reserves nothing), plus as much of `extra`
/// as fits after it.
pub fn grant_for(leased: i64, limit: i64, need: i64, extra: i64) -> i64 {
    let room = i128::from(limit) - i128::from(leased);
    let need = i128::from(need);
    if need > room {
        return 0;
    }
    let granted = need + i128::from(extra).min(room - need).max(0);
    i64::try_from(granted).unwrap_or(0)
}

/// Grants what [`grant_for`] allows to `edge_id`: the counter of units leased out (seeded
/// with the period's aggregate on first use) never passes `limit`. One transaction; the
/// counter row's lock orders concurrent edges.
pub async fn lease(
    pool: &PgPool,
    req: &LeaseRequest,
    now: DateTime<Utc>,
) -> Result<LeaseGrant, sqlx::Error> {
    let start = from_ms(req.period_start_ms);
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO usage_lease_counters (account_id, meter, period_start, leased, updated_at)
         SELECT $1, $2, $3, COALESCE((SELECT value FROM usage_aggregates
                                      WHERE account_id = $1 AND meter = $2 AND period_start = $3), 0), $4
         ON CONFLICT DO NOTHING",
    )
    .bind(req.account.0)
    .bind(&req.meter)
    .bind(start)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    let (leased,): (i64,) = sqlx::query_as(
        "SELECT leased FROM usage_lease_counters
          WHERE account_id = $1 AND meter = $2 AND period_start = $3 FOR UPDATE",
    )
    .bind(req.account.0)
    .bind(&req.meter)
    .bind(start)
    .fetch_one(&mut *tx)
    .await?;
    let granted = grant_for(leased, req.limit, req.need, req.extra);
    if granted == 0 {
        tx.rollback().await?;
        return Ok(LeaseGrant { granted, leased });
    }
    let leased = leased.saturating_add(granted);
    sqlx::query(
        "UPDATE usage_lease_counters SET leased = $4, updated_at = $5
          WHERE account_id = $1 AND meter = $2 AND period_start = $3",
    )
    .bind(req.account.0)
    .bind(&req.meter)
    .bind(start)
    .bind(leased)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO usage_leases (account_id, meter, period_start, edge_id, granted, returned, updated_at)
         VALUES ($1, $2, $3, $4, $5, 0, $6)
         ON CONFLICT (account_id, meter, period_start, edge_id)
         DO UPDATE SET granted = usage_leases.granted + EXCLUDED.granted, updated_at = EXCLUDED.updated_at",
    )
    .bind(req.account.0)
    .bind(&req.meter)
    .bind(start)
    .bind(&req.edge_id)
    .bind(granted)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(LeaseGrant { granted, leased })
}

/// Takes back units an edge did not use, never more than it was granted and has not
/// returned yet.
pub async fn release(
    pool: &PgPool,
    rel: &LeaseRelease,
    now: DateTime<Utc>,
) -> Result<i64, sqlx::Error> {
    let start = from_ms(rel.period_start_ms);
    let mut tx = pool.begin().await?;
    let taken: Option<(i64,)> = sqlx::query_as(
        "UPDATE usage_leases l
            SET returned = l.returned + LEAST($5, l.granted - l.returned), updated_at = $6
           FROM (SELECT returned FROM usage_leases
                  WHERE account_id = $1 AND meter = $2 AND period_start = $3 AND edge_id = $4
                  FOR UPDATE) o
          WHERE l.account_id = $1 AND l.meter = $2 AND l.period_start = $3 AND l.edge_id = $4
      RETURNING l.returned - o.returned",
    )
    .bind(rel.account.0)
    .bind(&rel.meter)
    .bind(start)
    .bind(&rel.edge_id)
    .bind(rel.units)
    .bind(now)
    .fetch_optional(&mut *tx)
    .await?;
    let taken = taken.map_or(0, |t| t.0);
    sqlx::query(
        "UPDATE usage_lease_counters SET leased = GREATEST(leased - $4, 0), updated_at = $5
          WHERE account_id = $1 AND meter = $2 AND period_start = $3",
    )
    .bind(rel.account.0)
    .bind(&rel.meter)
    .bind(start)
    .bind(taken)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(taken)
}

/// What names a lease: a meter key, an edge id, a period start a timestamp can hold.
fn lease_key_ok(meter: &str, edge_id: &str, period_start_ms: i64) -> Result<(), ApiError> {
    if tollgate_protocol::usage::validate_key(meter).is_err() || !valid_edge_id(edge_id) {
        return Err(lease_problem("meter and edge_id must be 1-128 characters"));
    }
    if !(0..=tollgate_protocol::usage::limits::TIMESTAMP_MS_MAX).contains(&period_start_ms) {
        return Err(lease_problem("period_start_ms must lie in 1970..=9999"));
    }
    Ok(())
}

fn lease_problem(detail: &str) -> ApiError {
    ApiError::unprocessable("invalid_lease", detail.to_owned())
}

/// `POST /internal/v1/leases` — an edge asks for a slice of an account's quota.
pub async fn lease_handler(
    State(state): State<AppState>,
    _: EdgeAuth,
    Json(req): Json<LeaseRequest>,
) -> ApiResult<axum::Json<LeaseGrant>> {
    if !(1..=LEASE_WANT_MAX).contains(&req.need)
        || !(0..=LEASE_WANT_MAX).contains(&req.extra)
        || req.limit < 0
    {
        return Err(lease_problem(
            "need must be 1..=2^40, extra 0..=2^40, limit not negative",
        ));
    }
    lease_key_ok(&req.meter, &req.edge_id, req.period_start_ms)?;
    let grant = lease(&state.billing, &req, state.clock.now()).await?;
    tracing::debug!(account_id = %req.account, meter = %req.meter, edge_id = %req.edge_id,
        need = req.need, extra = req.extra, granted = grant.granted, leased = grant.leased, "quota lease");
    Ok(axum::Json(grant))
}

/// `POST /internal/v1/leases/release` — an edge gives back what it did not use.
pub async fn release_handler(
    State(state): State<AppState>,
    _: EdgeAuth,
    Json(rel): Json<LeaseRelease>,
) -> ApiResult<StatusCode> {
    if !(0..=LEASE_WANT_MAX).contains(&rel.units) {
        return Err(lease_problem("units must be 0..=2^40"));
    }
    lease_key_ok(&rel.meter, &rel.edge_id, rel.period_start_ms)?;
    release(&state.billing, &rel, state.clock.now()).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::TimeZone;

    use super::*;

    fn t(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0)
            .single()
            .expect("valid time")
    }

    fn spec(aggregation: Aggregation, period: MeterPeriod) -> MeterSpec {
        MeterSpec {
            aggregation,
            period,
            soft: false,
            lease: 1000,
        }
    }

    fn meters() -> HashMap<String, MeterSpec> {
        HashMap::from([
            ("calls".into(), spec(Aggregation::Sum, MeterPeriod::Month)),
            ("jobs".into(), spec(Aggregation::Count, MeterPeriod::Month)),
            ("peak".into(), spec(Aggregation::Max, MeterPeriod::Month)),
            (
                "seats".into(),
                spec(Aggregation::Latest, MeterPeriod::Month),
            ),
            (
                "users".into(),
                spec(
                    Aggregation::UniqueCount {
                        property: "user".into(),
                    },
                    MeterPeriod::Month,
                ),
            ),
            ("daily".into(), spec(Aggregation::Sum, MeterPeriod::Day)),
        ])
    }

    fn ev(
        id: &str,
        account: AccountId,
        meter: &str,
        quantity: i64,
        at: DateTime<Utc>,
    ) -> UsageEvent {
        UsageEvent {
            id: id.into(),
            account,
            meter: meter.into(),
            quantity,
            timestamp_ms: at.timestamp_millis(),
            properties: BTreeMap::new(),
        }
    }

    fn with_prop(mut e: UsageEvent, key: &str, value: &str) -> UsageEvent {
        e.properties.insert(key.into(), value.into());
        e
    }

    fn batch(events: Vec<UsageEvent>) -> UsageBatch {
        UsageBatch {
            batch_id: Uuid::now_v7(),
            edge_id: "edge-1".into(),
            events,
        }
    }

    const HOUR: TimeDelta = TimeDelta::hours(1);

    /// Mid-January 2026: the clock of most tests.
    fn now() -> DateTime<Utc> {
        t(2026, 1, 15, 12, 0)
    }

    async fn aggregate(pool: &PgPool, account: AccountId, meter: &str) -> Option<(i64, i64)> {
        sqlx::query_as(
            "SELECT value, events FROM usage_aggregates WHERE account_id = $1 AND meter = $2",
        )
        .bind(account.0)
        .bind(meter)
        .fetch_optional(pool)
        .await
        .expect("aggregate")
    }

    async fn count(pool: &PgPool, sql: &'static str) -> i64 {
        let (n,): (i64,) = sqlx::query_as(sql).fetch_one(pool).await.expect("count");
        n
    }

    #[test]
    fn periods_are_utc_calendar_days_months_and_years() {
        let cases = [
            (
                MeterPeriod::Day,
                t(2026, 1, 15, 12, 0),
                t(2026, 1, 15, 0, 0),
                t(2026, 1, 16, 0, 0),
            ),
            (
                MeterPeriod::Day,
                t(2025, 12, 31, 23, 59),
                t(2025, 12, 31, 0, 0),
                t(2026, 1, 1, 0, 0),
            ),
            (
                MeterPeriod::Day,
                t(2024, 2, 28, 0, 0),
                t(2024, 2, 28, 0, 0),
                t(2024, 2, 29, 0, 0),
            ),
            (
                MeterPeriod::Month,
                t(2026, 1, 15, 12, 0),
                t(2026, 1, 1, 0, 0),
                t(2026, 2, 1, 0, 0),
            ),
            (
                MeterPeriod::Month,
                t(2025, 12, 31, 23, 59),
                t(2025, 12, 1, 0, 0),
                t(2026, 1, 1, 0, 0),
            ),
            (
                MeterPeriod::Month,
                t(2024, 2, 29, 8, 0),
                t(2024, 2, 1, 0, 0),
                t(2024, 3, 1, 0, 0),
            ),
            (
                MeterPeriod::Month,
                t(2026, 3, 1, 0, 0),
                t(2026, 3, 1, 0, 0),
                t(2026, 4, 1, 0, 0),
            ),
            (
                MeterPeriod::Year,
                t(2026, 7, 4, 1, 2),
                t(2026, 1, 1, 0, 0),
                t(2027, 1, 1, 0, 0),
            ),
            (
                MeterPeriod::Year,
                t(2026, 12, 31, 23, 59),
                t(2026, 1, 1, 0, 0),
                t(2027, 1, 1, 0, 0),
            ),
        ];
        for (period, at, start, end) in cases {
            assert_eq!(period_of(period, at), (start, end), "{period:?} of {at}");
        }
        let last =
            DateTime::from_timestamp_millis(tollgate_protocol::usage::limits::TIMESTAMP_MS_MAX)
                .expect("max");
        assert_eq!(period_of(MeterPeriod::Year, last).1, t(10_000, 1, 1, 0, 0));
    }

    #[test]
    fn events_after_the_grace_window_count_toward_the_current_period() {
        let jan_end = t(2026, 2, 1, 0, 0);
        let at = t(2026, 1, 31, 23, 0);
        let cases = [
            // (now, late)
            (jan_end + TimeDelta::minutes(30), false),
            (jan_end + HOUR, false),
            (jan_end + HOUR + TimeDelta::milliseconds(1), true),
            (jan_end + HOUR * 2, true),
        ];
        for (now, late) in cases {
            let p = place(MeterPeriod::Month, at, now, HOUR);
            assert_eq!(p.late, late, "now {now}");
            let expected = if late {
                (jan_end, t(2026, 3, 1, 0, 0))
            } else {
                (t(2026, 1, 1, 0, 0), jan_end)
            };
            assert_eq!((p.start, p.end), expected, "now {now}");
        }
        // The future is the edge's business: its own period.
        let future = place(MeterPeriod::Day, t(2026, 1, 20, 0, 0), now(), HOUR);
        assert_eq!((future.start, future.late), (t(2026, 1, 20, 0, 0), false));
    }

    #[test]
    fn only_the_batch_shape_refuses_a_whole_batch() {
        let a = AccountId::new_v7();
        let good = ev("e", a, "calls", 1, now());
        let mut b = batch(vec![good.clone()]);
        b.edge_id = String::new();
        assert!(matches!(validate(&b), Err(IngestError::InvalidEdgeId)));
        let big = batch(vec![good.clone(); BATCH_EVENTS_MAX + 1]);
        assert!(matches!(
            validate(&big),
            Err(IngestError::TooLarge { events: 10_001 })
        ));
        // Bad events do not make a bad batch.
        let mut poisoned = batch(vec![good.clone(), ev("e2", a, "calls", i64::MAX, now())]);
        poisoned
            .events
            .push(ev("e3", a, &"m".repeat(129), 1, now()));
        assert!(validate(&poisoned).is_ok());
    }

    fn codes(ack: &UsageAck) -> Vec<(u32, &str, &str)> {
        ack.rejected
            .iter()
            .map(|r| (r.index, r.id.as_str(), r.code.as_str()))
            .collect()
    }

    #[sqlx::test(migrations = "../migrations/billing")]
    async fn bad_events_are_rejected_one_by_one_and_the_rest_of_the_batch_is_counted(pool: PgPool) {
        let a = AccountId::new_v7();
        let stranger = AccountId::new_v7();
        let good = ev("ok-1", a, "calls", 5, now());
        let b = batch(vec![
            ev("huge", a, "calls", i64::MAX, now()),
            good.clone(),
            ev("long", a, &"m".repeat(129), 1, now()),
            ev("ghost", stranger, "calls", 1, now()),
            ev("nometer", a, "not_in_catalog", 1, now()),
            ev("nouser", a, "users", 1, now()),
            with_prop(ev("prop", a, "calls", 1, now()), "k", "v\0"),
            UsageEvent {
                timestamp_ms: -1,
                ..ev("old", a, "calls", 1, now())
            },
            ev("", a, "calls", 1, now()),
            ev("ok-2", a, "calls", 7, now()),
        ]);
        let ack = ingest(&pool, &meters(), &|acct| acct == a, &b, now(), HOUR)
            .await
            .expect("a poisoned batch is stored, minus its poison");
        assert_eq!(
            codes(&ack),
            vec![
                (0, "huge", "invalid_quantity"),
                (2, "long", "invalid_meter"),
                (3, "ghost", "unknown_account"),
                (4, "nometer", "unknown_meter"),
                (5, "nouser", "missing_property"),
                (6, "prop", "invalid_properties"),
                (7, "old", "invalid_timestamp"),
                (8, "", "invalid_id"),
            ]
        );
        assert_eq!((ack.accepted, ack.duplicates), (2, 0));
        assert_eq!(aggregate(&pool, a, "calls").await, Some((12, 2)));
        assert_eq!(count(&pool, "SELECT count(*) FROM usage_events").await, 2);
        assert_eq!(
            count(&pool, "SELECT count(*) FROM usage_aggregates").await,
            1,
            "nothing of a rejected event is kept, not even an aggregate row"
        );
    }

    #[sqlx::test(migrations = "../migrations/billing")]
    async fn sums_saturate_instead_of_failing_the_statement(pool: PgPool) {
        let a = AccountId::new_v7();
        let max = tollgate_protocol::usage::limits::QUANTITY_MAX;
        sqlx::query(
            "INSERT INTO usage_aggregates (account_id, meter, period_start, period_end, aggregation, value, events, updated_at)
             VALUES ($1, 'calls', '2026-01-01T00:00:00Z', '2026-02-01T00:00:00Z', 'sum', $2, 1, now())",
        )
        .bind(a.0)
        .bind(i64::MAX - 10)
        .execute(&pool)
        .await
        .expect("seed");
        let b = batch(
            (0..3)
                .map(|i| ev(&format!("b{i}"), a, "calls", max, now()))
                .collect(),
        );
        let ack = ingest(&pool, &meters(), &|_| true, &b, now(), HOUR)
            .await
            .expect("no bigint out of range");
        assert_eq!(ack.accepted, 3);
        assert_eq!(aggregate(&pool, a, "calls").await, Some((i64::MAX, 4)));
    }

    #[sqlx::test(migrations = "../migrations/billing")]
    async fn event_ids_are_per_account(pool: PgPool) {
        let (x, y) = (AccountId::new_v7(), AccountId::new_v7());
        let b = batch(vec![
            ev("order-1", x, "calls", 5, now()),
            ev("order-1", y, "calls", 7, now()),
        ]);
        let ack = ingest(&pool, &meters(), &|_| true, &b, now(), HOUR)
            .await
            .expect("ingest");
        assert_eq!((ack.accepted, ack.duplicates), (2, 0));
        assert_eq!(aggregate(&pool, x, "calls").await, Some((5, 1)));
        assert_eq!(aggregate(&pool, y, "calls").await, Some((7, 1)));
        // Y's order-1 again, later and from another batch: a duplicate of Y's, not of X's.
        let again = batch(vec![ev("order-1", y, "calls", 7, now())]);
        let ack = ingest(&pool, &meters(), &|_| true, &again, now(), HOUR)
            .await
            .expect("again");
        assert_eq!((ack.accepted, ack.duplicates), (0, 1));
    }

    #[sqlx::test(migrations = "../migrations/billing")]
    async fn an_id_with_two_contents_is_refused_not_resolved(pool: PgPool) {
        let a = AccountId::new_v7();
        // In one batch: both occurrences are refused.
        let b = batch(vec![
            ev("dup", a, "calls", 5, now()),
            ev("dup", a, "calls", 50, now()),
            ev("other", a, "calls", 1, now()),
        ]);
        let ack = ingest(&pool, &meters(), &|_| true, &b, now(), HOUR)
            .await
            .expect("ingest");
        assert_eq!(
            codes(&ack),
            vec![
                (0, "dup", "conflicting_duplicate"),
                (1, "dup", "conflicting_duplicate")
            ]
        );
        assert_eq!((ack.accepted, ack.duplicates), (1, 0));
        assert_eq!(aggregate(&pool, a, "calls").await, Some((1, 1)));
        // Across batches, a day later: the stored one stays, the other is refused.
        let later = batch(vec![
            ev("other", a, "calls", 99, now()),
            // The same content with another timestamp is an honest retry.
            ev("other", a, "calls", 1, now() + HOUR),
        ]);
        let ack = ingest(
            &pool,
            &meters(),
            &|_| true,
            &later,
            now() + HOUR * 24,
            HOUR * 48,
        )
        .await
        .expect("later");
        assert_eq!(
            codes(&ack),
            vec![
                (0, "other", "conflicting_duplicate"),
                (1, "other", "conflicting_duplicate")
            ]
        );
        let retry = batch(vec![ev("other", a, "calls", 1, now() + HOUR)]);
        let ack = ingest(
            &pool,
            &meters(),
            &|_| true,
            &retry,
            now() + HOUR * 24,
            HOUR * 48,
        )
        .await
        .expect("retry");
        assert_eq!(
            (ack.accepted, ack.duplicates, ack.rejected.len()),
            (0, 1, 0)
        );
        let reused = batch(vec![ev("other", a, "calls", 99, now())]);
        let ack = ingest(
            &pool,
            &meters(),
            &|_| true,
            &reused,
            now() + HOUR * 24,
            HOUR * 48,
        )
        .await
        .expect("reused");
        assert_eq!(codes(&ack), vec![(0, "other", "id_reused")]);
        assert_eq!(aggregate(&pool, a, "calls").await, Some((1, 1)));
    }

    #[sqlx::test(migrations = "../migrations/billing")]
    async fn the_same_batch_twice_is_stored_and_counted_once(pool: PgPool) {
        let a = AccountId::new_v7();
        let b = batch(vec![
            ev("e1", a, "calls", 3, now()),
            ev("e2", a, "calls", 4, now()),
            ev("e3", a, "jobs", 9, now()),
        ]);
        let first = ingest(&pool, &meters(), &|_| true, &b, now(), HOUR)
            .await
            .expect("first");
        assert_eq!((first.accepted, first.duplicates), (3, 0));
        let again = ingest(&pool, &meters(), &|_| true, &b, now() + HOUR, HOUR)
            .await
            .expect("retry");
        assert_eq!((again.accepted, again.duplicates), (0, 3));
        assert_eq!(
            again.aggregates, first.aggregates,
            "a retry reports the same aggregates and changes none"
        );
        assert_eq!(aggregate(&pool, a, "calls").await, Some((7, 2)));
        assert_eq!(aggregate(&pool, a, "jobs").await, Some((1, 1)));
        assert_eq!(count(&pool, "SELECT count(*) FROM usage_events").await, 3);
        assert_eq!(
            count(&pool, "SELECT count(*) FROM usage_event_ids").await,
            3
        );

        // A new batch repeating one old id stores only the new event.
        let mixed = batch(vec![
            ev("e1", a, "calls", 3, now()),
            ev("e4", a, "calls", 10, now()),
        ]);
        let ack = ingest(&pool, &meters(), &|_| true, &mixed, now(), HOUR)
            .await
            .expect("mixed");
        assert_eq!((ack.accepted, ack.duplicates), (1, 1));
        assert_eq!(aggregate(&pool, a, "calls").await, Some((17, 3)));
    }

    #[sqlx::test(migrations = "../migrations/billing")]
    async fn an_identical_repeat_within_a_batch_counts_once(pool: PgPool) {
        let a = AccountId::new_v7();
        let b = batch(vec![
            ev("dup", a, "calls", 5, now()),
            ev("dup", a, "calls", 5, now()),
            ev("other", a, "calls", 1, now()),
        ]);
        let ack = ingest(&pool, &meters(), &|_| true, &b, now(), HOUR)
            .await
            .expect("ingest");
        assert_eq!((ack.accepted, ack.duplicates), (2, 1));
        assert_eq!(aggregate(&pool, a, "calls").await, Some((6, 2)));
    }

    #[sqlx::test(migrations = "../migrations/billing")]
    async fn concurrent_deliveries_of_one_batch_count_once(pool: PgPool) {
        let a = AccountId::new_v7();
        let events = (0..200)
            .map(|i| ev(&format!("c{i}"), a, "calls", 1, now()))
            .collect();
        let b = batch(events);
        let m = meters();
        let (x, y) = tokio::join!(
            ingest(&pool, &m, &|_| true, &b, now(), HOUR),
            ingest(&pool, &m, &|_| true, &b, now(), HOUR)
        );
        let (x, y) = (x.expect("x"), y.expect("y"));
        assert_eq!(x.accepted + y.accepted, 200, "{x:?} {y:?}");
        assert_eq!(x.duplicates + y.duplicates, 200);
        assert_eq!(aggregate(&pool, a, "calls").await, Some((200, 200)));
    }

    #[sqlx::test(migrations = "../migrations/billing")]
    async fn each_aggregation_combines_batches_by_its_rule(pool: PgPool) {
        let a = AccountId::new_v7();
        let m = meters();
        let at = |h: u32| t(2026, 1, 10, h, 0);
        let first = batch(vec![
            ev("s1", a, "calls", 3, at(1)),
            ev("s2", a, "calls", 4, at(2)),
            ev("c1", a, "jobs", 100, at(1)),
            ev("m1", a, "peak", 7, at(1)),
            ev("m2", a, "peak", 2, at(2)),
            // Latest: the newest timestamp wins, not the last in the batch.
            ev("l1", a, "seats", 12, at(9)),
            ev("l2", a, "seats", 30, at(3)),
            with_prop(ev("u1", a, "users", 1, at(1)), "user", "ada"),
            with_prop(ev("u2", a, "users", 1, at(2)), "user", "bob"),
            with_prop(ev("u3", a, "users", 1, at(3)), "user", "ada"),
        ]);
        let ack = ingest(&pool, &m, &|_| true, &first, now(), HOUR)
            .await
            .expect("first");
        assert_eq!(ack.accepted, 10);
        let values = |ack: &UsageAck| -> BTreeMap<String, (i64, i64)> {
            ack.aggregates
                .iter()
                .map(|g| (g.meter.clone(), (g.value, g.events)))
                .collect()
        };
        assert_eq!(
            values(&ack),
            BTreeMap::from([
                ("calls".into(), (7, 2)),
                ("jobs".into(), (1, 1)),
                ("peak".into(), (7, 2)),
                ("seats".into(), (12, 2)),
                ("users".into(), (2, 3)),
            ])
        );
        let second = batch(vec![
            ev("s3", a, "calls", 10, at(3)),
            ev("c2", a, "jobs", 0, at(3)),
            ev("c3", a, "jobs", 5, at(3)),
            ev("m3", a, "peak", 6, at(3)),
            // Older than the stored latest: ignored for the value, counted as an event.
            ev("l3", a, "seats", 99, at(5)),
            with_prop(ev("u4", a, "users", 1, at(4)), "user", "bob"),
            with_prop(ev("u5", a, "users", 1, at(4)), "user", "cy"),
        ]);
        let ack = ingest(&pool, &m, &|_| true, &second, now(), HOUR)
            .await
            .expect("second");
        assert_eq!(
            values(&ack),
            BTreeMap::from([
                ("calls".into(), (17, 3)),
                ("jobs".into(), (3, 3)),
                ("peak".into(), (7, 3)),
                ("seats".into(), (12, 3)),
                ("users".into(), (3, 5)),
            ])
        );
        let newer = batch(vec![
            ev("l4", a, "seats", 4, at(10)),
            ev("m4", a, "peak", 8, at(10)),
        ]);
        ingest(&pool, &m, &|_| true, &newer, now(), HOUR)
            .await
            .expect("newer");
        assert_eq!(aggregate(&pool, a, "seats").await, Some((4, 4)));
        assert_eq!(aggregate(&pool, a, "peak").await, Some((8, 4)));

        // Another account's and another period's events are their own aggregates.
        let b = AccountId::new_v7();
        let other = batch(vec![
            with_prop(ev("u6", b, "users", 1, at(4)), "user", "ada"),
            with_prop(ev("u7", a, "users", 1, t(2026, 2, 1, 0, 0)), "user", "ada"),
        ]);
        ingest(&pool, &m, &|_| true, &other, t(2026, 2, 1, 0, 0), HOUR)
            .await
            .expect("other");
        assert_eq!(aggregate(&pool, b, "users").await, Some((1, 1)));
        let (jan, feb): (i64, i64) = sqlx::query_as(
            "SELECT sum(value) FILTER (WHERE period_start = '2026-01-01T00:00:00Z')::bigint,
                    sum(value) FILTER (WHERE period_start = '2026-02-01T00:00:00Z')::bigint
             FROM usage_aggregates WHERE account_id = $1 AND meter = 'users'",
        )
        .bind(a.0)
        .fetch_one(&pool)
        .await
        .expect("periods");
        assert_eq!((jan, feb), (3, 1));
    }

    #[sqlx::test(migrations = "../migrations/billing")]
    async fn the_grace_window_decides_which_period_an_event_counts_toward(pool: PgPool) {
        let a = AccountId::new_v7();
        let m = meters();
        let jan_end = t(2026, 2, 1, 0, 0);
        let in_grace = batch(vec![ev("g1", a, "calls", 5, t(2026, 1, 31, 23, 0))]);
        let ack = ingest(
            &pool,
            &m,
            &|_| true,
            &in_grace,
            jan_end + TimeDelta::minutes(30),
            HOUR,
        )
        .await
        .expect("in grace");
        assert!(ack.late.is_empty());
        assert_eq!(
            ack.aggregates[0].period_start_ms,
            t(2026, 1, 1, 0, 0).timestamp_millis()
        );

        let too_late = batch(vec![
            ev("g2", a, "calls", 7, t(2026, 1, 31, 23, 30)),
            ev("g3", a, "calls", 1, jan_end + HOUR),
        ]);
        let ack = ingest(&pool, &m, &|_| true, &too_late, jan_end + HOUR * 2, HOUR)
            .await
            .expect("late");
        assert_eq!(ack.late, vec!["g2".to_owned()]);
        assert_eq!(ack.aggregates.len(), 1, "{ack:?}");
        let feb = &ack.aggregates[0];
        assert_eq!(
            (feb.period_start_ms, feb.value, feb.events),
            (jan_end.timestamp_millis(), 8, 2)
        );
        let rows: Vec<(String, bool, DateTime<Utc>)> = sqlx::query_as(
            "SELECT event_id, late, period_start FROM usage_events ORDER BY event_id",
        )
        .fetch_all(&pool)
        .await
        .expect("rows");
        assert_eq!(
            rows,
            vec![
                ("g1".into(), false, t(2026, 1, 1, 0, 0)),
                ("g2".into(), true, jan_end),
                ("g3".into(), false, jan_end),
            ]
        );
        // January keeps only the event within grace.
        let (jan,): (i64,) = sqlx::query_as(
            "SELECT value FROM usage_aggregates WHERE account_id = $1 AND period_start = '2026-01-01T00:00:00Z'",
        )
        .bind(a.0)
        .fetch_one(&pool)
        .await
        .expect("january");
        assert_eq!(jan, 5);
    }

    #[sqlx::test(migrations = "../migrations/billing")]
    async fn events_land_in_their_monthly_partition_or_the_default_one(pool: PgPool) {
        assert_eq!(ensure_partitions(&pool, now()).await.expect("ensure"), 5);
        assert_eq!(
            ensure_partitions(&pool, now()).await.expect("again"),
            0,
            "idempotent"
        );
        let a = AccountId::new_v7();
        let b = batch(vec![
            ev("p1", a, "calls", 1, t(2026, 1, 1, 0, 0)),
            ev("p2", a, "calls", 1, t(2025, 12, 31, 23, 59)),
            ev("p3", a, "calls", 1, t(2026, 4, 30, 23, 59)),
            ev("p4", a, "calls", 1, t(2030, 6, 1, 0, 0)),
            ev("p5", a, "calls", 1, t(2020, 6, 1, 0, 0)),
        ]);
        ingest(&pool, &meters(), &|_| true, &b, now(), HOUR)
            .await
            .expect("ingest");
        let partitions = || async {
            let rows: Vec<(String, String)> = sqlx::query_as(
                "SELECT event_id, tableoid::regclass::text FROM usage_events ORDER BY event_id",
            )
            .fetch_all(&pool)
            .await
            .expect("rows");
            rows
        };
        let expect = |p4: &str| {
            vec![
                ("p1".to_owned(), "usage_events_2026_01".to_owned()),
                ("p2".into(), "usage_events_2025_12".into()),
                ("p3".into(), "usage_events_2026_04".into()),
                ("p4".into(), p4.to_owned()),
                ("p5".into(), "usage_events_default".into()),
            ]
        };
        assert_eq!(partitions().await, expect("usage_events_default"));
        // A partition created later adopts its rows from the default partition.
        assert_eq!(
            ensure_partitions(&pool, t(2030, 6, 15, 0, 0))
                .await
                .expect("2030"),
            5
        );
        assert_eq!(partitions().await, expect("usage_events_2030_06"));
    }

    #[sqlx::test(migrations = "../migrations/billing")]
    async fn current_usage_lists_every_meter_of_the_period_containing_now(pool: PgPool) {
        let a = AccountId::new_v7();
        let m = meters();
        let b = batch(vec![
            ev("k1", a, "calls", 3, now()),
            ev("k2", a, "calls", 3, t(2025, 12, 20, 0, 0)),
            ev("k3", a, "daily", 2, now()),
            ev("k4", a, "daily", 2, now() - TimeDelta::days(1)),
        ]);
        ingest(&pool, &m, &|_| true, &b, now(), TimeDelta::days(60))
            .await
            .expect("ingest");
        let usage = current(&pool, &m, a, now()).await.expect("current");
        let got: Vec<(&str, i64, i64, i64)> = usage
            .iter()
            .map(|g| (g.meter.as_str(), g.period_start_ms, g.value, g.events))
            .collect();
        let jan = t(2026, 1, 1, 0, 0).timestamp_millis();
        assert_eq!(
            got,
            vec![
                ("calls", jan, 3, 1),
                ("daily", t(2026, 1, 15, 0, 0).timestamp_millis(), 2, 1),
                ("jobs", jan, 0, 0),
                ("peak", jan, 0, 0),
                ("seats", jan, 0, 0),
                ("users", jan, 0, 0),
            ]
        );
        assert!(usage.iter().all(|g| g.account == a));
    }

    fn lease_req(
        account: AccountId,
        edge: &str,
        need: i64,
        extra: i64,
        limit: i64,
    ) -> LeaseRequest {
        LeaseRequest {
            account,
            meter: "calls".into(),
            edge_id: edge.into(),
            period_start_ms: MeterPeriod::Month.bounds(now().timestamp_millis()).0,
            need,
            extra,
            limit,
        }
    }

    #[test]
    fn a_lease_grants_the_need_all_or_nothing_plus_what_fits_of_the_extra() {
        for (leased, limit, need, extra, granted) in [
            (0, 1_000, 1, 100, 101),
            (0, 1_000, 1_001, 100, 0), // a check that will be denied takes nothing
            (950, 1_000, 40, 100, 50),
            (950, 1_000, 50, 100, 50),
            (950, 1_000, 51, 0, 0),
            (1_100, 1_000, 1, 100, 0), // already past a lowered quota
            (0, i64::MAX, 1 << 40, 1 << 40, 1 << 41),
            (i64::MAX - 1, i64::MAX, 1, 1 << 40, 1),
        ] {
            assert_eq!(
                grant_for(leased, limit, need, extra),
                granted,
                "{leased} {limit} {need} {extra}"
            );
        }
    }

    #[sqlx::test(migrations = "../migrations/billing")]
    async fn leases_start_from_the_aggregate_and_never_pass_the_quota(pool: PgPool) {
        let a = AccountId::new_v7();
        // 40 units were already reported this period.
        ingest(
            &pool,
            &meters(),
            &|_| true,
            &batch(vec![ev("u1", a, "calls", 40, now())]),
            now(),
            HOUR,
        )
        .await
        .expect("ingest");
        let g = lease(&pool, &lease_req(a, "e1", 30, 0, 100), now())
            .await
            .expect("lease");
        assert_eq!((g.granted, g.leased), (30, 70));
        let g = lease(&pool, &lease_req(a, "e2", 50, 0, 100), now())
            .await
            .expect("lease");
        assert_eq!(
            (g.granted, g.leased),
            (0, 70),
            "a need that does not fit takes nothing"
        );
        let g = lease(&pool, &lease_req(a, "e2", 10, 100, 100), now())
            .await
            .expect("lease");
        assert_eq!(
            (g.granted, g.leased),
            (30, 100),
            "the need, then only what is left of the quota"
        );
        let g = lease(&pool, &lease_req(a, "e3", 10, 0, 100), now())
            .await
            .expect("lease");
        assert_eq!((g.granted, g.leased), (0, 100));
        // e1 gives back what it did not use (and cannot give back more than it holds).
        let taken = release(
            &pool,
            &LeaseRelease {
                account: a,
                meter: "calls".into(),
                edge_id: "e1".into(),
                period_start_ms: lease_req(a, "e1", 1, 0, 1).period_start_ms,
                units: 500,
            },
            now(),
        )
        .await
        .expect("release");
        assert_eq!(taken, 30, "capped at what e1 holds");
        let g = lease(&pool, &lease_req(a, "e3", 10, 0, 100), now())
            .await
            .expect("lease");
        assert_eq!((g.granted, g.leased), (10, 80));
    }

    #[sqlx::test(migrations = "../migrations/billing")]
    async fn concurrent_leases_from_many_edges_sum_to_at_most_the_quota(pool: PgPool) {
        let a = AccountId::new_v7();
        let mut tasks = Vec::new();
        for i in 0..12 {
            let pool = pool.clone();
            tasks.push(tokio::spawn(async move {
                let edge = format!("e{}", i % 3);
                let mut got = 0;
                for _ in 0..5 {
                    got += lease(&pool, &lease_req(a, &edge, 7, 0, 200), now())
                        .await
                        .expect("lease")
                        .granted;
                }
                got
            }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await.expect("join");
        }
        assert_eq!(
            total, 196,
            "12 × 5 × 7 = 420 asked of 200: 28 needs of 7 fit, none passes the quota"
        );
        let held: i64 = count(&pool, "SELECT sum(granted)::bigint FROM usage_leases").await;
        assert_eq!(held, 196);
    }
}

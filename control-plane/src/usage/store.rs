//! SQL of usage metering (billing_prod): the ingest statement, current aggregates, partitions
//! and the lease counters.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::ids::AccountId;

/// One array per column of the ingest statement.
#[derive(Default)]
pub(crate) struct Columns {
    pub(crate) ids: Vec<String>,
    pub(crate) accounts: Vec<Uuid>,
    pub(crate) meters: Vec<String>,
    pub(crate) quantities: Vec<i64>,
    pub(crate) occurred_at: Vec<DateTime<Utc>>,
    pub(crate) period_starts: Vec<DateTime<Utc>>,
    pub(crate) period_ends: Vec<DateTime<Utc>>,
    pub(crate) properties: Vec<serde_json::Value>,
    pub(crate) late: Vec<bool>,
    pub(crate) aggregations: Vec<&'static str>,
    pub(crate) unique_values: Vec<Option<String>>,
    pub(crate) hashes: Vec<Vec<u8>>,
    /// Index in the batch of each row.
    pub(crate) index: Vec<usize>,
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
pub(crate) struct IngestRow {
    pub(crate) fresh_accounts: Vec<Uuid>,
    pub(crate) fresh_ids: Vec<String>,
    pub(crate) reused_accounts: Vec<Uuid>,
    pub(crate) reused_ids: Vec<String>,
    pub(crate) accounts: Vec<Uuid>,
    pub(crate) meters: Vec<String>,
    pub(crate) starts: Vec<DateTime<Utc>>,
    pub(crate) ends: Vec<DateTime<Utc>>,
    pub(crate) values: Vec<i64>,
    pub(crate) events: Vec<i64>,
}

/// Runs [`INGEST_SQL`] over the batch's columns.
pub(crate) async fn ingest_statement(
    pool: &PgPool,
    cols: &Columns,
    now: DateTime<Utc>,
    edge_id: &str,
    batch_id: Uuid,
) -> sqlx::Result<IngestRow> {
    sqlx::query_as(INGEST_SQL)
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
        .bind(edge_id)
        .bind(batch_id)
        .bind(&cols.hashes)
        .fetch_one(pool)
        .await
}

/// The stored aggregates of `account` for each (meter, period start): meter, value, events.
pub(crate) async fn aggregates(
    pool: &PgPool,
    account: AccountId,
    meters: &[&str],
    starts: &[DateTime<Utc>],
) -> sqlx::Result<Vec<(String, i64, i64)>> {
    sqlx::query_as(
        "SELECT a.meter, a.value, a.events
         FROM UNNEST($2::text[], $3::timestamptz[]) AS k(meter, period_start)
         JOIN usage_aggregates a
           ON a.account_id = $1 AND a.meter = k.meter AND a.period_start = k.period_start",
    )
    .bind(account.0)
    .bind(meters)
    .bind(starts)
    .fetch_all(pool)
    .await
}

/// `usage_ensure_partitions(from, months)`: how many partitions it created.
pub(crate) async fn ensure_partitions(
    pool: &PgPool,
    from: DateTime<Utc>,
    months: i32,
) -> sqlx::Result<i32> {
    let (created,): (i32,) = sqlx::query_as("SELECT usage_ensure_partitions($1, $2)")
        .bind(from)
        .bind(months)
        .fetch_one(pool)
        .await?;
    Ok(created)
}

/// What names one lease counter.
pub(crate) struct CounterKey<'a> {
    pub account: AccountId,
    pub meter: &'a str,
    pub period_start: DateTime<Utc>,
}

/// The counter of units leased out, seeded with the period's aggregate on first use, locked.
pub(crate) async fn counter_for_update(
    conn: &mut PgConnection,
    k: &CounterKey<'_>,
    now: DateTime<Utc>,
) -> sqlx::Result<i64> {
    sqlx::query(
        "INSERT INTO usage_lease_counters (account_id, meter, period_start, leased, updated_at)
         SELECT $1, $2, $3, COALESCE((SELECT value FROM usage_aggregates
                                      WHERE account_id = $1 AND meter = $2 AND period_start = $3), 0), $4
         ON CONFLICT DO NOTHING",
    )
    .bind(k.account.0)
    .bind(k.meter)
    .bind(k.period_start)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    let (leased,): (i64,) = sqlx::query_as(
        "SELECT leased FROM usage_lease_counters
          WHERE account_id = $1 AND meter = $2 AND period_start = $3 FOR UPDATE",
    )
    .bind(k.account.0)
    .bind(k.meter)
    .bind(k.period_start)
    .fetch_one(conn)
    .await?;
    Ok(leased)
}

/// Sets the counter to `leased` and adds `granted` to what `edge_id` holds.
pub(crate) async fn grant(
    conn: &mut PgConnection,
    k: &CounterKey<'_>,
    edge_id: &str,
    leased: i64,
    granted: i64,
    now: DateTime<Utc>,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE usage_lease_counters SET leased = $4, updated_at = $5
          WHERE account_id = $1 AND meter = $2 AND period_start = $3",
    )
    .bind(k.account.0)
    .bind(k.meter)
    .bind(k.period_start)
    .bind(leased)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO usage_leases (account_id, meter, period_start, edge_id, granted, returned, updated_at)
         VALUES ($1, $2, $3, $4, $5, 0, $6)
         ON CONFLICT (account_id, meter, period_start, edge_id)
         DO UPDATE SET granted = usage_leases.granted + EXCLUDED.granted, updated_at = EXCLUDED.updated_at",
    )
    .bind(k.account.0)
    .bind(k.meter)
    .bind(k.period_start)
    .bind(edge_id)
    .bind(granted)
    .bind(now)
    .execute(conn)
    .await
    .map(drop)
}

/// Takes back up to `units` of what `edge_id` was granted and has not returned yet, and
/// lowers the counter by as much; returns how many were taken.
pub(crate) async fn take_back(
    conn: &mut PgConnection,
    k: &CounterKey<'_>,
    edge_id: &str,
    units: i64,
    now: DateTime<Utc>,
) -> sqlx::Result<i64> {
    let taken: Option<(i64,)> = sqlx::query_as(
        "UPDATE usage_leases l
            SET returned = l.returned + LEAST($5, l.granted - l.returned), updated_at = $6
           FROM (SELECT returned FROM usage_leases
                  WHERE account_id = $1 AND meter = $2 AND period_start = $3 AND edge_id = $4
                  FOR UPDATE) o
          WHERE l.account_id = $1 AND l.meter = $2 AND l.period_start = $3 AND l.edge_id = $4
      RETURNING l.returned - o.returned",
    )
    .bind(k.account.0)
    .bind(k.meter)
    .bind(k.period_start)
    .bind(edge_id)
    .bind(units)
    .bind(now)
    .fetch_optional(&mut *conn)
    .await?;
    let taken = taken.map_or(0, |t| t.0);
    sqlx::query(
        "UPDATE usage_lease_counters SET leased = GREATEST(leased - $4, 0), updated_at = $5
          WHERE account_id = $1 AND meter = $2 AND period_start = $3",
    )
    .bind(k.account.0)
    .bind(k.meter)
    .bind(k.period_start)
    .bind(taken)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(taken)
}

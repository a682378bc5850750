//! Tests of ingest, periods and leases against real PostgreSQL.

use std::collections::BTreeMap;

use chrono::TimeZone;

use chrono::TimeDelta;
use tollgate_protocol::usage::{Aggregation, LeaseRelease, LeaseRequest, MeterPeriod, UsageEvent};

use super::ingest::validate;
use super::periods::place;
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

fn ev(id: &str, account: AccountId, meter: &str, quantity: i64, at: DateTime<Utc>) -> UsageEvent {
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
        assert_eq!(
            period_of(period, None, at),
            (start, end),
            "{period:?} of {at}"
        );
    }
    let last = DateTime::from_timestamp_millis(tollgate_protocol::usage::limits::TIMESTAMP_MS_MAX)
        .expect("max");
    assert_eq!(
        period_of(MeterPeriod::Year, None, last).1,
        t(10_000, 1, 1, 0, 0)
    );
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
        let p = place(MeterPeriod::Month, None, at, now, HOUR);
        assert_eq!(p.late, late, "now {now}");
        let expected = if late {
            (jan_end, t(2026, 3, 1, 0, 0))
        } else {
            (t(2026, 1, 1, 0, 0), jan_end)
        };
        assert_eq!((p.start, p.end), expected, "now {now}");
    }
    // The future is the edge's business: its own period.
    let future = place(MeterPeriod::Day, None, t(2026, 1, 20, 0, 0), now(), HOUR);
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
    let ack = ingest(
        &pool,
        &meters(),
        &|acct| (acct == a).then_some(None),
        &b,
        now(),
        HOUR,
    )
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
    let ack = ingest(&pool, &meters(), &|_| Some(None), &b, now(), HOUR)
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
    let ack = ingest(&pool, &meters(), &|_| Some(None), &b, now(), HOUR)
        .await
        .expect("ingest");
    assert_eq!((ack.accepted, ack.duplicates), (2, 0));
    assert_eq!(aggregate(&pool, x, "calls").await, Some((5, 1)));
    assert_eq!(aggregate(&pool, y, "calls").await, Some((7, 1)));
    // Y's order-1 again, later and from another batch: a duplicate of Y's, not of X's.
    let again = batch(vec![ev("order-1", y, "calls", 7, now())]);
    let ack = ingest(&pool, &meters(), &|_| Some(None), &again, now(), HOUR)
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
    let ack = ingest(&pool, &meters(), &|_| Some(None), &b, now(), HOUR)
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
        &|_| Some(None),
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
        &|_| Some(None),
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
        &|_| Some(None),
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
    let first = ingest(&pool, &meters(), &|_| Some(None), &b, now(), HOUR)
        .await
        .expect("first");
    assert_eq!((first.accepted, first.duplicates), (3, 0));
    let again = ingest(&pool, &meters(), &|_| Some(None), &b, now() + HOUR, HOUR)
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
    let ack = ingest(&pool, &meters(), &|_| Some(None), &mixed, now(), HOUR)
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
    let ack = ingest(&pool, &meters(), &|_| Some(None), &b, now(), HOUR)
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
        ingest(&pool, &m, &|_| Some(None), &b, now(), HOUR),
        ingest(&pool, &m, &|_| Some(None), &b, now(), HOUR)
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
    let ack = ingest(&pool, &m, &|_| Some(None), &first, now(), HOUR)
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
    let ack = ingest(&pool, &m, &|_| Some(None), &second, now(), HOUR)
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
    ingest(&pool, &m, &|_| Some(None), &newer, now(), HOUR)
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
    ingest(
        &pool,
        &m,
        &|_| Some(None),
        &other,
        t(2026, 2, 1, 0, 0),
        HOUR,
    )
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
        &|_| Some(None),
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
    let ack = ingest(
        &pool,
        &m,
        &|_| Some(None),
        &too_late,
        jan_end + HOUR * 2,
        HOUR,
    )
    .await
    .expect("late");
    assert_eq!(ack.late, vec!["g2".to_owned()]);
    assert_eq!(ack.aggregates.len(), 1, "{ack:?}");
    let feb = &ack.aggregates[0];
    assert_eq!(
        (feb.period_start_ms, feb.value, feb.events),
        (jan_end.timestamp_millis(), 8, 2)
    );
    let rows: Vec<(String, bool, DateTime<Utc>)> =
        sqlx::query_as("SELECT event_id, late, period_start FROM usage_events ORDER BY event_id")
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
    ingest(&pool, &meters(), &|_| Some(None), &b, now(), HOUR)
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
    ingest(&pool, &m, &|_| Some(None), &b, now(), TimeDelta::days(60))
        .await
        .expect("ingest");
    let usage = current(&pool, &m, a, None, now()).await.expect("current");
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

fn lease_req(account: AccountId, edge: &str, need: i64, extra: i64, limit: i64) -> LeaseRequest {
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
        &|_| Some(None),
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

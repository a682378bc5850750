//! The outbox relay against real PostgreSQL and Redis: failures are retried with backoff and
//! never dropped; a redelivered billing event changes nothing.

mod common;

use chrono::{DateTime, TimeDelta, Utc};
use common::Harness;
use serde_json::json;
use tollgate_control_plane::clock::Clock;
use tollgate_control_plane::outbox::{self, relay_once};

#[tokio::test]
async fn a_failing_outbox_event_is_retried_with_backoff_and_never_dropped() {
    let h = Harness::new().await;
    let now = h.clock.now();
    let mut conn = h.state.cf.acquire().await.expect("conn");
    // A schedule event whose payload billing cannot read (negative amount).
    let bad = json!({
        "subscription_id": uuid::Uuid::now_v7(), "account_id": uuid::Uuid::now_v7(), "plan_key": "pro",
        "amount_minor": -1, "currency": "USD", "interval": "month", "next_bill_at": null,
        "status": "active", "revision": 1
    });
    let id = outbox::enqueue(&mut conn, outbox::Topic::BillingSchedule, &bad, now)
        .await
        .expect("enqueue");
    drop(conn);

    assert_eq!(relay_once(&h.state).await.expect("relay"), 1);
    let row = |h: &Harness| {
        let pool = h.state.cf.clone();
        async move {
            let r: (i32, Option<String>, DateTime<Utc>, Option<DateTime<Utc>>) = sqlx::query_as(
                "SELECT attempts, last_error, available_at, processed_at FROM outbox WHERE id = $1",
            )
            .bind(id)
            .fetch_one(&pool)
            .await
            .expect("row");
            r
        }
    };
    let (attempts, error, available_at, processed) = row(&h).await;
    assert_eq!(attempts, 1);
    assert!(
        error
            .expect("error recorded")
            .contains("negative schedule amount")
    );
    assert!(processed.is_none(), "a failed event stays pending");
    assert_eq!(
        available_at - now,
        TimeDelta::seconds(1),
        "first retry after 1 s"
    );
    assert_eq!(
        relay_once(&h.state).await.expect("relay"),
        0,
        "not due before its backoff ends"
    );

    h.clock.advance(TimeDelta::seconds(1));
    assert_eq!(relay_once(&h.state).await.expect("relay"), 1);
    let (attempts, _, available_at, _) = row(&h).await;
    assert_eq!(attempts, 2);
    assert_eq!(
        available_at - h.clock.now(),
        TimeDelta::seconds(2),
        "backoff doubles"
    );
    let schedules: (i64,) = sqlx::query_as("SELECT count(*) FROM billing_schedules")
        .fetch_one(&h.state.billing)
        .await
        .expect("count");
    assert_eq!(schedules.0, 0, "nothing half-applied in billing");
    h.finish().await;
}

#[tokio::test]
async fn facts_are_published_to_the_stream_and_l2_only_after_they_change() {
    let h = Harness::new().await;
    let (account, _) = h.sign_up("stream@example.com").await;
    let mut redis = h.state.redis.clone();
    h.drain_outbox().await;
    let l2: String = redis::cmd("GET")
        .arg(
            h.state
                .redis_keys
                .facts(&account.parse().expect("account id")),
        )
        .query_async(&mut redis)
        .await
        .expect("l2 written");
    let facts: serde_json::Value = serde_json::from_str(&l2).expect("json");
    assert_eq!(facts["version"], 1);
    // The stream holds an event for this account.
    let id: tollgate_protocol::AccountId = account.parse().expect("id");
    let entries: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
        .arg(h.state.redis_keys.stream_of(&id))
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(200)
        .query_async(&mut redis)
        .await
        .expect("xrevrange");
    let ours = entries
        .ids
        .iter()
        .filter_map(|e| e.get::<String>("event"))
        .filter(|ev| ev.contains(&account))
        .count();
    assert_eq!(ours, 1, "one publish for one change");
    // A recompute with unchanged facts publishes nothing more.
    let mut conn = h.state.cf.acquire().await.expect("conn");
    tollgate_control_plane::outbox::account_changed(&mut conn, id, h.clock.now())
        .await
        .expect("enqueue");
    drop(conn);
    h.drain_outbox().await;
    let published: (i64,) =
        sqlx::query_as("SELECT count(*) FROM outbox WHERE topic = 'entitlements.publish'")
            .fetch_one(&h.state.cf)
            .await
            .expect("count");
    assert_eq!(published.0, 1);
    h.finish().await;
}

#[tokio::test]
async fn a_redis_restored_from_an_older_snapshot_is_repaired_with_what_changed_since() {
    let h = Harness::new().await;
    let (account, _) = h.sign_up("restore@example.com").await;
    let id: tollgate_protocol::AccountId = account.parse().expect("id");
    h.drain_outbox().await;
    let mut redis = h.state.redis.clone();
    let l2_key = h.state.redis_keys.facts(&id);
    let v1: String = redis::cmd("GET")
        .arg(&l2_key)
        .query_async(&mut redis)
        .await
        .expect("v1");
    // The account changes (v2) and is published.
    sqlx::query("UPDATE accounts SET standing = 'banned' WHERE id = $1")
        .bind(id.0)
        .execute(&h.state.cf)
        .await
        .expect("ban");
    let mut conn = h.state.cf.acquire().await.expect("conn");
    tollgate_control_plane::outbox::account_changed(&mut conn, id, h.clock.now())
        .await
        .expect("enqueue");
    drop(conn);
    h.drain_outbox().await;
    assert_eq!(
        tollgate_control_plane::entitlements::repair_redis_if_behind(&h.state)
            .await
            .expect("check"),
        0,
        "Redis holds everything published: nothing to repair"
    );
    // Redis comes back from a snapshot taken before v2: the account's shard stream is older,
    // L2 holds v1.
    let _: i64 = redis::cmd("DEL")
        .arg(h.state.redis_keys.stream_of(&id))
        .query_async(&mut redis)
        .await
        .expect("del");
    let old_id = format!("{}-0", chrono::Utc::now().timestamp_millis() - 10_000);
    let _: String = redis::cmd("XADD")
        .arg(h.state.redis_keys.stream_of(&id))
        .arg(&old_id)
        .arg("event")
        .arg("{}")
        .query_async(&mut redis)
        .await
        .expect("old entry");
    let _: () = redis::cmd("SET")
        .arg(&l2_key)
        .arg(&v1)
        .query_async(&mut redis)
        .await
        .expect("old l2");
    let queued = tollgate_control_plane::entitlements::repair_redis_if_behind(&h.state)
        .await
        .expect("repair");
    assert!(queued >= 1, "the changed account is republished: {queued}");
    h.drain_outbox().await;
    let l2: String = redis::cmd("GET")
        .arg(&l2_key)
        .query_async(&mut redis)
        .await
        .expect("l2");
    let facts: serde_json::Value = serde_json::from_str(&l2).expect("json");
    assert_eq!(
        (facts["version"].as_i64(), facts["standing"].as_str()),
        (Some(2), Some("banned")),
        "L2 holds the current facts again"
    );
    assert_eq!(
        tollgate_control_plane::entitlements::repair_redis_if_behind(&h.state)
            .await
            .expect("again"),
        0,
        "repaired once"
    );
    h.finish().await;
}

#[tokio::test]
async fn delivered_outbox_rows_and_inbox_ids_are_pruned_after_the_retention_window_and_pending_ones_never()
 {
    let h = Harness::with_config(&[("outbox_retention_hours", "2")]).await;
    // Delivered rows of three topics: a sign-up (recompute, publish) and a free plan
    // (recompute, publish, billing schedule: an inbox id in billing).
    let (_, token) = h.sign_up("prune@example.com").await;
    let r = h
        .post(
            "/v1/checkout",
            Some(&token),
            Some("free-1"),
            r#"{"plan":"free"}"#,
        )
        .await;
    assert_eq!(r.status, axum::http::StatusCode::CREATED, "{:?}", r.json);
    h.drain_outbox().await;
    let delivered = h
        .count("SELECT count(*) FROM outbox WHERE processed_at IS NOT NULL")
        .await;
    assert!(delivered >= 4, "{delivered}");
    let inbox = |h: &Harness| {
        let pool = h.state.billing.clone();
        async move {
            let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM inbox")
                .fetch_one(&pool)
                .await
                .expect("inbox");
            n
        }
    };
    assert_eq!(inbox(&h).await, 1);
    // A row that keeps failing is never delivered: it must outlive any window.
    let mut conn = h.state.cf.acquire().await.expect("conn");
    let bad = json!({
        "subscription_id": uuid::Uuid::now_v7(), "account_id": uuid::Uuid::now_v7(), "plan_key": "pro",
        "amount_minor": -1, "currency": "USD", "interval": "month", "next_bill_at": null,
        "status": "active", "revision": 1
    });
    outbox::enqueue(
        &mut conn,
        outbox::Topic::BillingSchedule,
        &bad,
        h.clock.now(),
    )
    .await
    .expect("enqueue");
    drop(conn);
    h.drain_outbox().await;

    // Inside the window nothing goes.
    h.clock.advance(TimeDelta::minutes(119));
    tollgate_control_plane::maintenance::run(&h.state)
        .await
        .expect("maintenance");
    assert_eq!(
        h.count("SELECT count(*) FROM outbox WHERE processed_at IS NOT NULL")
            .await,
        delivered
    );
    assert_eq!(inbox(&h).await, 1);

    // Past it, every delivered row and inbox id goes; the failing row stays.
    h.clock.advance(TimeDelta::minutes(2));
    tollgate_control_plane::maintenance::run(&h.state)
        .await
        .expect("maintenance");
    assert_eq!(
        h.count("SELECT count(*) FROM outbox WHERE processed_at IS NOT NULL")
            .await,
        0
    );
    assert_eq!(inbox(&h).await, 0);
    assert_eq!(
        h.count("SELECT count(*) FROM outbox WHERE processed_at IS NULL")
            .await,
        1,
        "the undelivered row is kept"
    );
    let metrics = h.get("/metrics", None).await;
    let text = String::from_utf8(metrics.bytes).expect("utf-8");
    assert!(
        text.contains(&format!(
            "tollgate_cp_outbox_pruned_total {}",
            delivered + 1
        )),
        "{text}"
    );
    h.finish().await;
}

#[tokio::test]
async fn the_facts_lane_never_waits_behind_other_topics_and_carries_the_change_time() {
    let h = Harness::new().await;
    let (account, _) = h.sign_up("lanes@example.com").await;
    let id: tollgate_protocol::AccountId = account.parse().expect("id");
    h.drain_outbox().await;
    let now = h.clock.now();
    // A billing schedule claimed first (older) and failing, then a change of the account.
    let mut conn = h.state.cf.acquire().await.expect("conn");
    let bad = json!({
        "subscription_id": uuid::Uuid::now_v7(), "account_id": id.0, "plan_key": "pro",
        "amount_minor": -1, "currency": "USD", "interval": "month", "next_bill_at": null,
        "status": "active", "revision": 1
    });
    let schedule = outbox::enqueue(&mut conn, outbox::Topic::BillingSchedule, &bad, now)
        .await
        .expect("enqueue schedule");
    sqlx::query("UPDATE accounts SET standing = 'banned' WHERE id = $1")
        .bind(id.0)
        .execute(&mut *conn)
        .await
        .expect("ban");
    let written_us = chrono::Utc::now().timestamp_micros();
    outbox::account_changed(&mut conn, id, now)
        .await
        .expect("enqueue change");
    drop(conn);

    let facts = outbox::Lane::only(
        "facts",
        &[
            outbox::Topic::EntitlementsRecompute,
            outbox::Topic::EntitlementsPublish,
        ],
    );
    let rest = outbox::Lane::except(
        "rest",
        &[
            outbox::Topic::EntitlementsRecompute,
            outbox::Topic::EntitlementsPublish,
        ],
    );
    let state = &h.state;
    let pass = |lane| async move { outbox::relay_lane_once(state, lane).await.expect("relay") };
    // The facts lane takes the recompute (and publishes it right after it commits, so its
    // publish row is done too); never the schedule.
    assert_eq!(pass(facts).await, 1);
    assert_eq!(pass(facts).await, 0);
    let attempts: (i32,) = sqlx::query_as("SELECT attempts FROM outbox WHERE id = $1")
        .bind(schedule)
        .fetch_one(&h.state.cf)
        .await
        .expect("schedule row");
    assert_eq!(attempts.0, 0, "the facts lane left the schedule alone");
    // The rest takes the schedule (which fails and waits for its retry), nothing of facts.
    assert_eq!(pass(rest).await, 1);
    assert_eq!(pass(rest).await, 0);

    // The published change event says when the change was written (before the relay ran).
    let mut redis = h.state.redis.clone();
    let entries: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
        .arg(h.state.redis_keys.stream_of(&id))
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut redis)
        .await
        .expect("xrevrange");
    let event: tollgate_protocol::ChangeEvent =
        serde_json::from_str(&entries.ids[0].get::<String>("event").expect("event field"))
            .expect("change event");
    assert_eq!(event.facts.account_id, id);
    assert_eq!(
        event.facts.standing,
        tollgate_protocol::AccountStanding::Banned
    );
    let changed = event.changed_at_us.expect("the change's time");
    assert!(
        changed >= written_us && changed <= event.committed_at_ms * 1_000 + 999,
        "written {written_us} <= changed {changed} <= published {}",
        event.committed_at_ms
    );
    h.finish().await;
}

#[tokio::test]
async fn a_change_enqueued_by_the_previous_version_without_its_time_is_still_published() {
    let h = Harness::new().await;
    let (account, _) = h.sign_up("old-row@example.com").await;
    let id: tollgate_protocol::AccountId = account.parse().expect("id");
    h.drain_outbox().await;
    // A change, announced with the payload an older control plane wrote: the account alone.
    let mut conn = h.state.cf.acquire().await.expect("conn");
    sqlx::query("UPDATE accounts SET standing = 'banned' WHERE id = $1")
        .bind(id.0)
        .execute(&mut *conn)
        .await
        .expect("ban");
    let row = outbox::enqueue(
        &mut conn,
        outbox::Topic::EntitlementsRecompute,
        &json!({ "account_id": id.0 }),
        h.clock.now(),
    )
    .await
    .expect("enqueue");
    drop(conn);
    h.drain_outbox().await;
    let (processed, attempts): (bool, i32) =
        sqlx::query_as("SELECT processed_at IS NOT NULL, attempts FROM outbox WHERE id = $1")
            .bind(row)
            .fetch_one(&h.state.cf)
            .await
            .expect("outbox row");
    assert_eq!(
        (processed, attempts),
        (true, 1),
        "the old row was applied on its first attempt"
    );
    let mut redis = h.state.redis.clone();
    let entries: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
        .arg(h.state.redis_keys.stream_of(&id))
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut redis)
        .await
        .expect("xrevrange");
    let event: tollgate_protocol::ChangeEvent =
        serde_json::from_str(&entries.ids[0].get::<String>("event").expect("event field"))
            .expect("change event");
    assert_eq!(
        (event.facts.account_id, event.facts.standing),
        (id, tollgate_protocol::AccountStanding::Banned)
    );
    assert_eq!(event.changed_at_us, None, "no change time was carried");
    h.finish().await;
}

/// The change events of `id` in its shard stream, oldest first, with their stream ids.
async fn events_of(
    h: &Harness,
    id: &tollgate_protocol::AccountId,
) -> Vec<(String, tollgate_protocol::ChangeEvent)> {
    let mut redis = h.state.redis.clone();
    let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(h.state.redis_keys.stream_of(id))
        .arg("-")
        .arg("+")
        .query_async(&mut redis)
        .await
        .expect("xrange");
    entries
        .ids
        .iter()
        .filter_map(|e| {
            let ev: tollgate_protocol::ChangeEvent =
                serde_json::from_str(&e.get::<String>("event")?).ok()?;
            (ev.facts.account_id == *id).then(|| (e.id.clone(), ev))
        })
        .collect()
}

async fn ban_directly(h: &Harness, id: tollgate_protocol::AccountId) {
    let mut conn = h.state.cf.acquire().await.expect("conn");
    sqlx::query("UPDATE accounts SET standing = 'banned' WHERE id = $1")
        .bind(id.0)
        .execute(&mut *conn)
        .await
        .expect("ban");
    outbox::account_changed(&mut conn, id, h.clock.now())
        .await
        .expect("enqueue change");
}

async fn pending_publishes(h: &Harness) -> i64 {
    h.count(
        "SELECT count(*) FROM outbox WHERE topic = 'entitlements.publish' AND processed_at IS NULL",
    )
    .await
}

#[tokio::test]
async fn recomputed_changes_reach_the_stream_in_the_relay_pass_that_recomputed_them_once() {
    let h = Harness::new().await;
    let mut ids = Vec::new();
    for email in ["fast-1@example.com", "fast-2@example.com"] {
        let (account, _) = h.sign_up(email).await;
        ids.push(account.parse::<tollgate_protocol::AccountId>().expect("id"));
    }
    h.drain_outbox().await;
    let before: Vec<usize> = {
        let mut n = Vec::new();
        for id in &ids {
            n.push(events_of(&h, id).await.len());
        }
        n
    };
    // Two changes, one pass of two rows: each is published right after the pass commits.
    for id in &ids {
        ban_directly(&h, *id).await;
    }
    assert_eq!(relay_once(&h.state).await.expect("relay"), 2);
    for (id, before) in ids.iter().zip(before) {
        let events = events_of(&h, id).await;
        assert_eq!(events.len(), before + 1, "published once, in that pass");
        let (stream_id, event) = events.last().expect("published");
        assert_eq!(
            event.facts.standing,
            tollgate_protocol::AccountStanding::Banned
        );
        // The position is recorded for repairs, as the relay's publish records it.
        let (ms, seq): (Option<i64>, Option<i64>) = sqlx::query_as(
            "SELECT published_stream_ms, published_stream_seq FROM entitlement_facts WHERE account_id = $1",
        )
        .bind(id.0)
        .fetch_one(&h.state.cf)
        .await
        .expect("facts row");
        assert_eq!(
            format!("{}-{}", ms.expect("ms"), seq.expect("seq")),
            *stream_id
        );
    }
    // The durable publish rows are done: nothing is left to relay, even once they would be due.
    assert_eq!(pending_publishes(&h).await, 0);
    h.clock
        .advance(tollgate_control_plane::entitlements::PUBLISH_FALLBACK_AFTER);
    assert_eq!(relay_once(&h.state).await.expect("relay"), 0);
    for id in &ids {
        assert_eq!(
            events_of(&h, id).await.last().map(|e| e.1.facts.version),
            Some(2)
        );
    }
    h.finish().await;
}

#[tokio::test]
async fn a_publish_whose_fast_path_failed_is_relayed_once_its_fallback_falls_due() {
    let h = Harness::new().await;
    let (account, _) = h.sign_up("fast-fail@example.com").await;
    let id: tollgate_protocol::AccountId = account.parse().expect("id");
    h.drain_outbox().await;
    // The shard stream's key holds a string: every XADD to it fails (WRONGTYPE).
    let mut redis = h.state.redis.clone();
    let stream = h.state.redis_keys.stream_of(&id);
    let _: () = redis::cmd("DEL")
        .arg(&stream)
        .query_async(&mut redis)
        .await
        .expect("del");
    let _: () = redis::cmd("SET")
        .arg(&stream)
        .arg("not a stream")
        .query_async(&mut redis)
        .await
        .expect("set");
    ban_directly(&h, id).await;
    assert_eq!(
        relay_once(&h.state).await.expect("relay"),
        1,
        "the recompute commits"
    );
    assert_eq!(
        pending_publishes(&h).await,
        1,
        "the failed fast path left its row"
    );
    let _: () = redis::cmd("DEL")
        .arg(&stream)
        .query_async(&mut redis)
        .await
        .expect("del");
    assert_eq!(
        relay_once(&h.state).await.expect("relay"),
        0,
        "not before its fallback delay"
    );
    h.clock
        .advance(tollgate_control_plane::entitlements::PUBLISH_FALLBACK_AFTER);
    assert_eq!(relay_once(&h.state).await.expect("relay"), 1);
    let events = events_of(&h, &id).await;
    assert_eq!(events.len(), 1, "published once, by the relay");
    assert_eq!(
        events[0].1.facts.standing,
        tollgate_protocol::AccountStanding::Banned
    );
    assert_eq!(pending_publishes(&h).await, 0);
    h.finish().await;
}

//! Usage metering through the real router, real PostgreSQL and Redis: edges post batches with
//! the edge token and the batch id as Idempotency-Key; edges and customers read the current
//! period's aggregates.

mod common;

use axum::http::{Method, StatusCode};
use common::Harness;
use serde_json::{Value, json};
use tollgate_protocol::usage::UsageAck;

const EDGE: &str = "test-edge-token";
/// The harness clock: 2026-01-15T12:00:00Z.
const NOW_MS: i64 = 1_768_478_400_000;

fn batch(id: &str, account: &str, events: &[(&str, i64)]) -> String {
    let events: Vec<Value> = events
        .iter()
        .map(|(event, quantity)| {
            json!({
                "id": event,
                "account": account,
                "meter": "api_calls",
                "quantity": quantity,
                "timestamp_ms": NOW_MS - 60_000,
            })
        })
        .collect();
    json!({ "batch_id": id, "edge_id": "edge-1", "events": events }).to_string()
}

const BATCH_ID: &str = "0190f2a4-0000-7000-8000-000000000001";

#[tokio::test]
async fn edges_post_batches_with_the_edge_token_and_the_batch_id_as_key() {
    let h = Harness::new().await;
    let (account, _) = h.sign_up("ada@example.com").await;
    let body = batch(BATCH_ID, &account, &[("e1", 5), ("e2", 7), ("e1", 5)]);
    let path = tollgate_protocol::internal_api::USAGE_PATH;

    h.post(path, None, Some(BATCH_ID), &body)
        .await
        .assert_problem(StatusCode::UNAUTHORIZED, "missing_credentials");
    h.post(path, Some("wrong"), Some(BATCH_ID), &body)
        .await
        .assert_problem(StatusCode::UNAUTHORIZED, "invalid_token");
    h.post(path, Some(EDGE), None, &body)
        .await
        .assert_problem(StatusCode::BAD_REQUEST, "idempotency_key_required");
    h.post(
        path,
        Some(EDGE),
        Some("0190f2a4-0000-7000-8000-000000000002"),
        &body,
    )
    .await
    .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_mismatch");
    h.post(path, Some(EDGE), Some(BATCH_ID), "{\"batch_id\":")
        .await
        .assert_problem(StatusCode::BAD_REQUEST, "malformed_json");
    // Poison is refused event by event, never as a batch: the ack lists each with its code.
    let poison = "0190f2a4-0000-7000-8000-000000000003";
    let mut bad: Value = serde_json::from_str(&batch(
        poison,
        &account,
        &[("neg", -1), ("huge", i64::MAX), ("stranger", 1)],
    ))
    .expect("json");
    bad["events"][2]["account"] = json!(uuid::Uuid::now_v7());
    let r = h
        .post(path, Some(EDGE), Some(poison), &bad.to_string())
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let ack: UsageAck = serde_json::from_value(r.json.clone()).expect("ack");
    let codes: Vec<&str> = ack.rejected.iter().map(|r| r.code.as_str()).collect();
    assert_eq!(
        codes,
        ["invalid_quantity", "invalid_quantity", "unknown_account"]
    );
    assert_eq!(ack.accepted, 0);
    let events: Vec<(String, i64)> = (0..10_001).map(|i| (format!("big{i}"), 1)).collect();
    let events: Vec<(&str, i64)> = events.iter().map(|(e, q)| (e.as_str(), *q)).collect();
    h.post(
        path,
        Some(EDGE),
        Some(BATCH_ID),
        &batch(BATCH_ID, &account, &events),
    )
    .await
    .assert_problem(StatusCode::PAYLOAD_TOO_LARGE, "batch_too_large");
    let (stored,): (i64,) = sqlx::query_as("SELECT count(*) FROM usage_events")
        .fetch_one(&h.state.billing)
        .await
        .expect("count");
    assert_eq!(stored, 0, "refused requests store nothing");

    let r = h.post(path, Some(EDGE), Some(BATCH_ID), &body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let ack: UsageAck = serde_json::from_value(r.json.clone()).expect("ack");
    assert_eq!((ack.accepted, ack.duplicates), (2, 1));
    assert_eq!(ack.aggregates.len(), 1);
    assert_eq!((ack.aggregates[0].value, ack.aggregates[0].events), (12, 2));

    let again = h.post(path, Some(EDGE), Some(BATCH_ID), &body).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.json);
    let again: UsageAck = serde_json::from_value(again.json).expect("ack");
    assert_eq!((again.accepted, again.duplicates), (0, 3));
    assert_eq!(again.aggregates, ack.aggregates);

    let metrics = h.get("/metrics", None).await;
    let text = String::from_utf8(metrics.bytes).expect("utf-8");
    for line in [
        "tollgate_cp_usage_events_accepted_total 2",
        "tollgate_cp_usage_events_duplicates_total 4",
        "tollgate_cp_usage_events_rejected_total 3",
        "tollgate_cp_usage_ingest_duration_seconds_count 3",
    ] {
        assert!(text.contains(line), "{line} missing from\n{text}");
    }
    h.finish().await;
}

#[tokio::test]
async fn edges_and_customers_read_the_current_period() {
    let h = Harness::new().await;
    let (ada, ada_token) = h.sign_up("ada@example.com").await;
    let (bob, bob_token) = h.sign_up("bob@example.com").await;
    let r = h
        .post(
            tollgate_protocol::internal_api::USAGE_PATH,
            Some(EDGE),
            Some(BATCH_ID),
            &batch(BATCH_ID, &ada, &[("e1", 5), ("e2", 7)]),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);

    let me = h.get("/v1/usage", Some(&ada_token)).await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.json);
    assert_eq!(
        me.json,
        json!({
            "account": ada,
            "meters": [{
                "meter": "api_calls",
                "aggregation": "sum",
                "period": { "start": "2026-01-01T00:00:00Z", "end": "2026-02-01T00:00:00Z" },
                "value": 12,
                "events": 2,
            }],
        })
    );
    let other = h.get("/v1/usage", Some(&bob_token)).await;
    assert_eq!(other.status, StatusCode::OK, "{}", other.json);
    assert_eq!(other.json["account"], bob.as_str());
    assert_eq!(other.json["meters"][0]["value"], 0, "{}", other.json);
    h.get("/v1/usage", None)
        .await
        .assert_problem(StatusCode::UNAUTHORIZED, "missing_credentials");
    h.get("/v1/usage", Some("tg_0000"))
        .await
        .assert_problem(StatusCode::UNAUTHORIZED, "invalid_token");
    h.call(
        Method::POST,
        "/v1/usage",
        Some(&ada_token),
        None,
        Some("{}"),
    )
    .await
    .assert_problem(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");

    let ada_id = ada.parse().expect("account id");
    let path = tollgate_protocol::internal_api::usage_path(&ada_id);
    h.get(&path, None)
        .await
        .assert_problem(StatusCode::UNAUTHORIZED, "missing_credentials");
    h.get(&path, Some(&ada_token))
        .await
        .assert_problem(StatusCode::UNAUTHORIZED, "invalid_token");
    let edge = h.get(&path, Some(EDGE)).await;
    assert_eq!(edge.status, StatusCode::OK, "{}", edge.json);
    let usage: tollgate_protocol::usage::AccountUsage =
        serde_json::from_value(edge.json).expect("account usage");
    assert_eq!(usage.account, ada_id);
    assert_eq!(
        usage
            .aggregates
            .iter()
            .map(|a| (a.meter.as_str(), a.value, a.events))
            .collect::<Vec<_>>(),
        vec![("api_calls", 12, 2)]
    );
    let unknown = tollgate_protocol::AccountId::new_v7();
    h.get(
        &tollgate_protocol::internal_api::usage_path(&unknown),
        Some(EDGE),
    )
    .await
    .assert_problem(StatusCode::NOT_FOUND, "unknown_account");
    h.get("/internal/v1/accounts/not-a-uuid/usage", Some(EDGE))
        .await
        .assert_problem(StatusCode::NOT_FOUND, "not_found");
    h.finish().await;
}

#[tokio::test]
async fn edges_lease_quota_through_the_internal_api_and_give_it_back() {
    let h = Harness::new().await;
    let (account, _) = h.sign_up("lease@example.com").await;
    let start = tollgate_protocol::usage::MeterPeriod::Month
        .bounds(NOW_MS)
        .0;
    let lease = |need: i64, extra: i64| {
        json!({"account": account, "meter": "api_calls", "edge_id": "edge-1",
               "period_start_ms": start, "need": need, "extra": extra, "limit": 150})
        .to_string()
    };
    let path = tollgate_protocol::internal_api::LEASE_PATH;
    h.post(path, None, None, &lease(10, 0))
        .await
        .assert_problem(StatusCode::UNAUTHORIZED, "missing_credentials");
    for bad in [
        lease(0, 0),
        lease(1, -1),
        lease(i64::MAX, 0),
        lease(1, i64::MAX),
    ] {
        h.post(path, Some(EDGE), None, &bad)
            .await
            .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "invalid_lease");
    }
    let r = h.post(path, Some(EDGE), None, &lease(151, 100)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        (r.json["granted"].as_i64(), r.json["leased"].as_i64()),
        (Some(0), Some(0)),
        "a need past the quota takes nothing"
    );
    let r = h.post(path, Some(EDGE), None, &lease(100, 0)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        (r.json["granted"].as_i64(), r.json["leased"].as_i64()),
        (Some(100), Some(100))
    );
    let r = h.post(path, Some(EDGE), None, &lease(1, 100)).await;
    assert_eq!(r.json["granted"], 50, "only what is left of the 150");
    let release = |units: i64| {
        json!({"account": account, "meter": "api_calls", "edge_id": "edge-1",
               "period_start_ms": start, "units": units})
        .to_string()
    };
    let release_path = tollgate_protocol::internal_api::LEASE_RELEASE_PATH;
    h.post(release_path, Some(EDGE), None, &release(-1))
        .await
        .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "invalid_lease");
    let r = h.post(release_path, Some(EDGE), None, &release(30)).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = h.post(path, Some(EDGE), None, &lease(30, 100)).await;
    assert_eq!(r.json["granted"], 30, "what edge-1 gave back");
}

/// The demo rules with one more meter, `gpu_minutes`, that only this bundle declares.
fn with_gpu_minutes() -> String {
    tollgate_rules::DEMO_SOURCE.replacen(
        "feature api_calls:",
        "feature gpu_minutes: metered per month sum\nfeature api_calls:",
        1,
    )
}

fn signed(source: &str, version: u64, key: &tollgate_rules::bundle::SigningKey) -> Vec<u8> {
    let file = tollgate_rules::lang::SourceFile {
        name: "rules.tg".into(),
        text: source.to_owned(),
    };
    let compiled = tollgate_rules::compiler::compile(&file)
        .unwrap_or_else(|d| panic!("{}", d[0].render(&file)));
    tollgate_rules::bundle::build(&compiled, source, version, 0)
        .expect("build")
        .sign(key)
}

#[tokio::test]
async fn usage_of_a_meter_only_the_canary_declares_is_counted_and_an_unknown_one_refused() {
    let h = Harness::new().await;
    let (account, _) = h.sign_up("canary@example.com").await;
    let r = h
        .admin_upload(signed(tollgate_rules::DEMO_SOURCE, 1, &h.key))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
    let r = h
        .admin(Method::POST, "/admin/v1/bundles/1/promote", None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let r = h.admin_upload(signed(&with_gpu_minutes(), 2, &h.key)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
    let r = h
        .admin(
            Method::POST,
            "/admin/v1/bundles/2/activate",
            Some(r#"{"canary_percent":50}"#),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    // A canary edge accepted usage of the new meter (and an older edge something no bundle
    // meters any more).
    let id = "0190f2a4-0000-7000-8000-000000000009";
    let mut body: Value =
        serde_json::from_str(&batch(id, &account, &[("gpu-1", 7), ("gone-1", 1)])).expect("json");
    body["events"][0]["meter"] = json!("gpu_minutes");
    body["events"][1]["meter"] = json!("retired_meter");
    let r = h
        .post(
            tollgate_protocol::internal_api::USAGE_PATH,
            Some(EDGE),
            Some(id),
            &body.to_string(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let ack: UsageAck = serde_json::from_value(r.json.clone()).expect("ack");
    assert_eq!(ack.accepted, 1, "{}", r.json);
    let gpu = ack
        .aggregates
        .iter()
        .find(|a| a.meter == "gpu_minutes")
        .expect("the canary's meter is aggregated");
    assert_eq!((gpu.value, gpu.events), (7, 1));
    assert_eq!(
        ack.rejected
            .iter()
            .map(|r| (r.id.as_str(), r.code.as_str()))
            .collect::<Vec<_>>(),
        [("gone-1", "unknown_meter")],
        "refused, for the edge to dead-letter: never stored uncounted"
    );
    h.finish().await;
}

//! Outbound lifecycle events over real PostgreSQL and a real HTTP receiver: every change is
//! delivered, signed the Standard Webhooks way, at least once, retried while the receiver is
//! down, given up after the schedule, readable in the delivery log and replayable.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::http::{HeaderMap, Method, StatusCode};
use chrono::{TimeDelta, TimeZone, Utc};
use common::Harness;
use tokio::sync::Mutex;
use tollgate_control_plane::clock::Clock;
use tollgate_control_plane::events::{self, RETRY_AFTER};

#[derive(Clone, Default)]
struct Receiver {
    down: Arc<AtomicBool>,
    got: Arc<Mutex<Vec<(HeaderMap, String)>>>,
}

async fn receive(
    axum::extract::State(r): axum::extract::State<Receiver>,
    headers: HeaderMap,
    body: String,
) -> StatusCode {
    if r.down.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    r.got.lock().await.push((headers, body));
    StatusCode::NO_CONTENT
}

async fn start_receiver() -> (Receiver, String) {
    let r = Receiver::default();
    let app = axum::Router::new()
        .route("/hooks", axum::routing::post(receive))
        .with_state(r.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hooks", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (r, url)
}

async fn add_endpoint(h: &Harness, url: &str, events: &str) -> String {
    let r = h
        .admin(
            Method::POST,
            "/admin/v1/webhook-endpoints",
            Some(&format!(r#"{{"url":"{url}","events":{events}}}"#)),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json);
    r.str("/secret")
}

#[tokio::test]
async fn lifecycle_events_are_signed_retried_while_the_receiver_is_down_and_replayable() {
    let h = Harness::new().await;
    let (receiver, url) = start_receiver().await;
    let secret = add_endpoint(&h, &url, "[]").await;
    // An endpoint nobody listens on, for the subscription events only.
    let dead = add_endpoint(
        &h,
        "http://127.0.0.1:9/hooks",
        r#"["subscription.created"]"#,
    )
    .await;
    assert!(dead.starts_with("whsec_"));
    for (body, code) in [
        (r#"{"url":"ftp://x/y"}"#, "invalid_url"),
        (r#"{"url":"not a url"}"#, "invalid_url"),
        (
            r#"{"url":"http://x/y","events":["invoice.exploded"]}"#,
            "unknown_event_type",
        ),
    ] {
        h.admin(Method::POST, "/admin/v1/webhook-endpoints", Some(body))
            .await
            .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, code);
    }

    // The receiver is down while a customer buys pro and its renewal is declined.
    receiver.down.store(true, Ordering::SeqCst);
    let (_, token) = h.sign_up("events@example.com").await;
    h.add_card(&token, "pm_card_visa").await;
    let r = h
        .post(
            "/v1/checkout",
            Some(&token),
            Some("buy"),
            r#"{"plan":"pro"}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json);
    let r = h
        .post(
            "/v1/payment-methods",
            Some(&token),
            Some("failing"),
            r#"{"payment_method":"pm_card_chargeCustomerFail","make_default":true}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json);
    let renewal = Utc
        .with_ymd_and_hms(2026, 2, 15, 13, 5, 0)
        .single()
        .expect("time");
    h.advance_to(renewal).await;
    assert!(receiver.got.lock().await.is_empty());
    let log = h
        .admin(
            Method::GET,
            "/admin/v1/webhook-deliveries?status=pending",
            None,
        )
        .await;
    let pending = log.json["data"].as_array().expect("log").clone();
    assert!(!pending.is_empty());
    let to_receiver: Vec<_> = pending
        .iter()
        .filter(|d| d["url"] == url.as_str())
        .collect();
    assert!(
        to_receiver
            .iter()
            .all(|d| d["attempts"] == 1 && d["last_status"] == 503),
        "{to_receiver:?}"
    );

    // Back up: the next attempt, 5 s later, delivers everything.
    receiver.down.store(false, Ordering::SeqCst);
    h.advance_to(renewal + TimeDelta::seconds(6)).await;
    let got = receiver.got.lock().await.clone();
    let key = events::secret_key(&secret).expect("key");
    let mut ids = BTreeSet::new();
    let mut types = BTreeSet::new();
    for (headers, body) in &got {
        let header = |n: &str| {
            headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .expect(n)
                .to_owned()
        };
        let (id, ts, sig) = (
            header("webhook-id"),
            header("webhook-timestamp"),
            header("webhook-signature"),
        );
        let ts: i64 = ts.parse().expect("timestamp");
        assert_eq!(
            sig,
            events::sign(&key, &id, ts, body.as_bytes()),
            "signed over id.timestamp.body"
        );
        assert_ne!(sig, events::sign(&key, &id, ts + 1, body.as_bytes()));
        let v: serde_json::Value = serde_json::from_str(body).expect("json");
        types.insert(v["type"].as_str().expect("type").to_owned());
        ids.insert(id);
    }
    assert_eq!(ids.len(), got.len(), "each event once so far");
    for t in [
        "subscription.created",
        "subscription.updated",
        "invoice.finalized",
        "invoice.payment_failed",
        "dunning.changed",
    ] {
        assert!(types.contains(t), "{t} in {types:?}");
    }
    let log = h
        .admin(
            Method::GET,
            "/admin/v1/webhook-deliveries?status=pending",
            None,
        )
        .await;
    assert!(
        log.json["data"]
            .as_array()
            .expect("log")
            .iter()
            .all(|d| d["url"] != url.as_str()),
        "nothing left for the receiver"
    );

    // A replay sends the same event (same webhook-id) again.
    let log = h
        .admin(
            Method::GET,
            "/admin/v1/webhook-deliveries?status=delivered",
            None,
        )
        .await;
    let first = log.json["data"][0].clone();
    let replayed = h
        .admin(
            Method::POST,
            &format!(
                "/admin/v1/webhook-deliveries/{}/replay",
                first["id"].as_str().expect("id")
            ),
            None,
        )
        .await;
    assert_eq!(replayed.status, StatusCode::OK, "{:?}", replayed.json);
    h.settle().await;
    let got = receiver.got.lock().await.clone();
    let again = got
        .last()
        .expect("replayed")
        .0
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .expect("id")
        .to_owned();
    assert_eq!(again, first["event_id"].as_str().expect("event id"));

    // The dead endpoint is tried on the schedule, then given up: ten attempts over ~3 days.
    let mut at = h.clock.now();
    for wait in RETRY_AFTER {
        at += wait + TimeDelta::seconds(1);
        h.advance_to(at).await;
    }
    let log = h
        .admin(
            Method::GET,
            "/admin/v1/webhook-deliveries?status=failed",
            None,
        )
        .await;
    let failed = log.json["data"].as_array().expect("log").clone();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["attempts"], 10);
    assert_eq!(failed[0]["type"], "subscription.created");
    assert!(
        failed[0]["last_error"]
            .as_str()
            .is_some_and(|e| !e.is_empty())
    );
    h.admin(
        Method::POST,
        &format!(
            "/admin/v1/webhook-deliveries/{}/replay",
            uuid::Uuid::now_v7()
        ),
        None,
    )
    .await
    .assert_problem(StatusCode::NOT_FOUND, "not_found");
    h.finish().await;
}

//! The Braintree adapter against recorded GraphQL exchanges (`tests/fixtures/braintree/`),
//! replayed by a local HTTP server that checks every request: vaulting, charging, declines,
//! Braintree's error classes, a provider that times out after charging, a charge driven
//! again, refunds — and a PayPal purchase and renewal through the whole control plane.

mod common;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use base64::Engine;
use common::{Harness, t};
use serde_json::Value;
use tollgate_control_plane::gateways::braintree::{BraintreeGateway, Config};
use tollgate_control_plane::gateways::{
    GatewayAmount, GatewayError, MethodKind, PaymentGateway, PaymentRequest, PaymentStatus,
    Presence, SetupStatus,
};

const PUBLIC_KEY: &str = "bt_public_test";
const PRIVATE_KEY: &str = "bt_private_test";
const PM: &str = "cGF5bWVudG1ldGhvZF9wcF9rOHF6eDI";
const KEY: &str = "tg_attempt_0190d2c4e5f67a8b9c0d1e2f3a4b5c6d";

#[derive(Debug, Clone, serde::Deserialize)]
struct Exchange {
    operation: String,
    variables: Value,
    response: Value,
    #[serde(default)]
    http_status: Option<u16>,
    #[serde(default)]
    delay_ms: Option<u64>,
}

/// A local Braintree that answers with one recorded conversation, in order.
struct Replay {
    url: String,
    left: Arc<Mutex<VecDeque<Exchange>>>,
    failures: Arc<Mutex<Vec<String>>>,
}

/// `expected` with `"*"` matching any value.
fn matches(expected: &Value, actual: &Value) -> bool {
    match (expected, actual) {
        (Value::String(s), _) if s == "*" => true,
        (Value::Object(e), Value::Object(a)) => {
            e.len() == a.len()
                && e.iter()
                    .all(|(k, v)| a.get(k).is_some_and(|av| matches(v, av)))
        }
        (Value::Array(e), Value::Array(a)) => {
            e.len() == a.len() && e.iter().zip(a).all(|(e, a)| matches(e, a))
        }
        _ => expected == actual,
    }
}

/// `mutation ChargePayPal($input: …)` → `ChargePayPal`.
fn operation_of(query: &str) -> String {
    query
        .trim_start()
        .trim_start_matches("mutation")
        .trim_start_matches("query")
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

impl Replay {
    async fn start(fixture: &str) -> Replay {
        let path = format!(
            "{}/tests/fixtures/braintree/{fixture}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(&path).expect("fixture");
        let exchanges: Vec<Exchange> = serde_json::from_str(&text).expect("fixture json");
        let left = Arc::new(Mutex::new(VecDeque::from(exchanges)));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let (l, f) = (left.clone(), failures.clone());
        let app = axum::Router::new().route(
            "/graphql",
            axum::routing::post(move |headers: HeaderMap, body: String| {
                let (left, failures) = (l.clone(), f.clone());
                async move { answer(&left, &failures, &headers, &body).await }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/graphql", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Replay {
            url,
            left,
            failures,
        }
    }

    fn gateway(&self) -> BraintreeGateway {
        BraintreeGateway::new(Config {
            url: self.url.clone(),
            public_key: PUBLIC_KEY.into(),
            private_key: PRIVATE_KEY.to_owned().into(),
            merchant_accounts: Default::default(),
            timeout: Duration::from_millis(500),
        })
        .expect("gateway")
    }

    /// Every exchange was asked for, and nothing else.
    fn finish(&self) {
        let failures = self.failures.lock().expect("failures").clone();
        assert!(failures.is_empty(), "unexpected requests: {failures:#?}");
        let left: Vec<String> = self
            .left
            .lock()
            .expect("left")
            .iter()
            .map(|e| e.operation.clone())
            .collect();
        assert!(left.is_empty(), "never asked: {left:?}");
    }
}

async fn answer(
    left: &Mutex<VecDeque<Exchange>>,
    failures: &Mutex<Vec<String>>,
    headers: &HeaderMap,
    body: &str,
) -> axum::response::Response {
    let fail = |why: String| {
        failures.lock().expect("failures").push(why.clone());
        (StatusCode::IM_A_TEAPOT, why).into_response()
    };
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{PUBLIC_KEY}:{PRIVATE_KEY}"))
    );
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    if header("authorization") != basic {
        return fail("no Basic authorization with the API keys".into());
    }
    let version = header("braintree-version");
    let dated = version.len() == 10
        && version.char_indices().all(|(i, c)| {
            if i == 4 || i == 7 {
                c == '-'
            } else {
                c.is_ascii_digit()
            }
        });
    if !dated {
        return fail(format!("Braintree-Version {version:?} is not YYYY-MM-DD"));
    }
    if header("content-type") != "application/json" {
        return fail("Content-Type is not application/json".into());
    }
    let Ok(req) = serde_json::from_str::<Value>(body) else {
        return fail(format!("not JSON: {body}"));
    };
    let query = req["query"].as_str().unwrap_or_default();
    let operation = operation_of(query);
    let Some(next) = left.lock().expect("left").pop_front() else {
        return fail(format!("{operation} after the recording ended"));
    };
    if next.operation != operation || !matches(&next.variables, &req["variables"]) {
        return fail(format!(
            "expected {} {}, got {operation} {}",
            next.operation, next.variables, req["variables"]
        ));
    }
    if let Some(ms) = next.delay_ms {
        // The provider holding its answer back past the client's timeout.
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let status = StatusCode::from_u16(next.http_status.unwrap_or(200)).expect("status");
    (status, axum::Json(next.response)).into_response()
}

fn request<'a>(key: &'a str) -> PaymentRequest<'a> {
    PaymentRequest {
        customer: "Y3VzdG9tZXJfNzEzMjU",
        payment_method: PM,
        amount: GatewayAmount {
            amount_minor: 2900,
            currency: "USD",
        },
        presence: Presence::OffSession,
        idempotency_key: key,
        description: "Tollgate invoice",
    }
}

#[tokio::test]
async fn a_billing_agreement_is_vaulted_to_a_new_customer() {
    let replay = Replay::start("vault").await;
    let g = replay.gateway();
    let customer = g
        .create_customer("ada@example.com", "Test", "tg_customer_1")
        .await
        .expect("customer");
    assert_eq!(customer.id, "Y3VzdG9tZXJfNzEzMjU");
    let vaulted = g
        .setup_payment_method(
            &customer.id,
            "fake-paypal-billing-agreement-nonce",
            "tg_pm_1",
        )
        .await
        .expect("vault");
    assert_eq!(vaulted.status, SetupStatus::Succeeded);
    assert_eq!(vaulted.kind, MethodKind::Paypal);
    assert_eq!(vaulted.payment_method_id, PM);
    assert_eq!(vaulted.payer_email.as_deref(), Some("payer@example.com"));
    replay.finish();
}

#[tokio::test]
async fn refused_vaults_are_told_apart() {
    let replay = Replay::start("vault_refused").await;
    let g = replay.gateway();
    let customer = "Y3VzdG9tZXJfNzEzMjU";
    let consumed = g
        .setup_payment_method(customer, "fake-consumed-nonce", "k1")
        .await;
    assert!(
        matches!(consumed, Err(GatewayError::NotFound(_))),
        "{consumed:?}"
    );
    let declined = g
        .setup_payment_method(customer, "fake-processor-declined-visa-nonce", "k2")
        .await
        .expect("answered");
    match declined.status {
        SetupStatus::Failed(d) => {
            assert_eq!(d.decline_code.as_deref(), Some("do_not_honor"));
            assert_eq!(d.message, "Do Not Honor");
        }
        other => panic!("{other:?}"),
    }
    let card = g
        .setup_payment_method(customer, "fake-valid-nonce", "k3")
        .await;
    assert!(matches!(card, Err(GatewayError::Invalid(_))), "{card:?}");
    replay.finish();
}

#[tokio::test]
async fn a_renewal_is_charged_as_a_recurring_payment_under_its_order_id() {
    let replay = Replay::start("charge_ok").await;
    let out = replay
        .gateway()
        .create_payment(request(KEY))
        .await
        .expect("charge");
    assert_eq!(out.status, PaymentStatus::Succeeded);
    assert_eq!(out.payment_intent_id, "dHJhbnNhY3Rpb25fOHZ6cWs3");
    replay.finish();
}

#[tokio::test]
async fn a_processor_decline_keeps_its_code() {
    let replay = Replay::start("charge_declined").await;
    let out = replay
        .gateway()
        .create_payment(request(KEY))
        .await
        .expect("answered");
    match out.status {
        PaymentStatus::Failed(d) => {
            assert_eq!(
                (d.code.as_str(), d.decline_code.as_deref()),
                ("card_declined", Some("insufficient_funds"))
            );
        }
        other => panic!("{other:?}"),
    }
    replay.finish();
}

#[tokio::test]
async fn a_charge_driven_again_finds_the_first_and_charges_nothing() {
    // The recording has no charge: asking for one fails the test.
    let replay = Replay::start("charge_again").await;
    let out = replay
        .gateway()
        .create_payment(request(KEY))
        .await
        .expect("found");
    assert_eq!(out.status, PaymentStatus::Succeeded);
    assert_eq!(out.payment_intent_id, "dHJhbnNhY3Rpb25fOHZ6cWs3");
    replay.finish();
    // The same key for another amount is refused, not charged.
    let replay = Replay::start("charge_again").await;
    let mut other = request(KEY);
    other.amount.amount_minor = 4900;
    let refused = replay.gateway().create_payment(other).await;
    assert!(
        matches!(refused, Err(GatewayError::Invalid(_))),
        "{refused:?}"
    );
    replay.finish();
}

#[tokio::test]
async fn a_provider_that_charges_then_times_out_reports_the_charge() {
    let replay = Replay::start("charge_timeout_charged").await;
    let out = replay
        .gateway()
        .create_payment(request(KEY))
        .await
        .expect("found after the timeout");
    assert_eq!(out.status, PaymentStatus::Succeeded);
    replay.finish();

    // Not found either: unknown, so the attempt stays pending and is driven again later.
    let replay = Replay::start("charge_timeout_unknown").await;
    let out = replay.gateway().create_payment(request(KEY)).await;
    assert!(matches!(out, Err(GatewayError::Unavailable(_))), "{out:?}");
    replay.finish();
}

#[tokio::test]
async fn braintrees_duplicate_check_answers_with_the_first_charge() {
    let replay = Replay::start("charge_duplicate").await;
    let out = replay
        .gateway()
        .create_payment(request(KEY))
        .await
        .expect("charge");
    assert_eq!(
        (out.payment_intent_id.as_str(), out.status),
        ("dHJhbnNhY3Rpb25fMWZpcnN0", PaymentStatus::Succeeded)
    );
    replay.finish();
}

#[tokio::test]
async fn error_classes_and_http_failures_map_to_retry_or_refuse() {
    let replay = Replay::start("provider_errors").await;
    let g = replay.gateway();
    for expect_retry in [true, true, false, true] {
        let out = g.create_payment(request(KEY)).await;
        match (expect_retry, &out) {
            (true, Err(GatewayError::Unavailable(_))) | (false, Err(GatewayError::Invalid(_))) => {}
            _ => panic!("retry={expect_retry}: {out:?}"),
        }
    }
    replay.finish();
}

#[tokio::test]
async fn a_partial_refund_of_a_settled_payment_is_keyed_by_its_order_id() {
    let replay = Replay::start("refund").await;
    let r = replay
        .gateway()
        .refund(
            "dHJhbnNhY3Rpb25fOHZ6cWs3",
            1000,
            "tg_refund_0190d2c4e5f67a8b9c0d1e2f3a4b5c6d",
        )
        .await
        .expect("refund");
    assert_eq!((r.id.as_str(), r.amount_minor), ("cmVmdW5kXzNrcDk", 1000));
    replay.finish();
}

#[tokio::test]
async fn a_paypal_purchase_and_its_renewal_go_through_braintree() {
    let replay = Replay::start("purchase_and_renewal").await;
    let h = Harness::with_config(&[
        ("braintree_public_key", PUBLIC_KEY),
        ("braintree_private_key", PRIVATE_KEY),
        ("braintree_url", replay.url.as_str()),
        ("braintree_timeout_ms", "2000"),
    ])
    .await;
    let (_, token) = h.sign_up("ada@example.com").await;
    let r = h
        .post(
            "/v1/payment-methods/paypal",
            Some(&token),
            Some("pp"),
            r#"{"nonce":"fake-paypal-billing-agreement-nonce"}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json);
    assert_eq!(r.json["payment_method"]["kind"], "paypal");
    assert_eq!(r.json["payment_method"]["payer_email"], "payer@example.com");
    let r = h
        .post(
            "/v1/checkout",
            Some(&token),
            Some("buy"),
            r#"{"plan":"pro"}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json);
    assert_eq!(r.json["subscription"]["status"], "active");
    h.settle().await;
    h.advance_to(t(2026, 2, 15, 13, 5)).await;
    let invoices = h.get("/v1/invoices", Some(&token)).await;
    assert_eq!(
        invoices.json["data"][0]["status"], "paid",
        "{:?}",
        invoices.json
    );
    let (processor, provider_payment): (String, String) = sqlx::query_as(
        "SELECT processor, provider_payment_id FROM charge_attempts WHERE status = 'succeeded'",
    )
    .fetch_one(&h.state.billing)
    .await
    .expect("attempt");
    assert_eq!(
        (processor.as_str(), provider_payment.as_str()),
        ("braintree", "dHJhbnNhY3Rpb25fOHZ6cWs3")
    );
    // Every payment, the checkout's and the renewal's, is money held at Braintree.
    let cash: Vec<(String,)> = sqlx::query_as(
        "SELECT e.ledger_account FROM ledger_entries e
         JOIN ledger_transactions t ON t.id = e.transaction_id
         WHERE t.kind = 'payment' AND e.ledger_account LIKE 'cash:%' ORDER BY e.id",
    )
    .fetch_all(&h.state.billing)
    .await
    .expect("ledger");
    assert!(!cash.is_empty());
    assert!(cash.iter().all(|(a,)| a == "cash:braintree"), "{cash:?}");
    paypal_renewal_disputed_by_webhooks(&h).await;
    replay.finish();
    h.finish().await;
}

#[tokio::test]
async fn braintree_down_while_adding_paypal_stores_nothing_and_the_retry_adds_it_once() {
    let replay = Replay::start("vault_after_an_outage").await;
    let h = Harness::with_config(&[
        ("braintree_public_key", PUBLIC_KEY),
        ("braintree_private_key", PRIVATE_KEY),
        ("braintree_url", replay.url.as_str()),
    ])
    .await;
    let (_, token) = h.sign_up("ada@example.com").await;
    let add = || {
        h.post(
            "/v1/payment-methods/paypal",
            Some(&token),
            Some("pp"),
            r#"{"nonce":"fake-paypal-billing-agreement-nonce"}"#,
        )
    };
    add().await.assert_problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "payment_provider_unavailable",
    );
    assert_eq!(h.count("SELECT count(*) FROM payment_methods").await, 0);
    let r = add().await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json);
    assert_eq!(h.count("SELECT count(*) FROM payment_methods").await, 1);
    replay.finish();
    h.finish().await;
}

async fn braintree_webhook(h: &Harness, signature: &str, payload: &str) -> common::Resp {
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("bt_signature", signature)
        .append_pair("bt_payload", payload)
        .finish();
    let req = axum::http::Request::builder()
        .method(axum::http::Method::POST)
        .uri("/webhooks/braintree")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(axum::body::Body::from(body))
        .expect("request");
    h.send(req).await
}

/// The renewal Braintree charged (transaction `8vzqk7`) is disputed by the PayPal buyer; the
/// news arrives as signed Braintree webhooks: forged ones change nothing, a replay is a
/// duplicate, the newest state wins whatever order they arrive in.
async fn paypal_renewal_disputed_by_webhooks(h: &Harness) {
    use tollgate_control_plane::clock::Clock;
    use tollgate_control_plane::ledger::LedgerAccount;
    use tollgate_control_plane::provider_events::braintree::{
        DisputeNotice, KeyPair, sample_dispute,
    };
    let key = KeyPair {
        public_key: PUBLIC_KEY.into(),
        private_key: PRIVATE_KEY.into(),
    };
    let notice = |status: &str| DisputeNotice {
        id: "bt_dispute_1".into(),
        status: status.into(),
        reason: Some("fraud".into()),
        amount_minor: 2900,
        currency: "USD".into(),
        transaction_id: Some("8vzqk7".into()),
        transaction_order_id: None,
        received_date: None,
    };
    let (account,): (uuid::Uuid,) =
        sqlx::query_as("SELECT account_id FROM charge_attempts LIMIT 1")
            .fetch_one(&h.state.billing)
            .await
            .expect("account");
    let account = tollgate_control_plane::ids::AccountId::from(account);
    let balance = |of: LedgerAccount| async move {
        let mut conn = h.state.billing.acquire().await.expect("conn");
        tollgate_control_plane::ledger::balance(
            &mut conn,
            account,
            &of,
            tollgate_control_plane::money::Currency::USD,
        )
        .await
        .expect("balance")
    };
    let cash = || LedgerAccount::cash("braintree").expect("cash");
    let t1 = h.clock.now();

    // Signed with another private key: refused, nothing stored.
    let forger = KeyPair {
        public_key: PUBLIC_KEY.into(),
        private_key: "not the private key".into(),
    };
    let (sig, payload) = sample_dispute(&forger, "dispute_opened", t1, &notice("open"));
    let r = braintree_webhook(h, &sig, &payload).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.json);
    assert_eq!(r.json["code"], "invalid_signature");
    assert_eq!(h.count("SELECT count(*) FROM provider_events").await, 0);

    // Opened: the money is withheld from what Braintree holds for us.
    let (sig, payload) = sample_dispute(&key, "dispute_opened", t1, &notice("open"));
    let r = braintree_webhook(h, &sig, &payload).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json);
    assert_eq!(r.json["applied"], "dispute", "{:?}", r.json);
    assert_eq!(balance(LedgerAccount::Disputed).await, 2900);
    assert_eq!(balance(cash()).await, 2 * 2900 - 2900);
    let r = braintree_webhook(h, &sig, &payload).await;
    assert_eq!(r.json["duplicate"], true, "a redelivery: {:?}", r.json);

    // Won (newest), then a late `disputed` sent before it: the money is back and stays back.
    let (sig, payload) = sample_dispute(
        &key,
        "dispute_won",
        t1 + chrono::TimeDelta::days(20),
        &notice("won"),
    );
    let r = braintree_webhook(h, &sig, &payload).await;
    assert_eq!(r.json["applied"], "dispute", "{:?}", r.json);
    let (sig, payload) = sample_dispute(
        &key,
        "dispute_disputed",
        t1 + chrono::TimeDelta::days(5),
        &notice("disputed"),
    );
    let r = braintree_webhook(h, &sig, &payload).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json);
    assert_eq!(r.json["applied"], "none", "older news: {:?}", r.json);
    let (d, history) =
        tollgate_control_plane::disputes::find(&h.state, "braintree", "bt_dispute_1")
            .await
            .expect("read")
            .expect("stored");
    assert_eq!(
        d.status,
        tollgate_control_plane::disputes::DisputeStatus::Won
    );
    assert_eq!(history.len(), 2, "{history:?}");
    assert_eq!(balance(LedgerAccount::Disputed).await, 0);
    assert_eq!(balance(cash()).await, 2 * 2900);

    // Braintree's endpoint check: answered for a well-formed challenge only.
    let r = h
        .get(
            "/webhooks/braintree?bt_challenge=0123456789abcdef0123",
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let text = String::from_utf8_lossy(&r.bytes);
    assert!(
        text.starts_with("bt_public_test|") && text.len() == "bt_public_test|".len() + 40,
        "{text}"
    );
    let r = h
        .get(
            "/webhooks/braintree?bt_challenge=PHNpZ25lZCBwYXlsb2FkPg==",
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

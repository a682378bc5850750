//! Property test over the edge's routes: generated requests (every route and then some, every
//! method, malformed, oversized, wrong-typed, negative, huge and unicode parameters, headers
//! and bodies, valid and invalid tokens) sent over a real TCP connection to the real router.
//! Every answer is a 2xx/3xx/4xx — never a 5xx, never a dropped connection — and every 4xx of
//! Tollgate's own API is problem+json with a `code`.

use std::sync::OnceLock;
use std::time::Duration;

use axum::Router;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use proptest::prelude::*;
use serde_json::{Value, json};
use tollgate_edge::auth::Tokens;
use tollgate_edge::state::{EdgeOptions, EdgeState};
use tollgate_edge::upstream::{L2, Upstream};
use tollgate_edge::usage::UsageOptions;
use tollgate_protocol::usage::{
    AccountUsage, LeaseGrant, LeaseRequest, MeterAggregate, MeterPeriod, UsageAck, UsageBatch,
};
use tollgate_protocol::{AccountFacts, AccountId, SubscriptionFacts, SubscriptionStatus};

const SERVICE: &str = "service-token-property-1";
const OPERATOR: &str = "operator-token-property-1";

/// One account the stub control plane knows (pro), so generated requests reach the metered
/// and lease paths too.
fn known() -> AccountId {
    static KNOWN: OnceLock<AccountId> = OnceLock::new();
    *KNOWN.get_or_init(AccountId::new_v7)
}

fn pro(account: AccountId) -> AccountFacts {
    AccountFacts {
        subscription: Some(SubscriptionFacts {
            plan: "pro".into(),
            status: SubscriptionStatus::Active,
            current_period_end_ms: 0,
            billing_anchor_ms: None,
        }),
        ..AccountFacts::new(account, 1)
    }
}

async fn facts(Path(id): Path<AccountId>) -> axum::response::Response {
    if id == known() {
        axum::Json(pro(id)).into_response()
    } else {
        StatusCode::NOT_FOUND.into_response()
    }
}

async fn facts_batch(
    axum::Json(req): axum::Json<tollgate_protocol::FactsRequest>,
) -> axum::Json<tollgate_protocol::FactsBatch> {
    axum::Json(tollgate_protocol::FactsBatch {
        facts: req
            .accounts
            .into_iter()
            .filter(|a| *a == known())
            .map(pro)
            .collect(),
    })
}

fn aggregate(account: AccountId) -> MeterAggregate {
    let (start, end) = MeterPeriod::Month.bounds(tollgate_edge::now_ms());
    MeterAggregate {
        account,
        meter: "api_calls".into(),
        period_start_ms: start,
        period_end_ms: end,
        value: 0,
        events: 0,
    }
}

async fn usage(axum::Json(batch): axum::Json<UsageBatch>) -> axum::Json<UsageAck> {
    axum::Json(UsageAck {
        batch_id: batch.batch_id,
        accepted: batch.events.len() as u64,
        duplicates: 0,
        late: vec![],
        rejected: vec![],
        aggregates: vec![],
    })
}

async fn account_usage(Path(id): Path<AccountId>) -> axum::Json<AccountUsage> {
    axum::Json(AccountUsage {
        account: id,
        aggregates: vec![aggregate(id)],
    })
}

async fn lease(axum::Json(req): axum::Json<LeaseRequest>) -> axum::Json<LeaseGrant> {
    let granted = if req.need <= req.limit { req.need } else { 0 };
    axum::Json(LeaseGrant {
        granted,
        leased: granted,
    })
}

/// The edge under test, served on loopback, and a client for it (one per process).
fn target() -> &'static (tokio::runtime::Runtime, String, reqwest::Client) {
    static TARGET: OnceLock<(tokio::runtime::Runtime, String, reqwest::Client)> = OnceLock::new();
    TARGET.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let url = rt.block_on(async {
            let cp = Router::new()
                .route("/internal/v1/accounts/{id}/facts", get(facts))
                .route("/internal/v1/facts", post(facts_batch))
                .route("/internal/v1/usage", post(usage))
                .route("/internal/v1/accounts/{id}/usage", get(account_usage))
                .route("/internal/v1/leases", post(lease))
                .route(
                    "/internal/v1/leases/release",
                    post(|| async { StatusCode::NO_CONTENT }),
                );
            let cp_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let cp_url = format!("http://{}", cp_listener.local_addr().expect("addr"));
            tokio::spawn(async move {
                let _ = axum::serve(cp_listener, cp).await;
            });
            let upstream = Upstream::new(
                &cp_url,
                secrecy::SecretString::from("t".to_owned()),
                Duration::from_secs(2),
                L2::default(),
            )
            .expect("upstream");
            let mut opts = EdgeOptions::new("property");
            opts.tokens = Tokens {
                service: vec![SERVICE.into()],
                operator: vec![OPERATOR.into()],
            };
            let state = EdgeState::new(opts, upstream);
            let program = tollgate_rules::demo_program();
            let loaded = tollgate_rules::host::RulesEngine::new()
                .expect("engine")
                .load_program(&program)
                .expect("load");
            state.install_rules(1, program, loaded);
            let dir = std::env::temp_dir()
                .join(format!("tollgate-edge-property-{}", uuid::Uuid::now_v7()));
            let store = state
                .open_usage(&UsageOptions::in_data_dir(&dir, 64 << 20, 1 << 20))
                .expect("usage");
            let (_stop, stop_rx) = tokio::sync::watch::channel(false);
            std::mem::forget(_stop);
            tokio::spawn(tollgate_edge::usage::flush_loop(
                state.clone(),
                store,
                Duration::from_millis(50),
                stop_rx,
            ));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let url = format!("http://{}", listener.local_addr().expect("addr"));
            tokio::spawn(async move {
                let _ = axum::serve(listener, tollgate_edge::app(state)).await;
            });
            url
        });
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .expect("client");
        (rt, url, client)
    })
}

/// Strings that have broken parsers before: empty, huge, unicode, NUL, numbers past i64,
/// ids that look right.
fn nasty() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just(known().to_string()),
        Just(AccountId::new_v7().to_string()),
        Just("api_calls".to_owned()),
        Just("sso".to_owned()),
        Just("seats".to_owned()),
        Just("9223372036854775807".to_owned()),
        Just("9223372036854775808".to_owned()),
        Just("-9223372036854775808".to_owned()),
        Just("1e309".to_owned()),
        Just("-1".to_owned()),
        Just("1099511627777".to_owned()),
        Just("0".to_owned()),
        Just("ce:/svc:X:7".to_owned()),
        Just("\u{0}".to_owned()),
        Just("💥🧾 ünïcødé".to_owned()),
        Just("x".repeat(5_000)),
        Just("..%2F..%2F".to_owned()),
        "\\PC{0,40}",
    ]
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!(i64::MAX)),
        Just(json!(i64::MIN)),
        Just(json!(u64::MAX)),
        Just(json!(-1)),
        Just(json!(0)),
        Just(json!(1)),
        Just(json!(1u64 << 40)),
        Just(json!((1u64 << 40) + 1)),
        Just(json!(1.5)),
        Just(json!(1e300)),
        any::<i64>().prop_map(|n| json!(n)),
    ]
}

const KEYS: &[&str] = &[
    "id",
    "account",
    "meter",
    "quantity",
    "timestamp",
    "properties",
    "checks",
    "feature",
    "context",
    "targetingKey",
    "specversion",
    "source",
    "type",
    "subject",
    "data",
    "time",
    "datacontenttype",
    "x",
];

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        nasty().prop_map(Value::String),
        Just(json!("1.0")),
        Just(json!("2026-11-21T10:00:00Z")),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..8).prop_map(|kv| {
                Value::Object(kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
            }),
        ]
    })
}

#[derive(Debug, Clone)]
enum Body {
    None,
    Json(Value),
    Bytes(Vec<u8>),
    /// Past every body bound the edge has.
    Huge,
}

fn body() -> impl Strategy<Value = Body> {
    prop_oneof![
        Just(Body::None),
        json_value().prop_map(Body::Json),
        prop::collection::vec(any::<u8>(), 0..256).prop_map(Body::Bytes),
        Just(Body::Huge),
        // Well-formed usage with hostile values.
        (nasty(), number()).prop_map(|(account, quantity)| Body::Json(json!([
            {"account": account, "meter": "api_calls", "quantity": quantity},
            {"account": known().to_string(), "meter": "api_calls", "quantity": quantity},
        ]))),
        (nasty(), number()).prop_map(|(feature, quantity)| Body::Json(json!({"checks": [
            {"account": known().to_string(), "feature": feature, "quantity": quantity},
        ]}))),
    ]
}

/// A path segment, percent-encoded.
fn segment() -> BoxedStrategy<String> {
    nasty()
        .prop_map(|s| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>())
        .boxed()
}

fn path() -> impl Strategy<Value = String> {
    let seg = segment();
    prop_oneof![
        Just("/v1/check".to_owned()),
        Just("/v1/usage".to_owned()),
        Just("/v1/status".to_owned()),
        Just("/v1/dead-letter".to_owned()),
        Just("/v1/dead-letter/replay".to_owned()),
        Just("/v1/dead-letter/discard".to_owned()),
        Just("/ofrep/v1/evaluate/flags".to_owned()),
        Just("/healthz".to_owned()),
        Just("/readyz".to_owned()),
        Just("/metrics".to_owned()),
        seg.clone()
            .prop_map(|s| format!("/v1/accounts/{s}/entitlements")),
        seg.clone()
            .prop_map(|s| format!("/ofrep/v1/evaluate/flags/{s}")),
        seg.clone().prop_map(|s| format!("/{s}")),
        (seg.clone(), seg).prop_map(|(a, b)| format!("/v1/{a}/{b}")),
    ]
}

fn query() -> impl Strategy<Value = String> {
    prop::collection::vec(
        (
            prop::sample::select(&["account", "feature", "quantity", "limit", "x"][..]),
            nasty(),
        ),
        0..4,
    )
    .prop_map(|kv| {
        let mut q = form_urlencoded::Serializer::new(String::new());
        for (k, v) in kv {
            q.append_pair(k, &v);
        }
        q.finish()
    })
}

#[derive(Debug, Clone)]
struct Req {
    method: reqwest::Method,
    path: String,
    query: String,
    content_type: Option<&'static str>,
    auth: Option<String>,
    if_none_match: Option<String>,
    body: Body,
}

fn request() -> impl Strategy<Value = Req> {
    (
        prop::sample::select(vec![
            reqwest::Method::GET,
            reqwest::Method::POST,
            reqwest::Method::PUT,
            reqwest::Method::DELETE,
            reqwest::Method::PATCH,
            reqwest::Method::HEAD,
            reqwest::Method::OPTIONS,
        ]),
        path(),
        query(),
        prop::option::of(prop::sample::select(vec![
            "application/json",
            "application/json; charset=utf-8",
            "application/cloudevents+json",
            "application/cloudevents-batch+json",
            "text/plain",
            "application/x-www-form-urlencoded",
            "garbage/;;;",
        ])),
        prop::option::of(prop_oneof![
            Just(format!("Bearer {SERVICE}")),
            Just(format!("bearer {OPERATOR}")),
            Just("Bearer wrong-token-0000000000".to_owned()),
            Just("Bearer".to_owned()),
            Just("Basic dXNlcjpwYXNz".to_owned()),
            "[ -~]{0,40}",
        ]),
        prop::option::of(prop_oneof![
            Just("*".to_owned()),
            Just("W/\"x\", \"y\"".to_owned()),
            "[ -~]{0,40}",
        ]),
        body(),
    )
        .prop_map(
            |(method, path, query, content_type, auth, if_none_match, body)| Req {
                method,
                path,
                query,
                content_type,
                auth,
                if_none_match,
                body,
            },
        )
}

async fn send(client: &reqwest::Client, base: &str, r: &Req) -> reqwest::Result<reqwest::Response> {
    let url = if r.query.is_empty() {
        format!("{base}{}", r.path)
    } else {
        format!("{base}{}?{}", r.path, r.query)
    };
    let mut req = client.request(r.method.clone(), url);
    if let Some(ct) = r.content_type {
        req = req.header("content-type", ct);
    }
    if let Some(a) = &r.auth {
        req = req.header("authorization", a);
    }
    if let Some(t) = &r.if_none_match {
        req = req.header("if-none-match", t);
    }
    req = match &r.body {
        Body::None => req,
        Body::Json(v) => req.body(v.to_string()),
        Body::Bytes(b) => req.body(b.clone()),
        Body::Huge => req.body(vec![b'['; 17 << 20]),
    };
    req.send().await
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn every_generated_request_gets_a_4xx_or_better_and_the_edge_keeps_serving(r in request()) {
        let (rt, base, client) = target();
        let resp = rt.block_on(send(client, base, &r));
        // A dropped connection or a reset is a failure too.
        let resp = match resp {
            Ok(resp) => resp,
            Err(e) => return Err(TestCaseError::fail(format!("no answer to {r:?}: {e}"))),
        };
        let status = resp.status();
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let text = rt.block_on(resp.text()).unwrap_or_default();
        prop_assert!(status.as_u16() < 500, "{status} for {r:?}: {text}");
        let ofrep = r.path.starts_with("/ofrep/");
        if status.is_client_error() && r.method != reqwest::Method::HEAD && !ofrep {
            prop_assert_eq!(ct.as_str(), "application/problem+json", "{} for {:?}: {}", status, r, text);
            let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            prop_assert!(v["code"].as_str().is_some_and(|c| !c.is_empty()), "{}", text);
        }
        // And it still answers afterwards.
        let health = rt.block_on(async { client.get(format!("{base}/healthz")).send().await });
        prop_assert!(health.is_ok_and(|h| h.status() == StatusCode::OK));
    }
}

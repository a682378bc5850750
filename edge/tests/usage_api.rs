//! `POST /v1/usage` through the edge's real router, with the real durable log on disk, a real
//! flusher and a stub control plane on loopback that records what it is sent.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, Request, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tollgate_edge::cache::CacheLimits;
use tollgate_edge::durable::{FaultyFs, Fs, FsOp};
use tollgate_edge::state::{EdgeOptions, EdgeState};
use tollgate_edge::upstream::{L2, Upstream};
use tollgate_edge::usage::UsageOptions;
use tollgate_protocol::usage::{
    AccountUsage, LeaseGrant, LeaseRelease, LeaseRequest, MeterAggregate, MeterPeriod,
    RejectedEvent, UsageAck, UsageBatch, UsageEvent,
};
use tollgate_protocol::{AccountFacts, AccountId, SubscriptionFacts, SubscriptionStatus};
use tower::ServiceExt;

/// What the stub control plane holds and how it behaves.
#[derive(Default)]
struct Cp {
    facts: Mutex<HashMap<AccountId, AccountFacts>>,
    /// Batches acknowledged, with their `Idempotency-Key`.
    batches: Mutex<Vec<(String, UsageBatch)>>,
    /// Every usage post's (`Idempotency-Key`, batch id, event ids), answered or failed.
    attempts: Mutex<Vec<(String, String, Vec<String>)>>,
    /// Accounts the control plane does not know: their events are rejected one by one.
    unknown: Mutex<HashSet<AccountId>>,
    /// A batch holding an event whose id contains this is refused whole (422).
    refuse_batches_with: Mutex<Option<String>>,
    /// Stored events by id (deduplicated, as the real control plane does).
    stored: Mutex<HashMap<String, UsageEvent>>,
    /// Usage already counted by other edges, per account.
    elsewhere: Mutex<HashMap<AccountId, i64>>,
    /// Answer 503 to this many usage posts first.
    fail_next: AtomicU32,
    /// Lease requests received with what each was granted, and units given back.
    leases: Mutex<Vec<(LeaseRequest, i64)>>,
    released: Mutex<Vec<LeaseRelease>>,
    /// `GET /internal/v1/accounts/{id}/usage` requests received.
    usage_reads: AtomicU32,
    /// Lease requests received, granted or not.
    lease_attempts: AtomicU32,
    /// Accounts whose usage answer holds no aggregate at all.
    no_aggregates: Mutex<HashSet<AccountId>>,
}

impl Cp {
    fn aggregate(&self, account: AccountId) -> MeterAggregate {
        let now = tollgate_edge::now_ms();
        let (start, end) = MeterPeriod::Month.bounds(now);
        let stored = self.stored.lock().expect("stored");
        let mine = stored
            .values()
            .filter(|e| e.account == account && e.meter == "api_calls");
        let (events, sum) = mine.fold((0, 0), |(n, s), e| (n + 1, s + e.quantity));
        let elsewhere = self
            .elsewhere
            .lock()
            .expect("elsewhere")
            .get(&account)
            .copied();
        MeterAggregate {
            account,
            meter: "api_calls".into(),
            period_start_ms: start,
            period_end_ms: end,
            value: sum + elsewhere.unwrap_or(0),
            events,
        }
    }
}

async fn stub_usage(
    State(cp): State<Arc<Cp>>,
    headers: HeaderMap,
    axum::Json(batch): axum::Json<UsageBatch>,
) -> axum::response::Response {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let ids = batch.events.iter().map(|e| e.id.clone()).collect();
    cp.attempts
        .lock()
        .expect("attempts")
        .push((key.clone(), batch.batch_id.to_string(), ids));
    if cp
        .fail_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    if let Some(needle) = cp.refuse_batches_with.lock().expect("refuse").clone()
        && batch.events.iter().any(|e| e.id.contains(&needle))
    {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            axum::Json(json!({"code": "invalid_usage_batch", "detail": "poisoned"})),
        )
            .into_response();
    }
    let (mut accepted, mut duplicates, mut rejected) = (0, 0, Vec::new());
    {
        let unknown = cp.unknown.lock().expect("unknown");
        let mut stored = cp.stored.lock().expect("stored");
        for (i, e) in batch.events.iter().enumerate() {
            if unknown.contains(&e.account) {
                rejected.push(RejectedEvent {
                    index: u32::try_from(i).expect("index"),
                    id: e.id.clone(),
                    code: "unknown_account".into(),
                    detail: "no such account".into(),
                });
            } else if stored.insert(e.id.clone(), e.clone()).is_none() {
                accepted += 1;
            } else {
                duplicates += 1;
            }
        }
    }
    let mut accounts: Vec<AccountId> = batch.events.iter().map(|e| e.account).collect();
    accounts.dedup();
    let ack = UsageAck {
        batch_id: batch.batch_id,
        accepted,
        duplicates,
        late: vec![],
        rejected,
        aggregates: accounts.iter().map(|a| cp.aggregate(*a)).collect(),
    };
    cp.batches.lock().expect("batches").push((key, batch));
    axum::Json(ack).into_response()
}

async fn stub_account_usage(
    State(cp): State<Arc<Cp>>,
    Path(id): Path<AccountId>,
) -> axum::response::Response {
    cp.usage_reads.fetch_add(1, Ordering::SeqCst);
    if cp.unknown.lock().expect("unknown").contains(&id) {
        return StatusCode::NOT_FOUND.into_response();
    }
    let aggregates = if cp
        .no_aggregates
        .lock()
        .expect("no aggregates")
        .contains(&id)
    {
        Vec::new()
    } else {
        vec![cp.aggregate(id)]
    };
    axum::Json(AccountUsage {
        account: id,
        aggregates,
    })
    .into_response()
}

/// As the control plane does: the units leased out start at the aggregate, and a grant never
/// takes them past the quota.
async fn stub_lease(
    State(cp): State<Arc<Cp>>,
    axum::Json(req): axum::Json<LeaseRequest>,
) -> axum::response::Response {
    cp.lease_attempts.fetch_add(1, Ordering::SeqCst);
    if cp.unknown.lock().expect("unknown").contains(&req.account) {
        return StatusCode::NOT_FOUND.into_response();
    }
    let seed = cp.aggregate(req.account).value;
    let mut leases = cp.leases.lock().expect("leases");
    let leased = seed + leases.iter().map(|(_, g)| g).sum::<i64>()
        - cp.released
            .lock()
            .expect("released")
            .iter()
            .map(|r| r.units)
            .sum::<i64>();
    // All of the need or nothing, then what fits of the extra.
    let room = req.limit - leased;
    let granted = if req.need > room {
        0
    } else {
        req.need + req.extra.min(room - req.need)
    };
    leases.push((req, granted));
    axum::Json(LeaseGrant {
        granted,
        leased: leased + granted,
    })
    .into_response()
}

async fn stub_release(
    State(cp): State<Arc<Cp>>,
    axum::Json(rel): axum::Json<LeaseRelease>,
) -> StatusCode {
    cp.released.lock().expect("released").push(rel);
    StatusCode::NO_CONTENT
}

async fn stub_facts(
    State(cp): State<Arc<Cp>>,
    Path(id): Path<AccountId>,
) -> axum::response::Response {
    match cp.facts.lock().expect("facts").get(&id) {
        Some(f) => axum::Json(f.clone()).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

struct Edge {
    state: EdgeState,
    cp: Arc<Cp>,
    dir: std::path::PathBuf,
    _stop: tokio::sync::watch::Sender<bool>,
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tollgate-usage-{name}-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).expect("dir");
    dir
}

/// How a test edge is set up beyond the defaults.
#[derive(Default, Clone)]
struct Setup {
    /// The usage buffer bound (default 1 MiB).
    buffer: Option<u64>,
    /// The filesystem the usage log and dead-letter file write through (default: the real one).
    fs: Option<Arc<dyn Fs>>,
    tokens: tollgate_edge::auth::Tokens,
}

/// The demo rules compiled to WebAssembly and loaded under wasmtime, as a bundle would be.
fn install(state: &EdgeState, version: u64, program: tollgate_rules::ir::Program) {
    let loaded = tollgate_rules::host::RulesEngine::new()
        .expect("engine")
        .load_program(&program)
        .expect("load");
    state.install_rules(version, program, loaded);
}

/// Rules from `source`, compiled and installed as bundle `version`.
fn install_source(state: &EdgeState, version: u64, name: &str, source: &str) {
    let file = tollgate_rules::lang::SourceFile {
        name: name.into(),
        text: source.into(),
    };
    let (program, _) = tollgate_rules::lang::compile_source(&file).expect("compiles");
    install(state, version, program);
}

/// An edge with the demo rules, a usage log under `dir` (buffer bound `buffer`), and its
/// flusher running against a fresh stub control plane.
async fn edge(dir: std::path::PathBuf, buffer: u64, cp: Arc<Cp>) -> Edge {
    edge_with(
        dir,
        cp,
        Setup {
            buffer: Some(buffer),
            ..Setup::default()
        },
    )
    .await
}

fn usage_options(dir: &std::path::Path, setup: &Setup) -> UsageOptions {
    let mut opts = UsageOptions::in_data_dir(dir, setup.buffer.unwrap_or(1 << 20), 1 << 20);
    if let Some(fs) = &setup.fs {
        opts.fs = fs.clone();
    }
    opts
}

async fn edge_with(dir: std::path::PathBuf, cp: Arc<Cp>, setup: Setup) -> Edge {
    let app = Router::new()
        .route("/internal/v1/usage", post(stub_usage))
        .route("/internal/v1/accounts/{id}/usage", get(stub_account_usage))
        .route("/internal/v1/accounts/{id}/facts", get(stub_facts))
        .route("/internal/v1/leases", post(stub_lease))
        .route("/internal/v1/leases/release", post(stub_release))
        .with_state(cp.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let token = secrecy::SecretString::from("t".to_owned());
    let upstream = Upstream::new(&base, token, Duration::from_secs(2), L2::default()).expect("up");
    let mut opts = EdgeOptions::new("usage-edge");
    opts.cache_limits = CacheLimits {
        entries_max: 100,
        bytes_max: 1 << 20,
    };
    opts.negative_ttl_ms = 60_000;
    opts.tokens = setup.tokens.clone();
    let state = EdgeState::new(opts, upstream);
    install(&state, 1, tollgate_rules::demo_program());
    // A restarted edge may find the previous one's writer still closing the log: retry.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let usage = loop {
        match state.open_usage(&usage_options(&dir, &setup)) {
            Ok(u) => break u,
            Err(e) => {
                assert!(tokio::time::Instant::now() < deadline, "usage log: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(tollgate_edge::usage::flush_loop(
        state.clone(),
        usage,
        Duration::from_millis(20),
        stop_rx,
    ));
    Edge {
        state,
        cp,
        dir,
        _stop: stop,
    }
}

async fn call(
    state: &EdgeState,
    method: Method,
    uri: &str,
    ct: Option<&str>,
    body: Value,
) -> (StatusCode, HeaderMap, Value) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(ct) = ct {
        req = req.header("content-type", ct);
    }
    let body = if body.is_null() {
        Body::empty()
    } else {
        Body::from(body.to_string())
    };
    let resp = tollgate_edge::app(state.clone())
        .oneshot(req.body(body).expect("req"))
        .await
        .expect("infallible");
    let (status, headers) = (resp.status(), resp.headers().clone());
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (
        status,
        headers,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn post_usage(e: &Edge, ct: &str, body: Value) -> (StatusCode, HeaderMap, Value) {
    call(&e.state, Method::POST, "/v1/usage", Some(ct), body).await
}

/// Polls until the stub holds `n` events.
/// `GET /v1/accounts/{account}/entitlements`'s body.
async fn entitlements(e: &Edge, account: AccountId) -> Value {
    let uri = format!("/v1/accounts/{account}/entitlements");
    call(&e.state, Method::GET, &uri, None, Value::Null).await.2
}

/// One feature of an entitlements body.
fn listed(view: &Value, feature: &str) -> Value {
    let features = view["features"].as_array().expect("features");
    let found = features.iter().find(|f| f["feature"] == feature);
    found.expect("listed").clone()
}

async fn until_stored(cp: &Cp, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let have = cp.stored.lock().expect("stored").len();
        if have >= n {
            assert_eq!(have, n, "more events than were accepted");
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{have} of {n} events arrived"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn pro(cp: &Cp, account: AccountId) {
    let facts = AccountFacts {
        subscription: Some(SubscriptionFacts {
            plan: "pro".into(),
            status: SubscriptionStatus::Active,
            current_period_end_ms: 0,
            billing_anchor_ms: None,
        }),
        ..AccountFacts::new(account, 1)
    };
    cp.facts.lock().expect("facts").insert(account, facts);
}

#[tokio::test]
async fn valid_events_are_kept_and_invalid_ones_refused_one_by_one() {
    let e = edge(temp_dir("mixed"), 1 << 20, Arc::default()).await;
    let account = AccountId::new_v7();
    let now = tollgate_edge::now_ms();
    let (s, _, v) = post_usage(
        &e,
        "application/json",
        json!([
            {"id": "evt-1", "account": account.to_string(), "meter": "api_calls", "quantity": 3},
            {"account": account.to_string(), "meter": "nope", "quantity": 1},
            {"account": account.to_string(), "meter": "api_calls", "quantity": -1},
            {"account": account.to_string(), "meter": "api_calls", "quantity": 1.5},
            {"meter": "api_calls", "quantity": 1},
            {"account": account.to_string(), "meter": "api_calls", "quantity": 1, "timestamp": now + 3_600_000},
            {"account": account.to_string(), "meter": "api_calls", "quantity": 2, "timestamp": "2999-01-01T00:00:00Z"},
            {"account": account.to_string(), "meter": "api_calls", "quantity": 2, "properties": {"region": "eu", "n": 3}},
            {"account": account.to_string(), "meter": "sso", "quantity": 1},
            {"account": account.to_string(), "meter": "api_calls", "quantity": 1, "color": "red"},
        ]),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let accepted: Vec<i64> = v["accepted"]
        .as_array()
        .expect("accepted")
        .iter()
        .map(|a| a["index"].as_i64().expect("i"))
        .collect();
    assert_eq!(accepted, vec![0, 7]);
    assert_eq!(v["accepted"][0]["id"], "evt-1");
    let generated = v["accepted"][1]["id"].as_str().expect("id");
    assert_eq!(
        generated
            .parse::<uuid::Uuid>()
            .expect("uuid")
            .get_version_num(),
        7
    );
    let codes: Vec<(i64, &str)> = v["rejected"]
        .as_array()
        .expect("rejected")
        .iter()
        .map(|r| {
            (
                r["index"].as_i64().expect("i"),
                r["code"].as_str().expect("code"),
            )
        })
        .collect();
    assert_eq!(
        codes,
        vec![
            (1, "unknown_meter"),
            (2, "invalid_quantity"),
            (3, "invalid_quantity"),
            (4, "missing_account"),
            (5, "timestamp_in_future"),
            (6, "timestamp_in_future"),
            (8, "unknown_meter"),
            (9, "unknown_field"),
        ]
    );
    // Only the accepted ones reach the control plane, with their properties as text.
    until_stored(&e.cp, 2).await;
    let stored = e.cp.stored.lock().expect("stored").clone();
    assert_eq!(stored["evt-1"].quantity, 3);
    let props = &stored[generated].properties;
    assert_eq!((props["region"].as_str(), props["n"].as_str()), ("eu", "3"));

    // Nothing valid: 422 problem+json with the reasons.
    let (s, h, v) = post_usage(
        &e,
        "application/json",
        json!({"account": "x", "meter": "api_calls", "quantity": 1}),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(h["content-type"], "application/problem+json");
    assert_eq!(
        (v["code"].as_str(), v["rejected"][0]["code"].as_str()),
        (Some("invalid_usage"), Some("invalid_account_id"))
    );
    // Unreadable bodies and unsupported types are refused whole.
    let (s, _, v) = post_usage(&e, "text/plain", json!({})).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Some("unsupported_media_type")
        )
    );
    let (s, _, v) = post_usage(&e, "application/json", json!([])).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("empty_batch"))
    );
    let many: Vec<Value> = (0..1_001)
        .map(|_| json!({"account": account.to_string(), "meter": "api_calls", "quantity": 1}))
        .collect();
    let (s, _, v) = post_usage(&e, "application/json", Value::Array(many)).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("too_many_events"))
    );
    let huge = json!({"account": account.to_string(), "meter": "api_calls", "quantity": 1, "id": "x".repeat(2 << 20)});
    let (s, _, v) = post_usage(&e, "application/json", huge).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("body_too_large"))
    );
    assert_eq!(
        e.cp.stored.lock().expect("stored").len(),
        2,
        "nothing refused was stored"
    );
}

#[tokio::test]
async fn cloudevents_single_and_batch_are_accepted() {
    let e = edge(temp_dir("ce"), 1 << 20, Arc::default()).await;
    let account = AccountId::new_v7().to_string();
    let ce = |id: &str| {
        json!({
            "specversion": "1.0", "id": id, "source": "/svc/search", "type": "dev.tollgate.usage",
            "subject": account, "time": "2026-11-21T10:00:00Z",
            "datacontenttype": "application/json",
            "data": {"meter": "api_calls", "quantity": 4}
        })
    };
    let (s, _, v) = post_usage(&e, "application/cloudevents+json", ce("a1")).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["accepted"][0]["id"], "ce:11:/svc/search:a1");
    let mut bad = ce("a3");
    bad["specversion"] = json!("0.3");
    let (s, _, v) = post_usage(
        &e,
        "application/cloudevents-batch+json",
        json!([ce("a2"), bad]),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["rejected"][0]["code"], "invalid_cloudevent");
    let (s, _, v) = post_usage(&e, "application/cloudevents+json", json!([ce("a4")])).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_body"))
    );
    until_stored(&e.cp, 2).await;
    let stored = e.cp.stored.lock().expect("stored").clone();
    let a2 = &stored["ce:11:/svc/search:a2"];
    assert_eq!((a2.quantity, a2.timestamp_ms), (4, 1_795_255_200_000));
}

#[tokio::test]
async fn the_flusher_retries_with_the_same_key_until_the_control_plane_acknowledges() {
    let cp = Arc::new(Cp::default());
    cp.fail_next.store(3, Ordering::SeqCst);
    let e = edge(temp_dir("retry"), 1 << 20, cp).await;
    let account = AccountId::new_v7().to_string();
    for i in 0..5 {
        let body =
            json!({"id": format!("r{i}"), "account": account, "meter": "api_calls", "quantity": 1});
        let (s, _, v) = post_usage(&e, "application/json", body).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    }
    until_stored(&e.cp, 5).await;
    // Every attempt, the three failed ones included, carried the batch id as its key, and a
    // retry of the same events the same key.
    let attempts = e.cp.attempts.lock().expect("attempts").clone();
    assert!(attempts.len() >= 4, "{attempts:?}");
    let mut key_of: HashMap<Vec<String>, String> = HashMap::new();
    let mut retried = false;
    for (key, batch_id, ids) in &attempts {
        assert_eq!(key, batch_id, "the idempotency key is the batch id");
        if let Some(before) = key_of.insert(ids.clone(), key.clone()) {
            assert_eq!(&before, key, "a retry of {ids:?} changed its key");
            retried = true;
        }
    }
    assert!(
        retried,
        "some batch was sent again after a failure: {attempts:?}"
    );
    assert!(
        e.state
            .metrics
            .render()
            .contains("tollgate_edge_usage_flush_failures_total 3")
    );
    // Acknowledged usage is gone from the edge's buffer.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while e.state.usage.get().expect("usage").pending_events() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "acked events still pending"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_full_buffer_refuses_usage_with_retry_after_and_never_drops_it() {
    let cp = Arc::new(Cp::default());
    // The control plane is down: nothing drains.
    cp.fail_next.store(u32::MAX, Ordering::SeqCst);
    let e = edge(temp_dir("full"), 4096, cp).await;
    let account = AccountId::new_v7().to_string();
    let mut accepted = 0;
    let refused = loop {
        let body = json!({"id": format!("f{accepted}"), "account": account, "meter": "api_calls", "quantity": 1});
        let (s, h, v) = post_usage(&e, "application/json", body).await;
        if s == StatusCode::ACCEPTED {
            accepted += 1;
            assert!(accepted < 1_000, "the bound never applied");
            continue;
        }
        break (s, h, v);
    };
    let (s, h, v) = refused;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("usage_buffer_full"))
    );
    assert_eq!(h["retry-after"], "5");
    assert!(
        e.state
            .metrics
            .render()
            .contains("tollgate_edge_usage_events_refused_full_total 1")
    );
    // The control plane comes back: everything accepted arrives, and new usage is taken again.
    e.cp.fail_next.store(0, Ordering::SeqCst);
    until_stored(&e.cp, accepted).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let body = json!({"id": "after", "account": account, "meter": "api_calls", "quantity": 1});
        let (s, _, _) = post_usage(&e, "application/json", body).await;
        if s == StatusCode::ACCEPTED {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still full after the flush"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    until_stored(&e.cp, accepted + 1).await;
    assert!(
        !e.cp
            .stored
            .lock()
            .expect("stored")
            .contains_key(&format!("f{accepted}")),
        "the refused event was not stored"
    );
}

#[tokio::test]
async fn metered_checks_add_unflushed_local_usage_to_the_last_aggregate() {
    let cp = Arc::new(Cp::default());
    let account = AccountId::new_v7();
    pro(&cp, account);
    // Other edges already reported 99,990 of pro's 100,000 api_calls this month.
    cp.elsewhere
        .lock()
        .expect("elsewhere")
        .insert(account, 99_990);
    cp.fail_next.store(u32::MAX, Ordering::SeqCst);
    let e = edge(temp_dir("quota"), 1 << 20, cp).await;
    let check = |q: i64| format!("/v1/check?account={account}&feature=api_calls&quantity={q}");
    let (s, _, v) = call(&e.state, Method::GET, &check(10), None, Value::Null).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        (
            v["allowed"].as_bool(),
            v["usage"].as_i64(),
            v["remaining"].as_i64()
        ),
        (Some(true), Some(99_990), Some(10)),
        "{v}"
    );
    // This edge records 8 more; the control plane has not seen them (it is down).
    let body = json!({"account": account.to_string(), "meter": "api_calls", "quantity": 8});
    assert_eq!(
        post_usage(&e, "application/json", body).await.0,
        StatusCode::ACCEPTED
    );
    let (_, _, v) = call(&e.state, Method::GET, &check(3), None, Value::Null).await;
    assert_eq!(
        (
            v["allowed"].as_bool(),
            v["reason"].as_str(),
            v["usage"].as_i64(),
            v["remaining"].as_i64()
        ),
        (
            Some(false),
            Some("denied_quota_exceeded"),
            Some(99_998),
            Some(2)
        ),
        "{v}"
    );
    let (_, _, v) = call(&e.state, Method::GET, &check(2), None, Value::Null).await;
    assert_eq!(v["allowed"], true, "{v}");
    let (s, _, v) = call(
        &e.state,
        Method::GET,
        &format!("/v1/check?account={account}&feature=api_calls&quantity=-1"),
        None,
        Value::Null,
    )
    .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_quantity"))
    );
    // The entitlements view says the same.
    let api = listed(&entitlements(&e, account).await, "api_calls");
    assert_eq!(
        (
            api["usage"].as_i64(),
            api["remaining"].as_i64(),
            api["aggregation"].as_str()
        ),
        (Some(99_998), Some(2), Some("sum"))
    );
    // Once flushed, the control plane's aggregate holds them and the local count is gone:
    // the usage is the same, counted once.
    e.cp.fail_next.store(0, Ordering::SeqCst);
    until_stored(&e.cp, 1).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while e.state.usage.get().expect("usage").pending_events() > 0 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (_, _, v) = call(&e.state, Method::GET, &check(2), None, Value::Null).await;
    assert_eq!(
        (v["allowed"].as_bool(), v["usage"].as_i64()),
        (Some(true), Some(99_998)),
        "{v}"
    );
}

#[tokio::test]
async fn usage_stored_before_a_restart_is_flushed_after_it() {
    let cp = Arc::new(Cp::default());
    cp.fail_next.store(u32::MAX, Ordering::SeqCst);
    let dir = temp_dir("restart");
    let account = AccountId::new_v7().to_string();
    {
        let e = edge(dir.clone(), 1 << 20, cp.clone()).await;
        for i in 0..3 {
            let body = json!({"id": format!("k{i}"), "account": account, "meter": "api_calls", "quantity": 2});
            assert_eq!(
                post_usage(&e, "application/json", body).await.0,
                StatusCode::ACCEPTED
            );
        }
        assert_eq!(e.dir, dir);
        // The edge goes away without flushing (its flusher stops with it).
    }
    // A new edge on the same directory, with a control plane that is up.
    let e = edge(dir.clone(), 1 << 20, Arc::new(Cp::default())).await;
    until_stored(&e.cp, 3).await;
    let stored = e.cp.stored.lock().expect("stored").clone();
    assert_eq!(stored.values().map(|ev| ev.quantity).sum::<i64>(), 6);
}

#[tokio::test]
async fn a_soft_meter_allows_overage_and_a_hard_one_denies_it() {
    let cp = Arc::new(Cp::default());
    let account = AccountId::new_v7();
    pro(&cp, account);
    // The control plane keeps failing flushes: the usage stays this edge's own.
    cp.fail_next.store(u32::MAX, Ordering::SeqCst);
    let e = edge(temp_dir("soft"), 1 << 20, cp).await;
    // The same quota, once hard and once soft.
    let source = "feature hard: metered per month sum\n\
                  feature soft_calls: metered per month sum soft\n\
                  plan pro \"Pro\" { price 0 USD per month grant hard = 5 grant soft_calls = 5 }\n";
    install_source(&e.state, 2, "soft.tg", source);
    let body = json!([
        {"account": account.to_string(), "meter": "hard", "quantity": 5},
        {"account": account.to_string(), "meter": "soft_calls", "quantity": 5},
    ]);
    let (s, _, v) = post_usage(&e, "application/json", body).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let check = |f: &str| format!("/v1/check?account={account}&feature={f}&quantity=1");
    let (_, _, hard) = call(&e.state, Method::GET, &check("hard"), None, Value::Null).await;
    assert_eq!(
        (hard["allowed"].as_bool(), hard["reason"].as_str()),
        (Some(false), Some("denied_quota_exceeded")),
        "{hard}"
    );
    let (_, _, soft) = call(
        &e.state,
        Method::GET,
        &check("soft_calls"),
        None,
        Value::Null,
    )
    .await;
    assert_eq!(
        (
            soft["allowed"].as_bool(),
            soft["usage"].as_i64(),
            soft["remaining"].as_i64()
        ),
        (Some(true), Some(5), Some(0)),
        "over the quota, billed as overage: {soft}"
    );
}

/// `GET /v1/check` and `GET /v1/accounts/{id}/entitlements` apply one metered-quota rule: for
/// quantity 1 they answer the same below, at and past the quota, for a meter without a lease
/// (`count`), one with a lease (`sum`) and a `soft` one.
#[tokio::test]
async fn the_check_and_the_entitlements_view_agree_at_the_edge_of_a_metered_quota() {
    let cp = Arc::new(Cp::default());
    let accounts: Vec<(i64, AccountId)> = [2, 3, 4].map(|used| (used, AccountId::new_v7())).into();
    for (_, account) in &accounts {
        pro(&cp, *account);
    }
    // The control plane keeps failing flushes: the usage stays this edge's own.
    cp.fail_next.store(u32::MAX, Ordering::SeqCst);
    let e = edge(temp_dir("agree"), 1 << 20, cp).await;
    let source = "feature calls: metered per month count\n\
                  feature units: metered per month sum\n\
                  feature soft_units: metered per month sum soft\n\
                  plan pro \"Pro\" { price 0 USD per month grant calls = 3 grant units = 3 grant soft_units = 3 }\n";
    install_source(&e.state, 2, "agree.tg", source);
    for (used, account) in &accounts {
        let a = account.to_string();
        let mut events = vec![
            json!({"account": a, "meter": "units", "quantity": used}),
            json!({"account": a, "meter": "soft_units", "quantity": used}),
        ];
        events.extend((0..*used).map(|_| json!({"account": a, "meter": "calls", "quantity": 1})));
        let (s, _, v) = post_usage(&e, "application/json", Value::Array(events)).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    }
    for (used, account) in &accounts {
        let view = entitlements(&e, *account).await;
        for feature in ["calls", "units", "soft_units"] {
            let (_, _, check) = call(
                &e.state,
                Method::GET,
                &format!("/v1/check?account={account}&feature={feature}"),
                None,
                Value::Null,
            )
            .await;
            let listed = listed(&view, feature);
            let expected = feature == "soft_units" || *used < 3;
            assert_eq!(
                (check["allowed"].as_bool(), check["usage"].as_i64()),
                (Some(expected), Some(*used)),
                "{feature} at {used} of 3: {check}"
            );
            assert_eq!(
                (
                    listed["allowed"].as_bool(),
                    listed["reason"].as_str(),
                    listed["usage"].as_i64()
                ),
                (
                    check["allowed"].as_bool(),
                    check["reason"].as_str(),
                    check["usage"].as_i64()
                ),
                "{feature} at {used} of 3: the view {listed} and the check {check} disagree"
            );
        }
    }
}

#[tokio::test]
async fn evicting_an_account_from_the_cache_keeps_its_unflushed_usage() {
    let cp = Arc::new(Cp::default());
    cp.fail_next.store(u32::MAX, Ordering::SeqCst);
    let e = edge(temp_dir("evict"), 1 << 20, cp.clone()).await;
    let account = AccountId::new_v7();
    pro(&cp, account);
    let body = json!({"account": account.to_string(), "meter": "api_calls", "quantity": 42});
    assert_eq!(
        post_usage(&e, "application/json", body).await.0,
        StatusCode::ACCEPTED
    );
    let uri = format!("/v1/check?account={account}&feature=api_calls");
    let (_, _, v) = call(&e.state, Method::GET, &uri, None, Value::Null).await;
    assert_eq!(v["usage"], 42, "{v}");
    // Fill the 100-entry cache with other accounts until this one is evicted.
    for _ in 0..300 {
        let other = AccountId::new_v7();
        pro(&cp, other);
        call(
            &e.state,
            Method::GET,
            &format!("/v1/check?account={other}&feature=sso"),
            None,
            Value::Null,
        )
        .await;
    }
    assert!(e.state.cache.get(&account).is_none(), "still cached");
    // Refilled on the next check: the usage stored here is still counted (and still queued).
    let (_, _, v) = call(&e.state, Method::GET, &uri, None, Value::Null).await;
    assert_eq!(v["usage"], 42, "{v}");
    assert_eq!(e.state.usage.get().expect("usage").pending_events(), 1);
}

#[tokio::test]
async fn checks_are_served_from_a_lease_and_unused_units_go_back_at_shutdown() {
    let cp = Arc::new(Cp::default());
    let account = AccountId::new_v7();
    pro(&cp, account);
    cp.elsewhere
        .lock()
        .expect("elsewhere")
        .insert(account, 99_800);
    let e = edge(temp_dir("lease"), 1 << 20, cp.clone()).await;
    let check = |q: i64| format!("/v1/check?account={account}&feature=api_calls&quantity={q}");
    // The first check leases its quantity plus the meter's lease size (100 in the demo rules).
    let (_, _, v) = call(&e.state, Method::GET, &check(1), None, Value::Null).await;
    assert_eq!(v["allowed"], true, "{v}");
    let asked: Vec<(i64, i64, i64, i64)> = cp
        .leases
        .lock()
        .expect("leases")
        .iter()
        .map(|(r, g)| (r.need, r.extra, r.limit, *g))
        .collect();
    assert_eq!(asked, vec![(1, 100, 100_000, 101)]);
    // 30 units are used here; further checks up to the lease need no round trip. The control
    // plane does not take them yet: the lease below is granted against the counter seeded
    // with 99,800 (a flush that raced ahead made it 99,830, and the grant 30 smaller).
    e.cp.fail_next.store(u32::MAX, Ordering::SeqCst);
    let body = json!({"account": account.to_string(), "meter": "api_calls", "quantity": 30});
    assert_eq!(
        post_usage(&e, "application/json", body).await.0,
        StatusCode::ACCEPTED
    );
    let (_, _, v) = call(&e.state, Method::GET, &check(71), None, Value::Null).await;
    assert_eq!(v["allowed"], true, "{v}");
    assert_eq!(
        cp.leases.lock().expect("leases").len(),
        1,
        "served from the lease"
    );
    // Past the lease: the edge asks for the shortfall (80 − 71 = 9) plus a lease, and gets the
    // shortfall and what is left of the quota after it (100,000 − 99,800 − 101 − 9 = 90).
    let (_, _, v) = call(&e.state, Method::GET, &check(80), None, Value::Null).await;
    assert_eq!(v["allowed"], true, "{v}");
    let asked: Vec<(i64, i64)> = cp
        .leases
        .lock()
        .expect("leases")
        .iter()
        .map(|(r, g)| (r.need, *g))
        .collect();
    assert_eq!(asked, vec![(1, 101), (9, 99)]);
    // The edge stops: the 200 − 30 units it did not use go back.
    let Edge { state, _stop, .. } = e;
    drop(_stop);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let released: Vec<i64> = cp
            .released
            .lock()
            .expect("released")
            .iter()
            .map(|r| r.units)
            .collect();
        if !released.is_empty() {
            assert_eq!(released, vec![170]);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "nothing given back");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(state);
}

const OPERATOR: &str = "operator-token-000001";

fn with_operator() -> Setup {
    Setup {
        tokens: tollgate_edge::auth::Tokens {
            service: vec![],
            operator: vec![OPERATOR.into()],
        },
        ..Setup::default()
    }
}

/// An operator call to the dead-letter API.
async fn operator(e: &Edge, method: Method, uri: &str) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", format!("Bearer {OPERATOR}"))
        .body(Body::empty())
        .expect("req");
    let resp = tollgate_edge::app(e.state.clone())
        .oneshot(req)
        .await
        .expect("infallible");
    let status = resp.status();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// Polls until the dead-letter file holds `n` entries; returns them.
async fn until_dead_lettered(e: &Edge, n: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (s, v) = operator(e, Method::GET, "/v1/dead-letter").await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let entries = v["entries"].as_array().cloned().unwrap_or_default();
        if entries.len() >= n {
            assert_eq!(entries.len(), n, "{v}");
            return entries;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {n} dead-lettered: {v}",
            entries.len()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn metric(e: &Edge, name: &str) -> i64 {
    if let Some(u) = e.state.usage.get() {
        u.refresh_gauges();
    }
    let text = e.state.metrics.render();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from\n{text}"))
}

#[tokio::test]
async fn one_request_with_huge_quantities_never_stops_metering() {
    let e = edge(temp_dir("huge"), 1 << 20, Arc::default()).await;
    let account = AccountId::new_v7().to_string();
    let huge = |id: &str, q: i64| json!({"id": id, "account": account, "meter": "api_calls", "quantity": q});
    let (s, _, v) = post_usage(
        &e,
        "application/json",
        json!([
            huge("h1", i64::MAX),
            huge("h2", i64::MAX),
            huge("h3", (1 << 40) + 1)
        ]),
    )
    .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_usage")),
        "{v}"
    );
    let codes: Vec<&str> = v["rejected"]
        .as_array()
        .expect("rejected")
        .iter()
        .map(|r| r["code"].as_str().expect("code"))
        .collect();
    assert_eq!(codes, ["invalid_quantity"; 3]);
    // The edge keeps taking usage, for every account, up to the bound.
    for i in 0..3 {
        let (s, _, v) = post_usage(&e, "application/json", huge(&format!("ok{i}"), 1 << 40)).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    }
    until_stored(&e.cp, 3).await;
    // And a restart on the same log comes up.
    let dir = e.dir.clone();
    drop(e);
    let again = edge(dir, 1 << 20, Arc::default()).await;
    let (s, _, v) = post_usage(&again, "application/json", huge("after", 5)).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
}

#[tokio::test]
async fn records_breaking_the_bounds_are_dead_lettered_and_never_stop_the_edge() {
    // An older edge wrote these before the bounds existed: the log holds them, fsynced.
    let dir = temp_dir("poisoned-log");
    let account = AccountId::new_v7();
    let event = |id: &str, meter: &str, quantity: i64| UsageEvent {
        id: id.into(),
        account,
        meter: meter.into(),
        quantity,
        timestamp_ms: tollgate_edge::now_ms(),
        properties: std::collections::BTreeMap::new(),
    };
    {
        let (mut log, _) = tollgate_edge::usage_log::UsageLog::open(
            &dir.join("usage"),
            tollgate_edge::usage_log::LogOptions::default(),
        )
        .expect("log");
        let payloads: Vec<Vec<u8>> = vec![
            postcard::to_allocvec(&event("good-1", "api_calls", 2)).expect("enc"),
            postcard::to_allocvec(&event("huge-1", "api_calls", i64::MAX)).expect("enc"),
            postcard::to_allocvec(&event("huge-2", "api_calls", i64::MAX)).expect("enc"),
            postcard::to_allocvec(&event("long", &"m".repeat(200), 1)).expect("enc"),
            b"\xff\xfe not a usage event".to_vec(),
            postcard::to_allocvec(&event("good-2", "api_calls", 3)).expect("enc"),
        ];
        let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        log.append(&refs).expect("append");
        log.sync().expect("sync");
    }
    let e = edge_with(dir, Arc::default(), with_operator()).await;
    until_stored(&e.cp, 2).await;
    let entries = until_dead_lettered(&e, 4).await;
    let codes: Vec<&str> = entries
        .iter()
        .map(|d| d["code"].as_str().expect("code"))
        .collect();
    assert_eq!(
        codes,
        [
            "invalid_quantity",
            "invalid_quantity",
            "invalid_meter",
            "undecodable_record"
        ]
    );
    assert!(
        entries[3]["payload_hex"]
            .as_str()
            .is_some_and(|h| h.starts_with("fffe"))
    );
    // What the flusher could not ship is out of the log: nothing is pending, truthfully.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while metric(&e, "tollgate_edge_usage_pending_events") != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "pending never reached 0"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(metric(&e, "tollgate_edge_usage_dead_letter_events"), 4);
    // Usage goes on, and a check of the account sees the good events only.
    let (s, _, v) = post_usage(
        &e,
        "application/json",
        json!({"id": "good-3", "account": account.to_string(), "meter": "api_calls", "quantity": 1}),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    until_stored(&e.cp, 3).await;
}

#[tokio::test]
async fn events_the_control_plane_rejects_are_dead_lettered_then_replayed_or_discarded() {
    let cp = Arc::new(Cp::default());
    let (stranger, known) = (AccountId::new_v7(), AccountId::new_v7());
    cp.unknown.lock().expect("unknown").insert(stranger);
    let e = edge_with(temp_dir("rejected"), cp.clone(), with_operator()).await;
    let ev = |id: &str, a: AccountId| json!({"id": id, "account": a.to_string(), "meter": "api_calls", "quantity": 4});
    let (s, _, v) = post_usage(
        &e,
        "application/json",
        json!([
            ev("s1", stranger),
            ev("k1", known),
            ev("s2", stranger),
            ev("k2", known)
        ]),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    // The known account's usage flows; the stranger's is set aside, not retried forever.
    until_stored(&cp, 2).await;
    let entries = until_dead_lettered(&e, 2).await;
    for d in &entries {
        assert_eq!(d["code"], "unknown_account");
        assert_eq!(d["event"]["account"], stranger.to_string());
    }
    // The dead-letter API is an operator's: no token, no entries.
    let (s, _, v) = call(&e.state, Method::GET, "/v1/dead-letter", None, Value::Null).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("missing_credentials"))
    );
    let (_, v) = operator(&e, Method::GET, "/v1/status").await;
    assert_eq!(v["usage"]["dead_letter"]["events"], 2, "{v}");
    // The account is created after all: replaying stores its usage, once.
    cp.unknown.lock().expect("unknown").clear();
    let (s, v) = operator(&e, Method::POST, "/v1/dead-letter/replay").await;
    assert_eq!(
        (s, v["replayed"].as_i64(), v["kept"].as_i64()),
        (StatusCode::OK, Some(2), Some(0)),
        "{v}"
    );
    until_stored(&cp, 4).await;
    assert_eq!(until_dead_lettered(&e, 0).await.len(), 0);
    // Discarding is the other way out.
    cp.unknown.lock().expect("unknown").insert(stranger);
    post_usage(&e, "application/json", ev("s3", stranger)).await;
    until_dead_lettered(&e, 1).await;
    let (s, v) = operator(&e, Method::POST, "/v1/dead-letter/discard").await;
    assert_eq!(
        (s, v["discarded"].as_i64()),
        (StatusCode::OK, Some(1)),
        "{v}"
    );
    assert_eq!(until_dead_lettered(&e, 0).await.len(), 0);
    assert_eq!(cp.stored.lock().expect("stored").len(), 4);
}

#[tokio::test]
async fn a_batch_refused_whole_is_narrowed_to_its_poison_and_the_rest_flows() {
    let cp = Arc::new(Cp::default());
    *cp.refuse_batches_with.lock().expect("refuse") = Some("poison".into());
    // Nothing flushes until all 20 are stored, so they go out as one batch.
    cp.fail_next.store(u32::MAX, Ordering::SeqCst);
    let e = edge_with(temp_dir("narrow"), cp.clone(), with_operator()).await;
    let account = AccountId::new_v7().to_string();
    let events: Vec<Value> = (0..20)
        .map(|i| {
            let id = if i == 13 {
                "poison-13".to_owned()
            } else {
                format!("n{i}")
            };
            json!({"id": id, "account": account, "meter": "api_calls", "quantity": 1})
        })
        .collect();
    let (s, _, v) = post_usage(&e, "application/json", Value::Array(events)).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    cp.fail_next.store(0, Ordering::SeqCst);
    until_stored(&cp, 19).await;
    let entries = until_dead_lettered(&e, 1).await;
    assert_eq!(
        (
            entries[0]["code"].as_str(),
            entries[0]["event"]["id"].as_str()
        ),
        (Some("batch_refused"), Some("poison-13"))
    );
    assert!(metric(&e, "tollgate_edge_usage_flush_refusals_total") >= 3);
    // And what comes after flows at full batch size again.
    let (s, _, _) = post_usage(
        &e,
        "application/json",
        json!({"id": "after", "account": account, "meter": "api_calls", "quantity": 1}),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    until_stored(&cp, 20).await;
}

#[tokio::test]
async fn pending_metrics_tell_the_truth_while_the_control_plane_is_away_and_after_a_restart() {
    let cp = Arc::new(Cp::default());
    cp.fail_next.store(u32::MAX, Ordering::SeqCst);
    let dir = temp_dir("pending");
    let account = AccountId::new_v7().to_string();
    {
        let e = edge(dir.clone(), 1 << 20, cp.clone()).await;
        for i in 0..3 {
            let body = json!({"id": format!("p{i}"), "account": account, "meter": "api_calls", "quantity": 1});
            assert_eq!(
                post_usage(&e, "application/json", body).await.0,
                StatusCode::ACCEPTED
            );
        }
        assert_eq!(metric(&e, "tollgate_edge_usage_pending_events"), 3);
    }
    let e = edge(dir, 1 << 20, cp.clone()).await;
    assert_eq!(
        metric(&e, "tollgate_edge_usage_pending_events"),
        3,
        "recovered events are pending before anything is flushed"
    );
    cp.fail_next.store(0, Ordering::SeqCst);
    until_stored(&cp, 3).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while metric(&e, "tollgate_edge_usage_pending_events") != 0 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_failed_fsync_refuses_usage_with_nothing_stored_and_makes_the_edge_unready() {
    let e = edge_with(
        temp_dir("fsync"),
        Arc::default(),
        Setup {
            // The usage log's first fdatasync succeeds, every later one fails (a dying disk).
            fs: Some(Arc::new(FaultyFs::new().fail_after(FsOp::SyncData, 1))),
            ..Setup::default()
        },
    )
    .await;
    let account = AccountId::new_v7().to_string();
    let body =
        |id: &str| json!({"id": id, "account": account, "meter": "api_calls", "quantity": 1});
    assert_eq!(
        post_usage(&e, "application/json", body("f1")).await.0,
        StatusCode::ACCEPTED
    );
    let (s, _, _) = call(&e.state, Method::GET, "/readyz", None, Value::Null).await;
    assert_eq!(s, StatusCode::OK);
    let (s, h, v) = post_usage(&e, "application/json", body("f2")).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("usage_store_failed")),
        "{v}"
    );
    assert_eq!(h["retry-after"], "1");
    let (s, _, v) = call(&e.state, Method::GET, "/readyz", None, Value::Null).await;
    assert_eq!(
        (s, v["usage_store_failed"].as_bool()),
        (StatusCode::SERVICE_UNAVAILABLE, Some(true)),
        "{v}"
    );
    assert_eq!(metric(&e, "tollgate_edge_usage_store_failed"), 1);
    until_stored(&e.cp, 1).await;
    assert!(!e.cp.stored.lock().expect("stored").contains_key("f2"));
}

#[tokio::test]
async fn the_same_id_twice_in_one_request_is_refused_unless_identical() {
    let e = edge(temp_dir("dups"), 1 << 20, Arc::default()).await;
    let account = AccountId::new_v7().to_string();
    let ev = |id: &str, q: i64| json!({"id": id, "account": account, "meter": "api_calls", "quantity": q});
    let (s, _, v) = post_usage(
        &e,
        "application/json",
        json!([
            ev("a", 1),
            ev("a", 2),
            ev("b", 5),
            ev("b", 5),
            ev("ce:/svc:X:7", 1)
        ]),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let accepted: Vec<(i64, &str)> = v["accepted"]
        .as_array()
        .expect("accepted")
        .iter()
        .map(|a| {
            (
                a["index"].as_i64().expect("i"),
                a["id"].as_str().expect("id"),
            )
        })
        .collect();
    assert_eq!(
        accepted,
        [(2, "b"), (3, "b")],
        "identical repeats are one event"
    );
    let rejected: Vec<(i64, &str)> = v["rejected"]
        .as_array()
        .expect("rejected")
        .iter()
        .map(|r| {
            (
                r["index"].as_i64().expect("i"),
                r["code"].as_str().expect("code"),
            )
        })
        .collect();
    assert_eq!(
        rejected,
        [
            (0, "conflicting_duplicate"),
            (1, "conflicting_duplicate"),
            (4, "invalid_id")
        ]
    );
    until_stored(&e.cp, 1).await;
    assert_eq!(e.cp.stored.lock().expect("stored")["b"].quantity, 5);
}

#[tokio::test]
async fn usage_for_an_account_the_control_plane_says_does_not_exist_is_refused() {
    let e = edge(temp_dir("ghost"), 1 << 20, Arc::default()).await;
    let ghost = AccountId::new_v7();
    // A check learns the account does not exist (404 from the control plane).
    let (_, _, v) = call(
        &e.state,
        Method::GET,
        &format!("/v1/check?account={ghost}&feature=sso"),
        None,
        Value::Null,
    )
    .await;
    assert_eq!(v["reason"], "unknown_account", "{v}");
    let (s, _, v) = post_usage(
        &e,
        "application/json",
        json!({"account": ghost.to_string(), "meter": "api_calls", "quantity": 1}),
    )
    .await;
    assert_eq!(
        (s, v["rejected"][0]["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("unknown_account")),
        "{v}"
    );
}

#[tokio::test]
async fn a_denied_check_takes_nothing_from_the_quota() {
    let cp = Arc::new(Cp::default());
    let account = AccountId::new_v7();
    pro(&cp, account);
    cp.elsewhere
        .lock()
        .expect("elsewhere")
        .insert(account, 99_950);
    let e = edge(temp_dir("denied-lease"), 1 << 20, cp.clone()).await;
    let check = |q: i64| format!("/v1/check?account={account}&feature=api_calls&quantity={q}");
    // More than the whole quota: denied without asking for anything.
    let (_, _, v) = call(&e.state, Method::GET, &check(100_001), None, Value::Null).await;
    assert_eq!(
        (v["allowed"].as_bool(), v["reason"].as_str()),
        (Some(false), Some("denied_quota_exceeded")),
        "{v}"
    );
    assert!(
        cp.leases.lock().expect("leases").is_empty(),
        "no lease asked for"
    );
    // More than is left (50): denied, and the control plane granted nothing.
    let (_, _, v) = call(&e.state, Method::GET, &check(100), None, Value::Null).await;
    assert_eq!(v["allowed"], false, "{v}");
    let granted: Vec<i64> = cp
        .leases
        .lock()
        .expect("leases")
        .iter()
        .map(|(_, g)| *g)
        .collect();
    assert_eq!(granted, [0]);
    // So what is left is still there for a check that fits (on this edge or any other).
    let (_, _, v) = call(&e.state, Method::GET, &check(40), None, Value::Null).await;
    assert_eq!(v["allowed"], true, "{v}");
    let last = cp
        .leases
        .lock()
        .expect("leases")
        .last()
        .map(|(r, g)| (r.need, *g));
    assert_eq!(last, Some((40, 50)), "the need, then the rest of the quota");
}

#[tokio::test]
async fn a_lease_of_a_quota_that_was_lowered_is_given_back_and_not_used() {
    let cp = Arc::new(Cp::default());
    let account = AccountId::new_v7();
    pro(&cp, account);
    let e = edge(temp_dir("downgrade"), 1 << 20, cp.clone()).await;
    let check = |q: i64| format!("/v1/check?account={account}&feature=api_calls&quantity={q}");
    let (_, _, v) = call(&e.state, Method::GET, &check(1), None, Value::Null).await;
    assert_eq!(
        (v["allowed"].as_bool(), v["limit"].as_i64()),
        (Some(true), Some(100_000)),
        "{v}"
    );
    // 1,000 units used here, from the pro lease (renewed as it runs short; 100 units of it
    // are left unused at the end).
    for _ in 0..10 {
        let (_, _, v) = call(&e.state, Method::GET, &check(100), None, Value::Null).await;
        assert_eq!(v["allowed"], true, "{v}");
        let body = json!({"account": account.to_string(), "meter": "api_calls", "quantity": 100});
        assert_eq!(
            post_usage(&e, "application/json", body).await.0,
            StatusCode::ACCEPTED
        );
    }
    // Downgrade to free (1,000 api_calls): the change reaches the edge.
    let mut free = AccountFacts::new(account, 2);
    free.subscription = Some(SubscriptionFacts {
        plan: "free".into(),
        status: SubscriptionStatus::Active,
        current_period_end_ms: 0,
        billing_anchor_ms: None,
    });
    let view = e.state.rules.load_full().expect("rules");
    assert!(e.state.cache.apply(free, &view));
    // Already past the new quota: denied, the old lease's unused units given back.
    let (_, _, v) = call(&e.state, Method::GET, &check(1), None, Value::Null).await;
    assert_eq!(
        (v["allowed"].as_bool(), v["limit"].as_i64()),
        (Some(false), Some(1_000)),
        "{v}"
    );
    let released: Vec<i64> = cp
        .released
        .lock()
        .expect("released")
        .iter()
        .map(|r| r.units)
        .collect();
    assert_eq!(released, [100], "the old lease's unused units");
    let limits: Vec<i64> = cp
        .leases
        .lock()
        .expect("leases")
        .iter()
        .map(|(r, _)| r.limit)
        .collect();
    assert!(
        limits.iter().all(|l| *l == 100_000 || *l == 1_000),
        "{limits:?}"
    );
}

#[tokio::test]
async fn quantities_past_the_bound_are_refused_before_any_lease() {
    let cp = Arc::new(Cp::default());
    let account = AccountId::new_v7();
    pro(&cp, account);
    let e = edge(temp_dir("bounds"), 1 << 20, cp.clone()).await;
    for q in [i64::MAX, i64::MAX - 99, (1 << 40) + 1, -1] {
        let uri = format!("/v1/check?account={account}&feature=api_calls&quantity={q}");
        let (s, _, v) = call(&e.state, Method::GET, &uri, None, Value::Null).await;
        assert_eq!(
            (s, v["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_quantity")),
            "{q}: {v}"
        );
    }
    let (s, _, v) = call(
        &e.state,
        Method::POST,
        "/v1/check",
        Some("application/json"),
        json!({"checks": [
            {"account": account.to_string(), "feature": "api_calls", "quantity": i64::MAX},
            {"account": account.to_string(), "feature": "api_calls", "quantity": 1e300},
            {"account": account.to_string(), "feature": "api_calls", "quantity": 3},
        ]}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["results"][0]["error"]["code"], "invalid_quantity", "{v}");
    assert_eq!(v["results"][1]["error"]["code"], "invalid_quantity", "{v}");
    assert_eq!(v["results"][2]["result"]["allowed"], true, "{v}");
    let needs: Vec<i64> = cp
        .leases
        .lock()
        .expect("leases")
        .iter()
        .map(|(r, _)| r.need)
        .collect();
    assert_eq!(needs, [3], "only the valid check asked for quota");
}

#[tokio::test]
async fn a_limit_feature_compares_the_quantity_with_its_limit() {
    let cp = Arc::new(Cp::default());
    let account = AccountId::new_v7();
    pro(&cp, account);
    let e = edge(temp_dir("seats"), 1 << 20, cp).await;
    let seats = |q: i64| format!("/v1/check?account={account}&feature=seats&quantity={q}");
    let (_, _, v) = call(&e.state, Method::GET, &seats(10), None, Value::Null).await;
    assert_eq!(
        (v["allowed"].as_bool(), v["limit"].as_i64()),
        (Some(true), Some(10)),
        "{v}"
    );
    let (_, _, v) = call(&e.state, Method::GET, &seats(11), None, Value::Null).await;
    assert_eq!(
        (v["allowed"].as_bool(), v["reason"].as_str()),
        (Some(false), Some("denied_quota_exceeded")),
        "{v}"
    );
}

#[tokio::test]
async fn the_ofrep_bulk_etag_changes_when_the_quota_is_used_up() {
    let cp = Arc::new(Cp::default());
    let account = AccountId::new_v7();
    pro(&cp, account);
    cp.elsewhere
        .lock()
        .expect("elsewhere")
        .insert(account, 99_999);
    let e = edge(temp_dir("etag"), 1 << 20, cp.clone()).await;
    let bulk = |tag: Option<&str>| {
        let mut req = Request::builder()
            .method(Method::POST)
            .uri("/ofrep/v1/evaluate/flags")
            .header("content-type", "application/json");
        if let Some(t) = tag {
            req = req.header("if-none-match", t);
        }
        let req = req
            .body(Body::from(
                json!({"context": {"targetingKey": account.to_string()}}).to_string(),
            ))
            .expect("req");
        let app = tollgate_edge::app(e.state.clone());
        async move {
            let resp = app.oneshot(req).await.expect("infallible");
            let status = resp.status();
            let tag = resp
                .headers()
                .get("etag")
                .map(|v| v.to_str().expect("tag").to_owned());
            let bytes = resp.into_body().collect().await.expect("body").to_bytes();
            (
                status,
                tag,
                serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null),
            )
        }
    };
    let (s, tag, v) = bulk(None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let tag = tag.expect("etag");
    let api = |v: &Value| {
        v["flags"]
            .as_array()
            .expect("flags")
            .iter()
            .find(|f| f["key"] == "api_calls")
            .cloned()
            .expect("api_calls")
    };
    assert_eq!(api(&v)["variant"], "granted");
    // Unchanged: 304 for the tag, its weak form, a list holding it, and `*`.
    for m in [
        tag.clone(),
        format!("W/{tag}"),
        format!("\"nope\", {tag}"),
        "*".to_owned(),
    ] {
        assert_eq!(bulk(Some(&m)).await.0, StatusCode::NOT_MODIFIED, "{m}");
    }
    // The last unit is used: the answer changes, and so does its tag.
    let body = json!({"account": account.to_string(), "meter": "api_calls", "quantity": 1});
    assert_eq!(
        post_usage(&e, "application/json", body).await.0,
        StatusCode::ACCEPTED
    );
    let (s, new_tag, v) = bulk(Some(&tag)).await;
    assert_eq!(
        s,
        StatusCode::OK,
        "a client holding the old tag gets the new answer"
    );
    assert_eq!(api(&v)["variant"], "denied", "{v}");
    assert_ne!(new_tag.as_deref(), Some(tag.as_str()));
}

#[tokio::test]
async fn an_account_without_usage_upstream_is_asked_for_it_once_per_ttl_not_at_every_check() {
    let cp = Arc::new(Cp::default());
    let (stranger, silent) = (AccountId::new_v7(), AccountId::new_v7());
    for a in [stranger, silent] {
        pro(&cp, a);
    }
    // The control plane says it does not know one; for the other it counts nothing yet.
    cp.unknown.lock().expect("unknown").insert(stranger);
    cp.no_aggregates
        .lock()
        .expect("no aggregates")
        .insert(silent);
    let e = edge(temp_dir("usage-ttl"), 1 << 20, cp.clone()).await;
    for account in [stranger, silent] {
        let before = cp.usage_reads.load(Ordering::SeqCst);
        for _ in 0..5 {
            let calls = listed(&entitlements(&e, account).await, "api_calls");
            assert_eq!(
                (calls["usage"].as_i64(), calls["allowed"].as_bool()),
                (Some(0), Some(true)),
                "{calls}"
            );
        }
        assert_eq!(
            cp.usage_reads.load(Ordering::SeqCst) - before,
            1,
            "one usage read for five views of the same account"
        );
    }
}

#[tokio::test]
async fn a_lease_the_control_plane_refused_is_not_asked_again_at_every_check() {
    let cp = Arc::new(Cp::default());
    let stranger = AccountId::new_v7();
    pro(&cp, stranger);
    cp.unknown.lock().expect("unknown").insert(stranger);
    let e = edge(temp_dir("lease-retry"), 1 << 20, cp.clone()).await;
    let uri = format!("/v1/check?account={stranger}&feature=api_calls");
    for _ in 0..5 {
        let (status, _, v) = call(&e.state, Method::GET, &uri, None, Value::Null).await;
        // No lease: the check compares the usage it read (none) with the quota.
        assert_eq!(
            (status, v["allowed"].as_bool()),
            (StatusCode::OK, Some(true)),
            "{v}"
        );
    }
    assert_eq!(
        cp.lease_attempts.load(Ordering::SeqCst),
        1,
        "one lease request for five checks within a second"
    );
}

#[tokio::test]
async fn concurrent_checks_of_an_account_share_one_usage_read() {
    let cp = Arc::new(Cp::default());
    let account = AccountId::new_v7();
    pro(&cp, account);
    let e = edge(temp_dir("usage-coalesce"), 1 << 20, cp.clone()).await;
    // Cached first (its fill is another request), with no aggregate yet.
    let (status, _, _) = call(
        &e.state,
        Method::GET,
        &format!("/v1/check?account={account}&feature=sso"),
        None,
        Value::Null,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let views = futures::future::join_all((0..20).map(|_| entitlements(&e, account))).await;
    for v in &views {
        assert_eq!(listed(v, "api_calls")["usage"].as_i64(), Some(0), "{v}");
    }
    assert_eq!(
        cp.usage_reads.load(Ordering::SeqCst),
        1,
        "twenty views at once, one usage read"
    );
}

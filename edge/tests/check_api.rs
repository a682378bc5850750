//! The edge's check API through its real router, against a stub control plane on loopback
//! (for the fill path) and the real Redis (for the change stream).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{Method, Request, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use http_body_util::BodyExt;
use serde_json::Value;
use tollgate_edge::cache::CacheLimits;
use tollgate_edge::state::{EdgeOptions, EdgeState};
use tollgate_edge::upstream::{L2, Upstream};
use tollgate_protocol::redis_conn::{RedisClient, RedisConn};
use tollgate_protocol::{
    AccountFacts, AccountId, AccountStanding, ChangeEvent, SubscriptionFacts, SubscriptionStatus,
    redis_keys,
};
use tollgate_rules::host::RulesEngine;
use tower::ServiceExt;

type Store = Arc<Mutex<HashMap<AccountId, AccountFacts>>>;

/// Latency the stub control plane adds to each facts request (simulated network/database
/// time, so concurrent misses overlap; no test result depends on its length).
static STUB_LATENCY_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
type Hits = Arc<Mutex<u32>>;

async fn stub_facts(
    State((store, hits)): State<(Store, Hits)>,
    Path(id): Path<AccountId>,
) -> axum::response::Response {
    *hits.lock().expect("hits") += 1;
    let latency = STUB_LATENCY_MS.load(std::sync::atomic::Ordering::Relaxed);
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    match store.lock().expect("store").get(&id) {
        Some(f) => axum::Json(f.clone()).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// The batch facts route: one hit per request, however many accounts.
async fn stub_facts_batch(
    State((store, hits)): State<(Store, Hits)>,
    axum::Json(req): axum::Json<tollgate_protocol::FactsRequest>,
) -> axum::Json<tollgate_protocol::FactsBatch> {
    *hits.lock().expect("hits") += 1;
    let store = store.lock().expect("store");
    axum::Json(tollgate_protocol::FactsBatch {
        facts: req
            .accounts
            .iter()
            .filter_map(|a| store.get(a).cloned())
            .collect(),
    })
}

/// A control plane that serves whatever facts the test put in `store`, counting requests.
async fn stub_control_plane(store: Store, hits: Hits) -> String {
    let app = Router::new()
        .route("/internal/v1/accounts/{id}/facts", get(stub_facts))
        .route("/internal/v1/facts", axum::routing::post(stub_facts_batch))
        .with_state((store, hits));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

fn facts(id: AccountId, version: i64, plan: Option<&str>) -> AccountFacts {
    AccountFacts {
        account_id: id,
        version,
        standing: AccountStanding::Active,
        subscription: plan.map(|p| SubscriptionFacts {
            plan: p.into(),
            status: SubscriptionStatus::Active,
            current_period_end_ms: 0,
            billing_anchor_ms: None,
        }),
        ..AccountFacts::new(id, 0)
    }
}

async fn edge(l2: L2) -> (EdgeState, Store, Hits) {
    edge_with(
        l2,
        redis_keys::Keys::default(),
        tollgate_edge::auth::Tokens::default(),
    )
    .await
}

/// Redis keys of this test's own: tests share one Redis and must not read (or delete) each
/// other's change streams.
fn own_keys() -> redis_keys::Keys {
    redis_keys::Keys::new(&format!("tg-edge-test-{}", uuid::Uuid::now_v7().simple()))
}

async fn edge_with(
    l2: L2,
    keys: redis_keys::Keys,
    tokens: tollgate_edge::auth::Tokens,
) -> (EdgeState, Store, Hits) {
    let store: Store = Arc::default();
    let hits: Hits = Arc::default();
    let base = stub_control_plane(store.clone(), hits.clone()).await;
    let token = || secrecy::SecretString::from("t".to_owned());
    let upstream = Upstream::new(&base, token(), Duration::from_secs(2), l2)
        .expect("upstream")
        .with_redis_keys(keys);
    let mut opts = EdgeOptions::new("test-edge");
    opts.cache_limits = CacheLimits {
        entries_max: 1000,
        bytes_max: 1 << 24,
    };
    opts.negative_ttl_ms = 60_000;
    opts.tokens = tokens;
    let state = EdgeState::new(opts, upstream);
    // The demo rules compiled to WebAssembly and loaded under wasmtime, as a bundle would be.
    let program = tollgate_rules::demo_program();
    let loaded = RulesEngine::new()
        .expect("engine")
        .load_program(&program)
        .expect("load");
    state.install_rules(7, program, loaded);
    (state, store, hits)
}

/// The service token the tests' edges accept when they require one (ignored when they do not).
const SERVICE_TOKEN: &str = "service-token-0000001";

async fn call(state: &EdgeState, method: Method, uri: &str) -> (StatusCode, String, Value) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", format!("Bearer {SERVICE_TOKEN}"))
        .body(Body::empty())
        .expect("req");
    let resp = tollgate_edge::app(state.clone())
        .oneshot(req)
        .await
        .expect("infallible");
    let status = resp.status();
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (
        status,
        ct,
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn checks_answer_from_the_plan_and_errors_are_problem_json() {
    let (state, store, hits) = edge(L2::default()).await;
    let pro = AccountId::new_v7();
    store
        .lock()
        .expect("store")
        .insert(pro, facts(pro, 4, Some("pro")));

    let (s, _, v) = call(
        &state,
        Method::GET,
        &format!("/v1/check?account={pro}&feature=seats"),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        (
            v["allowed"].as_bool(),
            v["limit"].as_i64(),
            v["reason"].as_str()
        ),
        (Some(true), Some(10), Some("granted_by_plan"))
    );
    assert_eq!(
        (v["version"].as_i64(), v["stale"].as_bool()),
        (Some(4), Some(true)),
        "no Redis: answers say stale"
    );
    let (_, _, v) = call(
        &state,
        Method::GET,
        &format!("/v1/check?account={pro}&feature=sso"),
    )
    .await;
    assert_eq!(v["allowed"], true);
    assert_eq!(
        *hits.lock().expect("hits"),
        1,
        "the second check is a cache hit"
    );

    let stranger = AccountId::new_v7();
    let (s, _, v) = call(
        &state,
        Method::GET,
        &format!("/v1/check?account={stranger}&feature=sso"),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        (
            v["allowed"].as_bool(),
            v["reason"].as_str(),
            v["version"].as_i64()
        ),
        (Some(false), Some("unknown_account"), Some(0))
    );
    assert!(v.get("limit").is_none());

    for (uri, status, code) in [
        (
            format!("/v1/check?account={pro}&feature=teleport"),
            StatusCode::NOT_FOUND,
            "unknown_feature",
        ),
        (
            "/v1/check?account=nope&feature=sso".to_owned(),
            StatusCode::BAD_REQUEST,
            "invalid_account_id",
        ),
        (
            "/v1/check?feature=sso".to_owned(),
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            "/v2/check".to_owned(),
            StatusCode::NOT_FOUND,
            "route_not_found",
        ),
    ] {
        let (s, ct, v) = call(&state, Method::GET, &uri).await;
        assert_eq!(
            (s, ct.as_str(), v["code"].as_str()),
            (status, "application/problem+json", Some(code)),
            "{uri}"
        );
    }
    let (s, ct, v) = call(&state, Method::DELETE, "/v1/check").await;
    assert_eq!(
        (s, ct.as_str(), v["code"].as_str()),
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "application/problem+json",
            Some("method_not_allowed")
        )
    );
}

async fn post_json(state: &EdgeState, uri: &str, body: &str) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(Method::POST)
        .uri(uri)
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {SERVICE_TOKEN}"))
        .body(Body::from(body.to_owned()))
        .expect("req");
    let resp = tollgate_edge::app(state.clone())
        .oneshot(req)
        .await
        .expect("infallible");
    let status = resp.status();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_for_a_cold_account_share_one_upstream_fetch() {
    let (state, store, hits) = edge(L2::default()).await;
    let id = AccountId::new_v7();
    store
        .lock()
        .expect("store")
        .insert(id, facts(id, 3, Some("enterprise")));
    STUB_LATENCY_MS.store(150, std::sync::atomic::Ordering::Relaxed);
    let uri = format!("/v1/check?account={id}&feature=seats");
    let calls: Vec<_> = (0..32)
        .map(|_| {
            let (state, uri) = (state.clone(), uri.clone());
            tokio::spawn(async move { call(&state, Method::GET, &uri).await })
        })
        .collect();
    for c in calls {
        let (s, _, v) = c.await.expect("task");
        assert_eq!((s, v["limit"].as_i64()), (StatusCode::OK, Some(100)), "{v}");
    }
    STUB_LATENCY_MS.store(0, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        *hits.lock().expect("hits"),
        1,
        "32 concurrent misses, one fetch"
    );
}

#[tokio::test]
async fn batch_checks_entitlements_and_recent_denials() {
    let (state, store, _) = edge_with(
        L2::default(),
        redis_keys::Keys::default(),
        tollgate_edge::auth::Tokens {
            service: vec![SERVICE_TOKEN.into()],
            operator: vec![],
        },
    )
    .await;
    let pro = AccountId::new_v7();
    store
        .lock()
        .expect("store")
        .insert(pro, facts(pro, 2, Some("pro")));
    let body = format!(
        r#"{{"checks":[{{"account":"{pro}","feature":"sso"}},{{"account":"{pro}","feature":"nope"}},{{"account":"x","feature":"sso"}},{{"account":"{pro}","feature":"seats"}}]}}"#
    );
    let (s, v) = post_json(&state, "/v1/check", &body).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let r = v["results"].as_array().expect("results");
    assert_eq!(r.len(), 4);
    assert_eq!(r[0]["result"]["allowed"], true);
    assert_eq!(r[1]["error"]["code"], "unknown_feature");
    assert_eq!(r[2]["error"]["code"], "invalid_account_id");
    assert_eq!(r[3]["result"]["limit"], 10);
    let (s, v) = post_json(&state, "/v1/check", r#"{"checks":"no"}"#).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_body"))
    );

    let (s, _, v) = call(
        &state,
        Method::GET,
        &format!("/v1/accounts/{pro}/entitlements"),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let features = v["features"].as_array().expect("features");
    let keys: Vec<&str> = features
        .iter()
        .filter_map(|f| f["feature"].as_str())
        .collect();
    assert_eq!(keys, ["sso", "exports", "seats", "api_calls"]);
    assert_eq!(features[3]["limit"], 100_000);
    assert_eq!(
        (v["version"].as_i64(), v["bundle_version"].as_i64()),
        (Some(2), Some(7))
    );

    // A denial is remembered with its reason, newest first.
    let free = AccountId::new_v7();
    store
        .lock()
        .expect("store")
        .insert(free, facts(free, 1, Some("free")));
    call(
        &state,
        Method::GET,
        &format!("/v1/check?account={free}&feature=exports"),
    )
    .await;
    // Anonymous callers see no account ids, and cannot check at all.
    let anonymous = |uri: &str| {
        let req = Request::builder()
            .uri(uri)
            .body(Body::empty())
            .expect("req");
        let app = tollgate_edge::app(state.clone());
        async move {
            let resp = app.oneshot(req).await.expect("infallible");
            let status = resp.status();
            let bytes = resp.into_body().collect().await.expect("body").to_bytes();
            (
                status,
                serde_json::from_slice::<Value>(&bytes).expect("json"),
            )
        }
    };
    let (_, v) = anonymous("/v1/status").await;
    assert!(v["recent_denials"].is_null(), "{v}");
    assert!(!v.to_string().contains(&free.to_string()), "{v}");
    let (s, v) = anonymous(&format!("/v1/check?account={free}&feature=sso")).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("missing_credentials"))
    );
    // A caller with the token sees the denials.
    let (_, _, v) = call(&state, Method::GET, "/v1/status").await;
    let newest = &v["recent_denials"][0];
    assert_eq!(newest["account"], free.to_string());
    assert_eq!(
        (newest["feature"].as_str(), newest["reason"].as_str()),
        (Some("exports"), Some("denied_not_in_plan"))
    );
    assert_eq!(v["bundle_version"], 7);
}

/// An edge with the demo rules following the real Redis change stream, and one cached pro
/// account (facts v1) whose answers are already fresh.
struct Following {
    state: EdgeState,
    store: Store,
    redis: RedisConn,
    follower: tokio::task::JoinHandle<()>,
    account: AccountId,
    uri: String,
    _stop: tokio::sync::watch::Sender<bool>,
}

const STREAM_DEADLINE: Duration = Duration::from_secs(15);

impl Following {
    async fn start() -> Following {
        let url = std::env::var("TOLLGATE_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let client = RedisClient::Single(redis::Client::open(url).expect("url"));
        let redis = client.shared().await.expect("redis");
        let keys = own_keys();
        // Make sure the stream exists, so the follower starts from a real id.
        Self::publish_to(&redis, &keys, &facts(AccountId::new_v7(), 1, None)).await;
        let (state, store, _) = edge_with(
            L2::connected(redis.clone()),
            keys.clone(),
            tollgate_edge::auth::Tokens::default(),
        )
        .await;
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let follower = tokio::spawn(tollgate_edge::stream::follow(
            state.clone(),
            client,
            stop_rx,
        ));
        let account = AccountId::new_v7();
        store
            .lock()
            .expect("store")
            .insert(account, facts(account, 1, Some("pro")));
        let uri = format!("/v1/check?account={account}&feature=sso");
        let f = Following {
            state,
            store,
            redis,
            follower,
            account,
            uri,
            _stop: stop,
        };
        // The follower has read the stream once when answers stop being stale.
        let v = f
            .until(|v| v["stale"] == false, "follower never connected")
            .await;
        assert_eq!(v["allowed"], true);
        f
    }

    async fn publish_to(redis: &RedisConn, keys: &redis_keys::Keys, facts: &AccountFacts) {
        let ev = ChangeEvent {
            facts: facts.clone(),
            committed_at_ms: tollgate_edge::now_ms(),
            changed_at_us: None,
        };
        let mut conn = redis.clone();
        let _: String = redis::cmd("XADD")
            .arg(keys.stream_of(&facts.account_id))
            .arg("*")
            .arg(redis_keys::CHANGE_FIELD)
            .arg(serde_json::to_string(&ev).expect("json"))
            .query_async(&mut conn)
            .await
            .expect("xadd");
    }

    fn keys(&self) -> &redis_keys::Keys {
        self.state.upstream.keys()
    }

    /// Polls the account's `sso` check until `done` holds; returns that answer.
    async fn until(&self, done: impl Fn(&Value) -> bool, what: &str) -> Value {
        until_on(&self.state, self.account, done, what).await
    }
}

#[tokio::test]
async fn the_change_stream_updates_a_cached_account() {
    let f = Following::start().await;
    // The control plane publishes v2 without a subscription.
    Following::publish_to(&f.redis, f.keys(), &facts(f.account, 2, None)).await;
    let v = f
        .until(|v| v["allowed"] == false, "stream event never applied")
        .await;
    assert_eq!(
        (v["reason"].as_str(), v["version"].as_i64()),
        (Some("denied_no_subscription"), Some(2))
    );
    f.follower.abort();
}

#[tokio::test]
async fn a_stream_gap_makes_the_edge_revalidate_what_it_holds() {
    let f = Following::start().await;
    // The account changes while its event is lost: Redis is flushed (the stream deleted), and
    // the control plane then publishes something else, recreating the stream.
    f.store
        .lock()
        .expect("store")
        .insert(f.account, facts(f.account, 2, None));
    let mut conn = f.redis.clone();
    let _: i64 = redis::cmd("DEL")
        .arg(f.keys().stream(0))
        .query_async(&mut conn)
        .await
        .expect("del");
    Following::publish_to(&f.redis, f.keys(), &facts(AccountId::new_v7(), 1, None)).await;
    let v = f
        .until(|v| v["allowed"] == false, "the gap was never noticed")
        .await;
    assert_eq!(
        (v["reason"].as_str(), v["version"].as_i64()),
        (Some("denied_no_subscription"), Some(2))
    );
    f.follower.abort();
}

#[tokio::test]
async fn misses_read_the_l2_once_a_redis_that_was_down_at_boot_comes_up() {
    let mut redis = tollgate_e2e::PrivateRedis::not_started().expect("port");
    let url = redis.url();
    // The edge boots while nothing listens on the Redis port.
    let l2 = L2::default();
    let (state, store, hits) = edge(l2.clone()).await;
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    let client = RedisClient::Single(redis::Client::open(url).expect("url"));
    let connector = tokio::spawn({
        let l2 = l2.clone();
        async move { l2.connect(client.clone(), stop_rx).await }
    });

    // Meanwhile misses go to the control plane.
    let early = AccountId::new_v7();
    store
        .lock()
        .expect("store")
        .insert(early, facts(early, 1, Some("pro")));
    let (s, _, v) = call(
        &state,
        Method::GET,
        &format!("/v1/check?account={early}&feature=sso"),
    )
    .await;
    assert_eq!((s, v["allowed"].as_bool()), (StatusCode::OK, Some(true)));
    assert_eq!(*hits.lock().expect("hits"), 1);

    // Redis comes up; the connector gets through without a restart.
    redis.restart().expect("redis-server");
    tokio::time::timeout(Duration::from_secs(30), connector)
        .await
        .expect("the connector reached redis")
        .expect("join");
    let mut conn = l2.get().expect("connected");

    // An account only the L2 holds (the control plane would say 404) is answered from it.
    let late = AccountId::new_v7();
    let _: () = redis::cmd("SET")
        .arg(state.upstream.keys().facts(&late))
        .arg(serde_json::to_string(&facts(late, 3, Some("pro"))).expect("json"))
        .query_async(&mut conn)
        .await
        .expect("set");
    let (s, _, v) = call(
        &state,
        Method::GET,
        &format!("/v1/check?account={late}&feature=sso"),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        (v["allowed"].as_bool(), v["version"].as_i64()),
        (Some(true), Some(3)),
        "{v}"
    );
    assert_eq!(
        *hits.lock().expect("hits"),
        1,
        "the control plane was not asked"
    );
    let metrics = state.metrics.render();
    assert!(
        metrics.contains("tollgate_edge_fills_total{source=\"Redis\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_batch_of_unknown_accounts_is_fetched_in_one_request() {
    let (state, store, hits) = edge(L2::default()).await;
    let accounts: Vec<AccountId> = (0..256).map(|_| AccountId::new_v7()).collect();
    for a in accounts.iter().step_by(2) {
        store
            .lock()
            .expect("store")
            .insert(*a, facts(*a, 1, Some("pro")));
    }
    let checks: Vec<Value> = accounts
        .iter()
        .map(|a| serde_json::json!({"account": a.to_string(), "feature": "sso"}))
        .collect();
    let body = serde_json::json!({ "checks": checks }).to_string();
    let (s, v) = post_json(&state, "/v1/check", &body).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let results = v["results"].as_array().expect("results");
    for (i, r) in results.iter().enumerate() {
        let expected = if i % 2 == 0 {
            "granted_by_plan"
        } else {
            "unknown_account"
        };
        assert_eq!(r["result"]["reason"], expected, "{r}");
    }
    assert_eq!(
        *hits.lock().expect("hits"),
        1,
        "256 unknown accounts, one control-plane request"
    );
}

#[tokio::test]
async fn fills_past_the_rate_bound_answer_the_fallback_instead_of_flooding_the_control_plane() {
    let store: Store = Arc::default();
    let hits: Hits = Arc::default();
    let base = stub_control_plane(store.clone(), hits.clone()).await;
    let upstream = Upstream::new(
        &base,
        secrecy::SecretString::from("t".to_owned()),
        Duration::from_secs(2),
        L2::default(),
    )
    .expect("upstream")
    .with_fill_limits(tollgate_edge::upstream::FillLimits {
        concurrent_max: 4,
        per_second_max: 10,
    });
    let state = EdgeState::new(EdgeOptions::new("throttled"), upstream);
    let program = tollgate_rules::demo_program();
    let loaded = RulesEngine::new()
        .expect("engine")
        .load_program(&program)
        .expect("load");
    state.install_rules(1, program, loaded);
    // A client asks for 200 ids the edge has never seen, as fast as it can.
    let started = std::time::Instant::now();
    let mut fallbacks = 0;
    for _ in 0..200 {
        let (s, _, v) = call(
            &state,
            Method::GET,
            &format!("/v1/check?account={}&feature=sso", AccountId::new_v7()),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        if v["reason"] == "fallback" {
            assert_eq!(
                (v["allowed"].as_bool(), v["stale"].as_bool()),
                (Some(false), Some(true))
            );
            fallbacks += 1;
        }
    }
    let asked = *hits.lock().expect("hits");
    // The bucket starts full (one second's worth) and refills at 10/s: that many fills at
    // most, however long the 200 requests took on a loaded machine.
    let elapsed = started.elapsed().as_secs_f64();
    let bound = 10 + (10.0 * elapsed).ceil() as u32;
    assert!(
        asked <= bound,
        "{asked} control-plane fills in {elapsed:.2} s for a bound of 10/s"
    );
    assert!(
        elapsed > 5.0 || fallbacks >= 100,
        "{fallbacks} answered from the fallback policy in {elapsed:.2} s"
    );
    assert_eq!(
        fallbacks + asked,
        200,
        "every request not filled is a fallback"
    );
    assert!(
        state
            .metrics
            .render()
            .contains(&format!("tollgate_edge_fills_throttled_total {fallbacks}")),
        "{}",
        state.metrics.render()
    );
}

#[tokio::test]
async fn a_restarted_edge_never_answers_a_grant_revoked_while_it_was_down_as_fresh() {
    let f = Following::start().await;
    let dir = std::env::temp_dir().join(format!("tollgate-edge-resume-{}", uuid::Uuid::now_v7()));
    // The running edge saves its facts (pro, v1) with its stream position, then stops.
    tollgate_edge::bundles::persist_facts(&f.state, &dir).expect("snapshot");
    f.follower.abort();
    // While it is down, the subscription is cancelled: v2 goes out on the stream (and the
    // control plane would answer v2 too, but it is not asked: the stream tells).
    Following::publish_to(&f.redis, f.keys(), &facts(f.account, 2, None)).await;
    // A new edge starts from the saved facts, with the same stream.
    let (after, _, _) = edge_with(
        L2::default(),
        f.keys().clone(),
        tollgate_edge::auth::Tokens::default(),
    )
    .await;
    let restored = tollgate_edge::bundles::restore_facts(&after, &dir);
    assert_eq!(restored.accounts, 1);
    for shard in 0..after.shards() {
        after.mark_stream_read(shard);
    }
    let (_, _, v) = call(&after, Method::GET, &f.uri).await;
    assert_eq!(
        (v["allowed"].as_bool(), v["stale"].as_bool()),
        (Some(true), Some(true)),
        "restored and not yet confirmed: stale, even with the stream readable: {v}"
    );
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    let url = std::env::var("TOLLGATE_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let follower = tokio::spawn(tollgate_edge::stream::follow(
        after.clone(),
        RedisClient::Single(redis::Client::open(url).expect("url")),
        stop_rx,
    ));
    let deadline = tokio::time::Instant::now() + STREAM_DEADLINE;
    loop {
        let (_, _, v) = call(&after, Method::GET, &f.uri).await;
        assert!(
            !(v["allowed"] == true && v["stale"] == false),
            "a revoked grant answered as fresh: {v}"
        );
        if v["allowed"] == false && v["stale"] == false {
            assert_eq!(v["version"], 2);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never caught up: {v}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    follower.abort();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn after_a_stream_gap_fills_skip_the_l2_copy() {
    let f = Following::start().await;
    // Redis lost writes: the stream is gone, and an L2 copy is older than the control plane.
    let mut conn = f.redis.clone();
    let _: i64 = redis::cmd("DEL")
        .arg(f.keys().stream(0))
        .query_async(&mut conn)
        .await
        .expect("del");
    let deadline = tokio::time::Instant::now() + STREAM_DEADLINE;
    while f
        .state
        .metrics
        .render()
        .contains("tollgate_edge_stream_gaps_total 0")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the gap was never noticed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let other = AccountId::new_v7();
    f.store
        .lock()
        .expect("store")
        .insert(other, facts(other, 5, None));
    let _: () = redis::cmd("SET")
        .arg(f.keys().facts(&other))
        .arg(serde_json::to_string(&facts(other, 1, Some("pro"))).expect("json"))
        .query_async(&mut conn)
        .await
        .expect("set");
    let (_, _, v) = call(
        &f.state,
        Method::GET,
        &format!("/v1/check?account={other}&feature=sso"),
    )
    .await;
    assert_eq!(
        (v["allowed"].as_bool(), v["version"].as_i64()),
        (Some(false), Some(5)),
        "the control plane's facts, not the L2 copy: {v}"
    );
    f.follower.abort();
}

#[tokio::test]
async fn right_after_a_bundle_swap_an_entry_answers_by_its_own_bundle_or_rematerialises() {
    let (state, store, _) = edge(L2::default()).await;
    let free = AccountId::new_v7();
    store
        .lock()
        .expect("store")
        .insert(free, facts(free, 1, Some("free")));
    let check = |f: &str| format!("/v1/check?account={free}&feature={f}");
    let (_, _, v) = call(&state, Method::GET, &check("seats")).await;
    assert_eq!(v["limit"], 1, "{v}");
    // A new bundle puts a new feature first (every index moves) and grants it to free.
    let source = tollgate_rules::DEMO_SOURCE
        .replacen(
            "feature sso: bool",
            "feature beta: bool\nfeature sso: bool",
            1,
        )
        .replacen(
            "    grant seats = 1\n",
            "    grant seats = 1\n    grant beta\n",
            1,
        );
    let file = tollgate_rules::lang::SourceFile {
        name: "beta.tg".into(),
        text: source,
    };
    let (program, _) = tollgate_rules::lang::compile_source(&file).expect("compiles");
    let loaded = RulesEngine::new()
        .expect("engine")
        .load_program(&program)
        .expect("load");
    state.install_rules(8, program, loaded);
    // The background pass has not run: the cached entry is still the old bundle's.
    let (_, _, v) = call(&state, Method::GET, &check("seats")).await;
    assert_eq!(
        (v["limit"].as_i64(), v["bundle_version"].as_i64()),
        (Some(1), Some(7)),
        "seats read by the old bundle's index, not the new one's: {v}"
    );
    let (_, _, v) = call(&state, Method::GET, &check("sso")).await;
    assert_eq!(
        (v["allowed"].as_bool(), v["reason"].as_str()),
        (Some(false), Some("denied_not_in_plan")),
        "{v}"
    );
    // A feature only the new bundle has: the entry re-materialises now.
    let (_, _, v) = call(&state, Method::GET, &check("beta")).await;
    assert_eq!(
        (v["allowed"].as_bool(), v["bundle_version"].as_i64()),
        (Some(true), Some(8)),
        "{v}"
    );
    // The entitlements view lists the new bundle's features with their decisions.
    let (_, _, v) = call(
        &state,
        Method::GET,
        &format!("/v1/accounts/{free}/entitlements"),
    )
    .await;
    let beta = &v["features"][0];
    assert_eq!(
        (beta["feature"].as_str(), beta["allowed"].as_bool()),
        (Some("beta"), Some(true)),
        "{v}"
    );
}

/// Polls `account`'s `sso` check on `state` until `done` holds; returns that answer.
async fn until_on(
    state: &EdgeState,
    account: AccountId,
    done: impl Fn(&Value) -> bool,
    what: &str,
) -> Value {
    let uri = format!("/v1/check?account={account}&feature=sso");
    let deadline = tokio::time::Instant::now() + STREAM_DEADLINE;
    loop {
        let (_, _, v) = call(state, Method::GET, &uri).await;
        if done(&v) {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: {v}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_restarted_edge_resumes_every_stream_shard_from_its_saved_position() {
    let url = std::env::var("TOLLGATE_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let client = RedisClient::Single(redis::Client::open(url).expect("url"));
    let redis = client.shared().await.expect("redis");
    let keys = redis_keys::Keys::sharded(
        &format!("tg-edge-test-{}", uuid::Uuid::now_v7().simple()),
        3,
    );
    // One pro account on each of the three shards, each shard's stream holding its v1.
    let mut accounts: Vec<Option<AccountId>> = vec![None; 3];
    while accounts.iter().any(Option::is_none) {
        let a = AccountId::new_v7();
        accounts[usize::from(keys.shard_of(&a))].get_or_insert(a);
    }
    let accounts: Vec<AccountId> = accounts.into_iter().flatten().collect();
    for a in &accounts {
        Following::publish_to(&redis, &keys, &facts(*a, 1, Some("pro"))).await;
    }
    let (before, store, _) = edge_with(
        L2::default(),
        keys.clone(),
        tollgate_edge::auth::Tokens::default(),
    )
    .await;
    for a in &accounts {
        store
            .lock()
            .expect("store")
            .insert(*a, facts(*a, 1, Some("pro")));
    }
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let follower = tokio::spawn(tollgate_edge::stream::follow(
        before.clone(),
        client.clone(),
        stop_rx,
    ));
    for a in &accounts {
        until_on(
            &before,
            *a,
            |v| v["allowed"] == true && v["stale"] == false,
            "a fresh grant on every shard",
        )
        .await;
    }
    // Every shard's follower has a position of its own stream.
    let positions = before.stream_positions();
    assert!(positions.iter().all(Option::is_some), "{positions:?}");
    let dir = std::env::temp_dir().join(format!("tollgate-edge-shards-{}", uuid::Uuid::now_v7()));
    tollgate_edge::bundles::persist_facts(&before, &dir).expect("snapshot");
    let _ = stop.send(true);
    follower.abort();

    // While the edge is down, the accounts of shards 0 and 2 lose their plan; only the stream
    // says so (the stub control plane keeps answering v1: a revalidation would not tell).
    for a in [accounts[0], accounts[2]] {
        Following::publish_to(&redis, &keys, &facts(a, 2, None)).await;
    }
    let (after, _, hits) = edge_with(
        L2::default(),
        keys.clone(),
        tollgate_edge::auth::Tokens::default(),
    )
    .await;
    let restored = tollgate_edge::bundles::restore_facts(&after, &dir);
    assert_eq!(restored.accounts, 3);
    assert_eq!(
        after.stream_positions(),
        positions,
        "one position per shard"
    );
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    let follower = tokio::spawn(tollgate_edge::stream::follow(
        after.clone(),
        client.clone(),
        stop_rx,
    ));
    for (i, a) in accounts.iter().enumerate() {
        let want_allowed = i == 1;
        let v = until_on(
            &after,
            *a,
            |v| {
                assert!(
                    !(v["allowed"] == true && v["stale"] == false && i != 1),
                    "a revoked grant answered as fresh: {v}"
                );
                v["allowed"] == want_allowed && v["stale"] == false
            },
            "every shard resumed and caught up",
        )
        .await;
        assert_eq!(v["version"], if want_allowed { 1 } else { 2 }, "{v}");
    }
    assert_eq!(
        *hits.lock().expect("hits"),
        0,
        "the changes came from the streams, not the control plane"
    );
    follower.abort();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_change_event_with_absurd_times_is_applied_and_stops_nothing() {
    let (state, store, _) = edge(L2::default()).await;
    let account = AccountId::new_v7();
    store
        .lock()
        .expect("store")
        .insert(account, facts(account, 1, Some("free")));
    let uri = format!("/v1/check?account={account}&feature=sso");
    let (_, _, v) = call(&state, Method::GET, &uri).await;
    assert_eq!(v["allowed"], false);
    // A stream entry from a broken writer, or a Redis restored from who knows what: the times
    // are for metrics only, so the change still applies and the follower carries on.
    for (version, committed_at_ms, changed_at_us) in [
        (2, i64::MAX, Some(i64::MIN)),
        (3, i64::MIN, None),
        (4, -1, Some(i64::MAX)),
    ] {
        state.apply_change(ChangeEvent {
            facts: facts(
                account,
                version,
                Some(if version % 2 == 0 { "pro" } else { "free" }),
            ),
            committed_at_ms,
            changed_at_us,
        });
        let (_, _, v) = call(&state, Method::GET, &uri).await;
        assert_eq!(
            (v["allowed"].as_bool(), v["version"].as_i64()),
            (Some(version % 2 == 0), Some(version)),
            "{v}"
        );
    }
}

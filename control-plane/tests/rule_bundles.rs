//! The rule-bundle admin API and the bundle edges fetch, through the real router and real
//! PostgreSQL: upload verifies and self-tests, versions are immutable, activation and rollback
//! are audited, the stable bundle's catalog is what checkout sells, edges get ETag / 304.

mod common;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use common::Harness;
use tollgate_rules::bundle::{self, SigningKey};
use tollgate_rules::compiler;
use tollgate_rules::lang::SourceFile;

fn demo() -> String {
    tollgate_rules::DEMO_SOURCE.to_owned()
}

fn signed(source: &str, version: u64, key: &SigningKey) -> Vec<u8> {
    let file = SourceFile {
        name: "rules.tg".into(),
        text: source.to_owned(),
    };
    let compiled = compiler::compile(&file).unwrap_or_else(|d| panic!("{}", d[0].render(&file)));
    bundle::build(&compiled, source, version, 0)
        .expect("build")
        .sign(key)
}

/// demo.tg without the enterprise plan (and its test).
fn without_enterprise() -> String {
    let src = demo();
    let start = src.find("plan enterprise").expect("plan");
    let end = start + src[start..].find("\n}\n").expect("end") + 3;
    let src = format!("{}{}", &src[..start], &src[end..]);
    let t = src.find("test \"enterprise\"").expect("test");
    let te = t + src[t..].find("\n}\n").expect("end") + 3;
    let src = format!("{}{}", &src[..t], &src[te..]);
    let b = src
        .find("test \"banned accounts get nothing\"")
        .expect("banned test");
    src[..b].to_owned()
        + &src[b..].replacen(
            "given plan = enterprise, banned",
            "given plan = pro, banned",
            1,
        )
}

async fn bundle_for(h: &Harness, edge: &str, etag: Option<&str>) -> common::Resp {
    let mut req = Request::builder()
        .uri(format!("/internal/v1/bundle?edge_id={edge}"))
        .header("authorization", "Bearer test-edge-token");
    if let Some(t) = etag {
        req = req.header("if-none-match", t);
    }
    h.send(req.body(Body::empty()).expect("req")).await
}

#[tokio::test]
async fn uploads_are_verified_self_tested_and_immutable_per_version() {
    let h = Harness::new().await;
    let v1 = signed(&demo(), 1, &h.key);
    let r = h.admin_upload(v1.clone()).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
    assert_eq!(
        (r.json["version"].as_u64(), r.json["tests"].as_u64()),
        (Some(1), Some(10))
    );
    assert_eq!(
        h.admin_upload(v1).await.status,
        StatusCode::OK,
        "the same bundle again is a no-op"
    );
    let other = signed(&without_enterprise(), 1, &h.key);
    h.admin_upload(other)
        .await
        .assert_problem(StatusCode::CONFLICT, "bundle_version_exists");

    // Signed by a key the control plane does not trust.
    let stranger = SigningKey::generate("stranger");
    h.admin_upload(signed(&demo(), 2, &stranger))
        .await
        .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "bundle_invalid");
    // Tampered after signing.
    let mut tampered = signed(&demo(), 3, &h.key);
    let n = tampered.len();
    tampered[n - 10] ^= 0x55;
    h.admin_upload(tampered)
        .await
        .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "bundle_invalid");
    h.admin_upload(b"not a bundle".to_vec())
        .await
        .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "bundle_invalid");

    // Auth: the admin token and an actor name are both required.
    let req = Request::builder()
        .method(Method::POST)
        .uri("/admin/v1/bundles")
        .header("authorization", "Bearer test-admin-token")
        .body(Body::from(vec![1u8]))
        .expect("req");
    h.send(req)
        .await
        .assert_problem(StatusCode::BAD_REQUEST, "actor_required");
    h.get("/admin/v1/bundles", Some("test-edge-token"))
        .await
        .assert_problem(StatusCode::UNAUTHORIZED, "invalid_token");
    let list = h.admin(Method::GET, "/admin/v1/bundles", None).await;
    assert_eq!(
        list.json["data"].as_array().map(Vec::len),
        Some(1),
        "{}",
        list.json
    );
    h.finish().await;
}

#[tokio::test]
async fn edges_get_their_bundle_with_etags_and_canaries_by_edge_id() {
    let h = Harness::new().await;
    bundle_for(&h, "edge-1", None)
        .await
        .assert_problem(StatusCode::NOT_FOUND, "no_active_bundle");
    h.admin_upload(signed(&demo(), 1, &h.key)).await;
    h.admin_upload(signed(&without_enterprise(), 2, &h.key))
        .await;
    let r = h
        .admin(
            Method::POST,
            "/admin/v1/bundles/1/activate",
            Some(r#"{"canary_percent":30}"#),
        )
        .await;
    assert_eq!(
        (r.status, r.json["stable_version"].as_i64()),
        (StatusCode::OK, Some(1)),
        "first activation promotes: {}",
        r.json
    );

    let first = bundle_for(&h, "edge-1", None).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.etag.as_deref(), Some("\"v1\""));
    assert!(
        bundle::verify(
            &first.bytes,
            &tollgate_rules::bundle::TrustedKeys::new(vec![h.key.public()])
        )
        .is_ok()
    );
    assert_eq!(
        bundle_for(&h, "edge-1", Some("\"v1\"")).await.status,
        StatusCode::NOT_MODIFIED
    );

    let r = h
        .admin(
            Method::POST,
            "/admin/v1/bundles/2/activate",
            Some(r#"{"canary_percent":30}"#),
        )
        .await;
    assert_eq!(
        (
            r.json["canary_version"].as_i64(),
            r.json["canary_percent"].as_i64()
        ),
        (Some(2), Some(30)),
        "{}",
        r.json
    );
    let mut versions = std::collections::BTreeMap::new();
    for i in 0..200 {
        let id = format!("edge-{i}");
        let r = bundle_for(&h, &id, None).await;
        let expected = if tollgate_protocol::canary::in_canary(&id, 30) {
            "\"v2\""
        } else {
            "\"v1\""
        };
        assert_eq!(r.etag.as_deref(), Some(expected), "{id}");
        *versions.entry(expected).or_insert(0) += 1;
    }
    assert!(
        versions.len() == 2,
        "both versions are served: {versions:?}"
    );
    h.admin(
        Method::POST,
        "/admin/v1/bundles/9/activate",
        Some(r#"{"canary_percent":30}"#),
    )
    .await
    .assert_problem(StatusCode::NOT_FOUND, "not_found");
    h.admin(
        Method::POST,
        "/admin/v1/bundles/2/activate",
        Some(r#"{"canary_percent":101}"#),
    )
    .await
    .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "invalid_canary_percent");

    // Edges report what they run; the fleet view says who has converged.
    let status = Request::builder()
        .method(Method::POST)
        .uri("/internal/v1/edges/edge-1/status")
        .header("authorization", "Bearer test-edge-token")
        .header("content-type", "application/json")
        .body(Body::from(r#"{"bundle_version":1,"last_error":null}"#))
        .expect("req");
    assert_eq!(h.send(status).await.status, StatusCode::NO_CONTENT);
    let fleet = h.admin(Method::GET, "/admin/v1/edges", None).await;
    assert_eq!(fleet.json["data"][0]["edge_id"], "edge-1");
    assert_eq!(fleet.json["data"][0]["bundle_version"], 1);
    h.finish().await;
}

#[tokio::test]
async fn promotion_sets_what_checkout_sells_and_rollback_restores_it() {
    let h = Harness::new().await;
    h.admin(Method::POST, "/admin/v1/rollback", None)
        .await
        .assert_problem(StatusCode::CONFLICT, "nothing_to_roll_back_to");
    h.admin_upload(signed(&demo(), 1, &h.key)).await;
    h.admin_upload(signed(&without_enterprise(), 2, &h.key))
        .await;
    assert_eq!(
        h.admin(Method::POST, "/admin/v1/bundles/1/promote", None)
            .await
            .status,
        StatusCode::OK
    );
    let r = h
        .admin(Method::POST, "/admin/v1/bundles/2/promote", None)
        .await;
    assert_eq!(
        (
            r.json["stable_version"].as_i64(),
            r.json["previous_stable"].as_i64()
        ),
        (Some(2), Some(1))
    );

    let (_, token) = h.sign_up("buyer@example.com").await;
    h.add_card(&token, "pm_card_visa").await;
    h.post(
        "/v1/checkout",
        Some(&token),
        Some("e"),
        r#"{"plan":"enterprise"}"#,
    )
    .await
    .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "unknown_plan");
    let plans = h.get("/v1/plans", None).await;
    let keys: Vec<&str> = plans.json["data"]
        .as_array()
        .expect("plans")
        .iter()
        .filter_map(|p| p["key"].as_str())
        .collect();
    assert_eq!(keys, ["free", "pro"]);

    let r = h.admin(Method::POST, "/admin/v1/rollback", None).await;
    assert_eq!(r.json["stable_version"].as_i64(), Some(1), "{}", r.json);
    let r = h
        .post(
            "/v1/checkout",
            Some(&token),
            Some("e2"),
            r#"{"plan":"enterprise"}"#,
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "enterprise is for sale again: {}",
        r.json
    );

    let audit = h.admin(Method::GET, "/admin/v1/audit", None).await;
    let actions: Vec<&str> = audit.json["data"]
        .as_array()
        .expect("audit")
        .iter()
        .filter_map(|a| a["action"].as_str())
        .collect();
    assert_eq!(
        actions,
        ["upload", "upload", "promote", "promote", "rollback"]
    );
    assert!(
        audit.json["data"]
            .as_array()
            .expect("audit")
            .iter()
            .all(|a| a["actor"] == "tester" && a["at"].is_string())
    );
    h.finish().await;
}

#[tokio::test]
async fn correctly_signed_bundles_with_hostile_modules_are_contained_and_refused() {
    use tollgate_rules::testkit::{Hostile, hostile_module, with_module};
    let h = Harness::new().await;
    h.admin_upload(signed(&demo(), 1, &h.key)).await;
    h.admin(Method::POST, "/admin/v1/bundles/1/promote", None)
        .await;
    let file = SourceFile {
        name: "rules.tg".into(),
        text: demo(),
    };
    let compiled = compiler::compile(&file).expect("demo compiles");
    let shape = compiled.program.shape();
    for (i, (kind, code)) in [
        (Hostile::EndlessLoop, "bundle_tests_failed"),
        (Hostile::GrowMemory, "bundle_tests_failed"),
        (Hostile::Trap, "bundle_tests_failed"),
        (Hostile::Garbage, "bundle_tests_failed"),
        (Hostile::Imports, "bundle_module_refused"),
    ]
    .into_iter()
    .enumerate()
    {
        let version = 10 + i as u64;
        let unsigned = bundle::build(&compiled, &demo(), version, 0).expect("build");
        let hostile = with_module(unsigned, hostile_module(kind, shape)).sign(&h.key);
        let started = std::time::Instant::now();
        let r = h.admin_upload(hostile).await;
        r.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, code);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{kind:?} was contained quickly"
        );
    }
    // Nothing was stored and the stable bundle is unchanged.
    let list = h.admin(Method::GET, "/admin/v1/bundles", None).await;
    assert_eq!(list.json["data"].as_array().map(Vec::len), Some(1));
    assert_eq!(list.json["rollout"]["stable_version"], 1);
    h.finish().await;
}

#[tokio::test]
async fn a_stored_bundle_of_an_older_format_is_refused_with_a_conflict_not_a_500() {
    let h = Harness::new().await;
    h.admin_upload(signed(&demo(), 1, &h.key)).await;
    h.admin_upload(signed(&without_enterprise(), 2, &h.key))
        .await;
    let r = h
        .admin(Method::POST, "/admin/v1/bundles/2/promote", None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    // Version 1 was stored by an older build, in the bundle format before this one.
    sqlx::query(
        "UPDATE rule_bundles SET manifest = jsonb_set(manifest, '{format}', '1') WHERE version = 1",
    )
    .execute(&h.state.cf)
    .await
    .expect("age it");
    let r = h.admin(Method::GET, "/admin/v1/bundles", None).await;
    let readable: Vec<(i64, bool)> = r.json["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|b| {
            (
                b["version"].as_i64().expect("v"),
                b["readable"].as_bool().expect("readable"),
            )
        })
        .collect();
    assert_eq!(readable, [(1, false), (2, true)]);
    h.admin(Method::POST, "/admin/v1/bundles/1/promote", None)
        .await
        .assert_problem(StatusCode::CONFLICT, "bundle_format_unsupported");
    h.admin(
        Method::POST,
        "/admin/v1/rollback",
        Some(r#"{"to_version":1}"#),
    )
    .await
    .assert_problem(StatusCode::CONFLICT, "bundle_format_unsupported");
    h.finish().await;
}

/// The mirror's rows as `(lookup_key, status, price_id)`, newest bundle first.
async fn mirrored(h: &Harness) -> Vec<(String, String, Option<String>)> {
    let r = h.admin(Method::GET, "/admin/v1/catalog/prices", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    r.json["data"]
        .as_array()
        .expect("prices")
        .iter()
        .map(|p| {
            (
                p["lookup_key"].as_str().expect("key").to_owned(),
                p["status"].as_str().expect("status").to_owned(),
                p["price_id"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

async fn count(h: &Harness, table: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
        .fetch_one(&h.state.cf)
        .await
        .expect("count")
}

#[tokio::test]
async fn promotion_mirrors_each_plan_to_one_provider_price_per_bundle_version() {
    use tollgate_control_plane::catalog::mirror;
    use tollgate_control_plane::clock::Clock;
    let knobs = common::gateway::Knobs::default();
    let h = Harness::with_gateway(knobs.wrapper()).await;
    h.admin_upload(signed(&demo(), 1, &h.key)).await;
    h.admin_upload(signed(&without_enterprise(), 2, &h.key))
        .await;
    h.admin(Method::POST, "/admin/v1/bundles/1/promote", None)
        .await;
    let pending = mirrored(&h).await;
    assert_eq!(
        pending
            .iter()
            .map(|(k, s, id)| (k.as_str(), s.as_str(), id.is_some()))
            .collect::<Vec<_>>(),
        [
            ("enterprise:v1", "pending", false),
            ("free:v1", "pending", false),
            ("pro:v1", "pending", false)
        ],
        "the promotion itself records what to mirror, before any provider call"
    );

    // The provider creates the prices but the answer is lost: nothing is recorded as
    // mirrored, and the retry (after its backoff) finds the same prices by lookup key.
    knobs
        .lose_price_answers
        .store(3, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(mirror::run_due(&h.state, 20).await.expect("run"), 0);
    assert_eq!(count(&h, "sim_prices").await, 3, "created at the provider");
    let r = h.admin(Method::GET, "/admin/v1/catalog/prices", None).await;
    let first = &r.json["data"][0];
    assert_eq!(first["attempts"], 1, "{first}");
    assert!(
        first["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("timed out")),
        "the failure is visible: {first}"
    );
    assert_eq!(
        mirror::run_due(&h.state, 20).await.expect("run"),
        0,
        "not due again before its backoff"
    );
    h.clock
        .advance(mirror::backoff(1) + chrono::TimeDelta::seconds(1));
    assert_eq!(mirror::run_due(&h.state, 20).await.expect("run"), 3);
    assert_eq!(count(&h, "sim_prices").await, 3, "no second price");
    let done = mirrored(&h).await;
    assert!(
        done.iter()
            .all(|(_, s, id)| s == "mirrored" && id.is_some())
    );
    assert_eq!(mirror::run_due(&h.state, 20).await.expect("run"), 0);

    // A new version gets prices of its own; going back to version 1 asks for nothing new.
    h.admin(Method::POST, "/admin/v1/bundles/2/promote", None)
        .await;
    h.admin(Method::POST, "/admin/v1/rollback", None).await;
    assert_eq!(
        mirrored(&h)
            .await
            .iter()
            .map(|(k, s, _)| (k.as_str(), s.as_str()))
            .collect::<Vec<_>>(),
        [
            ("free:v2", "pending"),
            ("pro:v2", "pending"),
            ("enterprise:v1", "mirrored"),
            ("free:v1", "mirrored"),
            ("pro:v1", "mirrored")
        ]
    );
    // Two workers at once: every row is claimed by one of them (the lease), one price each.
    let (a, b) = tokio::join!(mirror::run_due(&h.state, 20), mirror::run_due(&h.state, 20));
    assert_eq!(a.expect("a") + b.expect("b"), 2);
    assert_eq!(count(&h, "sim_prices").await, 5);
    assert_eq!(
        count(&h, "sim_products").await,
        3,
        "one product per plan, across versions"
    );
    let by_key: std::collections::HashMap<String, Option<String>> = mirrored(&h)
        .await
        .into_iter()
        .map(|(k, _, id)| (k, id))
        .collect();
    assert_ne!(by_key["pro:v1"], by_key["pro:v2"], "a price per version");
    h.finish().await;
}

#[tokio::test]
async fn a_lookup_key_that_names_another_price_at_the_provider_is_reported_not_replaced() {
    use tollgate_control_plane::catalog::mirror;
    let h = Harness::new().await;
    // The provider already holds `pro:v1` at another amount (e.g. a database restored from an
    // older backup than the provider's state).
    sqlx::query("INSERT INTO sim_products (id, name) VALUES ('tg_plan_pro', 'Pro')")
        .execute(&h.state.cf)
        .await
        .expect("product");
    sqlx::query(
        "INSERT INTO sim_prices (id, lookup_key, product, amount_minor, currency, interval)
         VALUES ('price_simold', 'pro:v1', 'tg_plan_pro', 1, 'USD', 'month')",
    )
    .execute(&h.state.cf)
    .await
    .expect("price");
    h.admin_upload(signed(&demo(), 1, &h.key)).await;
    h.admin(Method::POST, "/admin/v1/bundles/1/promote", None)
        .await;
    assert_eq!(mirror::run_due(&h.state, 20).await.expect("run"), 2);
    let r = h.admin(Method::GET, "/admin/v1/catalog/prices", None).await;
    let pro = r.json["data"]
        .as_array()
        .expect("prices")
        .iter()
        .find(|p| p["lookup_key"] == "pro:v1")
        .expect("pro")
        .clone();
    assert_eq!(pro["status"], "pending", "{pro}");
    assert!(pro["price_id"].is_null(), "{pro}");
    assert!(
        pro["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("already names another price")),
        "{pro}"
    );
    let amount: i64 =
        sqlx::query_scalar("SELECT amount_minor FROM sim_prices WHERE lookup_key = 'pro:v1'")
            .fetch_one(&h.state.cf)
            .await
            .expect("amount");
    assert_eq!(amount, 1, "the provider's price is left as it was");
    h.finish().await;
}

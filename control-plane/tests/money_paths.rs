//! The control plane's money paths, attacked: a payment never ends without its purchase or a
//! refund, the sold catalog is exactly the stable bundle's, a checkout completes from its own
//! snapshot, rollback never goes nowhere, no lock is held across a provider call, and
//! idempotency holds under concurrency, resumes after a provider that failed after charging,
//! and never hands out a credential late. Real router, real PostgreSQL and Redis, the
//! simulated provider (in PostgreSQL), wrapped where a test needs it to stall or fail.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use chrono::TimeDelta;
use common::Harness;
use common::gateway::Knobs;
use tollgate_control_plane::clock::Clock;
use tollgate_rules::bundle::{self, SigningKey};

fn intent_of(client_secret: &str) -> String {
    client_secret
        .split("_secret_")
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// A customer with a ready 3-D Secure card (challenged again on every on-session payment).
async fn customer_with_3ds_card(h: &Harness, email: &str) -> (String, String) {
    let (account, token) = h.sign_up(email).await;
    h.add_3ds_card(&token, "pm_card_threeDSecure2Required")
        .await;
    (account, token)
}

/// Starts a paid checkout that waits for 3-D Secure; returns (checkout id, intent id).
async fn waiting_checkout(h: &Harness, token: &str, plan: &str, key: &str) -> (String, String) {
    let r = h
        .post(
            "/v1/checkout",
            Some(token),
            Some(key),
            &format!(r#"{{"plan":"{plan}"}}"#),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);
    (r.str("/checkout/id"), intent_of(&r.str("/client_secret")))
}

async fn maintenance(h: &Harness) {
    tollgate_control_plane::maintenance::run(&h.state)
        .await
        .expect("maintenance");
}

fn signed(source: &str, version: u64, key: &SigningKey) -> Vec<u8> {
    let file = tollgate_rules::lang::SourceFile {
        name: "rules.tg".into(),
        text: source.to_owned(),
    };
    let compiled = tollgate_rules::compiler::compile(&file)
        .unwrap_or_else(|d| panic!("{}", d[0].render(&file)));
    bundle::build(&compiled, source, version, 0)
        .expect("build")
        .sign(key)
}

/// The demo rules without the enterprise plan (and the tests that name it).
fn without_enterprise() -> String {
    let src = tollgate_rules::DEMO_SOURCE.to_owned();
    let start = src.find("plan enterprise").expect("plan");
    let end = start + src[start..].find("\n}\n").expect("end") + 3;
    let src = format!("{}{}", &src[..start], &src[end..]);
    let t = src.find("test \"enterprise\"").expect("test");
    let te = t + src[t..].find("\n}\n").expect("end") + 3;
    let src = format!("{}{}", &src[..t], &src[te..]);
    src.replacen(
        "given plan = enterprise, banned",
        "given plan = pro, banned",
        1,
    )
}

/// The demo rules without the extra_seats add-on (and its test).
fn without_extra_seats() -> String {
    let cut = |src: &str, from: &str| {
        let start = src.find(from).expect("block");
        let end = start + src[start..].find("\n}\n").expect("end") + 3;
        format!("{}{}", &src[..start], &src[end..])
    };
    cut(
        &cut(tollgate_rules::DEMO_SOURCE, "addon extra_seats"),
        "test \"extra seats",
    )
}

/// The demo rules with pro re-priced.
fn pro_at(price_minor: i64) -> String {
    let src = tollgate_rules::DEMO_SOURCE;
    let start = src.find("plan pro").expect("pro");
    let price = start + src[start..].find("price ").expect("price");
    let end = price + src[price..].find(" USD").expect("currency");
    format!("{}price {price_minor}{}", &src[..price], &src[end..])
}

async fn promote(h: &Harness, source: &str, version: u64) {
    let r = h.admin_upload(signed(source, version, &h.key)).await;
    assert!(r.status.is_success(), "{}", r.json);
    let r = h
        .admin(
            Method::POST,
            &format!("/admin/v1/bundles/{version}/promote"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
}

async fn plans_on_sale(h: &Harness) -> Vec<String> {
    let r = h.get("/v1/plans", None).await;
    r.json["data"]
        .as_array()
        .expect("plans")
        .iter()
        .map(|p| p["key"].as_str().expect("key").to_owned())
        .collect()
}

#[tokio::test]
async fn a_payment_authenticated_but_never_confirmed_completes_instead_of_expiring() {
    let h = Harness::new().await;
    let (_, token) = customer_with_3ds_card(&h, "closed-tab@example.com").await;
    let (checkout, intent) = waiting_checkout(&h, &token, "pro", "buy-1").await;
    // The customer passes the challenge, then closes the tab: confirm never comes.
    h.authenticate(&intent, true).await;
    h.clock
        .advance(TimeDelta::hours(23) + TimeDelta::minutes(1));
    maintenance(&h).await;
    let c = h
        .get(&format!("/v1/checkout/{checkout}"), Some(&token))
        .await;
    assert_eq!(c.json["status"], "succeeded", "{}", c.json);
    let subs = h.get("/v1/subscriptions", Some(&token)).await;
    assert_eq!(subs.json["data"][0]["status"], "active", "{}", subs.json);
    assert_eq!(subs.json["data"][0]["amount_minor"], 2900);
    // A late confirm answers with the purchase, not 410.
    let late = h
        .post(
            &format!("/v1/checkout/{checkout}/confirm"),
            Some(&token),
            None,
            "",
        )
        .await;
    assert_eq!(late.status, StatusCode::OK, "{}", late.json);
    assert_eq!(late.json["subscription"]["plan"], "pro");
    h.finish().await;
}

#[tokio::test]
async fn expiry_waits_while_the_provider_cannot_say_what_happened_to_the_payment() {
    let knobs = Knobs::default();
    let h = Harness::with_gateway(knobs.wrapper()).await;
    let (_, token) = customer_with_3ds_card(&h, "unknown@example.com").await;
    let (checkout, intent) = waiting_checkout(&h, &token, "pro", "buy-1").await;
    h.authenticate(&intent, true).await;
    h.clock.advance(TimeDelta::hours(24));
    knobs.fail_reads.store(true, Ordering::SeqCst);
    maintenance(&h).await;
    let c = h
        .get(&format!("/v1/checkout/{checkout}"), Some(&token))
        .await;
    assert_eq!(
        c.json["status"], "requires_action",
        "not expired blind: {}",
        c.json
    );
    knobs.fail_reads.store(false, Ordering::SeqCst);
    maintenance(&h).await;
    let c = h
        .get(&format!("/v1/checkout/{checkout}"), Some(&token))
        .await;
    assert_eq!(c.json["status"], "succeeded", "{}", c.json);
    h.finish().await;
}

#[tokio::test]
async fn an_unpaid_checkout_past_its_expiry_is_canceled_at_the_provider_then_expired() {
    let h = Harness::new().await;
    let (_, token) = customer_with_3ds_card(&h, "walked-away@example.com").await;
    let (checkout, intent) = waiting_checkout(&h, &token, "pro", "buy-1").await;
    h.clock.advance(TimeDelta::hours(24));
    maintenance(&h).await;
    let c = h
        .get(&format!("/v1/checkout/{checkout}"), Some(&token))
        .await;
    assert_eq!(c.json["status"], "expired", "{}", c.json);
    // The provider's intent is canceled too: a challenge passed now cannot charge.
    let r = h
        .post(
            &format!("/dev/v1/simulator/intents/{intent}/authenticate"),
            None,
            None,
            r#"{"outcome":"succeed"}"#,
        )
        .await;
    r.assert_problem(StatusCode::CONFLICT, "not_awaiting_authentication");
    h.finish().await;
}

#[tokio::test]
async fn a_customer_cancels_a_waiting_checkout_and_can_buy_again_at_once() {
    let h = Harness::new().await;
    let (_, token) = customer_with_3ds_card(&h, "cancel@example.com").await;
    let (checkout, _) = waiting_checkout(&h, &token, "pro", "buy-1").await;
    // Every other purchase is refused while it waits...
    h.post(
        "/v1/checkout",
        Some(&token),
        Some("free-1"),
        r#"{"plan":"free"}"#,
    )
    .await
    .assert_problem(StatusCode::CONFLICT, "checkout_in_progress");
    // ...until the customer abandons it.
    let r = h
        .post(
            &format!("/v1/checkout/{checkout}/cancel"),
            Some(&token),
            None,
            "",
        )
        .await;
    assert_eq!(
        (r.status, r.json["checkout"]["status"].as_str()),
        (StatusCode::OK, Some("canceled")),
        "{}",
        r.json
    );
    let again = h
        .post(
            &format!("/v1/checkout/{checkout}/cancel"),
            Some(&token),
            None,
            "",
        )
        .await;
    assert_eq!(again.status, StatusCode::OK, "canceling twice is fine");
    let r = h
        .post(
            "/v1/checkout",
            Some(&token),
            Some("free-2"),
            r#"{"plan":"free"}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
    h.finish().await;
}

#[tokio::test]
async fn canceling_a_checkout_whose_payment_went_through_completes_it_instead() {
    let h = Harness::new().await;
    let (_, token) = customer_with_3ds_card(&h, "too-late@example.com").await;
    let (checkout, intent) = waiting_checkout(&h, &token, "pro", "buy-1").await;
    h.authenticate(&intent, true).await;
    let r = h
        .post(
            &format!("/v1/checkout/{checkout}/cancel"),
            Some(&token),
            None,
            "",
        )
        .await;
    r.assert_problem(StatusCode::CONFLICT, "checkout_already_paid");
    assert_eq!(r.json["subscription"]["plan"], "pro");
    assert_eq!(h.count("SELECT count(*) FROM subscriptions").await, 1);
    h.finish().await;
}

#[tokio::test]
async fn an_abandoned_card_set_up_is_reconciled_instead_of_waiting_forever() {
    let h = Harness::new().await;
    let (_, token) = h.sign_up("abandoned-card@example.com").await;
    let add = |key: &'static str| {
        h.post(
            "/v1/payment-methods",
            Some(&token),
            Some(key),
            r#"{"payment_method":"pm_card_threeDSecure2Required"}"#,
        )
    };
    let walked_away = add("pm-1").await;
    let passed = add("pm-2").await;
    assert_eq!(passed.status, StatusCode::ACCEPTED);
    // The customer passed the second challenge but never came back to confirm it.
    h.authenticate(&intent_of(&passed.str("/client_secret")), true)
        .await;
    h.clock.advance(TimeDelta::hours(24));
    maintenance(&h).await;
    let list = h.get("/v1/payment-methods", Some(&token)).await;
    let statuses: Vec<(String, String)> = list.json["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|p| {
            (
                p["id"].as_str().expect("id").to_owned(),
                p["status"].as_str().expect("s").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        [(passed.str("/payment_method/id"), "ready".to_owned())],
        "the authenticated one is ready, the abandoned one canceled (and not listed)"
    );
    let (n,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM payment_methods WHERE id = $1::uuid AND status = 'canceled'",
    )
    .bind(walked_away.str("/payment_method/id"))
    .fetch_one(&h.state.cf)
    .await
    .expect("count");
    assert_eq!(n, 1);
    h.finish().await;
}

#[tokio::test]
async fn two_promotions_that_drop_a_plan_never_put_it_back_on_sale() {
    let h = Harness::new().await;
    promote(&h, tollgate_rules::DEMO_SOURCE, 1).await;
    assert!(plans_on_sale(&h).await.contains(&"enterprise".to_owned()));
    promote(&h, &without_enterprise(), 2).await;
    promote(&h, &without_enterprise(), 3).await;
    assert_eq!(plans_on_sale(&h).await, ["free", "pro"]);
    let (_, token) = h.sign_up("enterprise-buyer@example.com").await;
    h.add_card(&token, "pm_card_visa").await;
    h.post(
        "/v1/checkout",
        Some(&token),
        Some("e-1"),
        r#"{"plan":"enterprise"}"#,
    )
    .await
    .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "unknown_plan");
    // Right after a drop, a bundle with the plan again (or a new one) promotes cleanly.
    promote(&h, tollgate_rules::DEMO_SOURCE, 4).await;
    assert_eq!(plans_on_sale(&h).await, ["free", "pro", "enterprise"]);
    h.finish().await;
}

#[tokio::test]
async fn a_checkout_completes_from_its_own_snapshot_whatever_the_catalog_became() {
    let h = Harness::new().await;
    promote(&h, tollgate_rules::DEMO_SOURCE, 1).await;
    let (_, token) = customer_with_3ds_card(&h, "snapshot@example.com").await;
    let (checkout, intent) = waiting_checkout(&h, &token, "pro", "buy-1").await;
    // Pro is re-priced while the customer authenticates.
    promote(&h, &pro_at(4900), 2).await;
    h.authenticate(&intent, true).await;
    let r = h
        .post(
            &format!("/v1/checkout/{checkout}/confirm"),
            Some(&token),
            None,
            "",
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(
        (
            r.json["checkout"]["amount_minor"].as_i64(),
            r.json["subscription"]["amount_minor"].as_i64()
        ),
        (Some(2900), Some(2900)),
        "sold at 29.00, subscribed at 29.00"
    );
    assert_eq!(r.json["checkout"]["bundle_version"], 1);
    h.drain_outbox().await;
    let (amount,): (i64,) = sqlx::query_as("SELECT amount_minor FROM billing_schedules")
        .fetch_one(&h.state.billing)
        .await
        .expect("schedule");
    assert_eq!(amount, 2900, "and billed at it");
    h.finish().await;
}

#[tokio::test]
async fn a_paid_checkout_with_an_add_on_withdrawn_meanwhile_is_refunded_in_full() {
    let h = Harness::new().await;
    promote(&h, tollgate_rules::DEMO_SOURCE, 1).await;
    let (_, token) = customer_with_3ds_card(&h, "seats-withdrawn@example.com").await;
    let r = h
        .post(
            "/v1/checkout",
            Some(&token),
            Some("buy-seats"),
            r#"{"plan":"pro","addons":{"extra_seats":2}}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);
    assert_eq!(r.json["checkout"]["amount_minor"], 3900);
    let (checkout, intent) = (r.str("/checkout/id"), intent_of(&r.str("/client_secret")));
    promote(&h, &without_extra_seats(), 2).await;
    let plans = h.get("/v1/plans", None).await;
    assert_eq!(plans.json["addons"], serde_json::json!([]));
    h.authenticate(&intent, true).await;
    let r = h
        .post(
            &format!("/v1/checkout/{checkout}/confirm"),
            Some(&token),
            None,
            "",
        )
        .await;
    r.assert_problem(StatusCode::CONFLICT, "checkout_refunded");
    assert_eq!(r.json["refund_reason"], "addon_withdrawn");
    let (refunded,): (i64,) =
        sqlx::query_as("SELECT (state->>'refunded_minor')::bigint FROM sim_intents WHERE id = $1")
            .bind(&intent)
            .fetch_one(&h.state.cf)
            .await
            .expect("intent");
    assert_eq!(refunded, 3900, "the plan and the add-ons, all of it");
    assert_eq!(h.count("SELECT count(*) FROM subscriptions").await, 0);
    // Buying it now is refused up front.
    h.post(
        "/v1/checkout",
        Some(&token),
        Some("buy-seats-2"),
        r#"{"plan":"pro","addons":{"extra_seats":1}}"#,
    )
    .await
    .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "unknown_addon");
    h.finish().await;
}

#[tokio::test]
async fn a_paid_checkout_for_a_plan_withdrawn_meanwhile_is_refunded_not_kept() {
    let h = Harness::new().await;
    promote(&h, tollgate_rules::DEMO_SOURCE, 1).await;
    let (_, token) = customer_with_3ds_card(&h, "withdrawn@example.com").await;
    let (checkout, intent) = waiting_checkout(&h, &token, "enterprise", "buy-1").await;
    promote(&h, &without_enterprise(), 2).await;
    h.authenticate(&intent, true).await;
    let r = h
        .post(
            &format!("/v1/checkout/{checkout}/confirm"),
            Some(&token),
            None,
            "",
        )
        .await;
    r.assert_problem(StatusCode::CONFLICT, "checkout_refunded");
    assert_eq!(r.json["refund_reason"], "plan_withdrawn");
    let c = h
        .get(&format!("/v1/checkout/{checkout}"), Some(&token))
        .await;
    assert_eq!(c.json["status"], "refunded", "{}", c.json);
    let (refunded,): (i64,) =
        sqlx::query_as("SELECT (state->>'refunded_minor')::bigint FROM sim_intents WHERE id = $1")
            .bind(&intent)
            .fetch_one(&h.state.cf)
            .await
            .expect("intent");
    assert_eq!(refunded, 19_900, "the provider refunded all of it");
    assert_eq!(h.count("SELECT count(*) FROM subscriptions").await, 0);
    // Nothing blocks the account.
    let r = h
        .post(
            "/v1/checkout",
            Some(&token),
            Some("buy-2"),
            r#"{"plan":"free"}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
    h.finish().await;
}

#[tokio::test]
async fn rollback_goes_to_the_last_different_version_or_says_there_is_none() {
    let h = Harness::new().await;
    promote(&h, tollgate_rules::DEMO_SOURCE, 1).await;
    h.admin(Method::POST, "/admin/v1/rollback", None)
        .await
        .assert_problem(StatusCode::CONFLICT, "nothing_to_roll_back_to");
    promote(&h, &without_enterprise(), 2).await;
    // Promoting (or activating at 100 %) the current stable version again changes nothing.
    let r = h
        .admin(Method::POST, "/admin/v1/bundles/2/promote", None)
        .await;
    assert_eq!(
        (r.status, r.json["unchanged"].as_bool()),
        (StatusCode::OK, Some(true)),
        "{}",
        r.json
    );
    let r = h
        .admin(
            Method::POST,
            "/admin/v1/bundles/2/activate",
            Some(r#"{"canary_percent":100}"#),
        )
        .await;
    assert_eq!(r.json["unchanged"], true, "{}", r.json);
    let audits = h
        .count("SELECT count(*) FROM rule_audit WHERE action = 'promote'")
        .await;
    assert_eq!(audits, 2, "no audit row for what changed nothing");
    let r = h.admin(Method::POST, "/admin/v1/rollback", None).await;
    assert_eq!(
        (r.status, r.json["stable_version"].as_i64()),
        (StatusCode::OK, Some(1)),
        "{}",
        r.json
    );
    assert_eq!(plans_on_sale(&h).await, ["free", "pro", "enterprise"]);
    h.admin(
        Method::POST,
        "/admin/v1/rollback",
        Some(r#"{"to_version":1}"#),
    )
    .await
    .assert_problem(StatusCode::CONFLICT, "nothing_to_roll_back_to");
    h.finish().await;
}

#[tokio::test]
async fn promote_and_rollback_racing_leave_one_consistent_rollout() {
    let h = Harness::new().await;
    promote(&h, tollgate_rules::DEMO_SOURCE, 1).await;
    let r = h
        .admin_upload(signed(&without_enterprise(), 2, &h.key))
        .await;
    assert!(r.status.is_success(), "{}", r.json);
    let h = Arc::new(h);
    let mut tasks = Vec::new();
    for i in 0..12 {
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            if i % 2 == 0 {
                h.admin(Method::POST, "/admin/v1/bundles/2/promote", None)
                    .await
            } else {
                h.admin(Method::POST, "/admin/v1/rollback", None).await
            }
        }));
    }
    for t in tasks {
        let r = t.await.expect("join");
        assert!(
            r.status == StatusCode::OK || r.json["code"] == "nothing_to_roll_back_to",
            "{} {}",
            r.status,
            r.json
        );
    }
    // The catalog on sale is exactly the stable bundle's, whichever won.
    let stable: (i64,) = sqlx::query_as("SELECT stable_version FROM rule_rollout")
        .fetch_one(&h.state.cf)
        .await
        .expect("rollout");
    let expected: &[&str] = if stable.0 == 1 {
        &["free", "pro", "enterprise"]
    } else {
        &["free", "pro"]
    };
    assert_eq!(plans_on_sale(&h).await, expected);
    let self_loops = h
        .count("SELECT count(*) FROM rule_audit WHERE previous_stable = version")
        .await;
    assert_eq!(self_loops, 0);
    if let Ok(h) = Arc::try_unwrap(h) {
        h.finish().await;
    }
}

#[tokio::test]
async fn stalled_provider_calls_hold_no_database_connection() {
    let knobs = Knobs::default();
    knobs.stalling.store(true, Ordering::SeqCst);
    let h = Arc::new(Harness::with_gateway(knobs.wrapper()).await);
    // Twelve sign-ups whose provider call hangs (the test pool has 8 connections).
    let mut stuck = Vec::new();
    for i in 0..12 {
        let h = h.clone();
        stuck.push(tokio::spawn(async move {
            h.post(
                "/v1/accounts",
                None,
                Some(&format!("stall-{i}")),
                &format!(r#"{{"email":"stall{i}@example.com","name":"Stall"}}"#),
            )
            .await
        }));
    }
    // Wait until all twelve are inside the provider call.
    tokio::time::timeout(Duration::from_secs(20), async {
        while knobs.customers_created.load(Ordering::SeqCst) < 12 {
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("all stalled");
    // The edges' internal API keeps answering meanwhile.
    let facts = tokio::time::timeout(
        Duration::from_secs(5),
        h.get(
            &format!("/internal/v1/accounts/{}/facts", uuid::Uuid::now_v7()),
            Some("test-edge-token"),
        ),
    )
    .await
    .expect("the internal API answered while the provider stalled");
    facts.assert_problem(StatusCode::NOT_FOUND, "unknown_account");
    knobs.stall.add_permits(12);
    for t in stuck {
        let r = t.await.expect("join");
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
    }
    if let Ok(h) = Arc::try_unwrap(h) {
        h.finish().await;
    }
}

#[tokio::test]
async fn a_nul_in_a_sign_up_is_refused_before_anything_reaches_the_provider() {
    let knobs = Knobs::default();
    let h = Harness::with_gateway(knobs.wrapper()).await;
    for body in [
        r#"{"email":"nul@example.com","name":"Ada\u0000"}"#,
        r#"{"email":"n\u0000l@example.com","name":"Ada"}"#,
    ] {
        h.post("/v1/accounts", None, Some("nul"), body)
            .await
            .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "invalid_account");
    }
    assert_eq!(
        knobs.customers_created.load(Ordering::SeqCst),
        0,
        "no orphan customer"
    );
    assert_eq!(h.count("SELECT count(*) FROM sim_customers").await, 0);
    h.finish().await;
}

#[tokio::test]
async fn a_provider_that_times_out_after_charging_never_charges_twice() {
    let knobs = Knobs::default();
    let h = Harness::with_gateway(knobs.wrapper()).await;
    let (_, token) = h.sign_up("lost-answer@example.com").await;
    h.add_card(&token, "pm_card_visa").await;
    // The provider charges, and its answer is lost.
    knobs.lose_payment_answers.store(1, Ordering::SeqCst);
    let r = h
        .post(
            "/v1/checkout",
            Some(&token),
            Some("buy-1"),
            r#"{"plan":"pro"}"#,
        )
        .await;
    r.assert_problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "payment_provider_unavailable",
    );
    // The client retries with the same key: the same payment, one subscription.
    let again = h
        .post(
            "/v1/checkout",
            Some(&token),
            Some("buy-1"),
            r#"{"plan":"pro"}"#,
        )
        .await;
    assert_eq!(again.status, StatusCode::CREATED, "{}", again.json);
    let third = h
        .post(
            "/v1/checkout",
            Some(&token),
            Some("buy-1"),
            r#"{"plan":"pro"}"#,
        )
        .await;
    assert!(third.replayed && third.status == StatusCode::CREATED);
    assert_eq!(h.count("SELECT count(*) FROM subscriptions").await, 1);
    assert_eq!(
        h.count("SELECT count(*) FROM sim_intents WHERE kind = 'payment'")
            .await,
        1,
        "charged once"
    );
    // Without a retry, the reconciler finishes it.
    let (_, other) = h.sign_up("no-retry@example.com").await;
    h.add_card(&other, "pm_card_visa").await;
    knobs.lose_payment_answers.store(1, Ordering::SeqCst);
    h.post(
        "/v1/checkout",
        Some(&other),
        Some("buy-1"),
        r#"{"plan":"pro"}"#,
    )
    .await
    .assert_problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "payment_provider_unavailable",
    );
    h.clock.advance(TimeDelta::minutes(5));
    maintenance(&h).await;
    let subs = h.get("/v1/subscriptions", Some(&other)).await;
    assert_eq!(subs.json["data"][0]["plan"], "pro", "{}", subs.json);
    assert_eq!(
        h.count("SELECT count(*) FROM sim_intents WHERE kind = 'payment'")
            .await,
        2
    );
    h.finish().await;
}

#[tokio::test]
async fn the_same_key_sent_concurrently_has_one_effect_on_every_idempotent_route() {
    let h = Arc::new(Harness::new().await);
    let concurrently = |path: String, token: Option<String>, body: String| {
        let key = format!("same-key-{path}");
        let h = h.clone();
        async move {
            let tasks: Vec<_> = (0..8)
                .map(|_| {
                    let (h, path, token, body, key) = (
                        h.clone(),
                        path.clone(),
                        token.clone(),
                        body.clone(),
                        key.clone(),
                    );
                    tokio::spawn(
                        async move { h.post(&path, token.as_deref(), Some(&key), &body).await },
                    )
                })
                .collect();
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.expect("join"));
            }
            out
        }
    };
    let signups = concurrently(
        "/v1/accounts".into(),
        None,
        r#"{"email":"race@example.com","name":"Race"}"#.into(),
    )
    .await;
    for r in &signups {
        assert!(
            r.status == StatusCode::CREATED || r.json["code"] == "idempotency_key_in_use",
            "{} {}",
            r.status,
            r.json
        );
    }
    assert_eq!(h.count("SELECT count(*) FROM accounts").await, 1);
    let token = signups
        .iter()
        .find(|r| r.status == StatusCode::CREATED)
        .expect("one sign-up")
        .str("/api_token");
    let cards = concurrently(
        "/v1/payment-methods".into(),
        Some(token.clone()),
        r#"{"payment_method":"pm_card_visa"}"#.into(),
    )
    .await;
    for r in &cards {
        assert!(
            r.status == StatusCode::CREATED || r.json["code"] == "idempotency_key_in_use",
            "{}",
            r.json
        );
    }
    assert_eq!(h.count("SELECT count(*) FROM payment_methods").await, 1);
    let buys = concurrently(
        "/v1/checkout".into(),
        Some(token.clone()),
        r#"{"plan":"pro"}"#.into(),
    )
    .await;
    for r in &buys {
        assert!(
            r.status == StatusCode::CREATED || r.json["code"] == "idempotency_key_in_use",
            "{}",
            r.json
        );
    }
    assert_eq!(h.count("SELECT count(*) FROM checkouts").await, 1);
    assert_eq!(h.count("SELECT count(*) FROM subscriptions").await, 1);
    assert_eq!(
        h.count("SELECT count(*) FROM sim_intents WHERE kind = 'payment'")
            .await,
        1
    );
    if let Ok(h) = Arc::try_unwrap(h) {
        h.finish().await;
    }
}

#[tokio::test]
async fn concurrent_checkouts_confirms_and_cancels_on_one_account_buy_once() {
    let h = Arc::new(Harness::new().await);
    let (_, token) = customer_with_3ds_card(&h, "many-tabs@example.com").await;
    // Eight tabs buy at once with different keys: one purchase waits, the others are refused.
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let (h, token) = (h.clone(), token.clone());
            tokio::spawn(async move {
                h.post(
                    "/v1/checkout",
                    Some(&token),
                    Some(&format!("tab-{i}")),
                    r#"{"plan":"pro"}"#,
                )
                .await
            })
        })
        .collect();
    let mut waiting = Vec::new();
    for t in tasks {
        let r = t.await.expect("join");
        match r.status {
            StatusCode::ACCEPTED => waiting.push(r),
            _ => assert_eq!(r.json["code"], "checkout_in_progress", "{}", r.json),
        }
    }
    assert_eq!(waiting.len(), 1);
    let checkout = waiting[0].str("/checkout/id");
    h.authenticate(&intent_of(&waiting[0].str("/client_secret")), true)
        .await;
    // Confirms and cancels race: the paid purchase completes exactly once.
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let (h, token, checkout) = (h.clone(), token.clone(), checkout.clone());
            tokio::spawn(async move {
                let what = if i % 2 == 0 { "confirm" } else { "cancel" };
                h.post(
                    &format!("/v1/checkout/{checkout}/{what}"),
                    Some(&token),
                    None,
                    "",
                )
                .await
            })
        })
        .collect();
    for t in tasks {
        let r = t.await.expect("join");
        assert!(
            r.status == StatusCode::OK
                || r.json["code"] == "checkout_already_paid"
                || r.json["code"] == "checkout_not_cancelable",
            "{} {}",
            r.status,
            r.json
        );
    }
    assert_eq!(h.count("SELECT count(*) FROM subscriptions").await, 1);
    let c = h
        .get(&format!("/v1/checkout/{checkout}"), Some(&token))
        .await;
    assert_eq!(c.json["status"], "succeeded");
    if let Ok(h) = Arc::try_unwrap(h) {
        h.finish().await;
    }
}

#[tokio::test]
async fn a_sign_up_replayed_late_returns_no_token_and_keys_expire() {
    let h = Harness::new().await;
    let body = r#"{"email":"late@example.com","name":"Late"}"#;
    let first = h.post("/v1/accounts", None, Some("k"), body).await;
    assert!(first.json["api_token"].is_string());
    h.clock.advance(TimeDelta::minutes(11));
    let late = h.post("/v1/accounts", None, Some("k"), body).await;
    assert!(late.replayed);
    assert_eq!(late.json["account"]["id"], first.json["account"]["id"]);
    assert!(
        late.json["api_token"].is_null(),
        "no credential for a late replay: {}",
        late.json
    );
    // Keys expire after 24 h (and are swept): the key is free again.
    h.clock.advance(TimeDelta::hours(24));
    maintenance(&h).await;
    assert_eq!(h.count("SELECT count(*) FROM idempotency_keys").await, 0);
    h.finish().await;
}

#[tokio::test]
async fn smaller_money_path_edges_are_closed() {
    let h = Harness::new().await;
    let (_, token) = h.sign_up("edges@example.com").await;
    // An array is not an object (serde would read it as the struct's fields in order).
    h.post("/v1/checkout", Some(&token), Some("arr"), r#"["free"]"#)
        .await
        .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body");
    assert_eq!(h.count("SELECT count(*) FROM subscriptions").await, 0);
    // Anything that may be a card number is refused, never echoed, never sent on.
    let r = h
        .post(
            "/v1/payment-methods",
            Some(&token),
            Some("pan"),
            r#"{"payment_method":"pm_4242424242424242"}"#,
        )
        .await;
    r.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "raw_card_number_refused");
    assert!(
        !r.json.to_string().contains("4242424242424242"),
        "{}",
        r.json
    );
    // The scheme is case-insensitive.
    let me = h.get("/v1/account", None).await;
    me.assert_problem(StatusCode::UNAUTHORIZED, "missing_credentials");
    let req = axum::http::Request::builder()
        .uri("/v1/account")
        .header("authorization", format!("bearer {token}"))
        .body(axum::body::Body::empty())
        .expect("req");
    assert_eq!(h.send(req).await.status, StatusCode::OK);
    // A 255-character Idempotency-Key still buys (provider keys are derived, bounded).
    h.add_card(&token, "pm_card_visa").await;
    let long_key = "k".repeat(255);
    let r = h
        .post(
            "/v1/checkout",
            Some(&token),
            Some(&long_key),
            r#"{"plan":"pro"}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
    h.finish().await;
}

#[tokio::test]
async fn the_simulated_provider_outlives_the_control_plane_process() {
    let h = Harness::new().await;
    let (_, token) = h.sign_up("restart@example.com").await;
    h.add_card(&token, "pm_card_visa").await;
    // A second control-plane state on the same databases (a restart, or another replica).
    let other = h.restarted().await;
    let r = other
        .post(
            "/v1/checkout",
            Some(&token),
            Some("buy-1"),
            r#"{"plan":"pro"}"#,
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "the saved card still works: {}",
        r.json
    );
    h.finish().await;
}

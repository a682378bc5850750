//! The Dashboard API through the real router, real PostgreSQL and Redis, simulated payments.

mod common;

use axum::http::{Method, StatusCode};
use common::Harness;
use serde_json::Value;

#[tokio::test]
async fn sign_up_creates_account_customer_and_token_and_replays_by_idempotency_key() {
    let h = Harness::new().await;
    let body = r#"{"email":"ada@example.com","name":"Ada"}"#;
    let first = h.post("/v1/accounts", None, Some("k-1"), body).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.json);
    assert_eq!(first.json["account"]["status"], "active");
    assert!(first.str("/account/stripe_customer_id").starts_with("cus_"));
    let token = first.str("/api_token");
    assert!(token.starts_with("tg_"));

    let again = h.post("/v1/accounts", None, Some("k-1"), body).await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert!(again.replayed);
    assert_eq!(
        again.json, first.json,
        "same key + same body = same response, token included"
    );
    assert_eq!(h.count("SELECT count(*) FROM accounts").await, 1);

    // The same key for the same address with another request is a reuse...
    let reused = h
        .post(
            "/v1/accounts",
            None,
            Some("k-1"),
            r#"{"email":"ada@example.com","name":"Ada Lovelace"}"#,
        )
        .await;
    reused.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused");
    // ...but an unrelated client using the same simple key for another address is not.
    let bob = h
        .post(
            "/v1/accounts",
            None,
            Some("k-1"),
            r#"{"email":"bob@example.com","name":"Bob"}"#,
        )
        .await;
    assert_eq!(bob.status, StatusCode::CREATED, "{}", bob.json);
    assert!(!bob.replayed);
    assert_ne!(bob.json["account"]["id"], first.json["account"]["id"]);

    let me = h.get("/v1/account", Some(&token)).await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(me.json["email"], "ada@example.com");
    assert_eq!(h.count("SELECT count(*) FROM api_tokens").await, 2);
    let token_col: (Vec<u8>,) =
        sqlx::query_as("SELECT token_hash FROM api_tokens ORDER BY created_at, id LIMIT 1")
            .fetch_one(&h.state.cf)
            .await
            .expect("row");
    assert_ne!(token_col.0, token.as_bytes(), "only the hash is stored");
    h.finish().await;
}

#[tokio::test]
async fn bad_requests_get_problem_json_and_write_nothing() {
    let h = Harness::new().await;
    let cases: &[(Option<&str>, &str, StatusCode, &str)] = &[
        (
            Some("a"),
            r#"{"email":"x@example.com""#,
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            Some("b"),
            r#"{"email":"x@example.com","name":"X","admin":true}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            Some("c"),
            r#"{"email":42,"name":"X"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            Some("d"),
            r#"{"name":"X"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            Some("e"),
            r#"{"email":"not-an-email","name":"X"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_account",
        ),
        (
            None,
            r#"{"email":"x@example.com","name":"X"}"#,
            StatusCode::BAD_REQUEST,
            "idempotency_key_required",
        ),
    ];
    for (key, body, status, code) in cases {
        let r = h.post("/v1/accounts", None, *key, body).await;
        r.assert_problem(*status, code);
    }
    let no_type = h
        .call(Method::POST, "/v1/accounts", None, Some("f"), None)
        .await;
    no_type.assert_problem(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");
    assert_eq!(h.count("SELECT count(*) FROM accounts").await, 0);
    assert_eq!(h.count("SELECT count(*) FROM idempotency_keys").await, 0);
    assert_eq!(h.count("SELECT count(*) FROM outbox").await, 0);
    h.get("/v1/nowhere", None)
        .await
        .assert_problem(StatusCode::NOT_FOUND, "route_not_found");
    h.finish().await;
}

#[tokio::test]
async fn missing_or_wrong_tokens_are_refused() {
    let h = Harness::new().await;
    h.get("/v1/account", None)
        .await
        .assert_problem(StatusCode::UNAUTHORIZED, "missing_credentials");
    h.get("/v1/account", Some("tg_0000"))
        .await
        .assert_problem(StatusCode::UNAUTHORIZED, "invalid_token");
    let r = h
        .call(Method::GET, "/v1/subscriptions", None, None, None)
        .await;
    r.assert_problem(StatusCode::UNAUTHORIZED, "missing_credentials");
    // The edge token is not a Dashboard token, and a Dashboard token is not an edge token.
    h.get("/v1/account", Some("test-edge-token"))
        .await
        .assert_problem(StatusCode::UNAUTHORIZED, "invalid_token");
    let (id, token) = h.sign_up("eve@example.com").await;
    h.get(&format!("/internal/v1/accounts/{id}/facts"), Some(&token))
        .await
        .assert_problem(StatusCode::UNAUTHORIZED, "invalid_token");
    h.finish().await;
}

#[tokio::test]
async fn another_accounts_ids_answer_404_exactly_like_unknown_ids() {
    let h = Harness::new().await;
    let (_, alice) = h.sign_up("alice@example.com").await;
    let (_, mallory) = h.sign_up("mallory@example.com").await;
    let pm = h.add_card(&alice, "pm_card_visa").await;
    let r = h
        .post(
            "/v1/checkout",
            Some(&alice),
            Some("c1"),
            r#"{"plan":"pro"}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
    let sub = r.str("/subscription/id");
    let checkout = r.str("/checkout/id");
    let unknown = uuid::Uuid::now_v7().to_string();
    for id in [pm.as_str(), unknown.as_str()] {
        let r = h
            .post(
                &format!("/v1/payment-methods/{id}/confirm"),
                Some(&mallory),
                None,
                "",
            )
            .await;
        r.assert_problem(StatusCode::NOT_FOUND, "not_found");
    }
    for id in [checkout.as_str(), unknown.as_str()] {
        h.get(&format!("/v1/checkout/{id}"), Some(&mallory))
            .await
            .assert_problem(StatusCode::NOT_FOUND, "not_found");
        h.post(
            &format!("/v1/checkout/{id}/confirm"),
            Some(&mallory),
            None,
            "",
        )
        .await
        .assert_problem(StatusCode::NOT_FOUND, "not_found");
    }
    for id in [sub.as_str(), unknown.as_str(), "not-a-uuid"] {
        h.post(
            &format!("/v1/subscriptions/{id}/cancel"),
            Some(&mallory),
            None,
            r#"{"at_period_end":false}"#,
        )
        .await
        .assert_problem(StatusCode::NOT_FOUND, "not_found");
    }
    // Paying with someone else's card is the same 404.
    let r = h
        .post(
            "/v1/checkout",
            Some(&mallory),
            Some("c2"),
            &format!(r#"{{"plan":"pro","payment_method":"{pm}"}}"#),
        )
        .await;
    r.assert_problem(StatusCode::NOT_FOUND, "not_found");
    let subs = h.get("/v1/subscriptions", Some(&mallory)).await;
    assert_eq!(subs.json["data"], Value::Array(vec![]));
    h.finish().await;
}

#[tokio::test]
async fn three_d_secure_purchase_activates_pro_and_publishes_facts_and_schedule() {
    let h = Harness::new().await;
    let (account, token) = h.sign_up("sca@example.com").await;
    h.drain_outbox().await;
    let r = h
        .post(
            "/v1/payment-methods",
            Some(&token),
            Some("pm1"),
            r#"{"payment_method":"pm_card_threeDSecure2Required"}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);
    assert_eq!(r.json["status"], "requires_action");
    assert!(r.str("/client_secret").contains("_secret_"));
    let pm = r.str("/payment_method/id");
    let early = h
        .post(
            &format!("/v1/payment-methods/{pm}/confirm"),
            Some(&token),
            None,
            "",
        )
        .await;
    early.assert_problem(StatusCode::CONFLICT, "authentication_required");
    let seti: (String,) = sqlx::query_as("SELECT setup_intent_id FROM payment_methods")
        .fetch_one(&h.state.cf)
        .await
        .expect("seti");
    h.authenticate(&seti.0, true).await;
    let ok = h
        .post(
            &format!("/v1/payment-methods/{pm}/confirm"),
            Some(&token),
            None,
            "",
        )
        .await;
    assert_eq!(
        (ok.status, ok.json["status"].as_str()),
        (StatusCode::OK, Some("ready")),
        "{}",
        ok.json
    );

    let r = h
        .post(
            "/v1/checkout",
            Some(&token),
            Some("buy-pro"),
            r#"{"plan":"pro"}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);
    assert_eq!(r.json["status"], "requires_action");
    let checkout = r.str("/checkout/id");
    assert_eq!(r.json["checkout"]["amount_minor"], 2900);
    assert_eq!(r.json["checkout"]["currency"], "USD");
    let replay = h
        .post(
            "/v1/checkout",
            Some(&token),
            Some("buy-pro"),
            r#"{"plan":"pro"}"#,
        )
        .await;
    assert!(
        replay.replayed && replay.json == r.json,
        "a retried checkout does not charge again"
    );
    h.post(
        &format!("/v1/checkout/{checkout}/confirm"),
        Some(&token),
        None,
        "",
    )
    .await
    .assert_problem(StatusCode::CONFLICT, "authentication_required");
    let pi: (String,) = sqlx::query_as("SELECT payment_intent_id FROM checkouts")
        .fetch_one(&h.state.cf)
        .await
        .expect("pi");
    h.authenticate(&pi.0, true).await;
    let done = h
        .post(
            &format!("/v1/checkout/{checkout}/confirm"),
            Some(&token),
            None,
            "",
        )
        .await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.json);
    assert_eq!(done.json["subscription"]["status"], "active");
    assert_eq!(done.json["subscription"]["plan"], "pro");
    let sub_id = done.str("/subscription/id");

    h.drain_outbox().await;
    let facts = h
        .get(
            &format!("/internal/v1/accounts/{account}/facts"),
            Some("test-edge-token"),
        )
        .await;
    assert_eq!(facts.status, StatusCode::OK, "{}", facts.json);
    assert_eq!(facts.json["subscription"]["plan"], "pro");
    assert_eq!(
        facts.json["version"], 2,
        "v1 at sign-up, v2 with the subscription"
    );
    let mut redis = h.state.redis.clone();
    let l2: String = redis::cmd("GET")
        .arg(
            h.state
                .redis_keys
                .facts(&account.parse().expect("account id")),
        )
        .query_async(&mut redis)
        .await
        .expect("l2");
    assert!(l2.contains("\"pro\""), "{l2}");
    let (amount, status): (i64, String) = sqlx::query_as(
        "SELECT amount_minor, status FROM billing_schedules WHERE subscription_id = $1::uuid",
    )
    .bind(&sub_id)
    .fetch_one(&h.state.billing)
    .await
    .expect("schedule");
    assert_eq!((amount, status.as_str()), (2900, "active"));
    h.finish().await;
}

#[tokio::test]
async fn declined_cards_get_402_with_the_decline_code_and_no_subscription() {
    let h = Harness::new().await;
    let (_, token) = h.sign_up("declined@example.com").await;
    let r = h
        .post(
            "/v1/payment-methods",
            Some(&token),
            Some("d1"),
            r#"{"payment_method":"pm_card_chargeDeclined"}"#,
        )
        .await;
    r.assert_problem(StatusCode::PAYMENT_REQUIRED, "card_declined");
    assert_eq!(r.json["decline_code"], "generic_decline");
    assert_eq!(h.count("SELECT count(*) FROM payment_methods").await, 0);

    h.add_card(&token, "pm_card_chargeCustomerFail").await;
    let r = h
        .post(
            "/v1/checkout",
            Some(&token),
            Some("buy"),
            r#"{"plan":"enterprise"}"#,
        )
        .await;
    r.assert_problem(StatusCode::PAYMENT_REQUIRED, "card_declined");
    assert_eq!(r.json["decline_code"], "generic_decline");
    assert_eq!(h.count("SELECT count(*) FROM subscriptions").await, 0);
    assert_eq!(
        h.count("SELECT count(*) FROM checkouts WHERE status = 'failed'")
            .await,
        1
    );
    let replay = h
        .post(
            "/v1/checkout",
            Some(&token),
            Some("buy"),
            r#"{"plan":"enterprise"}"#,
        )
        .await;
    replay.assert_problem(StatusCode::PAYMENT_REQUIRED, "card_declined");
    assert!(replay.replayed);
    h.finish().await;
}

#[tokio::test]
async fn unauthenticated_checkout_expires_after_23_hours_on_the_clock() {
    let h = Harness::new().await;
    let (_, token) = h.sign_up("slow@example.com").await;
    // Set up a card that needs 3-D Secure on every on-session payment.
    h.add_3ds_card(&token, "pm_card_authenticationRequired")
        .await;

    let r = h
        .post("/v1/checkout", Some(&token), Some("c"), r#"{"plan":"pro"}"#)
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let checkout = r.str("/checkout/id");
    // A second checkout while one waits is refused.
    h.post(
        "/v1/checkout",
        Some(&token),
        Some("c2"),
        r#"{"plan":"enterprise"}"#,
    )
    .await
    .assert_problem(StatusCode::CONFLICT, "checkout_in_progress");

    let adv = h
        .post("/dev/v1/clock/advance", None, None, r#"{"seconds":82740}"#)
        .await; // 22h59m
    assert_eq!(adv.status, StatusCode::OK);
    assert_eq!(
        h.get(&format!("/v1/checkout/{checkout}"), Some(&token))
            .await
            .json["status"],
        "requires_action"
    );
    let adv = h
        .post("/dev/v1/clock/advance", None, None, r#"{"seconds":60}"#)
        .await;
    assert_eq!(adv.json["transitions"], 1, "{}", adv.json);
    assert_eq!(
        h.get(&format!("/v1/checkout/{checkout}"), Some(&token))
            .await
            .json["status"],
        "expired"
    );
    // Authenticating now is too late: the payment was canceled with the checkout.
    h.post(
        &format!("/v1/checkout/{checkout}/confirm"),
        Some(&token),
        None,
        "",
    )
    .await
    .assert_problem(StatusCode::GONE, "checkout_expired");
    assert_eq!(h.count("SELECT count(*) FROM subscriptions").await, 0);
    let again = h
        .post(
            "/v1/checkout",
            Some(&token),
            Some("c3"),
            r#"{"plan":"pro"}"#,
        )
        .await;
    assert_eq!(
        again.status,
        StatusCode::ACCEPTED,
        "a new checkout may start: {}",
        again.json
    );
    h.finish().await;
}

#[tokio::test]
async fn free_plan_needs_no_card_and_paid_plans_do() {
    let h = Harness::new().await;
    let (_, token) = h.sign_up("free@example.com").await;
    h.post("/v1/checkout", Some(&token), Some("p"), r#"{"plan":"pro"}"#)
        .await
        .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "payment_method_required");
    h.post(
        "/v1/checkout",
        Some(&token),
        Some("x"),
        r#"{"plan":"platinum"}"#,
    )
    .await
    .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "unknown_plan");
    let r = h
        .post(
            "/v1/checkout",
            Some(&token),
            Some("f"),
            r#"{"plan":"free"}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
    assert_eq!(r.json["subscription"]["amount_minor"], 0);
    h.post(
        "/v1/checkout",
        Some(&token),
        Some("f2"),
        r#"{"plan":"free"}"#,
    )
    .await
    .assert_problem(StatusCode::CONFLICT, "subscription_exists");
    let plans = h.get("/v1/plans", None).await;
    let prices: Vec<i64> = plans.json["data"]
        .as_array()
        .expect("plans")
        .iter()
        .map(|p| p["price_minor"].as_i64().expect("price"))
        .collect();
    assert_eq!(prices, vec![0, 2900, 19900]);
    h.finish().await;
}

#[tokio::test]
async fn cancel_now_revokes_now_and_cancel_at_period_end_waits_for_the_period() {
    let h = Harness::new().await;
    let (account, token) = h.sign_up("cancel@example.com").await;
    h.add_card(&token, "pm_card_visa").await;
    let sub = h
        .post("/v1/checkout", Some(&token), Some("1"), r#"{"plan":"pro"}"#)
        .await
        .str("/subscription/id");
    let r = h
        .post(
            &format!("/v1/subscriptions/{sub}/cancel"),
            Some(&token),
            None,
            r#"{"at_period_end":true}"#,
        )
        .await;
    assert_eq!(
        (
            r.status,
            r.json["status"].as_str(),
            r.json["cancel_at_period_end"].as_bool()
        ),
        (StatusCode::OK, Some("active"), Some(true))
    );
    h.drain_outbox().await;
    let facts = h
        .get(
            &format!("/internal/v1/accounts/{account}/facts"),
            Some("test-edge-token"),
        )
        .await;
    assert_eq!(
        facts.json["subscription"]["plan"], "pro",
        "still entitled until the period ends"
    );
    let (next,): (Option<chrono::DateTime<chrono::Utc>>,) =
        sqlx::query_as("SELECT next_bill_at FROM billing_schedules")
            .fetch_one(&h.state.billing)
            .await
            .expect("schedule");
    assert!(
        next.is_none(),
        "a subscription ending at period end is not billed again"
    );

    h.post(
        "/dev/v1/clock/advance",
        None,
        None,
        &format!(r#"{{"seconds":{}}}"#, 31 * 24 * 3600),
    )
    .await;
    h.drain_outbox().await;
    let facts = h
        .get(
            &format!("/internal/v1/accounts/{account}/facts"),
            Some("test-edge-token"),
        )
        .await;
    assert_eq!(facts.json["subscription"], Value::Null, "{}", facts.json);
    let subs = h.get("/v1/subscriptions", Some(&token)).await;
    assert_eq!(subs.json["data"][0]["status"], "canceled");

    // Immediate cancel on a new subscription.
    let sub2 = h
        .post(
            "/v1/checkout",
            Some(&token),
            Some("2"),
            r#"{"plan":"enterprise"}"#,
        )
        .await
        .str("/subscription/id");
    let r = h
        .post(
            &format!("/v1/subscriptions/{sub2}/cancel"),
            Some(&token),
            None,
            r#"{"at_period_end":false}"#,
        )
        .await;
    assert_eq!(r.json["status"], "canceled");
    h.post(
        &format!("/v1/subscriptions/{sub2}/cancel"),
        Some(&token),
        None,
        r#"{"at_period_end":false}"#,
    )
    .await
    .assert_problem(StatusCode::CONFLICT, "subscription_canceled");
    h.drain_outbox().await;
    let (status,): (String,) =
        sqlx::query_as("SELECT status FROM billing_schedules WHERE subscription_id = $1::uuid")
            .bind(&sub2)
            .fetch_one(&h.state.billing)
            .await
            .expect("schedule");
    assert_eq!(status, "canceled");
    h.finish().await;
}

#[tokio::test]
async fn raw_card_numbers_are_never_accepted() {
    let h = Harness::new().await;
    let (_, token) = h.sign_up("pan@example.com").await;
    h.post(
        "/v1/payment-methods",
        Some(&token),
        Some("x"),
        r#"{"payment_method":"4242424242424242"}"#,
    )
    .await
    .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "raw_card_number_refused");
    h.post(
        "/v1/payment-methods",
        Some(&token),
        Some("y"),
        r#"{"payment_method":"pm_unknown_card"}"#,
    )
    .await
    .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "invalid_payment_method");
    assert_eq!(h.count("SELECT count(*) FROM payment_methods").await, 0);
    h.finish().await;
}

#[tokio::test]
async fn a_failed_3ds_challenge_declines_the_checkout_and_frees_the_account_to_retry() {
    let h = Harness::new().await;
    let (_, token) = h.sign_up("failauth@example.com").await;
    h.add_3ds_card(&token, "pm_card_threeDSecure2Required")
        .await;

    let checkout = h
        .post("/v1/checkout", Some(&token), Some("c"), r#"{"plan":"pro"}"#)
        .await
        .str("/checkout/id");
    let pi: (String,) = sqlx::query_as("SELECT payment_intent_id FROM checkouts")
        .fetch_one(&h.state.cf)
        .await
        .expect("pi");
    h.authenticate(&pi.0, false).await;
    let r = h
        .post(
            &format!("/v1/checkout/{checkout}/confirm"),
            Some(&token),
            None,
            "",
        )
        .await;
    r.assert_problem(StatusCode::PAYMENT_REQUIRED, "card_declined");
    assert_eq!(
        r.json["provider_code"],
        "payment_intent_authentication_failure"
    );
    assert_eq!(
        h.get(&format!("/v1/checkout/{checkout}"), Some(&token))
            .await
            .json["status"],
        "failed"
    );
    assert_eq!(h.count("SELECT count(*) FROM subscriptions").await, 0);
    // Confirming again answers the same decline; a new checkout may start.
    h.post(
        &format!("/v1/checkout/{checkout}/confirm"),
        Some(&token),
        None,
        "",
    )
    .await
    .assert_problem(StatusCode::PAYMENT_REQUIRED, "card_declined");
    let again = h
        .post(
            "/v1/checkout",
            Some(&token),
            Some("c2"),
            r#"{"plan":"pro"}"#,
        )
        .await;
    assert_eq!(again.status, StatusCode::ACCEPTED, "{}", again.json);
    h.finish().await;
}

/// Every Dashboard route that takes an id, with another account's real id: 404 `not_found`,
/// exactly as for an id that names nothing, and the owner's records unchanged.
#[tokio::test]
async fn every_id_taking_route_answers_404_for_another_accounts_id() {
    let h = Harness::new().await;
    let (_, alice) = h.sign_up("alice@example.com").await;
    let (_, mallory) = h.sign_up("mallory@example.com").await;
    h.add_card(&mallory, "pm_card_visa").await;
    let pm = h.add_card(&alice, "pm_card_visa").await;
    let r = h
        .post(
            "/v1/checkout",
            Some(&alice),
            Some("c1"),
            r#"{"plan":"pro"}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
    let (sub, checkout) = (r.str("/subscription/id"), r.str("/checkout/id"));
    h.settle().await;
    let invoice = h.get("/v1/invoices", Some(&alice)).await.str("/data/0/id");
    let contact = h
        .post(
            "/v1/account/contacts",
            Some(&alice),
            None,
            r#"{"email":"ap@alice.example"}"#,
        )
        .await
        .str("/id");
    let api_token = h
        .post("/v1/tokens", Some(&alice), None, r#"{"label":"ci"}"#)
        .await
        .str("/token/id");
    let unknown = uuid::Uuid::now_v7().to_string();
    let routes: Vec<(Method, String, Option<&str>)> = vec![
        (
            Method::DELETE,
            format!("/v1/account/contacts/{contact}"),
            None,
        ),
        (Method::DELETE, format!("/v1/tokens/{api_token}"), None),
        (Method::DELETE, format!("/v1/payment-methods/{pm}"), None),
        (
            Method::POST,
            format!("/v1/payment-methods/{pm}/default"),
            Some(""),
        ),
        (
            Method::POST,
            format!("/v1/payment-methods/{pm}/confirm"),
            Some(""),
        ),
        (Method::GET, format!("/v1/checkout/{checkout}"), None),
        (
            Method::POST,
            format!("/v1/checkout/{checkout}/confirm"),
            Some(""),
        ),
        (
            Method::POST,
            format!("/v1/checkout/{checkout}/cancel"),
            Some(""),
        ),
        (
            Method::POST,
            format!("/v1/subscriptions/{sub}/cancel"),
            Some(r#"{"at_period_end":false}"#),
        ),
        (
            Method::POST,
            format!("/v1/subscriptions/{sub}/preview-change"),
            Some(r#"{"plan":"enterprise"}"#),
        ),
        (
            Method::POST,
            format!("/v1/subscriptions/{sub}/change"),
            Some(r#"{"plan":"enterprise"}"#),
        ),
        (
            Method::POST,
            format!("/v1/subscriptions/{sub}/resume"),
            Some(""),
        ),
        (Method::GET, format!("/v1/invoices/{invoice}"), None),
        (Method::GET, format!("/v1/invoices/{invoice}/pdf"), None),
        (
            Method::GET,
            format!("/v1/invoices/{invoice}/credit-notes"),
            None,
        ),
        (
            Method::POST,
            format!("/v1/invoices/{invoice}/pay"),
            Some("{}"),
        ),
        (
            Method::POST,
            format!("/v1/invoices/{invoice}/confirm"),
            Some(""),
        ),
    ];
    for (i, (method, path, body)) in routes.iter().enumerate() {
        for (n, path) in [
            path.clone(),
            path.replace(
                path.split('/')
                    .find(|s| s.len() == 36)
                    .expect("an id in the path"),
                &unknown,
            ),
        ]
        .into_iter()
        .enumerate()
        {
            let key = format!("x-{i}-{n}");
            let r = h
                .call(method.clone(), &path, Some(&mallory), Some(&key), *body)
                .await;
            assert_eq!(
                (r.status, r.json["code"].as_str()),
                (StatusCode::NOT_FOUND, Some("not_found")),
                "{method} {path}: {:?}",
                r.json
            );
        }
    }
    // Nothing of alice's moved.
    let subs = h.get("/v1/subscriptions", Some(&alice)).await;
    assert_eq!(
        (
            subs.json["data"][0]["status"].as_str(),
            subs.json["data"][0]["plan"].as_str()
        ),
        (Some("active"), Some("pro"))
    );
    let methods = h.get("/v1/payment-methods", Some(&alice)).await;
    assert_eq!(methods.json["data"].as_array().map(Vec::len), Some(1));
    let contacts = h.get("/v1/account/contacts", Some(&alice)).await;
    assert_eq!(contacts.json["data"].as_array().map(Vec::len), Some(1));
    let tokens = h.get("/v1/tokens", Some(&alice)).await;
    assert_eq!(tokens.json["data"].as_array().map(Vec::len), Some(2));
    h.finish().await;
}

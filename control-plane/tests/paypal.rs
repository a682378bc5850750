//! PayPal through the simulator standing in for Braintree (its documented test nonces): a
//! billing agreement vaulted beside the cards, bought with, renewed off-session, declined into
//! dunning and recovered — the same idempotency and dunning as cards. The Braintree adapter
//! itself is tested against recorded exchanges in `braintree.rs`.

mod common;

use axum::http::StatusCode;
use common::{Harness, t};
use tollgate_control_plane::dunning::{self, CaseStatus};
use tollgate_control_plane::ids::InvoiceId;
use tollgate_control_plane::{billing, gateways::simulated::SIM_PAYER_EMAIL};

const AGREEMENT: &str = "fake-paypal-billing-agreement-nonce";

async fn add_paypal(h: &Harness, token: &str, key: &str, body: &str) -> common::Resp {
    h.post("/v1/payment-methods/paypal", Some(token), Some(key), body)
        .await
}

async fn latest_invoice(h: &Harness, token: &str) -> InvoiceId {
    h.get("/v1/invoices", Some(token)).await.json["data"][0]["id"]
        .as_str()
        .expect("invoice")
        .parse()
        .expect("id")
}

#[tokio::test]
async fn a_paypal_agreement_is_vaulted_listed_with_the_cards_and_can_be_the_default() {
    let h = Harness::new().await;
    let (_, token) = h.sign_up("paypal@example.com").await;
    let card = h.add_card(&token, "pm_card_visa").await;

    let body = format!(r#"{{"nonce":"{AGREEMENT}","make_default":true}}"#);
    let r = add_paypal(&h, &token, "pp-1", &body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json);
    assert_eq!(r.json["status"], "ready");
    assert_eq!(r.json["payment_method"]["kind"], "paypal");
    assert_eq!(r.json["payment_method"]["payer_email"], SIM_PAYER_EMAIL);
    assert!(r.json["payment_method"]["last4"].is_null());
    let paypal = r.str("/payment_method/id");

    // The same request again: the same method, nothing vaulted twice.
    let again = add_paypal(&h, &token, "pp-1", &body).await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert!(again.replayed);
    assert_eq!(again.str("/payment_method/id"), paypal);

    let list = h.get("/v1/payment-methods", Some(&token)).await;
    let kinds: Vec<(String, String)> = list.json["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|m| {
            (
                m["id"].as_str().expect("id").to_owned(),
                m["kind"].as_str().expect("kind").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            (card, "card".to_owned()),
            (paypal.clone(), "paypal".to_owned())
        ]
    );
    assert_eq!(list.json["default_payment_method_id"], paypal);
    assert_eq!(
        h.count("SELECT count(*) FROM sim_payment_methods WHERE behaviour = 'paypal'")
            .await,
        1
    );
    h.finish().await;
}

#[tokio::test]
async fn nonces_the_vault_refuses_answer_clear_problems_and_store_nothing() {
    let h = Harness::new().await;
    let (_, token) = h.sign_up("refused@example.com").await;
    let cases = [
        (
            "fake-paypal-one-time-nonce",
            StatusCode::UNPROCESSABLE_ENTITY,
            "payment_provider_rejected",
        ),
        (
            "fake-consumed-nonce",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_payment_method",
        ),
        (
            "fake-processor-declined-visa-nonce",
            StatusCode::PAYMENT_REQUIRED,
            "card_declined",
        ),
        (
            "fake-valid-nonce",
            StatusCode::UNPROCESSABLE_ENTITY,
            "not_a_paypal_nonce",
        ),
        (
            "4242 4242 4242 4242",
            StatusCode::UNPROCESSABLE_ENTITY,
            "raw_card_number_refused",
        ),
        (
            "nonce with spaces; drop",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_nonce",
        ),
        ("", StatusCode::UNPROCESSABLE_ENTITY, "invalid_nonce"),
    ];
    for (i, (nonce, status, code)) in cases.iter().enumerate() {
        let r = add_paypal(
            &h,
            &token,
            &format!("bad-{i}"),
            &format!(r#"{{"nonce":"{nonce}"}}"#),
        )
        .await;
        r.assert_problem(*status, code);
        if !nonce.is_empty() {
            assert!(
                !r.json.to_string().contains(nonce),
                "the nonce is never echoed: {:?}",
                r.json
            );
        }
    }
    let declined = add_paypal(
        &h,
        &token,
        "declined-again",
        r#"{"nonce":"fake-processor-declined-visa-nonce"}"#,
    )
    .await;
    assert_eq!(declined.json["decline_code"], "do_not_honor");
    let long = "n".repeat(256);
    add_paypal(&h, &token, "long", &format!(r#"{{"nonce":"{long}"}}"#))
        .await
        .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "invalid_nonce");
    add_paypal(
        &h,
        &token,
        "unknown-field",
        &format!(r#"{{"nonce":"{AGREEMENT}","email":"x@example.com"}}"#),
    )
    .await
    .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body");
    add_paypal(
        &h,
        "not-a-token",
        "anon",
        &format!(r#"{{"nonce":"{AGREEMENT}"}}"#),
    )
    .await
    .assert_problem(StatusCode::UNAUTHORIZED, "invalid_token");
    assert_eq!(h.count("SELECT count(*) FROM payment_methods").await, 0);
    let list = h.get("/v1/payment-methods", Some(&token)).await;
    assert_eq!(list.json["data"], serde_json::json!([]));
    h.finish().await;
}

/// Adds a PayPal agreement (the first method: the default) and buys pro with it.
async fn subscribe_with_paypal(h: &Harness, token: &str) {
    let r = add_paypal(h, token, "pp", &format!(r#"{{"nonce":"{AGREEMENT}"}}"#)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json);
    let r = h
        .post(
            "/v1/checkout",
            Some(token),
            Some("buy"),
            r#"{"plan":"pro"}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json);
    assert_eq!(r.json["subscription"]["status"], "active");
}

#[tokio::test]
async fn a_renewal_whose_answer_was_lost_is_driven_again_at_paypal_after_the_default_changed() {
    let knobs = common::gateway::Knobs::default();
    let h = Harness::with_gateway(knobs.wrapper()).await;
    let (_, token) = h.sign_up("lost@example.com").await;
    subscribe_with_paypal(&h, &token).await;
    h.settle().await;

    // PayPal charges the renewal, and its answer is lost: the attempt stays pending.
    knobs
        .lose_payment_answers
        .store(1, std::sync::atomic::Ordering::SeqCst);
    h.advance_to(t(2026, 2, 15, 13, 5)).await;
    let invoice = latest_invoice(&h, &token).await;
    let inv = h
        .get(&format!("/v1/invoices/{invoice}"), Some(&token))
        .await;
    assert_ne!(inv.json["status"], "paid", "{:?}", inv.json);
    // Meanwhile the customer makes a card the default.
    let r = h
        .post(
            "/v1/payment-methods",
            Some(&token),
            Some("card"),
            r#"{"payment_method":"pm_card_visa","make_default":true}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json);

    // Driven again: the same key at the same agreement finds the charge PayPal made.
    h.advance_to(t(2026, 2, 15, 13, 10)).await;
    let inv = h
        .get(&format!("/v1/invoices/{invoice}"), Some(&token))
        .await;
    assert_eq!(inv.json["status"], "paid", "{:?}", inv.json);
    let attempts = billing::charges::attempts_of(&h.state, invoice)
        .await
        .expect("attempts");
    assert_eq!(attempts.len(), 1, "one attempt, one key");
    let charged: Vec<(String,)> = sqlx::query_as(
        "SELECT m.behaviour FROM sim_intents i JOIN sim_payment_methods m
            ON m.id = i.state->>'payment_method'
          WHERE i.kind = 'payment' ORDER BY i.updated_at",
    )
    .fetch_all(&h.state.cf)
    .await
    .expect("payments");
    assert_eq!(
        charged,
        vec![("paypal".to_owned(),), ("paypal".to_owned(),)],
        "the checkout and the one renewal, both at PayPal; the new card never charged"
    );
    h.finish().await;
}

#[tokio::test]
async fn a_plan_bought_with_paypal_renews_off_session_through_the_paypal_gateway() {
    let h = Harness::new().await;
    let (_, token) = h.sign_up("renews@example.com").await;
    subscribe_with_paypal(&h, &token).await;
    h.settle().await;

    h.advance_to(t(2026, 2, 15, 13, 5)).await;
    let invoice = latest_invoice(&h, &token).await;
    let inv = h
        .get(&format!("/v1/invoices/{invoice}"), Some(&token))
        .await;
    assert_eq!(inv.json["status"], "paid", "{:?}", inv.json);
    let attempts = billing::charges::attempts_of(&h.state, invoice)
        .await
        .expect("attempts");
    assert_eq!(attempts.len(), 1);
    let (processor, pm): (String, String) =
        sqlx::query_as("SELECT gateway, gateway_pm_id FROM payment_methods WHERE kind = 'paypal'")
            .fetch_one(&h.state.cf)
            .await
            .expect("method");
    assert_eq!(attempts[0].processor, processor);
    assert_eq!(
        attempts[0].payment_method.as_deref(),
        Some(pm.as_str()),
        "the attempt is pinned to the PayPal agreement"
    );
    let subs = h.get("/v1/subscriptions", Some(&token)).await;
    assert_eq!(subs.json["data"][0]["status"], "active");
    h.finish().await;
}

#[tokio::test]
async fn a_declined_paypal_renewal_is_dunned_and_a_new_agreement_recovers_it() {
    let knobs = common::gateway::Knobs::default();
    let h = Harness::with_gateway(knobs.wrapper()).await;
    let (_, token) = h.sign_up("dunned@example.com").await;
    subscribe_with_paypal(&h, &token).await;
    h.settle().await;

    // The payer's PayPal account was closed (Braintree 2075): a hard decline.
    *knobs.decline_payments.lock().expect("knob") = Some("invalid_account".into());
    h.advance_to(t(2026, 2, 15, 13, 5)).await;
    let invoice = latest_invoice(&h, &token).await;
    let (case, _) = dunning::case_of(&h.state, invoice)
        .await
        .expect("read")
        .expect("case");
    assert_eq!(case.status, CaseStatus::AwaitingPaymentMethod);
    let acct = h.get("/v1/account", Some(&token)).await;
    assert_eq!(acct.json["payment_method_required"], true);

    // A new billing agreement: retried at once through PayPal, paid, recovered.
    *knobs.decline_payments.lock().expect("knob") = None;
    let r = add_paypal(
        &h,
        &token,
        "pp-new",
        &format!(r#"{{"nonce":"{AGREEMENT}","make_default":true}}"#),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json);
    h.settle().await;
    let (case, _) = dunning::case_of(&h.state, invoice)
        .await
        .expect("read")
        .expect("case");
    assert_eq!(case.status, CaseStatus::Recovered);
    let attempts = billing::charges::attempts_of(&h.state, invoice)
        .await
        .expect("attempts");
    assert_eq!(attempts.len(), 2);
    let new_agreement: uuid::Uuid = r.str("/payment_method/id").parse().expect("id");
    let (provider_id,): (String,) =
        sqlx::query_as("SELECT gateway_pm_id FROM payment_methods WHERE id = $1")
            .bind(new_agreement)
            .fetch_one(&h.state.cf)
            .await
            .expect("method");
    assert_eq!(
        attempts[1].payment_method.as_deref(),
        Some(provider_id.as_str()),
        "the retry charged the new agreement"
    );
    let acct = h.get("/v1/account", Some(&token)).await;
    assert_eq!(acct.json["payment_method_required"], false);
    h.finish().await;
}

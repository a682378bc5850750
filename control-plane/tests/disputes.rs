//! Disputes, refunds and set-ups the provider reports by webhook, over real PostgreSQL and the
//! simulated provider: each is read back from the provider (whatever the payload says), booked
//! once in the ledger, never reopened once decided, repaired by the reconciler when its webhook
//! is lost, and announced to the company's endpoints.

mod common;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use chrono::TimeDelta;
use common::{Harness, t};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tollgate_control_plane::clock::Clock;
use tollgate_control_plane::disputes::{self, Applied, DisputeState, DisputeStatus, Observation};
use tollgate_control_plane::ids::AccountId;
use tollgate_control_plane::ledger::{self, LedgerAccount};
use tollgate_control_plane::money::Currency;

const SECRET: &str = "whsec_disputes";

fn sign(t: i64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("key");
    mac.update(format!("{t}.{body}").as_bytes());
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// Delivers a signed Stripe event whose object is `object`; returns `applied`.
async fn deliver(h: &Harness, id: &str, kind: &str, object: serde_json::Value) -> common::Resp {
    let body = serde_json::json!({
        "id": id, "object": "event", "type": kind, "livemode": false,
        "created": chrono::Utc::now().timestamp(), "data": { "object": object },
    })
    .to_string();
    let req = Request::builder()
        .method(Method::POST)
        .uri("/webhooks/stripe")
        .header("content-type", "application/json")
        .header(
            "stripe-signature",
            sign(chrono::Utc::now().timestamp(), &body),
        )
        .body(Body::from(body))
        .expect("request");
    let r = h.send(req).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json);
    r
}

async fn harness() -> Harness {
    Harness::with_config(&[("stripe_webhook_secrets", SECRET)]).await
}

/// A customer who bought `pro` with a card: (account, token, the checkout's payment).
async fn bought(h: &Harness, email: &str) -> (AccountId, String, String) {
    let (id, token) = h.sign_up(email).await;
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
    h.settle().await;
    let (pi,): (String,) = sqlx::query_as(
        "SELECT payment_intent_id FROM checkouts WHERE status = 'succeeded' AND account_id = $1",
    )
    .bind(uuid::Uuid::parse_str(&id).expect("id"))
    .fetch_one(&h.state.cf)
    .await
    .expect("checkout");
    (id.parse().expect("account"), token, pi)
}

async fn balance(h: &Harness, account: AccountId, of: LedgerAccount) -> i64 {
    let mut conn = h.state.billing.acquire().await.expect("conn");
    ledger::balance(&mut conn, account, &of, Currency::USD)
        .await
        .expect("balance")
}

fn sim(h: &Harness) -> &tollgate_control_plane::gateways::simulated::SimulatedGateway {
    h.state.simulator.as_deref().expect("simulator")
}

async fn events_of(h: &Harness, kind: &str) -> i64 {
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM lifecycle_events WHERE type = $1")
        .bind(kind)
        .fetch_one(&h.state.cf)
        .await
        .expect("count");
    n
}

fn cash() -> LedgerAccount {
    LedgerAccount::cash("simulated").expect("cash")
}

#[tokio::test]
async fn a_dispute_withholds_the_money_and_winning_it_brings_the_money_back_once() {
    let h = harness().await;
    let (account, _, pi) = bought(&h, "won@example.com").await;
    assert_eq!(balance(&h, account, cash()).await, 2900);
    let opened = sim(&h)
        .open_dispute(&pi, "fraudulent", false)
        .await
        .expect("dispute");

    // The payload claims `won`; what counts is the provider's state: needs a response.
    let object = serde_json::json!({ "id": opened.id, "object": "dispute", "status": "won" });
    let r = deliver(&h, "evt_dp_1", "charge.dispute.created", object.clone()).await;
    assert_eq!(r.json["applied"], "dispute", "{:?}", r.json);
    let (d, history) = disputes::find(&h.state, "simulated", &opened.id)
        .await
        .expect("read")
        .expect("stored");
    assert_eq!(d.status, DisputeStatus::NeedsResponse);
    assert_eq!((d.amount_minor, d.account_id), (2900, account));
    assert_eq!(d.reason.as_deref(), Some("fraudulent"));
    assert_eq!(history.len(), 1);
    assert_eq!(balance(&h, account, LedgerAccount::Disputed).await, 2900);
    assert_eq!(balance(&h, account, cash()).await, 0, "withheld");

    // The same event again, and another one saying nothing new: nothing is booked twice.
    let r = deliver(&h, "evt_dp_1", "charge.dispute.created", object.clone()).await;
    assert_eq!(r.json["duplicate"], true);
    let r = deliver(
        &h,
        "evt_dp_2",
        "charge.dispute.funds_withdrawn",
        object.clone(),
    )
    .await;
    assert_eq!(r.json["applied"], "none", "{:?}", r.json);
    assert_eq!(balance(&h, account, LedgerAccount::Disputed).await, 2900);

    // Won at the provider: the money comes back.
    sim(&h)
        .update_dispute(&opened.id, DisputeStatus::Won)
        .await
        .expect("won");
    let r = deliver(&h, "evt_dp_3", "charge.dispute.closed", object.clone()).await;
    assert_eq!(r.json["applied"], "dispute");
    let (d, history) = disputes::find(&h.state, "simulated", &opened.id)
        .await
        .expect("read")
        .expect("stored");
    assert_eq!(d.status, DisputeStatus::Won);
    assert!(d.closed_at.is_some());
    let statuses: Vec<DisputeStatus> = history.iter().map(|e| e.0).collect();
    assert_eq!(
        statuses,
        [DisputeStatus::NeedsResponse, DisputeStatus::Won],
        "{history:?}"
    );
    assert_eq!(balance(&h, account, LedgerAccount::Disputed).await, 0);
    assert_eq!(balance(&h, account, cash()).await, 2900);
    assert_eq!(balance(&h, account, LedgerAccount::Chargebacks).await, 0);

    // A decided dispute is never reopened, however new the news claims to be.
    let later = Observation {
        provider: "simulated",
        state: DisputeState {
            status: DisputeStatus::NeedsResponse,
            ..opened.clone()
        },
        observed_at: h.clock.now() + TimeDelta::days(1),
        cause: "late",
    };
    assert_eq!(
        disputes::apply(&h.state, &later).await.expect("apply"),
        Applied::Unchanged
    );
    assert_eq!(balance(&h, account, cash()).await, 2900);

    // The company's endpoints hear of it: created, then closed.
    h.settle().await;
    assert_eq!(events_of(&h, "dispute.created").await, 1);
    assert_eq!(events_of(&h, "dispute.closed").await, 1);
    h.finish().await;
}

#[tokio::test]
async fn a_lost_dispute_of_a_renewal_is_a_chargeback_even_when_its_webhook_is_lost() {
    let h = harness().await;
    let (account, token, _) = bought(&h, "lost@example.com").await;
    h.advance_to(t(2026, 2, 15, 13, 5)).await;
    let (pi, invoice): (String, uuid::Uuid) = sqlx::query_as(
        "SELECT provider_payment_id, invoice_id FROM charge_attempts WHERE status = 'succeeded'",
    )
    .fetch_one(&h.state.billing)
    .await
    .expect("renewal charge");
    let opened = sim(&h)
        .open_dispute(&pi, "product_not_received", false)
        .await
        .expect("dispute");
    let object = serde_json::json!({ "id": opened.id, "object": "dispute" });
    deliver(&h, "evt_lost_1", "charge.dispute.created", object).await;
    let (d, _) = disputes::find(&h.state, "simulated", &opened.id)
        .await
        .expect("read")
        .expect("stored");
    assert_eq!(
        d.invoice_id.map(|i| i.0),
        Some(invoice),
        "the renewal's invoice"
    );
    assert_eq!(
        balance(&h, account, cash()).await,
        2900,
        "one of two withheld"
    );

    // Lost at the provider, and the webhook never arrives. Nothing changes for hours...
    sim(&h)
        .update_dispute(&opened.id, DisputeStatus::Lost)
        .await
        .expect("lost");
    let now = h.clock.now();
    h.advance_to(now + TimeDelta::hours(5)).await;
    let (d, _) = disputes::find(&h.state, "simulated", &opened.id)
        .await
        .expect("read")
        .expect("stored");
    assert_eq!(d.status, DisputeStatus::NeedsResponse);
    // ...then the reconciler reads it back.
    h.advance_to(now + TimeDelta::hours(7)).await;
    let (d, history) = disputes::find(&h.state, "simulated", &opened.id)
        .await
        .expect("read")
        .expect("stored");
    assert_eq!(d.status, DisputeStatus::Lost);
    assert_eq!(history.last().expect("event").1, "reconcile");
    assert_eq!(balance(&h, account, LedgerAccount::Chargebacks).await, 2900);
    assert_eq!(balance(&h, account, LedgerAccount::Disputed).await, 0);
    assert_eq!(balance(&h, account, cash()).await, 2900);
    // The invoice stays paid: the loss is the company's, booked as such.
    let inv = h
        .get(&format!("/v1/invoices/{invoice}"), Some(&token))
        .await;
    assert_eq!(inv.json["status"], "paid", "{:?}", inv.json);
    let unbalanced: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT transaction_id FROM ledger_entries GROUP BY 1
         HAVING sum(amount_minor) <> 0) u",
    )
    .fetch_one(&h.state.billing)
    .await
    .expect("count");
    assert_eq!(unbalanced, 0);
    h.finish().await;
}

#[tokio::test]
async fn an_inquiry_books_nothing_and_disputes_of_payments_we_never_booked_change_nothing() {
    let h = harness().await;
    let (account, _, pi) = bought(&h, "inquiry@example.com").await;
    let inquiry = sim(&h)
        .open_dispute(&pi, "general", true)
        .await
        .expect("inquiry");
    let object = serde_json::json!({ "id": inquiry.id, "object": "dispute" });
    let r = deliver(&h, "evt_inq", "charge.dispute.created", object).await;
    assert_eq!(r.json["applied"], "dispute");
    assert_eq!(balance(&h, account, LedgerAccount::Disputed).await, 0);
    assert_eq!(balance(&h, account, cash()).await, 2900);
    // It becomes a dispute, with a provider's reason far longer than we keep: withheld, and the
    // reason kept to 100 characters (not bytes: nothing splits a character).
    let escalated = Observation {
        provider: "simulated",
        state: DisputeState {
            status: DisputeStatus::NeedsResponse,
            reason: Some("é".repeat(300)),
            ..inquiry.clone()
        },
        observed_at: h.clock.now() + TimeDelta::seconds(1),
        cause: "test",
    };
    assert_eq!(
        disputes::apply(&h.state, &escalated).await.expect("apply"),
        Applied::Updated
    );
    let (d, _) = disputes::find(&h.state, "simulated", &inquiry.id)
        .await
        .expect("read")
        .expect("stored");
    assert_eq!(d.reason.as_deref().map(|r| r.chars().count()), Some(100));
    assert_eq!(balance(&h, account, LedgerAccount::Disputed).await, 2900);

    // Another merchant's dispute, and one the provider does not know: recorded, not applied.
    let r = deliver(
        &h,
        "evt_unknown",
        "charge.dispute.created",
        serde_json::json!({ "id": "dp_not_known", "object": "dispute" }),
    )
    .await;
    assert_eq!(r.json["applied"], "none");
    let foreign = Observation {
        provider: "simulated",
        state: DisputeState {
            id: "dp_foreign".into(),
            payment_id: "pi_of_someone_else".into(),
            amount_minor: 500,
            currency: "USD".into(),
            status: DisputeStatus::NeedsResponse,
            reason: None,
        },
        observed_at: h.clock.now(),
        cause: "test",
    };
    assert_eq!(
        disputes::apply(&h.state, &foreign).await.expect("apply"),
        Applied::NotOurs
    );
    assert_eq!(
        h.count("SELECT count(*) FROM provider_events").await,
        2,
        "both events are stored"
    );
    h.finish().await;
}

#[tokio::test]
async fn refunds_made_at_the_provider_are_booked_once_each() {
    let h = harness().await;
    let (account, _, pi) = bought(&h, "refund@example.com").await;
    // Refunded in the provider's dashboard, outside Tollgate.
    use tollgate_control_plane::gateways::PaymentGateway as _;
    sim(&h)
        .refund(&pi, 1000, "dashboard-1")
        .await
        .expect("refund");
    let charge = serde_json::json!({ "id": "ch_1", "object": "charge", "payment_intent": pi });
    let r = deliver(&h, "evt_rf_1", "charge.refunded", charge.clone()).await;
    assert_eq!(r.json["applied"], "refund", "{:?}", r.json);
    assert_eq!(balance(&h, account, LedgerAccount::Refunds).await, 1000);
    assert_eq!(balance(&h, account, cash()).await, 1900);
    // The same refund told again, then a second refund: each booked once.
    deliver(&h, "evt_rf_2", "charge.refund.updated", charge.clone()).await;
    assert_eq!(balance(&h, account, cash()).await, 1900);
    sim(&h)
        .refund(&pi, 400, "dashboard-2")
        .await
        .expect("refund");
    deliver(&h, "evt_rf_3", "charge.refunded", charge).await;
    assert_eq!(balance(&h, account, LedgerAccount::Refunds).await, 1400);
    assert_eq!(balance(&h, account, cash()).await, 1500);
    // A refund of a payment that is not ours books nothing.
    let r = deliver(
        &h,
        "evt_rf_4",
        "charge.refunded",
        serde_json::json!({ "id": "ch_2", "object": "charge", "payment_intent": "pi_elsewhere" }),
    )
    .await;
    assert_eq!(r.json["applied"], "none");
    h.finish().await;
}

#[tokio::test]
async fn a_card_set_up_the_customer_authenticated_then_left_is_made_ready_by_its_webhook() {
    let h = harness().await;
    let (_, token) = h.sign_up("setup@example.com").await;
    let r = h
        .post(
            "/v1/payment-methods",
            Some(&token),
            Some("3ds-card"),
            r#"{"payment_method":"pm_card_threeDSecure2Required"}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.json);
    let seti = r
        .str("/client_secret")
        .split("_secret_")
        .next()
        .expect("intent")
        .to_owned();
    // The customer passes 3-D Secure and closes the tab: no confirm reaches us.
    h.authenticate(&seti, true).await;
    let methods = h.get("/v1/payment-methods", Some(&token)).await;
    assert_eq!(methods.json["data"][0]["status"], "requires_action");
    let r = deliver(
        &h,
        "evt_seti",
        "setup_intent.succeeded",
        serde_json::json!({ "id": seti, "object": "setup_intent", "status": "succeeded" }),
    )
    .await;
    assert_eq!(r.json["applied"], "payment_method");
    let methods = h.get("/v1/payment-methods", Some(&token)).await;
    assert_eq!(
        methods.json["data"][0]["status"], "ready",
        "{:?}",
        methods.json
    );
    // Told again: nothing is waiting any more.
    let r = deliver(
        &h,
        "evt_seti_2",
        "setup_intent.succeeded",
        serde_json::json!({ "id": seti, "object": "setup_intent" }),
    )
    .await;
    assert_eq!(r.json["applied"], "none");
    h.finish().await;
}

#[tokio::test]
async fn the_development_simulator_opens_and_decides_disputes_through_its_routes() {
    let h = harness().await;
    let (account, _, pi) = bought(&h, "devdispute@example.com").await;
    let r = h
        .post(
            &format!("/dev/v1/simulator/payments/{pi}/dispute"),
            None,
            None,
            r#"{"reason":"duplicate"}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json);
    assert_eq!(r.json["status"], "needs_response");
    let id = r.str("/provider_dispute_id");
    let r = h
        .post(
            &format!("/dev/v1/simulator/disputes/{id}"),
            None,
            None,
            r#"{"status":"lost"}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json);
    assert_eq!(r.json["status"], "lost");
    assert_eq!(balance(&h, account, LedgerAccount::Chargebacks).await, 2900);
    // Decided: it cannot be moved again.
    let r = h
        .post(
            &format!("/dev/v1/simulator/disputes/{id}"),
            None,
            None,
            r#"{"status":"won"}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{:?}", r.json);
    // Bad input: an unknown status, a payment that does not exist, a hostile reason.
    let r = h
        .post(
            &format!("/dev/v1/simulator/disputes/{id}"),
            None,
            None,
            r#"{"status":"maybe"}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{:?}", r.json);
    let r = h
        .post(
            "/dev/v1/simulator/payments/pi_nope/dispute",
            None,
            None,
            r#"{"reason":"fraudulent"}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{:?}", r.json);
    let r = h
        .post(
            &format!("/dev/v1/simulator/payments/{pi}/dispute"),
            None,
            None,
            r#"{"reason":"<script>\u00e9"}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{:?}", r.json);
    h.finish().await;
}

//! Dunning over real PostgreSQL: a renewal that fails is retried on the policy's schedule,
//! escalates, reaches the facts the edges evaluate, ends written off with the account banned,
//! and is recovered by a working card — every step checked against the clock and the ledger.

mod common;

use axum::http::StatusCode;
use chrono::TimeDelta;
use common::{Harness, t};
use tollgate_control_plane::clock::Clock;
use tollgate_control_plane::dunning::{self, CaseStatus, EventKind};
use tollgate_control_plane::ids::{AccountId, InvoiceId};
use tollgate_control_plane::ledger::{self, LedgerAccount};
use tollgate_control_plane::money::Currency;
use tollgate_control_plane::{billing, entitlements};
use tollgate_protocol::{AccountStanding, Reason};

/// The decisions the stable rules give the account's stored facts, as an edge serves them.
async fn decide(h: &Harness, account: AccountId, feature: &str) -> tollgate_protocol::Decision {
    let facts = entitlements::facts_of(&h.state, account)
        .await
        .expect("facts");
    let program = tollgate_rules::demo_program();
    let v = tollgate_rules::facts::fact_vector(&program, &facts, h.clock.now().timestamp_millis());
    let i = program
        .features
        .iter()
        .position(|f| f.key == feature)
        .expect("feature");
    tollgate_rules::facts::decision(tollgate_rules::interp::evaluate(&program, &v)[i])
}

async fn renewal_of(h: &Harness, token: &str) -> InvoiceId {
    let r = h.get("/v1/invoices", Some(token)).await;
    r.json["data"][0]["id"]
        .as_str()
        .expect("invoice")
        .parse()
        .expect("id")
}

async fn balance(h: &Harness, account: AccountId, of: LedgerAccount) -> i64 {
    let mut conn = h.state.billing.acquire().await.expect("conn");
    ledger::balance(&mut conn, account, &of, Currency::USD)
        .await
        .expect("balance")
}

async fn attempts(h: &Harness, invoice: InvoiceId) -> usize {
    billing::charges::attempts_of(&h.state, invoice)
        .await
        .expect("attempts")
        .len()
}

#[tokio::test]
async fn the_ladder_escalates_on_schedule_writes_off_bans_and_a_working_card_recovers_it() {
    let h = Harness::new().await;
    let (account, token) = h.failing_renewal_customer("ladder@example.com").await;
    assert_eq!(decide(&h, account, "api_calls").await.limit, Some(100_000));

    // The renewal fails at 13:05 (finalised after the grace window): level 1, first retry a
    // day later.
    let opened = t(2026, 2, 15, 13, 5);
    h.advance_to(opened).await;
    let invoice = renewal_of(&h, &token).await;
    let (case, history) = dunning::case_of(&h.state, invoice)
        .await
        .expect("read")
        .expect("case");
    assert_eq!(
        (case.status, case.level, case.retries),
        (CaseStatus::Retrying, 1, 0)
    );
    assert_eq!(case.next_retry_at, Some(opened + TimeDelta::days(1)));
    assert_eq!(history[0].1, EventKind::Opened);
    let acct = h.get("/v1/account", Some(&token)).await;
    assert_eq!(acct.json["dunning"]["level"], 1, "{:?}", acct.json);
    assert_eq!(acct.json["dunning"]["invoice"], invoice.to_string());
    assert_eq!(acct.json["payment_method_required"], false);
    let subs = h.get("/v1/subscriptions", Some(&token)).await;
    assert_eq!(subs.json["data"][0]["status"], "past_due");

    // Each retry on its day; the level after each failure; what the rules say.
    for (n, day, level) in [
        (1, 1, 1),
        (2, 2, 2),
        (3, 3, 2),
        (4, 5, 3),
        (5, 7, 3),
        (6, 9, 4),
        (7, 11, 4),
    ] {
        // Nothing a minute before the retry is due.
        h.advance_to(opened + TimeDelta::days(day) - TimeDelta::minutes(1))
            .await;
        assert_eq!(attempts(&h, invoice).await, n, "before retry {n}");
        h.advance_to(opened + TimeDelta::days(day)).await;
        assert_eq!(
            attempts(&h, invoice).await,
            n + 1,
            "retry {n} is one more charge attempt"
        );
        let (case, _) = dunning::case_of(&h.state, invoice)
            .await
            .expect("read")
            .expect("case");
        assert_eq!(
            (case.retries, case.level),
            (n as i32, level),
            "after retry {n}"
        );
        let facts = entitlements::facts_of(&h.state, account)
            .await
            .expect("facts");
        assert_eq!(facts.dunning_level, i64::from(level));
        assert_eq!(facts.days_past_due, day);
        let exports = decide(&h, account, "exports").await;
        assert_eq!(exports.allowed, day <= 7, "exports on day {day}");
        if level >= 3 {
            // "read-only when dunning": metered features capped at what was used.
            assert_eq!(decide(&h, account, "api_calls").await.limit, Some(0));
        }
        if day == 7 {
            // The day past the seventh denies exports, with the rule's reason.
            h.advance_to(opened + TimeDelta::days(8)).await;
            let facts = entitlements::facts_of(&h.state, account)
                .await
                .expect("facts");
            assert_eq!(facts.days_past_due, 8, "recomputed daily");
            let d = decide(&h, account, "exports").await;
            assert_eq!((d.allowed, d.reason), (false, Reason::DeniedPastDue));
        }
    }

    // The eighth retry fails: exhausted. Uncollectible, written off, canceled, banned.
    h.advance_to(opened + TimeDelta::days(14)).await;
    assert_eq!(
        attempts(&h, invoice).await,
        9,
        "the first try and eight retries"
    );
    let (case, history) = dunning::case_of(&h.state, invoice)
        .await
        .expect("read")
        .expect("case");
    assert_eq!(
        (case.status, case.written_off_minor),
        (CaseStatus::Exhausted, 2900)
    );
    assert_eq!(history.last().expect("history").1, EventKind::Exhausted);
    let inv = h
        .get(&format!("/v1/invoices/{invoice}"), Some(&token))
        .await;
    assert_eq!(inv.json["status"], "uncollectible");
    assert_eq!(balance(&h, account, LedgerAccount::BadDebt).await, 2900);
    assert_eq!(balance(&h, account, LedgerAccount::Receivable).await, 0);
    let subs = h.get("/v1/subscriptions", Some(&token)).await;
    assert_eq!(subs.json["data"][0]["status"], "canceled");
    let acct = h.get("/v1/account", Some(&token)).await;
    assert_eq!(acct.json["standing"], "banned", "{:?}", acct.json);
    assert_eq!(acct.json["payment_method_required"], true);
    let d = decide(&h, account, "seats").await;
    assert_eq!((d.allowed, d.reason), (false, Reason::DeniedBanned));
    // Nothing is retried by itself any more.
    h.advance_to(opened + TimeDelta::days(30)).await;
    assert_eq!(attempts(&h, invoice).await, 9);

    // A working card: the written-off invoice is charged at once and everything comes back.
    let r = h
        .post(
            "/v1/payment-methods",
            Some(&token),
            Some("new-card"),
            r#"{"payment_method":"pm_card_visa","make_default":true}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json);
    h.settle().await;
    assert_eq!(attempts(&h, invoice).await, 10);
    let inv = h
        .get(&format!("/v1/invoices/{invoice}"), Some(&token))
        .await;
    assert_eq!(inv.json["status"], "paid", "{:?}", inv.json);
    let (case, history) = dunning::case_of(&h.state, invoice)
        .await
        .expect("read")
        .expect("case");
    assert_eq!(case.status, CaseStatus::Recovered);
    let kinds: Vec<EventKind> = history.iter().map(|e| e.1).collect();
    assert!(
        kinds.ends_with(&[EventKind::PaymentMethodAdded, EventKind::Recovered]),
        "{kinds:?}"
    );
    assert_eq!(
        balance(&h, account, LedgerAccount::BadDebt).await,
        0,
        "write-off reversed"
    );
    assert_eq!(balance(&h, account, LedgerAccount::Receivable).await, 0);
    let cash = LedgerAccount::cash("simulated").expect("cash");
    assert_eq!(balance(&h, account, cash).await, 2 * 2900);
    let acct = h.get("/v1/account", Some(&token)).await;
    assert_eq!(
        acct.json["standing"], "active",
        "the ban for bad debt is lifted"
    );
    assert_eq!(acct.json["payment_method_required"], false);
    assert!(acct.json["dunning"].is_null(), "{:?}", acct.json);
    let facts = entitlements::facts_of(&h.state, account)
        .await
        .expect("facts");
    assert_eq!(
        (facts.standing, facts.dunning_level, facts.days_past_due),
        (AccountStanding::Active, 0, 0)
    );
    // The books balance.
    let unbalanced: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT transaction_id FROM ledger_entries GROUP BY 1
         HAVING sum(amount_minor) <> 0) u",
    )
    .fetch_one(&h.state.billing)
    .await
    .expect("count");
    assert_eq!(unbalanced, 0);
    // It can buy again.
    let r = h
        .post(
            "/v1/checkout",
            Some(&token),
            Some("buy-again"),
            r#"{"plan":"pro"}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json);
    h.finish().await;
}

#[tokio::test]
async fn a_hard_decline_skips_the_retries_and_waits_for_a_new_payment_method() {
    let knobs = common::gateway::Knobs::default();
    let h = Harness::with_gateway(knobs.wrapper()).await;
    let (id, token) = h.sign_up("stolen@example.com").await;
    let account: AccountId = id.parse().expect("id");
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
    let sub = h
        .get("/v1/subscriptions", Some(&token))
        .await
        .str("/data/0/id");

    // The card is reported stolen before the renewal.
    *knobs.decline_payments.lock().expect("knob") = Some("stolen_card".into());
    h.advance_to(t(2026, 2, 15, 13, 5)).await;
    let invoice = renewal_of(&h, &token).await;
    let (case, history) = dunning::case_of(&h.state, invoice)
        .await
        .expect("read")
        .expect("case");
    assert_eq!(
        (case.status, case.next_retry_at),
        (CaseStatus::AwaitingPaymentMethod, None)
    );
    assert!(
        history
            .iter()
            .any(|e| e.1 == EventKind::HardDecline && e.3 == "stolen_card")
    );
    let acct = h.get("/v1/account", Some(&token)).await;
    assert_eq!(
        acct.json["payment_method_required"], true,
        "{:?}",
        acct.json
    );
    assert_eq!(acct.json["standing"], "active");
    // No retries, however long it waits.
    h.advance_to(t(2026, 3, 1, 13, 5)).await;
    assert_eq!(attempts(&h, invoice).await, 1);
    // Plan changes wait for a method.
    h.post(
        &format!("/v1/subscriptions/{sub}/change"),
        Some(&token),
        Some("up"),
        r#"{"plan":"enterprise"}"#,
    )
    .await
    .assert_problem(StatusCode::PAYMENT_REQUIRED, "payment_method_required");

    // A new card: retried at once, paid, recovered.
    *knobs.decline_payments.lock().expect("knob") = None;
    let r = h
        .post(
            "/v1/payment-methods",
            Some(&token),
            Some("new-card"),
            r#"{"payment_method":"pm_card_mastercard","make_default":true}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json);
    h.settle().await;
    assert_eq!(attempts(&h, invoice).await, 2);
    let (case, _) = dunning::case_of(&h.state, invoice)
        .await
        .expect("read")
        .expect("case");
    assert_eq!(case.status, CaseStatus::Recovered);
    let acct = h.get("/v1/account", Some(&token)).await;
    assert_eq!(acct.json["payment_method_required"], false);
    let subs = h.get("/v1/subscriptions", Some(&token)).await;
    assert_eq!(subs.json["data"][0]["status"], "active");
    assert_eq!(balance(&h, account, LedgerAccount::Receivable).await, 0);
    h.finish().await;
}

#[tokio::test]
async fn paying_on_session_while_dunning_recovers_the_case_and_stops_the_retries() {
    let h = Harness::new().await;
    let (account, token) = h.failing_renewal_customer("pays@example.com").await;
    h.advance_to(t(2026, 2, 15, 13, 5)).await;
    let invoice = renewal_of(&h, &token).await;
    h.add_card(&token, "pm_card_visa").await;
    h.settle().await;
    // Adding the card retried at once (not the default, so the failing one was charged).
    let before = attempts(&h, invoice).await;
    let pm = h.get("/v1/payment-methods", Some(&token)).await;
    let good = pm.json["data"]
        .as_array()
        .expect("methods")
        .iter()
        .find(|m| m["last4"] == "4242")
        .expect("visa")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let r = h
        .post(
            &format!("/v1/invoices/{invoice}/pay"),
            Some(&token),
            Some("pay-now"),
            &format!(r#"{{"payment_method":"{good}"}}"#),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json);
    h.settle().await;
    let (case, _) = dunning::case_of(&h.state, invoice)
        .await
        .expect("read")
        .expect("case");
    assert_eq!(case.status, CaseStatus::Recovered);
    h.advance_to(t(2026, 3, 1, 13, 5)).await;
    assert_eq!(
        attempts(&h, invoice).await,
        before + 1,
        "no retry after it was paid"
    );
    let facts = entitlements::facts_of(&h.state, account)
        .await
        .expect("facts");
    assert_eq!((facts.dunning_level, facts.days_past_due), (0, 0));
    h.finish().await;
}

#[tokio::test]
async fn under_the_unpaid_policy_an_exhausted_subscription_is_kept_granting_nothing_until_paid() {
    let h = Harness::with_config(&[
        ("dunning_on_exhaustion", "unpaid"),
        // No ban: what is denied below is denied by the status alone.
        ("dunning_ban_over_minor", "1000000"),
    ])
    .await;
    let (account, token) = h.failing_renewal_customer("unpaid@example.com").await;
    let opened = t(2026, 2, 15, 13, 5);
    for day in [0, 1, 2, 3, 5, 7, 9, 11, 14] {
        h.advance_to(opened + TimeDelta::days(day)).await;
    }
    let invoice = renewal_of(&h, &token).await;
    let (case, _) = dunning::case_of(&h.state, invoice)
        .await
        .expect("read")
        .expect("case");
    assert_eq!(case.status, CaseStatus::Exhausted);
    let subs = h.get("/v1/subscriptions", Some(&token)).await;
    let sub = &subs.json["data"][0];
    assert_eq!(sub["status"], "unpaid", "{:?}", subs.json);
    let sub_id = sub["id"].as_str().expect("id").to_owned();
    let acct = h.get("/v1/account", Some(&token)).await;
    assert_eq!(acct.json["standing"], "active", "{:?}", acct.json);
    let facts = entitlements::facts_of(&h.state, account)
        .await
        .expect("facts");
    assert_eq!(
        facts.subscription.as_ref().map(|s| s.status),
        Some(tollgate_protocol::SubscriptionStatus::Unpaid)
    );
    for feature in ["seats", "exports", "api_calls"] {
        assert!(
            !decide(&h, account, feature).await.allowed,
            "{feature} while unpaid"
        );
    }
    // Still the account's one subscription: no second plan, no plan change, no renewal.
    let r = h
        .post(
            &format!("/v1/subscriptions/{sub_id}/change"),
            Some(&token),
            Some("change"),
            r#"{"plan":"starter"}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{:?}", r.json);
    assert_eq!(r.json["code"], "subscription_unpaid");
    h.advance_to(t(2026, 4, 20, 9, 0)).await;
    let invoices = h.get("/v1/invoices", Some(&token)).await;
    assert_eq!(
        invoices.json["data"].as_array().expect("list").len(),
        2,
        "no renewal while unpaid: {:?}",
        invoices.json
    );

    // A working card pays the invoice: active again, in the period of today (the periods it
    // was unpaid through are not billed), and the features are back.
    let r = h
        .post(
            "/v1/payment-methods",
            Some(&token),
            Some("new-card"),
            r#"{"payment_method":"pm_card_visa","make_default":true}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json);
    h.settle().await;
    let inv = h
        .get(&format!("/v1/invoices/{invoice}"), Some(&token))
        .await;
    assert_eq!(inv.json["status"], "paid", "{:?}", inv.json);
    let subs = h.get("/v1/subscriptions", Some(&token)).await;
    let sub = &subs.json["data"][0];
    assert_eq!(sub["status"], "active", "{:?}", subs.json);
    assert_eq!(sub["id"], sub_id.as_str());
    assert_eq!(sub["current_period_start"], "2026-04-15T12:00:00Z");
    assert_eq!(sub["current_period_end"], "2026-05-15T12:00:00Z");
    assert!(decide(&h, account, "seats").await.allowed);
    h.advance_to(t(2026, 4, 20, 12, 0)).await;
    let invoices = h.get("/v1/invoices", Some(&token)).await;
    let starts: Vec<&str> = invoices.json["data"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|i| i["period_start"].as_str())
        .collect();
    assert!(
        !starts.contains(&"2026-03-15T12:00:00Z"),
        "March was not billed: {starts:?}"
    );
    assert!(
        starts.contains(&"2026-04-15T12:00:00Z"),
        "the resumed period is billed: {:?}",
        invoices.json
    );
    h.finish().await;
}

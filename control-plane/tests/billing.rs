//! Automated billing over real PostgreSQL: renewals on the clock, invoices with metered lines
//! priced by the catalog's models, off-session charges through the simulated gateway, and the
//! ledger — every amount checked against numbers worked out by hand here.

mod common;

use axum::http::StatusCode;
use chrono::TimeDelta;
use common::{Harness, t};
use tollgate_control_plane::billing::charges;
use tollgate_control_plane::clock::Clock;
use tollgate_control_plane::ids::AccountId;
use tollgate_control_plane::ledger::{self, LedgerAccount, Revenue};
use tollgate_control_plane::money::Currency;
use tollgate_control_plane::state::BillingOutbox;
use tollgate_control_plane::{maintenance, outbox, usage};
use tollgate_protocol::usage::{UsageBatch, UsageEvent};

async fn subscribe(h: &Harness, email: &str, plan: &str) -> (AccountId, String) {
    let (id, token) = h.sign_up(email).await;
    if plan != "free" {
        h.add_card(&token, "pm_card_visa").await;
    }
    let r = h
        .post(
            "/v1/checkout",
            Some(&token),
            Some(&format!("buy-{email}")),
            &format!(r#"{{"plan":"{plan}"}}"#),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json);
    (id.parse().expect("account id"), token)
}

async fn use_api(h: &Harness, account: AccountId, tag: &str, quantity: i64) {
    let batch = UsageBatch {
        batch_id: uuid::Uuid::now_v7(),
        edge_id: "edge-1".into(),
        events: vec![UsageEvent {
            id: format!("{tag}-{account}"),
            account,
            meter: "api_calls".into(),
            quantity,
            timestamp_ms: h.clock.now().timestamp_millis(),
            properties: Default::default(),
        }],
    };
    let ack = usage::ingest_batch(&h.state, &batch.batch_id.to_string(), &batch)
        .await
        .expect("ingest");
    assert_eq!(ack.accepted, 1, "{ack:?}");
}

/// (kind, quantity, amount) of each line, and (total, amount due, status) of each invoice,
/// oldest first, as the Dashboard shows them.
async fn invoices(h: &Harness, token: &str) -> Vec<serde_json::Value> {
    let r = h.get("/v1/invoices?limit=100", Some(token)).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json);
    let mut data = r.json["data"].as_array().expect("data").clone();
    data.reverse();
    data
}

fn summary(inv: &serde_json::Value) -> (i64, i64, String, Vec<(String, i64, i64)>) {
    let lines = inv["lines"]
        .as_array()
        .expect("lines")
        .iter()
        .map(|l| {
            (
                l["kind"].as_str().unwrap_or_default().to_owned(),
                l["quantity"].as_i64().unwrap_or(-1),
                l["amount_minor"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    (
        inv["total_minor"].as_i64().expect("total"),
        inv["amount_due_minor"].as_i64().expect("due"),
        inv["status"].as_str().expect("status").to_owned(),
        lines,
    )
}

fn plan(amount: i64) -> (String, i64, i64) {
    ("plan".into(), 1, amount)
}

fn metered(quantity: i64, amount: i64) -> (String, i64, i64) {
    ("metered".into(), quantity, amount)
}

async fn balance(h: &Harness, account: AccountId, of: LedgerAccount) -> i64 {
    let mut conn = h.state.billing.acquire().await.expect("conn");
    ledger::balance(&mut conn, account, &of, Currency::USD)
        .await
        .expect("balance")
}

#[tokio::test]
async fn three_months_of_renewals_bill_free_pro_and_enterprise_to_the_minor_unit() {
    let h = Harness::new().await;
    // The harness clock starts at 2026-01-15 12:00 UTC: every period is anchored there.
    let (free, free_token) = subscribe(&h, "free@example.com", "free").await;
    let (pro, pro_token) = subscribe(&h, "pro@example.com", "pro").await;
    let (ent, ent_token) = subscribe(&h, "ent@example.com", "enterprise").await;
    h.settle().await;

    // Usage in each period, a few minutes in: pro is over its 100,000 included calls, then
    // under, then well over; enterprise crosses its free first tier of 5,000,000, then not,
    // then by 2,500,000.
    let usage = [
        (100_250, 5_000_100),
        (99_000, 4_000_000),
        (150_000, 7_500_000),
    ];
    let boundaries = [
        t(2026, 2, 15, 12, 0),
        t(2026, 3, 15, 12, 0),
        t(2026, 4, 15, 12, 0),
    ];
    for (month, ((pro_calls, ent_calls), end)) in usage.iter().zip(boundaries).enumerate() {
        h.clock.advance(TimeDelta::minutes(5));
        use_api(&h, pro, &format!("m{month}"), *pro_calls).await;
        use_api(&h, ent, &format!("m{month}"), *ent_calls).await;
        // The period ends: the renewal's draft waits for the grace window (1 h), then is
        // finalised with the metered line and charged.
        h.advance_to(end + TimeDelta::minutes(1)).await;
        let drafts = invoices(&h, &pro_token).await;
        assert_eq!(drafts.last().expect("draft")["status"], "draft");
        h.advance_to(end + TimeDelta::minutes(61)).await;
    }

    let pro_invoices: Vec<_> = invoices(&h, &pro_token).await.iter().map(summary).collect();
    let paid =
        |total: i64, lines: Vec<(String, i64, i64)>| (total, total, "paid".to_owned(), lines);
    assert_eq!(
        pro_invoices,
        vec![
            paid(2900, vec![plan(2900)]),
            // 250 calls over at 2 each.
            paid(3400, vec![plan(2900), metered(100_250, 500)]),
            paid(2900, vec![plan(2900), metered(99_000, 0)]),
            // 50,000 over at 2 each.
            paid(102_900, vec![plan(2900), metered(150_000, 100_000)]),
        ]
    );
    let ent_invoices: Vec<_> = invoices(&h, &ent_token).await.iter().map(summary).collect();
    assert_eq!(
        ent_invoices,
        vec![
            paid(19_900, vec![plan(19_900)]),
            paid(20_000, vec![plan(19_900), metered(5_000_100, 100)]),
            paid(19_900, vec![plan(19_900), metered(4_000_000, 0)]),
            paid(2_519_900, vec![plan(19_900), metered(7_500_000, 2_500_000)]),
        ]
    );
    let free_invoices: Vec<_> = invoices(&h, &free_token)
        .await
        .iter()
        .map(summary)
        .collect();
    assert_eq!(free_invoices, vec![paid(0, vec![plan(0)]); 4]);

    // The graduated line shows how its quantity fell into the tiers.
    let last = &invoices(&h, &ent_token).await[3];
    let tiers = last["lines"][1]["tiers"].as_array().expect("tiers");
    assert_eq!(tiers.len(), 2);
    assert_eq!(
        (
            tiers[0]["quantity"].as_i64(),
            tiers[0]["amount_minor"].as_i64()
        ),
        (Some(5_000_000), Some(0))
    );
    assert_eq!(
        (
            tiers[1]["quantity"].as_i64(),
            tiers[1]["amount_minor"].as_i64()
        ),
        (Some(2_500_000), Some(2_500_000))
    );
    // Periods: the fixed line covers the coming period, the metered one the period that ended.
    assert_eq!(last["period_start"], "2026-04-15T12:00:00Z");
    assert_eq!(last["period_end"], "2026-05-15T12:00:00Z");
    assert_eq!(last["lines"][1]["period_start"], "2026-03-15T12:00:00Z");
    assert_eq!(last["lines"][1]["period_end"], "2026-04-15T12:00:00Z");
    // Numbered once finalised, gaplessly.
    let mut all: Vec<String> = Vec::new();
    for token in [&pro_token, &ent_token, &free_token] {
        for inv in invoices(&h, token).await {
            all.push(inv["number"].as_str().expect("number").to_owned());
        }
    }
    all.sort();
    let expected: Vec<String> = (1..=12).map(|n| format!("TG-2026-{n:06}")).collect();
    assert_eq!(all, expected);

    // The ledger: nothing owed, the cash is what was charged, revenue by plan and meter.
    let pro_paid = 2900 + 3400 + 2900 + 102_900;
    let ent_paid = 19_900 + 20_000 + 19_900 + 2_519_900;
    assert_eq!(balance(&h, pro, LedgerAccount::Receivable).await, 0);
    assert_eq!(balance(&h, ent, LedgerAccount::Receivable).await, 0);
    let cash = LedgerAccount::cash("simulated").expect("cash");
    assert_eq!(balance(&h, pro, cash.clone()).await, pro_paid);
    assert_eq!(balance(&h, ent, cash.clone()).await, ent_paid);
    assert_eq!(balance(&h, free, cash).await, 0);
    let plan_rev = |k: &str| LedgerAccount::revenue(Revenue::Plan(k.into())).expect("acct");
    let meter_rev = LedgerAccount::revenue(Revenue::Meter("api_calls".into())).expect("acct");
    assert_eq!(balance(&h, pro, plan_rev("pro")).await, -4 * 2900);
    assert_eq!(balance(&h, pro, meter_rev.clone()).await, -(500 + 100_000));
    assert_eq!(balance(&h, ent, plan_rev("enterprise")).await, -4 * 19_900);
    assert_eq!(balance(&h, ent, meter_rev).await, -(100 + 2_500_000));

    // Every off-session charge is one succeeded attempt; the account shows no balance.
    let attempts: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM charge_attempts WHERE status = 'succeeded' AND presence = 'off_session'",
    )
    .fetch_one(&h.state.billing)
    .await
    .expect("count");
    assert_eq!(attempts, 6, "three renewals each of pro and enterprise");
    let acct = h.get("/v1/account", Some(&pro_token)).await;
    assert_eq!(acct.json["balance_minor"], 0, "{:?}", acct.json);
    assert_eq!(acct.json["currency"], "USD");
    // The subscription moved on with its periods (the edge's facts carry the same).
    let subs = h.get("/v1/subscriptions", Some(&pro_token)).await;
    assert_eq!(
        subs.json["data"][0]["current_period_start"],
        "2026-04-15T12:00:00Z"
    );
    assert_eq!(subs.json["data"][0]["status"], "active");
    h.finish().await;
}

#[tokio::test]
async fn a_declined_renewal_leaves_the_invoice_open_and_the_subscription_past_due() {
    let h = Harness::new().await;
    // Attaches fine, declines every charge: the checkout itself is paid with a good card.
    let (account, token) = h.failing_renewal_customer("late@example.com").await;

    h.advance_to(t(2026, 2, 15, 13, 5)).await;
    let list = invoices(&h, &token).await;
    let renewal = &list[1];
    assert_eq!(renewal["status"], "open", "{renewal:?}");
    assert_eq!(renewal["amount_due_minor"], 2900);
    let inv_id: tollgate_control_plane::ids::InvoiceId = renewal["id"]
        .as_str()
        .expect("id")
        .parse()
        .expect("invoice id");
    let attempts = charges::attempts_of(&h.state, inv_id)
        .await
        .expect("attempts");
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].status, charges::AttemptStatus::Declined);
    assert!(attempts[0].decline_code.is_some());
    // The failure went out through billing's outbox: the subscription is past due.
    let subs = h.get("/v1/subscriptions", Some(&token)).await;
    assert_eq!(
        subs.json["data"][0]["status"], "past_due",
        "{:?}",
        subs.json
    );
    // What is owed shows on the account and in the ledger.
    let acct = h.get("/v1/account", Some(&token)).await;
    assert_eq!(acct.json["balance_minor"], 2900);
    assert_eq!(balance(&h, account, LedgerAccount::Receivable).await, 2900);
    // No retry by itself (dunning schedules those): another pass charges nothing.
    h.settle().await;
    let again = charges::attempts_of(&h.state, inv_id)
        .await
        .expect("attempts");
    assert_eq!(again.len(), 1);
    h.finish().await;
}

/// Runs the billing workers (maintenance and both relays) of one process until it finds
/// nothing to do.
async fn worker(state: tollgate_control_plane::state::AppState) {
    for _ in 0..200 {
        let changed = maintenance::run(&state).await.expect("maintenance");
        let cf = outbox::relay_once(&state).await.expect("cf relay");
        let billing = outbox::relay_once(&BillingOutbox(state.clone()))
            .await
            .expect("billing relay");
        if changed + cf + billing == 0 {
            return;
        }
    }
    panic!("worker did not settle");
}

#[tokio::test]
async fn four_workers_in_two_processes_invoice_and_charge_every_renewal_exactly_once() {
    let h = Harness::new().await;
    let second = h.restarted().await;
    let n = 24;
    for i in 0..n {
        subscribe(&h, &format!("c{i}@example.com"), "pro").await;
    }
    h.settle().await;
    // Everyone is due at once: renewal, finalisation after the grace window, charge.
    h.clock.advance(TimeDelta::days(31) + TimeDelta::hours(2));
    let workers = [
        tokio::spawn(worker(h.state.clone())),
        tokio::spawn(worker(h.state.clone())),
        tokio::spawn(worker(second.state.clone())),
        tokio::spawn(worker(second.state.clone())),
    ];
    for w in workers {
        w.await.expect("worker");
    }
    h.settle().await;
    let pool = h.state.billing.clone();
    let count = |sql: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&pool)
                .await
                .expect("count")
        }
    };
    assert_eq!(
        count("SELECT count(*) FROM invoices WHERE reason = 'subscription_cycle'").await,
        n
    );
    assert_eq!(
        count(
            "SELECT count(*) FROM invoices WHERE reason = 'subscription_cycle' AND status = 'paid'"
        )
        .await,
        n
    );
    assert_eq!(count("SELECT count(*) FROM charge_attempts").await, n);
    assert_eq!(
        count("SELECT count(*) FROM ledger_transactions WHERE kind = 'payment'").await,
        2 * n,
        "the checkout's and the renewal's, once each"
    );
    assert_eq!(
        h.count("SELECT count(*) FROM sim_intents WHERE kind = 'payment'")
            .await,
        2 * n,
        "charged once per period at the provider"
    );
    assert_eq!(
        count("SELECT count(DISTINCT number) FROM invoices WHERE number IS NOT NULL").await,
        2 * n
    );
    h.finish().await;
}

#[tokio::test]
async fn a_provider_that_times_out_after_charging_a_renewal_is_asked_again_with_the_same_key() {
    let knobs = common::gateway::Knobs::default();
    let h = Harness::with_gateway(knobs.wrapper()).await;
    let (account, token) = subscribe(&h, "timeout@example.com", "pro").await;
    h.settle().await;
    // The renewal's charge goes through at the provider, and its answer is lost.
    knobs
        .lose_payment_answers
        .store(1, std::sync::atomic::Ordering::SeqCst);
    h.advance_to(t(2026, 2, 15, 13, 5)).await;
    let renewal = invoices(&h, &token).await[1].clone();
    assert_eq!(renewal["status"], "open", "unknown yet: {renewal:?}");
    let id: tollgate_control_plane::ids::InvoiceId =
        renewal["id"].as_str().expect("id").parse().expect("id");
    let pending = charges::attempts_of(&h.state, id).await.expect("attempts");
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].status, charges::AttemptStatus::Pending);
    // Not again before the retry time; after it, the same attempt with the same key.
    h.settle().await;
    assert_eq!(
        h.count("SELECT count(*) FROM sim_intents WHERE kind = 'payment'")
            .await,
        2
    );
    h.advance_to(h.clock.now() + charges::RETRY_PENDING_AFTER)
        .await;
    let attempts = charges::attempts_of(&h.state, id).await.expect("attempts");
    assert_eq!(attempts.len(), 1, "the same attempt, driven again");
    assert_eq!(attempts[0].status, charges::AttemptStatus::Succeeded);
    assert_eq!(invoices(&h, &token).await[1]["status"], "paid");
    assert_eq!(
        h.count("SELECT count(*) FROM sim_intents WHERE kind = 'payment'")
            .await,
        2,
        "the checkout's payment and one renewal payment: never charged twice"
    );
    let cash = LedgerAccount::cash("simulated").expect("cash");
    assert_eq!(balance(&h, account, cash).await, 2 * 2900);
    h.finish().await;
}

#[tokio::test]
async fn a_renewal_that_needs_authentication_is_paid_on_session_with_3ds() {
    let h = Harness::new().await;
    let (_, token) = subscribe(&h, "3ds@example.com", "pro").await;
    // The default becomes a card that asks for 3-D Secure on every payment.
    let r = h
        .post(
            "/v1/payment-methods",
            Some(&token),
            Some("pm-3ds"),
            r#"{"payment_method":"pm_card_threeDSecure2Required","make_default":true}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.json);
    let setup = r.str("/client_secret");
    h.authenticate(setup.split("_secret_").next().expect("intent"), true)
        .await;
    let pm = r.str("/payment_method/id");
    let ok = h
        .post(
            &format!("/v1/payment-methods/{pm}/confirm"),
            Some(&token),
            None,
            "",
        )
        .await;
    assert_eq!(ok.json["status"], "ready", "{:?}", ok.json);
    h.settle().await;

    h.advance_to(t(2026, 2, 15, 13, 5)).await;
    let renewal = invoices(&h, &token).await[1].clone();
    assert_eq!(renewal["status"], "open");
    assert_eq!(renewal["action_required"], true, "{renewal:?}");
    let acct = h.get("/v1/account", Some(&token)).await;
    assert_eq!(acct.json["action_required"], true);
    let id = renewal["id"].as_str().expect("id").to_owned();

    // Another account cannot see or pay it.
    let (_, stranger) = h.sign_up("stranger@example.com").await;
    h.get(&format!("/v1/invoices/{id}"), Some(&stranger))
        .await
        .assert_problem(StatusCode::NOT_FOUND, "not_found");
    h.post(
        &format!("/v1/invoices/{id}/pay"),
        Some(&stranger),
        Some("p"),
        "{}",
    )
    .await
    .assert_problem(StatusCode::NOT_FOUND, "not_found");

    // Nor page from it.
    h.get(
        &format!("/v1/invoices?starting_after={id}"),
        Some(&stranger),
    )
    .await
    .assert_problem(StatusCode::NOT_FOUND, "not_found");
    h.get("/v1/invoices?limit=-1", Some(&token))
        .await
        .assert_problem(StatusCode::BAD_REQUEST, "invalid_limit");
    // On-session: 3-D Secure, then confirm.
    let pay = h
        .post(
            &format!("/v1/invoices/{id}/pay"),
            Some(&token),
            Some("pay-1"),
            "{}",
        )
        .await;
    assert_eq!(pay.status, StatusCode::ACCEPTED, "{:?}", pay.json);
    assert_eq!(pay.json["status"], "requires_action");
    let again = h
        .post(
            &format!("/v1/invoices/{id}/pay"),
            Some(&token),
            Some("pay-1"),
            "{}",
        )
        .await;
    assert!(again.replayed, "the same key answers the same");
    assert_eq!(again.json["client_secret"], pay.json["client_secret"]);
    // A second payment while one waits is refused, and so is the off-session charger.
    h.post(
        &format!("/v1/invoices/{id}/pay"),
        Some(&token),
        Some("pay-2"),
        "{}",
    )
    .await
    .assert_problem(StatusCode::CONFLICT, "payment_in_progress");
    let secret = pay.str("/client_secret");
    h.authenticate(secret.split("_secret_").next().expect("intent"), true)
        .await;
    let done = h
        .post(
            &format!("/v1/invoices/{id}/confirm"),
            Some(&token),
            None,
            "",
        )
        .await;
    assert_eq!(done.status, StatusCode::OK, "{:?}", done.json);
    assert_eq!(done.json["invoice"]["status"], "paid");
    assert_eq!(done.json["invoice"]["action_required"], false);
    h.settle().await;
    let acct = h.get("/v1/account", Some(&token)).await;
    assert_eq!(
        (
            acct.json["action_required"].clone(),
            acct.json["balance_minor"].clone()
        ),
        (serde_json::json!(false), serde_json::json!(0))
    );
    let subs = h.get("/v1/subscriptions", Some(&token)).await;
    assert_eq!(subs.json["data"][0]["status"], "active", "{:?}", subs.json);
    h.post(
        &format!("/v1/invoices/{id}/pay"),
        Some(&token),
        Some("pay-3"),
        "{}",
    )
    .await
    .assert_problem(StatusCode::CONFLICT, "invoice_paid");
    // Paging: newest first, two at a time.
    let page = h.get("/v1/invoices?limit=1", Some(&token)).await;
    assert_eq!(page.json["has_more"], true);
    let last = page.json["data"][0]["id"].as_str().expect("id").to_owned();
    assert_eq!(last, id);
    let next = h
        .get(
            &format!("/v1/invoices?limit=1&starting_after={last}"),
            Some(&token),
        )
        .await;
    assert_eq!(next.json["has_more"], false);
    assert_eq!(next.json["data"][0]["status"], "paid");
    h.get("/v1/invoices?limit=0", Some(&token))
        .await
        .assert_problem(StatusCode::BAD_REQUEST, "invalid_limit");
    h.get("/v1/invoices?limit=1000", Some(&token))
        .await
        .assert_problem(StatusCode::BAD_REQUEST, "invalid_limit");
    h.finish().await;
}

/// The subscription id of the account's live subscription.
async fn subscription_of(h: &Harness, token: &str) -> String {
    let subs = h.get("/v1/subscriptions", Some(token)).await;
    subs.str("/data/0/id")
}

#[tokio::test]
async fn an_upgrade_mid_period_is_prorated_to_the_minor_unit_and_paid_at_once() {
    let h = Harness::new().await;
    let (account, token) = subscribe(&h, "up@example.com", "pro").await;
    h.settle().await;
    let sub = subscription_of(&h, &token).await;
    // Period 15 Jan 12:00 – 15 Feb 12:00 (31 days); the change comes 16 days before its end.
    h.advance_to(t(2026, 1, 30, 12, 0)).await;
    // By hand: unused pro 2900 × 16/31 = 1496.77 → 1497; enterprise 19900 × 16/31 =
    // 10270.97 → 10271; total 10271 − 1497 = 8774.
    let body = r#"{"plan":"enterprise"}"#;
    let preview = h
        .post(
            &format!("/v1/subscriptions/{sub}/preview-change"),
            Some(&token),
            None,
            body,
        )
        .await;
    assert_eq!(preview.status, StatusCode::OK, "{:?}", preview.json);
    assert_eq!(preview.json["direction"], "upgrade");
    assert_eq!(preview.json["when"], "now");
    let amounts: Vec<i64> = preview.json["lines"]
        .as_array()
        .expect("lines")
        .iter()
        .map(|l| l["amount_minor"].as_i64().expect("amount"))
        .collect();
    assert_eq!(amounts, [-1497, 10_271]);
    assert_eq!(preview.json["total_minor"], 8774);
    assert_eq!(preview.json["amount_due_minor"], 8774);
    // A preview writes nothing.
    assert_eq!(invoices(&h, &token).await.len(), 1);
    assert_eq!(
        h.get("/v1/subscriptions", Some(&token)).await.json["data"][0]["plan"],
        "pro"
    );

    let r = h
        .post(
            &format!("/v1/subscriptions/{sub}/change"),
            Some(&token),
            Some("up-1"),
            body,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json);
    assert_eq!(r.json["subscription"]["plan"], "enterprise");
    assert_eq!(r.json["payment"]["status"], "paid");
    assert_eq!(r.json["invoice"]["status"], "paid");
    assert_eq!(r.json["invoice"]["total_minor"], 8774);
    let again = h
        .post(
            &format!("/v1/subscriptions/{sub}/change"),
            Some(&token),
            Some("up-1"),
            body,
        )
        .await;
    assert!(again.replayed);
    assert_eq!(again.json["invoice"]["id"], r.json["invoice"]["id"]);
    h.settle().await;
    // One change invoice, charged once; the same plan again is refused.
    assert_eq!(invoices(&h, &token).await.len(), 2);
    h.post(
        &format!("/v1/subscriptions/{sub}/change"),
        Some(&token),
        Some("up-2"),
        body,
    )
    .await
    .assert_problem(StatusCode::CONFLICT, "same_plan");
    let cash = LedgerAccount::cash("simulated").expect("cash");
    assert_eq!(balance(&h, account, cash).await, 2900 + 8774);
    assert_eq!(balance(&h, account, LedgerAccount::Receivable).await, 0);
    // The renewal bills the new plan for the next period.
    h.advance_to(t(2026, 2, 15, 13, 5)).await;
    let list = invoices(&h, &token).await;
    let subs = h.get("/v1/subscriptions", Some(&token)).await;
    assert_eq!(list.len(), 3, "{list:#?} {:#?}", subs.json);
    assert_eq!(summary(&list[2]).0, 19_900);
    assert_eq!(summary(&list[2]).2, "paid");
    h.finish().await;
}

#[tokio::test]
async fn downgrades_wait_for_the_period_end_or_become_credit_now() {
    let h = Harness::new().await;
    let (later, later_token) = subscribe(&h, "later@example.com", "enterprise").await;
    let (now_acct, now_token) = subscribe(&h, "now@example.com", "enterprise").await;
    h.settle().await;
    h.advance_to(t(2026, 1, 30, 12, 0)).await;

    // At period end (the default): nothing now, the renewal starts on pro.
    let sub = subscription_of(&h, &later_token).await;
    let r = h
        .post(
            &format!("/v1/subscriptions/{sub}/change"),
            Some(&later_token),
            Some("down"),
            r#"{"plan":"pro"}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json);
    assert_eq!(r.json["subscription"]["plan"], "enterprise");
    assert_eq!(r.json["subscription"]["pending_change"]["plan"], "pro");
    assert_eq!(
        r.json["subscription"]["pending_change"]["effective_at"],
        "2026-02-15T12:00:00Z"
    );
    assert_eq!(r.json["payment"]["status"], "none");

    // Now: enterprise's unused 10271 back, pro's 1497 charged: 8774 of credit.
    let sub_now = subscription_of(&h, &now_token).await;
    let r = h
        .post(
            &format!("/v1/subscriptions/{sub_now}/change"),
            Some(&now_token),
            Some("down-now"),
            r#"{"plan":"pro","when":"now"}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json);
    assert_eq!(r.json["invoice"]["total_minor"], -8774);
    assert_eq!(r.json["invoice"]["amount_due_minor"], 0);
    assert_eq!(r.json["payment"]["status"], "none");
    h.settle().await;
    let acct = h.get("/v1/account", Some(&now_token)).await;
    assert_eq!(acct.json["balance_minor"], -8774, "{:?}", acct.json);

    h.advance_to(t(2026, 2, 15, 13, 5)).await;
    let renewal = summary(&invoices(&h, &later_token).await[1]);
    assert_eq!((renewal.0, renewal.2.as_str()), (2900, "paid"));
    let subs = h.get("/v1/subscriptions", Some(&later_token)).await;
    assert_eq!(subs.json["data"][0]["plan"], "pro");
    assert!(subs.json["data"][0]["pending_change"].is_null());
    // The credit pays the renewal: 2900 applied, nothing charged, 5874 left.
    let list = invoices(&h, &now_token).await;
    let renewal = &list[2];
    assert_eq!(renewal["credit_applied_minor"], 2900);
    assert_eq!(renewal["amount_due_minor"], 0);
    assert_eq!(renewal["status"], "paid");
    let acct = h.get("/v1/account", Some(&now_token)).await;
    assert_eq!(acct.json["balance_minor"], -5874);
    {
        let mut conn = h.state.billing.acquire().await.expect("conn");
        assert_eq!(
            ledger::credit_held(&mut conn, now_acct, Currency::USD)
                .await
                .expect("credit"),
            5874
        );
    }
    let cash = LedgerAccount::cash("simulated").expect("cash");
    assert_eq!(balance(&h, now_acct, cash.clone()).await, 19_900);
    assert_eq!(balance(&h, later, cash).await, 19_900 + 2900);
    h.finish().await;
}

#[tokio::test]
async fn resume_undoes_a_pending_cancel_and_nothing_else() {
    let h = Harness::new().await;
    let (_, token) = subscribe(&h, "resume@example.com", "pro").await;
    let sub = subscription_of(&h, &token).await;
    let path = format!("/v1/subscriptions/{sub}/resume");
    // A refused request leaves no lock behind: the renewal worker (SKIP LOCKED) and other
    // writers see the row at once, not when the pooled connection happens to be reused.
    let unlocked = || async {
        let options = (*h.state.cf.connect_options()).clone();
        let mut other = <sqlx::PgConnection as sqlx::Connection>::connect_with(&options)
            .await
            .expect("connect");
        let id: uuid::Uuid = sub.parse().expect("uuid");
        let mut tx = sqlx::Connection::begin(&mut other).await.expect("begin");
        sqlx::query("SELECT id FROM subscriptions WHERE id = $1 FOR UPDATE NOWAIT")
            .bind(id)
            .fetch_one(&mut *tx)
            .await
            .is_ok()
    };
    h.post(&path, Some(&token), None, "")
        .await
        .assert_problem(StatusCode::CONFLICT, "not_canceling");
    assert!(unlocked().await, "a refused resume keeps no lock");
    h.post(
        &format!("/v1/subscriptions/{sub}/change"),
        Some(&token),
        Some("same"),
        r#"{"plan":"pro"}"#,
    )
    .await
    .assert_problem(StatusCode::CONFLICT, "same_plan");
    assert!(unlocked().await, "a refused change keeps no lock");
    let r = h
        .post(
            &format!("/v1/subscriptions/{sub}/cancel"),
            Some(&token),
            None,
            r#"{"at_period_end":true}"#,
        )
        .await;
    assert_eq!(r.json["cancel_at_period_end"], true);
    let r = h.post(&path, Some(&token), None, "").await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json);
    assert_eq!(r.json["cancel_at_period_end"], false);
    h.settle().await;
    // It renews instead of ending.
    h.advance_to(t(2026, 2, 15, 13, 5)).await;
    let subs = h.get("/v1/subscriptions", Some(&token)).await;
    assert_eq!(subs.json["data"][0]["status"], "active");
    assert_eq!(invoices(&h, &token).await.len(), 2);
    let (_, other) = h.sign_up("other@example.com").await;
    h.post(&path, Some(&other), None, "")
        .await
        .assert_problem(StatusCode::NOT_FOUND, "not_found");
    h.finish().await;
}

#[tokio::test]
async fn an_invoice_downloads_as_a_pdf_with_its_lines_and_totals() {
    let h = Harness::new().await;
    let (ent, token) = subscribe(&h, "pdf@example.com", "enterprise").await;
    h.settle().await;
    h.clock.advance(TimeDelta::minutes(5));
    use_api(&h, ent, "pdf", 7_500_000).await;
    h.advance_to(t(2026, 2, 15, 13, 5)).await;
    let renewal = invoices(&h, &token).await[1].clone();
    let id = renewal["id"].as_str().expect("id");
    let number = renewal["number"].as_str().expect("number");
    let r = h.get(&format!("/v1/invoices/{id}/pdf"), Some(&token)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.content_type, "application/pdf");
    assert!(r.bytes.starts_with(b"%PDF-"), "a PDF");
    assert!(
        r.bytes.ends_with(b"%%EOF\n") || r.bytes.ends_with(b"%%EOF"),
        "a whole PDF"
    );
    if let Ok(dir) = std::env::var("TOLLGATE_PDF_OUT") {
        std::fs::write(format!("{dir}/{number}.pdf"), &r.bytes).expect("write pdf");
    }
    let text = String::from_utf8_lossy(&r.bytes);
    for expected in [
        format!("Invoice {number}"),
        "25199.00 USD".to_owned(),
        "7500000".to_owned(),
        "units 5000001 and up at 0.01 USD each".to_owned(),
        "pdf@example.com".to_owned(),
    ] {
        assert!(text.contains(&expected), "the PDF shows {expected}");
    }
    let (_, other) = h.sign_up("nosy@example.com").await;
    h.get(&format!("/v1/invoices/{id}/pdf"), Some(&other))
        .await
        .assert_problem(StatusCode::NOT_FOUND, "not_found");
    h.finish().await;
}

#[tokio::test]
async fn a_billing_pass_previews_what_is_due_then_bills_it_all() {
    use tollgate_control_plane::billing::pass;
    let h = Harness::new().await;
    for i in 0..5 {
        subscribe(&h, &format!("pass{i}@example.com"), "pro").await;
    }
    h.settle().await;
    let as_of = t(2026, 2, 15, 13, 5);
    h.clock.advance(as_of - h.clock.now());
    let due = pass::preview(&h.state, as_of).await.expect("preview");
    assert_eq!((due.renewals, due.drafts, due.charges), (5, 0, 0));
    let before: i64 = sqlx::query_scalar("SELECT count(*) FROM invoices")
        .fetch_one(&h.state.billing)
        .await
        .expect("count");
    assert_eq!(before, 5, "a preview writes nothing");
    let mut rounds = 0;
    let s = pass::run(&h.state, |_| rounds += 1).await.expect("pass");
    assert_eq!(
        (s.renewed, s.finalized, s.charged, s.declined, s.failed),
        (5, 5, 5, 0, 0)
    );
    assert_eq!(s.invoiced.get(&Currency::USD), Some(&(5 * 2900)));
    assert_eq!(s.charged_amounts.get(&Currency::USD), Some(&(5 * 2900)));
    assert!(rounds >= 2);
    let again = pass::run(&h.state, |_| {}).await.expect("pass");
    assert_eq!(again.items(), 0, "a second pass finds nothing");
    let line = tollgate_control_plane::cli::describe_summary(&s);
    assert!(line.contains("charged 5 (145.00 USD)"), "{line}");
    h.finish().await;
}

#[tokio::test]
async fn a_renewal_is_charged_off_session_through_stripe_against_localstripe() {
    let base = std::env::var("TOLLGATE_TEST_STRIPE_API_BASE").expect(
        "TOLLGATE_TEST_STRIPE_API_BASE must point at localstripe: run the suite with scripts/test",
    );
    let h = Harness::with_config(&[
        ("stripe_secret_key", "sk_test_tollgate_billing"),
        ("stripe_api_base", base.as_str()),
    ])
    .await;
    assert_eq!(h.state.gateway.name(), "stripe");
    let run = uuid::Uuid::new_v4().simple().to_string();
    let (account, token) = subscribe(&h, &format!("stripe-{run}@example.com"), "pro").await;
    h.settle().await;
    h.advance_to(t(2026, 2, 15, 13, 5)).await;
    let list = invoices(&h, &token).await;
    assert_eq!(list.len(), 2);
    assert_eq!(list[1]["status"], "paid", "{:?}", list[1]);
    let id: tollgate_control_plane::ids::InvoiceId =
        list[1]["id"].as_str().expect("id").parse().expect("id");
    let attempts = charges::attempts_of(&h.state, id).await.expect("attempts");
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].processor, "stripe");
    assert!(
        attempts[0]
            .provider_payment_id
            .as_deref()
            .is_some_and(|p| p.starts_with("pi_")),
        "{attempts:?}"
    );
    let cash = LedgerAccount::cash("stripe").expect("cash");
    assert_eq!(balance(&h, account, cash).await, 2 * 2900);
    h.finish().await;
}

#[tokio::test]
async fn a_trial_charges_nothing_until_it_ends_then_bills_from_its_end() {
    let h = Harness::new().await;
    let (id, token) = h.sign_up("trial@example.com").await;
    let account: AccountId = id.parse().expect("id");
    h.add_card(&token, "pm_card_visa").await;
    h.post(
        "/v1/checkout",
        Some(&token),
        Some("t0"),
        r#"{"plan":"enterprise","trial":true}"#,
    )
    .await
    .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "no_trial");
    let r = h
        .post(
            "/v1/checkout",
            Some(&token),
            Some("t1"),
            r#"{"plan":"pro","trial":true}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json);
    assert_eq!(r.json["subscription"]["status"], "trialing");
    // The demo's pro plan has 14 days of trial; paid periods are anchored on its end.
    assert_eq!(
        r.json["subscription"]["current_period_end"],
        "2026-01-29T12:00:00Z"
    );
    h.settle().await;
    let first = summary(&invoices(&h, &token).await[0]);
    assert_eq!(first, (0, 0, "paid".to_owned(), vec![plan(0)]));
    // Switching plans during the trial prorates nothing: no credit for unpaid trial time.
    let sub = subscription_of(&h, &token).await;
    let body = r#"{"plan":"enterprise"}"#;
    let p = h
        .post(
            &format!("/v1/subscriptions/{sub}/preview-change"),
            Some(&token),
            None,
            body,
        )
        .await;
    let subs = h.get("/v1/subscriptions", Some(&token)).await;
    assert_eq!(
        (p.json["when"].clone(), p.json["total_minor"].clone()),
        (serde_json::json!("now"), serde_json::json!(0)),
        "{:?} {:?}",
        p.json,
        subs.json
    );
    let up = h
        .post(
            &format!("/v1/subscriptions/{sub}/change"),
            Some(&token),
            Some("trial-up"),
            body,
        )
        .await;
    assert_eq!(up.status, StatusCode::OK, "{:?}", up.json);
    assert!(up.json["invoice"].is_null());
    let down = h
        .post(
            &format!("/v1/subscriptions/{sub}/change"),
            Some(&token),
            Some("trial-down"),
            r#"{"plan":"pro"}"#,
        )
        .await;
    assert_eq!(down.json["subscription"]["plan"], "pro", "{:?}", down.json);
    assert_eq!(down.json["subscription"]["status"], "trialing");
    h.settle().await;
    assert_eq!(
        invoices(&h, &token).await.len(),
        1,
        "no proration invoice in a trial"
    );
    {
        let mut conn = h.state.billing.acquire().await.expect("conn");
        assert_eq!(
            ledger::credit_held(&mut conn, account, Currency::USD)
                .await
                .expect("credit"),
            0
        );
    }
    // Usage during the trial is free.
    h.clock.advance(TimeDelta::minutes(5));
    use_api(&h, account, "trial", 200_000).await;
    h.advance_to(t(2026, 1, 29, 14, 0)).await;
    let subs = h.get("/v1/subscriptions", Some(&token)).await;
    assert_eq!(subs.json["data"][0]["status"], "active");
    assert_eq!(
        subs.json["data"][0]["current_period_end"],
        "2026-02-28T12:00:00Z"
    );
    let list = invoices(&h, &token).await;
    assert_eq!(
        summary(&list[1]),
        (2900, 2900, "paid".to_owned(), vec![plan(2900)])
    );
    // The first paid period's usage is billed at its end, as usual.
    use_api(&h, account, "paid", 100_250).await;
    h.advance_to(t(2026, 2, 28, 14, 0)).await;
    let list = invoices(&h, &token).await;
    assert_eq!(
        summary(&list[2]),
        (
            3400,
            3400,
            "paid".to_owned(),
            vec![plan(2900), metered(100_250, 500)]
        )
    );
    let cash = LedgerAccount::cash("simulated").expect("cash");
    assert_eq!(balance(&h, account, cash).await, 2900 + 3400);
    // One trial per account.
    let sub = subscription_of(&h, &token).await;
    h.post(
        &format!("/v1/subscriptions/{sub}/cancel"),
        Some(&token),
        None,
        r#"{"at_period_end":false}"#,
    )
    .await;
    h.post(
        "/v1/checkout",
        Some(&token),
        Some("t2"),
        r#"{"plan":"pro","trial":true}"#,
    )
    .await
    .assert_problem(StatusCode::CONFLICT, "trial_used");
    h.finish().await;
}

/// The seats limit the stable rules give the account's stored facts (what its edges serve).
async fn seats_limit(h: &Harness, account: AccountId) -> (serde_json::Value, Option<i64>) {
    let facts = tollgate_control_plane::entitlements::facts_of(&h.state, account)
        .await
        .expect("facts");
    let program = tollgate_rules::demo_program();
    let v = tollgate_rules::facts::fact_vector(&program, &facts, h.clock.now().timestamp_millis());
    let seats = program
        .features
        .iter()
        .position(|f| f.key == "seats")
        .expect("seats");
    let d = tollgate_rules::facts::decision(tollgate_rules::interp::evaluate(&program, &v)[seats]);
    (serde_json::to_value(&facts.addons).expect("json"), d.limit)
}

#[tokio::test]
async fn add_ons_are_sold_billed_each_period_prorated_when_changed_and_reach_the_facts() {
    let h = Harness::new().await;
    let plans = h.get("/v1/plans", None).await;
    assert_eq!(plans.json["addons"][0]["key"], "extra_seats");
    assert_eq!(plans.json["addons"][0]["price_minor"], 500);
    let (id, token) = h.sign_up("seats@example.com").await;
    let account: AccountId = id.parse().expect("id");

    // Bad add-on requests are refused before anything is written or charged.
    for (body, status, code) in [
        (
            r#"{"plan":"pro","addons":{"extra_seats":-1}}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_addon_quantity",
        ),
        (
            r#"{"plan":"pro","addons":{"extra_seats":10001}}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_addon_quantity",
        ),
        (
            r#"{"plan":"pro","addons":{"nope":1}}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_addon",
        ),
        // The free plan with a paid add-on needs a card like any paid purchase.
        (
            r#"{"plan":"free","addons":{"extra_seats":1}}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "payment_method_required",
        ),
    ] {
        h.post(
            "/v1/checkout",
            Some(&token),
            Some(&format!("bad-{body}").replace(['"', '{', '}', ':', ','], "")),
            body,
        )
        .await
        .assert_problem(status, code);
    }
    assert_eq!(h.count("SELECT count(*) FROM checkouts").await, 0);

    // Pro with two packs of extra seats: 2900 + 2 × 500, one on-session charge.
    h.add_card(&token, "pm_card_visa").await;
    let r = h
        .post(
            "/v1/checkout",
            Some(&token),
            Some("buy-seats"),
            r#"{"plan":"pro","addons":{"extra_seats":2}}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json);
    assert_eq!(r.json["checkout"]["amount_minor"], 3900);
    assert_eq!(r.json["subscription"]["amount_minor"], 2900);
    assert_eq!(r.json["subscription"]["addons"][0]["quantity"], 2);
    assert_eq!(r.json["subscription"]["addons"][0]["amount_minor"], 1000);
    h.settle().await;
    let first = summary(&invoices(&h, &token).await[0]);
    assert_eq!(
        first,
        (
            3900,
            3900,
            "paid".into(),
            vec![plan(2900), ("addon".into(), 2, 1000)]
        )
    );
    assert_eq!(
        seats_limit(&h, account).await,
        (serde_json::json!({"extra_seats": 2}), Some(10 + 2 * 5))
    );
    let sub = subscription_of(&h, &token).await;

    // 16 of 31 days left: more seats apply now, prorated: 2 × 500 × 16/31 = 516.13 → 516
    // back, 5 × 500 × 16/31 = 1290.32 → 1290 charged, 774 due at once.
    h.advance_to(t(2026, 1, 30, 12, 0)).await;
    let more = r#"{"addons":{"extra_seats":5}}"#;
    let preview = h
        .post(
            &format!("/v1/subscriptions/{sub}/preview-change"),
            Some(&token),
            None,
            more,
        )
        .await;
    assert_eq!(preview.status, StatusCode::OK, "{:?}", preview.json);
    assert_eq!(preview.json["direction"], "upgrade");
    let lines: Vec<(String, i64, i64)> = preview.json["lines"]
        .as_array()
        .expect("lines")
        .iter()
        .map(|l| {
            (
                l["kind"].as_str().expect("kind").to_owned(),
                l["quantity"].as_i64().expect("quantity"),
                l["amount_minor"].as_i64().expect("amount"),
            )
        })
        .collect();
    assert_eq!(
        lines,
        [
            ("addon_proration".to_owned(), 2, -516),
            ("addon_proration".to_owned(), 5, 1290)
        ]
    );
    assert_eq!(preview.json["total_minor"], 774);
    let r = h
        .post(
            &format!("/v1/subscriptions/{sub}/change"),
            Some(&token),
            Some("more-seats"),
            more,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json);
    assert_eq!(r.json["payment"]["status"], "paid");
    assert_eq!(r.json["invoice"]["total_minor"], 774);
    assert_eq!(r.json["subscription"]["plan"], "pro");
    assert_eq!(r.json["subscription"]["addons"][0]["quantity"], 5);
    h.settle().await;
    assert_eq!(seats_limit(&h, account).await.1, Some(10 + 5 * 5));
    // Asking for what it holds changes nothing; an empty change is refused.
    h.post(
        &format!("/v1/subscriptions/{sub}/change"),
        Some(&token),
        Some("same-seats"),
        more,
    )
    .await
    .assert_problem(StatusCode::CONFLICT, "no_change");
    h.post(
        &format!("/v1/subscriptions/{sub}/change"),
        Some(&token),
        Some("empty"),
        "{}",
    )
    .await
    .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "nothing_to_change");

    // Fewer seats wait for the period end (the customer paid for this period's five).
    let r = h
        .post(
            &format!("/v1/subscriptions/{sub}/change"),
            Some(&token),
            Some("fewer-seats"),
            r#"{"addons":{"extra_seats":1}}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json);
    assert_eq!(r.json["payment"]["status"], "none");
    assert_eq!(r.json["subscription"]["addons"][0]["quantity"], 5);
    assert_eq!(
        r.json["subscription"]["pending_change"]["addons"][0]["quantity"],
        1
    );
    h.settle().await;
    assert_eq!(seats_limit(&h, account).await.1, Some(35));

    // The renewal bills the plan and one pack for the next period, in advance.
    h.advance_to(t(2026, 2, 15, 13, 5)).await;
    let list = invoices(&h, &token).await;
    assert_eq!(list.len(), 3, "{list:#?}");
    assert_eq!(
        summary(&list[2]),
        (
            3400,
            3400,
            "paid".into(),
            vec![plan(2900), ("addon".into(), 1, 500)]
        )
    );
    assert_eq!(seats_limit(&h, account).await.1, Some(15));
    let cash = LedgerAccount::cash("simulated").expect("cash");
    assert_eq!(balance(&h, account, cash).await, 3900 + 774 + 3400);
    let addon_rev = LedgerAccount::revenue(Revenue::Addon("extra_seats".into())).expect("acct");
    assert_eq!(
        balance(&h, account, addon_rev).await,
        -(1000 - 516 + 1290 + 500)
    );
    assert_eq!(balance(&h, account, LedgerAccount::Receivable).await, 0);

    // Canceling ends the add-ons with the plan.
    let r = h
        .post(
            &format!("/v1/subscriptions/{sub}/cancel"),
            Some(&token),
            None,
            r#"{"at_period_end":false}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json);
    h.settle().await;
    assert_eq!(seats_limit(&h, account).await.0, serde_json::json!({}));
    h.finish().await;
}

/// `POST /admin/v1/invoices/{id}/credit-notes` as a platform engineer with `key`.
async fn credit_note(h: &Harness, invoice: &str, key: &str, body: &str) -> common::Resp {
    let req = axum::http::Request::builder()
        .method(axum::http::Method::POST)
        .uri(format!("/admin/v1/invoices/{invoice}/credit-notes"))
        .header("authorization", "Bearer test-admin-token")
        .header("tollgate-actor", "support-lead")
        .header("idempotency-key", key)
        .header("content-type", "application/json")
        .body(axum::body::Body::from(body.to_owned()))
        .expect("request");
    h.send(req).await
}

#[tokio::test]
async fn credit_notes_correct_finalised_invoices_without_editing_them() {
    let h = Harness::new().await;
    // Attaches fine, declines every charge: the checkout itself is paid with a good card.
    let (account, token) = h.failing_renewal_customer("corrected@example.com").await;
    let first = invoices(&h, &token).await[0].clone();
    let first_id = first["id"].as_str().expect("id").to_owned();

    // A paid invoice: the note becomes credit for the next invoices.
    let body =
        r#"{"amount_minor":1000,"reason":"service_issue","memo":"API outage on 20 January"}"#;
    let r = credit_note(&h, &first_id, "cn-1", body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json);
    assert_eq!(r.json["number"], "CN-2026-000001");
    assert_eq!(
        (
            r.json["reduced_due_minor"].as_i64(),
            r.json["credited_minor"].as_i64()
        ),
        (Some(0), Some(1000))
    );
    let again = credit_note(&h, &first_id, "cn-1", body).await;
    assert_eq!(
        again.status,
        StatusCode::OK,
        "the same request again is the same note"
    );
    assert_eq!(again.json["id"], r.json["id"]);
    let acct = h.get("/v1/account", Some(&token)).await;
    assert_eq!(acct.json["balance_minor"], -1000);

    // Refused, and nothing written: the key reused, more than is left, nonsense.
    for (key, body, status, code) in [
        (
            "cn-1",
            r#"{"amount_minor":999,"reason":"service_issue","memo":"API outage on 20 January"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
        ),
        (
            "cn-2",
            r#"{"amount_minor":1901,"reason":"duplicate","memo":"twice"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "credit_note_too_large",
        ),
        (
            "cn-3",
            r#"{"amount_minor":0,"reason":"duplicate","memo":"zero"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_amount",
        ),
        (
            "cn-4",
            r#"{"amount_minor":-5,"reason":"duplicate","memo":"negative"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_amount",
        ),
        (
            "cn-5",
            r#"{"amount_minor":9223372036854775807,"reason":"duplicate","memo":"max"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "credit_note_too_large",
        ),
        (
            "cn-6",
            r#"{"amount_minor":1,"reason":"duplicate","memo":"   "}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_memo",
        ),
        (
            "cn-7",
            r#"{"amount_minor":1,"reason":"because","memo":"x"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
    ] {
        credit_note(&h, &first_id, key, body)
            .await
            .assert_problem(status, code);
    }
    let too_large = credit_note(
        &h,
        &first_id,
        "cn-2",
        r#"{"amount_minor":1901,"reason":"duplicate","memo":"twice"}"#,
    )
    .await;
    assert_eq!(too_large.json["creditable_minor"], 1900);
    credit_note(&h, &uuid::Uuid::now_v7().to_string(), "cn-8", body)
        .await
        .assert_problem(StatusCode::NOT_FOUND, "not_found");
    let notes: i64 = sqlx::query_scalar("SELECT count(*) FROM credit_notes")
        .fetch_one(&h.state.billing)
        .await
        .expect("count");
    assert_eq!(notes, 1);

    // The renewal is drafted at the period end; a draft takes no note (it is not final).
    h.advance_to(t(2026, 2, 15, 12, 30)).await;
    let draft = invoices(&h, &token).await[1].clone();
    assert_eq!(draft["status"], "draft");
    let draft_id = draft["id"].as_str().expect("id").to_owned();
    credit_note(&h, &draft_id, "cn-9", body)
        .await
        .assert_problem(StatusCode::CONFLICT, "invoice_draft");

    // Finalised with the 1000 of credit applied, declined: 1900 open, past due.
    h.advance_to(t(2026, 2, 15, 13, 5)).await;
    let open = invoices(&h, &token).await[1].clone();
    assert_eq!(
        (open["status"].as_str(), open["amount_due_minor"].as_i64()),
        (Some("open"), Some(1900))
    );
    let subs = h.get("/v1/subscriptions", Some(&token)).await;
    assert_eq!(subs.json["data"][0]["status"], "past_due");

    // A note of 2500 on it: 1900 settles what it asks for, 600 becomes credit; the invoice is
    // paid and the subscription active again. Its lines and amounts are as they were.
    let r = credit_note(
        &h,
        &draft_id,
        "cn-10",
        r#"{"amount_minor":2500,"reason":"order_change","memo":"Goodwill after the outage"}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json);
    assert_eq!(r.json["number"], "CN-2026-000002", "gapless");
    assert_eq!(
        (
            r.json["reduced_due_minor"].as_i64(),
            r.json["credited_minor"].as_i64()
        ),
        (Some(1900), Some(600))
    );
    h.settle().await;
    let settled = h
        .get(&format!("/v1/invoices/{draft_id}"), Some(&token))
        .await;
    assert_eq!(settled.json["status"], "paid", "{:?}", settled.json);
    assert_eq!(settled.json["total_minor"], open["total_minor"]);
    assert_eq!(settled.json["amount_due_minor"], 1900);
    assert_eq!(settled.json["lines"], open["lines"]);
    assert_eq!(settled.json["amount_paid_minor"], 0);
    assert_eq!(settled.json["amount_credited_minor"], 1900);
    assert_eq!(settled.json["credit_noted_minor"], 2500);
    assert_eq!(settled.json["amount_remaining_minor"], 0);
    let subs = h.get("/v1/subscriptions", Some(&token)).await;
    assert_eq!(subs.json["data"][0]["status"], "active");
    let listed = h
        .get(
            &format!("/v1/invoices/{draft_id}/credit-notes"),
            Some(&token),
        )
        .await;
    assert_eq!(listed.json["data"][0]["memo"], "Goodwill after the outage");
    // Another account sees none of it.
    let (_, other) = h.sign_up("other@example.com").await;
    h.get(
        &format!("/v1/invoices/{draft_id}/credit-notes"),
        Some(&other),
    )
    .await
    .assert_problem(StatusCode::NOT_FOUND, "not_found");
    // Nothing left to credit on it beyond its total of 2900.
    credit_note(
        &h,
        &draft_id,
        "cn-11",
        r#"{"amount_minor":401,"reason":"duplicate","memo":"more"}"#,
    )
    .await
    .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "credit_note_too_large");

    // The books: 3500 of revenue given back, nothing receivable, 600 of credit held, the one
    // payment in cash; the database refuses to edit a note.
    assert_eq!(balance(&h, account, LedgerAccount::Refunds).await, 3500);
    assert_eq!(balance(&h, account, LedgerAccount::Receivable).await, 0);
    let acct = h.get("/v1/account", Some(&token)).await;
    assert_eq!(acct.json["balance_minor"], -600);
    let cash = LedgerAccount::cash("simulated").expect("cash");
    assert_eq!(balance(&h, account, cash).await, 2900);
    for sql in [
        "UPDATE credit_notes SET amount_minor = 1",
        "DELETE FROM credit_notes",
    ] {
        let err = sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&h.state.billing)
            .await
            .expect_err("append-only");
        assert!(err.to_string().contains("never edited"), "{err}");
    }

    // At once: two notes that do not both fit (1900 left on the first invoice) — one is
    // issued; the same request twice at once — one note.
    let a = r#"{"amount_minor":1000,"reason":"duplicate","memo":"race a"}"#;
    let b = r#"{"amount_minor":1000,"reason":"duplicate","memo":"race b"}"#;
    let (ra, rb) = tokio::join!(
        credit_note(&h, &first_id, "race-a", a),
        credit_note(&h, &first_id, "race-b", b)
    );
    let mut statuses = [ra.status, rb.status];
    statuses.sort();
    assert_eq!(
        statuses,
        [StatusCode::CREATED, StatusCode::UNPROCESSABLE_ENTITY]
    );
    let c = r#"{"amount_minor":500,"reason":"duplicate","memo":"race c"}"#;
    let (rc1, rc2) = tokio::join!(
        credit_note(&h, &first_id, "race-c", c),
        credit_note(&h, &first_id, "race-c", c)
    );
    let mut statuses = [rc1.status, rc2.status];
    statuses.sort();
    assert_eq!(statuses, [StatusCode::OK, StatusCode::CREATED]);
    assert_eq!(rc1.json["id"], rc2.json["id"]);
    let first_now = h
        .get(&format!("/v1/invoices/{first_id}"), Some(&token))
        .await;
    assert_eq!(first_now.json["credit_noted_minor"], 1000 + 1000 + 500);
    let acct = h.get("/v1/account", Some(&token)).await;
    assert_eq!(acct.json["balance_minor"], -(600 + 1000 + 500));
    h.finish().await;
}

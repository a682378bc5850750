//! Sign-up → 3-D Secure card → checkout `pro` → challenge → confirm → the edge allows `sso`;
//! cancel → the edge denies again. Real binaries, real PostgreSQL and Redis.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;
use tollgate_e2e::Stack;

async fn authenticate_simulated(stack: &Stack, intent: &str) -> anyhow::Result<()> {
    let (status, body) = stack
        .cp(
            Method::POST,
            &format!("/dev/v1/simulator/intents/{intent}/authenticate"),
            None,
            None,
            Some(json!({ "outcome": "succeed" })),
        )
        .await?;
    anyhow::ensure!(status == 200, "authenticate {intent}: {status} {body}");
    Ok(())
}

/// The intent id is the client secret's prefix, as with Stripe (`pi_…_secret_…`).
fn intent_of(client_secret: &str) -> &str {
    client_secret
        .split("_secret_")
        .next()
        .unwrap_or(client_secret)
}

#[tokio::test]
async fn three_d_secure_purchase_flips_the_edge_and_cancel_flips_it_back() -> anyhow::Result<()> {
    let stack = Stack::start(&[]).await?;
    let result = walk(&stack).await;
    if result.is_err() {
        eprintln!(
            "--- control plane ---\n{}\n--- edge ---\n{}",
            stack.cp.log_tail(),
            stack.edge.log_tail()
        );
    }
    stack.shutdown().await;
    result
}

async fn walk(stack: &Stack) -> anyhow::Result<()> {
    let (status, signup) = stack
        .cp(
            Method::POST,
            "/v1/accounts",
            None,
            Some("e2e-signup"),
            Some(json!({"email": "e2e@example.com", "name": "E2E"})),
        )
        .await?;
    assert_eq!(status, 201, "{signup}");
    let account = signup["account"]["id"].as_str().expect("id").to_owned();
    let token = signup["api_token"].as_str().expect("token").to_owned();

    // Unknown to the edge until sign-up propagates; then known but without a plan.
    stack.await_check(&account, "sso", false).await?;
    let v = stack.check(&account, "sso").await?;
    assert!(
        matches!(
            v["reason"].as_str(),
            Some("denied_no_subscription" | "unknown_account")
        ),
        "{v}"
    );
    let unknown = stack
        .check(&uuid::Uuid::now_v7().to_string(), "sso")
        .await?;
    assert_eq!(
        (unknown["allowed"].as_bool(), unknown["reason"].as_str()),
        (Some(false), Some("unknown_account"))
    );

    let (status, pm) = stack
        .cp(
            Method::POST,
            "/v1/payment-methods",
            Some(&token),
            Some("e2e-pm"),
            Some(json!({"payment_method": "pm_card_threeDSecure2Required"})),
        )
        .await?;
    assert_eq!(status, 202, "{pm}");
    authenticate_simulated(
        stack,
        intent_of(pm["client_secret"].as_str().expect("secret")),
    )
    .await?;
    let pm_id = pm["payment_method"]["id"].as_str().expect("pm id");
    let (status, body) = stack
        .cp(
            Method::POST,
            &format!("/v1/payment-methods/{pm_id}/confirm"),
            Some(&token),
            None,
            None,
        )
        .await?;
    assert_eq!(status, 200, "{body}");

    let (status, checkout) = stack
        .cp(
            Method::POST,
            "/v1/checkout",
            Some(&token),
            Some("e2e-checkout"),
            Some(json!({"plan": "pro"})),
        )
        .await?;
    assert_eq!(status, 202, "{checkout}");
    assert_eq!(checkout["status"], "requires_action");
    let checkout_id = checkout["checkout"]["id"].as_str().expect("checkout id");
    authenticate_simulated(
        stack,
        intent_of(checkout["client_secret"].as_str().expect("secret")),
    )
    .await?;
    let (status, confirmed) = stack
        .cp(
            Method::POST,
            &format!("/v1/checkout/{checkout_id}/confirm"),
            Some(&token),
            None,
            None,
        )
        .await?;
    assert_eq!(status, 200, "{confirmed}");
    let sub_id = confirmed["subscription"]["id"]
        .as_str()
        .expect("sub")
        .to_owned();

    let grant = stack.await_check(&account, "sso", true).await?;
    let v = stack.check(&account, "seats").await?;
    assert_eq!(
        (
            v["allowed"].as_bool(),
            v["limit"].as_i64(),
            v["reason"].as_str()
        ),
        (Some(true), Some(10), Some("granted_by_plan"))
    );
    assert_eq!(v["stale"], false);

    let started = Instant::now();
    let (status, body) = stack
        .cp(
            Method::POST,
            &format!("/v1/subscriptions/{sub_id}/cancel"),
            Some(&token),
            None,
            Some(json!({"at_period_end": false})),
        )
        .await?;
    assert_eq!(status, 200, "{body}");
    stack.await_check(&account, "sso", false).await?;
    let revoke = started.elapsed();
    let v = stack.check(&account, "sso").await?;
    assert_eq!(v["reason"], "denied_no_subscription");
    eprintln!("propagation: confirm→edge allow {grant:?}; cancel request→edge deny {revoke:?}");
    assert!(revoke < Duration::from_secs(10));
    Ok(())
}

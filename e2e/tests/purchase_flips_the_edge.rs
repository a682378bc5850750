//! Sign-up → 3-D Secure card → checkout `pro` → challenge → confirm → the edge allows `sso`;
//! cancel → the edge denies again. Real binaries, real PostgreSQL and Redis.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;
use tollgate_e2e::Stack;

/// Who completes the customer's 3-D Secure challenge.
enum Payments {
    /// The in-process simulator, through the control plane's dev route.
    Simulated,
    /// localstripe at this base URL, through its `_authenticate` endpoints.
    Localstripe(String),
}

impl Payments {
    async fn authenticate(&self, stack: &Stack, client_secret: &str) -> anyhow::Result<()> {
        let intent = intent_of(client_secret);
        match self {
            Payments::Simulated => {
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
            }
            Payments::Localstripe(base) => {
                let kind = if intent.starts_with("seti_") {
                    "setup_intents"
                } else {
                    "payment_intents"
                };
                let resp = stack
                    .http
                    .post(format!(
                        "{base}/v1/{kind}/{intent}/_authenticate?success=true"
                    ))
                    .bearer_auth(LOCALSTRIPE_KEY)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(format!("client_secret={client_secret}"))
                    .send()
                    .await?;
                anyhow::ensure!(
                    resp.status().is_success(),
                    "localstripe authenticate {intent}: {}",
                    resp.status()
                );
            }
        }
        Ok(())
    }
}

const LOCALSTRIPE_KEY: &str = "sk_test_tollgate_e2e";

/// The intent id is the client secret's prefix, as with Stripe (`pi_…_secret_…`).
fn intent_of(client_secret: &str) -> &str {
    client_secret
        .split("_secret_")
        .next()
        .unwrap_or(client_secret)
}

#[tokio::test]
async fn three_d_secure_purchase_flips_the_edge_and_cancel_flips_it_back() -> anyhow::Result<()> {
    run(&[], Payments::Simulated).await
}

#[tokio::test]
async fn the_same_purchase_through_the_stripe_adapter_against_localstripe() -> anyhow::Result<()> {
    let base = std::env::var("TOLLGATE_TEST_STRIPE_API_BASE").map_err(|_| {
        anyhow::anyhow!("TOLLGATE_TEST_STRIPE_API_BASE must point at localstripe: run scripts/test")
    })?;
    let env = [
        ("TOLLGATE_STRIPE_SECRET_KEY", LOCALSTRIPE_KEY.to_owned()),
        ("TOLLGATE_STRIPE_API_BASE", base.clone()),
    ];
    run(&env, Payments::Localstripe(base)).await
}

async fn run(cp_env: &[(&'static str, String)], payments: Payments) -> anyhow::Result<()> {
    let stack = Stack::start(cp_env, &["e2e-edge"]).await?;
    let result = walk(&stack, &payments).await;
    stack.finish(result).await
}

async fn walk(stack: &Stack, payments: &Payments) -> anyhow::Result<()> {
    // localstripe keeps its state (and idempotency keys) across runs: keys are unique per run.
    let run = uuid::Uuid::new_v4().simple().to_string();
    let customer = stack.sign_up("e2e@example.com").await?;
    let (account, token) = (customer.account, customer.token);

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
            Some(&format!("e2e-pm-{run}")),
            Some(json!({"payment_method": "pm_card_threeDSecure2Required"})),
        )
        .await?;
    assert_eq!(status, 202, "{pm}");
    payments
        .authenticate(stack, pm["client_secret"].as_str().expect("secret"))
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
            Some(&format!("e2e-checkout-{run}")),
            Some(json!({"plan": "pro"})),
        )
        .await?;
    assert_eq!(status, 202, "{checkout}");
    assert_eq!(checkout["status"], "requires_action");
    let checkout_id = checkout["checkout"]["id"].as_str().expect("checkout id");
    payments
        .authenticate(stack, checkout["client_secret"].as_str().expect("secret"))
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

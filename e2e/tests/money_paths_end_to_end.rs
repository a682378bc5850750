//! The control plane's money paths with the real binaries: a customer who passed 3-D Secure
//! and closed the tab is subscribed once the checkout's expiry comes (not charged for
//! nothing), two promotions that drop a plan never put it back on sale, and a control plane
//! outside dev mode without a Stripe key refuses to start.

use std::time::Duration;

use serde_json::{Value, json};
use tollgate_e2e::Stack;

#[tokio::test]
async fn passed_3ds_never_confirmed_and_the_clock_past_23_hours_gives_the_subscription()
-> anyhow::Result<()> {
    let stack = Stack::start(&[], &["money-edge"]).await?;
    let result = async {
        let customer = stack.sign_up("closed-tab@example.com").await?;
        let token = Some(customer.token.as_str());
        let key = |k: &str| format!("{k}-{}", uuid::Uuid::new_v4().simple());
        // A card that asks for 3-D Secure, set up and confirmed.
        let (status, pm) = stack
            .cp(
                reqwest::Method::POST,
                "/v1/payment-methods",
                token,
                Some(&key("pm")),
                Some(json!({"payment_method": "pm_card_threeDSecure2Required"})),
            )
            .await?;
        anyhow::ensure!(status == 202, "{status} {pm}");
        authenticate(&stack, &pm).await?;
        let pm_id = pm["payment_method"]["id"].as_str().unwrap_or_default();
        let (status, body) = stack
            .cp(
                reqwest::Method::POST,
                &format!("/v1/payment-methods/{pm_id}/confirm"),
                token,
                None,
                None,
            )
            .await?;
        anyhow::ensure!(status == 200, "{status} {body}");
        // The purchase: challenged, passed, and then the tab is closed.
        let (status, co) = stack
            .cp(
                reqwest::Method::POST,
                "/v1/checkout",
                token,
                Some(&key("buy")),
                Some(json!({"plan": "pro"})),
            )
            .await?;
        anyhow::ensure!(status == 202, "{status} {co}");
        authenticate(&stack, &co).await?;
        let (status, body) = stack
            .cp(
                reqwest::Method::POST,
                "/dev/v1/clock/advance",
                None,
                None,
                Some(json!({"seconds": 23 * 3600 + 60})),
            )
            .await?;
        anyhow::ensure!(status == 200, "{status} {body}");
        let checkout = co["checkout"]["id"].as_str().unwrap_or_default();
        let (_, c) = stack
            .cp(
                reqwest::Method::GET,
                &format!("/v1/checkout/{checkout}"),
                token,
                None,
                None,
            )
            .await?;
        anyhow::ensure!(c["status"] == "succeeded", "{c}");
        // Paid, so subscribed — all the way to the edge.
        stack.await_check(&customer.account, "sso", true).await?;
        let (_, subs) = stack
            .cp(reqwest::Method::GET, "/v1/subscriptions", token, None, None)
            .await?;
        anyhow::ensure!(
            subs["data"][0]["plan"] == "pro" && subs["data"][0]["amount_minor"] == 2900,
            "{subs}"
        );
        Ok(())
    }
    .await;
    stack.finish(result).await
}

async fn authenticate(stack: &Stack, answer: &Value) -> anyhow::Result<()> {
    let secret = answer["client_secret"].as_str().unwrap_or_default();
    let intent = secret.split("_secret_").next().unwrap_or_default();
    let (status, body) = stack
        .cp(
            reqwest::Method::POST,
            &format!("/dev/v1/simulator/intents/{intent}/authenticate"),
            None,
            None,
            Some(json!({"outcome": "succeed"})),
        )
        .await?;
    anyhow::ensure!(status == 200, "{status} {body}");
    Ok(())
}

/// The demo rules without the enterprise plan (and the tests that name it).
fn without_enterprise() -> String {
    let src = tollgate_e2e::demo_source();
    let start = src.find("plan enterprise").unwrap_or(0);
    let end = start + src[start..].find("\n}\n").unwrap_or(0) + 3;
    let src = format!("{}{}", &src[..start], &src[end..]);
    let t = src.find("test \"enterprise\"").unwrap_or(0);
    let te = t + src[t..].find("\n}\n").unwrap_or(0) + 3;
    let src = format!("{}{}", &src[..t], &src[te..]);
    src.replacen(
        "given plan = enterprise, banned",
        "given plan = pro, banned",
        1,
    )
}

#[tokio::test]
async fn two_promotions_that_drop_a_plan_never_sell_it() -> anyhow::Result<()> {
    let stack = Stack::start(&[], &[]).await?;
    let result = async {
        for version in [2, 3] {
            let bytes = tollgate_e2e::signed_bundle(&without_enterprise(), version, &stack.key)?;
            let (status, body) = stack
                .admin(reqwest::Method::POST, "/admin/v1/bundles", Some(bytes))
                .await?;
            anyhow::ensure!(status == 201, "upload: {status} {body}");
            let (status, body) = stack
                .admin(
                    reqwest::Method::POST,
                    &format!("/admin/v1/bundles/{version}/promote"),
                    None,
                )
                .await?;
            anyhow::ensure!(status == 200, "promote: {status} {body}");
        }
        let (_, plans) = stack
            .cp(reqwest::Method::GET, "/v1/plans", None, None, None)
            .await?;
        let keys: Vec<&str> = plans["data"]
            .as_array()
            .map(|a| a.iter().filter_map(|p| p["key"].as_str()).collect())
            .unwrap_or_default();
        anyhow::ensure!(keys == ["free", "pro"], "on sale: {keys:?}");
        let customer = stack.sign_up("enterprise@example.com").await?;
        let (status, body) = stack
            .cp(
                reqwest::Method::POST,
                "/v1/checkout",
                Some(&customer.token),
                Some("e-1"),
                Some(json!({"plan": "enterprise"})),
            )
            .await?;
        anyhow::ensure!(
            status == 422 && body["code"] == "unknown_plan",
            "{status} {body}"
        );
        Ok(())
    }
    .await;
    stack.finish(result).await
}

#[tokio::test]
async fn outside_dev_mode_without_a_stripe_key_the_control_plane_refuses_to_start()
-> anyhow::Result<()> {
    let out = tokio::process::Command::new(tollgate_e2e::bin("tollgate-control-plane")?)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("TOLLGATE_EDGE_TOKEN", "an-edge-token-long-enough-x")
        .env("TOLLGATE_ADMIN_TOKEN", "an-admin-token-long-enough-x")
        .env(
            "TOLLGATE_TOKEN_SECRET",
            "a-token-secret-that-is-long-enough-x",
        )
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), out).await??;
    anyhow::ensure!(!out.status.success(), "it started");
    let stderr = String::from_utf8_lossy(&out.stderr);
    anyhow::ensure!(
        stderr.contains("TOLLGATE_STRIPE_SECRET_KEY is required outside dev mode"),
        "{stderr}"
    );
    Ok(())
}

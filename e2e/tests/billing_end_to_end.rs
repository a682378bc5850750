//! Billing end to end with the real binaries: usage posted to an edge, the development clock
//! advanced a month — the edge follows it into the next metering period — and the renewal
//! invoice shows a metered line for exactly that usage, paid off-session.

use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};
use tollgate_e2e::{Stack, poll};

async fn edge_usage(stack: &Stack, account: &str) -> Option<i64> {
    let url = format!(
        "{}/v1/check?account={account}&feature=api_calls&quantity=0",
        stack.edge_url()
    );
    let v: Value = stack.http.get(url).send().await.ok()?.json().await.ok()?;
    v["usage"].as_i64()
}

async fn run(stack: &Stack) -> anyhow::Result<()> {
    let customer = stack
        .customer_on("metered@example.com", "pro", "sso")
        .await?;
    let token = Some(customer.token.as_str());
    // 100,250 calls through the edge: 250 over pro's 100,000.
    let events: Vec<Value> = [100_000, 200, 50]
        .iter()
        .enumerate()
        .map(|(i, q)| json!({"id": format!("e{i}"), "account": customer.account, "meter": "api_calls", "quantity": q}))
        .collect();
    stack.post_usage(&json!(events)).await?;
    stack.await_usage(&customer, 100_250).await?;
    // The edge counts its unacknowledged events until the flush's ack arrives: wait for it.
    poll("edge usage", Duration::from_secs(30), || async {
        (edge_usage(stack, &customer.account).await == Some(100_250)).then_some(())
    })
    .await?;

    // A month and two hours later: renewed, the draft finalised after the grace window.
    let (status, body) = stack
        .cp(
            reqwest::Method::POST,
            "/dev/v1/clock/advance",
            None,
            None,
            Some(json!({ "seconds": 31 * 86_400 + 7_200 })),
        )
        .await?;
    anyhow::ensure!(status == 200, "advance: {status} {body}");
    // The edge follows the clock: its metering period is the new one, with nothing used yet.
    poll(
        "edge in the next period",
        Duration::from_secs(30),
        || async { (edge_usage(stack, &customer.account).await == Some(0)).then_some(()) },
    )
    .await?;
    let invoice = poll("renewal paid", Duration::from_secs(60), || async {
        let (_, list) = stack
            .cp(reqwest::Method::GET, "/v1/invoices", token, None, None)
            .await
            .ok()?;
        let data = list["data"].as_array()?;
        (data.len() == 2 && data[0]["status"] == "paid").then(|| data[0].clone())
    })
    .await?;
    let lines = invoice["lines"].as_array().context("lines")?;
    anyhow::ensure!(lines.len() == 2, "{invoice}");
    anyhow::ensure!(
        lines[0]["kind"] == "plan" && lines[0]["amount_minor"] == 2900,
        "{invoice}"
    );
    anyhow::ensure!(
        lines[1]["kind"] == "metered"
            && lines[1]["meter"] == "api_calls"
            && lines[1]["quantity"] == 100_250
            && lines[1]["amount_minor"] == 500,
        "{invoice}"
    );
    anyhow::ensure!(invoice["total_minor"] == 3400 && invoice["amount_paid_minor"] == 3400);
    // Usage from now on counts in the new period, on the edge and in the control plane.
    stack
        .post_usage(&json!([{"id": "next-1", "account": customer.account, "meter": "api_calls", "quantity": 7}]))
        .await?;
    poll("new period usage", Duration::from_secs(30), || async {
        let (_, u) = stack
            .cp(reqwest::Method::GET, "/v1/usage", token, None, None)
            .await
            .ok()?;
        let m = &u["meters"][0];
        (m["value"].as_i64() == Some(7) && m["period"]["start"] == invoice["period_start"])
            .then_some(())
    })
    .await?;
    poll(
        "edge usage in the new period",
        Duration::from_secs(30),
        || async { (edge_usage(stack, &customer.account).await == Some(7)).then_some(()) },
    )
    .await?;

    // Two packs of extra seats bought mid-period are paid at once and reach the edge: pro's
    // 10 seats plus 2 × 5.
    let (_, subs) = stack
        .cp(reqwest::Method::GET, "/v1/subscriptions", token, None, None)
        .await?;
    let sub = subs["data"][0]["id"].as_str().context("subscription")?;
    let (status, changed) = stack
        .cp(
            reqwest::Method::POST,
            &format!("/v1/subscriptions/{sub}/change"),
            token,
            Some("extra-seats"),
            Some(json!({"addons": {"extra_seats": 2}})),
        )
        .await?;
    anyhow::ensure!(
        status == 200 && changed["payment"]["status"] == "paid",
        "{status} {changed}"
    );
    poll("seats on the edge", Duration::from_secs(30), || async {
        let v = stack.check(&customer.account, "seats").await.ok()?;
        (v["limit"].as_i64() == Some(20)).then_some(())
    })
    .await?;
    Ok(())
}

/// The development clock lives in the database: a restarted control plane keeps it.
async fn clock_survives_a_restart(stack: &mut Stack) -> anyhow::Result<()> {
    let month_ahead = chrono::Utc::now() + chrono::TimeDelta::days(31);
    stack.crash_and_restart_cp().await?;
    let (_, clock) = stack
        .cp(reqwest::Method::GET, "/dev/v1/clock", None, None, None)
        .await?;
    let now: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(clock["now"].clone()).context("clock")?;
    anyhow::ensure!(now > month_ahead, "the clock jumped back to {now}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metered_usage_on_an_edge_is_invoiced_after_the_clock_moves_a_month() -> anyhow::Result<()>
{
    let mut stack = Stack::start(&[], &["edge-1"]).await?;
    let mut result = run(&stack).await;
    if result.is_ok() {
        result = clock_survives_a_restart(&mut stack).await;
    }
    stack.finish(result).await
}

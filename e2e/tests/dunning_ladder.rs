//! The dunning ladder with the real binaries: a renewal that a card declines escalates as the
//! development clock moves, the edge degrades what the rules say at each level, the exhausted
//! invoice is written off and the account banned, and a working card brings everything back.

use std::time::Duration;

use serde_json::{Value, json};
use tollgate_e2e::{Stack, poll};

async fn advance(stack: &Stack, seconds: i64) -> anyhow::Result<()> {
    let (status, body) = stack
        .cp(
            reqwest::Method::POST,
            "/dev/v1/clock/advance",
            None,
            None,
            Some(json!({ "seconds": seconds })),
        )
        .await?;
    anyhow::ensure!(status == 200, "advance: {status} {body}");
    Ok(())
}

async fn account(stack: &Stack, token: &str) -> Value {
    stack
        .cp(reqwest::Method::GET, "/v1/account", Some(token), None, None)
        .await
        .map(|(_, v)| v)
        .unwrap_or(Value::Null)
}

/// Polls the edge until `feature` answers `reason`.
async fn edge_says(
    stack: &Stack,
    account: &str,
    feature: &str,
    reason: &str,
) -> anyhow::Result<()> {
    poll(
        &format!("{feature} → {reason} on the edge"),
        Duration::from_secs(60),
        || async {
            let v = stack.check(account, feature).await.ok()?;
            (v["reason"] == reason).then_some(())
        },
    )
    .await
}

async fn walk(stack: &Stack) -> anyhow::Result<()> {
    let customer = stack
        .customer_on("ladder@example.com", "pro", "exports")
        .await?;
    let token = customer.token.as_str();
    let (status, body) = stack
        .cp(
            reqwest::Method::POST,
            "/v1/payment-methods",
            Some(token),
            Some("failing-card"),
            Some(json!({"payment_method": "pm_card_chargeCustomerFail", "make_default": true})),
        )
        .await?;
    anyhow::ensure!(status == 201, "failing card: {status} {body}");

    // A month and two hours on: the renewal is declined, level 1, nothing degraded yet.
    advance(stack, 31 * 86_400 + 7_200).await?;
    poll("dunning level 1", Duration::from_secs(60), || async {
        let a = account(stack, token).await;
        (a["dunning"]["level"] == 1).then_some(())
    })
    .await?;
    edge_says(stack, &customer.account, "exports", "granted_by_plan").await?;

    // Eight days later: five retries have failed (days 1, 2, 3, 5, 7), level 3; past seven
    // days the rules deny exports, and level 3 caps metered features at their usage.
    advance(stack, 8 * 86_400).await?;
    poll("dunning level 3", Duration::from_secs(60), || async {
        let a = account(stack, token).await;
        (a["dunning"]["level"] == 3 && a["dunning"]["days_past_due"] == 8).then_some(())
    })
    .await?;
    edge_says(stack, &customer.account, "exports", "denied_past_due").await?;
    poll(
        "api_calls capped at its usage",
        Duration::from_secs(60),
        || async {
            let v = stack.check(&customer.account, "api_calls").await.ok()?;
            (v["limit"] == 0 && v["allowed"] == false).then_some(())
        },
    )
    .await?;

    // Past the fourteenth day the last retry fails: written off, banned, everything denied.
    advance(stack, 7 * 86_400).await?;
    poll("banned for bad debt", Duration::from_secs(60), || async {
        let a = account(stack, token).await;
        (a["standing"] == "banned" && a["payment_method_required"] == true).then_some(())
    })
    .await?;
    edge_says(stack, &customer.account, "sso", "denied_banned").await?;
    let (_, invoices) = stack
        .cp(
            reqwest::Method::GET,
            "/v1/invoices",
            Some(token),
            None,
            None,
        )
        .await?;
    let renewal = invoices["data"][0].clone();
    anyhow::ensure!(renewal["status"] == "uncollectible", "{renewal}");

    // A working card: charged at once, the write-off reversed, the ban lifted.
    let (status, body) = stack
        .cp(
            reqwest::Method::POST,
            "/v1/payment-methods",
            Some(token),
            Some("working-card"),
            Some(json!({"payment_method": "pm_card_visa", "make_default": true})),
        )
        .await?;
    anyhow::ensure!(status == 201, "working card: {status} {body}");
    poll("recovered", Duration::from_secs(60), || async {
        let a = account(stack, token).await;
        (a["standing"] == "active"
            && a["dunning"].is_null()
            && a["payment_method_required"] == false)
            .then_some(())
    })
    .await?;
    // The subscription was canceled at exhaustion: no ban any more, no plan either.
    edge_says(stack, &customer.account, "sso", "denied_no_subscription").await?;
    let (_, invoice) = stack
        .cp(
            reqwest::Method::GET,
            &format!(
                "/v1/invoices/{}",
                renewal["id"].as_str().unwrap_or_default()
            ),
            Some(token),
            None,
            None,
        )
        .await?;
    anyhow::ensure!(invoice["status"] == "paid", "{invoice}");
    // The books balance: every transaction sums to zero, nothing is owed, no bad debt left.
    let pool = sqlx::PgPool::connect(&stack.billing_db_url()).await?;
    let unbalanced: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT transaction_id FROM ledger_entries GROUP BY 1
         HAVING sum(amount_minor) <> 0) u",
    )
    .fetch_one(&pool)
    .await?;
    let bad_debt: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(amount_minor), 0)::bigint FROM ledger_entries
         WHERE ledger_account = 'bad_debt'",
    )
    .fetch_one(&pool)
    .await?;
    pool.close().await;
    anyhow::ensure!(
        unbalanced == 0 && bad_debt == 0,
        "unbalanced {unbalanced}, bad debt {bad_debt}"
    );
    let a = account(stack, token).await;
    anyhow::ensure!(a["balance_minor"] == 0, "{a}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_renewal_climbs_the_ladder_to_a_ban_and_a_working_card_restores_it()
-> anyhow::Result<()> {
    let stack = Stack::start(&[], &["edge-1"]).await?;
    let result = walk(&stack).await;
    stack.finish(result).await
}

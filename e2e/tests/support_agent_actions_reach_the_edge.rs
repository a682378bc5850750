//! A support agent through the NinjaPanel, real binaries: bans an account → the edge denies
//! with `denied_banned` (ban → edge denial time measured over several bans), unbans → granted
//! again; grants an override → the edge decides with `override`; issues a credit → the next
//! invoice applies it; refunds part of that invoice → the ledger books it (`refunds` debited,
//! the processor's cash credited).

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use sqlx::Connection;
use tollgate_e2e::Stack;

#[tokio::test]
async fn an_agents_ban_override_credit_and_refund_reach_the_edge_the_invoice_and_the_ledger()
-> anyhow::Result<()> {
    let stack = Stack::start(&[], &["e2e-edge"]).await?;
    let result = walk(&stack).await;
    stack.finish(result).await
}

async fn panel(
    stack: &Stack,
    agent: &str,
    path: &str,
    key: &str,
    body: Value,
) -> anyhow::Result<Value> {
    let (status, answer) = stack
        .cp(Method::POST, path, Some(agent), Some(key), Some(body))
        .await?;
    anyhow::ensure!((200..300).contains(&status), "{path}: {status} {answer}");
    Ok(answer)
}

async fn walk(stack: &Stack) -> anyhow::Result<()> {
    let customer = stack
        .customer_on("banned@example.com", "pro", "sso")
        .await?;
    let account = customer.account.clone();
    let (status, created) = stack
        .admin_json(
            "/admin/v1/agents",
            json!({ "email": "agent@support.example", "role": "billing_admin" }),
        )
        .await?;
    anyhow::ensure!(status == 201, "agent: {status} {created}");
    let agent = created["token"].as_str().expect("token").to_owned();

    // Ban → denied at the edge, with the reason; unban → granted. Several times, timed.
    let mut took = Vec::new();
    for i in 0..5 {
        let ban = format!("/panel/v1/accounts/{account}/ban");
        panel(
            stack,
            &agent,
            &ban,
            &format!("ban-{i}"),
            json!({ "reason": "chargeback fraud" }),
        )
        .await?;
        took.push(stack.await_check(&account, "sso", false).await?);
        let v = stack.check(&account, "sso").await?;
        assert_eq!(v["reason"], "denied_banned", "{v}");
        let unban = format!("/panel/v1/accounts/{account}/unban");
        panel(
            stack,
            &agent,
            &unban,
            &format!("unban-{i}"),
            json!({ "reason": "cleared" }),
        )
        .await?;
        stack.await_check(&account, "sso", true).await?;
    }
    took.sort();
    eprintln!(
        "ban → edge denial: min {:?}, median {:?}, max {:?} (n = {})",
        took[0],
        took[took.len() / 2],
        took[took.len() - 1],
        took.len()
    );

    // An override of `seats` decides at the edge with the reason `override`.
    let path = format!("/panel/v1/accounts/{account}/entitlement-overrides");
    panel(
        stack,
        &agent,
        &path,
        "seats-override",
        json!({ "reason": "migration", "feature": "seats", "mode": "grant", "limit": 500 }),
    )
    .await?;
    tollgate_e2e::poll(
        "the override at the edge",
        Duration::from_secs(20),
        || async {
            let v = stack.check(&account, "seats").await.ok()?;
            (v["reason"] == "override" && v["limit"] == 500).then_some(())
        },
    )
    .await?;

    // A credit of 10.00: the renewal a month later asks for 29.00 - 10.00.
    let path = format!("/panel/v1/accounts/{account}/credits");
    let granted = panel(
        stack,
        &agent,
        &path,
        "goodwill",
        json!({ "reason": "outage", "amount_minor": 1000, "currency": "USD" }),
    )
    .await?;
    assert_eq!(granted["credit_held_minor"], 1000);
    let (status, body) = stack
        .cp(
            Method::POST,
            "/dev/v1/clock/advance",
            None,
            None,
            Some(json!({ "seconds": 32 * 24 * 3600 })),
        )
        .await?;
    anyhow::ensure!(status == 200, "advance: {status} {body}");
    let renewal = tollgate_e2e::poll("the renewal invoice", Duration::from_secs(20), || async {
        let (_, list) = stack
            .cp(
                Method::GET,
                "/v1/invoices",
                Some(&customer.token),
                None,
                None,
            )
            .await
            .ok()?;
        list["data"]
            .as_array()?
            .iter()
            .find(|i| i["credit_applied_minor"].as_i64().unwrap_or(0) > 0)
            .cloned()
    })
    .await?;
    assert_eq!(renewal["credit_applied_minor"], 1000, "{renewal}");
    assert_eq!(renewal["amount_due_minor"], 1900, "{renewal}");

    // The renewal is charged off-session; a billing admin refunds 5.00 of it.
    let id = renewal["id"].as_str().unwrap_or_default().to_owned();
    tollgate_e2e::poll("the renewal paid", Duration::from_secs(20), || async {
        let (_, inv) = stack
            .cp(
                Method::GET,
                &format!("/v1/invoices/{id}"),
                Some(&customer.token),
                None,
                None,
            )
            .await
            .ok()?;
        (inv["status"] == "paid").then_some(())
    })
    .await?;
    let refund = panel(
        stack,
        &agent,
        &format!("/panel/v1/invoices/{id}/refund"),
        "refund-1",
        json!({ "reason": "charged for a seat never used", "amount_minor": 500 }),
    )
    .await?;
    assert_eq!(refund["amount_minor"], 500, "{refund}");
    let mut billing = sqlx::PgConnection::connect(&stack.billing_db_url()).await?;
    let entries: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT t.reference, e.ledger_account, e.amount_minor
         FROM ledger_entries e JOIN ledger_transactions t ON t.id = e.transaction_id
         WHERE t.kind = 'refund' AND t.account_id = $1::uuid ORDER BY e.amount_minor",
    )
    .bind(&account)
    .fetch_all(&mut billing)
    .await?;
    let reference = format!(
        "refund:simulated:{}",
        refund["refund_id"].as_str().unwrap_or("")
    );
    assert_eq!(
        entries,
        [
            (reference.clone(), "cash:simulated".to_owned(), -500),
            (reference, "refunds".to_owned(), 500)
        ],
        "the refund in the ledger"
    );
    Ok(())
}

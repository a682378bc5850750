//! The NinjaPanel's web page in a real headless Chromium against the real control plane and
//! edge: an agent logs in with its token, searches an account, reads the 360° view (usage chart
//! of real metered usage, invoices, the edges' decisions) and issues a credit with a reason; a
//! viewer's credit is refused; a bad token is not let in. Screenshots of search, the 360° view
//! and the credit go to `.tollgate/screenshots/` and each is checked for the text it shows.

use std::path::PathBuf;

use serde_json::{Value, json};
use tollgate_e2e::Stack;
use tollgate_e2e::browser::{Browser, png_size};

#[tokio::test]
async fn an_agent_finds_an_account_reads_it_and_issues_a_credit_in_the_browser() {
    let stack = Stack::start(&[], &["edge-a"]).await.expect("stack");
    let result = run(&stack).await;
    stack.finish(result).await.expect("ninjapanel in a browser");
}

fn shots() -> anyhow::Result<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.tollgate/screenshots");
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Saves a screenshot of what the page shows now, checked to be a real full-width PNG.
async fn shoot(b: &Browser, name: &str) -> anyhow::Result<()> {
    let png = b.screenshot().await?;
    let (w, h) = png_size(&png).ok_or_else(|| anyhow::anyhow!("{name}: not a PNG"))?;
    anyhow::ensure!(w >= 1000 && h >= 600, "{name}: {w}x{h}");
    anyhow::ensure!(
        png.len() > 10_000,
        "{name}: a blank page ({} bytes)",
        png.len()
    );
    std::fs::write(shots()?.join(name), png)?;
    Ok(())
}

async fn agent(stack: &Stack, email: &str, role: &str) -> anyhow::Result<String> {
    let (status, body) = stack
        .admin_json("/admin/v1/agents", json!({ "email": email, "role": role }))
        .await?;
    anyhow::ensure!(status == 201, "agent: {status} {body}");
    Ok(body["token"].as_str().unwrap_or_default().to_owned())
}

async fn run(stack: &Stack) -> anyhow::Result<()> {
    let customer = stack
        .customer_on("ada@browser.example", "pro", "sso")
        .await?;
    let token = Some(customer.token.as_str());
    // Real metered usage through the edge, stored in billing_prod.
    let events: Vec<Value> = (0..3)
        .map(|i| json!({ "id": format!("u{i}"), "account": customer.account, "meter": "api_calls", "quantity": 411 }))
        .collect();
    stack.post_usage(&json!(events)).await?;
    stack.await_usage(&customer, 1233).await?;
    let admin = agent(stack, "ninja@support.example", "billing_admin").await?;
    let viewer = agent(stack, "reader@support.example", "viewer").await?;

    let b = Browser::start().await?;
    let outcome = async {
        let panel = format!("{}/panel/", stack.cp_url);
        // A wrong token is not let in.
        b.goto(&panel).await?;
        b.type_into("input[name=token]", "tga_not-a-real-token")
            .await?;
        b.click("#login button").await?;
        b.wait_text("#flash", "not a valid agent token").await?;

        // Log in; search by part of the email.
        b.type_into("input[name=token]", &admin).await?;
        b.click("#login button").await?;
        b.wait_url("/panel/accounts").await?;
        b.type_into("input[name=q]", "ada@browser").await?;
        b.click("#search button").await?;
        let results = b.wait_text("#results", "ada@browser.example").await?;
        anyhow::ensure!(results.contains(&customer.account), "{results}");
        shoot(&b, "panel-search.png").await?;

        // The 360° view.
        b.click("#results a").await?;
        let title = b.wait_text("#account-title", "ada@browser.example").await?;
        anyhow::ensure!(title.contains("active"), "{title}");
        let usage = b.text("#usage").await?;
        anyhow::ensure!(usage.contains("api_calls 1233 of 100000"), "{usage}");
        let invoices = b.text("#invoices").await?;
        anyhow::ensure!(
            invoices.contains("paid") && invoices.contains("29.00 USD"),
            "{invoices}"
        );
        let decisions = b.text("#decisions").await?;
        anyhow::ensure!(
            decisions.contains("sso") && decisions.contains("granted_by_plan"),
            "{decisions}"
        );
        let subs = b.text("#subscriptions").await?;
        anyhow::ensure!(subs.contains("pro"), "{subs}");
        shoot(&b, "panel-account.png").await?;

        // A credit, with its reason.
        b.type_into("#credit-form input[name=amount_minor]", "1500")
            .await?;
        b.type_into(
            "#credit-form input[name=reason]",
            "goodwill for the outage on Monday",
        )
        .await?;
        b.click("#credit-form button").await?;
        b.wait_text("#flash", "Credit issued.").await?;
        let balance = b.text("#balance").await?;
        anyhow::ensure!(balance.contains("-15.00 USD (credit)"), "{balance}");
        let timeline = b.text("#timeline").await?;
        anyhow::ensure!(
            timeline.contains("account.credit")
                && timeline.contains("goodwill for the outage on Monday")
                && timeline.contains("ninja@support.example"),
            "{timeline}"
        );
        shoot(&b, "panel-credit.png").await?;
        // The customer sees it: the same service, the same ledger.
        let (_, acct) = stack
            .cp(reqwest::Method::GET, "/v1/account", token, None, None)
            .await?;
        anyhow::ensure!(acct["balance_minor"] == -1500, "{acct}");

        // A viewer's credit is refused by the API's role check, and says so.
        b.click("header form button").await?;
        b.wait_url("/panel/").await?;
        b.type_into("input[name=token]", &viewer).await?;
        b.click("#login button").await?;
        b.wait_url("/panel/accounts").await?;
        b.goto(&format!(
            "{}/panel/accounts/{}",
            stack.cp_url, customer.account
        ))
        .await?;
        b.type_into("#credit-form input[name=amount_minor]", "99999")
            .await?;
        b.type_into("#credit-form input[name=reason]", "trying my luck")
            .await?;
        b.click("#credit-form button").await?;
        b.wait_text("#flash", "forbidden_for_role").await?;
        let balance = b.text("#balance").await?;
        anyhow::ensure!(balance.contains("-15.00 USD"), "unchanged: {balance}");
        Ok(())
    }
    .await;
    b.quit().await;
    outcome
}

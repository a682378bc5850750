//! The dunning ladder with the real binaries: a renewal that a card declines escalates as the
//! development clock moves, the edge degrades what the rules say at each level, the exhausted
//! invoice is written off and the account banned, and a working card brings everything back.
//! Along the way the customer is mailed at each step (a real SMTP server, aiosmtpd) and the
//! company's webhook endpoint receives every lifecycle event, signed, although it was down for
//! the first part of the walk.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::Mutex;
use tollgate_e2e::{Stack, free_port, poll};

/// aiosmtpd writing to a maildir; killed on drop.
struct Smtp {
    child: Child,
    dir: std::path::PathBuf,
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn start_smtp() -> anyhow::Result<(Smtp, u16)> {
    let python = std::env::var("TOLLGATE_TEST_PYTHON").map_err(|_| {
        anyhow::anyhow!("TOLLGATE_TEST_PYTHON (scripts/test installs aiosmtpd into .venv)")
    })?;
    let port = free_port()?;
    let dir = std::env::temp_dir().join(format!("tollgate-e2e-mail-{}", uuid::Uuid::now_v7()));
    let smtp = Smtp {
        child: Command::new(python)
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
        dir,
    };
    poll("aiosmtpd", Duration::from_secs(20), || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()
            .map(drop)
    })
    .await?;
    Ok((smtp, port))
}

/// The subjects of what the maildir holds, in the order they were written (their Message-ID is
/// the email's UUIDv7).
fn subjects(smtp: &Smtp) -> Vec<String> {
    let header = |m: &str, name: &str| {
        m.lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_default()
            .to_owned()
    };
    let mut mails: Vec<(String, String)> = std::fs::read_dir(smtp.dir.join("new"))
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .map(|m| (header(&m, "Message-ID: "), header(&m, "Subject: ")))
                .collect()
        })
        .unwrap_or_default();
    mails.sort();
    mails.into_iter().map(|(_, s)| s).collect()
}

/// The company's webhook endpoint: down while `down` is set, else records what arrives.
#[derive(Clone, Default)]
struct Receiver {
    down: Arc<AtomicBool>,
    got: Arc<Mutex<Vec<(axum::http::HeaderMap, String)>>>,
}

async fn receive(
    axum::extract::State(r): axum::extract::State<Receiver>,
    headers: axum::http::HeaderMap,
    body: String,
) -> axum::http::StatusCode {
    if r.down.load(Ordering::SeqCst) {
        return axum::http::StatusCode::SERVICE_UNAVAILABLE;
    }
    r.got.lock().await.push((headers, body));
    axum::http::StatusCode::NO_CONTENT
}

async fn start_receiver() -> anyhow::Result<(Receiver, String)> {
    let r = Receiver::default();
    let app = axum::Router::new()
        .route("/hooks", axum::routing::post(receive))
        .with_state(r.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hooks", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((r, url))
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

async fn walk(stack: &Stack, smtp: &Smtp) -> anyhow::Result<()> {
    let (receiver, hook_url) = start_receiver().await?;
    let (status, endpoint) = stack
        .admin_json("/admin/v1/webhook-endpoints", json!({ "url": hook_url }))
        .await?;
    anyhow::ensure!(status == 201, "endpoint: {status} {endpoint}");
    let secret = endpoint["secret"].as_str().unwrap_or_default().to_owned();
    // The endpoint is down for the first part of the walk.
    receiver.down.store(true, Ordering::SeqCst);
    let customer = stack
        .customer_on("ladder@example.com", "pro", "exports")
        .await?;
    let token = customer.token.as_str();
    stack
        .add_card(&customer, "pm_card_chargeCustomerFail", true)
        .await?;

    // A month and two hours on: the renewal is declined, level 1, nothing degraded yet.
    stack.advance_clock(31 * 86_400 + 7_200).await?;
    poll("dunning level 1", Duration::from_secs(60), || async {
        let a = account(stack, token).await;
        (a["dunning"]["level"] == 1).then_some(())
    })
    .await?;
    edge_says(stack, &customer.account, "exports", "granted_by_plan").await?;

    // Eight days later: five retries have failed (days 1, 2, 3, 5, 7), level 3; past seven
    // days the rules deny exports, and level 3 caps metered features at their usage.
    stack.advance_clock(8 * 86_400).await?;
    poll("dunning level 3", Duration::from_secs(60), || async {
        let a = account(stack, token).await;
        (a["dunning"]["level"] == 3 && a["dunning"]["days_past_due"] == 8).then_some(())
    })
    .await?;
    edge_says(stack, &customer.account, "exports", "denied_past_due").await?;
    // Back up: what it missed is retried and delivered.
    receiver.down.store(false, Ordering::SeqCst);
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
    stack.advance_clock(7 * 86_400).await?;
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

    // The customer was mailed at every step: the first failure, each retry scheduled, the
    // final warning, the write-off and the recovery (eight retries: ten emails).
    let mails = poll("ten dunning emails", Duration::from_secs(60), || async {
        let s = subjects(smtp);
        (s.len() >= 10).then_some(s)
    })
    .await?;
    anyhow::ensure!(mails.len() == 10, "{mails:?}");
    anyhow::ensure!(
        mails[0].starts_with("Your payment of 29.00 USD"),
        "{mails:?}"
    );
    anyhow::ensure!(
        mails[1..7].iter().all(|m| m.starts_with("We will try")),
        "{mails:?}"
    );
    anyhow::ensure!(mails[7].starts_with("Final notice"), "{mails:?}");
    anyhow::ensure!(
        mails[8].starts_with("Your subscription was canceled"),
        "{mails:?}"
    );
    anyhow::ensure!(mails[9].starts_with("Thank you"), "{mails:?}");

    // Every lifecycle event reached the endpoint, signed, each at least once.
    let wanted = [
        "subscription.created",
        "invoice.finalized",
        "invoice.payment_failed",
        "dunning.changed",
        "invoice.uncollectible",
        "subscription.canceled",
        "account.banned",
        "account.unbanned",
        "invoice.paid",
    ];
    let key = tollgate_control_plane::events::secret_key(&secret).unwrap_or_default();
    let got = poll("every event type", Duration::from_secs(60), || async {
        let got = receiver.got.lock().await.clone();
        let types: std::collections::BTreeSet<String> = got
            .iter()
            .filter_map(|(_, b)| serde_json::from_str::<Value>(b).ok())
            .filter_map(|v| v["type"].as_str().map(str::to_owned))
            .collect();
        wanted.iter().all(|t| types.contains(*t)).then_some(got)
    })
    .await?;
    for (headers, body) in &got {
        let h = |n: &str| {
            headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
        };
        let ts: i64 = h("webhook-timestamp").parse().unwrap_or_default();
        let want = tollgate_control_plane::events::sign(&key, h("webhook-id"), ts, body.as_bytes());
        anyhow::ensure!(h("webhook-signature") == want, "a bad signature on {body}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_renewal_climbs_the_ladder_to_a_ban_and_a_working_card_restores_it()
-> anyhow::Result<()> {
    let (smtp, port) = start_smtp().await?;
    let stack = Stack::start(
        &[("TOLLGATE_SMTP_URL", format!("smtp://127.0.0.1:{port}"))],
        &["edge-1"],
    )
    .await?;
    let result = walk(&stack, &smtp).await;
    stack.finish(result).await
}

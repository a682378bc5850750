//! Three edges hammer one account's metered quota: each serves checks from a lease of the
//! quota it took from the control plane, so together they allow the quota and at most one
//! unit per concurrent worker more (a check that passed before its usage was stored).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tollgate_e2e::Stack;

/// The free plan's `api_calls` quota in the demo rules.
const QUOTA: i64 = 1_000;
const WORKERS_PER_EDGE: usize = 3;

#[tokio::test]
async fn three_edges_share_one_quota_with_bounded_overspend() -> anyhow::Result<()> {
    let stack = Stack::start(&[], &["q1", "q2", "q3"]).await?;
    let result = walk(&stack).await;
    stack.finish(result).await
}

/// Checks one unit, reports it when allowed, until the edge has denied five times in a row.
async fn worker(
    http: reqwest::Client,
    edge: String,
    account: String,
    tag: String,
    allowed: Arc<AtomicI64>,
) -> anyhow::Result<()> {
    let (mut denied_in_a_row, mut n) = (0, 0);
    while denied_in_a_row < 5 {
        let v: Value = http
            .get(format!(
                "{edge}/v1/check?account={account}&feature=api_calls&quantity=1"
            ))
            .send()
            .await?
            .json()
            .await?;
        if v["allowed"] == true {
            denied_in_a_row = 0;
            allowed.fetch_add(1, Ordering::SeqCst);
            let event = json!({"id": format!("{tag}-{n}"), "account": account, "meter": "api_calls", "quantity": 1});
            n += 1;
            let resp = http
                .post(format!("{edge}/v1/usage"))
                .json(&event)
                .send()
                .await?;
            anyhow::ensure!(resp.status() == 202, "usage: {}", resp.status());
        } else {
            anyhow::ensure!(v["reason"] == "denied_quota_exceeded", "{v}");
            denied_in_a_row += 1;
        }
    }
    Ok(())
}

async fn walk(stack: &Stack) -> anyhow::Result<()> {
    let customer = stack.sign_up("quota@example.com").await?;
    stack.buy(&customer, "free").await?;
    for e in &stack.edges {
        stack
            .await_check_on(&e.url, &customer.account, "api_calls", true)
            .await?;
    }
    let allowed = Arc::new(AtomicI64::new(0));
    let mut tasks = Vec::new();
    for (i, e) in stack.edges.iter().enumerate() {
        for w in 0..WORKERS_PER_EDGE {
            tasks.push(tokio::spawn(worker(
                stack.http.clone(),
                e.url.clone(),
                customer.account.clone(),
                format!("q{i}-{w}"),
                allowed.clone(),
            )));
        }
    }
    for t in tasks {
        t.await??;
    }
    let allowed = allowed.load(Ordering::SeqCst);
    let workers = (stack.edges.len() * WORKERS_PER_EDGE) as i64;
    // Everything allowed was reported; wait until billing_prod holds all of it.
    let db = sqlx::PgPool::connect(&stack.billing_db_url()).await?;
    let stored = tollgate_e2e::poll("usage flushed", Duration::from_secs(30), || async {
        let (v,): (i64,) = sqlx::query_as(
            "SELECT COALESCE(sum(value), 0)::bigint FROM usage_aggregates WHERE meter = 'api_calls'",
        )
        .fetch_one(&db)
        .await
        .ok()?;
        (v == allowed).then_some(v)
    })
    .await?;
    eprintln!(
        "3 edges × {WORKERS_PER_EDGE} workers: {allowed} allowed and stored of a {QUOTA} quota"
    );
    anyhow::ensure!(
        (QUOTA..=QUOTA + workers).contains(&stored),
        "{stored} units used of a {QUOTA} quota (bound {QUOTA} + {workers})"
    );
    // Every edge took part: the quota was shared, not grabbed by one.
    let (edges,): (i64,) =
        sqlx::query_as("SELECT count(DISTINCT edge_id) FROM usage_leases WHERE granted > 0")
            .fetch_one(&db)
            .await?;
    anyhow::ensure!(edges == 3, "{edges} edges held leases");
    Ok(())
}

#[tokio::test]
async fn a_denied_check_on_one_edge_leaves_the_quota_to_the_others() -> anyhow::Result<()> {
    let stack = Stack::start(&[], &["d1", "d2"]).await?;
    let result = async {
        let customer = stack.sign_up("denied@example.com").await?;
        stack.buy(&customer, "free").await?;
        let check = |edge: &str, q: i64| {
            let url = format!(
                "{edge}/v1/check?account={}&feature=api_calls&quantity={q}",
                customer.account
            );
            let http = stack.http.clone();
            async move { http.get(url).send().await?.json::<Value>().await }
        };
        // Both edges know the plan (a check of 0 units reads the usage, leases nothing).
        for e in &stack.edges {
            tollgate_e2e::poll("the plan at the edge", Duration::from_secs(20), || async {
                let v = check(&e.url, 0).await.ok()?;
                (v["allowed"] == true).then_some(())
            })
            .await?;
        }
        // More than the whole quota on the first edge: denied, and it takes nothing.
        let v = check(&stack.edges[0].url, QUOTA + 1).await?;
        anyhow::ensure!(
            v["allowed"] == false && v["reason"] == "denied_quota_exceeded",
            "{v}"
        );
        // So all of it is still there on the second edge.
        let v = check(&stack.edges[1].url, QUOTA).await?;
        anyhow::ensure!(v["allowed"] == true && v["usage"] == 0, "{v}");
        Ok(())
    }
    .await;
    stack.finish(result).await
}

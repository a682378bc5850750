//! An edge that was down while a subscription was cancelled must not grant it after it comes
//! back: it restores its saved facts (answering from them, `stale: true`), resumes the change
//! stream where they were saved, and denies — fresh — as soon as it has read the cancellation.
//!
//! Bound (measured here, real binaries): from the restarted edge being ready to its first
//! fresh denial is one stream read (plus the relay's publish, when the edge comes back before
//! it), milliseconds; the test allows 5 s. No answer in between is a grant marked fresh.

use std::time::{Duration, Instant};

use serde_json::Value;
use tollgate_e2e::Stack;

#[tokio::test]
async fn stop_the_edge_cancel_start_it_denied_and_never_falsely_fresh() -> anyhow::Result<()> {
    let mut stack = Stack::start(&[], &["restart-edge"]).await?;
    let result = walk(&mut stack).await;
    stack.finish(result).await
}

async fn walk(stack: &mut Stack) -> anyhow::Result<()> {
    let customer = stack.sign_up("restart@example.com").await?;
    let sub = stack.buy(&customer, "pro").await?;
    stack.await_check(&customer.account, "sso", true).await?;
    // The edge's periodic snapshot (every 5 s) now holds the account: wait for it on disk.
    let facts_file = stack.edge_data_dir(0).join("facts.jsonl");
    tollgate_e2e::poll("facts snapshot", Duration::from_secs(30), || async {
        std::fs::read_to_string(&facts_file)
            .ok()?
            .contains(&customer.account)
            .then_some(())
    })
    .await?;
    // A crash: no shutdown snapshot.
    stack.kill_edge(0);
    stack.cancel_now(&customer, &sub).await?;
    stack.restart_edge(0).await?;
    let ready = Instant::now();
    let mut answers: Vec<Value> = Vec::new();
    let denied_after = loop {
        let v = stack.check(&customer.account, "sso").await?;
        anyhow::ensure!(
            !(v["allowed"] == true && v["stale"] == false),
            "a revoked grant answered as fresh after the restart: {v} (after {answers:?})"
        );
        if v["allowed"] == false && v["stale"] == false {
            break ready.elapsed();
        }
        answers.push(v);
        anyhow::ensure!(
            ready.elapsed() < Duration::from_secs(5),
            "not denied within 5 s of the restart: {answers:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    eprintln!(
        "denied {} ms after the restarted edge was ready ({} stale answers before)",
        denied_after.as_millis(),
        answers.len()
    );
    Ok(())
}

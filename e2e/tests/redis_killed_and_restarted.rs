//! Redis is killed mid-run and comes back empty: no change is lost. While it is down the edge
//! says `stale` and polls the control plane; the control plane's outbox keeps the publishes
//! and retries them; when Redis returns, the edge notices the recreated stream and revalidates.

use tollgate_e2e::{PrivateRedis, Stack};

#[tokio::test]
async fn redis_killed_and_restarted_mid_run_loses_no_change() -> anyhow::Result<()> {
    let mut redis = PrivateRedis::start()?;
    let stack = Stack::start_with_redis(&[], &["redis-edge"], redis.url()).await?;
    let result = walk(&stack, &mut redis).await;
    stack.finish(result).await
}

async fn walk(stack: &Stack, redis: &mut PrivateRedis) -> anyhow::Result<()> {
    let customer = stack.sign_up("k@example.com").await?;
    let sub = stack.buy(&customer, "pro").await?;
    let account = customer.account.as_str();
    stack.await_check(account, "sso", true).await?;

    // Redis dies. A change happens meanwhile.
    redis.kill();
    stack.cancel_now(&customer, &sub).await?;
    // The edge degrades to polling the control plane: the change still arrives, marked stale.
    stack.await_check(account, "sso", false).await?;
    let v = stack.check(account, "sso").await?;
    anyhow::ensure!(
        v["stale"] == true && v["reason"] == "denied_no_subscription",
        "{v}"
    );

    // Redis comes back empty; another change goes through the stream again.
    redis.restart()?;
    stack.buy(&customer, "enterprise").await?;
    stack.await_check(account, "seats", true).await?;
    tollgate_e2e::poll(
        "fresh again",
        std::time::Duration::from_secs(20),
        || async {
            let v = stack.check(account, "seats").await.ok()?;
            (v["stale"] == false && v["limit"] == 100).then_some(())
        },
    )
    .await?;
    Ok(())
}

//! The change stream and the L2 facts on a 3-node Redis Cluster (started by `scripts/test`),
//! the stream split into 8 shards by account hash: accounts on shards owned by different nodes
//! buy a plan and the edge allows `sso`. Then the node owning one account's shard is killed
//! (SIGKILL) and, while it is down, changes are made for accounts on it (a cancel, a new
//! checkout) and on another node (a cancel). The other node's change reaches the edge fresh at
//! once; the down node's arrive stale (the edge polls the control plane for that shard's
//! accounts). The node starts again from its config and append-only file; the control plane's
//! outbox retries the publishes it refused, and every change is then in its shard's stream and
//! L2 copy, answered fresh by the edge and by a second edge started afterwards from L2.

use std::time::Duration;

use serde_json::Value;
use tollgate_e2e::{ClusterNode, Customer, EDGE_TOKEN, Stack, poll};
use tollgate_protocol::redis_conn::{RedisClient, RedisConn};
use tollgate_protocol::redis_keys::{Keys, RedisTarget};
use tollgate_protocol::{AccountId, internal_api};

const SHARDS: u16 = 8;
/// Accounts signed up at most while looking for two on different nodes (with 8 shards over 3
/// nodes, two accounts land on different nodes with probability 2/3 or more each).
const SIGN_UPS_MAX: usize = 24;
const DEADLINE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_sharded_stream_on_a_redis_cluster_loses_no_change_when_a_node_restarts()
-> anyhow::Result<()> {
    let nodes = tollgate_e2e::redis_cluster_urls()?;
    let mut stack = Stack::start_on_cluster(&[], &["cluster-edge-1"], &nodes, SHARDS).await?;
    let result = walk(&mut stack, &nodes).await;
    stack.finish(result).await
}

/// A customer, its account's shard and the node that owns the shard.
struct Placed {
    customer: Customer,
    id: AccountId,
    shard: u16,
    node: ClusterNode,
}

async fn walk(stack: &mut Stack, nodes: &[String]) -> anyhow::Result<()> {
    let keys = Keys::sharded(&stack.redis_prefix(), SHARDS);
    let masters = ClusterNode::masters(nodes).await?;
    anyhow::ensure!(masters.len() == 3, "a 3-master cluster: {masters:?}");
    let place = |customer: Customer| {
        let (keys, masters) = (keys.clone(), masters.clone());
        async move {
            let id: AccountId = customer.account.parse()?;
            let shard = keys.shard_of(&id);
            let slot = masters[0].slot_of(&keys.stream(shard)).await?;
            anyhow::ensure!(
                slot == masters[0].slot_of(&keys.facts(&id)).await?,
                "an account's facts and its shard's stream share a slot"
            );
            let node = masters
                .iter()
                .find(|m| m.serves(slot))
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("no master serves slot {slot}"))?;
            anyhow::Ok(Placed {
                customer,
                id,
                shard,
                node,
            })
        }
    };

    // Sign up until two accounts sit on shards of different nodes; a third one shares the
    // first one's node (a new checkout made while that node is down).
    let mut placed: Vec<Placed> = Vec::new();
    for i in 0..SIGN_UPS_MAX {
        let p = place(stack.sign_up(&format!("c{i}@example.com")).await?).await?;
        placed.push(p);
        let first = &placed[0];
        let other = placed.iter().position(|p| p.node != first.node);
        let same = placed[1..].iter().position(|p| p.node == first.node);
        if other.is_some() && same.is_some() {
            break;
        }
    }
    let a = placed.remove(0);
    let b_at = placed
        .iter()
        .position(|p| p.node != a.node)
        .ok_or_else(|| anyhow::anyhow!("{SIGN_UPS_MAX} accounts, all on one node"))?;
    let b = placed.remove(b_at);
    let c_at = placed
        .iter()
        .position(|p| p.node == a.node)
        .ok_or_else(|| anyhow::anyhow!("no second account on {}", a.node.addr))?;
    let c = placed.remove(c_at);
    anyhow::ensure!(a.shard != b.shard && a.node != b.node);
    eprintln!(
        "A shard {} on {}, B shard {} on {}, C shard {} on {}",
        a.shard, a.node.addr, b.shard, b.node.addr, c.shard, c.node.addr
    );

    // Checkout → the edge allows sso, for accounts on both nodes.
    let sub_a = stack.buy(&a.customer, "pro").await?;
    let sub_b = stack.buy(&b.customer, "pro").await?;
    for p in [&a, &b] {
        await_fresh(stack, p, true).await?;
    }
    await_fresh(stack, &c, false).await?;

    // The node owning A's (and C's) shard crashes. Meanwhile A cancels, C buys, B cancels.
    let config = a.node.kill().await?;
    stack.cancel_now(&a.customer, &sub_a).await?;
    stack.buy(&c.customer, "pro").await?;
    stack.cancel_now(&b.customer, &sub_b).await?;
    // B's shard is on a live node: its change flows through the stream, fresh.
    await_fresh(stack, &b, false).await?;
    // A's and C's arrive from the control plane, marked stale: their shard cannot be read.
    for (p, allowed) in [(&a, false), (&c, true)] {
        let v = await_answer(stack, p, |v| v["allowed"] == allowed).await?;
        anyhow::ensure!(v["stale"] == true, "the shard's node is down: {v}");
    }

    // The node comes back with its writes; the refused publishes are retried.
    a.node.start(&config).await?;
    let redis = RedisClient::open(&RedisTarget::Cluster(nodes.to_vec()))?
        .shared()
        .await?;
    for (p, allowed) in [(&a, false), (&b, false), (&c, true)] {
        let version = cp_version(stack, p).await?;
        // The edge answers the current facts, fresh.
        let v = await_fresh(stack, p, allowed).await?;
        anyhow::ensure!(
            v["version"] == version,
            "edge {v}, control plane v{version}"
        );
        // The change is in its shard's stream and L2: nothing was lost.
        poll("the change in its shard stream", DEADLINE, || {
            let (keys, mut redis) = (keys.clone(), redis.clone());
            async move {
                stream_holds(&mut redis, &keys, p.id, version)
                    .await
                    .then_some(())
            }
        })
        .await?;
        let l2 = l2_version(&redis, &keys, p.id).await?;
        anyhow::ensure!(l2 == Some(version), "L2 v{l2:?}, control plane v{version}");
    }

    // A second edge, started with an empty cache now, fills from L2 and follows every shard:
    // it answers every change too.
    stack.start_edge("cluster-edge-2").await?;
    let url = stack.edges[1].url.clone();
    for (p, allowed) in [(&a, false), (&b, false), (&c, true)] {
        let account = p.customer.account.as_str();
        poll("the second edge's answer", DEADLINE, || async {
            let v = stack.check_on(&url, account, "sso").await.ok()?;
            (v["allowed"] == allowed && v["stale"] == false).then_some(())
        })
        .await?;
    }
    let status: Value = stack
        .http
        .get(format!("{url}/v1/status"))
        .send()
        .await?
        .json()
        .await?;
    let positions = status["stream_positions"].as_array().map_or(0, Vec::len);
    anyhow::ensure!(
        positions == usize::from(SHARDS),
        "one position per shard: {status}"
    );
    Ok(())
}

/// Polls the first edge until its `sso` answer for `p` satisfies `done`.
async fn await_answer(
    stack: &Stack,
    p: &Placed,
    done: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    let account = p.customer.account.as_str();
    poll(&format!("sso for {account}"), DEADLINE, || async {
        let v = stack.check(account, "sso").await.ok()?;
        done(&v).then_some(v)
    })
    .await
}

/// Polls until the edge answers `sso` allowed / denied for `p`, fresh.
async fn await_fresh(stack: &Stack, p: &Placed, allowed: bool) -> anyhow::Result<Value> {
    await_answer(stack, p, |v| v["allowed"] == allowed && v["stale"] == false).await
}

/// The account's facts version on the control plane (the internal API edges fill from).
async fn cp_version(stack: &Stack, p: &Placed) -> anyhow::Result<i64> {
    let v: Value = stack
        .http
        .get(format!(
            "{}{}",
            stack.cp_url,
            internal_api::facts_path(&p.id)
        ))
        .bearer_auth(EDGE_TOKEN)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    v["version"]
        .as_i64()
        .ok_or_else(|| anyhow::anyhow!("facts without a version: {v}"))
}

/// Whether the account's shard stream holds an event with these facts' version.
async fn stream_holds(redis: &mut RedisConn, keys: &Keys, id: AccountId, version: i64) -> bool {
    let Ok(entries) = redis::cmd("XREVRANGE")
        .arg(keys.stream_of(&id))
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1_000)
        .query_async::<redis::streams::StreamRangeReply>(redis)
        .await
    else {
        return false;
    };
    entries.ids.iter().any(|e| {
        e.get::<String>(tollgate_protocol::redis_keys::CHANGE_FIELD)
            .and_then(|raw| serde_json::from_str::<Value>(&raw).ok())
            .is_some_and(|ev| {
                ev["facts"]["account_id"] == id.to_string() && ev["facts"]["version"] == version
            })
    })
}

/// The version of the account's L2 copy.
async fn l2_version(redis: &RedisConn, keys: &Keys, id: AccountId) -> anyhow::Result<Option<i64>> {
    let mut redis = redis.clone();
    let raw: Option<String> = redis::cmd("GET")
        .arg(keys.facts(&id))
        .query_async(&mut redis)
        .await?;
    Ok(raw
        .and_then(|r| serde_json::from_str::<Value>(&r).ok())
        .and_then(|v| v["version"].as_i64()))
}

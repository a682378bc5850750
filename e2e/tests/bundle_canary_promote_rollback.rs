//! A platform engineer deploys a bundle that removes `exports` from `pro`, activates it for a
//! canary share: only the canary edge denies. Promote: both deny. Roll back: both allow again.
//! Two real edges, a real control plane, real PostgreSQL and Redis.

use reqwest::Method;
use serde_json::json;
use tollgate_e2e::{Stack, demo_source, signed_bundle};
use tollgate_protocol::canary::in_canary;

const CANARY_PERCENT: i32 = 50;

/// demo.tg with `exports` taken out of `pro`, and its tests updated to say so.
fn without_pro_exports() -> String {
    let src = demo_source();
    let pro = src.find("plan pro").expect("pro plan");
    let grant = pro
        + src[pro..]
            .find("    grant exports\n")
            .expect("pro grants exports");
    let mut out = format!(
        "{}{}",
        &src[..grant],
        &src[grant + "    grant exports\n".len()..]
    );
    out = out.replace(
        "expect sso allowed reason granted_by_plan, exports allowed,",
        "expect sso allowed reason granted_by_plan, exports denied,",
    );
    out.replace(
        "expect exports allowed reason granted_by_plan\n",
        "expect exports denied reason denied_not_in_plan\n",
    )
}

/// Edge ids on either side of the canary line.
fn edge_ids() -> (String, String) {
    let find = |want: bool| {
        (0..1000)
            .map(|i| format!("edge-{i}"))
            .find(|id| in_canary(id, CANARY_PERCENT) == want)
            .expect("some edge id on each side")
    };
    (find(true), find(false))
}

async fn edge_versions(stack: &Stack) -> anyhow::Result<Vec<(String, Option<i64>)>> {
    let (status, body) = stack.admin(Method::GET, "/admin/v1/edges", None).await?;
    anyhow::ensure!(status == 200, "edges: {status} {body}");
    Ok(body["data"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    (
                        e["edge_id"].as_str().unwrap_or_default().to_owned(),
                        e["bundle_version"].as_i64(),
                    )
                })
                .collect()
        })
        .unwrap_or_default())
}

#[tokio::test]
async fn canary_then_promote_then_rollback_converges_every_edge() -> anyhow::Result<()> {
    let (canary, stable) = edge_ids();
    let stack = Stack::start(&[], &[canary.as_str(), stable.as_str()]).await?;
    let result = walk(&stack, &canary, &stable).await;
    stack.finish(result).await
}

async fn walk(stack: &Stack, canary_id: &str, stable_id: &str) -> anyhow::Result<()> {
    let url = |id: &str| {
        stack
            .edges
            .iter()
            .find(|e| e.id == id)
            .map(|e| e.url.clone())
            .unwrap_or_default()
    };
    let (canary, stable) = (url(canary_id), url(stable_id));

    // A pro customer.
    let customer = stack.sign_up("r@example.com").await?;
    stack.buy(&customer, "pro").await?;
    let account = customer.account;
    for edge in [&canary, &stable] {
        stack
            .await_check_on(edge, &account, "exports", true)
            .await?;
    }

    // Deploy v2 (no exports in pro) and send it to the canary share.
    let v2 = signed_bundle(&without_pro_exports(), 2, &stack.key)?;
    let (status, body) = stack
        .admin(Method::POST, "/admin/v1/bundles", Some(v2))
        .await?;
    anyhow::ensure!(status == 201, "upload v2: {status} {body}");
    let (status, body) = stack
        .admin_json(
            "/admin/v1/bundles/2/activate",
            json!({ "canary_percent": CANARY_PERCENT }),
        )
        .await?;
    anyhow::ensure!(
        status == 200 && body["canary_version"] == 2,
        "activate: {status} {body}"
    );
    stack
        .await_check_on(&canary, &account, "exports", false)
        .await?;
    let v = stack.check_on(&canary, &account, "exports").await?;
    assert_eq!(
        (v["reason"].as_str(), v["bundle_version"].as_i64()),
        (Some("denied_not_in_plan"), Some(2)),
        "{v}"
    );
    let v = stack.check_on(&stable, &account, "exports").await?;
    assert_eq!(
        (v["allowed"].as_bool(), v["bundle_version"].as_i64()),
        (Some(true), Some(1)),
        "the stable edge keeps v1: {v}"
    );
    tollgate_e2e::poll(
        "fleet status shows the canary",
        std::time::Duration::from_secs(10),
        || async {
            let versions = edge_versions(stack).await.ok()?;
            let want = [
                (canary_id.to_owned(), Some(2)),
                (stable_id.to_owned(), Some(1)),
            ];
            want.iter().all(|w| versions.contains(w)).then_some(())
        },
    )
    .await?;

    // Promote: every edge denies.
    let (status, body) = stack
        .admin(Method::POST, "/admin/v1/bundles/2/promote", None)
        .await?;
    anyhow::ensure!(status == 200, "promote: {status} {body}");
    for edge in [&canary, &stable] {
        stack
            .await_check_on(edge, &account, "exports", false)
            .await?;
    }

    // Roll back (to the previous stable, v1): every edge allows again.
    let (status, body) = stack.admin_json("/admin/v1/rollback", json!({})).await?;
    anyhow::ensure!(
        status == 200 && body["stable_version"] == 1,
        "rollback: {status} {body}"
    );
    for edge in [&canary, &stable] {
        stack
            .await_check_on(edge, &account, "exports", true)
            .await?;
    }
    tollgate_e2e::poll(
        "fleet converged on v1",
        std::time::Duration::from_secs(10),
        || async {
            let versions = edge_versions(stack).await.ok()?;
            (versions.len() == 2 && versions.iter().all(|(_, v)| *v == Some(1))).then_some(())
        },
    )
    .await?;

    // Every action was recorded with who and when.
    let (_, audit) = stack.admin(Method::GET, "/admin/v1/audit", None).await?;
    let actions: Vec<&str> = audit["data"]
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["action"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        actions,
        [
            "upload", "promote", "upload", "activate", "promote", "rollback"
        ]
    );
    assert!(
        audit["data"]
            .as_array()
            .is_some_and(|a| a.iter().all(|e| e["actor"] == "e2e"))
    );
    Ok(())
}

#[tokio::test]
async fn an_edge_restarted_without_a_control_plane_answers_from_its_saved_bundle()
-> anyhow::Result<()> {
    let mut stack = Stack::start(&[], &["offline-edge"]).await?;
    let result = async {
        let v = stack
            .check(&uuid::Uuid::now_v7().to_string(), "sso")
            .await?;
        anyhow::ensure!(v["bundle_version"] == 1, "{v}");
        // Control plane gone; the edge crashes and comes back.
        stack.cp.kill();
        let mut old = stack.edges.pop().expect("edge");
        old.proc.kill();
        stack.start_edge("offline-edge").await?;
        let v = stack
            .check(&uuid::Uuid::now_v7().to_string(), "sso")
            .await?;
        // Ready from disk; an account it never saw gets the feature's fail-closed policy.
        anyhow::ensure!(
            v["bundle_version"] == 1
                && v["allowed"] == false
                && v["reason"] == "fallback"
                && v["stale"] == true,
            "{v}"
        );
        Ok(())
    }
    .await;
    stack.finish(result).await
}

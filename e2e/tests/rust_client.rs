//! The Rust client product services use, against a real edge.

use reqwest::Method;
use serde_json::json;
use tollgate_client::{BatchItem, ClientError, EdgeClient};
use tollgate_e2e::Stack;
use tollgate_protocol::{AccountId, Reason};

#[tokio::test]
async fn the_rust_client_checks_one_and_many_and_reports_refusals() -> anyhow::Result<()> {
    let stack = Stack::start(&[], &["client-edge"]).await?;
    let result = walk(&stack).await;
    if result.is_err() {
        eprintln!("{}", stack.logs());
    }
    stack.shutdown().await;
    result
}

async fn walk(stack: &Stack) -> anyhow::Result<()> {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let (status, signup) = stack
        .cp(
            Method::POST,
            "/v1/accounts",
            None,
            Some(&format!("cl-{run}")),
            Some(json!({"email": "c@example.com", "name": "C"})),
        )
        .await?;
    anyhow::ensure!(status == 201, "{signup}");
    let account: AccountId = signup["account"]["id"]
        .as_str()
        .unwrap_or_default()
        .parse()?;
    let token = signup["api_token"].as_str().unwrap_or_default().to_owned();
    stack
        .cp(
            Method::POST,
            "/v1/payment-methods",
            Some(&token),
            Some(&format!("pm-{run}")),
            Some(json!({"payment_method": "pm_card_visa"})),
        )
        .await?;
    let (status, body) = stack
        .cp(
            Method::POST,
            "/v1/checkout",
            Some(&token),
            Some(&format!("b-{run}")),
            Some(json!({"plan": "pro"})),
        )
        .await?;
    anyhow::ensure!(status == 201, "{body}");
    stack.await_check(&account.to_string(), "sso", true).await?;

    let edge = EdgeClient::new(stack.edge_url())?;
    let sso = edge.check(account, "sso").await?;
    assert!(
        sso.allowed && sso.reason == Reason::GrantedByPlan && sso.bundle_version == 1,
        "{sso:?}"
    );
    assert_eq!(edge.check(account, "seats").await?.limit, Some(10));
    match edge.check(account, "teleport").await {
        Err(ClientError::Refused {
            status: 404, code, ..
        }) => assert_eq!(code, "unknown_feature"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let stranger = AccountId::new_v7();
    let many = edge
        .check_many(&[(account, "exports"), (stranger, "sso"), (account, "nope")])
        .await?;
    assert!(matches!(&many[0], BatchItem::Checked(c) if c.allowed));
    assert!(
        matches!(&many[1], BatchItem::Checked(c) if !c.allowed && c.reason == Reason::UnknownAccount)
    );
    assert!(matches!(&many[2], BatchItem::Failed { code, .. } if code == "unknown_feature"));

    let nowhere = EdgeClient::new(&format!("http://127.0.0.1:{}", tollgate_e2e::free_port()?))?;
    assert!(matches!(
        nowhere.check(account, "sso").await,
        Err(ClientError::Unreachable(_))
    ));
    Ok(())
}

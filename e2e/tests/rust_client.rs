//! The Rust client product services use, against a real edge.

use tollgate_client::{BatchItem, ClientError, EdgeClient};
use tollgate_e2e::Stack;
use tollgate_protocol::{AccountId, Reason};

#[tokio::test]
async fn the_rust_client_checks_one_and_many_and_reports_refusals() -> anyhow::Result<()> {
    let stack = Stack::start(&[], &["client-edge"]).await?;
    let result = walk(&stack).await;
    stack.finish(result).await
}

async fn walk(stack: &Stack) -> anyhow::Result<()> {
    let customer = stack.customer_on("c@example.com", "pro", "sso").await?;
    let account: AccountId = customer.account.parse()?;

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

#[tokio::test]
async fn the_rust_client_sends_the_service_token_an_edge_requires() -> anyhow::Result<()> {
    let mut stack = Stack::start(&[], &[]).await?;
    let token = "client-service-token-01";
    let result = async {
        stack
            .start_edge_with(
                "guarded-edge",
                &[(
                    "TOLLGATE_EDGE_SERVICE_TOKENS",
                    format!("old-token-for-rotation-1,{token}"),
                )],
            )
            .await?;
        let customer = stack.sign_up("guarded@example.com").await?;
        let account: AccountId = customer.account.parse()?;
        let anonymous = EdgeClient::new(stack.edge_url())?;
        match anonymous.check(account, "sso").await {
            Err(ClientError::Refused {
                status: 401, code, ..
            }) => assert_eq!(code, "missing_credentials"),
            other => panic!("expected 401, got {other:?}"),
        }
        let edge = EdgeClient::new(stack.edge_url())?.with_token(token);
        // Known at the edge once its facts are published (until then: unknown, for a while).
        let sso = tollgate_e2e::poll(
            "the account at the edge",
            std::time::Duration::from_secs(20),
            || async {
                edge.check(account, "sso")
                    .await
                    .ok()
                    .filter(|c| c.reason == Reason::DeniedNoSubscription)
            },
        )
        .await?;
        assert!(!sso.allowed, "{sso:?}");
        Ok(())
    }
    .await;
    stack.finish(result).await
}

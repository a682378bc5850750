//! The edge's OFREP endpoints driven by a real OpenFeature client: the Python
//! `openfeature-sdk` with `openfeature-provider-ofrep` (installed into `.venv` by
//! `scripts/test`), against the real binaries. Also the bulk endpoint's ETag / 304.

use std::process::Command;

use serde_json::{Value, json};
use tollgate_e2e::Stack;

fn python() -> String {
    std::env::var("TOLLGATE_TEST_PYTHON")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../.venv/bin/python").to_owned())
}

#[tokio::test]
async fn an_openfeature_sdk_evaluates_features_through_ofrep() -> anyhow::Result<()> {
    let stack = Stack::start(&[], &["ofrep-edge"]).await?;
    let result = walk(&stack).await;
    stack.finish(result).await
}

async fn walk(stack: &Stack) -> anyhow::Result<()> {
    let account = stack
        .customer_on("o@example.com", "pro", "sso")
        .await?
        .account;

    let out = Command::new(python())
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/ofrep_sdk.py"))
        .arg(stack.edge_url())
        .arg(&account)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "python: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(v["sso"]["value"], true, "{v}");
    assert!(
        matches!(
            v["sso"]["reason"].as_str(),
            Some("TARGETING_MATCH" | "STALE")
        ),
        "{v}"
    );
    assert_eq!(v["sso"]["variant"], "granted");
    assert_eq!(v["sso"]["metadata"]["tollgate_reason"], "granted_by_plan");
    assert_eq!(v["exports"]["value"], true);
    assert_eq!(v["seats"]["value"], 10, "limits are integer flags: {v}");
    assert_eq!(v["unknown_flag"]["error_code"], "FLAG_NOT_FOUND", "{v}");
    assert_eq!(
        v["unknown_flag"]["value"], false,
        "the SDK falls back to the caller's default"
    );
    assert_eq!(
        v["no_targeting_key"]["error_code"], "TARGETING_KEY_MISSING",
        "{v}"
    );
    assert_eq!(
        v["bad_targeting_key"]["error_code"], "INVALID_CONTEXT",
        "{v}"
    );

    // Bulk evaluation with ETag / If-None-Match.
    let url = format!("{}/ofrep/v1/evaluate/flags", stack.edge_url());
    let body = json!({ "context": { "targetingKey": account } });
    let first = stack.http.post(&url).json(&body).send().await?;
    anyhow::ensure!(first.status() == 200, "bulk: {}", first.status());
    let etag = first
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let flags: Value = first.json().await?;
    let keys: Vec<&str> = flags["flags"]
        .as_array()
        .map(|a| a.iter().filter_map(|f| f["key"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(keys, ["sso", "exports", "seats", "api_calls"]);
    let again = stack
        .http
        .post(&url)
        .header("if-none-match", &etag)
        .json(&body)
        .send()
        .await?;
    assert_eq!(again.status(), 304, "unchanged facts and bundle answer 304");
    let parse = stack
        .http
        .post(&url)
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await?;
    assert_eq!(parse.status(), 400);
    assert_eq!(parse.json::<Value>().await?["errorCode"], "PARSE_ERROR");
    Ok(())
}

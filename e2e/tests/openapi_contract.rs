//! The OpenAPI contracts against the real binaries: schemathesis (installed into `.venv` by
//! `scripts/test`, `tg_ensure_schemathesis`) reads each process's `GET /openapi.json` and sends
//! what it generates from it — valid and invalid — to every operation, with real tokens: a
//! customer's (who has bought `pro`), a `billing_admin` agent's, the admin token, the edge
//! token, and the edge's service and operator tokens. Every answer must be no 5xx, a status
//! the document lists for the operation, of the content type it lists, and of its schema.
//!
//! One schemathesis run per token kind (selected by tag); the development routes last, since
//! they move the clock. Bounded: few examples per operation, no stateful phase.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use serde_json::json;
use tollgate_e2e::{ADMIN_TOKEN, EDGE_TOKEN, OPERATOR_TOKEN, Stack};

const SERVICE_TOKEN: &str = "e2e-service-token-0001";
const STRIPE_WEBHOOK_SECRET: &str = "whsec_e2e_contract";
const ALL_CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance";
/// The Braintree webhook routes answer their documented `503 webhooks_not_configured` on a
/// control plane without Braintree keys (configuring them would send PayPal to Braintree): no
/// `not_a_server_error` for the webhooks, the rest holds.
const WEBHOOK_CHECKS: &str =
    "status_code_conformance,content_type_conformance,response_schema_conformance";
/// Test cases per operation and run: enough to reach every documented status of the common
/// paths, few enough for the whole test to stay within a few minutes.
const MAX_EXAMPLES: &str = "12";

/// The venv's `schemathesis` (beside `TOLLGATE_TEST_PYTHON`).
fn schemathesis() -> anyhow::Result<PathBuf> {
    let python = std::env::var("TOLLGATE_TEST_PYTHON")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../.venv/bin/python").to_owned());
    let bin = PathBuf::from(python).with_file_name("schemathesis");
    anyhow::ensure!(
        bin.exists(),
        "{} is missing: scripts/test installs it (tg_ensure_schemathesis)",
        bin.display()
    );
    Ok(bin)
}

/// One schemathesis run over the operations tagged `tag` of the document at `base`, with
/// `headers`; its output on failure.
fn run(base: &str, tag: &str, headers: &[String], checks: &str) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("tg-schemathesis-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir)?;
    let mut cmd = Command::new(schemathesis()?);
    cmd.current_dir(&dir)
        .env("NO_COLOR", "1")
        .arg("run")
        .arg(format!("{base}/openapi.json"))
        .args(["--url", base])
        .args(["--include-tag", tag])
        .args(["--checks", checks])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--max-examples", MAX_EXAMPLES])
        .args(["--workers", "1"])
        .args(["--seed", "20261203"])
        .args(["--generation-database", "none"])
        .args(["--generation-with-security-parameters", "false"])
        .args(["--request-timeout", "10"])
        .arg("--no-color");
    for h in headers {
        cmd.args(["--header", h]);
    }
    let started = Instant::now();
    let out = cmd.output()?;
    let _ = std::fs::remove_dir_all(&dir);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "schemathesis {base} [{tag}]: {:?}, {}",
        started.elapsed(),
        text.lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_default()
    );
    anyhow::ensure!(
        out.status.success(),
        "schemathesis against {base} [{tag}] failed:\n{text}"
    );
    Ok(())
}

#[tokio::test]
async fn both_processes_answer_what_their_openapi_documents_say() -> anyhow::Result<()> {
    let started = Instant::now();
    let cp_env = [(
        "TOLLGATE_STRIPE_WEBHOOK_SECRETS",
        STRIPE_WEBHOOK_SECRET.to_owned(),
    )];
    let mut stack = Stack::start(&cp_env, &[]).await?;
    let edge_env = [("TOLLGATE_EDGE_SERVICE_TOKENS", SERVICE_TOKEN.to_owned())];
    if let Err(e) = stack.start_edge_with("contract-edge", &edge_env).await {
        return stack.finish(Err(e)).await;
    }
    let result = walk(&stack).await;
    eprintln!("the contract test took {:?}", started.elapsed());
    stack.finish(result).await
}

async fn walk(stack: &Stack) -> anyhow::Result<()> {
    // Real tokens, and something behind them: a paying customer, a billing_admin agent.
    let customer = stack.sign_up("contract@example.com").await?;
    stack.buy(&customer, "pro").await?;
    let (status, created) = stack
        .admin_json(
            "/admin/v1/agents",
            json!({ "email": "contract@support.example", "role": "billing_admin" }),
        )
        .await?;
    anyhow::ensure!(status == 201, "agent: {status} {created}");
    let agent = created["token"].as_str().unwrap_or_default().to_owned();
    let bearer = |t: &str| format!("Authorization: Bearer {t}");

    let cp = stack.cp_url.clone();
    let edge = stack.edge_url().to_owned();
    let runs: Vec<(String, &str, Vec<String>)> = vec![
        (cp.clone(), "ops", vec![]),
        (cp.clone(), "dashboard", vec![bearer(&customer.token)]),
        (cp.clone(), "panel", vec![bearer(&agent)]),
        (
            cp.clone(),
            "admin",
            vec![bearer(ADMIN_TOKEN), "Tollgate-Actor: schemathesis".into()],
        ),
        (cp.clone(), "internal", vec![bearer(EDGE_TOKEN)]),
        (cp.clone(), "webhooks", vec![]),
        (edge.clone(), "checks", vec![bearer(SERVICE_TOKEN)]),
        (edge.clone(), "ofrep", vec![bearer(SERVICE_TOKEN)]),
        (edge.clone(), "usage", vec![bearer(SERVICE_TOKEN)]),
        (edge.clone(), "operator", vec![bearer(OPERATOR_TOKEN)]),
        (edge.clone(), "ops", vec![]),
        // Last: it moves the development clock.
        (cp, "dev", vec![]),
    ];
    let mut failed = Vec::new();
    for (base, tag, headers) in &runs {
        let checks = if *tag == "webhooks" {
            WEBHOOK_CHECKS
        } else {
            ALL_CHECKS
        };
        // Blocking, on purpose: the processes under test are children, not tasks.
        if let Err(e) = run(base, tag, headers, checks) {
            failed.push(e.to_string());
        }
    }
    anyhow::ensure!(failed.is_empty(), "{}", failed.join("\n\n"));
    Ok(())
}

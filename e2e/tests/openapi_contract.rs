//! The OpenAPI contracts against the real binaries: schemathesis (installed into `.venv` by
//! `scripts/test`, `tg_ensure_schemathesis`) reads each process's `GET /openapi.json` and sends
//! what it generates from it — valid and invalid — to every operation, with real tokens: a
//! customer's (who has bought `pro`), a `billing_admin` agent's, the admin token, the edge
//! token, and the edge's service and operator tokens. Every answer must be no 5xx, a status
//! the document lists for the operation, of the content type it lists, and of its schema.
//!
//! One schemathesis run per token kind (selected by tag); the development routes last, since
//! they move the clock. Bounded: few examples per operation, no stateful phase.
//! `TOLLGATE_SCHEMATHESIS_VERBOSE=1` prints every run's whole report (warnings included);
//! `TOLLGATE_SCHEMATHESIS_REPORT_DIR=<dir>` keeps every request and answer (HAR files);
//! `TOLLGATE_SCHEMATHESIS_SEED` and `TOLLGATE_SCHEMATHESIS_MAX_EXAMPLES` widen the search.

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
const MAX_EXAMPLES: &str = "60";
/// A fixed seed: a run is reproducible (`TOLLGATE_SCHEMATHESIS_SEED` tries others).
const SEED: &str = "20261203";

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

/// Real ids for the path parameters of the operations whose path matches a regex, so that
/// generated requests reach the handlers past their 404s: (path regex, parameter, value).
type Known = [(&'static str, &'static str, String)];

/// One schemathesis run over the operations tagged `tag` of the document at `base`, with
/// `headers` and the `known` ids; its output on failure.
fn run(
    base: &str,
    tag: &str,
    headers: &[String],
    checks: &str,
    known: &Known,
) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("tg-schemathesis-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir)?;
    // schemathesis reads `schemathesis.toml` from its working directory.
    let mut config = String::new();
    for (path, param, value) in known {
        config.push_str(&format!(
            "[[operations]]\ninclude-path-regex = '{path}'\nparameters = {{ \"{param}\" = \"{value}\" }}\n\n"
        ));
    }
    std::fs::write(dir.join("schemathesis.toml"), config)?;
    let mut cmd = Command::new(schemathesis()?);
    cmd.current_dir(&dir)
        .env("NO_COLOR", "1")
        .arg("run")
        .arg(format!("{base}/openapi.json"))
        .args(["--url", base])
        .args(["--include-tag", tag])
        .args(["--checks", checks])
        .args(["--phases", "examples,coverage,fuzzing"])
        .arg("--max-examples")
        .arg(std::env::var("TOLLGATE_SCHEMATHESIS_MAX_EXAMPLES").unwrap_or(MAX_EXAMPLES.into()))
        // One worker: with two, hypothesis on the venv's CPython 3.11 sometimes fails inside
        // `ast.parse` ("AST constructor recursion depth mismatch"), a runtime error of the
        // tool, not of the API. The runs take seconds either way.
        .args(["--workers", "1"])
        .arg("--seed")
        .arg(std::env::var("TOLLGATE_SCHEMATHESIS_SEED").unwrap_or(SEED.into()))
        .args(["--generation-database", "none"])
        .args(["--generation-with-security-parameters", "false"])
        .args(["--request-timeout", "10"])
        .arg("--no-color");
    if let Some(reports) = std::env::var_os("TOLLGATE_SCHEMATHESIS_REPORT_DIR") {
        let port = base.rsplit(':').next().unwrap_or_default();
        let har = PathBuf::from(reports).join(format!("{tag}-{port}.har.json"));
        cmd.args(["--report", "har", "--report-har-path"]).arg(har);
    }
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
    if std::env::var_os("TOLLGATE_SCHEMATHESIS_VERBOSE").is_some() {
        eprintln!("{text}");
    }
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
    let subscription = stack.buy(&customer, "pro").await?;
    let first_id =
        |v: serde_json::Value| v["data"][0]["id"].as_str().unwrap_or_default().to_owned();
    let token = Some(customer.token.as_str());
    let (_, methods) = stack
        .cp(
            reqwest::Method::GET,
            "/v1/payment-methods",
            token,
            None,
            None,
        )
        .await?;
    let payment_method = first_id(methods);
    let account = customer.account.clone();
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
    let dashboard = vec![
        (
            r"^/v1/subscriptions/\{id\}",
            "path.id",
            subscription.clone(),
        ),
        (r"^/v1/payment-methods/\{id\}", "path.id", payment_method),
    ];
    let panel = vec![
        (r"^/panel/v1/accounts/\{id\}", "path.id", account.clone()),
        (r"^/panel/v1/subscriptions/\{id\}", "path.id", subscription),
    ];
    let panel_web = vec![(r"^/panel/accounts/\{id\}", "path.id", account.clone())];
    let internal = vec![(r"^/internal/v1/accounts/\{id\}", "path.id", account.clone())];
    let checks = vec![
        (r"^/v1/accounts/\{id\}", "path.id", account.clone()),
        (r"^/v1/check$", "query.account", account),
    ];
    let runs: Vec<(String, &str, Vec<String>, Vec<_>)> = vec![
        (cp.clone(), "ops", vec![], vec![]),
        (
            cp.clone(),
            "dashboard",
            vec![bearer(&customer.token)],
            dashboard,
        ),
        (cp.clone(), "panel", vec![bearer(&agent)], panel),
        // The web page, logged in as the same agent (its session cookie).
        (
            cp.clone(),
            "panel-web",
            vec![format!("Cookie: tg_agent={agent}")],
            panel_web,
        ),
        (
            cp.clone(),
            "admin",
            vec![bearer(ADMIN_TOKEN), "Tollgate-Actor: schemathesis".into()],
            vec![],
        ),
        (cp.clone(), "internal", vec![bearer(EDGE_TOKEN)], internal),
        (cp.clone(), "webhooks", vec![], vec![]),
        (edge.clone(), "checks", vec![bearer(SERVICE_TOKEN)], checks),
        (edge.clone(), "ofrep", vec![bearer(SERVICE_TOKEN)], vec![]),
        (edge.clone(), "usage", vec![bearer(SERVICE_TOKEN)], vec![]),
        (
            edge.clone(),
            "operator",
            vec![bearer(OPERATOR_TOKEN)],
            vec![],
        ),
        (edge.clone(), "ops", vec![], vec![]),
        // Last: it moves the development clock.
        (cp, "dev", vec![], vec![]),
    ];
    let mut failed = Vec::new();
    for (base, tag, headers, known) in &runs {
        let checks = if *tag == "webhooks" {
            WEBHOOK_CHECKS
        } else {
            ALL_CHECKS
        };
        // Blocking, on purpose: the processes under test are children, not tasks.
        if let Err(e) = run(base, tag, headers, checks, known) {
            failed.push(e.to_string());
        }
    }
    anyhow::ensure!(failed.is_empty(), "{}", failed.join("\n\n"));
    Ok(())
}

//! Poison in an edge's usage log — what an older edge accepted before quantities and keys had
//! bounds (an i64::MAX quantity, a 200-byte meter key, a record that does not decode) — and
//! usage the control plane refuses (an account it does not know) never stop metering: the
//! other accounts' usage keeps flowing into billing_prod through SIGKILLs and restarts, and
//! the poison sits in the edge's dead-letter file, where an operator can see it.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde_json::{Value, json};
use tollgate_e2e::{OPERATOR_TOKEN, Stack};
use tollgate_protocol::AccountId;
use tollgate_protocol::usage::UsageEvent;

#[tokio::test]
async fn a_poisoned_log_and_refused_events_are_dead_lettered_while_billing_goes_on()
-> anyhow::Result<()> {
    let mut stack = Stack::start(&[], &["poison-edge"]).await?;
    let result = walk(&mut stack).await;
    stack.finish(result).await
}

fn event(id: &str, account: AccountId, meter: &str, quantity: i64) -> UsageEvent {
    UsageEvent {
        id: id.into(),
        account,
        meter: meter.into(),
        quantity,
        timestamp_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64),
        properties: BTreeMap::new(),
    }
}

async fn post(stack: &Stack, events: Value) -> anyhow::Result<(u16, Value)> {
    let resp = stack
        .http
        .post(format!("{}/v1/usage", stack.edge_url()))
        .json(&events)
        .send()
        .await?;
    let status = resp.status().as_u16();
    Ok((status, resp.json().await.unwrap_or(Value::Null)))
}

async fn walk(stack: &mut Stack) -> anyhow::Result<()> {
    let ada = stack.sign_up("ada@example.com").await?;
    let bob = stack.sign_up("bob@example.com").await?;
    let ada_id: AccountId = ada.account.parse()?;
    // The edge goes down; an older version of it had written this to its log.
    stack.kill_edge(0);
    {
        let (mut log, _) = tollgate_edge::usage_log::UsageLog::open(
            &stack.edge_data_dir(0).join("usage"),
            tollgate_edge::usage_log::LogOptions::default(),
        )?;
        let mut payloads = vec![
            postcard::to_allocvec(&event("old-1", ada_id, "api_calls", 2))?,
            postcard::to_allocvec(&event("old-huge-1", ada_id, "api_calls", i64::MAX))?,
            postcard::to_allocvec(&event("old-huge-2", ada_id, "api_calls", i64::MAX))?,
            postcard::to_allocvec(&event("old-long", ada_id, &"m".repeat(200), 1))?,
            b"\xde\xad not a usage event".to_vec(),
            postcard::to_allocvec(&event("old-2", ada_id, "api_calls", 3))?,
        ];
        payloads.shrink_to_fit();
        let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        log.append(&refs)?;
        log.sync()?;
    }
    stack.restart_edge(0).await?;

    // Usage flows on for Ada and Bob, mixed with usage for an account that does not exist,
    // through two more crashes of the edge.
    let ghost = AccountId::new_v7().to_string();
    let mut acked: HashSet<String> = ["old-1".to_owned(), "old-2".to_owned()].into();
    let mut ghosts = 0;
    for round in 0..3 {
        for n in 0..20 {
            let (status, v) = post(
                stack,
                json!([
                    {"id": format!("a-{round}-{n}"), "account": ada.account, "meter": "api_calls", "quantity": 1},
                    {"id": format!("b-{round}-{n}"), "account": bob.account, "meter": "api_calls", "quantity": 1},
                    {"id": format!("g-{round}-{n}"), "account": ghost, "meter": "api_calls", "quantity": 1},
                ]),
            )
            .await?;
            anyhow::ensure!(status == 202, "usage: {status} {v}");
            acked.insert(format!("a-{round}-{n}"));
            acked.insert(format!("b-{round}-{n}"));
            ghosts += 1;
        }
        if round < 2 {
            stack.crash_and_restart_edge(0).await?;
        }
    }

    // Every acknowledged event of the real accounts reaches billing, once.
    let db = sqlx::PgPool::connect(&stack.billing_db_url()).await?;
    let stored: HashSet<String> = tollgate_e2e::poll(
        "every acknowledged event in billing_prod",
        Duration::from_secs(60),
        || async {
            let rows: Vec<(String,)> = sqlx::query_as("SELECT event_id FROM usage_events")
                .fetch_all(&db)
                .await
                .ok()?;
            let stored: HashSet<String> = rows.into_iter().map(|(id,)| id).collect();
            acked.iter().all(|id| stored.contains(id)).then_some(stored)
        },
    )
    .await?;
    anyhow::ensure!(
        stored == acked,
        "stored {} events, acknowledged {}",
        stored.len(),
        acked.len()
    );
    let (ada_value,): (i64,) = sqlx::query_as(
        "SELECT value FROM usage_aggregates WHERE account_id = $1::uuid AND meter = 'api_calls'",
    )
    .bind(&ada.account)
    .fetch_one(&db)
    .await?;
    anyhow::ensure!(ada_value == 2 + 3 + 60, "Ada's aggregate {ada_value}");

    // The poison is in the dead-letter file, each with its reason, and only there.
    let dead: Vec<Value> = tollgate_e2e::poll(
        "the poison dead-lettered",
        Duration::from_secs(60),
        || async {
            let v: Value = stack
                .http
                .get(format!("{}/v1/dead-letter?limit=1000", stack.edge_url()))
                .bearer_auth(OPERATOR_TOKEN)
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            let entries = v["entries"].as_array()?.clone();
            (entries.len() == 4 + ghosts).then_some(entries)
        },
    )
    .await?;
    let code_of = |id: &str| {
        dead.iter()
            .find(|d| d["event"]["id"] == id)
            .and_then(|d| d["code"].as_str())
            .map(str::to_owned)
    };
    anyhow::ensure!(code_of("old-huge-1").as_deref() == Some("invalid_quantity"));
    anyhow::ensure!(code_of("old-huge-2").as_deref() == Some("invalid_quantity"));
    anyhow::ensure!(code_of("old-long").as_deref() == Some("invalid_meter"));
    anyhow::ensure!(dead.iter().any(|d| d["code"] == "undecodable_record"));
    anyhow::ensure!(
        dead.iter()
            .filter(|d| d["code"] == "unknown_account")
            .count()
            == ghosts,
        "every event of the unknown account is set aside"
    );
    let file = std::fs::read_to_string(stack.edge_data_dir(0).join("usage-dead-letter.jsonl"))?;
    anyhow::ensure!(
        file.lines().count() == 4 + ghosts,
        "the file beside the log holds them: {} lines",
        file.lines().count()
    );
    // The edge says so, and nothing is stuck behind them.
    let status: Value = stack
        .http
        .get(format!("{}/v1/status", stack.edge_url()))
        .send()
        .await?
        .json()
        .await?;
    anyhow::ensure!(
        status["usage"]["dead_letter"]["events"] == 4 + ghosts,
        "{status}"
    );
    anyhow::ensure!(status["usage"]["pending_events"] == 0, "{status}");
    eprintln!(
        "{} events billed, {} dead-lettered",
        stored.len(),
        dead.len()
    );
    Ok(())
}

//! Usage is money: an edge ingesting a steady stream of usage is SIGKILLed at twenty moments
//! while the control plane is also killed and restarted now and then. Every event the edge
//! answered 202 for ends up in billing_prod exactly once; no event it refused is there.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tollgate_e2e::Stack;

const ROUNDS: usize = 20;

/// What the sender learnt about each event id.
#[derive(Default)]
struct Ledger {
    /// Answered 202 and listed as accepted.
    acked: HashSet<String>,
    /// Explicitly refused (invalid, or a whole request refused with a problem answer).
    refused: HashSet<String>,
    /// Sent, but the connection died before an answer: may or may not be stored.
    unknown: HashSet<String>,
}

/// A small deterministic generator (xorshift64*), so a failing run can be replayed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

async fn send_forever(
    http: reqwest::Client,
    edge: String,
    account: String,
    ledger: Arc<Mutex<Ledger>>,
    acked: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) {
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let mut batch: Vec<Value> = (0..5)
            .map(|i| json!({"id": format!("ok-{n}-{i}"), "account": account, "meter": "api_calls", "quantity": 1}))
            .collect();
        batch.push(json!({"id": format!("bad-{n}"), "account": account, "meter": "no_such_meter", "quantity": 1}));
        let ids: Vec<String> = batch
            .iter()
            .map(|e| e["id"].as_str().unwrap_or_default().to_owned())
            .collect();
        n += 1;
        let sent = http
            .post(format!("{edge}/v1/usage"))
            .json(&batch)
            .send()
            .await;
        let answer = match sent {
            Ok(resp) => {
                let status = resp.status().as_u16();
                resp.json::<Value>().await.map(|v| (status, v)).ok()
            }
            Err(_) => None,
        };
        let down = answer.is_none();
        {
            let mut l = ledger.lock().expect("ledger");
            match answer {
                Some((202, v)) => {
                    for a in v["accepted"].as_array().into_iter().flatten() {
                        if let Some(i) = a["index"].as_u64() {
                            l.acked.insert(ids[i as usize].clone());
                            acked.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    for r in v["rejected"].as_array().into_iter().flatten() {
                        if let Some(i) = r["index"].as_u64() {
                            l.refused.insert(ids[i as usize].clone());
                        }
                    }
                }
                // A problem answer refuses the whole request.
                Some((_, _)) => l.refused.extend(ids),
                // The edge died mid-request (or was down): the outcome is unknown.
                None => l.unknown.extend(ids),
            }
        }
        if down {
            // Pacing while the edge is down, not synchronisation.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

#[tokio::test]
async fn sigkilled_edges_and_a_restarted_control_plane_lose_and_duplicate_no_usage()
-> anyhow::Result<()> {
    let mut stack = Stack::start(&[], &["crash-edge"]).await?;
    let result = walk(&mut stack).await;
    stack.finish(result).await
}

async fn walk(stack: &mut Stack) -> anyhow::Result<()> {
    let customer = stack.sign_up("meter@example.com").await?;
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let acked = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sender = tokio::spawn(send_forever(
        reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()?,
        stack.edge_url().to_owned(),
        customer.account.clone(),
        ledger.clone(),
        acked.clone(),
        stop.clone(),
    ));
    let seed = 0x7011_6a7e_u64;
    let mut rng = Rng(seed);
    for round in 0..ROUNDS {
        // Kill after a random number of further acknowledged events: mid-stream, with
        // requests in flight.
        let target = acked.load(Ordering::SeqCst) + 1 + rng.below(60) as usize;
        tollgate_e2e::poll("usage acknowledged", Duration::from_secs(60), || async {
            (acked.load(Ordering::SeqCst) >= target).then_some(())
        })
        .await?;
        if round % 4 == 3 {
            stack.crash_and_restart_cp().await?;
        }
        stack.crash_and_restart_edge(0).await?;
    }
    stop.store(true, Ordering::SeqCst);
    sender.await?;

    let (acked_ids, refused_ids, unknown_ids) = {
        let l = ledger.lock().expect("ledger");
        (l.acked.clone(), l.refused.clone(), l.unknown.clone())
    };
    let unknown = unknown_ids.len();
    anyhow::ensure!(
        acked_ids.len() >= ROUNDS,
        "too little usage was acknowledged"
    );
    let db = sqlx::PgPool::connect(&stack.billing_db_url()).await?;
    // The edge flushes what it holds once the control plane answers: wait until every
    // acknowledged event is there.
    let stored: HashMap<String, i64> = tollgate_e2e::poll(
        "every acknowledged event in billing_prod",
        Duration::from_secs(60),
        || async {
            let rows: Vec<(String, i64)> =
                sqlx::query_as("SELECT event_id, count(*) FROM usage_events GROUP BY event_id")
                    .fetch_all(&db)
                    .await
                    .ok()?;
            let stored: HashMap<String, i64> = rows.into_iter().collect();
            acked_ids
                .iter()
                .all(|id| stored.contains_key(id))
                .then_some(stored)
        },
    )
    .await?;
    for id in &acked_ids {
        anyhow::ensure!(
            stored[id] == 1,
            "acknowledged event {id} stored {} times",
            stored[id]
        );
    }
    for id in &refused_ids {
        anyhow::ensure!(!stored.contains_key(id), "refused event {id} was stored");
    }
    // Stored but never acknowledged: each must be one whose answer was lost with a killed edge.
    let extra: Vec<&String> = stored
        .keys()
        .filter(|id| !acked_ids.contains(*id))
        .collect();
    for id in &extra {
        anyhow::ensure!(
            unknown_ids.contains(*id),
            "{id} was stored without being acknowledged or left unanswered"
        );
    }
    let extra = extra.len();
    let (value,): (i64,) = sqlx::query_as(
        "SELECT COALESCE(sum(value), 0)::bigint FROM usage_aggregates WHERE meter = 'api_calls'",
    )
    .fetch_one(&db)
    .await?;
    anyhow::ensure!(
        value == stored.len() as i64,
        "aggregate {value} ≠ {} stored events",
        stored.len()
    );
    eprintln!(
        "seed {seed:#x}: {} acknowledged, {} refused, {unknown} unanswered, {} stored ({extra} of the unanswered)",
        acked_ids.len(),
        refused_ids.len(),
        stored.len()
    );
    Ok(())
}

//! `tollgate-bench propagation`: how long a subscription change committed in the control plane
//! takes to change the edge's answer, over 1,000 changes, with the real binaries (release
//! build), PostgreSQL and Redis.
//!
//! ```text
//! cargo build --release --workspace --bins
//! cargo run --release -p tollgate-bench -- propagation [--changes 1000]
//! ```
//!
//! Each account signs up and gets a card (not timed); then its checkout of `pro` (edge flips
//! `sso` to allowed) and its immediate cancel (edge flips back to denied) are the measured
//! changes, one at a time. For each change: `t0` just before the request is sent, `t1` when its
//! response arrives (the change is committed by then), `t2` the first edge answer that differs,
//! polled back to back over one keep-alive connection. `t2 − t1` is a lower bound of the
//! commit-to-answer time and `t2 − t0` an upper bound; the edge's own histogram (commit
//! timestamp in the change event → applied) is reported next to them.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use reqwest::Method;
use serde_json::{Value, json};
use tollgate_e2e::{Customer, Stack};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}

/// Polls the edge until `sso` is `allowed` for `account`; returns when it first was.
async fn until_edge(
    http: &reqwest::Client,
    edge: &str,
    account: &str,
    allowed: bool,
) -> anyhow::Result<Instant> {
    let url = format!("{edge}/v1/check?account={account}&feature=sso");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v: Value = http.get(&url).send().await?.json().await?;
        if v["allowed"].as_bool() == Some(allowed) {
            return Ok(Instant::now());
        }
        ensure!(
            Instant::now() < deadline,
            "edge never answered allowed={allowed}: {v}"
        );
    }
}

struct Sample {
    upper: Duration,
    lower: Duration,
}

async fn change(
    stack: &Stack,
    customer: &Customer,
    path: &str,
    body: Value,
    key: Option<&str>,
    allowed_after: bool,
) -> anyhow::Result<(Sample, Value)> {
    let t0 = Instant::now();
    let (status, resp) = stack
        .cp(Method::POST, path, Some(&customer.token), key, Some(body))
        .await?;
    let t1 = Instant::now();
    ensure!((200..300).contains(&status), "{path}: {status} {resp}");
    let t2 = until_edge(
        &stack.http,
        stack.edge_url(),
        &customer.account,
        allowed_after,
    )
    .await?;
    let sample = Sample {
        upper: t2 - t0,
        lower: t2.saturating_duration_since(t1),
    };
    Ok((sample, resp))
}

/// The edge's `propagation_milliseconds` histogram buckets as (le, cumulative count).
async fn edge_histogram(stack: &Stack) -> anyhow::Result<Vec<(String, u64)>> {
    let text = stack
        .http
        .get(format!("{}/metrics", stack.edge_url()))
        .send()
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .filter_map(|l| l.strip_prefix("tollgate_edge_propagation_milliseconds_bucket{le=\""))
        .filter_map(|l| {
            let (le, rest) = l.split_once("\"}")?;
            Some((le.to_owned(), rest.trim().parse().ok()?))
        })
        .collect())
}

async fn measure(
    stack: &Stack,
    changes: usize,
) -> anyhow::Result<(Vec<Sample>, Vec<(String, u64)>)> {
    let mut samples = Vec::with_capacity(changes);
    let run = uuid::Uuid::new_v4().simple().to_string();
    for n in 0..changes.div_ceil(2) {
        let customer = stack.sign_up(&format!("prop-{n}@example.com")).await?;
        let (status, body) = stack
            .cp(
                Method::POST,
                "/v1/payment-methods",
                Some(&customer.token),
                Some(&format!("pm-{run}-{n}")),
                Some(json!({ "payment_method": "pm_card_visa" })),
            )
            .await?;
        ensure!(status == 201, "card: {status} {body}");
        // The edge holds the account (as it would for a customer using the product).
        until_edge(&stack.http, stack.edge_url(), &customer.account, false).await?;
        let buy = json!({ "plan": "pro" });
        let key = format!("buy-{run}-{n}");
        let (sample, bought) =
            change(stack, &customer, "/v1/checkout", buy, Some(&key), true).await?;
        samples.push(sample);
        if samples.len() == changes {
            break;
        }
        let sub = bought["subscription"]["id"]
            .as_str()
            .context("subscription id")?
            .to_owned();
        let cancel = json!({ "at_period_end": false });
        let path = format!("/v1/subscriptions/{sub}/cancel");
        samples.push(
            change(stack, &customer, &path, cancel, None, false)
                .await?
                .0,
        );
        if n % 50 == 49 {
            eprintln!("{} changes measured", samples.len());
        }
    }
    Ok((samples, edge_histogram(stack).await?))
}

pub fn run(args: &[String], out_path: &str) -> anyhow::Result<()> {
    let mut changes = 1_000usize;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--changes" => changes = it.next().context("--changes N")?.parse()?,
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    ensure!(changes >= 2, "--changes must be at least 2");
    tollgate_bench::use_release_binaries()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let (samples, histogram) = runtime.block_on(async {
        let stack = Stack::start(&[], &["bench-edge"]).await?;
        let r = measure(&stack, changes).await;
        stack.finish(r).await
    })?;
    let mut upper: Vec<Duration> = samples.iter().map(|s| s.upper).collect();
    let mut lower: Vec<Duration> = samples.iter().map(|s| s.lower).collect();
    upper.sort();
    lower.sort();
    let row = |name: &str, v: &[Duration]| {
        format!(
            "| {name} | {} | {} | {} | {} |\n",
            ms(percentile(v, 0.5)),
            ms(percentile(v, 0.99)),
            ms(percentile(v, 0.999)),
            ms(v[v.len() - 1])
        )
    };
    let mut hist = String::new();
    for (le, count) in &histogram {
        let _ = writeln!(hist, "| ≤ {le} ms | {count} |");
    }
    let report = format!(
        "# Propagation: subscription change → edge answers differently\n\n\
         Command: `cargo build --release --workspace --bins && cargo run --release -p tollgate-bench -- propagation --changes {changes}`\n\n\
         Real control plane and edge (release), PostgreSQL and Redis on this machine; {changes} changes, \
         alternately a checkout of `pro` (edge must allow `sso`) and an immediate cancel (edge must deny), \
         one at a time, each on an account the edge already holds. The edge is polled back to back \
         over one keep-alive connection, which competes for the same 2 cores.\n\n\
         | measured from | p50 ms | p99 ms | p99.9 ms | max ms |\n|---|---:|---:|---:|---:|\n{}{}\n\
         \"response\" starts when the control plane's answer arrived (the change was committed before it \
         answered: a lower bound); \"request\" starts before the request was sent (an upper bound).\n\n\
         The edge's own `tollgate_edge_propagation_milliseconds` histogram, cumulative, for the same run \
         (events that updated a cached account). It starts at the **publish** time the change event carries \
         (`committed_at_ms`: stamped when the control plane publishes, after the commit and the outbox relay), \
         so it leaves out commit → publish; the rows above start at the commit.\n\n\
         | bucket | events |\n|---|---:|\n{hist}",
        row("response (commit) → edge answer", &lower),
        row("request sent → edge answer", &upper),
    );
    std::fs::write(out_path, &report)?;
    println!("{report}");
    Ok(())
}

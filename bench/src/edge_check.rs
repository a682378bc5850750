//! `tollgate-bench edge-check`: the edge's cached entitlement check over HTTP against a bare
//! axum handler returning a JSON body of the same shape, both served by this process with the
//! same build profile and the same one-worker runtime, loaded by the same `wrk` with the same
//! request paths, in one run. Writes a Markdown table. The real edge it starts ([`RealEdge`])
//! and the wrk runner are shared with `edge-peers`.
//!
//! ```text
//! cargo run --release -p tollgate-bench -- edge-check [--secs 5] [--out bench/results/edge-check.md]
//! ```
//!
//! Pinning: the servers' runtime runs on CPU 1 and wrk on CPU 0 when `taskset` exists, as in
//! `../shared/BASELINES.md`.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use axum::Router;
use axum::extract::Query;
use axum::routing::get;
use serde::{Deserialize, Serialize};
use tollgate_bench::median;
use tollgate_protocol::{AccountId, Reason};

use crate::usage;

/// Accounts pre-filled in the edge cache and cycled through by wrk.
pub const ACCOUNTS: usize = 10_000;
/// Real customers of the control plane the metered checks go to.
pub const METERED_ACCOUNTS: usize = 200;
pub const CONNECTIONS: [u32; 2] = [1, 64];
/// Alternating measurement rounds per connection count.
pub const ROUNDS: usize = 3;

/// The run with the median throughput (its latencies come with it).
pub fn median_run(runs: &[WrkResult]) -> WrkResult {
    let mut v = runs.to_vec();
    v.sort_by(|a, b| a.rps.total_cmp(&b.rps));
    v[v.len() / 2].clone()
}

#[derive(Deserialize)]
struct BareQuery {
    account: String,
    feature: String,
}

#[derive(Serialize)]
struct BareResponse {
    allowed: bool,
    feature: String,
    limit: Option<i64>,
    reason: Reason,
    version: i64,
    bundle_version: u64,
    stale: bool,
}

/// The baseline: parse the same query, serialise a body of the same shape.
async fn bare(Query(q): Query<BareQuery>) -> axum::Json<BareResponse> {
    axum::Json(BareResponse {
        allowed: !q.account.is_empty(),
        feature: q.feature,
        limit: Some(10),
        reason: Reason::GrantedByPlan,
        version: 3,
        bundle_version: 1,
        stale: false,
    })
}

pub async fn serve(router: Router) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok(addr)
}

#[derive(Debug, Default, Clone)]
pub struct WrkResult {
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
}

fn parse_latency_us(s: &str) -> Option<f64> {
    let s = s.trim();
    let (num, mult) = if let Some(v) = s.strip_suffix("us") {
        (v, 1.0)
    } else if let Some(v) = s.strip_suffix("ms") {
        (v, 1_000.0)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1_000_000.0)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|n| n * mult)
}

fn parse_wrk(out: &str) -> anyhow::Result<WrkResult> {
    let mut r = WrkResult::default();
    for line in out.lines() {
        let t = line.trim();
        if let Some(v) = t.strip_prefix("Requests/sec:") {
            r.rps = v.trim().parse().context("rps")?;
        } else if let Some(v) = t.strip_prefix("50%") {
            r.p50_us = parse_latency_us(v).context("p50")?;
        } else if let Some(v) = t.strip_prefix("99%") {
            r.p99_us = parse_latency_us(v).context("p99")?;
        } else if let Some(v) = t.strip_prefix("P999_US:") {
            r.p999_us = v.trim().parse().context("p99.9")?;
        }
    }
    if r.rps == 0.0 {
        bail!("could not parse wrk output:\n{out}");
    }
    if out.contains("Non-2xx") {
        bail!("wrk saw non-2xx responses:\n{out}");
    }
    Ok(r)
}

pub fn run_wrk(
    addr: SocketAddr,
    connections: u32,
    secs: u32,
    paths_file: &str,
    authorization: Option<&str>,
) -> anyhow::Result<WrkResult> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/wrk/paths.lua");
    let pinned = Command::new("taskset").arg("--version").output().is_ok();
    let mut cmd = if pinned {
        let mut c = Command::new("taskset");
        c.args(["-c", "0", "wrk"]);
        c
    } else {
        Command::new("wrk")
    };
    cmd.args([
        "-t1",
        &format!("-c{connections}"),
        &format!("-d{secs}s"),
        "--latency",
        "-s",
        script,
    ])
    .arg(format!("http://{addr}"))
    .env("WRK_PATHS", paths_file)
    .env("WRK_AUTHORIZATION", authorization.unwrap_or(""));
    let out = cmd.output().context("run wrk (apt-get install wrk)")?;
    if !out.status.success() {
        bail!("wrk failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    parse_wrk(&String::from_utf8_lossy(&out.stdout))
}

pub fn pin_self_to_cpu1() {
    let pid = std::process::id().to_string();
    let _ = Command::new("taskset")
        .args(["-a", "-p", "-c", "1", &pid])
        .output();
}

/// The real edge the HTTP harnesses load: the demo bundle, [`ACCOUNTS`] cached accounts (half
/// on `pro`, half on `free`), its usage store and flusher, and a real control plane (release
/// binary, fresh databases, pinned to CPU 0 with wrk) as its upstream, with
/// [`METERED_ACCOUNTS`] real customers on `pro` for the metered checks. Served by `runtime` (one
/// worker; the process pinned to CPU 1).
pub struct RealEdge {
    pub stack: tollgate_e2e::Stack,
    pub addr: SocketAddr,
    /// The cached accounts, then the metered customers.
    pub accounts: Vec<AccountId>,
    pub metered: Vec<String>,
    shutdown: tokio::sync::watch::Sender<bool>,
    scratch: std::path::PathBuf,
}

/// The account the `i`-th request path goes to, and its feature (the features cycled): the
/// metered quarter goes to real customers of the control plane, so the check reads their usage
/// and spends this edge's lease of their quota.
pub fn path_target(edge: &RealEdge, i: usize) -> (String, &'static str) {
    let feature = FEATURES[i % FEATURES.len()];
    let account = if feature == "api_calls" {
        edge.metered[i % edge.metered.len()].clone()
    } else {
        edge.accounts[i % edge.accounts.len()].to_string()
    };
    (account, feature)
}

/// The features the paths cycle through.
pub const FEATURES: [&str; 4] = ["sso", "seats", "api_calls", "exports"];

impl RealEdge {
    /// The one-worker runtime serving it, this process pinned to CPU 1, the control plane's
    /// release binary, and the edge started on that runtime. Call first thing (it sets the
    /// binaries' directory before any thread starts).
    pub fn start_pinned(name: &str) -> anyhow::Result<(tokio::runtime::Runtime, Self)> {
        tollgate_bench::use_release_binaries()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        pin_self_to_cpu1();
        let edge = Self::start(&runtime, name)?;
        Ok((runtime, edge))
    }

    fn start(runtime: &tokio::runtime::Runtime, name: &str) -> anyhow::Result<Self> {
        let accounts: Vec<AccountId> = (0..ACCOUNTS)
            .map(|_| AccountId(uuid::Uuid::now_v7()))
            .collect();
        let (stack, metered) = runtime.block_on(async {
            let stack = tollgate_e2e::Stack::start(&[], &[]).await?;
            let mut metered = Vec::new();
            for i in 0..METERED_ACCOUNTS {
                let c = stack
                    .sign_up(&format!("bench-metered-{i}@example.com"))
                    .await?;
                stack.buy(&c, "pro").await?;
                metered.push(c.account);
            }
            anyhow::Ok((stack, metered))
        })?;
        // The control plane shares CPU 0 with wrk, away from the edge on CPU 1.
        let _ = Command::new("taskset")
            .args(["-a", "-p", "-c", "0", &stack.cp.pid().to_string()])
            .output();
        let scratch = usage::scratch(name)?;
        let (shutdown, shutdown_rx) = tokio::sync::watch::channel(false);
        let addr = runtime.block_on(async {
            let upstream = tollgate_edge::upstream::Upstream::new(
                &stack.cp_url,
                secrecy::SecretString::from(tollgate_e2e::EDGE_TOKEN.to_owned()),
                Duration::from_secs(2),
                tollgate_edge::upstream::L2::default(),
            )?;
            let state = tollgate_bench::edge_state_on(upstream, &accounts, 2 * ACCOUNTS as u64)?;
            // The edge's own usage store and flusher, as `tollgate-edge` opens them.
            let usage = state.open_usage(&tollgate_edge::usage::UsageOptions::in_data_dir(
                &scratch,
                256 << 20,
                64 << 20,
            ))?;
            tokio::spawn(tollgate_edge::usage::flush_loop(
                state.clone(),
                usage,
                Duration::from_millis(1_000),
                shutdown_rx,
            ));
            serve(tollgate_edge::app(state)).await
        })?;
        Ok(Self {
            stack,
            addr,
            accounts,
            metered,
            shutdown,
            scratch,
        })
    }

    pub fn stop(self, runtime: &tokio::runtime::Runtime) {
        let _ = self.shutdown.send(true);
        runtime.block_on(self.stack.shutdown());
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

/// Writes `lines` (one request each: a path, or `METHOD\tPATH[\tBODY]`) to a file for
/// `wrk/paths.lua` and returns its path.
pub fn requests_file(name: &str, lines: impl Iterator<Item = String>) -> anyhow::Result<String> {
    let path = std::env::temp_dir().join(format!("tollgate-bench-{name}.txt"));
    let mut text = String::new();
    for l in lines {
        let _ = writeln!(text, "{l}");
    }
    std::fs::write(&path, text)?;
    Ok(path.display().to_string())
}

pub fn run(args: &[String], out_path: &str) -> anyhow::Result<()> {
    let mut secs = 5u32;
    let mut out_path = out_path.to_owned();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--secs" => secs = it.next().context("--secs N")?.parse()?,
            "--out" => out_path = it.next().context("--out FILE")?.clone(),
            other => bail!("unknown argument {other}"),
        }
    }
    // The real control plane (release binary) answers the edge's fills, usage reads and leases.
    let (runtime, edge) = RealEdge::start_pinned("edge-check")?;
    let paths_file = requests_file(
        "paths",
        (0..ACCOUNTS).map(|i| {
            let (account, feature) = path_target(&edge, i);
            format!("/v1/check?account={account}&feature={feature}")
        }),
    )?;
    let edge_addr = edge.addr;
    let bare_addr = runtime.block_on(serve(Router::new().route("/v1/check", get(bare))))?;

    let mut table = String::new();
    let _ = writeln!(
        table,
        "| connections | bare axum req/s (median) | edge check req/s (median) | ratio, median (per round) | bare p50 / p99 / p99.9 (µs) | edge p50 / p99 / p99.9 (µs) |"
    );
    let _ = writeln!(table, "|---:|---:|---:|---:|---:|---:|");
    for c in CONNECTIONS {
        // Warm both, then alternate bare/edge ROUNDS times and report medians, so drift on
        // this shared VM hits both sides alike.
        run_wrk(bare_addr, c, 1, &paths_file, None)?;
        run_wrk(edge_addr, c, 1, &paths_file, None)?;
        let mut bare_runs = Vec::new();
        let mut edge_runs = Vec::new();
        for _ in 0..ROUNDS {
            bare_runs.push(run_wrk(bare_addr, c, secs, &paths_file, None)?);
            edge_runs.push(run_wrk(edge_addr, c, secs, &paths_file, None)?);
        }
        let ratios: Vec<f64> = bare_runs
            .iter()
            .zip(&edge_runs)
            .map(|(b, e)| e.rps / b.rps)
            .collect();
        let (b, e) = (median_run(&bare_runs), median_run(&edge_runs));
        let _ = writeln!(
            table,
            "| {c} | {:.0} | {:.0} | {:.2} ({}) | {:.0} / {:.0} / {:.0} | {:.0} / {:.0} / {:.0} |",
            b.rps,
            e.rps,
            median(&ratios),
            ratios
                .iter()
                .map(|r| format!("{r:.2}"))
                .collect::<Vec<_>>()
                .join(", "),
            b.p50_us,
            b.p99_us,
            b.p999_us,
            e.p50_us,
            e.p99_us,
            e.p999_us
        );
        eprintln!(
            "c={c}: bare {:.0} req/s, edge {:.0} req/s, ratios {ratios:?}",
            b.rps, e.rps
        );
    }
    edge.stop(&runtime);
    let report = format!(
        "# Edge check vs bare axum handler\n\nCommand: `cargo build --release --workspace --bins && cargo run --release -p tollgate-bench -- edge-check --secs {secs}`\n\n\
         Both servers in one process on a one-worker tokio runtime pinned to CPU 1; `wrk -t1` pinned to CPU 0; \
         {ACCOUNTS} paths cycled through, features mixed (`sso`, `seats`, `api_calls`, `exports`). The edge is the real one: \
         the demo bundle, a cache of {ACCOUNTS} accounts, its usage store (log on this disk, flusher) and a real control plane \
         (release binary, fresh PostgreSQL databases, pinned to CPU 0 with wrk) as its upstream. The metered quarter of the \
         requests (`api_calls`) goes to {METERED_ACCOUNTS} real customers on `pro`: each check reads the account's usage \
         (refreshed from the control plane when older than 5 s) and spends this edge's lease of the quota (a lease \
         transaction at the control plane per 100 units), as in production. The bare handler parses the same query and \
         returns a JSON body of the same shape. Release profile for both. \
         {ROUNDS} alternating rounds of {secs} s per side and connection count; medians reported.\n\n{table}"
    );
    std::fs::write(&out_path, &report)?;
    println!("{report}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_output_is_parsed() {
        let out = "  Latency Distribution\n     50%  512.00us\n     75%  1.00ms\n     90%  1.50ms\n     99%    2.10ms\n  1000 requests in 1.00s\nRequests/sec:  98765.43\nP999_US: 4100\n";
        let r = parse_wrk(out).expect("parse");
        assert_eq!(
            (r.rps, r.p50_us, r.p99_us, r.p999_us),
            (98765.43, 512.0, 2100.0, 4100.0)
        );
        assert!(parse_wrk("Requests/sec: 5\nNon-2xx or 3xx responses: 3\n").is_err());
    }
}

//! `tollgate-bench edge-peers`: the edge against Unleash Edge, the peer a user would run
//! instead, answering the same users the same four features in the same run, same `wrk`, same
//! pinning (each server alone on CPU 1 with one worker thread, wrk on CPU 0).
//!
//! Unleash Edge runs in `offline` mode from `peers/unleash/features.json` (the demo catalog's
//! four features as Unleash strategies: `sso` and `exports` on for the `pro` users, `seats` and
//! `api_calls` a variant carrying the plan's limit), the `@pro` and `@free` placeholders filled
//! with the same users the Tollgate edge caches as `pro` and `free`. Tollgate's side is
//! [`RealEdge`], as in `edge-check` (usage store, real control plane, the metered quarter to real
//! customers spending leases).
//!
//! ```text
//! cargo install unleash-edge@20.1.0 --locked --no-default-features
//! cargo run --release -p tollgate-bench -- edge-peers [--secs 5] [--unleash-edge PATH]
//! ```

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde_json::Value;
use tollgate_bench::median;

use crate::edge_check::{
    ACCOUNTS, CONNECTIONS, METERED_ACCOUNTS, ROUNDS, RealEdge, WrkResult, median_run, path_target,
    requests_file, run_wrk,
};

/// The Unleash Edge release measured (the last on crates.io).
pub const UNLEASH_EDGE_VERSION: &str = "20.1.0";
/// The feature definitions, with `@pro` / `@free` standing for the user lists.
const FEATURES_TEMPLATE: &str = include_str!("../peers/unleash/features.json");
const CLIENT_TOKEN: &str = "*:development.benchclient";
const FRONTEND_TOKEN: &str = "*:development.benchfrontend";

/// The bootstrap file: the template with every `["@pro"]` / `["@free"]` constraint list
/// replaced by those users.
pub fn bootstrap(pro: &[String], free: &[String]) -> anyhow::Result<Value> {
    fn fill(v: &mut Value, pro: &[String], free: &[String]) {
        match v {
            Value::Array(items) if items.len() == 1 && items[0] == "@pro" => {
                *v = Value::from(pro.to_vec());
            }
            Value::Array(items) if items.len() == 1 && items[0] == "@free" => {
                *v = Value::from(free.to_vec());
            }
            Value::Array(items) => items.iter_mut().for_each(|i| fill(i, pro, free)),
            Value::Object(map) => map.values_mut().for_each(|i| fill(i, pro, free)),
            _ => {}
        }
    }
    let mut v: Value = serde_json::from_str(FEATURES_TEMPLATE).context("features.json")?;
    fill(&mut v, pro, free);
    Ok(v)
}

/// A running `unleash-edge offline`, pinned to CPU 1, one tokio worker; killed on drop.
struct UnleashEdge {
    child: Child,
    addr: SocketAddr,
}

impl UnleashEdge {
    fn start(
        runtime: &tokio::runtime::Runtime,
        binary: &str,
        bootstrap_file: &str,
    ) -> anyhow::Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let pinned = Command::new("taskset").arg("--version").output().is_ok();
        let mut cmd = if pinned {
            let mut c = Command::new("taskset");
            c.args(["-c", "1", binary]);
            c
        } else {
            Command::new(binary)
        };
        // Its options also come from the environment (PORT, INTERFACE, ...): start from none.
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("RUST_LOG", "warn")
            .env("TOKIO_WORKER_THREADS", "1")
            .args([
                "--port",
                &port.to_string(),
                "--interface",
                "127.0.0.1",
                "offline",
                "--bootstrap-file",
                bootstrap_file,
                "--client-tokens",
                CLIENT_TOKEN,
                "--frontend-tokens",
                FRONTEND_TOKEN,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let child = cmd
            .spawn()
            .with_context(|| format!("start {binary} (cargo install unleash-edge@{UNLEASH_EDGE_VERSION} --locked --no-default-features)"))?;
        let mut edge = Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = edge.child.try_wait()? {
                bail!("unleash-edge exited: {status}");
            }
            if get_json(runtime, edge.addr, "/internal-backstage/health", None)
                .is_ok_and(|(status, _)| status == 200)
            {
                return Ok(edge);
            }
            ensure!(
                Instant::now() < deadline,
                "unleash-edge never became healthy"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for UnleashEdge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A GET and its JSON body (`Null` when it has none): the harness's own checks of what each
/// server answers, outside the measurement.
fn get_json(
    runtime: &tokio::runtime::Runtime,
    addr: SocketAddr,
    path: &str,
    authorization: Option<&str>,
) -> anyhow::Result<(u16, Value)> {
    runtime.block_on(async {
        let mut req = reqwest::Client::new()
            .get(format!("http://{addr}{path}"))
            .timeout(Duration::from_secs(5));
        if let Some(a) = authorization {
            req = req.header(reqwest::header::AUTHORIZATION, a);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await?;
        Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
    })
}

/// What Unleash Edge answered for a user (`/api/frontend/all`): feature → (enabled, the
/// variant's payload).
fn unleash_answers(v: &Value) -> anyhow::Result<Vec<(String, bool, Option<String>)>> {
    let mut out = Vec::new();
    for t in v["toggles"].as_array().context("toggles")? {
        out.push((
            t["name"].as_str().unwrap_or_default().to_owned(),
            t["enabled"].as_bool().unwrap_or(false),
            t["variant"]["payload"]["value"].as_str().map(str::to_owned),
        ));
    }
    out.sort();
    Ok(out)
}

/// Tollgate's `GET /v1/accounts/{id}/entitlements` body as [`unleash_answers`] reads Unleash:
/// feature → (allowed, the limit of a limit or metered feature).
fn tollgate_answers(v: &Value) -> anyhow::Result<Vec<(String, bool, Option<String>)>> {
    let mut out = Vec::new();
    for f in v["features"].as_array().context("features")? {
        let limit = match f["kind"].as_str() {
            Some("bool") => None,
            _ => f["limit"].as_i64().map(|l| l.to_string()),
        };
        out.push((
            f["feature"].as_str().unwrap_or_default().to_owned(),
            f["allowed"].as_bool().unwrap_or(false),
            limit,
        ));
    }
    out.sort();
    Ok(out)
}

struct Side {
    label: &'static str,
    addr: SocketAddr,
    requests: String,
    authorization: Option<&'static str>,
}

pub fn run(args: &[String], out_path: &str) -> anyhow::Result<()> {
    let mut secs = 5u32;
    let mut binary = std::env::var("UNLEASH_EDGE").unwrap_or_else(|_| "unleash-edge".into());
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--secs" => secs = it.next().context("--secs N")?.parse()?,
            "--unleash-edge" => binary = it.next().context("--unleash-edge PATH")?.clone(),
            other => bail!("unknown argument {other}"),
        }
    }
    let (runtime, edge) = RealEdge::start_pinned("edge-peers")?;

    // The same users on both: `tollgate_bench::edge_state_on` caches even accounts on `pro`,
    // odd ones on `free`; the metered customers are on `pro`.
    let mut pro: Vec<String> = edge
        .accounts
        .iter()
        .step_by(2)
        .map(ToString::to_string)
        .collect();
    pro.extend(edge.metered.iter().cloned());
    let free: Vec<String> = edge
        .accounts
        .iter()
        .skip(1)
        .step_by(2)
        .map(ToString::to_string)
        .collect();
    let scratch = std::env::temp_dir().join("tollgate-bench-unleash.json");
    std::fs::write(&scratch, serde_json::to_vec(&bootstrap(&pro, &free)?)?)?;
    let unleash = UnleashEdge::start(&runtime, &binary, &scratch.display().to_string())?;

    // Both answer the same: a `pro` and a `free` user's four features.
    for (user, plan) in [(&pro[0], "pro"), (&free[0], "free")] {
        let (status, body) = get_json(
            &runtime,
            unleash.addr,
            &format!("/api/frontend/all?userId={user}"),
            Some(FRONTEND_TOKEN),
        )?;
        ensure!(status == 200, "unleash /api/frontend/all: {status} {body}");
        let answers = unleash_answers(&body)?;
        let expected: Vec<(String, bool, Option<String>)> = if plan == "pro" {
            vec![
                ("api_calls".into(), true, Some("100000".into())),
                ("exports".into(), true, None),
                ("seats".into(), true, Some("10".into())),
                ("sso".into(), true, None),
            ]
        } else {
            vec![
                ("api_calls".into(), true, Some("1000".into())),
                ("exports".into(), false, None),
                ("seats".into(), true, Some("1".into())),
                ("sso".into(), false, None),
            ]
        };
        ensure!(
            answers == expected,
            "unleash-edge answers {plan} user {user} with {answers:?}"
        );
        let (status, body) = get_json(
            &runtime,
            edge.addr,
            &format!("/v1/accounts/{user}/entitlements"),
            None,
        )?;
        ensure!(status == 200, "tollgate entitlements: {status} {body}");
        let tollgate = tollgate_answers(&body)?;
        ensure!(
            tollgate == answers,
            "the servers answer {plan} user {user} differently: tollgate {tollgate:?}, unleash {answers:?}"
        );
    }

    let lines = |f: &dyn Fn(String, &str) -> String| {
        (0..ACCOUNTS)
            .map(|i| {
                let (account, feature) = path_target(&edge, i);
                f(account, feature)
            })
            .collect::<Vec<_>>()
    };
    let file = |name: &str, f: &dyn Fn(String, &str) -> String| {
        requests_file(&format!("peers-{name}"), lines(f).into_iter())
    };
    // Every answer with all four features holds the metered one, whose usage and lease the
    // edge asks of the control plane: those go to the real customers (the other cached
    // accounts exist only in the edge's cache, which no real edge would hold).
    let customers = |name: &str, f: &dyn Fn(&str) -> String| {
        requests_file(
            &format!("peers-{name}"),
            (0..ACCOUNTS).map(|i| f(&edge.metered[i % edge.metered.len()])),
        )
    };
    let ofrep = |a: &str| format!(r#"{{"context":{{"targetingKey":"{a}"}}}}"#);
    let single = [
        Side {
            label: "Unleash Edge `GET /api/frontend/features/{name}?userId=`",
            addr: unleash.addr,
            requests: file("unleash-single", &|a, f| {
                format!("/api/frontend/features/{f}?userId={a}")
            })?,
            authorization: Some(FRONTEND_TOKEN),
        },
        Side {
            label: "Tollgate `GET /v1/check?account=&feature=`",
            addr: edge.addr,
            requests: file("check", &|a, f| {
                format!("/v1/check?account={a}&feature={f}")
            })?,
            authorization: None,
        },
        Side {
            label: "Tollgate OFREP `POST /ofrep/v1/evaluate/flags/{key}`",
            addr: edge.addr,
            requests: file("ofrep-single", &|a, f| {
                format!("POST\t/ofrep/v1/evaluate/flags/{f}\t{}", ofrep(&a))
            })?,
            authorization: None,
        },
    ];
    let all = [
        Side {
            label: "Unleash Edge `GET /api/frontend?userId=`",
            addr: unleash.addr,
            requests: customers("unleash-all", &|a| format!("/api/frontend?userId={a}"))?,
            authorization: Some(FRONTEND_TOKEN),
        },
        Side {
            label: "Tollgate `GET /v1/accounts/{id}/entitlements`",
            addr: edge.addr,
            requests: customers("entitlements", &|a| {
                format!("/v1/accounts/{a}/entitlements")
            })?,
            authorization: None,
        },
        Side {
            label: "Tollgate OFREP bulk `POST /ofrep/v1/evaluate/flags`",
            addr: edge.addr,
            requests: customers("ofrep-bulk", &|a| {
                format!("POST\t/ofrep/v1/evaluate/flags\t{}", ofrep(a))
            })?,
            authorization: None,
        },
    ];

    let mut table = String::new();
    let _ = writeln!(
        table,
        "| question | server and endpoint | connections | req/s (median) | vs Unleash Edge (per round) | p50 / p99 / p99.9 (µs) |"
    );
    let _ = writeln!(table, "|---|---|---:|---:|---:|---:|");
    for (question, sides) in [("one feature", &single), ("all four features", &all)] {
        for c in CONNECTIONS {
            for s in sides.iter() {
                run_wrk(s.addr, c, 1, &s.requests, s.authorization)?;
            }
            // Alternate the sides ROUNDS times so drift on this shared VM hits all alike.
            let mut runs: Vec<Vec<WrkResult>> = vec![Vec::new(); sides.len()];
            for _ in 0..ROUNDS {
                for (k, s) in sides.iter().enumerate() {
                    runs[k].push(run_wrk(s.addr, c, secs, &s.requests, s.authorization)?);
                }
            }
            for (k, s) in sides.iter().enumerate() {
                let ratios: Vec<f64> = runs[k]
                    .iter()
                    .zip(&runs[0])
                    .map(|(r, u)| r.rps / u.rps)
                    .collect();
                let m = median_run(&runs[k]);
                let vs = if k == 0 {
                    "1.00 (baseline)".to_owned()
                } else {
                    format!(
                        "{:.2} ({})",
                        median(&ratios),
                        ratios
                            .iter()
                            .map(|r| format!("{r:.2}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                };
                let _ = writeln!(
                    table,
                    "| {question} | {} | {c} | {:.0} | {vs} | {:.0} / {:.0} / {:.0} |",
                    s.label, m.rps, m.p50_us, m.p99_us, m.p999_us
                );
                eprintln!("{question} c={c} {}: {:.0} req/s", s.label, m.rps);
            }
        }
    }
    drop(unleash);
    let _ = std::fs::remove_file(&scratch);
    edge.stop(&runtime);
    let report = format!(
        "# Edge checks vs Unleash Edge\n\n\
         Command: `cargo install unleash-edge@{UNLEASH_EDGE_VERSION} --locked --no-default-features && cargo build --release --workspace --bins && cargo run --release -p tollgate-bench -- edge-peers --secs {secs}`\n\n\
         The same {ACCOUNTS} users on both servers (half `pro`, half `free`, the metered quarter of the requests to \
         real `pro` customers), cycled through with the four features mixed (`sso`, `seats`, `api_calls`, `exports`); \
         the all-four questions go to the {METERED_ACCOUNTS} real `pro` customers on both (each such answer holds the metered \
         feature, whose usage and lease Tollgate asks of the control plane, which knows only real customers). \
         Unleash Edge {UNLEASH_EDGE_VERSION} (crates.io, release, `offline` mode, `TOKIO_WORKER_THREADS=1`) is pinned to \
         CPU 1 and serves its frontend API from `bench/peers/unleash/features.json` (the four features as Unleash \
         strategies with `userId IN` constraints and limit variants; the `@pro` / `@free` lists filled with the same \
         users); both servers were first checked to answer a `pro` and a `free` user alike. Tollgate's edge is the one \
         of `edge-check`: this process, one-worker runtime pinned to CPU 1, the demo bundle, {ACCOUNTS} cached accounts, \
         its usage store, and a real control plane as upstream — its metered checks read usage and spend leases, \
         which Unleash has no equivalent of. `wrk -t1` pinned to CPU 0 drives both. \
         {ROUNDS} alternating rounds of {secs} s per endpoint and connection count; medians reported, \
         each ratio against Unleash Edge's run of the same round.\n\n{table}"
    );
    std::fs::write(out_path, &report)?;
    println!("{report}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bootstrap_fills_every_user_list_and_keeps_the_rest() {
        let pro = vec!["p1".to_owned(), "p2".to_owned()];
        let free = vec!["f1".to_owned()];
        let v = bootstrap(&pro, &free).unwrap();
        let features = v["features"].as_array().unwrap();
        let names: Vec<_> = features
            .iter()
            .map(|f| f["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["sso", "exports", "seats", "api_calls"]);
        let seats = &features[2]["strategies"];
        assert_eq!(
            seats[0]["constraints"][0]["values"],
            serde_json::json!(["p1", "p2"])
        );
        assert_eq!(
            seats[1]["constraints"][0]["values"],
            serde_json::json!(["f1"])
        );
        assert_eq!(seats[1]["variants"][0]["payload"]["value"], "1");
        assert!(!v.to_string().contains('@'));
    }
}

//! Harness for end-to-end tests: real binaries (`target/debug/tollgate-*`, built by
//! `scripts/test` before the tests run), fresh databases on the real PostgreSQL, the real Redis
//! (or the test Redis Cluster `scripts/test` starts: [`Stack::start_on_cluster`], [`ClusterNode`]).
//!
//! Processes are killed when their [`Proc`] drops, databases dropped by [`Stack::shutdown`].

pub mod browser;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;
use sqlx::{Connection, PgConnection};
use tollgate_rules::bundle::{self, SigningKey};
use tollgate_rules::compiler;
use tollgate_rules::lang::SourceFile;

pub const EDGE_TOKEN: &str = "e2e-edge-token";

pub fn pg_server_url() -> String {
    let url = std::env::var("TOLLGATE_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    url.trim_end_matches('/').to_owned()
}

pub fn redis_url() -> String {
    std::env::var("TOLLGATE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The nodes of the test Redis Cluster (`TOLLGATE_TEST_REDIS_CLUSTER_URLS`, comma-separated,
/// exported by `scripts/test` after `tg_ensure_redis_cluster` started it).
pub fn redis_cluster_urls() -> anyhow::Result<Vec<String>> {
    let list = std::env::var("TOLLGATE_TEST_REDIS_CLUSTER_URLS").map_err(|_| {
        anyhow::anyhow!(
            "TOLLGATE_TEST_REDIS_CLUSTER_URLS must list the test Redis Cluster's nodes: run scripts/test (it starts one on 127.0.0.1:7001-7003)"
        )
    })?;
    Ok(list
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .collect())
}

/// Where cargo put the binaries: `TOLLGATE_BIN_DIR` when set (the benchmarks point it at
/// `target/release`), else the dev profile's directory.
pub fn bin(name: &str) -> anyhow::Result<PathBuf> {
    let dir = match std::env::var("TOLLGATE_BIN_DIR") {
        Ok(dir) => PathBuf::from(dir),
        Err(_) => std::env::var("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
            .join("debug"),
    };
    let path = dir.join(name);
    if !path.exists() {
        bail!(
            "{} is missing: build it first (`cargo build --workspace --bins`, as scripts/test does)",
            path.display()
        );
    }
    Ok(path)
}

/// A free loopback port (bound and released; the child binds it right after).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A child process killed on drop; its log goes to a file under the target dir.
pub struct Proc {
    pub name: String,
    child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, binary: &str, env: &[(&str, String)]) -> anyhow::Result<Proc> {
        let log_dir = std::env::temp_dir().join("tollgate-e2e-logs");
        std::fs::create_dir_all(&log_dir)?;
        let log = log_dir.join(format!("{name}-{}.log", uuid::Uuid::new_v4().simple()));
        let out = std::fs::File::create(&log)?;
        let mut cmd = Command::new(bin(binary)?);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().with_context(|| format!("spawn {binary}"))?;
        Ok(Proc {
            name: name.to_owned(),
            child,
            log,
        })
    }

    /// The child's process id (e.g. to pin it to a CPU).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Kills the process (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private `redis-server` on a loopback port, killed on drop: for tests that stop and restart
/// Redis without disturbing the shared one.
pub struct PrivateRedis {
    pub port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    pub fn start() -> anyhow::Result<PrivateRedis> {
        let mut r = Self::not_started()?;
        r.restart()?;
        Ok(r)
    }

    /// A free port nothing listens on yet: Redis "down" until [`Self::restart`].
    pub fn not_started() -> anyhow::Result<PrivateRedis> {
        Ok(PrivateRedis {
            port: free_port()?,
            child: None,
        })
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// (Re)starts the server on the same port, empty (no persistence, like a replaced node).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawn redis-server")?;
        self.child = Some(child);
        let addr = format!("127.0.0.1:{}", self.port);
        let start = Instant::now();
        while std::net::TcpStream::connect(&addr).is_err() {
            anyhow::ensure!(
                start.elapsed() < Duration::from_secs(10),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A node of the test Redis Cluster (started by `scripts/test` from its `redis.conf`, with an
/// append-only file): found by the slots it serves, killed and started again from the same
/// config file (same port, data directory and cluster identity), as a crashed node restarts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterNode {
    /// `127.0.0.1:7001`.
    pub addr: String,
    /// Slot ranges it serves, inclusive.
    pub slots: Vec<(u16, u16)>,
}

/// A plain (not cluster) connection to one node.
async fn node_conn(addr: &str) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(format!("redis://{addr}"))?;
    Ok(client.get_multiplexed_async_connection().await?)
}

impl ClusterNode {
    /// The cluster's masters and their slots, as `CLUSTER NODES` on the first node of `urls`
    /// that answers reports them.
    pub async fn masters(urls: &[String]) -> anyhow::Result<Vec<ClusterNode>> {
        let mut last = None;
        for url in urls {
            let addr = url.trim_start_matches("redis://").trim_end_matches('/');
            let text: anyhow::Result<String> = async {
                let mut c = node_conn(addr).await?;
                Ok(redis::cmd("CLUSTER")
                    .arg("NODES")
                    .query_async(&mut c)
                    .await?)
            }
            .await;
            match text {
                Ok(text) => return Ok(Self::parse_nodes(&text)),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no cluster node given")))
    }

    fn parse_nodes(text: &str) -> Vec<ClusterNode> {
        text.lines()
            .filter_map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                if f.len() < 8 || !f[2].contains("master") {
                    return None;
                }
                let addr = f[1].split('@').next()?.to_owned();
                let slots = f[8..]
                    .iter()
                    .filter(|r| !r.starts_with('['))
                    .filter_map(|r| match r.split_once('-') {
                        Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                        None => r.parse().ok().map(|a| (a, a)),
                    })
                    .collect();
                Some(ClusterNode { addr, slots })
            })
            .collect()
    }

    /// Whether this node serves `slot`.
    pub fn serves(&self, slot: u16) -> bool {
        self.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot))
    }

    /// The hash slot of `key` (`CLUSTER KEYSLOT`, asked of this node).
    pub async fn slot_of(&self, key: &str) -> anyhow::Result<u16> {
        let mut c = node_conn(&self.addr).await?;
        Ok(redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query_async(&mut c)
            .await?)
    }

    /// The node's pid and the config file it was started from (`INFO server`).
    async fn process(&self) -> anyhow::Result<(u32, String)> {
        let mut c = node_conn(&self.addr).await?;
        let info: String = redis::cmd("INFO").arg("server").query_async(&mut c).await?;
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(|v| v.trim().to_owned())
        };
        let pid = field("process_id")
            .and_then(|p| p.parse().ok())
            .context("INFO server: process_id")?;
        let config = field("config_file").filter(|c| !c.is_empty()).context(
            "the node was started without a config file: start the cluster with scripts/test",
        )?;
        Ok((pid, config))
    }

    /// SIGKILLs the node (a crash) and waits until its port refuses; returns the config file
    /// to [`ClusterNode::start`] it again from.
    pub async fn kill(&self) -> anyhow::Result<String> {
        let (pid, config) = self.process().await?;
        let status = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .context("kill")?;
        anyhow::ensure!(status.success(), "kill -KILL {pid} failed");
        let addr = self.addr.clone();
        poll("the node to be down", Duration::from_secs(10), || async {
            std::net::TcpStream::connect(&addr).is_err().then_some(())
        })
        .await?;
        Ok(config)
    }

    /// Starts the node from `config` (it daemonizes) and waits until it answers and the
    /// cluster is `ok` again from its side.
    pub async fn start(&self, config: &str) -> anyhow::Result<()> {
        let status = Command::new("redis-server")
            .arg(config)
            .stdin(Stdio::null())
            .status()
            .context("spawn redis-server")?;
        anyhow::ensure!(status.success(), "redis-server {config} failed: {status}");
        let addr = self.addr.clone();
        poll(
            "the node back, cluster_state:ok",
            Duration::from_secs(30),
            || async {
                let mut c = node_conn(&addr).await.ok()?;
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query_async(&mut c)
                    .await
                    .ok()?;
                info.contains("cluster_state:ok").then_some(())
            },
        )
        .await
    }
}

/// Polls `f` until it yields `Some`, or fails after `deadline`.
pub async fn poll<T, F, Fut>(what: &str, deadline: Duration, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    let mut delay = Duration::from_millis(2);
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if start.elapsed() > deadline {
            bail!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(50));
    }
}

pub const ADMIN_TOKEN: &str = "e2e-admin-token";
/// The edges' operator token (their dead-letter API).
pub const OPERATOR_TOKEN: &str = "e2e-operator-token-0001";
pub const KEY_ID: &str = "e2e";

/// The demo rules shipped in the repository.
pub fn demo_source() -> String {
    tollgate_rules::DEMO_SOURCE.to_owned()
}

/// Compiles `source` and signs it as bundle `version` with `key`.
pub fn signed_bundle(source: &str, version: u64, key: &SigningKey) -> anyhow::Result<Vec<u8>> {
    let file = SourceFile {
        name: "rules.tg".into(),
        text: source.to_owned(),
    };
    let compiled = compiler::compile(&file).map_err(|d| {
        anyhow::anyhow!(
            "{}",
            d.iter()
                .map(|d| d.render(&file))
                .collect::<Vec<_>>()
                .join("\n")
        )
    })?;
    let unsigned = bundle::build(&compiled, source, version, 0)?;
    Ok(unsigned.sign(key))
}

/// `key_id:hex` of a key, the form TOLLGATE_TRUSTED_KEYS takes.
pub fn trusted_entry(key: &SigningKey) -> String {
    let file = key.public().to_file_string();
    let parts: Vec<&str> = file.split_whitespace().collect();
    format!(
        "{}:{}",
        parts.get(1).copied().unwrap_or_default(),
        parts.get(2).copied().unwrap_or_default()
    )
}

/// A signed-up customer of a test stack.
#[derive(Debug, Clone)]
pub struct Customer {
    pub account: String,
    pub token: String,
}

/// A control plane and its edges on fresh databases.
pub struct Stack {
    pub cp_url: String,
    pub http: reqwest::Client,
    pub cp: Proc,
    /// The control plane's environment, to restart it as it was.
    cp_env: Vec<(&'static str, String)>,
    pub edges: Vec<Edge>,
    pub key: SigningKey,
    /// Where the control plane and the edges find Redis (`TOLLGATE_REDIS_URL`, or
    /// `TOLLGATE_REDIS_CLUSTER_URLS` and `TOLLGATE_REDIS_STREAM_SHARDS`).
    redis_env: Vec<(&'static str, String)>,
    tag: String,
    dbs: Vec<String>,
}

/// One running edge.
pub struct Edge {
    pub id: String,
    pub url: String,
    pub proc: Proc,
    /// Environment beyond the stack's defaults (kept for restarts).
    env: Vec<(&'static str, String)>,
}

impl Stack {
    /// Starts the control plane (with `cp_env` added, e.g. Stripe), deploys and promotes the
    /// demo rules as bundle 1, then starts one edge per id.
    pub async fn start(
        cp_env: &[(&'static str, String)],
        edge_ids: &[&str],
    ) -> anyhow::Result<Stack> {
        Self::start_with_redis(cp_env, edge_ids, redis_url()).await
    }

    /// [`Stack::start`] against a given Redis.
    pub async fn start_with_redis(
        cp_env: &[(&'static str, String)],
        edge_ids: &[&str],
        redis: String,
    ) -> anyhow::Result<Stack> {
        Self::start_on(cp_env, edge_ids, vec![("TOLLGATE_REDIS_URL", redis)]).await
    }

    /// [`Stack::start`] against a Redis Cluster of these nodes, the change stream split into
    /// `shards`.
    pub async fn start_on_cluster(
        cp_env: &[(&'static str, String)],
        edge_ids: &[&str],
        nodes: &[String],
        shards: u16,
    ) -> anyhow::Result<Stack> {
        let env = vec![
            ("TOLLGATE_REDIS_CLUSTER_URLS", nodes.join(",")),
            ("TOLLGATE_REDIS_STREAM_SHARDS", shards.to_string()),
        ];
        Self::start_on(cp_env, edge_ids, env).await
    }

    /// [`Stack::start`] with this Redis environment for the control plane and the edges.
    async fn start_on(
        cp_env: &[(&'static str, String)],
        edge_ids: &[&str],
        redis_env: Vec<(&'static str, String)>,
    ) -> anyhow::Result<Stack> {
        let server = pg_server_url();
        let mut admin = PgConnection::connect(&format!("{server}/postgres"))
            .await
            .context("postgres")?;
        let tag = uuid::Uuid::new_v4().simple().to_string();
        let dbs = vec![format!("tg_e2e_cf_{tag}"), format!("tg_e2e_billing_{tag}")];
        for db in &dbs {
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
                .execute(&mut admin)
                .await?;
        }
        let key = SigningKey::generate(KEY_ID);
        let cp_port = free_port()?;
        let cp_url = format!("http://127.0.0.1:{cp_port}");
        let mut env = vec![
            ("TOLLGATE_CP_LISTEN_ADDR", format!("127.0.0.1:{cp_port}")),
            ("TOLLGATE_CF_DATABASE_URL", format!("{server}/{}", dbs[0])),
            (
                "TOLLGATE_BILLING_DATABASE_URL",
                format!("{server}/{}", dbs[1]),
            ),
            // Streams and L2 keys of this stack's own: stacks and tests share one Redis.
            ("TOLLGATE_REDIS_KEY_PREFIX", format!("tg-e2e-{tag}")),
            ("TOLLGATE_EDGE_TOKEN", EDGE_TOKEN.to_owned()),
            ("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN.to_owned()),
            ("TOLLGATE_TRUSTED_KEYS", trusted_entry(&key)),
            ("TOLLGATE_TOKEN_SECRET", format!("e2e-secret-{tag}")),
            ("TOLLGATE_DEV_MODE", "true".to_owned()),
            ("TOLLGATE_RELAY_POLL_MS", "200".to_owned()),
        ];
        env.extend(redis_env.iter().cloned());
        env.extend(cp_env.iter().cloned());
        let cp = Proc::spawn("control-plane", "tollgate-control-plane", &env)?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        let mut stack = Stack {
            cp_url,
            http,
            cp,
            cp_env: env,
            edges: Vec::new(),
            key,
            redis_env,
            tag,
            dbs,
        };
        let setup = async {
            stack
                .await_ready(&stack.cp_url.clone(), "control plane")
                .await?;
            let bytes = signed_bundle(&demo_source(), 1, &stack.key)?;
            let (status, body) = stack
                .admin(reqwest::Method::POST, "/admin/v1/bundles", Some(bytes))
                .await?;
            anyhow::ensure!(status == 201, "upload: {status} {body}");
            let (status, body) = stack
                .admin(reqwest::Method::POST, "/admin/v1/bundles/1/promote", None)
                .await?;
            anyhow::ensure!(status == 200, "promote: {status} {body}");
            for id in edge_ids {
                stack.start_edge(id).await?;
            }
            Ok(())
        };
        if let Err(e) = setup.await {
            let logs = stack.logs();
            stack.drop_dbs().await;
            bail!("{e}\n{logs}");
        }
        Ok(stack)
    }

    /// Ends a test: on failure prints every process's recent log lines, then stops the
    /// processes and drops the databases, and hands the result back.
    pub async fn finish<T>(self, result: anyhow::Result<T>) -> anyhow::Result<T> {
        if result.is_err() {
            eprintln!("{}", self.logs());
        }
        self.shutdown().await;
        result
    }

    /// Signs up a customer (a fresh idempotency key per call).
    pub async fn sign_up(&self, email: &str) -> anyhow::Result<Customer> {
        let key = format!("signup-{}", uuid::Uuid::new_v4().simple());
        let body = serde_json::json!({ "email": email, "name": "E2E" });
        let (status, signup) = self
            .cp(
                reqwest::Method::POST,
                "/v1/accounts",
                None,
                Some(&key),
                Some(body),
            )
            .await?;
        anyhow::ensure!(status == 201, "sign-up: {status} {signup}");
        let field = |v: &Value| v.as_str().map(str::to_owned).context("sign-up answer");
        Ok(Customer {
            account: field(&signup["account"]["id"])?,
            token: field(&signup["api_token"])?,
        })
    }

    /// Cancels subscription `sub` at once (not at the period's end); fails unless it answers 200.
    pub async fn cancel_now(&self, customer: &Customer, sub: &str) -> anyhow::Result<()> {
        let (status, body) = self
            .cp(
                reqwest::Method::POST,
                &format!("/v1/subscriptions/{sub}/cancel"),
                Some(&customer.token),
                None,
                Some(serde_json::json!({"at_period_end": false})),
            )
            .await?;
        anyhow::ensure!(status == 200, "cancel {sub}: {status} {body}");
        Ok(())
    }

    /// Moves the development clock `seconds` on (every process follows; the time-driven
    /// transitions run at once); fails unless it answers 200.
    pub async fn advance_clock(&self, seconds: i64) -> anyhow::Result<()> {
        let (status, body) = self
            .cp(
                reqwest::Method::POST,
                "/dev/v1/clock/advance",
                None,
                None,
                Some(serde_json::json!({ "seconds": seconds })),
            )
            .await?;
        anyhow::ensure!(status == 200, "advance {seconds} s: {status} {body}");
        Ok(())
    }

    /// Adds the test payment method `payment_method` (`pm_card_visa`,
    /// `pm_card_chargeCustomerFail`, …) to `customer`, as the default when `make_default`;
    /// fails unless it answers 201.
    pub async fn add_card(
        &self,
        customer: &Customer,
        payment_method: &str,
        make_default: bool,
    ) -> anyhow::Result<()> {
        let (status, body) = self
            .cp(
                reqwest::Method::POST,
                "/v1/payment-methods",
                Some(&customer.token),
                Some(&format!("pm-{}", uuid::Uuid::new_v4().simple())),
                Some(serde_json::json!({
                    "payment_method": payment_method,
                    "make_default": make_default,
                })),
            )
            .await?;
        anyhow::ensure!(status == 201, "{payment_method}: {status} {body}");
        Ok(())
    }

    /// Buys `plan` with a card that needs no authentication (added on first use); returns the
    /// subscription id.
    pub async fn buy(&self, customer: &Customer, plan: &str) -> anyhow::Result<String> {
        let key = |what: &str| format!("{what}-{}", uuid::Uuid::new_v4().simple());
        let token = Some(customer.token.as_str());
        let (_, methods) = self
            .cp(
                reqwest::Method::GET,
                "/v1/payment-methods",
                token,
                None,
                None,
            )
            .await?;
        if methods["data"].as_array().is_none_or(Vec::is_empty) {
            let card = serde_json::json!({ "payment_method": "pm_card_visa" });
            let (status, body) = self
                .cp(
                    reqwest::Method::POST,
                    "/v1/payment-methods",
                    token,
                    Some(&key("pm")),
                    Some(card),
                )
                .await?;
            anyhow::ensure!(status == 201, "add card: {status} {body}");
        }
        let (status, body) = self
            .cp(
                reqwest::Method::POST,
                "/v1/checkout",
                token,
                Some(&key("buy")),
                Some(serde_json::json!({ "plan": plan })),
            )
            .await?;
        anyhow::ensure!(status == 201, "checkout {plan}: {status} {body}");
        body["subscription"]["id"]
            .as_str()
            .map(str::to_owned)
            .context("subscription id")
    }

    /// A new customer on `plan`, already granted on the first edge.
    pub async fn customer_on(
        &self,
        email: &str,
        plan: &str,
        granted_feature: &str,
    ) -> anyhow::Result<Customer> {
        let customer = self.sign_up(email).await?;
        self.buy(&customer, plan).await?;
        self.await_check(&customer.account, granted_feature, true)
            .await?;
        Ok(customer)
    }

    /// Every process's recent log lines, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = format!("--- control plane ---\n{}", self.cp.log_tail());
        for e in &self.edges {
            out.push_str(&format!("\n--- edge {} ---\n{}", e.id, e.proc.log_tail()));
        }
        out
    }

    async fn await_ready(&self, url: &str, name: &str) -> anyhow::Result<()> {
        let ready = format!("{url}/readyz");
        poll(
            &format!("{name} ready"),
            Duration::from_secs(60),
            || async {
                let r = self.http.get(&ready).send().await.ok()?;
                r.status().is_success().then_some(())
            },
        )
        .await
    }

    /// Starts another edge and waits until it has a bundle.
    pub async fn start_edge(&mut self, id: &str) -> anyhow::Result<()> {
        self.start_edge_with(id, &[]).await
    }

    /// [`Stack::start_edge`] with more environment (e.g. service tokens).
    pub async fn start_edge_with(
        &mut self,
        id: &str,
        env: &[(&'static str, String)],
    ) -> anyhow::Result<()> {
        let port = free_port()?;
        let url = format!("http://127.0.0.1:{port}");
        let proc = self.spawn_edge(id, port, env)?;
        self.edges.push(Edge {
            id: id.to_owned(),
            url: url.clone(),
            proc,
            env: env.to_vec(),
        });
        self.await_ready(&url, &format!("edge {id}")).await
    }

    /// SIGKILLs edge `i` (a crash) and starts it again on the same port and data directory;
    /// returns once it is ready.
    pub async fn crash_and_restart_edge(&mut self, i: usize) -> anyhow::Result<()> {
        self.kill_edge(i);
        self.restart_edge(i).await
    }

    /// SIGKILLs edge `i` and leaves it down.
    pub fn kill_edge(&mut self, i: usize) {
        self.edges[i].proc.kill();
    }

    /// The data directory of edge `i` (its saved bundle and facts, usage log, dead letters).
    pub fn edge_data_dir(&self, i: usize) -> PathBuf {
        self.data_dir(&self.edges[i].id)
    }

    fn data_dir(&self, id: &str) -> PathBuf {
        std::env::temp_dir().join(format!("tollgate-e2e-{}-{id}", self.tag))
    }

    /// Starts edge `i` again (after [`Stack::kill_edge`]) on its port and data directory;
    /// returns once it is ready.
    pub async fn restart_edge(&mut self, i: usize) -> anyhow::Result<()> {
        let id = self.edges[i].id.clone();
        let port: u16 = self.edges[i]
            .url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .context("edge port")?;
        let env = self.edges[i].env.clone();
        self.edges[i].proc = self.spawn_edge(&id, port, &env)?;
        let url = self.edges[i].url.clone();
        self.await_ready(&url, &format!("edge {id}")).await
    }

    /// SIGKILLs the control plane and starts it again as it was; returns once it is ready.
    pub async fn crash_and_restart_cp(&mut self) -> anyhow::Result<()> {
        self.cp.kill();
        self.cp = Proc::spawn("control-plane", "tollgate-control-plane", &self.cp_env)?;
        let url = self.cp_url.clone();
        self.await_ready(&url, "control plane").await
    }

    /// The billing_prod database of this stack.
    pub fn billing_db_url(&self) -> String {
        format!("{}/{}", pg_server_url(), self.dbs[1])
    }

    fn spawn_edge(
        &self,
        id: &str,
        port: u16,
        extra: &[(&'static str, String)],
    ) -> anyhow::Result<Proc> {
        let dir = self.data_dir(id);
        let mut env = vec![
            ("TOLLGATE_EDGE_LISTEN_ADDR", format!("127.0.0.1:{port}")),
            ("TOLLGATE_EDGE_ID", id.to_owned()),
            ("TOLLGATE_CONTROL_PLANE_URL", self.cp_url.clone()),
            ("TOLLGATE_EDGE_TOKEN", EDGE_TOKEN.to_owned()),
            ("TOLLGATE_EDGE_OPERATOR_TOKENS", OPERATOR_TOKEN.to_owned()),
            ("TOLLGATE_TRUSTED_KEYS", trusted_entry(&self.key)),
            ("TOLLGATE_EDGE_BUNDLE_POLL_MS", "200".to_owned()),
            // The shortest budget allowed: the stream's block time plus its response
            // margin, so an idle follower never turns answers stale.
            ("TOLLGATE_EDGE_FRESHNESS_BUDGET_MS", "3000".to_owned()),
            ("TOLLGATE_REDIS_KEY_PREFIX", self.redis_prefix()),
            ("TOLLGATE_EDGE_DATA_DIR", dir.display().to_string()),
            // Development stacks: the edge follows the control plane's development clock.
            ("TOLLGATE_EDGE_FOLLOW_CLOCK", "true".to_owned()),
        ];
        env.extend(self.redis_env.iter().cloned());
        env.extend(extra.iter().cloned());
        Proc::spawn(&format!("edge-{id}"), "tollgate-edge", &env)
    }

    /// The Redis key prefix of this stack (`TOLLGATE_REDIS_KEY_PREFIX`).
    pub fn redis_prefix(&self) -> String {
        format!("tg-e2e-{}", self.tag)
    }

    /// The first edge's URL.
    pub fn edge_url(&self) -> &str {
        self.edges.first().map_or("", |e| e.url.as_str())
    }

    /// Posts usage `events` (a JSON array) to the first edge; it must answer 202.
    pub async fn post_usage(&self, events: &Value) -> anyhow::Result<()> {
        let r = self
            .http
            .post(format!("{}/v1/usage", self.edge_url()))
            .json(events)
            .send()
            .await?;
        anyhow::ensure!(r.status().as_u16() == 202, "usage: {}", r.status());
        Ok(())
    }

    /// Waits until the control plane shows `value` for the customer's first meter
    /// (`GET /v1/usage`): the edge's usage reached billing_prod.
    pub async fn await_usage(&self, customer: &Customer, value: i64) -> anyhow::Result<()> {
        let token = Some(customer.token.as_str());
        poll("usage stored", Duration::from_secs(30), || async {
            let (_, u) = self
                .cp(reqwest::Method::GET, "/v1/usage", token, None, None)
                .await
                .ok()?;
            (u["meters"][0]["value"].as_i64() == Some(value)).then_some(())
        })
        .await
    }

    async fn drop_dbs(&mut self) {
        if let Ok(mut admin) = PgConnection::connect(&format!("{}/postgres", pg_server_url())).await
        {
            for db in self.dbs.drain(..) {
                let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {db} WITH (FORCE)"
                )))
                .execute(&mut admin)
                .await;
            }
        }
    }

    /// Stops the processes and drops the databases.
    pub async fn shutdown(mut self) {
        self.edges.clear();
        let _ = self.cp.child.kill();
        let _ = self.cp.child.wait();
        self.drop_dbs().await;
    }

    /// An admin API call (raw bundle bytes or nothing as the body); returns (status, body).
    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        bundle: Option<Vec<u8>>,
    ) -> anyhow::Result<(u16, Value)> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.cp_url))
            .bearer_auth(ADMIN_TOKEN)
            .header("Tollgate-Actor", "e2e");
        req = match bundle {
            Some(b) => req
                .header("content-type", "application/octet-stream")
                .body(b),
            None => req.json(&serde_json::json!({})),
        };
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        Ok((status, resp.json().await.unwrap_or(Value::Null)))
    }

    /// An admin API call with a JSON body.
    pub async fn admin_json(&self, path: &str, body: Value) -> anyhow::Result<(u16, Value)> {
        let resp = self
            .http
            .post(format!("{}{path}", self.cp_url))
            .bearer_auth(ADMIN_TOKEN)
            .header("Tollgate-Actor", "e2e")
            .json(&body)
            .send()
            .await?;
        let status = resp.status().as_u16();
        Ok((status, resp.json().await.unwrap_or(Value::Null)))
    }

    /// A JSON request to the control plane; returns (status, body).
    pub async fn cp(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        key: Option<&str>,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let mut req = self.http.request(method, format!("{}{path}", self.cp_url));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(k) = key {
            req = req.header("Idempotency-Key", k);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let body = resp.json().await.unwrap_or(Value::Null);
        Ok((status, body))
    }

    /// `GET /v1/check` on an edge.
    pub async fn check_on(
        &self,
        edge_url: &str,
        account: &str,
        feature: &str,
    ) -> anyhow::Result<Value> {
        let resp = self
            .http
            .get(format!("{edge_url}/v1/check"))
            .query(&[("account", account), ("feature", feature)])
            .send()
            .await?;
        anyhow::ensure!(
            resp.status().is_success(),
            "check answered {}",
            resp.status()
        );
        Ok(resp.json().await?)
    }

    /// `GET /v1/check` on the first edge.
    pub async fn check(&self, account: &str, feature: &str) -> anyhow::Result<Value> {
        self.check_on(self.edge_url(), account, feature).await
    }

    /// Polls an edge until `feature` is allowed / denied for `account`; returns how long it took.
    pub async fn await_check_on(
        &self,
        edge_url: &str,
        account: &str,
        feature: &str,
        allowed: bool,
    ) -> anyhow::Result<Duration> {
        let start = Instant::now();
        poll(
            &format!("{feature} allowed={allowed} on {edge_url}"),
            Duration::from_secs(20),
            || async {
                let v = self.check_on(edge_url, account, feature).await.ok()?;
                (v["allowed"].as_bool() == Some(allowed)).then_some(())
            },
        )
        .await?;
        Ok(start.elapsed())
    }

    /// Polls the first edge.
    pub async fn await_check(
        &self,
        account: &str,
        feature: &str,
        allowed: bool,
    ) -> anyhow::Result<Duration> {
        self.await_check_on(self.edge_url(), account, feature, allowed)
            .await
    }
}

//! `tollgate-bench propagation`: how long a change in the control plane — a checkout, a
//! cancel, a support agent's ban, a dunning step — takes to change the edge's answer, with the
//! real binaries (release build), PostgreSQL and Redis.
//!
//! ```text
//! cargo build --release --workspace --bins
//! cargo run --release -p tollgate-bench -- propagation [--changes 1000] [--bans 100] [--dunning 7]
//! ```
//!
//! A change made by a request is timed by the client: `t0` just before the request is sent,
//! `t1` when its response arrives (the change is committed by then), `t2` the first edge answer
//! that differs, polled back to back over one keep-alive connection; `t2 − t1` is a lower bound
//! of commit → answer and `t2 − t0` an upper bound. Every change is also timed by the processes
//! from when it was written (`ChangeEvent::changed_at_us`): the control plane's written →
//! published and the edge's written → applied histograms, read before and after each phase.
//! Dunning steps are written by the billing worker after a clock advance, so only the
//! histograms time them.

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
    change_as(
        stack,
        customer,
        &customer.account,
        path,
        body,
        key,
        allowed_after,
    )
    .await
}

/// One change made by `actor`'s request, then the edge polled until `account`'s `sso` is
/// `allowed_after`.
async fn change_as(
    stack: &Stack,
    actor: &Customer,
    account: &str,
    path: &str,
    body: Value,
    key: Option<&str>,
    allowed_after: bool,
) -> anyhow::Result<(Sample, Value)> {
    let t0 = Instant::now();
    let (status, resp) = stack
        .cp(Method::POST, path, Some(&actor.token), key, Some(body))
        .await?;
    let t1 = Instant::now();
    ensure!((200..300).contains(&status), "{path}: {status} {resp}");
    let t2 = until_edge(&stack.http, stack.edge_url(), account, allowed_after).await?;
    let sample = Sample {
        upper: t2 - t0,
        lower: t2.saturating_duration_since(t1),
    };
    Ok((sample, resp))
}

/// A cumulative Prometheus histogram: `(le, count)` per bucket, `+Inf` last.
#[derive(Clone, Default)]
struct Buckets(Vec<(f64, u64)>);

impl Buckets {
    /// `name`'s buckets in a metrics text (OpenMetrics, as both processes render it).
    fn parse(text: &str, name: &str) -> Self {
        let prefix = format!("{name}_bucket{{le=\"");
        Self(
            text.lines()
                .filter_map(|l| l.strip_prefix(prefix.as_str()))
                .filter_map(|l| {
                    let (le, rest) = l.split_once("\"}")?;
                    let le = if le == "+Inf" {
                        f64::INFINITY
                    } else {
                        le.parse().ok()?
                    };
                    Some((le, rest.trim().parse().ok()?))
                })
                .collect(),
        )
    }

    /// What was observed between `before` and `self`.
    fn since(&self, before: &Self) -> Self {
        Self(
            self.0
                .iter()
                .map(|&(le, n)| {
                    let was = before.0.iter().find(|b| b.0 == le).map_or(0, |b| b.1);
                    (le, n.saturating_sub(was))
                })
                .collect(),
        )
    }

    fn count(&self) -> u64 {
        self.0.last().map_or(0, |b| b.1)
    }

    /// The bucket bound holding quantile `p`: "≤ 2.5".
    fn quantile(&self, p: f64) -> String {
        let total = self.count();
        if total == 0 {
            return "—".to_owned();
        }
        let want = ((total as f64) * p).ceil().max(1.0) as u64;
        match self.0.iter().find(|b| b.1 >= want) {
            Some((le, _)) if le.is_finite() => format!("≤ {le}"),
            _ => "> 5000".to_owned(),
        }
    }

    /// The share observed within `ms`, as a percentage.
    fn within(&self, ms: f64) -> String {
        let total = self.count();
        let n = self.0.iter().find(|b| b.0 == ms).map_or(0, |b| b.1);
        if total == 0 {
            "—".to_owned()
        } else {
            format!("{:.1} %", 100.0 * n as f64 / total as f64)
        }
    }
}

const CP_METRIC: &str = "tollgate_cp_change_publish_milliseconds";
const EDGE_METRIC: &str = "tollgate_edge_propagation_milliseconds";

/// The control plane's change → publish and the edge's change → applied histograms, now.
async fn histograms(stack: &Stack) -> anyhow::Result<(Buckets, Buckets)> {
    let text = |url: String| async move {
        anyhow::Ok(
            stack
                .http
                .get(url)
                .send()
                .await?
                .error_for_status()?
                .text()
                .await?,
        )
    };
    let cp = text(format!("{}/metrics", stack.cp_url)).await?;
    let edge = text(format!("{}/metrics", stack.edge_url())).await?;
    Ok((
        Buckets::parse(&cp, CP_METRIC),
        Buckets::parse(&edge, EDGE_METRIC),
    ))
}

/// One kind of change, measured.
struct Phase {
    name: &'static str,
    /// Client-side bounds; empty when no request of the client makes the change.
    samples: Vec<Sample>,
    published: Buckets,
    applied: Buckets,
}

impl Phase {
    /// What the two histograms saw since `before` (taken after the phase's set-up, so only its
    /// measured changes count).
    async fn since(
        stack: &Stack,
        name: &'static str,
        samples: Vec<Sample>,
        before: (Buckets, Buckets),
    ) -> anyhow::Result<Self> {
        let (cp, edge) = histograms(stack).await?;
        let phase = Self {
            name,
            samples,
            published: cp.since(&before.0),
            applied: edge.since(&before.1),
        };
        eprintln!(
            "{name}: {} published, {} applied at the edge",
            phase.published.count(),
            phase.applied.count()
        );
        Ok(phase)
    }
}

/// A customer with a card, held by the edge (as it would be for a customer using the product).
async fn customer_with_card(stack: &Stack, email: &str) -> anyhow::Result<Customer> {
    let customer = stack.sign_up(email).await?;
    stack.add_card(&customer, "pm_card_visa", false).await?;
    until_edge(&stack.http, stack.edge_url(), &customer.account, false).await?;
    Ok(customer)
}

/// Checkouts of `pro` and immediate cancels, `changes` in all, one at a time.
async fn checkouts_and_cancels(stack: &Stack, changes: usize) -> anyhow::Result<Phase> {
    let mut customers = Vec::with_capacity(changes.div_ceil(2));
    for n in 0..changes.div_ceil(2) {
        customers.push(customer_with_card(stack, &format!("prop-{n}@example.com")).await?);
    }
    let before = histograms(stack).await?;
    let mut samples = Vec::with_capacity(changes);
    let run = uuid::Uuid::new_v4().simple().to_string();
    for (n, customer) in customers.iter().enumerate() {
        let buy = json!({ "plan": "pro" });
        let key = format!("buy-{run}-{n}");
        let (sample, bought) =
            change(stack, customer, "/v1/checkout", buy, Some(&key), true).await?;
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
        samples.push(change(stack, customer, &path, cancel, None, false).await?.0);
        if n % 50 == 49 {
            eprintln!("{} checkouts and cancels measured", samples.len());
        }
    }
    Phase::since(stack, "checkout / cancel", samples, before).await
}

/// `accounts` customers on `pro`, each banned and unbanned by a support agent through the
/// NinjaPanel (`billing_admin`, with a reason), one change at a time.
async fn bans(stack: &Stack, accounts: usize) -> anyhow::Result<Phase> {
    let (status, created) = stack
        .admin_json(
            "/admin/v1/agents",
            json!({ "email": "bench-agent@support.example", "role": "billing_admin" }),
        )
        .await?;
    ensure!(status == 201, "agent: {status} {created}");
    let agent = Customer {
        account: String::new(),
        token: created["token"].as_str().context("agent token")?.to_owned(),
    };
    let mut customers = Vec::with_capacity(accounts);
    for n in 0..accounts {
        customers.push(
            stack
                .customer_on(&format!("ban-{n}@example.com"), "pro", "sso")
                .await?,
        );
    }
    let before = histograms(stack).await?;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let mut samples = Vec::with_capacity(accounts * 2);
    for (n, customer) in customers.iter().enumerate() {
        let account = &customer.account;
        for (action, allowed_after) in [("ban", false), ("unban", true)] {
            let path = format!("/panel/v1/accounts/{account}/{action}");
            let key = format!("{action}-{run}-{n}");
            let body = json!({ "reason": "propagation benchmark" });
            let (sample, _) = change_as(
                stack,
                &agent,
                account,
                &path,
                body,
                Some(&key),
                allowed_after,
            )
            .await?;
            samples.push(sample);
        }
    }
    Phase::since(stack, "panel ban / unban", samples, before).await
}

/// The development clock's now and `customer`'s subscription's renewal time.
async fn renewal_in(stack: &Stack, customer: &Customer) -> anyhow::Result<i64> {
    let time = |v: &Value| -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
        Ok(v.as_str().context("a time")?.parse()?)
    };
    let (_, clock) = stack
        .cp(Method::GET, "/dev/v1/clock", None, None, None)
        .await?;
    let (_, subs) = stack
        .cp(
            Method::GET,
            "/v1/subscriptions",
            Some(&customer.token),
            None,
            None,
        )
        .await?;
    let end = time(&subs["data"][0]["current_period_end"])?;
    Ok((end - time(&clock["now"])?).num_seconds())
}

/// `accounts` customers on `pro`, subscribed 3 h apart on the development clock, whose
/// default card then declines. The clock is then moved to 2 h past each one's renewal
/// in turn: each move makes exactly one renewal fail and the billing worker opens its dunning
/// case (level 1, the subscription past due) — one dunning step at a time, written by the
/// worker, not by a request of this client, so only the histograms time it. Each step is
/// waited for at the control plane and then at the edge (every change published meanwhile
/// applied) before the next. The first retries are a day after each failure, so within the
/// 3 × `accounts` hours of the walk (≤ 21) no other step happens.
async fn dunning_steps(stack: &Stack, accounts: usize) -> anyhow::Result<Phase> {
    ensure!(
        (1..=7).contains(&accounts),
        "--dunning must be 1 to 7 (one step every 3 h, before the first retries a day later)"
    );
    let mut customers = Vec::with_capacity(accounts);
    for n in 0..accounts {
        let customer = stack
            .customer_on(&format!("dunning-{n}@example.com"), "pro", "sso")
            .await?;
        stack
            .add_card(&customer, "pm_card_chargeCustomerFail", true)
            .await?;
        customers.push(customer);
        stack.advance_clock(3 * 3_600).await?;
    }
    let before = histograms(stack).await?;
    let deadline = Instant::now() + Duration::from_secs(300);
    for customer in &customers {
        let (cp0, edge0) = histograms(stack).await?;
        stack
            .advance_clock(renewal_in(stack, customer).await? + 2 * 3_600)
            .await?;
        loop {
            let (_, a) = stack
                .cp(
                    Method::GET,
                    "/v1/account",
                    Some(&customer.token),
                    None,
                    None,
                )
                .await?;
            if a["dunning"]["level"].as_i64().unwrap_or(0) >= 1 {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "no dunning for {}: {a}",
                customer.account
            );
        }
        loop {
            let (cp, edge) = histograms(stack).await?;
            let published = cp.since(&cp0).count();
            if published > 0 && published == edge.since(&edge0).count() {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "the edge never applied the dunning step of {}",
                customer.account
            );
        }
    }
    Phase::since(stack, "dunning step", Vec::new(), before).await
}

pub fn run(args: &[String], out_path: &str) -> anyhow::Result<()> {
    let mut changes = 1_000usize;
    let mut bans_n = 100usize;
    let mut dunning_n = 7usize;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--changes" => changes = it.next().context("--changes N")?.parse()?,
            "--bans" => bans_n = it.next().context("--bans N")?.parse()?,
            "--dunning" => dunning_n = it.next().context("--dunning N")?.parse()?,
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    ensure!(changes >= 2, "--changes must be at least 2");
    tollgate_bench::use_release_binaries()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let phases = runtime.block_on(async {
        let stack = Stack::start(&[], &["bench-edge"]).await?;
        let r = async {
            // Dunning first: its clock advance would renew every subscription made before it.
            let dunning = dunning_steps(&stack, dunning_n).await?;
            let sub = checkouts_and_cancels(&stack, changes).await?;
            let ban = bans(&stack, bans_n).await?;
            anyhow::Ok(vec![sub, ban, dunning])
        }
        .await;
        stack.finish(r).await
    })?;
    let report = report(&phases, changes, bans_n, dunning_n);
    std::fs::write(out_path, &report)?;
    println!("{report}");
    Ok(())
}

fn report(phases: &[Phase], changes: usize, bans: usize, dunning: usize) -> String {
    let mut client = String::new();
    let mut server = String::new();
    for p in phases {
        if !p.samples.is_empty() {
            let mut upper: Vec<Duration> = p.samples.iter().map(|s| s.upper).collect();
            let mut lower: Vec<Duration> = p.samples.iter().map(|s| s.lower).collect();
            upper.sort();
            lower.sort();
            let _ = writeln!(
                client,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                p.name,
                lower.len(),
                ms(percentile(&lower, 0.5)),
                ms(percentile(&lower, 0.99)),
                ms(percentile(&lower, 0.999)),
                ms(lower[lower.len() - 1]),
                ms(percentile(&upper, 0.5)),
                ms(percentile(&upper, 0.99)),
            );
        }
        let _ = writeln!(
            server,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            p.name,
            p.applied.count(),
            p.published.quantile(0.5),
            p.published.quantile(0.99),
            p.applied.quantile(0.5),
            p.applied.quantile(0.99),
            p.applied.quantile(0.999),
            p.applied.within(5.0),
        );
    }
    format!(
        "# Propagation: a change in the control plane → the edge answers differently\n\n\
         Command: `cargo build --release --workspace --bins && cargo run --release -p tollgate-bench -- propagation --changes {changes} --bans {bans} --dunning {dunning}`\n\n\
         Real control plane and edge (release), PostgreSQL and Redis on this machine (one stream shard, as \
         `scripts/dev` runs). Three kinds of change, each on accounts the edge already holds:\n\n\
         * **checkout / cancel**: {changes} changes, alternately a checkout of `pro` (the edge must allow `sso`) \
         and an immediate cancel (deny), one at a time;\n\
         * **panel ban / unban**: {bans} customers on `pro`, each banned then unbanned by a support agent \
         through the NinjaPanel (`POST /panel/v1/accounts/{{id}}/ban`, audited with a reason), one at a time;\n\
         * **dunning step**: {dunning} customers on `pro`, subscribed 3 h apart, whose card then declines; \
         the development clock is moved past each one's renewal in turn, so each move fails exactly one renewal \
         and the billing worker opens its dunning case (level 1, past due): one step at a time, written by the \
         worker rather than by a request, so only the processes time it.\n\n\
         ## Measured by the client\n\n\
         The edge is polled back to back over one keep-alive connection (which competes for the same 2 cores). \
         \"response\" starts when the control plane's answer arrived (the change was committed before it answered: \
         a lower bound); \"request\" starts before the request was sent (an upper bound).\n\n\
         | change | n | response → edge p50 ms | p99 | p99.9 | max | request → edge p50 ms | p99 |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n{client}\n\
         ## Measured by the processes\n\n\
         Every change event carries when its change was written (`changed_at_us`: wall clock, in the change's \
         own transaction just before it commits; for a dunning step, the billing worker's write). The control \
         plane observes written → published to the stream (`tollgate_cp_change_publish_milliseconds`), the edge \
         written → applied to its cached account (`tollgate_edge_propagation_milliseconds`); both histograms \
         are read before and after each phase, and quantiles are the bucket bounds that hold them (buckets \
         0.5, 1, 1.5, 2, 2.5, 3, 4, 5, 7.5, 10, 25 … ms). They count every change of the phase.\n\n\
         | change | events applied | written → published p50 ms | p99 | written → applied p50 ms | p99 | p99.9 | applied ≤ 5 ms |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n{server}"
    )
}

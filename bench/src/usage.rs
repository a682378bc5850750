//! Usage metering benchmarks, each against its physical baseline in the same run.
//!
//! ```text
//! cargo run --release -p tollgate-bench -- usage-edge [--secs 5]
//! cargo run --release -p tollgate-bench -- usage-ingest [--batches 50]
//! ```
//!
//! * `usage-edge`: events/s one edge acknowledges durably (`POST /v1/usage` → 202 after group
//!   commit + fdatasync), 32 concurrent clients, batch sizes 1, 100 and 1000, against the same
//!   32 clients handing the same bytes per batch to one committer thread that appends every
//!   queued batch and `fdatasync`s once per group, as the edge's log does (the physical limit
//!   at that concurrency); one writer syncing after each batch is shown too.
//! * `usage-ingest`: events/s into billing_prod through the control plane's ingest (dedup
//!   table, partitioned events, incremental aggregates, one statement per 1,000-event batch)
//!   against a plain `COPY` of the same rows into the same partitioned events table.

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;
use tollgate_protocol::AccountId;
use tollgate_protocol::usage::{Aggregation, MeterPeriod, MeterSpec, UsageBatch, UsageEvent};

const BATCHES: [usize; 3] = [1, 100, 1000];
const CLIENTS: usize = 32;

pub(crate) fn arg<T: std::str::FromStr>(
    args: &[String],
    name: &str,
    default: T,
) -> anyhow::Result<T> {
    match args.iter().position(|a| a == name) {
        None => Ok(default),
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("{name} N")),
    }
}

pub(crate) fn scratch(name: &str) -> anyhow::Result<std::path::PathBuf> {
    // Under the target dir: the same disk as a real edge's data dir on this machine.
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/bench-scratch")
        .join(format!("{name}-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// One writer: append `bytes` then fdatasync, for `secs`; returns batches/s.
fn raw_fsync(bytes: usize, secs: u64) -> anyhow::Result<f64> {
    let dir = scratch("raw")?;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("log"))?;
    let buf = vec![0x5au8; bytes];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(secs) {
        file.write_all(&buf)?;
        file.sync_data()?;
        n += 1;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    std::fs::remove_dir_all(dir)?;
    Ok(rate)
}

/// `clients` threads each hand `bytes` per batch to one committer, which appends every batch
/// queued, `fdatasync`s once for the group, then acknowledges each — the edge's group commit
/// with nothing else (no HTTP, no JSON, no framing work), for `secs`. Returns (batches/s,
/// fsyncs/s).
fn raw_group_commit(bytes: usize, clients: usize, secs: u64) -> anyhow::Result<(f64, f64)> {
    use std::sync::mpsc;
    let dir = scratch("raw-group")?;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("log"))?;
    let (tx, rx) = mpsc::channel::<(Vec<u8>, mpsc::SyncSender<()>)>();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let committer = std::thread::spawn(move || -> anyhow::Result<u64> {
        let mut groups = 0u64;
        while let Ok(first) = rx.recv() {
            let mut group = vec![first];
            while let Ok(more) = rx.try_recv() {
                group.push(more);
            }
            for (buf, _) in &group {
                file.write_all(buf)?;
            }
            file.sync_data()?;
            groups += 1;
            for (_, ack) in group {
                let _ = ack.send(());
            }
        }
        Ok(groups)
    });
    let batches = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..clients)
        .map(|_| {
            let (tx, batches) = (tx.clone(), batches.clone());
            std::thread::spawn(move || {
                let (ack_tx, ack_rx) = mpsc::sync_channel(1);
                while Instant::now() < deadline {
                    if tx.send((vec![0x5au8; bytes], ack_tx.clone())).is_err() {
                        return;
                    }
                    if ack_rx.recv().is_err() {
                        return;
                    }
                    batches.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    drop(tx);
    for w in writers {
        let _ = w.join();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let groups = committer
        .join()
        .map_err(|_| anyhow::anyhow!("committer panicked"))??;
    std::fs::remove_dir_all(dir)?;
    Ok((
        batches.load(Ordering::Relaxed) as f64 / elapsed,
        groups as f64 / elapsed,
    ))
}

fn event_json(account: &str, i: u64) -> serde_json::Value {
    json!({"id": format!("bench-{i}"), "account": account, "meter": "api_calls", "quantity": 1})
}

pub fn edge(args: &[String], out_path: &str) -> anyhow::Result<()> {
    let secs: u64 = arg(args, "--secs", 5)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let account = AccountId::new_v7().to_string();
    // `--edge-only BATCH`: the edge side alone at one batch size, for a profiler.
    let edge_only: usize = arg(args, "--edge-only", 0)?;
    if edge_only > 0 {
        let (edge, groups) = runtime.block_on(edge_run(&account, edge_only, secs))?;
        println!("edge, batch {edge_only}: {edge:.0} events/s, {groups:.0} fsyncs/s");
        return Ok(());
    }
    // The bytes one stored event takes in the log, for the raw baseline.
    let sample = UsageEvent {
        id: "bench-1000000".into(),
        account: account.parse()?,
        meter: "api_calls".into(),
        quantity: 1,
        timestamp_ms: 1,
        properties: Default::default(),
    };
    let event_bytes = postcard::to_allocvec(&sample)?.len() + crate_log_header();
    let mut rows = String::new();
    for batch in BATCHES {
        let single = raw_fsync(batch * event_bytes, secs)? * batch as f64;
        let (grouped, raw_groups) = raw_group_commit(batch * event_bytes, CLIENTS, secs)?;
        let raw = grouped * batch as f64;
        let (edge, groups) = runtime.block_on(edge_run(&account, batch, secs))?;
        let _ = writeln!(
            rows,
            "| {batch} | {single:.0} | {raw:.0} | {raw_groups:.0} | {edge:.0} | {groups:.0} | {:.2} |",
            edge / raw
        );
        eprintln!("batch {batch}: raw group commit {raw:.0} events/s, edge {edge:.0} events/s");
    }
    let report = format!(
        "# Usage at the edge: durably acknowledged events/s\n\n\
         Command: `cargo run --release -p tollgate-bench -- usage-edge --secs {secs}`\n\n\
         Edge: the real router and usage log in this process (demo rules), {CLIENTS} concurrent HTTP clients on \
         loopback posting JSON batches; an event counts when its request got 202 (after group commit + \
         fdatasync). Baseline, same concurrency and grouping: the same {CLIENTS} clients (threads) hand the same \
         bytes per batch ({event_bytes} B per event, as the log frames them) to one committer that appends every \
         queued batch to a file on the same disk and calls fdatasync once per group, then acknowledges them — \
         the edge's group commit without HTTP, JSON or framing. The ratio is edge ÷ that. One writer syncing \
         after each batch is shown for reference. {secs} s per cell; the flusher has no control plane to send \
         to (it backs off), so only ingest is measured.\n\n\
         | batch size | one writer, fdatasync per batch, events/s | {CLIENTS} writers, group commit, events/s | its fsyncs/s | edge 202 events/s | edge fsyncs/s | ratio edge ÷ group commit |\n\
         |---:|---:|---:|---:|---:|---:|---:|\n{rows}"
    );
    std::fs::write(out_path, &report)?;
    println!("{report}");
    Ok(())
}

/// Framing bytes the usage log adds per record.
fn crate_log_header() -> usize {
    tollgate_edge::usage_log::RECORD_HEADER_BYTES
}

/// Runs the edge with `CLIENTS` posting `batch`-event requests for `secs`; returns (events/s,
/// fsyncs/s).
async fn edge_run(account: &str, batch: usize, secs: u64) -> anyhow::Result<(f64, f64)> {
    let dir = scratch("edge")?;
    let state = tollgate_bench::edge_state(&[], 16)?;
    let usage = state.open_usage(&tollgate_edge::usage::UsageOptions::in_data_dir(
        &dir,
        8 << 30,
        64 << 20,
    ))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, tollgate_edge::app(state)).await;
    });
    let url = format!("http://{addr}/v1/usage");
    let accepted = Arc::new(AtomicU64::new(0));
    let next_id = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let groups_before = usage.metrics.commit_groups.get();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let (url, accepted, next_id) = (url.clone(), accepted.clone(), next_id.clone());
        let account = account.to_owned();
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            while Instant::now() < deadline {
                let first = next_id.fetch_add(batch as u64, Ordering::Relaxed);
                let body: Vec<_> = (first..first + batch as u64)
                    .map(|i| event_json(&account, i))
                    .collect();
                let resp = http.post(&url).json(&body).send().await?;
                anyhow::ensure!(resp.status() == 202, "usage: {}", resp.status());
                accepted.fetch_add(batch as u64, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let groups = (usage.metrics.commit_groups.get() - groups_before) as f64 / elapsed;
    std::fs::remove_dir_all(dir)?;
    Ok((accepted.load(Ordering::Relaxed) as f64 / elapsed, groups))
}

fn meters() -> std::collections::HashMap<String, MeterSpec> {
    std::collections::HashMap::from([(
        "api_calls".to_owned(),
        MeterSpec {
            aggregation: Aggregation::Sum,
            period: MeterPeriod::Month,
            soft: false,
            lease: 100,
        },
    )])
}

pub fn ingest(args: &[String], out_path: &str) -> anyhow::Result<()> {
    let batches: usize = arg(args, "--batches", 60)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let server = tollgate_e2e::pg_server_url();
        let db = format!("tg_bench_{}", uuid::Uuid::new_v4().simple());
        let admin = sqlx::PgPool::connect(&format!("{server}/postgres")).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
            .execute(&admin)
            .await?;
        // What the server says, not what it is assumed to do.
        let settings: Vec<(String, String)> = sqlx::query_as(
            "SELECT name, setting FROM pg_settings
             WHERE name IN ('fsync', 'synchronous_commit', 'wal_sync_method') ORDER BY name",
        )
        .fetch_all(&admin)
        .await?;
        let durability = settings
            .iter()
            .map(|(k, v)| format!("`{k} = {v}`"))
            .collect::<Vec<_>>()
            .join(", ");
        let result = ingest_run(&format!("{server}/{db}"), batches).await;
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {db} WITH (FORCE)"
        )))
        .execute(&admin)
        .await;
        let rounds = result?;
        let batches = rounds.per_round * INGEST_ROUNDS;
        let events = 2 * batches * 1000;
        let median = tollgate_bench::median;
        let side = |f: fn(&(f64, f64)) -> f64| rounds.rates.iter().map(f).collect::<Vec<_>>();
        let (ingest_rate, copy_rate) = (median(&side(|r| r.0)), median(&side(|r| r.1)));
        let ratios = side(|r| r.0 / r.1);
        let (ratio, spread) = (median(&ratios), tollgate_bench::range(&ratios));
        let report = format!(
            "# Usage into billing_prod: ingest vs COPY\n\n\
             Command: `cargo run --release -p tollgate-bench -- usage-ingest --batches {batches}`\n\n\
             {events} events in all ({batches} batches of 1,000 per side, 100 accounts, one `sum` meter; {INGEST_ROUNDS} rounds, each side running its share of the batches in each, \
             the side that goes first alternating) on this machine's PostgreSQL \
             ({durability}, as the server reported them), one connection, batches one after another. Events/s are the medians of the rounds; \
             the ratio is the median of the rounds' ratios, with their range. Ingest is `tollgate_control_plane::usage::ingest`: \
             one statement per batch that deduplicates by event id, stores the raw events (partitioned by month) and \
             upserts the aggregates. The baseline is `COPY` of the same rows (binary-free text format) into the same \
             partitioned `usage_events` table, one `COPY` per batch, no dedup, no aggregates.\n\n\
             | | events/s | ratio (range) |\n|---|---:|---:|\n\
             | COPY (baseline) | {copy_rate:.0} | 1.00 |\n\
             | ingest | {ingest_rate:.0} | {ratio:.2} ({spread}) |\n"
        );
        std::fs::write(out_path, &report)?;
        println!("{report}");
        anyhow::Ok(())
    })
}

fn make_batch(b: usize, now_ms: i64) -> UsageBatch {
    let accounts: Vec<AccountId> = (0..100)
        .map(|i| AccountId(uuid::Uuid::from_u128(0xacc0_0000 + i)))
        .collect();
    UsageBatch {
        batch_id: uuid::Uuid::now_v7(),
        edge_id: "bench".into(),
        events: (0..1000)
            .map(|i| UsageEvent {
                id: format!("b{b}-{i}"),
                account: accounts[i % accounts.len()],
                meter: "api_calls".into(),
                quantity: 1,
                timestamp_ms: now_ms,
                properties: Default::default(),
            })
            .collect(),
    }
}

/// Rounds of `usage-ingest`: each runs both sides for a share of the batches, the side that
/// goes first alternating (even, so each side goes first as often; the tables grow as the run
/// goes on, and passes seconds apart move with the machine).
const INGEST_ROUNDS: usize = 6;

/// Each round's events/s: (ingest, COPY).
struct IngestRounds {
    rates: Vec<(f64, f64)>,
    /// Batches of 1,000 events each side ran per round.
    per_round: usize,
}

async fn ingest_run(url: &str, batches: usize) -> anyhow::Result<IngestRounds> {
    anyhow::ensure!(
        batches >= INGEST_ROUNDS,
        "--batches: at least {INGEST_ROUNDS}"
    );
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await?;
    tollgate_control_plane::BILLING_MIGRATOR.run(&pool).await?;
    let now = chrono::Utc::now();
    tollgate_control_plane::usage::ensure_partitions(&pool, now).await?;
    let meters = meters();
    let now_ms = now.timestamp_millis();
    let per_round = batches / INGEST_ROUNDS;
    let period_start = chrono::DateTime::from_timestamp_millis(MeterPeriod::Month.bounds(now_ms).0)
        .context("period")?
        .to_rfc3339();
    let now_text = now.to_rfc3339();
    let mut rates = Vec::new();
    let mut next = 0;
    for round in 0..INGEST_ROUNDS {
        let mut make = || {
            let made: Vec<UsageBatch> = (next..next + per_round)
                .map(|b| make_batch(b, now_ms))
                .collect();
            next += per_round;
            made
        };
        let (data, copies) = (make(), make());
        let (mut ingest_rate, mut copy_rate) = (0.0, 0.0);
        for side in [round % 2, 1 - round % 2] {
            if side == 0 {
                let started = Instant::now();
                for batch in &data {
                    tollgate_control_plane::usage::ingest(
                        &pool,
                        &meters,
                        &|_| Some(None),
                        batch,
                        now,
                        chrono::TimeDelta::hours(1),
                    )
                    .await?;
                }
                ingest_rate = (per_round * 1000) as f64 / started.elapsed().as_secs_f64();
            } else {
                let mut conn = pool.acquire().await?;
                let started = Instant::now();
                for batch in &copies {
                    copy_batch(&mut conn, batch, &now_text, &period_start).await?;
                }
                copy_rate = (per_round * 1000) as f64 / started.elapsed().as_secs_f64();
            }
        }
        rates.push((ingest_rate, copy_rate));
    }
    let (stored,): (i64,) = sqlx::query_as("SELECT count(*) FROM usage_events")
        .fetch_one(&pool)
        .await?;
    let events = 2 * INGEST_ROUNDS * per_round * 1000;
    anyhow::ensure!(
        stored as usize == events,
        "{stored} rows stored, {events} sent"
    );
    Ok(IngestRounds { rates, per_round })
}

/// `COPY` of one batch's rows into `usage_events`, as ingest would store them.
async fn copy_batch(
    conn: &mut sqlx::PgConnection,
    batch: &UsageBatch,
    now: &str,
    period_start: &str,
) -> anyhow::Result<()> {
    let mut text = String::with_capacity(batch.events.len() * 200);
    for e in &batch.events {
        let _ = writeln!(
            text,
            "{}\t{}\t{}\t{}\t{now}\t{period_start}\t{{}}\tbench\t{}\t{now}\tf",
            e.id, e.account, e.meter, e.quantity, batch.batch_id,
        );
    }
    let mut copy = conn
        .copy_in_raw(
            "COPY usage_events (event_id, account_id, meter, quantity, occurred_at, period_start, \
             properties, edge_id, batch_id, received_at, late) FROM STDIN",
        )
        .await?;
    copy.send(text.into_bytes()).await?;
    copy.finish().await?;
    Ok(())
}

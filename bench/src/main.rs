//! `tollgate-bench`: each hot path side by side with its baseline (and the peers a user would
//! pick instead) in one run; every subcommand writes its Markdown table under `results/`.
//! See `bench/README.md` for the commands and what each compares.

mod billing;
mod edge_check;
mod edge_peers;
mod peers;
mod propagation;
mod usage;

use std::fmt::Write as _;
use std::time::Duration;

/// The edge's allocator: the edge runs in this process (see `tollgate_edge::Allocator`).
#[global_allocator]
static GLOBAL: tollgate_edge::Allocator = tollgate_edge::Allocator;

use anyhow::{Context, bail};
use tollgate_bench::{edge_state, median, pro_facts};
use tollgate_protocol::{AccountFacts, AccountId, SubscriptionFacts, SubscriptionStatus};
use tollgate_rules::host::RulesEngine;

/// Accounts materialised per measurement pass.
const MATERIALISE_ACCOUNTS: usize = 20_000;
/// Measurement passes of `materialise` (each engine once per pass, in the same order).
const MATERIALISE_ROUNDS: usize = 31;

/// `materialise`: accounts' decisions computed through the compiled WebAssembly module (fresh
/// store per account, and one instance reused across a batch) against the reference
/// interpreter, for the same demo rules and the same facts, in one run.
fn materialise(out_path: &str) -> anyhow::Result<()> {
    use std::time::Instant;
    use tollgate_rules::interp;
    // regorus builds `anyhow` errors internally; with RUST_BACKTRACE set (as this machine's
    // environment has it) each would capture a backtrace, a cost no production user pays.
    // SAFETY of set_var: single-threaded here, before any runtime or thread starts.
    unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    let program = tollgate_rules::demo_program();
    let loaded = RulesEngine::new()?.load_program(&program)?;
    let vectors = materialise_facts(&program);
    let mut rego = peers::Rego::demo()?;
    let rego_inputs: Vec<_> = vectors
        .iter()
        .map(|v| peers::Rego::input(&program, v))
        .collect::<Result<_, _>>()?;
    // One untimed pass of the interpreter, the single-account and the batch path first (the
    // fresh-store path pays its cold start on every account anyway, regorus runs one round
    // only): the first call into a pool slot, the first allocations of each output size and
    // cold caches land there, not in round 1.
    for v in &vectors {
        std::hint::black_box(interp::evaluate(&program, v));
        std::hint::black_box(loaded.evaluate(v)?);
    }
    std::hint::black_box(loaded.evaluate_batch(&vectors)?);
    let mut rows = Vec::new();
    let mut rego_rate = 0.0;
    for round in 0..MATERIALISE_ROUNDS {
        let (interp_out, interp_rate) = timed(&mut || {
            Ok(vectors
                .iter()
                .map(|v| interp::evaluate(&program, v))
                .collect::<Vec<_>>())
        })?;
        let (batch, batch_rate) = timed(&mut || Ok(loaded.evaluate_batch(&vectors)?))?;
        let (single, single_rate) = timed(&mut || {
            Ok(vectors
                .iter()
                .map(|v| loaded.evaluate(v))
                .collect::<Result<Vec<_>, _>>()?)
        })?;
        let (fresh, fresh_rate) = timed(&mut || {
            Ok(vectors
                .iter()
                .map(|v| loaded.evaluate_fresh(v))
                .collect::<Result<Vec<_>, _>>()?)
        })?;
        // regorus is three orders of magnitude slower: one round of it (seconds) is enough.
        if round == 0 {
            let started = Instant::now();
            let rego_out = rego_inputs
                .iter()
                .map(|input| rego.evaluate(input))
                .collect::<anyhow::Result<Vec<_>>>()?;
            rego_rate = MATERIALISE_ACCOUNTS as f64 / started.elapsed().as_secs_f64();
            for (i, want) in interp_out.iter().enumerate() {
                anyhow::ensure!(
                    &rego.decisions(&rego_out[i])? == want,
                    "regorus disagrees on account {i}: interpreter {want:?}, regorus {:?}",
                    rego_out[i]
                );
            }
        }
        // Decided alike: every account's whole decision vector (allowed, limit, reason of each
        // feature), not a digest of it.
        for (i, want) in interp_out.iter().enumerate() {
            anyhow::ensure!(
                &batch[i] == want && &single[i] == want && &fresh[i] == want,
                "engines disagree on account {i}: interpreter {want:?}, batch {:?}, single {:?}, \
                 fresh {:?}",
                batch[i],
                single[i],
                fresh[i]
            );
        }
        rows.push([interp_rate, batch_rate, single_rate, fresh_rate, rego_rate]);
    }
    let med = |k: usize| median(&rows.iter().map(|r| r[k]).collect::<Vec<_>>());
    let (i, b, s1, f1, r1) = (med(0), med(1), med(2), med(3), rego_rate);
    // Each engine's ratio is the median of its per-round ratios (rounds are milliseconds long
    // here and move with the machine; a ratio within a round compares like with like).
    let ratio = |k: usize| median(&rows.iter().map(|r| r[k] / r[0]).collect::<Vec<_>>());
    let spread =
        |k: usize| tollgate_bench::range(&rows.iter().map(|r| r[k] / r[0]).collect::<Vec<_>>());
    let per_call = loaded.batch_max();
    let (batch_rounds, single_rounds) = (spread(1), spread(2));
    let report = format!(
        "# Materialising decisions: WebAssembly vs the reference interpreter\n\n\
         Command: `cargo run --release -p tollgate-bench -- materialise`\n\n\
         {MATERIALISE_ACCOUNTS} accounts (mixed plans, statuses, dunning levels, add-on packs, bans, grant and deny overrides, metered usage), the demo rules \
         (`rules/examples/demo.tg`: 4 features, 3 plans, 1 add-on, 3 rules), same facts for every engine, \
         one thread, release profile, one untimed warm-up pass of the interpreter, the single-account and the batch path, then {MATERIALISE_ROUNDS} rounds (regorus: the first only). Every round checks that the engines' decision vectors (each feature's allowed, limit and reason, every account) are equal.\n\n\
         | engine | accounts/s (median) | vs interpreter: median of the rounds' ratios (range) |\n|---|---:|---:|\n\
         | reference interpreter (native Rust) | {i:.0} | 1.00 |\n\
         | WebAssembly batch: one instance, {per_call} accounts per call into the module | {b:.0} | {:.2} ({batch_rounds}) |\n\
         | WebAssembly single account on a kept instance (the edge's fill: memory rewritten whole, one call) | {s1:.0} | {:.2} ({single_rounds}) |\n\
         | WebAssembly single account, fresh `Store` + instance (reference) | {f1:.0} | {:.2} |\n\
         | peer: regorus {} (Rego interpreter), `bench/peers/regorus/demo.rego`, one engine, `set_input` + `eval_rule` per account | {r1:.0} | {:.2} |\n\n\
         The regorus input is each account's fact vector with its slots named, built before timing (a \
         user of regorus would also pay for building it); its decisions are checked against the \
         interpreter's for every account, like the other engines'.\n",
        ratio(1),
        ratio(2),
        ratio(3),
        peers::REGORUS_VERSION,
        r1 / i
    );
    std::fs::write(out_path, &report)?;
    println!("{report}");
    Ok(())
}

/// The materialise harness's accounts: mixed plans, statuses, dunning, add-ons, bans,
/// overrides and metered usage, as fact vectors of the demo program.
fn materialise_facts(program: &tollgate_rules::ir::Program) -> Vec<tollgate_rules::ir::FactVector> {
    use tollgate_protocol::FeatureOverride;
    use tollgate_rules::facts::fact_vector;
    let plans = ["free", "pro", "enterprise"];
    let statuses = [
        SubscriptionStatus::Active,
        SubscriptionStatus::PastDue,
        SubscriptionStatus::Trialing,
    ];
    (0..MATERIALISE_ACCOUNTS)
        .map(|i| {
            let mut f = AccountFacts::new(AccountId(uuid::Uuid::now_v7()), 1);
            f.subscription = Some(SubscriptionFacts {
                plan: plans[i % 3].into(),
                status: statuses[i % 3],
                current_period_end_ms: 0,
                billing_anchor_ms: None,
            });
            f.days_past_due = (i % 11) as i64;
            f.dunning_level = (i % 5) as i64;
            if i % 7 == 0 {
                f.overrides
                    .insert("sso".into(), FeatureOverride::Grant { limit: None });
            }
            if i % 9 == 0 {
                f.overrides.insert("exports".into(), FeatureOverride::Deny);
            }
            if i % 4 == 0 {
                f.addons.insert("extra_seats".into(), (i % 3) as i64 + 1);
            }
            if i % 13 == 0 {
                f.standing = tollgate_protocol::AccountStanding::Banned;
            }
            let mut v = fact_vector(program, &f, 1_700_000_000_000);
            // Metered usage, as the edge adds it from its usage store.
            v.set(
                tollgate_rules::ir::Fact::Usage(3),
                program.shape(),
                (i as i64 * 37) % 200_000,
            );
            v
        })
        .collect()
}

/// `profile-materialise ENGINE [--secs N]`: one engine (`interp`, `batch`, `single`, `fresh`)
/// over the materialise accounts in a loop, for a profiler to sample (`perf record`).
fn profile_materialise(args: &[String]) -> anyhow::Result<()> {
    let engine = args
        .first()
        .context("engine: interp | batch | single | fresh")?
        .clone();
    let secs: u64 = usage::arg(args, "--secs", 10)?;
    let program = tollgate_rules::demo_program();
    let loaded = RulesEngine::new()?.load_program(&program)?;
    let vectors = materialise_facts(&program);
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    let mut accounts = 0u64;
    while std::time::Instant::now() < deadline {
        match engine.as_str() {
            // Every engine keeps its accounts' decisions until the pass ends, as the
            // materialise table's rows do.
            "interp" => {
                let out: Vec<_> = vectors
                    .iter()
                    .map(|v| tollgate_rules::interp::evaluate(&program, v))
                    .collect();
                std::hint::black_box(out);
            }
            "batch" => {
                std::hint::black_box(loaded.evaluate_batch(&vectors)?);
            }
            "single" => {
                let out: Vec<_> = vectors
                    .iter()
                    .map(|v| loaded.evaluate(v))
                    .collect::<Result<_, _>>()?;
                std::hint::black_box(out);
            }
            "fresh" => {
                let out: Vec<_> = vectors
                    .iter()
                    .map(|v| loaded.evaluate_fresh(v))
                    .collect::<Result<_, _>>()?;
                std::hint::black_box(out);
            }
            other => bail!("unknown engine {other}"),
        }
        accounts += vectors.len() as u64;
    }
    println!("{engine}: {:.0} accounts/s", accounts as f64 / secs as f64);
    Ok(())
}

/// Runs one engine's pass over the materialise accounts: its output and accounts/s.
fn timed<T>(run: &mut dyn FnMut() -> anyhow::Result<T>) -> anyhow::Result<(T, f64)> {
    let started = std::time::Instant::now();
    let out = run()?;
    Ok((
        out,
        MATERIALISE_ACCOUNTS as f64 / started.elapsed().as_secs_f64(),
    ))
}

/// Resident set size of this process in bytes (Linux `/proc/self/statm`).
fn rss_bytes() -> anyhow::Result<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm")?;
    let pages: u64 = statm.split_whitespace().nth(1).context("statm")?.parse()?;
    Ok(pages * 4096)
}

/// `cache`: (1) the in-process cost of a cached check (cache lookup, decision, response
/// struct) against a raw `moka::sync` get over the same keys, same run; (2) resident bytes per
/// cached account at 100k and 1M accounts.
fn cache_bench(out_path: &str) -> anyhow::Result<()> {
    use std::time::Instant;
    // Memory first, on a fresh heap: later measurements would reuse freed memory.
    let mut memory = String::new();
    let mut keep = Vec::new();
    for n in [100_000usize, 1_000_000] {
        // The keys exist before the baseline: the cache's own copies are what is counted.
        let ids: Vec<AccountId> = (0..n).map(|_| AccountId(uuid::Uuid::now_v7())).collect();
        let before = rss_bytes()?;
        let st = edge_state(&[], 2 * n as u64)?;
        let v = st.rules.load_full().context("rules")?;
        for id in &ids {
            st.cache.begin_fill(*id);
            st.cache.finish_fill(*id, Some(pro_facts(*id)), &v);
        }
        let after = rss_bytes()?;
        anyhow::ensure!(st.cache.entry_count() == n as u64, "every account cached");
        let per = (after.saturating_sub(before)) as f64 / n as f64;
        let estimated = st.cache.estimated_bytes() as f64 / n as f64;
        let _ = writeln!(
            memory,
            "| {n} | {:.0} MiB | {per:.0} B | {estimated:.0} B |",
            (after.saturating_sub(before)) as f64 / 1_048_576.0
        );
        // Kept alive, so the next measurement does not reuse this memory.
        keep.push((st, ids));
    }
    drop(keep);
    let keys: Vec<AccountId> = (0..100_000)
        .map(|_| AccountId(uuid::Uuid::now_v7()))
        .collect();
    let state = edge_state(&keys, 200_000)?;
    let view = state.rules.load_full().context("rules")?;
    let raw: moka::sync::Cache<AccountId, std::sync::Arc<u64>> = moka::sync::Cache::new(200_000);
    for (i, k) in keys.iter().enumerate() {
        raw.insert(*k, std::sync::Arc::new(i as u64));
    }
    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    let rounds = 20usize;
    let mut rows = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let mut sum = 0u64;
        for _ in 0..rounds {
            for k in &keys {
                sum = sum.wrapping_add(raw.get(k).map_or(0, |v| *v));
            }
        }
        let raw_ns = t.elapsed().as_nanos() as f64 / (rounds * keys.len()) as f64;
        let t = Instant::now();
        let mut allowed = 0u64;
        rt.block_on(async {
            for _ in 0..rounds {
                for k in &keys {
                    // The edge's own check core, as `GET /v1/check` calls it.
                    let d = tollgate_edge::decide(
                        &state,
                        &view,
                        *k,
                        std::borrow::Cow::Borrowed("seats"),
                        1,
                    )
                    .await;
                    if let Ok(resp) = d {
                        allowed += u64::from(resp.allowed);
                    }
                }
            }
        });
        let check_ns = t.elapsed().as_nanos() as f64 / (rounds * keys.len()) as f64;
        anyhow::ensure!(sum > 0 && allowed > 0, "benchmark did no work");
        rows.push((raw_ns, check_ns));
    }
    rows.sort_by(|a, b| (a.1 / a.0).total_cmp(&(b.1 / b.0)));
    let (raw_ns, check_ns) = rows[1];
    drop(state);

    let report = format!(
        "# Edge cache: cached-check cost and memory\n\nCommand: `cargo run --release -p tollgate-bench -- cache`\n\n\
         In-process, one thread, 100k cached accounts cycled 20 times, median of 3 rounds. \"Cached check\" is \
         the edge's own `tollgate_edge::decide` for `seats` (the cache entry, the decision, the limit rule, \
         the check metrics and the response) — everything of `GET /v1/check` but HTTP and JSON. The baseline is a raw `moka::sync` \
         get over the same keys in the same run. (Timed with `Instant`, not criterion.)\n\n\
         | raw moka get | cached check | ratio |\n|---:|---:|---:|\n| {raw_ns:.0} ns | {check_ns:.0} ns | {:.2} |\n\n\
         Resident memory added by cached accounts (pro plan facts, 4 decisions each, demo bundle; the edge's \
         state, rules and module included, the keys allocated before), and the cache's own estimate \
         (`Entry::estimated_bytes`, what its byte bound counts):\n\n\
         | accounts | RSS added | per account | estimated per account |\n|---:|---:|---:|---:|\n{memory}",
        check_ns / raw_ns
    );
    std::fs::write(out_path, &report)?;
    println!("{report}");
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("cache") {
        return cache_bench(concat!(env!("CARGO_MANIFEST_DIR"), "/results/cache.md"));
    }
    let results = concat!(env!("CARGO_MANIFEST_DIR"), "/results");
    if args.first().map(String::as_str) == Some("usage-edge") {
        return usage::edge(&args[1..], &format!("{results}/usage-edge.md"));
    }
    if args.first().map(String::as_str) == Some("billing") {
        return billing::run(&args[1..], &format!("{results}/billing.md"));
    }
    if args.first().map(String::as_str) == Some("usage-ingest") {
        return usage::ingest(&args[1..], &format!("{results}/usage-ingest.md"));
    }
    if args.first().map(String::as_str) == Some("propagation") {
        return propagation::run(
            &args[1..],
            concat!(env!("CARGO_MANIFEST_DIR"), "/results/propagation.md"),
        );
    }
    if args.first().map(String::as_str) == Some("profile-materialise") {
        return profile_materialise(&args[1..]);
    }
    if args.first().map(String::as_str) == Some("materialise") {
        return materialise(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/results/materialise.md"
        ));
    }
    if args.first().map(String::as_str) == Some("edge-peers") {
        return edge_peers::run(&args[1..], &format!("{results}/edge-peers.md"));
    }
    if args.first().map(String::as_str) == Some("edge-check") {
        return edge_check::run(&args[1..], &format!("{results}/edge-check.md"));
    }
    bail!(
        "usage: tollgate-bench edge-check [--secs N] [--out FILE] | edge-peers [--secs N] | materialise | cache | propagation [--changes N] [--bans N] [--dunning N] | usage-edge [--secs N] | usage-ingest [--batches N] | billing [--accounts N]"
    )
}

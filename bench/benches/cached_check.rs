//! Criterion: the in-process cost of a cached entitlement check against a raw `moka` get over
//! the same key set, in the same run; writes the ratio to `bench/results/cached-check.md`.
//!
//! ```text
//! cargo bench -p tollgate-bench --bench cached_check
//! ```
//!
//! "Cached check" is everything `GET /v1/check` does on a hit except HTTP and JSON: the edge's
//! own `tollgate_edge::decide` (the cache entry, the decision, the limit rule, the metrics and
//! the response). Both sides cycle through the same 100k account ids.

use std::borrow::Cow;
use std::hint::black_box;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use criterion::Criterion;
use tollgate_protocol::AccountId;

const KEYS: usize = 100_000;
const GROUP: &str = "cached_check";

/// Polls a future once: on a cache hit the edge's `decide` never awaits.
fn ready<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("a cached check awaited"),
    }
}

/// Mean and median (ns) of one criterion benchmark, from its saved estimates.
fn estimates(dir: &std::path::Path, name: &str) -> Option<(f64, f64)> {
    let path = dir.join(GROUP).join(name).join("new/estimates.json");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    Some((
        v["mean"]["point_estimate"].as_f64()?,
        v["median"]["point_estimate"].as_f64()?,
    ))
}

fn main() -> anyhow::Result<()> {
    let keys: Vec<AccountId> = (0..KEYS).map(|_| AccountId(uuid::Uuid::now_v7())).collect();
    let state = tollgate_bench::edge_state(&keys, 2 * KEYS as u64)?;
    let view = state
        .rules
        .load_full()
        .ok_or_else(|| anyhow::anyhow!("rules"))?;
    let raw: moka::sync::Cache<AccountId, Arc<u64>> = moka::sync::Cache::new(2 * KEYS as u64);
    for (i, k) in keys.iter().enumerate() {
        raw.insert(*k, Arc::new(i as u64));
    }

    let mut c = Criterion::default().configure_from_args();
    let mut group = c.benchmark_group(GROUP);
    let mut i = 0usize;
    group.bench_function("raw_moka_get", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            black_box(raw.get(&keys[i]))
        })
    });
    let mut i = 0usize;
    group.bench_function("edge_cached_check", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            // The edge's own check core, as `GET /v1/check` calls it.
            let r = ready(tollgate_edge::decide(
                &state,
                &view,
                keys[i],
                Cow::Borrowed("seats"),
                1,
            ))
            .ok()?;
            Some(black_box(r).allowed)
        })
    });
    group.finish();
    c.final_summary();

    // `cargo bench` runs from the package directory; criterion writes under the target dir.
    let target = std::env::var("CARGO_TARGET_DIR").map_or_else(
        |_| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"),
        std::path::PathBuf::from,
    );
    let dir = target.join("criterion");
    let (Some((raw_mean, raw_median)), Some((check_mean, check_median))) = (
        estimates(&dir, "raw_moka_get"),
        estimates(&dir, "edge_cached_check"),
    ) else {
        // `--test` / `--list` runs measure nothing: no table.
        return Ok(());
    };
    let report = format!(
        "# Cached check vs raw moka get (criterion)\n\n\
         Command: `cargo bench -p tollgate-bench --bench cached_check`\n\n\
         In-process, one thread, {KEYS} cached accounts (demo bundle, half `pro`, half `free`) cycled \
         in the same order by both sides. \"Cached check\" is the edge's own `tollgate_edge::decide` (the \
         cache entry, the decision, the limit rule, the metrics and the response): everything of \
         `GET /v1/check` on a hit but HTTP and JSON. Criterion's estimates (100 samples each):\n\n\
         | | raw moka get | cached check | ratio |\n|---|---:|---:|---:|\n\
         | mean | {raw_mean:.1} ns | {check_mean:.1} ns | {:.2} |\n\
         | median | {raw_median:.1} ns | {check_median:.1} ns | {:.2} |\n",
        check_mean / raw_mean,
        check_median / raw_median,
    );
    let out = concat!(env!("CARGO_MANIFEST_DIR"), "/results/cached-check.md");
    std::fs::write(out, &report)?;
    println!("{report}");
    Ok(())
}

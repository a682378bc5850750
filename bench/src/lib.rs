//! Fixtures shared by the `tollgate-bench` harnesses and the criterion benches.

use std::time::Duration;

use anyhow::Context;
use tollgate_edge::cache::CacheLimits;
use tollgate_edge::state::EdgeState;
use tollgate_edge::upstream::{L2, Upstream};
use tollgate_protocol::{
    AccountFacts, AccountId, AccountStanding, SubscriptionFacts, SubscriptionStatus,
};
use tollgate_rules::host::RulesEngine;

/// Points `tollgate_e2e::Stack` at the release binaries next to this one (`target/release`
/// after `cargo build --release --workspace --bins`). Call before any thread starts.
pub fn use_release_binaries() -> anyhow::Result<()> {
    let dir = std::env::current_exe()?
        .parent()
        .context("bench binary dir")?
        .to_owned();
    // SAFETY of set_var: the callers run it first thing, before any runtime or thread starts.
    unsafe { std::env::set_var("TOLLGATE_BIN_DIR", &dir) };
    Ok(())
}

/// An edge state with the demo bundle (WebAssembly) installed and `accounts` cached, half on
/// `pro` and half on `free`. Its upstream is never reached.
pub fn edge_state(accounts: &[AccountId], capacity: u64) -> anyhow::Result<EdgeState> {
    // The upstream is never reached: every account is cached before the run.
    let upstream = Upstream::new(
        "http://127.0.0.1:9",
        secrecy::SecretString::from("x".to_owned()),
        Duration::from_millis(100),
        L2::default(),
    )?;
    edge_state_on(upstream, accounts, capacity)
}

/// [`edge_state`] with a given upstream (a real control plane answers what is not cached).
pub fn edge_state_on(
    upstream: Upstream,
    accounts: &[AccountId],
    capacity: u64,
) -> anyhow::Result<EdgeState> {
    let mut opts = tollgate_edge::state::EdgeOptions::new("bench");
    opts.cache_limits = CacheLimits {
        entries_max: capacity,
        bytes_max: capacity.saturating_mul(4096),
    };
    let state = EdgeState::new(opts, upstream);
    let program = tollgate_rules::demo_program();
    let loaded = RulesEngine::new()?.load_program(&program)?;
    state.install_rules(1, program, loaded);
    let view = state.rules.load_full().context("rules")?;
    for (i, id) in accounts.iter().enumerate() {
        let facts = AccountFacts {
            account_id: *id,
            version: 3,
            standing: AccountStanding::Active,
            subscription: Some(SubscriptionFacts {
                plan: if i % 2 == 0 { "pro" } else { "free" }.into(),
                status: SubscriptionStatus::Active,
                current_period_end_ms: 0,
                billing_anchor_ms: None,
            }),
            ..AccountFacts::new(*id, 0)
        };
        state.cache.begin_fill(*id);
        state.cache.finish_fill(*id, Some(facts), &view);
    }
    Ok(state)
}

/// Facts of an account on `pro`.
pub fn pro_facts(id: AccountId) -> AccountFacts {
    let mut f = AccountFacts::new(id, 3);
    f.subscription = Some(SubscriptionFacts {
        plan: "pro".into(),
        status: SubscriptionStatus::Active,
        current_period_end_ms: 0,
        billing_anchor_ms: None,
    });
    f
}

/// The median of `values` (the upper one of an even count).
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The lowest and the highest of `values`, as `low–high` with two decimals (a ratio's range
/// over the rounds of a run).
pub fn range(values: &[f64]) -> String {
    let low = values.iter().copied().fold(f64::INFINITY, f64::min);
    let high = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{low:.2}–{high:.2}")
}

//! The edge installs only verified, self-tested bundles; a refused one leaves the previous
//! bundle serving; the last good bundle survives a restart on disk.

use std::time::Duration;

use tollgate_edge::bundles::{self, InstallError};
use tollgate_edge::cache::CacheLimits;
use tollgate_edge::state::EdgeState;
use tollgate_edge::upstream::{L2, Upstream};
use tollgate_rules::bundle::{self, SigningKey, TrustedKeys};
use tollgate_rules::compiler;
use tollgate_rules::host::RulesEngine;
use tollgate_rules::lang::SourceFile;
use tollgate_rules::testkit::{Hostile, hostile_module, with_module};

fn demo() -> String {
    tollgate_rules::DEMO_SOURCE.to_owned()
}

fn state() -> EdgeState {
    state_sharded(1)
}

/// An edge following `shards` change-stream shards.
fn state_sharded(shards: u16) -> EdgeState {
    // No control plane is needed: these tests drive installation directly.
    let upstream = Upstream::new(
        "http://127.0.0.1:9",
        secrecy::SecretString::from("t".to_owned()),
        Duration::from_millis(100),
        L2::default(),
    )
    .expect("upstream")
    .with_redis_keys(tollgate_protocol::redis_keys::Keys::sharded("tg", shards));
    let mut opts = tollgate_edge::state::EdgeOptions::new("edge-test");
    opts.cache_limits = CacheLimits {
        entries_max: 100,
        bytes_max: 1 << 20,
    };
    EdgeState::new(opts, upstream)
}

/// A signing key, the keys that trust it, and an engine.
fn signer() -> (SigningKey, TrustedKeys, RulesEngine) {
    let key = SigningKey::generate("edge-test");
    let trusted = TrustedKeys::new(vec![key.public()]);
    (key, trusted, RulesEngine::new().expect("engine"))
}

/// A data directory of its own (not created: saving creates it).
fn temp_dir(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!(
        "tollgate-edge-{name}-{}",
        uuid::Uuid::new_v4().simple()
    ))
}

fn unsigned(version: u64) -> (bundle::UnsignedBundle, tollgate_rules::ir::Shape) {
    let file = SourceFile {
        name: "demo.tg".into(),
        text: demo(),
    };
    let compiled = compiler::compile(&file).expect("compiles");
    let shape = compiled.program.shape();
    (
        bundle::build(&compiled, &demo(), version, 0).expect("build"),
        shape,
    )
}

#[test]
fn refused_bundles_leave_the_previous_one_serving() {
    let (key, trusted, engine) = signer();
    let state = state();
    let (good, shape) = unsigned(1);
    assert_eq!(
        bundles::install(&state, &engine, &trusted, &good.sign(&key)).expect("installs"),
        1
    );

    let stranger = SigningKey::generate("stranger");
    let (other, _) = unsigned(2);
    assert!(matches!(
        bundles::install(&state, &engine, &trusted, &other.sign(&stranger)),
        Err(InstallError::Verify(_))
    ));
    for kind in [Hostile::EndlessLoop, Hostile::GrowMemory, Hostile::Trap] {
        let (b, _) = unsigned(3);
        let hostile = with_module(b, hostile_module(kind, shape)).sign(&key);
        let err = bundles::install(&state, &engine, &trusted, &hostile).expect_err("refused");
        assert!(matches!(err, InstallError::Tests(_)), "{kind:?}: {err}");
    }
    let (b, _) = unsigned(4);
    let imports = with_module(b, hostile_module(Hostile::Imports, shape)).sign(&key);
    assert!(matches!(
        bundles::install(&state, &engine, &trusted, &imports),
        Err(InstallError::Module(_))
    ));
    assert_eq!(
        state.bundle_version(),
        Some(1),
        "the good bundle still serves"
    );
}

#[test]
fn the_last_good_bundle_is_restored_from_disk_after_a_restart() {
    let (key, trusted, engine) = signer();
    let dir = temp_dir("test");
    let (good, _) = unsigned(5);
    let bytes = good.sign(&key);
    bundles::persist(&dir, &bytes).expect("persist");

    let restarted = state();
    assert_eq!(
        bundles::load_persisted(&restarted, &engine, &trusted, &dir),
        Some(5)
    );
    assert_eq!(restarted.bundle_version(), Some(5));
    // A key rotation that drops the signer makes the saved bundle untrusted: not restored.
    let rotated = TrustedKeys::new(vec![SigningKey::generate("new").public()]);
    let fresh = state();
    assert_eq!(
        bundles::load_persisted(&fresh, &engine, &rotated, &dir),
        None
    );
    assert_eq!(fresh.bundle_version(), None);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn cached_facts_survive_a_restart_with_everything_behind_the_edge_down() {
    use tollgate_protocol::{AccountFacts, AccountId, SubscriptionFacts, SubscriptionStatus};
    let (key, trusted, engine) = signer();
    let dir = temp_dir("facts");
    let (good, _) = unsigned(6);
    let bytes = good.sign(&key);
    bundles::persist(&dir, &bytes).expect("persist bundle");

    // A running edge holding one pro account, following three stream shards.
    let before = state_sharded(3);
    bundles::install(&before, &engine, &trusted, &bytes).expect("install");
    let id = AccountId::new_v7();
    let mut facts = AccountFacts::new(id, 4);
    facts.subscription = Some(SubscriptionFacts {
        plan: "pro".into(),
        status: SubscriptionStatus::Active,
        current_period_end_ms: 0,
        billing_anchor_ms: None,
    });
    let view = before.rules.load_full().expect("rules");
    before.cache.begin_fill(id);
    before.cache.finish_fill(id, Some(facts), &view);
    let positions = vec![
        Some("1700000000000-3".to_owned()),
        None,
        Some("1700000000500-0".to_owned()),
    ];
    for (shard, p) in (0..3).zip(&positions) {
        before.set_stream_position(shard, p.clone());
    }
    assert_eq!(bundles::persist_facts(&before, &dir).expect("snapshot"), 1);

    // Restart: no control plane (the upstream is a closed port), no Redis.
    let after = state_sharded(3);
    assert_eq!(
        bundles::load_persisted(&after, &engine, &trusted, &dir),
        Some(6)
    );
    let restored = bundles::restore_facts(&after, &dir);
    assert_eq!(
        (restored.accounts, restored.skipped, &restored.stream_ids),
        (1, 0, &positions),
        "each shard's follower resumes where the snapshot was current"
    );
    assert_eq!(after.stream_positions(), positions);
    assert_eq!(after.stream_position(2).as_deref(), Some("1700000000500-0"));
    let entry = after.cache.get(&id).expect("restored");
    assert!(entry.restored() && after.entry_stale(&id, &entry));
    let seats = after
        .rules
        .load_full()
        .expect("rules")
        .feature_index("seats")
        .expect("seats");
    assert_eq!(
        (
            entry.version(),
            entry.decision_at(seats).and_then(|d| d.limit)
        ),
        (4, Some(10))
    );
    assert!(
        after.is_stale(),
        "answers from disk are stale until the change stream is read"
    );
    // Confirmed only once every shard's follower has caught up, not the first.
    for shard in 0..3 {
        after.mark_stream_read(shard);
    }
    after.shard_caught_up(0);
    after.shard_caught_up(2);
    assert!(after.entry_stale(&id, &entry), "shard 1 has not caught up");
    after.shard_caught_up(1);
    assert!(!after.entry_stale(&id, &entry), "every shard caught up");

    // An edge configured with another shard count resumes nothing from that file: the
    // positions belong to other streams.
    let other = state_sharded(4);
    bundles::load_persisted(&other, &engine, &trusted, &dir);
    let restored = bundles::restore_facts(&other, &dir);
    assert_eq!((restored.accounts, restored.stream_ids.len()), (1, 0));
    assert_eq!(other.stream_positions(), vec![None; 4]);

    // A file of the unsharded format (2) restores its facts without a position.
    let text = std::fs::read_to_string(dir.join(bundles::FACTS_FILE)).expect("facts");
    let body = text.split_once('\n').expect("header").1;
    std::fs::write(
        dir.join(bundles::FACTS_FILE),
        format!("{{\"format\":2,\"stream_id\":\"1700000000000-3\",\"saved_at_ms\":1}}\n{body}"),
    )
    .expect("old file");
    let old = state_sharded(1);
    bundles::load_persisted(&old, &engine, &trusted, &dir);
    let restored = bundles::restore_facts(&old, &dir);
    assert_eq!((restored.accounts, restored.stream_ids.len()), (1, 0));
    assert_eq!(old.stream_positions(), vec![None]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_crash_mid_write_leaves_the_edge_with_what_it_can_trust() {
    let (key, trusted, engine) = signer();
    let dir = temp_dir("torn");
    let (good, _) = unsigned(7);
    let bytes = good.sign(&key);

    // A crash while saving a new bundle leaves the temporary file behind: the saved one counts.
    bundles::persist(&dir, &bytes).expect("persist");
    std::fs::write(
        dir.join(format!("{}.tmp", bundles::BUNDLE_FILE)),
        &bytes[..bytes.len() / 2],
    )
    .expect("tmp");
    let st = state();
    assert_eq!(
        bundles::load_persisted(&st, &engine, &trusted, &dir),
        Some(7)
    );

    // A torn facts file (the last line cut mid-record) restores every whole line and counts the rest.
    let id = tollgate_protocol::AccountId::new_v7();
    let whole = serde_json::to_string(&tollgate_protocol::AccountFacts::new(id, 3)).expect("json");
    std::fs::write(
        dir.join(bundles::FACTS_FILE),
        format!("{whole}\n{}", &whole[..whole.len() / 2]),
    )
    .expect("facts");
    let restored = bundles::restore_facts(&st, &dir);
    assert_eq!(
        (
            restored.accounts,
            restored.skipped,
            restored.stream_ids.len()
        ),
        (1, 1, 0),
        "an older edge's file (no header) restores without a position"
    );
    assert_eq!(st.cache.get(&id).expect("restored").version(), 3);

    // A bundle file damaged on disk is refused, not served: the edge waits for the control plane.
    let mut damaged = bytes.clone();
    let n = damaged.len();
    damaged[n - 3] ^= 0xFF;
    std::fs::write(dir.join(bundles::BUNDLE_FILE), &damaged).expect("damage");
    let fresh = state();
    assert_eq!(
        bundles::load_persisted(&fresh, &engine, &trusted, &dir),
        None
    );
    assert_eq!(fresh.bundle_version(), None);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_failed_fsync_while_saving_a_bundle_or_the_facts_leaves_the_saved_ones() {
    use tollgate_edge::durable::{FaultyFs, FsOp};
    use tollgate_protocol::{AccountFacts, AccountId};
    let (key, trusted, engine) = signer();
    let dir = temp_dir("fsync");
    let (v8, _) = unsigned(8);
    let (v9, _) = unsigned(9);
    let (v8, v9) = (v8.sign(&key), v9.sign(&key));
    bundles::persist(&dir, &v8).expect("persist");
    // Saving the next bundle on a disk whose fsync fails, or whose rename fails: refused, and
    // the saved bundle is the one a restart restores.
    for op in [FsOp::SyncAll, FsOp::Rename] {
        let dying = FaultyFs::new().fail_after(op, 0);
        let err = bundles::persist_on(&dying, &dir, &v9).expect_err("the disk fails");
        assert_eq!(err.raw_os_error(), Some(5), "{op:?}");
        assert_eq!(dying.calls(op), 1, "{op:?}");
        let restarted = state();
        assert_eq!(
            bundles::load_persisted(&restarted, &engine, &trusted, &dir),
            Some(8),
            "{op:?}"
        );
    }

    // The same for the facts snapshot: the last one that was saved whole is restored.
    let edge = state();
    bundles::install(&edge, &engine, &trusted, &v8).expect("install");
    let view = edge.rules.load_full().expect("rules");
    let fill = |id: AccountId, version: i64| {
        edge.cache.begin_fill(id);
        edge.cache
            .finish_fill(id, Some(AccountFacts::new(id, version)), &view);
    };
    let (first, second) = (AccountId::new_v7(), AccountId::new_v7());
    fill(first, 1);
    assert_eq!(bundles::persist_facts(&edge, &dir).expect("snapshot"), 1);
    fill(second, 2);
    let dying = FaultyFs::new().fail_after(FsOp::SyncAll, 0);
    let err = bundles::persist_facts_on(&dying, &edge, &dir).expect_err("the disk fails");
    assert_eq!(err.raw_os_error(), Some(5));
    let after = state();
    bundles::install(&after, &engine, &trusted, &v8).expect("install");
    let restored = bundles::restore_facts(&after, &dir);
    assert_eq!((restored.accounts, restored.skipped), (1, 0));
    assert!(after.cache.get(&first).is_some());
    assert!(after.cache.get(&second).is_none());
    let _ = std::fs::remove_dir_all(&dir);
}

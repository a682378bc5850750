//! Modules that break the rules are contained and refused with a typed error: endless loops
//! are stopped at their deadline, memory growth hits the cap, traps are reported, garbage output is refused,
//! imports, state besides memory and wrong layouts are refused at load time, and a reused
//! instance never answers with an earlier account's decisions. The same engine keeps serving a
//! good module afterwards.

use tollgate_rules::host::{HostError, RulesEngine};
use tollgate_rules::ir::{Fact, FactVector, Feature, FeatureKind, Program, Shape};
use tollgate_rules::testkit::{Hostile, hostile_module};
use tollgate_rules::wasm;

fn shape() -> Shape {
    Shape {
        addons: 0,
        features: 1,
    }
}

fn facts() -> FactVector {
    FactVector::empty(shape())
}

fn load(kind: Hostile) -> Result<tollgate_rules::host::LoadedRules, HostError> {
    RulesEngine::new()
        .expect("engine")
        .load(&hostile_module(kind, shape()), shape())
}

#[test]
fn an_endless_loop_is_stopped_at_its_deadline() {
    let loaded = load(Hostile::EndlessLoop).expect("loads: the loop only runs in evaluate");
    assert!(matches!(
        loaded.evaluate(&facts()),
        Err(HostError::DeadlineExceeded)
    ));
}

#[test]
fn the_deadline_holds_after_the_engine_that_loaded_the_module_is_dropped() {
    // The epoch advances for as long as any clone of the engine lives: loaded rules keep one,
    // so dropping the `RulesEngine` must not leave their calls without a deadline (a hang).
    let engine = RulesEngine::new().expect("engine");
    let loaded = engine
        .load(&hostile_module(Hostile::EndlessLoop, shape()), shape())
        .expect("loads");
    drop(engine);
    assert!(matches!(
        loaded.evaluate(&facts()),
        Err(HostError::DeadlineExceeded)
    ));
}

#[test]
fn growing_memory_without_bound_hits_the_cap() {
    let loaded = load(Hostile::GrowMemory).expect("loads");
    let err = loaded.evaluate(&facts()).expect_err("contained");
    assert!(matches!(err, HostError::Memory), "{err:?}");
}

#[test]
fn traps_and_garbage_are_reported_and_the_engine_keeps_serving() {
    let engine = RulesEngine::new().expect("engine");
    let trap = engine
        .load(&hostile_module(Hostile::Trap, shape()), shape())
        .expect("loads");
    assert!(matches!(trap.evaluate(&facts()), Err(HostError::Trap(_))));
    let garbage = engine
        .load(&hostile_module(Hostile::Garbage, shape()), shape())
        .expect("loads");
    assert!(matches!(
        garbage.evaluate(&facts()),
        Err(HostError::BadOutput(_))
    ));
    let program = Program {
        features: vec![Feature {
            key: "x".into(),
            kind: FeatureKind::Bool,
            period: None,
            fail_open: false,
            meter: None,
        }],
        plans: vec![],
        addons: vec![],
        rules: vec![],
        tests: vec![],
    };
    let good = engine
        .load(&wasm::emit(&program).expect("emit"), program.shape())
        .expect("good");
    let mut f = FactVector::empty(program.shape());
    f.set(Fact::OverrideMode(0), program.shape(), 2);
    assert!(good.evaluate(&f).expect("evaluates")[0].allowed);
}

#[test]
fn imports_wrong_layouts_and_junk_are_refused_at_load() {
    let engine = RulesEngine::new().expect("engine");
    assert!(matches!(
        load(Hostile::Imports),
        Err(HostError::Contract(_))
    ));
    let other_shape = Shape {
        addons: 0,
        features: 2,
    };
    assert!(matches!(
        engine.load(&hostile_module(Hostile::Trap, shape()), other_shape),
        Err(HostError::Contract(_))
    ));
    // State that would outlive a call, and a memory larger than one record, are refused: an
    // instance can then be reused safely.
    for kind in [Hostile::MutableGlobal, Hostile::LargePages] {
        let err = load(kind).map(|_| ()).expect_err("refused");
        assert!(matches!(err, HostError::Contract(_)), "{kind:?}: {err:?}");
    }
    assert!(matches!(
        engine.load(b"\0asm\x01\0\0\0garbage", shape()),
        Err(HostError::Compile(_))
    ));
    assert!(matches!(
        engine.load(&vec![0u8; 9 * 1024 * 1024], shape()),
        Err(HostError::TooLarge(_))
    ));
}

#[test]
fn a_reused_instance_never_answers_with_the_previous_accounts_decisions() {
    // A module that writes decisions for plan 0 only would, on an instance whose memory kept
    // the last call's decisions, grant an account on another plan what the plan-0 account
    // before it was granted. The host fills every decision slot before each call, so the
    // other plan's evaluation is refused instead, on every reuse, single or batched.
    let module = load(Hostile::GrantsOnlyPlanZero).expect("loads");
    let mut plan_zero = facts();
    plan_zero.set(Fact::Plan, shape(), 0);
    let no_plan = facts();
    for _ in 0..3 {
        assert!(module.evaluate(&plan_zero).expect("plan 0 is granted")[0].allowed);
        let err = module.evaluate(&no_plan).expect_err("nothing written");
        assert!(matches!(err, HostError::BadOutput(_)), "{err:?}");
    }
    let batch: Vec<FactVector> = (0..100)
        .map(|i| {
            if i % 2 == 0 {
                plan_zero.clone()
            } else {
                no_plan.clone()
            }
        })
        .collect();
    let err = module.evaluate_batch(&batch).expect_err("refused");
    assert!(matches!(err, HostError::BadOutput(_)), "{err:?}");
    // It writes the first record only (it ignores the count): the other 99 are refused too,
    // though each is a plan-0 account, rather than answered from anything left in memory.
    let err = module
        .evaluate_batch(&vec![plan_zero.clone(); 100])
        .expect_err("records past the first are never written");
    assert!(matches!(err, HostError::BadOutput(_)), "{err:?}");
}

#[test]
fn an_endless_loop_in_a_batch_is_stopped_too() {
    // One call evaluates many accounts under one deadline: a loop in it is still stopped, and
    // the module's next batch is refused the same way (no instance carries on).
    let loaded = load(Hostile::EndlessLoop).expect("loads");
    for _ in 0..2 {
        let err = loaded
            .evaluate_batch(&vec![facts(); 3])
            .expect_err("contained");
        assert!(matches!(err, HostError::DeadlineExceeded), "{err:?}");
    }
}

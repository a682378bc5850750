//! Modules that break the rules are contained and refused with a typed error: endless loops
//! run out of fuel, memory growth hits the cap, traps are reported, garbage output is refused,
//! imports and wrong layouts are refused at load time. The same engine keeps serving a good
//! module afterwards.

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
fn an_endless_loop_runs_out_of_fuel() {
    let loaded = load(Hostile::EndlessLoop).expect("loads: the loop only runs in evaluate");
    assert!(matches!(
        loaded.evaluate(&facts()),
        Err(HostError::OutOfFuel)
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
    assert!(matches!(
        engine.load(b"\0asm\x01\0\0\0garbage", shape()),
        Err(HostError::Compile(_))
    ));
    assert!(matches!(
        engine.load(&vec![0u8; 9 * 1024 * 1024], shape()),
        Err(HostError::TooLarge(_))
    ));
}

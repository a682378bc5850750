//! Modules that break the rules are contained and refused with a typed error: endless loops
//! run out of fuel, memory growth hits the cap, traps are reported, imports and wrong exports
//! are refused at load time. The same engine keeps serving a good module afterwards.

use tollgate_rules::host::{HostError, RulesEngine};
use tollgate_rules::ir::{Fact, FactVector, Feature, FeatureKind, Program, Shape};
use tollgate_rules::wasm::{self, ABI_VERSION};
use wasm_encoder::{
    BlockType, CodeSection, EntityType, ExportKind, ExportSection, Function, FunctionSection,
    ImportSection, Instruction as I, MemorySection, MemoryType, Module, TypeSection, ValType,
};

fn shape() -> Shape {
    Shape {
        addons: 0,
        features: 1,
    }
}

/// A module that honours the contract's exports, with `evaluate` replaced by `body`.
fn module(body: &[I<'static>], memory_max: Option<u64>, import: bool) -> Vec<u8> {
    let mut types = TypeSection::new();
    types.ty().function([], [ValType::I32]);
    let mut imports = ImportSection::new();
    if import {
        imports.import("env", "now", EntityType::Function(0));
    }
    let base = u32::from(import);
    let mut functions = FunctionSection::new();
    for _ in 0..4 {
        functions.function(0);
    }
    let mut memories = MemorySection::new();
    memories.memory(MemoryType {
        minimum: 1,
        maximum: memory_max,
        memory64: false,
        shared: false,
        page_size_log2: None,
    });
    let mut exports = ExportSection::new();
    exports.export("memory", ExportKind::Memory, 0);
    exports.export("evaluate", ExportKind::Func, base);
    exports.export("abi_version", ExportKind::Func, base + 1);
    exports.export("facts_len", ExportKind::Func, base + 2);
    exports.export("features_len", ExportKind::Func, base + 3);
    let mut code = CodeSection::new();
    let mut evaluate = Function::new([(1, ValType::I32)]);
    for i in body {
        evaluate.instruction(i);
    }
    code.function(&evaluate);
    for v in [ABI_VERSION, FactVector::len_for(shape()) as i32, 1] {
        let mut f = Function::new([]);
        f.instruction(&I::I32Const(v));
        f.instruction(&I::End);
        code.function(&f);
    }
    let mut m = Module::new();
    m.section(&types);
    if import {
        m.section(&imports);
    }
    m.section(&functions);
    m.section(&memories);
    m.section(&exports);
    m.section(&code);
    m.finish()
}

fn facts() -> FactVector {
    FactVector::empty(shape())
}

#[test]
fn an_endless_loop_runs_out_of_fuel() {
    let engine = RulesEngine::new().expect("engine");
    let m = module(
        &[
            I::Loop(BlockType::Empty),
            I::Br(0),
            I::End,
            I::I32Const(0),
            I::End,
        ],
        Some(1),
        false,
    );
    let loaded = engine
        .load(&m, shape())
        .expect("loads: the loop only runs in evaluate");
    assert!(matches!(
        loaded.evaluate(&facts()),
        Err(HostError::OutOfFuel)
    ));
}

#[test]
fn growing_memory_without_bound_hits_the_cap() {
    let engine = RulesEngine::new().expect("engine");
    // loop { memory.grow(16) } — each grow is 1 MiB; the cap is reached quickly.
    let body = [
        I::Loop(BlockType::Empty),
        I::I32Const(16),
        I::MemoryGrow(0),
        I::Drop,
        I::Br(0),
        I::End,
        I::I32Const(0),
        I::End,
    ];
    let loaded = engine
        .load(&module(&body, None, false), shape())
        .expect("loads");
    let err = loaded.evaluate(&facts()).expect_err("contained");
    assert!(matches!(err, HostError::Memory), "{err:?}");
}

#[test]
fn a_trap_is_reported_and_the_engine_keeps_serving() {
    let engine = RulesEngine::new().expect("engine");
    let loaded = engine
        .load(&module(&[I::Unreachable, I::End], Some(1), false), shape())
        .expect("loads");
    assert!(matches!(loaded.evaluate(&facts()), Err(HostError::Trap(_))));
    // A module writing garbage decisions is refused too.
    let garbage = [
        I::I32Const(0),
        I::I64Const(7),
        I::I64Store(wasm_encoder::MemArg {
            offset: wasm::decisions_offset(shape()),
            align: 3,
            memory_index: 0,
        }),
        I::I32Const(0),
        I::End,
    ];
    let loaded = engine
        .load(&module(&garbage, Some(1), false), shape())
        .expect("loads");
    assert!(matches!(
        loaded.evaluate(&facts()),
        Err(HostError::BadOutput(_))
    ));
    // A good module on the same engine still works.
    let program = Program {
        features: vec![Feature {
            key: "x".into(),
            kind: FeatureKind::Bool,
            period: None,
            fail_open: false,
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
    let ok_body = [I::I32Const(0), I::End];
    assert!(matches!(
        engine.load(&module(&ok_body, Some(1), true), shape()),
        Err(HostError::Contract(_))
    ));
    let other_shape = Shape {
        addons: 0,
        features: 2,
    };
    assert!(matches!(
        engine.load(&module(&ok_body, Some(1), false), other_shape),
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

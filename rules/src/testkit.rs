//! Hand-crafted hostile modules and bundles for tests of every host that loads rules (this
//! crate, the edge, the control plane). Each module honours the export contract of
//! [`crate::wasm`] for a given [`Shape`], so it passes the load-time checks and misbehaves only
//! when evaluated — exactly what a host must contain.
//!
//! Test-only: compiled with the `testkit` cargo feature, which only `[dev-dependencies]`
//! enable (see the crate docs), never into a release build.

use wasm_encoder::{
    BlockType, CodeSection, ConstExpr, EntityType, ExportKind, ExportSection, Function,
    FunctionSection, GlobalSection, GlobalType, ImportSection, Instruction as I, MemArg,
    MemorySection, MemoryType, Module, TypeSection, ValType,
};

use crate::bundle::{MODULE_PART, UnsignedBundle, sha256_hex};
use crate::ir::{Fact, FactVector, ReasonCode, Shape};
use crate::wasm::{
    ABI_VERSION, BATCH_ACCOUNTS_MAX, PAGE_SIZE_LOG2, decisions_offset, record_bytes,
};

/// How a module misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hostile {
    /// `evaluate` loops forever.
    EndlessLoop,
    /// `evaluate` grows memory 1 MiB at a time, forever.
    GrowMemory,
    /// `evaluate` executes `unreachable`.
    Trap,
    /// `evaluate` writes an `allowed` value that is neither 0 nor 1.
    Garbage,
    /// The module imports a host function (refused at load).
    Imports,
    /// `evaluate` writes a grant for plan 0 and nothing for any other plan: on a reused
    /// instance it would answer another plan with the previous account's grant, if the host
    /// let that stay in memory.
    GrantsOnlyPlanZero,
    /// The module declares a mutable global, state that would outlive a call (refused at load).
    MutableGlobal,
    /// The memory has 64 KiB pages, so it is larger than a record (refused at load).
    LargePages,
}

/// A module for `shape` whose `evaluate` behaves as `kind`.
pub fn hostile_module(kind: Hostile, shape: Shape) -> Vec<u8> {
    let body: Vec<I<'static>> = match kind {
        Hostile::EndlessLoop => vec![
            I::Loop(BlockType::Empty),
            I::Br(0),
            I::End,
            I::I32Const(0),
            I::End,
        ],
        Hostile::GrowMemory => vec![
            I::Loop(BlockType::Empty),
            I::I32Const(1 << 20),
            I::MemoryGrow(0),
            I::Drop,
            I::Br(0),
            I::End,
            I::I32Const(0),
            I::End,
        ],
        Hostile::Trap => vec![I::Unreachable, I::End],
        Hostile::Garbage => vec![
            I::I32Const(0),
            I::I64Const(7),
            I::I64Store(MemArg {
                offset: decisions_offset(shape),
                align: 3,
                memory_index: 0,
            }),
            I::I32Const(0),
            I::End,
        ],
        Hostile::GrantsOnlyPlanZero => {
            let at = |offset: u64| MemArg {
                offset,
                align: 3,
                memory_index: 0,
            };
            let out = decisions_offset(shape);
            let mut body = vec![
                I::I32Const(0),
                I::I64Load(at(8 * Fact::Plan.slot(shape) as u64)),
                I::I64Eqz,
                I::If(BlockType::Empty),
            ];
            for (slot, value) in [1, 0, 0, ReasonCode::GrantedByPlan as i64]
                .into_iter()
                .enumerate()
            {
                body.extend([
                    I::I32Const(0),
                    I::I64Const(value),
                    I::I64Store(at(out + 8 * slot as u64)),
                ]);
            }
            body.extend([I::End, I::I32Const(0), I::End]);
            body
        }
        Hostile::Imports | Hostile::MutableGlobal | Hostile::LargePages => {
            vec![I::I32Const(0), I::End]
        }
    };
    let import = kind == Hostile::Imports;
    let mut types = TypeSection::new();
    types.ty().function([], [ValType::I32]);
    types.ty().function([ValType::I32], [ValType::I32]);
    let mut imports = ImportSection::new();
    if import {
        imports.import("env", "now", EntityType::Function(0));
    }
    let base = u32::from(import);
    let mut functions = FunctionSection::new();
    for _ in 0..4 {
        functions.function(0);
    }
    // `evaluate_batch`, with the same body (it ignores its count).
    functions.function(1);
    let record = record_bytes(shape);
    let mut memories = MemorySection::new();
    let maximum = if kind == Hostile::GrowMemory {
        None
    } else {
        Some(record * BATCH_ACCOUNTS_MAX)
    };
    memories.memory(if kind == Hostile::LargePages {
        MemoryType {
            minimum: 1,
            maximum: Some(1),
            memory64: false,
            shared: false,
            page_size_log2: None,
        }
    } else {
        MemoryType {
            minimum: record,
            maximum,
            memory64: false,
            shared: false,
            page_size_log2: Some(PAGE_SIZE_LOG2),
        }
    });
    let mut globals = GlobalSection::new();
    globals.global(
        GlobalType {
            val_type: ValType::I64,
            mutable: true,
            shared: false,
        },
        &ConstExpr::i64_const(0),
    );
    let mut exports = ExportSection::new();
    exports.export("memory", ExportKind::Memory, 0);
    exports.export("evaluate", ExportKind::Func, base);
    exports.export("abi_version", ExportKind::Func, base + 1);
    exports.export("facts_len", ExportKind::Func, base + 2);
    exports.export("features_len", ExportKind::Func, base + 3);
    exports.export("evaluate_batch", ExportKind::Func, base + 4);
    let mut code = CodeSection::new();
    let mut evaluate = Function::new([]);
    for i in &body {
        evaluate.instruction(i);
    }
    code.function(&evaluate);
    let len = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
    for v in [
        ABI_VERSION,
        len(FactVector::len_for(shape)),
        len(shape.features),
    ] {
        let mut f = Function::new([]);
        f.instruction(&I::I32Const(v));
        f.instruction(&I::End);
        code.function(&f);
    }
    code.function(&evaluate);
    let mut m = Module::new();
    m.section(&types);
    if import {
        m.section(&imports);
    }
    m.section(&functions);
    m.section(&memories);
    if kind == Hostile::MutableGlobal {
        m.section(&globals);
    }
    m.section(&exports);
    m.section(&code);
    m.finish()
}

/// `bundle` with its module part replaced (and the manifest's hash and length updated), ready
/// to be signed with a trusted key: a correctly signed bundle carrying a hostile module.
pub fn with_module(mut bundle: UnsignedBundle, module: Vec<u8>) -> UnsignedBundle {
    for entry in &mut bundle.manifest.parts {
        if entry.name == MODULE_PART {
            entry.sha256 = sha256_hex(&module);
            entry.len = module.len() as u64;
        }
    }
    for (name, bytes) in &mut bundle.parts {
        if name == MODULE_PART {
            *bytes = module.clone();
        }
    }
    bundle
}

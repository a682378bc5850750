//! Emits a WebAssembly module from a lowered [`Program`] with `wasm-encoder`.
//!
//! # Module contract (memory layout and calling convention)
//!
//! * **No imports** (no WASI, no host functions). One memory, exported as `memory`, sized to
//!   fit the layout below, with a maximum equal to its minimum (the module cannot grow it).
//! * **Facts** at byte offset [`FACTS_OFFSET`] (0): `FactVector::len_for(shape)` little-endian
//!   `i64` slots in the order documented on [`crate::ir::FactVector`].
//! * **Decisions** at [`decisions_offset`]: for each feature in declaration order three `i64`:
//!   `allowed` (0/1), `limit` ([`NO_LIMIT`] = none), `reason` ([`ReasonCode`] number).
//! * Exports `evaluate: [] -> [i32]`: reads the facts, writes every decision, returns 0. Also
//!   `abi_version: [] -> [i32]` returning [`ABI_VERSION`], `facts_len: [] -> [i32]` and
//!   `features_len: [] -> [i32]`, so a host can check the module matches the manifest.
//! * Pure: the same facts always give the same decisions. Integer arithmetic saturates like
//!   Rust's `saturating_*` (three small internal functions), so no input traps.
//!
//! The module is a direct transcription of [`crate::interp::evaluate`]; a property test runs
//! both on random programs and random facts and requires equal decisions.

use wasm_encoder::{
    BlockType, CodeSection, ExportKind, ExportSection, Function, FunctionSection, Instruction as I,
    MemArg, MemorySection, MemoryType, Module, TypeSection, ValType,
};

use crate::ir::{
    Action, AddonEffect, ArithOp, BoolExpr, CmpOp, Fact, FactVector, FeatureKind, IntExpr,
    NO_LIMIT, OVERRIDE_DENY, OVERRIDE_GRANT, Program, ReasonCode, Shape, SubStatus, Target,
};

pub const ABI_VERSION: i32 = 1;
pub const FACTS_OFFSET: u64 = 0;
/// Bytes per decision: allowed, limit, reason.
pub const DECISION_BYTES: u64 = 24;
pub const PAGE_BYTES: u64 = 65_536;
/// Upper bounds the compiler enforces so a module stays small.
pub const FEATURES_MAX: usize = 1_024;
pub const ADDONS_MAX: usize = 256;
pub const PLANS_MAX: usize = 1_024;

pub fn decisions_offset(shape: Shape) -> u64 {
    FACTS_OFFSET + 8 * FactVector::len_for(shape) as u64
}

pub fn memory_pages(shape: Shape) -> u64 {
    let end = decisions_offset(shape) + DECISION_BYTES * shape.features as u64;
    end.div_ceil(PAGE_BYTES).max(1)
}

/// Why a program cannot be emitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmitError {
    #[error("{what}: {count} is more than the {max} a module supports")]
    TooLarge {
        what: &'static str,
        count: usize,
        max: usize,
    },
}

// Function indices: the three helpers, then the exports.
const F_SAT_ADD: u32 = 0;
const F_SAT_SUB: u32 = 1;
const F_SAT_MUL: u32 = 2;
const F_EVALUATE: u32 = 3;
const F_ABI: u32 = 4;
const F_FACTS_LEN: u32 = 5;
const F_FEATURES_LEN: u32 = 6;

// Locals of `evaluate`.
const L_PLAN: u32 = 0;
const L_GRANTS: u32 = 1; // i64 0/1: the subscription status grants
const L_TMP: u32 = 2;
const L_TMP2: u32 = 3;
const L_QTY: u32 = 4;

fn mem(offset: u64) -> MemArg {
    MemArg {
        offset,
        align: 3,
        memory_index: 0,
    }
}

struct Emitter<'a> {
    program: &'a Program,
    shape: Shape,
    out: u64,
    f: Function,
}

impl Emitter<'_> {
    fn ins(&mut self, i: &I<'_>) {
        self.f.instruction(i);
    }

    fn fact_addr(&self, fact: Fact) -> u64 {
        FACTS_OFFSET + 8 * fact.slot(self.shape) as u64
    }

    fn allowed_addr(&self, feature: usize) -> u64 {
        self.out + DECISION_BYTES * feature as u64
    }

    fn limit_addr(&self, feature: usize) -> u64 {
        self.allowed_addr(feature) + 8
    }

    fn reason_addr(&self, feature: usize) -> u64 {
        self.allowed_addr(feature) + 16
    }

    /// Pushes the i64 at a constant address.
    fn load(&mut self, addr: u64) {
        self.ins(&I::I32Const(0));
        self.ins(&I::I64Load(mem(addr)));
    }

    /// Stores a constant.
    fn store_const(&mut self, addr: u64, value: i64) {
        self.ins(&I::I32Const(0));
        self.ins(&I::I64Const(value));
        self.ins(&I::I64Store(mem(addr)));
    }

    /// Stores a local.
    fn store_local(&mut self, addr: u64, local: u32) {
        self.ins(&I::I32Const(0));
        self.ins(&I::LocalGet(local));
        self.ins(&I::I64Store(mem(addr)));
    }

    fn decide_const(&mut self, feature: usize, allowed: bool, limit: i64, reason: ReasonCode) {
        self.store_const(self.allowed_addr(feature), i64::from(allowed));
        self.store_const(self.limit_addr(feature), limit);
        self.store_const(self.reason_addr(feature), reason as i64);
    }

    /// Pushes an i32: whether the feature is allowed so far.
    fn allowed(&mut self, feature: usize) {
        self.load(self.allowed_addr(feature));
        self.ins(&I::I64Const(0));
        self.ins(&I::I64Ne);
    }

    fn int(&mut self, e: &IntExpr) {
        match e {
            IntExpr::Const(v) => self.ins(&I::I64Const(*v)),
            IntExpr::Fact(f) => self.load(self.fact_addr(*f)),
            IntExpr::LimitOf(f) => {
                if (*f as usize) < self.shape.features {
                    self.load(self.limit_addr(*f as usize));
                } else {
                    self.ins(&I::I64Const(NO_LIMIT));
                }
            }
            IntExpr::Arith(op, a, b) => {
                self.int(a);
                self.int(b);
                let f = match op {
                    ArithOp::Add => F_SAT_ADD,
                    ArithOp::Sub => F_SAT_SUB,
                    ArithOp::Mul => F_SAT_MUL,
                };
                self.ins(&I::Call(f));
            }
        }
    }

    /// Pushes an i32 (0/1).
    fn boolean(&mut self, e: &BoolExpr) {
        match e {
            BoolExpr::Const(b) => self.ins(&I::I32Const(i32::from(*b))),
            BoolExpr::Cmp(op, a, b) => {
                self.int(a);
                self.int(b);
                self.ins(&match op {
                    CmpOp::Eq => I::I64Eq,
                    CmpOp::Ne => I::I64Ne,
                    CmpOp::Lt => I::I64LtS,
                    CmpOp::Le => I::I64LeS,
                    CmpOp::Gt => I::I64GtS,
                    CmpOp::Ge => I::I64GeS,
                });
            }
            BoolExpr::AllowedOf(f) => {
                if (*f as usize) < self.shape.features {
                    self.allowed(*f as usize);
                } else {
                    self.ins(&I::I32Const(0));
                }
            }
            // Pure operands: evaluating both sides is equivalent to short-circuiting.
            BoolExpr::And(a, b) => {
                self.boolean(a);
                self.boolean(b);
                self.ins(&I::I32And);
            }
            BoolExpr::Or(a, b) => {
                self.boolean(a);
                self.boolean(b);
                self.ins(&I::I32Or);
            }
            BoolExpr::Not(a) => {
                self.boolean(a);
                self.ins(&I::I32Eqz);
            }
        }
    }

    fn targets(&self, target: Target) -> Vec<usize> {
        self.program
            .features
            .iter()
            .enumerate()
            .filter(|(i, f)| match target {
                Target::All => true,
                Target::AllMetered => f.kind == FeatureKind::Metered,
                Target::Feature(t) => t as usize == *i,
            })
            .map(|(i, _)| i)
            .collect()
    }

    fn base(&mut self) {
        let plans = self.program.plans.len() as i64;
        // plan = facts[plan]; grants = status in (trialing, active, past_due)
        self.load(self.fact_addr(Fact::Plan));
        self.ins(&I::LocalSet(L_PLAN));
        self.load(self.fact_addr(Fact::Status));
        self.ins(&I::LocalTee(L_TMP));
        self.ins(&I::I64Const(SubStatus::Trialing as i64));
        self.ins(&I::I64GeS);
        self.ins(&I::LocalGet(L_TMP));
        self.ins(&I::I64Const(SubStatus::PastDue as i64));
        self.ins(&I::I64LeS);
        self.ins(&I::I32And);
        self.ins(&I::I64ExtendI32U);
        self.ins(&I::LocalSet(L_GRANTS));
        // tmp = base reason: not-in-plan when a known plan grants, else no-subscription.
        self.ins(&I::I64Const(ReasonCode::DeniedNotInPlan as i64));
        self.ins(&I::I64Const(ReasonCode::DeniedNoSubscription as i64));
        self.ins(&I::LocalGet(L_PLAN));
        self.ins(&I::I64Const(0));
        self.ins(&I::I64GeS);
        self.ins(&I::LocalGet(L_PLAN));
        self.ins(&I::I64Const(plans));
        self.ins(&I::I64LtS);
        self.ins(&I::I32And);
        self.ins(&I::LocalGet(L_GRANTS));
        self.ins(&I::I32WrapI64);
        self.ins(&I::I32And);
        self.ins(&I::Select);
        self.ins(&I::LocalSet(L_TMP));
        for f in 0..self.shape.features {
            self.store_const(self.allowed_addr(f), 0);
            self.store_const(self.limit_addr(f), NO_LIMIT);
            self.store_local(self.reason_addr(f), L_TMP);
        }
        let program = self.program;
        for (pi, plan) in program.plans.iter().enumerate() {
            if plan.grants.is_empty() {
                continue;
            }
            self.ins(&I::LocalGet(L_PLAN));
            self.ins(&I::I64Const(pi as i64));
            self.ins(&I::I64Eq);
            self.ins(&I::LocalGet(L_GRANTS));
            self.ins(&I::I32WrapI64);
            self.ins(&I::I32And);
            self.ins(&I::If(BlockType::Empty));
            for g in &plan.grants {
                if (g.feature as usize) < self.shape.features {
                    self.decide_const(g.feature as usize, true, g.limit, ReasonCode::GrantedByPlan);
                }
            }
            self.ins(&I::End);
        }
    }

    fn addons(&mut self) {
        let program = self.program;
        for (a, addon) in program.addons.iter().enumerate() {
            self.load(self.fact_addr(Fact::AddonQty(a as u32)));
            self.ins(&I::LocalTee(L_QTY));
            self.ins(&I::I64Const(0));
            self.ins(&I::I64GtS);
            self.ins(&I::If(BlockType::Empty));
            for (f, effect) in &addon.effects {
                let f = *f as usize;
                if f >= self.shape.features {
                    continue;
                }
                match effect {
                    AddonEffect::Grant => {
                        self.allowed(f);
                        self.ins(&I::I32Eqz);
                        self.ins(&I::If(BlockType::Empty));
                        self.store_const(self.allowed_addr(f), 1);
                        self.store_const(self.reason_addr(f), ReasonCode::GrantedByAddon as i64);
                        self.ins(&I::End);
                    }
                    AddonEffect::AddLimit(n) => {
                        // tmp2 = sat_mul(n, qty)
                        self.ins(&I::I64Const(*n));
                        self.ins(&I::LocalGet(L_QTY));
                        self.ins(&I::Call(F_SAT_MUL));
                        self.ins(&I::LocalSet(L_TMP2));
                        // tmp = allowed ? limit : NO_LIMIT
                        self.load(self.limit_addr(f));
                        self.ins(&I::I64Const(NO_LIMIT));
                        self.allowed(f);
                        self.ins(&I::Select);
                        self.ins(&I::LocalTee(L_TMP));
                        // limit = tmp == NO_LIMIT ? tmp2 : sat_add(tmp, tmp2)
                        self.ins(&I::I64Const(NO_LIMIT));
                        self.ins(&I::I64Eq);
                        self.ins(&I::If(BlockType::Result(ValType::I64)));
                        self.ins(&I::LocalGet(L_TMP2));
                        self.ins(&I::Else);
                        self.ins(&I::LocalGet(L_TMP));
                        self.ins(&I::LocalGet(L_TMP2));
                        self.ins(&I::Call(F_SAT_ADD));
                        self.ins(&I::End);
                        self.ins(&I::LocalSet(L_TMP));
                        // reason = allowed ? reason : granted_by_addon
                        self.allowed(f);
                        self.ins(&I::I32Eqz);
                        self.ins(&I::If(BlockType::Empty));
                        self.store_const(self.reason_addr(f), ReasonCode::GrantedByAddon as i64);
                        self.ins(&I::End);
                        self.store_const(self.allowed_addr(f), 1);
                        self.store_local(self.limit_addr(f), L_TMP);
                    }
                }
            }
            self.ins(&I::End);
        }
    }

    fn action(&mut self, action: &Action) {
        match action {
            Action::Deny { target, reason } => {
                for f in self.targets(*target) {
                    self.decide_const(f, false, NO_LIMIT, *reason);
                }
            }
            Action::Grant {
                target,
                limit,
                reason,
            } => {
                if let Some(e) = limit {
                    self.int(e);
                    self.ins(&I::LocalSet(L_TMP));
                }
                for f in self.targets(*target) {
                    self.store_const(self.allowed_addr(f), 1);
                    if limit.is_some() {
                        self.store_local(self.limit_addr(f), L_TMP);
                    }
                    self.store_const(self.reason_addr(f), *reason as i64);
                }
            }
            Action::SetLimit {
                target,
                value,
                reason,
            } => {
                self.int(value);
                self.ins(&I::LocalSet(L_TMP));
                for f in self.targets(*target) {
                    self.allowed(f);
                    self.ins(&I::If(BlockType::Empty));
                    self.store_local(self.limit_addr(f), L_TMP);
                    self.store_const(self.reason_addr(f), *reason as i64);
                    self.ins(&I::End);
                }
            }
            Action::CapAtUsage { target, reason } => {
                let metered: Vec<usize> = self
                    .targets(*target)
                    .into_iter()
                    .filter(|f| self.program.features[*f].kind == FeatureKind::Metered)
                    .collect();
                for f in metered {
                    self.allowed(f);
                    self.ins(&I::If(BlockType::Empty));
                    // tmp = usage; tmp2 = limit; limit = tmp2 == NO_LIMIT ? tmp : min(tmp2, tmp)
                    self.load(self.fact_addr(Fact::Usage(f as u32)));
                    self.ins(&I::LocalSet(L_TMP));
                    self.load(self.limit_addr(f));
                    self.ins(&I::LocalSet(L_TMP2));
                    self.ins(&I::I32Const(0)); // store address
                    self.ins(&I::LocalGet(L_TMP)); // usage, when there is no limit
                    self.ins(&I::LocalGet(L_TMP2)); // min(limit, usage) = limit < usage ? limit : usage
                    self.ins(&I::LocalGet(L_TMP));
                    self.ins(&I::LocalGet(L_TMP2));
                    self.ins(&I::LocalGet(L_TMP));
                    self.ins(&I::I64LtS);
                    self.ins(&I::Select);
                    self.ins(&I::LocalGet(L_TMP2));
                    self.ins(&I::I64Const(NO_LIMIT));
                    self.ins(&I::I64Eq);
                    self.ins(&I::Select);
                    self.ins(&I::I64Store(mem(self.limit_addr(f))));
                    self.store_const(self.reason_addr(f), *reason as i64);
                    self.ins(&I::End);
                }
            }
        }
    }

    fn rules(&mut self) {
        let program = self.program;
        for rule in &program.rules {
            self.boolean(&rule.when);
            self.ins(&I::If(BlockType::Empty));
            self.action(&rule.action);
            self.ins(&I::End);
        }
    }

    fn overrides(&mut self) {
        for f in 0..self.shape.features {
            self.load(self.fact_addr(Fact::OverrideMode(f as u32)));
            self.ins(&I::LocalTee(L_TMP));
            self.ins(&I::I64Const(OVERRIDE_DENY));
            self.ins(&I::I64Eq);
            self.ins(&I::If(BlockType::Empty));
            self.decide_const(f, false, NO_LIMIT, ReasonCode::Override);
            self.ins(&I::Else);
            self.ins(&I::LocalGet(L_TMP));
            self.ins(&I::I64Const(OVERRIDE_GRANT));
            self.ins(&I::I64Eq);
            self.ins(&I::If(BlockType::Empty));
            self.store_const(self.allowed_addr(f), 1);
            self.ins(&I::I32Const(0));
            self.load(self.fact_addr(Fact::OverrideLimit(f as u32)));
            self.ins(&I::I64Store(mem(self.limit_addr(f))));
            self.store_const(self.reason_addr(f), ReasonCode::Override as i64);
            self.ins(&I::End);
            self.ins(&I::End);
        }
    }
}

/// `(a, b) -> a ⊕ b` saturating, as Rust's `i64::saturating_add` / `saturating_sub`.
fn sat_add_sub(sub: bool) -> Function {
    let mut f = Function::new([(1, ValType::I64)]);
    // r = a ± b (wrapping)
    f.instruction(&I::LocalGet(0));
    f.instruction(&I::LocalGet(1));
    f.instruction(if sub { &I::I64Sub } else { &I::I64Add });
    f.instruction(&I::LocalSet(2));
    // overflow: add: ((a ^ r) & (b ^ r)) < 0 ; sub: ((a ^ b) & (a ^ r)) < 0
    if sub {
        f.instruction(&I::LocalGet(0));
        f.instruction(&I::LocalGet(1));
        f.instruction(&I::I64Xor);
    } else {
        f.instruction(&I::LocalGet(0));
        f.instruction(&I::LocalGet(2));
        f.instruction(&I::I64Xor);
    }
    if sub {
        f.instruction(&I::LocalGet(0));
        f.instruction(&I::LocalGet(2));
        f.instruction(&I::I64Xor);
    } else {
        f.instruction(&I::LocalGet(1));
        f.instruction(&I::LocalGet(2));
        f.instruction(&I::I64Xor);
    }
    f.instruction(&I::I64And);
    f.instruction(&I::I64Const(0));
    f.instruction(&I::I64LtS);
    f.instruction(&I::If(BlockType::Result(ValType::I64)));
    // a < 0 ? MIN : MAX
    f.instruction(&I::I64Const(i64::MIN));
    f.instruction(&I::I64Const(i64::MAX));
    f.instruction(&I::LocalGet(0));
    f.instruction(&I::I64Const(0));
    f.instruction(&I::I64LtS);
    f.instruction(&I::Select);
    f.instruction(&I::Else);
    f.instruction(&I::LocalGet(2));
    f.instruction(&I::End);
    f.instruction(&I::End);
    f
}

/// `(a, b) -> a × b` saturating, as Rust's `i64::saturating_mul`.
fn sat_mul() -> Function {
    let mut f = Function::new([(1, ValType::I64)]);
    // Exact unless: a or b is MIN with the other -1 / any overflow, detected by division.
    // overflow = (a == -1 && b == MIN) || (b == -1 && a == MIN) || (b != 0 && (a*b)/b != a)
    f.instruction(&I::LocalGet(0));
    f.instruction(&I::LocalGet(1));
    f.instruction(&I::I64Mul);
    f.instruction(&I::LocalSet(2));
    f.instruction(&I::LocalGet(0));
    f.instruction(&I::I64Const(-1));
    f.instruction(&I::I64Eq);
    f.instruction(&I::LocalGet(1));
    f.instruction(&I::I64Const(i64::MIN));
    f.instruction(&I::I64Eq);
    f.instruction(&I::I32And);
    f.instruction(&I::LocalGet(1));
    f.instruction(&I::I64Const(-1));
    f.instruction(&I::I64Eq);
    f.instruction(&I::LocalGet(0));
    f.instruction(&I::I64Const(i64::MIN));
    f.instruction(&I::I64Eq);
    f.instruction(&I::I32And);
    f.instruction(&I::I32Or);
    f.instruction(&I::If(BlockType::Result(ValType::I32)));
    f.instruction(&I::I32Const(1));
    f.instruction(&I::Else);
    // b != 0 && r / b != a   (the division cannot trap here: b == -1 only with a != MIN)
    f.instruction(&I::LocalGet(1));
    f.instruction(&I::I64Eqz);
    f.instruction(&I::If(BlockType::Result(ValType::I32)));
    f.instruction(&I::I32Const(0));
    f.instruction(&I::Else);
    f.instruction(&I::LocalGet(2));
    f.instruction(&I::LocalGet(1));
    f.instruction(&I::I64DivS);
    f.instruction(&I::LocalGet(0));
    f.instruction(&I::I64Ne);
    f.instruction(&I::End);
    f.instruction(&I::End);
    f.instruction(&I::If(BlockType::Result(ValType::I64)));
    // signs differ ? MIN : MAX
    f.instruction(&I::I64Const(i64::MIN));
    f.instruction(&I::I64Const(i64::MAX));
    f.instruction(&I::LocalGet(0));
    f.instruction(&I::LocalGet(1));
    f.instruction(&I::I64Xor);
    f.instruction(&I::I64Const(0));
    f.instruction(&I::I64LtS);
    f.instruction(&I::Select);
    f.instruction(&I::Else);
    f.instruction(&I::LocalGet(2));
    f.instruction(&I::End);
    f.instruction(&I::End);
    f
}

fn const_i32(v: i32) -> Function {
    let mut f = Function::new([]);
    f.instruction(&I::I32Const(v));
    f.instruction(&I::End);
    f
}

/// Emits the module's bytes.
pub fn emit(program: &Program) -> Result<Vec<u8>, EmitError> {
    let shape = program.shape();
    for (what, count, max) in [
        ("features", shape.features, FEATURES_MAX),
        ("add-ons", shape.addons, ADDONS_MAX),
        ("plans", program.plans.len(), PLANS_MAX),
    ] {
        if count > max {
            return Err(EmitError::TooLarge { what, count, max });
        }
    }
    let mut types = TypeSection::new();
    types
        .ty()
        .function([ValType::I64, ValType::I64], [ValType::I64]); // 0: binary i64 op
    types.ty().function([], [ValType::I32]); // 1: () -> i32
    let mut functions = FunctionSection::new();
    for ty in [0, 0, 0, 1, 1, 1, 1] {
        functions.function(ty);
    }
    let pages = memory_pages(shape);
    let mut memories = MemorySection::new();
    memories.memory(MemoryType {
        minimum: pages,
        maximum: Some(pages),
        memory64: false,
        shared: false,
        page_size_log2: None,
    });
    let mut exports = ExportSection::new();
    exports.export("memory", ExportKind::Memory, 0);
    exports.export("evaluate", ExportKind::Func, F_EVALUATE);
    exports.export("abi_version", ExportKind::Func, F_ABI);
    exports.export("facts_len", ExportKind::Func, F_FACTS_LEN);
    exports.export("features_len", ExportKind::Func, F_FEATURES_LEN);

    let mut e = Emitter {
        program,
        shape,
        out: decisions_offset(shape),
        f: Function::new([(5, ValType::I64)]),
    };
    e.base();
    e.addons();
    e.rules();
    e.overrides();
    e.ins(&I::I32Const(0));
    e.ins(&I::End);

    let mut code = CodeSection::new();
    code.function(&sat_add_sub(false));
    code.function(&sat_add_sub(true));
    code.function(&sat_mul());
    code.function(&e.f);
    code.function(&const_i32(ABI_VERSION));
    code.function(&const_i32(
        i32::try_from(FactVector::len_for(shape)).unwrap_or(i32::MAX),
    ));
    code.function(&const_i32(
        i32::try_from(shape.features).unwrap_or(i32::MAX),
    ));

    let mut module = Module::new();
    module.section(&types);
    module.section(&functions);
    module.section(&memories);
    module.section(&exports);
    module.section(&code);
    Ok(module.finish())
}

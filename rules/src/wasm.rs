//! Emits a WebAssembly module from a lowered [`Program`] with `wasm-encoder`.
//!
//! # Module contract (memory layout and calling convention), ABI version [`ABI_VERSION`]
//!
//! * **No imports** (no WASI, no host functions), and nothing but types, functions, one
//!   memory, exports and code: no globals, tables, data or element segments, start function
//!   (the host refuses any), so an instance holds no state but its memory.
//! * **Memory**: exported as `memory`, with 1-byte pages ([`PAGE_SIZE_LOG2`], the
//!   custom-page-sizes proposal): its minimum is exactly one **record**
//!   ([`record_bytes`]), its maximum [`BATCH_ACCOUNTS_MAX`] records. The module never grows it;
//!   a host grows it to evaluate several accounts per call. A host that overwrites the whole
//!   memory before each call therefore gives every evaluation a state that depends on its own
//!   facts only, even when it reuses the instance.
//! * **Records**: account `i` of a call has its record at `i × record_bytes`; inside a record
//!   the layout is:
//! * **Facts** at byte offset [`FACTS_OFFSET`] (0): `FactVector::len_for(shape)` little-endian
//!   `i64` slots in the order documented on [`crate::ir::FactVector`] (an override's limit is
//!   two slots, kind and value, as in decisions).
//! * **Decisions** at [`decisions_offset`]: for each feature in declaration order
//!   [`DECISION_BYTES`] = four little-endian `i64`:
//!
//!   | offset | slot | values |
//!   |---|---|---|
//!   | 0 | `allowed` | 0 or 1 |
//!   | 8 | limit kind | [`LIMIT_KIND_NONE`] 0, [`LIMIT_KIND_FINITE`] 1, [`LIMIT_KIND_UNLIMITED`] 2 |
//!   | 16 | limit value | the limit when the kind is finite, else 0 |
//!   | 24 | `reason` | a [`ReasonCode`] number |
//!
//!   No limit, unlimited and every finite `i64` are distinct (no value doubles as a
//!   sentinel). A denied decision has kind none. The host refuses any other combination
//!   ([`crate::ir::Limit::from_slots`]).
//! * Exports `evaluate_batch: [count: i32] -> [i32]`: for each of the first `count` records,
//!   reads the facts and writes every decision; returns 0 (a `count` past the memory traps on
//!   the first access out of bounds). `evaluate: [] -> [i32]` is `evaluate_batch(1)`. Also
//!   `abi_version: [] -> [i32]` returning [`ABI_VERSION`], `facts_len: [] -> [i32]` and
//!   `features_len: [] -> [i32]`, so a host can check the module matches the manifest.
//! * Pure: the same facts always give the same decisions. Integer arithmetic saturates like
//!   Rust's `saturating_*` (three small internal functions), so no input traps.
//!
//! Integer expressions are the extended integers of [`crate::ir`]: each evaluates to two
//! values on the WebAssembly stack, an `i64` and an `i32` flag for +∞ (the `i64` is 0 when the
//! flag is set), and the arithmetic and comparison of pairs are four more internal functions
//! with multiple results.
//!
//! The module is a direct transcription of [`crate::interp::evaluate`]; a property test runs
//! both on random programs and random facts and requires equal decisions.

use wasm_encoder::{
    BlockType, CodeSection, ExportKind, ExportSection, Function, FunctionSection, Instruction as I,
    MemArg, MemorySection, MemoryType, Module, TypeSection, ValType,
};

use crate::ir::{
    Action, AddonEffect, ArithOp, BoolExpr, CmpOp, Fact, FactVector, FeatureKind, IntExpr,
    LIMIT_KIND_FINITE, LIMIT_KIND_NONE, LIMIT_KIND_UNLIMITED, Limit, OVERRIDE_DENY, OVERRIDE_GRANT,
    Program, ReasonCode, Shape, SubStatus, Target, override_limit_slots,
};

/// Version 3: `evaluate_batch` evaluates many accounts per call, each in its own record, and
/// memory has 1-byte pages sized to exactly one record (version 2 had one account per call and
/// 64 KiB pages; version 1 had one slot in which `i64::MIN` meant both "no limit" and
/// "unlimited").
pub const ABI_VERSION: i32 = 3;
pub const FACTS_OFFSET: u64 = 0;
/// Bytes per decision: allowed, limit kind, limit value, reason.
pub const DECISION_BYTES: u64 = 32;
/// `i64` slots per decision.
const DECISION_SLOTS: u64 = DECISION_BYTES / 8;
/// Bytes of a 64 KiB WebAssembly page (the host's reservations are counted in them).
pub const PAGE_BYTES: u64 = 65_536;
/// `log2` of the module memory's page size: 1-byte pages, so the memory can be exactly one
/// record long.
pub const PAGE_SIZE_LOG2: u32 = 0;
/// Accounts one `evaluate_batch` call takes at most: the memory's declared maximum is this
/// many records.
pub const BATCH_ACCOUNTS_MAX: u64 = 64;
/// Upper bounds the compiler enforces so a module stays small.
pub const FEATURES_MAX: usize = 1_024;
pub const ADDONS_MAX: usize = 256;
pub const PLANS_MAX: usize = 1_024;

/// Where a record's decisions start, from the record's start.
pub fn decisions_offset(shape: Shape) -> u64 {
    FACTS_OFFSET + 8 * FactVector::len_for(shape) as u64
}

/// Bytes of one account's record: its facts, then its decisions. Account `i` of a batch has
/// its record at `i × record_bytes`.
pub fn record_bytes(shape: Shape) -> u64 {
    decisions_offset(shape) + DECISION_BYTES * shape.features as u64
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

/// Every way a program is too large for a module ([`FEATURES_MAX`], [`ADDONS_MAX`],
/// [`PLANS_MAX`]): the one size check, run by [`emit`] and by
/// [`crate::compiler::check`] (so `tollgate-rules check` and `compile` refuse the same
/// programs).
pub fn size_errors(program: &Program) -> Vec<EmitError> {
    [
        ("features", program.features.len(), FEATURES_MAX),
        ("add-ons", program.addons.len(), ADDONS_MAX),
        ("plans", program.plans.len(), PLANS_MAX),
    ]
    .into_iter()
    .filter(|(_, count, max)| count > max)
    .map(|(what, count, max)| EmitError::TooLarge { what, count, max })
    .collect()
}

// Function indices: the helpers, then the exports.
const F_SAT_ADD: u32 = 0;
const F_SAT_SUB: u32 = 1;
const F_SAT_MUL: u32 = 2;
const F_EXT_ADD: u32 = 3;
const F_EXT_SUB: u32 = 4;
const F_EXT_MUL: u32 = 5;
const F_EXT_CMP: u32 = 6;
const F_EVALUATE: u32 = 7;
const F_ABI: u32 = 8;
const F_FACTS_LEN: u32 = 9;
const F_FEATURES_LEN: u32 = 10;
const F_EVALUATE_BATCH: u32 = 11;

// Types.
const T_SAT: u32 = 0; // (i64, i64) -> i64
const T_CONST: u32 = 1; // () -> i32
const T_EXT: u32 = 2; // (i64, i32, i64, i32) -> (i64, i32)
const T_EXT_CMP: u32 = 3; // (i64, i32, i64, i32) -> i32
const T_BATCH: u32 = 4; // (i32) -> i32

// Locals of `evaluate_batch` (its parameter first).
const L_COUNT: u32 = 0; // i32 parameter: accounts to evaluate
const L_PLAN: u32 = 1;
const L_GRANTS: u32 = 2; // i64 0/1: the subscription status grants
const L_TMP: u32 = 3;
const L_TMP2: u32 = 4;
const L_QTY: u32 = 5;
const L_INF: u32 = 6; // i32: the +∞ flag of the last value stored
const L_INDEX: u32 = 7; // i32: the account being evaluated
const L_BASE: u32 = 8; // i32: its record's byte offset
const I64_LOCALS: u32 = 5;
const I32_LOCALS: u32 = 3;
// Then DECISION_SLOTS i64 locals per feature: its decision while the account is evaluated.
const L_DECISIONS: u32 = 9;

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

    /// Pushes the address every access adds its constant offset to: the current account's
    /// record.
    fn addr_base(&mut self) {
        self.ins(&I::LocalGet(L_BASE));
    }

    fn fact_addr(&self, fact: Fact) -> u64 {
        FACTS_OFFSET + 8 * fact.slot(self.shape) as u64
    }

    fn allowed_addr(&self, feature: usize) -> u64 {
        self.out + DECISION_BYTES * feature as u64
    }

    fn kind_addr(&self, feature: usize) -> u64 {
        self.allowed_addr(feature) + 8
    }

    fn limit_addr(&self, feature: usize) -> u64 {
        self.allowed_addr(feature) + 16
    }

    fn reason_addr(&self, feature: usize) -> u64 {
        self.allowed_addr(feature) + 24
    }

    /// The local that holds the decision slot at `addr` while an account is evaluated
    /// (decisions live in locals and are written to memory once, at the end).
    fn decision_local(&self, addr: u64) -> u32 {
        L_DECISIONS + ((addr - self.out) / 8) as u32
    }

    /// Pushes the i64 at a constant address of the record: a fact from memory, a decision
    /// slot from its local.
    fn load(&mut self, addr: u64) {
        if addr >= self.out {
            self.ins(&I::LocalGet(self.decision_local(addr)));
        } else {
            self.addr_base();
            self.ins(&I::I64Load(mem(addr)));
        }
    }

    /// Pops the value on the stack into the decision slot at `addr`.
    fn set_decision(&mut self, addr: u64) {
        self.ins(&I::LocalSet(self.decision_local(addr)));
    }

    /// Stores a constant in a decision slot.
    fn store_const(&mut self, addr: u64, value: i64) {
        self.ins(&I::I64Const(value));
        self.set_decision(addr);
    }

    /// Stores a local in a decision slot.
    fn store_local(&mut self, addr: u64, local: u32) {
        self.ins(&I::LocalGet(local));
        self.set_decision(addr);
    }

    /// Writes every decision slot's local to the record, once per account.
    fn write_decisions(&mut self) {
        for slot in 0..DECISION_SLOTS * self.shape.features as u64 {
            let addr = self.out + 8 * slot;
            self.addr_base();
            self.ins(&I::LocalGet(self.decision_local(addr)));
            self.ins(&I::I64Store(mem(addr)));
        }
    }

    fn store_limit_const(&mut self, feature: usize, limit: Limit) {
        let [kind, value] = limit.to_slots();
        self.store_const(self.kind_addr(feature), kind);
        self.store_const(self.limit_addr(feature), value);
    }

    /// Stores the value in `L_TMP` / `L_INF` (an extended integer) as the feature's limit:
    /// unlimited when +∞, else finite.
    fn store_limit_value(&mut self, feature: usize) {
        self.ins(&I::I64Const(LIMIT_KIND_UNLIMITED));
        self.ins(&I::I64Const(LIMIT_KIND_FINITE));
        self.ins(&I::LocalGet(L_INF));
        self.ins(&I::Select);
        self.set_decision(self.kind_addr(feature));
        // The value of +∞ is 0, as a non-finite kind's value slot must be.
        self.store_local(self.limit_addr(feature), L_TMP);
    }

    /// Pops an extended integer into `L_TMP` (value) and `L_INF` (the +∞ flag).
    fn pop_value(&mut self) {
        self.ins(&I::LocalSet(L_INF));
        self.ins(&I::LocalSet(L_TMP));
    }

    fn decide_const(&mut self, feature: usize, allowed: bool, limit: Limit, reason: ReasonCode) {
        self.store_const(self.allowed_addr(feature), i64::from(allowed));
        self.store_limit_const(feature, limit);
        self.store_const(self.reason_addr(feature), reason as i64);
    }

    /// Pushes an i32: whether the feature is allowed so far.
    fn allowed(&mut self, feature: usize) {
        self.load(self.allowed_addr(feature));
        self.ins(&I::I64Const(0));
        self.ins(&I::I64Ne);
    }

    /// Whether an integer expression can only be finite: then it is evaluated as a plain
    /// `i64` ([`Self::finite_int`]), without the +∞ flag and the extended-integer helpers.
    fn is_finite(&self, e: &IntExpr) -> bool {
        match e {
            IntExpr::Const(_) | IntExpr::Fact(_) => true,
            IntExpr::Unlimited => false,
            // Past the last feature a limit reads as the constant 0.
            IntExpr::LimitOf(f) => *f as usize >= self.shape.features,
            // Finite operands give a finite result (saturating): see `ExtInt::arith`.
            IntExpr::Arith(_, a, b) => self.is_finite(a) && self.is_finite(b),
        }
    }

    /// Pushes the `i64` of an expression [`Self::is_finite`] holds for.
    fn finite_int(&mut self, e: &IntExpr) {
        match e {
            IntExpr::Const(v) => self.ins(&I::I64Const(*v)),
            IntExpr::Fact(f) => self.load(self.fact_addr(*f)),
            IntExpr::Arith(op, a, b) => {
                self.finite_int(a);
                self.finite_int(b);
                self.ins(&I::Call(match op {
                    ArithOp::Add => F_SAT_ADD,
                    ArithOp::Sub => F_SAT_SUB,
                    ArithOp::Mul => F_SAT_MUL,
                }));
            }
            IntExpr::LimitOf(_) | IntExpr::Unlimited => self.ins(&I::I64Const(0)),
        }
    }

    /// Pushes an extended integer: the `i64` (0 for +∞), then the `i32` +∞ flag.
    fn int(&mut self, e: &IntExpr) {
        match e {
            IntExpr::Unlimited => {
                self.ins(&I::I64Const(0));
                self.ins(&I::I32Const(1));
            }
            // Within the features (past them it is finite, below): the value slot is 0 for no
            // limit and for unlimited, so no limit reads as 0, unlimited as +∞.
            IntExpr::LimitOf(f) if !self.is_finite(e) => {
                let f = *f as usize;
                self.load(self.limit_addr(f));
                self.load(self.kind_addr(f));
                self.ins(&I::I64Const(LIMIT_KIND_UNLIMITED));
                self.ins(&I::I64Eq);
            }
            IntExpr::Arith(op, a, b) if !self.is_finite(e) => {
                self.int(a);
                self.int(b);
                let f = match op {
                    ArithOp::Add => F_EXT_ADD,
                    ArithOp::Sub => F_EXT_SUB,
                    ArithOp::Mul => F_EXT_MUL,
                };
                self.ins(&I::Call(f));
            }
            // Constants, facts, limits past the last feature, arithmetic of finite values.
            _ => {
                self.finite_int(e);
                self.ins(&I::I32Const(0));
            }
        }
    }

    /// Pushes an i32 (0/1).
    fn boolean(&mut self, e: &BoolExpr) {
        match e {
            BoolExpr::Const(b) => self.ins(&I::I32Const(i32::from(*b))),
            BoolExpr::Cmp(op, a, b) if self.is_finite(a) && self.is_finite(b) => {
                self.finite_int(a);
                self.finite_int(b);
                self.ins(&match op {
                    CmpOp::Eq => I::I64Eq,
                    CmpOp::Ne => I::I64Ne,
                    CmpOp::Lt => I::I64LtS,
                    CmpOp::Le => I::I64LeS,
                    CmpOp::Gt => I::I64GtS,
                    CmpOp::Ge => I::I64GeS,
                });
            }
            BoolExpr::Cmp(op, a, b) => {
                self.int(a);
                self.int(b);
                // -1, 0 or 1, compared with 0.
                self.ins(&I::Call(F_EXT_CMP));
                self.ins(&I::I32Const(0));
                self.ins(&match op {
                    CmpOp::Eq => I::I32Eq,
                    CmpOp::Ne => I::I32Ne,
                    CmpOp::Lt => I::I32LtS,
                    CmpOp::Le => I::I32LeS,
                    CmpOp::Gt => I::I32GtS,
                    CmpOp::Ge => I::I32GeS,
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
            self.store_limit_const(f, Limit::None);
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

    /// Pushes an i32: whether local `local` (a limit kind) equals `kind`.
    fn kind_is(&mut self, local: u32, kind: i64) {
        self.ins(&I::LocalGet(local));
        self.ins(&I::I64Const(kind));
        self.ins(&I::I64Eq);
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
                        // tmp = the limit kind so far: allowed ? kind : none
                        self.load(self.kind_addr(f));
                        self.ins(&I::I64Const(LIMIT_KIND_NONE));
                        self.allowed(f);
                        self.ins(&I::Select);
                        self.ins(&I::LocalSet(L_TMP));
                        // value = unlimited ? 0 : finite ? sat_add(value, tmp2) : tmp2
                        self.ins(&I::I64Const(0));
                        self.load(self.limit_addr(f));
                        self.ins(&I::LocalGet(L_TMP2));
                        self.ins(&I::Call(F_SAT_ADD));
                        self.ins(&I::LocalGet(L_TMP2));
                        self.kind_is(L_TMP, LIMIT_KIND_FINITE);
                        self.ins(&I::Select);
                        self.kind_is(L_TMP, LIMIT_KIND_UNLIMITED);
                        self.ins(&I::Select);
                        self.set_decision(self.limit_addr(f));
                        // kind = unlimited stays unlimited, anything else becomes finite
                        self.ins(&I::I64Const(LIMIT_KIND_UNLIMITED));
                        self.ins(&I::I64Const(LIMIT_KIND_FINITE));
                        self.kind_is(L_TMP, LIMIT_KIND_UNLIMITED);
                        self.ins(&I::Select);
                        self.set_decision(self.kind_addr(f));
                        // reason = allowed ? reason : granted_by_addon
                        self.allowed(f);
                        self.ins(&I::I32Eqz);
                        self.ins(&I::If(BlockType::Empty));
                        self.store_const(self.reason_addr(f), ReasonCode::GrantedByAddon as i64);
                        self.ins(&I::End);
                        self.store_const(self.allowed_addr(f), 1);
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
                    self.decide_const(f, false, Limit::None, *reason);
                }
            }
            Action::Grant {
                target,
                limit,
                reason,
            } => {
                if let Some(e) = limit {
                    self.int(e);
                    self.pop_value();
                }
                for f in self.targets(*target) {
                    self.store_const(self.allowed_addr(f), 1);
                    if limit.is_some() {
                        self.store_limit_value(f);
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
                self.pop_value();
                for f in self.targets(*target) {
                    self.allowed(f);
                    self.ins(&I::If(BlockType::Empty));
                    self.store_limit_value(f);
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
                    // tmp = usage; tmp2 = limit value;
                    // value = kind == finite ? min(tmp2, tmp) : tmp (unlimited and none are
                    // above every usage)
                    self.load(self.fact_addr(Fact::Usage(f as u32)));
                    self.ins(&I::LocalSet(L_TMP));
                    self.load(self.limit_addr(f));
                    self.ins(&I::LocalSet(L_TMP2));
                    self.ins(&I::LocalGet(L_TMP2)); // min(limit, usage) = limit < usage ? limit : usage
                    self.ins(&I::LocalGet(L_TMP));
                    self.ins(&I::LocalGet(L_TMP2));
                    self.ins(&I::LocalGet(L_TMP));
                    self.ins(&I::I64LtS);
                    self.ins(&I::Select);
                    self.ins(&I::LocalGet(L_TMP)); // usage, without a finite limit
                    self.load(self.kind_addr(f));
                    self.ins(&I::I64Const(LIMIT_KIND_FINITE));
                    self.ins(&I::I64Eq);
                    self.ins(&I::Select);
                    self.set_decision(self.limit_addr(f));
                    self.store_const(self.kind_addr(f), LIMIT_KIND_FINITE);
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
            let [kind_slot, value_slot] = override_limit_slots(f as u32, self.shape);
            let (kind_at, value_at) = (
                FACTS_OFFSET + 8 * kind_slot as u64,
                FACTS_OFFSET + 8 * value_slot as u64,
            );
            self.load(self.fact_addr(Fact::OverrideMode(f as u32)));
            self.ins(&I::LocalTee(L_TMP));
            self.ins(&I::I64Const(OVERRIDE_DENY));
            self.ins(&I::I64Eq);
            self.ins(&I::If(BlockType::Empty));
            self.decide_const(f, false, Limit::None, ReasonCode::Override);
            self.ins(&I::Else);
            self.ins(&I::LocalGet(L_TMP));
            self.ins(&I::I64Const(OVERRIDE_GRANT));
            self.ins(&I::I64Eq);
            self.ins(&I::If(BlockType::Empty));
            self.store_const(self.allowed_addr(f), 1);
            // The override's limit, read as Limit::from_fact_slots does: kind finite or
            // unlimited as given, anything else none; the value only when finite.
            self.load(kind_at);
            self.ins(&I::LocalSet(L_TMP2));
            self.ins(&I::I64Const(LIMIT_KIND_FINITE));
            self.ins(&I::I64Const(LIMIT_KIND_UNLIMITED));
            self.ins(&I::I64Const(LIMIT_KIND_NONE));
            self.kind_is(L_TMP2, LIMIT_KIND_UNLIMITED);
            self.ins(&I::Select);
            self.kind_is(L_TMP2, LIMIT_KIND_FINITE);
            self.ins(&I::Select);
            self.set_decision(self.kind_addr(f));
            self.load(value_at);
            self.ins(&I::I64Const(0));
            self.kind_is(L_TMP2, LIMIT_KIND_FINITE);
            self.ins(&I::Select);
            self.set_decision(self.limit_addr(f));
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

// The extended-integer helpers: parameters (a, a_inf, b, b_inf), an `i64` and its `i32` +∞
// flag each, the `i64` 0 whenever the flag is set. They mirror `ir::ExtInt`.
const P_A: u32 = 0;
const P_A_INF: u32 = 1;
const P_B: u32 = 2;
const P_B_INF: u32 = 3;

/// `a + b`: +∞ if either is, else `sat_add`.
fn ext_add() -> Function {
    let mut f = Function::new([]);
    // value = (a_inf | b_inf) ? 0 : sat_add(a, b)
    f.instruction(&I::I64Const(0));
    f.instruction(&I::LocalGet(P_A));
    f.instruction(&I::LocalGet(P_B));
    f.instruction(&I::Call(F_SAT_ADD));
    f.instruction(&I::LocalGet(P_A_INF));
    f.instruction(&I::LocalGet(P_B_INF));
    f.instruction(&I::I32Or);
    f.instruction(&I::Select);
    // inf = a_inf | b_inf
    f.instruction(&I::LocalGet(P_A_INF));
    f.instruction(&I::LocalGet(P_B_INF));
    f.instruction(&I::I32Or);
    f.instruction(&I::End);
    f
}

/// `a − b`: +∞ when `a` is +∞, `i64::MIN` when only `b` is, else `sat_sub`.
fn ext_sub() -> Function {
    let mut f = Function::new([]);
    // value = a_inf ? 0 : (b_inf ? MIN : sat_sub(a, b))
    f.instruction(&I::I64Const(0));
    f.instruction(&I::I64Const(i64::MIN));
    f.instruction(&I::LocalGet(P_A));
    f.instruction(&I::LocalGet(P_B));
    f.instruction(&I::Call(F_SAT_SUB));
    f.instruction(&I::LocalGet(P_B_INF));
    f.instruction(&I::Select);
    f.instruction(&I::LocalGet(P_A_INF));
    f.instruction(&I::Select);
    // inf = a_inf
    f.instruction(&I::LocalGet(P_A_INF));
    f.instruction(&I::End);
    f
}

/// `a × b`: with a +∞ operand, +∞ if the other is +∞ or positive, 0 if it is 0, `i64::MIN`
/// if it is negative; else `sat_mul`.
fn ext_mul() -> Function {
    const L_OTHER: u32 = 4; // i64: the operand that is not the +∞ one
    const L_INF_OUT: u32 = 5; // i32
    let mut f = Function::new([(1, ValType::I64), (1, ValType::I32)]);
    // other = a_inf ? b : a
    f.instruction(&I::LocalGet(P_B));
    f.instruction(&I::LocalGet(P_A));
    f.instruction(&I::LocalGet(P_A_INF));
    f.instruction(&I::Select);
    f.instruction(&I::LocalSet(L_OTHER));
    // inf = (a_inf | b_inf) & ((a_inf & b_inf) | other > 0)
    f.instruction(&I::LocalGet(P_A_INF));
    f.instruction(&I::LocalGet(P_B_INF));
    f.instruction(&I::I32Or);
    f.instruction(&I::LocalGet(P_A_INF));
    f.instruction(&I::LocalGet(P_B_INF));
    f.instruction(&I::I32And);
    f.instruction(&I::LocalGet(L_OTHER));
    f.instruction(&I::I64Const(0));
    f.instruction(&I::I64GtS);
    f.instruction(&I::I32Or);
    f.instruction(&I::I32And);
    f.instruction(&I::LocalSet(L_INF_OUT));
    // value = (a_inf | b_inf) ? ((!inf & other < 0) ? MIN : 0) : sat_mul(a, b)
    f.instruction(&I::I64Const(i64::MIN));
    f.instruction(&I::I64Const(0));
    f.instruction(&I::LocalGet(L_INF_OUT));
    f.instruction(&I::I32Eqz);
    f.instruction(&I::LocalGet(L_OTHER));
    f.instruction(&I::I64Const(0));
    f.instruction(&I::I64LtS);
    f.instruction(&I::I32And);
    f.instruction(&I::Select);
    f.instruction(&I::LocalGet(P_A));
    f.instruction(&I::LocalGet(P_B));
    f.instruction(&I::Call(F_SAT_MUL));
    f.instruction(&I::LocalGet(P_A_INF));
    f.instruction(&I::LocalGet(P_B_INF));
    f.instruction(&I::I32Or);
    f.instruction(&I::Select);
    f.instruction(&I::LocalGet(L_INF_OUT));
    f.instruction(&I::End);
    f
}

/// `compare(a, b)` as an `i32`: -1, 0 or 1, with +∞ equal to itself and above every `i64`.
fn ext_cmp() -> Function {
    let mut f = Function::new([]);
    // (a_inf | b_inf) ? a_inf - b_inf : (a > b) - (a < b)
    f.instruction(&I::LocalGet(P_A_INF));
    f.instruction(&I::LocalGet(P_B_INF));
    f.instruction(&I::I32Sub);
    f.instruction(&I::LocalGet(P_A));
    f.instruction(&I::LocalGet(P_B));
    f.instruction(&I::I64GtS);
    f.instruction(&I::LocalGet(P_A));
    f.instruction(&I::LocalGet(P_B));
    f.instruction(&I::I64LtS);
    f.instruction(&I::I32Sub);
    f.instruction(&I::LocalGet(P_A_INF));
    f.instruction(&I::LocalGet(P_B_INF));
    f.instruction(&I::I32Or);
    f.instruction(&I::Select);
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
    if let Some(e) = size_errors(program).into_iter().next() {
        return Err(e);
    }
    let shape = program.shape();
    let ext = [ValType::I64, ValType::I32, ValType::I64, ValType::I32];
    let mut types = TypeSection::new();
    types
        .ty()
        .function([ValType::I64, ValType::I64], [ValType::I64]); // T_SAT
    types.ty().function([], [ValType::I32]); // T_CONST
    types.ty().function(ext, [ValType::I64, ValType::I32]); // T_EXT
    types.ty().function(ext, [ValType::I32]); // T_EXT_CMP
    types.ty().function([ValType::I32], [ValType::I32]); // T_BATCH
    let mut functions = FunctionSection::new();
    // In function index order (F_*).
    for ty in [
        T_SAT, T_SAT, T_SAT, T_EXT, T_EXT, T_EXT, T_EXT_CMP, T_CONST, T_CONST, T_CONST, T_CONST,
        T_BATCH,
    ] {
        functions.function(ty);
    }
    let record = record_bytes(shape);
    let mut memories = MemorySection::new();
    memories.memory(MemoryType {
        minimum: record,
        maximum: Some(record * BATCH_ACCOUNTS_MAX),
        memory64: false,
        shared: false,
        page_size_log2: Some(PAGE_SIZE_LOG2),
    });
    let mut exports = ExportSection::new();
    exports.export("memory", ExportKind::Memory, 0);
    exports.export("evaluate", ExportKind::Func, F_EVALUATE);
    exports.export("abi_version", ExportKind::Func, F_ABI);
    exports.export("facts_len", ExportKind::Func, F_FACTS_LEN);
    exports.export("features_len", ExportKind::Func, F_FEATURES_LEN);
    exports.export("evaluate_batch", ExportKind::Func, F_EVALUATE_BATCH);

    let mut e = Emitter {
        program,
        shape,
        out: decisions_offset(shape),
        f: Function::new([
            (I64_LOCALS, ValType::I64),
            (I32_LOCALS, ValType::I32),
            (
                (DECISION_SLOTS * shape.features as u64) as u32,
                ValType::I64,
            ),
        ]),
    };
    // for (index = 0; index < count; index++) { base = index × record; <one account> }
    let record_i32 = i32::try_from(record).unwrap_or(i32::MAX);
    e.ins(&I::Block(BlockType::Empty));
    e.ins(&I::Loop(BlockType::Empty));
    e.ins(&I::LocalGet(L_INDEX));
    e.ins(&I::LocalGet(L_COUNT));
    e.ins(&I::I32GeS);
    e.ins(&I::BrIf(1));
    e.ins(&I::LocalGet(L_INDEX));
    e.ins(&I::I32Const(record_i32));
    e.ins(&I::I32Mul);
    e.ins(&I::LocalSet(L_BASE));
    e.base();
    e.addons();
    e.rules();
    e.overrides();
    e.write_decisions();
    e.ins(&I::LocalGet(L_INDEX));
    e.ins(&I::I32Const(1));
    e.ins(&I::I32Add);
    e.ins(&I::LocalSet(L_INDEX));
    e.ins(&I::Br(0));
    e.ins(&I::End);
    e.ins(&I::End);
    e.ins(&I::I32Const(0));
    e.ins(&I::End);

    // `evaluate` is a batch of one.
    let mut single = Function::new([]);
    single.instruction(&I::I32Const(1));
    single.instruction(&I::Call(F_EVALUATE_BATCH));
    single.instruction(&I::End);

    let mut code = CodeSection::new();
    code.function(&sat_add_sub(false));
    code.function(&sat_add_sub(true));
    code.function(&sat_mul());
    code.function(&ext_add());
    code.function(&ext_sub());
    code.function(&ext_mul());
    code.function(&ext_cmp());
    code.function(&single);
    code.function(&const_i32(ABI_VERSION));
    code.function(&const_i32(
        i32::try_from(FactVector::len_for(shape)).unwrap_or(i32::MAX),
    ));
    code.function(&const_i32(
        i32::try_from(shape.features).unwrap_or(i32::MAX),
    ));
    code.function(&e.f);

    let mut module = Module::new();
    module.section(&types);
    module.section(&functions);
    module.section(&memories);
    module.section(&exports);
    module.section(&code);
    Ok(module.finish())
}

//! Runs compiled rule modules under wasmtime, contained.
//!
//! One [`RulesEngine`] per process (a wasmtime `Engine` with epoch interruption); one
//! [`LoadedRules`] per bundle: the module is validated and compiled once, checked against the
//! contract in [`crate::wasm`] (no imports and no state but its memory, the expected exports,
//! layout sizes matching the manifest), and pre-linked into an `InstancePre`. Every call runs
//! under a memory cap and a deadline ([`CALL_DEADLINE`]), so a module that loops forever, grows
//! memory or traps is stopped with a typed [`HostError`]; the instance it ran in is dropped.
//!
//! The deadline is counted in epochs, not fuel: a thread of the engine's own advances its
//! epoch every [`EPOCH_TICK`], and compiled code checks it only at function entries and loop
//! headers. Fuel counts every basic block, which cost the batch path about a seventh of its
//! time (`bench/results/materialise.md`); an epoch check is one load and compare per account.
//!
//! Instances are reused, and that is safe by construction: a module holds no state but its
//! memory (the load refuses globals, tables, data and element segments), and before every
//! call the host writes that memory whole — facts, decision slots filled with `0xff`, zeros
//! past the last record. So an evaluation on a kept instance sees exactly what a fresh one
//! would, at the cost of a call instead of an instantiation. A single evaluation takes one of
//! up to [`IDLE_INSTANCES_MAX`] kept one-record instances; a batch grows one instance's memory
//! to [`crate::wasm::BATCH_ACCOUNTS_MAX`] records and evaluates that many accounts per call.
//!
//! Module bytes are always compiled from source form here: `Module::deserialize` of untrusted
//! bytes is never used.

use wasmtime::{
    Config, Engine, Instance, InstanceAllocationStrategy, InstancePre, Linker, Memory, Module,
    PoolingAllocationConfig, Store, StoreLimits, StoreLimitsBuilder, Trap, TypedFunc,
};

use std::sync::Mutex;

use crate::ir::{FactVector, LIMIT_KIND_NONE, Limit, RawDecision, ReasonCode, Shape};
use crate::wasm::{
    ABI_VERSION, BATCH_ACCOUNTS_MAX, DECISION_BYTES, FACTS_OFFSET, PAGE_BYTES, PAGE_SIZE_LOG2,
    decisions_offset, record_bytes,
};

/// How often the engine's epoch advances: the granularity of the deadline.
pub const EPOCH_TICK: std::time::Duration = std::time::Duration::from_millis(10);
/// Epochs one call into a module may run for. A batch call of the demo rules takes
/// microseconds, so this stops a runaway loop within [`CALL_DEADLINE`] while a call that is
/// merely descheduled on a loaded machine is left alone.
pub const CALL_DEADLINE_TICKS: u64 = 50;
/// The wall time a call into a module may run before it is stopped (to within one tick).
pub const CALL_DEADLINE: std::time::Duration =
    EPOCH_TICK.saturating_mul(CALL_DEADLINE_TICKS as u32);
/// Linear memory a module may have at most.
pub const MEMORY_BYTES_MAX: usize = 16 * PAGE_BYTES as usize;
/// Instances (hence stores evaluating at once) the pool holds; evaluation is synchronous and
/// short, so this bounds concurrency, not throughput.
pub const POOL_INSTANCES: u32 = 256;
/// Module bytes accepted at most.
pub const MODULE_BYTES_MAX: usize = 8 * 1024 * 1024;
/// One-record instances a [`LoadedRules`] keeps for single evaluations, at most (about the
/// number of threads that evaluate at once; more are instantiated and dropped).
pub const IDLE_INSTANCES_MAX: usize = 16;

/// Why a module was refused or an evaluation failed. None is retryable with the same module.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("module is {0} bytes, more than {MODULE_BYTES_MAX}")]
    TooLarge(usize),
    #[error("module does not compile: {0}")]
    Compile(String),
    #[error("module breaks the contract: {0}")]
    Contract(String),
    #[error("evaluation ran past its deadline of {} ms (endless loop?)", CALL_DEADLINE.as_millis())]
    DeadlineExceeded,
    #[error("module exceeded its memory limit")]
    Memory,
    #[error("module trapped: {0}")]
    Trap(String),
    #[error("module wrote an invalid decision: {0}")]
    BadOutput(String),
}

fn classify(err: wasmtime::Error) -> HostError {
    match err.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => HostError::DeadlineExceeded,
        Some(t) => HostError::Trap(t.to_string()),
        None => {
            let text = format!("{err:#}");
            if text.contains("memory") && (text.contains("limit") || text.contains("grow")) {
                HostError::Memory
            } else {
                HostError::Trap(text)
            }
        }
    }
}

/// The process-wide engine.
#[derive(Clone)]
pub struct RulesEngine {
    engine: Engine,
}

impl RulesEngine {
    pub fn new() -> Result<Self, HostError> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        // The extended-integer helpers are small and called in every rule's condition:
        // inlined, a call costs nothing.
        config.compiler_inlining(wasmtime::Inlining::Yes);
        // Modules have 1-byte pages, so a memory is exactly one record (see crate::wasm).
        config.wasm_custom_page_sizes(true);
        // Instances come from a pre-reserved pool: creating a `Store` and an instance per
        // evaluation is then a few microseconds instead of an mmap/munmap of a fresh linear
        // memory. Each slot's memory is capped at MEMORY_BYTES_MAX, with a small reservation
        // and guard (bounds checks are explicit), so the pool costs little address space.
        let mut pool = PoolingAllocationConfig::default();
        pool.total_core_instances(POOL_INSTANCES)
            .total_memories(POOL_INSTANCES)
            .total_tables(POOL_INSTANCES)
            .max_memory_size(MEMORY_BYTES_MAX)
            // Reset a slot's (small) memory with memset rather than a madvise syscall.
            .linear_memory_keep_resident(MEMORY_BYTES_MAX)
            .table_keep_resident(PAGE_BYTES as usize);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        config.memory_reservation(MEMORY_BYTES_MAX as u64);
        config.memory_guard_size(PAGE_BYTES);
        let engine = Engine::new(&config).map_err(|e| HostError::Compile(format!("{e:#}")))?;
        spawn_epoch_ticker(&engine)?;
        Ok(Self { engine })
    }

    /// Emits a program's module and loads it (what a bundle carries, without the bundle).
    pub fn load_program(&self, program: &crate::ir::Program) -> Result<LoadedRules, HostError> {
        let module = crate::wasm::emit(program).map_err(|e| HostError::Contract(e.to_string()))?;
        self.load(&module, program.shape())
    }

    /// Validates, compiles and checks a module for a program of `shape`.
    pub fn load(&self, bytes: &[u8], shape: Shape) -> Result<LoadedRules, HostError> {
        if bytes.len() > MODULE_BYTES_MAX {
            return Err(HostError::TooLarge(bytes.len()));
        }
        let module =
            Module::new(&self.engine, bytes).map_err(|e| HostError::Compile(format!("{e:#}")))?;
        if let Some(import) = module.imports().next() {
            return Err(HostError::Contract(format!(
                "imports {}::{} (modules must import nothing)",
                import.module(),
                import.name()
            )));
        }
        only_stateless_sections(bytes)?;
        let linker = Linker::new(&self.engine);
        let pre = linker
            .instantiate_pre(&module)
            .map_err(|e| HostError::Contract(format!("{e:#}")))?;
        let record = record_bytes(shape);
        let mut rules = LoadedRules {
            engine: self.engine.clone(),
            pre,
            shape,
            record: usize::try_from(record).unwrap_or(usize::MAX),
            batch_max: 1,
            idle: Mutex::new(Vec::new()),
        };
        // Instantiate once to check the exports and the layout it declares.
        let mut inst = rules.instantiate()?;
        let abi = inst.call_i32("abi_version")?;
        let facts_len = inst.call_i32("facts_len")?;
        let features_len = inst.call_i32("features_len")?;
        let want_facts = FactVector::len_for(shape);
        if abi != ABI_VERSION
            || facts_len as usize != want_facts
            || features_len as usize != shape.features
        {
            return Err(HostError::Contract(format!(
                "module declares abi {abi}, {facts_len} fact slots, {features_len} features; \
                 expected abi {ABI_VERSION}, {want_facts} slots, {} features",
                shape.features
            )));
        }
        let ty = inst.memory.ty(&inst.store);
        let size = inst.memory.data_size(&inst.store) as u64;
        if ty.page_size_log2() != PAGE_SIZE_LOG2 as u8 || size != record {
            return Err(HostError::Contract(format!(
                "memory is {size} bytes in pages of 2^{} bytes; the layout needs exactly {record} \
                 bytes in 1-byte pages",
                ty.page_size_log2()
            )));
        }
        let declared_max = ty.maximum().unwrap_or(record);
        let fits = (MEMORY_BYTES_MAX as u64).min(declared_max) / record.max(1);
        rules.batch_max = usize::try_from(fits.min(BATCH_ACCOUNTS_MAX)).unwrap_or(1);
        if rules.batch_max == 0 {
            return Err(HostError::Contract(format!(
                "a record of {record} bytes does not fit the {MEMORY_BYTES_MAX}-byte memory cap"
            )));
        }
        rules.release(inst);
        Ok(rules)
    }
}

/// Advances the engine's epoch every [`EPOCH_TICK`] for as long as the engine (any clone of it)
/// lives; the thread ends at the first tick after the last clone is dropped.
fn spawn_epoch_ticker(engine: &Engine) -> Result<(), HostError> {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("rules-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .map(drop)
        .map_err(|e| HostError::Compile(format!("epoch thread: {e}")))
}

/// Refuses a module with anything an instance could keep state in besides its memory
/// (globals, tables, data or element segments) or run at instantiation (a start function):
/// the emitter writes none, and their absence is what lets a host reuse an instance whose
/// memory it overwrites whole.
fn only_stateless_sections(bytes: &[u8]) -> Result<(), HostError> {
    use wasmparser::Payload as P;
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(|e| HostError::Compile(e.to_string()))?;
        let refused = match payload {
            P::Version { .. }
            | P::TypeSection(_)
            | P::FunctionSection(_)
            | P::MemorySection(_)
            | P::ExportSection(_)
            | P::CodeSectionStart { .. }
            | P::CodeSectionEntry(_)
            | P::CustomSection(_)
            | P::End(_) => None,
            P::ImportSection(_) => Some("imports"),
            P::TableSection(_) => Some("a table"),
            P::GlobalSection(_) => Some("globals"),
            P::StartSection { .. } => Some("a start function"),
            P::ElementSection(_) => Some("element segments"),
            P::DataCountSection { .. } | P::DataSection(_) => Some("data segments"),
            _ => Some("a section outside the contract"),
        };
        if let Some(what) = refused {
            return Err(HostError::Contract(format!(
                "module has {what} (modules hold no state but their memory)"
            )));
        }
    }
    Ok(())
}

/// A verified module ready to evaluate.
pub struct LoadedRules {
    engine: Engine,
    pre: InstancePre<StoreLimits>,
    shape: Shape,
    /// Bytes of one account's record ([`record_bytes`]).
    record: usize,
    /// Accounts per `evaluate_batch` call.
    batch_max: usize,
    /// One-record instances between single evaluations.
    idle: Mutex<Vec<Instantiated>>,
}

/// One instantiated module with its store.
struct Instantiated {
    store: Store<StoreLimits>,
    instance: Instance,
    memory: Memory,
    evaluate_batch: TypedFunc<i32, i32>,
}

impl Instantiated {
    fn call_i32(&mut self, name: &str) -> Result<i32, HostError> {
        let f = self
            .instance
            .get_typed_func::<(), i32>(&mut self.store, name)
            .map_err(|e| HostError::Contract(format!("export {name}: {e:#}")))?;
        self.store.set_epoch_deadline(CALL_DEADLINE_TICKS);
        f.call(&mut self.store, ()).map_err(classify)
    }
}

/// [`decode`] for a well-formed decision, `None` for any other: the per-decision path of a
/// batch (branch-light, no error built), with [`decode`] run only to say what was wrong.
#[inline(always)]
fn decode_valid(c: &[u8]) -> Option<RawDecision> {
    let word = |i: usize| {
        let b: [u8; 8] = c[i * 8..i * 8 + 8].try_into().unwrap_or([0xff; 8]);
        i64::from_le_bytes(b)
    };
    let (allowed, kind, value) = (word(0), word(1), word(2));
    let limit = Limit::from_slots(kind, value)?;
    let reason = ReasonCode::from_code(word(3))?;
    // allowed is 0 or 1, and a denial carries no limit.
    if (allowed as u64) > 1 || (allowed == 0 && kind != LIMIT_KIND_NONE) {
        return None;
    }
    Some(RawDecision {
        allowed: allowed == 1,
        limit,
        reason,
    })
}

/// Stands in for a decision that did not decode, in a record that is then refused whole.
const PLACEHOLDER: RawDecision = RawDecision {
    allowed: false,
    limit: Limit::None,
    reason: ReasonCode::DeniedNoSubscription,
};

/// Why a record's decisions (`slots`, every feature's) were refused: the first that
/// [`decode`] refuses.
#[cold]
fn refusal(slots: &[u8]) -> HostError {
    slots
        .chunks_exact(DECISION_BYTES as usize)
        .find_map(|c| decode(c).err())
        .unwrap_or_else(|| HostError::BadOutput("a decision the fast decode refused".into()))
}

/// A decision's four slots as the module wrote them, checked.
#[inline]
fn decode(c: &[u8]) -> Result<RawDecision, HostError> {
    let word = |i: usize| {
        let b: [u8; 8] = c[i * 8..i * 8 + 8].try_into().unwrap_or([0xff; 8]);
        i64::from_le_bytes(b)
    };
    let allowed = match word(0) {
        0 => false,
        1 => true,
        other => return Err(HostError::BadOutput(format!("allowed = {other}"))),
    };
    let limit = Limit::from_slots(word(1), word(2)).ok_or_else(|| {
        HostError::BadOutput(format!("limit kind {}, value {}", word(1), word(2)))
    })?;
    if !allowed && limit != Limit::None {
        return Err(HostError::BadOutput(format!(
            "a denial with a limit ({limit:?})"
        )));
    }
    let reason = ReasonCode::from_code(word(3))
        .ok_or_else(|| HostError::BadOutput(format!("reason = {}", word(3))))?;
    Ok(RawDecision {
        allowed,
        limit,
        reason,
    })
}

impl LoadedRules {
    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// Accounts one call into the module evaluates at most.
    pub fn batch_max(&self) -> usize {
        self.batch_max
    }

    fn instantiate(&self) -> Result<Instantiated, HostError> {
        let limits = StoreLimitsBuilder::new()
            .memory_size(MEMORY_BYTES_MAX)
            .instances(1)
            .memories(1)
            .tables(1)
            .trap_on_grow_failure(true)
            .build();
        let mut store = Store::new(&self.engine, limits);
        store.limiter(|l| l);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(CALL_DEADLINE_TICKS);
        let instance = self.pre.instantiate(&mut store).map_err(classify)?;
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or_else(|| HostError::Contract("no exported memory".into()))?;
        let evaluate_batch = instance
            .get_typed_func::<i32, i32>(&mut store, "evaluate_batch")
            .map_err(|e| HostError::Contract(format!("export evaluate_batch: {e:#}")))?;
        Ok(Instantiated {
            store,
            instance,
            memory,
            evaluate_batch,
        })
    }

    /// An instance of one record: a kept one, else a new one.
    fn acquire(&self) -> Result<Instantiated, HostError> {
        let kept = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match kept {
            Some(inst) => Ok(inst),
            None => self.instantiate(),
        }
    }

    /// Keeps a one-record instance that evaluated without error for the next evaluation.
    fn release(&self, inst: Instantiated) {
        if inst.memory.data_size(&inst.store) != self.record {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < IDLE_INSTANCES_MAX {
            idle.push(inst);
        }
    }

    /// Evaluates `facts` (at most as many accounts as the instance's memory holds records) in
    /// one call. Before it the host writes the whole memory: each record's facts, its decision
    /// slots filled with `0xff` (a decision the module leaves unwritten is refused, never an
    /// earlier account's), every byte past the last record zeroed. So nothing of an earlier
    /// call reaches this one, even on a reused instance.
    fn run_chunk(
        &self,
        inst: &mut Instantiated,
        facts: &[FactVector],
        out: &mut Vec<Vec<RawDecision>>,
    ) -> Result<(), HostError> {
        let want = FactVector::len_for(self.shape);
        if let Some(bad) = facts.iter().find(|f| f.0.len() != want) {
            return Err(HostError::Contract(format!(
                "{} fact slots given, the program needs {want}",
                bad.0.len()
            )));
        }
        let record = self.record;
        let split = decisions_offset(self.shape) as usize;
        let used = record * facts.len();
        let data = inst.memory.data_mut(&mut inst.store);
        if data.len() < used {
            return Err(HostError::Contract(format!(
                "{} accounts do not fit a memory of {} bytes",
                facts.len(),
                data.len()
            )));
        }
        let (records, rest) = data.split_at_mut(used);
        for (rec, f) in records.chunks_exact_mut(record).zip(facts) {
            let (slots, decisions) = rec.split_at_mut(split);
            for (slot, v) in slots[FACTS_OFFSET as usize..].chunks_exact_mut(8).zip(&f.0) {
                slot.copy_from_slice(&v.to_le_bytes());
            }
            decisions.fill(0xff);
        }
        rest.fill(0);
        let count = i32::try_from(facts.len())
            .map_err(|_| HostError::Contract("too many accounts for one call".into()))?;
        inst.store.set_epoch_deadline(CALL_DEADLINE_TICKS);
        let status = inst
            .evaluate_batch
            .call(&mut inst.store, count)
            .map_err(classify)?;
        if status != 0 {
            return Err(HostError::BadOutput(format!("evaluate returned {status}")));
        }
        let data = inst.memory.data(&inst.store);
        if data.len() < used {
            return Err(HostError::BadOutput("the module shrank its memory".into()));
        }
        let features = self.shape.features;
        for rec in data[..used].chunks_exact(record) {
            // Collected from an exact-size iterator: one allocation, no capacity checks. A
            // slot that does not decode leaves a placeholder and marks the record bad; the
            // checked decode then says what was wrong.
            let mut bad = false;
            let decisions: Vec<RawDecision> = rec[split..]
                .chunks_exact(DECISION_BYTES as usize)
                .map(|slots| {
                    decode_valid(slots).unwrap_or_else(|| {
                        bad = true;
                        PLACEHOLDER
                    })
                })
                .collect();
            if bad {
                return Err(refusal(&rec[split..]));
            }
            debug_assert_eq!(decisions.len(), features);
            out.push(decisions);
        }
        Ok(())
    }

    /// Decides every feature for one account. The instance is one kept from an earlier
    /// evaluation when there is one (its whole memory is rewritten first, and modules hold no
    /// other state: see [`crate::wasm`]); one that failed is dropped, never reused.
    pub fn evaluate(&self, facts: &FactVector) -> Result<Vec<RawDecision>, HostError> {
        let mut inst = self.acquire()?;
        let mut out = Vec::with_capacity(1);
        self.run_chunk(&mut inst, std::slice::from_ref(facts), &mut out)?;
        self.release(inst);
        out.pop()
            .ok_or_else(|| HostError::BadOutput("no decisions".into()))
    }

    /// Decides every feature for one account in a fresh store and instance (the cost of an
    /// evaluation that reuses nothing; kept for comparison).
    pub fn evaluate_fresh(&self, facts: &FactVector) -> Result<Vec<RawDecision>, HostError> {
        let mut inst = self.instantiate()?;
        let mut out = Vec::with_capacity(1);
        self.run_chunk(&mut inst, std::slice::from_ref(facts), &mut out)?;
        out.pop()
            .ok_or_else(|| HostError::BadOutput("no decisions".into()))
    }

    /// Decides many accounts: one instance whose memory is grown to [`Self::batch_max`]
    /// records, one call into the module per that many accounts, each call under its own
    /// deadline. A trap stops the batch.
    pub fn evaluate_batch(&self, facts: &[FactVector]) -> Result<Vec<Vec<RawDecision>>, HostError> {
        let mut out = Vec::with_capacity(facts.len());
        if facts.is_empty() {
            return Ok(out);
        }
        let mut inst = self.instantiate()?;
        let per_call = self.batch_max.min(facts.len());
        let grow = (per_call - 1) * self.record;
        if grow > 0 {
            inst.memory
                .grow(&mut inst.store, grow as u64)
                .map_err(|_| HostError::Memory)?;
        }
        for chunk in facts.chunks(per_call) {
            self.run_chunk(&mut inst, chunk, &mut out)?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{LIMIT_KIND_FINITE, LIMIT_KIND_UNLIMITED};

    fn slots(words: [i64; 4]) -> Vec<u8> {
        words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    #[test]
    fn well_formed_decisions_decode_and_every_malformed_one_is_refused_with_its_reason() {
        let granted = slots([
            1,
            LIMIT_KIND_FINITE,
            i64::MIN,
            ReasonCode::GrantedByPlan as i64,
        ]);
        let want = RawDecision {
            allowed: true,
            limit: Limit::Finite(i64::MIN),
            reason: ReasonCode::GrantedByPlan,
        };
        assert_eq!(decode_valid(&granted), Some(want));
        assert_eq!(decode(&granted).ok(), Some(want));
        let unlimited = slots([1, LIMIT_KIND_UNLIMITED, 0, ReasonCode::Override as i64]);
        assert_eq!(
            decode_valid(&unlimited).map(|d| d.limit),
            Some(Limit::Unlimited)
        );
        let denied = slots([0, LIMIT_KIND_NONE, 0, ReasonCode::DeniedBanned as i64]);
        assert_eq!(decode_valid(&denied).map(|d| d.allowed), Some(false));
        let reason = ReasonCode::GrantedByPlan as i64;
        for (words, says) in [
            ([2, LIMIT_KIND_NONE, 0, reason], "allowed = 2"),
            ([-1, LIMIT_KIND_NONE, 0, reason], "allowed = -1"),
            ([1, 7, 0, reason], "limit kind 7, value 0"),
            (
                [1, LIMIT_KIND_UNLIMITED, 5, reason],
                "limit kind 2, value 5",
            ),
            ([1, LIMIT_KIND_NONE, 3, reason], "limit kind 0, value 3"),
            ([0, LIMIT_KIND_FINITE, 3, reason], "a denial with a limit"),
            (
                [1, LIMIT_KIND_NONE, 0, i64::MAX],
                "reason = 9223372036854775807",
            ),
            ([1, LIMIT_KIND_NONE, 0, -1], "reason = -1"),
        ] {
            let bad = slots(words);
            // The fast decode and the checked one agree on what is refused.
            assert_eq!(decode_valid(&bad), None, "{words:?}");
            assert!(decode(&bad).is_err(), "{words:?}");
            // The refused decision is found behind a good one of the same record.
            let record = [denied.clone(), bad].concat();
            let HostError::BadOutput(message) = refusal(&record) else {
                panic!("{words:?}: not BadOutput");
            };
            assert!(message.contains(says), "{words:?}: {message}");
        }
    }
}

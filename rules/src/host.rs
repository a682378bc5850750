//! Runs compiled rule modules under wasmtime, contained.
//!
//! One [`RulesEngine`] per process (a wasmtime `Engine` with fuel metering); one
//! [`LoadedRules`] per bundle: the module is validated and compiled once, checked against the
//! contract in [`crate::wasm`] (no imports, the expected exports, layout sizes matching the
//! manifest), and pre-linked into an `InstancePre`. Every evaluation gets a fresh `Store` with a
//! memory cap and a fuel budget, so a module that loops forever, grows memory or traps is
//! stopped with a typed [`HostError`] and cannot affect the next evaluation. A batch reuses one
//! store and instance (instantiation, not the call, dominates a one-shot evaluation), refuelled
//! per account.
//!
//! Module bytes are always compiled from source form here: `Module::deserialize` of untrusted
//! bytes is never used.

use wasmtime::{
    Config, Engine, Instance, InstanceAllocationStrategy, InstancePre, Linker, Memory, Module,
    PoolingAllocationConfig, Store, StoreLimits, StoreLimitsBuilder, Trap, TypedFunc,
};

use crate::ir::{FactVector, Limit, RawDecision, ReasonCode, Shape};
use crate::wasm::{ABI_VERSION, DECISION_BYTES, FACTS_OFFSET, PAGE_BYTES, decisions_offset};

/// Fuel for one account's evaluation; generated modules use a few thousand units for the demo
/// rules, so this leaves room for large rule sets while stopping runaway loops fast.
pub const FUEL_PER_EVALUATION: u64 = 10_000_000;
/// Linear memory a module may have at most.
pub const MEMORY_BYTES_MAX: usize = 16 * PAGE_BYTES as usize;
/// Instances (hence stores evaluating at once) the pool holds; evaluation is synchronous and
/// short, so this bounds concurrency, not throughput.
pub const POOL_INSTANCES: u32 = 256;
/// Module bytes accepted at most.
pub const MODULE_BYTES_MAX: usize = 8 * 1024 * 1024;

/// Why a module was refused or an evaluation failed. None is retryable with the same module.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("module is {0} bytes, more than {MODULE_BYTES_MAX}")]
    TooLarge(usize),
    #[error("module does not compile: {0}")]
    Compile(String),
    #[error("module breaks the contract: {0}")]
    Contract(String),
    #[error("evaluation ran out of fuel (endless loop?)")]
    OutOfFuel,
    #[error("module exceeded its memory limit")]
    Memory,
    #[error("module trapped: {0}")]
    Trap(String),
    #[error("module wrote an invalid decision: {0}")]
    BadOutput(String),
}

fn classify(err: wasmtime::Error) -> HostError {
    match err.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => HostError::OutOfFuel,
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
        config.consume_fuel(true);
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
        let linker = Linker::new(&self.engine);
        let pre = linker
            .instantiate_pre(&module)
            .map_err(|e| HostError::Contract(format!("{e:#}")))?;
        let rules = LoadedRules {
            engine: self.engine.clone(),
            pre,
            shape,
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
        let needed = decisions_offset(shape) + DECISION_BYTES * shape.features as u64;
        if (inst.memory.data_size(&inst.store) as u64) < needed {
            return Err(HostError::Contract(format!(
                "memory smaller than the {needed} bytes the layout needs"
            )));
        }
        Ok(rules)
    }
}

/// A verified module ready to evaluate.
pub struct LoadedRules {
    engine: Engine,
    pre: InstancePre<StoreLimits>,
    shape: Shape,
}

/// One instantiated module with its store.
pub struct Instantiated {
    store: Store<StoreLimits>,
    instance: Instance,
    memory: Memory,
    evaluate: TypedFunc<(), i32>,
}

impl Instantiated {
    fn call_i32(&mut self, name: &str) -> Result<i32, HostError> {
        let f = self
            .instance
            .get_typed_func::<(), i32>(&mut self.store, name)
            .map_err(|e| HostError::Contract(format!("export {name}: {e:#}")))?;
        self.store
            .set_fuel(FUEL_PER_EVALUATION)
            .map_err(|e| HostError::Trap(format!("{e:#}")))?;
        f.call(&mut self.store, ()).map_err(classify)
    }
}

impl LoadedRules {
    pub fn shape(&self) -> Shape {
        self.shape
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
        store
            .set_fuel(FUEL_PER_EVALUATION)
            .map_err(|e| HostError::Trap(format!("{e:#}")))?;
        let instance = self.pre.instantiate(&mut store).map_err(classify)?;
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or_else(|| HostError::Contract("no exported memory".into()))?;
        let evaluate = instance
            .get_typed_func::<(), i32>(&mut store, "evaluate")
            .map_err(|e| HostError::Contract(format!("export evaluate: {e:#}")))?;
        Ok(Instantiated {
            store,
            instance,
            memory,
            evaluate,
        })
    }

    fn run(
        &self,
        inst: &mut Instantiated,
        facts: &FactVector,
    ) -> Result<Vec<RawDecision>, HostError> {
        if facts.0.len() != FactVector::len_for(self.shape) {
            return Err(HostError::Contract(format!(
                "{} fact slots given, the program needs {}",
                facts.0.len(),
                FactVector::len_for(self.shape)
            )));
        }
        let bytes: Vec<u8> = facts.0.iter().flat_map(|v| v.to_le_bytes()).collect();
        inst.memory
            .write(&mut inst.store, FACTS_OFFSET as usize, &bytes)
            .map_err(|e| HostError::Contract(format!("facts do not fit: {e}")))?;
        inst.store
            .set_fuel(FUEL_PER_EVALUATION)
            .map_err(|e| HostError::Trap(format!("{e:#}")))?;
        let status = inst.evaluate.call(&mut inst.store, ()).map_err(classify)?;
        if status != 0 {
            return Err(HostError::BadOutput(format!("evaluate returned {status}")));
        }
        let mut raw = vec![0u8; DECISION_BYTES as usize * self.shape.features];
        inst.memory
            .read(&inst.store, decisions_offset(self.shape) as usize, &mut raw)
            .map_err(|e| HostError::BadOutput(e.to_string()))?;
        raw.chunks_exact(DECISION_BYTES as usize)
            .map(|c| {
                let word = |i: usize| {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&c[i * 8..i * 8 + 8]);
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
            })
            .collect()
    }

    /// Decides every feature for one account (fresh store: full isolation).
    pub fn evaluate(&self, facts: &FactVector) -> Result<Vec<RawDecision>, HostError> {
        let mut inst = self.instantiate()?;
        self.run(&mut inst, facts)
    }

    /// Decides many accounts with one instance, refuelled per account. A trap stops the batch.
    pub fn evaluate_batch(&self, facts: &[FactVector]) -> Result<Vec<Vec<RawDecision>>, HostError> {
        let mut inst = self.instantiate()?;
        facts.iter().map(|f| self.run(&mut inst, f)).collect()
    }
}

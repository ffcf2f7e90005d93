//! One installed canister: its wasmtime store and instance, and the
//! begin / execute / finish cycle of a message with rollback.

use candid::Principal;
use wasmtime::{Engine, Global, Instance, Linker, Memory, Module, Ref, Store, Val};

use crate::instrument::{self, ModuleInfo, COUNTER_EXPORT, MEMORY_EXPORT, PROFILE_EXPORT_PREFIX, TABLE_EXPORT};
use crate::profile::{FunctionProfile, Profile};
use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::charges::Slicing;
use crate::cow_memory::{self, CowState};
use crate::memory_snapshot::HeapTracker;
use crate::stable::StableMemory;
use crate::system_api::Hooks;
use crate::system_api::{self, Callback, HostState, MessageContext};
use crate::tracker::{self, Var};
use crate::types::{ExecError, MessageKind, WasmExecutionMode};

/// The slice handler, its globals and the page map, where the rewrite added
/// them ([`crate::tracker`]).
fn hooks_of(instance: &Instance, store: &mut Store<HostState>) -> Option<Hooks> {
    let out_of_instructions = instance.get_func(&mut *store, tracker::OUT_OF_INSTRUCTIONS_EXPORT)?;
    let mut globals = Vec::with_capacity(Var::ALL.len());
    for g in Var::ALL {
        globals.push((g, instance.get_global(&mut *store, &g.export_name())?));
    }
    Some(Hooks {
        out_of_instructions,
        globals,
        pages: instance.get_memory(&mut *store, tracker::PAGES_EXPORT),
    })
}

/// What to run.
#[derive(Debug, Clone)]
pub enum Entry {
    /// An exported function `() -> ()` (e.g. `canister_update inc`).
    Export(String),
    /// A function-table entry `(env: I) -> ()` (ic0 callbacks; `I` is i32
    /// for wasm32 canisters, i64 for wasm64 ones).
    Table(Callback),
}

/// Result of running a message whose changes are still pending
/// (see [`Canister::finish`]).
#[derive(Debug)]
pub struct Execution {
    pub result: Result<(), ExecError>,
    pub instructions: u64,
    pub dirtied_heap_pages: u64,
    pub dirtied_stable_pages: u64,
    /// In-band page charges (see [`crate::MessageReport::page_instructions`]).
    pub page_instructions: u64,
    /// Wasm pages (heap and stable) the tracker saw written (dmt only).
    pub tracked_dirty_wasm_pages: u64,
    pub slices: u64,
    /// The message context with its staged outputs.
    pub msg: MessageContext,
}

pub struct Canister {
    pub id: Principal,
    pub info: ModuleInfo,
    store: Store<HostState>,
    instance: Instance,
    memory: Option<Memory>,
    counter: Global,
    globals: Vec<(Global, Val)>,
    heap: Option<Heap>,
    /// Profiling instances: the per-function counters and the total charged.
    profile: Option<ProfileCounters>,
}

struct ProfileCounters {
    /// (function index, its counter global)
    functions: Vec<(u32, Global)>,
    executed: u64,
}

/// How the heap's writes are tracked for rollback.
enum Heap {
    /// Copy-on-write memory (O(pages written)), see [`crate::cow_memory`].
    Cow(Arc<CowState>),
    /// Shadow copy with soft-dirty bits or full copies, see
    /// [`crate::memory_snapshot`].
    Shadow(HeapTracker),
}

/// Compiles and validates a module (instrumenting it), checking imports.
/// `cache_dir`: see [`crate::RuntimeConfig::module_cache_dir`].
pub fn compile(
    engine: &Engine,
    wasm: &[u8],
    cache_dir: Option<&Path>,
    options: instrument::Options,
) -> Result<(Module, ModuleInfo), ExecError> {
    let instrumented = instrument::instrument_with(wasm, options).map_err(ExecError::InvalidWasm)?;
    let wasm32_only = system_api::wasm32_only_imports(&instrumented.info.function_imports, instrumented.info.mode);
    if !wasm32_only.is_empty() {
        return Err(ExecError::InvalidWasm(format!(
            "Wasm module has an invalid import section. A wasm64 (memory64) module may not import \
             the 32-bit stable memory API, only available to wasm32 canisters: {} (use the \
             stable64_* functions)",
            wasm32_only.join(", ")
        )));
    }
    let missing = system_api::unsupported_imports(&instrumented.info.function_imports);
    if !missing.is_empty() {
        return Err(ExecError::InvalidWasm(format!(
            "Wasm module has an invalid import section. Module imports function(s) that \
             local-ic does not provide: {}",
            missing.join(", ")
        )));
    }
    let module = load_or_compile(engine, &instrumented.wasm, cache_dir)
        .map_err(|e| ExecError::InvalidWasm(format!("compilation failed: {e:#}")))?;
    Ok((module, instrumented.info))
}

/// Compiles the instrumented module, or loads it from `cache_dir` where an
/// earlier run stored it (Cranelift needs seconds for a real canister,
/// milliseconds to load). Entries are keyed by the SHA-256 of the
/// instrumented module; wasmtime itself refuses files from another version
/// or configuration, which then are simply recompiled.
fn load_or_compile(engine: &Engine, wasm: &[u8], cache_dir: Option<&Path>) -> wasmtime::Result<Module> {
    let Some(dir) = cache_dir else {
        return Module::new(engine, wasm);
    };
    let digest = Sha256::digest(wasm);
    let name: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    let path = dir.join(format!("{name}.cwasm"));
    if path.exists() {
        // SAFETY: the file was written by `Module::serialize` below into a
        // cache directory the user chose for this runtime; wasmtime checks
        // its version and configuration header before using it.
        if let Ok(module) = unsafe { Module::deserialize_file(engine, &path) } {
            return Ok(module);
        }
    }
    let module = Module::new(engine, wasm)?;
    // Best effort: a failed write only costs a recompilation next time.
    if std::fs::create_dir_all(dir).is_ok() {
        if let Ok(bytes) = module.serialize() {
            let tmp = dir.join(format!("{name}.{}.tmp", std::process::id()));
            if std::fs::write(&tmp, bytes).is_ok() {
                let _ = std::fs::rename(&tmp, &path);
            }
        }
    }
    Ok(module)
}

impl Canister {
    /// Instantiates `module` with the given host state (stable memory is
    /// carried over by upgrades). On failure the host state is handed back
    /// so an upgrade can return the stable memory to the old instance.
    pub fn instantiate(
        engine: &Engine,
        linker: &Linker<HostState>,
        module: &Module,
        info: ModuleInfo,
        host: HostState,
    ) -> Result<Self, Box<(ExecError, HostState)>> {
        let id = host.canister_id;
        let mut store = Store::new(engine, host);
        cow_memory::take_created();
        let instance = match linker.instantiate(&mut store, module) {
            Ok(i) => i,
            Err(e) => {
                let reason = ExecError::InvalidWasm(format!("instantiation failed: {e:#}"));
                return Err(Box::new((reason, store.into_data())));
            }
        };
        let memory = instance.get_memory(&mut store, MEMORY_EXPORT);
        let Some(counter) = instance.get_global(&mut store, COUNTER_EXPORT) else {
            let reason = ExecError::Internal("instruction counter not exported".into());
            return Err(Box::new((reason, store.into_data())));
        };
        let mut globals = Vec::new();
        for name in &info.mutable_global_exports {
            let Some(g) = instance.get_global(&mut store, name) else {
                let reason = ExecError::Internal(format!("global {name} not exported"));
                return Err(Box::new((reason, store.into_data())));
            };
            let v = g.get(&mut store);
            globals.push((g, v));
        }
        let profile = if info.profiled_functions.is_empty() {
            None
        } else {
            let mut functions = Vec::with_capacity(info.profiled_functions.len());
            for &index in &info.profiled_functions {
                let name = format!("{PROFILE_EXPORT_PREFIX}{index}");
                let Some(g) = instance.get_global(&mut store, &name) else {
                    let reason = ExecError::Internal(format!("global {name} not exported"));
                    return Err(Box::new((reason, store.into_data())));
                };
                functions.push((index, g));
            }
            Some(ProfileCounters { functions, executed: 0 })
        };
        store.data_mut().memory = memory;
        store.data_mut().counter = Some(counter);
        store.data_mut().hooks = hooks_of(&instance, &mut store);
        let created = cow_memory::take_created();
        let heap = memory.map(|m| {
            let base = m.data_ptr(&store) as usize;
            match created.into_iter().find(|c| c.base() == base) {
                Some(cow) => {
                    // Data segments were written at instantiation: commit them.
                    cow.collect();
                    commit_cow(&cow);
                    Heap::Cow(cow)
                }
                None => Heap::Shadow(HeapTracker::new(m.data(&store))),
            }
        });
        Ok(Self {
            id,
            info,
            store,
            instance,
            memory,
            counter,
            globals,
            heap,
            profile,
        })
    }

    /// Heap and stable memory in bytes, as the freezing threshold counts them.
    pub fn memory_bytes(&self) -> u64 {
        let heap = self.memory.map_or(0, |m| m.data_size(&self.store) as u64);
        heap + self.host().stable.len()
    }

    /// The balance above the freezing reserve, as of now.
    pub fn liquid_cycles(&self) -> u128 {
        let reserve = crate::cycles::freezing_reserve(self.memory_bytes(), self.host().freezing_threshold_seconds);
        crate::cycles::liquid(self.host().cycles, reserve)
    }

    pub fn host(&self) -> &HostState {
        self.store.data()
    }

    pub fn host_mut(&mut self) -> &mut HostState {
        self.store.data_mut()
    }

    /// Moves the stable memory out (upgrades), leaving an empty one.
    pub fn take_stable(&mut self) -> StableMemory {
        std::mem::take(&mut self.store.data_mut().stable)
    }

    pub fn put_stable(&mut self, stable: StableMemory) {
        self.store.data_mut().stable = stable;
    }

    /// The per-function profile so far (profiling instances only).
    pub fn profile(&mut self) -> Option<Profile> {
        let p = self.profile.as_ref()?;
        let functions = p
            .functions
            .iter()
            .map(|&(index, g)| FunctionProfile {
                index,
                name: self
                    .info
                    .function_names
                    .get(&index)
                    .cloned()
                    .unwrap_or_else(|| format!("func[{index}]")),
                instructions: g.get(&mut self.store).i64().unwrap_or(0).max(0) as u64,
            })
            .collect();
        Some(Profile {
            functions,
            executed: p.executed,
        })
    }

    pub fn exports(&self, name: &str) -> bool {
        self.info.function_exports.contains(name)
    }

    /// Runs `entry` as one message with `limit` instructions. The caller
    /// must hold [`crate::memory_snapshot::exclusive`] and must call
    /// [`Self::finish`] afterwards. `continue_stable_log` keeps the stable
    /// undo log of a previous pending message (upgrade: pre + post).
    pub fn execute(&mut self, entry: &Entry, msg: MessageContext, limit: u64, continue_stable_log: bool) -> Execution {
        let limit_i64 = limit.min(i64::MAX as u64) as i64;
        let reserve = crate::cycles::freezing_reserve(self.memory_bytes(), self.host().freezing_threshold_seconds);
        self.store.data_mut().freezing_reserve = reserve;
        self.store.data_mut().msg.kind = msg.kind;
        let first_slice = self.begin_slices(limit).min(i64::MAX as u64) as i64;
        if let Err(e) = self.counter.set(&mut self.store, Val::I64(first_slice)) {
            return self.failed_early(msg, ExecError::Internal(e.to_string()));
        }
        for (g, v) in self.globals.iter_mut() {
            *v = g.get(&mut self.store);
        }
        if !continue_stable_log {
            self.store.data_mut().stable.begin();
        }
        self.store.data_mut().msg = msg;
        self.store.data_mut().msg.limit = limit;
        if let Some(Heap::Shadow(heap)) = self.heap.as_mut() {
            heap.begin();
        }

        // Queries (changes always discarded) are left out of the profile.
        let discarded = matches!(
            self.store.data().msg.kind,
            crate::types::MessageKind::Query | crate::types::MessageKind::InspectMessage
        );
        let profile_before: Option<Vec<Val>> = match &self.profile {
            Some(p) if discarded => Some(p.functions.iter().map(|(_, g)| g.get(&mut self.store)).collect()),
            _ => None,
        };

        let call = match entry {
            Entry::Export(name) => self
                .instance
                .get_typed_func::<(), ()>(&mut self.store, name)
                .map_err(|e| ExecError::Internal(format!("export {name}: {e}")))
                .map(|f| f.call(&mut self.store, ())),
            Entry::Table(cb) => self.call_table(*cb),
        };

        let hooks = self.store.data().hooks.clone();
        let mut left = self.counter.get(&mut self.store).i64().unwrap_or(i64::MIN);
        if let (Some(h), Ok(Ok(())), true) = (hooks.as_ref(), &call, left < 0) {
            // The overshoot after the last check point: end the slice there.
            if h.out_of_instructions.call(&mut self.store, &[], &mut []).is_ok() {
                left = self.counter.get(&mut self.store).i64().unwrap_or(i64::MIN);
            }
        }
        let failure = hooks.as_ref().and_then(|h| h.failure(&mut self.store, limit));
        let dirtied_heap_pages = match (self.heap.as_mut(), self.memory) {
            (Some(Heap::Shadow(heap)), Some(mem)) => heap.collect(mem.data(&self.store)) as u64,
            (Some(Heap::Cow(cow)), _) => cow.collect() as u64,
            _ => 0,
        };
        let host_trap = self.store.data_mut().msg.trap.take();
        let result = match (call, failure) {
            (Err(e), _) => Err(e),
            (Ok(Ok(())), Some(f)) => Err(f),
            (Ok(Ok(())), None) if left < 0 => Err(ExecError::InstructionLimitExceeded(limit)),
            (Ok(Ok(())), None) => Ok(()),
            (Ok(Err(err)), failure) => Err(host_trap.or(failure).unwrap_or_else(|| {
                if left < 0 && hooks.is_none() {
                    ExecError::InstructionLimitExceeded(limit)
                } else {
                    ExecError::Trapped(trap_text(&err))
                }
            })),
        };
        let (instructions, slices, wasm_page_instructions) = match hooks.as_ref() {
            Some(h) => {
                let slices = h.get(&mut self.store, Var::Slices).max(1) as u64;
                let pages = h.get(&mut self.store, Var::PageInstructions).max(0) as u64;
                let used = match &result {
                    Err(ExecError::InstructionLimitExceeded(_)) => limit,
                    Err(ExecError::SliceOverrun { instructions, .. }) => {
                        h.get(&mut self.store, Var::Executed).max(0) as u64 + instructions
                    }
                    _ => h.used(&mut self.store, left).min(limit),
                };
                (used, slices, pages)
            }
            None if left < 0 => (limit, 1, 0),
            None => ((limit_i64 - left) as u64, 1, 0),
        };
        let tracked_dirty_wasm_pages = self.tracked_dirty_heap_pages() + self.store.data().stable.tracked_dirty_pages();
        if let Some(p) = self.profile.as_mut() {
            match profile_before {
                Some(values) => {
                    for ((_, g), v) in p.functions.iter().zip(values) {
                        // Restoring a value of the global's own type cannot fail.
                        let _ = g.set(&mut self.store, v);
                    }
                }
                None => p.executed += instructions,
            }
        }
        let state = self.store.data_mut();
        let msg = std::mem::replace(
            &mut state.msg,
            MessageContext::new(crate::types::MessageKind::Update, "", vec![], Principal::anonymous()),
        );
        Execution {
            result,
            instructions,
            dirtied_heap_pages,
            dirtied_stable_pages: state.stable.dirty_pages(),
            page_instructions: wasm_page_instructions + msg.page_instructions,
            tracked_dirty_wasm_pages,
            slices,
            msg,
        }
    }

    fn failed_early(&mut self, msg: MessageContext, err: ExecError) -> Execution {
        Execution {
            result: Err(err),
            instructions: 0,
            dirtied_heap_pages: 0,
            dirtied_stable_pages: 0,
            page_instructions: 0,
            tracked_dirty_wasm_pages: 0,
            slices: 0,
            msg,
        }
    }

    /// Sets the slice handler's and page tracker's state for a new message
    /// of `limit` instructions; returns the first slice's limit.
    fn begin_slices(&mut self, limit: u64) -> u64 {
        let state = self.store.data();
        let (kind, mode, max_slice) = (state.msg.kind, state.charges, state.max_slice);
        let Some(hooks) = state.hooks.clone() else {
            return limit;
        };
        let query = matches!(kind, MessageKind::Query | MessageKind::InspectMessage);
        let slicing = if query {
            Slicing::single(limit)
        } else {
            Slicing::new(limit, max_slice)
        };
        let first = slicing.max_slice.min(limit);
        let as_i64 = |v: u64| v.min(i64::MAX as u64) as i64;
        for (g, v) in [
            (Var::SliceLimit, as_i64(first)),
            (Var::Executed, 0),
            (Var::Total, as_i64(limit)),
            (Var::MaxSlice, as_i64(slicing.max_slice)),
            (Var::SlicesLeft, as_i64(slicing.max_slices)),
            (Var::Slices, 1),
            (Var::Fail, 0),
            (Var::FailInstructions, 0),
            (Var::PageInstructions, 0),
            (Var::TrackDirty, !query as i64),
            (Var::AccessCost, as_i64(mode.wasm_page_access())),
            (Var::DirtyCost, as_i64(mode.wasm_page_dirty())),
        ] {
            hooks.set(&mut self.store, g, v);
        }
        if let Some(pages) = hooks.pages {
            pages.data_mut(&mut self.store).fill(0);
        }
        self.store.data_mut().stable.begin_tracking();
        first
    }

    /// Heap wasm pages the page map shows written in this message.
    fn tracked_dirty_heap_pages(&mut self) -> u64 {
        let Some(pages) = self.store.data().hooks.as_ref().and_then(|h| h.pages) else {
            return 0;
        };
        pages
            .data(&self.store)
            .iter()
            .filter(|b| **b & tracker::DIRTY != 0)
            .count() as u64
    }

    /// Calls callback `cb` with its env as the module's address type (i32,
    /// or i64 in wasm64: `Val::I64` in the replica).
    fn call_table(&mut self, cb: Callback) -> Result<wasmtime::Result<()>, ExecError> {
        let f = self.table_func(cb)?;
        let mismatch = |_| ExecError::Trapped("function invocation failed: signature mismatch".into());
        match self.info.mode {
            WasmExecutionMode::Wasm32 => {
                let f = f.typed::<u32, ()>(&self.store).map_err(mismatch)?;
                Ok(f.call(&mut self.store, cb.env as u32))
            }
            WasmExecutionMode::Wasm64 => {
                let f = f.typed::<u64, ()>(&self.store).map_err(mismatch)?;
                Ok(f.call(&mut self.store, cb.env))
            }
        }
    }

    fn table_func(&mut self, cb: Callback) -> Result<wasmtime::Func, ExecError> {
        let not_found = ExecError::FunctionNotFound(0, u32::try_from(cb.fun).unwrap_or(u32::MAX));
        let table = self
            .instance
            .get_table(&mut self.store, TABLE_EXPORT)
            .ok_or(not_found.clone())?;
        match table.get(&mut self.store, cb.fun) {
            Some(Ref::Func(Some(f))) => Ok(f),
            _ => Err(not_found),
        }
    }

    /// Commits (`true`) or rolls back the pending message.
    pub fn finish(&mut self, commit: bool) {
        match (self.heap.as_mut(), self.memory) {
            (Some(Heap::Shadow(heap)), Some(mem)) if commit => heap.commit(mem.data(&self.store)),
            (Some(Heap::Shadow(heap)), Some(mem)) => heap.rollback(mem.data_mut(&mut self.store)),
            (Some(Heap::Cow(cow)), _) if commit => commit_cow(cow),
            (Some(Heap::Cow(cow)), _) => cow.rollback(),
            _ => {}
        }
        if commit {
            self.store.data_mut().stable.commit();
            // The saved values are the committed state from now on.
            for (g, v) in self.globals.iter_mut() {
                *v = g.get(&mut self.store);
            }
        } else {
            self.store.data_mut().stable.rollback();
            for (g, v) in &self.globals {
                // Restoring a value of the global's own type cannot fail.
                let _ = g.set(&mut self.store, *v);
            }
        }
    }
}

/// Commits copy-on-write pages. Failing means the host ran out of memory
/// for the memfd: the heap state could no longer be rolled back correctly.
fn commit_cow(cow: &CowState) {
    if let Err(e) = cow.commit() {
        panic!("local-ic: cannot commit heap pages to the memfd: {e}");
    }
}

/// Whether this canister's heap uses copy-on-write tracking.
impl Canister {
    pub fn heap_is_copy_on_write(&self) -> bool {
        matches!(self.heap, Some(Heap::Cow(_)))
    }
}

/// The replica's trap wording for wasm traps.
fn trap_text(err: &wasmtime::Error) -> String {
    use wasmtime::Trap;
    match err.downcast_ref::<Trap>() {
        Some(Trap::UnreachableCodeReached) => "unreachable".into(),
        Some(Trap::MemoryOutOfBounds) => "heap out of bounds".into(),
        Some(Trap::IntegerDivisionByZero) => "integer division by 0".into(),
        Some(Trap::IntegerOverflow) => "integer overflow".into(),
        Some(Trap::StackOverflow) => "stack overflow".into(),
        Some(Trap::TableOutOfBounds) => "table out of bounds".into(),
        Some(Trap::IndirectCallToNull) => "indirect call to null".into(),
        Some(Trap::BadSignature) => "function invocation failed".into(),
        Some(Trap::BadConversionToInteger) => "invalid conversion to integer".into(),
        Some(other) => other.to_string(),
        None => format!("{err:#}"),
    }
}

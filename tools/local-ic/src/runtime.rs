//! The simulated subnet: clock, canisters, message queue, call contexts.
//!
//! Messages run one at a time. A message's outgoing calls are queued when it
//! commits and executed after it, each as its own message; responses run the
//! caller's reply/reject callback as yet another message, as on the IC.
//! Every public operation (install, update, query, advance_time, ...) runs
//! until the queue is empty (bounded by [`Limits::max_messages_per_operation`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use candid::Principal;
use wasmtime::{Config, Engine, Linker, Module, OptLevel, Strategy};

use crate::instrument::{self, ModuleInfo};

use crate::canister::{self, Canister, Entry, Execution};
use crate::memory_snapshot;
use crate::stable::StableMemory;
use crate::system_api::{self, HostState, MessageContext, OutgoingCall, Response};
use crate::types::*;

/// A canister's id.
pub type CanisterId = Principal;

/// Id of a call context.
type CtxId = u64;

/// Who is waiting for a call context's response.
#[derive(Debug)]
enum Origin {
    /// An ingress message of a top-level [`Runtime::update`] call.
    Ingress(u64),
    /// Another (or the same) canister's call (boxed: the largest variant).
    Canister {
        caller: Principal,
        caller_ctx: CtxId,
        call: Box<OutgoingCall>,
    },
    /// A system task (timer): nobody waits.
    System,
}

#[derive(Debug)]
struct CallContext {
    canister: Principal,
    origin: Origin,
    responded: bool,
    outstanding: usize,
    instructions: u64,
    deadline: u64,
    /// Cycles the caller attached that no committed message accepted: the
    /// refund that goes back with the response.
    cycles_available: u128,
    /// A bounded-wait caller already got `SYS_UNKNOWN` (deadline expired):
    /// whatever this context answers later is dropped.
    caller_released: bool,
}

/// How a call context ended.
#[derive(Debug, Clone)]
enum Outcome {
    Reply(Vec<u8>),
    Reject(RejectCode, String),
    Failed(Error),
}

#[derive(Debug)]
enum Queued {
    Request {
        from: Principal,
        from_ctx: CtxId,
        call: OutgoingCall,
    },
    Response {
        to: Principal,
        ctx: CtxId,
        call: OutgoingCall,
        result: Result<Vec<u8>, (RejectCode, String)>,
        /// Attached cycles the callee did not accept.
        refund: u128,
    },
}

/// The reject a bounded-wait caller gets when its deadline passes first
/// (the replica's synthetic response).
const DEADLINE_EXPIRED: &str = "Call deadline has expired.";

impl Queued {
    fn receiver(&self) -> Principal {
        match self {
            Queued::Request { call, .. } => call.callee,
            Queued::Response { to, .. } => *to,
        }
    }
}

/// An update call under way (see [`Runtime::submit_update`]).
#[derive(Debug, Clone)]
#[must_use = "await the call with Runtime::await_update"]
pub struct PendingCall {
    canister: CanisterId,
    ingress: u64,
    first_report: usize,
}

/// One simulated subnet. See the crate docs for what is modelled.
pub struct Runtime {
    engine: Engine,
    /// The `ic0` linkers of wasm32 and of wasm64 canisters.
    linkers: Linkers,
    config: RuntimeConfig,
    canisters: BTreeMap<Principal, Canister>,
    next_canister: u64,
    now: u64,
    rand_calls: u64,
    queue: VecDeque<Queued>,
    contexts: HashMap<CtxId, CallContext>,
    next_ctx: CtxId,
    next_ingress: u64,
    ingress_results: HashMap<u64, Result<Vec<u8>, Error>>,
    reports: Vec<MessageReport>,
    stats: Stats,
    logs: Vec<(Principal, String)>,
    /// Canisters not running (absent = running).
    status: HashMap<Principal, CanisterStatus>,
    /// Canisters whose incoming messages wait in `held` (see
    /// [`Runtime::hold_messages_to`]).
    holding: BTreeSet<Principal>,
    held: Vec<Queued>,
}

/// One `ic0` linker per address type ([`system_api::Address`]).
struct Linkers {
    wasm32: Linker<HostState>,
    wasm64: Linker<HostState>,
}

impl Linkers {
    fn new(engine: &Engine) -> Self {
        let linker = |mode| system_api::linker(engine, mode).expect("ic0 linker definitions are valid");
        Self {
            wasm32: linker(WasmExecutionMode::Wasm32),
            wasm64: linker(WasmExecutionMode::Wasm64),
        }
    }

    fn of(&self, mode: WasmExecutionMode) -> &Linker<HostState> {
        match mode {
            WasmExecutionMode::Wasm32 => &self.wasm32,
            WasmExecutionMode::Wasm64 => &self.wasm64,
        }
    }
}

/// The wasmtime configuration: Cranelift at full speed, SIMD on, relaxed
/// SIMD and threads off (the IC rejects them), memory64 on (wasm64
/// canisters), no fuel (the module counts its own instructions).
///
/// One engine per process: compiled modules can then be shared between
/// runtimes (see [`compile_cached`]).
fn engine() -> Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(new_engine).clone()
}

/// Compiles (instrumenting) `wasm`, reusing the result for identical bytes:
/// Cranelift takes seconds for a real canister and tests install the same
/// module many times.
fn compile_cached(
    engine: &Engine,
    wasm: &[u8],
    cache_dir: Option<&std::path::Path>,
    options: instrument::Options,
) -> Result<(Module, ModuleInfo), ExecError> {
    type Cache = Mutex<HashMap<u64, Vec<(Arc<[u8]>, instrument::Options, Module, ModuleInfo)>>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    wasm.hash(&mut hasher);
    options.hash(&mut hasher);
    let key = hasher.finish();
    let cache = CACHE.get_or_init(Default::default);
    {
        let cache = cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, _, m, i)) = cache
            .get(&key)
            .and_then(|v| v.iter().find(|(bytes, o, _, _)| &bytes[..] == wasm && *o == options))
        {
            return Ok((m.clone(), i.clone()));
        }
    }
    let (module, info) = canister::compile(engine, wasm, cache_dir, options)?;
    cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(key)
        .or_default()
        .push((Arc::from(wasm), options, module.clone(), info.clone()));
    Ok((module, info))
}

fn new_engine() -> Engine {
    let mut config = Config::new();
    config
        .strategy(Strategy::Cranelift)
        .cranelift_opt_level(OptLevel::Speed)
        .parallel_compilation(true)
        .wasm_simd(true)
        .wasm_relaxed_simd(false)
        .wasm_bulk_memory(true)
        .wasm_multi_value(true)
        .wasm_memory64(true)
        // The instrumented module keeps its page map in a second memory.
        .wasm_multi_memory(true);
    if crate::cow_memory::supported() {
        // wasmtime's own CoW memory images only work with its mmap memories.
        config
            .with_host_memory(Arc::new(crate::cow_memory::CowMemoryCreator))
            .memory_init_cow(false);
    }
    Engine::new(&config).expect("static wasmtime configuration is valid")
}

impl Runtime {
    pub fn new(config: RuntimeConfig) -> Self {
        // Probe (once per process) before any message holds the lock.
        memory_snapshot::soft_dirty_supported();
        let engine = engine();
        let linkers = Linkers::new(&engine);
        Self {
            engine,
            linkers,
            now: config.start_time_nanos,
            config,
            canisters: BTreeMap::new(),
            next_canister: 0,
            rand_calls: 0,
            queue: VecDeque::new(),
            contexts: HashMap::new(),
            next_ctx: 0,
            next_ingress: 0,
            ingress_results: HashMap::new(),
            reports: Vec::new(),
            stats: Stats::new(),
            logs: Vec::new(),
            status: HashMap::new(),
            holding: BTreeSet::new(),
            held: Vec::new(),
        }
    }

    // ------------------------------------------------------------------
    // Accessors
    // ------------------------------------------------------------------

    pub fn limits(&self) -> Limits {
        self.config.limits
    }

    pub fn set_limits(&mut self, limits: Limits) {
        self.config.limits = limits;
    }

    /// Current time, nanoseconds since the Unix epoch.
    pub fn time_nanos(&self) -> u64 {
        self.now
    }

    /// Every message executed so far, in order.
    pub fn reports(&self) -> &[MessageReport] {
        &self.reports
    }

    /// Forgets the reports kept so far (a long-running server keeps none).
    pub fn clear_reports(&mut self) {
        self.reports.clear();
    }

    pub fn last_report(&self) -> Option<&MessageReport> {
        self.reports.last()
    }

    /// Running totals per canister and method.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// `ic0.debug_print` output of every canister, in order.
    pub fn logs(&self) -> &[(Principal, String)] {
        &self.logs
    }

    /// Ids of the installed canisters.
    pub fn canisters(&self) -> Vec<CanisterId> {
        self.canisters.keys().copied().collect()
    }

    /// The canister's global timer deadline (0 = not armed).
    pub fn global_timer(&self, id: CanisterId) -> Option<u64> {
        self.canisters.get(&id).map(|c| c.host().global_timer)
    }

    /// The canister's per-function instruction profile so far (runtimes with
    /// [`RuntimeConfig::profile`] only; see [`crate::profile`]).
    pub fn profile(&mut self, id: CanisterId) -> Option<crate::Profile> {
        self.canisters.get_mut(&id)?.profile()
    }

    fn instrument_options(&self) -> instrument::Options {
        instrument::Options {
            profile: self.config.profile,
            track_pages: self.config.memory_charges == crate::charges::MemoryCharges::Dmt,
        }
    }

    /// Whether the canister is wasm32 or wasm64 (its heap limit is
    /// [`WasmExecutionMode::max_heap_bytes`]).
    pub fn execution_mode(&self, id: CanisterId) -> Option<WasmExecutionMode> {
        self.canisters.get(&id).map(|c| c.info.mode)
    }

    /// Stable memory size in wasm pages.
    pub fn stable_size(&self, id: CanisterId) -> Option<u64> {
        self.canisters.get(&id).map(|c| c.host().stable.size())
    }

    /// A canister's cycle balance.
    pub fn cycle_balance(&self, id: CanisterId) -> Option<u128> {
        self.canisters.get(&id).map(|c| c.host().cycles)
    }

    /// Its balance above the freezing reserve ([`crate::cycles`]).
    pub fn liquid_cycle_balance(&self, id: CanisterId) -> Option<u128> {
        self.canisters.get(&id).map(|c| c.liquid_cycles())
    }

    /// Sets a canister's cycle balance (a top-up, or a drain for tests).
    pub fn set_cycle_balance(&mut self, id: CanisterId, cycles: u128) -> Result<(), Error> {
        let c = self.canisters.get_mut(&id).ok_or(Error::CanisterNotFound(id))?;
        c.host_mut().cycles = cycles;
        Ok(())
    }

    /// Refuses a message the canister could not prepay: the IC withdraws
    /// the cost of the whole instruction limit before running it (and
    /// refunds what is left), out of the cycles above the freezing reserve.
    fn ensure_can_prepay(&self, id: CanisterId, extra: u128) -> Result<(), Error> {
        let c = self.canisters.get(&id).ok_or(Error::CanisterNotFound(id))?;
        let need = crate::cycles::execution_cost_in(c.info.mode, self.config.limits.update) + extra;
        let liquid = c.liquid_cycles();
        if liquid < need {
            return Err(Error::Rejected {
                canister: id,
                code: RejectCode::SysTransient,
                message: format!(
                    "Canister {id} is out of cycles: please top up the canister with at least {} additional cycles",
                    need - liquid
                ),
            });
        }
        Ok(())
    }

    fn charge_cycles(&mut self, id: CanisterId, cycles: u128) {
        if let Some(c) = self.canisters.get_mut(&id) {
            let host = c.host_mut();
            host.cycles = host.cycles.saturating_sub(cycles);
        }
    }

    /// `len` bytes of a canister's stable memory at `offset`, between
    /// messages (as the IC's canister snapshot download reads them).
    pub fn read_stable(&self, id: CanisterId, offset: u64, len: usize) -> Result<Vec<u8>, Error> {
        let c = self.canisters.get(&id).ok_or(Error::CanisterNotFound(id))?;
        let mut buf = vec![0u8; len];
        c.host()
            .stable
            .read(offset, &mut buf)
            .map_err(|_| out_of_bounds(id, offset, len))?;
        Ok(buf)
    }

    /// Overwrites part of a canister's stable memory between messages (as
    /// the IC's snapshot upload does): tests plant states that no wasm at
    /// hand would write, such as a newer release's.
    pub fn write_stable(&mut self, id: CanisterId, offset: u64, data: &[u8]) -> Result<(), Error> {
        let c = self.canisters.get_mut(&id).ok_or(Error::CanisterNotFound(id))?;
        let stable = &mut c.host_mut().stable;
        stable.begin();
        stable
            .write(offset, data)
            .map_err(|_| out_of_bounds(id, offset, data.len()))?;
        stable.commit();
        Ok(())
    }

    // ------------------------------------------------------------------
    // Install / upgrade
    // ------------------------------------------------------------------

    /// Creates a canister, installs `wasm` and runs `canister_init(init_arg)`
    /// with the first controller (or anonymous) as caller.
    pub fn install(
        &mut self,
        wasm: &[u8],
        init_arg: Vec<u8>,
        controllers: Vec<Principal>,
    ) -> Result<CanisterId, Error> {
        let id = self.reserve_canister_id();
        self.install_at(id, wasm, init_arg, controllers)?;
        Ok(id)
    }

    /// The next canister id, taken for good (as `create_canister` does on
    /// the IC before any code is installed).
    pub fn reserve_canister_id(&mut self) -> CanisterId {
        let id = canister_id(self.next_canister);
        self.next_canister += 1;
        id
    }

    /// Installs `wasm` as canister `id` (a reserved id, or one freed by
    /// [`Runtime::uninstall`]) and runs `canister_init(init_arg)`.
    pub fn install_at(
        &mut self,
        id: CanisterId,
        wasm: &[u8],
        init_arg: Vec<u8>,
        controllers: Vec<Principal>,
    ) -> Result<(), Error> {
        let _guard = memory_snapshot::exclusive();
        if self.canisters.contains_key(&id) {
            return Err(Error::Unsupported(format!("canister {id} already has code installed")));
        }
        let fail = |reason| Error::Canister {
            canister: id,
            reason,
            report: None,
        };
        let (module, info) = compile_cached(
            &self.engine,
            wasm,
            self.config.module_cache_dir.as_deref(),
            self.instrument_options(),
        )
        .map_err(fail)?;
        let host = HostState {
            canister_id: id,
            controllers: controllers.clone(),
            stable: StableMemory::default(),
            memory: None,
            counter: None,
            cycles: self.config.initial_cycles,
            freezing_threshold_seconds: self.config.freezing_threshold_seconds,
            freezing_reserve: 0,
            canister_version: 1,
            global_timer: 0,
            print_debug: self.config.print_debug,
            charges: self.config.memory_charges,
            max_slice: self.config.max_slice_instructions,
            hooks: None,
            msg: MessageContext::new(MessageKind::Init, "", vec![], Principal::anonymous()),
        };
        let linker = self.linkers.of(info.mode);
        let mut canister =
            Canister::instantiate(&self.engine, linker, &module, info, host).map_err(|failure| fail(failure.0))?;
        if canister.exports("canister_init") {
            let caller = controllers.first().copied().unwrap_or(Principal::anonymous());
            let mut msg = MessageContext::new(MessageKind::Init, "canister_init", init_arg, caller);
            msg.time = self.now;
            let limit = self.config.limits.install;
            let exec = canister.execute(&Entry::Export("canister_init".into()), msg, limit, false);
            let (report, result) = self.conclude(&mut canister, exec, "canister_init", true);
            if let Err(reason) = result {
                return Err(Error::Canister {
                    canister: id,
                    reason,
                    report: Some(Box::new(report)),
                });
            }
        }
        self.canisters.insert(id, canister);
        Ok(())
    }

    /// Removes canister `id`'s code and state (heap, stable memory, timer),
    /// as `uninstall_code` does; returns its controllers and cycles, which
    /// outlive the code on the IC. `None` if it holds no code.
    pub fn uninstall(&mut self, id: CanisterId) -> Option<(Vec<Principal>, u128)> {
        let _guard = memory_snapshot::exclusive();
        let canister = self.canisters.remove(&id)?;
        self.status.remove(&id);
        Some((canister.host().controllers.clone(), canister.host().cycles))
    }

    /// Replaces canister `id`'s code and state with a fresh install of
    /// `wasm` (`install_code` in mode `reinstall`), keeping its controllers
    /// and cycles; if `canister_init` fails the canister stays as it was.
    pub fn reinstall(&mut self, id: CanisterId, wasm: &[u8], init_arg: Vec<u8>) -> Result<(), Error> {
        let old = self.canisters.remove(&id).ok_or(Error::CanisterNotFound(id))?;
        let (controllers, cycles) = (old.host().controllers.clone(), old.host().cycles);
        let result = self.install_at(id, wasm, init_arg, controllers);
        let _guard = memory_snapshot::exclusive();
        match result {
            Ok(()) => {
                self.canisters.get_mut(&id).expect("just installed").host_mut().cycles = cycles;
                drop(old);
                Ok(())
            }
            Err(e) => {
                self.canisters.insert(id, old);
                Err(e)
            }
        }
    }

    /// A canister's controllers (`None` if it holds no code).
    pub fn controllers(&self, id: CanisterId) -> Option<Vec<Principal>> {
        self.canisters.get(&id).map(|c| c.host().controllers.clone())
    }

    /// Replaces a canister's controllers (`update_settings`).
    pub fn set_controllers(&mut self, id: CanisterId, controllers: Vec<Principal>) -> Result<(), Error> {
        let c = self.canisters.get_mut(&id).ok_or(Error::CanisterNotFound(id))?;
        c.host_mut().controllers = controllers;
        Ok(())
    }

    /// Moves the clock forward to `nanos` without running anything: a
    /// caller that follows real time sets it, then runs a round with
    /// [`Runtime::tick`]. Never moves it back.
    pub fn set_time_nanos(&mut self, nanos: u64) {
        self.now = self.now.max(nanos);
    }

    /// Whether the canister runs, is stopping or is stopped.
    pub fn canister_status(&self, id: CanisterId) -> Option<CanisterStatus> {
        self.canisters
            .contains_key(&id)
            .then(|| self.status.get(&id).copied().unwrap_or_default())
    }

    /// `stop_canister`: from now on the canister refuses calls (ingress and
    /// inter-canister) and fires no timers; it is stopped once the call
    /// contexts it has open are answered. Returns the status reached.
    pub fn stop_canister(&mut self, id: CanisterId) -> Result<CanisterStatus, Error> {
        if !self.canisters.contains_key(&id) {
            return Err(Error::CanisterNotFound(id));
        }
        if self.canister_status(id) == Some(CanisterStatus::Running) {
            self.status.insert(id, CanisterStatus::Stopping);
        }
        self.finish_stopping();
        Ok(self.canister_status(id).unwrap_or_default())
    }

    /// `start_canister`: the canister runs again (a stopping one keeps its
    /// open call contexts).
    pub fn start_canister(&mut self, id: CanisterId) -> Result<(), Error> {
        if !self.canisters.contains_key(&id) {
            return Err(Error::CanisterNotFound(id));
        }
        self.status.remove(&id);
        Ok(())
    }

    /// Holds every message to `id` (requests and responses) instead of
    /// delivering it, as if `id` sat on a subnet that is slow to reach:
    /// bounded-wait calls waiting on a held message give up when their
    /// deadline passes ([`Self::advance_time`]).
    pub fn hold_messages_to(&mut self, id: CanisterId) {
        self.holding.insert(id);
    }

    /// Delivers the messages held for `id` and runs what they trigger.
    pub fn release_messages_to(&mut self, id: CanisterId) {
        let _guard = memory_snapshot::exclusive();
        self.holding.remove(&id);
        let (release, keep): (Vec<Queued>, Vec<Queued>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|m| m.receiver() == id);
        self.held = keep;
        self.queue.extend(release);
        self.drain();
    }

    /// Why `id` refuses a new call, if it does (the replica's wording).
    fn refusal(&self, id: CanisterId) -> Option<String> {
        match self.status.get(&id)? {
            CanisterStatus::Running => None,
            CanisterStatus::Stopping => Some(format!("Canister {id} is stopping")),
            CanisterStatus::Stopped => Some(format!("Canister {id} is stopped")),
        }
    }

    /// The refusal of a call to a canister that is not running.
    fn ensure_running(&self, id: CanisterId) -> Result<(), Error> {
        match self.refusal(id) {
            None => Ok(()),
            Some(message) => Err(Error::Rejected {
                canister: id,
                code: RejectCode::CanisterError,
                message,
            }),
        }
    }

    fn is_running(&self, id: CanisterId) -> bool {
        self.refusal(id).is_none()
    }

    /// Stopping canisters with no open call context are stopped.
    fn finish_stopping(&mut self) {
        let open: BTreeSet<Principal> = self.contexts.values().map(|c| c.canister).collect();
        for (id, status) in self.status.iter_mut() {
            if *status == CanisterStatus::Stopping && !open.contains(id) {
                *status = CanisterStatus::Stopped;
            }
        }
    }

    /// Bounded-wait calls whose deadline has passed get `SYS_UNKNOWN`: a
    /// request not yet delivered is dropped (its cycles refunded); a callee
    /// still at work may finish, but its answer is dropped (no refund); a
    /// held response is replaced by the reject.
    fn expire_deadlines(&mut self) {
        let now = self.now;
        let mut rejects = Vec::new();
        let queue = std::mem::take(&mut self.queue);
        self.queue = expire_queued(queue, now, &mut rejects).into();
        let held = std::mem::take(&mut self.held);
        self.held = expire_queued(held, now, &mut rejects);
        let mut ids: Vec<CtxId> = self.contexts.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let Some(c) = self.contexts.get_mut(&id) else { continue };
            if let Origin::Canister {
                caller,
                caller_ctx,
                call,
            } = &c.origin
            {
                if deadline_passed(call, now) && !c.responded && !c.caller_released {
                    c.caller_released = true;
                    rejects.push(Queued::Response {
                        to: *caller,
                        ctx: *caller_ctx,
                        call: call.as_ref().clone(),
                        result: Err((RejectCode::SysUnknown, DEADLINE_EXPIRED.into())),
                        refund: 0,
                    });
                }
            }
        }
        self.queue.extend(rejects);
    }

    /// Upgrades `id` to `wasm`: `canister_pre_upgrade` on the old instance,
    /// a fresh instance (empty heap, global timer cleared, stable memory
    /// kept), `canister_post_upgrade(arg)`. Both hooks share the install
    /// limit; if either fails the canister is left exactly as before.
    /// Returns a combined report (instructions of both hooks).
    pub fn upgrade(
        &mut self,
        id: CanisterId,
        wasm: &[u8],
        arg: Vec<u8>,
        caller: Principal,
    ) -> Result<MessageReport, Error> {
        let _guard = memory_snapshot::exclusive();
        let mut old = self.canisters.remove(&id).ok_or(Error::CanisterNotFound(id))?;
        let result = self.upgrade_inner(&mut old, wasm, arg, caller);
        match result {
            Ok((new, report)) => {
                self.canisters.insert(id, new);
                Ok(report)
            }
            Err(e) => {
                self.canisters.insert(id, old);
                Err(e)
            }
        }
    }

    fn upgrade_inner(
        &mut self,
        old: &mut Canister,
        wasm: &[u8],
        arg: Vec<u8>,
        caller: Principal,
    ) -> Result<(Canister, MessageReport), Error> {
        let id = old.id;
        let fail = |reason, report: Option<MessageReport>| Error::Canister {
            canister: id,
            reason,
            report: report.map(Box::new),
        };
        let (module, info) = compile_cached(
            &self.engine,
            wasm,
            self.config.module_cache_dir.as_deref(),
            self.instrument_options(),
        )
        .map_err(|e| fail(e, None))?;
        let limit = self.config.limits.install;

        let mut pre_instructions = 0;
        let mut pre_report = None;
        if old.exports("canister_pre_upgrade") {
            let mut msg = MessageContext::new(MessageKind::PreUpgrade, "canister_pre_upgrade", vec![], caller);
            msg.time = self.now;
            let exec = old.execute(&Entry::Export("canister_pre_upgrade".into()), msg, limit, false);
            pre_instructions = exec.instructions;
            if exec.result.is_ok() {
                pre_report = Some(self.report_of(old, &exec, "canister_pre_upgrade", true));
            } else {
                let (report, result) = self.conclude(old, exec, "canister_pre_upgrade", true);
                let reason = result
                    .err()
                    .unwrap_or_else(|| ExecError::Internal("pre_upgrade failed".into()));
                return Err(fail(reason, Some(report)));
            }
        } else {
            old.host_mut().stable.begin();
        }
        // The old instance stays pending (its heap is irrelevant after a
        // successful upgrade, restored after a failed one).
        let stable = old.take_stable();
        let host = HostState {
            canister_id: id,
            controllers: old.host().controllers.clone(),
            stable,
            memory: None,
            counter: None,
            cycles: old.host().cycles,
            freezing_threshold_seconds: old.host().freezing_threshold_seconds,
            freezing_reserve: 0,
            canister_version: old.host().canister_version + 1,
            global_timer: 0,
            print_debug: self.config.print_debug,
            charges: self.config.memory_charges,
            max_slice: self.config.max_slice_instructions,
            hooks: None,
            msg: MessageContext::new(MessageKind::PostUpgrade, "", vec![], caller),
        };
        let linker = self.linkers.of(info.mode);
        let mut new = match Canister::instantiate(&self.engine, linker, &module, info, host) {
            Ok(c) => c,
            Err(failure) => {
                let (reason, mut host) = *failure;
                old.put_stable(std::mem::take(&mut host.stable));
                old.finish(false);
                return Err(fail(reason, None));
            }
        };
        let mut post_report = None;
        if new.exports("canister_post_upgrade") {
            let mut msg = MessageContext::new(MessageKind::PostUpgrade, "canister_post_upgrade", arg, caller);
            msg.time = self.now;
            let exec = new.execute(
                &Entry::Export("canister_post_upgrade".into()),
                msg,
                limit.saturating_sub(pre_instructions),
                true,
            );
            let (report, result) = self.conclude(&mut new, exec, "canister_post_upgrade", true);
            if let Err(reason) = result {
                old.put_stable(new.take_stable());
                old.finish(false);
                // The budget is shared: report the upgrade's limit.
                let reason = match reason {
                    ExecError::InstructionLimitExceeded(_) => ExecError::InstructionLimitExceeded(limit),
                    other => other,
                };
                return Err(fail(reason, Some(report)));
            }
            post_report = Some(report);
        } else {
            new.finish(true);
        }
        if let Some(r) = &pre_report {
            self.record(r.clone());
        }
        let mut combined = post_report.or(pre_report).unwrap_or_else(|| MessageReport {
            canister: id,
            method: "canister_post_upgrade".into(),
            kind: MessageKind::PostUpgrade,
            caller,
            instructions: 0,
            limit,
            stable_bytes_read: 0,
            stable_bytes_written: 0,
            dirtied_stable_pages: 0,
            dirtied_heap_pages: 0,
            heap_dirty_page_instructions: 0,
            page_instructions: 0,
            slices: 0,
            committed: true,
            error: None,
        });
        combined.method = "upgrade".into();
        combined.instructions = pre_instructions
            + if combined.kind == MessageKind::PostUpgrade {
                combined.instructions
            } else {
                0
            };
        combined.limit = limit;
        Ok((new, combined))
    }

    // ------------------------------------------------------------------
    // Calls
    // ------------------------------------------------------------------

    /// An ingress update call: `canister_inspect_message` first (if
    /// exported), then the method, then everything it triggered (self-calls,
    /// callbacks) until the queue is empty.
    pub fn update(&mut self, id: CanisterId, caller: Principal, method: &str, arg: Vec<u8>) -> Result<Reply, Error> {
        let pending = self.submit_update(id, caller, method, arg)?;
        self.await_update(pending)
    }

    /// Starts an ingress update call without running what it triggers: its
    /// first message runs (after `canister_inspect_message`), and the calls
    /// it makes wait in the queue. Submitting several calls before
    /// [`Self::await_update`] interleaves them as concurrent calls on the IC
    /// do: every one runs up to its first `await`, then the responses come
    /// back in turn.
    pub fn submit_update(
        &mut self,
        id: CanisterId,
        caller: Principal,
        method: &str,
        arg: Vec<u8>,
    ) -> Result<PendingCall, Error> {
        let canister = self.canisters.get(&id).ok_or(Error::CanisterNotFound(id))?;
        if canister.exports("canister_inspect_message") {
            let _guard = memory_snapshot::exclusive();
            self.inspect(id, caller, method, &arg)?;
        }
        // Inducted: the canister pays for the message's bytes.
        let induction = crate::cycles::ingress_induction_cost(method.len() + arg.len());
        self.ensure_can_prepay(id, induction)?;
        self.charge_cycles(id, induction);
        self.start_call(id, caller, method, arg)
    }

    /// An update call from canister `caller` (any principal standing for a
    /// canister; it need not be installed here). As on the IC,
    /// `canister_inspect_message` does not run for it: this is how a test
    /// reaches an endpoint's own checks. The reply comes back to the test,
    /// not to a callback of the caller (for calls between installed
    /// canisters, see the queue of outgoing calls).
    pub fn update_from_canister(
        &mut self,
        id: CanisterId,
        caller: Principal,
        method: &str,
        arg: Vec<u8>,
    ) -> Result<Reply, Error> {
        let pending = self.start_call(id, caller, method, arg)?;
        self.await_update(pending)
    }

    /// Runs queued messages until the call `pending` (from
    /// [`Self::submit_update`]) is answered, and returns its reply.
    pub fn await_update(&mut self, pending: PendingCall) -> Result<Reply, Error> {
        {
            let _guard = memory_snapshot::exclusive();
            self.drain();
        }
        self.finish_call(pending.canister, pending.ingress, pending.first_report)
    }

    /// Runs the method's first message in a new call context.
    fn start_call(
        &mut self,
        id: CanisterId,
        caller: Principal,
        method: &str,
        arg: Vec<u8>,
    ) -> Result<PendingCall, Error> {
        let _guard = memory_snapshot::exclusive();
        self.ensure_running(id)?;
        self.ensure_can_prepay(id, 0)?;
        let canister = self.canisters.get(&id).ok_or(Error::CanisterNotFound(id))?;
        let update_export = format!("canister_update {method}");
        let query_export = format!("canister_query {method}");
        let (export, kind) = if canister.exports(&update_export) {
            (update_export, MessageKind::Update)
        } else if canister.exports(&query_export) {
            // A query called as an update: runs replicated, changes discarded.
            (query_export, MessageKind::Query)
        } else {
            return Err(Error::Canister {
                canister: id,
                reason: ExecError::MethodNotFound {
                    kind: "update",
                    name: method.to_string(),
                },
                report: None,
            });
        };
        // The reply's messages start with the call itself (the inspect
        // message, if any, is in `reports()`).
        let first_report = self.reports.len();
        let ingress = self.next_ingress;
        self.next_ingress += 1;
        let ctx = self.new_context(id, Origin::Ingress(ingress));
        let limit = self.config.limits.update;
        // The outcome reaches the caller through the call context.
        let msg = MessageContext::new(kind, method, arg, caller);
        let _ = self.run_in_context(id, ctx, Entry::Export(export), msg, limit);
        Ok(PendingCall {
            canister: id,
            ingress,
            first_report,
        })
    }

    fn inspect(&mut self, id: CanisterId, caller: Principal, method: &str, arg: &[u8]) -> Result<(), Error> {
        let limit = self.config.limits.inspect_message;
        let mut msg = MessageContext::new(MessageKind::InspectMessage, method, arg.to_vec(), caller);
        msg.time = self.now;
        let canister = self.canisters.get_mut(&id).ok_or(Error::CanisterNotFound(id))?;
        let exec = canister.execute(&Entry::Export("canister_inspect_message".into()), msg, limit, false);
        let accepted = exec.msg.accepted;
        let mut canister = self.canisters.remove(&id).ok_or(Error::CanisterNotFound(id))?;
        let (report, result) = self.conclude(&mut canister, exec, "canister_inspect_message", false);
        self.canisters.insert(id, canister);
        let reason = match result {
            Err(e) => e,
            Ok(()) if !accepted => ExecError::MessageRejected,
            Ok(()) => return Ok(()),
        };
        Err(Error::Canister {
            canister: id,
            reason,
            report: Some(Box::new(report)),
        })
    }

    /// A query call (non-replicated): changes are always discarded.
    pub fn query(&mut self, id: CanisterId, caller: Principal, method: &str, arg: Vec<u8>) -> Result<Reply, Error> {
        let _guard = memory_snapshot::exclusive();
        self.ensure_running(id)?;
        let canister = self.canisters.get_mut(&id).ok_or(Error::CanisterNotFound(id))?;
        let export = [
            format!("canister_query {method}"),
            format!("canister_composite_query {method}"),
        ]
        .into_iter()
        .find(|e| canister.exports(e));
        let Some(export) = export else {
            return Err(Error::Canister {
                canister: id,
                reason: ExecError::MethodNotFound {
                    kind: "query",
                    name: method.to_string(),
                },
                report: None,
            });
        };
        let mut msg = MessageContext::new(MessageKind::Query, method, arg, caller);
        msg.time = self.now;
        let exec = canister.execute(&Entry::Export(export), msg, self.config.limits.query, false);
        let response = exec.msg.response.clone();
        let mut canister = self.canisters.remove(&id).ok_or(Error::CanisterNotFound(id))?;
        let (report, result) = self.conclude(&mut canister, exec, method, false);
        self.canisters.insert(id, canister);
        if let Err(reason) = result {
            return Err(Error::Canister {
                canister: id,
                reason,
                report: Some(Box::new(report)),
            });
        }
        match response {
            Some(Response::Reply(bytes)) => Ok(Reply {
                bytes,
                report: report.clone(),
                messages: vec![report],
            }),
            Some(Response::Reject(message)) => Err(Error::Rejected {
                canister: id,
                code: RejectCode::CanisterReject,
                message,
            }),
            None => Err(Error::NoResponse(id)),
        }
    }

    // ------------------------------------------------------------------
    // Time and timers
    // ------------------------------------------------------------------

    /// Advances the clock by `d`. Timers due within the interval fire in
    /// deadline order, the clock standing at each deadline while its
    /// messages run (so a chain of timers set from timers runs through).
    /// Returns the reports of every message run.
    pub fn advance_time(&mut self, d: Duration) -> Vec<MessageReport> {
        let _guard = memory_snapshot::exclusive();
        let start = self.reports.len();
        let target = self.now.saturating_add(d.as_nanos().min(u64::MAX as u128) as u64);
        let mut fired = 0usize;
        while let Some((deadline, id)) = self.next_due(target) {
            self.now = self.now.max(deadline);
            self.expire_deadlines();
            self.fire_timer(id);
            self.drain();
            fired += 1;
            if fired >= self.config.limits.max_messages_per_operation {
                break;
            }
        }
        self.now = target;
        self.expire_deadlines();
        self.drain();
        self.reports[start..].to_vec()
    }

    /// Moves the clock on by `d` and runs nothing, as when a subnet pauses:
    /// a timer that fell due meanwhile fires once, at the next round
    /// ([`Self::tick`] or [`Self::advance_time`]), not once per tick missed.
    pub fn jump_time(&mut self, d: Duration) {
        self.now = self.now.saturating_add(d.as_nanos().min(u64::MAX as u128) as u64);
    }

    /// One round: every canister whose timer is due fires it, then queued
    /// messages run until the queue is empty.
    pub fn tick(&mut self) -> Vec<MessageReport> {
        let _guard = memory_snapshot::exclusive();
        let start = self.reports.len();
        self.expire_deadlines();
        let due: Vec<Principal> = self
            .canisters
            .iter()
            .filter(|(id, c)| {
                let t = c.host().global_timer;
                t != 0 && t <= self.now && c.exports("canister_global_timer") && self.is_running(**id)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.fire_timer(id);
        }
        self.drain();
        self.reports[start..].to_vec()
    }

    fn next_due(&self, target: u64) -> Option<(u64, Principal)> {
        self.canisters
            .iter()
            .filter(|(id, c)| {
                c.exports("canister_global_timer") && self.is_running(**id) && self.ensure_can_prepay(**id, 0).is_ok()
            })
            .map(|(id, c)| (c.host().global_timer, *id))
            .filter(|(t, _)| *t != 0 && *t <= target)
            .min()
    }

    fn fire_timer(&mut self, id: Principal) {
        // A canister that cannot pay for the message keeps its timer for
        // when it is topped up.
        if self.ensure_can_prepay(id, 0).is_err() {
            return;
        }
        let Some(canister) = self.canisters.get_mut(&id) else {
            return;
        };
        // The IC deactivates the timer before running the task.
        canister.host_mut().global_timer = 0;
        let ctx = self.new_context(id, Origin::System);
        let limit = self.config.limits.update;
        // A failed timer message is visible in its report; nobody waits for it.
        let msg = MessageContext::new(MessageKind::GlobalTimer, "canister_global_timer", vec![], id);
        let _ = self.run_in_context(id, ctx, Entry::Export("canister_global_timer".into()), msg, limit);
    }

    // ------------------------------------------------------------------
    // Message machinery
    // ------------------------------------------------------------------

    fn new_context(&mut self, canister: Principal, origin: Origin) -> CtxId {
        let id = self.next_ctx;
        self.next_ctx += 1;
        self.contexts.insert(
            id,
            CallContext {
                canister,
                origin,
                responded: false,
                outstanding: 0,
                instructions: 0,
                deadline: 0,
                cycles_available: 0,
                caller_released: false,
            },
        );
        id
    }

    /// Runs one message in call context `ctx` and settles the context.
    /// `msg` carries the message's own inputs; the context adds the rest.
    fn run_in_context(
        &mut self,
        id: Principal,
        ctx: CtxId,
        entry: Entry,
        mut msg: MessageContext,
        limit: u64,
    ) -> Result<(), ExecError> {
        let Some(mut canister) = self.canisters.remove(&id) else {
            return Err(ExecError::Internal(format!("canister {id} vanished")));
        };
        let (responded, ctx_instructions, deadline, cycles_available) = self
            .contexts
            .get(&ctx)
            .map(|c| (c.responded, c.instructions, c.deadline, c.cycles_available))
            .unwrap_or((true, 0, 0, 0));
        let (kind, method) = (msg.kind, msg.method.clone());
        msg.time = self.now;
        msg.call_context_instructions = ctx_instructions;
        msg.deadline = deadline;
        msg.can_respond = msg.can_respond && !responded;
        msg.cycles_available = cycles_available;
        let exec = canister.execute(&entry, msg, limit, false);
        let instructions = exec.instructions;
        let committed = exec.result.is_ok() && kind != MessageKind::Query;
        let response = if committed || kind == MessageKind::Query {
            exec.msg.response.clone()
        } else {
            None
        };
        let calls = if committed { exec.msg.calls.clone() } else { Vec::new() };
        let accepted = if committed { exec.msg.cycles_accepted } else { 0 };
        let (_, result) = self.conclude(&mut canister, exec, &method, committed);
        self.canisters.insert(id, canister);

        if let Some(c) = self.contexts.get_mut(&ctx) {
            c.instructions += instructions;
            c.outstanding += calls.len();
            c.cycles_available -= accepted;
        }
        for mut call in calls {
            if let Some(seconds) = call.timeout_seconds {
                call.deadline = self.now + seconds as u64 * 1_000_000_000;
            }
            self.queue.push_back(Queued::Request {
                from: id,
                from_ctx: ctx,
                call,
            });
        }
        let outcome = match (response, &result) {
            (Some(Response::Reply(bytes)), Ok(())) => Some(Outcome::Reply(bytes)),
            (Some(Response::Reject(m)), Ok(())) => Some(Outcome::Reject(RejectCode::CanisterReject, m)),
            (_, Err(reason)) => Some(Outcome::Failed(Error::Canister {
                canister: id,
                reason: reason.clone(),
                report: self.reports.last().cloned().map(Box::new),
            })),
            (None, Ok(())) => None,
        };
        self.settle(ctx, outcome);
        result
    }

    /// Answers the context if this message did (or trapped with nothing
    /// else pending); forgets it once answered and idle.
    fn settle(&mut self, ctx: CtxId, outcome: Option<Outcome>) {
        let Some(c) = self.contexts.get(&ctx) else {
            return;
        };
        let outcome = match outcome {
            Some(Outcome::Failed(_)) if c.responded || c.outstanding > 0 => None,
            Some(o) if !c.responded => Some(o),
            None if !c.responded && c.outstanding == 0 => Some(Outcome::Failed(Error::NoResponse(c.canister))),
            _ => None,
        };
        if let Some(outcome) = outcome {
            self.respond(ctx, outcome);
        }
        if let Some(c) = self.contexts.get(&ctx) {
            if c.responded && c.outstanding == 0 {
                self.contexts.remove(&ctx);
                self.finish_stopping();
            }
        }
    }

    fn respond(&mut self, ctx: CtxId, outcome: Outcome) {
        let Some(c) = self.contexts.get_mut(&ctx) else {
            return;
        };
        c.responded = true;
        let canister = c.canister;
        let refund = c.cycles_available;
        if c.caller_released {
            return;
        }
        match &c.origin {
            Origin::System => {}
            Origin::Ingress(ingress) => {
                let result = match outcome {
                    Outcome::Reply(bytes) => Ok(bytes),
                    Outcome::Reject(code, message) => Err(Error::Rejected {
                        canister,
                        code,
                        message,
                    }),
                    Outcome::Failed(e) => Err(e),
                };
                self.ingress_results.insert(*ingress, result);
            }
            Origin::Canister {
                caller,
                caller_ctx,
                call,
            } => {
                let result = match outcome {
                    Outcome::Reply(bytes) => Ok(bytes),
                    Outcome::Reject(code, message) => Err((code, message)),
                    Outcome::Failed(e) => Err((RejectCode::CanisterError, e.to_string())),
                };
                self.queue.push_back(Queued::Response {
                    to: *caller,
                    ctx: *caller_ctx,
                    call: call.as_ref().clone(),
                    result,
                    refund,
                });
            }
        }
    }

    /// Runs queued messages until the queue is empty (or the bound).
    fn drain(&mut self) {
        let mut ran = 0usize;
        while let Some(item) = self.queue.pop_front() {
            ran += 1;
            if ran > self.config.limits.max_messages_per_operation {
                self.queue.push_front(item);
                break;
            }
            if self.holding.contains(&item.receiver()) {
                self.held.push(item);
                continue;
            }
            match item {
                Queued::Request { from, from_ctx, call } => self.deliver_request(from, from_ctx, call),
                Queued::Response {
                    to,
                    ctx,
                    call,
                    result,
                    refund,
                } => self.deliver_response(to, ctx, call, result, refund),
            }
        }
    }

    fn deliver_request(&mut self, from: Principal, from_ctx: CtxId, call: OutgoingCall) {
        let callee = call.callee;
        if callee == Principal::management_canister() {
            // raw_rand takes no cycles: all of them go back.
            let result = self.management_call(&call);
            let refund = call.cycles;
            self.queue.push_back(Queued::Response {
                to: from,
                ctx: from_ctx,
                call,
                result,
                refund,
            });
            return;
        }
        // A query called by a canister runs as an update (replicated), as on the IC.
        let export = ["canister_update", "canister_query", "canister_composite_query"]
            .map(|kind| format!("{kind} {}", call.method))
            .into_iter()
            .find(|e| self.canisters.get(&callee).is_some_and(|c| c.exports(e)))
            .unwrap_or_else(|| format!("canister_update {}", call.method));
        let reject = match self.canisters.get(&callee) {
            None => Some((RejectCode::DestinationInvalid, format!("Canister {callee} not found"))),
            Some(_) if !self.is_running(callee) => self.refusal(callee).map(|m| (RejectCode::CanisterError, m)),
            Some(c) if !c.exports(&export) => Some((
                RejectCode::CanisterError,
                Error::Canister {
                    canister: callee,
                    reason: ExecError::MethodNotFound {
                        kind: "update",
                        name: call.method.clone(),
                    },
                    report: None,
                }
                .to_string(),
            )),
            // A callee that cannot prepay the message is out of cycles
            // (IC0207, so SYS_TRANSIENT).
            Some(_) => match self.ensure_can_prepay(callee, 0) {
                Err(Error::Rejected { code, message, .. }) => Some((code, message)),
                _ => None,
            },
        };
        if let Some(result) = reject {
            // Never delivered: every attached cycle goes back.
            let refund = call.cycles;
            self.queue.push_back(Queued::Response {
                to: from,
                ctx: from_ctx,
                call,
                result: Err(result),
                refund,
            });
            return;
        }
        let msg = MessageContext::new(MessageKind::Update, &call.method, call.arg.clone(), from);
        let (deadline, cycles) = (call.deadline, call.cycles);
        let ctx = self.new_context(
            callee,
            Origin::Canister {
                caller: from,
                caller_ctx: from_ctx,
                call: Box::new(call),
            },
        );
        if let Some(c) = self.contexts.get_mut(&ctx) {
            c.deadline = deadline;
            c.cycles_available = cycles;
        }
        let limit = self.config.limits.update;
        let _ = self.run_in_context(callee, ctx, Entry::Export(export), msg, limit);
    }

    /// Runs the reply or reject callback of `call` in the caller's context
    /// `ctx`, with the unaccepted cycles back in the caller's balance first
    /// (they stay there even if the callback traps).
    fn deliver_response(
        &mut self,
        to: Principal,
        ctx: CtxId,
        call: OutgoingCall,
        result: Result<Vec<u8>, (RejectCode, String)>,
        refund: u128,
    ) {
        if let Some(c) = self.contexts.get_mut(&ctx) {
            c.outstanding = c.outstanding.saturating_sub(1);
        }
        let Some(canister) = self.canisters.get_mut(&to) else {
            return;
        };
        let host = canister.host_mut();
        host.cycles = host.cycles.saturating_add(refund);
        let (callback, arg, reject, label) = match result {
            Ok(bytes) => (call.on_reply, bytes, None, "reply callback"),
            Err((code, message)) => (call.on_reject, vec![], Some((code as u32, message)), "reject callback"),
        };
        let method = format!("{} ({label})", call.method);
        let limit = self.config.limits.update;
        let mut msg = MessageContext::new(MessageKind::Callback, &method, arg, call.callee);
        msg.reject = reject;
        msg.cycles_refunded = refund;
        let result = self.run_in_context(to, ctx, Entry::Table(callback), msg, limit);
        if let (Err(_), Some(cleanup)) = (result, call.on_cleanup) {
            let method = format!("{} (cleanup)", call.method);
            let msg = MessageContext::new(MessageKind::Cleanup, &method, vec![], call.callee);
            let _ = self.run_in_context(to, ctx, Entry::Table(cleanup), msg, limit);
        }
    }

    /// The management canister, as far as canisters here need it.
    fn management_call(&mut self, call: &OutgoingCall) -> Result<Vec<u8>, (RejectCode, String)> {
        match call.method.as_str() {
            "raw_rand" => {
                let bytes = random_bytes(self.config.seed, self.rand_calls);
                self.rand_calls += 1;
                candid::encode_one(bytes.to_vec()).map_err(|e| (RejectCode::SysFatal, e.to_string()))
            }
            other => Err((
                RejectCode::DestinationInvalid,
                format!("local-ic: management canister method '{other}' is not supported"),
            )),
        }
    }

    /// Builds the report, finishes (commit/rollback) and records.
    fn conclude(
        &mut self,
        canister: &mut Canister,
        exec: Execution,
        method: &str,
        commit_if_ok: bool,
    ) -> (MessageReport, Result<(), ExecError>) {
        let commit = commit_if_ok && exec.result.is_ok();
        canister.finish(commit);
        if commit {
            let host = canister.host_mut();
            if let Some(t) = exec.msg.timer {
                host.global_timer = t;
            }
            host.cycles = (host.cycles + exec.msg.cycles_accepted).saturating_sub(exec.msg.cycles_withdrawn);
        }
        let report = self.report_of(canister, &exec, method, commit);
        if matches!(
            report.kind,
            MessageKind::Update | MessageKind::GlobalTimer | MessageKind::Callback | MessageKind::Cleanup
        ) {
            // Paid whether or not the message trapped.
            let cost = crate::cycles::execution_cost_in(canister.info.mode, report.charged_instructions());
            let host = canister.host_mut();
            host.cycles = host.cycles.saturating_sub(cost);
        }
        self.record(report.clone());
        (report, exec.result)
    }

    fn report_of(&mut self, canister: &Canister, exec: &Execution, method: &str, committed: bool) -> MessageReport {
        for line in &exec.msg.logs {
            self.logs.push((canister.id, line.clone()));
        }
        MessageReport {
            canister: canister.id,
            method: method.to_string(),
            kind: exec.msg.kind,
            caller: exec.msg.caller,
            instructions: exec.instructions,
            limit: exec.msg.limit,
            stable_bytes_read: exec.msg.stable_bytes_read,
            stable_bytes_written: exec.msg.stable_bytes_written,
            dirtied_stable_pages: exec.dirtied_stable_pages,
            dirtied_heap_pages: exec.dirtied_heap_pages,
            heap_dirty_page_instructions: self.after_message_charge(canister.info.mode, exec),
            page_instructions: exec.page_instructions,
            slices: exec.slices,
            committed,
            error: exec.result.as_ref().err().map(|e| e.to_string()),
        }
    }

    /// The replica's after-message charge for dirty pages (see
    /// [`MessageReport::heap_dirty_page_instructions`]).
    fn after_message_charge(&self, mode: WasmExecutionMode, exec: &Execution) -> u64 {
        use crate::charges::{
            MemoryCharges, DIRTY_PAGE_COPY_OVERHEAD, OS_PAGES_PER_WASM_PAGE, WASM64_DIRTY_PAGE_OVERHEAD_MULTIPLIER,
        };
        if exec.msg.kind == MessageKind::Query {
            return 0;
        }
        let legacy_overhead = match mode {
            WasmExecutionMode::Wasm32 => self.config.heap_dirty_page_overhead,
            WasmExecutionMode::Wasm64 => self.config.heap_dirty_page_overhead * WASM64_DIRTY_PAGE_OVERHEAD_MULTIPLIER,
        };
        match self.config.memory_charges {
            MemoryCharges::Legacy => exec.dirtied_heap_pages * legacy_overhead,
            MemoryCharges::Dmt => exec.tracked_dirty_wasm_pages * OS_PAGES_PER_WASM_PAGE * DIRTY_PAGE_COPY_OVERHEAD,
        }
    }

    fn record(&mut self, report: MessageReport) {
        let s = self.stats.entry((report.canister, report.method.clone())).or_default();
        s.messages += 1;
        s.instructions += report.instructions;
        s.max_instructions = s.max_instructions.max(report.instructions);
        s.stable_bytes_read += report.stable_bytes_read;
        s.stable_bytes_written += report.stable_bytes_written;
        s.traps += report.error.is_some() as u64;
        self.reports.push(report);
    }

    fn finish_call(&mut self, id: Principal, ingress: u64, start: usize) -> Result<Reply, Error> {
        let messages = self.reports[start..].to_vec();
        match self.ingress_results.remove(&ingress) {
            Some(Ok(bytes)) => Ok(Reply {
                bytes,
                report: messages
                    .first()
                    .cloned()
                    .ok_or_else(|| Error::Unsupported("reply without an executed message".into()))?,
                messages,
            }),
            Some(Err(e)) => Err(e),
            None => Err(Error::Unsupported(format!(
                "the call to canister {id} is still waiting for a response after {} messages",
                messages.len()
            ))),
        }
    }
}

/// A stable memory read or write outside the canister's stable memory.
fn out_of_bounds(canister: CanisterId, offset: u64, len: usize) -> Error {
    Error::Rejected {
        canister,
        code: RejectCode::CanisterError,
        message: format!("stable memory access out of bounds at {offset}+{len}"),
    }
}

/// Whether `call` is bounded-wait and its deadline is past at `now`.
fn deadline_passed(call: &OutgoingCall, now: u64) -> bool {
    call.deadline != 0 && call.deadline <= now
}

/// Expires the bounded-wait messages of `list` whose deadline is past (see
/// [`Runtime::expire_deadlines`]): a request becomes a `SYS_UNKNOWN` reject
/// to its caller, pushed onto `rejects`; a response is replaced by one.
fn expire_queued(list: impl IntoIterator<Item = Queued>, now: u64, rejects: &mut Vec<Queued>) -> Vec<Queued> {
    let expired = |call: &OutgoingCall| deadline_passed(call, now);
    let deadline_reject = || Err((RejectCode::SysUnknown, DEADLINE_EXPIRED.to_string()));
    let mut kept = Vec::new();
    for item in list {
        match item {
            Queued::Request { from, from_ctx, call } if expired(&call) => rejects.push(Queued::Response {
                to: from,
                ctx: from_ctx,
                refund: call.cycles,
                call,
                result: deadline_reject(),
            }),
            Queued::Response {
                to, ctx, call, result, ..
            } if expired(&call) && !matches!(&result, Err((_, m)) if m == DEADLINE_EXPIRED) => {
                kept.push(Queued::Response {
                    to,
                    ctx,
                    call,
                    result: deadline_reject(),
                    refund: 0,
                })
            }
            other => kept.push(other),
        }
    }
    kept
}

/// IC-style canister id for index `n` (0 is `rwlgt-iiaaa-aaaaa-aaaaa-cai`,
/// the first id the IC ever assigned; installs count up from there).
pub fn canister_id(n: u64) -> Principal {
    let mut bytes = [0u8; 10];
    bytes[..8].copy_from_slice(&n.to_be_bytes());
    bytes[8] = 1;
    bytes[9] = 1;
    Principal::from_slice(&bytes)
}

/// 32 deterministic bytes from the seed and the call number (splitmix64).
fn random_bytes(seed: u64, n: u64) -> [u8; 32] {
    let mut state = seed
        ^ n.wrapping_mul(0xD6E8_FEB8_6659_FD93)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut out = [0u8; 32];
    for chunk in out.chunks_exact_mut(8) {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        chunk.copy_from_slice(&z.to_le_bytes());
    }
    out
}

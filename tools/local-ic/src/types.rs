//! Public value types: limits, configuration, reports, errors.

use std::collections::BTreeMap;
use std::fmt;

use candid::Principal;

/// Per-message instruction limits (application subnet defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Update calls, inter-canister calls, callbacks and timer messages.
    pub update: u64,
    /// Query calls.
    pub query: u64,
    /// `canister_init`, or `canister_pre_upgrade` + `canister_post_upgrade` together.
    pub install: u64,
    /// `canister_inspect_message`.
    pub inspect_message: u64,
    /// Safety valve: most messages one `update` / `advance_time` / `tick` may
    /// run before it stops draining the queue (a canister re-arming its timer
    /// in the past would otherwise run forever).
    pub max_messages_per_operation: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            update: 40_000_000_000,
            query: 5_000_000_000,
            install: 300_000_000_000,
            inspect_message: 200_000_000,
            max_messages_per_operation: 100_000,
        }
    }
}

/// Most heap a wasm32 canister can address: 4 GiB.
pub const MAX_WASM32_MEMORY_IN_BYTES: u64 = 1 << 32;

/// Most heap a wasm64 canister may use: 6 GiB (dfinity/ic
/// `rs/config/src/embedders.rs`, `max_wasm64_memory_size` =
/// `MAX_WASM64_MEMORY_IN_BYTES`, raised to 6 GiB by PR #3748; the open
/// PR #11445 would allow 18 GiB with 6 GiB accessible per message).
pub const MAX_WASM64_MEMORY_IN_BYTES: u64 = 6 << 30;

/// Bytes in a wasm page.
pub const WASM_PAGE_SIZE: u64 = 65_536;

/// Whether a canister's heap is addressed with 32- or 64-bit pointers. As
/// in the replica (`main_memory_type()` in
/// `rs/embedders/src/wasm_utils/instrumentation.rs`), a module is wasm64
/// when its first memory is a memory64 one. The mode sets the weight of
/// loads and stores ([`crate::weights`]), the heap limit, the `ic0`
/// signatures ([`crate::system_api`]) and the cycles per instruction
/// ([`crate::cycles`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum WasmExecutionMode {
    #[default]
    Wasm32,
    Wasm64,
}

impl WasmExecutionMode {
    pub fn is_wasm64(self) -> bool {
        self == WasmExecutionMode::Wasm64
    }

    /// The largest heap a module of this mode can have, in bytes.
    pub fn max_heap_bytes(self) -> u64 {
        match self {
            WasmExecutionMode::Wasm32 => MAX_WASM32_MEMORY_IN_BYTES,
            WasmExecutionMode::Wasm64 => MAX_WASM64_MEMORY_IN_BYTES,
        }
    }

    /// [`Self::max_heap_bytes`] in wasm pages (65,536 or 98,304).
    pub fn max_heap_pages(self) -> u64 {
        self.max_heap_bytes() / WASM_PAGE_SIZE
    }
}

/// Configuration of a [`crate::Runtime`].
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    pub limits: Limits,
    /// Seed of `raw_rand`: same seed, same random bytes.
    pub seed: u64,
    /// Initial clock, nanoseconds since the Unix epoch.
    pub start_time_nanos: u64,
    /// Cycle balance every canister starts with.
    pub initial_cycles: u128,
    /// Freezing threshold of every canister, in seconds ([`crate::cycles`]).
    pub freezing_threshold_seconds: u64,
    /// Echo `ic0.debug_print` to stderr (always kept in [`crate::Runtime::logs`]).
    pub print_debug: bool,
    /// Directory for compiled modules, reused across processes (compiling a
    /// real canister takes seconds). Default: `$LOCAL_IC_MODULE_CACHE`, if set.
    pub module_cache_dir: Option<std::path::PathBuf>,
    /// Which memory charges apply ([`crate::charges`]): the deterministic
    /// memory tracker's in-band page charges (default) or the legacy
    /// after-message dirty-page charge.
    pub memory_charges: crate::charges::MemoryCharges,
    /// Largest deterministic-time-slicing slice of update-like and install
    /// messages ([`crate::charges::MAX_SLICE_INSTRUCTIONS`]).
    pub max_slice_instructions: u64,
    /// Legacy charges: instructions per 4 KiB heap page an update-type
    /// message dirties ([`HEAP_DIRTY_PAGE_OVERHEAD`]; 0 switches the charge
    /// off). Reported apart, in [`MessageReport::heap_dirty_page_instructions`].
    pub heap_dirty_page_overhead: u64,
    /// Instrument modules with a counter per function as well
    /// ([`crate::profile`], read with [`crate::Runtime::profile`]). Counts
    /// are unchanged; execution is slower. Default: off.
    pub profile: bool,
}

/// Legacy charges ([`crate::charges::MemoryCharges::Legacy`]): instructions
/// per 4 KiB wasm32 heap page a message dirties, on application
/// (and system) subnets. dfinity/ic: `WasmtimeInstance::run` in
/// `rs/embedders/src/wasmtime_embedder.rs` ("Charge for dirty wasm heap
/// pages") subtracts `dirty_page_overhead × wasm_dirty_pages.len()` from the
/// instruction counter after the message's code has run; the hypervisor
/// (`rs/execution_environment/src/hypervisor.rs`, `Hypervisor::new`) sets that
/// overhead to `SchedulerConfig::dirty_page_overhead`, which is
/// `DEFAULT_DIRTY_PAGE_OVERHEAD = 1_000` in `rs/config/src/subnet_config.rs`
/// (wasm64: × `WASM64_DIRTY_PAGE_OVERHEAD_MULTIPLIER = 4`,
/// `rs/config/src/embedders.rs`). The same constant is the stable-memory
/// per-page charge ([`crate::system_api::overhead::DIRTY_STABLE_PAGE`]).
///
/// It is charged after the code ran, so `performance_counter` never sees it
/// and it cannot make the message trap (the executed count is capped at the
/// limit); it does count as executed instructions (cycles). Non-replicated
/// queries track no modifications and pay nothing. Pages only read cost
/// nothing on the heap (the replica counts accessed pages for metrics and,
/// on stable memory, for the 2 GiB per-message access limit). The
/// deterministic memory tracker replaced this ([`crate::charges`]).
pub const HEAP_DIRTY_PAGE_OVERHEAD: u64 = crate::charges::LEGACY_DIRTY_PAGE_OVERHEAD;

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            seed: 0,
            // 2025-01-01T00:00:00Z: a fixed, realistic time.
            start_time_nanos: 1_735_689_600_000_000_000,
            initial_cycles: 100_000_000_000_000,
            freezing_threshold_seconds: crate::cycles::DEFAULT_FREEZING_THRESHOLD_SECONDS,
            print_debug: false,
            module_cache_dir: std::env::var_os("LOCAL_IC_MODULE_CACHE").map(Into::into),
            memory_charges: crate::charges::MemoryCharges::default(),
            max_slice_instructions: crate::charges::MAX_SLICE_INSTRUCTIONS,
            heap_dirty_page_overhead: HEAP_DIRTY_PAGE_OVERHEAD,
            profile: false,
        }
    }
}

/// What kind of message ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MessageKind {
    Init,
    PreUpgrade,
    PostUpgrade,
    /// `canister_update <name>` (ingress or inter-canister, see `caller`).
    Update,
    /// `canister_query <name>`.
    Query,
    InspectMessage,
    /// `canister_global_timer`.
    GlobalTimer,
    /// A reply or reject callback of an inter-canister call.
    Callback,
    /// A `call_on_cleanup` closure after a trapping callback.
    Cleanup,
}

impl MessageKind {
    /// Mode name as the replica uses it in "cannot be executed in X mode".
    pub fn mode_name(self) -> &'static str {
        match self {
            MessageKind::Init => "init",
            MessageKind::PreUpgrade => "pre_upgrade",
            MessageKind::PostUpgrade => "post_upgrade",
            MessageKind::Update => "update",
            MessageKind::Query => "non-replicated query",
            MessageKind::InspectMessage => "inspect message",
            MessageKind::GlobalTimer => "system task",
            MessageKind::Callback => "reply callback",
            MessageKind::Cleanup => "cleanup",
        }
    }
}

impl fmt::Display for MessageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            MessageKind::Init => "init",
            MessageKind::PreUpgrade => "pre_upgrade",
            MessageKind::PostUpgrade => "post_upgrade",
            MessageKind::Update => "update",
            MessageKind::Query => "query",
            MessageKind::InspectMessage => "inspect_message",
            MessageKind::GlobalTimer => "timer",
            MessageKind::Callback => "callback",
            MessageKind::Cleanup => "cleanup",
        };
        f.write_str(s)
    }
}

/// What one executed message did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageReport {
    pub canister: Principal,
    /// Method name, or the system method (`canister_init`, `canister_global_timer`, ...).
    pub method: String,
    pub kind: MessageKind,
    pub caller: Principal,
    /// Weighted instructions, as `performance_counter(0)` would report at
    /// the end of the message (system API charges included).
    pub instructions: u64,
    /// The limit this message ran under.
    pub limit: u64,
    pub stable_bytes_read: u64,
    pub stable_bytes_written: u64,
    /// 4 KiB stable pages first written in this message (charged extra).
    pub dirtied_stable_pages: u64,
    /// 4 KiB heap pages the message wrote.
    pub dirtied_heap_pages: u64,
    /// What the replica charges after the message ran, for dirty pages (0
    /// for queries): legacy, `dirtied_heap_pages ×
    /// RuntimeConfig::heap_dirty_page_overhead`; dmt, the copy overhead of
    /// every dirty OS page, heap and stable
    /// ([`crate::charges::DIRTY_PAGE_COPY_OVERHEAD`]). Not part of
    /// [`Self::instructions`] and never against a limit: see
    /// [`Self::charged_instructions`].
    pub heap_dirty_page_instructions: u64,
    /// In-band page charges (dmt: first access and first write of every
    /// heap and stable wasm page; legacy: the stable dirty-page charge).
    /// Part of [`Self::instructions`].
    pub page_instructions: u64,
    /// Deterministic-time-slicing slices the message ran in (≥ 1).
    pub slices: u64,
    /// Whether the message's changes were kept (false for traps and queries).
    pub committed: bool,
    /// The error if the message trapped.
    pub error: Option<String>,
}

impl MessageReport {
    /// Instructions the replica counts for the message (cycles are charged
    /// for these): the code's own plus the heap dirty-page charge.
    pub fn charged_instructions(&self) -> u64 {
        self.instructions + self.heap_dirty_page_instructions
    }
}

/// Running totals for one method.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MethodStats {
    pub messages: u64,
    pub instructions: u64,
    pub max_instructions: u64,
    pub stable_bytes_read: u64,
    pub stable_bytes_written: u64,
    pub traps: u64,
}

/// Totals per `(canister, method)` (method as in [`MessageReport::method`]).
pub type Stats = BTreeMap<(Principal, String), MethodStats>;

/// A successful reply.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Candid-encoded reply.
    pub bytes: Vec<u8>,
    /// Report of the message the call started with.
    pub report: MessageReport,
    /// Every message the call ran (its own first, then callbacks, self-calls
    /// and everything else the queue held), in execution order.
    pub messages: Vec<MessageReport>,
}

/// A canister's run status, as `canister_status` reports it. A stopping
/// canister refuses new calls but still takes the responses its open call
/// contexts wait for; it is stopped once none is open. Timers fire only
/// while running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CanisterStatus {
    #[default]
    Running,
    Stopping,
    Stopped,
}

/// Reject codes of the IC interface specification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectCode {
    SysFatal = 1,
    SysTransient = 2,
    DestinationInvalid = 3,
    CanisterReject = 4,
    CanisterError = 5,
    SysUnknown = 6,
}

/// Why a message failed, worded as the replica's `HypervisorError`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExecError {
    #[error("Canister exceeded the limit of {0} instructions for single message execution.")]
    InstructionLimitExceeded(u64),
    /// IC0522: one operation overshot its slice by a whole slice
    /// (`rs/canister_sandbox/src/dts.rs`, `HypervisorError::SliceOverrun`).
    #[error(
        "Canister attempted to perform a large memory operation that used {instructions} instructions \
         and exceeded the slice limit {limit}."
    )]
    SliceOverrun { instructions: u64, limit: u64 },
    #[error("Canister called `ic0.trap` with message: '{0}'")]
    CalledTrap(String),
    #[error("Canister trapped: {0}")]
    Trapped(String),
    #[error("Canister has no {kind} method '{name}'.")]
    MethodNotFound { kind: &'static str, name: String },
    #[error("Canister violated contract: {0}")]
    ContractViolation(String),
    #[error("Canister's Wasm module is not valid: {0}")]
    InvalidWasm(String),
    #[error("Canister rejected the message")]
    MessageRejected,
    #[error("Canister requested to invoke a non-existent Wasm function {1} from table {0}")]
    FunctionNotFound(u32, u32),
    #[error("local-ic internal error: {0}")]
    Internal(String),
}

/// Errors of the runtime's API, displayed with the IC's wording.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The message trapped or could not run (`Error from Canister <id>: ...`).
    #[error("Error from Canister {canister}: {reason}")]
    Canister {
        canister: Principal,
        reason: ExecError,
        /// Report of the failed message, when one ran.
        report: Option<Box<MessageReport>>,
    },
    /// The call was rejected (by the canister with `msg_reject`, or by the
    /// system, e.g. an unsupported management canister method).
    #[error("Canister {canister} rejected the call (reject code {}): {message}", *code as u32)]
    Rejected {
        canister: Principal,
        code: RejectCode,
        message: String,
    },
    #[error("Canister {0} did not produce a response")]
    NoResponse(Principal),
    #[error("Canister {0} not found")]
    CanisterNotFound(Principal),
    /// Something this runtime does not model.
    #[error("local-ic: {0}")]
    Unsupported(String),
}

impl Error {
    /// The reason, if this is a canister execution error.
    pub fn reason(&self) -> Option<&ExecError> {
        match self {
            Error::Canister { reason, .. } => Some(reason),
            _ => None,
        }
    }

    /// The report of the failed message, if one ran.
    pub fn report(&self) -> Option<&MessageReport> {
        match self {
            Error::Canister { report, .. } => report.as_deref(),
            _ => None,
        }
    }
}

//! The `ic0` system API: host state of one canister and the linker that
//! exposes it to the module.
//!
//! Every call charges the replica's fixed overhead (dfinity/ic
//! `rs/embedders/src/wasmtime_embedder/system_api_complexity.rs`, the `new`
//! metering constants) plus one instruction per byte moved, straight into
//! the module's instruction counter, so `performance_counter(0)` and the
//! limits see them. Effects that must not survive a trap (reply, timer,
//! outgoing calls) are staged in [`MessageContext`] and applied by the
//! runtime only when the message commits; stable memory has its own undo log.

use candid::Principal;
use wasmtime::{Caller, Engine, Func, Global, Linker, Memory, Val};

use crate::charges::{self, MemoryCharges};
use crate::stable::{StableMemory, MAX_PAGES};
use crate::tracker;
use crate::types::{ExecError, MessageKind, RejectCode, WasmExecutionMode};

/// The type of heap addresses and sizes in `ic0` signatures, `I` in the IC
/// interface specification (`#system-api-imports`: "I ∈ {i32, i64} …
/// derived from the bit-width of the declared memory"): `u32` for wasm32
/// canisters, `u64` for wasm64 ones. Like the replica's linker
/// (`rs/embedders/src/wasmtime_embedder/linker.rs`, `syscalls::<I>` for
/// u32 and u64), one generic registration serves both modes. Cycle amounts,
/// times, stable-memory offsets and codes keep their fixed types.
pub trait Address: wasmtime::WasmTy + Copy + Into<u64> + Send + Sync + 'static {
    const MODE: WasmExecutionMode;

    fn to_u64(self) -> u64 {
        self.into()
    }

    /// A length the host reports (an argument's, a principal's, ...).
    fn from_size(n: usize) -> Self;
}

impl Address for u32 {
    const MODE: WasmExecutionMode = WasmExecutionMode::Wasm32;
    fn from_size(n: usize) -> Self {
        n as u32
    }
}

impl Address for u64 {
    const MODE: WasmExecutionMode = WasmExecutionMode::Wasm64;
    fn from_size(n: usize) -> Self {
        n as u64
    }
}

/// Replica overheads (instructions) per system API call.
pub mod overhead {
    pub const DEFAULT: u64 = 500;
    pub const CALL_NEW: u64 = 1_500;
    pub const CALL_PERFORM: u64 = 5_000;
    pub const DEBUG_PRINT: u64 = 100;
    pub const IS_CONTROLLER: u64 = 1_000;
    pub const PERFORMANCE_COUNTER: u64 = 200;
    pub const STABLE_SIZE: u64 = 20;
    pub const STABLE_READ: u64 = 20;
    pub const STABLE_WRITE: u64 = 20;
    /// Per 4 KiB stable page first written in a message (application
    /// subnet), legacy charges only ([`crate::charges`]).
    pub const DIRTY_STABLE_PAGE: u64 = crate::charges::LEGACY_DIRTY_PAGE_OVERHEAD;
}

/// The `ic0` functions this runtime provides to canisters of both modes
/// (heap addresses and sizes typed by the mode, see [`Address`]), besides
/// [`WASM32_ONLY`]. A module importing anything else is refused at install
/// time, naming the missing functions.
pub const PROVIDED: &[&str] = &[
    "msg_arg_data_size",
    "msg_arg_data_copy",
    "msg_caller_size",
    "msg_caller_copy",
    "msg_reject_code",
    "msg_reject_msg_size",
    "msg_reject_msg_copy",
    "msg_deadline",
    "msg_reply_data_append",
    "msg_reply",
    "msg_reject",
    "msg_method_name_size",
    "msg_method_name_copy",
    "accept_message",
    "msg_cycles_available128",
    "msg_cycles_refunded128",
    "msg_cycles_accept128",
    "canister_self_size",
    "canister_self_copy",
    "canister_cycle_balance128",
    "canister_liquid_cycle_balance128",
    "canister_status",
    "canister_version",
    "is_controller",
    "in_replicated_execution",
    "call_new",
    "call_on_cleanup",
    "call_data_append",
    "call_with_best_effort_response",
    "call_cycles_add128",
    "call_perform",
    "cost_call",
    "stable64_size",
    "stable64_grow",
    "stable64_read",
    "stable64_write",
    "certified_data_set",
    "data_certificate_present",
    "data_certificate_size",
    "data_certificate_copy",
    "time",
    "global_timer_set",
    "performance_counter",
    "debug_print",
    "trap",
];

/// The `ic0` functions only wasm32 canisters may import: the 32-bit stable
/// memory API. The replica's validation offers a wasm64 module only
/// `get_valid_system_apis_common(I64)`, without
/// `get_valid_system_apis_32_only()`
/// (`rs/embedders/src/wasm_utils/validation.rs`); the 32-bit cycles
/// functions, also in that list, are provided to neither mode here.
pub const WASM32_ONLY: &[&str] = &["stable_size", "stable_grow", "stable_read", "stable_write"];

/// A function-table index plus its environment argument (ic0 callbacks):
/// i32 values of a wasm32 canister, i64 of a wasm64 one (the callback is
/// called with its env as that type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Callback {
    pub fun: u64,
    pub env: u64,
}

/// A call the canister made (`call_new` ... `call_perform`).
#[derive(Debug, Clone)]
pub struct OutgoingCall {
    pub callee: Principal,
    pub method: String,
    pub arg: Vec<u8>,
    pub on_reply: Callback,
    pub on_reject: Callback,
    pub on_cleanup: Option<Callback>,
    pub cycles: u128,
    /// Set by `call_with_best_effort_response`.
    pub timeout_seconds: Option<u32>,
    /// When a bounded-wait call gives up (nanoseconds; 0 = guaranteed
    /// response): set when the call is queued, `now + timeout`.
    pub deadline: u64,
}

/// How the message answered its call context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    Reply(Vec<u8>),
    Reject(String),
}

/// Inputs and staged outputs of the message in flight.
#[derive(Debug)]
pub struct MessageContext {
    pub kind: MessageKind,
    pub method: String,
    pub arg: Vec<u8>,
    pub caller: Principal,
    /// Reject code and message, in a reject callback.
    pub reject: Option<(u32, String)>,
    pub time: u64,
    pub limit: u64,
    /// Instructions of earlier messages of the same call context.
    pub call_context_instructions: u64,
    /// `msg_deadline`: 0 for guaranteed-response calls.
    pub deadline: u64,
    /// Whether the call context can still be answered.
    pub can_respond: bool,
    /// Cycles the caller attached that the call context has not accepted yet.
    pub cycles_available: u128,
    /// Cycles the response brought back (reply and reject callbacks).
    pub cycles_refunded: u128,
    // Outputs.
    pub reply_data: Vec<u8>,
    pub response: Option<Response>,
    pub accepted: bool,
    /// Cycles taken with `msg_cycles_accept128`: credited when the message
    /// commits, as the withdrawals are.
    pub cycles_accepted: u128,
    /// Fees and attached cycles of the calls made: debited at commit, so a
    /// trap keeps the balance as it was.
    pub cycles_withdrawn: u128,
    pub timer: Option<u64>,
    pub new_call: Option<OutgoingCall>,
    pub calls: Vec<OutgoingCall>,
    pub trap: Option<ExecError>,
    pub stable_bytes_read: u64,
    pub stable_bytes_written: u64,
    /// In-band page charges of host-side accesses (system-API calls).
    pub page_instructions: u64,
    pub logs: Vec<String>,
}

impl MessageContext {
    pub fn new(kind: MessageKind, method: &str, arg: Vec<u8>, caller: Principal) -> Self {
        Self {
            kind,
            method: method.to_string(),
            arg,
            caller,
            reject: None,
            time: 0,
            limit: 0,
            call_context_instructions: 0,
            deadline: 0,
            can_respond: matches!(kind, MessageKind::Update | MessageKind::Query | MessageKind::Callback),
            cycles_available: 0,
            cycles_refunded: 0,
            reply_data: Vec::new(),
            response: None,
            accepted: false,
            cycles_accepted: 0,
            cycles_withdrawn: 0,
            timer: None,
            new_call: None,
            calls: Vec::new(),
            trap: None,
            stable_bytes_read: 0,
            stable_bytes_written: 0,
            page_instructions: 0,
            logs: Vec::new(),
        }
    }
}

/// Everything the host functions of one canister see.
pub struct HostState {
    pub canister_id: Principal,
    pub controllers: Vec<Principal>,
    pub stable: StableMemory,
    pub memory: Option<Memory>,
    pub counter: Option<Global>,
    pub cycles: u128,
    /// Seconds of idle burn the balance must cover ([`crate::cycles`]).
    pub freezing_threshold_seconds: u64,
    /// That burn at the start of the message in flight.
    pub freezing_reserve: u128,
    pub canister_version: u64,
    /// Committed global timer deadline (0 = not set).
    pub global_timer: u64,
    pub print_debug: bool,
    /// Memory-charging rule ([`crate::RuntimeConfig::memory_charges`]).
    pub charges: MemoryCharges,
    /// Largest slice ([`crate::RuntimeConfig::max_slice_instructions`]).
    pub max_slice: u64,
    /// The added slice handler and page map ([`crate::tracker`]).
    pub hooks: Option<Hooks>,
    pub msg: MessageContext,
}

impl HostState {
    /// The balance as the message in flight sees it: what it accepted is in,
    /// what its calls took is out (both become final when it commits).
    pub fn balance_in_message(&self) -> u128 {
        (self.cycles + self.msg.cycles_accepted).saturating_sub(self.msg.cycles_withdrawn)
    }
}

/// Handles on what the rewrite added to the module ([`crate::tracker`]).
#[derive(Clone)]
pub struct Hooks {
    pub out_of_instructions: Func,
    pub globals: Vec<(tracker::Var, Global)>,
    /// The page map (modules with a memory, tracker charges only).
    pub pages: Option<Memory>,
}

impl Hooks {
    pub fn global(&self, g: tracker::Var) -> Option<Global> {
        self.globals.iter().find(|(x, _)| *x == g).map(|(_, h)| *h)
    }

    pub fn get(&self, store: impl wasmtime::AsContextMut, g: tracker::Var) -> i64 {
        let mut store = store;
        self.global(g).and_then(|h| h.get(&mut store).i64()).unwrap_or(0)
    }

    pub fn set(&self, store: impl wasmtime::AsContextMut, g: tracker::Var, v: i64) {
        let mut store = store;
        if let Some(h) = self.global(g) {
            // Setting a value of the global's own type cannot fail.
            let _ = h.set(&mut store, Val::I64(v));
        }
    }

    /// Why the slice handler failed the message, if it did.
    pub fn failure(&self, store: impl wasmtime::AsContextMut, limit: u64) -> Option<ExecError> {
        let mut store = store;
        match self.get(&mut store, tracker::Var::Fail) {
            tracker::FAIL_LIMIT => Some(ExecError::InstructionLimitExceeded(limit)),
            tracker::FAIL_OVERRUN => Some(ExecError::SliceOverrun {
                instructions: self.get(&mut store, tracker::Var::FailInstructions).max(0) as u64,
                limit: self.get(&mut store, tracker::Var::MaxSlice).max(0) as u64,
            }),
            _ => None,
        }
    }

    /// Instructions of the message so far: finished slices plus the
    /// current one's.
    pub fn used(&self, store: impl wasmtime::AsContextMut, counter: i64) -> u64 {
        let mut store = store;
        let executed = self.get(&mut store, tracker::Var::Executed);
        let slice = self.get(&mut store, tracker::Var::SliceLimit);
        (executed + slice - counter).max(0) as u64
    }
}

type Ctx<'a> = Caller<'a, HostState>;

/// Records `err` as the message's failure and aborts execution.
fn fail<T>(caller: &mut Ctx<'_>, err: ExecError) -> wasmtime::Result<T> {
    let text = err.to_string();
    caller.data_mut().msg.trap = Some(err);
    Err(wasmtime::Error::msg(text))
}

fn violation<T>(caller: &mut Ctx<'_>, text: String) -> wasmtime::Result<T> {
    fail(caller, ExecError::ContractViolation(text))
}

/// Subtracts `amount` from the instruction counter. Running out ends the
/// slice as a check point in wasm would (the slice handler starts the next
/// one or fails the message).
fn charge(caller: &mut Ctx<'_>, amount: u64) -> wasmtime::Result<()> {
    let Some(counter) = caller.data().counter else {
        return Ok(());
    };
    let left = counter.get(&mut *caller).i64().unwrap_or(0);
    let left = left.saturating_sub(amount.min(i64::MAX as u64) as i64);
    counter.set(&mut *caller, Val::I64(left))?;
    if left >= 0 {
        return Ok(());
    }
    let limit = caller.data().msg.limit;
    let Some(hooks) = caller.data().hooks.clone() else {
        return fail(caller, ExecError::InstructionLimitExceeded(limit));
    };
    if hooks.out_of_instructions.call(&mut *caller, &[], &mut []).is_err() {
        let err = hooks
            .failure(&mut *caller, limit)
            .unwrap_or(ExecError::InstructionLimitExceeded(limit));
        return fail(caller, err);
    }
    Ok(())
}

/// Instructions used so far in this message.
fn used(caller: &mut Ctx<'_>) -> u64 {
    let limit = caller.data().msg.limit;
    let left = caller
        .data()
        .counter
        .map(|c| c.get(&mut *caller).i64().unwrap_or(0))
        .unwrap_or(limit as i64);
    match caller.data().hooks.clone() {
        Some(hooks) => hooks.used(&mut *caller, left),
        None => (limit as i64 - left).max(0) as u64,
    }
}

/// Whether this message's writes count as dirty pages (queries track none).
fn tracks_dirty(kind: MessageKind) -> bool {
    !matches!(kind, MessageKind::Query | MessageKind::InspectMessage)
}

/// Charges a system-API call's heap access of `[ptr, ptr + len)` on the
/// module's page map, as the replica's tracker would on the fault.
fn touch_heap(caller: &mut Ctx<'_>, ptr: u64, len: u64, write: bool) -> wasmtime::Result<()> {
    let Some(pages) = caller.data().hooks.as_ref().and_then(|h| h.pages) else {
        return Ok(());
    };
    let Some((first, last)) = charges::wasm_pages_of(ptr, len) else {
        return Ok(());
    };
    let (kind, mode) = (caller.data().msg.kind, caller.data().charges);
    let map = pages.data_mut(&mut *caller);
    let last = last.min(map.len() as u64 - 1);
    let cost = charges::touch_pages(map, first, last, write, tracks_dirty(kind), mode);
    caller.data_mut().msg.page_instructions += cost;
    charge(caller, cost)
}

/// Charges a stable-memory access: the tracker's per-page charges, or the
/// legacy charge per newly dirtied 4 KiB page (`new_dirty_4k`).
fn touch_stable(caller: &mut Ctx<'_>, offset: u64, len: u64, write: bool, new_dirty_4k: u64) -> wasmtime::Result<()> {
    let (kind, mode) = (caller.data().msg.kind, caller.data().charges);
    let cost = match mode {
        MemoryCharges::Legacy => new_dirty_4k * overhead::DIRTY_STABLE_PAGE,
        MemoryCharges::Dmt => match charges::wasm_pages_of(offset, len) {
            Some((first, last)) => {
                let tracked = &mut caller.data_mut().stable.tracked;
                charges::touch_pages(tracked, first, last, write, tracks_dirty(kind), mode)
            }
            None => 0,
        },
    };
    if mode == MemoryCharges::Dmt {
        caller.data_mut().msg.page_instructions += cost;
    }
    charge(caller, cost)
}

fn require(caller: &mut Ctx<'_>, api: &str, allowed: &[MessageKind]) -> wasmtime::Result<()> {
    let kind = caller.data().msg.kind;
    if allowed.contains(&kind) {
        Ok(())
    } else {
        violation(
            caller,
            format!("\"ic0_{api}\" cannot be executed in {} mode", kind.mode_name()),
        )
    }
}

/// The byte range `[ptr, ptr + len)` of a heap of `size` bytes, if inside.
fn heap_range(ptr: u64, len: u64, size: usize) -> Option<std::ops::Range<usize>> {
    let end = ptr.checked_add(len)?;
    (end <= size as u64).then_some(ptr as usize..end as usize)
}

fn read_heap(caller: &mut Ctx<'_>, api: &str, ptr: impl Into<u64>, len: impl Into<u64>) -> wasmtime::Result<Vec<u8>> {
    let (ptr, len) = (ptr.into(), len.into());
    let Some(memory) = caller.data().memory else {
        return violation(caller, format!("ic0.{api}: the module has no memory"));
    };
    let range = heap_range(ptr, len, memory.data_size(&*caller));
    if range.is_some() {
        touch_heap(caller, ptr, len, false)?;
    }
    let data = memory.data(&*caller);
    match range.and_then(|r| data.get(r)) {
        Some(bytes) => Ok(bytes.to_vec()),
        None => {
            let size = data.len();
            violation(
                caller,
                format!("ic0.{api} heap: src={ptr} + length={len} exceeds the slice size={size}"),
            )
        }
    }
}

fn write_heap(caller: &mut Ctx<'_>, api: &str, ptr: impl Into<u64>, bytes: &[u8]) -> wasmtime::Result<()> {
    let ptr = ptr.into();
    let Some(memory) = caller.data().memory else {
        return violation(caller, format!("ic0.{api}: the module has no memory"));
    };
    let range = heap_range(ptr, bytes.len() as u64, memory.data_size(&*caller));
    if range.is_some() {
        touch_heap(caller, ptr, bytes.len() as u64, true)?;
    }
    let data = memory.data_mut(&mut *caller);
    let size = data.len();
    match range.and_then(|r| data.get_mut(r)) {
        Some(dst) => {
            dst.copy_from_slice(bytes);
            Ok(())
        }
        None => violation(
            caller,
            format!(
                "ic0.{api} heap: dst={ptr} + length={} exceeds the slice size={size}",
                bytes.len()
            ),
        ),
    }
}

/// `xxx_copy(dst, offset, size)` from a host-side byte string.
fn copy_out<I: Address>(
    caller: &mut Ctx<'_>,
    api: &str,
    source: &[u8],
    dst: I,
    offset: I,
    size: I,
) -> wasmtime::Result<()> {
    let (offset, size) = (offset.to_u64(), size.to_u64());
    charge(caller, overhead::DEFAULT.saturating_add(size))?;
    let chunk = offset
        .checked_add(size)
        .filter(|&end| end <= source.len() as u64)
        .map(|end| &source[offset as usize..end as usize]);
    let Some(chunk) = chunk else {
        return violation(
            caller,
            format!(
                "ic0.{api} payload: src={offset} + length={size} exceeds the slice size={}",
                source.len()
            ),
        );
    };
    let chunk = chunk.to_vec();
    write_heap(caller, api, dst, &chunk)
}

const UPDATE_LIKE: &[MessageKind] = &[
    MessageKind::Update,
    MessageKind::Callback,
    MessageKind::GlobalTimer,
    MessageKind::Cleanup,
];
const CAN_REPLY: &[MessageKind] = &[MessageKind::Update, MessageKind::Query, MessageKind::Callback];
const HAS_ARG: &[MessageKind] = &[
    MessageKind::Init,
    MessageKind::PostUpgrade,
    MessageKind::Update,
    MessageKind::Query,
    MessageKind::InspectMessage,
    MessageKind::Callback,
];

fn stable_write(caller: &mut Ctx<'_>, api: &str, offset: u64, src: u64, size: u64) -> wasmtime::Result<()> {
    charge(caller, overhead::STABLE_WRITE.saturating_add(size))?;
    let bytes = read_heap(caller, api, src, size)?;
    match caller.data_mut().stable.write(offset, &bytes) {
        Ok(new_pages) => {
            caller.data_mut().msg.stable_bytes_written += size;
            touch_stable(caller, offset, size, true, new_pages)
        }
        Err(_) => fail(caller, ExecError::Trapped("stable memory out of bounds".into())),
    }
}

fn stable_read(caller: &mut Ctx<'_>, api: &str, dst: u64, offset: u64, size: u64) -> wasmtime::Result<()> {
    charge(caller, overhead::STABLE_READ.saturating_add(size))?;
    let Some(end) = offset
        .checked_add(size)
        .filter(|&end| end <= caller.data().stable.len())
    else {
        return fail(caller, ExecError::Trapped("stable memory out of bounds".into()));
    };
    let mut buf = vec![0u8; (end - offset) as usize];
    if caller.data().stable.read(offset, &mut buf).is_err() {
        return fail(caller, ExecError::Trapped("stable memory out of bounds".into()));
    }
    caller.data_mut().msg.stable_bytes_read += size;
    touch_stable(caller, offset, size, false, 0)?;
    write_heap(caller, api, dst, &buf)
}

/// A heap address or size the `stable64_*` functions pass as i64: in a
/// wasm32 canister it must fit the 32-bit heap.
fn heap_address<I: Address>(caller: &mut Ctx<'_>, api: &str, v: u64) -> wasmtime::Result<u64> {
    match I::MODE {
        WasmExecutionMode::Wasm32 if u32::try_from(v).is_err() => {
            violation(caller, format!("ic0.{api}: address {v} beyond the 32-bit heap"))
        }
        _ => Ok(v),
    }
}

/// Builds the linker of canisters of `mode`: every function of
/// [`PROVIDED`] under `ic0`, with the mode's address type, and for wasm32
/// also those of [`WASM32_ONLY`].
pub fn linker(engine: &Engine, mode: WasmExecutionMode) -> wasmtime::Result<Linker<HostState>> {
    let mut l = Linker::new(engine);
    match mode {
        WasmExecutionMode::Wasm32 => {
            register::<u32>(&mut l)?;
            register_wasm32_only(&mut l)?;
        }
        WasmExecutionMode::Wasm64 => register::<u64>(&mut l)?,
    }
    Ok(l)
}

/// The functions of [`PROVIDED`], with heap addresses and sizes of type `I`.
fn register<I: Address>(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
    // --- message arguments, caller, method name -------------------------
    l.func_wrap("ic0", "msg_arg_data_size", |mut c: Ctx<'_>| -> wasmtime::Result<I> {
        require(&mut c, "msg_arg_data_size", HAS_ARG)?;
        charge(&mut c, overhead::DEFAULT)?;
        Ok(I::from_size(c.data().msg.arg.len()))
    })?;
    l.func_wrap("ic0", "msg_arg_data_copy", |mut c: Ctx<'_>, dst: I, off: I, size: I| {
        require(&mut c, "msg_arg_data_copy", HAS_ARG)?;
        let arg = std::mem::take(&mut c.data_mut().msg.arg);
        let r = copy_out(&mut c, "msg_arg_data_copy", &arg, dst, off, size);
        c.data_mut().msg.arg = arg;
        r
    })?;
    l.func_wrap("ic0", "msg_caller_size", |mut c: Ctx<'_>| -> wasmtime::Result<I> {
        charge(&mut c, overhead::DEFAULT)?;
        Ok(I::from_size(c.data().msg.caller.as_slice().len()))
    })?;
    l.func_wrap("ic0", "msg_caller_copy", |mut c: Ctx<'_>, dst: I, off: I, size: I| {
        let caller = c.data().msg.caller;
        copy_out(&mut c, "msg_caller_copy", caller.as_slice(), dst, off, size)
    })?;
    l.func_wrap("ic0", "msg_method_name_size", |mut c: Ctx<'_>| -> wasmtime::Result<I> {
        charge(&mut c, overhead::DEFAULT)?;
        Ok(I::from_size(c.data().msg.method.len()))
    })?;
    l.func_wrap(
        "ic0",
        "msg_method_name_copy",
        |mut c: Ctx<'_>, dst: I, off: I, size: I| {
            let name = c.data().msg.method.clone();
            copy_out(&mut c, "msg_method_name_copy", name.as_bytes(), dst, off, size)
        },
    )?;
    l.func_wrap("ic0", "msg_deadline", |mut c: Ctx<'_>| -> wasmtime::Result<u64> {
        charge(&mut c, overhead::DEFAULT)?;
        Ok(c.data().msg.deadline)
    })?;
    l.func_wrap("ic0", "accept_message", |mut c: Ctx<'_>| {
        require(&mut c, "accept_message", &[MessageKind::InspectMessage])?;
        charge(&mut c, overhead::DEFAULT)?;
        if c.data().msg.accepted {
            return violation(&mut c, "ic0.accept_message: the message was already accepted".into());
        }
        c.data_mut().msg.accepted = true;
        Ok(())
    })?;

    // --- reject information (callbacks) ----------------------------------
    l.func_wrap("ic0", "msg_reject_code", |mut c: Ctx<'_>| -> wasmtime::Result<u32> {
        require(
            &mut c,
            "msg_reject_code",
            &[MessageKind::Callback, MessageKind::Cleanup],
        )?;
        charge(&mut c, overhead::DEFAULT)?;
        Ok(c.data().msg.reject.as_ref().map_or(0, |r| r.0))
    })?;
    l.func_wrap("ic0", "msg_reject_msg_size", |mut c: Ctx<'_>| -> wasmtime::Result<I> {
        charge(&mut c, overhead::DEFAULT)?;
        match c.data().msg.reject.as_ref() {
            Some((_, m)) => Ok(I::from_size(m.len())),
            None => violation(
                &mut c,
                "\"ic0_msg_reject_msg_size\" cannot be executed outside a reject callback".into(),
            ),
        }
    })?;
    l.func_wrap(
        "ic0",
        "msg_reject_msg_copy",
        |mut c: Ctx<'_>, dst: I, off: I, size: I| {
            let Some((_, text)) = c.data().msg.reject.clone() else {
                return violation(
                    &mut c,
                    "\"ic0_msg_reject_msg_copy\" cannot be executed outside a reject callback".into(),
                );
            };
            copy_out(&mut c, "msg_reject_msg_copy", text.as_bytes(), dst, off, size)
        },
    )?;

    // --- replying ---------------------------------------------------------
    fn check_can_respond(c: &mut Ctx<'_>, api: &str) -> wasmtime::Result<()> {
        require(c, api, CAN_REPLY)?;
        if !c.data().msg.can_respond || c.data().msg.response.is_some() {
            return violation(c, format!("ic0.{api}: the call is already replied"));
        }
        Ok(())
    }
    l.func_wrap("ic0", "msg_reply_data_append", |mut c: Ctx<'_>, src: I, size: I| {
        check_can_respond(&mut c, "msg_reply_data_append")?;
        charge(&mut c, overhead::DEFAULT.saturating_add(size.to_u64()))?;
        let bytes = read_heap(&mut c, "msg_reply_data_append", src, size)?;
        c.data_mut().msg.reply_data.extend_from_slice(&bytes);
        Ok(())
    })?;
    l.func_wrap("ic0", "msg_reply", |mut c: Ctx<'_>| {
        check_can_respond(&mut c, "msg_reply")?;
        charge(&mut c, overhead::DEFAULT)?;
        let data = std::mem::take(&mut c.data_mut().msg.reply_data);
        c.data_mut().msg.response = Some(Response::Reply(data));
        Ok(())
    })?;
    l.func_wrap("ic0", "msg_reject", |mut c: Ctx<'_>, src: I, size: I| {
        check_can_respond(&mut c, "msg_reject")?;
        charge(&mut c, overhead::DEFAULT.saturating_add(size.to_u64()))?;
        let bytes = read_heap(&mut c, "msg_reject", src, size)?;
        let text = String::from_utf8_lossy(&bytes).into_owned();
        c.data_mut().msg.response = Some(Response::Reject(text));
        Ok(())
    })?;

    // --- cycles: attached to calls, accepted by the callee, refunded with
    // the response; balance changes take effect when the message commits.
    l.func_wrap("ic0", "msg_cycles_available128", |mut c: Ctx<'_>, dst: I| {
        charge(&mut c, overhead::DEFAULT)?;
        let msg = &c.data().msg;
        let left = msg.cycles_available - msg.cycles_accepted;
        write_heap(&mut c, "msg_cycles_available128", dst, &left.to_le_bytes())
    })?;
    l.func_wrap("ic0", "msg_cycles_refunded128", |mut c: Ctx<'_>, dst: I| {
        charge(&mut c, overhead::DEFAULT)?;
        if c.data().msg.kind != MessageKind::Callback {
            return violation(
                &mut c,
                "ic0.msg_cycles_refunded128 can only be called in a callback".into(),
            );
        }
        let refunded = c.data().msg.cycles_refunded;
        write_heap(&mut c, "msg_cycles_refunded128", dst, &refunded.to_le_bytes())
    })?;
    l.func_wrap(
        "ic0",
        "msg_cycles_accept128",
        |mut c: Ctx<'_>, high: u64, low: u64, dst: I| {
            charge(&mut c, overhead::DEFAULT)?;
            let max = ((high as u128) << 64) | low as u128;
            let msg = &mut c.data_mut().msg;
            let amount = max.min(msg.cycles_available - msg.cycles_accepted);
            msg.cycles_accepted += amount;
            write_heap(&mut c, "msg_cycles_accept128", dst, &amount.to_le_bytes())
        },
    )?;
    l.func_wrap("ic0", "canister_cycle_balance128", move |mut c: Ctx<'_>, dst: I| {
        charge(&mut c, overhead::DEFAULT)?;
        let cycles = c.data().balance_in_message();
        write_heap(&mut c, "canister_cycle_balance128", dst, &cycles.to_le_bytes())
    })?;
    l.func_wrap(
        "ic0",
        "canister_liquid_cycle_balance128",
        move |mut c: Ctx<'_>, dst: I| {
            charge(&mut c, overhead::DEFAULT)?;
            let liquid = crate::cycles::liquid(c.data().balance_in_message(), c.data().freezing_reserve);
            write_heap(&mut c, "canister_liquid_cycle_balance128", dst, &liquid.to_le_bytes())
        },
    )?;
    l.func_wrap(
        "ic0",
        "cost_call",
        |mut c: Ctx<'_>, method_name_size: u64, payload_size: u64, dst: I| {
            charge(&mut c, overhead::DEFAULT)?;
            let cost = crate::cycles::call_cost((method_name_size + payload_size) as usize);
            write_heap(&mut c, "cost_call", dst, &cost.to_le_bytes())
        },
    )?;

    // --- canister information ---------------------------------------------
    l.func_wrap("ic0", "canister_self_size", |mut c: Ctx<'_>| -> wasmtime::Result<I> {
        charge(&mut c, overhead::DEFAULT)?;
        Ok(I::from_size(c.data().canister_id.as_slice().len()))
    })?;
    l.func_wrap(
        "ic0",
        "canister_self_copy",
        |mut c: Ctx<'_>, dst: I, off: I, size: I| {
            let id = c.data().canister_id;
            copy_out(&mut c, "canister_self_copy", id.as_slice(), dst, off, size)
        },
    )?;
    l.func_wrap("ic0", "canister_status", |mut c: Ctx<'_>| -> wasmtime::Result<u32> {
        charge(&mut c, overhead::DEFAULT)?;
        Ok(1) // running
    })?;
    l.func_wrap("ic0", "canister_version", |mut c: Ctx<'_>| -> wasmtime::Result<u64> {
        charge(&mut c, overhead::DEFAULT)?;
        Ok(c.data().canister_version)
    })?;
    l.func_wrap(
        "ic0",
        "is_controller",
        |mut c: Ctx<'_>, src: I, size: I| -> wasmtime::Result<u32> {
            charge(&mut c, overhead::IS_CONTROLLER.saturating_add(size.to_u64()))?;
            let bytes = read_heap(&mut c, "is_controller", src, size)?;
            match Principal::try_from_slice(&bytes) {
                Ok(p) => Ok(c.data().controllers.contains(&p) as u32),
                Err(_) => violation(&mut c, "ic0.is_controller: invalid principal id".into()),
            }
        },
    )?;
    l.func_wrap(
        "ic0",
        "in_replicated_execution",
        |mut c: Ctx<'_>| -> wasmtime::Result<u32> {
            charge(&mut c, overhead::DEFAULT)?;
            let kind = c.data().msg.kind;
            Ok(!matches!(kind, MessageKind::Query | MessageKind::InspectMessage) as u32)
        },
    )?;
    l.func_wrap("ic0", "certified_data_set", |mut c: Ctx<'_>, _src: I, size: I| {
        charge(&mut c, overhead::DEFAULT.saturating_add(size.to_u64()))?;
        if size.to_u64() > 32 {
            return violation(
                &mut c,
                "ic0_certified_data_set failed because the passed data must be no larger than 32 bytes".into(),
            );
        }
        Ok(())
    })?;
    l.func_wrap(
        "ic0",
        "data_certificate_present",
        |mut c: Ctx<'_>| -> wasmtime::Result<u32> {
            charge(&mut c, overhead::DEFAULT)?;
            Ok(0)
        },
    )?;
    l.func_wrap(
        "ic0",
        "data_certificate_size",
        |mut c: Ctx<'_>| -> wasmtime::Result<I> {
            violation(
                &mut c,
                "local-ic has no data certificates (data_certificate_present is 0)".into(),
            )
        },
    )?;
    l.func_wrap(
        "ic0",
        "data_certificate_copy",
        |mut c: Ctx<'_>, _dst: I, _off: I, _size: I| -> wasmtime::Result<()> {
            violation(
                &mut c,
                "local-ic has no data certificates (data_certificate_present is 0)".into(),
            )
        },
    )?;

    // --- inter-canister calls -------------------------------------------
    l.func_wrap(
        "ic0",
        "call_new",
        |mut c: Ctx<'_>,
         callee_src: I,
         callee_size: I,
         name_src: I,
         name_size: I,
         reply_fun: I,
         reply_env: I,
         reject_fun: I,
         reject_env: I| {
            require(&mut c, "call_new", UPDATE_LIKE)?;
            charge(
                &mut c,
                overhead::CALL_NEW
                    .saturating_add(callee_size.to_u64())
                    .saturating_add(name_size.to_u64()),
            )?;
            let callee = read_heap(&mut c, "call_new", callee_src, callee_size)?;
            let name = read_heap(&mut c, "call_new", name_src, name_size)?;
            let Ok(callee) = Principal::try_from_slice(&callee) else {
                return violation(&mut c, "ic0.call_new: invalid callee principal".into());
            };
            let Ok(method) = String::from_utf8(name) else {
                return violation(&mut c, "ic0.call_new: method name is not UTF-8".into());
            };
            c.data_mut().msg.new_call = Some(OutgoingCall {
                callee,
                method,
                arg: Vec::new(),
                on_reply: Callback {
                    fun: reply_fun.to_u64(),
                    env: reply_env.to_u64(),
                },
                on_reject: Callback {
                    fun: reject_fun.to_u64(),
                    env: reject_env.to_u64(),
                },
                on_cleanup: None,
                cycles: 0,
                timeout_seconds: None,
                deadline: 0,
            });
            Ok(())
        },
    )?;
    fn with_call(c: &mut Ctx<'_>, api: &str, f: impl FnOnce(&mut OutgoingCall)) -> wasmtime::Result<()> {
        match c.data_mut().msg.new_call.as_mut() {
            Some(call) => {
                f(call);
                Ok(())
            }
            None => violation(c, format!("ic0.{api}: no call is under construction (call_new first)")),
        }
    }
    l.func_wrap("ic0", "call_on_cleanup", |mut c: Ctx<'_>, fun: I, env: I| {
        charge(&mut c, overhead::DEFAULT)?;
        with_call(&mut c, "call_on_cleanup", |call| {
            call.on_cleanup = Some(Callback {
                fun: fun.to_u64(),
                env: env.to_u64(),
            })
        })
    })?;
    l.func_wrap("ic0", "call_data_append", |mut c: Ctx<'_>, src: I, size: I| {
        charge(&mut c, overhead::DEFAULT.saturating_add(size.to_u64()))?;
        let bytes = read_heap(&mut c, "call_data_append", src, size)?;
        with_call(&mut c, "call_data_append", |call| call.arg.extend_from_slice(&bytes))
    })?;
    l.func_wrap(
        "ic0",
        "call_with_best_effort_response",
        |mut c: Ctx<'_>, timeout: u32| {
            charge(&mut c, overhead::DEFAULT)?;
            with_call(&mut c, "call_with_best_effort_response", |call| {
                call.timeout_seconds = Some(timeout.clamp(1, 300))
            })
        },
    )?;
    l.func_wrap("ic0", "call_cycles_add128", |mut c: Ctx<'_>, high: u64, low: u64| {
        charge(&mut c, overhead::DEFAULT)?;
        let amount = ((high as u128) << 64) | low as u128;
        with_call(&mut c, "call_cycles_add128", |call| call.cycles += amount)
    })?;
    l.func_wrap("ic0", "call_perform", |mut c: Ctx<'_>| -> wasmtime::Result<u32> {
        charge(&mut c, overhead::CALL_PERFORM)?;
        match c.data_mut().msg.new_call.take() {
            Some(call) => {
                let cost = crate::cycles::call_cost(call.method.len() + call.arg.len()) + call.cycles;
                let state = c.data_mut();
                // The replica refuses a call the balance above the freezing
                // reserve cannot pay for: SYS_TRANSIENT, nothing withdrawn.
                if crate::cycles::liquid(state.balance_in_message(), state.freezing_reserve) < cost {
                    return Ok(RejectCode::SysTransient as u32);
                }
                state.msg.cycles_withdrawn += cost;
                state.msg.calls.push(call);
                Ok(0)
            }
            None => violation(&mut c, "ic0.call_perform: no call is under construction".into()),
        }
    })?;

    // --- stable memory ------------------------------------------------------
    l.func_wrap("ic0", "stable64_size", |mut c: Ctx<'_>| -> wasmtime::Result<u64> {
        charge(&mut c, overhead::STABLE_SIZE)?;
        Ok(c.data().stable.size())
    })?;
    l.func_wrap(
        "ic0",
        "stable64_grow",
        |mut c: Ctx<'_>, pages: u64| -> wasmtime::Result<i64> {
            charge(&mut c, overhead::DEFAULT)?;
            Ok(c.data_mut().stable.grow(pages))
        },
    )?;
    l.func_wrap(
        "ic0",
        "stable64_write",
        |mut c: Ctx<'_>, offset: u64, src: u64, size: u64| {
            let src = heap_address::<I>(&mut c, "stable64_write", src)?;
            let size = heap_address::<I>(&mut c, "stable64_write", size)?;
            stable_write(&mut c, "stable64_write", offset, src, size)
        },
    )?;
    l.func_wrap(
        "ic0",
        "stable64_read",
        |mut c: Ctx<'_>, dst: u64, offset: u64, size: u64| {
            let dst = heap_address::<I>(&mut c, "stable64_read", dst)?;
            let size = heap_address::<I>(&mut c, "stable64_read", size)?;
            stable_read(&mut c, "stable64_read", dst, offset, size)
        },
    )?;
    // --- time, timer, counters --------------------------------------------
    l.func_wrap("ic0", "time", |mut c: Ctx<'_>| -> wasmtime::Result<u64> {
        charge(&mut c, overhead::DEFAULT)?;
        Ok(c.data().msg.time)
    })?;
    l.func_wrap(
        "ic0",
        "global_timer_set",
        |mut c: Ctx<'_>, ts: u64| -> wasmtime::Result<u64> {
            require(
                &mut c,
                "global_timer_set",
                &[
                    MessageKind::Init,
                    MessageKind::PreUpgrade,
                    MessageKind::PostUpgrade,
                    MessageKind::Update,
                    MessageKind::Callback,
                    MessageKind::Cleanup,
                    MessageKind::GlobalTimer,
                ],
            )?;
            charge(&mut c, overhead::DEFAULT)?;
            let state = c.data_mut();
            let previous = state.msg.timer.unwrap_or(state.global_timer);
            state.msg.timer = Some(ts);
            Ok(previous)
        },
    )?;
    l.func_wrap(
        "ic0",
        "performance_counter",
        |mut c: Ctx<'_>, kind: u32| -> wasmtime::Result<u64> {
            charge(&mut c, overhead::PERFORMANCE_COUNTER)?;
            let now = used(&mut c);
            match kind {
                0 => Ok(now),
                1 => Ok(c.data().msg.call_context_instructions + now),
                other => violation(&mut c, format!("Error getting performance counter type {other}")),
            }
        },
    )?;

    // --- debugging and traps -----------------------------------------------
    l.func_wrap("ic0", "debug_print", |mut c: Ctx<'_>, src: I, size: I| {
        charge(&mut c, overhead::DEBUG_PRINT.saturating_add(size.to_u64()))?;
        let bytes = read_heap(&mut c, "debug_print", src, size)?;
        let text = String::from_utf8_lossy(&bytes).into_owned();
        if c.data().print_debug {
            eprintln!("[canister {}] {text}", c.data().canister_id);
        }
        c.data_mut().msg.logs.push(text);
        Ok(())
    })?;
    l.func_wrap(
        "ic0",
        "trap",
        |mut c: Ctx<'_>, src: I, size: I| -> wasmtime::Result<()> {
            charge(&mut c, overhead::DEFAULT.saturating_add(size.to_u64()))?;
            let bytes = read_heap(&mut c, "trap", src, size)?;
            let text = String::from_utf8_lossy(&bytes).into_owned();
            fail(&mut c, ExecError::CalledTrap(text))
        },
    )?;

    Ok(())
}

/// The functions of [`WASM32_ONLY`]: 32-bit stable memory.
fn register_wasm32_only(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
    const MAX_32_BIT_PAGES: u64 = 65536;
    l.func_wrap("ic0", "stable_size", |mut c: Ctx<'_>| -> wasmtime::Result<u32> {
        charge(&mut c, overhead::STABLE_SIZE)?;
        let size = c.data().stable.size();
        if size > MAX_32_BIT_PAGES {
            return fail(
                &mut c,
                ExecError::Trapped("32 bit stable memory api used on a memory larger than 4GB".into()),
            );
        }
        Ok(size as u32)
    })?;
    l.func_wrap(
        "ic0",
        "stable_grow",
        |mut c: Ctx<'_>, pages: u32| -> wasmtime::Result<i32> {
            charge(&mut c, overhead::DEFAULT)?;
            let size = c.data().stable.size();
            if size + pages as u64 > MAX_32_BIT_PAGES.min(MAX_PAGES) {
                return Ok(-1);
            }
            Ok(c.data_mut().stable.grow(pages as u64) as i32)
        },
    )?;
    l.func_wrap(
        "ic0",
        "stable_write",
        |mut c: Ctx<'_>, offset: u32, src: u32, size: u32| {
            stable_write(&mut c, "stable_write", offset as u64, src as u64, size as u64)
        },
    )?;
    l.func_wrap(
        "ic0",
        "stable_read",
        |mut c: Ctx<'_>, dst: u32, offset: u32, size: u32| {
            stable_read(&mut c, "stable_read", dst as u64, offset as u64, size as u64)
        },
    )?;

    Ok(())
}

/// Names of `ic0` imports of a module this runtime does not provide, plus
/// imports from modules other than `ic0`, as `module.name` (the wasm32-only
/// functions count as provided: see [`wasm32_only_imports`]).
pub fn unsupported_imports(imports: &[(String, String)]) -> Vec<String> {
    imports
        .iter()
        .filter(|(m, n)| m != "ic0" || !(PROVIDED.contains(&n.as_str()) || WASM32_ONLY.contains(&n.as_str())))
        .map(|(m, n)| format!("{m}.{n}"))
        .collect()
}

/// The imports of a module of `mode` that only wasm32 canisters may have
/// ([`WASM32_ONLY`]), as `ic0.name`: none for wasm32.
pub fn wasm32_only_imports(imports: &[(String, String)], mode: WasmExecutionMode) -> Vec<String> {
    if mode == WasmExecutionMode::Wasm32 {
        return Vec::new();
    }
    imports
        .iter()
        .filter(|(m, n)| m == "ic0" && WASM32_ONLY.contains(&n.as_str()))
        .map(|(m, n)| format!("{m}.{n}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_provided_name_is_defined() {
        let engine = Engine::default();
        let mut store = wasmtime::Store::new(
            &engine,
            HostState {
                canister_id: Principal::anonymous(),
                controllers: vec![],
                stable: StableMemory::default(),
                memory: None,
                counter: None,
                cycles: 0,
                freezing_threshold_seconds: 0,
                freezing_reserve: 0,
                canister_version: 0,
                global_timer: 0,
                print_debug: false,
                charges: MemoryCharges::Dmt,
                max_slice: charges::MAX_SLICE_INSTRUCTIONS,
                hooks: None,
                msg: MessageContext::new(MessageKind::Update, "", vec![], Principal::anonymous()),
            },
        );
        for mode in [WasmExecutionMode::Wasm32, WasmExecutionMode::Wasm64] {
            let linker = linker(&engine, mode).unwrap();
            for name in PROVIDED {
                assert!(linker.get(&mut store, "ic0", name).is_ok(), "{name} missing ({mode:?})");
            }
            for name in WASM32_ONLY {
                assert_eq!(
                    linker.get(&mut store, "ic0", name).is_ok(),
                    mode == WasmExecutionMode::Wasm32,
                    "{name} ({mode:?})"
                );
            }
        }
        assert_eq!(
            unsupported_imports(&[
                ("ic0".into(), "msg_reply".into()),
                ("ic0".into(), "mint_cycles".into()),
                ("env".into(), "foo".into())
            ]),
            vec!["ic0.mint_cycles".to_string(), "env.foo".to_string()]
        );
        let stable_read = [("ic0".to_string(), "stable_read".to_string())];
        assert!(unsupported_imports(&stable_read).is_empty());
        assert!(wasm32_only_imports(&stable_read, WasmExecutionMode::Wasm32).is_empty());
        assert_eq!(
            wasm32_only_imports(&stable_read, WasmExecutionMode::Wasm64),
            vec!["ic0.stable_read".to_string()]
        );
    }
}

//! # local-ic: a local Internet Computer runtime
//!
//! Executes the **real canister wasm** with wasmtime and the `ic0` system API,
//! faithfully enough that what passes here passes on the IC:
//!
//! * **Instruction counting with the replica's weights**: the module is
//!   rewritten ([`instrument`]) to charge each basic block's weight
//!   ([`weights`]) against a counter, like the replica's instrumentation;
//!   bulk memory ops and system API calls charge per byte; stable writes
//!   charge per newly dirtied page. `ic0.performance_counter(0)` returns this
//!   count. wasmtime fuel is not used.
//! * **Memory charges** ([`charges`], [`RuntimeConfig::memory_charges`]): by
//!   default the deterministic memory tracker's, as on mainnet since
//!   mid-2026: the first access to a 64 KiB heap or stable page in a message
//!   costs 16 × 5,000 instructions, the first write as much again, in-band
//!   (against the limits, seen by `performance_counter`); tracked exactly
//!   by added wasm code ([`tracker`]). [`MemoryCharges::Legacy`] applies the
//!   older 1,000 per dirty 4 KiB page after the message instead.
//! * **Deterministic time slicing**: update-like and install messages run in
//!   slices of 2 B ([`RuntimeConfig::max_slice_instructions`]) with the
//!   replica's carry-over rule; an operation that overshoots a slice by a
//!   whole slice fails with `SliceOverrun` (IC0522). Reports give the
//!   slices and page charges of every message.
//! * **Per-message limits** ([`Limits`]): 40 B update/timer, 5 B query,
//!   300 B install/upgrade, 200 M inspect_message; exceeding one traps with
//!   the replica's wording.
//! * **Rollback**: a trap restores heap, mutable globals and stable memory,
//!   including their sizes (the heap's size the canister sees is a global
//!   of the instrumented module, see [`instrument`]); query changes are
//!   always discarded. The heap is a copy-on-write
//!   mapping of a memfd ([`cow_memory`]), so commit and rollback cost
//!   follows the pages a message wrote, not the heap size. Where that is
//!   unavailable, kernel soft-dirty bits or, last, full copies
//!   ([`memory_snapshot`]) take over.
//! * **Messages as on the IC**: inter-canister calls (self-calls, which
//!   ic-cdk-timers uses, and the management canister's `raw_rand`) are
//!   queued and run after the current message; callbacks run as their own
//!   messages through the module's function table; the global timer fires
//!   as `canister_global_timer` when the controllable clock passes it.
//! * **Concurrent calls**: [`Runtime::submit_update`] starts a call and
//!   leaves what it triggers queued; [`Runtime::await_update`] runs the
//!   queue until that call is answered, so calls submitted together
//!   interleave at their awaits as on the IC.
//! * **Calls from canisters** ([`Runtime::update_from_canister`]): a call
//!   made as canister `caller`, without `canister_inspect_message`.
//! * **Cycles** ([`cycles`]): every update-type message pays the replica's
//!   fees from the canister's balance (5 M + 1 per instruction; ingress
//!   1.2 M + 2,000 per byte on induction); a canister whose balance above
//!   its freezing reserve (the storage fee of its memory for 30 days)
//!   cannot prepay a message at the limit is out of cycles (calls refused
//!   with the replica's wording, timers held) until topped up
//!   ([`Runtime::set_cycle_balance`]); `canister_liquid_cycle_balance128`
//!   reports that balance. Calls carry cycles: the callee accepts what it
//!   wants (undone if it traps), the rest is refunded with the response.
//! * **Canister status** ([`Runtime::stop_canister`],
//!   [`Runtime::start_canister`]): a stopping or stopped canister refuses
//!   new calls with the replica's wording and fires no timers; it is
//!   stopped once its open call contexts end.
//! * **Bounded-wait calls** give up at their deadline with `SYS_UNKNOWN`
//!   (cycles refunded only if the request was never delivered; a late
//!   answer is dropped). [`Runtime::hold_messages_to`] delays every
//!   message to a canister, as a congested subnet would.
//! * **Reports** per message ([`MessageReport`]) and totals per method
//!   ([`Runtime::stats`]).
//! * **Wasm64 canisters** ([`WasmExecutionMode`]): a module whose memory is
//!   a memory64 one runs as on the replica: loads and stores weigh 2, the
//!   heap may grow to 6 GiB ([`MAX_WASM64_MEMORY_IN_BYTES`]; `memory.grow`
//!   beyond returns -1), the `ic0` functions take i64 addresses and sizes
//!   (without the 32-bit stable API), callbacks get an i64 env, and an
//!   instruction costs 2 cycles instead of 1 ([`cycles`]);
//!   [`Runtime::execution_mode`] tells a canister's mode.
//! * **Per-function profiles** (opt-in, [`RuntimeConfig::profile`]): every
//!   basic block's charge also lands in a counter of the function it belongs
//!   to ([`profile`], [`Runtime::profile`]); counts are unchanged.
//!
//! ```no_run
//! use local_ic::{Runtime, RuntimeConfig};
//! use candid::{Encode, Decode, Principal};
//! let wasm = std::fs::read("counter.wasm").unwrap();
//! let mut rt = Runtime::new(RuntimeConfig::default());
//! let id = rt.install(&wasm, Encode!(&0u64).unwrap(), vec![Principal::anonymous()]).unwrap();
//! let reply = rt.update(id, Principal::anonymous(), "increment", Encode!().unwrap()).unwrap();
//! println!("{} after {} instructions", Decode!(&reply.bytes, u64).unwrap(), reply.report.instructions);
//! ```
//!
//! ## Tests and test canisters
//! `tools/local-ic/tests/` drives small ic-cdk canisters from
//! `integration-tests/canisters/{counter,metering,timers}` (crates
//! `test-canister-<name>`). The tests find their wasm at
//! `${CARGO_TARGET_DIR:-<workspace>/target}/wasm32-unknown-unknown/canister/<name>.wasm`
//! and run `cargo build --profile canister --target wasm32-unknown-unknown
//! -p test-canister-<name>` once per test process to keep it current
//! (`tools/build-test-canisters.sh` builds all of them up front). Compiled
//! modules are cached under `<target>/local-ic-module-cache`
//! ([`RuntimeConfig::module_cache_dir`]). With `--features pocket-ic` and
//! `POCKET_IC_BIN` set, [`backend::backends`] adds PocketIC to the scenarios
//! written against [`backend::Backend`].
//!
//! ## Known deviations from the replica
//! * A trapped message that grew the heap with `memory.grow` is rolled back
//!   to the old size as the canister sees it (`memory.size`, and so
//!   `health`-style reports), but the wasmtime memory keeps the extra pages
//!   mapped (zeroed) and reuses them for the next growth: an access just
//!   past the logical size that the replica would trap on succeeds here, as
//!   do system-API copies into those pages.
//! * Table mutations (`table.set/grow`) are not rolled back.
//! * Slices are counted, not interleaved with other messages (a sliced
//!   message still runs to its end before the next); cycles as [`cycles`]
//!   lists (no install or idle storage charges, nor the response's
//!   per-byte transmission fee), no per-message stable-memory access limits, no
//!   heartbeats,
//!   no certificates (`data_certificate_present` is 0), no argument/reply
//!   size limits (2 MiB / 3 MiB), no module size/global count checks beyond
//!   validation.
//! * Wasm64 under the deterministic memory tracker pays the same per-page
//!   charges as wasm32 (whether the replica keeps a wasm64 factor there
//!   could not be verified; the legacy charges' × 4 is applied).
//! * The after-message charges for dirty pages (legacy: 1,000 per 4 KiB
//!   heap page, [`HEAP_DIRTY_PAGE_OVERHEAD`]; dmt: the 3,000 copy overhead
//!   per dirty OS page) are reported apart
//!   ([`MessageReport::heap_dirty_page_instructions`]); `instructions` is
//!   what `performance_counter(0)` sees, in-band page charges included.
//!   The replica's tracker on hosts with 16 KiB OS pages (arm64 macOS)
//!   charges per 16 KiB page; this runtime always uses the x86-64 Linux
//!   replica's 4 KiB.
//! * Error texts follow the replica's current `HypervisorError` wording
//!   (`Error from Canister <id>: Canister called ic0.trap with message:
//!   '...'`) without the trailing help/doc-link sentences.
//! * Unlisted SIMD/float ops weigh 1 (ic-facts.md's table), which may
//!   differ from the replica for rare ops (e.g. `f64x2.div`).

pub mod backend;
pub mod canister;
pub mod charges;
pub mod cow_memory;
pub mod cycles;
pub mod instrument;
pub mod memory_snapshot;
pub mod network;
pub mod profile;
pub mod runtime;
pub mod stable;
pub mod system_api;
pub mod tracker;
pub mod types;
pub mod weights;

pub use candid::Principal;
pub use charges::MemoryCharges;
pub use cycles::DEFAULT_FREEZING_THRESHOLD_SECONDS;
pub use profile::{FunctionProfile, Profile};
pub use runtime::{canister_id, CanisterId, PendingCall, Runtime};
pub use types::{
    CanisterStatus, Error, ExecError, Limits, MessageKind, MessageReport, MethodStats, RejectCode, Reply,
    RuntimeConfig, Stats, WasmExecutionMode, HEAP_DIRTY_PAGE_OVERHEAD, MAX_WASM64_MEMORY_IN_BYTES,
};

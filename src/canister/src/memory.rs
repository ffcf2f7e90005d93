//! Stable memory: the one place that owns the `MemoryManager` and its ids.
//!
//! ```text
//! stable memory (ic-stable-structures MemoryManager, 8 MiB buckets)
//! ┌──────────────┬──────────────────────────────────────────────────────────┐
//! │ MemoryId 0   │ SETTINGS: StableCell<Cbor<Settings>>                     │
//! │              │   access policy, quotas, message budget, which model     │
//! │              │   slot is active, upload progress (ranges received)      │
//! │ MemoryId 1   │ MODEL_SLOT_0: raw bytes of a model file (GGUF)           │
//! │ MemoryId 2   │ MODEL_SLOT_1: the other slot; an upload writes into the  │
//! │              │   inactive slot so the active model stays usable until   │
//! │              │   the new one verifies and loads                         │
//! │ MemoryId 3   │ JOBS: StableBTreeMap<JobId, Cbor<JobRecord>>             │
//! │              │   owner, request, status, engine state (cursor, tokens,  │
//! │              │   RNG, pending activations), text, counters              │
//! │ MemoryId 4   │ KV: raw region, KV slot s at s * slot_bytes;             │
//! │              │   a slot holds, per layer, a K then a V region of ctx    │
//! │              │   f32-sized rows; a job writes its positions there as    │
//! │              │   KvCache::encode_rows (f32, or shorter q8 rows packed); │
//! │              │   a finished job's rows stay until a new job takes the   │
//! │              │   slot (settings.kv_kept; continue_from adopts them)     │
//! │ MemoryId 5   │ JOBS_BY_OWNER: StableBTreeMap<(owner, JobId),            │
//! │              │   Cbor<JobSummary>>: a caller's jobs without a scan      │
//! │ MemoryId 6   │ JOBS_FINISHED: StableBTreeMap<(finished_at, JobId),      │
//! │              │   owner>: finished records, oldest first (TTL, cap)      │
//! │ MemoryId 7   │ JOB_OWNERS: StableBTreeMap<owner, (unfinished,           │
//! │              │   finished)>: per-caller counts for the quotas           │
//! └──────────────┴──────────────────────────────────────────────────────────┘
//! ```
//! Nothing durable lives only in the heap, so there is no `pre_upgrade`:
//! every step checkpoints what it changed before its message ends.
//! Retired ids: none yet (never reuse an id for another structure).
//! The layout's version is recorded in the settings record
//! (`settings::STABLE_LAYOUT_VERSION`): raise it with any change an older
//! wasm would misread; `post_upgrade` refuses a layout newer than its own.

use ic_stable_structures::memory_manager::{MemoryId, MemoryManager, VirtualMemory};
use std::cell::RefCell;

pub type Memory = VirtualMemory<StableMemory>;

/// The canister's stable memory. ic-stable-structures' `DefaultMemoryImpl`
/// is the real one only on wasm32 (elsewhere a heap vector, for native
/// tests): the wasm64 build would otherwise keep everything "stable" in the
/// heap and lose it at the first upgrade.
#[cfg(not(target_arch = "wasm64"))]
pub type StableMemory = ic_stable_structures::DefaultMemoryImpl;
#[cfg(target_arch = "wasm64")]
pub use wasm64_stable::StableMemory;

#[cfg(target_arch = "wasm64")]
mod wasm64_stable {
    /// Stable memory through the same `ic0.stable64_*` calls as
    /// ic-stable-structures' wasm32 `Ic0StableMemory`.
    #[derive(Clone, Copy, Default)]
    pub struct StableMemory;

    impl ic_stable_structures::Memory for StableMemory {
        fn size(&self) -> u64 {
            ic0::stable64_size()
        }

        fn grow(&self, pages: u64) -> i64 {
            ic0::stable64_grow(pages) as i64
        }

        fn read(&self, offset: u64, dst: &mut [u8]) {
            ic0::stable64_read(dst, offset)
        }

        /// Without zeroing `dst` first (the trait's default would).
        unsafe fn read_unsafe(&self, offset: u64, dst: *mut u8, count: usize) {
            // SAFETY: the caller gives `count` writable bytes at `dst`.
            let dst = unsafe { std::slice::from_raw_parts_mut(dst as *mut std::mem::MaybeUninit<u8>, count) };
            ic0::stable64_read_uninit(dst, offset)
        }

        fn write(&self, offset: u64, src: &[u8]) {
            ic0::stable64_write(src, offset)
        }
    }
}

pub const SETTINGS: MemoryId = MemoryId::new(0);
pub const MODEL_SLOT_0: MemoryId = MemoryId::new(1);
pub const MODEL_SLOT_1: MemoryId = MemoryId::new(2);
pub const JOBS: MemoryId = MemoryId::new(3);
pub const KV: MemoryId = MemoryId::new(4);
pub const JOBS_BY_OWNER: MemoryId = MemoryId::new(5);
pub const JOBS_FINISHED: MemoryId = MemoryId::new(6);
pub const JOB_OWNERS: MemoryId = MemoryId::new(7);

/// Heap the model's weights and the cached jobs' KV caches may take together:
/// the heap's limit less room for everything else (the stack, the tensor
/// the load pipeline stages, activations, records, the allocator's slack).
pub const HEAP_BUDGET: u64 = HEAP_LIMIT - (512 << 20);

/// The most heap the canister can have: wasm32's 4 GiB address space, or
/// the replica's wasm64 limit (`MAX_WASM64_MEMORY_IN_BYTES`, 6 GiB since
/// dfinity/ic #3748).
pub const HEAP_LIMIT: u64 = if cfg!(target_arch = "wasm64") { 6 << 30 } else { 4 << 30 };

/// Size of one stable-memory page as `Memory::size` counts it.
pub const WASM_PAGE: u64 = 65536;

thread_local! {
    // `StableMemory` is a unit struct on wasm64 only (elsewhere it is
    // ic-stable-structures' `DefaultMemoryImpl`): one expression for both.
    #[allow(clippy::default_constructed_unit_structs)]
    static MANAGER: RefCell<MemoryManager<StableMemory>> =
        RefCell::new(MemoryManager::init(StableMemory::default()));
}

pub fn get(id: MemoryId) -> Memory {
    MANAGER.with(|m| m.borrow().get(id))
}

pub fn model_slot(slot: u8) -> Memory {
    get(if slot == 0 { MODEL_SLOT_0 } else { MODEL_SLOT_1 })
}

/// Grows `mem` so that `[0, end)` is addressable. Returns false if stable
/// memory is exhausted.
pub fn ensure_size(mem: &Memory, end: u64) -> bool {
    use ic_stable_structures::Memory as _;
    let have = mem.size() * WASM_PAGE;
    if end <= have {
        return true;
    }
    let pages = (end - have).div_ceil(WASM_PAGE);
    mem.grow(pages) >= 0
}

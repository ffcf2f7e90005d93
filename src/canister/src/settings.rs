//! Durable settings and bookkeeping, one CBOR record in `memory::SETTINGS`.

use crate::memory::{self, Memory};
use ic_stable_structures::storable::Bound;
use ic_stable_structures::{StableCell, Storable};
use icllm_api::{AccessMode, AccessPolicy, JobId, Limits, UploadState};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::borrow::Cow;
use std::cell::RefCell;

/// The IC's per-message instruction limit for updates and timers.
pub const IC_MESSAGE_INSTRUCTION_LIMIT: u64 = 40_000_000_000;

/// Any serde value stored as CBOR in a stable structure.
#[derive(Clone, Debug, Default)]
pub struct Cbor<T>(pub T);

impl<T: Serialize + DeserializeOwned> Storable for Cbor<T> {
    fn to_bytes(&self) -> Cow<'_, [u8]> {
        let mut out = Vec::new();
        ciborium::into_writer(&self.0, &mut out).expect("CBOR encoding to a Vec cannot fail");
        Cow::Owned(out)
    }

    fn into_bytes(self) -> Vec<u8> {
        self.to_bytes().into_owned()
    }

    fn from_bytes(bytes: Cow<[u8]>) -> Self {
        // Only this canister writes these records; a decode failure is a bug
        // worth trapping on (the message rolls back, nothing is lost).
        Cbor(ciborium::from_reader(bytes.as_ref()).expect("corrupt CBOR record in stable memory"))
    }

    const BOUND: Bound = Bound::Unbounded;
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Settings {
    pub policy: AccessPolicy,
    pub limits: Limits,
    pub message_instruction_limit: u64,
    /// The model jobs run on, if any.
    pub active_model: Option<ModelSlot>,
    /// An upload under way (or failed) into the other slot.
    pub upload: Option<UploadRecord>,
    pub next_job_id: JobId,
    /// KV slot `s` belongs to job `kv_slots[s]` (None = free).
    pub kv_slots: Vec<Option<JobId>>,
    /// Bytes per KV slot, fixed when the active model is chosen.
    pub kv_slot_bytes: u64,
    /// Positions per KV slot (the largest `ctx_size` a job may ask for).
    pub kv_slot_ctx: u32,
    /// Bytes of one KV row (`kv_dim` f32).
    pub kv_row_bytes: u64,
    /// Largest context a job may ask for (default: the model's trained context).
    pub max_context: Option<u32>,
    /// Heap for weights and KV caches (default [`crate::memory::HEAP_BUDGET`]).
    #[serde(default)]
    pub heap_budget: Option<u64>,
}

impl Settings {
    /// Heap bytes the weights and the cached jobs' KV caches may take together.
    pub fn heap_budget(&self) -> u64 {
        self.heap_budget.unwrap_or(crate::memory::HEAP_BUDGET)
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            policy: AccessPolicy {
                mode: AccessMode::Open,
                allow_anonymous: false,
            },
            limits: Limits::default(),
            message_instruction_limit: IC_MESSAGE_INSTRUCTION_LIMIT,
            active_model: None,
            upload: None,
            next_job_id: 1,
            kv_slots: Vec::new(),
            kv_slot_bytes: 0,
            kv_slot_ctx: 0,
            kv_row_bytes: 0,
            max_context: None,
            heap_budget: None,
        }
    }
}

/// A model file held in one of the two blob slots.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ModelSlot {
    pub slot: u8,
    pub size: u64,
    pub sha256: Vec<u8>,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct UploadRecord {
    pub target: ModelSlot,
    /// Received byte ranges `[start, end)`, sorted and merged.
    pub received: Vec<(u64, u64)>,
    pub state: UploadState,
}

thread_local! {
    static CELL: RefCell<StableCell<Cbor<Settings>, Memory>> =
        RefCell::new(StableCell::init(memory::get(memory::SETTINGS), Cbor(Settings::default())));
}

/// A copy of the settings.
pub fn read<R>(f: impl FnOnce(&Settings) -> R) -> R {
    CELL.with(|c| f(&c.borrow().get().0))
}

/// Changes the settings and writes them back to stable memory.
pub fn mutate<R>(f: impl FnOnce(&mut Settings) -> R) -> R {
    CELL.with(|c| {
        let mut cell = c.borrow_mut();
        let mut s = cell.get().0.clone();
        let r = f(&mut s);
        cell.set(Cbor(s));
        r
    })
}

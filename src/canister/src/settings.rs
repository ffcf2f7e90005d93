//! Durable settings and bookkeeping, one CBOR record in `memory::SETTINGS`.

use crate::memory::{self, Memory};
use ic_stable_structures::storable::Bound;
use ic_stable_structures::{StableCell, Storable};
use icllm_api::{AccessMode, AccessPolicy, ApiError, ApiResult, JobId, Limits, UploadState};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::borrow::Cow;
use std::cell::RefCell;

/// The IC's per-message instruction limit for updates and timers.
pub const IC_MESSAGE_INSTRUCTION_LIMIT: u64 = 40_000_000_000;
/// Fewest instructions a message may be given: stories260K, the smallest
/// model shipped, needs about this much to load and step.
pub const MIN_MESSAGE_INSTRUCTION_LIMIT: u64 = 5_000_000;
/// Fewest bytes `max_kv_bytes` may be: under it no model's KV slot fits.
pub const MIN_MAX_KV_BYTES: u64 = 1 << 20;
/// Shortest time-to-live of finished records (callers need time to read them).
pub const MIN_FINISHED_JOB_TTL_SECONDS: u64 = 60;

fn invalid(msg: String) -> ApiError {
    ApiError::InvalidArgument(msg)
}

/// A message limit above the IC's would make every step trap at the
/// subnet's limit; one below the floor could do no useful work.
pub fn validate_message_limit(limit: u64) -> ApiResult<()> {
    if !(MIN_MESSAGE_INSTRUCTION_LIMIT..=IC_MESSAGE_INSTRUCTION_LIMIT).contains(&limit) {
        return Err(invalid(format!(
            "the message instruction limit must be between {MIN_MESSAGE_INSTRUCTION_LIMIT} and \
             {IC_MESSAGE_INSTRUCTION_LIMIT} (the IC's limit for an update message), got {limit}"
        )));
    }
    Ok(())
}

/// Limits that leave the canister able to run jobs.
pub fn validate_limits(l: &Limits) -> ApiResult<()> {
    let at_least_one = [
        ("max_active_jobs_per_caller", l.max_active_jobs_per_caller as u64),
        ("max_active_jobs", l.max_active_jobs as u64),
        ("max_new_tokens", l.max_new_tokens as u64),
        ("max_finished_jobs_per_caller", l.max_finished_jobs_per_caller as u64),
        ("max_stored_jobs", l.max_stored_jobs()),
    ];
    if let Some((name, _)) = at_least_one.iter().find(|(_, v)| *v == 0) {
        return Err(invalid(format!("{name} must be at least 1")));
    }
    if l.max_kv_bytes < MIN_MAX_KV_BYTES {
        return Err(invalid(format!(
            "max_kv_bytes must be at least {MIN_MAX_KV_BYTES} (one KV slot), got {}",
            l.max_kv_bytes
        )));
    }
    if l.finished_job_ttl_seconds() < MIN_FINISHED_JOB_TTL_SECONDS {
        return Err(invalid(format!(
            "finished_job_ttl_seconds must be at least {MIN_FINISHED_JOB_TTL_SECONDS}, got {}",
            l.finished_job_ttl_seconds()
        )));
    }
    Ok(())
}

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

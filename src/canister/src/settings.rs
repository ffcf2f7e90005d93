//! Durable settings and bookkeeping, one CBOR record in `memory::SETTINGS`.

use crate::memory::{self, Memory};
use ic_stable_structures::storable::Bound;
use ic_stable_structures::{StableCell, Storable};
use icllm_api::{
    AccessMode, AccessPolicy, ApiError, ApiResult, JobId, Limits, Role, UploadState, IC_UPDATE_INSTRUCTION_LIMIT,
};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::BTreeMap;

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
    if !(MIN_MESSAGE_INSTRUCTION_LIMIT..=IC_UPDATE_INSTRUCTION_LIMIT).contains(&limit) {
        return Err(invalid(format!(
            "the message instruction limit must be between {MIN_MESSAGE_INSTRUCTION_LIMIT} and \
             {IC_UPDATE_INSTRUCTION_LIMIT} (the IC's limit for an update message), got {limit}"
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
    /// Slots whose KV rows a finished job left for a continuation to adopt
    /// (slot → whose rows). Free in `kv_slots`; a new job takes an empty
    /// slot first, then a new one under the cap, then the oldest kept one.
    #[serde(default)]
    pub kv_kept: BTreeMap<u32, KeptKv>,
    /// Bytes per KV slot, fixed when the active model is chosen.
    pub kv_slot_bytes: u64,
    /// Positions per KV slot (the largest `ctx_size` a job may ask for).
    pub kv_slot_ctx: u32,
    /// Bytes of one KV row (`kv_dim` f32).
    pub kv_row_bytes: u64,
    /// Rows of each layer's K (and V) region in a slot, fixed with the
    /// slot size: fewer than `kv_slot_ctx` for a sliding-window layer, which
    /// keeps position `p` at row `p % rows`. Empty: `kv_slot_ctx` for every
    /// layer (slots sized before sliding layers kept only their window).
    #[serde(default)]
    pub kv_layer_rows: Vec<u32>,
    /// Largest context a job may ask for (default: the model's trained context).
    pub max_context: Option<u32>,
    /// Heap for weights and KV caches (default [`crate::memory::HEAP_BUDGET`]).
    #[serde(default)]
    pub heap_budget: Option<u64>,
    /// The stable layout these records were last written in
    /// ([`STABLE_LAYOUT_VERSION`]; 0 = before the version was recorded).
    /// Every release keeps it a top-level integer of this record, so any
    /// wasm can read it ([`stored_layout_version`]).
    #[serde(default)]
    pub layout_version: u32,
    /// This canister's part in a sharded model (see [`icllm_api::Role`]).
    #[serde(default)]
    pub role: Role,
    /// On a shard: the coordinator's jobs whose KV rows it keeps, by job.
    #[serde(default)]
    pub shard_jobs: BTreeMap<JobId, ShardJob>,
    /// On a coordinator: the active model's parts still have to reach (or
    /// be checked on) the shards (see `sharding::coordinator::fan_out`).
    #[serde(default)]
    pub fan_out_pending: bool,
}

/// A coordinator's job on a shard: the geometry of its cache and how far
/// its rows go; the rows are in KV slot `slot` (see `jobs::kv_slots`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub struct ShardJob {
    pub ctx_size: u32,
    pub kv_type: icllm_engine::job::KvType,
    /// Positions `0..holds` are in the slot, for every layer of the shard.
    pub holds: u32,
    pub slot: u32,
}

/// Version of the stable-memory layout this wasm reads and writes (see
/// `memory`): 1 = memory ids 0-4; 2 = ids 0-7 (the job indexes). Releases
/// before the version was recorded wrote layout 1 or 2, both of which
/// `post_upgrade` migrates. Raise it with every change that an older wasm
/// would misread, so that a downgrade is refused instead of corrupting state.
pub const STABLE_LAYOUT_VERSION: u32 = 2;

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
            message_instruction_limit: IC_UPDATE_INSTRUCTION_LIMIT,
            active_model: None,
            upload: None,
            next_job_id: 1,
            kv_slots: Vec::new(),
            kv_kept: BTreeMap::new(),
            kv_slot_bytes: 0,
            kv_slot_ctx: 0,
            kv_row_bytes: 0,
            kv_layer_rows: Vec::new(),
            max_context: None,
            heap_budget: None,
            layout_version: STABLE_LAYOUT_VERSION,
            role: Role::Whole,
            shard_jobs: BTreeMap::new(),
            fan_out_pending: false,
        }
    }
}

/// The layout version recorded in a settings cell's raw bytes (the
/// `StableCell` header, then the CBOR record), read leniently: a newer
/// release's record, which this wasm might not decode, still yields its
/// version. `None`: no settings written yet.
pub fn layout_version_in_cell(cell: &[u8]) -> Option<u32> {
    #[derive(Deserialize)]
    struct Probe {
        #[serde(default)]
        layout_version: u32,
    }
    const HEADER: usize = 8; // b"SCL", cell layout version, u32 LE value length
    if cell.len() < HEADER || &cell[..3] != b"SCL" {
        return None;
    }
    let len = u32::from_le_bytes(cell[4..8].try_into().expect("4 bytes")) as usize;
    let value = cell.get(HEADER..HEADER.checked_add(len)?)?;
    // A record with no version field (or one this probe cannot read) is
    // older than the field.
    Some(ciborium::from_reader::<Probe, _>(value).map_or(0, |p| p.layout_version))
}

/// The layout version in stable memory, read before the settings cell is
/// opened (opening decodes the whole record).
pub fn stored_layout_version() -> Option<u32> {
    use ic_stable_structures::Memory as _;
    let mem = memory::get(memory::SETTINGS);
    let size = mem.size() * memory::WASM_PAGE;
    if size < 8 {
        return None;
    }
    let mut header = [0u8; 8];
    mem.read(0, &mut header);
    let len = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes")) as u64;
    let total = (8 + len).min(size);
    let mut cell = vec![0u8; total as usize];
    mem.read(0, &mut cell);
    layout_version_in_cell(&cell)
}

/// Refuses (traps, so the IC keeps the installed wasm) to run on a stable
/// layout newer than this wasm knows, then records this wasm's layout.
pub fn claim_stable_layout() {
    if let Some(found) = stored_layout_version().filter(|&v| v > STABLE_LAYOUT_VERSION) {
        ic_cdk::trap(format!(
            "stable memory has layout version {found}, written by a newer icllm release; this wasm \
             knows layouts up to {STABLE_LAYOUT_VERSION}. Upgrade to that release or a newer one: \
             a downgrade would misread the stored jobs and model"
        ));
    }
    mutate(|s| s.layout_version = STABLE_LAYOUT_VERSION);
}

/// The KV rows a finished (`Done` or `Cancelled`) job left in a slot.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct KeptKv {
    pub job: JobId,
    pub owner: candid::Principal,
    /// When the job finished (ns): the oldest kept slot is taken first.
    pub since: u64,
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
    /// A shard's partial upload: the only ranges expected (sorted, merged);
    /// `None`: the whole file.
    #[serde(default)]
    pub parts: Option<Vec<(u64, u64)>>,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(value: &impl Serialize) -> Vec<u8> {
        let mut bytes = Vec::new();
        ciborium::into_writer(value, &mut bytes).unwrap();
        let mut cell = b"SCL\x01".to_vec();
        cell.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        cell.extend_from_slice(&bytes);
        cell
    }

    #[test]
    fn settings_written_before_kept_kv_slots_decode() {
        #[derive(Serialize)]
        struct Older {
            policy: AccessPolicy,
            limits: Limits,
            message_instruction_limit: u64,
            active_model: Option<ModelSlot>,
            upload: Option<UploadRecord>,
            next_job_id: JobId,
            kv_slots: Vec<Option<JobId>>,
            kv_slot_bytes: u64,
            kv_slot_ctx: u32,
            kv_row_bytes: u64,
            max_context: Option<u32>,
        }
        let d = Settings::default();
        let older = Older {
            policy: d.policy,
            limits: d.limits,
            message_instruction_limit: d.message_instruction_limit,
            active_model: None,
            upload: None,
            next_job_id: 9,
            kv_slots: vec![Some(3), None],
            kv_slot_bytes: 1 << 20,
            kv_slot_ctx: 512,
            kv_row_bytes: 256,
            max_context: None,
        };
        let mut bytes = Vec::new();
        ciborium::into_writer(&older, &mut bytes).unwrap();
        let s: Settings = ciborium::from_reader(bytes.as_slice()).unwrap();
        assert_eq!(s.next_job_id, 9);
        assert_eq!(s.kv_slots, vec![Some(3), None]);
        assert!(s.kv_kept.is_empty());
    }

    #[test]
    fn the_layout_version_is_read_from_any_release_s_record() {
        assert_eq!(
            layout_version_in_cell(&cell(&Settings::default())),
            Some(STABLE_LAYOUT_VERSION)
        );
        // Before the field existed.
        #[derive(Serialize)]
        struct Older {
            next_job_id: u64,
        }
        assert_eq!(layout_version_in_cell(&cell(&Older { next_job_id: 3 })), Some(0));
        // A newer release: fields this wasm does not know, other types.
        #[derive(Serialize)]
        struct Newer {
            layout_version: u32,
            next_job_id: String,
            shards: Vec<u8>,
        }
        let newer = Newer {
            layout_version: 7,
            next_job_id: "x".into(),
            shards: vec![1, 2],
        };
        assert_eq!(layout_version_in_cell(&cell(&newer)), Some(7));
        // Nothing written yet, or a truncated cell.
        assert_eq!(layout_version_in_cell(&[]), None);
        assert_eq!(layout_version_in_cell(&[0; 64]), None);
        let c = cell(&Settings::default());
        assert_eq!(layout_version_in_cell(&c[..c.len() - 1]), None);
    }
}

//! Job records: the durable [`JobRecord`] of every job (CBOR in
//! `memory::JOBS`) and the indexes `put` keeps in step with it, so that hot
//! paths never scan the table: summaries by owner (`list_jobs`, ownership
//! checks), finished records by finishing time (the time-to-live and the
//! global cap), per-owner counts (the quotas).

use super::{cache, kv_slots};
use crate::completions::OpenAiJob;
use crate::memory::{self, Memory};
use crate::settings::{self, Cbor};
use candid::Principal;
use ic_stable_structures::StableBTreeMap;
use icllm_api::{JobId, JobStatus, JobSummary};
use icllm_engine::job::JobState;
use icllm_engine::tokenizer::StreamDecoder;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct JobRecord {
    pub id: JobId,
    pub owner: Principal,
    pub status: JobStatus,
    /// The engine's resumable state (cursor, tokens, RNG, pending activations).
    pub engine: JobState,
    pub kv_slot: Option<u32>,
    /// KV positions `[0, kv_rows_saved)` are in the slot.
    pub kv_rows_saved: u32,
    /// Text of the generated tokens; `text_ends[i]` is its length after token i.
    pub text: String,
    pub text_ends: Vec<u32>,
    pub decoder: StreamDecoder,
    pub messages: u64,
    pub instructions: u64,
    pub prompt_instructions: u64,
    pub max_message_instructions: u64,
    pub created_at_ns: u64,
    pub updated_at_ns: u64,
    /// What an OpenAI-shaped request added (its kind, model name, stop strings).
    #[serde(default)]
    pub openai: Option<OpenAiJob>,
    /// Generated tokens up to the one that completed a stop string (the
    /// step may have generated more before the text was searched).
    #[serde(default)]
    pub tokens_until_stop: Option<u32>,
    /// Leading prompt tokens whose KV rows came with the slot of the job
    /// this one continues (never prefilled by this job).
    #[serde(default)]
    pub cached_prompt_tokens: u32,
    /// The owner's method to call when the job ends (`JobRequest::notify`).
    #[serde(default)]
    pub notify: Option<String>,
}

thread_local! {
    static JOBS: RefCell<StableBTreeMap<JobId, Cbor<JobRecord>, Memory>> =
        RefCell::new(StableBTreeMap::init(memory::get(memory::JOBS)));
    /// `(owner, id)` → the job's summary: `list_jobs` and ownership checks
    /// read the caller's own range, never the whole table.
    static BY_OWNER: RefCell<StableBTreeMap<(Principal, JobId), Cbor<JobSummary>, Memory>> =
        RefCell::new(StableBTreeMap::init(memory::get(memory::JOBS_BY_OWNER)));
    /// `(finished at, id)` → owner of every finished record, oldest first:
    /// what the time-to-live and the global cap delete.
    static FINISHED: RefCell<StableBTreeMap<(u64, JobId), Principal, Memory>> =
        RefCell::new(StableBTreeMap::init(memory::get(memory::JOBS_FINISHED)));
    /// owner → (unfinished, finished) records it holds.
    static OWNERS: RefCell<StableBTreeMap<Principal, (u32, u32), Memory>> =
        RefCell::new(StableBTreeMap::init(memory::get(memory::JOB_OWNERS)));
}

/// Ids with this bit set are capability ids: drawn at random for anonymous
/// callers' jobs, so that knowing one is what gives access to the job.
pub const CAPABILITY_BIT: JobId = 1 << 63;

pub fn is_capability(id: JobId) -> bool {
    id & CAPABILITY_BIT != 0
}

pub fn get(id: JobId) -> Option<JobRecord> {
    JOBS.with(|j| j.borrow().get(&id)).map(|c| c.0)
}

/// The job's record: the heap copy of a cached (recently stepped) job, else
/// decoded from the job table. Same contents either way: the copy is
/// replaced whenever the record is written, and both roll back together.
pub fn get_hot(id: JobId) -> Option<JobRecord> {
    cache::record(id).or_else(|| get(id))
}

fn summary(r: &JobRecord) -> JobSummary {
    JobSummary {
        id: r.id,
        owner: r.owner,
        status: r.status.clone(),
        prompt_tokens: r.engine.prompt().len() as u32,
        generated_tokens: r.engine.generated().len() as u32,
        created_at_ns: r.created_at_ns,
        updated_at_ns: r.updated_at_ns,
    }
}

fn adjust_owner(owner: Principal, active: i64, finished: i64) {
    OWNERS.with(|o| {
        let mut o = o.borrow_mut();
        let (a, f) = o.get(&owner).unwrap_or((0, 0));
        let a = (a as i64 + active).max(0) as u32;
        let f = (f as i64 + finished).max(0) as u32;
        if a == 0 && f == 0 {
            o.remove(&owner);
        } else {
            o.insert(owner, (a, f));
        }
    });
}

/// Writes the record and keeps the indexes in step with its status.
pub(super) fn put(rec: &JobRecord) {
    let key = (rec.owner, rec.id);
    let was_active = BY_OWNER.with(|b| b.borrow().get(&key)).map(|s| s.0.status.is_active());
    let is_active = rec.status.is_active();
    JOBS.with(|j| j.borrow_mut().insert(rec.id, Cbor(rec.clone())));
    BY_OWNER.with(|b| b.borrow_mut().insert(key, Cbor(summary(rec))));
    match (was_active, is_active) {
        (None, true) => adjust_owner(rec.owner, 1, 0),
        (None, false) => adjust_owner(rec.owner, 0, 1),
        (Some(true), false) => adjust_owner(rec.owner, -1, 1),
        _ => {}
    }
    if was_active != Some(false) && !is_active {
        FINISHED.with(|f| f.borrow_mut().insert((rec.updated_at_ns, rec.id), rec.owner));
        // The owner's oldest finished records make way (their cap holds at
        // all times, not only at the next start_job).
        prune_owner(rec.owner, settings::read(|s| s.limits.max_finished_jobs_per_caller));
    }
}

/// Deletes a record of `owner` from the table and the indexes. Its KV slot
/// (if active) must have been released already.
pub(super) fn remove(owner: Principal, id: JobId) -> bool {
    let Some(s) = BY_OWNER.with(|b| b.borrow_mut().remove(&(owner, id))) else {
        return false;
    };
    JOBS.with(|j| j.borrow_mut().remove(&id));
    kv_slots::forget_kept(id);
    if s.0.status.is_active() {
        adjust_owner(owner, -1, 0);
    } else {
        FINISHED.with(|f| f.borrow_mut().remove(&(s.0.updated_at_ns, id)));
        adjust_owner(owner, 0, -1);
    }
    true
}

pub fn count() -> u64 {
    JOBS.with(|j| j.borrow().len())
}

/// Is `id` a job of `owner`? Reads the index, not the record.
pub fn owned_by(owner: Principal, id: JobId) -> bool {
    BY_OWNER.with(|b| b.borrow().contains_key(&(owner, id)))
}

pub fn exists(id: JobId) -> bool {
    JOBS.with(|j| j.borrow().contains_key(&id))
}

/// The owner of `id` among the candidates that may see it: the caller, or
/// the anonymous principal for a capability id.
pub fn owner_for(caller: Principal, id: JobId) -> Option<Principal> {
    let anon = Principal::anonymous();
    if caller != anon && owned_by(caller, id) {
        return Some(caller);
    }
    (is_capability(id) && owned_by(anon, id)).then_some(anon)
}

/// Unfinished and finished records of `owner`.
pub fn owner_counts(owner: Principal) -> (u32, u32) {
    OWNERS.with(|o| o.borrow().get(&owner)).unwrap_or((0, 0))
}

/// Unfinished jobs of `owner`.
pub fn active_count(owner: Principal) -> u32 {
    owner_counts(owner).0
}

/// Builds the indexes of a job table written before they existed (once,
/// after the upgrade that introduces them).
pub fn rebuild_indexes_if_missing() {
    let missing = BY_OWNER.with(|b| b.borrow().is_empty()) && count() > 0;
    if !missing {
        return;
    }
    let records: Vec<JobRecord> = JOBS.with(|j| j.borrow().iter().map(|e| e.value().0).collect());
    for r in records {
        put(&r);
    }
}

/// Summaries of the jobs of `owner` (all jobs when `owner` is None).
pub fn list(owner: Option<Principal>) -> Vec<JobSummary> {
    BY_OWNER.with(|b| {
        let b = b.borrow();
        match owner {
            Some(o) => b.range((o, 0)..=(o, JobId::MAX)).map(|e| e.value().0).collect(),
            None => b.iter().map(|e| e.value().0).collect(),
        }
    })
}

/// Deletes the oldest finished records of `owner` beyond `keep`. Walks the
/// owner's own records only (in id order, which is creation order).
pub fn prune_owner(owner: Principal, keep: u32) {
    let (_, finished) = owner_counts(owner);
    let excess = finished.saturating_sub(keep) as usize;
    if excess == 0 {
        return;
    }
    let doomed: Vec<JobId> = BY_OWNER.with(|b| {
        b.borrow()
            .range((owner, 0)..=(owner, JobId::MAX))
            .filter(|e| !e.value().0.status.is_active())
            .take(excess)
            .map(|e| e.key().1)
            .collect()
    });
    for id in doomed {
        remove(owner, id);
    }
}

/// Deletes up to `max` finished records, oldest first, that are older than
/// `ttl_ns` or beyond `cap` records in all.
pub fn prune_old(now: u64, ttl_ns: u64, cap: u64, max: usize) {
    for _ in 0..max {
        let Some(((at, id), owner)) = FINISHED.with(|f| f.borrow().first_key_value()) else {
            return;
        };
        let expired = at.saturating_add(ttl_ns) < now;
        if !expired && count() <= cap {
            return;
        }
        remove(owner, id);
    }
}

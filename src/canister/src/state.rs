//! Heap state: the model, the pipeline and what the scheduler works on.
//! Lost on upgrade by design; `post_upgrade` rebuilds it from stable memory
//! (the job cache, also heap only, is `jobs::cache`).

use crate::model_store::{ModelRef, Pipeline};
use icllm_api::JobId;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

#[derive(Default)]
pub struct HeapState {
    /// The model jobs run on, once loaded.
    pub model: Option<ModelRef>,
    /// A model being verified and/or loaded (a new upload, or a reload after an upgrade).
    pub pipeline: Option<Pipeline>,
    /// Why the last pipeline failed (shown by `model_info`/`health` until the next one starts).
    pub pipeline_error: Option<String>,
    /// Ids of unfinished jobs (the scheduler's work list).
    pub active: BTreeSet<JobId>,
    /// The job the scheduler served last (round-robin continues after it).
    pub last_served: JobId,
    /// Jobs being stepped right now (see `JobGuard`).
    pub stepping: BTreeSet<JobId>,
    /// The scheduler's interval timer, while armed.
    pub scheduler: Option<ic_cdk_timers::TimerId>,
    /// Background steps that trapped, by job (see `scheduler::background_step`).
    pub step_traps: BTreeMap<JobId, StepTraps>,
    /// Jobs whose background step call is under way.
    pub step_pending: BTreeSet<JobId>,
    /// Places claimed by `start_job` calls under way, by caller (see `jobs::SlotClaim`).
    pub claims: BTreeMap<candid::Principal, u32>,
    pub claims_total: u32,
    /// Ended jobs whose owner asked to be called (`JobRequest::notify`):
    /// owner, method, job, status; sent by the scheduler's next tick.
    pub notifications: Vec<(candid::Principal, String, icllm_api::JobId, icllm_api::JobStatus)>,
    /// On a shard: the KV caches of the coordinator's jobs stepped lately
    /// (their rows are in their slots too, see `sharding::shard`).
    pub shard_kv: BTreeMap<JobId, icllm_engine::job::KvCache>,
    /// On a coordinator: shard calls that failed in a row, by job (see
    /// `sharding::coordinator`).
    pub shard_failures: BTreeMap<JobId, u32>,
    /// On a coordinator: the most instructions per multiply-add a shard
    /// reported, to size the next batches (0 until a shard answered).
    pub shard_instructions_per_mac: f64,
    /// On a coordinator: ended jobs whose rows the shards may drop, sent
    /// by the scheduler's next tick.
    pub shard_releases: Vec<JobId>,
    /// On a coordinator: the model's parts are being sent to the shards.
    pub fan_out_running: bool,
    /// On a coordinator: the sending of the model's parts to the shards
    /// has been failing since (see `sharding::coordinator::fan_out`).
    pub fan_out_failure: Option<FanOutFailure>,
}

/// How sending the model's parts to the shards has been failing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FanOutFailure {
    /// The last attempt's error.
    pub reason: String,
    /// When the first attempt of this run of failures failed.
    pub since_ns: u64,
    /// Attempts that failed in a row.
    pub attempts: u32,
    /// No attempt before this time.
    pub retry_at_ns: u64,
}

/// How a job's background steps have been trapping.
#[derive(Debug, Clone, Copy, Default)]
pub struct StepTraps {
    /// Steps that trapped since the last one that returned.
    pub in_a_row: u32,
    /// Halvings of the message budget this job's steps use from now on.
    pub shift: u32,
}

thread_local! {
    static STATE: RefCell<HeapState> = RefCell::new(HeapState::default());
}

pub fn read<R>(f: impl FnOnce(&HeapState) -> R) -> R {
    STATE.with(|s| f(&s.borrow()))
}

pub fn mutate<R>(f: impl FnOnce(&mut HeapState) -> R) -> R {
    STATE.with(|s| f(&mut s.borrow_mut()))
}

/// Marks a job as being stepped; released on drop. Keeps a timer step and an
/// explicit `step` from working on the same job at once (a step that awaits,
/// now or in the future, would otherwise interleave with another).
#[must_use]
pub struct JobGuard(JobId);

impl JobGuard {
    pub fn acquire(id: JobId) -> Option<JobGuard> {
        mutate(|s| s.stepping.insert(id)).then_some(JobGuard(id))
    }
}

impl Drop for JobGuard {
    fn drop(&mut self) {
        mutate(|s| s.stepping.remove(&self.0));
    }
}

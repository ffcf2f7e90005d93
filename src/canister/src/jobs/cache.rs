//! The job cache: the engine `Job` (with its whole KV cache in the heap) of
//! recently stepped jobs, beside a copy of each one's record, so that the
//! next step neither rebuilds the cache from its KV slot nor decodes the
//! record. Evicting loses nothing: every step ends with the job's record and
//! KV rows in stable memory, from which it is rebuilt. Heap only: an upgrade
//! or a new model empties it.

use super::records::JobRecord;
use icllm_api::JobId;
use icllm_engine::job::Job;
use std::cell::RefCell;
use std::collections::BTreeMap;

/// Engine jobs kept at most.
const MAX_CACHED_JOBS: usize = 64;

struct CachedJob {
    job: Job,
    /// The [`JobCache::clock`] at its last use.
    last_used: u64,
    /// The job's record as last written to stable memory (every write of a
    /// cached job's record goes through `jobs`, which keeps this in step).
    record: JobRecord,
}

#[derive(Default)]
struct JobCache {
    jobs: BTreeMap<JobId, CachedJob>,
    /// Counts uses, for the least-recently-used pick.
    clock: u64,
}

impl JobCache {
    /// The job to evict first.
    fn least_recently_used(&self) -> Option<JobId> {
        self.jobs.iter().min_by_key(|(_, c)| c.last_used).map(|(&id, _)| id)
    }

    fn kv_heap_bytes(&self) -> u64 {
        self.jobs.values().map(|c| c.job.kv.heap_bytes()).sum()
    }
}

thread_local! {
    static CACHE: RefCell<JobCache> = RefCell::new(JobCache::default());
}

/// The cached copy of job `id`'s record.
pub fn record(id: JobId) -> Option<JobRecord> {
    CACHE.with(|c| c.borrow().jobs.get(&id).map(|c| c.record.clone()))
}

/// `f` of the cached record of job `id`, without copying it.
pub fn with_record<R>(id: JobId, f: impl FnOnce(&JobRecord) -> R) -> Option<R> {
    CACHE.with(|c| c.borrow().jobs.get(&id).map(|c| f(&c.record)))
}

/// Takes job `id` out of the cache; the caller puts it back with [`insert`].
pub fn take(id: JobId) -> Option<Job> {
    CACHE.with(|c| c.borrow_mut().jobs.remove(&id)).map(|c| c.job)
}

/// Caches `job` with its record as just written, as the most recently
/// used; the least recently used make way beyond [`MAX_CACHED_JOBS`].
pub fn insert(id: JobId, job: Job, record: JobRecord) {
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        c.clock += 1;
        let last_used = c.clock;
        c.jobs.insert(id, CachedJob { job, last_used, record });
        while c.jobs.len() > MAX_CACHED_JOBS {
            let Some(oldest) = c.least_recently_used() else { break };
            c.jobs.remove(&oldest);
        }
    });
}

pub fn remove(id: JobId) {
    CACHE.with(|c| c.borrow_mut().jobs.remove(&id));
}

pub fn clear() {
    CACHE.with(|c| c.borrow_mut().jobs.clear());
}

/// Heap bytes of the cached jobs' KV caches.
pub fn kv_heap_bytes() -> u64 {
    CACHE.with(|c| c.borrow().kv_heap_bytes())
}

/// Evicts the least recently used jobs until `bytes` more fit in `room`
/// beside the cached jobs' KV caches (or the cache is empty).
pub fn make_room(room: u64, bytes: u64) {
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        while c.kv_heap_bytes() + bytes > room {
            let Some(oldest) = c.least_recently_used() else { return };
            c.jobs.remove(&oldest);
        }
    });
}

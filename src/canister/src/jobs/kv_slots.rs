//! KV slots: each unfinished job holds one region of `memory::KV` where its
//! checkpoints write the KV rows it computed, so that an upgrade or an
//! eviction from the heap loses nothing. A done or cancelled job's slot
//! keeps its rows (`Settings::kv_kept`) for a job that continues it: that
//! job adopts the slot, so the rows are handed over, never copied. Kept rows
//! never block a new job: it takes an empty slot, a new one under the cap,
//! or else the slot kept longest.
//!
//! Also here: the claims that hold a place against the quotas while
//! `start_job` awaits, and the slot geometry, fixed when a model is
//! activated and derived from the engine's [`KvShape`].

use super::records::{active_count, JobRecord};
use crate::memory;
use crate::model_store::LoadedModel;
use crate::settings::{self, KeptKv, Settings};
use crate::state;
use candid::Principal;
use ic_stable_structures::Memory as _;
use icllm_api::{ApiError, ApiResult, JobId};
use icllm_engine::job::{Job, KvCache, KvShape, KvType};
use icllm_engine::kv::Which;
use std::ops::Range;

/// A finished job's KV slot that a new job takes over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Adopted {
    pub slot: u32,
    /// The job that left its rows there.
    pub from: JobId,
}

/// Ids of unfinished jobs, for rebuilding the scheduler's list after an
/// upgrade: each holds a KV slot, so the slot table lists them all.
pub fn scan_active() -> Vec<JobId> {
    settings::read(|s| s.kv_slots.iter().flatten().copied().collect())
}

/// The KV shape of every job on `model` (sliding layers keep their window).
pub fn job_shape(model: &LoadedModel) -> KvShape {
    KvShape::of_job(&model.model.config, icllm_engine::job::DEFAULT_MAX_BATCH)
}

/// Sizes the slots for a newly activated model whose jobs (of KV shape
/// `shape`, see [`KvShape::of_job`]) may use up to `ctx` positions: each
/// slot holds, per layer, as many K rows and V rows of the widest (f32)
/// encoding as the layer keeps in the heap (`ctx`, or a sliding layer's
/// window). Every slot of the previous model, taken or kept, is dropped:
/// its rows mean nothing to the new one (a shard forgets its coordinator's
/// jobs, whose rows were there).
pub fn configure(shape: KvShape, ctx: u32) {
    let row_bytes = shape
        .row_bytes(KvType::F32, Which::K)
        .max(shape.row_bytes(KvType::F32, Which::V)) as u64;
    let layer_rows: Vec<u32> = (0..shape.n_layers).map(|l| shape.layer_rows(l, ctx)).collect();
    settings::mutate(|s| {
        s.kv_slot_ctx = ctx;
        s.kv_row_bytes = row_bytes;
        s.kv_slot_bytes = layer_rows.iter().map(|&r| 2 * r as u64 * row_bytes).sum();
        s.kv_layer_rows = layer_rows;
        s.kv_slots.clear();
        s.kv_kept.clear();
        // A shard's jobs' rows were in those slots.
        s.shard_jobs.clear();
    });
}

/// Why no KV slot is free, in words a caller (or a controller) can act on.
fn no_slot_reason(s: &Settings) -> String {
    if s.limits.max_active_jobs == 0 {
        return "max_active_jobs is 0: a controller has paused new jobs".into();
    }
    if s.kv_slot_bytes > s.limits.max_kv_bytes {
        return format!(
            "max_kv_bytes ({}) is less than one job's KV slot ({} bytes for a context of {} positions); \
             a controller must raise max_kv_bytes or lower max_context",
            s.limits.max_kv_bytes, s.kv_slot_bytes, s.kv_slot_ctx
        );
    }
    format!(
        "all {} job slots are taken by unfinished jobs; try again when one finishes",
        slot_cap(s)
    )
}

/// KV slots (unfinished jobs) the canister may hold at once.
fn slot_cap(s: &Settings) -> u32 {
    (s.limits.max_kv_bytes / s.kv_slot_bytes.max(1)).min(s.limits.max_active_jobs as u64) as u32
}

/// A place for one more unfinished job, held from the first check of
/// `start_job` until its job is stored (or the call fails): concurrent
/// calls of one principal, interleaved at the `raw_rand` await, each count
/// against its quota. Released on drop.
#[must_use]
pub struct SlotClaim {
    owner: Principal,
}

impl SlotClaim {
    /// Claims a place for `owner` if the per-caller quota (not for
    /// controllers; one shared quota for all anonymous callers) and the
    /// global one allow.
    pub fn take(owner: Principal, is_controller: bool) -> ApiResult<SlotClaim> {
        let (limits, used, cap, reason) = settings::read(|s| {
            let used = s.kv_slots.iter().flatten().count() as u32;
            (s.limits.clone(), used, slot_cap(s), no_slot_reason(s))
        });
        let anonymous = owner == Principal::anonymous();
        let per_caller = if anonymous {
            limits.max_active_anonymous_jobs()
        } else {
            limits.max_active_jobs_per_caller
        };
        state::mutate(|s| {
            let mine = active_count(owner) + s.claims.get(&owner).copied().unwrap_or(0);
            if !is_controller && mine >= per_caller {
                return Err(ApiError::QuotaExceeded(if anonymous {
                    format!(
                        "anonymous callers already have {per_caller} unfinished jobs (their shared limit); \
                         sign in, or try again later"
                    )
                } else {
                    format!("you already have {per_caller} unfinished jobs (the limit per caller); cancel one or wait")
                }));
            }
            if used + s.claims_total >= cap {
                return Err(ApiError::QuotaExceeded(reason));
            }
            *s.claims.entry(owner).or_default() += 1;
            s.claims_total += 1;
            Ok(SlotClaim { owner })
        })
    }
}

impl Drop for SlotClaim {
    fn drop(&mut self) {
        state::mutate(|s| {
            if let Some(n) = s.claims.get_mut(&self.owner) {
                *n -= 1;
                if *n == 0 {
                    s.claims.remove(&self.owner);
                }
            }
            s.claims_total = s.claims_total.saturating_sub(1);
        });
    }
}

/// The slot a new job gets: the one it adopts (still kept for the job it
/// continues), else an empty slot, else a new one while under the cap,
/// else the one kept longest (kept rows never stop a job from starting).
fn pick(s: &Settings, adopted: Option<Adopted>) -> u32 {
    let free = |slot: u32| s.kv_slots.get(slot as usize).is_some_and(|o| o.is_none());
    if let Some(a) = adopted {
        if free(a.slot) && s.kv_kept.get(&a.slot).is_some_and(|k| k.job == a.from) {
            return a.slot;
        }
    }
    let len = s.kv_slots.len() as u32;
    if let Some(empty) = (0..len).find(|&i| free(i) && !s.kv_kept.contains_key(&i)) {
        return empty;
    }
    if len < slot_cap(s) {
        return len;
    }
    s.kv_kept
        .iter()
        .filter(|(&slot, _)| free(slot))
        .min_by_key(|(&slot, k)| (k.since, slot))
        .map_or(len, |(&slot, _)| slot)
}

/// Gives job `id` a slot (see [`pick`]): the one it adopts if that is still
/// kept for the job it continues, else another. Fails, changing nothing, if
/// stable memory cannot grow to hold it, or if `adopted` rows were read
/// from a slot the job does not get after all (`cached_rows` > 0).
pub fn occupy(
    id: impl FnOnce(&mut Settings) -> JobId,
    adopted: Option<Adopted>,
    cached_rows: u32,
) -> ApiResult<(JobId, u32)> {
    let (slot, slot_bytes) = settings::read(|s| (pick(s, adopted), s.kv_slot_bytes));
    if adopted.is_some_and(|a| a.slot != slot) && cached_rows > 0 {
        return Err(ApiError::InvalidArgument(
            "the continued job's KV slot was taken meanwhile; try again".into(),
        ));
    }
    if !memory::ensure_size(&memory::get(memory::KV), (slot as u64 + 1) * slot_bytes) {
        return Err(ApiError::QuotaExceeded(
            "stable memory is full: no room for another job's KV slot".into(),
        ));
    }
    Ok(settings::mutate(|s| {
        let id = id(s);
        s.kv_kept.remove(&slot);
        if slot as usize == s.kv_slots.len() {
            s.kv_slots.push(Some(id));
        } else {
            s.kv_slots[slot as usize] = Some(id);
        }
        (id, slot)
    }))
}

/// Frees `slot`; with `kept`, its rows stay for a job that continues the
/// one that wrote them.
pub fn release(slot: u32, kept: Option<KeptKv>) {
    settings::mutate(|s| {
        if let Some(o) = s.kv_slots.get_mut(slot as usize) {
            *o = None;
        }
        if let Some(k) = kept {
            s.kv_kept.insert(slot, k);
        }
    });
}

/// The slot kept for finished job `from` of `owner`, if it still is.
pub fn kept_for(owner: Principal, from: JobId) -> Option<u32> {
    settings::read(|s| {
        s.kv_kept
            .iter()
            .find(|(_, k)| k.job == from && k.owner == owner)
            .map(|(&slot, _)| slot)
    })
}

/// The slots kept for `owner`'s finished jobs, with those jobs.
pub fn kept_of(owner: Principal) -> Vec<(u32, JobId)> {
    settings::read(|s| {
        s.kv_kept
            .iter()
            .filter(|(_, k)| k.owner == owner)
            .map(|(&slot, k)| (slot, k.job))
            .collect()
    })
}

/// Forgets the KV rows job `id` left in a slot (the slot stays free).
pub fn forget_kept(id: JobId) {
    if settings::read(|s| s.kv_kept.values().any(|k| k.job == id)) {
        settings::mutate(|s| s.kv_kept.retain(|_, k| k.job != id));
    }
}

/// Geometry of KV slots: per layer a K region and a V region of
/// `rows[layer]` f32 rows of `row_bytes`, where a job writes position `p`
/// of the layer at row `p % rows[layer]`, as [`KvCache::rows_bytes`]
/// encodes it (an f32 cache fills the row; a q8 cache's rows are shorter
/// and packed from the start of the region).
struct KvGeometry {
    slot_bytes: u64,
    row_bytes: u64,
    rows: Vec<u32>,
    /// Per layer: its K region's offset in a slot.
    first: Vec<u64>,
}

impl KvGeometry {
    fn current(n_layers: usize) -> KvGeometry {
        settings::read(|s| {
            let rows = if s.kv_layer_rows.is_empty() {
                vec![s.kv_slot_ctx; n_layers]
            } else {
                s.kv_layer_rows.clone()
            };
            let first = rows
                .iter()
                .scan(0u64, |at, &r| {
                    let here = *at;
                    *at += 2 * r as u64 * s.kv_row_bytes;
                    Some(here)
                })
                .collect();
            KvGeometry {
                slot_bytes: s.kv_slot_bytes,
                row_bytes: s.kv_row_bytes,
                rows,
                first,
            }
        })
    }

    /// The runs of `positions` of `which` of `layer` in `slot`, each
    /// contiguous there: `(first position, offset)`; two when the positions
    /// wrap around a sliding layer's region. `row`: bytes per row
    /// ([`KvCache::row_bytes`], at most `row_bytes`).
    fn runs(&self, slot: u32, layer: usize, which: Which, positions: Range<u32>, row: usize) -> Vec<(Range<u32>, u64)> {
        let rows = self.rows[layer].max(1);
        let region = slot as u64 * self.slot_bytes
            + self.first[layer]
            + matches!(which, Which::V) as u64 * rows as u64 * self.row_bytes;
        let mut runs = Vec::with_capacity(2);
        let mut p = positions.start;
        while p < positions.end {
            let end = positions.end.min(p - p % rows + rows);
            runs.push((p..end, region + (p % rows) as u64 * row as u64));
            p = end;
        }
        runs
    }
}

/// Writes the KV rows of `dirty` positions that each layer keeps to the job's slot.
pub fn save_rows(kv: &KvCache, slot: u32, dirty: Range<u32>) {
    let g = KvGeometry::current(kv.n_layers());
    let mem = memory::get(memory::KV);
    let shape = kv.shape();
    for layer in 0..kv.n_layers() {
        let kept = shape.kept(layer, dirty.end);
        let held = kv.held(layer);
        let start = dirty.start.max(kept.start).max(held.start);
        let end = dirty.end.min(held.end);
        for which in [Which::K, Which::V] {
            let row = kv.row_bytes(which);
            for (run, offset) in g.runs(slot, layer, which, start..end, row) {
                mem.write(offset, &kv.rows_bytes(layer, run, which));
            }
        }
    }
}

/// Rebuilds an engine job from its record and KV slot.
pub fn restore(model: &LoadedModel, rec: &JobRecord) -> Job {
    let kv = KvCache::with_type(job_shape(model), rec.engine.ctx_size(), rec.engine.kv_type())
        .expect("a KV cache this size was allocated when the job started");
    let mut job = Job {
        state: rec.engine.clone(),
        kv,
    };
    if let Some(slot) = rec.kv_slot {
        load_rows(&mut job.kv, slot, rec.kv_rows_saved);
    }
    job
}

/// Reads the KV rows each layer keeps of positions `[0, rows)` from `slot`
/// into `kv` (which then has nothing dirty: the rows are in the slot already).
pub fn load_rows(kv: &mut KvCache, slot: u32, rows: u32) {
    let g = KvGeometry::current(kv.n_layers());
    let mem = memory::get(memory::KV);
    let shape = kv.shape();
    for layer in 0..kv.n_layers() {
        let kept = shape.kept(layer, rows);
        for which in [Which::K, Which::V] {
            let row = kv.row_bytes(which);
            let mut buf = vec![0u8; kept.len() * row];
            let mut at = 0;
            for (run, offset) in g.runs(slot, layer, which, kept.clone(), row) {
                let n = run.len() * row;
                mem.read(offset, &mut buf[at..at + n]);
                at += n;
            }
            kv.decode_rows(layer, kept.start, which, &buf)
                .expect("rows fit the cache they came from");
        }
    }
    kv.take_dirty();
}

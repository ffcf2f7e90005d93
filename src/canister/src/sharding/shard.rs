//! The shard's side: `shard_forward` runs a batch of one of the
//! coordinator's jobs through this canister's layers. The job's KV rows of
//! these layers live in a KV slot (`jobs::kv_slots`, the geometry of this
//! shard's layers) and, while the job runs, in a heap cache; the slot is
//! written before the reply, so an upgrade or an eviction loses nothing.
//! The shard keeps no tokens and no sampler: a job here is its geometry,
//! its slot and how many positions the slot holds ([`ShardJob`]).

use super::MAX_BATCH_BYTES;
use crate::env::Env;
use crate::jobs::{engine_kv_type, kv_slots};
use crate::model_store::LoadedModel;
use crate::settings::{self, ShardJob};
use crate::state;
use icllm_api::{ApiError, ApiResult, JobId, ShardBatch, ShardReply, ShardSeq};
use icllm_engine::job::{KvCache, KvType};
use icllm_engine::model::forward;

fn invalid(m: String) -> ApiError {
    ApiError::InvalidArgument(m)
}

/// f32 little-endian bytes → values (a whole number of rows of `dim`).
pub fn rows_from_bytes(bytes: &[u8], dim: usize) -> Option<Vec<f32>> {
    if bytes.is_empty() || !bytes.len().is_multiple_of(4 * dim) {
        return None;
    }
    Some(
        bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    )
}

pub fn rows_to_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Runs `batch` through this shard's layers (see [`ShardReply`]): every
/// sequence is checked first, then all run together, then each job's new
/// rows are saved. A refusal or a `Behind` runs nothing.
pub fn forward(env: &impl Env, model: &LoadedModel, batch: ShardBatch) -> ApiResult<ShardReply> {
    let c = &model.model.config;
    if batch.hidden.len() > MAX_BATCH_BYTES {
        return Err(invalid(format!(
            "a batch of {} bytes is over the {MAX_BATCH_BYTES} a shard accepts",
            batch.hidden.len()
        )));
    }
    let mut x = rows_from_bytes(&batch.hidden, c.dim)
        .ok_or_else(|| invalid(format!("{} bytes are not rows of {} f32", batch.hidden.len(), c.dim)))?;
    let rows: u64 = batch.seqs.iter().map(|s| s.n as u64).sum();
    if batch.seqs.is_empty() || rows * c.dim as u64 != x.len() as u64 {
        return Err(invalid(format!(
            "the batch's sequences hold {rows} rows but its hidden state {}",
            x.len() / c.dim
        )));
    }
    let mut jobs = Vec::with_capacity(batch.seqs.len());
    for (i, seq) in batch.seqs.iter().enumerate() {
        if batch.seqs[..i].iter().any(|s| s.job == seq.job) {
            return Err(invalid(format!("job {} is twice in the batch", seq.job)));
        }
        match known_job(model, seq)? {
            Ok(job) => jobs.push(job),
            Err(holds) => return Ok(ShardReply::Behind { job: seq.job, holds }),
        }
    }
    let mut caches = open_caches(model, &batch.seqs, &mut jobs)?;
    let mut seqs: Vec<forward::Sequence> = batch
        .seqs
        .iter()
        .zip(&mut caches)
        .map(|(s, kv)| forward::Sequence {
            pos0: s.pos0,
            n: s.n as usize,
            kv,
            conv_state: &mut [],
        })
        .collect();
    forward::layers_of(&model.model, &mut x, &mut seqs);
    let mut saved = Vec::with_capacity(jobs.len());
    for ((seq, job), mut kv) in batch.seqs.iter().zip(jobs).zip(caches) {
        let mut job = job.expect("every job has its slot by now");
        if let Some(dirty) = kv.take_dirty() {
            kv_slots::save_rows(&kv, job.slot, dirty);
        }
        job.holds = job.holds.max(seq.pos0 + seq.n);
        saved.push((seq.job, job));
        state::mutate(|s| s.shard_kv.insert(seq.job, kv));
    }
    // One write of the settings record for the whole batch.
    settings::mutate(|s| s.shard_jobs.extend(saved));
    Ok(ShardReply::Forwarded {
        hidden: rows_to_bytes(&x),
        instructions: env.instructions(),
    })
}

/// Checks one sequence of a batch: `Ok(Ok(job))` with the job's record here
/// (`None`: a new job, whose slot is claimed once the whole batch passed),
/// `Ok(Err(holds))` when the shard holds fewer of its rows than its `pos0`.
fn known_job(model: &LoadedModel, seq: &ShardSeq) -> ApiResult<Result<Option<ShardJob>, u32>> {
    let shape = kv_slots::job_shape(model);
    let kv_type = engine_kv_type(seq.kv_cache_type);
    let slot_ctx = settings::read(|s| s.kv_slot_ctx);
    if seq.ctx_size == 0 || seq.ctx_size > slot_ctx {
        return Err(invalid(format!(
            "job {}: a context of {} positions is over this shard's {slot_ctx} (its max_context)",
            seq.job, seq.ctx_size
        )));
    }
    if seq.n == 0 || seq.n > shape.max_write() || seq.pos0 as u64 + seq.n as u64 > seq.ctx_size as u64 {
        return Err(invalid(format!(
            "job {}: {} positions from {} do not fit its context of {} (or the {} a batch may write)",
            seq.job,
            seq.n,
            seq.pos0,
            seq.ctx_size,
            shape.max_write()
        )));
    }
    Ok(match settings::read(|s| s.shard_jobs.get(&seq.job).copied()) {
        Some(j) if j.ctx_size != seq.ctx_size || j.kv_type != kv_type => {
            return Err(invalid(format!(
                "job {} has a {}-position {} cache here, not {} {}",
                seq.job,
                j.ctx_size,
                j.kv_type.name(),
                seq.ctx_size,
                kv_type.name()
            )))
        }
        Some(j) if seq.pos0 > j.holds => Err(j.holds),
        Some(j) => Ok(Some(j)),
        // A batch past position 0 of a job this shard does not know (it
        // was released, or the shard reinstalled): nothing is claimed.
        None if seq.pos0 > 0 => Err(0),
        None => Ok(None),
    })
}

/// The batch's caches, each job's from the heap or its slot; new jobs
/// (`None`) get a slot first. On an error the slots claimed here are freed
/// again: a refused batch leaves no slot without its job.
fn open_caches(model: &LoadedModel, seqs: &[ShardSeq], jobs: &mut [Option<ShardJob>]) -> ApiResult<Vec<KvCache>> {
    let mut caches: Vec<KvCache> = Vec::with_capacity(jobs.len());
    let mut claimed = Vec::new();
    let mut open = |seq: &ShardSeq, job: &mut Option<ShardJob>, caches: &[KvCache]| {
        let job = match job {
            Some(j) => *j,
            None => {
                let new = new_job(seq.job, seq.ctx_size, engine_kv_type(seq.kv_cache_type))?;
                claimed.push(new.slot);
                *job.insert(new)
            }
        };
        take_cache(model, seq.job, &job, caches)
    };
    for (seq, job) in seqs.iter().zip(jobs.iter_mut()) {
        match open(seq, job, &caches) {
            Ok(kv) => caches.push(kv),
            Err(e) => {
                claimed.iter().for_each(|&slot| kv_slots::release(slot, None));
                return Err(e);
            }
        }
    }
    Ok(caches)
}

/// Job `id`'s cache: from the heap, or rebuilt from its slot (with room
/// made beside the weights and the caches `in_hand` of the same batch).
fn take_cache(model: &LoadedModel, id: JobId, job: &ShardJob, in_hand: &[KvCache]) -> ApiResult<KvCache> {
    if let Some(kv) = state::mutate(|s| s.shard_kv.remove(&id)) {
        return Ok(kv);
    }
    let shape = kv_slots::job_shape(model);
    let held: u64 = in_hand.iter().map(KvCache::heap_bytes).sum();
    make_room(model, held + shape.heap_bytes(job.kv_type, job.ctx_size));
    let mut kv = KvCache::with_type(shape, job.ctx_size, job.kv_type)
        .ok_or_else(|| invalid(format!("a cache of {} positions does not fit", job.ctx_size)))?;
    kv_slots::load_rows(&mut kv, job.slot, job.holds);
    Ok(kv)
}

/// A job this shard has not seen: a KV slot for its rows.
fn new_job(id: JobId, ctx_size: u32, kv_type: KvType) -> ApiResult<ShardJob> {
    let (_, slot) = kv_slots::occupy(|_| id, None, 0)?;
    Ok(ShardJob {
        ctx_size,
        kv_type,
        holds: 0,
        slot,
    })
}

/// Drops job `id`'s rows (the coordinator's job ended). Unknown ids are fine.
pub fn release(id: JobId) {
    state::mutate(|s| s.shard_kv.remove(&id));
    if let Some(job) = settings::mutate(|s| s.shard_jobs.remove(&id)) {
        kv_slots::release(job.slot, None);
    }
}

/// Evicts cached caches (any; their rows are in their slots) until `bytes`
/// more fit the heap budget beside the weights.
fn make_room(model: &LoadedModel, bytes: u64) {
    let room = settings::read(|s| s.heap_budget()).saturating_sub(model.info.heap_bytes);
    state::mutate(|s| {
        while s.shard_kv.values().map(KvCache::heap_bytes).sum::<u64>() + bytes > room {
            if s.shard_kv.pop_first().is_none() {
                break;
            }
        }
    });
}

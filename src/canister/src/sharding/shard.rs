//! The shard's side: `shard_forward` runs a batch of one of the
//! coordinator's jobs through this canister's layers. The job's KV rows of
//! these layers live in a KV slot (`jobs::kv_slots`, the geometry of this
//! shard's layers) and, while the job runs, in a heap cache; the slot is
//! written before the reply, so an upgrade or an eviction loses nothing.
//! The shard keeps no tokens and no sampler: a job here is its geometry,
//! its slot and how many positions the slot holds ([`ShardJob`]).

use super::MAX_BATCH_BYTES;
use crate::env::Env;
use crate::jobs::kv_slots;
use crate::model_store::LoadedModel;
use crate::settings::{self, ShardJob};
use crate::state;
use icllm_api::{ApiError, ApiResult, JobId, KvCacheType, ShardBatch, ShardReply};
use icllm_engine::job::{KvCache, KvType};
use icllm_engine::model::forward;

fn invalid(m: String) -> ApiError {
    ApiError::InvalidArgument(m)
}

pub fn kv_type_of(t: KvCacheType) -> KvType {
    match t {
        KvCacheType::F32 => KvType::F32,
        KvCacheType::Q8 => KvType::Q8,
    }
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

/// Runs `batch` through this shard's layers (see [`ShardReply`]).
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
    let n = (x.len() / c.dim) as u32;
    let shape = kv_slots::job_shape(model);
    let kv_type = kv_type_of(batch.kv_cache_type);
    let slot_ctx = settings::read(|s| s.kv_slot_ctx);
    if batch.ctx_size == 0 || batch.ctx_size > slot_ctx {
        return Err(invalid(format!(
            "a context of {} positions is over this shard's {slot_ctx} (its max_context)",
            batch.ctx_size
        )));
    }
    if n > shape.max_write() || batch.pos0 as u64 + n as u64 > batch.ctx_size as u64 {
        return Err(invalid(format!(
            "{n} positions from {} do not fit the job's context of {} (or the {} a batch may write)",
            batch.pos0,
            batch.ctx_size,
            shape.max_write()
        )));
    }
    let mut job = match settings::read(|s| s.shard_jobs.get(&batch.job).copied()) {
        Some(j) if j.ctx_size != batch.ctx_size || j.kv_type != kv_type => {
            return Err(invalid(format!(
                "job {} has a {}-position {} cache here, not {} {}",
                batch.job,
                j.ctx_size,
                j.kv_type.name(),
                batch.ctx_size,
                kv_type.name()
            )))
        }
        Some(j) => j,
        // A batch past position 0 of a job this shard does not know (it
        // was released, or the shard reinstalled): nothing is claimed.
        None if batch.pos0 > 0 => return Ok(ShardReply::Behind { holds: 0 }),
        None => new_job(batch.job, batch.ctx_size, kv_type)?,
    };
    if batch.pos0 > job.holds {
        return Ok(ShardReply::Behind { holds: job.holds });
    }
    let mut kv = match state::mutate(|s| s.shard_kv.remove(&batch.job)) {
        Some(kv) => kv,
        None => {
            make_room(model, shape.heap_bytes(kv_type, batch.ctx_size));
            let mut kv = KvCache::with_type(shape, batch.ctx_size, kv_type)
                .ok_or_else(|| invalid(format!("a cache of {} positions does not fit", batch.ctx_size)))?;
            kv_slots::load_rows(&mut kv, job.slot, job.holds);
            kv
        }
    };
    forward::layers(&model.model, batch.pos0, &mut x, &mut kv, &mut []);
    if let Some(dirty) = kv.take_dirty() {
        kv_slots::save_rows(&kv, job.slot, dirty);
    }
    job.holds = job.holds.max(batch.pos0 + n);
    settings::mutate(|s| s.shard_jobs.insert(batch.job, job));
    state::mutate(|s| s.shard_kv.insert(batch.job, kv));
    Ok(ShardReply::Forwarded {
        hidden: rows_to_bytes(&x),
        instructions: env.instructions(),
    })
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

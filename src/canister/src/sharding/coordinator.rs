//! The coordinator's side: each scheduler tick starts a batch on its way
//! ([`step`]): the next tokens of the next job in turn and of up to
//! [`MAX_GROUP`] - 1 other jobs, embedded here, sent through the shards in
//! order (`shard_forward`, one bounded-wait call each, awaited; each shard
//! reads its weights once for all the jobs' rows), and back here for each
//! job's head, sampler and checkpoint, as after a step of an unsharded job.
//! Ticks do not wait for each other, so batches of other jobs can be on
//! their way at once, each at its own shard: a pipeline.
//!
//! A call that fails (rejected, timed out, or its reply lost) abandons the
//! batch: the jobs' checkpoints still say where they were, and the next
//! ticks send their batches again, each job alone and with half as many
//! tokens after each failure in a row (a batch too large for a shard's
//! instruction limit traps there; a refusal may concern one job only).
//! A shard that lost rows answers `Behind`: the job goes back to where every
//! shard holds rows. A shard that is loading its model answers
//! `ModelNotReady`, which is waited out (and makes the coordinator check
//! that the shard has its part, see below). After [`MAX_SHARD_FAILURES`]
//! failed calls in a row the job fails with the last reason.
//!
//! The model reaches the shards from here ([`fan_out`]): once an upload to
//! the coordinator is verified and its ends are loaded, each shard is sent
//! its part of the file (the header and its layers' tensors) through its
//! own upload methods, resuming from what the shard says it lacks. Until
//! every shard has loaded its part, jobs wait and new ones are refused; a
//! shard that cannot get or load its part for [`SHARDS_UNREADY_TIMEOUT_NS`]
//! fails the waiting jobs with the reason.

use super::shard::{rows_from_bytes, rows_to_bytes};
use super::MAX_BATCH_BYTES;
use crate::env::{Env, Ic};
use crate::model_store::ModelRef;
use crate::{jobs, memory, model_store, scheduler, settings, state};
use ic_cdk::call::Call;
use ic_stable_structures::Memory as _;
use icllm_api::{ApiError, ApiResult, JobId, Role, ShardBatch, ShardRef, ShardReply, ShardSeq};
use icllm_api::{UploadBegin, UploadState, UploadStatus};
use icllm_engine::model::forward;
use icllm_engine::model::{ModelLoader, ModelPart};

/// Failed shard calls in a row after which a job fails.
pub const MAX_SHARD_FAILURES: u32 = 64;
/// How long a shard call may take before the coordinator gives up on it.
const SHARD_CALL_TIMEOUT_SECONDS: u32 = 300;
/// Instructions per multiply-add assumed until a shard reports its own.
const FIRST_INSTRUCTIONS_PER_MAC: f64 = 2.0;
/// Share of a shard's message limit a batch is sized to use.
const BATCH_SHARE_OF_LIMIT: f64 = 0.7;

fn shards() -> Vec<ShardRef> {
    match super::role() {
        Role::Coordinator { shards } => shards,
        _ => Vec::new(),
    }
}

/// The next active job without a batch on its way, after the last one
/// served (round-robin).
pub fn next_job() -> Option<JobId> {
    state::mutate(|s| {
        let free = |id: &&JobId| !s.step_pending.contains(id);
        let next = s
            .active
            .range(s.last_served + 1..)
            .find(free)
            .or_else(|| s.active.iter().find(free))
            .copied();
        if let Some(id) = next {
            s.last_served = id;
        }
        next
    })
}

/// Tokens of the largest batch at `pos0` that every shard can run in a
/// message (by the instructions per multiply-add the shards reported, with
/// full attention as an upper bound for sliding layers) and whose hidden
/// state fits a call, halved `failures` times.
pub fn max_batch(model: &ModelRef, shards: &[ShardRef], pos0: u32, failures: u32) -> usize {
    let ends = &model.model;
    let widest = shards.iter().map(|s| s.end_layer - s.first_layer).max().unwrap_or(1) as u64;
    let per_mac = match state::read(|s| s.shard_instructions_per_mac) {
        0.0 => FIRST_INSTRUCTIONS_PER_MAC,
        measured => measured * 1.25,
    };
    let budget = scheduler::message_limit() as f64 * BATCH_SHARE_OF_LIMIT;
    let fits = |n: usize| {
        let macs = widest * (forward::attention_block_macs(ends, pos0, n) + forward::ffn_block_macs(ends, n));
        macs as f64 * per_mac <= budget
    };
    let by_bytes = MAX_BATCH_BYTES / (4 * ends.config.dim);
    let largest = (1..=by_bytes.min(icllm_engine::job::DEFAULT_MAX_BATCH as usize))
        .rev()
        .find(|&n| fits(n))
        .unwrap_or(1);
    (largest >> failures.min(16)).max(1)
}

/// What became of one batch's trip through the shards.
enum Trip {
    /// Every shard answered: the hidden state leaving the last layer.
    Done(Vec<u8>),
    /// A call failed; the batch is sent again later.
    Failed(String),
    /// A shard is loading its model.
    NotReady,
    /// A shard holds job `.0`'s rows up to `.1` only.
    Behind(JobId, u32),
    /// A shard refused the batch.
    Refused(String),
}

/// Jobs whose rows go through the shards in one batch at most: each shard
/// reads its weights (and pays the memory tracker's first touch of every
/// page) once for all of them.
pub const MAX_GROUP: usize = 8;

/// One job's part of a group's batch.
struct Member {
    id: JobId,
    seq: ShardSeq,
    rows: Vec<f32>,
}

/// Sends one batch of job `lead`, and of up to [`MAX_GROUP`] - 1 other
/// active jobs without a batch on their way (those whose last batch went
/// through), through the shards, and finishes each; returns once the batch
/// is back (or abandoned).
pub async fn step(lead: JobId) {
    let ids = state::mutate(|s| {
        if s.step_pending.contains(&lead) {
            return Vec::new();
        }
        let alone = s.shard_failures.contains_key(&lead);
        let others: Vec<JobId> = match alone {
            true => Vec::new(),
            false => s
                .active
                .range(lead + 1..)
                .chain(s.active.range(..lead))
                .filter(|id| !s.step_pending.contains(id) && !s.shard_failures.contains_key(id))
                .take(MAX_GROUP - 1)
                .copied()
                .collect(),
        };
        let ids: Vec<JobId> = std::iter::once(lead).chain(others).collect();
        s.step_pending.extend(ids.iter().copied());
        ids
    });
    if ids.is_empty() {
        return;
    }
    drive(&ids).await;
    state::mutate(|s| ids.iter().for_each(|id| _ = s.step_pending.remove(id)));
}

/// The group's batches: each job's next tokens, as many as the rows left of
/// what a shard can run in one message (the lead's position sizes it).
fn begin_group(model: &ModelRef, shards: &[ShardRef], ids: &[JobId]) -> Vec<Member> {
    let failures = state::read(|s| s.shard_failures.get(&ids[0]).copied().unwrap_or(0));
    let mut left = None;
    let mut members = Vec::new();
    for &id in ids {
        let begun = jobs::pipeline_begin(model, id, |pos0| {
            *left.get_or_insert_with(|| max_batch(model, shards, pos0, failures))
        });
        match begun {
            None => {}
            Some(Err(reason)) => jobs::fail(&Ic, id, &reason),
            Some(Ok((batch, ctx_size, kv_type))) => {
                let n = batch.hidden.len() / model.model.config.dim;
                left = left.map(|l| l - n);
                members.push(Member {
                    id,
                    seq: ShardSeq {
                        job: id,
                        ctx_size,
                        kv_cache_type: jobs::api_kv_type(kv_type),
                        pos0: batch.pos0,
                        n: n as u32,
                    },
                    rows: batch.hidden,
                });
            }
        }
        if left == Some(0) {
            break;
        }
    }
    members
}

async fn drive(ids: &[JobId]) {
    let (Some(model), shards) = (state::read(|s| s.model.clone()), shards()) else {
        return;
    };
    let members = begin_group(&model, &shards, ids);
    if members.is_empty() {
        return;
    }
    let dim = model.model.config.dim;
    let total_rows: usize = members.iter().map(|m| m.rows.len() / dim).sum();
    let mut hidden: Vec<u8> = members.iter().flat_map(|m| rows_to_bytes(&m.rows)).collect();
    let seqs: Vec<ShardSeq> = members.iter().map(|m| m.seq.clone()).collect();
    let mut instructions = Ic.instructions();
    let mut messages: u32 = 0;
    let mut trip = Trip::Done(Vec::new());
    for shard in &shards {
        let arg = ShardBatch {
            seqs: seqs.clone(),
            hidden: std::mem::take(&mut hidden),
        };
        let reply = Call::bounded_wait(shard.canister, "shard_forward")
            .change_timeout(SHARD_CALL_TIMEOUT_SECONDS)
            .with_arg(&arg)
            .await;
        messages += 2; // the shard's message and this callback
        trip = match reply.map(|r| r.candid::<ApiResult<ShardReply>>()) {
            Err(e) => Trip::Failed(format!("the call to shard {} failed: {e}", shard.canister)),
            Ok(Err(e)) => Trip::Failed(format!("shard {} replied with unexpected candid: {e}", shard.canister)),
            Ok(Ok(Err(ApiError::ModelNotReady(_)))) => {
                // A shard that lost its part (reinstalled) gets it again.
                settings::mutate(|s| s.fan_out_pending = true);
                Trip::NotReady
            }
            Ok(Ok(Err(e))) => Trip::Refused(format!("shard {} refused the batch: {e:?}", shard.canister)),
            Ok(Ok(Ok(ShardReply::Behind { job, holds }))) => Trip::Behind(job, holds),
            Ok(Ok(Ok(ShardReply::Forwarded {
                hidden: out,
                instructions: used,
            }))) => {
                learn_cost(&model, shard, members[0].seq.pos0, total_rows, used);
                instructions += used;
                Trip::Done(out)
            }
        };
        match &mut trip {
            Trip::Done(out) => hidden = std::mem::take(out),
            _ => break,
        }
        instructions += Ic.instructions();
    }
    let all: Vec<JobId> = members.iter().map(|m| m.id).collect();
    match trip {
        Trip::Done(_) => match rows_from_bytes(&hidden, dim).filter(|r| r.len() == total_rows * dim) {
            Some(rows) => {
                // The batch's instructions are shared by rows, its messages
                // by jobs (each also pays the message that runs its head).
                let messages = messages.div_ceil(members.len() as u32);
                let mut at = 0;
                for m in &members {
                    let n = m.rows.len();
                    let share = instructions * (n / dim) as u64 / total_rows as u64;
                    state::mutate(|s| s.shard_failures.remove(&m.id));
                    jobs::pipeline_end(&Ic, &model, m.id, m.seq.pos0, &rows[at..at + n], share, messages);
                    at += n;
                }
            }
            None => all
                .iter()
                .for_each(|&id| jobs::fail(&Ic, id, "the last shard returned a hidden state of the wrong size")),
        },
        Trip::NotReady => {}
        Trip::Behind(job, holds) => {
            ic_cdk::println!("job {job}: a shard holds rows up to position {holds} only; going back there");
            jobs::pipeline_rewind(&model, job, holds)
        }
        // A refusal may concern one job of a group: the jobs go alone, and
        // a job alone fails with it.
        Trip::Refused(reason) if all.len() == 1 => jobs::fail(&Ic, all[0], &reason),
        Trip::Refused(reason) | Trip::Failed(reason) => {
            ic_cdk::println!("jobs {all:?}: batch abandoned: {reason}");
            for id in all {
                let in_a_row = state::mutate(|s| {
                    let f = s.shard_failures.entry(id).or_default();
                    *f += 1;
                    *f
                });
                if in_a_row >= MAX_SHARD_FAILURES {
                    state::mutate(|s| s.shard_failures.remove(&id));
                    let why = format!("{in_a_row} shard calls failed in a row, the last: {reason}");
                    jobs::fail(&Ic, id, &why);
                }
            }
        }
    }
}

/// Keeps the most instructions per multiply-add any shard reported.
fn learn_cost(model: &ModelRef, shard: &ShardRef, pos0: u32, n: usize, instructions: u64) {
    let ends = &model.model;
    let layers = (shard.end_layer - shard.first_layer) as u64;
    let macs = layers * (forward::attention_block_macs(ends, pos0, n) + forward::ffn_block_macs(ends, n));
    if macs > 0 {
        let per_mac = instructions as f64 / macs as f64;
        state::mutate(|s| s.shard_instructions_per_mac = s.shard_instructions_per_mac.max(per_mac));
    }
}

/// Tells every shard that the ended jobs' rows can go (one-way calls:
/// nothing waits; a shard that misses one keeps the rows until its slots
/// are reused or it is reinstalled).
pub fn send_releases() {
    let ids = state::mutate(|s| std::mem::take(&mut s.shard_releases));
    if ids.is_empty() {
        return;
    }
    for shard in shards() {
        let _ = Call::bounded_wait(shard.canister, "shard_release")
            .change_timeout(SHARD_CALL_TIMEOUT_SECONDS)
            .with_arg(&ids)
            .oneway();
    }
}

/// Bytes of the model file per upload call to a shard.
const FAN_OUT_CHUNK_BYTES: u64 = 1_900_000;

/// Byte ranges of the file a shard of layers `first..end` needs: the header
/// and its layers' tensors (and the RoPE factors).
pub fn shard_parts(gguf: &icllm_engine::format::gguf::Gguf, shard: &ShardRef) -> Result<Vec<(u64, u64)>, String> {
    let mut loader = ModelLoader::new(gguf).map_err(|e| e.to_string())?;
    let layers = shard.first_layer as usize..shard.end_layer as usize;
    loader
        .select_part(ModelPart::layers(layers))
        .map_err(|e| e.to_string())?;
    let mut parts = vec![(0, gguf.data_offset)];
    for t in loader.needed() {
        crate::ranges::insert(&mut parts, t.offset, t.offset + t.size);
    }
    Ok(parts)
}

/// Sends every shard its part of the active model, if that is pending and
/// not under way: a shard that has it (or is loading it) is skipped, one
/// that has some of it gets the rest. It stays pending until every shard
/// has loaded its part; jobs wait meanwhile and new ones are refused. A
/// failed attempt (a call, or a shard that could not load its part) is
/// tried again after [`fan_out_backoff_ns`]; once attempts have failed for
/// [`SHARDS_UNREADY_TIMEOUT_NS`], the waiting jobs fail with the reason
/// (later attempts go on, so a mended shard serves new jobs).
pub async fn fan_out() {
    let now = Ic.now_ns();
    let start = state::mutate(|s| {
        let waiting = s.fan_out_failure.as_ref().is_some_and(|f| now < f.retry_at_ns);
        !waiting && !std::mem::replace(&mut s.fan_out_running, true)
    });
    if !start {
        return;
    }
    let result = fan_out_all().await;
    state::mutate(|s| s.fan_out_running = false);
    match result {
        Ok(FanOut::Done) => {
            settings::mutate(|s| s.fan_out_pending = false);
            state::mutate(|s| s.fan_out_failure = None);
        }
        Ok(FanOut::Loading) => {}
        Err(e) => fan_out_failed(&Ic, e),
    }
}

/// How long sending the shards their parts may fail before the jobs
/// waiting for it fail.
pub const SHARDS_UNREADY_TIMEOUT_NS: u64 = 30 * 60 * 1_000_000_000;

/// The wait before attempt `attempts` + 1 after `attempts` failed in a row:
/// 10 s, doubling, at most 30 minutes.
pub fn fan_out_backoff_ns(attempts: u32) -> u64 {
    const FIRST_NS: u64 = 10 * 1_000_000_000;
    const MAX_NS: u64 = 30 * 60 * 1_000_000_000;
    // 10 s · 2^8 is past the cap already; more doublings would overflow.
    let doublings = attempts.saturating_sub(1).min(8);
    (FIRST_NS << doublings).min(MAX_NS)
}

fn fan_out_failed(env: &impl Env, reason: String) {
    let now = env.now_ns();
    let failure = state::mutate(|s| {
        let f = s.fan_out_failure.get_or_insert(state::FanOutFailure {
            since_ns: now,
            ..Default::default()
        });
        f.attempts += 1;
        f.reason = reason;
        f.retry_at_ns = now.saturating_add(fan_out_backoff_ns(f.attempts));
        f.clone()
    });
    ic_cdk::println!(
        "sending the shards their parts of the model (attempt {}): {}; again in {} s",
        failure.attempts,
        failure.reason,
        (failure.retry_at_ns - now) / 1_000_000_000
    );
    if now.saturating_sub(failure.since_ns) >= SHARDS_UNREADY_TIMEOUT_NS {
        let minutes = (now - failure.since_ns) / 60_000_000_000;
        let why = format!(
            "the shards have lacked their parts of the model for {minutes} minutes: {}",
            failure.reason
        );
        jobs::fail_all_active(env, &why);
    }
}

/// Why new jobs wait, while the shards are not all ready.
pub fn shards_not_ready() -> Option<String> {
    if !settings::read(|s| s.fan_out_pending) {
        return None;
    }
    Some(match state::read(|s| s.fan_out_failure.clone()) {
        None => "the shards are receiving or loading their parts of the model; try again shortly".into(),
        Some(f) => format!(
            "the shards lack their parts of the model: {} ({} attempts have failed)",
            f.reason, f.attempts
        ),
    })
}

/// Where the shards stand after one pass of [`fan_out_all`].
enum FanOut {
    /// Every shard has loaded its part.
    Done,
    /// Some shard is still verifying or loading what it was sent.
    Loading,
}

async fn fan_out_all() -> Result<FanOut, String> {
    let Some(slot) = settings::read(|s| s.active_model.clone()) else {
        return Ok(FanOut::Done);
    };
    let gguf = model_store::read_header(&slot)?;
    let mut outcome = FanOut::Done;
    let mut failed_loads = Vec::new();
    for shard in shards() {
        let parts = shard_parts(&gguf, &shard)?;
        let to = shard.canister;
        let status: ApiResult<UploadStatus> = call(to, "upload_status", &()).await?;
        let missing = match status {
            Ok(s) if s.sha256.as_ref() == Some(&slot.sha256) && s.size == slot.size => match s.state {
                UploadState::Done => continue,
                UploadState::Verifying | UploadState::Loading => {
                    outcome = FanOut::Loading;
                    continue;
                }
                UploadState::Receiving => s.missing,
                UploadState::Failed(reason) => {
                    // Sent again, but counted as a failure: a shard that
                    // cannot load its part is not sent it every tick.
                    failed_loads.push(format!("shard {to} could not load its part: {reason}"));
                    begin(to, &slot, &parts).await?
                }
                UploadState::Idle => begin(to, &slot, &parts).await?,
            },
            _ => begin(to, &slot, &parts).await?,
        };
        let blob = memory::model_slot(slot.slot);
        for (start, end) in missing {
            let mut at = start;
            while at < end {
                let n = (end - at).min(FAN_OUT_CHUNK_BYTES);
                let mut bytes = vec![0u8; n as usize];
                blob.read(at, &mut bytes);
                let r: ApiResult<UploadStatus> =
                    call(to, "upload_chunk", &(at, serde_bytes::ByteBuf::from(bytes))).await?;
                r.map_err(|e| format!("shard {to} refused a chunk at {at}: {e:?}"))?;
                at += n;
            }
        }
        let r: ApiResult<UploadStatus> = call(to, "upload_finalize", &()).await?;
        r.map_err(|e| format!("shard {to} could not finalize its part: {e:?}"))?;
        outcome = FanOut::Loading;
    }
    if failed_loads.is_empty() {
        Ok(outcome)
    } else {
        Err(failed_loads.join("; "))
    }
}

async fn begin(
    to: candid::Principal,
    slot: &settings::ModelSlot,
    parts: &[(u64, u64)],
) -> Result<Vec<(u64, u64)>, String> {
    let req = UploadBegin {
        size: slot.size,
        sha256: slot.sha256.clone(),
        parts: Some(parts.to_vec()),
    };
    let r: ApiResult<UploadStatus> = call(to, "upload_begin", &(req,)).await?;
    Ok(r.map_err(|e| format!("shard {to} refused the upload: {e:?}"))?.missing)
}

/// One bounded-wait call to a shard, its reply decoded.
async fn call<A: candid::utils::ArgumentEncoder, R: candid::CandidType + for<'a> candid::Deserialize<'a>>(
    to: candid::Principal,
    method: &str,
    args: &A,
) -> Result<R, String> {
    Call::bounded_wait(to, method)
        .change_timeout(SHARD_CALL_TIMEOUT_SECONDS)
        .with_args(args)
        .await
        .map_err(|e| format!("{method} on shard {to} failed: {e}"))?
        .candid::<R>()
        .map_err(|e| format!("{method} on shard {to} replied with unexpected candid: {e}"))
}

#[cfg(test)]
mod tests {
    use super::fan_out_backoff_ns;

    #[test]
    fn failed_fan_outs_wait_longer_each_time_up_to_half_an_hour() {
        let seconds = |attempts| fan_out_backoff_ns(attempts) / 1_000_000_000;
        assert_eq!([1, 2, 3, 4].map(seconds), [10, 20, 40, 80]);
        assert_eq!(seconds(8), 1280);
        assert_eq!(seconds(9), 1800);
        assert_eq!(seconds(64), 1800);
        assert_eq!(seconds(u32::MAX), 1800);
    }
}

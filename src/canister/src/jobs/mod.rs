//! Generation jobs: their life from a request to its end, one bounded step
//! at a time.
//!
//! A job's durable state is its record ([`records`]) plus the KV rows in
//! its slot ([`kv_slots`]); the heap keeps the engine `Job` of recently
//! stepped jobs ([`cache`]) and rebuilds it from the record and the slot
//! after an upgrade or an eviction. Every step ends with a checkpoint: the
//! KV rows it wrote, then the record. Every end (done, cancelled, failed)
//! goes through [`finish`].
//!
//! A request that continues a finished job (`continue_from`), or goes on
//! with one of the caller's kept conversations
//! ([`find_continued_conversation`]), adopts that job's slot: only its new
//! prompt tokens are prefilled.
//!
//! On the coordinator of a sharded model a job's step is a batch on its way
//! through the shards: [`pipeline_begin`] embeds it, [`pipeline_end`] runs
//! the head and checkpoints (see `sharding::coordinator`).
//!
//! Hot paths never scan the job table: `put` keeps three indexes in step
//! with each record (summaries by owner, finished records by finishing
//! time, per-owner counts), from which `list_jobs`, ownership checks, the
//! quotas, the per-caller and global caps and the time-to-live are served.

pub mod cache;
pub mod kv_slots;
pub mod records;

pub use kv_slots::{scan_active, Adopted, SlotClaim};
pub use records::{
    count, exists, get, get_hot, is_capability, list, owner_for, prune_old, prune_owner, rebuild_indexes_if_missing,
    JobRecord, CAPABILITY_BIT,
};

use crate::budget::MessageBudget;
use crate::completions::{self, OpenAiStart};
use crate::env::Env;
use crate::model_store::{LoadedModel, ModelRef};
use crate::settings::{self, KeptKv};
use crate::state;
use candid::Principal;
use icllm_api::{ApiError, ApiResult, JobId, JobRequest, JobStatus, JobView, KvCacheType, StepProgress};
use icllm_engine::chat::{encode_chat, ChatTemplate, Message};
use icllm_engine::job::{step, step_together, FinishReason, Job, JobState, KvType, Phase, PipelineBatch, StepOutcome};
use icllm_engine::model::Model;
use icllm_engine::sampler::SamplingParams;
use icllm_engine::tokenizer::StreamDecoder;
use records::put;

/// Cycles the IC charges per update message on top of its instructions.
pub const CYCLES_PER_MESSAGE: u128 = 5_000_000;

/// Cycles per instruction: 1, or 2 for a wasm64 canister
/// (`WASM64_INSTRUCTION_COST_OVERHEAD`, dfinity/ic `rs/config/src/subnet_config.rs`).
pub const CYCLES_PER_INSTRUCTION: u128 = if cfg!(target_arch = "wasm64") { 2 } else { 1 };

/// The engine's KV cache type for the interface's name of it.
pub fn engine_kv_type(t: KvCacheType) -> KvType {
    match t {
        KvCacheType::F32 => KvType::F32,
        KvCacheType::Q8 => KvType::Q8,
    }
}

/// The interface's name for an engine KV cache type.
pub fn api_kv_type(t: KvType) -> KvCacheType {
    match t {
        KvType::F32 => KvCacheType::F32,
        KvType::Q8 => KvCacheType::Q8,
    }
}

/// The job `id` that `caller` asks to continue, if it may: its own (else
/// `NotFound`, as for any job of another caller) and finished, done or
/// cancelled (a failed job's rows are not kept).
pub fn continuation_source(caller: Principal, id: JobId) -> ApiResult<JobRecord> {
    let rec = owner_for(caller, id)
        .and_then(|_| get_hot(id))
        .ok_or_else(|| crate::access::not_found(id))?;
    match &rec.status {
        s if s.is_active() => Err(ApiError::InvalidArgument(format!(
            "job {id} is still running: continue from it once it has finished (or cancel it first)"
        ))),
        JobStatus::Failed(_) => Err(ApiError::InvalidArgument(format!(
            "job {id} failed, and a failed job's KV rows are not kept: start without continue_from"
        ))),
        _ => Ok(rec),
    }
}

/// The slot and rows a new job of `owner` takes over from `continue_from`:
/// `None` when that job's slot is no longer kept (handed over already,
/// taken by another job, or the model changed); then nothing is cached.
fn find_reusable(
    model: &Model,
    owner: Principal,
    continue_from: JobId,
    job: &Job,
) -> ApiResult<Option<(Adopted, u32)>> {
    let old = continuation_source(owner, continue_from)?;
    let (want, have) = (job.state.kv_type(), old.engine.kv_type());
    if want != have {
        return Err(ApiError::InvalidArgument(format!(
            "job {continue_from} kept a {} KV cache but this request asks for {}: give the same kv_cache",
            have.name(),
            want.name()
        )));
    }
    Ok(kv_slots::kept_for(old.owner, continue_from).map(|slot| {
        let rows = job.adoptable_rows(model, &old.engine, old.kv_rows_saved);
        (
            Adopted {
                slot,
                from: continue_from,
            },
            rows,
        )
    }))
}

/// Without `continue_from`: the kept slot of one of `owner`'s finished jobs
/// whose tokens cover the longest prefix of the new prompt, provided that
/// prefix is at least half of the rows that job kept. Then the request goes
/// on with that conversation (a stateless client such as an OpenAI one
/// sends the whole history again each turn) rather than merely sharing a
/// system prompt with it, whose own continuation would lose its rows.
/// Anonymous callers share one principal, so theirs are never matched: the
/// cached count would tell one of them what another sent. The candidates
/// are the kept slots (at most the slot cap), not the job table.
fn find_continued_conversation(model: &Model, owner: Principal, job: &Job) -> Option<(Adopted, u32)> {
    if owner == Principal::anonymous() {
        return None;
    }
    kv_slots::kept_of(owner)
        .into_iter()
        .filter_map(|(slot, from)| {
            let old = get_hot(from)?;
            if old.engine.kv_type() != job.state.kv_type() {
                return None;
            }
            let rows = job.adoptable_rows(model, &old.engine, old.kv_rows_saved);
            (rows > 0 && 2 * rows >= old.kv_rows_saved).then_some((Adopted { slot, from }, rows))
        })
        .max_by_key(|(a, rows)| (*rows, a.from))
}

/// Validates a request and turns it into an engine job on `loaded`; with
/// `continue_from`, the job starts on the KV rows of that job's slot
/// ([`Adopted`], for [`insert_new`]).
pub fn create(
    loaded: &LoadedModel,
    owner: Principal,
    req: &JobRequest,
    openai: Option<&OpenAiStart>,
    seed: u64,
    now: u64,
) -> ApiResult<(JobRecord, Job, Option<Adopted>)> {
    let (limits, ctx_max) = settings::read(|s| (s.limits.clone(), s.kv_slot_ctx));
    if req.notify.is_some() && !is_canister(owner) {
        return Err(ApiError::InvalidArgument(
            "notify names a method of the calling canister: only canisters can be notified (users poll)".into(),
        ));
    }
    if req.max_tokens == 0 || req.max_tokens > limits.max_new_tokens {
        return Err(ApiError::InvalidArgument(format!(
            "max_tokens must be between 1 and {} (got {})",
            limits.max_new_tokens, req.max_tokens
        )));
    }
    let c = &loaded.model.config;
    let kv_type = engine_kv_type(req.kv_cache.unwrap_or_default());
    let kv_shape = kv_slots::job_shape(loaded);
    kv_shape.check(kv_type).map_err(ApiError::InvalidArgument)?;
    // The job's KV cache lives in the heap beside the weights while it runs.
    let kv_room = settings::read(|s| s.heap_budget()).saturating_sub(loaded.info.heap_bytes);
    let ctx_fits = kv_shape.max_ctx(kv_type, kv_room).min(u32::MAX as u64) as u32;
    // By default the trained context, capped so that four jobs' caches fit
    // the heap together (2,048 positions if only one does): a default that
    // filled the heap would make concurrent jobs evict and reload each
    // other's caches from stable memory every step.
    let ctx_default = (ctx_fits / 4).max(ctx_fits.min(2048));
    let ctx_size = req
        .ctx_size
        .unwrap_or((c.usable_context() as u32).min(ctx_max).min(ctx_default));
    if ctx_size == 0 || ctx_size > ctx_max {
        return Err(ApiError::InvalidArgument(format!(
            "ctx_size must be between 1 and {ctx_max} on this canister (got {ctx_size})"
        )));
    }
    if ctx_size > ctx_fits {
        return Err(ApiError::InvalidArgument(format!(
            "ctx_size {ctx_size} needs {} MiB of {} KV cache in the heap beside the model's {} MiB; \
             at most {ctx_fits} positions fit",
            kv_shape.heap_bytes(kv_type, ctx_size) >> 20,
            kv_type.name(),
            loaded.info.heap_bytes >> 20
        )));
    }
    let mut params = SamplingParams {
        temperature: req.temperature.unwrap_or(0.8),
        top_k: req.top_k.unwrap_or(40),
        top_p: req.top_p.unwrap_or(0.95),
        seed,
        ..SamplingParams::default()
    };
    if let Some(o) = openai {
        // OpenAI's sampling: temperature and top-p only, and its penalties.
        params.min_p = 0.0;
        params.presence_penalty = o.presence_penalty;
        params.frequency_penalty = o.frequency_penalty;
        params.logit_bias = o.logit_bias.clone();
    }
    params
        .validate()
        .map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
    let tok = &loaded.tokenizer;
    if req.prompt_tokens.is_none() {
        // Refused by its size before the tokenizer spends ~1 K instructions a byte on it.
        crate::bounds::check_prompt_fits(crate::bounds::prompt_text_bytes(req), loaded.max_piece_bytes, ctx_size)?;
    }
    let (prompt, stop_tokens) = match (&req.prompt_tokens, &req.messages) {
        (Some(_), _) if !req.prompt.is_empty() || req.messages.is_some() => {
            return Err(ApiError::InvalidArgument(
                "give one of prompt, messages and prompt_tokens".into(),
            ))
        }
        (Some(ids), _) => {
            if ids.len() >= ctx_size as usize {
                return Err(ApiError::InvalidArgument(format!(
                    "the prompt is {} tokens; the context holds {ctx_size}, leaving no room to generate",
                    ids.len()
                )));
            }
            let vocab = loaded.model.config.vocab_size;
            if let Some(bad) = ids.iter().find(|&&t| t as usize >= vocab) {
                return Err(ApiError::InvalidArgument(format!(
                    "prompt token {bad} is outside the vocabulary ({vocab})"
                )));
            }
            (ids.clone(), None)
        }
        (None, None) => (tok.encode(&req.prompt, tok.add_bos_default()), None),
        (None, Some(messages)) => {
            let builtin = match req.chat_template.as_deref() {
                Some(name) => {
                    Some(ChatTemplate::builtin_for(name, tok).map_err(|e| ApiError::InvalidArgument(e.to_string()))?)
                }
                None => None,
            };
            let template = loaded.chat_template.as_ref().or(builtin.as_ref()).ok_or_else(|| {
                ApiError::InvalidArgument(format!(
                    "the model file has no chat template: name a built-in one in `chat_template` ({}) or send `prompt` instead of `messages`",
                    icllm_engine::chat::builtin_template_names()
                ))
            })?;
            let messages: Vec<Message> = messages.iter().map(|m| Message::new(&m.role, &m.content)).collect();
            let (ids, stops) = encode_chat(tok, template, &messages)
                .map_err(|e| ApiError::InvalidArgument(format!("the chat template failed on these messages: {e}")))?;
            (ids, Some(stops))
        }
    };
    if prompt.is_empty() {
        return Err(ApiError::InvalidArgument(
            "the prompt encodes to no tokens and the model adds no BOS".into(),
        ));
    }
    if prompt.len() >= ctx_size as usize {
        return Err(ApiError::InvalidArgument(format!(
            "the prompt is {} tokens; the context holds {ctx_size}, leaving no room to generate",
            prompt.len()
        )));
    }
    let context_token = prompt.last().copied();
    make_room(loaded, kv_shape.heap_bytes(kv_type, ctx_size));
    let mut job = Job::with_kv_type(&loaded.model, prompt, params, req.max_tokens, ctx_size, kv_type)
        .map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
    if let Some(stops) = stop_tokens {
        job.set_stop_tokens(stops);
    }
    if let Some(top_n) = openai.and_then(|o| o.logprobs) {
        job.keep_logprobs(top_n as usize)
            .map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
    }
    // A coordinator's rows are on its shards, under the id of the job that
    // wrote them: its jobs start from position 0.
    let adopted = match (req.continue_from, crate::sharding::is_coordinator()) {
        (Some(from), true) => continuation_source(owner, from).map(|_| None)?,
        (None, true) => None,
        (Some(from), false) => find_reusable(&loaded.model, owner, from, &job)?,
        (None, false) => find_continued_conversation(&loaded.model, owner, &job),
    };
    let cached = adopted.map_or(0, |(_, rows)| rows);
    if let Some((a, rows)) = adopted {
        kv_slots::load_rows(&mut job.kv, a.slot, rows);
        job.skip_cached_prefix(rows)
            .map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
    }
    let rec = JobRecord {
        id: 0, // assigned by `insert_new`, so that refused requests use no id

        owner,
        status: JobStatus::Queued,
        engine: job.state.clone(),
        kv_slot: None,
        kv_rows_saved: cached,
        text: String::new(),
        text_ends: Vec::new(),
        decoder: StreamDecoder::new(tok, context_token),
        messages: 0,
        instructions: 0,
        prompt_instructions: 0,
        max_message_instructions: 0,
        created_at_ns: now,
        updated_at_ns: now,
        openai: openai.map(|o| o.job.clone()),
        tokens_until_stop: None,
        cached_prompt_tokens: cached,
        notify: req.notify.clone(),
    };
    Ok((rec, job, adopted.map(|(a, _)| a)))
}

/// Stores a new job under `claim`: gives it its id (`capability`, a random
/// id for anonymous callers, or the next in sequence) and a KV slot (the
/// `adopted` one if it is still kept: its rows are the job's first ones).
pub fn insert_new(
    mut rec: JobRecord,
    job: Job,
    adopted: Option<Adopted>,
    claim: SlotClaim,
    capability: Option<JobId>,
) -> ApiResult<JobId> {
    if let Some(id) = capability {
        if exists(id) {
            return Err(ApiError::QuotaExceeded("a random job id collided; try again".into()));
        }
    }
    let next_id = |s: &mut settings::Settings| {
        capability.unwrap_or_else(|| {
            let id = s.next_job_id;
            s.next_job_id += 1;
            id
        })
    };
    let (id, slot) = kv_slots::occupy(next_id, adopted, rec.cached_prompt_tokens)?;
    rec.id = id;
    rec.kv_slot = Some(slot);
    put(&rec);
    drop(claim); // the job itself now counts against the quotas
    state::mutate(|s| s.active.insert(id));
    cache::insert(id, job, rec);
    Ok(id)
}

/// Canister ids are opaque principals (their last byte is 0x01).
fn is_canister(p: Principal) -> bool {
    p.as_slice().last() == Some(&0x01)
}

/// Ends job `rec` with `status` (done, cancelled or failed) at `now`: it
/// leaves the scheduler's list and the cache, gives up its KV slot (a done
/// or cancelled job's rows stay there for a continuation until a new job
/// needs the slot; a failed job's are freed), queues its owner's
/// notification (sent by the scheduler's next message; whoever ends a job
/// arms it). The caller stores the record.
fn finish(rec: &mut JobRecord, status: JobStatus, now: u64) {
    debug_assert!(!status.is_active());
    rec.status = status;
    rec.updated_at_ns = now;
    if let Some(slot) = rec.kv_slot.take() {
        let keep = matches!(rec.status, JobStatus::Done(_) | JobStatus::Cancelled);
        let kept = keep.then_some(KeptKv {
            job: rec.id,
            owner: rec.owner,
            since: now,
        });
        kv_slots::release(slot, kept);
    }
    cache::remove(rec.id);
    let sharded = crate::sharding::is_coordinator();
    state::mutate(|s| {
        s.active.remove(&rec.id);
        if sharded {
            s.shard_releases.push(rec.id);
        }
        if let Some(method) = rec.notify.clone() {
            s.notifications.push((rec.owner, method, rec.id, rec.status.clone()));
        }
    });
}

pub fn cancel(env: &impl Env, id: JobId) -> ApiResult<JobStatus> {
    let mut rec = get(id).ok_or_else(|| crate::access::not_found(id))?;
    if rec.status.is_active() {
        finish(&mut rec, JobStatus::Cancelled, env.now_ns());
        put(&rec);
    }
    Ok(rec.status)
}

/// Fails one active job with `reason`.
pub fn fail(env: &impl Env, id: JobId, reason: &str) {
    if let Some(mut rec) = get(id).filter(|r| r.status.is_active()) {
        finish(&mut rec, JobStatus::Failed(reason.to_string()), env.now_ns());
        put(&rec);
    }
}

/// Fails every active job (the model they ran on was replaced).
pub fn fail_all_active(env: &impl Env, reason: &str) {
    for id in state::read(|s| s.active.iter().copied().collect::<Vec<_>>()) {
        fail(env, id, reason);
    }
}

/// Takes the engine job out of the cache, or rebuilds it from its record
/// and KV slot, with room for `in_hand` bytes of KV caches already taken
/// out for the same step; the caller puts it back.
fn take_job(model: &LoadedModel, rec: &JobRecord, in_hand: u64) -> Job {
    if let Some(job) = cache::take(rec.id) {
        return job;
    }
    make_room(
        model,
        in_hand + kv_slots::job_shape(model).heap_bytes(rec.engine.kv_type(), rec.engine.ctx_size()),
    );
    kv_slots::restore(model, rec)
}

/// Evicts cached jobs until a KV cache of `bytes` more fits the heap
/// beside the weights and the cached jobs' caches
/// ([`settings::Settings::heap_budget`]).
fn make_room(model: &LoadedModel, bytes: u64) {
    let room = settings::read(|s| s.heap_budget()).saturating_sub(model.info.heap_bytes);
    cache::make_room(room, bytes);
}

/// Advances job `rec` under `budget`, then checkpoints. The whole message
/// (as `env` counts it) is charged to the job.
pub fn step_job<F: Fn() -> u64>(
    env: &impl Env,
    model: &ModelRef,
    rec: JobRecord,
    budget: &mut MessageBudget<F>,
) -> ApiResult<StepProgress> {
    Ok(step_jobs(env, model, vec![rec], budget)
        .pop()
        .expect("one record, one progress"))
}

/// Advances the jobs of `recs` together under `budget` (the engine's
/// `step_together`: the generating ones share each pass over the weights),
/// then checkpoints each. The message's instructions are charged to the
/// jobs in proportion to the multiply-adds each ran. One progress per
/// record, in order; a job that is not active, or is being stepped by
/// another message, makes none.
pub fn step_jobs<F: Fn() -> u64>(
    env: &impl Env,
    model: &ModelRef,
    recs: Vec<JobRecord>,
    budget: &mut MessageBudget<F>,
) -> Vec<StepProgress> {
    let mut idle: Vec<(usize, StepProgress)> = Vec::new();
    let mut taken: Vec<(usize, JobRecord, Job, state::JobGuard)> = Vec::new();
    let mut in_hand = 0;
    for (i, rec) in recs.into_iter().enumerate() {
        let guard = match rec.status.is_active() {
            true => state::JobGuard::acquire(rec.id),
            false => None,
        };
        let Some(guard) = guard else {
            idle.push((i, progress(&rec, 0, 0, 0)));
            continue;
        };
        let job = take_job(model, &rec, in_hand);
        in_hand += job.kv.heap_bytes();
        taken.push((i, rec, job, guard));
    }
    let before: Vec<(usize, bool)> = taken
        .iter()
        .map(|(_, _, job, _)| (job.state.generated().len(), is_prefilling(&job.state)))
        .collect();
    let reports = match taken.as_mut_slice() {
        [] => Vec::new(),
        [(_, _, job, _)] => vec![step(&model.model, job, budget)],
        many => {
            let mut group: Vec<&mut Job> = many.iter_mut().map(|(_, _, job, _)| job).collect();
            step_together(&model.model, &mut group, budget)
        }
    };
    let mut ended: Vec<(usize, JobRecord, Option<Job>, u32, state::JobGuard)> = Vec::new();
    for ((i, rec, job, guard), (report, &(generated, _))) in taken.into_iter().zip(reports.iter().zip(&before)) {
        let (rec, keep, new_tokens) = conclude(env, model, rec, job, &report.outcome, generated);
        ended.push((i, rec, keep, new_tokens, guard));
    }
    // Accounting: the units' instructions by phase; the rest of the step
    // (restoring, decoding text, checkpointing) goes to the phase of its
    // last unit. Several jobs share the message by multiply-adds.
    let last_phase = budget.finish();
    let used = env.instructions();
    let total_macs: u64 = reports.iter().map(|r| r.macs).sum();
    let n = ended.len() as u64;
    let mut out = idle;
    for ((i, mut rec, keep, new_tokens, guard), (report, &(_, was_prefilling))) in
        ended.into_iter().zip(reports.iter().zip(&before))
    {
        let (charged, prompt_part) = if n == 1 {
            let overhead = used.saturating_sub(budget.prefill_instructions + budget.decode_instructions);
            let overhead_is_prefill = last_phase.map_or(was_prefilling, |p| p == Phase::Prefill);
            (
                used,
                budget.prefill_instructions + if overhead_is_prefill { overhead } else { 0 },
            )
        } else {
            let share = match total_macs {
                0 => used / n,
                _ => (used as u128 * report.macs as u128 / total_macs as u128) as u64,
            };
            (share, if was_prefilling { share } else { 0 })
        };
        rec.messages += 1;
        rec.instructions += charged;
        rec.prompt_instructions += prompt_part;
        rec.max_message_instructions = rec.max_message_instructions.max(used);
        put(&rec);
        out.push((i, progress(&rec, report.units, new_tokens, charged)));
        if let Some(job) = keep {
            cache::insert(rec.id, job, rec);
        }
        drop(guard);
    }
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, p)| p).collect()
}

/// After a step of `job` that ended with `outcome`: the text of the tokens
/// generated since `before_generated`, the checkpoint of the KV rows the
/// step wrote, the record's new status (a stop string ends the job). The
/// record, the job if it goes on (for the cache), and the new tokens.
fn conclude(
    env: &impl Env,
    model: &ModelRef,
    mut rec: JobRecord,
    mut job: Job,
    outcome: &StepOutcome,
    before_generated: usize,
) -> (JobRecord, Option<Job>, u32) {
    // Text of the new tokens.
    let searched_text = rec.text.len();
    let new_tokens: Vec<u32> = job.state.generated()[before_generated..].to_vec();
    for &t in &new_tokens {
        let piece = rec.decoder.push(&model.tokenizer, t);
        rec.text.push_str(&piece);
        rec.text_ends.push(rec.text.len() as u32);
    }

    // Checkpoint: the KV rows this step wrote, then (by the caller) the record.
    if let (Some(slot), Some(dirty)) = (rec.kv_slot, job.kv.take_dirty()) {
        kv_slots::save_rows(&job.kv, slot, dirty.clone());
        rec.kv_rows_saved = rec.kv_rows_saved.max(dirty.end);
    }
    rec.engine = job.state.clone();
    let status = match outcome {
        StepOutcome::Yielded if is_prefilling(&rec.engine) => JobStatus::Prefilling,
        StepOutcome::Yielded => JobStatus::Generating,
        StepOutcome::Finished(reason) => {
            let tail = rec.decoder.finish();
            rec.text.push_str(&tail);
            if let Some(last) = rec.text_ends.last_mut() {
                *last = rec.text.len() as u32;
            }
            JobStatus::Done(finish_name(reason).into())
        }
        StepOutcome::Failed(e) => JobStatus::Failed(e.clone()),
    };
    // A stop string ends the job; the text ends before it.
    let stops = rec.openai.as_ref().map_or(&[][..], |o| o.stop.as_slice());
    let status = match completions::find_stop(&rec.text, searched_text, stops) {
        Some((cut, end)) if !matches!(status, JobStatus::Failed(_)) => {
            let completing = rec.text_ends.iter().position(|&e| e as usize >= end);
            rec.tokens_until_stop = completing.map(|i| i as u32 + 1);
            rec.text.truncate(cut);
            for end in rec.text_ends.iter_mut() {
                *end = (*end).min(cut as u32);
            }
            JobStatus::Done("stop".into())
        }
        _ => status,
    };
    let now = env.now_ns();
    rec.updated_at_ns = now;
    let keep = if status.is_active() {
        rec.status = status;
        Some(job)
    } else {
        finish(&mut rec, status, now);
        None
    };
    (rec, keep, new_tokens.len() as u32)
}

/// On a coordinator: the next batch of job `id` to send through the shards
/// (the engine's `Job::pipeline_batch`, at most `max_n(position)` tokens),
/// with the job's context and KV type; `None` if the job is not active or
/// has nothing to send.
pub fn pipeline_begin(
    model: &ModelRef,
    id: JobId,
    max_n: impl FnOnce(u32) -> usize,
) -> Option<Result<(PipelineBatch, u32, KvType), String>> {
    let rec = get_hot(id).filter(|r| r.status.is_active())?;
    let job = take_job(model, &rec, 0);
    let batch = job.pipeline_batch(&model.model, max_n(job.state.cursor().pos));
    let geometry = (job.state.ctx_size(), job.state.kv_type());
    cache::insert(id, job, rec);
    match batch {
        Ok(Some(b)) => Some(Ok((b, geometry.0, geometry.1))),
        Ok(None) => None,
        Err(e) => Some(Err(e)),
    }
}

/// On a coordinator: the batch of job `id` at `pos0` came back from the
/// last shard as `hidden`; the head samples, then the job is checkpointed
/// as after a step. `instructions` and `messages` are those the batch took
/// before this message (the coordinator's earlier messages and the
/// shards'). A batch the job is no longer at (it was rewound, cancelled)
/// changes nothing.
pub fn pipeline_end(
    env: &impl Env,
    model: &ModelRef,
    id: JobId,
    pos0: u32,
    hidden: &[f32],
    instructions: u64,
    messages: u32,
) {
    let Some(rec) = get_hot(id).filter(|r| r.status.is_active()) else {
        return;
    };
    let mut job = take_job(model, &rec, 0);
    let before = job.state.generated().len();
    let was_prefilling = is_prefilling(&job.state);
    let report = match job.pipeline_finish(&model.model, pos0, hidden) {
        Ok(r) => r,
        Err(_) => return cache::insert(id, job, rec),
    };
    let (mut rec, keep, _) = conclude(env, model, rec, job, &report.outcome, before);
    let used = instructions + env.instructions();
    rec.messages += messages as u64 + 1;
    rec.instructions += used;
    if was_prefilling {
        rec.prompt_instructions += used;
    }
    rec.max_message_instructions = rec.max_message_instructions.max(env.instructions());
    put(&rec);
    if let Some(job) = keep {
        cache::insert(rec.id, job, rec);
    }
}

/// On a coordinator: job `id` goes back to position `holds` (a shard holds
/// no rows after it), see the engine's `Job::pipeline_rewind`.
pub fn pipeline_rewind(model: &ModelRef, id: JobId, holds: u32) {
    let Some(mut rec) = get_hot(id).filter(|r| r.status.is_active()) else {
        return;
    };
    let mut job = take_job(model, &rec, 0);
    job.pipeline_rewind(holds);
    rec.engine = job.state.clone();
    put(&rec);
    cache::insert(id, job, rec);
}

/// Whether job `rec` can take part in a group step: it generates one
/// token at a time.
pub fn steps_together(model: &ModelRef, rec: &JobRecord) -> bool {
    rec.status.is_active() && rec.engine.can_step_together(&model.model)
}

/// A job is prefilling until its first token is sampled.
fn is_prefilling(s: &JobState) -> bool {
    s.generated().is_empty() && s.finish_reason().is_none()
}

pub(crate) fn finish_name(r: &FinishReason) -> &'static str {
    match r {
        FinishReason::Eos => "eos",
        FinishReason::MaxTokens => "max_tokens",
        FinishReason::ContextFull => "context_full",
    }
}

fn progress(rec: &JobRecord, units: u32, new_tokens: u32, instructions: u64) -> StepProgress {
    StepProgress {
        status: rec.status.clone(),
        units,
        new_tokens,
        generated_tokens: rec.engine.generated().len() as u32,
        instructions,
    }
}

/// The job as `poll` shows it, with only the tokens from index `since` on
/// (and their log-probabilities, if it keeps them and `piece` is given, as
/// for [`completions::completion`]).
pub fn view(rec: &JobRecord, since: u32, piece: Option<&dyn Fn(u32) -> Vec<u8>>) -> JobView {
    let generated = rec.engine.generated();
    let since = (since as usize).min(generated.len());
    let text_from = if since == 0 {
        0
    } else {
        rec.text_ends[since - 1] as usize
    };
    JobView {
        id: rec.id,
        status: rec.status.clone(),
        text: rec.text[text_from.min(rec.text.len())..].to_string(),
        tokens: generated[since..].to_vec(),
        next_since: generated.len() as u32,
        prompt_tokens: rec.engine.prompt().len() as u32,
        prompt_tokens_processed: (rec.engine.cursor().pos as usize).min(rec.engine.prompt().len()) as u32,
        cached_prompt_tokens: Some(rec.cached_prompt_tokens),
        generated_tokens: generated.len() as u32,
        messages: rec.messages,
        instructions: rec.instructions,
        cycles: rec.instructions as u128 * CYCLES_PER_INSTRUCTION + rec.messages as u128 * CYCLES_PER_MESSAGE,
        max_message_instructions: rec.max_message_instructions,
        prompt_instructions: rec.prompt_instructions,
        created_at_ns: rec.created_at_ns,
        updated_at_ns: rec.updated_at_ns,
        logprobs: rec
            .engine
            .logprobs()
            .zip(piece)
            .map(|(kept, piece)| completions::token_logprobs(kept, &generated[since..], since, piece)),
    }
}

/// Deletes job `id` of `owner` (cancelling it first if unfinished).
pub fn delete(env: &impl Env, owner: Principal, id: JobId) -> ApiResult<()> {
    cancel(env, id)?;
    if records::remove(owner, id) {
        Ok(())
    } else {
        Err(crate::access::not_found(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::FakeEnv;
    use crate::scheduler::reserve;
    use crate::test_support::{activate_upload, env_at, store_blob, stories260k};
    use icllm_engine::job::Unlimited;

    const SECOND: u64 = 1_000_000_000;

    fn request(kv_cache: KvCacheType) -> JobRequest {
        JobRequest {
            prompt: "Joe loves writing stories".into(),
            max_tokens: 24,
            temperature: Some(0.0),
            kv_cache: Some(kv_cache),
            ..JobRequest::default()
        }
    }

    fn start(env: &FakeEnv, model: &LoadedModel, owner: Principal, req: &JobRequest) -> JobId {
        let claim = SlotClaim::take(owner, false).unwrap();
        let (rec, job, adopted) = create(model, owner, req, None, 7, env.now_ns()).unwrap();
        insert_new(rec, job, adopted, claim, None).unwrap()
    }

    /// The tokens the engine generates for `req` in one go, with no slot,
    /// cache or checkpoint in between.
    fn alone(model: &LoadedModel, req: &JobRequest) -> Vec<u32> {
        let (_, mut job, _) = create(model, Principal::anonymous(), req, None, 7, 0).unwrap();
        let report = step(&model.model, &mut job, &mut Unlimited);
        assert!(
            matches!(report.outcome, StepOutcome::Finished(_)),
            "{:?}",
            report.outcome
        );
        job.state.generated().to_vec()
    }

    /// One message of `limit` instructions, `elapsed` after the last.
    fn step_message(env: &FakeEnv, model: &ModelRef, id: JobId, limit: u64) -> StepProgress {
        env.next_message(SECOND);
        let mut budget = MessageBudget::new(|| env.instructions(), limit, reserve(limit));
        step_job(env, model, get_hot(id).unwrap(), &mut budget).unwrap()
    }

    fn owner(n: u8) -> Principal {
        Principal::from_slice(&[n; 29])
    }

    #[test]
    fn a_job_stepped_in_small_messages_generates_what_the_engine_generates_in_one_go() {
        for kv in [KvCacheType::F32, KvCacheType::Q8] {
            let env = env_at(1_000 * SECOND);
            let model = activate_upload(&env, store_blob(0, &stories260k()));
            let req = request(kv);
            let id = start(&env, &model, owner(1), &req);
            let limit = 5_000_000;
            let mut messages = 0;
            // Every other message the heap cache is emptied, as an eviction
            // or an upgrade would: the job resumes from its KV slot.
            while get(id).unwrap().status.is_active() {
                if messages % 2 == 1 {
                    cache::clear();
                }
                let p = step_message(&env, &model, id, limit);
                assert!(p.units > 0, "every message makes progress");
                messages += 1;
                assert!(messages < 200);
            }
            let rec = get(id).unwrap();
            assert_eq!(rec.status, JobStatus::Done("max_tokens".into()));
            assert_eq!(rec.engine.generated(), alone(&model, &req).as_slice(), "{kv:?}");
            assert!(messages > 3, "the job spanned several messages ({messages})");
            assert_eq!(rec.messages, messages);
            assert_eq!(rec.updated_at_ns, env.now_ns());
            assert!(rec.max_message_instructions <= limit);
            assert!(rec.instructions > rec.prompt_instructions && rec.prompt_instructions > 0);
        }
    }

    /// On a model whose sliding layers keep a ring of 192 rows (window 16),
    /// a job that runs far past it in small messages, its heap copy evicted
    /// every other message (so it is rebuilt from its slot, whose sliding
    /// regions wrap), generates bit for bit what the engine generates in
    /// one go with a cache that keeps every position.
    #[test]
    fn a_ring_job_checkpointed_in_small_messages_generates_what_a_full_cache_does() {
        use crate::test_support::sliding_stories;
        use icllm_engine::job::{KvCache, KvShape, Unlimited};
        use icllm_engine::kv::Which;
        let env = env_at(1_000 * SECOND);
        // Past stories260K's trained 128 positions, as llama.cpp allows.
        settings::mutate(|s| s.max_context = Some(512));
        let model = activate_upload(&env, store_blob(0, &sliding_stories(16)));
        let rows = settings::read(|s| s.kv_layer_rows.clone());
        assert_eq!(rows, [192, 192, 512, 192, 192]);
        for kv in [KvCacheType::F32, KvCacheType::Q8] {
            let req = JobRequest {
                max_tokens: 300,
                ctx_size: Some(512),
                ..request(kv)
            };
            let id = start(&env, &model, owner(1), &req);
            let mut messages = 0;
            while get(id).unwrap().status.is_active() {
                if messages % 2 == 1 {
                    cache::clear();
                }
                step_message(&env, &model, id, 8_000_000);
                messages += 1;
            }
            let (_, mut full, _) = create(&model, owner(9), &req, None, 7, 0).unwrap();
            full.kv = KvCache::with_type(KvShape::of(&model.model.config), 512, full.kv.kv_type()).unwrap();
            assert!(matches!(
                step(&model.model, &mut full, &mut Unlimited).outcome,
                StepOutcome::Finished(_)
            ));
            let rec = get(id).unwrap();
            assert_eq!(rec.status, JobStatus::Done("max_tokens".into()), "{kv:?}");
            assert_eq!(
                rec.engine.generated(),
                full.state.generated(),
                "{kv:?} after {messages} messages"
            );
            assert!(rec.engine.generated().len() + rec.engine.prompt().len() > 300);
            // The checkpoint in its (kept) slot holds the full cache's rows of
            // every position each layer keeps, bit for bit.
            let slot = settings::read(|s| s.kv_kept.iter().find(|(_, k)| k.job == id).map(|(&slot, _)| slot));
            let mut saved = KvCache::with_type(kv_slots::job_shape(&model), 512, full.kv.kv_type()).unwrap();
            kv_slots::load_rows(&mut saved, slot.unwrap(), rec.kv_rows_saved);
            for layer in 0..saved.n_layers() {
                let kept = saved.shape().kept(layer, rec.kv_rows_saved);
                assert!(layer == 2 || kept.start >= 192, "layer {layer} slides: {kept:?}");
                for which in [Which::K, Which::V] {
                    let (mut a, mut b) = (Vec::new(), Vec::new());
                    saved.encode_rows(layer, kept.clone(), which, &mut a);
                    full.kv.encode_rows(layer, kept.clone(), which, &mut b);
                    assert!(a == b, "{kv:?} layer {layer} {which:?}");
                }
            }
        }
    }

    #[test]
    fn every_end_stamps_its_time_and_only_a_failed_job_loses_its_kv_rows() {
        let env = env_at(1_000 * SECOND);
        let model = activate_upload(&env, store_blob(0, &stories260k()));
        let req = request(KvCacheType::F32);
        let (cancelled, failed, done) = (
            start(&env, &model, owner(1), &req),
            start(&env, &model, owner(2), &req),
            start(&env, &model, owner(3), &req),
        );
        let slot_of = |id| get(id).unwrap().kv_slot.unwrap();
        let slots = [slot_of(cancelled), slot_of(failed), slot_of(done)];
        assert_eq!(state::read(|s| s.active.len()), 3);

        env.next_message(5 * SECOND);
        assert_eq!(cancel(&env, cancelled), Ok(JobStatus::Cancelled));
        let at_cancel = env.now_ns();
        env.next_message(5 * SECOND);
        fail(&env, failed, "a test failed it");
        let at_fail = env.now_ns();
        while get(done).unwrap().status.is_active() {
            step_message(&env, &model, done, 40_000_000);
        }
        let at_done = env.now_ns();

        let expect = [
            (cancelled, JobStatus::Cancelled, at_cancel, true),
            (failed, JobStatus::Failed("a test failed it".into()), at_fail, false),
            (done, JobStatus::Done("max_tokens".into()), at_done, true),
        ];
        for ((id, status, at, kept), slot) in expect.into_iter().zip(slots) {
            let rec = get(id).unwrap();
            assert_eq!(
                (&rec.status, rec.updated_at_ns, rec.kv_slot),
                (&status, at, None),
                "job {id}"
            );
            let kept_as = settings::read(|s| s.kv_kept.get(&slot).cloned());
            let want = kept.then_some(KeptKv {
                job: id,
                owner: rec.owner,
                since: at,
            });
            assert_eq!(kept_as, want, "job {id}");
            assert_eq!(settings::read(|s| s.kv_slots[slot as usize]), None);
            assert!(cache::record(id).is_none());
        }
        assert!(state::read(|s| s.active.is_empty()));
        // Ending again changes nothing, the time included.
        env.next_message(SECOND);
        assert_eq!(cancel(&env, done), Ok(JobStatus::Done("max_tokens".into())));
        fail(&env, cancelled, "too late");
        assert_eq!(get(cancelled).unwrap().updated_at_ns, at_cancel);
        assert_eq!(get(cancelled).unwrap().status, JobStatus::Cancelled);
    }

    #[test]
    fn finished_records_expire_by_the_clock_they_finished_on() {
        let env = env_at(1_000 * SECOND);
        let model = activate_upload(&env, store_blob(0, &stories260k()));
        let id = start(&env, &model, owner(1), &request(KvCacheType::F32));
        env.next_message(SECOND);
        cancel(&env, id).unwrap();
        let ttl = 60 * SECOND;
        prune_old(env.now_ns() + ttl, ttl, 1_000, 8);
        assert!(exists(id), "not older than the time-to-live yet");
        prune_old(env.now_ns() + ttl + 1, ttl, 1_000, 8);
        assert!(!exists(id));
        assert_eq!((count(), list(Some(owner(1))).len()), (0, 0));
        assert_eq!(records::owner_counts(owner(1)), (0, 0));
    }
}

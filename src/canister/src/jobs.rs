//! Generation jobs: the durable record, the KV slots, and one bounded step.
//!
//! A job's durable state is its [`JobRecord`] (CBOR in `memory::JOBS`) plus
//! the KV rows in its slot of `memory::KV`. The heap keeps the engine `Job`
//! (with the full KV cache) of recently stepped jobs as a cache; after an
//! upgrade, or after eviction, it is rebuilt from the record and the slot.
//! Every step ends with a checkpoint: the KV rows it wrote and the record.
//!
//! A done or cancelled job's slot keeps its rows (`Settings::kv_kept`) for
//! a job that continues it (`continue_from`): that job adopts the slot, so
//! the rows are handed over, never copied, and only its new prompt tokens
//! are prefilled. Without `continue_from`, a request that goes on with one
//! of the caller's kept conversations adopts it the same way
//! ([`find_continued_conversation`]). Kept rows never block a new job: it
//! takes an empty slot, a new one under the cap, or else the slot kept
//! longest.
//!
//! Hot paths never scan the job table: `put` keeps three indexes in step
//! with each record (summaries by owner, finished records by finishing
//! time, per-owner counts), from which `list_jobs`, ownership checks, the
//! quotas, the per-caller and global caps and the time-to-live are served.

use crate::budget::MessageBudget;
use crate::completions::{self, OpenAiJob, OpenAiStart};
use crate::memory::{self, Memory};
use crate::model_store::{LoadedModel, ModelRef};
use crate::scheduler;
use crate::settings::{self, Cbor};
use crate::state::{self, CachedJob};
use candid::Principal;
use ic_stable_structures::{Memory as _, StableBTreeMap};
use icllm_api::{ApiError, ApiResult, JobId, JobRequest, JobStatus, JobSummary, JobView, KvCacheType, StepProgress};
use icllm_engine::chat::{encode_chat, ChatTemplate, Message};
use icllm_engine::job::{step, FinishReason, Job, JobState, KvCache, KvShape, KvType, Phase, StepOutcome};
use icllm_engine::kv::Which;
use icllm_engine::sampler::SamplingParams;
use icllm_engine::tokenizer::StreamDecoder;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;

/// Cycles the IC charges per update message on top of 1 per instruction.
pub const CYCLES_PER_MESSAGE: u128 = 5_000_000;
/// Engine jobs kept in the heap cache at most.
const MAX_CACHED_JOBS: usize = 64;

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
    state::read(|s| s.job_cache.get(&id).map(|c| c.record.clone())).or_else(|| get(id))
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
fn put(rec: &JobRecord) {
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
fn remove(owner: Principal, id: JobId) -> bool {
    let Some(s) = BY_OWNER.with(|b| b.borrow_mut().remove(&(owner, id))) else {
        return false;
    };
    JOBS.with(|j| j.borrow_mut().remove(&id));
    forget_kept(id);
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

/// Ids of unfinished jobs, for rebuilding the scheduler's list after an
/// upgrade: each holds a KV slot, so the slot table lists them all.
pub fn scan_active() -> Vec<JobId> {
    settings::read(|s| s.kv_slots.iter().flatten().copied().collect())
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

/// A finished job's KV slot that a new job takes over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Adopted {
    pub slot: u32,
    /// The job that left its rows there.
    pub from: JobId,
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
fn find_reusable(owner: Principal, continue_from: JobId, job: &Job) -> ApiResult<Option<(Adopted, u32)>> {
    let old = continuation_source(owner, continue_from)?;
    let (want, have) = (job.state.kv_type(), old.engine.kv_type());
    if want != have {
        return Err(ApiError::InvalidArgument(format!(
            "job {continue_from} kept a {} KV cache but this request asks for {}: give the same kv_cache",
            have.name(),
            want.name()
        )));
    }
    let slot = settings::read(|s| {
        s.kv_kept
            .iter()
            .find(|(_, k)| k.job == continue_from && k.owner == old.owner)
            .map(|(&slot, _)| slot)
    });
    Ok(slot.map(|slot| {
        let rows = (old.engine.reusable_prefix(job.state.prompt()) as u32).min(old.kv_rows_saved);
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
fn find_continued_conversation(owner: Principal, job: &Job) -> Option<(Adopted, u32)> {
    if owner == Principal::anonymous() {
        return None;
    }
    let kept: Vec<(u32, JobId)> = settings::read(|s| {
        s.kv_kept
            .iter()
            .filter(|(_, k)| k.owner == owner)
            .map(|(&slot, k)| (slot, k.job))
            .collect()
    });
    kept.into_iter()
        .filter_map(|(slot, from)| {
            let old = get_hot(from)?;
            if old.engine.kv_type() != job.state.kv_type() {
                return None;
            }
            let rows = (old.engine.reusable_prefix(job.state.prompt()) as u32).min(old.kv_rows_saved);
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
    let kv_type = match req.kv_cache.unwrap_or_default() {
        KvCacheType::F32 => KvType::F32,
        KvCacheType::Q8 => KvType::Q8,
    };
    let kv_shape = KvShape::of(c);
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
        .unwrap_or((c.context_length as u32).min(ctx_max).min(ctx_default));
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
    let adopted = match req.continue_from {
        Some(from) => find_reusable(owner, from, &job)?,
        None => find_continued_conversation(owner, &job),
    };
    let cached = adopted.map_or(0, |(_, rows)| rows);
    if let Some((a, rows)) = adopted {
        load_rows(&mut job.kv, a.slot, rows);
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

/// Why no KV slot is free, in words a caller (or a controller) can act on.
fn no_slot_reason(s: &settings::Settings) -> String {
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
fn slot_cap(s: &settings::Settings) -> u32 {
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
fn pick_slot(s: &settings::Settings, adopted: Option<Adopted>) -> u32 {
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
    let free = settings::read(|s| pick_slot(s, adopted)) as usize;
    if adopted.is_some_and(|a| a.slot as usize != free) && rec.cached_prompt_tokens > 0 {
        // `create` read rows from a slot that is not this job's after all.
        return Err(ApiError::InvalidArgument(
            "the continued job's KV slot was taken meanwhile; try again".into(),
        ));
    }
    let slot_bytes = settings::read(|s| s.kv_slot_bytes);
    if !memory::ensure_size(&memory::get(memory::KV), (free as u64 + 1) * slot_bytes) {
        return Err(ApiError::QuotaExceeded(
            "stable memory is full: no room for another job's KV slot".into(),
        ));
    }
    if let Some(id) = capability {
        if exists(id) {
            return Err(ApiError::QuotaExceeded("a random job id collided; try again".into()));
        }
    }
    let slot = settings::mutate(|s| {
        let id = capability.unwrap_or_else(|| {
            let id = s.next_job_id;
            s.next_job_id += 1;
            id
        });
        rec.id = id;
        s.kv_kept.remove(&(free as u32));
        if free == s.kv_slots.len() {
            s.kv_slots.push(Some(id));
        } else {
            s.kv_slots[free] = Some(id);
        }
        free as u32
    });
    rec.kv_slot = Some(slot);
    put(&rec);
    drop(claim); // the job itself now counts against the quotas
    let id = rec.id;
    state::mutate(|s| {
        s.active.insert(id);
        s.clock += 1;
        let last_used = s.clock;
        s.job_cache.insert(
            id,
            CachedJob {
                job,
                last_used,
                record: rec,
            },
        );
    });
    Ok(id)
}

/// Forgets the KV rows job `id` left in a slot (the slot stays free).
fn forget_kept(id: JobId) {
    if settings::read(|s| s.kv_kept.values().any(|k| k.job == id)) {
        settings::mutate(|s| s.kv_kept.retain(|_, k| k.job != id));
    }
}

/// Canister ids are opaque principals (their last byte is 0x01).
fn is_canister(p: Principal) -> bool {
    p.as_slice().last() == Some(&0x01)
}

/// Removes a finished/cancelled job from the active set, cache and KV slot.
/// A done or cancelled job's slot keeps its rows for a continuation
/// (`continue_from`) until a new job needs the slot; a failed job's is freed.
fn retire(rec: &mut JobRecord) {
    if let Some(slot) = rec.kv_slot.take() {
        let kept = matches!(rec.status, JobStatus::Done(_) | JobStatus::Cancelled).then(|| settings::KeptKv {
            job: rec.id,
            owner: rec.owner,
            since: ic_cdk::api::time(),
        });
        settings::mutate(|s| {
            if let Some(o) = s.kv_slots.get_mut(slot as usize) {
                *o = None;
            }
            if let Some(k) = kept {
                s.kv_kept.insert(slot, k);
            }
        });
    }
    state::mutate(|s| {
        s.active.remove(&rec.id);
        s.job_cache.remove(&rec.id);
        if let Some(method) = rec.notify.clone() {
            s.notifications.push((rec.owner, method, rec.id, rec.status.clone()));
        }
    });
    if rec.notify.is_some() {
        scheduler::ensure_armed();
    }
}

pub fn cancel(id: JobId) -> ApiResult<JobStatus> {
    let mut rec = get(id).ok_or_else(|| crate::access::not_found(id))?;
    if rec.status.is_active() {
        rec.status = JobStatus::Cancelled;
        retire(&mut rec);
        rec.updated_at_ns = ic_cdk::api::time();
        put(&rec);
    }
    Ok(rec.status)
}

/// Fails one active job with `reason`.
pub fn fail(id: JobId, reason: &str) {
    if let Some(mut rec) = get(id) {
        if rec.status.is_active() {
            rec.status = JobStatus::Failed(reason.to_string());
            retire(&mut rec);
            rec.updated_at_ns = ic_cdk::api::time();
            put(&rec);
        }
    }
}

/// Fails every active job (the model they ran on was replaced).
pub fn fail_all_active(reason: &str) {
    for id in state::read(|s| s.active.iter().copied().collect::<Vec<_>>()) {
        if let Some(mut rec) = get(id) {
            rec.status = JobStatus::Failed(reason.to_string());
            retire(&mut rec);
            put(&rec);
        }
    }
}

/// Geometry of KV slots: `(layer, k|v)` regions of `ctx` f32 rows of
/// `row_bytes`, where a job writes its rows as [`KvCache::rows_bytes`]
/// does (an f32 cache fills them; a q8 cache's rows are shorter and packed
/// from the start of each region).
#[derive(Clone, Copy)]
struct KvGeometry {
    slot_bytes: u64,
    ctx: u64,
    row_bytes: u64,
}

impl KvGeometry {
    fn current() -> KvGeometry {
        settings::read(|s| KvGeometry {
            slot_bytes: s.kv_slot_bytes,
            ctx: s.kv_slot_ctx as u64,
            row_bytes: s.kv_row_bytes,
        })
    }

    /// Offset of row `pos` of `which` of `layer` in `slot`, for rows of
    /// `row` bytes ([`KvCache::row_bytes`], at most `row_bytes`).
    fn offset(&self, slot: u32, layer: usize, which: Which, pos: u64, row: usize) -> u64 {
        let region = layer as u64 * 2 + matches!(which, Which::V) as u64;
        slot as u64 * self.slot_bytes + region * self.ctx * self.row_bytes + pos * row as u64
    }
}

/// Writes KV rows `[start, end)` of every layer to the job's slot.
fn save_kv(kv: &KvCache, slot: u32, start: u32, end: u32) {
    let g = KvGeometry::current();
    let mem = memory::get(memory::KV);
    for layer in 0..kv.n_layers() {
        for which in [Which::K, Which::V] {
            let row = kv.row_bytes(which);
            let bytes = kv.rows_bytes(layer, start..end, which);
            mem.write(g.offset(slot, layer, which, start as u64, row), &bytes);
        }
    }
}

/// Rebuilds an engine job from its record and KV slot.
fn restore(model: &LoadedModel, rec: &JobRecord) -> Job {
    let c = &model.model.config;
    let kv = KvCache::with_type(KvShape::of(c), rec.engine.ctx_size(), rec.engine.kv_type())
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

/// Reads KV rows `[0, rows)` of every layer from `slot` into `kv` (which
/// then has nothing dirty: the rows are in the slot already).
fn load_rows(kv: &mut KvCache, slot: u32, rows: u32) {
    let g = KvGeometry::current();
    let mem = memory::get(memory::KV);
    for layer in 0..kv.n_layers() {
        for which in [Which::K, Which::V] {
            let row = kv.row_bytes(which);
            let mut buf = vec![0u8; rows as usize * row];
            mem.read(g.offset(slot, layer, which, 0, row), &mut buf);
            kv.decode_rows(layer, 0, which, &buf)
                .expect("rows fit the cache they came from");
        }
    }
    kv.take_dirty();
}

/// Takes the engine job out of the cache (or rebuilds it); the caller puts it back.
fn take_job(model: &LoadedModel, rec: &JobRecord) -> Job {
    if let Some(c) = state::mutate(|s| s.job_cache.remove(&rec.id)) {
        return c.job;
    }
    let c = &model.model.config;
    make_room(
        model,
        KvShape::of(c).heap_bytes(rec.engine.kv_type(), rec.engine.ctx_size()),
    );
    restore(model, rec)
}

/// Evicts the least recently used cached jobs until a KV cache of `bytes`
/// more fits the heap beside the weights and the cached jobs' caches
/// ([`settings::Settings::heap_budget`]). Evicting loses nothing: every step ends with
/// the job's record and KV rows in stable memory, from which it is rebuilt.
fn make_room(model: &LoadedModel, bytes: u64) {
    let room = settings::read(|s| s.heap_budget()).saturating_sub(model.info.heap_bytes);
    state::mutate(|s| loop {
        let cached: u64 = s.job_cache.values().map(|c| c.job.kv.heap_bytes()).sum();
        if cached + bytes <= room {
            return;
        }
        match s.job_cache.iter().min_by_key(|(_, c)| c.last_used).map(|(id, _)| *id) {
            Some(oldest) => s.job_cache.remove(&oldest),
            None => return,
        };
    });
}

fn put_back(id: JobId, job: Job, record: JobRecord) {
    state::mutate(|s| {
        s.clock += 1;
        let last_used = s.clock;
        s.job_cache.insert(id, CachedJob { job, last_used, record });
        while s.job_cache.len() > MAX_CACHED_JOBS {
            let oldest = s.job_cache.iter().min_by_key(|(_, c)| c.last_used).map(|(id, _)| *id);
            match oldest {
                Some(o) => s.job_cache.remove(&o),
                None => break,
            };
        }
    });
}

/// Advances job `rec` under `budget`, then checkpoints. `counter` reads the
/// instructions used so far in this message; the whole message is charged
/// to the job.
pub fn step_job<F: Fn() -> u64>(
    model: &ModelRef,
    mut rec: JobRecord,
    budget: &mut MessageBudget<F>,
    counter: &dyn Fn() -> u64,
) -> ApiResult<StepProgress> {
    let id = rec.id;
    if !rec.status.is_active() {
        return Ok(progress(&rec, 0, 0, 0));
    }
    let Some(_guard) = state::JobGuard::acquire(id) else {
        return Ok(progress(&rec, 0, 0, 0));
    };
    let mut job = take_job(model, &rec);
    let before_generated = job.state.generated().len();
    let was_prefilling = is_prefilling(&job.state);
    let report = step(&model.model, &mut job, budget);
    let outcome = &report.outcome;

    // Text of the new tokens.
    let searched_text = rec.text.len();
    let new_tokens: Vec<u32> = job.state.generated()[before_generated..].to_vec();
    for &t in &new_tokens {
        let piece = rec.decoder.push(&model.tokenizer, t);
        rec.text.push_str(&piece);
        rec.text_ends.push(rec.text.len() as u32);
    }

    // Checkpoint: the KV rows this step wrote, then the record.
    if let (Some(slot), Some(dirty)) = (rec.kv_slot, job.kv.take_dirty()) {
        save_kv(&job.kv, slot, dirty.start, dirty.end);
        rec.kv_rows_saved = rec.kv_rows_saved.max(dirty.end);
    }
    rec.engine = job.state.clone();
    rec.status = match outcome {
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
    if let Some((cut, end)) = completions::find_stop(&rec.text, searched_text, stops) {
        if !matches!(rec.status, JobStatus::Failed(_)) {
            let completing = rec.text_ends.iter().position(|&e| e as usize >= end);
            rec.tokens_until_stop = completing.map(|i| i as u32 + 1);
            rec.text.truncate(cut);
            for end in rec.text_ends.iter_mut() {
                *end = (*end).min(cut as u32);
            }
            rec.status = JobStatus::Done("stop".into());
        }
    }
    let finished = !rec.status.is_active();
    let keep = if finished {
        retire(&mut rec);
        None
    } else {
        Some(job)
    };
    // Accounting: the units' instructions by phase; the rest of this step
    // (restoring, decoding text, checkpointing) goes to the phase of its last unit.
    let last_phase = budget.finish();
    let used = counter();
    let overhead = used.saturating_sub(budget.prefill_instructions + budget.decode_instructions);
    let overhead_is_prefill = last_phase.map_or(was_prefilling, |p| p == Phase::Prefill);
    rec.messages += 1;
    rec.instructions += used;
    rec.prompt_instructions += budget.prefill_instructions + if overhead_is_prefill { overhead } else { 0 };
    rec.max_message_instructions = rec.max_message_instructions.max(counter());
    rec.updated_at_ns = ic_cdk::api::time();
    put(&rec);
    let progress = progress(&rec, report.units, new_tokens.len() as u32, used);
    if let Some(job) = keep {
        put_back(id, job, rec);
    }
    Ok(progress)
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
        cycles: rec.instructions as u128 + rec.messages as u128 * CYCLES_PER_MESSAGE,
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

/// Deletes job `id` of `owner` (cancelling it first if unfinished).
pub fn delete(owner: Principal, id: JobId) -> ApiResult<()> {
    cancel(id)?;
    if remove(owner, id) {
        Ok(())
    } else {
        Err(crate::access::not_found(id))
    }
}

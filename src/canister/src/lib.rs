//! The icllm canister: thin IC endpoints over the engine.
//!
//! Each endpoint checks the caller and its argument's bounds (`bounds`,
//! before decoding it in full), then delegates: `upload` (model blob),
//! `model_store` (blob → heap weights), `jobs` (durable jobs, one bounded
//! step, checkpoints), `scheduler` (timer-driven background work),
//! `access` (who may do what). Stable layout: see `memory`.

#![cfg_attr(target_arch = "wasm64", feature(simd_wasm64))]

pub mod access;
pub mod bounds;
pub mod budget;
pub mod completions;
pub mod env;
pub mod http;
pub mod jobs;
pub mod memory;
pub mod model_store;
pub mod query_mode;
pub mod ranges;
pub mod scheduler;
pub mod settings;
pub mod sharding;
pub mod state;
#[cfg(test)]
mod test_support;
pub mod upload;

use candid::Principal;
use env::{Env, Ic};
use ic_cdk::api::{is_controller, msg_caller};
use ic_cdk::{init, inspect_message, post_upgrade, query, update};
use icllm_api::*;

/// Keeps the heap cap of chat-template renders: a template that passes it
/// traps the message that renders it (rolled back, the reason in the reject).
#[cfg(target_family = "wasm")]
#[global_allocator]
static ALLOCATOR: icllm_engine::heap_cap::CappedAlloc<std::alloc::System> =
    icllm_engine::heap_cap::CappedAlloc::new(std::alloc::System, |e| ic_cdk::api::trap(e.to_string()));

fn caller_is_controller() -> (Principal, bool) {
    let caller = msg_caller();
    (caller, is_controller(&caller))
}

fn require_controller() -> ApiResult<()> {
    let (caller, ctl) = caller_is_controller();
    access::require_controller(caller, ctl)
}

/// Whether the caller is this shard's coordinator.
fn caller_is_coordinator() -> bool {
    matches!(sharding::role(), Role::Shard { coordinator, .. } if msg_caller() == coordinator)
}

/// Uploads: controllers, and on a shard its coordinator (which sends the
/// shard its part of the model).
fn require_uploader() -> ApiResult<()> {
    match caller_is_coordinator() {
        true => Ok(()),
        false => require_controller(),
    }
}

/// Shard methods: for this shard's coordinator only.
fn require_coordinator() -> ApiResult<()> {
    match sharding::role() {
        Role::Shard { .. } if caller_is_coordinator() => Ok(()),
        Role::Shard { .. } => Err(ApiError::NotAuthorized(
            "only this shard's coordinator may call its shard methods".into(),
        )),
        _ => Err(ApiError::InvalidArgument("this canister is not a shard".into())),
    }
}

fn apply_init_args(args: Option<InitArgs>) {
    let Some(a) = args else { return };
    // Install and upgrade fail (the canister is left as it was) on a bad value.
    if let Some(l) = &a.limits {
        settings::validate_limits(l).unwrap_or_else(|e| ic_cdk::trap(format!("init args: {e:?}")));
    }
    if let Some(n) = a.message_instruction_limit {
        settings::validate_message_limit(n).unwrap_or_else(|e| ic_cdk::trap(format!("init args: {e:?}")));
    }
    if let Some(r) = &a.role {
        sharding::validate_role(r).unwrap_or_else(|e| ic_cdk::trap(format!("init args: {e:?}")));
    }
    settings::mutate(|s| {
        if let Some(p) = a.policy {
            s.policy = p;
        }
        if let Some(l) = a.limits {
            s.limits = l;
        }
        if let Some(n) = a.message_instruction_limit {
            s.message_instruction_limit = n;
        }
        if let Some(n) = a.max_context.filter(|&n| n > 0) {
            s.max_context = Some(n);
        }
        if let Some(n) = a.heap_budget.filter(|&n| n > 0) {
            s.heap_budget = Some(n.min(memory::HEAP_BUDGET));
        }
        if let Some(role) = a.role {
            s.role = role;
        }
    });
}

#[init]
fn init(args: Option<InitArgs>) {
    apply_init_args(args);
}

/// No `pre_upgrade`: everything durable is already in stable memory. Here we
/// rebuild the heap: the active-job list, the model reload, the scheduler.
#[post_upgrade]
fn post_upgrade(args: Option<InitArgs>) {
    settings::claim_stable_layout();
    apply_init_args(args);
    jobs::rebuild_indexes_if_missing();
    // A shard's slots hold the coordinator's jobs, which it does not step.
    let active = match sharding::role() {
        Role::Shard { .. } => Vec::new(),
        _ => jobs::scan_active(),
    };
    let model = settings::read(|s| s.active_model.clone());
    // An upload that was being verified or loaded restarts its pipeline:
    // at once, or (when the active model must be reloaded first, so that
    // its jobs keep running) as soon as that reload is done.
    let pending = settings::read(|s| s.upload.clone())
        .filter(|u| matches!(u.state, UploadState::Verifying | UploadState::Loading));
    state::mutate(|s| {
        s.active = active.into_iter().collect();
        s.pipeline = match (&pending, model) {
            (_, Some(m)) => Some(model_store::Pipeline::reload(m)),
            (Some(u), None) => Some(model_store::Pipeline::verify_and_load(u.target.clone())),
            (None, None) => None,
        };
    });
    if pending.is_some() {
        // Hashing starts over (its state lived in the heap); the chunks stay.
        settings::mutate(|s| {
            if let Some(u) = s.upload.as_mut() {
                u.state = UploadState::Verifying;
            }
        });
    }
    scheduler::ensure_armed();
}

/// Decoders for the endpoints' arguments: a size limit and a decoding quota
/// (see `bounds`), and a malformed argument answered with an `ApiError`
/// instead of a trap. The candid interface of these endpoints is declared
/// by the `did_*` functions below (the ic-cdk macro would describe a
/// `decode_with` endpoint as taking a blob).
/// `$check` runs first: a caller who may not use the method is refused
/// before its argument is decoded.
macro_rules! decoder {
    ($f:ident, $method:literal, $check:expr, $($t:ty),+) => {
        fn $f(bytes: Vec<u8>) -> ApiResult<($($t,)+)> {
            $check?;
            bounds::decode_args($method, &bytes)
        }
    };
}
fn anyone() -> ApiResult<()> {
    Ok(())
}
fn may_start_jobs_now() -> ApiResult<()> {
    let (caller, ctl) = caller_is_controller();
    may_start_jobs(caller, ctl)
}
decoder!(decode_upload_begin, "upload_begin", require_uploader(), UploadBegin);
decoder!(
    decode_upload_chunk,
    "upload_chunk",
    require_uploader(),
    u64,
    serde_bytes::ByteBuf
);
decoder!(decode_start_job, "start_job", may_start_jobs_now(), JobRequest);
decoder!(
    decode_completions,
    "completions",
    may_start_jobs_now(),
    CompletionRequest
);
decoder!(
    decode_chat_completions,
    "chat_completions",
    may_start_jobs_now(),
    ChatCompletionRequest
);
decoder!(decode_get_completion, "get_completion", anyone(), JobId);
decoder!(decode_step, "step", anyone(), JobId);
decoder!(decode_poll, "poll", anyone(), JobId, Option<u32>);
decoder!(decode_cancel, "cancel", anyone(), JobId);
decoder!(decode_delete_job, "delete_job", anyone(), JobId);
decoder!(decode_http_request, "http_request", anyone(), HttpRequest);
decoder!(
    decode_generate_query,
    "generate_query",
    may_start_jobs_now(),
    JobRequest
);
decoder!(decode_shard_forward, "shard_forward", require_coordinator(), ShardBatch);
decoder!(decode_shard_release, "shard_release", require_coordinator(), Vec<JobId>);
decoder!(decode_set_policy, "set_policy", require_controller(), AccessPolicy);
decoder!(decode_set_limits, "set_limits", require_controller(), Limits);
decoder!(
    decode_set_message_instruction_limit,
    "set_message_instruction_limit",
    require_controller(),
    u64
);

/// The candid signatures of the endpoints that decode their own arguments.
#[allow(dead_code, unused_variables)]
mod did {
    use icllm_api::*;
    #[candid::candid_method(update, rename = "upload_begin")]
    fn upload_begin(req: UploadBegin) -> ApiResult<UploadStatus> {
        unreachable!()
    }
    #[candid::candid_method(update, rename = "upload_chunk")]
    fn upload_chunk(offset: u64, data: serde_bytes::ByteBuf) -> ApiResult<UploadStatus> {
        unreachable!()
    }
    #[candid::candid_method(update, rename = "start_job")]
    fn start_job(req: JobRequest) -> ApiResult<JobId> {
        unreachable!()
    }
    #[candid::candid_method(update, rename = "completions")]
    fn completions(req: CompletionRequest) -> ApiResult<Completion> {
        unreachable!()
    }
    #[candid::candid_method(update, rename = "chat_completions")]
    fn chat_completions(req: ChatCompletionRequest) -> ApiResult<Completion> {
        unreachable!()
    }
    #[candid::candid_method(query, rename = "get_completion")]
    fn get_completion(id: JobId) -> ApiResult<Completion> {
        unreachable!()
    }
    #[candid::candid_method(update, rename = "step")]
    fn step(id: JobId) -> ApiResult<StepProgress> {
        unreachable!()
    }
    #[candid::candid_method(query, rename = "poll")]
    fn poll(id: JobId, since: Option<u32>) -> ApiResult<JobView> {
        unreachable!()
    }
    #[candid::candid_method(update, rename = "cancel")]
    fn cancel(id: JobId) -> ApiResult<JobStatus> {
        unreachable!()
    }
    #[candid::candid_method(update, rename = "delete_job")]
    fn delete_job(id: JobId) -> ApiResult<()> {
        unreachable!()
    }
    #[candid::candid_method(update, rename = "shard_forward")]
    fn shard_forward(batch: ShardBatch) -> ApiResult<ShardReply> {
        unreachable!()
    }
    #[candid::candid_method(update, rename = "shard_release")]
    fn shard_release(jobs: Vec<JobId>) -> ApiResult<()> {
        unreachable!()
    }
    #[candid::candid_method(update, rename = "set_policy")]
    fn set_policy(policy: AccessPolicy) -> ApiResult<()> {
        unreachable!()
    }
    #[candid::candid_method(update, rename = "set_limits")]
    fn set_limits(limits: Limits) -> ApiResult<()> {
        unreachable!()
    }
    #[candid::candid_method(update, rename = "set_message_instruction_limit")]
    fn set_message_instruction_limit(limit: u64) -> ApiResult<()> {
        unreachable!()
    }
    #[candid::candid_method(query, rename = "http_request")]
    fn http_request(req: HttpRequest) -> HttpResponse {
        unreachable!()
    }
    #[candid::candid_method(query, rename = "generate_query")]
    fn generate_query(req: JobRequest) -> ApiResult<QueryGeneration> {
        unreachable!()
    }
}

// ---------------------------------------------------------------- upload

#[update(hidden = true, decode_with = "decode_upload_begin")]
fn upload_begin(args: ApiResult<(UploadBegin,)>) -> ApiResult<UploadStatus> {
    require_uploader()?;
    let (req,) = args?;
    upload::begin(req, caller_is_coordinator())
}

#[update(hidden = true, decode_with = "decode_upload_chunk")]
fn upload_chunk(args: ApiResult<(u64, serde_bytes::ByteBuf)>) -> ApiResult<UploadStatus> {
    require_uploader()?;
    let (offset, data) = args?;
    upload::chunk(offset, &data)
}

/// Verifies the upload and loads it; continues in background messages.
/// Call `upload_status` (or this again) to follow it.
#[update]
fn upload_finalize() -> ApiResult<UploadStatus> {
    require_uploader()?;
    upload::finalize()
}

#[query]
fn upload_status() -> ApiResult<UploadStatus> {
    require_uploader()?;
    Ok(upload::status())
}

// ---------------------------------------------------------------- jobs

/// The model jobs run on: refused on a shard, which holds layers only, and
/// on a coordinator until its shards have their parts.
fn ready_model() -> ApiResult<model_store::ModelRef> {
    if let Role::Shard { coordinator, .. } = sharding::role() {
        return Err(ApiError::InvalidArgument(format!(
            "this canister is a shard of a sharded model: jobs go to its coordinator {coordinator}"
        )));
    }
    let model = loaded_model()?;
    match sharding::coordinator::shards_not_ready() {
        Some(why) => Err(ApiError::ModelNotReady(why)),
        None => Ok(model),
    }
}

fn loaded_model() -> ApiResult<model_store::ModelRef> {
    if let Some(m) = state::read(|s| s.model.clone()) {
        return Ok(m);
    }
    let why = match state::read(|s| (s.pipeline.is_some(), s.pipeline_error.clone())) {
        (true, _) => "the model is loading; try again shortly".to_string(),
        (false, Some(e)) => format!("the model failed to load: {e}"),
        (false, None) => "no model has been uploaded".to_string(),
    };
    Err(ApiError::ModelNotReady(why))
}

/// Starts a job (see `start`).
#[update(hidden = true, decode_with = "decode_start_job")]
async fn start_job(args: ApiResult<(JobRequest,)>) -> ApiResult<JobId> {
    let (caller, ctl) = caller_is_controller();
    may_start_jobs(caller, ctl)?;
    let (req,) = args?;
    start(req, None).await
}

/// Cheap checks first (caller, request size, quota), then the `raw_rand`
/// await, then the same checks again (anything may have changed while
/// awaiting), then tokenizing. The caller's place is claimed before the
/// await, so concurrent calls cannot pass the quota together.
async fn start(req: JobRequest, openai: Option<completions::OpenAiStart>) -> ApiResult<JobId> {
    let (caller, ctl) = caller_is_controller();
    bounds::check_job_request(&req)?;
    if let Some(from) = req.continue_from {
        // Before anything is claimed: another caller's job is not found.
        jobs::continuation_source(caller, from)?;
    }
    ready_model()?;
    cycles_allow_new_jobs()?;
    let claim = jobs::SlotClaim::take(caller, ctl)?;
    // Anonymous jobs get a random id (a capability: see `access`).
    let anonymous = caller == Principal::anonymous();
    let (seed, capability) = if req.seed.is_none() || anonymous {
        let random = random_bytes().await?;
        let seed = req.seed.unwrap_or(random.0);
        (seed, anonymous.then_some(random.1 | jobs::CAPABILITY_BIT))
    } else {
        (req.seed.unwrap_or_default(), None)
    };
    // After the await: the policy, the model and the quotas are read afresh.
    drop(claim);
    may_start_jobs(caller, ctl)?;
    let model = ready_model()?;
    cycles_allow_new_jobs()?;
    let claim = jobs::SlotClaim::take(caller, ctl)?;
    let now = Ic.now_ns();
    let (rec, job, adopted) = jobs::create(&model, caller, &req, openai.as_ref(), seed, now)?;
    let id = jobs::insert_new(rec, job, adopted, claim, capability)?;
    let limits = settings::read(|s| s.limits.clone());
    jobs::prune_owner(caller, limits.max_finished_jobs_per_caller);
    jobs::prune_old(
        now,
        limits.finished_job_ttl_seconds().saturating_mul(1_000_000_000),
        limits.max_stored_jobs(),
        PRUNE_PER_CALL,
    );
    scheduler::ensure_armed();
    Ok(id)
}

/// A whole generation inside this query, when it fits the query limit (or
/// the canister's message limit, if lower); refused with the numbers
/// otherwise. Changes nothing.
#[query(hidden = true, decode_with = "decode_generate_query")]
fn generate_query(args: ApiResult<(JobRequest,)>) -> ApiResult<QueryGeneration> {
    let (req,) = args?;
    bounds::check_job_request(&req)?;
    let model = ready_model()?;
    if sharding::is_coordinator() {
        return Err(ApiError::InvalidArgument(
            "a query cannot call the shards of a sharded model: start a job instead".into(),
        ));
    }
    let (caller, _) = caller_is_controller();
    let limit = icllm_api::IC_QUERY_INSTRUCTION_LIMIT.min(scheduler::message_limit());
    query_mode::generate(&model, caller, &req, &Ic, limit)
}

/// The model a completion request runs on (name and vocabulary).
fn served(model: &model_store::LoadedModel) -> completions::ServedModel<'_> {
    completions::ServedModel {
        name: &model.info.name,
        vocab_size: model.model.config.vocab_size,
    }
}

/// OpenAI's text completion: starts a job and returns the completion object
/// as it stands (no text yet); `get_completion` follows it.
#[update(hidden = true, decode_with = "decode_completions")]
async fn completions(args: ApiResult<(CompletionRequest,)>) -> ApiResult<Completion> {
    let (caller, ctl) = caller_is_controller();
    may_start_jobs(caller, ctl)?;
    let (req,) = args?;
    completions::check_completion_bounds(&req)?;
    let model = ready_model()?;
    let (job, openai) = completions::from_completion(&req, &served(&model))?;
    let id = start(job, Some(openai)).await?;
    completion_of(caller, ctl, id)
}

/// OpenAI's chat completion: renders the messages with the model's chat
/// template and starts a job generating the assistant's reply.
#[update(hidden = true, decode_with = "decode_chat_completions")]
async fn chat_completions(args: ApiResult<(ChatCompletionRequest,)>) -> ApiResult<Completion> {
    let (caller, ctl) = caller_is_controller();
    may_start_jobs(caller, ctl)?;
    let (req,) = args?;
    completions::check_chat_bounds(&req)?;
    let model = ready_model()?;
    let default_max = settings::read(|s| s.limits.max_new_tokens);
    let (job, openai) = completions::from_chat(&req, &served(&model), default_max)?;
    let id = start(job, Some(openai)).await?;
    completion_of(caller, ctl, id)
}

/// The job as OpenAI's completion object (text so far, `finish_reason` once done).
#[query(hidden = true, decode_with = "decode_get_completion")]
fn get_completion(args: ApiResult<(JobId,)>) -> ApiResult<Completion> {
    let (id,) = args?;
    let (caller, ctl) = caller_is_controller();
    completion_of(caller, ctl, id)
}

/// The completion object of job `id`, if `caller` may see it (read before
/// any await: after one, the caller is no longer the message's).
fn completion_of(caller: Principal, ctl: bool, id: JobId) -> ApiResult<Completion> {
    job_owner_for(caller, ctl, id)?;
    let rec = jobs::get_hot(id).ok_or_else(|| access::not_found(id))?;
    let model = state::read(|s| s.model.clone());
    let name = model.as_ref().map(|m| m.info.name.clone()).unwrap_or_default();
    let piece = pieces_for(&rec, model.as_deref());
    Ok(completions::completion(&rec, &name, piece.as_ref().map(|p| p as _)))
}

/// Token bytes from the loaded model's tokenizer, if it is the model (by
/// name) that generated `rec`'s tokens: what a job's log-probabilities are
/// shown with.
fn pieces_for<'a>(
    rec: &jobs::JobRecord,
    model: Option<&'a model_store::LoadedModel>,
) -> Option<impl Fn(u32) -> Vec<u8> + 'a> {
    let model = model.filter(|m| rec.openai.as_ref().is_none_or(|o| o.model == m.info.name))?;
    Some(move |t: u32| model.tokenizer.piece(t).to_vec())
}

/// Old records deleted at most per `start_job` (each call adds one record,
/// so the store shrinks back to its cap; the bound keeps the call cheap).
const PRUNE_PER_CALL: usize = 8;

/// New jobs wait while the cycles above the freezing threshold are below
/// the floor kept for the running ones.
fn cycles_allow_new_jobs() -> ApiResult<()> {
    let floor = settings::read(|s| s.limits.min_liquid_cycles());
    access::cycles_allow_new_jobs(ic_cdk::api::canister_liquid_cycle_balance(), floor)
}

fn may_start_jobs(caller: Principal, ctl: bool) -> ApiResult<()> {
    access::may_start_jobs(caller, ctl, &settings::read(|s| s.policy.clone()))
}

/// 16 random bytes from the management canister, as two words.
async fn random_bytes() -> ApiResult<(u64, u64)> {
    let reply = ic_cdk::call::Call::unbounded_wait(Principal::management_canister(), "raw_rand")
        .await
        .map_err(|e| ApiError::InvalidArgument(format!("could not draw random bytes ({e}); try again")))?;
    let bytes: Vec<u8> = reply
        .candid::<serde_bytes::ByteBuf>()
        .map_err(|e| ApiError::InvalidArgument(format!("raw_rand replied oddly ({e}); try again")))?
        .into_vec();
    let word = |i: usize| {
        let mut w = [0u8; 8];
        let part = bytes.get(i * 8..(i + 1) * 8).unwrap_or(&[]);
        w[..part.len()].copy_from_slice(part);
        u64::from_le_bytes(w)
    };
    Ok((word(0), word(1)))
}

/// The owner of job `id` if the caller may see and control it (see
/// `access::may_access_job`), from the index: no record is decoded for a
/// stranger.
fn job_owner(id: JobId) -> ApiResult<Principal> {
    let (caller, ctl) = caller_is_controller();
    job_owner_for(caller, ctl, id)
}

/// [`job_owner`] for a caller read earlier (after an await, read it before).
fn job_owner_for(caller: Principal, ctl: bool, id: JobId) -> ApiResult<Principal> {
    let owner = jobs::owner_for(caller, id);
    access::may_access_job(ctl, owner, jobs::exists(id), id)?;
    match owner {
        Some(o) => Ok(o),
        None => jobs::get(id).map(|r| r.owner).ok_or_else(|| access::not_found(id)),
    }
}

fn owned_job(id: JobId) -> ApiResult<jobs::JobRecord> {
    job_owner(id)?;
    jobs::get_hot(id).ok_or_else(|| access::not_found(id))
}

/// Advances the job by as much as this message's budget allows.
#[update(hidden = true, decode_with = "decode_step")]
fn step(args: ApiResult<(JobId,)>) -> ApiResult<StepProgress> {
    let (id,) = args?;
    let rec = owned_job(id)?;
    let model = ready_model()?;
    if sharding::is_coordinator() {
        return Err(ApiError::InvalidArgument(
            "this canister coordinates a sharded model: its jobs advance through the shards in the background \
             (poll them)"
                .into(),
        ));
    }
    let mut budget = scheduler::message_budget(&Ic);
    let progress = jobs::step_job(&Ic, &model, rec, &mut budget);
    scheduler::ensure_armed(); // for the notification of a job that ended
    progress
}

/// The job's state and the text generated from token index `since` on.
#[query(hidden = true, decode_with = "decode_poll")]
fn poll(args: ApiResult<(JobId, Option<u32>)>) -> ApiResult<JobView> {
    let (id, since) = args?;
    let rec = owned_job(id)?;
    let model = state::read(|s| s.model.clone());
    let piece = pieces_for(&rec, model.as_deref());
    Ok(jobs::view(&rec, since.unwrap_or(0), piece.as_ref().map(|p| p as _)))
}

#[update(hidden = true, decode_with = "decode_cancel")]
fn cancel(args: ApiResult<(JobId,)>) -> ApiResult<JobStatus> {
    let (id,) = args?;
    job_owner(id)?;
    let status = jobs::cancel(&Ic, id);
    scheduler::ensure_armed();
    status
}

/// Deletes the job's record (cancelling it first if unfinished): for its
/// owner, the holder of an anonymous job's id, and controllers.
#[update(hidden = true, decode_with = "decode_delete_job")]
fn delete_job(args: ApiResult<(JobId,)>) -> ApiResult<()> {
    let (id,) = args?;
    let owner = job_owner(id)?;
    let deleted = jobs::delete(&Ic, owner, id);
    scheduler::ensure_armed();
    deleted
}

/// The caller's jobs. Anonymous callers get none: their jobs are reached
/// only through their (unguessable) ids.
#[query]
fn list_jobs() -> Vec<JobSummary> {
    let caller = msg_caller();
    if caller == Principal::anonymous() {
        return Vec::new();
    }
    jobs::list(Some(caller))
}

// ---------------------------------------------------------------- admin

#[query]
fn admin_list_jobs() -> ApiResult<Vec<JobSummary>> {
    require_controller()?;
    Ok(jobs::list(None))
}

#[update(hidden = true, decode_with = "decode_set_policy")]
fn set_policy(args: ApiResult<(AccessPolicy,)>) -> ApiResult<()> {
    require_controller()?;
    let (policy,) = args?;
    settings::mutate(|s| s.policy = policy);
    Ok(())
}

#[update(hidden = true, decode_with = "decode_set_limits")]
fn set_limits(args: ApiResult<(Limits,)>) -> ApiResult<()> {
    require_controller()?;
    let (limits,) = args?;
    settings::validate_limits(&limits)?;
    settings::mutate(|s| s.limits = limits);
    Ok(())
}

// ---------------------------------------------------------------- shards

/// A shard's layers over a batch of one of its coordinator's jobs (only
/// the coordinator may call it).
#[update(hidden = true, decode_with = "decode_shard_forward")]
fn shard_forward(args: ApiResult<(ShardBatch,)>) -> ApiResult<ShardReply> {
    let (batch,) = args?;
    let model = loaded_model()?;
    sharding::shard::forward(&Ic, &model, batch)
}

/// The coordinator's ended jobs: the shard drops their KV rows.
#[update(hidden = true, decode_with = "decode_shard_release")]
fn shard_release(args: ApiResult<(Vec<JobId>,)>) -> ApiResult<()> {
    let (ids,) = args?;
    ids.into_iter().for_each(sharding::shard::release);
    Ok(())
}

/// One background step of jobs stepped together, called by the scheduler
/// on this canister itself so that a step that traps comes back to it as a
/// reject (see `scheduler::background_step`). Not part of the interface.
#[update(name = "<icllm internal> step", hidden = true, decode_with = "decode_internal_step")]
fn internal_step(args: (Vec<JobId>, u32)) {
    if msg_caller() != ic_cdk::api::canister_self() {
        ic_cdk::trap("only the canister's own scheduler calls this method");
    }
    let (ids, shift) = args;
    scheduler::run_background_step(&Ic, &ids, shift);
}

/// `(vec nat64, nat32)`, or the `(nat64, nat32)` of a wasm that stepped one
/// job at a time (its call may be under way across an upgrade).
fn decode_internal_step(bytes: Vec<u8>) -> (Vec<JobId>, u32) {
    if let Ok(args) = candid::decode_args::<(Vec<JobId>, u32)>(&bytes) {
        return args;
    }
    match candid::decode_args::<(JobId, u32)>(&bytes) {
        Ok((id, shift)) => (vec![id], shift),
        Err(e) => ic_cdk::trap(format!("a background step's argument is not valid: {e}")),
    }
}

/// Sets the instructions one message may use (the subnet's limit; lower it to
/// leave headroom or when running under a smaller limit).
#[update(hidden = true, decode_with = "decode_set_message_instruction_limit")]
fn set_message_instruction_limit(args: ApiResult<(u64,)>) -> ApiResult<()> {
    require_controller()?;
    let (limit,) = args?;
    settings::validate_message_limit(limit)?;
    settings::mutate(|s| s.message_instruction_limit = limit);
    Ok(())
}

#[query]
fn get_settings() -> ApiResult<SettingsView> {
    require_controller()?;
    Ok(settings::read(|s| SettingsView {
        policy: s.policy.clone(),
        limits: s.limits.clone(),
        message_instruction_limit: s.message_instruction_limit,
    }))
}

// ---------------------------------------------------------------- info

fn model_state() -> String {
    state::read(|s| match (&s.model, &s.pipeline, &s.pipeline_error) {
        (Some(_), None, _) => match sharding::coordinator::shards_not_ready() {
            Some(why) => format!("waiting for the shards: {why}"),
            None => "ready".to_string(),
        },
        (Some(_), Some(_), _) => "ready (an upload is being processed)".to_string(),
        (None, Some(_), _) => "loading".to_string(),
        (None, None, Some(e)) => format!("failed: {e}"),
        (None, None, None) => "none".to_string(),
    })
}

#[query]
fn model_info() -> ModelInfo {
    let state = model_state();
    match state::read(|s| s.model.clone()) {
        Some(m) => ModelInfo {
            state,
            ..m.info.clone()
        },
        None => ModelInfo::none(state),
    }
}

#[query]
fn health() -> Health {
    Health {
        model_state: model_state(),
        active_jobs: state::read(|s| s.active.len() as u32),
        total_jobs: jobs::count(),
        scheduler_armed: state::read(|s| s.scheduler.is_some()),
        heap_bytes: heap_bytes(),
        stable_bytes: ic_cdk::stable::stable_size() * memory::WASM_PAGE,
        cycle_balance: ic_cdk::api::canister_cycle_balance(),
        liquid_cycle_balance: ic_cdk::api::canister_liquid_cycle_balance(),
        message_instruction_limit: scheduler::message_limit(),
    }
}

fn heap_bytes() -> u64 {
    #[cfg(target_arch = "wasm32")]
    {
        core::arch::wasm32::memory_size(0) as u64 * memory::WASM_PAGE
    }
    #[cfg(target_arch = "wasm64")]
    {
        core::arch::wasm64::memory_size(0) as u64 * memory::WASM_PAGE
    }
    #[cfg(not(any(target_arch = "wasm32", target_arch = "wasm64")))]
    {
        0
    }
}

// ---------------------------------------------------------------- HTTP

struct HttpSource;

impl http::Source for HttpSource {
    fn health(&self) -> Health {
        health()
    }
    fn model_info(&self) -> ModelInfo {
        model_info()
    }
    fn job(&self, id: JobId) -> ApiResult<JobView> {
        let rec = owned_job(id)?;
        let model = state::read(|s| s.model.clone());
        let piece = pieces_for(&rec, model.as_deref());
        Ok(jobs::view(&rec, 0, piece.as_ref().map(|p| p as _)))
    }
}

/// GET /health, /v1/models and /v1/jobs/<id> through an HTTP gateway.
#[query(hidden = true, decode_with = "decode_http_request")]
fn http_request(args: ApiResult<(HttpRequest,)>) -> HttpResponse {
    match args {
        Ok((req,)) => http::respond(&req, &HttpSource),
        Err(e) => http::error(400, "invalid_request", &format!("{e:?}")),
    }
}

// ---------------------------------------------------------------- ingress filter

/// Drops ingress the endpoint would refuse anyway, before it costs cycles:
/// each method only as the kind of call it is (queries are never accepted
/// as updates), only from callers who may use it, and only with an argument
/// within its bounds. Canister callers skip this; the endpoints check again.
#[inspect_message]
fn inspect_message() {
    let method = ic_cdk::api::msg_method_name();
    let (caller, ctl) = caller_is_controller();
    let arg = || ic_cdk::api::msg_arg_data();
    let allowed = match access::ingress_rule(&method) {
        access::IngressRule::Never => false,
        access::IngressRule::Controller => ctl && bounds::check_arg_size(&method, arg().len()).is_ok(),
        access::IngressRule::StartJob => {
            may_start_jobs(caller, ctl).is_ok()
                && match method.as_str() {
                    "completions" => bounds::decode_args::<(CompletionRequest,)>(&method, &arg())
                        .and_then(|(req,)| completions::check_completion_bounds(&req)),
                    "chat_completions" => bounds::decode_args::<(ChatCompletionRequest,)>(&method, &arg())
                        .and_then(|(req,)| completions::check_chat_bounds(&req)),
                    _ => bounds::decode_args::<(JobRequest,)>(&method, &arg())
                        .and_then(|(req,)| bounds::check_job_request(&req)),
                }
                .is_ok()
        }
        access::IngressRule::JobOwner => match bounds::decode_args::<(JobId,)>(&method, &arg()) {
            Ok((id,)) => {
                let owner = jobs::owner_for(caller, id);
                access::may_access_job(ctl, owner, jobs::exists(id), id).is_ok()
            }
            Err(_) => false,
        },
    };
    if allowed {
        ic_cdk::api::accept_message();
    }
}

ic_cdk::export_candid!();

/// The interface as candid text, embedded in the wasm as the
/// `icp:public candid:service` custom section that tools read.
#[cfg(any(target_arch = "wasm32", target_arch = "wasm64"))]
#[unsafe(link_section = "icp:public candid:service")]
#[used]
static CANDID_SERVICE: [u8; include_bytes!("../../../candid/icllm.did").len()] =
    *include_bytes!("../../../candid/icllm.did");

#[cfg(test)]
mod interface_tests {
    use candid_parser::utils::{service_equal, CandidSource};

    /// `candid/icllm.did` describes exactly the endpoints and types in this crate.
    #[test]
    fn did_file_matches_the_rust_interface() {
        let generated = super::__export_service();
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../candid/icllm.did");
        let file = std::fs::read_to_string(path).expect("candid/icllm.did exists");
        if let Err(e) = service_equal(CandidSource::Text(&generated), CandidSource::Text(&file)) {
            panic!("candid/icllm.did is out of date ({e}). The code's interface is:\n{generated}");
        }
    }

    /// A background step's argument: the group form, and the one-job form
    /// of the wasm before group steps.
    #[test]
    fn a_background_step_decodes_a_group_and_the_older_single_job() {
        let group = candid::encode_args((vec![3u64, 9], 2u32)).unwrap();
        assert_eq!(super::decode_internal_step(group), (vec![3, 9], 2));
        let single = candid::encode_args((7u64, 1u32)).unwrap();
        assert_eq!(super::decode_internal_step(single), (vec![7], 1));
    }
}

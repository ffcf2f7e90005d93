//! The icllm canister: thin IC endpoints over the engine.
//!
//! Each endpoint checks the caller, then delegates: `upload` (model blob),
//! `model_store` (blob → heap weights), `jobs` (durable jobs, one bounded
//! step, checkpoints), `scheduler` (timer-driven background work),
//! `access` (who may do what). Stable layout: see `memory`.

pub mod access;
pub mod budget;
pub mod jobs;
pub mod memory;
pub mod model_store;
pub mod ranges;
pub mod scheduler;
pub mod settings;
pub mod state;
pub mod upload;

use candid::Principal;
use ic_cdk::api::{is_controller, msg_caller};
use ic_cdk::{init, inspect_message, post_upgrade, query, update};
use icllm_api::*;

fn caller_is_controller() -> (Principal, bool) {
    let caller = msg_caller();
    (caller, is_controller(&caller))
}

fn require_controller() -> ApiResult<()> {
    let (caller, ctl) = caller_is_controller();
    access::require_controller(caller, ctl)
}

fn apply_init_args(args: Option<InitArgs>) {
    let Some(a) = args else { return };
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
    apply_init_args(args);
    let active = jobs::scan_active();
    let model = settings::read(|s| s.active_model.clone());
    // An upload that was being verified or loaded restarts its pipeline.
    let pending = settings::read(|s| s.upload.clone())
        .filter(|u| matches!(u.state, UploadState::Verifying | UploadState::Loading));
    state::mutate(|s| {
        s.active = active.into_iter().collect();
        s.pipeline = match (&pending, model) {
            (Some(u), _) => Some(model_store::Pipeline::verify_and_load(u.target.clone())),
            (None, Some(m)) => Some(model_store::Pipeline::reload(m)),
            (None, None) => None,
        };
    });
    // A pending upload replaces the model only after it verifies; meanwhile
    // the active model must be reloaded first (jobs wait for it).
    if let (Some(_), Some(m)) = (&pending, settings::read(|s| s.active_model.clone())) {
        state::mutate(|s| s.pipeline = Some(model_store::Pipeline::reload(m)));
        settings::mutate(|s| {
            if let Some(u) = s.upload.as_mut() {
                u.state = UploadState::Failed("interrupted by an upgrade; call upload_finalize again".into());
            }
        });
    }
    scheduler::ensure_armed();
}

// ---------------------------------------------------------------- upload

#[update]
fn upload_begin(req: UploadBegin) -> ApiResult<UploadStatus> {
    require_controller()?;
    upload::begin(req)
}

#[update]
fn upload_chunk(offset: u64, data: serde_bytes::ByteBuf) -> ApiResult<UploadStatus> {
    require_controller()?;
    upload::chunk(offset, &data)
}

/// Verifies the upload and loads it; continues in background messages.
/// Call `upload_status` (or this again) to follow it.
#[update]
fn upload_finalize() -> ApiResult<UploadStatus> {
    require_controller()?;
    upload::finalize()
}

#[query]
fn upload_status() -> ApiResult<UploadStatus> {
    require_controller()?;
    Ok(upload::status())
}

// ---------------------------------------------------------------- jobs

fn ready_model() -> ApiResult<model_store::ModelRef> {
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

#[update]
async fn start_job(req: JobRequest) -> ApiResult<JobId> {
    let (caller, ctl) = caller_is_controller();
    let policy = settings::read(|s| s.policy.clone());
    access::may_start_jobs(caller, ctl, &policy)?;
    let limits = settings::read(|s| s.limits.clone());
    if jobs::active_count(caller) >= limits.max_active_jobs_per_caller && !ctl {
        return Err(ApiError::QuotaExceeded(format!(
            "you already have {} unfinished jobs (the limit per caller); cancel one or wait",
            limits.max_active_jobs_per_caller
        )));
    }
    ready_model()?;
    let seed = match req.seed {
        Some(s) => s,
        None => random_seed().await?,
    };
    // Re-read after the await: the model may have changed meanwhile.
    let model = ready_model()?;
    let (rec, job) = jobs::create(&model, caller, &req, seed, ic_cdk::api::time())?;
    let id = jobs::insert_new(rec, job)?;
    jobs::prune_finished(caller, limits.max_finished_jobs_per_caller);
    scheduler::ensure_armed();
    Ok(id)
}

async fn random_seed() -> ApiResult<u64> {
    let reply = ic_cdk::call::Call::unbounded_wait(Principal::management_canister(), "raw_rand")
        .await
        .map_err(|e| ApiError::InvalidArgument(format!("could not draw a random seed ({e}); pass a seed")))?;
    let bytes: Vec<u8> = reply
        .candid::<serde_bytes::ByteBuf>()
        .map_err(|e| ApiError::InvalidArgument(format!("raw_rand replied oddly ({e}); pass a seed")))?
        .into_vec();
    let mut seed = [0u8; 8];
    seed.copy_from_slice(&bytes[..8.min(bytes.len())]);
    Ok(u64::from_le_bytes(seed))
}

fn owned_job(id: JobId) -> ApiResult<jobs::JobRecord> {
    let (caller, ctl) = caller_is_controller();
    let rec = jobs::get_hot(id).ok_or_else(|| access::not_found(id))?;
    access::may_access_job(caller, ctl, rec.owner, id)?;
    Ok(rec)
}

/// Advances the job by as much as this message's budget allows.
#[update]
fn step(id: JobId) -> ApiResult<StepProgress> {
    let rec = owned_job(id)?;
    let model = ready_model()?;
    let mut budget = scheduler::message_budget();
    jobs::step_job(&model, rec, &mut budget, &scheduler::counter)
}

/// The job's state and the text generated from token index `since` on.
#[query]
fn poll(id: JobId, since: Option<u32>) -> ApiResult<JobView> {
    let rec = owned_job(id)?;
    Ok(jobs::view(&rec, since.unwrap_or(0)))
}

#[update]
fn cancel(id: JobId) -> ApiResult<JobStatus> {
    owned_job(id)?;
    jobs::cancel(id)
}

#[query]
fn list_jobs() -> Vec<JobSummary> {
    jobs::list(Some(msg_caller()))
}

// ---------------------------------------------------------------- admin

#[query]
fn admin_list_jobs() -> ApiResult<Vec<JobSummary>> {
    require_controller()?;
    Ok(jobs::list(None))
}

#[update]
fn set_policy(policy: AccessPolicy) -> ApiResult<()> {
    require_controller()?;
    settings::mutate(|s| s.policy = policy);
    Ok(())
}

#[update]
fn set_limits(limits: Limits) -> ApiResult<()> {
    require_controller()?;
    settings::mutate(|s| s.limits = limits);
    Ok(())
}

/// One background step of a job, called by the scheduler on this canister
/// itself so that a step that traps comes back to it as a reject (see
/// `scheduler::background_step`). Not part of the interface.
#[update(name = "<icllm internal> step", hidden = true)]
fn internal_step(id: JobId, shift: u32) {
    if msg_caller() != ic_cdk::api::canister_self() {
        ic_cdk::trap("only the canister's own scheduler calls this method");
    }
    scheduler::run_background_step(id, shift);
}

/// Sets the instructions one message may use (the subnet's limit; lower it to
/// leave headroom or when running under a smaller limit).
#[update]
fn set_message_instruction_limit(limit: u64) -> ApiResult<()> {
    require_controller()?;
    if limit < 10_000_000 {
        return Err(ApiError::InvalidArgument(
            "the message instruction limit must be at least 10 M".into(),
        ));
    }
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
        (Some(_), None, _) => "ready".to_string(),
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
        None => ModelInfo {
            state,
            architecture: String::new(),
            file_size: 0,
            sha256: vec![],
            n_layers: 0,
            dim: 0,
            n_heads: 0,
            n_kv_heads: 0,
            ffn_dim: 0,
            vocab_size: 0,
            context_length: 0,
            tensor_types: vec![],
            tokenizer: String::new(),
            heap_bytes: 0,
        },
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
        message_instruction_limit: scheduler::message_limit(),
    }
}

fn heap_bytes() -> u64 {
    #[cfg(target_arch = "wasm32")]
    {
        core::arch::wasm32::memory_size(0) as u64 * memory::WASM_PAGE
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        0
    }
}

// ---------------------------------------------------------------- ingress filter

/// Drops ingress the endpoint would refuse anyway, before it costs cycles.
#[inspect_message]
fn inspect_message() {
    let method = ic_cdk::api::msg_method_name();
    let (caller, ctl) = caller_is_controller();
    let allowed = match method.as_str() {
        "upload_begin"
        | "upload_chunk"
        | "upload_finalize"
        | "set_policy"
        | "set_limits"
        | "set_message_instruction_limit" => ctl,
        "start_job" => access::may_start_jobs(caller, ctl, &settings::read(|s| s.policy.clone())).is_ok(),
        "step" | "cancel" => caller != Principal::anonymous() || settings::read(|s| s.policy.allow_anonymous),
        _ => true,
    };
    if allowed {
        ic_cdk::api::accept_message();
    }
}

ic_cdk::export_candid!();

/// The interface as candid text, embedded in the wasm as the
/// `icp:public candid:service` custom section that tools read.
#[cfg(target_arch = "wasm32")]
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
}

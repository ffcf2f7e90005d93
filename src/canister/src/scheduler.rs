//! Background work: one interval timer that, in each of its messages, advances
//! the model pipeline (upload verification / loading) or one active job by a
//! bounded step, round-robin. An interval timer is rescheduled by the timer
//! library before its task runs, so a task that traps does not stop the
//! scheduler. It is disarmed when no work is left and re-armed by whatever
//! creates work (a job, a finalize, `post_upgrade`).

use crate::budget::MessageBudget;
use crate::model_store::{LoadedModel, Pipeline, Progress, Purpose};
use crate::{jobs, settings, state};
use icllm_api::{JobId, UploadState};
use std::rc::Rc;
use std::time::Duration;

/// How often the scheduler runs while there is work. The IC fires a due
/// timer at most once per round (about a second on application subnets), so
/// anything below the round time means "every round".
const TICK_INTERVAL: Duration = Duration::from_millis(1);

/// Instructions kept back in every message for what follows the last unit:
/// the checkpoint (KV rows, job record) and the reply. 1 % of the limit,
/// at least 1.5 M (a stories260K checkpoint with a 16-token batch costs ~1 M).
pub fn reserve(limit: u64) -> u64 {
    (limit / 100).clamp(1_500_000, 400_000_000)
}

pub fn counter() -> u64 {
    ic_cdk::api::performance_counter(0)
}

pub fn message_limit() -> u64 {
    settings::read(|s| s.message_instruction_limit)
}

/// A budget for the rest of this message.
pub fn message_budget() -> MessageBudget<fn() -> u64> {
    let limit = message_limit();
    MessageBudget::new(counter as fn() -> u64, limit, reserve(limit))
}

fn has_work() -> bool {
    state::read(|s| s.pipeline.is_some() || (s.model.is_some() && !s.active.is_empty()) || !s.notifications.is_empty())
}

/// How long a notified canister may take before the call is given up.
const NOTIFY_TIMEOUT_SECONDS: u32 = 60;

/// Sends the queued end-of-job calls: one-way (no reply is awaited, so a
/// caller that traps, rejects or never answers costs icllm nothing more),
/// bounded-wait, without cycles. A call the system refuses outright is
/// dropped: notifications are best effort, polling stays authoritative.
fn send_notifications() {
    for (owner, method, id, status) in state::mutate(|s| std::mem::take(&mut s.notifications)) {
        let _ = ic_cdk::call::Call::bounded_wait(owner, &method)
            .change_timeout(NOTIFY_TIMEOUT_SECONDS)
            .with_args(&(id, status))
            .oneway();
    }
}

/// Arms the scheduler if there is work and it is not armed.
pub fn ensure_armed() {
    if !has_work() || state::read(|s| s.scheduler.is_some()) {
        return;
    }
    let id = ic_cdk_timers::set_timer_interval(TICK_INTERVAL, || async { tick().await });
    state::mutate(|s| s.scheduler = Some(id));
}

/// Background steps of one job that may trap in a row before the job fails.
/// Each retry runs with half the instructions of the one before, so a job
/// whose budget estimate is too optimistic (or a limit set above the
/// subnet's) gets through; one that traps however small its budget fails
/// with a clear reason instead of being retried every round for ever.
pub const MAX_STEP_TRAPS: u32 = 8;

/// The internal method that runs one background step (see [`background_step`]).
pub const STEP_METHOD: &str = "<icllm internal> step";

/// One scheduler message: the model pipeline, then one job's step.
pub async fn tick() {
    send_notifications();
    advance_pipeline();
    if state::read(|s| s.model.is_some()) {
        if let Some(id) = next_job() {
            background_step(id).await;
        }
    }
    send_notifications();
    if !has_work() {
        if let Some(id) = state::mutate(|s| s.scheduler.take()) {
            ic_cdk_timers::clear_timer(id);
        }
    }
}

/// Steps job `id` in a message of its own: a call from the canister to
/// itself ([`STEP_METHOD`]).
///
/// A trap rolls back everything its message did, so a step that traps inside
/// the scheduler's message would leave no trace: the round-robin would pick
/// the same job again every round and starve the others. Run as a call, the
/// step's trap comes back here as a reject, in a message of its own that
/// does not trap: the trap is counted, the next attempt gets half the
/// budget, and after [`MAX_STEP_TRAPS`] in a row the job fails.
async fn background_step(id: JobId) {
    let Some(shift) = state::mutate(|s| {
        if !s.step_pending.insert(id) {
            return None; // a step of this job is already under way
        }
        let t = s.step_traps.entry(id).or_default();
        Some(t.shift)
    }) else {
        return;
    };
    let reply = ic_cdk::call::Call::unbounded_wait(ic_cdk::api::canister_self(), STEP_METHOD)
        .with_args(&(id, shift))
        .await;
    let failed = state::mutate(|s| {
        s.step_pending.remove(&id);
        let t = s.step_traps.entry(id).or_default();
        match reply {
            Ok(_) => {
                t.in_a_row = 0;
                None
            }
            Err(_) => {
                t.in_a_row += 1;
                t.shift = t.shift.max(t.in_a_row);
                (t.in_a_row >= MAX_STEP_TRAPS).then_some(*t)
            }
        }
    });
    if let Some(t) = failed {
        state::mutate(|s| s.step_traps.remove(&id));
        jobs::fail(
            id,
            &format!(
                "its step trapped {} times in a row, the last with 1/{} of the message instruction limit",
                t.in_a_row,
                1u64 << (t.shift - 1).min(63)
            ),
        );
    }
    if !state::read(|s| s.active.contains(&id)) {
        state::mutate(|s| s.step_traps.remove(&id));
    }
}

/// The body of [`STEP_METHOD`]: one step of job `id` with the message limit
/// halved `shift` times.
pub fn run_background_step(id: JobId, shift: u32) {
    let (Some(model), Some(rec)) = (state::read(|s| s.model.clone()), jobs::get_hot(id)) else {
        return;
    };
    let limit = (message_limit() >> shift.min(32)).max(1);
    let mut budget = MessageBudget::new(counter as fn() -> u64, limit, reserve(limit).min(limit / 2));
    let _ = jobs::step_job(&model, rec, &mut budget, &counter);
}

/// The active job after the last one served (round-robin).
fn next_job() -> Option<u64> {
    state::mutate(|s| {
        let next = s
            .active
            .range(s.last_served + 1..)
            .next()
            .or_else(|| s.active.iter().next())
            .copied();
        if let Some(id) = next {
            s.last_served = id;
        }
        next
    })
}

/// Advances the model pipeline as far as this message allows.
pub fn advance_pipeline() {
    let Some(mut pipeline) = state::mutate(|s| s.pipeline.take()) else {
        return;
    };
    let limit = message_limit();
    let usable = limit.saturating_sub(reserve(limit));
    let remaining = move || usable.saturating_sub(counter());
    // A fresh message also pays the scheduler's own overhead: leave 10 %.
    let progress = pipeline.advance(&remaining, usable / 10 * 9);
    let purpose = pipeline.purpose;
    match progress {
        Progress::Working { .. } => {
            if purpose == Purpose::Activate && !pipeline.is_hashing() {
                set_upload_state(UploadState::Loading);
            }
            state::mutate(|s| s.pipeline = Some(pipeline));
        }
        Progress::Ready(loaded) => activate(*loaded, purpose),
        Progress::Failed(reason) => {
            if purpose == Purpose::Activate {
                set_upload_state(UploadState::Failed(reason.clone()));
            }
            state::mutate(|s| s.pipeline_error = Some(reason));
            // An upload that made the active model leave the heap (see
            // `model_store::start_loading`) failed: bring that model back.
            if let (true, Some(slot)) = (
                state::read(|s| s.model.is_none()),
                settings::read(|s| s.active_model.clone()),
            ) {
                state::mutate(|s| s.pipeline = Some(Pipeline::reload(slot)));
            }
        }
    }
}

fn set_upload_state(st: UploadState) {
    settings::mutate(|s| {
        if let Some(u) = s.upload.as_mut() {
            u.state = st;
        }
    });
}

/// Makes a loaded model the one jobs run on.
fn activate(loaded: LoadedModel, purpose: Purpose) {
    if purpose == Purpose::Activate {
        jobs::fail_all_active("the model was replaced by a new upload");
        let c = &loaded.model.config;
        let slot = loaded.slot.clone();
        let (layers, kv_dim, trained_ctx) = (c.n_layers as u64, c.kv_dim as u64, c.context_length as u32);
        settings::mutate(|s| {
            let ctx = s.max_context.unwrap_or(trained_ctx).max(1);
            s.kv_slot_ctx = ctx;
            s.kv_row_bytes = kv_dim * 4;
            s.kv_slot_bytes = layers * 2 * ctx as u64 * kv_dim * 4;
            s.kv_slots.clear();
            // Rows of the old model mean nothing to the new one.
            s.kv_kept.clear();
            s.active_model = Some(slot);
            if let Some(u) = s.upload.as_mut() {
                u.state = UploadState::Done;
            }
        });
    }
    state::mutate(|s| {
        s.model = Some(Rc::new(loaded));
        s.pipeline_error = None;
        s.job_cache.clear();
    });
    // An upload whose verification an upgrade interrupted resumes now that
    // the active model is back (see `post_upgrade`).
    let interrupted = settings::read(|s| s.upload.clone())
        .filter(|u| purpose == Purpose::Reload && matches!(u.state, UploadState::Verifying | UploadState::Loading));
    if let Some(u) = interrupted {
        state::mutate(|s| s.pipeline = Some(Pipeline::verify_and_load(u.target)));
    }
}

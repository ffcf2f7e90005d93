//! Background work: one interval timer that, in each of its messages, advances
//! the model pipeline (upload verification / loading) or one active job by a
//! bounded step, round-robin. An interval timer is rescheduled by the timer
//! library before its task runs, so a task that traps does not stop the
//! scheduler. It is disarmed when no work is left and re-armed by whatever
//! creates work (a job, a finalize, `post_upgrade`).

use crate::budget::MessageBudget;
use crate::model_store::{LoadedModel, Progress, Purpose};
use crate::{jobs, settings, state};
use icllm_api::UploadState;
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
    state::read(|s| s.pipeline.is_some() || (s.model.is_some() && !s.active.is_empty()))
}

/// Arms the scheduler if there is work and it is not armed.
pub fn ensure_armed() {
    if !has_work() || state::read(|s| s.scheduler.is_some()) {
        return;
    }
    let id = ic_cdk_timers::set_timer_interval(TICK_INTERVAL, || async { tick() });
    state::mutate(|s| s.scheduler = Some(id));
}

/// One scheduler message.
pub fn tick() {
    advance_pipeline();
    if let (Some(id), Some(model)) = (next_job(), state::read(|s| s.model.clone())) {
        if let Some(rec) = jobs::get_hot(id) {
            let mut budget = message_budget();
            let _ = jobs::step_job(&model, rec, &mut budget, &counter);
        }
    }
    if !has_work() {
        if let Some(id) = state::mutate(|s| s.scheduler.take()) {
            ic_cdk_timers::clear_timer(id);
        }
    }
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
}

//! Background work: one interval timer that, in each of its messages, advances
//! the model pipeline (upload verification / loading) and one active job by a
//! bounded step, round-robin, together with the other generating jobs when
//! that job generates (see [`decode_group`]). An interval timer is rescheduled by the timer
//! library before its task runs, so a task that traps does not stop the
//! scheduler. It is disarmed when no work is left and re-armed by whatever
//! creates work (a job, a finalize, `post_upgrade`).

use crate::budget::MessageBudget;
use crate::env::{Env, Ic};
use crate::model_store::{LoadedModel, ModelRef, Pipeline, Progress, Purpose};
use crate::state::StepTraps;
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

pub fn message_limit() -> u64 {
    settings::read(|s| s.message_instruction_limit)
}

/// A budget for the rest of this message.
pub fn message_budget(env: &impl Env) -> MessageBudget<impl Fn() -> u64 + '_> {
    let limit = message_limit();
    MessageBudget::new(|| env.instructions(), limit, reserve(limit))
}

fn has_work() -> bool {
    state::read(|s| {
        s.pipeline.is_some()
            || (s.model.is_some() && !s.active.is_empty())
            || !s.notifications.is_empty()
            || !s.shard_releases.is_empty()
    }) || settings::read(|s| s.fan_out_pending)
}

/// How long a notified canister may take before the call is given up.
const NOTIFY_TIMEOUT_SECONDS: u32 = 60;

/// Sends the queued end-of-job calls: one-way (no reply is awaited, so a
/// caller that traps, rejects or never answers costs icllm nothing more),
/// bounded-wait, without cycles. A call the system refuses outright is
/// dropped: notifications are best effort, polling stays authoritative.
fn send_notifications() {
    crate::sharding::coordinator::send_releases();
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

/// Jobs stepped together at most: one pass over the weights per layer
/// for their tokens (their KV caches must fit the heap together).
pub const MAX_DECODE_GROUP: usize = 8;

/// One scheduler message: the model pipeline, then one step of the next
/// job in turn, with the other generating jobs when it generates.
pub async fn tick() {
    send_notifications();
    advance_pipeline(&Ic);
    if let Some(model) = state::read(|s| s.model.clone()) {
        if crate::sharding::is_coordinator() {
            if settings::read(|s| s.fan_out_pending) {
                crate::sharding::coordinator::fan_out().await;
            } else if let Some(id) = crate::sharding::coordinator::next_job() {
                crate::sharding::coordinator::step(id).await;
            }
        } else if let Some(id) = next_job() {
            background_step(decode_group(&model, id)).await;
        }
    }
    send_notifications();
    if !has_work() {
        if let Some(id) = state::mutate(|s| s.scheduler.take()) {
            ic_cdk_timers::clear_timer(id);
        }
    }
}

/// `lead` and, when it generates, up to [`MAX_DECODE_GROUP`] - 1 other
/// generating jobs (in round-robin order after it) whose KV caches fit the
/// heap beside it: decode steps share each pass over the weights, so every
/// job of the group advances as far as it would alone, for a fraction of
/// the instructions. Only jobs in the heap cache are looked at (a record
/// read from stable memory, for every active job on every tick, would cost
/// more than grouping saves); a job whose last step trapped goes alone
/// until one of its own returns.
fn decode_group(model: &ModelRef, lead: JobId) -> Vec<JobId> {
    let shape = jobs::kv_slots::job_shape(model);
    // The KV bytes of a cached job that can join a group, if it can.
    let joinable = |id: JobId| {
        let clean =
            state::read(|s| s.step_traps.get(&id).is_none_or(|t| t.in_a_row == 0) && !s.step_pending.contains(&id));
        clean
            .then(|| {
                jobs::cache::with_record(id, |r| {
                    jobs::steps_together(model, r).then(|| shape.heap_bytes(r.engine.kv_type(), r.engine.ctx_size()))
                })
            })
            .flatten()
            .flatten()
    };
    let Some(mut used) = joinable(lead) else {
        return vec![lead];
    };
    let room = settings::read(|s| s.heap_budget()).saturating_sub(model.info.heap_bytes);
    let mut group = vec![lead];
    let others: Vec<JobId> = state::read(|s| {
        let after = s.active.range(lead + 1..);
        after.chain(s.active.range(..lead)).copied().collect()
    });
    for id in others {
        if group.len() == MAX_DECODE_GROUP {
            break;
        }
        if let Some(bytes) = joinable(id).filter(|&b| used + b <= room) {
            used += bytes;
            group.push(id);
        }
    }
    group
}

/// Steps the jobs `ids` in a message of their own: a call from the canister
/// to itself ([`STEP_METHOD`]).
///
/// A trap rolls back everything its message did, so a step that traps inside
/// the scheduler's message would leave no trace: the round-robin would pick
/// the same job again every round and starve the others. Run as a call, the
/// step's trap comes back here as a reject, in a message of its own that
/// does not trap: the trap is counted against every job of the step, its
/// jobs' next attempts go alone with half the budget, and after
/// [`MAX_STEP_TRAPS`] in a row a job fails.
async fn background_step(ids: Vec<JobId>) {
    let (ids, shift) = state::mutate(|s| {
        let ids: Vec<JobId> = ids.into_iter().filter(|&id| s.step_pending.insert(id)).collect();
        let shift = ids
            .iter()
            .map(|id| s.step_traps.get(id).map_or(0, |t| t.shift))
            .max()
            .unwrap_or(0);
        (ids, shift)
    });
    if ids.is_empty() {
        return; // their steps are already under way
    }
    let reply = ic_cdk::call::Call::unbounded_wait(ic_cdk::api::canister_self(), STEP_METHOD)
        .with_args(&(ids.clone(), shift))
        .await;
    let failed: Vec<(JobId, StepTraps)> = state::mutate(|s| {
        let mut failed = Vec::new();
        for &id in &ids {
            s.step_pending.remove(&id);
            let t = s.step_traps.entry(id).or_default();
            match reply {
                Ok(_) => t.in_a_row = 0,
                Err(_) => {
                    t.in_a_row += 1;
                    t.shift = t.shift.max(t.in_a_row);
                    if t.in_a_row >= MAX_STEP_TRAPS {
                        failed.push((id, *t));
                    }
                }
            }
        }
        failed
    });
    for (id, t) in failed {
        state::mutate(|s| s.step_traps.remove(&id));
        jobs::fail(
            &Ic,
            id,
            &format!(
                "its step trapped {} times in a row, the last with 1/{} of the message instruction limit",
                t.in_a_row,
                1u64 << (t.shift - 1).min(63)
            ),
        );
    }
    for id in ids {
        if !state::read(|s| s.active.contains(&id)) {
            state::mutate(|s| s.step_traps.remove(&id));
        }
    }
}

/// The body of [`STEP_METHOD`]: one step of the jobs `ids` together with
/// the message limit halved `shift` times.
pub fn run_background_step(env: &impl Env, ids: &[JobId], shift: u32) {
    let Some(model) = state::read(|s| s.model.clone()) else {
        return;
    };
    let recs: Vec<jobs::JobRecord> = ids.iter().filter_map(|&id| jobs::get_hot(id)).collect();
    if recs.is_empty() {
        return;
    }
    let limit = (message_limit() >> shift.min(32)).max(1);
    let mut budget = MessageBudget::new(|| env.instructions(), limit, reserve(limit).min(limit / 2));
    let _ = jobs::step_jobs(env, &model, recs, &mut budget);
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
pub fn advance_pipeline(env: &impl Env) {
    let Some(mut pipeline) = state::mutate(|s| s.pipeline.take()) else {
        return;
    };
    let limit = message_limit();
    let usable = limit.saturating_sub(reserve(limit));
    let remaining = move || usable.saturating_sub(env.instructions());
    // A fresh message also pays the scheduler's own overhead: leave 10 %.
    let mut progress = pipeline.advance(&remaining, usable / 10 * 9);
    while let Progress::NeedsRoom { bytes } = progress {
        make_room_for_upload(env, bytes);
        progress = pipeline.advance(&remaining, usable / 10 * 9);
    }
    let purpose = pipeline.purpose;
    match progress {
        Progress::NeedsRoom { .. } => unreachable!("answered above"),
        Progress::Working { .. } => {
            if purpose == Purpose::Activate && !pipeline.is_hashing() {
                set_upload_state(UploadState::Loading);
            }
            state::mutate(|s| s.pipeline = Some(pipeline));
        }
        Progress::Ready(loaded) => activate(env, *loaded, purpose),
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

/// The active model keeps serving while a new upload loads, unless the two
/// (with the cached jobs' KV caches) do not fit the heap together: then it
/// makes way now. Its jobs fail with the reason; if the upload fails to
/// load, [`advance_pipeline`] reloads the active model from its slot.
fn make_room_for_upload(env: &impl Env, bytes: u64) {
    let in_use = state::read(|s| s.model.as_ref().map_or(0, |m| m.info.heap_bytes)) + jobs::cache::kv_heap_bytes();
    let budget = settings::read(|s| s.heap_budget());
    if in_use > 0 && bytes + in_use > budget {
        jobs::fail_all_active(
            env,
            "the model is being replaced by a new upload, and the two do not fit the heap together",
        );
        state::mutate(|s| s.model = None);
        jobs::cache::clear();
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
pub(crate) fn activate(env: &impl Env, loaded: LoadedModel, purpose: Purpose) {
    if purpose == Purpose::Activate {
        jobs::fail_all_active(env, "the model was replaced by a new upload");
        let c = &loaded.model.config;
        let ctx = settings::read(|s| s.max_context)
            .unwrap_or(c.usable_context() as u32)
            .max(1);
        jobs::kv_slots::configure(jobs::kv_slots::job_shape(&loaded), ctx);
        let slot = loaded.slot.clone();
        let coordinator = crate::sharding::is_coordinator();
        // The shards' failures with the model before do not count for this one.
        state::mutate(|s| s.fan_out_failure = None);
        settings::mutate(|s| {
            s.fan_out_pending = coordinator;
            s.active_model = Some(slot);
            if let Some(u) = s.upload.as_mut() {
                u.state = UploadState::Done;
            }
        });
    }
    state::mutate(|s| {
        s.model = Some(Rc::new(loaded));
        s.pipeline_error = None;
        if purpose == Purpose::Activate {
            s.shard_kv.clear();
        }
    });
    jobs::cache::clear();
    // An upload whose verification an upgrade interrupted resumes now that
    // the active model is back (see `post_upgrade`).
    let interrupted = settings::read(|s| s.upload.clone())
        .filter(|u| purpose == Purpose::Reload && matches!(u.state, UploadState::Verifying | UploadState::Loading));
    if let Some(u) = interrupted {
        state::mutate(|s| s.pipeline = Some(Pipeline::verify_and_load(u.target)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{activate_upload, env_at, store_blob, stories260k};
    use candid::Principal;
    use icllm_api::{JobRequest, JobStatus};

    /// Starts a job of `owner` on the active model and steps it once.
    fn running_job(env: &crate::env::FakeEnv, owner: u8) -> JobId {
        let model = state::read(|s| s.model.clone()).unwrap();
        let owner = Principal::from_slice(&[owner; 29]);
        let req = JobRequest {
            prompt: "Once upon a time".into(),
            max_tokens: 200,
            ..JobRequest::default()
        };
        let claim = jobs::SlotClaim::take(owner, false).unwrap();
        let (rec, job, adopted) = jobs::create(&model, owner, &req, None, 1, env.now_ns()).unwrap();
        let id = jobs::insert_new(rec, job, adopted, claim, None).unwrap();
        run_background_step(env, &[id], 13); // 40 B / 2^13: about 5 M instructions
        assert!(jobs::get(id).unwrap().status.is_active());
        id
    }

    fn failure(id: JobId) -> String {
        match jobs::get(id).unwrap().status {
            JobStatus::Failed(reason) => reason,
            other => panic!("job {id} is {other:?}"),
        }
    }

    /// Jobs of several callers (different prompts, sampling, KV types and
    /// contexts) run by the scheduler's rounds, generating ones in groups,
    /// in messages of about 5 M instructions, the heap cache emptied every
    /// twelfth round (only cached jobs join a group): each generates what
    /// the engine generates for it alone;
    /// groups form; every message's instructions are charged to its jobs.
    #[test]
    fn generating_jobs_stepped_in_groups_generate_what_each_generates_alone() {
        use icllm_api::KvCacheType;
        use icllm_engine::job::{step, StepOutcome, Unlimited};
        let env = env_at(0);
        let model = activate_upload(&env, store_blob(0, &stories260k()));
        let requests: Vec<JobRequest> = (0..5u8)
            .map(|i| JobRequest {
                prompt: [
                    "Once upon a time",
                    "Joe loves writing stories",
                    "The sun",
                    "A big red dog ran",
                    "Lily",
                ][i as usize]
                    .into(),
                max_tokens: 20 + 7 * i as u32,
                temperature: Some(if i % 2 == 0 { 0.0 } else { 0.8 }),
                seed: Some(i as u64),
                ctx_size: Some(64 + 16 * i as u32),
                kv_cache: Some(if i % 2 == 0 { KvCacheType::F32 } else { KvCacheType::Q8 }),
                ..JobRequest::default()
            })
            .collect();
        let alone: Vec<Vec<u32>> = requests
            .iter()
            .map(|req| {
                let (_, mut job, _) = jobs::create(&model, Principal::anonymous(), req, None, 1, 0).unwrap();
                assert!(matches!(
                    step(&model.model, &mut job, &mut Unlimited).outcome,
                    StepOutcome::Finished(_)
                ));
                job.state.generated().to_vec()
            })
            .collect();
        let ids: Vec<JobId> = requests
            .iter()
            .enumerate()
            .map(|(i, req)| {
                let owner = Principal::from_slice(&[i as u8 + 1; 29]);
                let claim = jobs::SlotClaim::take(owner, false).unwrap();
                let (rec, job, adopted) = jobs::create(&model, owner, req, None, 1, env.now_ns()).unwrap();
                jobs::insert_new(rec, job, adopted, claim, None).unwrap()
            })
            .collect();
        let (mut rounds, mut largest_group, mut charged) = (0, 0, 0);
        while let Some(lead) = next_job() {
            let group = decode_group(&model, lead);
            largest_group = largest_group.max(group.len());
            if rounds % 12 == 11 {
                jobs::cache::clear();
            }
            env.next_message(1_000_000);
            let before: u64 = ids.iter().map(|&id| jobs::get_hot(id).unwrap().instructions).sum();
            run_background_step(&env, &group, 13);
            let after: u64 = ids.iter().map(|&id| jobs::get_hot(id).unwrap().instructions).sum();
            // The message's count as the step read it last (this read adds
            // one more); shares are rounded down, by less than one each.
            let used = env.instructions() - 20_000;
            assert!(after - before <= used && after - before + group.len() as u64 >= used);
            charged += after - before;
            rounds += 1;
            assert!(rounds < 2_000, "the jobs do not finish");
        }
        for (i, &id) in ids.iter().enumerate() {
            let rec = jobs::get(id).unwrap();
            assert!(matches!(rec.status, JobStatus::Done(_)), "{:?}", rec.status);
            assert_eq!(rec.engine.generated(), alone[i].as_slice(), "job {i}");
        }
        assert!(largest_group >= 4, "groups of {largest_group} at most");
        assert!(charged > 0);
    }

    #[test]
    fn a_new_upload_that_fits_beside_the_active_model_replaces_it_once_loaded() {
        let env = env_at(0);
        let first = activate_upload(&env, store_blob(0, &stories260k()));
        let id = running_job(&env, 1);
        let second = activate_upload(&env, store_blob(1, &stories260k()));
        assert_eq!(failure(id), "the model was replaced by a new upload");
        assert!(!std::rc::Rc::ptr_eq(&first, &second));
        assert_eq!(settings::read(|s| s.active_model.clone()), Some(second.slot.clone()));
    }

    #[test]
    fn a_new_upload_that_does_not_fit_beside_the_active_model_makes_it_give_way_first() {
        let env = env_at(0);
        let first = activate_upload(&env, store_blob(0, &stories260k()));
        let id = running_job(&env, 1);
        // Room for one model and a job's cache, not for two models.
        let budget = 2 * first.info.heap_bytes - 1;
        settings::mutate(|s| s.heap_budget = Some(budget));
        let slot = store_blob(1, &stories260k());
        state::mutate(|s| s.pipeline = Some(Pipeline::verify_and_load(slot.clone())));
        while state::read(|s| s.pipeline.is_some()) {
            env.next_message(1_000_000);
            advance_pipeline(&env);
        }
        // Its jobs failed with the reason it gave way, not at activation.
        assert_eq!(
            failure(id),
            "the model is being replaced by a new upload, and the two do not fit the heap together"
        );
        assert_eq!(state::read(|s| s.model.as_ref().map(|m| m.slot.clone())), Some(slot));
        assert_eq!(jobs::cache::kv_heap_bytes(), 0);
    }
}

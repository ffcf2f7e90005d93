//! `generate_query`: a whole short generation inside one query message,
//! free for the caller and answered at once, for small models and short
//! outputs. It runs the job path (`jobs::create`, the engine's `step`)
//! under one message budget and keeps nothing (a query's changes are
//! discarded). A generation that does not fit is refused with the numbers,
//! never trapped: the budget stops before the limit.

use crate::budget::MessageBudget;
use crate::env::Env;
use crate::jobs;
use crate::model_store::LoadedModel;
use candid::Principal;
use icllm_api::{ApiError, ApiResult, JobRequest, QueryGeneration};
use icllm_engine::job::{step, StepOutcome};

/// Runs `req` to its end within `limit` instructions, as `caller` (whose
/// kept conversations may lend it cached rows, as for a job). Without a
/// seed the RNG starts from 0: a query cannot draw randomness.
pub fn generate(
    model: &LoadedModel,
    caller: Principal,
    req: &JobRequest,
    env: &impl Env,
    limit: u64,
) -> ApiResult<QueryGeneration> {
    if req.continue_from.is_some() || req.notify.is_some() {
        return Err(ApiError::InvalidArgument(
            "continue_from and notify need a job: use start_job".into(),
        ));
    }
    let (mut rec, mut job, _) = jobs::create(model, caller, req, None, req.seed.unwrap_or(0), env.now_ns())?;
    let mut budget = MessageBudget::new(|| env.instructions(), limit, crate::scheduler::reserve(limit));
    let report = step(&model.model, &mut job, &mut budget);
    let generated = job.state.generated().to_vec();
    let reason = match &report.outcome {
        StepOutcome::Finished(reason) => *reason,
        StepOutcome::Failed(e) => return Err(ApiError::InvalidArgument(format!("the generation failed: {e}"))),
        StepOutcome::Yielded => {
            return Err(ApiError::QuotaExceeded(format!(
                "the generation does not fit one query: after {} of at most {} tokens (prompt {} tokens, {} of them \
                 processed) it had spent {} of the {limit} instructions a query may use here; start a job instead",
                generated.len(),
                req.max_tokens,
                job.state.prompt().len(),
                (job.state.cursor().pos as usize).min(job.state.prompt().len()),
                env.instructions(),
            )))
        }
    };
    let mut text = String::new();
    for &t in &generated {
        text.push_str(&rec.decoder.push(&model.tokenizer, t));
    }
    text.push_str(&rec.decoder.finish());
    Ok(QueryGeneration {
        text,
        tokens: generated,
        finish_reason: jobs::finish_name(&reason).into(),
        prompt_tokens: job.state.prompt().len() as u32,
        instructions: env.instructions(),
    })
}

//! Resumable generation jobs.
//!
//! A [`Job`] is a prompt, sampling settings, a KV cache and a cursor. [`step`]
//! runs units of the forward pass (see [`crate::model::forward`]) until the
//! [`Budget`] refuses the next one, then returns; the next call resumes at the
//! cursor. Between calls the whole job is plain data: [`JobState`] (small,
//! serde) and [`KvCache`] (large, with a dirty range so only the rows written
//! since the last checkpoint need saving). On a model with short-convolution
//! layers (LFM2) the job state also carries each conv layer's last inputs
//! (a few rows of `dim`), updated by the unit that consumes them, so a job
//! stopped between any two units resumes to the same bits.
//!
//! Units, in order, for a batch of tokens at positions `pos..pos + n`:
//! ```text
//! for layer in 0..n_layers: Attention(layer) (or its short conv), Ffn(layer)
//! Head   (only when the batch ends with the last known token: final norm, logits, sample)
//! ```
//! Prompt tokens go through the layers in batches whose size is chosen when
//! the batch starts: the largest `n ≤ max_batch` for which the budget accepts
//! the batch's most expensive unit (asked before the first unit runs). Generated tokens go one at a time. Results are bit-identical
//! whatever the batch sizes and wherever the job was interrupted.

use crate::logprobs::{self, Logprobs, TooManyAlternatives};
use crate::model::forward;
use crate::model::Model;
use crate::sampler::{self, Rng, SamplingError, SamplingParams};
use serde::{Deserialize, Serialize};

pub use crate::kv::{KvCache, KvShape, KvType};

/// Default cap on prompt tokens processed together.
pub const DEFAULT_MAX_BATCH: u32 = 64;

/// Asked before each unit of work with the unit's estimated multiply-adds.
///
/// Returning `true` commits: the engine runs that unit right away. Returning
/// `false` makes [`step`] return (the engine may first ask again with a
/// smaller batch when a batch is being started). A budget that refuses
/// everything yields a step with zero units: [`step`] never loops waiting.
pub trait Budget {
    fn can_afford(&mut self, macs: u64) -> bool;

    /// Asked before a prompt batch starts, with the batch's most expensive
    /// unit. Its later units are asked with [`Budget::can_afford`] in later
    /// calls, whose own starting costs may differ: a budget may answer this
    /// more strictly so that a batch it accepts can always continue.
    fn can_afford_batch(&mut self, macs: u64) -> bool {
        self.can_afford(macs)
    }

    /// Called right after the budget accepted a unit, with the unit's phase
    /// and its own multiply-adds (a batch start is asked with its largest
    /// unit but runs a smaller one first), so a budget can account costs by
    /// phase and learn its cost per multiply-add from what actually ran.
    fn unit_started(&mut self, _phase: Phase, _macs: u64) {}
}

/// Whether a unit processes prompt tokens or generated ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The unit's batch holds prompt tokens (its head samples the first generated token).
    Prefill,
    /// The unit processes a generated token.
    Decode,
}

/// Accepts every unit: runs a job to the end in one step.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unlimited;

impl Budget for Unlimited {
    fn can_afford(&mut self, _macs: u64) -> bool {
        true
    }
}

/// Accepts a fixed number of units, whatever their cost.
#[derive(Debug, Clone, Copy)]
pub struct UnitBudget {
    pub remaining: u32,
}

impl UnitBudget {
    pub fn new(units: u32) -> UnitBudget {
        UnitBudget { remaining: units }
    }
}

impl Budget for UnitBudget {
    fn can_afford(&mut self, _macs: u64) -> bool {
        if self.remaining == 0 {
            return false;
        }
        self.remaining -= 1;
        true
    }
}

/// Which unit of the current batch runs next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stage {
    /// attn_norm + qkv → rope → write kv → attention → out proj + residual;
    /// on a conv layer, norm → in proj → short conv → out proj + residual
    Attention,
    /// ffn_norm + SwiGLU FFN + residual
    Ffn,
    /// final norm → logits → sample
    Head,
}

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// Position of the first token of the current batch; every earlier
    /// position is in the KV cache for all layers.
    pub pos: u32,
    /// Tokens in the current batch; 0 = no batch started.
    pub batch_len: u32,
    pub layer: u32,
    pub stage: Stage,
}

/// Why a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FinishReason {
    /// A stop token (EOS) was sampled; it is not in `generated`.
    Eos,
    /// `max_new_tokens` tokens were generated.
    MaxTokens,
    /// The last generated token has no position left in the context.
    ContextFull,
}

/// Result of one [`step`].
#[derive(Debug, Clone, PartialEq)]
pub enum StepOutcome {
    /// Stopped because the budget refused the next unit; call again.
    Yielded,
    Finished(FinishReason),
    /// The job does not match the model or is corrupt; it cannot continue.
    Failed(String),
}

/// What one [`step`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct StepReport {
    pub outcome: StepOutcome,
    /// Units run in this step.
    pub units: u32,
    /// Estimated multiply-adds of those units.
    pub macs: u64,
    /// Tokens generated in this step, in order.
    pub tokens: Vec<u32>,
}

/// Why a job could not be created.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum JobError {
    #[error("the prompt is empty: a job needs at least one token (e.g. BOS)")]
    EmptyPrompt,
    #[error("ctx_size must be at least 1")]
    ZeroContext,
    #[error(
        "the prompt has {prompt_len} tokens but the context holds {ctx_size}: shorten the prompt or raise ctx_size"
    )]
    PromptTooLong { prompt_len: usize, ctx_size: u32 },
    #[error("prompt token {index} has id {token}, outside the model's vocabulary of {vocab_size}")]
    TokenOutOfVocab {
        index: usize,
        token: u32,
        vocab_size: usize,
    },
    #[error("a KV cache of {ctx_size} positions does not fit in memory on this platform")]
    ContextTooLarge { ctx_size: u32 },
    #[error("{0}")]
    KvType(String),
    #[error(
        "cannot skip {rows} cached positions: only a job that has not stepped can, and at least one of its \
         {prompt_len} prompt tokens must be prefilled"
    )]
    CachedPrefix { rows: u32, prompt_len: usize },
    #[error("invalid sampling parameters: {0}")]
    Sampling(#[from] SamplingError),
    #[error("{0}")]
    Logprobs(#[from] TooManyAlternatives),
    #[error("log-probabilities must be asked for before the job generates a token")]
    LogprobsTooLate,
    #[error(
        "cannot skip {rows} cached positions: the model's short-convolution layers keep a state that \
         the KV rows do not hold"
    )]
    CachedPrefixWithConvState { rows: u32 },
}

/// Everything about a job except its KV cache: small, serde.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobState {
    prompt: Vec<u32>,
    generated: Vec<u32>,
    params: SamplingParams,
    max_new_tokens: u32,
    ctx_size: u32,
    /// How the KV cache stores keys and values (records from before the
    /// choice existed were f32).
    #[serde(default)]
    kv_type: KvType,
    stop_tokens: Vec<u32>,
    max_batch: u32,
    rng: Rng,
    cursor: Cursor,
    /// Hidden state of the current batch between units: (batch_len, dim).
    #[serde(with = "f32_bytes")]
    hidden: Vec<f32>,
    /// The short-convolution layers' last inputs (LFM2), oldest first:
    /// (n_conv_layers, conv_kernel - 1, dim); a conv layer's rows cover
    /// positions up to the last one it processed. Empty for other models.
    #[serde(default, with = "f32_bytes")]
    conv_state: Vec<f32>,
    finished: Option<FinishReason>,
    /// Units run over the job's life.
    units_run: u64,
    /// Log-probabilities of the generated tokens, one row each, when the
    /// job asked for them; absent (not even serialized) otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    logprobs: Option<Logprobs>,
}

impl JobState {
    pub fn prompt(&self) -> &[u32] {
        &self.prompt
    }
    /// Generated tokens so far (stop tokens excluded).
    pub fn generated(&self) -> &[u32] {
        &self.generated
    }
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }
    pub fn max_new_tokens(&self) -> u32 {
        self.max_new_tokens
    }
    pub fn ctx_size(&self) -> u32 {
        self.ctx_size
    }
    pub fn kv_type(&self) -> KvType {
        self.kv_type
    }
    pub fn stop_tokens(&self) -> &[u32] {
        &self.stop_tokens
    }
    pub fn max_batch(&self) -> u32 {
        self.max_batch
    }
    pub fn cursor(&self) -> Cursor {
        self.cursor
    }
    pub fn finish_reason(&self) -> Option<FinishReason> {
        self.finished
    }
    pub fn units_run(&self) -> u64 {
        self.units_run
    }
    /// The short-convolution layers' last inputs (empty for models without them).
    pub fn conv_state(&self) -> &[f32] {
        &self.conv_state
    }
    /// Log-probabilities of the generated tokens, if the job keeps them.
    pub fn logprobs(&self) -> Option<&Logprobs> {
        self.logprobs.as_ref()
    }

    /// The phase of the unit at the cursor: prefill while the current (or
    /// next) batch starts inside the prompt.
    pub fn phase(&self) -> Phase {
        if (self.cursor.pos as usize) < self.prompt.len() {
            Phase::Prefill
        } else {
            Phase::Decode
        }
    }

    /// Whether the job generates one token at a time, and so can share
    /// passes over the weights with other such jobs ([`step_together`]).
    pub fn can_step_together(&self, model: &Model) -> bool {
        self.finished.is_none() && decode_key(model, self).is_some()
    }

    /// Positions whose KV rows are complete in every layer: `0..cursor.pos`
    /// (a batch under way has written some layers' rows only).
    pub fn complete_positions(&self) -> u32 {
        self.cursor.pos
    }

    /// How many leading tokens of `prompt` this job's KV rows already hold:
    /// the longest common prefix of `prompt` with the tokens at the complete
    /// positions, capped at `prompt.len() - 1` (the last prompt token is
    /// always prefilled: its logits give the first generated token).
    /// None on a model with short-convolution layers: their state at the
    /// prefix's end is not kept.
    pub fn reusable_prefix(&self, prompt: &[u32]) -> usize {
        if !self.conv_state.is_empty() {
            return 0;
        }
        let complete = (self.complete_positions() as usize).min(self.total_tokens());
        let cap = prompt.len().saturating_sub(1).min(complete);
        (0..cap).take_while(|&i| self.token_at(i) == prompt[i]).count()
    }

    /// Prompt and generated tokens: the sequence the cache is filled with.
    fn total_tokens(&self) -> usize {
        self.prompt.len() + self.generated.len()
    }

    fn token_at(&self, i: usize) -> u32 {
        match i.checked_sub(self.prompt.len()) {
            None => self.prompt[i],
            Some(g) => self.generated[g],
        }
    }
}

/// A generation job: its state and its KV cache.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub state: JobState,
    pub kv: KvCache,
}

impl Job {
    /// A job that generates up to `max_new_tokens` after `prompt_tokens`
    /// within `ctx_size` positions (which may exceed the model's trained
    /// context). Stops at the model's EOS token, if it names one.
    pub fn new(
        model: &Model,
        prompt_tokens: Vec<u32>,
        params: SamplingParams,
        max_new_tokens: u32,
        ctx_size: u32,
    ) -> Result<Job, JobError> {
        Job::with_kv_type(model, prompt_tokens, params, max_new_tokens, ctx_size, KvType::F32)
    }

    /// [`Job::new`] with a KV cache of type `kv_type`.
    pub fn with_kv_type(
        model: &Model,
        prompt_tokens: Vec<u32>,
        params: SamplingParams,
        max_new_tokens: u32,
        ctx_size: u32,
        kv_type: KvType,
    ) -> Result<Job, JobError> {
        let c = &model.config;
        if prompt_tokens.is_empty() {
            return Err(JobError::EmptyPrompt);
        }
        if ctx_size == 0 {
            return Err(JobError::ZeroContext);
        }
        if prompt_tokens.len() > ctx_size as usize {
            return Err(JobError::PromptTooLong {
                prompt_len: prompt_tokens.len(),
                ctx_size,
            });
        }
        if let Some((index, &token)) = prompt_tokens
            .iter()
            .enumerate()
            .find(|(_, &t)| t as usize >= c.vocab_size)
        {
            return Err(JobError::TokenOutOfVocab {
                index,
                token,
                vocab_size: c.vocab_size,
            });
        }
        params.validate()?;
        // Sliding layers keep their window and one prompt batch.
        let shape = KvShape::of_job(c, DEFAULT_MAX_BATCH);
        shape.check(kv_type).map_err(JobError::KvType)?;
        let kv = KvCache::with_type(shape, ctx_size, kv_type).ok_or(JobError::ContextTooLarge { ctx_size })?;
        let state = JobState {
            prompt: prompt_tokens,
            generated: Vec::new(),
            rng: Rng::new(params.seed),
            params,
            max_new_tokens,
            ctx_size,
            kv_type,
            stop_tokens: c.eos_token_id.into_iter().collect(),
            max_batch: DEFAULT_MAX_BATCH,
            cursor: Cursor {
                pos: 0,
                batch_len: 0,
                layer: 0,
                stage: Stage::Attention,
            },
            hidden: Vec::new(),
            conv_state: vec![0.0; c.conv_state_len()],
            finished: (max_new_tokens == 0).then_some(FinishReason::MaxTokens),
            units_run: 0,
            logprobs: None,
        };
        Ok(Job { state, kv })
    }

    /// Replaces the stop tokens (default: the model's EOS).
    pub fn set_stop_tokens(&mut self, stop_tokens: Vec<u32>) {
        self.state.stop_tokens = stop_tokens;
    }

    /// How many of `earlier`'s KV rows this fresh job may start from
    /// ([`Job::skip_cached_prefix`]), `saved` of them being stored: its
    /// prompt's shared prefix, as far as this job's cache can hold it, and
    /// none when the two contexts rotate K differently (LongRoPE's short
    /// and long factors).
    pub fn adoptable_rows(&self, model: &Model, earlier: &JobState, saved: u32) -> u32 {
        if model.uses_long_rope(earlier.ctx_size) != model.uses_long_rope(self.state.ctx_size) {
            return 0;
        }
        let prefix = earlier.reusable_prefix(&self.state.prompt) as u32;
        self.kv.shape().restorable(prefix, saved)
    }

    /// Starts prefill at position `rows`: the caller has put the KV rows of
    /// positions `0..rows` (computed for the same prompt tokens, e.g. by an
    /// earlier job, see [`JobState::reusable_prefix`]) into `self.kv`.
    /// Only before the first step, and `rows` < the prompt's length (the
    /// last prompt token must run to give logits).
    pub fn skip_cached_prefix(&mut self, rows: u32) -> Result<(), JobError> {
        let s = &mut self.state;
        if rows > 0 && !s.conv_state.is_empty() {
            return Err(JobError::CachedPrefixWithConvState { rows });
        }
        let fresh = s.units_run == 0 && s.cursor.pos == 0 && s.cursor.batch_len == 0 && s.generated.is_empty();
        if !fresh || rows as usize >= s.prompt.len() {
            return Err(JobError::CachedPrefix {
                rows,
                prompt_len: s.prompt.len(),
            });
        }
        s.cursor.pos = rows;
        Ok(())
    }

    /// Keeps the log-probability of every generated token and of its
    /// `top_n` (≤ 5) most likely alternatives (see [`crate::logprobs`]).
    /// Only before the first token is generated.
    pub fn keep_logprobs(&mut self, top_n: usize) -> Result<(), JobError> {
        if !self.state.generated.is_empty() {
            return Err(JobError::LogprobsTooLate);
        }
        self.state.logprobs = Some(Logprobs::new(top_n)?);
        Ok(())
    }

    /// Caps the prompt batch size (at least 1). Takes effect at the next batch.
    pub fn set_max_batch(&mut self, max_batch: u32) {
        self.state.max_batch = max_batch.max(1);
    }

    /// Checks that the job fits the model and is internally consistent
    /// (it may have been restored from storage).
    fn check(&self, model: &Model) -> Result<(), String> {
        let (c, s, kv) = (&model.config, &self.state, &self.kv);
        // A full cache serves any model; a ring only the one it was made for.
        let expected = match kv.shape().ring {
            Some(r) => KvShape::of_job(c, r.batch),
            None => KvShape::of(c),
        };
        if kv.shape() != expected {
            return Err(format!(
                "KV cache is {:?} but the model's is {:?}",
                kv.shape(),
                expected
            ));
        }
        if !kv.is_consistent() || kv.ctx() != s.ctx_size || kv.kv_type() != s.kv_type {
            return Err("KV cache size or type does not match the job".into());
        }
        s.params
            .validate()
            .map_err(|e| format!("job sampling parameters: {e}"))?;
        let cur = s.cursor;
        if cur.pos as usize + cur.batch_len as usize > s.total_tokens().min(s.ctx_size as usize)
            || cur.layer as usize >= c.n_layers
            || s.hidden.len() != cur.batch_len as usize * c.dim
            || s.conv_state.len() != c.conv_state_len()
            || s.max_batch == 0
            || s.logprobs
                .as_ref()
                .is_some_and(|l| !l.is_consistent() || l.len() != s.generated.len())
        {
            return Err(format!(
                "job cursor {cur:?} is inconsistent with its tokens or the model"
            ));
        }
        Ok(())
    }
}

/// A batch of a job of a sharded model on its way through the shards
/// (see [`Job::pipeline_batch`]).
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineBatch {
    /// The position of its first token.
    pub pos0: u32,
    /// Its tokens' embeddings: (n, dim).
    pub hidden: Vec<f32>,
}

/// Sharded generation, the coordinator's side: the coordinator holds the
/// ends of the model ([`crate::model::ModelPart::ends`]), the job's tokens
/// and sampler, and no KV rows; each shard holds a layer range and its rows
/// ([`forward::layers`]). A batch is embedded here, goes through the shards
/// in order, and comes back to [`Job::pipeline_finish`], whose head samples
/// the next token when the batch ends with the last known one. Batches and
/// units are the ones [`step`] runs, so the tokens are the same bits.
impl Job {
    /// The next batch, of at most `max_n` tokens (and the job's own
    /// `max_batch`), embedded by `ends`; `None` once the job has finished.
    pub fn pipeline_batch(&self, ends: &Model, max_n: usize) -> Result<Option<PipelineBatch>, String> {
        let s = &self.state;
        if s.finished.is_some() {
            return Ok(None);
        }
        let pos0 = s.cursor.pos;
        let n = (s.total_tokens().saturating_sub(pos0 as usize))
            .min(s.ctx_size.saturating_sub(pos0) as usize)
            .min(s.max_batch as usize)
            .min(max_n);
        if n == 0 {
            return Err(format!("no token to process at position {pos0}"));
        }
        let tokens: Vec<u32> = (pos0 as usize..pos0 as usize + n).map(|i| s.token_at(i)).collect();
        if let Some(&t) = tokens.iter().find(|&&t| t as usize >= ends.config.vocab_size) {
            return Err(format!(
                "token id {t} is outside the vocabulary of {}",
                ends.config.vocab_size
            ));
        }
        let mut hidden = vec![0.0; n * ends.config.dim];
        forward::embed(ends, &tokens, &mut hidden);
        Ok(Some(PipelineBatch { pos0, hidden }))
    }

    /// The batch at `pos0` came back through every layer as `hidden` (n,
    /// dim): the cursor moves past it and, when it ends with the last known
    /// token, the head samples the next one. A batch that is not the one at
    /// the cursor (a late or repeated answer) is refused, changing nothing.
    pub fn pipeline_finish(&mut self, ends: &Model, pos0: u32, hidden: &[f32]) -> Result<StepReport, String> {
        let (s, dim) = (&mut self.state, ends.config.dim);
        let n = hidden.len() / dim.max(1);
        if s.finished.is_some() || s.cursor.pos != pos0 || s.cursor.batch_len != 0 {
            return Err(format!("the job is not at a batch starting at position {pos0}"));
        }
        if n == 0 || hidden.len() != n * dim || pos0 as usize + n > s.total_tokens().min(s.ctx_size as usize) {
            return Err(format!(
                "{} values are not a batch of rows of {dim} at position {pos0}",
                hidden.len()
            ));
        }
        let mut report = StepReport::new();
        s.cursor.batch_len = n as u32;
        s.units_run += 1;
        report.units = 1;
        if pos0 as usize + n == s.total_tokens() {
            let mut logits = crate::scratch::Scratch::new(ends.config.vocab_size);
            forward::logits(ends, &hidden[(n - 1) * dim..], &mut logits);
            report.macs = forward::head_macs(ends);
            report.tokens.extend(sample_and_end_batch(s, &mut logits));
        } else {
            end_batch(s);
        }
        if let Some(reason) = s.finished {
            report.outcome = StepOutcome::Finished(reason);
        }
        Ok(report)
    }

    /// Moves the cursor back to `pos` (a shard holds the rows of the
    /// positions before it only, having lost the others): the batches from
    /// there are sent again, and no token is sampled twice.
    pub fn pipeline_rewind(&mut self, pos: u32) {
        let s = &mut self.state;
        if pos < s.cursor.pos {
            s.cursor = Cursor {
                pos,
                batch_len: 0,
                layer: 0,
                stage: Stage::Attention,
            };
            s.hidden.clear();
        }
    }
}

/// Runs units of `job` until `budget` refuses one or the job finishes.
///
/// A finished job returns `Finished` again with zero units. If the budget
/// refuses even the first unit, the step returns `Yielded` with zero units:
/// the caller decides whether to retry with a larger budget.
pub fn step(model: &Model, job: &mut Job, budget: &mut dyn Budget) -> StepReport {
    let mut report = StepReport::new();
    if start_report(model, job, &mut report) {
        run_alone(model, job, budget, &mut report, |_| false);
    }
    report
}

/// Runs several jobs of `model` under one `budget`, those that are
/// generating together: one pass over each layer's weights for all their
/// tokens (one per job, each with its own cache, position and sampler).
/// Every job's tokens are bit for bit those it generates alone, wherever
/// the budget stops it (see [`crate::model::forward`]).
///
/// Jobs still reading their prompt run first, alone, in order, until they
/// generate (the caller decides which jobs share a budget, and so their
/// shares). Then the generating jobs at the cursor most of them share form
/// the group; the other generating jobs first catch up with it alone, unit
/// by unit. Returns one report per job, as [`step`] would.
pub fn step_together(model: &Model, jobs: &mut [&mut Job], budget: &mut dyn Budget) -> Vec<StepReport> {
    let mut reports: Vec<StepReport> = jobs.iter().map(|_| StepReport::new()).collect();
    let mut open: Vec<bool> = jobs
        .iter()
        .zip(&mut reports)
        .map(|(job, report)| start_report(model, job, report))
        .collect();
    let key_of = |job: &Job| decode_key(model, &job.state);
    for (i, job) in jobs.iter_mut().enumerate() {
        if open[i] && key_of(job).is_none() {
            open[i] = run_alone(model, job, budget, &mut reports[i], |j| key_of(j).is_some());
        }
    }
    let keys: Vec<Option<GroupKey>> = jobs
        .iter()
        .zip(&open)
        .map(|(j, &o)| o.then(|| key_of(j)).flatten())
        .collect();
    // Ties go to the earliest job's cursor.
    let group_key = keys
        .iter()
        .enumerate()
        .filter_map(|(i, k)| Some((i, (*k)?)))
        .max_by_key(|&(i, k)| (keys.iter().filter(|&&o| o == Some(k)).count(), std::cmp::Reverse(i)))
        .map(|(_, k)| k);
    if let Some(mut key) = group_key {
        for (i, job) in jobs.iter_mut().enumerate() {
            if open[i] && keys[i].is_some_and(|k| k != key) {
                open[i] = run_alone(model, job, budget, &mut reports[i], |j| key_of(j) == Some(key));
            }
        }
        // A group the budget refuses is halved until it fits or is one
        // job, so a message always advances what a solo step would: a
        // budget that fits one job's unit but not eight must not stall all
        // eight forever.
        let mut cap = usize::MAX;
        loop {
            let members: Vec<usize> = (0..jobs.len())
                .filter(|&i| open[i] && key_of(jobs[i]) == Some(key))
                .take(cap)
                .collect();
            if members.is_empty() {
                break;
            }
            let mut group: Vec<&mut Job> = jobs
                .iter_mut()
                .enumerate()
                .filter(|(i, _)| members.contains(i))
                .map(|(_, j)| &mut **j)
                .collect();
            let Some(done) = run_group_unit(model, &mut group, budget) else {
                if members.len() == 1 {
                    break;
                }
                cap = members.len() / 2;
                continue;
            };
            for (&i, d) in members.iter().zip(done) {
                open[i] = record(&mut jobs[i].state, &mut reports[i], d);
            }
            // The members still going share their next cursor.
            match members.iter().find(|&&i| open[i]).and_then(|&i| key_of(jobs[i])) {
                Some(next) => key = next,
                None => break,
            }
        }
    }
    reports
}

impl StepReport {
    fn new() -> StepReport {
        StepReport {
            outcome: StepOutcome::Yielded,
            units: 0,
            macs: 0,
            tokens: Vec::new(),
        }
    }
}

/// Reports a finished or inconsistent job before any unit: false if it
/// cannot run.
fn start_report(model: &Model, job: &Job, report: &mut StepReport) -> bool {
    if let Some(reason) = job.state.finished {
        report.outcome = StepOutcome::Finished(reason);
        return false;
    }
    if let Err(msg) = job.check(model) {
        report.outcome = StepOutcome::Failed(msg);
        return false;
    }
    true
}

/// Runs units of `job` alone until the budget refuses one, the job ends,
/// or `arrived(job)`; true while the job can go on.
fn run_alone(
    model: &Model,
    job: &mut Job,
    budget: &mut dyn Budget,
    report: &mut StepReport,
    arrived: impl Fn(&Job) -> bool,
) -> bool {
    while !arrived(job) {
        match run_unit(model, job, budget) {
            Err(msg) => {
                report.outcome = StepOutcome::Failed(msg);
                return false;
            }
            Ok(None) => return true,
            Ok(Some(done)) => {
                if !record(&mut job.state, report, done) {
                    return false;
                }
            }
        }
    }
    true
}

/// Adds a unit that ran to the job and its report: false once the job ended.
fn record(s: &mut JobState, report: &mut StepReport, done: UnitDone) -> bool {
    report.units += 1;
    report.macs += done.macs;
    s.units_run += 1;
    report.tokens.extend(done.token);
    match s.finished {
        Some(reason) => {
            report.outcome = StepOutcome::Finished(reason);
            false
        }
        None => true,
    }
}

/// Where a job generating one token at a time is in its token's units:
/// (batch length, layer, stage). Jobs with the same key run their next
/// unit together. `None` while the job reads its prompt.
type GroupKey = (u32, u32, Stage);

fn decode_key(model: &Model, s: &JobState) -> Option<GroupKey> {
    let cur = s.cursor;
    let one_token = match cur.batch_len {
        0 => s.total_tokens() == cur.pos as usize + 1,
        n => n == 1,
    };
    let in_vocab = s.token_at(cur.pos as usize) < model.config.vocab_size as u32;
    (one_token && in_vocab && s.phase() == Phase::Decode).then_some((cur.batch_len, cur.layer, cur.stage))
}

/// Runs the unit at the group's shared cursor for every job of `group`
/// (each generating one token) if the budget accepts their summed cost;
/// what each did, in order, or `None` if refused.
fn run_group_unit(model: &Model, group: &mut [&mut Job], budget: &mut dyn Budget) -> Option<Vec<UnitDone>> {
    let c = &model.config;
    let cur = group[0].state.cursor;
    let layer = cur.layer as usize;
    let macs: Vec<u64> = group
        .iter()
        .map(|j| match (cur.batch_len, cur.stage) {
            (0, _) | (_, Stage::Attention) => forward::mixer_block_macs(model, layer, j.state.cursor.pos, 1),
            (_, Stage::Ffn) => forward::ffn_block_macs(model, 1),
            (_, Stage::Head) => forward::head_macs(model),
        })
        .collect();
    let total = macs.iter().sum();
    let accepted = match cur.batch_len {
        // As a batch start alone: asked with the token's largest unit.
        0 => budget.can_afford_batch(
            group
                .iter()
                .map(|j| forward::largest_unit_macs(model, j.state.cursor.pos, 1, true))
                .sum(),
        ),
        _ => budget.can_afford(total),
    };
    if !accepted {
        return None;
    }
    budget.unit_started(Phase::Decode, total);
    let mut tokens = vec![None; group.len()];
    if cur.batch_len == 0 {
        let ids: Vec<u32> = group
            .iter()
            .map(|j| j.state.token_at(j.state.cursor.pos as usize))
            .collect();
        let mut x = vec![0.0; ids.len() * c.dim];
        forward::embed(model, &ids, &mut x);
        mixer_of_group(model, 0, group, &mut x);
        scatter_hidden(group, &x, |s| {
            s.cursor.batch_len = 1;
            s.cursor.stage = Stage::Ffn;
        });
    } else {
        let mut x: Vec<f32> = group.iter().flat_map(|j| j.state.hidden.iter().copied()).collect();
        match cur.stage {
            Stage::Attention => {
                mixer_of_group(model, layer, group, &mut x);
                scatter_hidden(group, &x, |s| s.cursor.stage = Stage::Ffn);
            }
            Stage::Ffn => {
                forward::ffn_block(model, layer, &mut x);
                scatter_hidden(group, &x, |s| match layer + 1 < c.n_layers {
                    true => {
                        s.cursor.layer += 1;
                        s.cursor.stage = Stage::Attention;
                    }
                    // A generated token is always its sequence's last.
                    false => s.cursor.stage = Stage::Head,
                });
            }
            Stage::Head => {
                let mut logits = vec![0.0; group.len() * c.vocab_size];
                forward::logits_of_rows(model, &x, &mut logits);
                for ((job, row), token) in group
                    .iter_mut()
                    .zip(logits.chunks_exact_mut(c.vocab_size))
                    .zip(&mut tokens)
                {
                    *token = sample_and_end_batch(&mut job.state, row);
                }
            }
        }
    }
    Some(
        macs.into_iter()
            .zip(tokens)
            .map(|(macs, token)| UnitDone { macs, token })
            .collect(),
    )
}

/// Layer `layer`'s mixer unit over the group's rows `x`, each job with its
/// own position, cache and convolution state.
fn mixer_of_group(model: &Model, layer: usize, group: &mut [&mut Job], x: &mut [f32]) {
    let mut seqs: Vec<forward::Sequence> = group
        .iter_mut()
        .map(|j| {
            let Job { state, kv } = &mut **j;
            forward::Sequence {
                pos0: state.cursor.pos,
                n: 1,
                kv,
                conv_state: &mut state.conv_state,
            }
        })
        .collect();
    forward::mixer_block_of(model, layer, x, &mut seqs);
}

/// Gives each job of the group its row of `x` and moves its cursor.
fn scatter_hidden(group: &mut [&mut Job], x: &[f32], advance: impl Fn(&mut JobState)) {
    let dim = x.len() / group.len();
    for (job, row) in group.iter_mut().zip(x.chunks_exact(dim)) {
        job.state.hidden.clear();
        job.state.hidden.extend_from_slice(row);
        advance(&mut job.state);
    }
}

/// What one unit did.
struct UnitDone {
    macs: u64,
    token: Option<u32>,
}

/// Runs the unit at the cursor if the budget accepts it: `Ok(None)` if refused.
fn run_unit(model: &Model, job: &mut Job, budget: &mut dyn Budget) -> Result<Option<UnitDone>, String> {
    let c = &model.config;
    let Job { state: s, kv } = job;
    let cur = s.cursor;

    if cur.batch_len == 0 {
        // Start a batch: the largest the budget accepts for layer 0's attention.
        let pending = s.total_tokens() - cur.pos as usize;
        let room = (s.ctx_size - cur.pos) as usize;
        let max_n = pending
            .min(s.max_batch as usize)
            .min(room)
            .min(kv.shape().max_write() as usize);
        if max_n == 0 {
            return Err(format!("no token to process at position {}", cur.pos));
        }
        // The budget is asked with the batch's most expensive unit, so that a
        // batch it accepts now can also run its later units in later calls.
        let largest_unit = |n| {
            let ends_with_head = cur.pos as usize + n == s.total_tokens();
            forward::largest_unit_macs(model, cur.pos, n, ends_with_head)
        };
        let Some(n) = (1..=max_n).rev().find(|&n| budget.can_afford_batch(largest_unit(n))) else {
            return Ok(None);
        };
        let macs = forward::mixer_block_macs(model, 0, cur.pos, n);
        budget.unit_started(s.phase(), macs);
        let tokens: Vec<u32> = (cur.pos as usize..cur.pos as usize + n)
            .map(|i| s.token_at(i))
            .collect();
        if let Some(&t) = tokens.iter().find(|&&t| t as usize >= c.vocab_size) {
            return Err(format!("token id {t} is outside the vocabulary of {}", c.vocab_size));
        }
        // embed → hidden (n, dim), then layer 0's attention (or conv) unit
        s.hidden = vec![0.0; n * c.dim];
        forward::embed(model, &tokens, &mut s.hidden);
        forward::mixer_block(model, 0, cur.pos, &mut s.hidden, kv, &mut s.conv_state);
        s.cursor = Cursor {
            pos: cur.pos,
            batch_len: n as u32,
            layer: 0,
            stage: Stage::Ffn,
        };
        return Ok(Some(UnitDone { macs, token: None }));
    }

    let layer = cur.layer as usize;
    let n = cur.batch_len as usize;
    match cur.stage {
        Stage::Attention => {
            let macs = forward::mixer_block_macs(model, layer, cur.pos, n);
            if !budget.can_afford(macs) {
                return Ok(None);
            }
            budget.unit_started(s.phase(), macs);
            forward::mixer_block(model, layer, cur.pos, &mut s.hidden, kv, &mut s.conv_state);
            s.cursor.stage = Stage::Ffn;
            Ok(Some(UnitDone { macs, token: None }))
        }
        Stage::Ffn => {
            let macs = forward::ffn_block_macs(model, n);
            if !budget.can_afford(macs) {
                return Ok(None);
            }
            budget.unit_started(s.phase(), macs);
            forward::ffn_block(model, layer, &mut s.hidden);
            if layer + 1 < c.n_layers {
                s.cursor.layer += 1;
                s.cursor.stage = Stage::Attention;
            } else if cur.pos as usize + n == s.total_tokens() {
                // The batch ends with the last known token: its logits are next.
                s.cursor.stage = Stage::Head;
            } else {
                // A prompt batch whose logits nobody needs.
                end_batch(s);
            }
            Ok(Some(UnitDone { macs, token: None }))
        }
        Stage::Head => {
            let macs = forward::head_macs(model);
            if !budget.can_afford(macs) {
                return Ok(None);
            }
            budget.unit_started(s.phase(), macs);
            // final norm → logits of the batch's last token → sample
            let last = &s.hidden[(n - 1) * c.dim..n * c.dim];
            // Every element is written by the head (scratch: not zeroed first).
            let mut logits = crate::scratch::Scratch::new(c.vocab_size);
            forward::logits(model, last, &mut logits);
            let token = sample_and_end_batch(s, &mut logits);
            Ok(Some(UnitDone { macs, token }))
        }
    }
}

/// Samples the next token from the batch's last `logits` (modified on the
/// way), ends the batch, and records the token or the job's end; the
/// token generated, if any.
fn sample_and_end_batch(s: &mut JobState, logits: &mut [f32]) -> Option<u32> {
    // Log-probabilities come from the raw logits, which sampling modifies.
    let raw_logits = s.logprobs.is_some().then(|| logits.to_vec());
    let history: Vec<u32> = s.prompt.iter().chain(&s.generated).copied().collect();
    sampler::apply_penalties_and_bias(logits, &s.generated, &s.params);
    let token = sampler::sample(logits, &history, &s.params, &mut s.rng);
    end_batch(s);
    if s.stop_tokens.contains(&token) {
        s.finished = Some(FinishReason::Eos);
        return None;
    }
    s.generated.push(token);
    if let (Some(kept), Some(raw)) = (&mut s.logprobs, raw_logits) {
        kept.push(&logprobs::token_logprobs(&raw, token, kept.top_n()));
    }
    if s.generated.len() >= s.max_new_tokens as usize {
        s.finished = Some(FinishReason::MaxTokens);
    } else if s.cursor.pos >= s.ctx_size {
        s.finished = Some(FinishReason::ContextFull);
    }
    Some(token)
}

/// The batch's tokens are in the cache for every layer: move past them.
fn end_batch(s: &mut JobState) {
    s.cursor = Cursor {
        pos: s.cursor.pos + s.cursor.batch_len,
        batch_len: 0,
        layer: 0,
        stage: Stage::Attention,
    };
    s.hidden.clear();
}

/// Serializes an f32 vector as little-endian bytes ([`crate::serde_bytes`]):
/// compact, and far cheaper to encode than one float at a time (CBOR would
/// try shorter float widths for each).
mod f32_bytes {
    use serde::de::Error;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[f32], s: S) -> Result<S::Ok, S::Error> {
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        crate::serde_bytes::serialize(&bytes, s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f32>, D::Error> {
        let b = crate::serde_bytes::deserialize(d)?;
        if !b.len().is_multiple_of(4) {
            return Err(D::Error::custom(format!(
                "{} bytes is not a whole number of f32s",
                b.len()
            )));
        }
        Ok(b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }
}

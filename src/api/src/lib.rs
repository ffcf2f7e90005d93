//! The icllm canister's candid interface: what dApps send and receive.
//! Shared by the canister and its clients (the CLI, tests, other canisters).
//! `candid/icllm.did` must describe exactly these (checked by a test).

use candid::{CandidType, Deserialize, Principal};
use serde::Serialize;

pub type JobId = u64;

/// Instructions the IC allows one update message (an update call, a timer,
/// a callback): the budget every step of a job is cut to.
pub const IC_UPDATE_INSTRUCTION_LIMIT: u64 = 40_000_000_000;
/// Instructions the IC allows one query (`generate_query`'s budget).
pub const IC_QUERY_INSTRUCTION_LIMIT: u64 = 5_000_000_000;

/// Every refusal the canister gives for bad input or missing rights.
/// Each carries a message a user can act on.
#[derive(CandidType, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum ApiError {
    /// The caller may not do this (not a controller, not allowed by policy, not the job's owner).
    NotAuthorized(String),
    /// No job with this id (or not one of the caller's).
    NotFound(String),
    /// A request field is invalid (prompt too long, bad sampling settings, bad chunk…).
    InvalidArgument(String),
    /// A per-caller or global limit would be exceeded.
    QuotaExceeded(String),
    /// No model is ready yet (none uploaded, or still verifying/loading).
    ModelNotReady(String),
    /// The upload could not proceed or failed verification.
    Upload(String),
}

pub type ApiResult<T> = Result<T, ApiError>;

#[derive(CandidType, Serialize, Deserialize, Clone, Debug, Default)]
pub struct InitArgs {
    pub policy: Option<AccessPolicy>,
    pub limits: Option<Limits>,
    /// Instructions one message may use before the canister stops its work
    /// (default: the IC's 40 B). Lower it when running under a smaller limit.
    pub message_instruction_limit: Option<u64>,
    /// Largest context (positions) a job may ask for; fixes the size of each
    /// job's KV slot when a model is activated. Default: the model's trained
    /// context. May exceed it, as llama.cpp allows.
    pub max_context: Option<u32>,
    /// Heap bytes the weights and the running jobs' KV caches may take
    /// together (default: 3.5 GiB, wasm32's 4 GiB less room for the rest).
    /// Lower it to leave room for other heap state.
    pub heap_budget: Option<u64>,
    /// This canister's part in a model sharded over canisters (default:
    /// [`Role::Whole`]). Set at install (or at an upgrade, which reloads the
    /// model for the new part).
    pub role: Option<Role>,
}

/// A canister's part in a model sharded over canisters: a coordinator
/// holds the embedding, the head, the tokenizer and the jobs; each shard a
/// contiguous range of layers, their weights and their part of every job's
/// KV cache. A step sends a job's hidden state through the shards in order
/// ([`ShardBatch`]). All of them are the same wasm.
#[derive(CandidType, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub enum Role {
    /// The whole model in this canister.
    #[default]
    Whole,
    /// The ends of the model and the jobs; `shards` hold the layers, in
    /// order, covering every layer once.
    Coordinator { shards: Vec<ShardRef> },
    /// Layers `first_layer..end_layer` for `coordinator`, the only caller
    /// of its shard methods (and, besides controllers, of its upload).
    Shard {
        coordinator: Principal,
        first_layer: u32,
        end_layer: u32,
    },
}

/// One shard of a coordinator: a canister and its layers `first_layer..end_layer`.
#[derive(CandidType, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ShardRef {
    pub canister: Principal,
    pub first_layer: u32,
    pub end_layer: u32,
}

/// `shard_forward`'s argument: consecutive tokens of one or more of the
/// coordinator's jobs (`seqs`, in order), as the hidden state entering the
/// shard's first layer. The shard reads its weights once for all of them.
#[derive(CandidType, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ShardBatch {
    pub seqs: Vec<ShardSeq>,
    /// (Σ n, dim) f32, little-endian: each sequence's rows in turn.
    #[serde(with = "serde_bytes")]
    pub hidden: Vec<u8>,
}

/// One job's rows of a [`ShardBatch`]: `n` tokens at positions `pos0..`.
#[derive(CandidType, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ShardSeq {
    /// The coordinator's job id (the shard keeps the job's KV rows under it).
    pub job: JobId,
    /// The job's context: positions its cache holds.
    pub ctx_size: u32,
    pub kv_cache_type: KvCacheType,
    pub pos0: u32,
    pub n: u32,
}

/// What a shard did with a [`ShardBatch`].
#[derive(CandidType, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum ShardReply {
    /// The hidden state leaving the shard's last layer, (n, dim) f32
    /// little-endian, and the instructions the call took.
    Forwarded {
        #[serde(with = "serde_bytes")]
        hidden: Vec<u8>,
        instructions: u64,
    },
    /// The shard holds job `job`'s KV rows of positions `0..holds` only
    /// (fewer than its `pos0`: it lost later ones, e.g. reinstalled): the
    /// coordinator sends that job's batches from `holds` again. Nothing
    /// of the batch was run.
    Behind { job: JobId, holds: u32 },
}

/// Who may start jobs.
#[derive(CandidType, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct AccessPolicy {
    pub mode: AccessMode,
    /// Whether the anonymous principal may start jobs (only in `Open` mode).
    pub allow_anonymous: bool,
}

#[derive(CandidType, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum AccessMode {
    /// Any authenticated principal.
    Open,
    /// Only the listed principals (controllers always may).
    Allowlist(Vec<Principal>),
}

#[derive(CandidType, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Limits {
    /// Unfinished jobs one caller may have at once.
    pub max_active_jobs_per_caller: u32,
    /// Unfinished jobs in the canister at once (each holds a KV slot).
    pub max_active_jobs: u32,
    /// Total bytes of stable memory the KV slots may take.
    pub max_kv_bytes: u64,
    /// Largest `max_tokens` a job may ask for.
    pub max_new_tokens: u32,
    /// Finished jobs kept per caller before the oldest are deleted (the
    /// anonymous callers share one such allowance).
    pub max_finished_jobs_per_caller: u32,
    /// Job records (finished and unfinished) the canister keeps in all;
    /// beyond it the oldest finished records are deleted. Default 100,000.
    pub max_stored_jobs: Option<u64>,
    /// Seconds a finished job's record is kept before it is deleted.
    /// Default 7 days.
    pub finished_job_ttl_seconds: Option<u64>,
    /// Unfinished jobs the anonymous callers may have at once, all together
    /// (when the policy allows anonymous callers). Default 2.
    pub max_active_anonymous_jobs: Option<u32>,
    /// Cycles above the freezing threshold kept for the jobs already
    /// running: below it, new jobs are refused until the canister is topped
    /// up. Default 1 T (25 messages of 40 B instructions).
    pub min_liquid_cycles: Option<u128>,
}

impl Limits {
    pub const DEFAULT_MAX_STORED_JOBS: u64 = 100_000;
    pub const DEFAULT_FINISHED_JOB_TTL_SECONDS: u64 = 7 * 24 * 3600;
    pub const DEFAULT_MAX_ACTIVE_ANONYMOUS_JOBS: u32 = 2;
    pub const DEFAULT_MIN_LIQUID_CYCLES: u128 = 1_000_000_000_000;

    pub fn min_liquid_cycles(&self) -> u128 {
        self.min_liquid_cycles.unwrap_or(Self::DEFAULT_MIN_LIQUID_CYCLES)
    }

    pub fn max_stored_jobs(&self) -> u64 {
        self.max_stored_jobs.unwrap_or(Self::DEFAULT_MAX_STORED_JOBS)
    }

    pub fn finished_job_ttl_seconds(&self) -> u64 {
        self.finished_job_ttl_seconds
            .unwrap_or(Self::DEFAULT_FINISHED_JOB_TTL_SECONDS)
    }

    pub fn max_active_anonymous_jobs(&self) -> u32 {
        self.max_active_anonymous_jobs
            .unwrap_or(Self::DEFAULT_MAX_ACTIVE_ANONYMOUS_JOBS)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_active_jobs_per_caller: 4,
            max_active_jobs: 64,
            max_kv_bytes: 8 << 30,
            max_new_tokens: 4096,
            max_finished_jobs_per_caller: 100,
            max_stored_jobs: None,
            finished_job_ttl_seconds: None,
            max_active_anonymous_jobs: None,
            min_liquid_cycles: None,
        }
    }
}

/// One turn of a conversation (`system`, `user`, `assistant`, …).
#[derive(CandidType, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

#[derive(CandidType, Serialize, Deserialize, Clone, Debug, Default)]
pub struct JobRequest {
    /// Plain text continued as is (ignored when `messages` is given).
    pub prompt: String,
    /// A conversation: rendered with the model's own chat template, the
    /// assistant's turn generated, stopping at the template's end of turn.
    pub messages: Option<Vec<ChatMessage>>,
    pub max_tokens: u32,
    /// 0 = greedy. Default 0.8.
    pub temperature: Option<f32>,
    pub top_k: Option<u32>,
    pub top_p: Option<f32>,
    /// Seed of the job's RNG; drawn from `raw_rand` when absent.
    pub seed: Option<u64>,
    /// Context size for this job (default: the model's trained context,
    /// capped so that four jobs' KV caches fit the heap beside the weights).
    pub ctx_size: Option<u32>,
    /// Token ids to use as the prompt instead of encoding `prompt` (which
    /// must then be empty); no BOS is added. For benchmarks and exact replays.
    pub prompt_tokens: Option<Vec<u32>>,
    /// How the job's KV cache stores keys and values (default `F32`).
    pub kv_cache: Option<KvCacheType>,
    /// A finished (done or cancelled) job of the caller whose KV rows this
    /// job takes over: the longest common token prefix of the two is not
    /// prefilled again (`JobView::cached_prompt_tokens`). The old job's
    /// slot is handed over, not copied, so a job can be continued once.
    pub continue_from: Option<JobId>,
    /// A built-in chat template by name (`chatml`, `gemma`, `llama3`,
    /// `phi3`, `zephyr`: llama.cpp's of the same names) for `messages`
    /// when the model file carries no template; the file's own wins.
    pub chat_template: Option<String>,
    /// For canister callers: a method of the caller that icllm calls once
    /// when the job ends, with `(job id : nat64, status : JobStatus)`, as a
    /// best-effort bounded-wait one-way call without cycles (its result is
    /// ignored; a trap or reject there changes nothing in icllm). Polling
    /// keeps working.
    pub notify: Option<String>,
}

/// Storage of a job's KV cache.
#[derive(CandidType, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum KvCacheType {
    /// f32: exact.
    #[default]
    F32,
    /// int8 blocks with f32 scales: 3.5× smaller, and attention about 2.5×
    /// cheaper at long contexts; rounding changes as with int8 activations.
    Q8,
}

#[derive(CandidType, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum JobStatus {
    /// Waiting for the model to load or for its first step.
    Queued,
    /// Processing prompt tokens.
    Prefilling,
    Generating,
    /// Finished: `eos`, `max_tokens` or `context_full`.
    Done(String),
    Cancelled,
    Failed(String),
}

impl JobStatus {
    pub fn is_active(&self) -> bool {
        matches!(self, JobStatus::Queued | JobStatus::Prefilling | JobStatus::Generating)
    }
}

/// A job as `poll` shows it. `text`/`tokens` hold only what was generated
/// from token index `since` on; `next_since` is what to pass next time.
#[derive(CandidType, Serialize, Deserialize, Clone, Debug)]
pub struct JobView {
    pub id: JobId,
    pub status: JobStatus,
    pub text: String,
    pub tokens: Vec<u32>,
    pub next_since: u32,
    pub prompt_tokens: u32,
    pub prompt_tokens_processed: u32,
    /// Leading prompt tokens whose KV rows came from `continue_from`'s job
    /// (not prefilled again; counted in `prompt_tokens_processed`). Absent
    /// only from canisters released before `continue_from`.
    pub cached_prompt_tokens: Option<u32>,
    pub generated_tokens: u32,
    /// Update and timer messages that advanced this job.
    pub messages: u64,
    /// Instructions spent on this job's steps.
    pub instructions: u64,
    /// Cycles those messages cost (1 per instruction, 2 for the wasm64 build,
    /// + the per-message fee).
    pub cycles: u128,
    /// The most instructions one message spent on this job.
    pub max_message_instructions: u64,
    pub prompt_instructions: u64,
    pub created_at_ns: u64,
    pub updated_at_ns: u64,
    /// One per token of `tokens`, when the job keeps log-probabilities
    /// (a completion request that asked for `logprobs`).
    pub logprobs: Option<Vec<TokenLogprob>>,
}

/// What one `step` did.
#[derive(CandidType, Serialize, Deserialize, Clone, Debug)]
pub struct StepProgress {
    pub status: JobStatus,
    pub units: u32,
    pub new_tokens: u32,
    pub generated_tokens: u32,
    pub instructions: u64,
}

#[derive(CandidType, Serialize, Deserialize, Clone, Debug)]
pub struct JobSummary {
    pub id: JobId,
    pub owner: Principal,
    pub status: JobStatus,
    pub prompt_tokens: u32,
    pub generated_tokens: u32,
    pub created_at_ns: u64,
    pub updated_at_ns: u64,
}

#[derive(CandidType, Serialize, Deserialize, Clone, Debug)]
pub struct UploadBegin {
    pub size: u64,
    /// SHA-256 of the whole file (32 bytes).
    pub sha256: Vec<u8>,
    /// Only these byte ranges `[start, end)` of the file will be sent: a
    /// shard's part (the header and its layers' tensors), from its
    /// coordinator, which verified the whole file's SHA-256 itself; the
    /// shard loads the part without hashing. Refused from anyone else.
    pub parts: Option<Vec<(u64, u64)>>,
}

#[derive(CandidType, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum UploadState {
    /// No upload under way.
    Idle,
    /// Chunks are being received.
    Receiving,
    /// `upload_finalize` was called: hashing the file (across messages).
    Verifying,
    /// Hash matched: parsing and loading weights into the heap (across messages).
    Loading,
    /// The upload became the active model.
    Done,
    Failed(String),
}

#[derive(CandidType, Serialize, Deserialize, Clone, Debug)]
pub struct UploadStatus {
    pub state: UploadState,
    pub size: u64,
    pub received_bytes: u64,
    /// Byte ranges `[start, end)` not yet received.
    pub missing: Vec<(u64, u64)>,
    /// Bytes hashed (while verifying) or loaded (while loading).
    pub progress_bytes: u64,
    /// SHA-256 the upload under way declared (absent when idle, and from
    /// canisters released before it): an uploader resumes only its own file.
    pub sha256: Option<Vec<u8>>,
}

#[derive(CandidType, Serialize, Deserialize, Clone, Debug)]
pub struct ModelInfo {
    /// `none`, `loading`, `ready` or `failed: …`.
    pub state: String,
    /// The model's name (GGUF `general.name`, else its architecture): what
    /// `model` of a completion request must be when given.
    pub name: String,
    pub architecture: String,
    pub file_size: u64,
    pub sha256: Vec<u8>,
    pub n_layers: u32,
    pub dim: u32,
    pub n_heads: u32,
    pub n_kv_heads: u32,
    pub ffn_dim: u32,
    pub vocab_size: u32,
    pub context_length: u32,
    /// Each tensor type present and how many tensors use it, e.g. `f32 ×57`.
    pub tensor_types: Vec<String>,
    pub tokenizer: String,
    pub heap_bytes: u64,
}

impl ModelInfo {
    /// What `model_info` says while no model is loaded.
    pub fn none(state: String) -> ModelInfo {
        ModelInfo {
            state,
            name: String::new(),
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
        }
    }
}

#[derive(CandidType, Serialize, Deserialize, Clone, Debug)]
pub struct Health {
    pub model_state: String,
    pub active_jobs: u32,
    pub total_jobs: u64,
    pub scheduler_armed: bool,
    pub heap_bytes: u64,
    pub stable_bytes: u64,
    pub cycle_balance: u128,
    /// The balance above the freezing threshold (what messages can spend).
    pub liquid_cycle_balance: u128,
    pub message_instruction_limit: u64,
}

#[derive(CandidType, Serialize, Deserialize, Clone, Debug)]
pub struct SettingsView {
    pub policy: AccessPolicy,
    pub limits: Limits,
    pub message_instruction_limit: u64,
}

/// OpenAI's text completion request (`POST /v1/completions`), the fields
/// that make sense on-chain. A field the canister cannot honour is refused
/// with the reason, never ignored.
#[derive(CandidType, Serialize, Deserialize, Clone, Debug, Default)]
pub struct CompletionRequest {
    /// The loaded model's name (`model_info().name`), or absent.
    pub model: Option<String>,
    /// Text continued as is (the model's BOS added when it wants one).
    pub prompt: String,
    /// Tokens to generate at most (default 16, as OpenAI).
    pub max_tokens: Option<u32>,
    /// 0 to 2 (0 = greedy). Default 1.
    pub temperature: Option<f32>,
    /// Nucleus sampling, in (0, 1]. Default 1 (off).
    pub top_p: Option<f32>,
    /// Choices to generate: only 1.
    pub n: Option<u32>,
    /// Up to 4 strings; the text ends before the first one generated, which is not returned.
    pub stop: Option<Vec<String>>,
    /// Seed of the job's RNG (the same seed and request give the same text).
    pub seed: Option<u64>,
    /// -2 to 2, subtracted once from the logits of tokens already generated.
    pub presence_penalty: Option<f32>,
    /// -2 to 2, subtracted from a token's logit per time it was generated.
    pub frequency_penalty: Option<f32>,
    /// Up to 300 `(token id, bias)` pairs, bias in [-100, 100].
    pub logit_bias: Option<Vec<(u32, f32)>>,
    /// Log-probabilities of the chosen tokens and of this many (≤ 5) most
    /// likely alternatives (`choices[0].logprobs`).
    pub logprobs: Option<u32>,
    /// The end user, for the caller's own records (at most 256 bytes; not used).
    pub user: Option<String>,
    /// icllm's own: a finished job of the caller to continue (see `JobRequest::continue_from`).
    pub continue_from: Option<JobId>,
}

/// OpenAI's chat completion request (`POST /v1/chat/completions`). Roles
/// `system`, `user` and `assistant`; tool messages are refused.
#[derive(CandidType, Serialize, Deserialize, Clone, Debug, Default)]
pub struct ChatCompletionRequest {
    pub model: Option<String>,
    /// The conversation, rendered with the model's chat template; the
    /// assistant's reply is generated and ends at the template's end of turn.
    pub messages: Vec<ChatMessage>,
    /// Tokens to generate at most (default: `max_new_tokens` of the limits,
    /// or until the context is full).
    pub max_tokens: Option<u32>,
    /// The same as `max_tokens` (OpenAI's newer name); give at most one.
    pub max_completion_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub n: Option<u32>,
    pub stop: Option<Vec<String>>,
    pub seed: Option<u64>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub logit_bias: Option<Vec<(u32, f32)>>,
    /// Log-probabilities of the chosen tokens (`choices[0].logprobs.content`).
    pub logprobs: Option<bool>,
    /// The most likely alternatives (≤ 5) shown per token; needs `logprobs`.
    pub top_logprobs: Option<u32>,
    pub user: Option<String>,
    /// icllm's own: a finished job of the caller whose conversation this
    /// request continues; its KV rows are taken over (see `JobRequest::continue_from`).
    pub continue_from: Option<JobId>,
    /// icllm's own: a built-in chat template by name for a model file that
    /// carries none (see `JobRequest::chat_template`).
    pub chat_template: Option<String>,
}

/// One choice of a completion. `text` for text completions, `message` for
/// chat; `finish_reason` is absent while the job runs, then `stop` (end of
/// turn, end of text or a stop string), `length` (`max_tokens` or the
/// context), `cancelled`, or `error` (the job failed: see `status`).
#[derive(CandidType, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct CompletionChoice {
    pub index: u32,
    pub text: Option<String>,
    pub message: Option<ChatMessage>,
    pub finish_reason: Option<String>,
    /// Present when the request asked for `logprobs`.
    pub logprobs: Option<ChoiceLogprobs>,
}

/// A choice's log-probabilities, in OpenAI's shape for its kind: `content`
/// for chat; `tokens`, `token_logprobs`, `top_logprobs` and `text_offset`
/// for text completions. Natural logs of the model's raw distribution
/// (before temperature, penalties, bias and top-p), one entry per token
/// whose text the choice shows so far.
#[derive(CandidType, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct ChoiceLogprobs {
    pub content: Option<Vec<TokenLogprob>>,
    pub tokens: Option<Vec<String>>,
    pub token_logprobs: Option<Vec<f32>>,
    /// Per token, the `logprobs` most likely tokens and the chosen one if
    /// not among them (OpenAI's maps from token to logprob, as lists).
    pub top_logprobs: Option<Vec<Vec<TopLogprob>>>,
    /// Where each token's text begins in the choice's text (bytes).
    pub text_offset: Option<Vec<u32>>,
}

/// A generated token: its text, log-probability, UTF-8 bytes (a token may
/// hold part of a character) and the most likely alternatives.
#[derive(CandidType, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    /// Most likely first (ties: lower token id).
    pub top_logprobs: Vec<TopLogprob>,
}

/// One token of a distribution and its log-probability.
#[derive(CandidType, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

#[derive(CandidType, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct CompletionUsage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
    /// Absent only from canisters released before `continue_from`.
    pub prompt_tokens_details: Option<PromptTokensDetails>,
}

/// As OpenAI's `usage.prompt_tokens_details`.
#[derive(CandidType, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct PromptTokensDetails {
    /// Prompt tokens whose KV rows were taken over from `continue_from`'s job.
    pub cached_tokens: u32,
}

/// OpenAI's completion object (`text_completion` or `chat.completion`), as
/// `get_completion` returns it while the job runs and once it has finished.
/// While it runs, the text leaves out an ending that may begin a stop string.
#[derive(CandidType, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Completion {
    /// `cmpl-<job>` or `chatcmpl-<job>`.
    pub id: String,
    /// The job behind it (for `get_completion`, `poll`, `cancel`).
    pub job_id: JobId,
    pub object: String,
    /// Seconds since the epoch when the job started.
    pub created: u64,
    pub model: String,
    pub choices: Vec<CompletionChoice>,
    pub usage: CompletionUsage,
    /// The job's state (icllm's own field: why it failed, if it did).
    pub status: JobStatus,
}

/// A request through the IC's HTTP gateway (`http_request`, as the HTTP
/// gateway protocol defines it).
#[derive(CandidType, Serialize, Deserialize, Clone, Debug)]
pub struct HttpRequest {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    pub certificate_version: Option<u16>,
}

#[derive(CandidType, Serialize, Deserialize, Clone, Debug)]
pub struct HttpResponse {
    pub status_code: u16,
    pub headers: Vec<(String, String)>,
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    pub upgrade: Option<bool>,
}

/// A whole generation run inside one query (`generate_query`).
#[derive(CandidType, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct QueryGeneration {
    pub text: String,
    pub tokens: Vec<u32>,
    /// `eos`, `max_tokens` or `context_full`.
    pub finish_reason: String,
    pub prompt_tokens: u32,
    /// Instructions the query spent.
    pub instructions: u64,
}

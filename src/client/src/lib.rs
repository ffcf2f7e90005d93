//! # icllm-client: icllm from your canister
//!
//! Typed calls to the icllm canister over inter-canister calls, with the
//! candid types of `icllm-api` re-exported ([`api`]):
//!
//! ```ignore
//! use icllm_client::Icllm;
//! ic_cdk::futures::spawn_migratory(async move {
//!     let reply = Icllm::new(icllm_id)
//!         .complete("Once upon a time")
//!         .max_tokens(64)
//!         .temperature(0.0)
//!         .send()
//!         .await;
//!     // store reply.text …
//! });
//! ```
//!
//! [`Request::send`] starts a job (`start_job`) and waits for it by
//! polling (`poll`, a query that runs as an update when a canister calls
//! it), sleeping between polls on an `ic-cdk-timers` timer. The waiting
//! task outlives the method that started it, so spawn it with
//! `ic_cdk::futures::spawn_migratory` (or run it from a timer): a protected
//! task of an update method would trap when its call context ends. A job
//! outlives upgrades of both canisters: keep its id ([`Icllm::start`]) and
//! resume waiting with [`Icllm::wait`] after your canister's upgrade.
//!
//! Versioned with the canister's interface (`candid/icllm.did`).

pub use icllm_api as api;

use api::{ApiError, ApiResult, ChatMessage, JobId, JobRequest, JobStatus, JobView};
use candid::Principal;
use ic_cdk::call::{Call, CallFailed};
use std::time::Duration;

/// Why a request did not give a finished reply.
#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// The call was rejected: by the system (icllm stopped, out of cycles,
    /// unreachable) or because icllm trapped. `code` is the IC's reject code
    /// (2 SYS_TRANSIENT, 3 DESTINATION_INVALID, 5 CANISTER_ERROR, …).
    Rejected { method: String, code: u32, message: String },
    /// The call could not be made (this canister lacks the cycles), or its
    /// reply did not decode.
    Call(String),
    /// icllm refused the request (not allowed, a quota, a bad argument, no model yet).
    Api(ApiError),
    /// The job failed, with icllm's reason.
    JobFailed(String),
    /// The job was cancelled.
    Cancelled,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Rejected { method, code, message } => {
                write!(
                    f,
                    "the call to icllm failed: {method}: rejected (code {code}): {message}"
                )
            }
            Error::Call(m) => write!(f, "the call to icllm failed: {m}"),
            Error::Api(e) => write!(f, "icllm refused: {e:?}"),
            Error::JobFailed(m) => write!(f, "the job failed: {m}"),
            Error::Cancelled => write!(f, "the job was cancelled"),
        }
    }
}

impl std::error::Error for Error {}

impl Error {
    /// Whether the same call may well succeed later: icllm is stopping or
    /// stopped (as during an upgrade by dfx or icp-cli), or the system was
    /// momentarily unable to deliver (SYS_TRANSIENT).
    pub fn is_transient(&self) -> bool {
        const SYS_TRANSIENT: u32 = 2;
        const CANISTER_ERROR: u32 = 5;
        match self {
            Error::Rejected { code, message, .. } => {
                *code == SYS_TRANSIENT
                    || (*code == CANISTER_ERROR && (message.contains("is stopped") || message.contains("is stopping")))
            }
            _ => false,
        }
    }
}

/// A finished job: its text and token ids, why it stopped, its last view.
#[derive(Debug, Clone)]
pub struct Reply {
    pub job_id: JobId,
    pub text: String,
    pub tokens: Vec<u32>,
    /// `eos`, `max_tokens` or `context_full`.
    pub finish_reason: String,
    pub view: JobView,
}

/// The icllm canister at a principal.
#[derive(Debug, Clone, Copy)]
pub struct Icllm {
    canister: Principal,
    poll_interval: Duration,
    poll_retries: u32,
}

async fn call<A: candid::utils::ArgumentEncoder, R: candid::CandidType + for<'de> candid::Deserialize<'de>>(
    canister: Principal,
    method: &str,
    args: &A,
) -> Result<R, Error> {
    let response = Call::unbounded_wait(canister, method)
        .with_args(args)
        .await
        .map_err(|e| match e {
            CallFailed::CallRejected(r) => Error::Rejected {
                method: method.to_string(),
                code: r.raw_reject_code(),
                message: r.reject_message().to_string(),
            },
            other => Error::Call(format!("{method}: {other}")),
        })?;
    response
        .candid::<R>()
        .map_err(|e| Error::Call(format!("{method}: {e}")))
}

/// Sleeps on a one-shot timer (the task resumes in the timer's message).
async fn sleep(d: Duration) {
    let (tx, rx) = futures_channel::oneshot::channel::<()>();
    ic_cdk_timers::set_timer(d, async move {
        let _ = tx.send(());
    });
    let _ = rx.await;
}

impl Icllm {
    /// Polls every second by default ([`Icllm::poll_interval`]).
    pub fn new(canister: Principal) -> Self {
        Icllm {
            canister,
            poll_interval: Duration::from_secs(1),
            poll_retries: 120,
        }
    }

    /// How many polls in a row [`Icllm::wait`] lets fail transiently
    /// ([`Error::is_transient`]: icllm stopped for an upgrade, a full
    /// queue) before it gives up; 120 by default (two minutes at the
    /// default interval). Polling is idempotent, so a retry loses nothing.
    pub fn poll_retries(mut self, n: u32) -> Self {
        self.poll_retries = n;
        self
    }

    /// How long [`Icllm::wait`] sleeps between polls.
    pub fn poll_interval(mut self, every: Duration) -> Self {
        self.poll_interval = every;
        self
    }

    pub fn canister(&self) -> Principal {
        self.canister
    }

    /// A text completion of `prompt` (send it with [`Request::send`]).
    pub fn complete(&self, prompt: impl Into<String>) -> Request {
        Request {
            icllm: *self,
            req: JobRequest {
                prompt: prompt.into(),
                max_tokens: 128,
                ..JobRequest::default()
            },
        }
    }

    /// The assistant's next turn of a conversation, through the model's chat template.
    pub fn chat(&self, messages: Vec<ChatMessage>) -> Request {
        Request {
            icllm: *self,
            req: JobRequest {
                messages: Some(messages),
                max_tokens: 128,
                ..JobRequest::default()
            },
        }
    }

    /// Starts a job; its id.
    pub async fn start(&self, req: &JobRequest) -> Result<JobId, Error> {
        let r: ApiResult<JobId> = call(self.canister, "start_job", &(req,)).await?;
        r.map_err(Error::Api)
    }

    /// The job's state and the text from token `since` on.
    pub async fn poll(&self, id: JobId, since: u32) -> Result<JobView, Error> {
        let r: ApiResult<JobView> = call(self.canister, "poll", &(id, Some(since))).await?;
        r.map_err(Error::Api)
    }

    pub async fn cancel(&self, id: JobId) -> Result<JobStatus, Error> {
        let r: ApiResult<JobStatus> = call(self.canister, "cancel", &(id,)).await?;
        r.map_err(Error::Api)
    }

    /// Waits for job `id` to end, handing each new piece of text to
    /// `on_text`; the finished reply, or why there is none. Rides out
    /// icllm being stopped for a while ([`Icllm::poll_retries`]).
    pub async fn wait(&self, id: JobId, mut on_text: impl FnMut(&str)) -> Result<Reply, Error> {
        let (mut text, mut tokens, mut since) = (String::new(), Vec::new(), 0);
        let mut failures = 0;
        loop {
            let view = match self.poll(id, since).await {
                Ok(view) => view,
                Err(e) if e.is_transient() && failures < self.poll_retries => {
                    failures += 1;
                    sleep(self.poll_interval).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            failures = 0;
            if !view.text.is_empty() {
                on_text(&view.text);
            }
            text.push_str(&view.text);
            tokens.extend_from_slice(&view.tokens);
            since = view.next_since;
            match &view.status {
                JobStatus::Done(reason) => {
                    return Ok(Reply {
                        job_id: id,
                        text,
                        tokens,
                        finish_reason: reason.clone(),
                        view,
                    })
                }
                JobStatus::Failed(reason) => return Err(Error::JobFailed(reason.clone())),
                JobStatus::Cancelled => return Err(Error::Cancelled),
                JobStatus::Queued | JobStatus::Prefilling | JobStatus::Generating => {}
            }
            sleep(self.poll_interval).await;
        }
    }
}

/// A job request being built.
#[derive(Debug, Clone)]
pub struct Request {
    icllm: Icllm,
    req: JobRequest,
}

impl Request {
    pub fn max_tokens(mut self, n: u32) -> Self {
        self.req.max_tokens = n;
        self
    }
    /// 0 is greedy.
    pub fn temperature(mut self, t: f32) -> Self {
        self.req.temperature = Some(t);
        self
    }
    pub fn top_k(mut self, k: u32) -> Self {
        self.req.top_k = Some(k);
        self
    }
    pub fn top_p(mut self, p: f32) -> Self {
        self.req.top_p = Some(p);
        self
    }
    pub fn seed(mut self, seed: u64) -> Self {
        self.req.seed = Some(seed);
        self
    }
    /// A built-in chat template (chatml, gemma, llama3, phi3, zephyr) for a
    /// model file that carries none.
    pub fn chat_template(mut self, name: impl Into<String>) -> Self {
        self.req.chat_template = Some(name.into());
        self
    }
    /// Have icllm call `method` of this canister once the job ends, with
    /// `(job id : nat64, status : JobStatus)` (best effort, one-way: keep
    /// polling as the fallback). Start such a job with [`Icllm::start`].
    pub fn notify(mut self, method: impl Into<String>) -> Self {
        self.req.notify = Some(method.into());
        self
    }
    /// Continue a finished job of this canister (its KV rows are reused).
    pub fn continue_from(mut self, job: JobId) -> Self {
        self.req.continue_from = Some(job);
        self
    }

    /// The request as it will be sent.
    pub fn request(&self) -> &JobRequest {
        &self.req
    }

    /// Starts the job and waits for its end (see the crate docs on where
    /// to await this).
    pub async fn send(self) -> Result<Reply, Error> {
        self.stream(|_| {}).await
    }

    /// Like [`Request::send`], handing each new piece of text to `on_text`.
    pub async fn stream(self, on_text: impl FnMut(&str)) -> Result<Reply, Error> {
        let id = self.icllm.start(&self.req).await?;
        self.icllm.wait(id, on_text).await
    }
}

//! `icllm serve`: an OpenAI-compatible HTTP server (axum on tokio) in front
//! of the canister wasm running in the embedded local IC runtime.
//!
//! `POST /v1/completions` and `POST /v1/chat/completions` call the
//! canister's `completions` / `chat_completions` (one job per request) and
//! then follow the job with `get_completion` after every scheduler round:
//! with `stream: true` each round's new text is one server-sent event, so
//! text arrives at the pace the canister produces it (a round is one message
//! of `--instruction-limit` instructions); otherwise the finished object is
//! the reply. A request whose client goes away cancels its job.
//!
//! Callers: the bearer token (`Authorization: Bearer KEY`, any string) names
//! the canister caller, a self-authenticating principal of the key, so each
//! key has its own jobs and quota; requests without one share one principal.
//! `GET /icllm/jobs/{id}` adds what a job cost (tokens, messages, instructions, cycles).
//! `GET /` is a chat page (`page.html`) that uses these endpoints.

mod backend;
mod openai;
mod remote;

use anyhow::{anyhow, Context, Result};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use backend::{Backend, Start};
use candid::Principal;
use clap::Args;
use icllm::local_canister::{build_or_read_wasm, sha256, LocalCanister};
use icllm_api::IC_UPDATE_INSTRUCTION_LIMIT;
use icllm_api::{Completion, InitArgs, JobId};
use openai::HttpError;
use serde_json::json;
use std::convert::Infallible;
use std::path::PathBuf;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// The chat page at `GET /`: one static file, embedded (no build step).
const PAGE: &str = include_str!("page.html");

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// GGUF model file, or Hugging Face checkpoint directory (converted to
    /// GGUF in memory before the upload). Default: the shipped stories260K.
    #[arg(long, conflicts_with = "canister_id")]
    model: Option<PathBuf>,
    /// Front a deployed canister instead of running one (its model is
    /// served; `icllm upload` puts one there).
    #[arg(long)]
    canister_id: Option<String>,
    /// With --canister-id: `local`, `ic` or a replica URL.
    #[arg(long, default_value = "local", requires = "canister_id")]
    network: String,
    /// With --canister-id: the PEM identity whose key, with each API key,
    /// derives the principal that key's requests are signed as.
    #[arg(long, requires = "canister_id")]
    identity: Option<PathBuf>,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Instructions per canister message (the IC's limit by default). A
    /// stream gets one event per message: lower it for smoother streams,
    /// at the cost of more messages (each with its fixed cost) per reply.
    #[arg(long, default_value_t = IC_UPDATE_INSTRUCTION_LIMIT)]
    instruction_limit: u64,
    /// Memory charges of the local runtime (dmt or legacy).
    #[arg(long, default_value = "dmt")]
    memory_charges: local_ic::MemoryCharges,
    /// Canister wasm to run (default: built from the workspace with cargo).
    #[arg(long)]
    wasm: Option<PathBuf>,
    /// Built-in chat template (chatml, gemma, llama3, phi3, zephyr) for chat
    /// requests that name none, when the model file carries no template.
    #[arg(long)]
    chat_template: Option<String>,
}

#[derive(Clone)]
struct App {
    backend: Backend,
    chat_template: Option<String>,
}

pub fn run(args: ServeArgs) -> Result<()> {
    if let Some(id) = args.canister_id.clone() {
        return run_remote(args, &id);
    }
    let model_path = args
        .model
        .clone()
        .unwrap_or_else(|| icllm::local_canister::workspace_root().join("models/stories260Ktok512.gguf"));
    let model = crate::model_files::canister_model_bytes(&model_path)?;
    let wasm = build_or_read_wasm(args.wasm.as_deref())?;
    // The model uploads and loads in IC-sized messages, then jobs run under the chosen limit.
    let load_limit = args.instruction_limit.max(IC_UPDATE_INSTRUCTION_LIMIT);
    let init = InitArgs {
        message_instruction_limit: Some(load_limit),
        ..InitArgs::default()
    };
    let mut canister = LocalCanister::install_with(wasm, init, load_limit, false, args.memory_charges)?;
    // The canister's clock starts at the wall clock's time (`created` is real).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    canister
        .rt
        .advance_time(now.saturating_sub(std::time::Duration::from_nanos(canister.rt.time_nanos())));
    canister.upload_model(&model, sha256(&model))?;
    if load_limit != args.instruction_limit {
        canister.set_message_limit(args.instruction_limit)?;
    }
    let app = App {
        backend: Backend::spawn(canister),
        chat_template: args.chat_template.clone(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let addr = format!("{}:{}", args.host, args.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("listening on {addr}"))?;
        let local = listener.local_addr()?;
        eprintln!("listening on http://{local}");
        axum::serve(listener, router(app))
            .await
            .map_err(|e| anyhow!("serving: {e}"))
    })
}

/// `serve` in front of a deployed canister.
fn run_remote(args: ServeArgs, id: &str) -> Result<()> {
    let canister = Principal::from_text(id).map_err(|e| anyhow!("{id} is not a principal: {e}"))?;
    let url = icllm::remote::network_url(&args.network);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let remote = remote::Remote::connect(url.clone(), canister, args.identity.as_deref()).await?;
        let app = App {
            backend: Backend::remote(remote),
            chat_template: args.chat_template.clone(),
        };
        let addr = format!("{}:{}", args.host, args.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("listening on {addr}"))?;
        eprintln!("fronting canister {canister} on {url}");
        eprintln!("listening on http://{}", listener.local_addr()?);
        axum::serve(listener, router(app))
            .await
            .map_err(|e| anyhow!("serving: {e}"))
    })
}

fn router(app: App) -> Router {
    Router::new()
        .route("/", get(|| async { axum::response::Html(PAGE) }))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions/{id}", get(retrieve))
        .route("/v1/chat/completions/{id}", get(retrieve))
        .route("/health", get(health))
        .route("/icllm/jobs/{id}", get(job_stats))
        .fallback(|| async { HttpError::not_found("no such endpoint") })
        .with_state(app)
}

/// The canister caller for this request: see the module doc.
fn caller(headers: &HeaderMap) -> Principal {
    let key = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    Principal::self_authenticating(format!("icllm serve key:{key}"))
}

async fn model_info(app: &App) -> Result<(icllm_api::ModelInfo, icllm_api::Health), HttpError> {
    app.backend.info().await.map_err(HttpError::internal)
}

fn model_json(name: &str) -> serde_json::Value {
    json!({"id": name, "object": "model", "created": 0, "owned_by": "icllm"})
}

async fn models(State(app): State<App>) -> Result<Response, HttpError> {
    let (info, _) = model_info(&app).await?;
    Ok(Json(json!({"object": "list", "data": [model_json(&info.name)]})).into_response())
}

async fn model(State(app): State<App>, Path(id): Path<String>) -> Result<Response, HttpError> {
    let (info, _) = model_info(&app).await?;
    if id != info.name {
        return Err(HttpError::not_found(format!(
            "the model `{id}` does not exist; this server serves `{}`",
            info.name
        )));
    }
    Ok(Json(model_json(&info.name)).into_response())
}

async fn health(State(app): State<App>) -> Result<Response, HttpError> {
    let (info, h) = model_info(&app).await?;
    Ok(Json(json!({
        "model": info.name,
        "architecture": info.architecture,
        "model_state": h.model_state,
        "active_jobs": h.active_jobs,
        "message_instruction_limit": h.message_instruction_limit,
        "cycle_balance": h.cycle_balance.to_string(),
    }))
    .into_response())
}

/// `GET /icllm/jobs/{id}`: what the caller's job cost (the chat page shows it).
async fn job_stats(State(app): State<App>, headers: HeaderMap, Path(id): Path<JobId>) -> Result<Response, HttpError> {
    let v = app
        .backend
        .poll(caller(&headers), id)
        .await
        .map_err(HttpError::internal)??;
    Ok(Json(json!({
        "id": v.id,
        "status": format!("{:?}", v.status),
        "prompt_tokens": v.prompt_tokens,
        "generated_tokens": v.generated_tokens,
        "messages": v.messages,
        "instructions": v.instructions,
        "prompt_instructions": v.prompt_instructions,
        "max_message_instructions": v.max_message_instructions,
        "cycles": v.cycles.to_string(),
    }))
    .into_response())
}

/// `GET /v1/(chat/)completions/{id}`: the completion as it stands, for its caller only.
async fn retrieve(State(app): State<App>, headers: HeaderMap, Path(id): Path<String>) -> Result<Response, HttpError> {
    let job: JobId = id
        .rsplit('-')
        .next()
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| HttpError::not_found(format!("no completion {id}")))?;
    let c = app
        .backend
        .get(caller(&headers), job)
        .await
        .map_err(HttpError::internal)??;
    Ok(Json(openai::object(&c)).into_response())
}

async fn completions(State(app): State<App>, headers: HeaderMap, body: Bytes) -> Result<Response, HttpError> {
    let body: openai::TextBody = openai::parse(&body)?;
    let stream = body.stream.unwrap_or(false);
    let usage = body.stream_options.as_ref().is_some_and(|o| o.include_usage);
    if body.stream_options.is_some() && !stream {
        return Err(HttpError::bad_request(
            "stream_options is only allowed with stream: true",
        ));
    }
    let req = Start::Text(body.into_request()?);
    respond(app, caller(&headers), req, stream, usage).await
}

async fn chat_completions(State(app): State<App>, headers: HeaderMap, body: Bytes) -> Result<Response, HttpError> {
    let mut body: openai::ChatBody = openai::parse(&body)?;
    if body.chat_template.is_none() {
        body.chat_template = app.chat_template.clone();
    }
    let stream = body.stream.unwrap_or(false);
    let usage = body.stream_options.as_ref().is_some_and(|o| o.include_usage);
    if body.stream_options.is_some() && !stream {
        return Err(HttpError::bad_request(
            "stream_options is only allowed with stream: true",
        ));
    }
    let req = Start::Chat(body.into_request()?);
    respond(app, caller(&headers), req, stream, usage).await
}

/// Cancels the job when dropped unless disarmed: a request that goes away
/// (client disconnected, stream dropped) takes its job with it.
struct CancelOnDrop {
    backend: Backend,
    caller: Principal,
    id: JobId,
    armed: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if self.armed {
            self.backend.cancel(self.caller, self.id);
        }
    }
}

async fn respond(app: App, caller: Principal, req: Start, stream: bool, usage: bool) -> Result<Response, HttpError> {
    let mut rounds = app.backend.rounds();
    rounds.borrow_and_update();
    let started = app.backend.start(caller, req).await.map_err(HttpError::internal)??;
    let mut guard = CancelOnDrop {
        backend: app.backend.clone(),
        caller,
        id: started.job_id,
        armed: true,
    };
    if stream {
        let (tx, rx) = mpsc::channel::<Result<Event, Infallible>>(64);
        tokio::spawn(stream_job(app, guard, rounds, started, tx, usage));
        return Ok(Sse::new(ReceiverStream::new(rx)).into_response());
    }
    loop {
        let c = app.backend.get(caller, guard.id).await.map_err(HttpError::internal)??;
        match c.choices[0].finish_reason.as_deref() {
            None => {}
            Some("error") => {
                guard.armed = false;
                return Err(HttpError::internal(format!("the job failed: {:?}", c.status)));
            }
            Some(_) => {
                guard.armed = false;
                return Ok(Json(openai::object(&c)).into_response());
            }
        }
        if rounds.changed().await.is_err() {
            return Err(HttpError::internal("the canister thread has stopped"));
        }
    }
}

fn event(v: serde_json::Value) -> Result<Event, Infallible> {
    Ok(Event::default().data(v.to_string()))
}

/// Sends the job's new text after every round until it finishes; a client
/// that goes away drops `guard`, which cancels the job.
async fn stream_job(
    app: App,
    mut guard: CancelOnDrop,
    mut rounds: tokio::sync::watch::Receiver<u64>,
    started: Completion,
    tx: mpsc::Sender<Result<Event, Infallible>>,
    usage: bool,
) {
    let (caller, id) = (guard.caller, guard.id);
    let (mut sent, mut sent_logprobs) = (0usize, 0usize);
    if started.object == "chat.completion" && tx.send(event(openai::chunk(&started, None, true, None))).await.is_err() {
        return;
    }
    loop {
        let c = match app.backend.get(caller, id).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                let _ = tx.send(event(HttpError::from(e).body())).await;
                return;
            }
            Err(e) => {
                let _ = tx.send(event(HttpError::internal(e).body())).await;
                return;
            }
        };
        let text = openai::text_of(&c);
        let logprobs = openai::logprob_count(&c);
        if text.len() > sent || logprobs > sent_logprobs {
            let lp = match logprobs > sent_logprobs {
                true => openai::logprobs_json(&c, sent_logprobs),
                false => serde_json::Value::Null,
            };
            if tx
                .send(event(openai::chunk_with(&c, Some(&text[sent..]), lp, false, None)))
                .await
                .is_err()
            {
                return;
            }
            (sent, sent_logprobs) = (text.len(), logprobs);
        }
        if let Some(reason) = c.choices[0].finish_reason.clone() {
            guard.armed = false;
            if reason == "error" {
                let e = HttpError::internal(format!("the job failed: {:?}", c.status));
                let _ = tx.send(event(e.body())).await;
            } else {
                let _ = tx.send(event(openai::chunk(&c, None, false, Some(&reason)))).await;
                if usage {
                    let _ = tx.send(event(openai::usage_chunk(&c))).await;
                }
            }
            let _ = tx.send(Ok(Event::default().data("[DONE]"))).await;
            return;
        }
        tokio::select! {
            changed = rounds.changed() => if changed.is_err() { return },
            _ = tx.closed() => return,
        }
    }
}

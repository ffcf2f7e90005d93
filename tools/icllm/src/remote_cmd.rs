//! Commands that reach a deployed canister over the network: `deploy`,
//! `upload` and `job`.

use crate::model_files::canister_model_bytes;
use anyhow::{anyhow, Context, Result};
use candid::Principal;
use icllm::local_canister::build_or_read_wasm;
use icllm::remote::{self, Deployed, UploadOptions, UploadProgress};
use icllm_api::{JobRequest, UploadState, UploadStatus};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;

/// Where and as whom.
#[derive(clap::Args, Clone)]
pub struct NetworkArgs {
    /// `local` (dfx's http://127.0.0.1:4943), `ic` (mainnet) or a replica URL
    /// such as `icllm replica` prints.
    #[arg(long, default_value = "local")]
    network: String,
    /// PEM identity (as dfx and icp-cli store them: Ed25519 or secp256k1),
    /// or the name of a dfx identity. Default: anonymous.
    #[arg(long)]
    identity: Option<PathBuf>,
}

impl NetworkArgs {
    async fn agent(&self) -> Result<ic_agent::Agent> {
        let identity = remote::load_identity(self.identity.as_deref())?;
        let url = remote::network_url(&self.network);
        let sender = identity
            .sender()
            .map_err(|e| anyhow!("the identity has no principal: {e}"))?;
        eprintln!("network: {url}\nidentity: {sender}");
        remote::connect(&url, identity).await
    }
}

fn tokio() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn principal(text: &str) -> Result<Principal> {
    Principal::from_text(text).map_err(|e| anyhow!("{text} is not a principal: {e}"))
}

#[derive(clap::Args)]
pub struct DeployArgs {
    #[command(flatten)]
    net: NetworkArgs,
    /// Canister to install into or upgrade (default: create one, local replicas only).
    #[arg(long)]
    canister_id: Option<String>,
    /// Init argument in candid text, e.g. `(opt record { policy = null; limits = null })`
    /// (default `(null)`). Upgrades pass `(null)`: the settings stay.
    #[arg(long)]
    argument: Option<String>,
    /// Canister wasm (default: built from the workspace with cargo, as `run` does).
    #[arg(long)]
    wasm: Option<PathBuf>,
}

pub fn deploy(args: DeployArgs) -> Result<()> {
    let wasm = build_or_read_wasm(args.wasm.as_deref())?;
    let init = match &args.argument {
        Some(text) => candid_parser::parse_idl_args(text)
            .with_context(|| format!("--argument {text} is not candid"))?
            .to_bytes()?,
        None => candid::encode_args((None::<icllm_api::InitArgs>,))?,
    };
    let upgrade = candid::encode_args((None::<icllm_api::InitArgs>,))?;
    let canister = args.canister_id.as_deref().map(principal).transpose()?;
    tokio()?.block_on(async {
        let agent = args.net.agent().await?;
        let (id, action) = remote::deploy(&agent, canister, &wasm, init, upgrade, |m| eprintln!("{m}")).await?;
        eprintln!(
            "{} icllm ({} bytes) in canister {id}",
            if action == Deployed::Upgraded {
                "upgraded"
            } else {
                "installed"
            },
            wasm.len()
        );
        println!("{id}");
        Ok(())
    })
}

#[derive(clap::Args)]
pub struct UploadArgs {
    /// GGUF file, or Hugging Face checkpoint directory (converted in memory).
    model: PathBuf,
    #[arg(long)]
    canister_id: String,
    #[command(flatten)]
    net: NetworkArgs,
    /// Chunks in flight at once.
    #[arg(long, default_value_t = 4)]
    parallel: usize,
    /// Bytes per chunk (at most the canister's 1,966,080).
    #[arg(long, default_value_t = remote::MAX_CHUNK_BYTES)]
    chunk_bytes: usize,
    /// Stop after sending this many chunks, as an interrupted upload would
    /// (the next run resumes): for testing resumption.
    #[arg(long, hide = true)]
    stop_after_chunks: Option<usize>,
}

/// Two bars: bytes sent (with rate and ETA), then verification and loading.
struct Bars {
    send: ProgressBar,
    finish: std::sync::Mutex<Option<ProgressBar>>,
}

impl UploadProgress for Bars {
    fn sending(&self, total: u64, already: u64) {
        self.send.set_length(total);
        self.send.set_position(already);
        if already > 0 {
            self.send.println(format!(
                "resuming: the canister already holds {already} of {total} bytes"
            ));
        }
    }
    fn sent(&self, bytes: u64) {
        self.send.inc(bytes);
    }
    fn finalizing(&self, status: &UploadStatus) {
        self.send.finish_and_clear();
        let mut finish = self.finish.lock().unwrap_or_else(|e| e.into_inner());
        let bar = finish.get_or_insert_with(|| {
            let bar = ProgressBar::new(status.size);
            bar.set_style(
                ProgressStyle::with_template("{msg:>10} [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})")
                    .expect("static template")
                    .progress_chars("=> "),
            );
            bar
        });
        let phase = match &status.state {
            UploadState::Verifying => "verifying",
            UploadState::Loading => "loading",
            UploadState::Done => "loaded",
            _ => "finalizing",
        };
        bar.set_message(phase);
        bar.set_position(status.progress_bytes.min(status.size));
        if status.state == UploadState::Done {
            bar.set_position(status.size);
            bar.finish();
        }
    }
}

pub fn upload(args: UploadArgs) -> Result<()> {
    let bytes = canister_model_bytes(&args.model)?;
    let canister = principal(&args.canister_id)?;
    let opts = UploadOptions {
        chunk_bytes: args.chunk_bytes,
        parallel: args.parallel,
        stop_after_chunks: args.stop_after_chunks,
        ..UploadOptions::default()
    };
    let send = ProgressBar::new(bytes.len() as u64);
    send.set_style(
        ProgressStyle::with_template("{msg:>10} [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})")
            .expect("static template")
            .progress_chars("=> "),
    );
    send.set_message("sending");
    let bars = Bars {
        send,
        finish: Default::default(),
    };
    let summary = tokio()?.block_on(async {
        let agent = args.net.agent().await?;
        remote::upload(&agent, canister, &bytes, &opts, &bars).await
    })?;
    eprintln!(
        "chunks_sent: {}\nbytes_sent: {}\nbytes_resumed: {}\nretries: {}",
        summary.chunks_sent, summary.bytes_sent, summary.bytes_resumed, summary.retries
    );
    if !summary.finished {
        anyhow::bail!(
            "upload interrupted after {} chunks (run again to resume)",
            summary.chunks_sent
        );
    }
    eprintln!(
        "model active: sha256 {}",
        remote::hex(&icllm::local_canister::sha256(&bytes))
    );
    Ok(())
}

#[derive(clap::Args)]
pub struct ChatArgs {
    #[arg(long)]
    canister_id: String,
    #[command(flatten)]
    net: NetworkArgs,
    /// A system message opening the conversation.
    #[arg(long)]
    system: Option<String>,
    /// A built-in chat template (chatml, gemma, llama3, phi3, zephyr) for a
    /// model file that carries none.
    #[arg(long)]
    chat_template: Option<String>,
    /// Tokens per reply at most.
    #[arg(short = 'n', long = "n-predict", default_value_t = 256)]
    n: u32,
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    #[arg(long)]
    seed: Option<u64>,
}

/// A conversation with a deployed canister: one user turn per line of
/// stdin, each reply streamed by polling; every turn continues the previous
/// job (`continue_from`), so the canister prefills only the new text.
pub fn chat(args: ChatArgs) -> Result<()> {
    use std::io::{BufRead, Write};
    let canister = principal(&args.canister_id)?;
    tokio()?.block_on(async {
        let agent = args.net.agent().await?;
        let mut messages: Vec<icllm_api::ChatMessage> = args
            .system
            .iter()
            .map(|s| icllm_api::ChatMessage {
                role: "system".into(),
                content: s.clone(),
            })
            .collect();
        let mut previous = None;
        let stdin = std::io::stdin();
        let interactive = std::io::IsTerminal::is_terminal(&stdin);
        let mut lines = stdin.lock().lines();
        loop {
            if interactive {
                eprint!("> ");
            }
            let Some(line) = lines.next().transpose()? else {
                return Ok(());
            };
            if line.trim().is_empty() {
                continue;
            }
            messages.push(icllm_api::ChatMessage {
                role: "user".into(),
                content: line,
            });
            let req = JobRequest {
                messages: Some(messages.clone()),
                max_tokens: args.n,
                temperature: Some(args.temperature),
                seed: args.seed,
                continue_from: previous,
                chat_template: args.chat_template.clone(),
                ..JobRequest::default()
            };
            let id = remote::start_job(&agent, canister, req).await?;
            let mut reply = String::new();
            let view = remote::follow(&agent, canister, id, |v| {
                print!("{}", v.text);
                let _ = std::io::stdout().flush();
                reply.push_str(&v.text);
            })
            .await?;
            println!();
            eprintln!(
                "[job {id}: {:?}, {} prompt tokens ({} cached), {} generated, {} messages]",
                view.status,
                view.prompt_tokens,
                view.cached_prompt_tokens.unwrap_or(0),
                view.generated_tokens,
                view.messages
            );
            messages.push(icllm_api::ChatMessage {
                role: "assistant".into(),
                content: reply,
            });
            previous = Some(id);
        }
    })
}

#[derive(clap::Args)]
pub struct JobArgs {
    #[command(subcommand)]
    action: JobAction,
}

#[derive(clap::Subcommand)]
enum JobAction {
    /// Start a job; prints its id, or with --wait streams its text to the end.
    Start {
        #[arg(long)]
        canister_id: String,
        #[command(flatten)]
        net: NetworkArgs,
        #[arg(long, default_value = "")]
        prompt: String,
        /// Send --prompt as a user message through the model's chat template.
        #[arg(long)]
        chat: bool,
        #[arg(short = 'n', long = "n-predict", default_value_t = 128)]
        n: u32,
        #[arg(long, default_value_t = 0.8)]
        temperature: f32,
        #[arg(long)]
        seed: Option<u64>,
        /// Follow the job and print its text as it is generated.
        #[arg(long)]
        wait: bool,
        /// With --wait: print the generated token ids as a JSON line at the end.
        #[arg(long)]
        print_ids: bool,
    },
    /// Print a job's state as JSON.
    Poll {
        id: u64,
        #[arg(long)]
        canister_id: String,
        #[command(flatten)]
        net: NetworkArgs,
    },
    /// Cancel a job.
    Cancel {
        id: u64,
        #[arg(long)]
        canister_id: String,
        #[command(flatten)]
        net: NetworkArgs,
    },
}

pub fn job(args: JobArgs) -> Result<()> {
    let rt = tokio()?;
    match args.action {
        JobAction::Start {
            canister_id,
            net,
            prompt,
            chat,
            n,
            temperature,
            seed,
            wait,
            print_ids,
        } => rt.block_on(async {
            let canister = principal(&canister_id)?;
            let agent = net.agent().await?;
            let req = JobRequest {
                prompt: if chat { String::new() } else { prompt.clone() },
                messages: chat.then(|| {
                    vec![icllm_api::ChatMessage {
                        role: "user".into(),
                        content: prompt.clone(),
                    }]
                }),
                max_tokens: n,
                temperature: Some(temperature),
                seed,
                ..JobRequest::default()
            };
            let id = remote::start_job(&agent, canister, req).await?;
            if !wait {
                println!("{id}");
                return Ok(());
            }
            eprintln!("job {id}");
            use std::io::Write;
            let mut tokens = Vec::new();
            let view = remote::follow(&agent, canister, id, |v| {
                print!("{}", v.text);
                let _ = std::io::stdout().flush();
                tokens.extend_from_slice(&v.tokens);
            })
            .await?;
            println!();
            if print_ids {
                println!("{}", serde_json::to_string(&tokens)?);
            }
            eprintln!(
                "status: {:?}\ngenerated_tokens: {}\nmessages: {}\ninstructions: {}\nmax_message_instructions: {}",
                view.status, view.generated_tokens, view.messages, view.instructions, view.max_message_instructions
            );
            Ok(())
        }),
        JobAction::Poll { id, canister_id, net } => rt.block_on(async {
            let canister = principal(&canister_id)?;
            let agent = net.agent().await?;
            let view = remote::poll(&agent, canister, id, 0).await?;
            println!(
                "{}",
                serde_json::json!({
                    "id": view.id,
                    "status": format!("{:?}", view.status),
                    "text": view.text,
                    "tokens": view.tokens,
                    "prompt_tokens": view.prompt_tokens,
                    "generated_tokens": view.generated_tokens,
                    "messages": view.messages,
                    "instructions": view.instructions,
                    "max_message_instructions": view.max_message_instructions,
                })
            );
            Ok(())
        }),
        JobAction::Cancel { id, canister_id, net } => rt.block_on(async {
            let canister = principal(&canister_id)?;
            let agent = net.agent().await?;
            let status = remote::cancel(&agent, canister, id).await?;
            println!("{status:?}");
            Ok(())
        }),
    }
}

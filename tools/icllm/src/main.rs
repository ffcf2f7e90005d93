//! `icllm`: the project's command-line tool.
//!
//! Each subcommand lives in its own module; `main` only parses and dispatches.

mod bench;
mod bench_sharded;
mod convert;
mod generate;
mod inspect;
mod logits;
mod model_files;
mod remote_cmd;
mod replica;
mod run;
mod serve;
mod sim;
mod synth;
mod tokenize;

use clap::{Parser, Subcommand};
use icllm_engine::heap_cap::{print_and_abort, CappedAlloc};

/// Keeps the heap cap of chat-template renders (`icllm generate --chat`):
/// a template that passes it ends the program with the reason.
#[global_allocator]
static ALLOCATOR: CappedAlloc<std::alloc::System> = CappedAlloc::new(std::alloc::System, print_and_abort);

#[derive(Parser)]
#[command(name = "icllm", version, about = "On-chain LLM inference for the Internet Computer")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text natively with the engine (no canister).
    Generate(generate::GenerateArgs),
    /// Run the canister in the local IC runtime: upload the model, generate through timers.
    Run(run::RunArgs),
    /// Serve the canister over OpenAI-compatible HTTP (completions, chat, streaming).
    Serve(serve::ServeArgs),
    /// Run any canister wasm in the local IC runtime, one line per step.
    Sim(sim::SimArgs),
    /// Print a prompt's token ids and the logits at its last position, as JSON.
    Logits(logits::LogitsArgs),
    /// Describe a GGUF file or Hugging Face checkpoint: architecture, shapes, types, tokenizer.
    Inspect(inspect::InspectArgs),
    /// Print the token ids of a text as a JSON array.
    Tokenize(tokenize::TokenizeArgs),
    /// Write a GGUF with random weights and the exact shapes of a published model.
    Synth(synth::SynthArgs),
    /// Measure IC-weighted instructions per token in the local IC runtime.
    Bench(bench::BenchArgs),
    /// Convert a Hugging Face checkpoint directory to one GGUF file (optionally quantized).
    Convert(convert::ConvertArgs),
    /// Serve the local IC runtime over the IC's HTTP interface (for agents, dfx, icp-cli).
    Replica(replica::ReplicaArgs),
    /// Install or upgrade the icllm canister on a network; prints its id.
    Deploy(remote_cmd::DeployArgs),
    /// Upload a model to a deployed canister (parallel, resumable, verified).
    Upload(remote_cmd::UploadArgs),
    /// Start, follow, poll or cancel jobs of a deployed canister.
    Job(remote_cmd::JobArgs),
    /// Chat with a deployed canister: a turn per line of stdin, replies streamed.
    Chat(remote_cmd::ChatArgs),
}

/// Runs the command; a user error prints its chain of causes on one line
/// (`error: reading x: No such file`) and exits with 1. The backtrace that
/// anyhow captures under `RUST_BACKTRACE` is printed only when asked for with
/// `ICLLM_BACKTRACE=1`: it helps whoever debugs icllm, not its users.
fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            if std::env::var_os("ICLLM_BACKTRACE").is_some_and(|v| v == "1") {
                eprintln!("error: {e:?}");
            } else {
                eprintln!("error: {e:#}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Generate(args) => generate::run(args),
        Command::Run(args) => run::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Sim(args) => sim::run(args),
        Command::Logits(args) => logits::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Tokenize(args) => tokenize::run(args),
        Command::Synth(args) => synth::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Convert(args) => convert::run(args),
        Command::Replica(args) => replica::run(args),
        Command::Deploy(args) => remote_cmd::deploy(args),
        Command::Upload(args) => remote_cmd::upload(args),
        Command::Job(args) => remote_cmd::job(args),
        Command::Chat(args) => remote_cmd::chat(args),
    }
}

/// The canister interface's name for an engine KV cache type.
pub(crate) fn api_kv_type(t: icllm_engine::kv::KvType) -> icllm_api::KvCacheType {
    match t {
        icllm_engine::kv::KvType::F32 => icllm_api::KvCacheType::F32,
        icllm_engine::kv::KvType::Q8 => icllm_api::KvCacheType::Q8,
    }
}

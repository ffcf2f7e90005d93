//! `icllm run`: the whole product on one machine. Builds (or finds) the
//! canister wasm, installs it in the local IC runtime, uploads the model
//! (a GGUF file, or a Hugging Face checkpoint directory converted to GGUF in
//! memory) through the real chunk API, starts a job, lets the canister's timers drive
//! it to the end while streaming new text to stdout, then prints statistics
//! to stderr as `key: value` lines.

use anyhow::{anyhow, Result};
use clap::Args;
use icllm::local_canister::{build_or_read_wasm, controller, sha256, trap_stats, LocalCanister};
use icllm_api::IC_UPDATE_INSTRUCTION_LIMIT;
use icllm_api::{ChatMessage, InitArgs, JobRequest, JobStatus};
use std::io::Write;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct RunArgs {
    /// GGUF model file, or Hugging Face checkpoint directory (converted to
    /// GGUF in memory before the upload).
    #[arg(long)]
    model: PathBuf,
    /// Prompt text (BOS alone when absent).
    #[arg(long)]
    prompt: Option<String>,
    /// Tokens to generate at most.
    #[arg(short = 'n', long = "n-predict", default_value_t = 256)]
    n: u32,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    #[arg(long)]
    top_k: Option<u32>,
    #[arg(long)]
    top_p: Option<f32>,
    /// RNG seed; drawn from the canister's raw_rand when absent.
    #[arg(long)]
    seed: Option<u64>,
    /// Send --prompt as a user message through the model's chat template
    /// (rendered by the canister) and stop at the end of the assistant's turn.
    #[arg(long)]
    chat: bool,
    /// With --chat: a built-in chat template (chatml, gemma, llama3, phi3,
    /// zephyr; llama.cpp's of the same names) for a model file that carries
    /// none. The file's own template wins.
    #[arg(long, requires = "chat")]
    chat_template: Option<String>,
    /// Context size of the job (default: the model's trained context).
    #[arg(long)]
    ctx_size: Option<u32>,
    /// KV cache storage: f32 (exact) or q8 (int8 blocks: 3.5x smaller,
    /// faster attention at long contexts, rounding as int8 activations).
    #[arg(long, default_value = "f32")]
    kv_cache: icllm_engine::kv::KvType,
    /// Instructions per update/timer message of the job in the local
    /// runtime (the model uploads and loads in messages of at least 40 B).
    #[arg(long, default_value_t = IC_UPDATE_INSTRUCTION_LIMIT)]
    instruction_limit: u64,
    /// Memory charges of the local runtime: dmt (the replica's
    /// deterministic memory tracker, in-band per touched page) or legacy
    /// (1,000 per dirty page after the message).
    #[arg(long, default_value = "dmt")]
    memory_charges: local_ic::MemoryCharges,
    /// Canister wasm to run (default: built from the workspace with cargo).
    #[arg(long)]
    wasm: Option<PathBuf>,
    /// Also print the generated token ids (`generated_ids: [...]` on stderr).
    #[arg(long)]
    print_ids: bool,
}

pub fn run(args: RunArgs) -> Result<()> {
    // The model first: a checkpoint that cannot be converted fails before the build.
    let model = crate::model_files::canister_model_bytes(&args.model)?;
    let wasm = build_or_read_wasm(args.wasm.as_deref())?;
    // Uploading and loading in IC-sized messages: an upload chunk alone
    // (2 MB copied into the heap and into stable memory, every page paying
    // its first write) costs ~20 M.
    let load_limit = args.instruction_limit.max(IC_UPDATE_INSTRUCTION_LIMIT);
    let init = InitArgs {
        message_instruction_limit: Some(load_limit),
        ..InitArgs::default()
    };
    let mut canister = LocalCanister::install_with(wasm, init, load_limit, false, args.memory_charges)?;
    canister.upload_model(&model, sha256(&model))?;
    if load_limit != args.instruction_limit {
        canister.set_message_limit(args.instruction_limit)?;
    }

    let prompt = args.prompt.unwrap_or_default();
    let messages = args.chat.then(|| {
        vec![ChatMessage {
            role: "user".into(),
            content: prompt.clone(),
        }]
    });
    let req = JobRequest {
        prompt,
        messages,
        max_tokens: args.n,
        temperature: Some(args.temperature),
        top_k: args.top_k,
        top_p: args.top_p,
        seed: args.seed,
        ctx_size: args.ctx_size,
        prompt_tokens: None,
        kv_cache: Some(crate::api_kv_type(args.kv_cache)),
        continue_from: None,
        chat_template: args.chat_template.clone(),
        notify: None,
    };
    let first_report = canister.rt.reports().len();
    let id = canister
        .start_job(controller(), req)?
        .map_err(|e| anyhow!("start_job: {e:?}"))?;
    let mut out = std::io::stdout().lock();
    let view = canister.run_job(controller(), id, |v| {
        let _ = out.write_all(v.text.as_bytes());
        let _ = out.flush();
    })?;
    writeln!(out)?;
    out.flush()?;
    if let JobStatus::Failed(reason) = &view.status {
        return Err(anyhow!("the job failed: {reason}"));
    }

    let reports = &canister.rt.reports()[first_report..];
    let max_message = reports
        .iter()
        .filter(|r| r.committed)
        .map(|r| r.instructions)
        .max()
        .unwrap_or(0);
    let trapped = trap_stats(reports);
    let page_instructions: u64 = reports
        .iter()
        .filter(|r| r.committed)
        .map(|r| r.page_instructions)
        .sum();
    let decode_instructions = view.instructions.saturating_sub(view.prompt_instructions);
    let per_token = decode_instructions as f64 / view.generated_tokens.max(1) as f64;
    let per_prompt_token = view.prompt_instructions as f64 / view.prompt_tokens.max(1) as f64;
    eprintln!("status: {:?}", view.status);
    eprintln!("prompt_tokens: {}", view.prompt_tokens);
    eprintln!("generated_tokens: {}", view.generated_tokens);
    eprintln!("messages: {}", view.messages);
    eprintln!("instructions: {}", view.instructions);
    eprintln!("instructions_per_token: {per_token:.0}");
    eprintln!("prompt_instructions_per_token: {per_prompt_token:.0}");
    eprintln!(
        "tokens_per_message: {:.0}",
        IC_UPDATE_INSTRUCTION_LIMIT as f64 / per_token.max(1.0)
    );
    eprintln!("max_message_instructions: {max_message}");
    eprintln!("memory_charges: {}", args.memory_charges.name());
    eprintln!(
        "page_instructions_per_message: {:.0}",
        page_instructions as f64 / view.messages.max(1) as f64
    );
    eprintln!("traps: {}", trapped.traps);
    eprintln!("retries: {}", trapped.retries);
    eprintln!("cycles: {}", view.cycles);
    if args.print_ids {
        eprintln!("generated_ids: {:?}", view.tokens);
    }
    Ok(())
}

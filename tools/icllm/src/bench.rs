//! `icllm bench`: what a token costs on the IC. Installs the canister wasm
//! (the release build, SIMD128) in the local IC runtime, uploads the model
//! through the chunk API, runs a job of `--prompt-tokens` prompt tokens and
//! `--gen-tokens` generated tokens (greedy), and reports IC-weighted
//! instructions from the job's own accounting (the canister charges each
//! unit to its phase, so the prompt/decode split is exact).
//!
//! The fixed cost of a message is measured by difference: the same job is
//! run again with a per-message limit that fits only a few tokens, and the
//! extra instructions are divided by the extra messages.

use anyhow::{anyhow, bail, Result};
use clap::Args;
use icllm::local_canister::{build_or_read_wasm, controller, sha256, LocalCanister};
use icllm_api::{ApiResult, Health, InitArgs, JobRequest, JobStatus, JobView};
use icllm_engine::model::{forward, Model};
use icllm_engine::synth::{self, QuantMix, SynthOptions};
use icllm_engine::tokenizer::Tokenizer;
use std::path::PathBuf;

/// The IC's instruction limit per update/timer message.
const IC_UPDATE_LIMIT: u64 = 40_000_000_000;
/// The canister's minimum checkpoint reserve (scheduler::reserve).
const MIN_RESERVE: u64 = 1_500_000;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// GGUF model file, or Hugging Face checkpoint directory (converted to
    /// GGUF in memory, tensor types kept).
    #[arg(long, required_unless_present = "shape", conflicts_with = "shape")]
    model: Option<PathBuf>,
    /// Synthetic random weights with a published shape instead of a file
    /// (stories15M, stories110M, smollm2-135m, qwen2.5-0.5b, qwen3-0.6b, ...).
    #[arg(long)]
    shape: Option<String>,
    /// Tensor types of `--shape`: f32, f16, bf16, q8_0, q4_0, q4_k, q5_k, q6_k, q4_k_m.
    #[arg(long, default_value = "q8_0")]
    quant: String,
    /// Only the first N layers of `--shape` (quick runs; per-token numbers shrink accordingly).
    #[arg(long)]
    layers: Option<usize>,
    /// Context size of the job (default: prompt + generated tokens).
    #[arg(long)]
    ctx: Option<u32>,
    /// Prompt tokens (prefill).
    #[arg(long, default_value_t = 128)]
    prompt_tokens: u32,
    /// Generated tokens (decode, greedy).
    #[arg(long, default_value_t = 32)]
    gen_tokens: u32,
    /// Instructions per message for the main run (the IC's 40 B by default).
    #[arg(long, default_value_t = IC_UPDATE_LIMIT)]
    instruction_limit: u64,
    /// Skip the second run that measures the fixed cost per message.
    #[arg(long)]
    no_overhead: bool,
    /// Print one JSON object instead of `key: value` lines.
    #[arg(long)]
    json: bool,
    /// Canister wasm to run (default: built from the workspace with cargo).
    #[arg(long)]
    wasm: Option<PathBuf>,
}

/// One job's totals, from the job view and the runtime's message reports.
struct RunTotals {
    view: JobView,
    /// Committed messages that ran while the job was active, and their instructions.
    messages: u64,
    message_instructions: u64,
    max_dirtied_heap_pages: u64,
    stable_bytes_written: u64,
}

fn synthetic_prompt(model: &Model, tokens: Option<Vec<u32>>, n: usize) -> Vec<u32> {
    let vocab = model.config.vocab_size as u32;
    match tokens {
        Some(ids) if !ids.is_empty() => ids.iter().copied().cycle().take(n).collect(),
        _ => (0..n as u32).map(|i| 1 + (i * 7) % (vocab - 1).max(1)).collect(),
    }
}

fn run_job(c: &mut LocalCanister, req: JobRequest) -> Result<RunTotals> {
    let first = c.rt.reports().len();
    let id = c
        .start_job(controller(), req)?
        .map_err(|e| anyhow!("start_job: {e:?}"))?;
    let view = match c.run_job(controller(), id, |_| {}) {
        Ok(v) => v,
        Err(e) => {
            // What the runtime saw last, to tell a canister bug from a runtime one.
            for r in c.rt.reports().iter().rev().take(4) {
                eprintln!(
                    "last messages: {} {:?} instructions {} / {} committed {} dirtied stable pages {} error {:?}",
                    r.method, r.kind, r.instructions, r.limit, r.committed, r.dirtied_stable_pages, r.error
                );
            }
            return Err(e);
        }
    };
    if let JobStatus::Failed(reason) = &view.status {
        bail!("the job failed: {reason}");
    }
    let reports: Vec<_> = c.rt.reports()[first..]
        .iter()
        .filter(|r| r.committed && r.method != "start_job")
        .filter(|r| r.kind != local_ic::MessageKind::Query)
        .collect();
    Ok(RunTotals {
        messages: reports.len() as u64,
        message_instructions: reports.iter().map(|r| r.instructions).sum(),
        max_dirtied_heap_pages: reports.iter().map(|r| r.dirtied_heap_pages).max().unwrap_or(0),
        stable_bytes_written: reports.iter().map(|r| r.stable_bytes_written).sum(),
        view,
    })
}

fn set_limit(c: &mut LocalCanister, limit: u64) -> Result<()> {
    let mut limits = c.rt.limits();
    limits.update = limit;
    c.rt.set_limits(limits);
    let (r,): (ApiResult<()>,) = c.update(controller(), "set_message_instruction_limit", (limit,))?;
    r.map_err(|e| anyhow!("set_message_instruction_limit: {e:?}"))
}

/// The model's name and GGUF bytes: the file (a checkpoint directory
/// converted), or synthetic weights for `--shape`.
fn model_bytes(args: &BenchArgs) -> Result<(String, Vec<u8>)> {
    if let Some(path) = &args.model {
        let bytes = crate::model_files::canister_model_bytes(path)?;
        return Ok((path.display().to_string(), bytes));
    }
    let name = args.shape.as_deref().unwrap_or_default();
    let Some(shape) = synth::shape(name) else {
        let names: Vec<&str> = synth::SHAPES.iter().map(|s| s.name).collect();
        bail!("unknown shape {name:?} (known: {})", names.join(", "));
    };
    let Some(quant) = QuantMix::parse(&args.quant) else {
        bail!("unknown quant type {:?} (known: {})", args.quant, QuantMix::NAMES);
    };
    let mut opts = SynthOptions::new(quant);
    opts.layers = args.layers;
    opts.search = icllm_engine::quant::Search::Fast;
    opts.threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut bytes = Vec::new();
    synth::write_gguf(shape, &opts, &mut bytes).map_err(|e| anyhow!("synthesizing {name}: {e}"))?;
    Ok((format!("{name} {} (synthetic)", args.quant), bytes))
}

pub fn run(args: BenchArgs) -> Result<()> {
    let (name, bytes) = model_bytes(&args)?;
    let wasm = build_or_read_wasm(args.wasm.as_deref())?;
    let (model, gguf) = Model::from_gguf_bytes(&bytes).map_err(|e| anyhow!("cannot load {name}: {e}"))?;
    let tokenizer = Tokenizer::from_gguf(&gguf).ok();
    let model = &model;
    let cfg = &model.config;
    let (mut n_prompt, n_gen) = (args.prompt_tokens.max(1), args.gen_tokens.max(1));
    let trained = cfg.context_length as u32;
    let ctx = args.ctx.unwrap_or(trained.min(n_prompt + n_gen + 1));
    if n_gen + 1 >= ctx {
        bail!("a context of {ctx} holds no prompt beside {n_gen} generated tokens");
    }
    if n_prompt + n_gen >= ctx {
        eprintln!(
            "note: the context holds {ctx} tokens; {} prompt tokens instead of {n_prompt}",
            ctx - n_gen - 1
        );
        n_prompt = ctx - n_gen - 1;
    }
    let text_ids = tokenizer.as_ref().map(|t| {
        crate::model_files::encode_prompt(
            t,
            "Once upon a time, there was a little girl named Lily. She loved to play outside in the sun with her dog.",
        )
    });
    let prompt = synthetic_prompt(model, text_ids, n_prompt as usize);

    let init = InitArgs {
        message_instruction_limit: Some(args.instruction_limit),
        ..InitArgs::default()
    };
    let mut c = LocalCanister::install(wasm, init, args.instruction_limit)?;
    c.upload_model(&bytes, sha256(&bytes))?;
    let req = JobRequest {
        max_tokens: n_gen,
        temperature: Some(0.0),
        seed: Some(1),
        ctx_size: Some(ctx),
        prompt_tokens: Some(prompt),
        ..JobRequest::default()
    };
    let main = run_job(&mut c, req.clone())?;
    let (health,): (Health,) = c.query(controller(), "health", ())?;
    let v = &main.view;
    let gen = v.generated_tokens.max(1) as f64;
    let decode_instr = v.instructions.saturating_sub(v.prompt_instructions) as f64;
    let per_token = decode_instr / gen;
    let per_prompt_token = v.prompt_instructions as f64 / v.prompt_tokens.max(1) as f64;

    // Fixed cost per message: the same job again in messages that fit a few tokens.
    let overhead = if args.no_overhead {
        None
    } else {
        // The canister accepts no limit under 10 M.
        let small = (MIN_RESERVE + (3.0 * per_token) as u64 + 200_000).max(10_000_000);
        set_limit(&mut c, small)?;
        let many = run_job(&mut c, req)?;
        set_limit(&mut c, args.instruction_limit)?;
        if many.view.tokens != main.view.tokens {
            bail!("the job's tokens changed with the message size");
        }
        let extra_messages = many.messages.saturating_sub(main.messages);
        (extra_messages > 0).then(|| {
            (
                many.message_instructions.saturating_sub(main.message_instructions) as f64 / extra_messages as f64,
                many.messages,
                many.max_dirtied_heap_pages,
                many.stable_bytes_written / many.messages.max(1),
            )
        })
    };

    // Multiply-adds from the engine's cost model.
    let layers = cfg.n_layers as u64;
    let decode_pos = n_prompt + n_gen / 2;
    let macs_per_token = layers
        * (forward::attention_block_macs(model, decode_pos, 1) + forward::ffn_block_macs(model, 1))
        + forward::head_macs(model);
    let prefill_macs = layers
        * (forward::attention_block_macs(model, 0, n_prompt as usize)
            + forward::ffn_block_macs(model, n_prompt as usize))
        + forward::head_macs(model);
    let prefill_macs_per_token = prefill_macs as f64 / n_prompt as f64;
    let limit = IC_UPDATE_LIMIT as f64;
    let ovh = overhead.map(|o| o.0).unwrap_or(0.0);
    let tokens_per_message = (limit - ovh) / per_token.max(1.0);
    let prefill_tokens_per_message = (limit - ovh) / per_prompt_token.max(1.0);

    let report = serde_json::json!({
        "model": name,
        "architecture": format!("{:?}", cfg.arch),
        "dim": cfg.dim,
        "n_layers": cfg.n_layers,
        "vocab_size": cfg.vocab_size,
        "weights_type": format!("{:?}", model.layers.first().map(|l| l.wq.ty)),
        "prompt_tokens": v.prompt_tokens,
        "generated_tokens": v.generated_tokens,
        "decode_context_position": decode_pos,
        "instructions_per_token": per_token.round(),
        "prefill_instructions_per_token": per_prompt_token.round(),
        "message_overhead_instructions": overhead.map(|o| o.0.round()),
        "overhead_run_messages": overhead.map(|o| o.1),
        "overhead_run_max_dirtied_heap_pages": overhead.map(|o| o.2),
        "overhead_run_stable_bytes_written_per_message": overhead.map(|o| o.3),
        "tokens_per_message": tokens_per_message.floor(),
        "prefill_tokens_per_message": prefill_tokens_per_message.floor(),
        "macs_per_token": macs_per_token,
        "instructions_per_mac": per_token / macs_per_token as f64,
        "prefill_macs_per_token": prefill_macs_per_token.round(),
        "prefill_instructions_per_mac": per_prompt_token / prefill_macs_per_token,
        "messages": v.messages,
        "max_message_instructions": v.max_message_instructions,
        "max_dirtied_heap_pages": main.max_dirtied_heap_pages,
        "stable_bytes_written": main.stable_bytes_written,
        "heap_bytes": health.heap_bytes,
        "stable_bytes": health.stable_bytes,
    });
    if args.json {
        println!("{report}");
    } else {
        for (k, v) in report.as_object().expect("an object") {
            println!("{k}: {v}");
        }
    }
    Ok(())
}

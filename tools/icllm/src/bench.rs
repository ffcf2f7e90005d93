//! `icllm bench`: what a token costs on the IC. Installs the canister wasm
//! (the release build, SIMD128) in the local IC runtime, uploads the model
//! through the chunk API, runs a job of `--prompt-tokens` prompt tokens and
//! `--gen-tokens` generated tokens (greedy), and reports IC-weighted
//! instructions from the job's own accounting (the canister charges each
//! unit to its phase, so the prompt/decode split is exact). With the
//! defaults (120 + 16) decode is measured at context positions 120..135,
//! i.e. around position 128.
//!
//! The fixed cost of a message is measured by difference on a short job
//! (`--overhead-prompt-tokens` 1, `--overhead-gen-tokens` 8) run twice:
//! under the main run's limit, then under a limit that fits only a few
//! units (a layer's attention or FFN, or the head). Both runs do the same
//! units (with a one-token prompt every unit processes one token, however
//! the messages cut the job), so the extra instructions divided by the
//! extra job messages is the fixed cost of a message. The short job keeps
//! this second measurement to a few token evaluations, whatever the main
//! run's length.
//!
//! `--table` runs every target shape of issue 6 and prints the README's
//! markdown table.
//!
//! `--profile [N]` runs the canister in a profiling runtime (a counter per
//! wasm function, names from the wasm's `name` section, which the canister
//! build keeps) and prints the top N functions by IC-weighted instructions
//! per token, for decode and for prefill, to stdout after the report. The
//! main job gives prefill + decode; a second job with the same prompt and
//! one generated token (prefill and the sampling of its first token) is
//! the prefill profile, and the difference of the two, over the extra
//! generated tokens, is the decode profile. Code inlined into a function
//! counts for that function; the host's system-API charges (stable memory
//! reads/writes, ...) are one line of their own.

use anyhow::{anyhow, bail, Result};
use clap::Args;
use icllm::local_canister::{build_or_read_wasm, controller, sha256, trap_stats, LocalCanister, STEP_METHOD};
use icllm_api::IC_UPDATE_INSTRUCTION_LIMIT;
use icllm_api::{ApiError, ApiResult, Health, InitArgs, JobRequest, JobStatus, JobView, Limits, QueryGeneration};
use icllm_engine::job::DEFAULT_MAX_BATCH;
use icllm_engine::kv::KvShape;
use icllm_engine::model::{forward, Model};
use icllm_engine::synth::{self, QuantMix, SynthOptions};
use icllm_engine::tokenizer::Tokenizer;
use std::path::PathBuf;
use std::time::Instant;

/// The canister's minimum checkpoint reserve (scheduler::reserve).
const MIN_RESERVE: u64 = 1_500_000;
/// Job messages without progress after which a run is declared stuck.
const STUCK_AFTER_MESSAGES: u64 = 50;

/// The shapes of issue 6's target table: (shape, quant, target tokens per
/// 40 B decode message, reference).
pub const TARGETS: &[(&str, &str, u32, &str)] = &[
    ("stories15M", "f32", 1500, "llama2.c canister: 200+"),
    ("stories110M", "q8_0", 400, "llama2.c canister fails with a prompt"),
    ("smollm2-135m", "q8_0", 300, "llama.cpp canister: 40"),
    ("qwen2.5-0.5b", "q8_0", 100, "llama.cpp canister: 25"),
    ("qwen3-0.6b", "q4_k_m", 80, "candle canister: ~5"),
    ("llama3.2-1b", "q4_k_m", 40, "llama.cpp canister: 4"),
    ("qwen3-1.7b", "q4_k_m", 25, "llama.cpp canister: 6"),
];

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// GGUF model file, or Hugging Face checkpoint directory (converted to
    /// GGUF in memory, tensor types kept).
    #[arg(long, conflicts_with_all = ["shape", "table"])]
    model: Option<PathBuf>,
    /// Synthetic random weights with a published shape instead of a file
    /// (stories15M, stories110M, smollm2-135m, qwen2.5-0.5b, qwen3-0.6b, ...).
    #[arg(long, conflicts_with = "table")]
    shape: Option<String>,
    /// Tensor types of `--shape`: f32, f16, bf16, q8_0, q4_0, q4_1, q5_0,
    /// q5_1, iq4_nl, iq4_xs, q2_k, q3_k, q4_k, q5_k, q6_k, q3_k_m, q4_k_m,
    /// q5_k_m.
    #[arg(long, default_value = "q8_0")]
    quant: String,
    /// Every shape of the target table, one after the other; prints the
    /// README's markdown table (with `--json`: one JSON object per line).
    #[arg(long)]
    table: bool,
    /// Only the first N layers of `--shape` (quick runs; per-token numbers shrink accordingly).
    #[arg(long)]
    layers: Option<usize>,
    /// Context size of the job (default: prompt + generated tokens + 1).
    #[arg(long)]
    pub(crate) ctx: Option<u32>,
    /// KV cache storage of the jobs: f32 or q8.
    #[arg(long, default_value = "f32")]
    pub(crate) kv_cache: icllm_engine::kv::KvType,
    /// Prompt tokens (prefill).
    #[arg(long, default_value_t = 120)]
    pub(crate) prompt_tokens: u32,
    /// Generated tokens (decode, greedy); decode is reported at the middle
    /// position, prompt + gen / 2 (128 with the defaults).
    #[arg(long, default_value_t = 16)]
    pub(crate) gen_tokens: u32,
    /// Prompt tokens of the short job that measures the fixed cost per
    /// message (more than 1 lets the runs batch the prompt differently).
    #[arg(long, default_value_t = 1)]
    overhead_prompt_tokens: u32,
    /// Generated tokens of that job.
    #[arg(long, default_value_t = 8)]
    overhead_gen_tokens: u32,
    /// Instructions per message for the jobs (the IC's 40 B by default;
    /// the model itself loads in messages of at least 40 B).
    #[arg(long, default_value_t = IC_UPDATE_INSTRUCTION_LIMIT)]
    pub(crate) instruction_limit: u64,
    /// Skip the runs that measure the fixed cost per message.
    #[arg(long)]
    no_overhead: bool,
    /// Measure query mode instead: the most tokens one `generate_query`
    /// (5 B instructions) generates, greedily, after a `--prompt-tokens`
    /// prompt (found by the canister's refusal, then confirmed by a query
    /// that asks for exactly that many).
    #[arg(long, conflicts_with_all = ["table", "profile"])]
    query: bool,
    /// Memory charges of the local runtime: dmt (the replica's deterministic
    /// memory tracker: every heap or stable page a message touches costs
    /// instructions in-band) or legacy (1,000 per dirty page after the message).
    #[arg(long, default_value = "dmt")]
    memory_charges: local_ic::MemoryCharges,
    /// Per-function profile: the top N functions (default 25) by IC-weighted
    /// instructions per decode token and per prefill token (runs an extra
    /// prefill-only job; the profiling runtime is slower, counts unchanged).
    #[arg(long, num_args = 0..=1, default_missing_value = "25", value_name = "N", conflicts_with = "table")]
    profile: Option<usize>,
    /// Also run N copies of the job at once (the scheduler steps generating
    /// jobs together, one pass over the weights for all their tokens) and
    /// report their aggregate decode tokens per message beside one job's;
    /// every copy must generate the one job's tokens.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub(crate) jobs: u32,
    /// The canister's heap budget for weights and KV caches, in MiB
    /// (`InitArgs.heap_budget`; default: the canister's 3.5 GiB): a model
    /// whose byte layouts do not fit it loads in the compact layouts
    /// (nibbles, the file's blocks), which this measures.
    #[arg(long, value_name = "MIB")]
    pub(crate) heap_budget_mib: Option<u64>,
    /// Run the model sharded over K canisters (a coordinator with the
    /// embedding and head, K shards with even layer ranges), the model
    /// uploaded to the coordinator and sent on to the shards; reports
    /// instructions, messages and cycles per decode token over all of them.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=64), conflicts_with_all = ["table", "query", "profile"])]
    pub(crate) shards: Option<u32>,
    /// Print one JSON object instead of `key: value` lines.
    #[arg(long)]
    json: bool,
    /// Canister wasm to run (default: built from the workspace with cargo).
    #[arg(long)]
    wasm: Option<PathBuf>,
    /// Print the job's progress after every scheduler round (stderr).
    #[arg(long)]
    trace: bool,
    /// Synthesize `--shape` afresh instead of reusing the file an earlier
    /// bench left in `<target>/icllm-synth-cache` (random weights either way;
    /// synthesis takes a minute or more for the 1B+ shapes).
    #[arg(long)]
    no_synth_cache: bool,
}

/// Bump when the synthetic files' contents change on purpose.
const SYNTH_CACHE_VERSION: u32 = 2;

/// Where synthesized models are kept between runs.
fn synth_cache_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| icllm::local_canister::workspace_root().join("target"))
        .join("icllm-synth-cache")
}

/// One job's totals, from the job view and the runtime's message reports.
struct RunTotals {
    view: JobView,
    /// Instructions of every committed update-type message that ran while
    /// the job was active (scheduler ticks: global timer, the timer's
    /// self-call, its callback), `start_job` excluded.
    all_instructions: u64,
    /// Those messages' heap dirty-page charge, and their pages.
    heap_dirty_page_instructions: u64,
    max_dirtied_heap_pages: u64,
    stable_bytes_written: u64,
    /// In-band page charges and slices of the job's step messages.
    page_instructions: u64,
    /// The page charges of the step messages that started with the prompt
    /// already processed (their first touch of the weights falls on decode
    /// tokens; the fixed cost per message counts it once).
    decode_page_instructions: u64,
    slices: u64,
    step_messages: u64,
    /// Messages that trapped while the job ran, and steps retried after one.
    traps: u64,
    retries: u64,
}

fn synthetic_prompt(model: &Model, tokens: Option<Vec<u32>>, n: usize) -> Vec<u32> {
    let vocab = model.config.vocab_size as u32;
    match tokens {
        Some(ids) if !ids.is_empty() => ids.iter().copied().cycle().take(n).collect(),
        _ => (0..n as u32).map(|i| 1 + (i * 7) % (vocab - 1).max(1)).collect(),
    }
}

/// A job that stopped making progress (its next unit never fits the limit).
#[derive(Debug)]
struct Stuck(String);

impl std::fmt::Display for Stuck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Stuck {}

fn run_job(c: &mut LocalCanister, req: JobRequest, trace: bool) -> Result<RunTotals> {
    let first = c.rt.reports().len();
    let id = c
        .start_job(controller(), req)?
        .map_err(|e| anyhow!("start_job: {e:?}"))?;
    // A job whose messages stop making progress would otherwise run for ever.
    let mut last_progress = (0u32, 0u32, 0u64);
    let mut stuck = false;
    // How many of the job's messages had run when its prompt was first
    // seen fully processed: the later ones started with decode.
    let mut prefill_messages = None;
    let result = c.run_job_while(controller(), id, |v| {
        if v.prompt_tokens_processed >= v.prompt_tokens && prefill_messages.is_none() {
            prefill_messages = Some(v.messages as usize);
        }
        if trace {
            eprintln!(
                "trace: {:?} prompt {}/{} generated {} messages {} instructions {}",
                v.status, v.prompt_tokens_processed, v.prompt_tokens, v.generated_tokens, v.messages, v.instructions
            );
        }
        let progress = (v.prompt_tokens_processed, v.generated_tokens);
        if progress != (last_progress.0, last_progress.1) {
            last_progress = (progress.0, progress.1, v.messages);
        } else if v.messages > last_progress.2 + STUCK_AFTER_MESSAGES {
            stuck = true;
        }
        !stuck
    });
    if stuck {
        // Leave no active job behind (the caller may retry with another limit).
        let _: Result<(ApiResult<JobStatus>,), _> = c.update(controller(), "cancel", (id,));
        return Err(anyhow!(Stuck(format!(
            "the job made no progress in {STUCK_AFTER_MESSAGES} messages (prompt {} tokens processed, {} generated)",
            last_progress.0, last_progress.1
        ))));
    }
    let view = match result {
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
    let trapped = trap_stats(&c.rt.reports()[first..]);
    let reports: Vec<_> = c.rt.reports()[first..]
        .iter()
        .filter(|r| r.committed && r.method != "start_job")
        .filter(|r| r.kind != local_ic::MessageKind::Query)
        .collect();
    // The job's own messages (the scheduler's step calls), for the per-message figures.
    let steps = || reports.iter().filter(|r| r.method == STEP_METHOD);
    Ok(RunTotals {
        page_instructions: steps().map(|r| r.page_instructions).sum(),
        decode_page_instructions: steps()
            .skip(prefill_messages.unwrap_or(usize::MAX))
            .map(|r| r.page_instructions)
            .sum(),
        slices: steps().map(|r| r.slices).sum(),
        step_messages: steps().count() as u64,
        traps: trapped.traps,
        retries: trapped.retries,
        all_instructions: reports.iter().map(|r| r.instructions).sum(),
        heap_dirty_page_instructions: reports.iter().map(|r| r.heap_dirty_page_instructions).sum(),
        max_dirtied_heap_pages: reports.iter().map(|r| r.dirtied_heap_pages).max().unwrap_or(0),
        stable_bytes_written: reports.iter().map(|r| r.stable_bytes_written).sum(),
        view,
    })
}

/// `n` copies of `req` started at once and run by the scheduler to the end;
/// each must generate `solo` (the tokens of the job alone). Their decode
/// instructions and tokens, summed, and the step messages that ran.
fn run_together(c: &mut LocalCanister, req: &JobRequest, n: u32, solo: &[u32]) -> Result<(u64, u64, u64)> {
    let first = c.rt.reports().len();
    let mut ids = Vec::new();
    for _ in 0..n {
        ids.push(
            c.start_job(controller(), req.clone())?
                .map_err(|e| anyhow!("start_job: {e:?}"))?,
        );
    }
    let mut views = Vec::new();
    for round in 0.. {
        views = ids
            .iter()
            .map(|&id| c.poll(controller(), id, 0)?.map_err(|e| anyhow!("poll: {e:?}")))
            .collect::<Result<Vec<JobView>>>()?;
        if views.iter().all(|v| !v.status.is_active()) {
            break;
        }
        if round > 1_000_000 {
            bail!("the {n} concurrent jobs did not finish");
        }
        c.round();
    }
    for v in &views {
        if v.tokens != solo {
            bail!(
                "job {} of {n} run together generated {:?}, alone {:?}",
                v.id,
                v.tokens,
                solo
            );
        }
    }
    let decode: u64 = views.iter().map(|v| v.instructions - v.prompt_instructions).sum();
    let tokens: u64 = views.iter().map(|v| v.generated_tokens as u64).sum();
    let steps = c.rt.reports()[first..]
        .iter()
        .filter(|r| r.method == STEP_METHOD && r.committed)
        .count();
    Ok((decode, tokens, steps as u64))
}

fn set_limit(c: &mut LocalCanister, limit: u64) -> Result<()> {
    c.set_message_limit(limit)
}

/// The model's name and GGUF bytes: the file (a checkpoint directory
/// converted), or synthetic weights for `--shape`.
fn model_bytes(args: &BenchArgs) -> Result<(String, Vec<u8>)> {
    if let Some(path) = &args.model {
        let bytes = crate::model_files::canister_model_bytes(path)?;
        return Ok((path.display().to_string(), bytes));
    }
    let Some(name) = args.shape.as_deref() else {
        bail!("give --model, --shape or --table");
    };
    let Some(shape) = synth::shape(name) else {
        let names: Vec<&str> = synth::SHAPES.iter().map(|s| s.name).collect();
        bail!("unknown shape {name:?} (known: {})", names.join(", "));
    };
    let Some(quant) = QuantMix::parse(&args.quant) else {
        bail!("unknown quant type {:?} (known: {})", args.quant, QuantMix::NAMES);
    };
    let label = format!("{name} {} (synthetic)", args.quant);
    let layers = args.layers.map_or("all".to_string(), |l| l.to_string());
    let cached = synth_cache_dir().join(format!(
        "v{SYNTH_CACHE_VERSION}-{name}-{}-{layers}.gguf",
        args.quant.to_lowercase()
    ));
    if !args.no_synth_cache {
        if let Ok(bytes) = std::fs::read(&cached) {
            eprintln!("bench: synthetic weights from {}", cached.display());
            return Ok((label, bytes));
        }
    }
    let mut opts = SynthOptions::new(quant);
    opts.layers = args.layers;
    opts.search = icllm_engine::quant::Search::Fast;
    opts.threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut bytes = Vec::new();
    synth::write_gguf(shape, &opts, &mut bytes).map_err(|e| anyhow!("synthesizing {name}: {e}"))?;
    if !args.no_synth_cache {
        // Best effort: a failed write only costs a synthesis next time.
        let tmp = cached.with_extension(format!("{}.tmp", std::process::id()));
        let stored = std::fs::create_dir_all(synth_cache_dir())
            .and_then(|_| std::fs::write(&tmp, &bytes))
            .and_then(|_| std::fs::rename(&tmp, &cached));
        if stored.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    }
    Ok((label, bytes))
}

/// Wall-clock time of each phase, printed to stderr as it ends.
struct Timings {
    start: Instant,
    last: Instant,
    phases: Vec<(&'static str, f64)>,
}

impl Timings {
    fn new() -> Timings {
        let now = Instant::now();
        Timings {
            start: now,
            last: now,
            phases: Vec::new(),
        }
    }

    fn lap(&mut self, phase: &'static str) {
        let now = Instant::now();
        let secs = (now - self.last).as_secs_f64();
        eprintln!("bench: {phase}: {secs:.1} s");
        self.phases.push((phase, secs));
        self.last = now;
    }

    fn json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        for (k, v) in &self.phases {
            m.insert(k.to_string(), serde_json::json!((v * 10.0).round() / 10.0));
        }
        m.insert(
            "total".into(),
            serde_json::json!(((self.start.elapsed().as_secs_f64()) * 10.0).round() / 10.0),
        );
        serde_json::Value::Object(m)
    }
}

pub fn run(args: BenchArgs) -> Result<()> {
    let wasm = build_or_read_wasm(args.wasm.as_deref())?;
    if args.table {
        return table(&args, wasm);
    }
    if args.query {
        let report = bench_query(&args, wasm)?;
        print_report(&report, args.json);
        return Ok(());
    }
    if let Some(k) = args.shards {
        let (label, bytes) = model_bytes(&args)?;
        let report = crate::bench_sharded::bench_sharded(&args, wasm, label, bytes, k)?;
        print_report(&report, args.json);
        return Ok(());
    }
    let (report, profiles) = bench_one(&args, wasm)?;
    print_report(&report, args.json);
    if let Some(p) = profiles {
        p.print(args.profile.unwrap_or(25), args.json);
    }
    Ok(())
}

fn print_report(report: &serde_json::Value, json: bool) {
    if json {
        println!("{report}");
    } else {
        for (k, v) in report.as_object().expect("an object") {
            println!("{k}: {v}");
        }
    }
}

/// Per-function profiles of the two phases (`--profile`), per token.
struct PhaseProfiles {
    decode: local_ic::Profile,
    decode_tokens: u64,
    prefill: local_ic::Profile,
    prefill_tokens: u64,
    /// The job's own accounting, per token, for comparison.
    decode_per_token: f64,
    prefill_per_token: f64,
}

/// Function names as printed: generic arguments of long names elided.
fn short_name(name: &str, width: usize) -> String {
    if name.chars().count() <= width {
        return name.to_string();
    }
    let mut s: String = name.chars().take(width - 1).collect();
    s.push('…');
    s
}

impl PhaseProfiles {
    fn print(&self, n: usize, json: bool) {
        let phases = [
            ("decode", &self.decode, self.decode_tokens, self.decode_per_token),
            ("prefill", &self.prefill, self.prefill_tokens, self.prefill_per_token),
        ];
        for (phase, p, tokens, accounted) in phases {
            let tokens = tokens.max(1) as f64;
            let total = p.executed as f64;
            if json {
                let top: Vec<_> = p
                    .top()
                    .into_iter()
                    .take(n)
                    .map(|f| {
                        serde_json::json!({
                            "function": f.name,
                            "instructions_per_token": (f.instructions as f64 / tokens).round(),
                            "share": f.instructions as f64 / total.max(1.0),
                        })
                    })
                    .collect();
                let v = serde_json::json!({
                    "profile": phase,
                    "tokens": tokens,
                    "instructions_per_token": (total / tokens).round(),
                    "system_api_per_token": (p.system_api() as f64 / tokens).round(),
                    "job_accounting_per_token": accounted.round(),
                    "top": top,
                });
                println!("{v}");
                continue;
            }
            println!();
            println!(
                "{phase} profile: {} instructions per token over {tokens} tokens (the job's own accounting: {}{})",
                millions(total / tokens),
                millions(accounted),
                if phase == "decode" {
                    " per generated token, the first of which the prompt's head samples"
                } else {
                    ""
                }
            );
            println!("{:>14} {:>7} {:>7}  function", "instr/token", "share", "cumul.");
            let mut cumulative = 0.0;
            let mut rows: Vec<(String, u64)> = p
                .top()
                .into_iter()
                .take(n)
                .map(|f| (short_name(&f.name, 140), f.instructions))
                .collect();
            if p.system_api() > 0 {
                rows.push(("<system API (ic0 calls: stable memory, ...)>".into(), p.system_api()));
                rows.sort_by_key(|r| std::cmp::Reverse(r.1));
                rows.truncate(n.max(1));
            }
            for (name, instructions) in rows {
                let share = instructions as f64 / total.max(1.0);
                cumulative += share;
                println!(
                    "{:>14.0} {:>6.2}% {:>6.1}%  {name}",
                    instructions as f64 / tokens,
                    100.0 * share,
                    100.0 * cumulative
                );
            }
        }
    }
}

/// Measures one model; returns the report object (and the profiles with
/// `--profile`).
fn bench_one(args: &BenchArgs, wasm: Vec<u8>) -> Result<(serde_json::Value, Option<PhaseProfiles>)> {
    let mut t = Timings::new();
    let (name, bytes) = model_bytes(args)?;
    t.lap("model bytes (synthesis)");
    let (model, gguf) = Model::from_gguf_bytes(&bytes).map_err(|e| anyhow!("cannot load {name}: {e}"))?;
    let tokenizer = Tokenizer::from_gguf(&gguf).ok();
    drop(gguf);
    t.lap("native model load (for MAC counts)");
    let model = &model;
    let cfg = &model.config;
    let (mut n_prompt, n_gen) = (args.prompt_tokens.max(1), args.gen_tokens.max(1));
    let trained = cfg.usable_context() as u32;
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

    // KV slots sized for the jobs run here, not for the trained context
    // (qwen3's 40 960 positions would exceed the canister's KV quota).
    // The short job must cost a few times the smallest limit used here
    // (10 M) to take several messages under it: tiny models generate more
    // tokens (a token costs at least one instruction per multiply-add).
    let token_macs = forward::batch_macs(model, 0, 1);
    let overhead_prompt = args.overhead_prompt_tokens.max(1);
    let overhead_gen = (args.overhead_gen_tokens.max(2) as u64)
        .max(40_000_000u64.div_ceil(token_macs.max(1)))
        .min(trained.saturating_sub(overhead_prompt + 1).max(2) as u64) as u32;
    let max_context = ctx.max(overhead_prompt + overhead_gen + 1);
    // The model loads in IC-sized messages (a tensor's conversion is one
    // uninterruptible piece); `--instruction-limit` applies to the jobs.
    let load_limit = args.instruction_limit.max(IC_UPDATE_INSTRUCTION_LIMIT);
    let init = InitArgs {
        message_instruction_limit: Some(load_limit),
        max_context: Some(max_context),
        // Long benchmark jobs (tools/dmt-long-jobs.sh) ask for more tokens
        // than a caller may by default.
        limits: Some(Limits {
            max_new_tokens: Limits::default().max_new_tokens.max(n_gen),
            max_active_jobs_per_caller: Limits::default().max_active_jobs_per_caller.max(args.jobs),
            max_active_jobs: Limits::default().max_active_jobs.max(args.jobs),
            ..Limits::default()
        }),
        heap_budget: args.heap_budget_mib.map(|m| m << 20),
        ..InitArgs::default()
    };
    let mut c = LocalCanister::install_with(wasm, init, load_limit, args.profile.is_some(), args.memory_charges)?;
    t.lap("install");
    c.upload_model(&bytes, sha256(&bytes))?;
    let stable_model_bytes = bytes.len();
    drop(bytes);
    t.lap("upload, verify and load in the canister");
    if load_limit != args.instruction_limit {
        set_limit(&mut c, args.instruction_limit)?;
    }
    let req = JobRequest {
        max_tokens: n_gen,
        temperature: Some(0.0),
        seed: Some(1),
        ctx_size: Some(ctx),
        prompt_tokens: Some(prompt.clone()),
        kv_cache: Some(crate::api_kv_type(args.kv_cache)),
        ..JobRequest::default()
    };
    let profile_start = c.rt.profile(c.id);
    let main = run_job(&mut c, req.clone(), args.trace)?;
    t.lap("main run");
    let together = match args.jobs {
        1 => None,
        n => {
            let v = run_together(&mut c, &req, n, &main.view.tokens)?;
            t.lap("concurrent jobs");
            Some(v)
        }
    };
    let profiles = match profile_start {
        Some(start) if args.profile.is_some() => {
            let mid = c.rt.profile(c.id).expect("a profiling runtime");
            let whole = mid.since(&start);
            let prefill_only = JobRequest {
                max_tokens: 1,
                ..req.clone()
            };
            let p = run_job(&mut c, prefill_only, args.trace)?;
            let prefill = c.rt.profile(c.id).expect("a profiling runtime").since(&mid);
            t.lap("prefill-only run (profile)");
            let v = &main.view;
            let decode_tokens = v.generated_tokens.saturating_sub(p.view.generated_tokens) as u64;
            if decode_tokens == 0 {
                bail!("--profile needs --gen-tokens of 2 or more");
            }
            let n_gen = v.generated_tokens.max(1) as f64;
            Some(PhaseProfiles {
                decode: whole.since(&prefill),
                decode_tokens,
                prefill,
                prefill_tokens: p.view.prompt_tokens as u64,
                decode_per_token: v.instructions.saturating_sub(v.prompt_instructions) as f64 / n_gen,
                prefill_per_token: v.prompt_instructions as f64 / v.prompt_tokens.max(1) as f64,
            })
        }
        _ => None,
    };
    let (health,): (Health,) = c.query(controller(), "health", ())?;
    let v = &main.view;
    let gen = v.generated_tokens.max(1) as f64;
    // Decode tokens net of the page charges of messages that began with
    // decode: a 40 B message pays for its pages once, in the fixed cost
    // below, then decodes at this rate.
    let decode_instr = v.instructions.saturating_sub(v.prompt_instructions) as f64;
    let per_token = (decode_instr - main.decode_page_instructions as f64) / gen;
    let per_token_with_pages = decode_instr / gen;
    // The same for prompt tokens: the messages that began with the prompt
    // paid the rest of the page charges.
    let prefill_page_instructions = main.page_instructions.saturating_sub(main.decode_page_instructions);
    let per_prompt_token =
        v.prompt_instructions.saturating_sub(prefill_page_instructions) as f64 / v.prompt_tokens.max(1) as f64;

    // Multiply-adds from the engine's cost model (each layer's own mixer:
    // sliding windows and short convolutions counted as they run).
    let decode_pos = n_prompt + n_gen / 2;
    let macs_per_token = forward::batch_macs(model, decode_pos, 1);
    let prefill_macs = forward::batch_macs(model, 0, n_prompt as usize);
    let prefill_macs_per_token = prefill_macs as f64 / n_prompt as f64;
    let ipm = per_token / macs_per_token as f64;

    // Fixed cost per message: a short job in one message, then in many.
    let overhead = if args.no_overhead {
        None
    } else {
        let (p, g) = (overhead_prompt, overhead_gen);
        let short = JobRequest {
            max_tokens: g,
            ctx_size: Some(p + g + 1),
            prompt_tokens: Some(prompt.iter().copied().cycle().take(p as usize).collect()),
            ..req.clone()
        };
        let one = run_job(&mut c, short.clone(), args.trace)?;
        // Room for the job's largest unit three times over (the canister
        // estimates a unit at 1.25 x the highest instructions per MAC it has
        // seen), with its reserve counted twice (see budget.rs), and at
        // least 10 M (the canister accepts no limit under 5 M).
        let largest_unit = forward::attention_block_macs(model, p + g, p as usize)
            .max(forward::ffn_block_macs(model, p as usize))
            .max(forward::head_macs(model)) as f64;
        let ratio = ipm.max(per_prompt_token / prefill_macs_per_token).max(1.0);
        let small = (3.0 * largest_unit * ratio).max(10_000_000.0) as u64;
        let small = small + 2 * MIN_RESERVE.max(small / 100);
        // The canister estimates every unit with the highest instructions
        // per MAC any unit showed, so the head may need more than its own
        // ratio suggests: double the limit until the job moves.
        let mut small = small;
        let many = loop {
            set_limit(&mut c, small)?;
            match run_job(&mut c, short.clone(), args.trace) {
                Err(e) if e.downcast_ref::<Stuck>().is_some() && small < args.instruction_limit / 4 => {
                    eprintln!("bench: {e} under {small} instructions per message; doubling the limit");
                    small *= 2;
                }
                other => break other?,
            }
        };
        set_limit(&mut c, args.instruction_limit)?;
        if many.view.tokens != one.view.tokens {
            bail!("the job's tokens changed with the message size");
        }
        let extra = many.view.messages.saturating_sub(one.view.messages);
        if extra == 0 {
            bail!(
                "the small-limit run ({small} instructions per message) took no more messages than the large one ({} job messages, {} instructions)",
                one.view.messages,
                one.view.instructions
            );
        }
        let per = |a: u64, b: u64| a.saturating_sub(b) as f64 / extra as f64;
        Some(serde_json::json!({
            "limit": small,
            "job_tokens": [p, g],
            "messages": [one.view.messages, many.view.messages],
            // Inside the job's message (what the 40 B limit sees).
            "message": per(many.view.instructions, one.view.instructions).round(),
            // Every message of a scheduler tick (global timer, self-call, callback).
            "tick": per(many.all_instructions, one.all_instructions).round(),
            "heap_dirty_page_instructions_per_message":
                (many.heap_dirty_page_instructions as f64 / many.view.messages.max(1) as f64).round(),
            "max_dirtied_heap_pages": many.max_dirtied_heap_pages,
            "stable_bytes_written_per_message": many.stable_bytes_written / many.view.messages.max(1),
            "page_instructions_per_message":
                (many.page_instructions as f64 / many.step_messages.max(1) as f64).round(),
            "traps": one.traps + many.traps,
            "retries": one.retries + many.retries,
        }))
    };
    if overhead.is_some() {
        t.lap("fixed-cost runs");
    }
    let limit = IC_UPDATE_INSTRUCTION_LIMIT as f64;
    // The fixed cost of a message: the difference-measured cost, or, where
    // more, the page charges of one of the main run's messages. Each of
    // those touched every weight once (as a 40 B decode message does),
    // while the short job's small messages touch a few units' weights each,
    // which spreads the weights' first-touch charge over many messages.
    let main_pages = main.page_instructions as f64 / main.step_messages.max(1) as f64;
    let ovh = overhead
        .as_ref()
        .map_or(0.0, |o| o["message"].as_f64().unwrap_or(0.0))
        .max(main_pages);
    let tokens_per_message = (limit - ovh) / per_token.max(1.0);
    let prefill_tokens_per_message = (limit - ovh) / per_prompt_token.max(1.0);

    // One job's decode instructions per token as the job saw them (page
    // charges and every message's fixed costs included), the measure the
    // concurrent run is compared by.
    let observed = |instructions_per_token: f64| (limit / instructions_per_token.max(1.0)).floor();
    let concurrent = together.map(|(instructions, tokens, messages)| {
        let aggregate = instructions as f64 / tokens.max(1) as f64;
        let n = args.jobs as f64;
        serde_json::json!({
            "jobs": args.jobs,
            "aggregate_instructions_per_token": aggregate.round(),
            "aggregate_tokens_per_message": observed(aggregate),
            "one_job_tokens_per_message": observed(per_token_with_pages),
            "speedup": per_token_with_pages / aggregate,
            // Each job's own pace: it gets one token per pass of the group.
            "tokens_per_message_per_job": (observed(aggregate) / n * 10.0).floor() / 10.0,
            "step_messages": messages,
        })
    });

    let mut report = serde_json::json!({
        "model": name,
        "architecture": format!("{:?}", cfg.arch),
        "dim": cfg.dim,
        "n_layers": cfg.n_layers,
        "vocab_size": cfg.vocab_size,
        "weights_type": format!("{:?}", model.layers.iter().find_map(|l| l.attention()).map(|a| a.wq.ty)),
        "kv_cache": args.kv_cache.name(),
        // The job's KV cache in the heap at its context (sliding layers keep
        // their window), and what it would take if every layer kept every position.
        "kv_context": ctx,
        "kv_heap_bytes": KvShape::of_job(cfg, DEFAULT_MAX_BATCH).heap_bytes(args.kv_cache, ctx),
        "kv_heap_bytes_keeping_every_position": KvShape::of(cfg).heap_bytes(args.kv_cache, ctx),
        "prompt_tokens": v.prompt_tokens,
        "generated_tokens": v.generated_tokens,
        "decode_context_position": decode_pos,
        "instructions_per_token": per_token.round(),
        "instructions_per_token_with_page_charges": per_token_with_pages.round(),
        "prefill_instructions_per_token": per_prompt_token.round(),
        "message_overhead_instructions": overhead.as_ref().map(|o| o["message"].clone()),
        "fixed_cost_per_message": ovh.round(),
        "tick_overhead_instructions": overhead.as_ref().map(|o| o["tick"].clone()),
        "heap_dirty_page_instructions_per_message":
            overhead.as_ref().map(|o| o["heap_dirty_page_instructions_per_message"].clone()),
        "overhead_run": overhead,
        "tokens_per_message": tokens_per_message.floor(),
        "prefill_tokens_per_message": prefill_tokens_per_message.floor(),
        "macs_per_token": macs_per_token,
        "instructions_per_mac": ipm,
        "prefill_macs_per_token": prefill_macs_per_token.round(),
        "prefill_instructions_per_mac": per_prompt_token / prefill_macs_per_token,
        "messages": v.messages,
        "max_message_instructions": v.max_message_instructions,
        "memory_charges": args.memory_charges.name(),
        // The main run's messages: a decode message of the limit pays these
        // for the pages it touches first (weights, KV rows, scratch).
        "page_instructions_per_message": (main.page_instructions as f64 / main.step_messages.max(1) as f64).round(),
        "slices_per_message": main.slices as f64 / main.step_messages.max(1) as f64,
        "traps": main.traps + overhead.as_ref().map_or(0, |o| o["traps"].as_u64().unwrap_or(0)),
        "retries": main.retries + overhead.as_ref().map_or(0, |o| o["retries"].as_u64().unwrap_or(0)),
        "heap_dirty_page_instructions": main.heap_dirty_page_instructions,
        "max_dirtied_heap_pages": main.max_dirtied_heap_pages,
        "stable_bytes_written": main.stable_bytes_written,
        "heap_bytes": health.heap_bytes,
        "stable_bytes": health.stable_bytes,
        "model_file_bytes": stable_model_bytes,
        "wall_seconds": t.json(),
    });
    // The greedy ids, so that runs in different layouts can be compared.
    report["generated_ids"] = serde_json::json!(main.view.tokens);
    if let Some(concurrent) = concurrent {
        report["aggregate_tokens_per_message"] = concurrent["aggregate_tokens_per_message"].clone();
        report["concurrent"] = concurrent;
    }
    Ok((report, profiles))
}

/// Tokens one 5 B `generate_query` generates after `--prompt-tokens`.
fn bench_query(args: &BenchArgs, wasm: Vec<u8>) -> Result<serde_json::Value> {
    /// More than any model here generates in one query.
    const MOST_TOKENS_ASKED: u32 = 1024;
    let (name, bytes) = model_bytes(args)?;
    let (model, gguf) = Model::from_gguf_bytes(&bytes).map_err(|e| anyhow!("cannot load {name}: {e}"))?;
    let tokenizer = Tokenizer::from_gguf(&gguf).ok();
    drop(gguf);
    let trained = model.config.usable_context() as u32;
    let n_prompt = args.prompt_tokens.max(1).min(trained / 2);
    let asked = MOST_TOKENS_ASKED.min(trained - n_prompt - 1);
    let text_ids = tokenizer
        .as_ref()
        .map(|t| crate::model_files::encode_prompt(t, "Once upon a time, there was a little girl named Lily."));
    let prompt = synthetic_prompt(&model, text_ids, n_prompt as usize);
    drop(model);
    let init = InitArgs {
        message_instruction_limit: Some(IC_UPDATE_INSTRUCTION_LIMIT),
        max_context: Some(n_prompt + asked + 1),
        limits: Some(Limits {
            max_new_tokens: Limits::default().max_new_tokens.max(asked),
            ..Limits::default()
        }),
        ..InitArgs::default()
    };
    let mut c = LocalCanister::install_with(wasm, init, IC_UPDATE_INSTRUCTION_LIMIT, false, args.memory_charges)?;
    c.upload_model(&bytes, sha256(&bytes))?;
    drop(bytes);
    let mut generate = |max_tokens: u32| -> Result<ApiResult<QueryGeneration>> {
        let req = JobRequest {
            max_tokens,
            temperature: Some(0.0),
            seed: Some(1),
            ctx_size: Some(n_prompt + max_tokens + 1),
            prompt_tokens: Some(prompt.clone()),
            kv_cache: Some(crate::api_kv_type(args.kv_cache)),
            ..JobRequest::default()
        };
        let (r,): (ApiResult<QueryGeneration>,) = c.query(controller(), "generate_query", (req,))?;
        Ok(r)
    };
    let (tokens, fitted, context_bound) = match generate(asked)? {
        Ok(g) if g.finish_reason == "max_tokens" => (asked, g, true),
        Ok(g) => bail!(
            "the generation ended early ({}, {} tokens)",
            g.finish_reason,
            g.tokens.len()
        ),
        Err(ApiError::QuotaExceeded(m)) => {
            let done: u32 = m
                .split_once("after ")
                .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
                .ok_or_else(|| anyhow!("unexpected refusal: {m}"))?;
            if done == 0 {
                bail!("not one token fits a query after a {n_prompt}-token prompt: {m}");
            }
            match generate(done)? {
                Ok(g) if g.tokens.len() == done as usize => (done, g, false),
                other => bail!("asking for the {done} tokens that fitted: {other:?}"),
            }
        }
        Err(e) => bail!("generate_query: {e:?}"),
    };
    Ok(serde_json::json!({
        "model": name,
        "kv_cache": args.kv_cache.name(),
        "memory_charges": args.memory_charges.name(),
        "prompt_tokens": n_prompt,
        "tokens_per_query": tokens,
        // True when the context, not the query limit, capped the count.
        "limited_by_context": context_bound,
        "query_instructions": fitted.instructions,
    }))
}

fn millions(x: f64) -> String {
    if x >= 1e9 {
        format!("{:.2} B", x / 1e9)
    } else if x >= 1e6 {
        format!("{:.1} M", x / 1e6)
    } else {
        format!("{:.0} k", x / 1e3)
    }
}

fn mib(x: f64) -> String {
    format!("{:.0} MiB", x / (1024.0 * 1024.0))
}

/// Every target shape, one after the other, as the README's markdown table.
fn table(args: &BenchArgs, wasm: Vec<u8>) -> Result<()> {
    let mut rows = Vec::new();
    for &(shape, quant, target, reference) in TARGETS {
        eprintln!("bench: {shape} {quant}");
        let a = BenchArgs {
            shape: Some(shape.into()),
            quant: quant.into(),
            table: false,
            ..args.clone()
        };
        let r = match bench_one(&a, wasm.clone()) {
            Ok((r, _)) => r,
            Err(e) => {
                eprintln!("bench: {shape} {quant} failed: {e:#}");
                serde_json::json!({ "model": format!("{shape} {quant}"), "error": format!("{e:#}") })
            }
        };
        if args.json {
            println!("{r}");
        }
        rows.push((shape, quant, target, reference, r));
    }
    if args.json {
        return Ok(());
    }
    println!(
        "| model | decode instr/token (position) | prefill instr/token | fixed cost per message (per tick) | page charges per message (in-band; after) | decode tokens per 40 B message (target) | prefill tokens per 40 B message | MACs/token | instr/MAC (target) | heap | stable |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (shape, quant, target, reference, r) in rows {
        if let Some(e) = r["error"].as_str() {
            println!("| {shape} {} | failed: {e} |||||||||| ", quant.to_uppercase());
            continue;
        }
        let f = |k: &str| r[k].as_f64().unwrap_or(0.0);
        let ipm_target = match quant {
            "f32" => " (≤ 1.6)",
            "q8_0" => " (≤ 0.7)",
            _ => "",
        };
        // Per tick: the timer's and callback's messages on top of the job's.
        let overhead = match (
            r["fixed_cost_per_message"].as_f64(),
            r["message_overhead_instructions"].as_f64(),
            r["tick_overhead_instructions"].as_f64(),
        ) {
            (Some(fixed), Some(m), Some(t)) => format!("{} ({})", millions(fixed), millions(t + fixed - m)),
            _ => "—".into(),
        };
        let after = r["heap_dirty_page_instructions_per_message"]
            .as_f64()
            .map_or("—".into(), millions);
        let dirty = format!("{}; {after}", millions(f("page_instructions_per_message")));
        let prefill_half = if f("prefill_instructions_per_token") <= f("instructions_per_token") / 2.0 {
            "✓"
        } else {
            "✗ (target ≤ ½ decode)"
        };
        println!(
            "| {shape} {} | {} ({}) | {} {prefill_half} | {overhead} | {dirty} | {} (≥ {target}; {reference}) | {} | {} | {:.2}{ipm_target} | {} | {} |",
            quant.to_uppercase(),
            millions(f("instructions_per_token")),
            r["decode_context_position"],
            millions(f("prefill_instructions_per_token")),
            f("tokens_per_message"),
            f("prefill_tokens_per_message"),
            millions(f("macs_per_token")),
            f("instructions_per_mac"),
            mib(f("heap_bytes")),
            mib(f("stable_bytes")),
        );
    }
    Ok(())
}

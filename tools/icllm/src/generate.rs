//! `icllm generate`: run the engine natively on a GGUF model or a Hugging
//! Face checkpoint directory.
//!
//! Prints only the generated text to stdout (streamed, flushed per token,
//! then a final newline) and statistics to stderr. With `--chat` the prompt
//! becomes one user turn of the model's chat template, and generation stops
//! at the template's end-of-turn tokens.

use anyhow::bail;
use icllm_engine::job::{step, FinishReason, Job, StepOutcome, UnitBudget};
use icllm_engine::sampler::SamplingParams;
use icllm_engine::tokenizer::StreamDecoder;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    /// GGUF model file or Hugging Face checkpoint directory.
    #[arg(long, short = 'm')]
    pub model: PathBuf,
    /// Text to continue (BOS is added in front when the tokenizer wants it;
    /// special-token texts are recognized). Without it, generation starts from BOS alone.
    #[arg(long, short = 'p')]
    pub prompt: Option<String>,
    /// Send --prompt as a user message through the model's chat template and
    /// stop at its end-of-turn tokens.
    #[arg(long, requires = "prompt")]
    pub chat: bool,
    /// With --chat: a built-in chat template (chatml, gemma, llama3, phi3,
    /// zephyr; llama.cpp's of the same names) for a model file that carries
    /// none. The file's own template wins.
    #[arg(long, requires = "chat")]
    pub chat_template: Option<String>,
    /// Maximum number of tokens to generate.
    #[arg(short = 'n', long = "n-predict", default_value_t = 256)]
    pub n_predict: u32,
    /// Sampling temperature; 0 = greedy (argmax).
    #[arg(long, default_value_t = 0.8, allow_negative_numbers = true)]
    pub temperature: f32,
    /// Keep only the K most likely tokens (0 = off).
    #[arg(long, default_value_t = 40)]
    pub top_k: u32,
    /// Nucleus sampling threshold in (0, 1] (1 = off).
    #[arg(long, default_value_t = 0.95, allow_negative_numbers = true)]
    pub top_p: f32,
    /// Drop tokens less likely than P × the most likely one (0 = off).
    #[arg(long, default_value_t = 0.05, allow_negative_numbers = true)]
    pub min_p: f32,
    /// Penalty for tokens among the last 64 (1 = off).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub repeat_penalty: f32,
    /// RNG seed (default: from the clock, printed with the statistics).
    #[arg(long, short = 's')]
    pub seed: Option<u64>,
    /// Context size in tokens (default: the model's trained context; may exceed it).
    #[arg(long, short = 'c')]
    pub ctx_size: Option<u32>,
    /// KV cache storage: f32 (exact) or q8 (int8 blocks with f32 scales).
    #[arg(long, default_value = "f32")]
    pub kv_cache: icllm_engine::kv::KvType,
    /// Also print the generated token ids (`generated_ids: [...]` on stderr).
    #[arg(long)]
    pub print_ids: bool,
}

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let t_load = Instant::now();
    let loaded = crate::model_files::load(&args.model)?;
    let model = &loaded.model;
    let tok = loaded.tokenizer()?;
    let load_time = t_load.elapsed();

    // BOS + prompt; BOS alone without a prompt; the templated user turn with --chat.
    let mut stop_tokens = None;
    let prompt = match &args.prompt {
        Some(text) if args.chat => {
            let builtin = match &args.chat_template {
                Some(name) => Some(icllm_engine::chat::ChatTemplate::builtin_for(name, tok)?),
                None => None,
            };
            let Some(template) = loaded.chat_template.as_ref().or(builtin.as_ref()) else {
                bail!(
                    "{} has no chat template: name a built-in one with --chat-template ({}) or drop --chat",
                    args.model.display(),
                    icllm_engine::chat::builtin_template_names()
                );
            };
            let (ids, stops) = crate::model_files::encode_chat(tok, template, text)?;
            stop_tokens = Some(stops);
            ids
        }
        Some(text) => crate::model_files::encode_prompt(tok, text),
        None => match tok.bos_id() {
            Some(bos) => vec![bos],
            None => bail!("the model has no BOS token: give a --prompt"),
        },
    };
    let seed = args.seed.unwrap_or_else(clock_seed);
    let params = SamplingParams {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        min_p: args.min_p,
        repeat_penalty: args.repeat_penalty,
        seed,
        ..SamplingParams::default()
    };
    let ctx_size = match args.ctx_size {
        Some(c) => c,
        None => u32::try_from(model.config.usable_context()).unwrap_or(u32::MAX),
    };
    let mut job = Job::with_kv_type(model, prompt.clone(), params, args.n_predict, ctx_size, args.kv_cache)?;
    if let Some(stops) = stop_tokens {
        job.set_stop_tokens(stops);
    }

    // One unit per step, so each token is printed as soon as it is sampled.
    // Results equal an uninterrupted run (chunked == monolithic).
    let mut decoder = StreamDecoder::new(tok, prompt.last().copied());
    let mut stdout = std::io::stdout().lock();
    let t_start = Instant::now();
    let mut first_token_at: Option<Duration> = None;
    let reason = loop {
        let report = step(model, &mut job, &mut UnitBudget::new(1));
        for &id in &report.tokens {
            first_token_at.get_or_insert_with(|| t_start.elapsed());
            stdout.write_all(decoder.push(tok, id).as_bytes())?;
            stdout.flush()?;
        }
        match report.outcome {
            StepOutcome::Yielded => {}
            StepOutcome::Finished(reason) => break reason,
            StepOutcome::Failed(msg) => bail!("generation failed: {msg}"),
        }
    };
    writeln!(stdout, "{}", decoder.finish())?;
    stdout.flush()?;
    let total = t_start.elapsed();

    // Statistics.
    let n_prompt = prompt.len();
    let n_gen = job.state.generated().len();
    let prefill = first_token_at.unwrap_or(total);
    let decode = total.saturating_sub(prefill);
    let per_sec = |n: usize, d: Duration| {
        if d.as_secs_f64() > 0.0 {
            n as f64 / d.as_secs_f64()
        } else {
            0.0
        }
    };
    let reason = match reason {
        FinishReason::Eos if args.chat => "end of turn",
        FinishReason::Eos => "end of text",
        FinishReason::MaxTokens => "token limit",
        FinishReason::ContextFull => "context full",
    };
    eprintln!();
    eprintln!(
        "model:      {} ({:?}, load {} ms)",
        args.model.display(),
        model.config.arch,
        load_time.as_millis()
    );
    eprintln!(
        "prompt:     {n_prompt} tokens, {:.1} ms (incl. first token)",
        ms(prefill)
    );
    eprintln!(
        "generated:  {n_gen} tokens, {:.1} ms, {:.1} tokens/s after the first",
        ms(total),
        per_sec(n_gen.saturating_sub(1), decode)
    );
    eprintln!(
        "overall:    {:.1} tokens/s; stopped: {reason}; seed {seed}; ctx {ctx_size}",
        per_sec(n_gen, total)
    );
    if args.print_ids {
        eprintln!("generated_ids: {:?}", job.state.generated());
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

//! `icllm synth`: writes a GGUF with random weights and the exact shapes of a
//! published model (see `icllm_engine::synth` for shapes and quant mixes).
//!
//! Tokenizer metadata comes from a real vocabulary where one is at hand in
//! the tokenizer data directory (`--tokenizer-data`, `$ICLLM_TOKENIZER_DATA`,
//! or the repository's `testdata/`, see its README): the llama SPM vocab GGUF for 32000-token shapes,
//! Phi-3's vocab GGUF for phi-3-mini-4k, the
//! Qwen2.5 `tokenizer.json` for Qwen shapes (Qwen3 adds 4 tokens Qwen2.5
//! lacks; the rest is padding either way), the Llama 3.2 `tokenizer.json` for
//! llama3.2, and GPT-2's BPE cut to 49152 tokens for SmolLM2 (whose own
//! tokenizer is not at hand). Without the files, a synthetic byte-level
//! vocabulary of the right size is written (and said so on stderr).

use anyhow::{bail, Context, Result};
use clap::Args;
use icllm_engine::format::gguf::{Gguf, Value};
use icllm_engine::quant::Search;
use icllm_engine::synth::{self, QuantMix, Shape, SynthOptions, Vocab};
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Args)]
pub struct SynthArgs {
    /// Published shape: stories15M, stories42M, stories110M, smollm2-135m, smollm2-360m,
    /// qwen2.5-0.5b, qwen3-0.6b, llama3.2-1b, tinyllama-1.1b, qwen3-1.7b, phi-3-mini-4k.
    #[arg(long)]
    shape: String,
    /// Tensor types: f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, iq4_nl,
    /// iq4_xs, q2_k, q3_k, q4_k, q5_k, q6_k, and llama.cpp's mixes q3_k_m,
    /// q4_k_m, q5_k_m.
    #[arg(long, default_value = "q8_0")]
    quant: String,
    /// Output GGUF file.
    #[arg(short = 'o', long)]
    output: PathBuf,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write only the first N layers (quick tests).
    #[arg(long)]
    layers: Option<usize>,
    /// Directory with vocab/ and tokenizers/ (default: $ICLLM_TOKENIZER_DATA,
    /// else the repository's testdata/).
    #[arg(long, value_name = "DIR")]
    tokenizer_data: Option<PathBuf>,
    /// Worker threads (default: available cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Use ggml's full K-quant scale search (about 10x slower; the default
    /// fast search is accurate enough for random benchmark weights).
    #[arg(long)]
    exact_search: bool,
}

pub fn run(args: SynthArgs) -> Result<()> {
    let Some(shape) = synth::shape(&args.shape) else {
        let names: Vec<&str> = synth::SHAPES.iter().map(|s| s.name).collect();
        bail!("unknown shape {:?} (known: {})", args.shape, names.join(", "));
    };
    let Some(quant) = QuantMix::parse(&args.quant) else {
        bail!("unknown quant type {:?} (known: {})", args.quant, QuantMix::NAMES);
    };
    let mut opts = SynthOptions::new(quant);
    opts.seed = args.seed;
    opts.layers = args.layers;
    opts.search = if args.exact_search { Search::Ggml } else { Search::Fast };
    opts.threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let data = args.tokenizer_data.clone().or_else(default_tokenizer_data);
    match data.as_deref().map(|dir| tokenizer_metadata(shape, dir)) {
        Some(Ok(md)) => opts.tokenizer = md,
        Some(Err(e)) => eprintln!("synth: no real tokenizer ({e:#}); writing a synthetic byte-level vocabulary"),
        None => eprintln!("synth: tokenizer data not found; writing a synthetic byte-level vocabulary"),
    }
    let started = Instant::now();
    let file = std::fs::File::create(&args.output).with_context(|| format!("creating {}", args.output.display()))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let summary = synth::write_gguf(shape, &opts, &mut out).context("writing the model")?;
    drop(out);
    eprintln!(
        "synth: {} ({}, {} layers, {:.1}M parameters, {}) -> {}: {:.1} MB in {:.1} s",
        shape.name,
        shape.arch.name(),
        summary.n_layers,
        summary.n_params as f64 / 1e6,
        args.quant,
        args.output.display(),
        summary.bytes as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `$ICLLM_TOKENIZER_DATA`, else the `testdata/` of the repository this
/// binary was built from (absent when the binary was copied elsewhere).
fn default_tokenizer_data() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("ICLLM_TOKENIZER_DATA") {
        return Some(PathBuf::from(dir));
    }
    Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata")).filter(|p| p.join("vocab").is_dir())
}

/// The `tokenizer.*` metadata for `shape` from the tokenizer data directory.
pub fn tokenizer_metadata(shape: &Shape, data: &Path) -> Result<Vec<(String, Value)>> {
    let md = match shape.vocab {
        Vocab::LlamaSpm => gguf_tokenizer(&data.join("vocab/ggml-vocab-llama-spm.gguf"))?,
        Vocab::Phi3 => gguf_tokenizer(&data.join("vocab/ggml-vocab-phi-3.gguf"))?,
        Vocab::SmolLm => truncated_gpt2(&data.join("vocab/ggml-vocab-gpt-2.gguf"), shape.vocab_size)?,
        Vocab::Qwen2 => hf_tokenizer(
            &data.join("tokenizers/qwen2.5"),
            shape.vocab_size,
            "qwen2",
            None,
            "<|im_end|>",
        )?,
        Vocab::Synthetic => icllm_engine::synth::synthetic_vocab(shape.vocab_size),
        Vocab::Llama3 => hf_tokenizer(
            &data.join("tokenizers/llama3.2"),
            shape.vocab_size,
            "llama-bpe",
            Some("<|begin_of_text|>"),
            "<|eot_id|>",
        )?,
    };
    let n = md
        .iter()
        .find(|(k, _)| k == "tokenizer.ggml.tokens")
        .and_then(|(_, v)| v.as_array())
        .map_or(0, |a| a.len());
    if n != shape.vocab_size {
        bail!("the vocabulary has {n} tokens, the shape {}", shape.vocab_size);
    }
    Ok(md)
}

/// Every `tokenizer.*` key of a vocab-only GGUF.
fn gguf_tokenizer(path: &Path) -> Result<Vec<(String, Value)>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let gguf = Gguf::parse(&bytes)?;
    Ok(gguf
        .metadata
        .into_iter()
        .filter(|(k, _)| k.starts_with("tokenizer."))
        .collect())
}

/// GPT-2's BPE cut to `n` tokens: the first `n - 1` tokens (byte tokens and
/// the merges that build them, in rank order) plus `<|endoftext|>` as the last.
fn truncated_gpt2(path: &Path, n: usize) -> Result<Vec<(String, Value)>> {
    let md = gguf_tokenizer(path)?;
    let get = |k: &str| md.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
    let tokens = get("tokenizer.ggml.tokens").context("no tokens")?;
    let merges = get("tokenizer.ggml.merges").context("no merges")?;
    let (Some(tokens), Some(merges)) = (tokens.as_array(), merges.as_array()) else {
        bail!("tokens or merges are not arrays");
    };
    if tokens.len() < n {
        bail!("GPT-2 has only {} tokens", tokens.len());
    }
    let mut kept: Vec<Value> = tokens[..n - 1].to_vec();
    kept.push(Value::String("<|endoftext|>".into()));
    let known: std::collections::HashSet<&str> = kept.iter().filter_map(|t| t.as_str()).collect();
    let kept_merges: Vec<Value> = merges
        .iter()
        .filter(|m| {
            m.as_str()
                .map(|m| known.contains(m.replace(' ', "").as_str()))
                .unwrap_or(false)
        })
        .cloned()
        .collect();
    let mut types = vec![Value::I32(1); n];
    types[n - 1] = Value::I32(3);
    let eos = Value::U32(n as u32 - 1);
    Ok(vec![
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String("gpt-2".into())),
        ("tokenizer.ggml.tokens".into(), Value::Array(kept)),
        ("tokenizer.ggml.token_type".into(), Value::Array(types)),
        ("tokenizer.ggml.merges".into(), Value::Array(kept_merges)),
        ("tokenizer.ggml.bos_token_id".into(), eos.clone()),
        ("tokenizer.ggml.eos_token_id".into(), eos),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
    ])
}

/// A byte-level BPE from a Hugging Face `tokenizer.json` (+ the chat
/// template of `tokenizer_config.json`), padded to `n` tokens with
/// `[PAD{id}]` like llama.cpp's converter.
fn hf_tokenizer(dir: &Path, n: usize, pre: &str, bos: Option<&str>, eos: &str) -> Result<Vec<(String, Value)>> {
    let path = dir.join("tokenizer.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let mut tokens: Vec<Option<String>> = vec![None; n];
    let mut types = vec![1i32; n];
    let vocab = json["model"]["vocab"]
        .as_object()
        .context("model.vocab is not an object")?;
    for (tok, id) in vocab {
        let id = id.as_u64().context("vocab id")? as usize;
        if id < n {
            tokens[id] = Some(tok.clone());
        }
    }
    let mut id_of = std::collections::HashMap::new();
    for added in json["added_tokens"].as_array().into_iter().flatten() {
        let (Some(id), Some(content)) = (added["id"].as_u64(), added["content"].as_str()) else {
            continue;
        };
        let id = id as usize;
        if id < n {
            tokens[id] = Some(content.to_string());
            types[id] = if added["special"].as_bool() == Some(true) { 3 } else { 4 };
            id_of.insert(content.to_string(), id as u32);
        }
    }
    let tokens: Vec<Value> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            Value::String(t.unwrap_or_else(|| {
                types[i] = 5;
                format!("[PAD{i}]")
            }))
        })
        .collect();
    let merges: Vec<Value> = json["model"]["merges"]
        .as_array()
        .context("model.merges is not an array")?
        .iter()
        .filter_map(|m| match m {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Array(pair) => Some(format!("{} {}", pair.first()?.as_str()?, pair.get(1)?.as_str()?)),
            _ => None,
        })
        .map(Value::String)
        .collect();
    let eos_id = *id_of.get(eos).with_context(|| format!("no {eos} token"))?;
    let bos_id = match bos {
        Some(b) => *id_of.get(b).with_context(|| format!("no {b} token"))?,
        None => *id_of.get("<|endoftext|>").unwrap_or(&eos_id),
    };
    let mut md = vec![
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String(pre.into())),
        ("tokenizer.ggml.tokens".into(), Value::Array(tokens)),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(types.into_iter().map(Value::I32).collect()),
        ),
        ("tokenizer.ggml.merges".into(), Value::Array(merges)),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(bos_id)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(eos_id)),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(bos.is_some())),
    ];
    let config = dir.join("tokenizer_config.json");
    if let Ok(text) = std::fs::read_to_string(&config) {
        let cfg: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", config.display()))?;
        if let Some(t) = cfg["chat_template"].as_str() {
            md.push(("tokenizer.chat_template".into(), Value::String(t.to_string())));
        }
    }
    Ok(md)
}

//! `icllm inspect`: what a model file or checkpoint directory holds.
//!
//! Architecture and resolved config (the engine's view, or why it cannot
//! load it), tensor types (a summary per type; every tensor with
//! `--tensors`), tokenizer kind and special tokens, and whether a chat
//! template is present. Reads headers only, not tensor data.

use anyhow::Context;
use icllm_engine::chat::ChatTemplate;
use icllm_engine::format::gguf::{Gguf, GgufError};
use icllm_engine::format::hf::{self, HfConfig, ShardHeader};
use icllm_engine::model::{ModelConfig, ModelError};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::model_files::{read_optional, ModelPath, CHAT_TEMPLATE_FILE};

#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    /// GGUF model file or Hugging Face checkpoint directory.
    pub path: PathBuf,
    /// List every tensor (name, shape, type), not only a summary per type.
    #[arg(long)]
    pub tensors: bool,
}

/// One tensor as listed: name, shape as the format writes it, type name, bytes.
struct TensorRow {
    name: String,
    shape: Vec<u64>,
    ty: String,
    bytes: u64,
}

pub fn run(args: InspectArgs) -> anyhow::Result<()> {
    match ModelPath::new(&args.path)? {
        ModelPath::Gguf(file) => inspect_gguf(&file, args.tensors),
        ModelPath::HfDir(dir) => inspect_hf(&dir, args.tensors),
    }
}

fn inspect_gguf(file: &Path, list: bool) -> anyhow::Result<()> {
    let gguf = read_gguf_header(file)?;
    println!("file:          {} (GGUF v{})", file.display(), gguf.version);
    let arch = gguf.get("general.architecture").and_then(|v| v.as_str()).unwrap_or("?");
    println!("architecture:  {arch}");
    if let Some(name) = gguf.get("general.name").and_then(|v| v.as_str()) {
        println!("name:          {name}");
    }
    print_config(
        ModelConfig::from_gguf(&gguf),
        gguf.tensor("rope_freqs.weight").is_some(),
    );
    let rows: Vec<TensorRow> = gguf
        .tensors
        .iter()
        .map(|t| TensorRow {
            name: t.name.clone(),
            shape: t.dims.clone(),
            ty: t.ty.name().to_string(),
            bytes: t.size,
        })
        .collect();
    print_tensors(&rows, "ggml order, innermost first", list);

    // Tokenizer.
    let get_str = |k: &str| gguf.get(k).and_then(|v| v.as_str());
    let tokens = gguf.get("tokenizer.ggml.tokens").and_then(|v| v.as_array());
    match get_str("tokenizer.ggml.model") {
        None => println!("tokenizer:     none"),
        Some(model) => {
            let pre = get_str("tokenizer.ggml.pre")
                .map(|p| format!(", pre-tokenizer {p}"))
                .unwrap_or_default();
            println!(
                "tokenizer:     {model}{pre}, {} tokens",
                tokens.map(|t| t.len()).unwrap_or(0)
            );
            let text = |id: u64| tokens.and_then(|t| t.get(id as usize)).and_then(|v| v.as_str());
            let mut specials = Vec::new();
            for (label, key) in [
                ("bos", "tokenizer.ggml.bos_token_id"),
                ("eos", "tokenizer.ggml.eos_token_id"),
                ("eot", "tokenizer.ggml.eot_token_id"),
                ("unk", "tokenizer.ggml.unknown_token_id"),
                ("pad", "tokenizer.ggml.padding_token_id"),
            ] {
                // Ids outside the vocabulary (-1 for "none") are left out.
                if let Some((id, t)) = gguf
                    .get(key)
                    .and_then(|v| v.as_u64())
                    .and_then(|id| Some((id, text(id)?)))
                {
                    specials.push(format!("{label} {id} {t:?}"));
                }
            }
            println!("special:       {}", specials.join(", "));
        }
    }
    print_chat_template(ChatTemplate::from_gguf(&gguf).map_err(anyhow::Error::from));
    Ok(())
}

/// Parses the GGUF header from the start of the file, reading more while
/// the header runs past what was read.
fn read_gguf_header(file: &Path) -> anyhow::Result<Gguf> {
    let mut f = std::fs::File::open(file).with_context(|| format!("cannot read {}", file.display()))?;
    let file_len = f.metadata()?.len();
    let mut prefix = Vec::new();
    let mut want = 1u64 << 20;
    loop {
        let have = prefix.len() as u64;
        let target = want.min(file_len);
        (&mut f).take(target - have).read_to_end(&mut prefix)?;
        match Gguf::parse_header(&prefix, file_len) {
            Ok(g) => return Ok(g),
            Err(GgufError::Truncated { .. }) if target < file_len => want *= 4,
            Err(e) => return Err(e).with_context(|| format!("{} is not a readable GGUF file", file.display())),
        }
    }
}

fn inspect_hf(dir: &Path, list: bool) -> anyhow::Result<()> {
    let config_json = read_optional(dir, hf::CONFIG_FILE)?.unwrap_or_default();
    let files = hf::shard_files(read_optional(dir, hf::INDEX_FILE)?.as_deref())?;
    println!(
        "file:          {} (Hugging Face checkpoint, {} shard{})",
        dir.display(),
        files.len(),
        if files.len() == 1 { "" } else { "s" }
    );
    let hf_config = HfConfig::from_json(&config_json);
    match &hf_config {
        Ok(c) => {
            let name = c
                .model_type
                .clone()
                .or_else(|| c.architectures.as_ref().and_then(|a| a.first().cloned()))
                .unwrap_or_else(|| "?".into());
            println!("architecture:  {name}");
        }
        Err(e) => println!("architecture:  ? ({e})"),
    }
    let resolved = hf_config
        .as_ref()
        .map_err(|e| ModelError::Hf(e.clone()))
        .and_then(|c| c.resolve());
    let llama3 = hf_config
        .as_ref()
        .ok()
        .and_then(|c| resolved.as_ref().ok().map(|r| c.rope_freq_factors(r)))
        .and_then(|f| f.ok().flatten())
        .is_some();
    print_config(resolved, llama3);

    let mut rows = Vec::new();
    for file in &files {
        match read_shard_header(&dir.join(file), file) {
            Ok(h) => rows.extend(h.tensors.into_iter().map(|t| {
                TensorRow {
                    ty: match t.dtype {
                        Ok(d) => format!("{d:?}"),
                        Err(other) => other,
                    }
                    .to_lowercase(),
                    bytes: t.range.end - t.range.start,
                    name: t.name,
                    shape: t.shape,
                }
            })),
            Err(e) => println!("shard:         {file}: {e:#}"),
        }
    }
    print_tensors(&rows, "PyTorch order, outermost first", list);

    // Tokenizer.
    match read_optional(dir, hf::TOKENIZER_FILE)? {
        None => println!("tokenizer:     none ({} missing)", hf::TOKENIZER_FILE),
        Some(json) => match serde_json::from_str::<serde_json::Value>(&json) {
            Err(e) => println!("tokenizer:     {} is not valid JSON: {e}", hf::TOKENIZER_FILE),
            Ok(t) => {
                let kind = match (t["model"]["type"].as_str(), t["model"]["byte_fallback"].as_bool()) {
                    (Some("BPE"), Some(true)) => "BPE with byte fallback (SentencePiece-style)",
                    (kind, _) => kind.unwrap_or("?"),
                };
                let vocab = t["model"]["vocab"].as_object().map(|v| v.len()).unwrap_or(0);
                let added = t["added_tokens"].as_array().map(|a| a.len()).unwrap_or(0);
                let pre = t["pre_tokenizer"]["type"].as_str().unwrap_or("none");
                println!("tokenizer:     {kind} (tokenizer.json), {vocab} tokens + {added} added, pre-tokenizer {pre}");
            }
        },
    }
    if let Some(tc) = read_optional(dir, hf::TOKENIZER_CONFIG_FILE)? {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&tc) {
            let text = |k: &str| match &v[k] {
                serde_json::Value::String(s) => format!("{s:?}"),
                serde_json::Value::Object(o) => {
                    format!("{:?}", o.get("content").and_then(|c| c.as_str()).unwrap_or("?"))
                }
                _ => "none".into(),
            };
            println!(
                "special:       bos {}, eos {}, pad {}",
                text("bos_token"),
                text("eos_token"),
                text("pad_token")
            );
        }
    }
    let template = match read_optional(dir, hf::TOKENIZER_CONFIG_FILE)? {
        None => Ok(None),
        Some(tc) => {
            let separate = read_optional(dir, CHAT_TEMPLATE_FILE)?;
            ChatTemplate::from_tokenizer_config(&tc, separate.as_deref()).map_err(anyhow::Error::from)
        }
    };
    print_chat_template(template);
    Ok(())
}

fn read_shard_header(path: &Path, file: &str) -> anyhow::Result<ShardHeader> {
    let mut f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let file_len = f.metadata()?.len();
    let mut first8 = [0u8; 8];
    f.read_exact(&mut first8).context("shorter than 8 bytes")?;
    let n = ShardHeader::header_len(&first8)
        .unwrap_or(0)
        .min(hf::MAX_HEADER_BYTES + 8)
        .min(file_len);
    let mut prefix = first8.to_vec();
    prefix.resize(n.max(8) as usize, 0);
    f.read_exact(&mut prefix[8..])?;
    Ok(ShardHeader::parse(file, &prefix, file_len)?)
}

fn print_config(config: Result<ModelConfig, ModelError>, rope_freqs: bool) {
    match config {
        Err(e) => println!("config:        cannot run: {e}"),
        Ok(c) => {
            println!(
                "config:        dim {}, layers {}, heads {} (kv {}), head_dim {}, q_dim {}, kv_dim {}, ffn {}, vocab {}, ctx {}",
                c.dim,
                c.n_layers,
                c.n_heads,
                c.n_kv_heads,
                c.head_dim,
                c.q_dim,
                c.kv_dim,
                c.hidden_dim,
                c.vocab_size,
                c.context_length
            );
            let spec = c.arch.spec();
            println!(
                "rope:          {:?}, base {}, dims {}, freq scale {}{}",
                spec.rope_style,
                c.rope_freq_base,
                c.rope_dims,
                c.rope_freq_scale,
                if rope_freqs { ", llama3 frequency factors" } else { "" }
            );
            println!(
                "layers have:   qkv bias {}, q/k norm {}; rms eps {}",
                spec.qkv_bias, spec.qk_norm, c.rms_eps
            );
        }
    }
}

fn print_tensors(rows: &[TensorRow], order: &str, list: bool) {
    let mut by_type: BTreeMap<&str, (usize, u64)> = BTreeMap::new();
    for r in rows {
        let e = by_type.entry(&r.ty).or_default();
        e.0 += 1;
        e.1 += r.bytes;
    }
    let total: u64 = rows.iter().map(|r| r.bytes).sum();
    let summary: Vec<String> = by_type
        .iter()
        .map(|(ty, (n, bytes))| format!("{ty}: {n} ({})", human(*bytes)))
        .collect();
    println!(
        "tensors:       {} ({}); {}",
        rows.len(),
        human(total),
        summary.join(", ")
    );
    if list {
        println!("               shapes in {order}");
        for r in rows {
            println!("  {:<48} {:<20} {}", r.name, format!("{:?}", r.shape), r.ty);
        }
    }
}

fn print_chat_template(t: anyhow::Result<Option<ChatTemplate>>) {
    match t {
        Ok(Some(t)) => println!(
            "chat template: yes ({} bytes), stops at {}",
            t.source().len(),
            t.stop_strings()
                .iter()
                .map(|s| format!("{s:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Ok(None) => println!("chat template: no"),
        Err(e) => println!("chat template: present but unusable: {e:#}"),
    }
}

fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

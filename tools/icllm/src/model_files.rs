//! Opening what a user points `--model` at: a GGUF file, or a Hugging Face
//! checkpoint directory (config.json, *.safetensors, tokenizer.json,
//! tokenizer_config.json and maybe chat_template.jinja). Shared by
//! `generate`, `logits` and `inspect`, which load either natively, and by
//! `run` and `bench`, which upload GGUF bytes to the canister (a checkpoint
//! directory is converted in memory first: the canister keeps one format).

use anyhow::{bail, Context};
use icllm_engine::chat::ChatTemplate;
use icllm_engine::format::convert::{convert_dir, ConvertOptions};
use icllm_engine::format::hf;
use icllm_engine::model::Model;
use icllm_engine::tokenizer::{EncodeOptions, Tokenizer};
use std::path::{Path, PathBuf};

/// A separate template file that newer HF checkpoints ship.
pub use icllm_engine::format::convert::CHAT_TEMPLATE_FILE;

/// Which format a path holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelPath {
    Gguf(PathBuf),
    HfDir(PathBuf),
}

impl ModelPath {
    pub fn new(path: &Path) -> anyhow::Result<ModelPath> {
        if path.is_dir() {
            if !path.join(hf::CONFIG_FILE).exists() {
                bail!(
                    "{} is a directory without {}: not a Hugging Face checkpoint",
                    path.display(),
                    hf::CONFIG_FILE
                );
            }
            Ok(ModelPath::HfDir(path.to_path_buf()))
        } else if path.exists() {
            Ok(ModelPath::Gguf(path.to_path_buf()))
        } else {
            bail!("cannot read {}: no such file or directory", path.display())
        }
    }
}

/// Worker threads for quantizing: the machine's cores.
pub fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The GGUF bytes to upload to the canister for `path`: a GGUF file as it
/// is, or a Hugging Face checkpoint directory converted in memory (said on
/// stderr), tensor types kept.
pub fn canister_model_bytes(path: &Path) -> anyhow::Result<Vec<u8>> {
    match ModelPath::new(path)? {
        ModelPath::Gguf(file) => std::fs::read(&file).with_context(|| format!("cannot read {}", file.display())),
        ModelPath::HfDir(dir) => {
            eprintln!(
                "converting the Hugging Face checkpoint {} to GGUF in memory (the canister loads GGUF; `icllm convert` writes it to a file)",
                dir.display()
            );
            let mut bytes = Vec::new();
            let opts = ConvertOptions {
                quant: None,
                threads: threads(),
            };
            let summary = convert_dir(&dir, &opts, &mut bytes)
                .with_context(|| format!("cannot convert {} to GGUF", dir.display()))?;
            eprintln!("converted: {}", describe_conversion(&summary.plan, summary.bytes));
            Ok(bytes)
        }
    }
}

/// One line about a conversion: architecture, tensors by type, size, tokenizer.
pub fn describe_conversion(plan: &icllm_engine::format::convert::ConvertPlan, bytes: u64) -> String {
    let mut types: Vec<(&str, usize)> = Vec::new();
    for t in &plan.tensors {
        match types.iter_mut().find(|(n, _)| *n == t.ty.name()) {
            Some((_, c)) => *c += 1,
            None => types.push((t.ty.name(), 1)),
        }
    }
    let types: Vec<String> = types.iter().map(|(n, c)| format!("{n}: {c}")).collect();
    format!(
        "{}, {} tensors ({}), {}; tokenizer {} tokens (vocabulary {}), tokenizer.ggml.pre {}; chat template: {}",
        plan.config.arch.spec().name,
        plan.tensors.len(),
        types.join(", "),
        size(bytes),
        plan.tokenizer_tokens,
        plan.config.vocab_size,
        plan.pre_tokenizer,
        if plan.has_chat_template { "yes" } else { "no" },
    )
}

/// A byte count for people: kB, MB or GB with one decimal.
fn size(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.1} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else {
        format!("{:.1} kB", b / 1e3)
    }
}

/// A loaded model with what came with it.
pub struct Loaded {
    pub model: Model,
    /// `None` with the reason when the files have no usable tokenizer.
    pub tokenizer: Result<Tokenizer, String>,
    pub chat_template: Option<ChatTemplate>,
}

impl Loaded {
    pub fn tokenizer(&self) -> anyhow::Result<&Tokenizer> {
        self.tokenizer.as_ref().map_err(|e| anyhow::anyhow!("{e}"))
    }
}

pub fn load(path: &Path) -> anyhow::Result<Loaded> {
    match ModelPath::new(path)? {
        ModelPath::Gguf(file) => {
            let bytes = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let (model, gguf) =
                Model::from_gguf_bytes(&bytes).with_context(|| format!("cannot load {}", file.display()))?;
            let tokenizer =
                Tokenizer::from_gguf(&gguf).map_err(|e| format!("no usable tokenizer in {}: {e}", file.display()));
            let chat_template =
                ChatTemplate::from_gguf(&gguf).with_context(|| format!("the chat template of {}", file.display()))?;
            Ok(Loaded {
                model,
                tokenizer,
                chat_template,
            })
        }
        ModelPath::HfDir(dir) => {
            let model = hf::load_dir(&dir).with_context(|| format!("cannot load {}", dir.display()))?;
            let tokenizer = hf_tokenizer(&dir).map_err(|e| format!("{e:#}"));
            let chat_template = hf_chat_template(&dir)?;
            Ok(Loaded {
                model,
                tokenizer,
                chat_template,
            })
        }
    }
}

/// Reads `dir/name` as text; `None` if the file is absent.
pub fn read_optional(dir: &Path, name: &str) -> anyhow::Result<Option<String>> {
    let path = dir.join(name);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// The tokenizer of a checkpoint directory (tokenizer.json + tokenizer_config.json).
pub fn hf_tokenizer(dir: &Path) -> anyhow::Result<Tokenizer> {
    let Some(json) = read_optional(dir, hf::TOKENIZER_FILE)? else {
        bail!("{} has no {}", dir.display(), hf::TOKENIZER_FILE);
    };
    let config = read_optional(dir, hf::TOKENIZER_CONFIG_FILE)?;
    Tokenizer::from_hf_json(&json, config.as_deref())
        .with_context(|| format!("cannot load {}", dir.join(hf::TOKENIZER_FILE).display()))
}

/// The chat template of a checkpoint directory, if it has one.
pub fn hf_chat_template(dir: &Path) -> anyhow::Result<Option<ChatTemplate>> {
    let Some(config) = read_optional(dir, hf::TOKENIZER_CONFIG_FILE)? else {
        return Ok(None);
    };
    let separate = read_optional(dir, CHAT_TEMPLATE_FILE)?;
    ChatTemplate::from_tokenizer_config(&config, separate.as_deref())
        .with_context(|| format!("the chat template of {}", dir.display()))
}

/// The ids of a plain prompt: BOS as the tokenizer wants it, special-token
/// texts recognized.
pub fn encode_prompt(tok: &Tokenizer, text: &str) -> Vec<u32> {
    tok.encode_with(
        text,
        EncodeOptions {
            add_bos: tok.add_bos_default(),
            parse_special: true,
        },
    )
}

/// One user turn through the model's chat template: prompt ids and the ids
/// that end the model's turn.
pub fn encode_chat(tok: &Tokenizer, template: &ChatTemplate, user_text: &str) -> anyhow::Result<(Vec<u32>, Vec<u32>)> {
    Ok(icllm_engine::chat::encode_chat(
        tok,
        template,
        &[icllm_engine::chat::Message::user(user_text)],
    )?)
}

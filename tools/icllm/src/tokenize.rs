//! `icllm tokenize`: print the token ids of a text as a JSON array.
//!
//! The tokenizer comes from a GGUF file (`--model`, a full model or a
//! vocabulary-only file) or a Hugging Face `tokenizer.json` (`--tokenizer`,
//! with the `tokenizer_config.json` beside it when there is one). Special
//! tokens written in the text (`<|im_start|>`, `<|eot_id|>`) become those
//! tokens. BOS/EOS follow the model's own defaults unless `--no-bos`.

use anyhow::{bail, Context};
use icllm_engine::format::gguf::Gguf;
use icllm_engine::tokenizer::{EncodeOptions, Tokenizer};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct TokenizeArgs {
    /// GGUF file whose tokenizer to use.
    #[arg(
        long,
        short = 'm',
        conflicts_with = "tokenizer",
        required_unless_present = "tokenizer"
    )]
    pub model: Option<PathBuf>,
    /// Hugging Face tokenizer.json (tokenizer_config.json is read from the same directory if present).
    #[arg(long, short = 't')]
    pub tokenizer: Option<PathBuf>,
    /// The text to tokenize.
    #[arg(long)]
    pub text: String,
    /// Add neither BOS nor EOS (default: as the model says).
    #[arg(long)]
    pub no_bos: bool,
}

pub fn run(args: TokenizeArgs) -> anyhow::Result<()> {
    let tok = match (&args.model, &args.tokenizer) {
        (Some(model), None) => load_gguf(model)?,
        (None, Some(json)) => load_hf(json)?,
        _ => bail!("give exactly one of --model and --tokenizer"),
    };
    let add_defaults = !args.no_bos;
    let mut ids = tok.encode_with(
        &args.text,
        EncodeOptions {
            add_bos: add_defaults && tok.add_bos_default(),
            parse_special: true,
        },
    );
    if add_defaults && tok.add_eos_default() {
        ids.extend(tok.eos_id());
    }
    println!("{}", serde_json::to_string(&ids)?);
    Ok(())
}

fn load_gguf(path: &Path) -> anyhow::Result<Tokenizer> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let gguf = Gguf::parse(&bytes).with_context(|| format!("{} is not a readable GGUF file", path.display()))?;
    Tokenizer::from_gguf(&gguf).with_context(|| format!("no usable tokenizer in {}", path.display()))
}

fn load_hf(path: &Path) -> anyhow::Result<Tokenizer> {
    let json = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let config_path = path.with_file_name("tokenizer_config.json");
    let config = match std::fs::read_to_string(&config_path) {
        Ok(c) => Some(c),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", config_path.display())),
    };
    Tokenizer::from_hf_json(&json, config.as_deref()).with_context(|| format!("cannot load {}", path.display()))
}

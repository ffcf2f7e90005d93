//! `icllm logits`: the model's scores for the token after a prompt, as JSON.
//!
//! Prints one line `{"ids": [...], "logits": [...]}`: the prompt's ids (BOS
//! as the tokenizer adds it, special-token texts recognized) and the
//! vocabulary-size logits at the last prompt position. For comparing the
//! engine with other implementations, and formats with each other.

use anyhow::{bail, Context};
use icllm_engine::job::{KvCache, KvShape};
use icllm_engine::model::{forward, Model};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct LogitsArgs {
    /// GGUF model file or Hugging Face checkpoint directory.
    #[arg(long, short = 'm')]
    pub model: PathBuf,
    /// Text to score.
    #[arg(long, short = 'p', conflicts_with = "ids", required_unless_present = "ids")]
    pub prompt: Option<String>,
    /// Token ids instead of a text, comma-separated (no tokenizer needed).
    #[arg(long, value_delimiter = ',')]
    pub ids: Option<Vec<u32>>,
}

pub fn run(args: LogitsArgs) -> anyhow::Result<()> {
    let loaded = crate::model_files::load(&args.model)?;
    let ids = match (&args.prompt, args.ids) {
        (_, Some(ids)) => ids,
        (Some(text), None) => crate::model_files::encode_prompt(loaded.tokenizer()?, text),
        (None, None) => bail!("give --prompt or --ids"),
    };
    let logits = last_logits(&loaded.model, &ids)?;
    #[derive(serde::Serialize)]
    struct Output<'a> {
        ids: &'a [u32],
        /// f32, printed in their shortest exact form.
        logits: &'a [f32],
    }
    println!(
        "{}",
        serde_json::to_string(&Output {
            ids: &ids,
            logits: &logits
        })?
    );
    Ok(())
}

/// Runs `ids` through the model as one batch; the logits of the last position.
pub fn last_logits(model: &Model, ids: &[u32]) -> anyhow::Result<Vec<f32>> {
    let c = &model.config;
    if ids.is_empty() {
        bail!("the prompt has no tokens");
    }
    if let Some(bad) = ids.iter().find(|&&id| id as usize >= c.vocab_size) {
        bail!("token id {bad} is outside the vocabulary of {}", c.vocab_size);
    }
    let n = u32::try_from(ids.len()).context("prompt too long")?;
    let mut kv = KvCache::new(KvShape::of(c), n).context("the KV cache does not fit in memory")?;
    let mut x = vec![0.0f32; ids.len() * c.dim]; // (n, dim)
    forward::embed(model, ids, &mut x);
    for layer in 0..c.n_layers {
        forward::attention_block(model, layer, 0, &mut x, &mut kv);
        forward::ffn_block(model, layer, &mut x);
    }
    let mut logits = vec![0.0f32; c.vocab_size];
    forward::logits(model, &x[(ids.len() - 1) * c.dim..], &mut logits);
    Ok(logits)
}

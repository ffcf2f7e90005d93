//! The models of the quantization tests: the shipped stories260K and a small
//! synthetic llama with every matrix dimension a multiple of 256 (so that
//! K-quants apply to every matrix, with the stories260K vocabulary as its
//! tokenizer), and the logits and greedy ids they give. Shared through
//! `#[path]` by the quantization tests and `examples/write-synth-256.rs`
//! (which writes the F32 base that
//! tools/reference/make-llama-quantize-references.py quantizes).

#![allow(dead_code)]

use icllm_engine::format::gguf::Gguf;
use icllm_engine::job::KvCache;
use icllm_engine::model::{forward, Model};
use icllm_engine::synth::{self, Arch, QuantMix, Shape, SynthOptions, Vocab};
use std::path::PathBuf;

pub const SYNTH_SHAPE: Shape = Shape {
    name: "test-256",
    source: "test",
    arch: Arch::Llama,
    dim: 256,
    n_layers: 2,
    n_heads: 4,
    n_kv_heads: 2,
    explicit_head_dim: None,
    hidden_dim: 768,
    vocab_size: 512,
    context_length: 128,
    rope_theta: 10000.0,
    rms_eps: 1e-5,
    tied_embeddings: false,
    llama3_rope: None,
    vocab: Vocab::LlamaSpm,
    conv_layers: &[],
};

/// The shipped stories260K model (F32).
pub fn stories_bytes() -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/stories260Ktok512.gguf");
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// [`SYNTH_SHAPE`] in `quant` (seed 42) as GGUF bytes.
pub fn synth_256_bytes(quant: QuantMix) -> Vec<u8> {
    let stories = stories_bytes();
    let gguf = Gguf::parse(&stories).unwrap();
    let mut opts = SynthOptions::new(quant);
    opts.seed = 42;
    opts.tokenizer = gguf
        .metadata
        .iter()
        .filter(|(k, _)| k.starts_with("tokenizer."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut bytes = Vec::new();
    synth::write_gguf(&SYNTH_SHAPE, &opts, &mut bytes).unwrap();
    bytes
}

/// Logits at every position of `tokens` (one batch through every layer).
pub fn all_logits(model: &Model, tokens: &[u32]) -> Vec<Vec<f32>> {
    all_logits_in_context(model, tokens, tokens.len() as u32 + 1)
}

/// [`all_logits`] in a sequence of `ctx` positions (which picks LongRoPE's
/// factors).
pub fn all_logits_in_context(model: &Model, tokens: &[u32], ctx: u32) -> Vec<Vec<f32>> {
    let c = &model.config;
    let mut kv = KvCache::new(icllm_engine::kv::KvShape::of(c), ctx).unwrap();
    let mut x = vec![0.0f32; tokens.len() * c.dim];
    forward::embed(model, tokens, &mut x);
    for l in 0..c.n_layers {
        forward::attention_block(model, l, 0, &mut x, &mut kv);
        forward::ffn_block(model, l, &mut x);
    }
    x.chunks_exact(c.dim)
        .map(|row| {
            let mut out = vec![0.0f32; c.vocab_size];
            forward::logits(model, row, &mut out);
            out
        })
        .collect()
}

/// Greedy continuation of `prompt` for `n` tokens.
pub fn greedy(model: &Model, prompt: &[u32], n: usize) -> Vec<u32> {
    let c = &model.config;
    let mut kv = KvCache::new(icllm_engine::kv::KvShape::of(c), (prompt.len() + n) as u32).unwrap();
    let mut tokens = prompt.to_vec();
    let mut pos0 = 0usize;
    let mut out = Vec::new();
    for _ in 0..n {
        let batch = &tokens[pos0..];
        let mut x = vec![0.0f32; batch.len() * c.dim];
        forward::embed(model, batch, &mut x);
        for l in 0..c.n_layers {
            forward::attention_block(model, l, pos0 as u32, &mut x, &mut kv);
            forward::ffn_block(model, l, &mut x);
        }
        let mut logits = vec![0.0f32; c.vocab_size];
        forward::logits(model, &x[(batch.len() - 1) * c.dim..], &mut logits);
        let next = argmax(&logits);
        pos0 = tokens.len();
        tokens.push(next);
        out.push(next);
    }
    out
}

pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

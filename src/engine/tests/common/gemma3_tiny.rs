//! Tiny gemma3 files: the shipped stories260K (5 layers, dim 64, 8 heads of
//! 8, 4 kv heads, FFN 172, vocabulary 512) rewritten as a gemma3 file, as
//! llama.cpp's `gemma3` loader reads it: `gemma3.*` keys, q/k norms and
//! post-attention / post-FFN norms added with seeded weights spread around 1
//! (so they matter), a sliding window and pattern when given.
//!
//! [`Gemma3File`] is the file llama.cpp ran for the reference
//! (testdata/gemma3/gemma3-tiny-llama-cpp.json, made by
//! tools/reference/make-gemma3-tiny-reference.py from the files
//! `examples/write-gemma3-tiny.rs` writes): a window of [`TINY_WINDOW`]
//! positions (shorter than the reference's prompt) on the layers a period
//! of [`TINY_PATTERN`] makes sliding (0, 1, 3 and 4: layer 2 is global), a
//! global RoPE base of [`TINY_GLOBAL_ROPE_BASE`] (the sliding layers keep
//! llama.cpp's 10,000), head sizes given as the converter writes them, and
//! the output head tied to the token embedding. Shared through `#[path]` by
//! `tests/gemma3.rs` and the example: deterministic, so both make the same
//! bytes.

#![allow(dead_code)]

use icllm_engine::format::gguf::writer::{parts_of, write, Parts, TensorData};
use icllm_engine::format::gguf::Value;
use icllm_engine::synth::{quantize_gguf, QuantMix, Rng};
use icllm_engine::tensor::GgmlType;
use std::path::PathBuf;

pub const N_LAYERS: usize = 5;
pub const DIM: usize = 64;
pub const HEAD_DIM: usize = 8;

/// The tiny file's sliding window (positions a sliding layer's query sees).
pub const TINY_WINDOW: u32 = 8;
/// The tiny file's `sliding_window_pattern`: layer `l` slides when `l % 3 < 2`.
pub const TINY_PATTERN: u32 = 3;
/// Which layers of the tiny file slide.
pub const TINY_SLIDING: [bool; N_LAYERS] = [true, true, false, true, true];
/// The global layers' RoPE base (`rope.freq_base`; Gemma 3's own is 1e6).
pub const TINY_GLOBAL_ROPE_BASE: f32 = 1_000_000.0;

/// Which tiny gemma3 file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gemma3File {
    F32,
    /// [`Gemma3File::F32`] quantized by icllm to Q8_0 (the 172-wide rows of
    /// `ffn_down` fall back to F16, as llama-quantize does; norms stay F32).
    Q8_0,
}

impl Gemma3File {
    pub const ALL: [Gemma3File; 2] = [Gemma3File::F32, Gemma3File::Q8_0];

    /// The name of the case in the reference file and of the written file.
    pub fn name(self) -> &'static str {
        match self {
            Gemma3File::F32 => "gemma3-tiny-f32",
            Gemma3File::Q8_0 => "gemma3-tiny-q8_0",
        }
    }

    pub fn bytes(self) -> Vec<u8> {
        match self {
            Gemma3File::F32 => {
                let (md, tensors) = gemma3_tiny_parts();
                write(&md, &tensors)
            }
            Gemma3File::Q8_0 => quantize_gguf(&Gemma3File::F32.bytes(), QuantMix::Uniform(GgmlType::Q8_0)).unwrap(),
        }
    }
}

fn set(md: &mut Vec<(String, Value)>, key: &str, v: Value) {
    match md.iter_mut().find(|(k, _)| k == key) {
        Some((_, old)) => *old = v,
        None => md.push((key.to_string(), v)),
    }
}

/// `n` seeded values around 1 (standard deviation 0.25).
fn near_one(n: usize, seed: u64) -> Vec<f32> {
    let mut v = vec![0.0; n];
    Rng::new(seed).fill_normal(&mut v, 0.25);
    v.iter().map(|x| 1.0 + x).collect()
}

/// stories260K rewritten as a gemma3 file: its keys renamed, q/k norms and
/// post-norms added, sliding window `window` with `pattern` when given. Its
/// own output head is kept (untied) and no RoPE base is set (10,000 for
/// every layer).
pub fn gemma3_parts(window: Option<u32>, pattern: Option<Value>) -> Parts {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/stories260Ktok512.gguf");
    let (mut metadata, mut tensors) =
        parts_of(&std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))).unwrap();
    for (k, v) in metadata.iter_mut() {
        if let Some(rest) = k.strip_prefix("llama.") {
            *k = format!("gemma3.{rest}");
        }
        if k == "general.architecture" {
            *v = Value::String("gemma3".into());
        }
    }
    if let Some(w) = window {
        set(&mut metadata, "gemma3.attention.sliding_window", Value::U32(w));
    }
    if let Some(p) = pattern {
        set(&mut metadata, "gemma3.attention.sliding_window_pattern", p);
    }
    let vector = |name: String, len: usize, seed: u64| TensorData {
        name,
        dims: vec![len as u64],
        ty: GgmlType::F32,
        bytes: near_one(len, seed).iter().flat_map(|v| v.to_le_bytes()).collect(),
    };
    for l in 0..N_LAYERS {
        let seed = 100 * (l as u64 + 1);
        tensors.push(vector(format!("blk.{l}.attn_q_norm.weight"), HEAD_DIM, seed));
        tensors.push(vector(format!("blk.{l}.attn_k_norm.weight"), HEAD_DIM, seed + 1));
        tensors.push(vector(format!("blk.{l}.post_attention_norm.weight"), DIM, seed + 2));
        tensors.push(vector(format!("blk.{l}.post_ffw_norm.weight"), DIM, seed + 3));
    }
    (metadata, tensors)
}

/// The parts of [`Gemma3File::F32`]: [`gemma3_parts`] with the tiny file's
/// window and pattern, a global RoPE base, `attention.key_length` and
/// `value_length`, and no `output.weight` (tied head).
pub fn gemma3_tiny_parts() -> Parts {
    let (mut metadata, mut tensors) = gemma3_parts(Some(TINY_WINDOW), Some(Value::U32(TINY_PATTERN)));
    set(
        &mut metadata,
        "gemma3.rope.freq_base",
        Value::F32(TINY_GLOBAL_ROPE_BASE),
    );
    set(
        &mut metadata,
        "gemma3.attention.key_length",
        Value::U32(HEAD_DIM as u32),
    );
    set(
        &mut metadata,
        "gemma3.attention.value_length",
        Value::U32(HEAD_DIM as u32),
    );
    tensors.retain(|t| t.name != "output.weight");
    (metadata, tensors)
}

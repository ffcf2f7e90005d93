//! A tiny lfm2 file that llama.cpp loads: stories260K (5 layers, dim 64,
//! 8 heads of 8, 4 kv heads, vocabulary 512) rewritten as LFM2 with layers
//! conv, conv, attention, conv, attention. The attention layers keep the
//! story model's projections and gain q/k norms; the conv layers get seeded
//! random in/out projections and kernels (taps 3); the final norm is renamed
//! `token_embd_norm`, as LFM2's converter writes it. Deterministic, so the
//! test and `examples/write-lfm2-tiny.rs` (which writes it for
//! `tools/reference/make-lfm2-reference.py`) make the same bytes.

#![allow(dead_code)]

use icllm_engine::format::gguf::writer::{parts_of, write, TensorData};
use icllm_engine::format::gguf::Value;
use icllm_engine::synth::{self, QuantMix, Rng};
use icllm_engine::tensor::GgmlType;
use std::path::PathBuf;

/// Which layers are convolutions (0 kv heads in `attention.head_count_kv`).
pub const CONV_LAYERS: [bool; 5] = [true, true, false, true, false];
pub const DIM: usize = 64;
pub const TAPS: usize = 3;

fn f32_tensor(name: String, dims: Vec<u64>, values: &[f32]) -> TensorData {
    TensorData {
        name,
        dims,
        ty: GgmlType::F32,
        bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

fn normal(n: usize, std: f32, seed: u64) -> Vec<f32> {
    let mut v = vec![0.0; n];
    Rng::new(seed).fill_normal(&mut v, std);
    v
}

/// Norm weights near 1 (so that they matter).
fn near_one(n: usize, seed: u64) -> Vec<f32> {
    normal(n, 0.1, seed).iter().map(|v| 1.0 + v).collect()
}

/// The F32 file, or its quantization by `mix` (the conv kernels stay F32,
/// as llama.cpp's quantizer keeps them).
pub fn lfm2_tiny_bytes(mix: Option<QuantMix>) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/stories260Ktok512.gguf");
    let (mut metadata, tensors) = parts_of(&std::fs::read(path).unwrap()).unwrap();
    for (k, v) in metadata.iter_mut() {
        if let Some(rest) = k.strip_prefix("llama.") {
            *k = format!("lfm2.{rest}");
        }
        if k == "general.architecture" {
            *v = Value::String("lfm2".into());
        }
        if k == "lfm2.attention.head_count_kv" {
            // As LFM2's converter writes it: one count per layer, 0 for conv.
            *v = Value::Array(CONV_LAYERS.iter().map(|&c| Value::I32(if c { 0 } else { 4 })).collect());
        }
    }
    metadata.push(("lfm2.shortconv.l_cache".into(), Value::U32(TAPS as u32)));
    let mut out = Vec::new();
    for mut t in tensors {
        let layer = t
            .name
            .strip_prefix("blk.")
            .and_then(|r| r.split('.').next())
            .and_then(|l| l.parse::<usize>().ok());
        // A conv layer has no attention projections (its attn_norm is the
        // operator norm before the conv).
        let conv = layer.is_some_and(|l| CONV_LAYERS[l]);
        if conv && t.name.contains(".attn_") && !t.name.contains("attn_norm") {
            continue;
        }
        if t.name == "output_norm.weight" {
            t.name = "token_embd_norm.weight".into();
        }
        out.push(t);
    }
    for (l, &conv) in CONV_LAYERS.iter().enumerate() {
        let name = |s: &str| format!("blk.{l}.{s}.weight");
        let seed = 1000 * (l as u64 + 1);
        if conv {
            // Projections of std 1/√dim keep each of b, c, x' near unit size.
            let std = 1.0 / (DIM as f32).sqrt();
            out.push(f32_tensor(
                name("shortconv.in_proj"),
                vec![DIM as u64, 3 * DIM as u64],
                &normal(3 * DIM * DIM, std, seed),
            ));
            out.push(f32_tensor(
                name("shortconv.conv"),
                vec![TAPS as u64, DIM as u64],
                &normal(TAPS * DIM, 0.5, seed + 1),
            ));
            out.push(f32_tensor(
                name("shortconv.out_proj"),
                vec![DIM as u64, DIM as u64],
                &normal(DIM * DIM, std, seed + 2),
            ));
        } else {
            out.push(f32_tensor(name("attn_q_norm"), vec![8], &near_one(8, seed + 3)));
            out.push(f32_tensor(name("attn_k_norm"), vec![8], &near_one(8, seed + 4)));
        }
    }
    let bytes = write(&metadata, &out);
    match mix {
        None => bytes,
        Some(mix) => synth::quantize_gguf(&bytes, mix).unwrap(),
    }
}

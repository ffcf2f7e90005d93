//! The phi3 files of the phi3 tests: the shipped stories260K (5 layers, dim
//! 64, 8 heads of 8, 4 kv heads, FFN 172) rewritten as llama.cpp's converter
//! writes Phi-3: `phi3.*` keys, Q, K and V fused into `attn_qkv` (Q rows,
//! then K, then V) and gate and up into `ffn_up` (gate rows, then up), no
//! `ffn_gate`. Shared through `#[path]` by `tests/phi3.rs` and
//! `examples/write-phi3-tests.rs`, which writes the files
//! tools/reference/make-phi3-reference.py runs llama.cpp on.
//!
//! Both variants carry a sliding window of 8 that llama.cpp (and icllm)
//! ignore for phi3, so prompts longer than 8 show it is ignored.

#![allow(dead_code)]

use icllm_engine::format::gguf::writer::{parts_of, write, Parts, TensorData};
use icllm_engine::format::gguf::Value;
use icllm_engine::synth::{quantize_gguf, QuantMix};
use icllm_engine::tensor::GgmlType;
use std::path::PathBuf;

/// Which phi3 file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phi3File {
    /// As Phi-3 mini 4k: no LongRoPE factors, F32.
    F32,
    /// As Phi-3 mini 128k: LongRoPE factors (short and long), an
    /// `attn_factor` from the converter's formula, a trained context
    /// (4096) 16 times the original one (`LONGROPE_ORIGINAL_CONTEXT`), F32.
    F32LongRope,
    /// [`Phi3File::F32`] quantized by icllm to Q8_0 (the 172-wide rows of
    /// `ffn_down` fall back to F16, as llama-quantize does).
    Q8_0,
}

impl Phi3File {
    pub const ALL: [Phi3File; 3] = [Phi3File::F32, Phi3File::F32LongRope, Phi3File::Q8_0];

    /// The name of the case in the reference file and of the written file.
    pub fn name(self) -> &'static str {
        match self {
            Phi3File::F32 => "phi3-f32",
            Phi3File::F32LongRope => "phi3-longrope-f32",
            Phi3File::Q8_0 => "phi3-q8_0",
        }
    }

    pub fn bytes(self) -> Vec<u8> {
        match self {
            Phi3File::F32 => {
                let parts = phi3_parts(false, true);
                write(&parts.0, &parts.1)
            }
            Phi3File::F32LongRope => {
                let parts = phi3_parts(true, true);
                write(&parts.0, &parts.1)
            }
            Phi3File::Q8_0 => quantize_gguf(&Phi3File::F32.bytes(), QuantMix::Uniform(GgmlType::Q8_0)).unwrap(),
        }
    }
}

/// The original context of [`Phi3File::F32LongRope`]: llama.cpp uses the
/// short factors for contexts up to this, the long ones beyond.
pub const LONGROPE_ORIGINAL_CONTEXT: u32 = 256;

/// LongRoPE factors (one per rotated pair; head_dim 8 gives 4): far enough
/// apart that rotating with the wrong set, or with none, changes the logits.
pub const SHORT_FACTORS: [f32; 4] = [1.0, 1.5, 3.0, 7.0];
pub const LONG_FACTORS: [f32; 4] = [2.0, 9.0, 40.0, 150.0];

fn copy(t: &TensorData) -> TensorData {
    TensorData {
        name: t.name.clone(),
        dims: t.dims.clone(),
        ty: t.ty,
        bytes: t.bytes.clone(),
    }
}

fn stories_parts() -> Parts {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/stories260Ktok512.gguf");
    parts_of(&std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))).unwrap()
}

/// stories260K as phi3: fused (`fused_qkv`) or separate q/k/v (llama.cpp
/// accepts both), `longrope` factors or none.
pub fn phi3_parts(longrope: bool, fused_qkv: bool) -> Parts {
    let (mut metadata, tensors) = stories_parts();
    for (k, v) in metadata.iter_mut() {
        if let Some(rest) = k.strip_prefix("llama.") {
            *k = format!("phi3.{rest}");
        }
        if k == "general.architecture" {
            *v = Value::String("phi3".into());
        }
    }
    let set = |md: &mut Vec<(String, Value)>, key: &str, v: Value| match md.iter_mut().find(|(k, _)| k == key) {
        Some((_, old)) => *old = v,
        None => md.push((key.to_string(), v)),
    };
    set(&mut metadata, "phi3.attention.sliding_window", Value::U32(8));
    if longrope {
        let (context, original) = (4096u32, LONGROPE_ORIGINAL_CONTEXT);
        set(&mut metadata, "phi3.context_length", Value::U32(context));
        set(
            &mut metadata,
            "phi3.rope.scaling.original_context_length",
            Value::U32(original),
        );
        // llama.cpp's converter: √(1 + ln(scale) / ln(original)) for LongRoPE.
        let scale = context as f64 / original as f64;
        let attn_factor = (1.0 + scale.ln() / (original as f64).ln()).sqrt();
        set(
            &mut metadata,
            "phi3.rope.scaling.attn_factor",
            Value::F32(attn_factor as f32),
        );
    } else {
        set(
            &mut metadata,
            "phi3.rope.scaling.original_context_length",
            Value::U32(128),
        );
    }

    let find = |name: &str| tensors.iter().find(|t| t.name == name).unwrap();
    let mut out = Vec::new();
    for t in &tensors {
        let Some(rest) = t.name.strip_prefix("blk.") else {
            out.push(copy(t));
            continue;
        };
        let l = rest.split('.').next().unwrap();
        let fused = |name: &str, parts: &[&str]| {
            let parts: Vec<&TensorData> = parts.iter().map(|p| find(&format!("blk.{l}.{p}.weight"))).collect();
            TensorData {
                name: format!("blk.{l}.{name}.weight"),
                dims: vec![parts[0].dims[0], parts.iter().map(|p| p.dims[1]).sum()],
                ty: parts[0].ty,
                bytes: parts.iter().flat_map(|p| p.bytes.iter().copied()).collect(),
            }
        };
        match &rest[l.len() + 1..] {
            "attn_q.weight" if fused_qkv => out.push(fused("attn_qkv", &["attn_q", "attn_k", "attn_v"])),
            "attn_k.weight" | "attn_v.weight" if fused_qkv => {}
            "ffn_up.weight" => out.push(fused("ffn_up", &["ffn_gate", "ffn_up"])),
            "ffn_gate.weight" => {}
            _ => out.push(copy(t)),
        }
    }
    if longrope {
        let vector = |name: &str, values: &[f32]| TensorData {
            name: name.into(),
            dims: vec![values.len() as u64],
            ty: GgmlType::F32,
            bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        };
        out.push(vector("rope_factors_long.weight", &LONG_FACTORS));
        out.push(vector("rope_factors_short.weight", &SHORT_FACTORS));
    }
    (metadata, out)
}

//! The architecture table: what distinguishes one llama-family architecture
//! from another, as data read by the one forward pass.
//!
//! Adding an architecture means adding a variant and a row here; the loader
//! asks for the optional tensors a row names (biases, q/k norms) and the
//! forward pass applies whatever was loaded: it is never forked per model.
//!
//! Semantics checked against llama.cpp (`llama-arch.cpp`, `llama-model.cpp`)
//! and Hugging Face transformers (`modeling_llama.py`, `modeling_qwen2.py`,
//! `modeling_qwen3.py`):
//! - **llama** (TinyStories, TinyLlama, SmolLM2, Llama 3.x): no biases, RoPE on
//!   adjacent pairs in GGUF (the converter permutes the q/k rows of the HF
//!   checkpoint, which rotates halves); Llama 3.1+ scales RoPE frequencies by
//!   the optional `rope_freqs.weight` tensor (see [`crate::kernels::llama3_rope_freq_factors`]).
//! - **qwen2** (Qwen2, Qwen2.5): bias vectors on the q, k and v projections;
//!   NeoX RoPE (halves), with no permutation by the converter.
//! - **qwen3**: no biases; q and k RMS-normalized per head (weights of length
//!   `head_dim`) after projection and before RoPE; NeoX RoPE; `head_dim` is
//!   given explicitly (128) so `n_heads * head_dim` may differ from `dim`.
//! - **gemma3** (Gemma 3 text models): embeddings scaled by `√dim`; q and k
//!   RMS-normalized per head; RMSNorm *after* attention and after the FFN
//!   as well as before (the GGUF converter already added Gemma's `1 +` to
//!   every norm weight, so these are plain RMSNorms); a GELU(tanh)-gated
//!   FFN; NeoX RoPE; sliding-window attention on five layers of every six
//!   (`attention.sliding_window`, `attention.sliding_window_pattern`), whose
//!   RoPE base is `rope.freq_base_swa` (10,000 when absent), the global
//!   layers' `rope.freq_base`; as llama.cpp's `gemma3` reads the file.
//! - **lfm2** (Liquid AI's LFM2 and LFM2.5): a hybrid. The layers whose
//!   entry in the per-layer `attention.head_count_kv` array is 0 are gated
//!   short convolutions (`shortconv.in_proj` to `3·dim` split into b, c, x;
//!   `c ⊙ conv(b ⊙ x)` with a depthwise causal kernel of
//!   `shortconv.l_cache` taps; `shortconv.out_proj`), the others GQA
//!   attention with per-head q/k RMSNorm and NeoX RoPE, no biases; SwiGLU
//!   FFN everywhere. The final norm is stored as `token_embd_norm.weight`
//!   (llama.cpp's `LLM_TENSOR_OUTPUT_NORM_LFM2`); as llama.cpp's `lfm2`
//!   reads the file (`src/models/lfm2.cpp`).
//! - **phi3** (Phi-3, Phi-3.5 mini): no biases; NeoX RoPE; Q, K and V are
//!   usually one `attn_qkv` matrix (Q rows, then K, then V) and `ffn_up`
//!   holds the gate rows then the up rows (no `ffn_gate`); the loader splits
//!   both, so the forward pass sees ordinary matrices. The 128k variants
//!   carry LongRoPE factors (`rope_factors_short`/`_long`) and an
//!   `attn_factor` multiplying RoPE's cos and sin. `attention.sliding_window`
//!   is ignored: llama.cpp disables sliding-window attention for phi3
//!   (its converter's window does not match the model's), and so does icllm.
//!
//! All five may tie the output head to the token embedding.

use crate::kernels::RopeStyle;
use serde::{Deserialize, Serialize};

/// A supported `general.architecture`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Architecture {
    Llama,
    Qwen2,
    Qwen3,
    Gemma3,
    Lfm2,
    Phi3,
}

/// The FFN's gate activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FfnActivation {
    /// `silu(gate) * up` (SwiGLU).
    Silu,
    /// `gelu_tanh(gate) * up` (GeGLU, Gemma).
    GeluTanh,
}

/// One row of the architecture table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchSpec {
    /// The `general.architecture` value, also the prefix of its GGUF keys.
    pub name: &'static str,
    pub arch: Architecture,
    pub rope_style: RopeStyle,
    /// Q, K and V projections have bias vectors.
    pub qkv_bias: bool,
    /// Q and K are RMS-normalized per head before RoPE.
    pub qk_norm: bool,
    /// `output.weight` may be absent, in which case the token embedding is
    /// used as the output head (tied embeddings).
    pub output_may_be_tied: bool,
    /// Embeddings are multiplied by `√dim` (Gemma).
    pub embed_scale: bool,
    /// RMSNorms after attention and after the FFN, before each residual add
    /// (`post_attention_norm`, `post_ffw_norm`).
    pub post_norms: bool,
    pub ffn_activation: FfnActivation,
    /// Sliding-window attention on the layers a pattern names: `Some(n)`
    /// when the file gives a window, with `n` llama.cpp's default period
    /// (layer `l` slides when `l % n < n - 1`) if the file gives none.
    pub swa_default_pattern: Option<u32>,
    /// Layers with no kv heads (`attention.head_count_kv` 0 in the
    /// per-layer array) are short-convolution blocks (LFM2).
    pub short_conv: bool,
    /// GGUF name of the final RMSNorm's weight.
    pub output_norm: &'static str,
    /// Q, K and V may come as one `attn_qkv.weight` of `q_dim + 2 * kv_dim`
    /// rows (Q rows, then K, then V) instead of `attn_q`/`attn_k`/`attn_v`.
    pub fused_qkv: bool,
    /// `ffn_up.weight` has `2 * hidden_dim` rows, the gate's then the up
    /// projection's, and there is no `ffn_gate.weight` (Phi-3's `gate_up_proj`).
    pub fused_gate_up: bool,
    /// The file may carry LongRoPE frequency factors (`rope_factors_short.weight`,
    /// `rope_factors_long.weight`, `rope_dims / 2` each).
    pub longrope_factors: bool,
}

/// Every supported architecture.
pub const ARCHITECTURES: &[ArchSpec] = &[
    ArchSpec {
        name: "llama",
        arch: Architecture::Llama,
        rope_style: RopeStyle::Normal,
        qkv_bias: false,
        qk_norm: false,
        output_may_be_tied: true,
        embed_scale: false,
        post_norms: false,
        ffn_activation: FfnActivation::Silu,
        swa_default_pattern: None,
        short_conv: false,
        output_norm: "output_norm.weight",
        fused_qkv: false,
        fused_gate_up: false,
        longrope_factors: false,
    },
    ArchSpec {
        name: "qwen2",
        arch: Architecture::Qwen2,
        rope_style: RopeStyle::Neox,
        qkv_bias: true,
        qk_norm: false,
        output_may_be_tied: true,
        embed_scale: false,
        post_norms: false,
        ffn_activation: FfnActivation::Silu,
        swa_default_pattern: None,
        short_conv: false,
        output_norm: "output_norm.weight",
        fused_qkv: false,
        fused_gate_up: false,
        longrope_factors: false,
    },
    ArchSpec {
        name: "qwen3",
        arch: Architecture::Qwen3,
        rope_style: RopeStyle::Neox,
        qkv_bias: false,
        qk_norm: true,
        output_may_be_tied: true,
        embed_scale: false,
        post_norms: false,
        ffn_activation: FfnActivation::Silu,
        swa_default_pattern: None,
        short_conv: false,
        output_norm: "output_norm.weight",
        fused_qkv: false,
        fused_gate_up: false,
        longrope_factors: false,
    },
    ArchSpec {
        name: "gemma3",
        arch: Architecture::Gemma3,
        rope_style: RopeStyle::Neox,
        qkv_bias: false,
        qk_norm: true,
        output_may_be_tied: true,
        embed_scale: true,
        post_norms: true,
        ffn_activation: FfnActivation::GeluTanh,
        swa_default_pattern: Some(6),
        short_conv: false,
        output_norm: "output_norm.weight",
        fused_qkv: false,
        fused_gate_up: false,
        longrope_factors: false,
    },
    ArchSpec {
        name: "lfm2",
        arch: Architecture::Lfm2,
        rope_style: RopeStyle::Neox,
        qkv_bias: false,
        qk_norm: true,
        output_may_be_tied: true,
        embed_scale: false,
        post_norms: false,
        ffn_activation: FfnActivation::Silu,
        swa_default_pattern: None,
        short_conv: true,
        // The converter maps HF's `embedding_norm` (applied after the last
        // layer) to the token-embedding-norm name; llama.cpp reads it as the
        // output norm.
        output_norm: "token_embd_norm.weight",
        fused_qkv: false,
        fused_gate_up: false,
        longrope_factors: false,
    },
    ArchSpec {
        name: "phi3",
        arch: Architecture::Phi3,
        rope_style: RopeStyle::Neox,
        qkv_bias: false,
        qk_norm: false,
        output_may_be_tied: true,
        embed_scale: false,
        post_norms: false,
        ffn_activation: FfnActivation::Silu,
        // None: `phi3.attention.sliding_window` is ignored, as llama.cpp
        // ignores it (see the module doc).
        swa_default_pattern: None,
        short_conv: false,
        output_norm: "output_norm.weight",
        fused_qkv: true,
        fused_gate_up: true,
        longrope_factors: true,
    },
];

impl Architecture {
    /// The row for a `general.architecture` name, if supported.
    pub fn from_name(name: &str) -> Option<Architecture> {
        ARCHITECTURES.iter().find(|s| s.name == name).map(|s| s.arch)
    }

    pub fn spec(self) -> &'static ArchSpec {
        // Every variant has a row (checked by a test).
        ARCHITECTURES
            .iter()
            .find(|s| s.arch == self)
            .unwrap_or(&ARCHITECTURES[0])
    }

    /// Names of the supported architectures, for error messages.
    pub fn supported_names() -> String {
        ARCHITECTURES.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_round_trips() {
        for spec in ARCHITECTURES {
            assert_eq!(Architecture::from_name(spec.name), Some(spec.arch));
            assert_eq!(spec.arch.spec(), spec);
        }
        assert_eq!(Architecture::from_name("mamba"), None);
        assert_eq!(
            Architecture::supported_names(),
            "llama, qwen2, qwen3, gemma3, lfm2, phi3"
        );
    }
}

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
//!
//! All three may tie the output head to the token embedding.

use crate::kernels::RopeStyle;
use serde::{Deserialize, Serialize};

/// A supported `general.architecture`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Architecture {
    Llama,
    Qwen2,
    Qwen3,
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
    },
    ArchSpec {
        name: "qwen2",
        arch: Architecture::Qwen2,
        rope_style: RopeStyle::Neox,
        qkv_bias: true,
        qk_norm: false,
        output_may_be_tied: true,
    },
    ArchSpec {
        name: "qwen3",
        arch: Architecture::Qwen3,
        rope_style: RopeStyle::Neox,
        qkv_bias: false,
        qk_norm: true,
        output_may_be_tied: true,
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
        assert_eq!(Architecture::supported_names(), "llama, qwen2, qwen3");
    }
}

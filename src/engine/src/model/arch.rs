//! The architecture table: what distinguishes one llama-family architecture
//! from another, as data read by the one forward pass.
//!
//! Adding an architecture (qwen2: qkv bias, NeoX RoPE; qwen3: q/k norm) means
//! adding a variant and a row here, plus the optional tensors the row asks
//! for in `weights.rs`; the forward pass checks the flags, it is not forked.

use crate::kernels::RopeStyle;
use serde::{Deserialize, Serialize};

/// A supported `general.architecture`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Architecture {
    Llama,
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
pub const ARCHITECTURES: &[ArchSpec] = &[ArchSpec {
    name: "llama",
    arch: Architecture::Llama,
    rope_style: RopeStyle::Normal,
    qkv_bias: false,
    qk_norm: false,
    output_may_be_tied: true,
}];

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
    }
}

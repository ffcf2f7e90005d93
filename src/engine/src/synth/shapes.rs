//! The published shapes `synth` can build, from each model's `config.json`
//! (Hugging Face) or, for the TinyStories models, llama2.c's README.

/// Architecture of a shape, named as GGUF's `general.architecture`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    /// Llama plus bias vectors on Q, K and V.
    Qwen2,
    /// Llama plus per-head RMS norms on Q and K, explicit head_dim.
    Qwen3,
    /// LFM2: gated short convolutions on the layers `conv_layers` names,
    /// GQA attention with q/k norms on the others.
    Lfm2,
    /// Llama with Q, K, V fused into `attn_qkv` and gate and up into
    /// `ffn_up` (as llama.cpp's converter writes Phi-3), NeoX RoPE.
    Phi3,
    /// Gemma 3: q/k norms, norms after attention and the FFN, GELU gate,
    /// sliding-window attention on five layers of six ([`GEMMA3_WINDOW`]).
    Gemma3,
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
            Arch::Lfm2 => "lfm2",
            Arch::Phi3 => "phi3",
            Arch::Gemma3 => "gemma3",
        }
    }
}

/// Which real tokenizer a shape uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vocab {
    /// Llama 2's 32000-token SentencePiece vocabulary.
    LlamaSpm,
    /// SmolLM2's 49152-token byte-level BPE.
    SmolLm,
    /// Qwen2/2.5/3's byte-level BPE (151643 regular tokens + specials, padded to 151936).
    Qwen2,
    /// Llama 3's 128256-token byte-level BPE.
    Llama3,
    /// A synthetic byte-level vocabulary of the shape's size
    /// ([`super::synthetic_vocab`]): the model's own is not in `testdata/`.
    Synthetic,
    /// Phi-3's SentencePiece vocabulary: Llama 2's 32000 pieces plus 64
    /// added tokens (chat markers and padding), 32064.
    Phi3,
}

/// llama3-style RoPE scaling (`rope_scaling.rope_type = "llama3"`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Llama3Rope {
    pub factor: f32,
    pub low_freq_factor: f32,
    pub high_freq_factor: f32,
    pub original_context: usize,
}

/// A published model's hyperparameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shape {
    pub name: &'static str,
    /// Where the numbers come from.
    pub source: &'static str,
    pub arch: Arch,
    pub dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    /// `head_dim` when the config sets it (qwen3); else `dim / n_heads`.
    pub explicit_head_dim: Option<usize>,
    pub hidden_dim: usize,
    pub vocab_size: usize,
    pub context_length: usize,
    pub rope_theta: f32,
    pub rms_eps: f32,
    pub tied_embeddings: bool,
    pub llama3_rope: Option<Llama3Rope>,
    pub vocab: Vocab,
    /// Short-convolution layers (LFM2's `layer_types` "conv"); empty when
    /// every layer attends.
    pub conv_layers: &'static [usize],
}

impl Shape {
    /// Whether `layer` is a short-convolution layer.
    pub fn is_conv(&self, layer: usize) -> bool {
        self.conv_layers.contains(&layer)
    }

    pub fn head_dim(&self) -> usize {
        self.explicit_head_dim.unwrap_or(self.dim / self.n_heads)
    }

    /// Parameters of the full model (matrices, norms, biases).
    pub fn n_params(&self) -> u64 {
        let (d, h, v) = (self.dim as u64, self.hidden_dim as u64, self.vocab_size as u64);
        let hd = self.head_dim() as u64;
        let (q, kv) = (self.n_heads as u64 * hd, self.n_kv_heads as u64 * hd);
        let mut layer = d * q + 2 * d * kv + q * d + 3 * d * h + 2 * d;
        match self.arch {
            Arch::Qwen2 => layer += q + 2 * kv,
            Arch::Qwen3 | Arch::Lfm2 => layer += 2 * hd,
            Arch::Gemma3 => layer += 2 * hd + 2 * d,
            // Fused matrices hold the same parameters as separate ones.
            Arch::Llama | Arch::Phi3 => {}
        }
        // A conv layer: in_proj (3d, d), the taps (d, 3), out_proj (d, d),
        // the FFN and two norms.
        let conv_layer = 4 * d * d + CONV_TAPS as u64 * d + 3 * d * h + 2 * d;
        let n_conv = self.conv_layers.len() as u64;
        let head = if self.tied_embeddings { 0 } else { v * d };
        v * d + (self.n_layers as u64 - n_conv) * layer + n_conv * conv_layer + d + head
    }
}

/// Gemma 3's `sliding_window` (its 270M to 27B configs).
pub const GEMMA3_WINDOW: usize = 512;

/// LFM2's short-convolution taps (`conv_L_cache`).
pub const CONV_TAPS: usize = 3;

const STORIES: &str = "karpathy/llama2.c README (model table) and the tinyllamas checkpoints";

/// Every shape `synth` knows, smallest first.
pub const SHAPES: &[Shape] = &[
    Shape {
        name: "stories15M",
        source: STORIES,
        arch: Arch::Llama,
        dim: 288,
        n_layers: 6,
        n_heads: 6,
        n_kv_heads: 6,
        explicit_head_dim: None,
        hidden_dim: 768,
        vocab_size: 32000,
        context_length: 256,
        rope_theta: 10000.0,
        rms_eps: 1e-5,
        tied_embeddings: false,
        llama3_rope: None,
        vocab: Vocab::LlamaSpm,
        conv_layers: &[],
    },
    Shape {
        name: "stories42M",
        source: STORIES,
        arch: Arch::Llama,
        dim: 512,
        n_layers: 8,
        n_heads: 8,
        n_kv_heads: 8,
        explicit_head_dim: None,
        hidden_dim: 1376,
        vocab_size: 32000,
        context_length: 1024,
        rope_theta: 10000.0,
        rms_eps: 1e-5,
        tied_embeddings: false,
        llama3_rope: None,
        vocab: Vocab::LlamaSpm,
        conv_layers: &[],
    },
    Shape {
        name: "stories110M",
        source: STORIES,
        arch: Arch::Llama,
        dim: 768,
        n_layers: 12,
        n_heads: 12,
        n_kv_heads: 12,
        explicit_head_dim: None,
        hidden_dim: 2048,
        vocab_size: 32000,
        context_length: 1024,
        rope_theta: 10000.0,
        rms_eps: 1e-5,
        tied_embeddings: false,
        llama3_rope: None,
        vocab: Vocab::LlamaSpm,
        conv_layers: &[],
    },
    Shape {
        name: "smollm2-135m",
        source: "HuggingFaceTB/SmolLM2-135M config.json",
        arch: Arch::Llama,
        dim: 576,
        n_layers: 30,
        n_heads: 9,
        n_kv_heads: 3,
        explicit_head_dim: None,
        hidden_dim: 1536,
        vocab_size: 49152,
        context_length: 8192,
        rope_theta: 100000.0,
        rms_eps: 1e-5,
        tied_embeddings: true,
        llama3_rope: None,
        vocab: Vocab::SmolLm,
        conv_layers: &[],
    },
    Shape {
        name: "smollm2-360m",
        source: "HuggingFaceTB/SmolLM2-360M config.json",
        arch: Arch::Llama,
        dim: 960,
        n_layers: 32,
        n_heads: 15,
        n_kv_heads: 5,
        explicit_head_dim: None,
        hidden_dim: 2560,
        vocab_size: 49152,
        context_length: 8192,
        rope_theta: 100000.0,
        rms_eps: 1e-5,
        tied_embeddings: true,
        llama3_rope: None,
        vocab: Vocab::SmolLm,
        conv_layers: &[],
    },
    Shape {
        name: "qwen2.5-0.5b",
        source: "Qwen/Qwen2.5-0.5B-Instruct config.json",
        arch: Arch::Qwen2,
        dim: 896,
        n_layers: 24,
        n_heads: 14,
        n_kv_heads: 2,
        explicit_head_dim: None,
        hidden_dim: 4864,
        vocab_size: 151936,
        context_length: 32768,
        rope_theta: 1000000.0,
        rms_eps: 1e-6,
        tied_embeddings: true,
        llama3_rope: None,
        vocab: Vocab::Qwen2,
        conv_layers: &[],
    },
    Shape {
        name: "qwen3-0.6b",
        source: "Qwen/Qwen3-0.6B config.json",
        arch: Arch::Qwen3,
        dim: 1024,
        n_layers: 28,
        n_heads: 16,
        n_kv_heads: 8,
        explicit_head_dim: Some(128),
        hidden_dim: 3072,
        vocab_size: 151936,
        context_length: 40960,
        rope_theta: 1000000.0,
        rms_eps: 1e-6,
        tied_embeddings: true,
        llama3_rope: None,
        vocab: Vocab::Qwen2,
        conv_layers: &[],
    },
    Shape {
        name: "qwen3-4b",
        source: "Qwen/Qwen3-4B config.json",
        arch: Arch::Qwen3,
        dim: 2560,
        n_layers: 36,
        n_heads: 32,
        n_kv_heads: 8,
        explicit_head_dim: Some(128),
        hidden_dim: 9728,
        vocab_size: 151936,
        context_length: 40960,
        rope_theta: 1000000.0,
        rms_eps: 1e-6,
        tied_embeddings: true,
        llama3_rope: None,
        vocab: Vocab::Qwen2,
        conv_layers: &[],
    },
    Shape {
        name: "llama3.2-1b",
        source: "meta-llama/Llama-3.2-1B-Instruct config.json",
        arch: Arch::Llama,
        dim: 2048,
        n_layers: 16,
        n_heads: 32,
        n_kv_heads: 8,
        explicit_head_dim: None,
        hidden_dim: 8192,
        vocab_size: 128256,
        context_length: 131072,
        rope_theta: 500000.0,
        rms_eps: 1e-5,
        tied_embeddings: true,
        llama3_rope: Some(Llama3Rope {
            factor: 32.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_context: 8192,
        }),
        vocab: Vocab::Llama3,
        conv_layers: &[],
    },
    Shape {
        name: "llama3.1-8b",
        source: "meta-llama/Llama-3.1-8B-Instruct config.json",
        arch: Arch::Llama,
        dim: 4096,
        n_layers: 32,
        n_heads: 32,
        n_kv_heads: 8,
        explicit_head_dim: None,
        hidden_dim: 14336,
        vocab_size: 128256,
        context_length: 131072,
        rope_theta: 500000.0,
        rms_eps: 1e-5,
        tied_embeddings: false,
        llama3_rope: Some(Llama3Rope {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_context: 8192,
        }),
        vocab: Vocab::Llama3,
        conv_layers: &[],
    },
    Shape {
        name: "tinyllama-1.1b",
        source: "TinyLlama/TinyLlama-1.1B-Chat-v1.0 config.json",
        arch: Arch::Llama,
        dim: 2048,
        n_layers: 22,
        n_heads: 32,
        n_kv_heads: 4,
        explicit_head_dim: None,
        hidden_dim: 5632,
        vocab_size: 32000,
        context_length: 2048,
        rope_theta: 10000.0,
        rms_eps: 1e-5,
        tied_embeddings: false,
        llama3_rope: None,
        vocab: Vocab::LlamaSpm,
        conv_layers: &[],
    },
    Shape {
        name: "qwen3-1.7b",
        source: "Qwen/Qwen3-1.7B config.json",
        arch: Arch::Qwen3,
        dim: 2048,
        n_layers: 28,
        n_heads: 16,
        n_kv_heads: 8,
        explicit_head_dim: Some(128),
        hidden_dim: 6144,
        vocab_size: 151936,
        context_length: 40960,
        rope_theta: 1000000.0,
        rms_eps: 1e-6,
        tied_embeddings: true,
        llama3_rope: None,
        vocab: Vocab::Qwen2,
        conv_layers: &[],
    },
    Shape {
        name: "lfm2.5-1.2b",
        // block_ff_dim 12288 with block_auto_adjust_ff_dim: int(2/3 · 12288)
        // rounded up to block_multiple_of 256 = 8192, as the converter
        // writes feed_forward_length; full_attn_idxs [2, 5, 8, 10, 12, 14].
        source: "LiquidAI/LFM2-1.2B config.json (LFM2.5-1.2B has the same shape)",
        arch: Arch::Lfm2,
        dim: 2048,
        n_layers: 16,
        n_heads: 32,
        n_kv_heads: 8,
        explicit_head_dim: None,
        hidden_dim: 8192,
        vocab_size: 65536,
        context_length: 128000,
        rope_theta: 1000000.0,
        rms_eps: 1e-5,
        tied_embeddings: true,
        llama3_rope: None,
        vocab: Vocab::Synthetic,
        conv_layers: &[0, 1, 3, 4, 6, 7, 9, 11, 13, 15],
    },
    Shape {
        name: "lfm2.5-2.6b",
        // block_ff_dim 10752 without auto-adjust; attention at layers
        // 2, 5, 9, 13, 17, 21, 24, 27.
        source: "LiquidAI/LFM2-2.6B config.json (LFM2.5 keeps the shape)",
        arch: Arch::Lfm2,
        dim: 2048,
        n_layers: 30,
        n_heads: 32,
        n_kv_heads: 8,
        explicit_head_dim: None,
        hidden_dim: 10752,
        vocab_size: 65536,
        context_length: 128000,
        rope_theta: 1000000.0,
        rms_eps: 1e-5,
        tied_embeddings: true,
        llama3_rope: None,
        vocab: Vocab::Synthetic,
        conv_layers: &[
            0, 1, 3, 4, 6, 7, 8, 10, 11, 12, 14, 15, 16, 18, 19, 20, 22, 23, 25, 26, 28, 29,
        ],
    },
    Shape {
        name: "gemma-3-270m",
        source: "google/gemma-3-270m config.json",
        arch: Arch::Gemma3,
        dim: 640,
        n_layers: 18,
        n_heads: 4,
        n_kv_heads: 1,
        explicit_head_dim: Some(256),
        hidden_dim: 2048,
        vocab_size: 262144,
        context_length: 32768,
        rope_theta: 1_000_000.0,
        rms_eps: 1e-6,
        tied_embeddings: true,
        llama3_rope: None,
        // Gemma's own tokenizer is not in testdata/.
        vocab: Vocab::Synthetic,
        conv_layers: &[],
    },
    Shape {
        name: "phi-3-mini-4k",
        source: "microsoft/Phi-3-mini-4k-instruct config.json",
        arch: Arch::Phi3,
        dim: 3072,
        n_layers: 32,
        n_heads: 32,
        n_kv_heads: 32,
        explicit_head_dim: None,
        hidden_dim: 8192,
        vocab_size: 32064,
        context_length: 4096,
        rope_theta: 10000.0,
        rms_eps: 1e-5,
        tied_embeddings: false,
        llama3_rope: None,
        vocab: Vocab::Phi3,
        conv_layers: &[],
    },
];

/// The shape called `name` (case-insensitive).
pub fn shape(name: &str) -> Option<&'static Shape> {
    SHAPES.iter().find(|s| s.name.eq_ignore_ascii_case(name))
}

//! Hyperparameters, resolved once from the file's metadata.

use super::arch::Architecture;
use super::ModelError;
use crate::format::gguf::{Gguf, Value};
use serde::{Deserialize, Serialize};

/// Sanity caps on hyperparameters (a hostile header must not make us
/// allocate absurd buffers before tensor shapes are checked).
const MAX_DIM: usize = 1 << 16;
const MAX_LAYERS: usize = 1 << 10;
const MAX_HEADS: usize = 1 << 10;
const MAX_VOCAB: usize = 1 << 22;
const MAX_CONV_KERNEL: usize = 64;

/// The hyperparameter a config check is about, so each format can name its
/// own key in the error (GGUF `llama.attention.head_count`, HF `num_attention_heads`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigField {
    Dim,
    Heads,
    KvHeads,
    HeadDim,
    RopeDims,
    RmsEps,
    RopeBase,
    RopeScale,
    SlidingWindow,
}

/// Everything the forward pass needs to know about a model's shapes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub arch: Architecture,
    /// Context length the model was trained with (a job may use more).
    pub context_length: usize,
    /// Width of the residual stream (`embedding_length`).
    pub dim: usize,
    pub n_layers: usize,
    /// Width of the FFN hidden layer (`feed_forward_length`).
    pub hidden_dim: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub vocab_size: usize,
    pub rms_eps: f32,
    pub rope_freq_base: f32,
    /// Multiplies every RoPE frequency: 1 unless the model uses linear
    /// scaling (then 1 / factor). Llama 3.1's per-frequency factors are a
    /// tensor (`rope_freqs.weight`), not part of the config.
    pub rope_freq_scale: f32,
    /// Leading dimensions of each head that RoPE rotates.
    pub rope_dims: usize,
    /// Per-head width: `attention.key_length` if given, else `dim / n_heads`.
    pub head_dim: usize,
    /// Width of Q and of the attention output: `n_heads * head_dim`.
    pub q_dim: usize,
    /// Width of one K (or V) row in the cache: `n_kv_heads * head_dim`.
    pub kv_dim: usize,
    /// Query heads sharing one kv head: `n_heads / n_kv_heads`.
    pub n_kv_groups: usize,
    /// End-of-sequence token (`tokenizer.ggml.eos_token_id`), if the file names one.
    pub eos_token_id: Option<u32>,
    /// Sliding-window attention: a sliding layer's query at position `p`
    /// sees positions `p - sliding_window + 1 ..= p` (llama.cpp's standard
    /// window); 0 when no layer slides.
    #[serde(default)]
    pub sliding_window: u32,
    /// Which layers slide (`n_layers` entries, or none when `sliding_window` is 0).
    #[serde(default)]
    pub swa_layers: Vec<bool>,
    /// RoPE base of the sliding layers (the others use `rope_freq_base`).
    #[serde(default)]
    pub rope_freq_base_swa: Option<f32>,
    /// The attention's score scale when it is not `1 / √head_dim`
    /// (Gemma 3 27B's `1 / √(dim / n_heads)`).
    #[serde(default)]
    pub attention_scale: Option<f32>,
    /// Final logit soft-capping `c · tanh(logit / c)` (Gemma's
    /// `final_logit_softcapping`), when the file sets one.
    #[serde(default)]
    pub final_logit_softcap: Option<f32>,
    /// Which layers are short convolutions rather than attention (LFM2):
    /// `n_layers` entries, or none when every layer attends.
    #[serde(default)]
    pub conv_layers: Vec<bool>,
    /// Taps of the short convolution (`shortconv.l_cache`; 0 without conv
    /// layers): each conv layer keeps its last `conv_kernel - 1` input rows.
    #[serde(default)]
    pub conv_kernel: usize,
    /// Multiplies RoPE's cos and sin (`rope.scaling.attn_factor`, 1 when
    /// absent), as ggml's `rope_ext` applies its `attn_factor` without YaRN:
    /// Phi-3 128k's `√(1 + ln(scale) / ln(original context))`.
    #[serde(default = "one")]
    pub rope_attn_factor: f32,
    /// Set when the file carries LongRoPE factors (Phi-3 128k): the original
    /// context length (`rope.scaling.original_context_length`, else
    /// `context_length`). A sequence whose context is at most this long
    /// rotates with the short factors, a longer one with the long factors,
    /// as in llama.cpp.
    #[serde(default)]
    pub longrope_context: Option<u32>,
}

fn one() -> f32 {
    1.0
}

impl ModelConfig {
    /// Reads `general.architecture` and the `{arch}.*` keys; the vocabulary
    /// size comes from the token embedding tensor.
    pub fn from_gguf(gguf: &Gguf) -> Result<ModelConfig, ModelError> {
        let arch_name = gguf.get_str("general.architecture")?;
        let arch = Architecture::from_name(arch_name).ok_or_else(|| ModelError::UnknownArchitecture {
            name: arch_name.to_string(),
            supported: Architecture::supported_names(),
        })?;
        let key = |k: &str| format!("{arch_name}.{k}");
        let count = |k: &str, max: usize| -> Result<usize, ModelError> {
            let k = key(k);
            let v = gguf.get_u64(&k)?;
            positive(&k, v, max)
        };
        let optional = |k: &str| gguf.get(&key(k));

        let context_length = count("context_length", usize::MAX)?;
        let dim = count("embedding_length", MAX_DIM)?;
        let n_layers = count("block_count", MAX_LAYERS)?;
        let hidden_dim = count("feed_forward_length", MAX_DIM * 8)?;
        let n_heads = count("attention.head_count", MAX_HEADS)?;
        let kv_key = key("attention.head_count_kv");
        let (n_kv_heads, conv_layers) = match optional("attention.head_count_kv") {
            None => (n_heads, Vec::new()),
            Some(Value::Array(per_layer)) => kv_heads_per_layer(&kv_key, per_layer, n_layers, arch.spec().short_conv)?,
            Some(v) => (positive(&kv_key, as_u64(&kv_key, v)?, MAX_HEADS)?, Vec::new()),
        };
        let conv_kernel = if conv_layers.is_empty() {
            0
        } else {
            let k = key("shortconv.l_cache");
            let taps = gguf.get_u64(&k)?;
            if !(2..=MAX_CONV_KERNEL as u64).contains(&taps) {
                return Err(bad(&k, &format!("{taps} is outside 2..={MAX_CONV_KERNEL}")));
            }
            taps as usize
        };
        // llama.cpp's lfm2 slides the window of every attention layer when
        // the file gives one (LFM2.5's audio tokenizer); not supported here.
        if arch.spec().short_conv {
            let k = key("attention.sliding_window");
            if let Some(w) = gguf.get(&k).and_then(|v| v.as_u64()).filter(|&w| w > 0) {
                return Err(bad(
                    &k,
                    &format!("a sliding window ({w}) is not supported for {arch_name}"),
                ));
            }
        }
        let rms_eps = gguf.get_f64(&key("attention.layer_norm_rms_epsilon"))? as f32;
        let rope_freq_base = match optional("rope.freq_base") {
            None => 10000.0,
            Some(v) => v
                .as_f64()
                .ok_or_else(|| bad(&key("rope.freq_base"), "expected a number"))? as f32,
        };
        let head_dim = match optional("attention.key_length") {
            None => dim / n_heads,
            Some(v) => positive(
                &key("attention.key_length"),
                as_u64(&key("attention.key_length"), v)?,
                MAX_DIM,
            )?,
        };
        let rope_dims = match optional("rope.dimension_count") {
            None => head_dim,
            Some(v) => as_u64(&key("rope.dimension_count"), v)? as usize,
        };
        let eos_token_id = gguf
            .get("tokenizer.ggml.eos_token_id")
            .and_then(|v| v.as_u64())
            .map(|v| v as u32);

        let embd = gguf
            .tensor("token_embd.weight")
            .ok_or(ModelError::MissingTensor("token_embd.weight".into()))?;
        let vocab_size = match embd.dims.as_slice() {
            [d, v] if *d as usize == dim => positive("token_embd.weight rows", *v, MAX_VOCAB)?,
            _ => {
                return Err(ModelError::TensorShape {
                    name: "token_embd.weight".into(),
                    expected: format!("[{dim}, vocab]"),
                    found: format!("{:?}", embd.dims),
                })
            }
        };

        let rope_freq_scale = rope_scale_from_gguf(gguf, arch_name)?;
        let swa = SlidingWindow::from_gguf(gguf, arch_name, arch.spec().swa_default_pattern, n_layers)?;
        let final_logit_softcap = match optional("final_logit_softcapping") {
            None => None,
            Some(v) => {
                let c = v
                    .as_f64()
                    .ok_or_else(|| bad(&key("final_logit_softcapping"), "expected a number"))?;
                (c != 0.0).then_some(c as f32)
            }
        };
        let rope_attn_factor = match optional("rope.scaling.attn_factor") {
            None => 1.0,
            Some(v) => {
                v.as_f64()
                    .ok_or_else(|| bad(&key("rope.scaling.attn_factor"), "expected a number"))? as f32
            }
        };
        let longrope_context = longrope_context_from_gguf(gguf, arch_name, arch, context_length)?;
        if dim % n_heads != 0 && optional("attention.key_length").is_none() {
            return Err(bad(
                &key("embedding_length"),
                &format!("{dim} is not a multiple of head_count {n_heads}"),
            ));
        }
        let config = ModelConfig {
            arch,
            context_length,
            dim,
            n_layers,
            hidden_dim,
            n_heads,
            n_kv_heads,
            vocab_size,
            rms_eps,
            rope_freq_base,
            rope_dims,
            head_dim,
            q_dim: n_heads * head_dim,
            kv_dim: n_kv_heads * head_dim,
            n_kv_groups: n_heads / n_kv_heads,
            eos_token_id,
            rope_freq_scale,
            sliding_window: swa.window,
            swa_layers: swa.layers,
            rope_freq_base_swa: swa.rope_freq_base,
            attention_scale: gemma3_attention_scale(arch, n_layers, dim, n_heads),
            final_logit_softcap,
            conv_layers,
            conv_kernel,
            rope_attn_factor,
            longrope_context,
        };
        config.check(|field| {
            key(match field {
                ConfigField::Dim => "embedding_length",
                ConfigField::Heads => "attention.head_count",
                ConfigField::KvHeads => "attention.head_count_kv",
                ConfigField::HeadDim => "attention.key_length",
                ConfigField::RopeDims => "rope.dimension_count",
                ConfigField::RmsEps => "attention.layer_norm_rms_epsilon",
                ConfigField::RopeBase => "rope.freq_base",
                ConfigField::RopeScale => "rope.scaling.factor",
                ConfigField::SlidingWindow => "attention.sliding_window_pattern",
            })
        })?;
        Ok(config)
    }

    /// The config of layers `layers` of this model seen as a model of their
    /// own (a shard's part, see [`crate::model::ModelPart`]): the same widths,
    /// `n_layers` = the range's length, per-layer choices (sliding, conv)
    /// those of the range. Layer `i` of the slice is layer `layers.start + i`.
    pub fn slice_layers(&self, layers: std::ops::Range<usize>) -> ModelConfig {
        let slice = |v: &[bool]| v.get(layers.clone()).map(<[bool]>::to_vec).unwrap_or_default();
        ModelConfig {
            n_layers: layers.len(),
            swa_layers: slice(&self.swa_layers),
            conv_layers: slice(&self.conv_layers),
            ..self.clone()
        }
    }

    /// Whether `layer` is a short-convolution layer (no attention, no KV rows).
    pub fn is_conv(&self, layer: usize) -> bool {
        self.conv_layers.get(layer).copied().unwrap_or(false)
    }

    /// The KV cache's layer index of `layer`: the cache holds the attention
    /// layers only, in order; `None` for a conv layer.
    pub fn kv_layer(&self, layer: usize) -> Option<usize> {
        (!self.is_conv(layer)).then(|| (0..layer).filter(|&l| !self.is_conv(l)).count())
    }

    /// Layers with KV rows (attention layers).
    pub fn n_kv_layers(&self) -> usize {
        (0..self.n_layers).filter(|&l| !self.is_conv(l)).count()
    }

    /// Index of a conv layer among the conv layers (its slot in the job's
    /// conv state); `None` for an attention layer.
    pub fn conv_layer(&self, layer: usize) -> Option<usize> {
        self.is_conv(layer)
            .then(|| (0..layer).filter(|&l| self.is_conv(l)).count())
    }

    /// Floats of a job's conv state: `conv_kernel - 1` rows of `dim` per
    /// conv layer (0 without conv layers).
    pub fn conv_state_len(&self) -> usize {
        let n_conv = self.conv_layers.iter().filter(|&&c| c).count();
        n_conv * self.conv_kernel.saturating_sub(1) * self.dim
    }

    /// The longest context a job of this model gets by default: the
    /// trained `context_length`, or the original one when the file has
    /// LongRoPE factors (see [`ModelConfig::longrope_context`]), so that a
    /// job asks for the long factors explicitly.
    pub fn usable_context(&self) -> usize {
        let limit = self.longrope_context.map_or(usize::MAX, |l| l as usize);
        self.context_length.min(limit)
    }

    /// The window of `layer` if it is a sliding-window layer.
    pub fn attention_window(&self, layer: usize) -> Option<u32> {
        let slides = self.sliding_window > 0 && self.swa_layers.get(layer).copied().unwrap_or(false);
        slides.then_some(self.sliding_window)
    }

    /// Consistency checks shared by every format; `key` names the field in
    /// the format's own terms for the error message.
    pub fn check(&self, key: impl Fn(ConfigField) -> String) -> Result<(), ModelError> {
        let c = self;
        let err = |field, reason: String| Err(bad(&key(field), &reason));
        if !c.n_heads.is_multiple_of(c.n_kv_heads) {
            return err(
                ConfigField::KvHeads,
                format!(
                    "head count {} is not a multiple of the kv head count {}",
                    c.n_heads, c.n_kv_heads
                ),
            );
        }
        if !c.head_dim.is_multiple_of(2) {
            return err(ConfigField::HeadDim, format!("head dimension {} is odd", c.head_dim));
        }
        if !c.rope_dims.is_multiple_of(2) || c.rope_dims > c.head_dim {
            return err(
                ConfigField::RopeDims,
                format!(
                    "{} must be even and at most the head dimension {}",
                    c.rope_dims, c.head_dim
                ),
            );
        }
        if !(c.rms_eps.is_finite() && c.rms_eps >= 0.0) {
            return err(ConfigField::RmsEps, format!("{} is not a valid epsilon", c.rms_eps));
        }
        if !(c.rope_freq_base.is_finite() && c.rope_freq_base > 0.0) {
            return err(
                ConfigField::RopeBase,
                format!("{} is not a positive number", c.rope_freq_base),
            );
        }
        if let Some(base) = c.rope_freq_base_swa {
            if !(base.is_finite() && base > 0.0) {
                return err(
                    ConfigField::RopeBase,
                    format!("{base} (sliding layers) is not a positive number"),
                );
            }
        }
        if c.sliding_window > 0 && c.swa_layers.len() != c.n_layers {
            return err(
                ConfigField::SlidingWindow,
                format!("the pattern names {} layers, not {}", c.swa_layers.len(), c.n_layers),
            );
        }
        if !c.conv_layers.is_empty() && (c.conv_layers.len() != c.n_layers || c.conv_kernel < 2) {
            return err(
                ConfigField::KvHeads,
                format!(
                    "{} conv-layer flags for {} layers, kernel {}",
                    c.conv_layers.len(),
                    c.n_layers,
                    c.conv_kernel
                ),
            );
        }
        for (what, v) in [
            ("attention scale", c.attention_scale),
            ("logit soft-cap", c.final_logit_softcap),
        ] {
            if let Some(v) = v.filter(|v| !(v.is_finite() && *v > 0.0)) {
                return err(ConfigField::Dim, format!("{what} {v} is not a positive number"));
            }
        }
        if !(c.rope_attn_factor.is_finite() && c.rope_attn_factor > 0.0) {
            return err(
                ConfigField::RopeScale,
                format!("attention factor {} is not a positive number", c.rope_attn_factor),
            );
        }
        if !(c.rope_freq_scale.is_finite() && c.rope_freq_scale > 0.0) {
            return err(
                ConfigField::RopeScale,
                format!("frequency scale {} is not a positive number", c.rope_freq_scale),
            );
        }
        Ok(())
    }
}

/// A per-layer `attention.head_count_kv` array: the kv head count of the
/// attention layers (one count for all: the KV cache has one row width) and,
/// when the architecture has short-convolution layers, which layers have 0
/// (those are conv layers, as llama.cpp's `lfm2` reads it).
fn kv_heads_per_layer(
    key: &str,
    per_layer: &[Value],
    n_layers: usize,
    short_conv: bool,
) -> Result<(usize, Vec<bool>), ModelError> {
    if per_layer.len() != n_layers {
        return Err(bad(key, &format!("{} entries for {n_layers} layers", per_layer.len())));
    }
    let counts = per_layer
        .iter()
        .map(|v| as_u64(key, v))
        .collect::<Result<Vec<u64>, _>>()?;
    let mut attending = counts.iter().filter(|&&n| n > 0);
    let Some(&first) = attending.next() else {
        return Err(bad(key, "no layer has kv heads"));
    };
    if attending.any(|&n| n != first) {
        return Err(bad(
            key,
            &format!("differing kv head counts {counts:?} are not supported"),
        ));
    }
    let n_kv_heads = positive(key, first, MAX_HEADS)?;
    let conv_layers: Vec<bool> = counts.iter().map(|&n| n == 0).collect();
    if !conv_layers.contains(&true) {
        return Ok((n_kv_heads, Vec::new()));
    }
    if !short_conv {
        return Err(bad(
            key,
            "a layer with 0 kv heads needs an architecture with short-convolution layers",
        ));
    }
    Ok((n_kv_heads, conv_layers))
}

/// Which layers attend through a sliding window, as llama.cpp reads it.
struct SlidingWindow {
    window: u32,
    layers: Vec<bool>,
    rope_freq_base: Option<f32>,
}

impl SlidingWindow {
    /// `{arch}.attention.sliding_window` (absent or 0: no window), and
    /// `{arch}.attention.sliding_window_pattern`: per-layer booleans, or a
    /// period `n` (layer `l` slides when `l % n < n - 1`; 0: every layer),
    /// else the architecture's default period. The sliding layers' RoPE
    /// base is `{arch}.rope.freq_base_swa`, else 10,000 (llama.cpp's default).
    /// Architectures without sliding layers ignore the keys, as llama.cpp does.
    fn from_gguf(gguf: &Gguf, arch: &str, default_pattern: Option<u32>, n_layers: usize) -> Result<Self, ModelError> {
        let none = SlidingWindow {
            window: 0,
            layers: Vec::new(),
            rope_freq_base: None,
        };
        let Some(default_pattern) = default_pattern else {
            return Ok(none);
        };
        let window_key = format!("{arch}.attention.sliding_window");
        let window = match gguf.get(&window_key) {
            None => 0,
            Some(v) => as_u64(&window_key, v)?,
        };
        if window == 0 {
            return Ok(none);
        }
        let window = u32::try_from(window).map_err(|_| bad(&window_key, &format!("{window} is too large")))?;
        let pattern_key = format!("{arch}.attention.sliding_window_pattern");
        let periodic = |n: u64| (0..n_layers as u64).map(|l| n == 0 || l % n < n - 1).collect();
        let layers = match gguf.get(&pattern_key) {
            None => periodic(default_pattern as u64),
            Some(Value::Array(flags)) => flags
                .iter()
                .map(|f| f.as_bool())
                .collect::<Option<Vec<bool>>>()
                .ok_or_else(|| bad(&pattern_key, "expected booleans"))?,
            Some(v) => periodic(as_u64(&pattern_key, v)?),
        };
        let base_key = format!("{arch}.rope.freq_base_swa");
        let rope_freq_base = match gguf.get(&base_key) {
            None => 10_000.0,
            Some(v) => v.as_f64().ok_or_else(|| bad(&base_key, "expected a number"))? as f32,
        };
        Ok(SlidingWindow {
            window,
            layers,
            rope_freq_base: Some(rope_freq_base),
        })
    }
}

/// Gemma 3 27B scales queries by `1 / √(dim / n_heads)` rather than
/// `1 / √head_dim`; GGUF does not say so, and llama.cpp recognizes the model
/// by its 62 layers, as here.
fn gemma3_attention_scale(arch: Architecture, n_layers: usize, dim: usize, n_heads: usize) -> Option<f32> {
    (arch == Architecture::Gemma3 && n_layers == 62).then(|| 1.0 / ((dim / n_heads) as f32).sqrt())
}

/// The names of the LongRoPE factor tensors (global, `rope_dims / 2` values each).
pub const ROPE_FACTORS_SHORT: &str = "rope_factors_short.weight";
pub const ROPE_FACTORS_LONG: &str = "rope_factors_long.weight";

/// The original context length of a file with LongRoPE factors (either
/// tensor present, for an architecture that has them):
/// `{arch}.rope.scaling.original_context_length`, else `context_length`,
/// as llama.cpp's `n_ctx_orig_yarn` defaults. `None` without factors.
fn longrope_context_from_gguf(
    gguf: &Gguf,
    arch_name: &str,
    arch: Architecture,
    context_length: usize,
) -> Result<Option<u32>, ModelError> {
    let has_factors = [ROPE_FACTORS_SHORT, ROPE_FACTORS_LONG]
        .iter()
        .any(|name| gguf.tensor(name).is_some());
    if !(arch.spec().longrope_factors && has_factors) {
        return Ok(None);
    }
    let key = format!("{arch_name}.rope.scaling.original_context_length");
    let original = match gguf.get(&key) {
        None => context_length as u64,
        Some(v) => positive(&key, as_u64(&key, v)?, u32::MAX as usize)? as u64,
    };
    Ok(Some(original.min(u32::MAX as u64) as u32))
}

/// `{arch}.rope.scaling.type` and `.factor`: "none" (or absent) gives 1,
/// "linear" gives 1 / factor; other kinds (yarn, longrope) are refused.
/// Llama 3.1 GGUF files carry their scaling as the `rope_freqs.weight` tensor.
fn rope_scale_from_gguf(gguf: &Gguf, arch: &str) -> Result<f32, ModelError> {
    let type_key = format!("{arch}.rope.scaling.type");
    let factor_key = format!("{arch}.rope.scaling.factor");
    let kind = match gguf.get(&type_key) {
        None => "none",
        Some(v) => v
            .as_str()
            .ok_or_else(|| bad(&type_key, &format!("expected a string, found {}", v.type_name())))?,
    };
    match kind {
        "none" => Ok(1.0),
        "linear" => {
            let factor = gguf
                .get(&factor_key)
                .and_then(|v| v.as_f64())
                .ok_or_else(|| bad(&factor_key, "linear RoPE scaling needs a numeric factor"))?;
            if !(factor.is_finite() && factor > 0.0) {
                return Err(bad(&factor_key, &format!("{factor} is not a positive number")));
            }
            Ok((1.0 / factor) as f32)
        }
        other => Err(bad(
            &type_key,
            &format!("RoPE scaling {other:?} is not supported (supported: none, linear)"),
        )),
    }
}

pub(crate) fn bad(key: &str, reason: &str) -> ModelError {
    ModelError::BadConfig {
        key: key.to_string(),
        reason: reason.to_string(),
    }
}

fn as_u64(key: &str, v: &Value) -> Result<u64, ModelError> {
    v.as_u64().ok_or_else(|| {
        bad(
            key,
            &format!("expected a non-negative integer, found {}", v.type_name()),
        )
    })
}

fn positive(key: &str, v: u64, max: usize) -> Result<usize, ModelError> {
    if v == 0 || v > max as u64 {
        return Err(bad(key, &format!("{v} is outside 1..={max}")));
    }
    Ok(v as usize)
}

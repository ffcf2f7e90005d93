//! Hugging Face checkpoints: `config.json` plus one or several
//! `*.safetensors` shards (F32, F16 or BF16 tensors).
//!
//! This module plays the part of llama.cpp's `convert_hf_to_gguf.py` at load
//! time, so that the rest of the engine sees exactly what a GGUF file gives:
//! - [`HfConfig`] mirrors `config.json` with `Option`s and resolves into the
//!   engine's [`ModelConfig`] ([`HfConfig::resolve`]);
//! - HF tensor names (`model.layers.N.self_attn.q_proj.weight`, …) are mapped
//!   onto the loader's GGUF names (`blk.N.attn_q.weight`, …) here and nowhere
//!   else;
//! - **q/k row order.** HF llama checkpoints apply RoPE to the two halves of
//!   each head (`rotate_half`); GGUF llama applies it to adjacent pairs,
//!   because the converter permutes the rows of `q_proj` and `k_proj` (within
//!   each head, row `i * head_dim/2 + j` moves to `2j + i`). This loader
//!   applies the same permutation when the architecture's row uses
//!   [`RopeStyle::Normal`], so a llama checkpoint loaded from HF is the same
//!   model, bit for bit, as its GGUF conversion. Qwen2/Qwen3 use NeoX RoPE in
//!   GGUF too and are not permuted;
//! - **RoPE scaling.** `rope_scaling` of type `llama3` becomes the
//!   `rope_freqs.weight` tensor the converter would write
//!   ([`llama3_rope_freq_factors`]); `linear` becomes a frequency scale;
//! - **F16 and BF16** tensors are kept in their type, as [`super::convert`]
//!   keeps them in the GGUF file, so both load to the same matrices (widened
//!   to f32 rows at load when they fit, as any GGUF's) and bit-identical
//!   logits: their activations are rounded to f16 or bf16, as llama.cpp's
//!   CPU backend rounds them for such weights.
//!
//! Loading is incremental like GGUF's: [`HfLoader::new`] takes the config and
//! the shard headers (a few kilobytes at the start of each file, see
//! [`ShardHeader::parse`]); then [`HfLoader::next_needed`] says which tensor
//! of which file to read next and [`HfLoader::add_tensor`] takes its bytes.
//! A canister can feed files uploaded one by one; [`load_dir`] does it all
//! natively.

use crate::format::gguf::TensorInfo;
use crate::kernels::{llama3_rope_freq_factors, RopeStyle};
use crate::model::config::ConfigField;
use crate::model::{wanted_tensors, Architecture, Model, ModelConfig, ModelError, ModelLoader};
use crate::tensor::GgmlType;
use safetensors::tensor::{Dtype, Metadata};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::ops::Range;

/// File names of a checkpoint directory.
pub const CONFIG_FILE: &str = "config.json";
pub const SINGLE_SHARD_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";
pub const TOKENIZER_FILE: &str = "tokenizer.json";
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";

/// Largest safetensors header accepted (the crate's own cap is 100 MB; real
/// headers are tens of kilobytes).
pub const MAX_HEADER_BYTES: u64 = 16 << 20;

/// What is wrong with a Hugging Face checkpoint.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HfError {
    #[error("{file}: {reason}")]
    Json { file: String, reason: String },
    #[error("{file}: not a valid safetensors file: {reason}")]
    Header { file: String, reason: String },
    #[error("shard {file:?} (named by {INDEX_FILE}) is missing")]
    MissingShard { file: String },
    #[error("no safetensors file in the checkpoint (expected {SINGLE_SHARD_FILE} or {INDEX_FILE})")]
    NoShards,
    #[error("the checkpoint has no tensor {0:?}")]
    MissingTensor(String),
    #[error("tensor {name:?} appears in both {first} and {second}")]
    DuplicateTensor {
        name: String,
        first: String,
        second: String,
    },
    #[error("tensor {name:?} has dtype {dtype}, which is not supported (supported: F32, F16, BF16)")]
    Dtype { name: String, dtype: String },
    #[error("tensor {name:?} has shape {found:?}, expected {expected:?}")]
    Shape {
        name: String,
        expected: Vec<u64>,
        found: Vec<u64>,
    },
    #[error("tensor {name:?}: {reason}")]
    Bytes { name: String, reason: String },
    #[error("tensor {0:?} is not one the model needs, or was already added")]
    UnexpectedTensor(String),
}

impl From<HfError> for ModelError {
    fn from(e: HfError) -> ModelError {
        ModelError::Hf(e)
    }
}

/// A token id or a list of them (`eos_token_id` of Llama 3.1 is a list).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

impl TokenIds {
    pub fn ids(&self) -> Vec<u32> {
        match self {
            TokenIds::One(id) => vec![*id],
            TokenIds::Many(ids) => ids.clone(),
        }
    }
}

/// `rope_scaling` (or transformers 5's `rope_parameters`) of `config.json`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct HfRopeScaling {
    /// `"llama3"`, `"linear"`, `"default"`, …
    pub rope_type: Option<String>,
    /// Older spelling of `rope_type`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub factor: Option<f64>,
    pub low_freq_factor: Option<f64>,
    pub high_freq_factor: Option<f64>,
    pub original_max_position_embeddings: Option<usize>,
    /// transformers 5 moves `rope_theta` here.
    pub rope_theta: Option<f64>,
}

impl HfRopeScaling {
    fn kind(&self) -> &str {
        self.rope_type.as_deref().or(self.kind.as_deref()).unwrap_or("default")
    }
}

/// `config.json`, field by field, every field optional (step one of two:
/// [`HfConfig::resolve`] checks and fills in defaults).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct HfConfig {
    pub architectures: Option<Vec<String>>,
    pub model_type: Option<String>,
    pub hidden_size: Option<usize>,
    pub intermediate_size: Option<usize>,
    pub num_hidden_layers: Option<usize>,
    pub num_attention_heads: Option<usize>,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    pub rms_norm_eps: Option<f64>,
    pub rope_theta: Option<f64>,
    pub rope_scaling: Option<HfRopeScaling>,
    pub rope_parameters: Option<HfRopeScaling>,
    pub max_position_embeddings: Option<usize>,
    pub vocab_size: Option<usize>,
    pub tie_word_embeddings: Option<bool>,
    pub attention_bias: Option<bool>,
    pub bos_token_id: Option<TokenIds>,
    pub eos_token_id: Option<TokenIds>,
}

/// Defaults of transformers' `LlamaConfig` / `Qwen2Config` where a field is absent.
const DEFAULT_RMS_EPS: f64 = 1e-6;
const DEFAULT_ROPE_THETA: f64 = 10000.0;
const DEFAULT_CONTEXT: usize = 2048;

impl HfConfig {
    pub fn from_json(text: &str) -> Result<HfConfig, HfError> {
        serde_json::from_str(text).map_err(|e| HfError::Json {
            file: CONFIG_FILE.into(),
            reason: format!("not a valid model config: {e}"),
        })
    }

    /// The architecture row: `model_type`, else the first `architectures`
    /// entry with its `ForCausalLM` suffix dropped (`Qwen2ForCausalLM` → qwen2).
    pub fn architecture(&self) -> Result<Architecture, ModelError> {
        let name = match (&self.model_type, self.architectures.as_ref().and_then(|a| a.first())) {
            (Some(t), _) => t.clone(),
            (None, Some(a)) => a.strip_suffix("ForCausalLM").unwrap_or(a).to_ascii_lowercase(),
            (None, None) => {
                return Err(bad_key(
                    "model_type",
                    "missing (and no \"architectures\" entry to infer it from)",
                ))
            }
        };
        // Gemma's checkpoints store norm weights as `w` for `x · (1 + w)`
        // and name tensors otherwise: only the GGUF route takes them.
        let supported = [Architecture::Llama, Architecture::Qwen2, Architecture::Qwen3];
        Architecture::from_name(&name)
            .filter(|a| supported.contains(a))
            .ok_or_else(|| ModelError::UnknownArchitecture {
                name,
                supported: supported.map(|a| a.spec().name).join(", "),
            })
    }

    fn rope(&self) -> Option<&HfRopeScaling> {
        self.rope_scaling.as_ref().or(self.rope_parameters.as_ref())
    }

    /// The factor of `linear` RoPE scaling, if the config asks for it
    /// ([`Self::resolve`] checks it is a positive number).
    pub fn linear_rope_factor(&self) -> Option<f64> {
        self.rope().filter(|r| r.kind() == "linear").and_then(|r| r.factor)
    }

    /// Step two: the engine's config. Required: hidden_size,
    /// intermediate_size, num_hidden_layers, num_attention_heads, vocab_size.
    pub fn resolve(&self) -> Result<ModelConfig, ModelError> {
        let arch = self.architecture()?;
        let required = |v: Option<usize>, key: &str| -> Result<usize, ModelError> {
            match v {
                None => Err(bad_key(key, "missing")),
                Some(0) => Err(bad_key(key, "must be at least 1")),
                Some(v) if v > 1 << 22 => Err(bad_key(key, &format!("{v} is implausibly large"))),
                Some(v) => Ok(v),
            }
        };
        let dim = required(self.hidden_size, "hidden_size")?;
        let hidden_dim = required(self.intermediate_size, "intermediate_size")?;
        let n_layers = required(self.num_hidden_layers, "num_hidden_layers")?;
        let n_heads = required(self.num_attention_heads, "num_attention_heads")?;
        let vocab_size = required(self.vocab_size, "vocab_size")?;
        let n_kv_heads = required(self.num_key_value_heads.or(Some(n_heads)), "num_key_value_heads")?;
        let head_dim = match self.head_dim {
            Some(h) => required(Some(h), "head_dim")?,
            None if dim % n_heads == 0 => dim / n_heads,
            None => {
                return Err(bad_key(
                    "hidden_size",
                    &format!("{dim} is not a multiple of num_attention_heads {n_heads}"),
                ))
            }
        };
        let context_length = required(
            self.max_position_embeddings.or(Some(DEFAULT_CONTEXT)),
            "max_position_embeddings",
        )?;
        let rope_theta = self
            .rope_theta
            .or(self.rope().and_then(|r| r.rope_theta))
            .unwrap_or(DEFAULT_ROPE_THETA);
        let rope_freq_scale = match self.rope() {
            Some(r) if r.kind() == "linear" => match r.factor {
                Some(f) if f.is_finite() && f > 0.0 => (1.0 / f) as f32,
                _ => return Err(bad_key("rope_scaling.factor", "linear scaling needs a positive factor")),
            },
            Some(r) if matches!(r.kind(), "default" | "llama3") => 1.0,
            Some(r) => {
                return Err(bad_key(
                    "rope_scaling",
                    &format!(
                        "RoPE scaling {:?} is not supported (supported: default, linear, llama3)",
                        r.kind()
                    ),
                ))
            }
            None => 1.0,
        };
        if self.attention_bias == Some(true) && !arch.spec().qkv_bias {
            return Err(bad_key(
                "attention_bias",
                &format!(
                    "biases on attention projections are not supported for {}",
                    arch.spec().name
                ),
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
            rms_eps: self.rms_norm_eps.unwrap_or(DEFAULT_RMS_EPS) as f32,
            rope_freq_base: rope_theta as f32,
            rope_freq_scale,
            rope_dims: head_dim,
            head_dim,
            q_dim: n_heads * head_dim,
            kv_dim: n_kv_heads * head_dim,
            n_kv_groups: n_heads / n_kv_heads,
            eos_token_id: self.eos_token_id.as_ref().and_then(|e| e.ids().first().copied()),
            sliding_window: 0,
            swa_layers: Vec::new(),
            rope_freq_base_swa: None,
            attention_scale: None,
            final_logit_softcap: None,
            conv_layers: Vec::new(),
            conv_kernel: 0,
            rope_attn_factor: 1.0,
            longrope_context: None,
        };
        config.check(|field| {
            match field {
                ConfigField::Dim => "hidden_size",
                ConfigField::Heads => "num_attention_heads",
                ConfigField::KvHeads => "num_key_value_heads",
                ConfigField::HeadDim => "head_dim",
                ConfigField::RopeDims => "head_dim",
                ConfigField::RmsEps => "rms_norm_eps",
                ConfigField::RopeBase => "rope_theta",
                ConfigField::RopeScale => "rope_scaling.factor",
                ConfigField::SlidingWindow => "sliding_window",
            }
            .to_string()
        })?;
        Ok(config)
    }

    /// Llama 3.1's per-frequency RoPE divisors when `rope_scaling` has type
    /// `llama3` (what the converter writes as `rope_freqs.weight`).
    pub fn rope_freq_factors(&self, config: &ModelConfig) -> Result<Option<Vec<f32>>, ModelError> {
        let Some(r) = self.rope().filter(|r| r.kind() == "llama3") else {
            return Ok(None);
        };
        let need = |v: Option<f64>, key: &str| {
            v.filter(|v| v.is_finite() && *v > 0.0)
                .ok_or_else(|| bad_key(&format!("rope_scaling.{key}"), "llama3 scaling needs a positive number"))
        };
        let factor = need(r.factor, "factor")?;
        let low = need(r.low_freq_factor, "low_freq_factor")?;
        let high = need(r.high_freq_factor, "high_freq_factor")?;
        if high <= low {
            return Err(bad_key(
                "rope_scaling.high_freq_factor",
                &format!("{high} must exceed low_freq_factor {low}"),
            ));
        }
        let original = r
            .original_max_position_embeddings
            .filter(|&n| n > 0)
            .ok_or_else(|| bad_key("rope_scaling.original_max_position_embeddings", "missing"))?;
        Ok(Some(llama3_rope_freq_factors(
            config.rope_dims,
            config.rope_freq_base,
            factor as f32,
            low as f32,
            high as f32,
            original,
        )))
    }
}

fn bad_key(key: &str, reason: &str) -> ModelError {
    ModelError::BadConfig {
        key: format!("{CONFIG_FILE}: {key}"),
        reason: reason.to_string(),
    }
}

/// The shard files a checkpoint consists of: the distinct files the index's
/// `weight_map` names (in order of first mention), or the single file.
pub fn shard_files(index_json: Option<&str>) -> Result<Vec<String>, HfError> {
    let Some(text) = index_json else {
        return Ok(vec![SINGLE_SHARD_FILE.to_string()]);
    };
    #[derive(Deserialize)]
    struct Index {
        weight_map: BTreeMap<String, String>,
    }
    let index: Index = serde_json::from_str(text).map_err(|e| HfError::Json {
        file: INDEX_FILE.into(),
        reason: format!("not a valid shard index: {e}"),
    })?;
    let mut files: Vec<String> = index.weight_map.into_values().collect();
    files.sort();
    files.dedup();
    if files.is_empty() {
        return Err(HfError::NoShards);
    }
    Ok(files)
}

/// A safetensors element type this loader reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HfDtype {
    F32,
    F16,
    BF16,
}

impl HfDtype {
    pub fn element_bytes(self) -> usize {
        match self {
            HfDtype::F32 => 4,
            HfDtype::F16 | HfDtype::BF16 => 2,
        }
    }

    /// The ggml type with the same element encoding.
    pub fn ggml_type(self) -> GgmlType {
        match self {
            HfDtype::F32 => GgmlType::F32,
            HfDtype::F16 => GgmlType::F16,
            HfDtype::BF16 => GgmlType::BF16,
        }
    }
}

/// One tensor entry of a shard header.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardTensor {
    pub name: String,
    /// `Err(dtype name)` for dtypes the engine cannot use (reported if the tensor is needed).
    pub dtype: Result<HfDtype, String>,
    /// Row-major, outermost first (PyTorch order).
    pub shape: Vec<u64>,
    /// Absolute byte range in the file.
    pub range: Range<u64>,
}

/// The parsed header of one `.safetensors` file.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardHeader {
    pub file: String,
    pub file_len: u64,
    pub tensors: Vec<ShardTensor>,
}

impl ShardHeader {
    /// Bytes of the file's start that hold the header: 8 plus the length
    /// those 8 bytes announce (read them first, then this many).
    pub fn header_len(first8: &[u8]) -> Option<u64> {
        let n = u64::from_le_bytes(first8.get(..8)?.try_into().ok()?);
        n.checked_add(8)
    }

    /// Parses the header of `file` from a prefix of it (at least
    /// [`Self::header_len`] bytes; the whole file is fine) and checks that
    /// the tensors exactly fill the rest of a file of `file_len` bytes.
    pub fn parse(file: &str, prefix: &[u8], file_len: u64) -> Result<ShardHeader, HfError> {
        let err = |reason: String| HfError::Header {
            file: file.to_string(),
            reason,
        };
        let header_len = Self::header_len(prefix).ok_or_else(|| err("shorter than 8 bytes".into()))?;
        if header_len - 8 > MAX_HEADER_BYTES || header_len > file_len {
            return Err(err(format!(
                "the header claims {} bytes (file: {file_len} bytes, cap: {MAX_HEADER_BYTES})",
                header_len - 8
            )));
        }
        let json = prefix
            .get(8..header_len as usize)
            .ok_or_else(|| err(format!("need the first {header_len} bytes to read the header")))?;
        let metadata: Metadata = serde_json::from_slice(json).map_err(|e| err(format!("header is not valid: {e}")))?;
        let data_len = metadata.data_len() as u64;
        if header_len + data_len != file_len {
            return Err(err(format!(
                "header describes {data_len} bytes of data but the file has {}",
                file_len - header_len
            )));
        }
        let mut tensors: Vec<ShardTensor> = metadata
            .tensors()
            .into_iter()
            .map(|(name, info)| ShardTensor {
                dtype: match info.dtype {
                    Dtype::F32 => Ok(HfDtype::F32),
                    Dtype::F16 => Ok(HfDtype::F16),
                    Dtype::BF16 => Ok(HfDtype::BF16),
                    other => Err(format!("{other:?}")),
                },
                shape: info.shape.iter().map(|&d| d as u64).collect(),
                range: header_len + info.data_offsets.0 as u64..header_len + info.data_offsets.1 as u64,
                name,
            })
            .collect();
        tensors.sort_by_key(|t| t.range.start);
        Ok(ShardHeader {
            file: file.to_string(),
            file_len,
            tensors,
        })
    }
}

/// HF name ↔ GGUF-style loader name, per block and global.
const GLOBAL_NAMES: &[(&str, &str)] = &[
    ("model.embed_tokens.weight", "token_embd.weight"),
    ("model.norm.weight", "output_norm.weight"),
    ("lm_head.weight", "output.weight"),
];
const BLOCK_NAMES: &[(&str, &str)] = &[
    ("input_layernorm.weight", "attn_norm.weight"),
    ("self_attn.q_proj.weight", "attn_q.weight"),
    ("self_attn.k_proj.weight", "attn_k.weight"),
    ("self_attn.v_proj.weight", "attn_v.weight"),
    ("self_attn.o_proj.weight", "attn_output.weight"),
    ("self_attn.q_proj.bias", "attn_q.bias"),
    ("self_attn.k_proj.bias", "attn_k.bias"),
    ("self_attn.v_proj.bias", "attn_v.bias"),
    ("self_attn.q_norm.weight", "attn_q_norm.weight"),
    ("self_attn.k_norm.weight", "attn_k_norm.weight"),
    ("post_attention_layernorm.weight", "ffn_norm.weight"),
    ("mlp.gate_proj.weight", "ffn_gate.weight"),
    ("mlp.up_proj.weight", "ffn_up.weight"),
    ("mlp.down_proj.weight", "ffn_down.weight"),
];
const HF_BLOCK_PREFIX: &str = "model.layers.";
const GGUF_BLOCK_PREFIX: &str = "blk.";
/// The converter's name for Llama 3.1's RoPE factors (no HF tensor: computed
/// from `rope_scaling`).
const ROPE_FREQS: &str = "rope_freqs.weight";

/// Maps a name between the two conventions (`from` → `to` column).
fn map_name(name: &str, from_hf: bool) -> Option<String> {
    let pick = |pair: &(&'static str, &'static str)| if from_hf { (pair.0, pair.1) } else { (pair.1, pair.0) };
    if let Some((_, to)) = GLOBAL_NAMES.iter().map(pick).find(|(from, _)| *from == name) {
        return Some(to.to_string());
    }
    let (from_prefix, to_prefix) = if from_hf {
        (HF_BLOCK_PREFIX, GGUF_BLOCK_PREFIX)
    } else {
        (GGUF_BLOCK_PREFIX, HF_BLOCK_PREFIX)
    };
    let rest = name.strip_prefix(from_prefix)?;
    let (layer, suffix) = rest.split_once('.')?;
    layer.parse::<usize>().ok()?;
    let (_, to) = BLOCK_NAMES.iter().map(pick).find(|(from, _)| *from == suffix)?;
    Some(format!("{to_prefix}{layer}.{to}"))
}

/// The loader name of an HF tensor, if the engine uses it.
pub fn loader_name(hf_name: &str) -> Option<String> {
    map_name(hf_name, true)
}

/// The HF name of a loader tensor.
pub fn hf_name(loader_name: &str) -> Option<String> {
    map_name(loader_name, false)
}

/// Where one needed tensor is and how it is turned into what the loader takes.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSource {
    pub hf_name: String,
    /// The GGUF-style name the model loader knows it by.
    pub loader_name: String,
    /// The shard file holding it.
    pub file: String,
    /// Its absolute byte range in that file.
    pub range: Range<u64>,
    pub dtype: HfDtype,
    /// HF (PyTorch) order.
    pub shape: Vec<u64>,
    /// Permute rows within each of this many heads (q/k of llama, see the module doc).
    permute_heads: Option<usize>,
}

impl TensorSource {
    /// For llama's q/k: the number of heads whose rows the converter's
    /// permutation reorders ([`permute_rope_halves_to_pairs`]).
    pub fn permute_heads(&self) -> Option<usize> {
        self.permute_heads
    }
}

/// Loads a model from a Hugging Face checkpoint tensor by tensor.
#[derive(Debug, Clone)]
pub struct HfLoader {
    inner: ModelLoader,
    /// By loader name.
    sources: BTreeMap<String, TensorSource>,
    /// Loader name by HF name.
    by_hf_name: BTreeMap<String, String>,
}

impl HfLoader {
    /// Resolves `config.json` and finds every tensor the model needs in the
    /// shard headers, checking shapes and dtypes.
    pub fn new(config_json: &str, shards: &[ShardHeader]) -> Result<HfLoader, ModelError> {
        let hf = HfConfig::from_json(config_json)?;
        Self::from_config(&hf, shards)
    }

    pub fn from_config(hf: &HfConfig, shards: &[ShardHeader]) -> Result<HfLoader, ModelError> {
        let config = hf.resolve()?;
        let spec = config.arch.spec();

        // Every tensor of every shard, by HF name.
        let mut found: BTreeMap<&str, (&ShardHeader, &ShardTensor)> = BTreeMap::new();
        for shard in shards {
            for t in &shard.tensors {
                if let Some((first, _)) = found.insert(&t.name, (shard, t)) {
                    return Err(HfError::DuplicateTensor {
                        name: t.name.clone(),
                        first: first.file.clone(),
                        second: shard.file.clone(),
                    }
                    .into());
                }
            }
        }
        let has_lm_head = found.contains_key("lm_head.weight");
        if hf.tie_word_embeddings == Some(false) && !has_lm_head {
            return Err(HfError::MissingTensor("lm_head.weight".into()).into());
        }
        let has_output = has_lm_head && hf.tie_word_embeddings != Some(true);
        let rope_freqs = hf.rope_freq_factors(&config)?;

        // Where each shard starts in the order tensors are fed (files in the
        // order given, tensors in file order).
        let mut file_base = BTreeMap::new();
        let mut base = 0u64;
        for shard in shards {
            file_base.insert(shard.file.as_str(), base);
            base += shard.file_len;
        }

        let mut sources = BTreeMap::new();
        let mut infos = BTreeMap::new();
        for wanted in wanted_tensors(&config, has_output, rope_freqs.is_some()) {
            if wanted.name == ROPE_FREQS {
                infos.insert(
                    wanted.name.clone(),
                    TensorInfo {
                        name: wanted.name,
                        dims: wanted.dims,
                        ty: GgmlType::F32,
                        offset: 0,
                        size: (config.rope_dims / 2 * 4) as u64,
                    },
                );
                continue;
            }
            let hf_name = hf_name(&wanted.name).expect("every loader tensor has an HF name");
            let (shard, t) = found
                .get(hf_name.as_str())
                .ok_or_else(|| HfError::MissingTensor(hf_name.clone()))?;
            let expected: Vec<u64> = wanted.dims.iter().rev().copied().collect();
            if t.shape != expected {
                return Err(HfError::Shape {
                    name: hf_name,
                    expected,
                    found: t.shape.clone(),
                }
                .into());
            }
            let dtype = t.dtype.clone().map_err(|dtype| HfError::Dtype {
                name: hf_name.clone(),
                dtype,
            })?;
            let n_elements: u64 = t.shape.iter().product();
            let permute_heads = match (spec.rope_style, wanted.name.rsplit('.').nth(1)) {
                (RopeStyle::Normal, Some("attn_q")) if wanted.name.ends_with(".weight") => Some(config.n_heads),
                (RopeStyle::Normal, Some("attn_k")) if wanted.name.ends_with(".weight") => Some(config.n_kv_heads),
                _ => None,
            };
            let ty = dtype.ggml_type();
            infos.insert(
                wanted.name.clone(),
                TensorInfo {
                    name: wanted.name.clone(),
                    dims: wanted.dims,
                    ty,
                    offset: file_base[shard.file.as_str()] + t.range.start,
                    size: n_elements * ty.block_bytes() as u64,
                },
            );
            sources.insert(
                wanted.name.clone(),
                TensorSource {
                    hf_name,
                    loader_name: wanted.name,
                    file: shard.file.clone(),
                    range: t.range.clone(),
                    dtype,
                    shape: t.shape.clone(),
                    permute_heads,
                },
            );
        }
        let mut inner = ModelLoader::from_tensors(config, |name| infos.get(name))?;
        if let Some(ff) = rope_freqs {
            let bytes: Vec<u8> = ff.iter().flat_map(|f| f.to_le_bytes()).collect();
            inner.add_tensor(ROPE_FREQS, &bytes)?;
        }
        let by_hf_name = sources
            .values()
            .map(|s| (s.hf_name.clone(), s.loader_name.clone()))
            .collect();
        Ok(HfLoader {
            inner,
            sources,
            by_hf_name,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        self.inner.config()
    }

    /// The next tensor to add: shards in the order given to [`Self::new`],
    /// tensors in file order.
    pub fn next_needed(&self) -> Option<&TensorSource> {
        self.inner.next_needed().map(|info| &self.sources[&info.name])
    }

    /// Every tensor the model needs, in loading order.
    pub fn needed(&self) -> impl Iterator<Item = &TensorSource> {
        self.inner.needed().filter_map(|info| self.sources.get(&info.name))
    }

    /// Adds one tensor by its HF name: `bytes` are its raw bytes in the shard
    /// (`TensorSource::range` of `TensorSource::file`).
    pub fn add_tensor(&mut self, hf_name: &str, bytes: &[u8]) -> Result<(), ModelError> {
        let loader_name = self
            .by_hf_name
            .get(hf_name)
            .ok_or_else(|| HfError::UnexpectedTensor(hf_name.to_string()))?;
        let src = &self.sources[loader_name];
        let expected = src.range.end - src.range.start;
        if bytes.len() as u64 != expected {
            return Err(HfError::Bytes {
                name: hf_name.to_string(),
                reason: format!("expected {expected} bytes, got {}", bytes.len()),
            }
            .into());
        }
        let mut data = bytes.to_vec();
        if let Some(heads) = src.permute_heads {
            let cols = *src.shape.last().unwrap_or(&1) as usize;
            let elem = src.dtype.ggml_type().block_bytes();
            data = permute_rope_halves_to_pairs(&data, heads, cols * elem);
        }
        let loader_name = loader_name.clone();
        self.inner.add_tensor(&loader_name, &data).map_err(|e| match e {
            ModelError::UnexpectedTensor(_) => HfError::UnexpectedTensor(hf_name.to_string()).into(),
            other => other,
        })
    }

    pub fn finish(self) -> Result<Model, ModelError> {
        self.inner.finish().map_err(|e| match e {
            ModelError::Incomplete(name) => ModelError::Incomplete(hf_name(&name).unwrap_or(name)),
            other => other,
        })
    }
}

/// The q/k row permutation of llama.cpp's HF → GGUF converter: within each of
/// `heads` heads of `rows_per_head` rows, HF row `i * half + j` (i ∈ {0, 1},
/// j < half = rows_per_head / 2) becomes row `2j + i`, so that the rotation
/// partners of `rotate_half` become adjacent pairs. `row_bytes`: bytes per row.
pub(crate) fn permute_rope_halves_to_pairs(data: &[u8], heads: usize, row_bytes: usize) -> Vec<u8> {
    let rows = data.len() / row_bytes;
    let rows_per_head = rows / heads;
    let half = rows_per_head / 2;
    let mut out = vec![0u8; data.len()];
    for h in 0..heads {
        for i in 0..2 {
            for j in 0..half {
                let src = h * rows_per_head + i * half + j;
                let dst = h * rows_per_head + 2 * j + i;
                out[dst * row_bytes..(dst + 1) * row_bytes]
                    .copy_from_slice(&data[src * row_bytes..(src + 1) * row_bytes]);
            }
        }
    }
    out
}

/// The parts of a checkpoint directory read before any tensor data:
/// `config.json`, the shard files (in loading order) and their headers.
#[derive(Debug, Clone)]
pub struct DirHeaders {
    pub config_json: String,
    pub files: Vec<String>,
    pub headers: Vec<ShardHeader>,
}

/// Reads `dir/name` as text; `None` when the file does not exist.
pub fn read_optional_text(dir: &std::path::Path, name: &str) -> Result<Option<String>, HfError> {
    match std::fs::read_to_string(dir.join(name)) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(HfError::Json {
            file: name.into(),
            reason: format!("cannot read: {e}"),
        }),
    }
}

/// The error for a shard file that cannot be read.
fn shard_io_error(file: &str, e: std::io::Error) -> HfError {
    if e.kind() == std::io::ErrorKind::NotFound {
        HfError::MissingShard { file: file.into() }
    } else {
        HfError::Header {
            file: file.into(),
            reason: format!("cannot read: {e}"),
        }
    }
}

/// Reads a checkpoint directory's `config.json` and the headers of the
/// shards named by `model.safetensors.index.json` (or `model.safetensors`,
/// or every `*.safetensors` file): a few kilobytes per shard.
pub fn read_dir_headers(dir: &std::path::Path) -> Result<DirHeaders, ModelError> {
    use std::io::Read;
    let config_json = read_optional_text(dir, CONFIG_FILE)?.ok_or_else(|| HfError::Json {
        file: CONFIG_FILE.into(),
        reason: format!("missing in {}", dir.display()),
    })?;
    let files = match read_optional_text(dir, INDEX_FILE)? {
        Some(index) => shard_files(Some(&index))?,
        None if dir.join(SINGLE_SHARD_FILE).exists() => vec![SINGLE_SHARD_FILE.to_string()],
        None => {
            let mut files: Vec<String> = std::fs::read_dir(dir)
                .map_err(|e| HfError::Header {
                    file: dir.display().to_string(),
                    reason: format!("cannot list: {e}"),
                })?
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.ends_with(".safetensors"))
                .collect();
            files.sort();
            if files.is_empty() {
                return Err(HfError::NoShards.into());
            }
            files
        }
    };
    let mut headers = Vec::with_capacity(files.len());
    for file in &files {
        let mut f = std::fs::File::open(dir.join(file)).map_err(|e| shard_io_error(file, e))?;
        let file_len = f.metadata().map_err(|e| shard_io_error(file, e))?.len();
        let mut first8 = [0u8; 8];
        f.read_exact(&mut first8).map_err(|_| HfError::Header {
            file: file.clone(),
            reason: "shorter than 8 bytes".into(),
        })?;
        let n = ShardHeader::header_len(&first8).unwrap_or(u64::MAX);
        if n > MAX_HEADER_BYTES + 8 || n > file_len {
            // Let `parse` explain.
            headers.push(ShardHeader::parse(file, &first8, file_len)?);
            continue;
        }
        let mut prefix = first8.to_vec();
        prefix.resize(n as usize, 0);
        f.read_exact(&mut prefix[8..]).map_err(|e| shard_io_error(file, e))?;
        headers.push(ShardHeader::parse(file, &prefix, file_len)?);
    }
    Ok(DirHeaders {
        config_json,
        files,
        headers,
    })
}

/// Loads a checkpoint directory natively: `config.json`, then the shards
/// named by `model.safetensors.index.json` (or `model.safetensors`, or every
/// `*.safetensors` file), one file in memory at a time.
pub fn load_dir(dir: &std::path::Path) -> Result<Model, ModelError> {
    let DirHeaders {
        config_json,
        files,
        headers,
    } = read_dir_headers(dir)?;
    let mut loader = HfLoader::new(&config_json, &headers)?;
    // Then each file's tensors, one file in memory at a time.
    for file in &files {
        let bytes = std::fs::read(dir.join(file)).map_err(|e| shard_io_error(file, e))?;
        while let Some(src) = loader.next_needed().filter(|s| &s.file == file) {
            let (name, range) = (src.hf_name.clone(), src.range.clone());
            let data = bytes
                .get(range.start as usize..range.end as usize)
                .ok_or_else(|| HfError::Bytes {
                    name: name.clone(),
                    reason: format!("lies outside {file}"),
                })?;
            loader.add_tensor(&name, data)?;
        }
    }
    loader.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_both_ways() {
        for (hf, gguf) in [
            ("model.embed_tokens.weight", "token_embd.weight"),
            ("lm_head.weight", "output.weight"),
            ("model.layers.12.self_attn.q_proj.bias", "blk.12.attn_q.bias"),
            ("model.layers.0.self_attn.k_norm.weight", "blk.0.attn_k_norm.weight"),
            ("model.layers.3.mlp.down_proj.weight", "blk.3.ffn_down.weight"),
        ] {
            assert_eq!(loader_name(hf).as_deref(), Some(gguf));
            assert_eq!(hf_name(gguf).as_deref(), Some(hf));
        }
        assert_eq!(loader_name("model.layers.x.mlp.up_proj.weight"), None);
        assert_eq!(loader_name("model.rotary_emb.inv_freq"), None);
    }

    #[test]
    fn permutation_makes_halves_adjacent() {
        // One head of 4 rows (1 byte each): HF rows [a0 a1 b0 b1] rotate (a0, b0)
        // and (a1, b1); GGUF wants [a0 b0 a1 b1].
        let hf = [10u8, 11, 20, 21, /* second head */ 30, 31, 40, 41];
        assert_eq!(
            permute_rope_halves_to_pairs(&hf, 2, 1),
            vec![10, 20, 11, 21, 30, 40, 31, 41]
        );
    }

    #[test]
    fn config_defaults_and_architecture_inference() {
        let hf = HfConfig::from_json(
            r#"{"architectures": ["Qwen2ForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
                "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                "vocab_size": 100, "eos_token_id": [7, 8]}"#,
        )
        .unwrap();
        let c = hf.resolve().unwrap();
        assert_eq!(c.arch, Architecture::Qwen2);
        assert_eq!((c.head_dim, c.q_dim, c.kv_dim, c.n_kv_groups), (16, 64, 32, 2));
        assert_eq!(c.rope_freq_base, 10000.0);
        assert_eq!(c.eos_token_id, Some(7));
        assert_eq!(c.context_length, DEFAULT_CONTEXT);
    }

    #[test]
    fn unsupported_rope_scaling_is_named() {
        let hf = HfConfig::from_json(
            r#"{"model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
                "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 100,
                "rope_scaling": {"type": "yarn", "factor": 4.0}}"#,
        )
        .unwrap();
        let err = hf.resolve().unwrap_err().to_string();
        assert!(err.contains("yarn") && err.contains("rope_scaling"), "{err}");
    }

    #[test]
    fn header_needs_its_prefix() {
        assert_eq!(ShardHeader::header_len(&[3, 0, 0, 0, 0, 0, 0, 0]), Some(11));
        let err = ShardHeader::parse("x.safetensors", &[100, 0, 0, 0, 0, 0, 0, 0, b'{'], 200).unwrap_err();
        assert!(err.to_string().contains("need the first 108 bytes"), "{err}");
    }
}

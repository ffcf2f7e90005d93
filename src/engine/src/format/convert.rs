//! Hugging Face checkpoint → GGUF, so that the canister keeps one model
//! format: what llama.cpp's `convert_hf_to_gguf.py` does for the
//! architectures the engine runs, checked against this engine's own two
//! loaders (a checkpoint and its conversion load to the same model).
//!
//! - **Tensors** keep the checkpoint's type (F32, F16, BF16 as GGUF BF16),
//!   except 1-D tensors (norms, biases), which become F32 as llama.cpp
//!   writes them (exact: the engine widens them to f32 at load anyway).
//!   With a [`QuantMix`] every 2-D weight is quantized with the engine's
//!   quantizers (llama.cpp's choices, see [`QuantMix::tensor_type`]); 1-D
//!   tensors stay F32.
//! - **Names and order**: GGUF names, ggml dims (the PyTorch shape
//!   reversed); llama's q/k rows get the converter's permutation (the same
//!   one [`HfLoader`] applies at load, so both loads agree bit for bit).
//!   Tied embeddings write no `output.weight`. Llama 3.1 RoPE scaling
//!   becomes the `rope_freqs.weight` tensor; linear scaling the
//!   `rope.scaling.*` keys.
//! - **Metadata**: `general.*`, and the `{arch}.*` keys the GGUF loader
//!   reads (context length, widths, head counts, head dim, RMS epsilon,
//!   RoPE base and dimensions).
//! - **Tokenizer**: `tokenizer.json` + `tokenizer_config.json` as
//!   `tokenizer.ggml.*` (see `Tokenizer::gguf_metadata` for what is refused),
//!   padded to the model's vocabulary; the chat template (from
//!   `tokenizer_config.json` or `chat_template.jinja`) as
//!   `tokenizer.chat_template`.
//!
//! The output is streamed: the header first, then one tensor at a time, so
//! converting needs one tensor in memory besides the output's destination.

use super::gguf::writer::{self, TensorHeader};
use super::gguf::Value;
use super::hf::{self, HfConfig, HfDtype, HfLoader, ShardHeader, TensorSource};
use crate::chat::ChatTemplate;
use crate::model::{wanted_tensors, ModelConfig, ModelError};
use crate::quant::quantize_row_bytes;
use crate::synth::QuantMix;
use crate::tensor::GgmlType;
use crate::tokenizer::{GgufVocabOptions, Tokenizer, TokenizerError};
use std::collections::BTreeMap;
use std::io::Write;

/// A separate chat template file that newer checkpoints ship.
pub const CHAT_TEMPLATE_FILE: &str = "chat_template.jinja";

/// Why a checkpoint could not be converted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConvertError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("{0} is missing: the GGUF file carries the tokenizer, so the checkpoint needs one")]
    NoTokenizer(String),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error("the chat template: {0}")]
    Chat(String),
    #[error("tensor {name:?}: {reason}")]
    Tensor { name: String, reason: String },
    #[error("{0}")]
    Io(String),
}

/// How to convert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvertOptions {
    /// Quantize the 2-D weights; `None` keeps the checkpoint's types.
    pub quant: Option<QuantMix>,
    /// Worker threads for quantizing (1 = none; wasm32 has no threads).
    pub threads: usize,
}

impl Default for ConvertOptions {
    fn default() -> ConvertOptions {
        ConvertOptions {
            quant: None,
            threads: 1,
        }
    }
}

/// The tokenizer files of a checkpoint, as text.
#[derive(Debug, Clone, Copy)]
pub struct TokenizerFiles<'a> {
    pub tokenizer_json: &'a str,
    pub tokenizer_config_json: Option<&'a str>,
    /// `chat_template.jinja`, which takes precedence over the config's `chat_template`.
    pub chat_template: Option<&'a str>,
}

/// Where a planned tensor's values come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Origin {
    /// A checkpoint tensor.
    Shard(TensorSource),
    /// Computed from the config (`rope_freqs.weight`).
    Values(Vec<f32>),
}

/// One tensor of the output.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedTensor {
    /// GGUF name.
    pub name: String,
    /// ggml order (`dims[0]` is the row length).
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    pub origin: Origin,
}

impl PlannedTensor {
    fn header(&self) -> TensorHeader {
        TensorHeader {
            name: self.name.clone(),
            dims: self.dims.clone(),
            ty: self.ty,
        }
    }
}

/// Everything about the output but the tensor data.
#[derive(Debug, Clone)]
pub struct ConvertPlan {
    /// The model as the HF loader resolves it (what the GGUF must load to).
    pub config: ModelConfig,
    pub metadata: Vec<(String, Value)>,
    /// In file order.
    pub tensors: Vec<PlannedTensor>,
    /// The `tokenizer.ggml.pre` written.
    pub pre_tokenizer: String,
    /// Tokens in the tokenizer (before padding to the model's vocabulary).
    pub tokenizer_tokens: usize,
    pub has_chat_template: bool,
}

impl ConvertPlan {
    /// Checks the checkpoint (config, shard headers, tokenizer) and plans
    /// the GGUF file.
    pub fn new(
        config_json: &str,
        shards: &[ShardHeader],
        tok: TokenizerFiles<'_>,
        opts: &ConvertOptions,
    ) -> Result<ConvertPlan, ConvertError> {
        let hf = HfConfig::from_json(config_json).map_err(ModelError::from)?;
        let loader = HfLoader::from_config(&hf, shards)?;
        let config = loader.config().clone();
        let spec = config.arch.spec();
        let rope_freqs = hf.rope_freq_factors(&config)?;
        let sources: BTreeMap<&str, &TensorSource> = loader.needed().map(|s| (s.loader_name.as_str(), s)).collect();
        let has_output = sources.contains_key("output.weight");

        let mut tensors = Vec::new();
        for wanted in wanted_tensors(&config, has_output, rope_freqs.is_some()) {
            let is_matrix = wanted.dims.len() == 2;
            let is_head = wanted.name == "output.weight" || (!has_output && wanted.name == "token_embd.weight");
            let origin = match sources.get(wanted.name.as_str()) {
                Some(src) => Origin::Shard((*src).clone()),
                None => match &rope_freqs {
                    Some(ff) if wanted.name == "rope_freqs.weight" => Origin::Values(ff.clone()),
                    _ => return Err(ModelError::MissingTensor(wanted.name).into()),
                },
            };
            let ty = match (&origin, opts.quant) {
                (_, _) if !is_matrix => GgmlType::F32,
                (_, Some(mix)) => mix.tensor_type(&wanted.name, wanted.dims[0] as usize, config.n_layers, is_head),
                (Origin::Shard(src), None) => src.dtype.ggml_type(),
                (Origin::Values(_), None) => GgmlType::F32,
            };
            tensors.push(PlannedTensor {
                name: wanted.name,
                dims: wanted.dims,
                ty,
                origin,
            });
        }

        // Tokenizer and chat template.
        let tokenizer = Tokenizer::from_hf_json(tok.tokenizer_json, tok.tokenizer_config_json)?;
        let first = |ids: &Option<hf::TokenIds>| ids.as_ref().and_then(|i| i.ids().first().copied());
        let tokenizer_md = tokenizer.gguf_metadata(GgufVocabOptions {
            pad_to: config.vocab_size,
            config_bos: first(&hf.bos_token_id),
            config_eos: first(&hf.eos_token_id),
        })?;
        let template = match tok.tokenizer_config_json {
            Some(cfg) => ChatTemplate::from_tokenizer_config(cfg, tok.chat_template)
                .map_err(|e| ConvertError::Chat(e.to_string()))?,
            None => match tok.chat_template {
                Some(source) => {
                    Some(ChatTemplate::new(source, None, None).map_err(|e| ConvertError::Chat(e.to_string()))?)
                }
                None => None,
            },
        };
        let pre_tokenizer = tokenizer_md
            .iter()
            .find(|(k, _)| k == crate::tokenizer::keys::PRE)
            .and_then(|(_, v)| v.as_str())
            .unwrap_or_default()
            .to_string();

        // Metadata.
        let a = spec.name;
        let k = |s: &str| format!("{a}.{s}");
        let u = |v: usize| Value::U32(v as u32);
        let file_type = match opts.quant {
            Some(mix) => mix.file_type(),
            None => QuantMix::Uniform(most_common_matrix_type(&tensors)).file_type(),
        };
        let mut md = vec![
            ("general.architecture".to_string(), Value::String(a.into())),
            ("general.file_type".to_string(), Value::U32(file_type)),
        ];
        if opts.quant.is_some() {
            md.push(("general.quantization_version".to_string(), Value::U32(2)));
        }
        md.extend([
            (k("vocab_size"), u(config.vocab_size)),
            (k("context_length"), u(config.context_length)),
            (k("embedding_length"), u(config.dim)),
            (k("block_count"), u(config.n_layers)),
            (k("feed_forward_length"), u(config.hidden_dim)),
            (k("attention.head_count"), u(config.n_heads)),
            (k("attention.head_count_kv"), u(config.n_kv_heads)),
            (k("attention.key_length"), u(config.head_dim)),
            (k("attention.value_length"), u(config.head_dim)),
            (k("attention.layer_norm_rms_epsilon"), Value::F32(config.rms_eps)),
            (k("rope.freq_base"), Value::F32(config.rope_freq_base)),
            (k("rope.dimension_count"), u(config.rope_dims)),
        ]);
        if let Some(factor) = hf.linear_rope_factor() {
            md.push((k("rope.scaling.type"), Value::String("linear".into())));
            md.push((k("rope.scaling.factor"), Value::F32(factor as f32)));
        }
        md.extend(tokenizer_md);
        if let Some(t) = &template {
            md.push((
                crate::chat::GGUF_CHAT_TEMPLATE.to_string(),
                Value::String(t.source().to_string()),
            ));
        }

        Ok(ConvertPlan {
            config,
            metadata: md,
            tensors,
            pre_tokenizer,
            tokenizer_tokens: tokenizer.vocab_size(),
            has_chat_template: template.is_some(),
        })
    }

    /// The GGUF header, padded to where tensor data starts.
    pub fn header(&self) -> Vec<u8> {
        let headers: Vec<TensorHeader> = self.tensors.iter().map(PlannedTensor::header).collect();
        writer::write_header(&self.metadata, &headers)
    }

    /// Size of the whole output file.
    pub fn file_size(&self) -> u64 {
        let alignment = writer::alignment(&self.metadata);
        let mut size = self.header().len() as u64;
        for (i, t) in self.tensors.iter().enumerate() {
            if i > 0 {
                size += writer::padding(size, alignment) as u64;
            }
            size += t.header().data_bytes();
        }
        size
    }

    /// The output bytes of tensor `t`; `raw` holds its checkpoint bytes
    /// (`TensorSource::range` of its shard; empty for computed tensors).
    pub fn tensor_data(&self, t: &PlannedTensor, raw: &[u8], threads: usize) -> Result<Vec<u8>, ConvertError> {
        let bad = |reason: String| ConvertError::Tensor {
            name: t.name.clone(),
            reason,
        };
        let cols = t.dims[0] as usize;
        let values = match &t.origin {
            Origin::Values(v) => v.clone(),
            Origin::Shard(src) => {
                let expected = src.range.end - src.range.start;
                if raw.len() as u64 != expected {
                    return Err(bad(format!("expected {expected} bytes, got {}", raw.len())));
                }
                let permuted;
                let data = match src.permute_heads() {
                    Some(heads) => {
                        permuted = hf::permute_rope_halves_to_pairs(raw, heads, cols * src.dtype.element_bytes());
                        &permuted[..]
                    }
                    None => raw,
                };
                if t.ty == src.dtype.ggml_type() {
                    return Ok(data.to_vec());
                }
                widen(src.dtype, data)
            }
        };
        if t.ty == GgmlType::F32 {
            return Ok(values.iter().flat_map(|v| v.to_le_bytes()).collect());
        }
        quantize_rows(t.ty, &values, cols, threads).map_err(bad)
    }

    /// Writes the GGUF file: the header, then each tensor, its checkpoint
    /// bytes fetched by `read`. Returns the bytes written.
    pub fn write<W: Write>(
        &self,
        mut read: impl FnMut(&TensorSource) -> Result<Vec<u8>, ConvertError>,
        threads: usize,
        out: &mut W,
    ) -> Result<u64, ConvertError> {
        let io = |e: std::io::Error| ConvertError::Io(format!("writing the GGUF file: {e}"));
        let alignment = writer::alignment(&self.metadata);
        let header = self.header();
        out.write_all(&header).map_err(io)?;
        let mut written = header.len() as u64;
        for (i, t) in self.tensors.iter().enumerate() {
            if i > 0 {
                let pad = writer::padding(written, alignment);
                out.write_all(&vec![0u8; pad]).map_err(io)?;
                written += pad as u64;
            }
            let raw = match &t.origin {
                Origin::Shard(src) => read(src)?,
                Origin::Values(_) => Vec::new(),
            };
            let data = self.tensor_data(t, &raw, threads)?;
            debug_assert_eq!(data.len() as u64, t.header().data_bytes());
            out.write_all(&data).map_err(io)?;
            written += data.len() as u64;
        }
        out.flush().map_err(io)?;
        Ok(written)
    }
}

/// The 2-D type most tensors have (for `general.file_type`).
fn most_common_matrix_type(tensors: &[PlannedTensor]) -> GgmlType {
    let mut counts: Vec<(GgmlType, usize)> = Vec::new();
    for t in tensors.iter().filter(|t| t.dims.len() == 2) {
        match counts.iter_mut().find(|(ty, _)| *ty == t.ty) {
            Some((_, n)) => *n += 1,
            None => counts.push((t.ty, 1)),
        }
    }
    counts
        .into_iter()
        .max_by_key(|&(_, n)| n)
        .map_or(GgmlType::F32, |(ty, _)| ty)
}

/// Checkpoint bytes as f32 values (exact for every dtype).
fn widen(dtype: HfDtype, data: &[u8]) -> Vec<f32> {
    match dtype {
        HfDtype::F32 => data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        HfDtype::F16 => data
            .chunks_exact(2)
            .map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
            .collect(),
        HfDtype::BF16 => data
            .chunks_exact(2)
            .map(|c| half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
            .collect(),
    }
}

/// Quantizes row-major `values` (rows of `cols`) to `ty`, rows split
/// across `threads` workers (the bytes do not depend on the split).
fn quantize_rows(ty: GgmlType, values: &[f32], cols: usize, threads: usize) -> Result<Vec<u8>, String> {
    let rows = values.len() / cols.max(1);
    let quantize = |part: &[f32]| -> Result<Vec<u8>, String> {
        let mut out = Vec::with_capacity(ty.row_bytes(cols) * (part.len() / cols.max(1)));
        for row in part.chunks_exact(cols.max(1)) {
            out.extend(quantize_row_bytes(ty, row)?);
        }
        Ok(out)
    };
    if threads <= 1 || rows < 2 {
        return quantize(values);
    }
    let per = rows.div_ceil(threads) * cols;
    let parts: Vec<Result<Vec<u8>, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = values.chunks(per).map(|part| s.spawn(move || quantize(part))).collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("a quantizing thread panicked".into())))
            .collect()
    });
    let mut out = Vec::with_capacity(ty.row_bytes(cols) * rows);
    for p in parts {
        out.extend(p?);
    }
    Ok(out)
}

/// What [`convert_dir`] wrote.
#[derive(Debug, Clone)]
pub struct ConvertSummary {
    pub plan: ConvertPlan,
    pub bytes: u64,
}

/// Converts the checkpoint directory `dir` (config.json, *.safetensors,
/// tokenizer.json, tokenizer_config.json, maybe chat_template.jinja) to a
/// GGUF file written to `out`, reading one tensor at a time.
pub fn convert_dir<W: Write>(
    dir: &std::path::Path,
    opts: &ConvertOptions,
    out: &mut W,
) -> Result<ConvertSummary, ConvertError> {
    use std::io::{Read, Seek, SeekFrom};
    let headers = hf::read_dir_headers(dir)?;
    let text = |name: &str| hf::read_optional_text(dir, name).map_err(|e| ConvertError::Model(e.into()));
    let tokenizer_json = text(hf::TOKENIZER_FILE)?
        .ok_or_else(|| ConvertError::NoTokenizer(dir.join(hf::TOKENIZER_FILE).display().to_string()))?;
    let tokenizer_config = text(hf::TOKENIZER_CONFIG_FILE)?;
    let chat_template = text(CHAT_TEMPLATE_FILE)?;
    let plan = ConvertPlan::new(
        &headers.config_json,
        &headers.headers,
        TokenizerFiles {
            tokenizer_json: &tokenizer_json,
            tokenizer_config_json: tokenizer_config.as_deref(),
            chat_template: chat_template.as_deref(),
        },
        opts,
    )?;
    let mut files: BTreeMap<String, std::fs::File> = BTreeMap::new();
    let read = |src: &TensorSource| -> Result<Vec<u8>, ConvertError> {
        let io = |e: std::io::Error| ConvertError::Io(format!("reading {} from {}: {e}", src.hf_name, src.file));
        if !files.contains_key(&src.file) {
            let f = std::fs::File::open(dir.join(&src.file))
                .map_err(|_| ConvertError::Model(hf::HfError::MissingShard { file: src.file.clone() }.into()))?;
            files.insert(src.file.clone(), f);
        }
        let f = files.get_mut(&src.file).expect("just opened");
        f.seek(SeekFrom::Start(src.range.start)).map_err(io)?;
        let mut buf = vec![0u8; (src.range.end - src.range.start) as usize];
        f.read_exact(&mut buf).map_err(io)?;
        Ok(buf)
    };
    let bytes = plan.write(read, opts.threads, out)?;
    Ok(ConvertSummary { plan, bytes })
}

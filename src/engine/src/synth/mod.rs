//! Synthetic models: seeded random weights with the exact shapes, tensor
//! names and GGUF metadata keys of published models, in any supported tensor
//! type or llama.cpp-like mix. Used by `icllm synth` and `icllm bench`
//! (speed depends on shapes and types, not on the weights' values).
//!
//! A file is streamed: the header is computed from the plan, then each tensor
//! is generated, quantized and written row by row, so memory stays at one
//! row (per worker) whatever the model size.

mod rng;
mod shapes;

pub use rng::Rng;
pub use shapes::{shape, Arch, Shape, Vocab, CONV_TAPS, GEMMA3_WINDOW, SHAPES};

use crate::format::gguf::writer::{self, TensorHeader};
use crate::format::gguf::Value;
use crate::quant::{quantize_row_bytes, quantize_row_bytes_with, Search};
use crate::tensor::GgmlType;
use std::io::{self, Write};

/// Standard deviation of the random matrices (a typical init; keeps
/// activations of a random model sane).
pub const WEIGHT_STD: f32 = 0.02;

/// What `--quant` asks for: one type for every matrix, or a llama.cpp mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantMix {
    /// Every 2-D weight in this type (norms and biases stay F32).
    Uniform(GgmlType),
    /// llama.cpp's Q4_K_M: Q4_K, with Q6_K for the output head (or the tied
    /// token embedding) and for `attn_v` / `ffn_down` in the layers
    /// llama.cpp's `use_more_bits` picks (the first and last eighth and every
    /// third layer in between), and Q5_K for a fused `attn_qkv`.
    Q4KM,
    /// llama.cpp's Q5_K_M: as Q4_K_M with Q5_K in place of Q4_K (and Q6_K
    /// for a fused `attn_qkv`).
    Q5KM,
    /// llama.cpp's Q3_K_M: Q3_K, with Q6_K for the output head, Q4_K for
    /// `attn_output` and `ffn_down` (Q5_K in the first sixteenth of the
    /// layers), and Q5_K / Q4_K for `attn_v` in the first two / other layers.
    Q3KM,
}

impl QuantMix {
    /// The `--quant` names.
    pub const NAMES: &'static str =
        "f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, iq4_nl, iq4_xs, q2_k, q3_k, q4_k, q5_k, q6_k, q3_k_m, q4_k_m, q5_k_m";

    pub fn parse(name: &str) -> Option<QuantMix> {
        let ty = match name.to_ascii_lowercase().as_str() {
            "f32" => GgmlType::F32,
            "f16" => GgmlType::F16,
            "bf16" => GgmlType::BF16,
            "q8_0" => GgmlType::Q8_0,
            "q4_0" => GgmlType::Q4_0,
            "q4_1" => GgmlType::Q4_1,
            "q5_0" => GgmlType::Q5_0,
            "q5_1" => GgmlType::Q5_1,
            "iq4_nl" => GgmlType::IQ4NL,
            "q4_k" => GgmlType::Q4K,
            "q5_k" => GgmlType::Q5K,
            "q6_k" => GgmlType::Q6K,
            "q3_k" => GgmlType::Q3K,
            "q2_k" => GgmlType::Q2K,
            "iq4_xs" => GgmlType::IQ4XS,
            "q3_k_m" => return Some(QuantMix::Q3KM),
            "q4_k_m" => return Some(QuantMix::Q4KM),
            "q5_k_m" => return Some(QuantMix::Q5KM),
            _ => return None,
        };
        Some(QuantMix::Uniform(ty))
    }

    /// llama.cpp's `general.file_type` (`llama_ftype`) for this mix.
    pub fn file_type(self) -> u32 {
        match self {
            QuantMix::Q4KM => 15,
            QuantMix::Q5KM => 17,
            QuantMix::Q3KM => 12,
            QuantMix::Uniform(ty) => match ty {
                GgmlType::F32 => 0,
                GgmlType::F16 => 1,
                GgmlType::Q4_0 => 2,
                GgmlType::Q4_1 => 3,
                GgmlType::Q8_0 => 7,
                GgmlType::Q5_0 => 8,
                GgmlType::Q5_1 => 9,
                GgmlType::IQ4NL => 25,
                GgmlType::IQ4XS => 30,
                GgmlType::Q2K => 21, // Q2_K_S: uniform, unlike llama.cpp's Q2_K mix
                GgmlType::Q3K => 11, // Q3_K_S
                GgmlType::Q4K => 14, // Q4_K_S
                GgmlType::Q5K => 16, // Q5_K_S
                GgmlType::Q6K => 18,
                GgmlType::BF16 => 32,
                _ => 0,
            },
        }
    }

    /// The type of a 2-D weight `name` with rows of `cols` elements in a
    /// model of `n_layers` layers, before the row-length fallback.
    fn preferred(self, name: &str, n_layers: usize, is_output_head: bool) -> GgmlType {
        let layer = name
            .strip_prefix("blk.")
            .and_then(|r| r.split('.').next())
            .and_then(|l| l.parse::<usize>().ok());
        let role = |r: &str| name.contains(r);
        match self {
            QuantMix::Uniform(ty) => ty,
            _ if is_output_head => GgmlType::Q6K,
            QuantMix::Q4KM | QuantMix::Q5KM => {
                let base = if self == QuantMix::Q4KM {
                    GgmlType::Q4K
                } else {
                    GgmlType::Q5K
                };
                // llama.cpp gives a fused QKV one step more than the base.
                if role("attn_qkv.") {
                    return if self == QuantMix::Q4KM {
                        GgmlType::Q5K
                    } else {
                        GgmlType::Q6K
                    };
                }
                match layer.filter(|_| role("attn_v.") || role("ffn_down.")) {
                    Some(l) if use_more_bits(l, n_layers) => GgmlType::Q6K,
                    _ => base,
                }
            }
            QuantMix::Q3KM => match layer {
                Some(l) if role("attn_v.") && l < 2 => GgmlType::Q5K,
                Some(l) if role("ffn_down.") && l < n_layers / 16 => GgmlType::Q5K,
                Some(_) if role("attn_v.") || role("ffn_down.") || role("attn_output.") || role("attn_qkv.") => {
                    GgmlType::Q4K
                }
                _ => GgmlType::Q3K,
            },
        }
    }

    /// The type a 2-D weight gets: the preferred type if its rows split into
    /// whole blocks, else llama.cpp's fallback ([`fallback`]).
    pub fn tensor_type(self, name: &str, cols: usize, n_layers: usize, is_output_head: bool) -> GgmlType {
        fallback(self.preferred(name, n_layers, is_output_head), cols)
    }
}

/// llama.cpp's `use_more_bits`: the first and last eighth of the layers, and
/// every third layer in between.
fn use_more_bits(layer: usize, n_layers: usize) -> bool {
    let (lo, hi) = (n_layers / 8, 7 * n_layers / 8);
    layer < lo || layer >= hi || (layer - lo) % 3 == 2
}

/// The type for rows of `cols` elements when `ty`'s blocks may not fit, as
/// llama.cpp's quantizer chooses it (`llama_tensor_get_type`): a K-quant
/// falls back to a 32-element type (`tensor_type_fallback`: Q4_K → Q5_0,
/// Q5_K → Q5_1, Q6_K → Q8_0, Q2_K/Q3_K → Q4_0, IQ4_XS → IQ4_NL; older
/// llama.cpp releases chose IQ4_NL for Q2_K/Q3_K too, and icllm reads both),
/// and a row that is not whole blocks of that either (or of a 32-element
/// type) is F16. F32 stays F32.
pub fn fallback(ty: GgmlType, cols: usize) -> GgmlType {
    if cols.is_multiple_of(ty.block_size()) || ty == GgmlType::F32 {
        return ty;
    }
    let smaller = match ty {
        GgmlType::Q4K => GgmlType::Q5_0,
        GgmlType::Q5K => GgmlType::Q5_1,
        GgmlType::Q6K => GgmlType::Q8_0,
        GgmlType::Q2K | GgmlType::Q3K => GgmlType::Q4_0,
        GgmlType::IQ4XS => GgmlType::IQ4NL,
        _ => GgmlType::F16,
    };
    if cols.is_multiple_of(smaller.block_size()) {
        smaller
    } else {
        GgmlType::F16
    }
}

/// How a planned tensor's values are made.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// N(0, std²), seeded per tensor and row.
    Normal(f32),
    /// All ones (norm weights).
    Ones,
    /// llama3's RoPE frequency factors (`rope_freqs.weight`).
    Llama3RopeFactors,
}

/// One tensor of a synthetic model.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedTensor {
    pub name: String,
    /// ggml order: `dims[0]` is the row length.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    pub init: Init,
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

/// Options of a synthetic model.
#[derive(Debug, Clone)]
pub struct SynthOptions {
    pub quant: QuantMix,
    pub seed: u64,
    /// Fewer layers than the shape has (for quick tests); `None` = all.
    pub layers: Option<usize>,
    /// `tokenizer.*` metadata (from a real vocabulary); when empty, a
    /// synthetic byte-level vocabulary of the shape's size is written.
    pub tokenizer: Vec<(String, Value)>,
    /// Worker threads for generating and quantizing rows (1 = none).
    pub threads: usize,
    /// K-quant scale search: [`Search::Ggml`] (default) or the ~10x faster
    /// [`Search::Fast`] for large benchmark models.
    pub search: Search,
}

impl SynthOptions {
    pub fn new(quant: QuantMix) -> SynthOptions {
        SynthOptions {
            quant,
            seed: 0,
            layers: None,
            tokenizer: Vec::new(),
            threads: 1,
            search: Search::Ggml,
        }
    }
}

/// The tensors of `shape` with `n_layers` layers, in file order, with their types.
pub fn plan(shape: &Shape, quant: QuantMix, n_layers: usize) -> Vec<PlannedTensor> {
    let (dim, vocab, hidden) = (shape.dim as u64, shape.vocab_size as u64, shape.hidden_dim as u64);
    let head_dim = shape.head_dim() as u64;
    let q_dim = shape.n_heads as u64 * head_dim;
    let kv_dim = shape.n_kv_heads as u64 * head_dim;
    let mut out = Vec::new();
    let matrix = |name: String, cols: u64, rows: u64, is_output_head: bool| {
        let ty = quant.tensor_type(&name, cols as usize, n_layers, is_output_head);
        PlannedTensor {
            name,
            dims: vec![cols, rows],
            ty,
            init: Init::Normal(WEIGHT_STD),
        }
    };
    let vector = |name: String, len: u64, init: Init| PlannedTensor {
        name,
        dims: vec![len],
        ty: GgmlType::F32,
        init,
    };
    let push_ffn = |out: &mut Vec<PlannedTensor>, l: usize| {
        let n = |s: &str| format!("blk.{l}.{s}");
        out.push(vector(n("ffn_norm.weight"), dim, Init::Ones));
        out.push(matrix(n("ffn_gate.weight"), dim, hidden, false));
        out.push(matrix(n("ffn_up.weight"), dim, hidden, false));
        out.push(matrix(n("ffn_down.weight"), hidden, dim, false));
    };
    // With tied embeddings the token embedding is the output head (llama.cpp
    // quantizes it as such).
    out.push(matrix("token_embd.weight".into(), dim, vocab, shape.tied_embeddings));
    if shape.llama3_rope.is_some() {
        out.push(vector(
            "rope_freqs.weight".into(),
            head_dim / 2,
            Init::Llama3RopeFactors,
        ));
    }
    for l in 0..n_layers {
        let n = |s: &str| format!("blk.{l}.{s}");
        out.push(vector(n("attn_norm.weight"), dim, Init::Ones));
        if shape.is_conv(l) {
            out.push(matrix(n("shortconv.in_proj.weight"), dim, 3 * dim, false));
            // The taps stay F32, as llama.cpp's quantizer keeps them.
            out.push(PlannedTensor {
                name: n("shortconv.conv.weight"),
                dims: vec![CONV_TAPS as u64, dim],
                ty: GgmlType::F32,
                init: Init::Normal(0.5),
            });
            out.push(matrix(n("shortconv.out_proj.weight"), dim, dim, false));
            push_ffn(&mut out, l);
            continue;
        }
        if shape.arch == Arch::Phi3 {
            // As llama.cpp's converter writes Phi-3: the checkpoint's fused
            // `qkv_proj` (Q rows, K, V) and `gate_up_proj` (gate rows, up).
            out.push(matrix(n("attn_qkv.weight"), dim, q_dim + 2 * kv_dim, false));
            out.push(matrix(n("attn_output.weight"), q_dim, dim, false));
            out.push(vector(n("ffn_norm.weight"), dim, Init::Ones));
            out.push(matrix(n("ffn_up.weight"), dim, 2 * hidden, false));
            out.push(matrix(n("ffn_down.weight"), hidden, dim, false));
            continue;
        }
        out.push(matrix(n("attn_q.weight"), dim, q_dim, false));
        if shape.arch == Arch::Qwen2 {
            out.push(vector(n("attn_q.bias"), q_dim, Init::Normal(WEIGHT_STD)));
        }
        out.push(matrix(n("attn_k.weight"), dim, kv_dim, false));
        if shape.arch == Arch::Qwen2 {
            out.push(vector(n("attn_k.bias"), kv_dim, Init::Normal(WEIGHT_STD)));
        }
        out.push(matrix(n("attn_v.weight"), dim, kv_dim, false));
        if shape.arch == Arch::Qwen2 {
            out.push(vector(n("attn_v.bias"), kv_dim, Init::Normal(WEIGHT_STD)));
        }
        if matches!(shape.arch, Arch::Qwen3 | Arch::Lfm2 | Arch::Gemma3) {
            out.push(vector(n("attn_q_norm.weight"), head_dim, Init::Ones));
            out.push(vector(n("attn_k_norm.weight"), head_dim, Init::Ones));
        }
        out.push(matrix(n("attn_output.weight"), q_dim, dim, false));
        push_ffn(&mut out, l);
        if shape.arch == Arch::Gemma3 {
            out.push(vector(n("post_attention_norm.weight"), dim, Init::Ones));
            out.push(vector(n("post_ffw_norm.weight"), dim, Init::Ones));
        }
    }
    // LFM2's converter names the final norm as the embedding norm.
    let output_norm = match shape.arch {
        Arch::Lfm2 => "token_embd_norm.weight",
        _ => "output_norm.weight",
    };
    out.push(vector(output_norm.into(), dim, Init::Ones));
    if !shape.tied_embeddings {
        out.push(matrix("output.weight".into(), dim, vocab, true));
    }
    out
}

/// The GGUF metadata of a synthetic model: `general.*`, the architecture's
/// hyperparameter keys as llama.cpp's converter writes them, and the tokenizer.
pub fn metadata(shape: &Shape, opts: &SynthOptions, n_layers: usize) -> Vec<(String, Value)> {
    let arch = shape.arch.name();
    let k = |s: &str| format!("{arch}.{s}");
    let u = |v: usize| Value::U32(v as u32);
    let mut md = vec![
        ("general.architecture".to_string(), Value::String(arch.into())),
        (
            "general.name".to_string(),
            Value::String(format!("{} (synthetic, seed {})", shape.name, opts.seed)),
        ),
        ("general.file_type".to_string(), Value::U32(opts.quant.file_type())),
        ("general.quantization_version".to_string(), Value::U32(2)),
        (k("context_length"), u(shape.context_length)),
        (k("embedding_length"), u(shape.dim)),
        (k("block_count"), u(n_layers)),
        (k("feed_forward_length"), u(shape.hidden_dim)),
        (k("attention.head_count"), u(shape.n_heads)),
        (k("attention.head_count_kv"), u(shape.n_kv_heads)),
        (k("rope.freq_base"), Value::F32(shape.rope_theta)),
        (k("attention.layer_norm_rms_epsilon"), Value::F32(shape.rms_eps)),
    ];
    if shape.arch == Arch::Lfm2 {
        // As LFM2's converter writes them: kv heads per layer, 0 for a conv layer.
        let per_layer = (0..n_layers)
            .map(|l| Value::I32(if shape.is_conv(l) { 0 } else { shape.n_kv_heads as i32 }))
            .collect();
        for (key, v) in md.iter_mut() {
            if *key == k("attention.head_count_kv") {
                *v = Value::Array(per_layer);
                break;
            }
        }
        md.push((k("shortconv.l_cache"), u(CONV_TAPS)));
        md.push((k("vocab_size"), u(shape.vocab_size)));
    }
    if shape.arch == Arch::Llama {
        md.push((k("vocab_size"), u(shape.vocab_size)));
        md.push((k("rope.dimension_count"), u(shape.head_dim())));
    }
    if shape.arch == Arch::Phi3 {
        // As llama.cpp's converter writes Phi-3 mini 4k: the original
        // context is the context (no LongRoPE factors), and the config's
        // sliding window of 2047 is written but ignored by llama.cpp and icllm.
        md.push((k("rope.dimension_count"), u(shape.head_dim())));
        md.push((k("rope.scaling.original_context_length"), u(shape.context_length)));
        md.push((k("attention.sliding_window"), u(2047)));
    }
    if shape.arch == Arch::Gemma3 {
        // llama.cpp derives the pattern (five sliding layers of six) and the
        // local layers' RoPE base (10,000) when the file names neither.
        md.push((k("attention.sliding_window"), u(GEMMA3_WINDOW)));
    }
    if shape.explicit_head_dim.is_some() {
        md.push((k("attention.key_length"), u(shape.head_dim())));
        md.push((k("attention.value_length"), u(shape.head_dim())));
    }
    if opts.tokenizer.is_empty() {
        md.extend(synthetic_vocab(shape.vocab_size));
    } else {
        md.extend(opts.tokenizer.iter().cloned());
    }
    md
}

/// A byte-level BPE vocabulary of `n` tokens (`n` ≥ 257) with no merges:
/// the 256 byte tokens in GPT-2's byte-to-unicode spelling, `<|endoftext|>`
/// (BOS and EOS), then unused `[PAD{i}]` tokens. For shapes whose real
/// tokenizer is not at hand: it has the right size, and text round-trips
/// byte by byte.
pub fn synthetic_vocab(n: usize) -> Vec<(String, Value)> {
    let mut tokens: Vec<Value> = (0..=255u8)
        .map(|b| Value::String(gpt2_byte_char(b).to_string()))
        .collect();
    let mut types = vec![Value::I32(1); 256];
    let eos = tokens.len() as u32;
    tokens.push(Value::String("<|endoftext|>".into()));
    types.push(Value::I32(3));
    while tokens.len() < n {
        tokens.push(Value::String(format!("[PAD{}]", tokens.len())));
        types.push(Value::I32(5));
    }
    vec![
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String("gpt-2".into())),
        ("tokenizer.ggml.tokens".into(), Value::Array(tokens)),
        ("tokenizer.ggml.token_type".into(), Value::Array(types)),
        ("tokenizer.ggml.merges".into(), Value::Array(Vec::new())),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(eos)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(eos)),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
    ]
}

/// GPT-2's printable spelling of a byte: printable Latin-1 bytes stand for
/// themselves, the others map to U+0100 onwards in byte order.
pub fn gpt2_byte_char(b: u8) -> char {
    let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
    if printable(b) {
        return b as char;
    }
    let rank = (0..b).filter(|&c| !printable(c)).count() as u32;
    char::from_u32(256 + rank).expect("valid code point")
}

/// What was written.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthSummary {
    pub n_layers: usize,
    pub n_params: u64,
    pub bytes: u64,
    pub tensors: Vec<PlannedTensor>,
}

/// Writes a synthetic GGUF of `shape` to `out`, streaming one tensor at a time.
pub fn write_gguf<W: Write>(shape: &Shape, opts: &SynthOptions, out: &mut W) -> io::Result<SynthSummary> {
    let n_layers = opts.layers.unwrap_or(shape.n_layers).clamp(1, shape.n_layers.max(1));
    let tensors = plan(shape, opts.quant, n_layers);
    let md = metadata(shape, opts, n_layers);
    let alignment = writer::alignment(&md);
    let headers: Vec<TensorHeader> = tensors.iter().map(PlannedTensor::header).collect();
    let header = writer::write_header(&md, &headers);
    out.write_all(&header)?;
    let mut written = header.len() as u64;
    let mut n_params = 0u64;
    for (i, t) in tensors.iter().enumerate() {
        if i > 0 {
            let pad = writer::padding(written, alignment);
            out.write_all(&vec![0u8; pad])?;
            written += pad as u64;
        }
        let bytes = tensor_bytes(shape, t, opts.seed, opts.threads, opts.search, out)?;
        debug_assert_eq!(bytes, t.header().data_bytes());
        written += bytes;
        n_params += t.dims.iter().product::<u64>();
    }
    out.flush()?;
    Ok(SynthSummary {
        n_layers,
        n_params,
        bytes: written,
        tensors,
    })
}

/// A seed for one row of one tensor (independent of threading).
fn row_seed(seed: u64, name: &str, row: u64) -> u64 {
    // FNV-1a over the name, mixed with the seed and the row.
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for b in name.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^ row.wrapping_mul(0xD6E8_FEB8_6659_FD93)
}

/// Generates `t`'s values row by row, converts them to its type and writes
/// them; returns the bytes written.
fn tensor_bytes<W: Write>(
    shape: &Shape,
    t: &PlannedTensor,
    seed: u64,
    threads: usize,
    search: Search,
    out: &mut W,
) -> io::Result<u64> {
    let cols = t.dims[0] as usize;
    let rows: u64 = t.dims.iter().skip(1).product();
    let make_row = |r: u64| -> Vec<u8> {
        let values: Vec<f32> = match t.init {
            Init::Ones => vec![1.0; cols],
            Init::Normal(std) => {
                let mut rng = Rng::new(row_seed(seed, &t.name, r));
                let mut v = vec![0.0; cols];
                rng.fill_normal(&mut v, std);
                v
            }
            Init::Llama3RopeFactors => llama3_rope_factors(shape, cols),
        };
        quantize_row_bytes_with(t.ty, &values, search).expect("planned types fit their rows")
    };
    let mut written = 0u64;
    // Rows are made in chunks, each chunk split across the workers, then
    // written in order.
    let chunk = 64u64 * threads.max(1) as u64;
    let mut r0 = 0u64;
    while r0 < rows {
        let r1 = (r0 + chunk).min(rows);
        let parts: Vec<Vec<u8>> = if threads <= 1 || r1 - r0 < 2 {
            vec![(r0..r1).flat_map(make_row).collect()]
        } else {
            let per = (r1 - r0).div_ceil(threads as u64);
            std::thread::scope(|s| {
                let handles: Vec<_> = (0..threads as u64)
                    .map(|w| {
                        let (a, b) = ((r0 + w * per).min(r1), (r0 + (w + 1) * per).min(r1));
                        let make_row = &make_row;
                        s.spawn(move || (a..b).flat_map(make_row).collect::<Vec<u8>>())
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("worker panicked"))
                    .collect()
            })
        };
        for p in parts {
            out.write_all(&p)?;
            written += p.len() as u64;
        }
        r0 = r1;
    }
    Ok(written)
}

/// llama3's RoPE scaling as a per-frequency divisor (what llama.cpp's
/// converter writes to `rope_freqs.weight`): 1 for high frequencies,
/// `factor` for low ones, a smooth blend between.
fn llama3_rope_factors(shape: &Shape, n: usize) -> Vec<f32> {
    let Some(s) = shape.llama3_rope else {
        return vec![1.0; n];
    };
    let head_dim = shape.head_dim() as f64;
    let (factor, low, high) = (s.factor as f64, s.low_freq_factor as f64, s.high_freq_factor as f64);
    let old_ctx = s.original_context as f64;
    let (low_wavelen, high_wavelen) = (old_ctx / low, old_ctx / high);
    (0..n)
        .map(|i| {
            let freq = 1.0 / (shape.rope_theta as f64).powf(2.0 * i as f64 / head_dim);
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            let divisor = if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                factor
            } else {
                let smooth = (old_ctx / wavelen - low) / (high - low);
                1.0 / ((1.0 - smooth) / factor + smooth)
            };
            divisor as f32
        })
        .collect()
}

/// Re-quantizes a GGUF file held in memory (F32/F16/BF16 or quantized
/// tensors) with `mix`: every 2-D `*.weight` tensor gets the mix's type for
/// its name and row length (with the row-length fallback); other tensors
/// (norms, biases, `rope_freqs`) and all metadata are kept, except
/// `general.file_type`. The values pass through f32 (dequantized first).
pub fn quantize_gguf(bytes: &[u8], mix: QuantMix) -> Result<Vec<u8>, String> {
    let gguf = crate::format::gguf::Gguf::parse(bytes).map_err(|e| e.to_string())?;
    let n_layers = gguf
        .tensors
        .iter()
        .filter_map(|t| t.name.strip_prefix("blk.")?.split('.').next()?.parse::<usize>().ok())
        .max()
        .map_or(0, |l| l + 1);
    let tied = gguf.tensor("output.weight").is_none();
    quantize_gguf_with(bytes, mix.file_type(), |name, dims, ty| {
        // LFM2's conv kernels stay F32, as llama.cpp's quantizer keeps them
        // (ggml's `ssm_conv` reads F32 only).
        let is_matrix = dims.len() == 2 && name.ends_with(".weight") && !name.contains("shortconv.conv");
        let is_head = name == "output.weight" || (tied && name == "token_embd.weight");
        match is_matrix {
            true => mix.tensor_type(name, dims[0] as usize, n_layers, is_head),
            false => ty,
        }
    })
}

/// `bytes` (a GGUF file) with each tensor in the type `type_of(name, dims,
/// its type)` gives, quantized from its values by ggml's reference
/// quantizers, and `general.file_type` set to `file_type`. A tensor whose
/// type stays is copied as it is.
pub fn quantize_gguf_with(
    bytes: &[u8],
    file_type: u32,
    type_of: impl Fn(&str, &[u64], GgmlType) -> GgmlType,
) -> Result<Vec<u8>, String> {
    use crate::format::gguf::Gguf;
    use crate::model::Tensor;
    let gguf = Gguf::parse(bytes).map_err(|e| e.to_string())?;
    let mut md: Vec<(String, Value)> = gguf
        .metadata
        .iter()
        .filter(|(k, _)| k.as_str() != "general.file_type")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    md.push(("general.file_type".into(), Value::U32(file_type)));
    let mut tensors = Vec::with_capacity(gguf.tensors.len());
    for info in &gguf.tensors {
        let data = bytes.get(info.byte_range()).ok_or("tensor outside the file")?;
        let (cols, rows) = (
            info.dims[0] as usize,
            info.dims.iter().skip(1).product::<u64>() as usize,
        );
        let src = Tensor::from_le_bytes(info.ty, rows, cols, data).map_err(|e| format!("{}: {e}", info.name))?;
        let ty = type_of(&info.name, &info.dims, info.ty);
        let out = if ty == info.ty {
            data.to_vec()
        } else {
            let values = src.to_f32_vec();
            let mut out = Vec::with_capacity(ty.row_bytes(cols) * rows);
            for row in values.chunks_exact(cols) {
                out.extend(quantize_row_bytes(ty, row)?);
            }
            out
        };
        tensors.push(writer::TensorData {
            name: info.name.clone(),
            dims: info.dims.clone(),
            ty,
            bytes: out,
        });
    }
    Ok(writer::write(&md, &tensors))
}

#[cfg(test)]
mod tests;

//! Weights: owned, aligned copies of the tensors, and the incremental loader.
//!
//! Tensor bytes are copied out of the file into typed vectors at load time
//! (never reinterpreted in place: file bytes need not be aligned). The loader
//! takes tensors one at a time so a canister can feed them across messages.

use super::arch::ArchSpec;
use super::config::{ModelConfig, ROPE_FACTORS_LONG, ROPE_FACTORS_SHORT};
use super::ModelError;
use crate::format::gguf::{Gguf, TensorInfo};
use crate::kernels::{RopeTable, WeightMatrix};
use crate::tensor::{GgmlType, Layout, Tensor};

/// The weights of one transformer block.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerWeights {
    /// RMSNorm before the mixer (attention or short conv; LFM2's `operator_norm`): (dim)
    pub attn_norm: Vec<f32>,
    /// What mixes positions: attention, or a short convolution (LFM2).
    pub mixer: Mixer,
    /// (dim)
    pub ffn_norm: Vec<f32>,
    /// (hidden_dim, dim)
    pub w_gate: Tensor,
    /// (hidden_dim, dim)
    pub w_up: Tensor,
    /// (dim, hidden_dim)
    pub w_down: Tensor,
    /// Biases of the q, k, v projections: (q_dim), (kv_dim), (kv_dim);
    /// present when the architecture has them (qwen2).
    pub qkv_bias: Option<QkvBias>,
    /// Per-head RMSNorm weights of q and k, each (head_dim); present when
    /// the architecture has them (qwen3).
    pub qk_norm: Option<QkNorm>,
    /// RMSNorm weights applied to the attention's and the FFN's output
    /// before each residual add, each (dim); present when the architecture
    /// has them (gemma3).
    pub post_norms: Option<PostNorms>,
}

/// The part of a block that mixes positions.
#[derive(Debug, Clone, PartialEq)]
pub enum Mixer {
    Attention(AttentionWeights),
    ShortConv(ShortConvWeights),
}

/// The projections of an attention block.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionWeights {
    /// (q_dim, dim)
    pub wq: Tensor,
    /// (kv_dim, dim)
    pub wk: Tensor,
    /// (kv_dim, dim)
    pub wv: Tensor,
    /// (dim, q_dim)
    pub wo: Tensor,
}

/// A gated short-convolution block (LFM2).
#[derive(Debug, Clone, PartialEq)]
pub struct ShortConvWeights {
    /// (3·dim, dim): rows `0..dim` give the gate b, `dim..2·dim` the gate c,
    /// `2·dim..3·dim` the input x.
    pub in_proj: Tensor,
    /// (dim, conv_kernel): each channel's taps, oldest position first.
    pub conv: Vec<f32>,
    /// (dim, dim)
    pub out_proj: Tensor,
}

impl LayerWeights {
    /// The attention projections, unless this is a conv layer.
    pub fn attention(&self) -> Option<&AttentionWeights> {
        match &self.mixer {
            Mixer::Attention(a) => Some(a),
            Mixer::ShortConv(_) => None,
        }
    }
}

/// RMSNorms after attention and after the FFN.
#[derive(Debug, Clone, PartialEq)]
pub struct PostNorms {
    /// (dim)
    pub attn: Vec<f32>,
    /// (dim)
    pub ffn: Vec<f32>,
}

/// Bias vectors of the q, k and v projections.
#[derive(Debug, Clone, PartialEq)]
pub struct QkvBias {
    /// (q_dim)
    pub q: Vec<f32>,
    /// (kv_dim)
    pub k: Vec<f32>,
    /// (kv_dim)
    pub v: Vec<f32>,
}

/// RMSNorm weights applied to each head of q and k before RoPE.
#[derive(Debug, Clone, PartialEq)]
pub struct QkNorm {
    /// (head_dim)
    pub q: Vec<f32>,
    /// (head_dim)
    pub k: Vec<f32>,
}

/// The part of a model one canister holds when the model is sharded over
/// canisters: a contiguous range of layers and/or the ends (the token
/// embedding, the final norm and the output head). A coordinator holds the
/// ends, each shard a layer range; an unsharded model is
/// [`ModelPart::whole`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ModelPart {
    pub layers: std::ops::Range<usize>,
    pub ends: bool,
}

impl ModelPart {
    pub fn whole(n_layers: usize) -> ModelPart {
        ModelPart {
            layers: 0..n_layers,
            ends: true,
        }
    }

    /// The ends alone: what a coordinator holds.
    pub fn ends() -> ModelPart {
        ModelPart {
            layers: 0..0,
            ends: true,
        }
    }

    /// Layers `layers` alone: what a shard holds.
    pub fn layers(layers: std::ops::Range<usize>) -> ModelPart {
        ModelPart { layers, ends: false }
    }

    /// Whether a tensor of slot `slot` belongs to this part. RoPE factors go
    /// with the layers (attention rotates with them).
    fn holds(&self, slot: Slot) -> bool {
        match slot.layer() {
            Some(l) => self.layers.contains(&l),
            None if matches!(slot, Slot::TokEmbd | Slot::OutputNorm | Slot::Output) => self.ends,
            None => !self.layers.is_empty(),
        }
    }
}

/// A loaded model: read-only during generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    pub config: ModelConfig,
    /// (vocab_size, dim)
    pub tok_embd: Tensor,
    /// n_layers blocks
    pub layers: Vec<LayerWeights>,
    /// (dim)
    pub output_norm: Vec<f32>,
    /// (vocab_size, dim); `None` when tied to `tok_embd`
    pub output: Option<Tensor>,
    /// RoPE frequencies derived from the config (and `rope_freqs.weight`
    /// when the model scales them per frequency, as Llama 3.1 does, or
    /// `rope_factors_short.weight`, Phi-3 128k's short LongRoPE factors).
    pub rope: RopeTable,
    /// RoPE frequencies of the sliding-window layers when they have their
    /// own base (Gemma 3); `None`: every layer uses `rope`.
    pub rope_swa: Option<RopeTable>,
    /// The global layers' RoPE with LongRoPE's long factors, when the file
    /// has LongRoPE factors (see [`Model::rope_of`]).
    pub rope_long: Option<RopeTable>,
    /// What of the file's model this is, in the file's layer numbers
    /// (`config` and `layers` are the part's own: its layer `i` is the
    /// file's `part.layers.start + i`). A part without the ends has an
    /// empty (0-row) embedding and no head.
    pub part: ModelPart,
}

impl Model {
    /// Parses and loads a whole GGUF file held in memory (native use).
    pub fn from_gguf_bytes(bytes: &[u8]) -> Result<(Model, Gguf), ModelError> {
        Model::from_gguf_bytes_with(bytes, |_| {})
    }

    /// As [`Model::from_gguf_bytes`], letting `configure` adjust the loader
    /// first (e.g. [`ModelLoader::keep_16_bit_floats`]).
    pub fn from_gguf_bytes_with(
        bytes: &[u8],
        configure: impl FnOnce(&mut ModelLoader),
    ) -> Result<(Model, Gguf), ModelError> {
        let gguf = Gguf::parse(bytes)?;
        let mut loader = ModelLoader::new(&gguf)?;
        configure(&mut loader);
        while let Some(info) = loader.next_needed() {
            let (name, range) = (info.name.clone(), info.byte_range());
            let data = bytes.get(range).ok_or_else(|| ModelError::TensorBytes {
                name: name.clone(),
                reason: "lies outside the file".into(),
            })?;
            loader.add_tensor(&name, data)?;
        }
        Ok((loader.finish()?, gguf))
    }

    /// The output head (vocab_size, dim): `output.weight`, or the token
    /// embedding when tied.
    pub fn output_weights(&self) -> &Tensor {
        self.output.as_ref().unwrap_or(&self.tok_embd)
    }

    /// Heap bytes of the weights (every tensor's data, norms and biases
    /// included; the RoPE table, a few KiB, aside).
    pub fn heap_bytes(&self) -> u64 {
        let vec = |v: &[f32]| v.len() as u64 * 4;
        let layers: u64 = self
            .layers
            .iter()
            .map(|l| {
                let mixer = match &l.mixer {
                    Mixer::Attention(a) => [&a.wq, &a.wk, &a.wv, &a.wo]
                        .iter()
                        .map(|t| t.heap_bytes() as u64)
                        .sum::<u64>(),
                    Mixer::ShortConv(c) => (c.in_proj.heap_bytes() + c.out_proj.heap_bytes()) as u64 + vec(&c.conv),
                };
                mixer
                    + [&l.w_gate, &l.w_up, &l.w_down]
                        .iter()
                        .map(|t| t.heap_bytes() as u64)
                        .sum::<u64>()
                    + vec(&l.attn_norm)
                    + vec(&l.ffn_norm)
                    + l.qkv_bias.as_ref().map_or(0, |b| vec(&b.q) + vec(&b.k) + vec(&b.v))
                    + l.qk_norm.as_ref().map_or(0, |n| vec(&n.q) + vec(&n.k))
                    + l.post_norms.as_ref().map_or(0, |n| vec(&n.attn) + vec(&n.ffn))
            })
            .sum();
        self.tok_embd.heap_bytes() as u64
            + self.output.as_ref().map_or(0, |t| t.heap_bytes() as u64)
            + vec(&self.output_norm)
            + layers
    }

    pub fn arch(&self) -> &'static ArchSpec {
        self.config.arch.spec()
    }

    /// The RoPE table of `layer` in a sequence of `ctx` positions: as
    /// llama.cpp, LongRoPE's long factors when the context exceeds the
    /// original one, the short ones otherwise (whatever the position).
    pub fn rope_of(&self, layer: usize, ctx: u32) -> &RopeTable {
        match (&self.rope_swa, self.config.attention_window(layer)) {
            (Some(swa), Some(_)) => swa,
            _ if self.uses_long_rope(ctx) => self.rope_long.as_ref().unwrap_or(&self.rope),
            _ => &self.rope,
        }
    }

    /// Whether a sequence of `ctx` positions rotates with LongRoPE's long
    /// factors: K rows cached under one choice are wrong under the other.
    pub fn uses_long_rope(&self, ctx: u32) -> bool {
        self.config.longrope_context.is_some_and(|original| ctx > original)
    }
}

/// What a tensor slot holds once loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    TokEmbd,
    OutputNorm,
    Output,
    AttnNorm(usize),
    Wq(usize),
    Wk(usize),
    Wv(usize),
    Wo(usize),
    FfnNorm(usize),
    Gate(usize),
    Up(usize),
    Down(usize),
    BiasQ(usize),
    BiasK(usize),
    BiasV(usize),
    QNorm(usize),
    KNorm(usize),
    PostAttnNorm(usize),
    PostFfnNorm(usize),
    ConvInProj(usize),
    ConvKernel(usize),
    ConvOutProj(usize),
    RopeFreqs,
    /// LongRoPE's short factors (Phi-3 128k).
    RopeFactorsShort,
    /// LongRoPE's long factors, for contexts beyond the original one.
    RopeFactorsLong,
    /// A fused `attn_qkv` matrix: split into Wq, Wk, Wv when added.
    Qkv(usize),
    /// A fused `ffn_up` matrix holding the gate's rows then the up
    /// projection's: split into Gate and Up when added.
    GateUp(usize),
}

impl Slot {
    /// The layer a slot belongs to; `None` for the ends and RoPE factors.
    fn layer(self) -> Option<usize> {
        use Slot::*;
        match self {
            TokEmbd | OutputNorm | Output | RopeFreqs | RopeFactorsShort | RopeFactorsLong => None,
            AttnNorm(l) | Wq(l) | Wk(l) | Wv(l) | Wo(l) | FfnNorm(l) | Gate(l) | Up(l) | Down(l) | BiasQ(l)
            | BiasK(l) | BiasV(l) | QNorm(l) | KNorm(l) | PostAttnNorm(l) | PostFfnNorm(l) | ConvInProj(l)
            | ConvKernel(l) | ConvOutProj(l) | Qkv(l) | GateUp(l) => Some(l),
        }
    }

    /// Whether the slot keeps its tensor (a weight matrix) rather than an f32 vector.
    fn is_matrix(self) -> bool {
        matches!(
            self,
            Slot::TokEmbd
                | Slot::Output
                | Slot::Wq(_)
                | Slot::Wk(_)
                | Slot::Wv(_)
                | Slot::Wo(_)
                | Slot::Gate(_)
                | Slot::Up(_)
                | Slot::Down(_)
                | Slot::ConvInProj(_)
                | Slot::ConvOutProj(_)
                | Slot::Qkv(_)
                | Slot::GateUp(_)
        )
    }

    /// The slots a tensor of this slot is split into, with their row counts
    /// (in order, from the first row): three for a fused QKV, two for a
    /// fused gate-up, else the slot itself with all its `rows`.
    fn parts(self, config: &ModelConfig, rows: usize) -> Vec<(Slot, usize)> {
        let c = config;
        match self {
            Slot::Qkv(l) => vec![(Slot::Wq(l), c.q_dim), (Slot::Wk(l), c.kv_dim), (Slot::Wv(l), c.kv_dim)],
            Slot::GateUp(l) => vec![(Slot::Gate(l), c.hidden_dim), (Slot::Up(l), c.hidden_dim)],
            s => vec![(s, rows)],
        }
    }
}

/// Splits the data of a matrix of `rows` rows into consecutive runs of
/// `parts[i]` rows each (a fused matrix into its projections). Every row of
/// a GGUF tensor, quantized or not, takes the same whole number of bytes,
/// so a row is `bytes.len() / rows` bytes.
fn split_rows<'a>(bytes: &'a [u8], rows: usize, parts: &[usize]) -> Result<Vec<&'a [u8]>, String> {
    if parts.iter().sum::<usize>() != rows {
        return Err(format!("cannot split {rows} rows into {parts:?}"));
    }
    if rows == 0 || !bytes.len().is_multiple_of(rows) {
        return Err(format!("{} bytes are not {rows} rows of equal size", bytes.len()));
    }
    let row_bytes = bytes.len() / rows;
    let mut rest = bytes;
    let mut out = Vec::with_capacity(parts.len());
    for &n in parts {
        let (part, tail) = rest.split_at(n * row_bytes);
        out.push(part);
        rest = tail;
    }
    Ok(out)
}

/// A tensor a model needs: its GGUF-style name and its dims in ggml order
/// (`dims[0]` contiguous; vectors have one dim).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WantedTensor {
    pub name: String,
    pub dims: Vec<u64>,
}

/// The tensors (name, slot, rows, cols) a model with this config needs.
/// `has(name)` says whether the file has an optional tensor: the output
/// head (else it is tied to the embedding, which the architecture must
/// allow), Llama 3.1's per-frequency RoPE factors, LongRoPE's short and
/// long factors, a layer's fused `attn_qkv` (else separate q, k, v).
fn wanted(config: &ModelConfig, has: &dyn Fn(&str) -> bool) -> Vec<(Slot, String, usize, usize)> {
    let c = config;
    let spec = c.arch.spec();
    let has_output = has("output.weight");
    // llama.cpp reads `rope_freqs` for the llama family and LongRoPE
    // factors for phi3, never both.
    let has_rope_freqs = !spec.longrope_factors && has("rope_freqs.weight");
    let mut wanted: Vec<(Slot, String, usize, usize)> = vec![
        (Slot::TokEmbd, "token_embd.weight".into(), c.vocab_size, c.dim),
        (Slot::OutputNorm, spec.output_norm.into(), 1, c.dim),
    ];
    if has_output || !spec.output_may_be_tied {
        wanted.push((Slot::Output, "output.weight".into(), c.vocab_size, c.dim));
    }
    if has_rope_freqs {
        wanted.push((Slot::RopeFreqs, "rope_freqs.weight".into(), 1, c.rope_dims / 2));
    }
    // Both LongRoPE sets: a job's context picks one (see `Model::rope_of`).
    if c.longrope_context.is_some() {
        for (slot, name) in [
            (Slot::RopeFactorsShort, ROPE_FACTORS_SHORT),
            (Slot::RopeFactorsLong, ROPE_FACTORS_LONG),
        ] {
            if has(name) {
                wanted.push((slot, name.into(), 1, c.rope_dims / 2));
            }
        }
    }
    for l in 0..c.n_layers {
        let name = |s: &str| format!("blk.{l}.{s}.weight");
        wanted.push((Slot::AttnNorm(l), name("attn_norm"), 1, c.dim));
        wanted.push((Slot::FfnNorm(l), name("ffn_norm"), 1, c.dim));
        if spec.fused_gate_up {
            wanted.push((Slot::GateUp(l), name("ffn_up"), 2 * c.hidden_dim, c.dim));
        } else {
            wanted.extend([
                (Slot::Gate(l), name("ffn_gate"), c.hidden_dim, c.dim),
                (Slot::Up(l), name("ffn_up"), c.hidden_dim, c.dim),
            ]);
        }
        wanted.push((Slot::Down(l), name("ffn_down"), c.dim, c.hidden_dim));
        if c.is_conv(l) {
            // The conv kernel is (dim, taps): ggml dims [taps, dim].
            wanted.extend([
                (Slot::ConvInProj(l), name("shortconv.in_proj"), 3 * c.dim, c.dim),
                (Slot::ConvKernel(l), name("shortconv.conv"), c.dim, c.conv_kernel),
                (Slot::ConvOutProj(l), name("shortconv.out_proj"), c.dim, c.dim),
            ]);
            continue;
        }
        if spec.fused_qkv && has(&name("attn_qkv")) {
            wanted.push((Slot::Qkv(l), name("attn_qkv"), c.q_dim + 2 * c.kv_dim, c.dim));
        } else {
            wanted.extend([
                (Slot::Wq(l), name("attn_q"), c.q_dim, c.dim),
                (Slot::Wk(l), name("attn_k"), c.kv_dim, c.dim),
                (Slot::Wv(l), name("attn_v"), c.kv_dim, c.dim),
            ]);
        }
        wanted.push((Slot::Wo(l), name("attn_output"), c.dim, c.q_dim));
        if spec.qkv_bias {
            let bias = |s: &str| format!("blk.{l}.{s}.bias");
            wanted.extend([
                (Slot::BiasQ(l), bias("attn_q"), 1, c.q_dim),
                (Slot::BiasK(l), bias("attn_k"), 1, c.kv_dim),
                (Slot::BiasV(l), bias("attn_v"), 1, c.kv_dim),
            ]);
        }
        if spec.qk_norm {
            wanted.extend([
                (Slot::QNorm(l), name("attn_q_norm"), 1, c.head_dim),
                (Slot::KNorm(l), name("attn_k_norm"), 1, c.head_dim),
            ]);
        }
        if spec.post_norms {
            wanted.extend([
                (Slot::PostAttnNorm(l), name("post_attention_norm"), 1, c.dim),
                (Slot::PostFfnNorm(l), name("post_ffw_norm"), 1, c.dim),
            ]);
        }
    }
    wanted
}

/// ggml-order dims of a (rows, cols) tensor; rows = 1 is a vector.
fn ggml_dims(rows: usize, cols: usize) -> Vec<u64> {
    if rows == 1 {
        vec![cols as u64]
    } else {
        vec![cols as u64, rows as u64]
    }
}

/// Every tensor a model with this config needs (see [`ModelLoader::from_tensors`]),
/// so that other formats can check shapes in their own terms.
pub fn wanted_tensors(config: &ModelConfig, has_output: bool, has_rope_freqs: bool) -> Vec<WantedTensor> {
    let has = |name: &str| match name {
        "output.weight" => has_output,
        "rope_freqs.weight" => has_rope_freqs,
        _ => false,
    };
    wanted(config, &has)
        .into_iter()
        .map(|(_, name, rows, cols)| WantedTensor {
            name,
            dims: ggml_dims(rows, cols),
        })
        .collect()
}

/// One tensor the model needs.
#[derive(Debug, Clone)]
struct Needed {
    slot: Slot,
    info: TensorInfo,
    /// Row-major shape: (rows, cols); vectors are (1, len).
    rows: usize,
    cols: usize,
    /// The tensor once added, as the slots it fills (several for a fused matrix).
    loaded: Option<Vec<(Slot, Tensor)>>,
}

/// Loads a model tensor by tensor.
///
/// `new` resolves the config and checks that every needed tensor exists with
/// the expected shape and a supported type; then the caller feeds each
/// tensor's bytes (`next_needed` says which, in file order) and calls
/// `finish`.
#[derive(Debug, Clone)]
pub struct ModelLoader {
    config: ModelConfig,
    needed: Vec<Needed>,
    /// How matrices are laid out as they are added: F16 and BF16 widened
    /// to f32 (see [`F16_WIDEN_MAX_BYTES`]), the 4- and 5-bit quants
    /// widened to bytes (see [`K_WIDEN_MAX_BYTES`]).
    layout: Layout,
    part: ModelPart,
}

/// Q4_K, Q5_K and Q4_0 matrices are repacked with one byte per quant
/// ([`BlockKWidex4`], [`BlockQ4_0Widex4`]) when the whole model then takes
/// at most this many bytes of heap: about 40 % fewer instructions per
/// multiply-add than the nibble layouts, the same values, 1.72× (Q4_K),
/// 1.45× (Q5_K) or 1.8× (Q4_0) the bytes.
/// Q4_1, Q5_0, Q5_1 and IQ4_NL are widened under the same rule, and
/// otherwise kept as the file's blocks ([`crate::kernels::matrix::FileBlocks`]).
/// Larger models keep the nibbles to fit the canister's 4 GiB heap beside
/// the KV cache and the load buffers: 3 GiB leaves half a GiB of the
/// canister's 3.5 GiB budget for jobs' KV caches (LFM2.5-2.6B Q4_K_M, 2.7
/// GiB in bytes, decodes 1.5× faster than in nibbles). The wasm64 build's
/// 6 GiB heap moves the line to 5 GiB (half a GiB of its 5.5 GiB budget).
pub const K_WIDEN_MAX_BYTES: u64 = if cfg!(target_arch = "wasm64") { 5 << 30 } else { 3 << 30 };

/// F16 and BF16 weight matrices are widened to f32 at load when the whole
/// model then still takes at most this many bytes: the f32 kernels cost
/// about a third (f16) or a half (bf16) of the instructions per multiply-add
/// in wasm (no per-weight conversion), exactly the same values (every f16
/// and bf16 is an f32), at twice the heap. Larger models keep 16-bit weights
/// to fit the canister's 4 GiB heap.
pub const F16_WIDEN_MAX_BYTES: u64 = 2 << 30;

impl ModelLoader {
    pub fn new(gguf: &Gguf) -> Result<ModelLoader, ModelError> {
        let config = ModelConfig::from_gguf(gguf)?;
        ModelLoader::from_tensors(config, |name| gguf.tensor(name))
    }

    /// A loader for `config` over a file whose tensors `lookup` describes by
    /// GGUF-style name. The output head is expected when `lookup` has
    /// `output.weight` (else tied), the RoPE factors when it has
    /// `rope_freqs.weight` (or LongRoPE's), a fused QKV where it has a
    /// layer's `attn_qkv.weight`. `TensorInfo::offset` orders the tensors.
    pub fn from_tensors<'a>(
        config: ModelConfig,
        lookup: impl Fn(&str) -> Option<&'a TensorInfo>,
    ) -> Result<ModelLoader, ModelError> {
        let has = |name: &str| lookup(name).is_some();
        let mut needed = Vec::new();
        for (slot, name, rows, cols) in wanted(&config, &has) {
            let info = lookup(&name).ok_or_else(|| ModelError::MissingTensor(name.clone()))?;
            let expected = ggml_dims(rows, cols);
            if info.dims != expected {
                return Err(ModelError::TensorShape {
                    name,
                    expected: format!("{expected:?}"),
                    found: format!("{:?}", info.dims),
                });
            }
            if !Tensor::supported_type(info.ty) {
                return Err(ModelError::TensorType {
                    name,
                    ty: info.ty.name(),
                    supported: crate::tensor::supported_type_names(),
                });
            }
            needed.push(Needed {
                slot,
                info: info.clone(),
                rows,
                cols,
                loaded: None,
            });
        }
        needed.sort_by_key(|n| n.info.offset);
        let part = ModelPart::whole(config.n_layers);
        let mut loader = ModelLoader {
            config,
            needed,
            layout: Layout::default(),
            part,
        };
        loader.choose_layout();
        Ok(loader)
    }

    /// Loads only `part` of the model (a sharded model's coordinator or
    /// shard): the other tensors are not needed, and the layouts are chosen
    /// for the part's own size. Before any tensor is added, and before
    /// [`ModelLoader::keep_nibbles`] or [`ModelLoader::keep_16_bit_floats`].
    pub fn select_part(&mut self, part: ModelPart) -> Result<(), ModelError> {
        let n = self.config.n_layers;
        if part.layers.start > part.layers.end || part.layers.end > n || (part.layers.is_empty() && !part.ends) {
            return Err(ModelError::BadConfig {
                key: "part".into(),
                reason: format!("layers {:?} are not a part of a model of {n} layers", part.layers),
            });
        }
        self.needed.retain(|t| part.holds(t.slot));
        self.part = part;
        self.choose_layout();
        Ok(())
    }

    /// Widens what fits (see [`F16_WIDEN_MAX_BYTES`], [`K_WIDEN_MAX_BYTES`]).
    fn choose_layout(&mut self) {
        self.layout = Layout::default();
        let loader = self;
        let has = |l: &ModelLoader, types: &[GgmlType]| l.needed.iter().any(|n| types.contains(&n.info.ty));
        loader.layout.widen_floats = has(loader, &[GgmlType::F16, GgmlType::BF16]) && {
            let mut widened = loader.clone();
            widened.layout.widen_floats = true;
            widened.heap_bytes() <= F16_WIDEN_MAX_BYTES
        };
        let compactable = [
            GgmlType::Q4_0,
            GgmlType::Q4K,
            GgmlType::Q5K,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
            GgmlType::IQ4NL,
        ];
        loader.layout.widen_nibbles = has(loader, &compactable) && {
            let mut widened = loader.clone();
            widened.layout.widen_nibbles = true;
            widened.heap_bytes() <= K_WIDEN_MAX_BYTES
        };
    }

    /// The part of the model this loader loads.
    pub fn part(&self) -> &ModelPart {
        &self.part
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Keeps F16 and BF16 matrices as they are even when widening them would
    /// fit (half the heap, two to three times the instructions per multiply-add).
    pub fn keep_16_bit_floats(&mut self) {
        self.layout.widen_floats = false;
    }

    /// Whether F16 and BF16 matrices will be widened to f32 (see [`F16_WIDEN_MAX_BYTES`]).
    pub fn widens_16_bit_floats(&self) -> bool {
        self.layout.widen_floats
    }

    /// Keeps Q4_0, Q4_K and Q5_K quants as nibbles, and Q4_1, Q5_0, Q5_1
    /// and IQ4_NL as the file's blocks, even when the byte layouts would fit
    /// (55–70 % of their heap; about 1.6× the instructions per multiply-add
    /// for the nibbles, several times for the file blocks).
    pub fn keep_nibbles(&mut self) {
        self.layout.widen_nibbles = false;
    }

    /// Whether the 4- and 5-bit quants will be widened to bytes (see [`K_WIDEN_MAX_BYTES`]).
    pub fn widens_nibbles(&self) -> bool {
        self.layout.widen_nibbles
    }

    /// Every tensor the model needs, in file order.
    pub fn needed(&self) -> impl Iterator<Item = &TensorInfo> {
        self.needed.iter().map(|n| &n.info)
    }

    /// The next tensor (in file order) not yet added.
    pub fn next_needed(&self) -> Option<&TensorInfo> {
        self.needed.iter().find(|n| n.loaded.is_none()).map(|n| &n.info)
    }

    /// Total bytes of tensor data the model needs.
    pub fn total_bytes(&self) -> u64 {
        self.needed.iter().map(|n| n.info.size).sum()
    }

    /// Heap bytes the loaded weights will take (after repacking and the
    /// widening chosen): [`Model::heap_bytes`] of the finished model.
    pub fn heap_bytes(&self) -> u64 {
        self.needed
            .iter()
            .map(|n| match n.slot {
                Slot::RopeFreqs | Slot::RopeFactorsShort | Slot::RopeFactorsLong => 0,
                s if s.is_matrix() => s
                    .parts(&self.config, n.rows)
                    .into_iter()
                    .map(|(_, rows)| Tensor::planned_heap_bytes(n.info.ty, rows, n.cols, self.layout))
                    .sum(),
                // Norms and biases end as f32 vectors.
                _ => (n.rows * n.cols * 4) as u64,
            })
            .sum()
    }

    /// Adds one tensor: `bytes` is its whole data (`info.byte_range()` of the file).
    pub fn add_tensor(&mut self, name: &str, bytes: &[u8]) -> Result<(), ModelError> {
        let n = self
            .needed
            .iter_mut()
            .find(|n| n.info.name == name)
            .ok_or_else(|| ModelError::UnexpectedTensor(name.to_string()))?;
        if n.loaded.is_some() {
            return Err(ModelError::UnexpectedTensor(format!("{name} (already added)")));
        }
        let bad_bytes = |reason| ModelError::TensorBytes {
            name: name.to_string(),
            reason,
        };
        let parts = n.slot.parts(&self.config, n.rows);
        let row_counts: Vec<usize> = parts.iter().map(|&(_, rows)| rows).collect();
        let pieces = match parts.len() {
            1 => vec![bytes],
            _ => split_rows(bytes, n.rows, &row_counts).map_err(bad_bytes)?,
        };
        let mut loaded = Vec::with_capacity(parts.len());
        for ((slot, rows), piece) in parts.into_iter().zip(pieces) {
            let t = Tensor::from_le_bytes_in(n.info.ty, rows, n.cols, piece, self.layout).map_err(bad_bytes)?;
            loaded.push((slot, t));
        }
        n.loaded = Some(loaded);
        Ok(())
    }

    /// Assembles the model once every needed tensor was added.
    pub fn finish(self) -> Result<Model, ModelError> {
        let (config, part) = (self.config, self.part);
        let mut tok_embd = None;
        let mut output_norm = None;
        let mut output = None;
        let mut rope_freqs = None;
        let mut rope_factors_long = None;
        let mut parts: Vec<LayerParts> = (0..config.n_layers).map(|_| LayerParts::default()).collect();
        let mut pieces = Vec::new();
        for n in self.needed {
            pieces.extend(n.loaded.ok_or_else(|| ModelError::Incomplete(n.info.name.clone()))?);
        }
        for (slot, t) in pieces {
            match slot {
                Slot::TokEmbd => tok_embd = Some(t),
                Slot::OutputNorm => output_norm = Some(t.to_f32_vec()),
                Slot::Output => output = Some(t),
                // At most one of the two is wanted (see `wanted`).
                Slot::RopeFreqs | Slot::RopeFactorsShort => rope_freqs = Some(t.to_f32_vec()),
                Slot::RopeFactorsLong => rope_factors_long = Some(t.to_f32_vec()),
                Slot::AttnNorm(l) => parts[l].attn_norm = Some(t),
                Slot::Wq(l) => parts[l].wq = Some(t),
                Slot::Wk(l) => parts[l].wk = Some(t),
                Slot::Wv(l) => parts[l].wv = Some(t),
                Slot::Wo(l) => parts[l].wo = Some(t),
                Slot::FfnNorm(l) => parts[l].ffn_norm = Some(t),
                Slot::Gate(l) => parts[l].gate = Some(t),
                Slot::Up(l) => parts[l].up = Some(t),
                Slot::Down(l) => parts[l].down = Some(t),
                Slot::BiasQ(l) => parts[l].bq = Some(t.to_f32_vec()),
                Slot::BiasK(l) => parts[l].bk = Some(t.to_f32_vec()),
                Slot::BiasV(l) => parts[l].bv = Some(t.to_f32_vec()),
                Slot::QNorm(l) => parts[l].q_norm = Some(t.to_f32_vec()),
                Slot::KNorm(l) => parts[l].k_norm = Some(t.to_f32_vec()),
                Slot::PostAttnNorm(l) => parts[l].post_attn_norm = Some(t.to_f32_vec()),
                Slot::PostFfnNorm(l) => parts[l].post_ffn_norm = Some(t.to_f32_vec()),
                Slot::ConvInProj(l) => parts[l].conv_in = Some(t),
                Slot::ConvKernel(l) => parts[l].conv_kernel = Some(t.to_f32_vec()),
                Slot::ConvOutProj(l) => parts[l].conv_out = Some(t),
                Slot::Qkv(_) | Slot::GateUp(_) => unreachable!("add_tensor splits fused matrices"),
            }
        }
        let missing = |what: &str| ModelError::Incomplete(what.to_string());
        let mut layers = Vec::with_capacity(part.layers.len());
        for (l, p) in parts.into_iter().enumerate().filter(|(l, _)| part.layers.contains(l)) {
            let take = |t: Option<Tensor>| t.ok_or_else(|| missing(&format!("block {l}")));
            let qkv_bias = match (p.bq, p.bk, p.bv) {
                (Some(q), Some(k), Some(v)) => Some(QkvBias { q, k, v }),
                _ => None,
            };
            let qk_norm = match (p.q_norm, p.k_norm) {
                (Some(q), Some(k)) => Some(QkNorm { q, k }),
                _ => None,
            };
            let post_norms = match (p.post_attn_norm, p.post_ffn_norm) {
                (Some(attn), Some(ffn)) => Some(PostNorms { attn, ffn }),
                _ => None,
            };
            let mixer = if config.is_conv(l) {
                Mixer::ShortConv(ShortConvWeights {
                    in_proj: take(p.conv_in)?,
                    conv: p.conv_kernel.ok_or_else(|| missing(&format!("block {l}")))?,
                    out_proj: take(p.conv_out)?,
                })
            } else {
                Mixer::Attention(AttentionWeights {
                    wq: take(p.wq)?,
                    wk: take(p.wk)?,
                    wv: take(p.wv)?,
                    wo: take(p.wo)?,
                })
            };
            layers.push(LayerWeights {
                attn_norm: take(p.attn_norm)?.to_f32_vec(),
                mixer,
                ffn_norm: take(p.ffn_norm)?.to_f32_vec(),
                w_gate: take(p.gate)?,
                w_up: take(p.up)?,
                w_down: take(p.down)?,
                qkv_bias,
                qk_norm,
                post_norms,
            });
        }
        let global_rope = |factors: Option<&[f32]>| {
            RopeTable::scaled(
                config.arch.spec().rope_style,
                config.rope_dims,
                config.rope_freq_base,
                config.rope_freq_scale,
                factors,
            )
            .with_attn_factor(config.rope_attn_factor)
        };
        let rope = global_rope(rope_freqs.as_deref());
        // Without a long set, llama.cpp rotates longer contexts with no
        // factors at all.
        let rope_long = config
            .longrope_context
            .map(|_| global_rope(rope_factors_long.as_deref()));
        // The sliding layers' own base; linear scaling and Llama 3.1's
        // factors apply to the global layers only, as in llama.cpp.
        let rope_swa = config
            .rope_freq_base_swa
            .map(|base| RopeTable::new(config.arch.spec().rope_style, config.rope_dims, base));
        let (tok_embd, output_norm) = match part.ends {
            true => (
                tok_embd.ok_or_else(|| missing("token_embd.weight"))?,
                output_norm.ok_or_else(|| missing(config.arch.spec().output_norm))?,
            ),
            false => (
                Tensor::from_f32(0, config.dim, &[]).expect("an empty f32 tensor is valid"),
                Vec::new(),
            ),
        };
        Ok(Model {
            rope_swa,
            rope_long,
            tok_embd,
            output_norm,
            output,
            layers,
            rope,
            config: config.slice_layers(part.layers.clone()),
            part,
        })
    }
}

/// The tensors of one block as they arrive.
#[derive(Default)]
struct LayerParts {
    attn_norm: Option<Tensor>,
    wq: Option<Tensor>,
    wk: Option<Tensor>,
    wv: Option<Tensor>,
    wo: Option<Tensor>,
    ffn_norm: Option<Tensor>,
    gate: Option<Tensor>,
    up: Option<Tensor>,
    down: Option<Tensor>,
    bq: Option<Vec<f32>>,
    bk: Option<Vec<f32>>,
    bv: Option<Vec<f32>>,
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    post_attn_norm: Option<Vec<f32>>,
    post_ffn_norm: Option<Vec<f32>>,
    conv_in: Option<Tensor>,
    conv_kernel: Option<Vec<f32>>,
    conv_out: Option<Tensor>,
}

#[cfg(test)]
mod tests {
    use super::split_rows;

    #[test]
    fn fused_rows_split_in_order() {
        // 5 rows of 3 bytes into Q (2 rows), K (1), V (2).
        let bytes: Vec<u8> = (0..15).collect();
        let parts = split_rows(&bytes, 5, &[2, 1, 2]).unwrap();
        assert_eq!(parts, [&bytes[0..6], &bytes[6..9], &bytes[9..15]]);
        // Q8_0-sized rows (34 bytes per 32 values): gate then up.
        let bytes: Vec<u8> = (0..4 * 34).map(|i| i as u8).collect();
        let parts = split_rows(&bytes, 4, &[2, 2]).unwrap();
        assert_eq!((parts[0], parts[1]), (&bytes[..68], &bytes[68..]));
    }

    #[test]
    fn a_split_that_does_not_fit_is_refused() {
        let bytes = [0u8; 12];
        assert!(split_rows(&bytes, 4, &[2, 1]).is_err(), "parts must cover every row");
        assert!(split_rows(&bytes, 5, &[2, 3]).is_err(), "rows must be of equal size");
        assert!(split_rows(&[], 0, &[]).is_err());
    }
}

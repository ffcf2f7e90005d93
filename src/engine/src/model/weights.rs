//! Weights: owned, aligned copies of the tensors, and the incremental loader.
//!
//! Tensor bytes are copied out of the file into typed vectors at load time
//! (never reinterpreted in place: file bytes need not be aligned). The loader
//! takes tensors one at a time so a canister can feed them across messages.

use super::arch::ArchSpec;
use super::config::ModelConfig;
use super::ModelError;
use crate::format::gguf::{Gguf, TensorInfo};
use crate::kernels::RopeTable;
use crate::tensor::GgmlType;

/// Typed element storage of a tensor.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    F32(Vec<f32>),
    F16(Vec<half::f16>),
}

/// A weight matrix, row-major (rows, cols). A GGUF tensor with ggml dims
/// `[cols, rows]` is stored this way (ggml's dims[0] is contiguous).
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub data: TensorData,
}

impl Tensor {
    /// Whether the kernels can compute with this type.
    pub fn supported_type(ty: GgmlType) -> bool {
        matches!(ty, GgmlType::F32 | GgmlType::F16)
    }

    /// Copies little-endian file bytes into a typed (rows, cols) tensor.
    pub fn from_le_bytes(ty: GgmlType, rows: usize, cols: usize, bytes: &[u8]) -> Result<Tensor, String> {
        let n = rows.checked_mul(cols).ok_or("element count overflows")?;
        let expected = ty.row_bytes(cols).checked_mul(rows).ok_or("byte size overflows")?;
        if bytes.len() != expected {
            return Err(format!("expected {expected} bytes, got {}", bytes.len()));
        }
        let data = match ty {
            GgmlType::F32 => TensorData::F32(
                bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            ),
            GgmlType::F16 => TensorData::F16(
                bytes
                    .chunks_exact(2)
                    .map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])))
                    .collect(),
            ),
            other => {
                return Err(format!(
                    "type {} is not supported yet (supported: f32, f16)",
                    other.name()
                ))
            }
        };
        debug_assert_eq!(
            n,
            match &data {
                TensorData::F32(v) => v.len(),
                TensorData::F16(v) => v.len(),
            }
        );
        Ok(Tensor { ty, rows, cols, data })
    }

    /// The tensor as a plain f32 vector (for norm weights).
    fn into_f32_vec(self) -> Vec<f32> {
        match self.data {
            TensorData::F32(v) => v,
            TensorData::F16(v) => v.iter().map(|h| h.to_f32()).collect(),
        }
    }
}

/// The weights of one transformer block.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerWeights {
    /// (dim)
    pub attn_norm: Vec<f32>,
    /// (q_dim, dim)
    pub wq: Tensor,
    /// (kv_dim, dim)
    pub wk: Tensor,
    /// (kv_dim, dim)
    pub wv: Tensor,
    /// (dim, q_dim)
    pub wo: Tensor,
    /// (dim)
    pub ffn_norm: Vec<f32>,
    /// (hidden_dim, dim)
    pub w_gate: Tensor,
    /// (hidden_dim, dim)
    pub w_up: Tensor,
    /// (dim, hidden_dim)
    pub w_down: Tensor,
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
    /// RoPE frequencies derived from the config.
    pub rope: RopeTable,
}

impl Model {
    /// Parses and loads a whole GGUF file held in memory (native use).
    pub fn from_gguf_bytes(bytes: &[u8]) -> Result<(Model, Gguf), ModelError> {
        let gguf = Gguf::parse(bytes)?;
        let mut loader = ModelLoader::new(&gguf)?;
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

    pub fn arch(&self) -> &'static ArchSpec {
        self.config.arch.spec()
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
}

/// One tensor the model needs.
#[derive(Debug, Clone)]
struct Needed {
    slot: Slot,
    info: TensorInfo,
    /// Row-major shape: (rows, cols); vectors are (1, len).
    rows: usize,
    cols: usize,
    loaded: Option<Tensor>,
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
}

impl ModelLoader {
    pub fn new(gguf: &Gguf) -> Result<ModelLoader, ModelError> {
        let config = ModelConfig::from_gguf(gguf)?;
        let spec = config.arch.spec();
        let c = &config;
        let mut wanted: Vec<(Slot, String, usize, usize)> = vec![
            (Slot::TokEmbd, "token_embd.weight".into(), c.vocab_size, c.dim),
            (Slot::OutputNorm, "output_norm.weight".into(), 1, c.dim),
        ];
        if gguf.tensor("output.weight").is_some() || !spec.output_may_be_tied {
            wanted.push((Slot::Output, "output.weight".into(), c.vocab_size, c.dim));
        }
        for l in 0..c.n_layers {
            let name = |s: &str| format!("blk.{l}.{s}.weight");
            wanted.extend([
                (Slot::AttnNorm(l), name("attn_norm"), 1, c.dim),
                (Slot::Wq(l), name("attn_q"), c.q_dim, c.dim),
                (Slot::Wk(l), name("attn_k"), c.kv_dim, c.dim),
                (Slot::Wv(l), name("attn_v"), c.kv_dim, c.dim),
                (Slot::Wo(l), name("attn_output"), c.dim, c.q_dim),
                (Slot::FfnNorm(l), name("ffn_norm"), 1, c.dim),
                (Slot::Gate(l), name("ffn_gate"), c.hidden_dim, c.dim),
                (Slot::Up(l), name("ffn_up"), c.hidden_dim, c.dim),
                (Slot::Down(l), name("ffn_down"), c.dim, c.hidden_dim),
            ]);
        }
        let mut needed = Vec::with_capacity(wanted.len());
        for (slot, name, rows, cols) in wanted {
            let info = gguf
                .tensor(&name)
                .ok_or_else(|| ModelError::MissingTensor(name.clone()))?;
            let expected: Vec<u64> = if rows == 1 {
                vec![cols as u64]
            } else {
                vec![cols as u64, rows as u64]
            };
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
        Ok(ModelLoader { config, needed })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
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
        let t = Tensor::from_le_bytes(n.info.ty, n.rows, n.cols, bytes).map_err(|reason| ModelError::TensorBytes {
            name: name.to_string(),
            reason,
        })?;
        n.loaded = Some(t);
        Ok(())
    }

    /// Assembles the model once every needed tensor was added.
    pub fn finish(self) -> Result<Model, ModelError> {
        let config = self.config;
        let mut tok_embd = None;
        let mut output_norm = None;
        let mut output = None;
        let mut parts: Vec<[Option<Tensor>; 9]> = (0..config.n_layers).map(|_| Default::default()).collect();
        for n in self.needed {
            let t = n.loaded.ok_or_else(|| ModelError::Incomplete(n.info.name.clone()))?;
            match n.slot {
                Slot::TokEmbd => tok_embd = Some(t),
                Slot::OutputNorm => output_norm = Some(t.into_f32_vec()),
                Slot::Output => output = Some(t),
                Slot::AttnNorm(l) => parts[l][0] = Some(t),
                Slot::Wq(l) => parts[l][1] = Some(t),
                Slot::Wk(l) => parts[l][2] = Some(t),
                Slot::Wv(l) => parts[l][3] = Some(t),
                Slot::Wo(l) => parts[l][4] = Some(t),
                Slot::FfnNorm(l) => parts[l][5] = Some(t),
                Slot::Gate(l) => parts[l][6] = Some(t),
                Slot::Up(l) => parts[l][7] = Some(t),
                Slot::Down(l) => parts[l][8] = Some(t),
            }
        }
        let missing = |what: &str| ModelError::Incomplete(what.to_string());
        let mut layers = Vec::with_capacity(config.n_layers);
        for (l, p) in parts.into_iter().enumerate() {
            let [an, q, k, v, o, fnorm, g, u, d] = p;
            let take = |t: Option<Tensor>| t.ok_or_else(|| missing(&format!("block {l}")));
            layers.push(LayerWeights {
                attn_norm: take(an)?.into_f32_vec(),
                wq: take(q)?,
                wk: take(k)?,
                wv: take(v)?,
                wo: take(o)?,
                ffn_norm: take(fnorm)?.into_f32_vec(),
                w_gate: take(g)?,
                w_up: take(u)?,
                w_down: take(d)?,
            });
        }
        let rope = RopeTable::new(config.arch.spec().rope_style, config.rope_dims, config.rope_freq_base);
        Ok(Model {
            tok_embd: tok_embd.ok_or_else(|| missing("token_embd.weight"))?,
            output_norm: output_norm.ok_or_else(|| missing("output_norm.weight"))?,
            output,
            layers,
            rope,
            config,
        })
    }
}

//! The model: from a blob in stable memory to weights in the heap.
//!
//! One pipeline serves both a fresh upload and the reload after an upgrade:
//! `Hashing` (uploads only: SHA-256 over the blob) → `Header` (parse the GGUF
//! header from a prefix) → `Tensors` (copy tensors into the heap one by one)
//! → ready. Every phase works in pieces so that it spans as many messages as
//! the model's size needs; `advance` does as much as the message budget
//! allows and returns.

use crate::memory;
use crate::settings::ModelSlot;
use ic_stable_structures::Memory as _;
use icllm_api::ModelInfo;
use icllm_engine::format::gguf::{Gguf, GgufError};
use icllm_engine::model::{Model, ModelLoader};
use icllm_engine::tokenizer::Tokenizer;
use sha2::{Digest, Sha256};
use std::rc::Rc;

/// Bytes hashed or read per piece: small enough to fit any sane budget.
const PIECE: u64 = 4 << 20;
/// Instructions per byte assumed for hashing (sha2 in wasm is ~15–20).
const HASH_COST_PER_BYTE: u64 = 30;
/// Instructions per byte assumed for reading and converting a tensor.
const LOAD_COST_PER_BYTE: u64 = 12;
/// Instructions per byte assumed for parsing a header prefix.
const PARSE_COST_PER_BYTE: u64 = 120;

/// A model ready for jobs.
pub struct LoadedModel {
    pub model: Model,
    pub tokenizer: Tokenizer,
    pub slot: ModelSlot,
    pub info: ModelInfo,
}

/// Why the pipeline is running: a new upload becomes active only once it
/// loads; a reload restores the already-active model after an upgrade.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Purpose {
    Activate,
    Reload,
}

pub enum Phase {
    Hashing {
        hasher: Box<Sha256>,
        done: u64,
    },
    Header {
        prefix_len: u64,
    },
    Tensors {
        gguf: Box<Gguf>,
        loader: Box<ModelLoader>,
        staged: Vec<u8>,
        loaded_bytes: u64,
    },
}

pub struct Pipeline {
    pub slot: ModelSlot,
    pub purpose: Purpose,
    pub phase: Phase,
}

/// Where a pipeline stands, after `advance`.
pub enum Progress {
    /// More messages needed; `bytes` processed so far in the current phase.
    Working {
        bytes: u64,
    },
    Ready(Box<LoadedModel>),
    Failed(String),
}

impl Pipeline {
    pub fn verify_and_load(slot: ModelSlot) -> Pipeline {
        Pipeline {
            slot,
            purpose: Purpose::Activate,
            phase: Phase::Hashing {
                hasher: Box::default(),
                done: 0,
            },
        }
    }

    pub fn reload(slot: ModelSlot) -> Pipeline {
        let prefix_len = first_prefix(slot.size);
        Pipeline {
            slot,
            purpose: Purpose::Reload,
            phase: Phase::Header { prefix_len },
        }
    }

    /// Bytes processed in the current phase (for progress reports).
    pub fn progress_bytes(&self) -> u64 {
        match &self.phase {
            Phase::Hashing { done, .. } => *done,
            Phase::Header { .. } => 0,
            Phase::Tensors { loaded_bytes, .. } => *loaded_bytes,
        }
    }

    pub fn is_hashing(&self) -> bool {
        matches!(self.phase, Phase::Hashing { .. })
    }

    /// Works until `remaining()` says the next piece would not fit.
    pub fn advance(&mut self, remaining: &dyn Fn() -> u64) -> Progress {
        let blob = memory::model_slot(self.slot.slot);
        loop {
            match &mut self.phase {
                Phase::Hashing { hasher, done } => {
                    if *done == self.slot.size {
                        let digest = hasher.clone().finalize().to_vec();
                        if digest != self.slot.sha256 {
                            return Progress::Failed(format!(
                                "sha256 mismatch: expected {}, the uploaded bytes hash to {}",
                                hex(&self.slot.sha256),
                                hex(&digest)
                            ));
                        }
                        self.phase = Phase::Header {
                            prefix_len: first_prefix(self.slot.size),
                        };
                        continue;
                    }
                    let n = PIECE.min(self.slot.size - *done);
                    if remaining() < n * HASH_COST_PER_BYTE {
                        return Progress::Working { bytes: *done };
                    }
                    let mut buf = vec![0u8; n as usize];
                    blob.read(*done, &mut buf);
                    hasher.update(&buf);
                    *done += n;
                }
                Phase::Header { prefix_len } => {
                    let n = *prefix_len;
                    if remaining() < n * PARSE_COST_PER_BYTE {
                        return Progress::Working { bytes: 0 };
                    }
                    let mut prefix = vec![0u8; n as usize];
                    blob.read(0, &mut prefix);
                    match Gguf::parse_header(&prefix, self.slot.size) {
                        Ok(gguf) => match start_loading(gguf) {
                            Ok(phase) => self.phase = phase,
                            Err(e) => return Progress::Failed(e),
                        },
                        // The header runs past the prefix: read a longer one.
                        Err(GgufError::Truncated { .. }) if n < self.slot.size => {
                            *prefix_len = (n * 4).min(self.slot.size);
                        }
                        Err(e) => return Progress::Failed(format!("not a usable GGUF file: {e}")),
                    }
                }
                Phase::Tensors {
                    loader,
                    staged,
                    loaded_bytes,
                    ..
                } => {
                    let Some(info) = loader.next_needed().cloned() else {
                        return self.finish();
                    };
                    // Stage the tensor's bytes piece by piece, then convert it.
                    if (staged.len() as u64) < info.size {
                        let at = staged.len() as u64;
                        let n = PIECE.min(info.size - at);
                        if remaining() < n * LOAD_COST_PER_BYTE {
                            return Progress::Working { bytes: *loaded_bytes };
                        }
                        staged.resize((at + n) as usize, 0);
                        blob.read(info.offset + at, &mut staged[at as usize..]);
                        *loaded_bytes += n;
                        continue;
                    }
                    if remaining() < info.size * LOAD_COST_PER_BYTE {
                        return Progress::Working { bytes: *loaded_bytes };
                    }
                    if let Err(e) = loader.add_tensor(&info.name, staged) {
                        return Progress::Failed(format!("tensor {}: {e}", info.name));
                    }
                    staged.clear();
                }
            }
        }
    }

    fn finish(&mut self) -> Progress {
        let Phase::Tensors { gguf, loader, .. } = std::mem::replace(&mut self.phase, Phase::Header { prefix_len: 0 })
        else {
            unreachable!("finish is called in the Tensors phase")
        };
        let tokenizer = match Tokenizer::from_gguf(&gguf) {
            Ok(t) => t,
            Err(e) => return Progress::Failed(format!("tokenizer: {e}")),
        };
        let weight_bytes = loader.total_bytes();
        let model = match loader.finish() {
            Ok(m) => m,
            Err(e) => return Progress::Failed(format!("model: {e}")),
        };
        let info = describe(&gguf, &model, &tokenizer, &self.slot, weight_bytes);
        Progress::Ready(Box::new(LoadedModel {
            model,
            tokenizer,
            slot: self.slot.clone(),
            info,
        }))
    }
}

fn start_loading(gguf: Gguf) -> Result<Phase, String> {
    let loader = ModelLoader::new(&gguf).map_err(|e| format!("unsupported model: {e}"))?;
    // Refuse a bad tokenizer now rather than after loading gigabytes.
    Tokenizer::from_gguf(&gguf).map_err(|e| format!("tokenizer: {e}"))?;
    Ok(Phase::Tensors {
        gguf: Box::new(gguf),
        loader: Box::new(loader),
        staged: Vec::new(),
        loaded_bytes: 0,
    })
}

fn first_prefix(size: u64) -> u64 {
    size.min(1 << 20)
}

fn describe(gguf: &Gguf, model: &Model, tokenizer: &Tokenizer, slot: &ModelSlot, weight_bytes: u64) -> ModelInfo {
    let c = &model.config;
    let mut types: std::collections::BTreeMap<&str, u32> = Default::default();
    for t in &gguf.tensors {
        *types.entry(t.ty.name()).or_default() += 1;
    }
    ModelInfo {
        state: "ready".into(),
        architecture: gguf.get_str("general.architecture").unwrap_or("?").to_string(),
        file_size: slot.size,
        sha256: slot.sha256.clone(),
        n_layers: c.n_layers as u32,
        dim: c.dim as u32,
        n_heads: c.n_heads as u32,
        n_kv_heads: c.n_kv_heads as u32,
        ffn_dim: c.hidden_dim as u32,
        vocab_size: c.vocab_size as u32,
        context_length: c.context_length as u32,
        tensor_types: types.into_iter().map(|(t, n)| format!("{t} ×{n}")).collect(),
        tokenizer: tokenizer.model_name().to_string(),
        heap_bytes: weight_bytes,
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Shared handle to the ready model.
pub type ModelRef = Rc<LoadedModel>;

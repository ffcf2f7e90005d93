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
use icllm_engine::chat::ChatTemplate;
use icllm_engine::format::gguf::{Gguf, GgufError};
use icllm_engine::model::{Model, ModelLoader};
use icllm_engine::tensor::{type_spec, GgmlType};
use icllm_engine::tokenizer::Tokenizer;
use sha2::{Digest, Sha256};
use std::rc::Rc;

/// Most bytes hashed or read per piece.
const PIECE: u64 = 4 << 20;
/// Fewest bytes worth a piece (smaller pieces would only add overhead).
const MIN_PIECE: u64 = 16 << 10;
/// Instructions per byte assumed for hashing (measured: sha2 costs ~77 per
/// byte in the canister wasm, stable read included).
const HASH_COST_PER_BYTE: u64 = 100;
/// Instructions per byte the replica's memory tracker charges, in-band, for
/// the first write of a heap page in a message: 16 OS pages × (5,000 access
/// and 5,000 dirty) per 64 KiB wasm page = 2.44, rounded up. A stable
/// page's first read costs half of that (1.22).
const PAGE_COST_PER_BYTE_WRITTEN: u64 = 3;
/// Instructions per byte assumed for reading weights from stable memory:
/// the copy (1), the stable pages read (1.22) and the fresh heap pages
/// written (2.44), rounded up.
const READ_COST_PER_BYTE: u64 = 6;
/// Instructions per byte assumed for converting a tensor of type `ty` into
/// heap weights (repacking, widening): the type table's prior
/// ([`icllm_engine::tensor::TypeSpec::load_cost_per_byte`]), or what this canister has seen for the
/// type since it started, if more. The figure must not be low: it lets a
/// message take on a tensor it cannot finish, and the message traps at the
/// limit (a single 12-per-byte figure did that once the quantized types were
/// repacked at load: qwen3-0.6b's 128 MB Q6_K embedding cost 10 B before the
/// repacking was made cheaper). A type outside the table never gets here
/// (the header is refused), but would be assumed to cost 160.
fn convert_cost_per_byte(ty: GgmlType) -> u64 {
    let prior = type_spec(ty).map_or(160, |s| s.load_cost_per_byte);
    // The converted weights land in fresh heap pages: up to twice the
    // input's bytes (F16/BF16 widened to f32), each paying its first write.
    let prior = prior + 2 * PAGE_COST_PER_BYTE_WRITTEN;
    SEEN_CONVERT_COST
        .with(|m| m.borrow().get(&(ty as u32)).copied().unwrap_or(0))
        .max(prior)
}

thread_local! {
    /// Highest instructions per byte seen converting each tensor type, × 1.25.
    static SEEN_CONVERT_COST: std::cell::RefCell<std::collections::BTreeMap<u32, u64>> =
        const { std::cell::RefCell::new(std::collections::BTreeMap::new()) };
}

fn learn_convert_cost(ty: GgmlType, bytes: u64, instructions: u64) {
    if bytes < MIN_PIECE {
        return; // small tensors are dominated by fixed costs
    }
    let per_byte = (instructions / bytes) * 5 / 4 + 1;
    SEEN_CONVERT_COST.with(|m| {
        let mut m = m.borrow_mut();
        let e = m.entry(ty as u32).or_default();
        *e = (*e).max(per_byte);
    });
}
/// Instructions per byte assumed for reading and parsing a header prefix
/// (measured: ~8 for a 64 KiB prefix, ~7 for a 4 MiB one).
const PARSE_COST_PER_BYTE: u64 = 30;
/// Instructions assumed for assembling the model once every tensor is in
/// (measured: ~0.3 M for stories260K).
const FINISH_COST: u64 = 2_000_000;

/// A model ready for jobs.
pub struct LoadedModel {
    pub model: Model,
    pub tokenizer: Tokenizer,
    /// The model's own chat template (GGUF `tokenizer.chat_template`), if any.
    pub chat_template: Option<ChatTemplate>,
    /// Bytes of the vocabulary's longest piece: no token covers more text,
    /// which bounds a prompt's token count from its byte size.
    pub max_piece_bytes: usize,
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
        /// [`Progress::NeedsRoom`] was reported (or is not needed).
        room_asked: bool,
        gguf: Box<Gguf>,
        loader: Box<ModelLoader>,
        tokenizer: Box<Tokenizer>,
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
    /// The heap must have `bytes` free beside what is in use by the active
    /// model and its jobs before this pipeline goes on; the caller frees
    /// them (or sees that they are free) and calls `advance` again. Asked
    /// once, by a new upload, before it loads its first tensor.
    NeedsRoom {
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

    /// A new upload that needs no hashing here (a shard's part, verified
    /// by its coordinator): parsed and loaded, then activated.
    pub fn load_verified(slot: ModelSlot) -> Pipeline {
        Pipeline {
            purpose: Purpose::Activate,
            ..Pipeline::reload(slot)
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

    /// Works until `remaining()` says the next piece would not fit. `fresh`
    /// is what a whole message offers: work that would not fit even there
    /// fails with a clear message instead of waiting forever.
    pub fn advance(&mut self, remaining: &dyn Fn() -> u64, fresh: u64) -> Progress {
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
                    let left = self.slot.size - *done;
                    let Some(n) = piece(left, HASH_COST_PER_BYTE, remaining(), fresh) else {
                        return too_small("hashing the upload", fresh);
                    };
                    if n == 0 {
                        return Progress::Working { bytes: *done };
                    }
                    let mut buf = vec![0u8; n as usize];
                    blob.read(*done, &mut buf);
                    hasher.update(&buf);
                    *done += n;
                }
                Phase::Header { prefix_len } => {
                    let n = *prefix_len;
                    // Parsing, then building the tokenizer and the loader from it.
                    let cost = 2 * n * PARSE_COST_PER_BYTE;
                    if cost > fresh {
                        return too_small("parsing the GGUF header", fresh);
                    }
                    if remaining() < cost {
                        return Progress::Working { bytes: 0 };
                    }
                    let mut prefix = vec![0u8; n as usize];
                    blob.read(0, &mut prefix);
                    match Gguf::parse_header(&prefix, self.slot.size) {
                        Ok(gguf) => match start_loading(gguf, self.purpose) {
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
                    room_asked,
                    loader,
                    staged,
                    loaded_bytes,
                    ..
                } => {
                    if !*room_asked {
                        *room_asked = true;
                        let largest = loader.needed().map(|t| t.size).max().unwrap_or(0);
                        return Progress::NeedsRoom {
                            bytes: loader.heap_bytes() + largest,
                        };
                    }
                    let Some(info) = loader.next_needed().cloned() else {
                        if remaining() < FINISH_COST {
                            return Progress::Working { bytes: *loaded_bytes };
                        }
                        return self.finish();
                    };
                    // Stage the tensor's bytes piece by piece, then convert it.
                    if (staged.len() as u64) < info.size {
                        let at = staged.len() as u64;
                        if at == 0 {
                            // The whole tensor's room at once: growing the
                            // buffer piece by piece would copy it into fresh
                            // pages again and again, each copy paying the
                            // memory tracker's first-write charge.
                            staged.reserve_exact(info.size as usize);
                        }
                        let Some(n) = piece(info.size - at, READ_COST_PER_BYTE, remaining(), fresh) else {
                            return too_small("reading weights", fresh);
                        };
                        if n == 0 {
                            return Progress::Working { bytes: *loaded_bytes };
                        }
                        staged.resize((at + n) as usize, 0);
                        blob.read(info.offset + at, &mut staged[at as usize..]);
                        *loaded_bytes += n;
                        continue;
                    }
                    let cost = info.size * convert_cost_per_byte(info.ty);
                    if cost > fresh {
                        return too_small(&format!("converting tensor {} ({} bytes)", info.name, info.size), fresh);
                    }
                    if remaining() < cost {
                        return Progress::Working { bytes: *loaded_bytes };
                    }
                    let before = remaining();
                    if let Err(e) = loader.add_tensor(&info.name, staged) {
                        return Progress::Failed(format!("tensor {}: {e}", info.name));
                    }
                    let used = before.saturating_sub(remaining());
                    learn_convert_cost(info.ty, info.size, used);
                    staged.clear();
                }
            }
        }
    }

    fn finish(&mut self) -> Progress {
        let Phase::Tensors {
            gguf,
            loader,
            tokenizer,
            ..
        } = std::mem::replace(&mut self.phase, Phase::Header { prefix_len: 0 })
        else {
            unreachable!("finish is called in the Tensors phase")
        };
        let tokenizer = *tokenizer;
        let model = match loader.finish() {
            Ok(m) => m,
            Err(e) => return Progress::Failed(format!("model: {e}")),
        };
        let chat_template = match ChatTemplate::from_gguf(&gguf) {
            Ok(t) => t,
            Err(e) => return Progress::Failed(format!("chat template: {e}")),
        };
        let info = describe(&gguf, &model, &tokenizer, &self.slot);
        let max_piece_bytes = (0..tokenizer.vocab_size() as u32)
            .map(|id| tokenizer.piece(id).len())
            .max()
            .unwrap_or(1);
        Progress::Ready(Box::new(LoadedModel {
            model,
            max_piece_bytes,
            tokenizer,
            chat_template,
            slot: self.slot.clone(),
            info,
        }))
    }
}

fn start_loading(gguf: Gguf, purpose: Purpose) -> Result<Phase, String> {
    let mut loader = ModelLoader::new(&gguf).map_err(|e| format!("unsupported model: {e}"))?;
    let part = crate::sharding::part_of(&crate::sharding::role(), loader.config())?;
    loader.select_part(part).map_err(|e| e.to_string())?;
    let staged = loader.needed().map(|t| t.size).max().unwrap_or(0);
    let budget = crate::settings::read(|s| s.heap_budget());
    // The faster layouts take more heap: drop them if the model only fits without.
    if loader.heap_bytes() + staged > budget {
        loader.keep_nibbles();
    }
    if loader.heap_bytes() + staged > budget {
        loader.keep_16_bit_floats();
    }
    // Refused now, with the numbers, rather than by an allocation that traps
    // half-way through gigabytes of tensors (and again at every retry).
    let weights = loader.heap_bytes();
    if weights + staged > budget {
        return Err(format!(
            "the model needs {} MiB of heap once repacked (plus {} MiB to stage its largest tensor while loading); \
             this canister has {} MiB for weights and KV caches",
            weights >> 20,
            staged >> 20,
            budget >> 20
        ));
    }
    // Built now: a bad tokenizer is refused before gigabytes are loaded.
    let tokenizer = Tokenizer::from_gguf(&gguf).map_err(|e| format!("tokenizer: {e}"))?;
    Ok(Phase::Tensors {
        // A new upload asks for its room before its first tensor: the
        // active model and its jobs' caches may have to make way.
        room_asked: purpose == Purpose::Reload,
        gguf: Box::new(gguf),
        loader: Box::new(loader),
        tokenizer: Box::new(tokenizer),
        staged: Vec::new(),
        loaded_bytes: 0,
    })
}

/// The GGUF header of the file in `slot`, read from stable memory (a
/// longer prefix each time the header runs past the one read).
pub fn read_header(slot: &ModelSlot) -> Result<Gguf, String> {
    let blob = memory::model_slot(slot.slot);
    let mut n = first_prefix(slot.size);
    loop {
        let mut prefix = vec![0u8; n as usize];
        blob.read(0, &mut prefix);
        match Gguf::parse_header(&prefix, slot.size) {
            Ok(gguf) => return Ok(gguf),
            Err(GgufError::Truncated { .. }) if n < slot.size => n = (n * 4).min(slot.size),
            Err(e) => return Err(format!("not a usable GGUF file: {e}")),
        }
    }
}

fn first_prefix(size: u64) -> u64 {
    size.min(64 << 10)
}

/// Bytes of the next piece of `left` at `cost` instructions per byte:
/// `Some(0)` = wait for the next message; `None` = not even a fresh message
/// could do a useful piece.
fn piece(left: u64, cost: u64, remaining: u64, fresh: u64) -> Option<u64> {
    let want = left.min(PIECE);
    let useful = want.min(MIN_PIECE);
    if useful * cost > fresh {
        return None;
    }
    let n = want.min(remaining / cost);
    Some(if n >= useful { n } else { 0 })
}

fn too_small(what: &str, fresh: u64) -> Progress {
    Progress::Failed(format!(
        "{what} does not fit in one message of {fresh} instructions; raise the message instruction limit"
    ))
}

fn describe(gguf: &Gguf, model: &Model, tokenizer: &Tokenizer, slot: &ModelSlot) -> ModelInfo {
    let c = &model.config;
    let mut types: std::collections::BTreeMap<&str, u32> = Default::default();
    for t in &gguf.tensors {
        *types.entry(t.ty.name()).or_default() += 1;
    }
    let architecture = gguf.get_str("general.architecture").unwrap_or("?").to_string();
    ModelInfo {
        state: "ready".into(),
        name: gguf
            .get_str("general.name")
            .ok()
            .filter(|n| !n.is_empty())
            .unwrap_or(&architecture)
            .to_string(),
        architecture,
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
        heap_bytes: model.heap_bytes(),
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Shared handle to the ready model.
pub type ModelRef = Rc<LoadedModel>;

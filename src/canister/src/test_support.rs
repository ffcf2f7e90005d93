//! Native unit tests of the job and scheduler logic: the canister's stable
//! memory is ic-stable-structures' vector memory off the IC, its heap state
//! is thread-local (so each test, on its own thread, starts empty), and
//! time and instructions come from a [`FakeEnv`].

use crate::env::{Env, FakeEnv};
use crate::model_store::{ModelRef, Pipeline};
use crate::settings::ModelSlot;
use crate::{memory, scheduler, state};
use ic_stable_structures::Memory as _;
use sha2::{Digest, Sha256};

/// stories260K, the model the README's main command runs.
pub fn stories260k() -> Vec<u8> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/stories260Ktok512.gguf");
    std::fs::read(path).expect("models/stories260Ktok512.gguf is in the repository")
}

/// Puts `bytes` in model blob slot `slot` as a finished upload would.
pub fn store_blob(slot: u8, bytes: &[u8]) -> ModelSlot {
    let mem = memory::model_slot(slot);
    assert!(memory::ensure_size(&mem, bytes.len() as u64));
    mem.write(0, bytes);
    ModelSlot {
        slot,
        size: bytes.len() as u64,
        sha256: Sha256::digest(bytes).to_vec(),
    }
}

/// Verifies and loads the blob in `slot` through the scheduler's pipeline,
/// one message after another, until it is the active model.
pub fn activate_upload(env: &FakeEnv, slot: ModelSlot) -> ModelRef {
    state::mutate(|s| s.pipeline = Some(Pipeline::verify_and_load(slot.clone())));
    for _ in 0..1000 {
        env.next_message(1_000_000);
        scheduler::advance_pipeline(env);
        if state::read(|s| s.pipeline.is_none()) {
            break;
        }
    }
    let error = state::read(|s| s.pipeline_error.clone());
    assert_eq!(error, None);
    let model = state::read(|s| s.model.clone()).expect("the upload loaded");
    assert_eq!(model.slot, slot);
    model
}

/// A fake environment at `now` whose counter moves 20,000 per read: a
/// stories260K unit (about 17 K multiply-adds) looks like a few reads.
pub fn env_at(now: u64) -> FakeEnv {
    let env = FakeEnv::new(now, 20_000);
    assert_eq!(env.now_ns(), now);
    env
}

/// stories260K rewritten as a gemma3 file whose layers 0, 1, 3 and 4 slide
/// with a window of `window` (layer 2 is global), with q/k norms and
/// post-norms near 1: a job's sliding layers keep a ring of rows.
pub fn sliding_stories(window: u32) -> Vec<u8> {
    use icllm_engine::format::gguf::writer::{parts_of, write, TensorData};
    use icllm_engine::format::gguf::Value;
    use icllm_engine::tensor::GgmlType;
    let (mut metadata, mut tensors) = parts_of(&stories260k()).unwrap();
    for (k, v) in metadata.iter_mut() {
        if let Some(rest) = k.strip_prefix("llama.") {
            *k = format!("gemma3.{rest}");
        }
        if k == "general.architecture" {
            *v = Value::String("gemma3".into());
        }
    }
    metadata.push(("gemma3.attention.sliding_window".into(), Value::U32(window)));
    metadata.push(("gemma3.attention.sliding_window_pattern".into(), Value::U32(3)));
    let vector = |name: String, len: usize, seed: usize| TensorData {
        name,
        dims: vec![len as u64],
        ty: GgmlType::F32,
        bytes: (0..len)
            .flat_map(|i| (1.0 + 0.25 * (((i * 7 + seed * 13) % 11) as f32 / 11.0 - 0.5)).to_le_bytes())
            .collect(),
    };
    for l in 0..5 {
        tensors.push(vector(format!("blk.{l}.attn_q_norm.weight"), 8, l));
        tensors.push(vector(format!("blk.{l}.attn_k_norm.weight"), 8, l + 1));
        tensors.push(vector(format!("blk.{l}.post_attention_norm.weight"), 64, l + 2));
        tensors.push(vector(format!("blk.{l}.post_ffw_norm.weight"), 64, l + 3));
    }
    write(&metadata, &tensors)
}

//! icllm engine: pure LLM inference with resumable generation jobs.
//!
//! No IC dependency: it builds natively (CLI, tests) and for
//! wasm32-unknown-unknown (the canister) or wasm64-unknown-unknown (the
//! canister for models above the wasm32 heap; nightly, whose SIMD
//! intrinsics for wasm64 are still unstable). The environment (instruction
//! budget) is passed in through the [`job::Budget`] trait.
//!
//! Map:
//! - [`chat`]: chat templates (minijinja) and their stop strings.
//! - [`heap_cap`]: a per-thread cap on heap, kept by a global allocator binaries install (bounds chat-template renders).
//! - [`format`]: GGUF and Hugging Face (config.json + safetensors) readers, the GGUF writer and the HF → GGUF converter; the only place that knows file keys and tensor names.
//! - [`tensor`]: ggml tensor types.
//! - [`quant`]: ggml block formats: layouts, scalar dequantizers (oracles) and quantizers.
//! - [`tokenizer`]: text ↔ token ids (SentencePiece now; BPE slots in beside it).
//! - [`kernels`]: pure math (matvec, rmsnorm, rope, softmax, …), scalar oracles first.
//! - [`model`]: resolved config, architecture table, weights, forward-pass stages.
//! - [`sampler`]: logits → token, with explicit serializable RNG state.
//! - [`logprobs`]: the log-softmax of raw logits a job keeps per generated token when asked.
//! - [`job`]: the resumable generation state machine and the budget trait.

#![cfg_attr(target_arch = "wasm64", feature(simd_wasm64))]

pub mod chat;
pub mod format;
pub mod heap_cap;
pub mod job;
pub mod kernels;
pub mod kv;
pub mod logprobs;
pub mod model;
pub mod quant;
pub mod sampler;
pub mod scratch;
mod serde_bytes;
pub mod synth;
pub mod tensor;
pub mod tokenizer;

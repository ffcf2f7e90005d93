//! Model file formats. Format-specific names (GGUF keys, tensor names) stay
//! inside this module; the rest of the engine sees a resolved `ModelConfig`.
//!
//! - [`gguf`]: the GGUF reader and writer;
//! - [`hf`]: Hugging Face checkpoints (config.json + safetensors), loaded directly;
//! - [`convert`]: a Hugging Face checkpoint written as one GGUF file (what the canister loads).

pub mod convert;
pub mod gguf;
pub mod hf;

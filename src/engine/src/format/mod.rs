//! Model file formats. Format-specific names (GGUF keys, tensor names) stay
//! inside this module; the rest of the engine sees a resolved `ModelConfig`.

pub mod gguf;
pub mod hf;

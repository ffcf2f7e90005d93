//! Model config, architecture table, weights and the forward pass.
//!
//! - [`config`]: hyperparameters resolved once from the file ([`ModelConfig`]).
//! - [`arch`]: one row per architecture ([`ArchSpec`]).
//! - [`weights`]: owned tensors, [`Model`] and the incremental [`ModelLoader`].
//! - [`forward`]: the forward pass as units (attention half, FFN half, head)
//!   and their cost in multiply-adds.

pub mod arch;
pub mod config;
pub mod forward;
pub mod weights;

pub use crate::tensor::Tensor;
pub use arch::{ArchSpec, Architecture, FfnActivation};
pub use config::ModelConfig;
pub use weights::{
    wanted_tensors, AttentionWeights, LayerWeights, Mixer, Model, ModelLoader, ModelPart, PostNorms, QkNorm, QkvBias,
    ShortConvWeights, WantedTensor, F16_WIDEN_MAX_BYTES, K_WIDEN_MAX_BYTES,
};

use crate::format::gguf::GgufError;
use crate::format::hf::HfError;

/// Why a model could not be loaded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error(transparent)]
    Hf(HfError),
    #[error("model architecture {name:?} is not supported (supported: {supported})")]
    UnknownArchitecture { name: String, supported: String },
    #[error("model metadata {key:?}: {reason}")]
    BadConfig { key: String, reason: String },
    #[error("the model file has no tensor {0:?}")]
    MissingTensor(String),
    #[error("tensor {name:?} has dims {found} (ggml order), expected {expected}")]
    TensorShape {
        name: String,
        expected: String,
        found: String,
    },
    /// `supported` is generated from the loader's type table
    /// ([`crate::tensor::supported_type_names`]).
    #[error("tensor {name:?} has type {ty}, which is not supported yet (supported: {supported})")]
    TensorType {
        name: String,
        ty: &'static str,
        supported: String,
    },
    #[error("tensor {name:?}: {reason}")]
    TensorBytes { name: String, reason: String },
    #[error("tensor {0:?} is not one the model needs")]
    UnexpectedTensor(String),
    #[error("model is incomplete: {0} was not added")]
    Incomplete(String),
}

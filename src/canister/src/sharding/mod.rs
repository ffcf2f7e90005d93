//! A model sharded over canisters (see [`icllm_api::Role`]): one wasm, its
//! role from `InitArgs`. The coordinator holds the model's ends (embedding,
//! head), the tokenizer and the jobs, and drives each job's batches through
//! the shards by inter-canister calls ([`coordinator`]); a shard holds a
//! contiguous layer range and every job's KV rows of those layers, and
//! answers `shard_forward` ([`shard`]). A shard's call is all or nothing (a
//! trap rolls it back) and idempotent (the same batch again writes the same
//! rows), so a failed call is simply sent again, from the job's checkpoint.

pub mod coordinator;
pub mod shard;

use crate::settings;
use icllm_api::{ApiError, ApiResult, Role};
use icllm_engine::model::{ModelConfig, ModelPart};

/// Most bytes of hidden state one `shard_forward` carries (its argument and
/// its reply stay under the IC's 2 MiB inter-canister message limit).
pub const MAX_BATCH_BYTES: usize = 3 << 19;

pub fn role() -> Role {
    settings::read(|s| s.role.clone())
}

pub fn is_coordinator() -> bool {
    matches!(role(), Role::Coordinator { .. })
}

/// Checks a role's own consistency (the model's layer count is checked
/// when a model loads, see [`part_of`]).
pub fn validate_role(role: &Role) -> ApiResult<()> {
    let invalid = |m: String| Err(ApiError::InvalidArgument(format!("role: {m}")));
    match role {
        Role::Whole => Ok(()),
        Role::Shard {
            first_layer, end_layer, ..
        } if first_layer >= end_layer => invalid(format!("a shard's layers {first_layer}..{end_layer} are empty")),
        Role::Shard { .. } => Ok(()),
        Role::Coordinator { shards } if shards.is_empty() => invalid("a coordinator needs at least one shard".into()),
        Role::Coordinator { shards } => {
            let mut next = 0;
            for s in shards {
                if s.first_layer != next || s.end_layer <= s.first_layer {
                    return invalid(format!(
                        "the shards' layers must follow each other from 0: {} has {}..{} where {next}.. comes next",
                        s.canister, s.first_layer, s.end_layer
                    ));
                }
                next = s.end_layer;
            }
            Ok(())
        }
    }
}

/// The part of a model of `config` this role loads, or why it cannot: the
/// coordinator's shards must cover the model's layers exactly, a shard's
/// range must lie inside them. Models with short-convolution layers (LFM2)
/// are not sharded: their per-job convolution state is not replayable the
/// way KV rows are, so a repeated batch would change it.
pub fn part_of(role: &Role, config: &ModelConfig) -> Result<ModelPart, String> {
    let n = config.n_layers;
    if !matches!(role, Role::Whole) && config.conv_layers.iter().any(|&c| c) {
        return Err("models with short-convolution layers (LFM2) cannot be sharded yet".into());
    }
    match role {
        Role::Whole => Ok(ModelPart::whole(n)),
        Role::Coordinator { shards } => {
            let covered = shards.last().map_or(0, |s| s.end_layer as usize);
            if covered != n {
                return Err(format!(
                    "the model has {n} layers but the coordinator's shards cover layers 0..{covered}"
                ));
            }
            Ok(ModelPart::ends())
        }
        Role::Shard {
            first_layer, end_layer, ..
        } => {
            if *end_layer as usize > n {
                return Err(format!(
                    "this shard holds layers {first_layer}..{end_layer} but the model has {n} layers"
                ));
            }
            Ok(ModelPart::layers(*first_layer as usize..*end_layer as usize))
        }
    }
}

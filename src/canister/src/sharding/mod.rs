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

#[cfg(test)]
mod tests {
    use super::*;
    use candid::Principal;
    use icllm_api::ShardRef;

    fn shard(first: u32, end: u32) -> ShardRef {
        ShardRef {
            canister: Principal::from_slice(&[first as u8, end as u8, 1]),
            first_layer: first,
            end_layer: end,
        }
    }

    fn config(n_layers: usize) -> ModelConfig {
        let bytes = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../models/stories260Ktok512.gguf"
        ))
        .unwrap();
        let gguf = icllm_engine::format::gguf::Gguf::parse(&bytes).unwrap();
        let c = ModelConfig::from_gguf(&gguf).unwrap();
        c.slice_layers(0..n_layers.min(c.n_layers))
    }

    #[test]
    fn a_coordinators_shards_follow_each_other_from_layer_0() {
        let ok = Role::Coordinator {
            shards: vec![shard(0, 2), shard(2, 5)],
        };
        assert!(validate_role(&ok).is_ok());
        for bad in [
            vec![],
            vec![shard(1, 5)],
            vec![shard(0, 2), shard(3, 5)],
            vec![shard(0, 2), shard(2, 2)],
        ] {
            assert!(
                validate_role(&Role::Coordinator { shards: bad.clone() }).is_err(),
                "{bad:?}"
            );
        }
        let empty = Role::Shard {
            coordinator: Principal::anonymous(),
            first_layer: 3,
            end_layer: 3,
        };
        assert!(validate_role(&empty).is_err());
    }

    #[test]
    fn each_role_loads_its_part_and_a_model_it_does_not_fit_is_refused() {
        let c = config(5);
        assert_eq!(part_of(&Role::Whole, &c), Ok(ModelPart::whole(5)));
        let coordinator = Role::Coordinator {
            shards: vec![shard(0, 2), shard(2, 5)],
        };
        assert_eq!(part_of(&coordinator, &c), Ok(ModelPart::ends()));
        let short = Role::Coordinator {
            shards: vec![shard(0, 2), shard(2, 4)],
        };
        assert!(part_of(&short, &c).unwrap_err().contains("shards cover layers 0..4"));
        let s = |first, end| Role::Shard {
            coordinator: Principal::anonymous(),
            first_layer: first,
            end_layer: end,
        };
        assert_eq!(part_of(&s(2, 5), &c), Ok(ModelPart::layers(2..5)));
        assert!(part_of(&s(3, 6), &c).unwrap_err().contains("the model has 5 layers"));
        let mut lfm2 = c.clone();
        lfm2.conv_layers = vec![true, false, true, false, false];
        assert!(part_of(&s(0, 2), &lfm2).unwrap_err().contains("short-convolution"));
        assert!(part_of(&Role::Whole, &lfm2).is_ok());
    }
}

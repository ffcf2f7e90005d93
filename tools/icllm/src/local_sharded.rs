//! A model sharded over canisters in one local IC runtime: a coordinator
//! and its shards, each the real canister wasm with its role in `InitArgs`
//! (see `icllm_api::Role`), talking by inter-canister calls.

use crate::local_canister::{controller, new_runtime, LocalCanister};
use anyhow::{anyhow, Result};
use candid::encode_args;
use icllm_api::{InitArgs, ModelInfo, Role, ShardRef, UploadStatus};
use local_ic::{CanisterId, MemoryCharges};
use std::ops::Range;

/// The coordinator (the [`LocalCanister`]'s own canister, which jobs go
/// to) and its shards, in layer order.
pub struct LocalShards {
    pub coordinator: LocalCanister,
    pub shards: Vec<CanisterId>,
    pub ranges: Vec<Range<u32>>,
}

/// Layers `0..n_layers` cut into `k` contiguous ranges of sizes differing
/// by at most one (the first ones larger).
pub fn even_ranges(n_layers: u32, k: u32) -> Vec<Range<u32>> {
    let k = k.clamp(1, n_layers.max(1));
    let mut start = 0;
    (0..k)
        .map(|i| {
            let len = n_layers / k + u32::from(i < n_layers % k);
            let r = start..start + len;
            start += len;
            r
        })
        .collect()
}

impl LocalShards {
    /// Installs a coordinator and one shard per range of `ranges`, each with
    /// `init` and its role, in a runtime enforcing `update_limit`.
    pub fn install(wasm: Vec<u8>, init: InitArgs, update_limit: u64, ranges: &[Range<u32>]) -> Result<LocalShards> {
        let mut rt = new_runtime(update_limit, false, MemoryCharges::default());
        let coordinator = rt.reserve_canister_id();
        let mut shards = Vec::new();
        for r in ranges {
            let role = Role::Shard {
                coordinator,
                first_layer: r.start,
                end_layer: r.end,
            };
            let arg = encode_args((Some(InitArgs {
                role: Some(role),
                ..init.clone()
            }),))?;
            shards.push(
                rt.install(&wasm, arg, vec![controller()])
                    .map_err(|e| anyhow!("installing shard {r:?}: {e}"))?,
            );
        }
        let refs = shards
            .iter()
            .zip(ranges)
            .map(|(&canister, r)| ShardRef {
                canister,
                first_layer: r.start,
                end_layer: r.end,
            })
            .collect();
        let arg = encode_args((Some(InitArgs {
            role: Some(Role::Coordinator { shards: refs }),
            ..init
        }),))?;
        rt.install_at(coordinator, &wasm, arg, vec![controller()])
            .map_err(|e| anyhow!("installing the coordinator: {e}"))?;
        Ok(LocalShards {
            coordinator: LocalCanister {
                rt,
                id: coordinator,
                wasm,
            },
            shards,
            ranges: ranges.to_vec(),
        })
    }

    /// Shard `i` through the coordinator's handle (same runtime).
    pub fn on_shard<R>(&mut self, i: usize, f: impl FnOnce(&mut LocalCanister) -> R) -> R {
        let id = self.shards[i];
        self.coordinator.on_canister(id, f)
    }

    /// Uploads the model to the coordinator, which sends each shard its
    /// part; runs rounds until every shard has loaded its part and the
    /// coordinator knows it (it takes jobs).
    pub fn upload_model(&mut self, bytes: &[u8], sha256: [u8; 32]) -> Result<UploadStatus> {
        let status = self.coordinator.upload_model(bytes, sha256)?;
        for _ in 0..1_000_000 {
            if (0..self.shards.len()).all(|i| self.shard_has_model(i)) && self.coordinator_state() == "ready" {
                return Ok(status);
            }
            self.coordinator.round();
        }
        anyhow::bail!("the shards did not load their parts: {}", self.coordinator_state())
    }

    /// The coordinator's `model_info` state: "ready" once its shards have
    /// their parts, "waiting for the shards: …" until then.
    pub fn coordinator_state(&mut self) -> String {
        let (info,): (ModelInfo,) = self
            .coordinator
            .query(controller(), "model_info", ())
            .expect("model_info");
        info.state
    }

    /// Whether shard `i` has loaded its part of the model (an error if its
    /// upload failed).
    pub fn shard_has_model(&mut self, i: usize) -> bool {
        let (info,): (ModelInfo,) = self
            .on_shard(i, |c| c.query(controller(), "model_info", ()))
            .expect("model_info");
        if info.state.starts_with("failed") {
            panic!("shard {i}: {}", info.state);
        }
        info.state == "ready"
    }
}

#[cfg(test)]
mod tests {
    use super::even_ranges;

    #[test]
    fn even_ranges_cover_every_layer_once_in_order() {
        assert_eq!(even_ranges(6, 2), [0..3, 3..6]);
        assert_eq!(even_ranges(6, 3), [0..2, 2..4, 4..6]);
        assert_eq!(even_ranges(32, 3), [0..11, 11..22, 22..32]);
        assert_eq!(even_ranges(2, 5), [0..1, 1..2], "no empty shard");
    }
}

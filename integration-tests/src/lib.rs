//! Helpers the tests in `tests/` share: the shipped model, the canister
//! wasm (built once per test binary), and a canister with the model loaded.

use icllm::local_canister::{find_or_build_wasm, sha256, LocalCanister};
use icllm_api::InitArgs;
use local_ic::MemoryCharges;
use std::sync::OnceLock;

/// The shipped stories260K model file.
pub fn model_bytes() -> &'static [u8] {
    static MODEL: OnceLock<Vec<u8>> = OnceLock::new();
    MODEL.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/stories260Ktok512.gguf");
        std::fs::read(path).expect("models/stories260Ktok512.gguf is shipped")
    })
}

/// The canister wasm built from these sources.
pub fn wasm() -> Vec<u8> {
    static WASM: OnceLock<Vec<u8>> = OnceLock::new();
    WASM.get_or_init(|| find_or_build_wasm(None).expect("canister wasm"))
        .clone()
}

/// The memory charges a canister running under `limit` instructions per
/// message is tested with: the memory tracker's (mainnet's) from 100 M up;
/// below, the legacy charges. Tests cut stories260K's jobs into many
/// messages with limits of a few million instructions, where the tracker's
/// page charges of a message's fixed work (timer, scheduler state, pipeline
/// buffers: a few million) would leave no room for a unit. Jobs under the
/// tracker's charges at small limits are tested in `tools/icllm/tests/bench.rs`.
pub fn memory_charges_for(limit: u64) -> MemoryCharges {
    if limit < 100_000_000 {
        MemoryCharges::Legacy
    } else {
        MemoryCharges::Dmt
    }
}

/// A canister with the stories260K model loaded, running under `limit`
/// instructions per message (the runtime enforces it; the canister is told).
pub fn canister_with_model(limit: u64) -> LocalCanister {
    let init = InitArgs {
        message_instruction_limit: Some(limit),
        ..InitArgs::default()
    };
    let mut c = LocalCanister::install_with(wasm(), init, limit, false, memory_charges_for(limit)).expect("install");
    let model = model_bytes();
    c.upload_model(model, sha256(model)).expect("upload");
    c
}

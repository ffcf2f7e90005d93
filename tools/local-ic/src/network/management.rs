//! The management canister (`aaaaa-aa`) as far as a client needs it to
//! deploy and upgrade a canister: provisional creation, `install_code`
//! (install, reinstall, upgrade; gzipped modules and the chunk store),
//! `uninstall_code`, `canister_status`, `start_canister`/`stop_canister`
//! and `update_settings` (controllers). Argument and reply types are the
//! interface spec's (`ic.did`); unknown fields are ignored by candid.

use super::{CanisterRecord, Outcome, State};
use candid::{CandidType, Decode, Deserialize, Encode, Nat, Principal};
use sha2::{Digest, Sha256};

#[derive(CandidType, Deserialize, Default, Clone, Debug)]
pub struct CanisterSettings {
    pub controllers: Option<Vec<Principal>>,
    pub freezing_threshold: Option<Nat>,
}

#[derive(CandidType, Deserialize)]
struct CreateArgs {
    amount: Option<Nat>,
    settings: Option<CanisterSettings>,
    specified_id: Option<Principal>,
}

#[derive(CandidType, Deserialize)]
struct CanisterIdRecord {
    canister_id: Principal,
}

#[derive(CandidType, Deserialize, Clone, Debug)]
pub struct UpgradeFlags {
    pub skip_pre_upgrade: Option<bool>,
}

#[derive(CandidType, Deserialize, Clone, Debug)]
pub enum InstallMode {
    #[serde(rename = "install")]
    Install,
    #[serde(rename = "reinstall")]
    Reinstall,
    #[serde(rename = "upgrade")]
    Upgrade(Option<UpgradeFlags>),
}

#[derive(CandidType, Deserialize)]
struct InstallCodeArgs {
    mode: InstallMode,
    canister_id: Principal,
    #[serde(with = "serde_bytes")]
    wasm_module: Vec<u8>,
    #[serde(with = "serde_bytes")]
    arg: Vec<u8>,
}

#[derive(CandidType, Deserialize)]
struct ChunkHash {
    #[serde(with = "serde_bytes")]
    hash: Vec<u8>,
}

#[derive(CandidType, Deserialize)]
struct UploadChunkArgs {
    canister_id: Principal,
    #[serde(with = "serde_bytes")]
    chunk: Vec<u8>,
}

#[derive(CandidType, Deserialize)]
struct InstallChunkedCodeArgs {
    mode: InstallMode,
    target_canister: Principal,
    store_canister: Option<Principal>,
    chunk_hashes_list: Vec<ChunkHash>,
    #[serde(with = "serde_bytes")]
    wasm_module_hash: Vec<u8>,
    #[serde(with = "serde_bytes")]
    arg: Vec<u8>,
}

#[derive(CandidType, Deserialize)]
struct UpdateSettingsArgs {
    canister_id: Principal,
    settings: CanisterSettings,
}

#[derive(CandidType, Deserialize, Debug)]
pub enum CanisterStatusType {
    #[serde(rename = "running")]
    Running,
    #[serde(rename = "stopping")]
    Stopping,
    #[serde(rename = "stopped")]
    Stopped,
}

#[derive(CandidType, Deserialize, Debug)]
pub struct DefiniteCanisterSettings {
    pub controllers: Vec<Principal>,
    pub compute_allocation: Nat,
    pub memory_allocation: Nat,
    pub freezing_threshold: Nat,
    pub reserved_cycles_limit: Nat,
    pub wasm_memory_limit: Nat,
    pub wasm_memory_threshold: Nat,
}

#[derive(CandidType, Deserialize, Debug)]
pub struct QueryStats {
    pub num_calls_total: Nat,
    pub num_instructions_total: Nat,
    pub request_payload_bytes_total: Nat,
    pub response_payload_bytes_total: Nat,
}

#[derive(CandidType, Deserialize, Debug)]
pub struct CanisterStatus {
    pub status: CanisterStatusType,
    pub settings: DefiniteCanisterSettings,
    pub module_hash: Option<serde_bytes::ByteBuf>,
    pub memory_size: Nat,
    pub cycles: Nat,
    pub reserved_cycles: Nat,
    pub idle_cycles_burned_per_day: Nat,
    pub query_stats: QueryStats,
}

/// Largest chunk `upload_chunk` takes (the IC's 1 MiB).
const MAX_CHUNK: usize = 1 << 20;
/// Largest wasm module after decompression the IC installs (100 MiB).
const MAX_WASM: usize = 100 << 20;

fn reject(code: u8, error_code: &str, message: impl Into<String>) -> Outcome {
    Outcome::Rejected {
        code,
        message: message.into(),
        error_code: error_code.into(),
    }
}

fn payload_error(method: &str, e: impl std::fmt::Display) -> Outcome {
    reject(4, "IC0408", format!("Error decoding candid for {method}: {e}"))
}

fn reply<T: CandidType>(value: &T) -> Outcome {
    Outcome::Replied(Encode!(value).expect("management replies encode"))
}

fn empty_reply() -> Outcome {
    Outcome::Replied(Encode!().expect("empty reply encodes"))
}

/// Executes `method` of the management canister for an ingress `sender`.
pub fn call(state: &mut State, sender: Principal, method: &str, arg: &[u8]) -> Outcome {
    match method {
        "provisional_create_canister_with_cycles" | "create_canister" => {
            let args = match Decode!(arg, CreateArgs) {
                Ok(a) => a,
                Err(e) => return payload_error(method, e),
            };
            create(state, sender, args)
        }
        "install_code" => {
            let args = match Decode!(arg, InstallCodeArgs) {
                Ok(a) => a,
                Err(e) => return payload_error(method, e),
            };
            install(state, sender, args.canister_id, args.mode, args.wasm_module, args.arg)
        }
        "upload_chunk" => {
            let args = match Decode!(arg, UploadChunkArgs) {
                Ok(a) => a,
                Err(e) => return payload_error(method, e),
            };
            with_controlled(state, sender, args.canister_id, |record| {
                if args.chunk.len() > MAX_CHUNK {
                    return reject(
                        5,
                        "IC0504",
                        format!(
                            "Wasm chunk size {} exceeds the limit of {MAX_CHUNK} bytes",
                            args.chunk.len()
                        ),
                    );
                }
                let hash: [u8; 32] = Sha256::digest(&args.chunk).into();
                record.chunks.insert(hash, args.chunk);
                reply(&ChunkHash { hash: hash.to_vec() })
            })
        }
        "clear_chunk_store" => {
            let args = match Decode!(arg, CanisterIdRecord) {
                Ok(a) => a,
                Err(e) => return payload_error(method, e),
            };
            with_controlled(state, sender, args.canister_id, |record| {
                record.chunks.clear();
                empty_reply()
            })
        }
        "stored_chunks" => {
            let args = match Decode!(arg, CanisterIdRecord) {
                Ok(a) => a,
                Err(e) => return payload_error(method, e),
            };
            with_controlled(state, sender, args.canister_id, |record| {
                let hashes: Vec<ChunkHash> = record.chunks.keys().map(|h| ChunkHash { hash: h.to_vec() }).collect();
                reply(&hashes)
            })
        }
        "install_chunked_code" => {
            let args = match Decode!(arg, InstallChunkedCodeArgs) {
                Ok(a) => a,
                Err(e) => return payload_error(method, e),
            };
            let store = args.store_canister.unwrap_or(args.target_canister);
            let assembled = with_controlled(state, sender, store, |record| {
                let mut wasm = Vec::new();
                for ChunkHash { hash } in &args.chunk_hashes_list {
                    let Some(chunk) = <[u8; 32]>::try_from(hash.as_slice())
                        .ok()
                        .and_then(|h| record.chunks.get(&h))
                    else {
                        return reject(5, "IC0504", "A chunk of the module is not in the chunk store");
                    };
                    wasm.extend_from_slice(chunk);
                }
                if Sha256::digest(&wasm).as_slice() != args.wasm_module_hash.as_slice() {
                    return reject(5, "IC0504", "The chunks do not hash to wasm_module_hash");
                }
                Outcome::Replied(wasm)
            });
            match assembled {
                Outcome::Replied(wasm) => install(state, sender, args.target_canister, args.mode, wasm, args.arg),
                refused => refused,
            }
        }
        "uninstall_code" => {
            let args = match Decode!(arg, CanisterIdRecord) {
                Ok(a) => a,
                Err(e) => return payload_error(method, e),
            };
            let id = args.canister_id;
            let refused = with_controlled(state, sender, id, |_| empty_reply());
            if !matches!(refused, Outcome::Replied(_)) {
                return refused;
            }
            uninstall(state, id);
            empty_reply()
        }
        "canister_status" => {
            let args = match Decode!(arg, CanisterIdRecord) {
                Ok(a) => a,
                Err(e) => return payload_error(method, e),
            };
            let id = args.canister_id;
            let stable = state.rt.stable_size(id).unwrap_or(0);
            let cycles = state.rt.cycle_balance(id);
            let status = match state.status(id) {
                crate::CanisterStatus::Running => CanisterStatusType::Running,
                crate::CanisterStatus::Stopping => CanisterStatusType::Stopping,
                crate::CanisterStatus::Stopped => CanisterStatusType::Stopped,
            };
            with_controlled(state, sender, id, |record| {
                reply(&CanisterStatus {
                    status,
                    settings: DefiniteCanisterSettings {
                        controllers: record.controllers.clone(),
                        compute_allocation: 0u8.into(),
                        memory_allocation: 0u8.into(),
                        freezing_threshold: record.freezing_threshold.into(),
                        reserved_cycles_limit: 5_000_000_000_000u64.into(),
                        wasm_memory_limit: (3u64 << 30).into(),
                        wasm_memory_threshold: 0u8.into(),
                    },
                    module_hash: record.module_hash.map(|h| serde_bytes::ByteBuf::from(h.to_vec())),
                    memory_size: (stable + record.module_size as u64).into(),
                    cycles: cycles.unwrap_or(record.cycles).into(),
                    reserved_cycles: 0u8.into(),
                    idle_cycles_burned_per_day: 0u8.into(),
                    query_stats: QueryStats {
                        num_calls_total: 0u8.into(),
                        num_instructions_total: 0u8.into(),
                        request_payload_bytes_total: 0u8.into(),
                        response_payload_bytes_total: 0u8.into(),
                    },
                })
            })
        }
        "start_canister" | "stop_canister" => {
            let args = match Decode!(arg, CanisterIdRecord) {
                Ok(a) => a,
                Err(e) => return payload_error(method, e),
            };
            let id = args.canister_id;
            let stop = method == "stop_canister";
            let outcome = with_controlled(state, sender, id, |record| {
                record.stopped = stop;
                empty_reply()
            });
            if matches!(outcome, Outcome::Replied(_)) {
                // A canister without code is not in the runtime; the record
                // alone says whether it runs.
                let _ = if stop {
                    state.rt.stop_canister(id).map(|_| ())
                } else {
                    state.rt.start_canister(id)
                };
            }
            outcome
        }
        "update_settings" => {
            let args = match Decode!(arg, UpdateSettingsArgs) {
                Ok(a) => a,
                Err(e) => return payload_error(method, e),
            };
            let id = args.canister_id;
            let outcome = with_controlled(state, sender, id, |record| {
                if let Some(c) = &args.settings.controllers {
                    if c.len() > 10 {
                        return reject(5, "IC0504", "A canister has at most 10 controllers");
                    }
                    record.controllers = c.clone();
                }
                if let Some(t) = &args.settings.freezing_threshold {
                    record.freezing_threshold = u64::try_from(t.0.clone()).unwrap_or(u64::MAX);
                }
                empty_reply()
            });
            if let (Outcome::Replied(_), Some(c)) = (&outcome, args.settings.controllers) {
                // Installed code sees its controllers through ic0.is_controller.
                let _ = state.rt.set_controllers(id, c);
            }
            outcome
        }
        "raw_rand" => reject(4, "IC0407", "Only canisters can call ic00 method raw_rand"),
        other => reject(3, "IC0407", format!("Management canister has no method '{other}'")),
    }
}

/// Runs `f` on `id`'s record if `sender` controls it, else the IC's
/// refusal.
fn with_controlled(
    state: &mut State,
    sender: Principal,
    id: Principal,
    f: impl FnOnce(&mut CanisterRecord) -> Outcome,
) -> Outcome {
    let Some(record) = state.canisters.get_mut(&id) else {
        return reject(3, "IC0301", format!("Canister {id} not found"));
    };
    if !record.controllers.contains(&sender) {
        return reject(
            5,
            "IC0512",
            format!("Only controllers of canister {id} can call ic00 method. Sender {sender} is not a controller."),
        );
    }
    f(record)
}

fn create(state: &mut State, sender: Principal, args: CreateArgs) -> Outcome {
    if let Some(id) = args.specified_id {
        if state.canisters.contains_key(&id) {
            return reject(5, "IC0205", format!("Canister {id} is already installed."));
        }
        return reject(
            5,
            "IC0504",
            "specified_id is not supported by local-ic: it assigns ids itself",
        );
    }
    let settings = args.settings.unwrap_or_default();
    let controllers = settings.controllers.unwrap_or_else(|| vec![sender]);
    let id = state.rt.reserve_canister_id();
    let cycles = args
        .amount
        .and_then(|n| u128::try_from(n.0).ok())
        .unwrap_or(state.default_cycles);
    state.canisters.insert(
        id,
        CanisterRecord {
            controllers,
            cycles,
            freezing_threshold: settings
                .freezing_threshold
                .and_then(|t| u64::try_from(t.0).ok())
                .unwrap_or(crate::DEFAULT_FREEZING_THRESHOLD_SECONDS),
            module_hash: None,
            module_size: 0,
            metadata: Default::default(),
            stopped: false,
            chunks: Default::default(),
        },
    );
    #[derive(CandidType)]
    struct Created {
        canister_id: Principal,
    }
    reply(&Created { canister_id: id })
}

/// A gzipped module (as dfx and icp-cli may send) unpacked, within the
/// IC's size limit.
fn decompress(module: Vec<u8>) -> Result<Vec<u8>, String> {
    if !module.starts_with(&[0x1f, 0x8b]) {
        return Ok(module);
    }
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(&module[..])
        .take(MAX_WASM as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("Failed to decompress the gzipped Wasm module: {e}"))?;
    if out.len() > MAX_WASM {
        return Err(format!(
            "Wasm module is larger than {MAX_WASM} bytes after decompression"
        ));
    }
    Ok(out)
}

/// Public metadata sections (`icp:public <name>`) of a module, which
/// `read_state` serves under `/canister/<id>/metadata/<name>`.
fn public_metadata(wasm: &[u8]) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    for payload in wasmparser::Parser::new(0).parse_all(wasm).flatten() {
        if let wasmparser::Payload::CustomSection(section) = payload {
            if let Some(name) = section.name().strip_prefix("icp:public ") {
                out.insert(name.to_string(), section.data().to_vec());
            }
        }
    }
    out
}

fn install(
    state: &mut State,
    sender: Principal,
    id: Principal,
    mode: InstallMode,
    module: Vec<u8>,
    arg: Vec<u8>,
) -> Outcome {
    let refused = with_controlled(state, sender, id, |_| empty_reply());
    if !matches!(refused, Outcome::Replied(_)) {
        return refused;
    }
    let hash: [u8; 32] = Sha256::digest(&module).into();
    let size = module.len();
    let wasm = match decompress(module) {
        Ok(w) => w,
        Err(e) => return reject(5, "IC0505", e),
    };
    let record = state.canisters.get(&id).expect("checked by with_controlled");
    let installed = record.module_hash.is_some();
    let controllers = record.controllers.clone();
    let result = match (&mode, installed) {
        (InstallMode::Install, true) => {
            return reject(5, "IC0538", format!("Canister {id} cannot be installed because the canister is not empty. Try installing with mode='reinstall' instead."))
        }
        (InstallMode::Upgrade(_), false) => {
            return reject(5, "IC0537", format!("Canister {id} cannot be upgraded because it has no Wasm module."))
        }
        (InstallMode::Upgrade(_), true) => state.rt.upgrade(id, &wasm, arg, sender).map(|_| ()),
        (InstallMode::Reinstall, true) => state.rt.reinstall(id, &wasm, arg),
        (InstallMode::Install | InstallMode::Reinstall, false) => {
            let (cycles, stopped) = (record.cycles, record.stopped);
            let result = state.rt.install_at(id, &wasm, arg, controllers);
            if result.is_ok() {
                let _ = state.rt.set_cycle_balance(id, cycles);
                if stopped {
                    let _ = state.rt.stop_canister(id);
                }
            }
            result
        }
    };
    match result {
        Ok(()) => {
            let record = state.canisters.get_mut(&id).expect("record exists");
            record.module_hash = Some(hash);
            record.module_size = size;
            record.metadata = public_metadata(&wasm);
            empty_reply()
        }
        Err(e) => super::outcome_of_error(&e),
    }
}

fn uninstall(state: &mut State, id: Principal) {
    let kept = state.rt.uninstall(id);
    let record = state.canisters.get_mut(&id).expect("checked by the caller");
    if let Some((_, cycles)) = kept {
        record.cycles = cycles;
    }
    record.module_hash = None;
    record.module_size = 0;
    record.metadata.clear();
}

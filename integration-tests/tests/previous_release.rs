//! Upgrading a deployed canister: the previous release's wasm
//! (`fixtures/icllm-canister-84b4bd0.wasm.gz`, see fixtures/README.md) holds
//! a model and jobs in stable memory; the wasm built from these sources must
//! take them over — model reloaded, jobs finished with the tokens they
//! would have given had nothing been upgraded.

use icllm::local_canister::{controller, find_or_build_wasm, sha256, user, LocalCanister};
use icllm_api::{InitArgs, JobId, JobRequest};
use local_ic::MemoryCharges;
use sha2::{Digest, Sha256};
use std::io::Read;

/// Small enough that the jobs take many messages, so the upgrade finds them
/// in the middle (the tokens do not depend on it). At so few instructions
/// per message the memory tracker's page charges leave no room for a unit,
/// so these canisters run under the legacy charges, as in `canister.rs`.
const LIMIT: u64 = 12_000_000;
const PREVIOUS_SHA256: &str = "37427e094314f47d5db1930209ed39dadc244370149e6fbcee7bded6b1f4ca0e";

fn previous_release() -> Vec<u8> {
    let gz = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/icllm-canister-84b4bd0.wasm.gz"
    ))
    .unwrap();
    let mut wasm = Vec::new();
    flate2::read::GzDecoder::new(&gz[..]).read_to_end(&mut wasm).unwrap();
    let hash: String = Sha256::digest(&wasm).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hash, PREVIOUS_SHA256, "the fixture is the recorded release");
    wasm
}

fn model() -> Vec<u8> {
    std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../models/stories260Ktok512.gguf")).unwrap()
}

fn request(prompt: &str, max_tokens: u32, seed: u64, temperature: f32) -> JobRequest {
    JobRequest {
        prompt: prompt.into(),
        max_tokens,
        temperature: Some(temperature),
        seed: Some(seed),
        ..JobRequest::default()
    }
}

/// Installs `wasm`, uploads the model and starts `requests` (one per user).
fn canister(wasm: Vec<u8>, requests: &[JobRequest]) -> (LocalCanister, Vec<JobId>) {
    let init = InitArgs {
        message_instruction_limit: Some(LIMIT),
        ..InitArgs::default()
    };
    let mut c = LocalCanister::install_with(wasm, init, LIMIT, false, MemoryCharges::Legacy).expect("install");
    let model = model();
    c.upload_model(&model, sha256(&model)).expect("upload");
    let ids = requests
        .iter()
        .enumerate()
        .map(|(i, r)| {
            c.start_job(user(i as u8 + 1), r.clone())
                .unwrap()
                .expect("start_job accepted")
        })
        .collect();
    (c, ids)
}

#[test]
fn jobs_of_the_previous_release_finish_after_the_upgrade_with_the_same_tokens() {
    let current = find_or_build_wasm(None).expect("canister wasm");
    let requests = [
        request("Joe loves writing stories", 30, 1, 0.0),
        request("Once upon a time", 40, 7, 0.8),
        request("", 25, 3, 1.0),
    ];
    // What the current release gives without any upgrade.
    let (mut reference, ids) = canister(current.clone(), &requests);
    let expected: Vec<Vec<u32>> = ids
        .iter()
        .enumerate()
        .map(|(i, &id)| reference.run_job(user(i as u8 + 1), id, |_| {}).unwrap().tokens)
        .collect();

    // The previous release runs the jobs part of the way, then is upgraded.
    let (mut c, ids) = canister(previous_release(), &requests);
    for _ in 0..6 {
        c.round();
    }
    let unfinished = (0..ids.len())
        .filter(|&i| {
            let view = c.poll(user(i as u8 + 1), ids[i], 0).unwrap().expect("poll");
            view.status.is_active() && !view.tokens.is_empty()
        })
        .count();
    assert!(
        unfinished > 0,
        "the upgrade should find a job half-way through its tokens"
    );
    c.upgrade_to(current).expect("upgrade from the previous release");
    for (i, &id) in ids.iter().enumerate() {
        let view = c.run_job(user(i as u8 + 1), id, |_| {}).expect("the job finishes");
        assert_eq!(view.tokens, expected[i], "job {i}");
    }
    // The model the previous release loaded serves new jobs after the upgrade.
    let id = c
        .start_job(controller(), requests[0].clone())
        .unwrap()
        .expect("a new job");
    assert_eq!(c.run_job(controller(), id, |_| {}).unwrap().tokens, expected[0]);
}

/// Where the settings record stores its `layout_version` value: the CBOR
/// key, then the one-byte unsigned integer that follows it.
fn layout_version_offset(c: &LocalCanister) -> u64 {
    const KEY: &[u8] = b"\x6elayout_version";
    let size = c.rt.stable_size(c.id).unwrap() * 65536;
    let mut offset = 0;
    while offset < size {
        let len = (8u64 << 20).min(size - offset) as usize;
        let bytes = c.rt.read_stable(c.id, offset, len).unwrap();
        if let Some(at) = bytes.windows(KEY.len()).position(|w| w == KEY) {
            return offset + (at + KEY.len()) as u64;
        }
        offset += len as u64 - KEY.len() as u64;
    }
    panic!("no layout_version in stable memory");
}

/// A stable layout written by a newer release (a downgrade) is refused
/// with a clear message, and the canister goes on as it was: the IC keeps
/// the installed wasm when `post_upgrade` traps.
#[test]
fn a_stable_layout_newer_than_the_wasm_is_refused_and_nothing_is_lost() {
    let current = find_or_build_wasm(None).expect("canister wasm");
    let req = request("Joe loves writing stories", 30, 1, 0.0);
    let (mut c, ids) = canister(current, std::slice::from_ref(&req));
    c.upgrade().expect("an upgrade to the same layout");
    let at = layout_version_offset(&c);
    assert_eq!(
        c.rt.read_stable(c.id, at, 1).unwrap(),
        [2],
        "this wasm's layout version"
    );
    c.rt.write_stable(c.id, at, &[9]).unwrap();
    let err = c.upgrade().expect_err("a newer layout must be refused").to_string();
    assert!(
        err.contains("stable memory has layout version 9") && err.contains("knows layouts up to 2"),
        "{err}"
    );
    // Nothing changed: the job finishes as it would have.
    let view = c.run_job(user(1), ids[0], |_| {}).expect("the job finishes");
    let (mut reference, ref_ids) = canister(find_or_build_wasm(None).unwrap(), &[req]);
    let expected = reference.run_job(user(1), ref_ids[0], |_| {}).unwrap().tokens;
    assert_eq!(view.tokens, expected);
    // Once the layout is one it knows, the upgrade goes through.
    c.rt.write_stable(c.id, at, &[2]).unwrap();
    c.upgrade().expect("upgrade");
}

//! The canister built for wasm64 (`tools/build-wasm64.sh`) in the local
//! runtime under the replica's wasm64 rules: it generates the tokens the
//! wasm32 build does, keeps jobs and model across an upgrade, its loads and
//! stores weigh 2 instructions, and its instructions cost 2 cycles each
//! (the 5 M fee per message unchanged).

use icllm::local_canister::{find_or_build_wasm, find_or_build_wasm64, sha256, user, LocalCanister};
use icllm_api::{InitArgs, JobRequest, IC_UPDATE_INSTRUCTION_LIMIT};
use local_ic::MessageKind;

/// One job's tokens, the instructions the canister was charged for while it
/// ran, and the cycles its balance lost meanwhile.
struct Run {
    view: icllm_api::JobView,
    tokens: Vec<u32>,
    charged_instructions: u64,
    update_messages: u64,
    cycles_spent: u128,
}

fn run(wasm: Vec<u8>, request: JobRequest) -> Run {
    let mut c = LocalCanister::install(wasm, InitArgs::default(), IC_UPDATE_INSTRUCTION_LIMIT).expect("install");
    let model = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../models/stories260Ktok512.gguf")).unwrap();
    c.upload_model(&model, sha256(&model)).expect("upload");
    // Let the scheduler finish loading the model before measuring.
    for _ in 0..50 {
        c.round();
    }
    let before = c.rt.cycle_balance(c.id).unwrap();
    let first_report = c.rt.reports().len();
    let id = c.start_job(user(1), request.clone()).unwrap().expect("start_job");
    let view = c.run_job(user(1), id, |_| {}).expect("the job finishes");
    let spent = before - c.rt.cycle_balance(c.id).unwrap();
    let paying: Vec<u64> = c.rt.reports()[first_report..]
        .iter()
        .filter(|r| r.canister == c.id && !matches!(r.kind, MessageKind::Query | MessageKind::InspectMessage))
        .map(|r| r.charged_instructions())
        .collect();
    // Upgraded, the canister keeps the job and the model (stable memory,
    // not the heap: ic-stable-structures' default memory is a heap vector
    // off wasm32) and generates the same tokens again.
    c.upgrade().expect("upgrade");
    let kept = c.poll(user(1), id, 0).unwrap().expect("the job survives the upgrade");
    assert_eq!(kept.tokens, view.tokens);
    for _ in 0..50 {
        c.round(); // the model reloads from stable memory
    }
    let again = c
        .start_job(user(2), request)
        .unwrap()
        .expect("start_job after the upgrade");
    assert_eq!(c.run_job(user(2), again, |_| {}).unwrap().tokens, view.tokens);
    Run {
        tokens: view.tokens.clone(),
        view,
        charged_instructions: paying.iter().sum(),
        update_messages: paying.len() as u64,
        cycles_spent: spent,
    }
}

#[test]
fn the_wasm64_canister_generates_the_wasm32_tokens_at_the_wasm64_prices() {
    let request = JobRequest {
        prompt: "Joe loves writing stories".into(),
        max_tokens: 40,
        temperature: Some(0.0),
        ..JobRequest::default()
    };
    let w32 = run(find_or_build_wasm(None).expect("wasm32 canister"), request.clone());
    let w64 = run(find_or_build_wasm64().expect("wasm64 canister"), request);
    assert_eq!(w64.tokens, w32.tokens);
    assert_eq!(w32.tokens.len(), 40);
    // Loads and stores weigh 2 under wasm64, everything else the same.
    let ratio = w64.charged_instructions as f64 / w32.charged_instructions as f64;
    assert!((1.05..2.0).contains(&ratio), "wasm64 / wasm32 instructions {ratio:.3}");
    // Both runs send the same messages (the same fees per message, per call
    // and per ingress byte), so their cycles differ by the instructions
    // alone: 1 cycle each under wasm32, 2 under wasm64.
    assert_eq!(w64.update_messages, w32.update_messages);
    assert_eq!(
        w64.cycles_spent - w32.cycles_spent,
        2 * w64.charged_instructions as u128 - w32.charged_instructions as u128
    );
    // What the canister tells the job's caller it cost follows the same price.
    for (run, per_instruction) in [(&w32, 1), (&w64, 2)] {
        let v = &run.view;
        assert_eq!(
            v.cycles,
            v.instructions as u128 * per_instruction + v.messages as u128 * 5_000_000
        );
    }
    println!(
        "wasm32: {} instructions, {} cycles; wasm64: {} instructions ({ratio:.3}×), {} cycles",
        w32.charged_instructions, w32.cycles_spent, w64.charged_instructions, w64.cycles_spent
    );
}

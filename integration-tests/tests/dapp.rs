//! A dApp calling icllm: the example canister
//! `integration-tests/canisters/storyteller` (built on `icllm-client`)
//! installed beside icllm in one local runtime, asking for the golden
//! continuation by inter-canister calls and waiting with timers and polls;
//! icllm upgraded mid-job and the dApp upgraded mid-wait change nothing.

use candid::{CandidType, Decode, Deserialize, Encode, Principal};
use icllm::local_canister::{build_package_wasm, canister_wasm_path, controller, user, LocalCanister};
use integration_tests::canister_with_model;
use local_ic::CanisterStatus;
use std::time::Duration;

/// From models/README.md: llama.cpp's greedy continuation of "Joe loves writing stories".
const GOLDEN_PROMPT: &str = "Joe loves writing stories";
const GOLDEN_IDS: [u32; 10] = [426, 346, 397, 355, 267, 337, 335, 345, 267, 422];

#[derive(CandidType, Deserialize, Debug, Clone)]
struct Story {
    prompt: String,
    max_tokens: u32,
    job: Option<u64>,
    status: String,
    text: String,
    tokens: Vec<u32>,
}

/// The storyteller wasm, kept current (tools/build-wasm.sh builds it with
/// the other test canisters).
fn storyteller_wasm() -> Vec<u8> {
    build_package_wasm("test-canister-storyteller").expect("the storyteller builds");
    let path = canister_wasm_path("storyteller");
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The dApp, polling every 5 ms.
fn install_dapp(c: &mut LocalCanister, wasm: &[u8]) -> Principal {
    install_dapp_polling_every(c, wasm, 5)
}

fn install_dapp_polling_every(c: &mut LocalCanister, wasm: &[u8], poll_ms: u64) -> Principal {
    c.rt.install(wasm, Encode!(&c.id, &poll_ms).unwrap(), vec![user(1)])
        .expect("the dApp installs")
}

fn story(c: &mut LocalCanister, dapp: Principal, ticket: u64) -> Story {
    let reply =
        c.rt.query(dapp, user(2), "story", Encode!(&ticket).unwrap())
            .expect("story");
    Decode!(&reply.bytes, Option<Story>)
        .unwrap()
        .expect("the ticket exists")
}

/// Runs rounds (1 ms of clock each: one icllm scheduler tick; the dApp
/// polls every 5) until `until` holds for the story.
fn run_until(c: &mut LocalCanister, dapp: Principal, ticket: u64, until: impl Fn(&Story) -> bool) -> Story {
    for _ in 0..20_000 {
        let s = story(c, dapp, ticket);
        if until(&s) {
            return s;
        }
        c.rt.advance_time(Duration::from_millis(1));
    }
    panic!("the story never got there: {:?}", story(c, dapp, ticket));
}

fn tell(c: &mut LocalCanister, dapp: Principal, max_tokens: u32) -> u64 {
    tell_by(c, dapp, "tell", max_tokens)
}

/// The golden prompt through the dApp's `method` (`tell` or `tell_and_notify`).
fn tell_by(c: &mut LocalCanister, dapp: Principal, method: &str, max_tokens: u32) -> u64 {
    let arg = Encode!(&GOLDEN_PROMPT, &max_tokens).unwrap();
    let reply = c.rt.update(dapp, user(2), method, arg).expect(method);
    Decode!(&reply.bytes, u64).unwrap()
}

#[test]
fn a_dapp_gets_the_golden_continuation_by_inter_canister_calls() {
    let wasm = storyteller_wasm();
    let mut c = canister_with_model(40_000_000_000);
    let dapp = install_dapp(&mut c, &wasm);
    let ticket = tell(&mut c, dapp, 16);
    let s = run_until(&mut c, dapp, ticket, |s| s.status != "asking" && s.status != "waiting");
    assert_eq!(s.status, "done", "{s:?}");
    assert_eq!(s.tokens[..10], GOLDEN_IDS, "{s:?}");
    assert!(s.text.starts_with(". He liked to play"), "{s:?}");
    // The job is the dApp's own: icllm counts it under the dApp's principal.
    assert!(s.job.is_some());
}

/// icllm with the shipped model and 10 M-instruction messages: a job spans
/// many, so upgrades and stops land mid-job.
fn icllm_with_small_messages() -> LocalCanister {
    let init = icllm_api::InitArgs {
        message_instruction_limit: Some(10_000_000),
        ..Default::default()
    };
    let mut c = LocalCanister::install_with(
        integration_tests::wasm(),
        init,
        10_000_000,
        false,
        integration_tests::memory_charges_for(10_000_000),
    )
    .expect("install");
    let model = integration_tests::model_bytes();
    c.upload_model(model, icllm::local_canister::sha256(model))
        .expect("upload");
    c
}

/// Two dApps at once: icllm runs their jobs side by side, and each gets
/// llama.cpp's golden continuation.
#[test]
fn two_dapps_asking_at_once_both_get_the_golden_continuation() {
    let wasm = storyteller_wasm();
    let mut c = icllm_with_small_messages();
    let (first, second) = (install_dapp(&mut c, &wasm), install_dapp(&mut c, &wasm));
    let t1 = tell(&mut c, first, 12);
    let t2 = tell(&mut c, second, 10);
    let j1 = run_until(&mut c, first, t1, |s| s.job.is_some()).job.unwrap();
    let j2 = run_until(&mut c, second, t2, |s| s.job.is_some()).job.unwrap();
    let active = |c: &mut LocalCanister, job| c.poll(controller(), job, 0).unwrap().unwrap().status.is_active();
    assert!(active(&mut c, j1) && active(&mut c, j2), "both jobs under way at once");
    let s1 = run_until(&mut c, first, t1, |s| s.status != "waiting");
    let s2 = run_until(&mut c, second, t2, |s| s.status != "waiting");
    assert_eq!(
        (s1.status.as_str(), s2.status.as_str()),
        ("done", "done"),
        "{s1:?} {s2:?}"
    );
    assert_eq!(s1.tokens[..10], GOLDEN_IDS);
    assert_eq!(s2.tokens, GOLDEN_IDS);
}

#[test]
fn icllm_upgraded_mid_job_and_the_dapp_upgraded_mid_wait_end_with_the_same_answer() {
    let wasm = storyteller_wasm();
    let mut c = icllm_with_small_messages();
    let dapp = install_dapp(&mut c, &wasm);
    let ticket = tell(&mut c, dapp, 40);
    let s = run_until(&mut c, dapp, ticket, |s| s.status == "waiting");
    let job = s.job.unwrap();

    let active = |c: &mut LocalCanister| {
        let view = c
            .poll(controller(), job, 0)
            .expect("poll")
            .expect("a controller sees the job");
        view.status.is_active()
    };
    // icllm upgraded while the job runs.
    assert!(active(&mut c));
    c.upgrade().expect("icllm upgrades");
    // A little later, the dApp upgraded while it waits (its task is gone;
    // post_upgrade resumes from the kept job id).
    for _ in 0..3 {
        c.rt.advance_time(Duration::from_millis(1));
    }
    assert!(active(&mut c));
    assert_eq!(story(&mut c, dapp, ticket).status, "waiting");
    c.rt.upgrade(dapp, &wasm, vec![], user(1)).expect("the dApp upgrades");
    let s = run_until(&mut c, dapp, ticket, |s| s.status != "waiting");
    assert_eq!(s.status, "done", "{s:?}");

    // The same request run alone, without upgrades.
    let mut alone = canister_with_model(40_000_000_000);
    let dapp_alone = install_dapp(&mut alone, &wasm);
    let t = tell(&mut alone, dapp_alone, 40);
    let want = run_until(&mut alone, dapp_alone, t, |s| s.status == "done");
    assert_eq!(s.tokens, want.tokens);
    assert_eq!(s.tokens[..10], GOLDEN_IDS);
}

/// The dApp polls once an hour: what finishes its story is icllm's call
/// to `on_job_done` when the job ends.
#[test]
fn a_completion_callback_brings_the_answer_without_polling() {
    let wasm = storyteller_wasm();
    let mut c = canister_with_model(40_000_000_000);
    let dapp = install_dapp_polling_every(&mut c, &wasm, 3_600_000);
    let ticket = tell_by(&mut c, dapp, "tell_and_notify", 16);
    let s = run_until(&mut c, dapp, ticket, |s| s.status == "done");
    assert_eq!(s.tokens[..10], GOLDEN_IDS, "{s:?}");
    // Users cannot ask to be called back.
    let mut req = icllm_api::JobRequest {
        prompt: GOLDEN_PROMPT.into(),
        max_tokens: 4,
        notify: Some("on_job_done".into()),
        ..Default::default()
    };
    let refused = c.start_job(user(3), req.clone()).expect("the call runs");
    assert!(
        matches!(refused, Err(icllm_api::ApiError::InvalidArgument(ref m)) if m.contains("only canisters")),
        "{refused:?}"
    );
    req.notify = None;
    assert!(c.start_job(user(3), req).expect("the call runs").is_ok());
}

/// A dApp that traps when called back: icllm's job is done all the same,
/// and icllm goes on serving (the dApp can still poll for its text).
#[test]
fn a_dapp_that_traps_in_its_callback_changes_nothing_in_icllm() {
    let wasm = storyteller_wasm();
    let mut c = canister_with_model(40_000_000_000);
    let dapp = install_dapp_polling_every(&mut c, &wasm, 3_600_000);
    c.rt.update(dapp, user(1), "set_trap_on_notify", Encode!(&true).unwrap())
        .expect("set");
    let ticket = tell_by(&mut c, dapp, "tell_and_notify", 16);
    let s = run_until(&mut c, dapp, ticket, |s| s.job.is_some());
    let job = s.job.unwrap();
    for _ in 0..200 {
        c.rt.advance_time(Duration::from_millis(1));
    }
    let trapped =
        c.rt.reports()
            .iter()
            .any(|r| r.canister == dapp && r.method == "on_job_done" && r.error.is_some());
    assert!(trapped, "the dApp's callback ran and trapped");
    let view = c.poll(controller(), job, 0).expect("poll").expect("the job");
    assert_eq!(view.status, icllm_api::JobStatus::Done("max_tokens".into()));
    assert_eq!(view.tokens[..10], GOLDEN_IDS);
    assert_eq!(
        story(&mut c, dapp, ticket).status,
        "waiting",
        "the news was lost, as the dApp chose"
    );
    // icllm serves on: another job finishes.
    let id = c
        .start_job(
            user(4),
            icllm_api::JobRequest {
                prompt: GOLDEN_PROMPT.into(),
                max_tokens: 10,
                temperature: Some(0.0),
                ..Default::default()
            },
        )
        .unwrap()
        .unwrap();
    let mut tokens = Vec::new();
    c.run_job(user(4), id, |v| tokens.extend_from_slice(&v.tokens)).unwrap();
    assert_eq!(tokens, GOLDEN_IDS);
}

/// A stopped icllm refuses the dApp's request with the replica's reason.
/// Upgraded the way dfx and icp-cli upgrade (stop, install, start) while
/// the dApp waits, nothing is lost: the dApp's polls are refused while it
/// is stopped and retried. Stopped for longer than the dApp's patience,
/// the story fails with the reason.
#[test]
fn a_dapp_rides_out_icllm_stopped_for_an_upgrade_and_is_told_when_it_is_stopped() {
    let wasm = storyteller_wasm();
    let mut c = icllm_with_small_messages();
    let dapp = install_dapp(&mut c, &wasm);
    let icllm = c.id;

    assert_eq!(c.rt.stop_canister(icllm).unwrap(), CanisterStatus::Stopped);
    let ticket = tell(&mut c, dapp, 8);
    let s = run_until(&mut c, dapp, ticket, |s| s.status != "asking");
    assert!(
        s.status.starts_with("failed:") && s.status.contains(&format!("Canister {icllm} is stopped")),
        "{s:?}"
    );
    assert!(s.job.is_none());
    c.rt.start_canister(icllm).unwrap();

    let ticket = tell(&mut c, dapp, 40);
    let s = run_until(&mut c, dapp, ticket, |s| s.status == "waiting");
    let job = s.job.unwrap();
    assert_eq!(c.rt.stop_canister(icllm).unwrap(), CanisterStatus::Stopped);
    c.upgrade().expect("icllm upgrades while stopped");
    let start = c.rt.reports().len();
    for _ in 0..50 {
        c.rt.advance_time(Duration::from_millis(1));
    }
    let window = &c.rt.reports()[start..];
    assert!(
        window.iter().all(|r| r.canister != icllm),
        "a stopped icllm runs nothing"
    );
    let polls = window
        .iter()
        .filter(|r| r.canister == dapp && r.kind == local_ic::MessageKind::Callback)
        .count();
    assert!(polls >= 5, "the dApp's polls were refused and retried: {polls}");
    assert_eq!(story(&mut c, dapp, ticket).status, "waiting");
    c.rt.start_canister(icllm).unwrap();
    let s = run_until(&mut c, dapp, ticket, |s| s.status != "waiting");
    assert_eq!(s.status, "done", "{s:?}");
    assert_eq!(s.job, Some(job));
    assert_eq!(s.tokens.len(), 40);
    assert_eq!(s.tokens[..10], GOLDEN_IDS);

    // Stopped for good: after its retries (120 polls, 5 ms apart) the
    // dApp gives up with the reason.
    let ticket = tell(&mut c, dapp, 40);
    run_until(&mut c, dapp, ticket, |s| s.status == "waiting");
    c.rt.stop_canister(icllm).unwrap();
    let s = run_until(&mut c, dapp, ticket, |s| s.status != "waiting");
    assert!(
        s.status.starts_with("failed:") && s.status.contains("is stopped") && s.status.contains("code 5"),
        "{s:?}"
    );
}

/// icllm's call back to a dApp it cannot reach in time (its messages held,
/// as on a congested subnet) gives up after its 60 s bounded wait: icllm is
/// left with nothing open, the late news is dropped, and the dApp's own
/// slow polling still brings the story.
#[test]
fn a_call_back_to_an_unreachable_dapp_expires_and_icllm_is_unaffected() {
    let wasm = storyteller_wasm();
    let mut c = canister_with_model(40_000_000_000);
    let dapp = install_dapp_polling_every(&mut c, &wasm, 3_600_000);
    let icllm = c.id;
    let ticket = tell_by(&mut c, dapp, "tell_and_notify", 16);
    let job = run_until(&mut c, dapp, ticket, |s| s.job.is_some()).job.unwrap();

    c.rt.hold_messages_to(dapp);
    let done = |c: &mut LocalCanister| {
        let view = c.poll(controller(), job, 0).expect("poll").expect("the job");
        !view.status.is_active()
    };
    while !done(&mut c) {
        c.rt.advance_time(Duration::from_millis(1));
    }
    // The call back is under way: icllm cannot stop before it ends.
    c.rt.advance_time(Duration::from_millis(1));
    assert_eq!(c.rt.stop_canister(icllm).unwrap(), CanisterStatus::Stopping);
    c.rt.advance_time(Duration::from_secs(59));
    assert_eq!(c.rt.canister_status(icllm), Some(CanisterStatus::Stopping));
    c.rt.advance_time(Duration::from_secs(2));
    assert_eq!(
        c.rt.canister_status(icllm),
        Some(CanisterStatus::Stopped),
        "the bounded wait ended"
    );
    c.rt.start_canister(icllm).unwrap();

    let start = c.rt.reports().len();
    c.rt.release_messages_to(dapp);
    assert!(
        !c.rt.reports()[start..].iter().any(|r| r.method == "on_job_done"),
        "the expired call back is never delivered"
    );
    assert_eq!(story(&mut c, dapp, ticket).status, "waiting");
    c.rt.advance_time(Duration::from_secs(3600));
    let s = story(&mut c, dapp, ticket);
    assert_eq!(s.status, "done", "{s:?}");
    assert_eq!(s.tokens[..10], GOLDEN_IDS);
}

/// icllm takes no payment in cycles: cycles a caller attaches to a call
/// come back with the reply, and the job runs all the same.
#[test]
fn cycles_attached_to_a_call_come_back() {
    #[derive(CandidType, Deserialize, Debug)]
    struct Relayed {
        reply: Option<Vec<u8>>,
        reject_code: Option<u32>,
        reject_message: String,
        refunded: u128,
    }
    build_package_wasm("test-canister-counter").expect("the counter builds");
    let counter = std::fs::read(canister_wasm_path("counter")).expect("counter wasm");
    let mut c = canister_with_model(40_000_000_000);
    let caller = c.rt.install(&counter, Encode!(&0u64).unwrap(), vec![user(1)]).unwrap();
    let request = icllm_api::JobRequest {
        prompt: GOLDEN_PROMPT.into(),
        max_tokens: 10,
        temperature: Some(0.0),
        // A seed given: icllm makes no raw_rand call, so its balance moves
        // by its own messages' execution alone.
        seed: Some(1),
        ..Default::default()
    };
    let attached = 1_000_000_000u128;
    let before = c.rt.cycle_balance(c.id).unwrap();
    let arg = Encode!(
        &c.id,
        &"start_job",
        &Encode!(&request).unwrap(),
        &attached,
        &None::<u32>
    )
    .unwrap();
    let reply = c.rt.update(caller, user(2), "relay", arg).expect("relay");
    let seen = Decode!(&reply.bytes, Relayed).unwrap();
    assert_eq!(seen.refunded, attached, "{seen:?}");
    let job = Decode!(&seen.reply.expect("start_job replied"), icllm_api::ApiResult<u64>)
        .unwrap()
        .expect("the job started");
    let spent: u128 = reply
        .messages
        .iter()
        .filter(|m| m.canister == c.id)
        .map(|m| local_ic::cycles::execution_cost(m.charged_instructions()))
        .sum();
    assert_eq!(
        c.rt.cycle_balance(c.id).unwrap(),
        before - spent,
        "icllm paid for its messages and kept none of the cycles"
    );
    let mut tokens = Vec::new();
    c.run_job(caller, job, |v| tokens.extend_from_slice(&v.tokens)).unwrap();
    assert_eq!(tokens, GOLDEN_IDS);
}

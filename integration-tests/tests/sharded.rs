//! A model sharded over canisters (a coordinator and 2 or 3 shards, the
//! real canister wasm each, inter-canister calls in the local runtime)
//! generates id for id what one canister generates with the whole model:
//! also while shards are upgraded, stopped (their calls rejected) and
//! reinstalled (their rows lost, so the job goes back and recomputes), and
//! while the coordinator is stopped, upgraded and started.
//! The model is a synthetic stories15M (6 layers), Q8_0.

use candid::Principal;
use icllm::local_canister::{controller, find_or_build_wasm, sha256, user, LocalCanister};
use icllm::local_sharded::{even_ranges, LocalShards};
use icllm_api::*;
use icllm_engine::synth::{self, QuantMix, SynthOptions};
use std::sync::OnceLock;

const LIMIT: u64 = IC_UPDATE_INSTRUCTION_LIMIT;

fn stories15m() -> &'static [u8] {
    static CELL: OnceLock<Vec<u8>> = OnceLock::new();
    CELL.get_or_init(|| {
        let shape = synth::shape("stories15M").expect("a known shape");
        let mut opts = SynthOptions::new(QuantMix::parse("q8_0").unwrap());
        opts.search = icllm_engine::quant::Search::Fast;
        let mut bytes = Vec::new();
        synth::write_gguf(shape, &opts, &mut bytes).expect("synthesis");
        bytes
    })
}

fn request() -> JobRequest {
    request_with(11, "Once upon a time there was a little robot")
}

fn request_with(seed: u64, prompt: &str) -> JobRequest {
    JobRequest {
        prompt: prompt.into(),
        max_tokens: 32,
        temperature: Some(0.8),
        seed: Some(seed),
        ..JobRequest::default()
    }
}

/// The tokens one canister with the whole model generates.
fn whole_model_tokens() -> &'static [u32] {
    static CELL: OnceLock<Vec<u32>> = OnceLock::new();
    CELL.get_or_init(|| {
        let mut c = LocalCanister::install(find_or_build_wasm(None).unwrap(), InitArgs::default(), LIMIT).unwrap();
        c.upload_model(stories15m(), sha256(stories15m())).unwrap();
        let id = c.start_job(user(1), request()).unwrap().unwrap();
        let view = c.run_job(user(1), id, |_| {}).unwrap();
        assert_eq!(view.status, JobStatus::Done("max_tokens".into()), "{view:?}");
        view.tokens
    })
}

/// `shard_forward` on shard `i` as a call from `caller` (a canister's
/// call: ingress to shard methods is refused by `inspect_message`).
fn shard_call(s: &mut LocalShards, i: usize, caller: Principal, batch: &ShardBatch) -> ApiResult<ShardReply> {
    let shard = s.shards[i];
    let reply = s
        .coordinator
        .rt
        .update_from_canister(shard, caller, "shard_forward", candid::encode_args((batch,)).unwrap())
        .unwrap();
    candid::decode_one(&reply.bytes).unwrap()
}

fn sharded(k: u32) -> LocalShards {
    let mut s = LocalShards::install(
        find_or_build_wasm(None).unwrap(),
        InitArgs::default(),
        LIMIT,
        &even_ranges(6, k),
    )
    .unwrap();
    s.upload_model(stories15m(), sha256(stories15m())).unwrap();
    s
}

#[test]
fn two_and_three_shards_generate_what_one_canister_generates() {
    let want = whole_model_tokens();
    for k in [2, 3] {
        let mut s = sharded(k);
        // Each shard got its part of the file from the coordinator: the
        // header and its layers, not the embedding and head (most of
        // stories15M) nor the other shards' layers.
        let size = stories15m().len() as u64;
        for i in 0..k as usize {
            let (st,): (ApiResult<UploadStatus>,) =
                s.on_shard(i, |c| c.query(controller(), "upload_status", ())).unwrap();
            let st = st.unwrap();
            assert_eq!(st.state, UploadState::Done);
            assert!(st.missing.is_empty() && st.received_bytes > 0, "{st:?}");
            assert!(
                st.received_bytes * 2 < size,
                "shard {i} of {k} received {} of {size} bytes",
                st.received_bytes
            );
        }
        let c = &mut s.coordinator;
        let id = c.start_job(user(1), request()).unwrap().unwrap();
        let view = c.run_job(user(1), id, |_| {}).unwrap();
        assert_eq!(
            view.status,
            JobStatus::Done("max_tokens".into()),
            "{k} shards: {view:?}"
        );
        assert_eq!(view.tokens, want, "{k} shards");
        // 32 batches (the prompt, then a token each), each through every
        // shard (a message there, a callback here), then the head here.
        assert_eq!(view.messages, 32 * (2 * k as u64 + 1), "{k} shards");
        eprintln!(
            "{k} shards: {} messages, {} instructions for {} tokens",
            view.messages, view.instructions, view.generated_tokens
        );
        // The shards dropped the finished job's rows: asked (as the
        // coordinator) for a batch past position 0, each holds nothing.
        for _ in 0..3 {
            s.coordinator.round();
        }
        let coordinator = s.coordinator.id;
        for i in 0..k as usize {
            let batch = ShardBatch {
                seqs: vec![ShardSeq {
                    job: id,
                    ctx_size: 64,
                    kv_cache_type: KvCacheType::F32,
                    pos0: 5,
                    n: 1,
                }],
                hidden: vec![0; 288 * 4],
            };
            let r = shard_call(&mut s, i, coordinator, &batch);
            assert_eq!(r, Ok(ShardReply::Behind { job: id, holds: 0 }), "shard {i}");
        }
    }
}

#[test]
fn concurrent_jobs_share_each_shard_message_and_generate_what_each_generates_alone() {
    let reqs: Vec<JobRequest> = [
        (3, "The cat sat"),
        (4, "A long time ago, in a small town by the sea"),
        (5, "Hi"),
    ]
    .iter()
    .map(|&(seed, prompt)| request_with(seed, prompt))
    .collect();
    let mut whole = LocalCanister::install(find_or_build_wasm(None).unwrap(), InitArgs::default(), LIMIT).unwrap();
    whole.upload_model(stories15m(), sha256(stories15m())).unwrap();
    let alone: Vec<Vec<u32>> = reqs
        .iter()
        .map(|r| {
            let id = whole.start_job(user(1), r.clone()).unwrap().unwrap();
            whole.run_job(user(1), id, |_| {}).unwrap().tokens
        })
        .collect();
    let mut s = sharded(2);
    let first_report = s.coordinator.rt.reports().len();
    let ids: Vec<JobId> = reqs
        .iter()
        .map(|r| s.coordinator.start_job(user(2), r.clone()).unwrap().unwrap())
        .collect();
    for (id, want) in ids.iter().zip(&alone) {
        let view = s.coordinator.run_job(user(2), *id, |_| {}).unwrap();
        assert_eq!(&view.tokens, want, "job {id}");
    }
    // Three jobs of 32 batches each, but the shards ran them together.
    let shard_messages = s.coordinator.rt.reports()[first_report..]
        .iter()
        .filter(|r| r.canister == s.shards[0] && r.method.ends_with("shard_forward"))
        .count();
    assert!(
        shard_messages <= 40,
        "{shard_messages} messages on shard 0 for 3 × 32 batches"
    );
}

#[test]
fn shards_upgraded_stopped_and_reinstalled_mid_job_change_no_token() {
    let want = whole_model_tokens();
    let mut s = sharded(3);
    let id = s.coordinator.start_job(user(1), request()).unwrap().unwrap();
    let mut rounds = 0;
    let mut seen_mid_job = 0;
    loop {
        let view = s.coordinator.poll(user(1), id, 0).unwrap().unwrap();
        if !view.status.is_active() {
            assert_eq!(view.status, JobStatus::Done("max_tokens".into()), "{view:?}");
            assert_eq!(view.tokens, want);
            break;
        }
        if (1..32).contains(&view.generated_tokens) {
            seen_mid_job += 1;
        }
        match rounds {
            // An upgrade: the shard reloads its layers, its rows stay.
            4 => {
                s.on_shard(1, |c| c.upgrade()).unwrap();
            }
            // Stopped: every call to it is rejected for a while.
            8 => {
                s.coordinator.rt.stop_canister(s.shards[2]).unwrap();
            }
            14 => s.coordinator.rt.start_canister(s.shards[2]).unwrap(),
            // Reinstalled: its rows are gone; once it has the model again it
            // says how far it holds rows (nowhere), and the job goes back.
            18 => {
                reinstall_shard(&mut s, 0, 0, 2, None);
                // The coordinator sends it its part of the model again.
            }
            // The coordinator is upgraded the safe way: stopped first (its
            // calls under way end), upgraded, started; its jobs resume from
            // their checkpoints.
            26 => {
                let c = &mut s.coordinator;
                c.rt.stop_canister(c.id).unwrap();
                for _ in 0..100 {
                    if c.rt.canister_status(c.id) == Some(local_ic::CanisterStatus::Stopped) {
                        break;
                    }
                    c.round();
                }
                assert_eq!(c.rt.canister_status(c.id), Some(local_ic::CanisterStatus::Stopped));
                c.upgrade().unwrap();
                c.rt.start_canister(c.id).unwrap();
            }
            _ => {}
        }
        s.coordinator.round();
        rounds += 1;
        assert!(rounds < 2_000, "the job did not finish");
    }
    assert!(
        seen_mid_job > 18,
        "the interruptions came mid-job ({seen_mid_job} rounds)"
    );
    let calls: Vec<usize> = s
        .shards
        .iter()
        .map(|&id| {
            let rt = &s.coordinator.rt;
            rt.reports()
                .iter()
                .filter(|r| r.canister == id && r.method.ends_with("shard_forward"))
                .count()
        })
        .collect();
    eprintln!("shard_forward messages per shard: {calls:?} in {rounds} rounds");
    // The coordinator's log says what it went through.
    let logs: Vec<&str> = s
        .coordinator
        .rt
        .logs()
        .iter()
        .filter(|(c, _)| *c == s.coordinator.id)
        .map(|(_, l)| l.as_str())
        .collect();
    assert!(
        logs.iter()
            .any(|l| l.contains("a shard holds rows up to position 0 only")),
        "the reinstalled shard sent the job back to 0: {logs:?}"
    );
    assert!(
        logs.iter()
            .any(|l| l.contains("abandoned") && l.contains(&s.shards[2].to_text())),
        "calls to the stopped shard failed: {logs:?}"
    );
}

#[test]
fn shard_methods_are_for_the_coordinator_and_jobs_for_the_coordinator_only() {
    let mut s = sharded(2);
    let batch = ShardBatch {
        seqs: vec![ShardSeq {
            job: 1,
            ctx_size: 16,
            kv_cache_type: KvCacheType::F32,
            pos0: 0,
            n: 1,
        }],
        hidden: vec![0; 288 * 4],
    };
    for caller in [controller(), user(3), Principal::anonymous()] {
        let r = shard_call(&mut s, 0, caller, &batch);
        assert!(
            matches!(&r, Err(ApiError::NotAuthorized(m)) if m.contains("coordinator")),
            "{r:?}"
        );
    }
    // Ingress to a shard method never reaches it.
    let ingress = s.on_shard(0, |c| {
        c.update::<_, (ApiResult<ShardReply>,)>(user(3), "shard_forward", (batch.clone(),))
    });
    assert!(ingress.is_err(), "{ingress:?}");
    let r = s.on_shard(1, |c| c.start_job(user(1), request())).unwrap();
    assert!(
        matches!(&r, Err(ApiError::InvalidArgument(m)) if m.contains("is a shard") && m.contains(&s.coordinator.id.to_text())),
        "{r:?}"
    );
    // The coordinator's jobs advance in the background only.
    let id = s.coordinator.start_job(user(1), request()).unwrap().unwrap();
    let r = s.coordinator.step(user(1), id).unwrap();
    assert!(
        matches!(&r, Err(ApiError::InvalidArgument(m)) if m.contains("shards")),
        "{r:?}"
    );
    let (r,): (ApiResult<QueryGeneration>,) = s.coordinator.query(user(1), "generate_query", (request(),)).unwrap();
    assert!(r.is_err());
}

#[test]
fn shards_that_do_not_cover_the_model_are_refused_at_load() {
    // 6 layers, but the shards cover 0..5.
    let mut s = LocalShards::install(
        find_or_build_wasm(None).unwrap(),
        InitArgs::default(),
        LIMIT,
        &[0..3, 3..5],
    )
    .unwrap();
    for i in 0..2 {
        s.on_shard(i, |c| c.upload_model(stories15m(), sha256(stories15m())))
            .unwrap();
    }
    let err = s
        .coordinator
        .upload_model(stories15m(), sha256(stories15m()))
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("the model has 6 layers but the coordinator's shards cover layers 0..5"),
        "{err}"
    );
    // A shard whose range lies outside the model refuses it too.
    let mut bad = LocalShards::install(
        find_or_build_wasm(None).unwrap(),
        InitArgs::default(),
        LIMIT,
        &[0..3, 3..7],
    )
    .unwrap();
    let err = bad
        .on_shard(1, |c| c.upload_model(stories15m(), sha256(stories15m())))
        .unwrap_err();
    assert!(
        err.to_string().contains("holds layers 3..7 but the model has 6 layers"),
        "{err}"
    );
}

/// Reinstalls shard `i` (its rows and part gone) with `heap_budget`.
fn reinstall_shard(s: &mut LocalShards, i: usize, first_layer: u32, end_layer: u32, heap_budget: Option<u64>) {
    let arg = candid::encode_args((Some(InitArgs {
        role: Some(Role::Shard {
            coordinator: s.coordinator.id,
            first_layer,
            end_layer,
        }),
        heap_budget,
        ..InitArgs::default()
    }),))
    .unwrap();
    let (shard, wasm) = (s.shards[i], s.coordinator.wasm.clone());
    s.coordinator.rt.reinstall(shard, &wasm, arg).unwrap();
}

/// A shard that cannot load its part (reinstalled mid-job with too small a
/// heap): the coordinator says why in `model_info` and to new jobs, sends
/// the part again with growing pauses (not every tick), fails the waiting
/// job with the shard's reason after 30 minutes, and serves new jobs as
/// before once the shard is mended.
#[test]
fn a_shard_that_cannot_load_its_part_fails_waiting_jobs_with_the_reason_and_heals() {
    let mut s = sharded(2);
    let id = s.coordinator.start_job(user(1), request()).unwrap().unwrap();
    for _ in 0..4 {
        s.coordinator.round();
    }
    reinstall_shard(&mut s, 1, 3, 6, Some(1 << 20));
    let mut rounds = 0;
    while !s.coordinator_state().contains("could not load its part") {
        s.coordinator.round();
        rounds += 1;
        assert!(
            rounds < 500,
            "the coordinator did not notice: {}",
            s.coordinator_state()
        );
    }
    let state = s.coordinator_state();
    assert!(
        state.starts_with("waiting for the shards:") && state.contains(&s.shards[1].to_text()),
        "{state}"
    );
    assert!(state.contains("heap"), "the shard's own reason: {state}");
    let refused = s.coordinator.start_job(user(2), request()).unwrap();
    assert!(
        matches!(&refused, Err(ApiError::ModelNotReady(m)) if m.contains("could not load its part")),
        "{refused:?}"
    );
    assert!(s.coordinator.poll(user(1), id, 0).unwrap().unwrap().status.is_active());

    // Failed attempts are spaced out: 10 s, 20 s, 40 s, …
    let sends_before = part_sends(&s);
    s.coordinator.rt.advance_time(std::time::Duration::from_secs(5));
    assert_eq!(part_sends(&s), sends_before, "no attempt within 10 s of a failure");
    s.coordinator.rt.advance_time(std::time::Duration::from_secs(6));
    assert_eq!(part_sends(&s), sends_before + 1, "the next attempt after 10 s");
    // Half an hour later, the next failed attempt fails the waiting job.
    s.coordinator.rt.jump_time(std::time::Duration::from_secs(31 * 60));
    for _ in 0..10 {
        s.coordinator.round();
    }
    let view = s.coordinator.poll(user(1), id, 0).unwrap().unwrap();
    match &view.status {
        JobStatus::Failed(why) => assert!(
            why.contains("the shards have lacked their parts of the model for")
                && why.contains("could not load its part"),
            "{why}"
        ),
        other => panic!("the waiting job ended {other:?}"),
    }

    // Mended: the next attempt gives the shard its part; jobs run again.
    reinstall_shard(&mut s, 1, 3, 6, None);
    s.coordinator.rt.jump_time(std::time::Duration::from_secs(30 * 60));
    let mut rounds = 0;
    while s.coordinator_state() != "ready" {
        s.coordinator.round();
        rounds += 1;
        assert!(rounds < 20_000, "not mended: {}", s.coordinator_state());
    }
    let id = s.coordinator.start_job(user(1), request()).unwrap().unwrap();
    let view = s.coordinator.run_job(user(1), id, |_| {}).unwrap();
    assert_eq!(view.tokens, whole_model_tokens());
}

/// `upload_begin` calls the coordinator made to its shards so far.
fn part_sends(s: &LocalShards) -> usize {
    let rt = &s.coordinator.rt;
    rt.reports()
        .iter()
        .filter(|r| s.shards.contains(&r.canister) && r.method.ends_with("upload_begin"))
        .count()
}

//! The icllm canister wasm in the local IC runtime: what README and design
//! promise dApps. Golden outputs come from models/README.md.

use candid::Principal;
use icllm::local_canister::{controller, sha256, user, LocalCanister, UPLOAD_CHUNK_BYTES};
use icllm_api::*;
use integration_tests::{canister_with_model, model_bytes, wasm};
use std::sync::OnceLock;

/// From models/README.md: greedy continuation of "Joe loves writing stories".
const GOLDEN_PROMPT: &str = "Joe loves writing stories";
const GOLDEN_IDS: [u32; 10] = [426, 346, 397, 355, 267, 337, 335, 345, 267, 422];
const GOLDEN_TEXT: &str = ". He liked to play with his toy";
const IC_LIMIT: u64 = 40_000_000_000;

fn greedy(prompt: &str, max_tokens: u32) -> JobRequest {
    JobRequest {
        prompt: prompt.into(),
        max_tokens,
        temperature: Some(0.0),
        seed: Some(1),
        ..JobRequest::default()
    }
}

fn start(c: &mut LocalCanister, caller: Principal, req: JobRequest) -> JobId {
    c.start_job(caller, req)
        .expect("start_job call")
        .expect("start_job accepted")
}

fn final_view(c: &mut LocalCanister, caller: Principal, id: JobId) -> JobView {
    c.poll(caller, id, 0).expect("poll call").expect("poll accepted")
}

/// Every committed update/timer message stayed under the runtime's limit.
fn assert_no_message_over(c: &LocalCanister, limit: u64) {
    for r in c.rt.reports() {
        assert!(
            r.instructions <= limit,
            "message {} used {} > {limit}",
            r.method,
            r.instructions
        );
    }
}

#[test]
fn golden_prompt_through_timers() {
    let mut c = canister_with_model(IC_LIMIT);
    let id = start(&mut c, controller(), greedy(GOLDEN_PROMPT, 10));
    let view = c.run_job(controller(), id, |_| {}).unwrap();
    assert_eq!(view.status, JobStatus::Done("max_tokens".into()));
    assert_eq!(view.tokens, GOLDEN_IDS);
    assert_eq!(view.text, GOLDEN_TEXT);
    assert_eq!(view.prompt_tokens, 16, "BOS + 15 SPM tokens");
    assert!(view.instructions > 0 && view.cycles > view.instructions as u128);
}

/// The canister build really runs SIMD128: its code section holds f32x4
/// arithmetic (the matvec, attention and f16 kernels of kernels/simd.rs).
#[test]
fn canister_wasm_uses_simd128_f32x4() {
    use wasmparser::{Operator, Parser, Payload};
    let (mut mul, mut add) = (0, 0);
    for payload in Parser::new(0).parse_all(&wasm()) {
        if let Payload::CodeSectionEntry(body) = payload.expect("valid wasm") {
            let mut ops = body.get_operators_reader().expect("operators");
            while !ops.eof() {
                match ops.read().expect("operator") {
                    Operator::F32x4Mul => mul += 1,
                    Operator::F32x4Add => add += 1,
                    _ => {}
                }
            }
        }
    }
    assert!(mul >= 8 && add >= 8, "f32x4.mul {mul}, f32x4.add {add}");
}

/// `prompt_tokens` (the bench's synthetic prompts) gives the same job as the
/// text those ids encode; with the SIMD build the ids stay the golden ones.
#[test]
fn prompt_tokens_give_the_golden_ids() {
    use icllm_engine::model::Model;
    use icllm_engine::tokenizer::Tokenizer;
    let (_, gguf) = Model::from_gguf_bytes(model_bytes()).expect("model");
    let tok = Tokenizer::from_gguf(&gguf).expect("tokenizer");
    let ids = tok.encode(GOLDEN_PROMPT, tok.add_bos_default());
    assert_eq!(ids.len(), 16);
    let mut c = canister_with_model(IC_LIMIT);
    let req = JobRequest {
        prompt: String::new(),
        prompt_tokens: Some(ids),
        ..greedy("", 10)
    };
    let id = start(&mut c, controller(), req);
    let view = c.run_job(controller(), id, |_| {}).unwrap();
    assert_eq!(view.tokens, GOLDEN_IDS);
    assert_eq!(view.text, GOLDEN_TEXT);
    let both = JobRequest {
        prompt_tokens: Some(vec![1, 2]),
        ..greedy("x", 1)
    };
    assert!(matches!(
        c.start_job(controller(), both).unwrap(),
        Err(ApiError::InvalidArgument(_))
    ));
    let outside = JobRequest {
        prompt_tokens: Some(vec![1, 100_000]),
        ..greedy("", 1)
    };
    assert!(matches!(
        c.start_job(controller(), outside).unwrap(),
        Err(ApiError::InvalidArgument(_))
    ));
}

/// The reference run: one canister, the IC's limit, no interruptions.
fn reference_ids(prompt: &str, n: u32) -> Vec<u32> {
    static REF: OnceLock<Vec<u32>> = OnceLock::new();
    assert_eq!((prompt, n), (GOLDEN_PROMPT, 40));
    REF.get_or_init(|| {
        let mut c = canister_with_model(IC_LIMIT);
        let id = start(&mut c, controller(), greedy(prompt, n));
        c.run_job(controller(), id, |_| {}).unwrap().tokens
    })
    .clone()
}

#[test]
fn small_message_limit_needs_many_timer_messages_and_gives_identical_ids() {
    let expected = reference_ids(GOLDEN_PROMPT, 40);
    assert_eq!(expected[..10], GOLDEN_IDS);
    let limit = 6_000_000;
    let mut c = canister_with_model(limit);
    let id = start(&mut c, controller(), greedy(GOLDEN_PROMPT, 40));
    let mut seen_text = String::new();
    let view = c.run_job(controller(), id, |v| seen_text.push_str(&v.text)).unwrap();
    assert_eq!(view.tokens, expected);
    assert_eq!(seen_text, view.text, "incremental polls add up to the whole text");
    // 14 messages with the SIMD kernels (~0.8 M instructions per token;
    // uploading the model needs about this limit, so it cannot go lower).
    assert!(view.messages >= 11, "only {} messages", view.messages);
    assert!(view.max_message_instructions <= limit);
    assert_no_message_over(&c, limit);
}

#[test]
fn explicit_steps_alone_finish_the_job() {
    let expected = reference_ids(GOLDEN_PROMPT, 40);
    let limit = 6_000_000;
    let mut c = canister_with_model(limit);
    let id = start(&mut c, controller(), greedy(GOLDEN_PROMPT, 40));
    // The clock never advances, so no timer fires: only `step` drives the job.
    let mut steps = 0;
    loop {
        let p = c.step(controller(), id).expect("step call").expect("step accepted");
        steps += 1;
        if !p.status.is_active() {
            break;
        }
        assert!(steps < 1000, "job does not finish");
    }
    assert!(steps > 5);
    assert_eq!(final_view(&mut c, controller(), id).tokens, expected);
    assert_no_message_over(&c, limit);
}

#[test]
fn upgrades_between_messages_do_not_change_the_tokens() {
    upgrades_between_messages_keep(KvCacheType::F32);
}

/// The int8 KV cache is saved to stable memory in its own encoding and
/// rebuilt after upgrades bit for bit too; on the golden prompt it gives
/// the golden ids (through the wasm SIMD kernels).
#[test]
fn a_q8_kv_cache_survives_upgrades_and_gives_the_golden_ids() {
    let mut c = canister_with_model(IC_LIMIT);
    let req = JobRequest {
        kv_cache: Some(KvCacheType::Q8),
        ..greedy(GOLDEN_PROMPT, 10)
    };
    let id = start(&mut c, controller(), req);
    assert_eq!(c.run_job(controller(), id, |_| {}).unwrap().tokens, GOLDEN_IDS);
    upgrades_between_messages_keep(KvCacheType::Q8);
}

fn upgrades_between_messages_keep(kv_cache: KvCacheType) {
    // A prompt long enough that processing it takes more than one message
    // (the golden prompt alone now fits in one), and its reference run.
    let prompt = [GOLDEN_PROMPT; 3].join(". ");
    let req = JobRequest {
        kv_cache: Some(kv_cache),
        ..greedy(&prompt, 40)
    };
    let expected = {
        let mut c = canister_with_model(IC_LIMIT);
        let id = start(&mut c, controller(), req.clone());
        c.run_job(controller(), id, |_| {}).unwrap().tokens
    };
    let limit = 12_000_000;
    // Upgrade after 1 message (inside prompt processing), after 3, and then every 4.
    let mut c = canister_with_model(limit);
    let id = start(&mut c, controller(), req);
    let mut rounds = 0;
    let mut upgrades = 0;
    let mut upgraded_while_prefilling = false;
    loop {
        let v = final_view(&mut c, controller(), id);
        if !v.status.is_active() {
            break;
        }
        if rounds == 1 || rounds == 3 || (rounds > 3 && rounds % 4 == 0) {
            upgraded_while_prefilling |= v.status == JobStatus::Prefilling;
            c.upgrade().expect("upgrade");
            upgrades += 1;
        }
        c.round();
        rounds += 1;
        assert!(rounds < 5000);
    }
    let v = final_view(&mut c, controller(), id);
    assert_eq!(v.tokens, expected);
    assert!(upgrades >= 3, "{upgrades} upgrades");
    assert!(upgraded_while_prefilling, "no upgrade landed during prompt processing");
}

#[test]
fn a_trap_during_a_step_leaves_the_last_checkpoint() {
    let expected = reference_ids(GOLDEN_PROMPT, 40);
    let limit = 12_000_000;
    let mut c = canister_with_model(limit);
    let id = start(&mut c, controller(), greedy(GOLDEN_PROMPT, 40));
    // Two full steps: what is left of the job (~0.8 M instructions per
    // token) still needs more than one message.
    for _ in 0..2 {
        c.step(controller(), id).unwrap().unwrap();
    }
    let before = final_view(&mut c, controller(), id);
    assert!(before.status.is_active());
    // Fault: tell the canister it may use far more than the runtime allows,
    // so the next step runs into the runtime's limit and traps.
    let (r,): (ApiResult<()>,) = c
        .update(controller(), "set_message_instruction_limit", (limit * 100,))
        .unwrap();
    r.unwrap();
    let err = c.step(controller(), id).expect_err("the step must trap at the limit");
    assert!(
        err.to_string().contains("exceeded the limit of 12000000 instructions"),
        "{err}"
    );
    let after = final_view(&mut c, controller(), id);
    assert_eq!(after.tokens, before.tokens);
    assert_eq!(after.prompt_tokens_processed, before.prompt_tokens_processed);
    assert_eq!(after.messages, before.messages);
    // Repair and finish.
    let (r,): (ApiResult<()>,) = c
        .update(controller(), "set_message_instruction_limit", (limit,))
        .unwrap();
    r.unwrap();
    let v = c.run_job(controller(), id, |_| {}).unwrap();
    assert_eq!(v.tokens, expected);
}

/// Background steps that trap are counted (a trap rolls back its own message
/// only: the scheduler calls the step on its own canister and sees the
/// reject); each retry halves the job's budget, so jobs get through a limit
/// set above the runtime's, and other jobs keep their turns meanwhile.
#[test]
fn background_steps_that_trap_are_retried_with_smaller_budgets() {
    let expected = reference_ids(GOLDEN_PROMPT, 40);
    let limit = 12_000_000;
    let mut c = canister_with_model(limit);
    // Fault: the canister may use 20x what the runtime allows.
    let (r,): (ApiResult<()>,) = c
        .update(controller(), "set_message_instruction_limit", (limit * 20,))
        .unwrap();
    r.unwrap();
    let a = start(&mut c, controller(), greedy(GOLDEN_PROMPT, 40));
    let b = start(&mut c, controller(), greedy(GOLDEN_PROMPT, 40));
    let va = c.run_job(controller(), a, |_| {}).unwrap();
    let vb = c.run_job(controller(), b, |_| {}).unwrap();
    assert_eq!(va.tokens, expected);
    assert_eq!(vb.tokens, expected);
    let trapped = c.rt.reports().iter().filter(|r| r.error.is_some()).count();
    assert!(trapped >= 2, "the fault made steps trap ({trapped} did)");
    assert_no_message_over(&c, limit);
}

/// A job whose step traps however small its budget fails with a clear
/// reason after a bounded number of attempts instead of being retried every
/// round, and the canister goes on serving.
#[test]
fn a_job_whose_step_always_traps_fails_with_a_reason() {
    let limit = 12_000_000;
    let mut c = canister_with_model(limit);
    let (r,): (ApiResult<()>,) = c
        .update(controller(), "set_message_instruction_limit", (IC_LIMIT,))
        .unwrap();
    r.unwrap();
    let id = start(&mut c, controller(), greedy(GOLDEN_PROMPT, 20));
    let v = c.run_job(controller(), id, |_| {}).unwrap();
    match &v.status {
        JobStatus::Failed(reason) => assert!(reason.contains("trapped 8 times in a row"), "{reason}"),
        other => panic!("expected a failure, got {other:?}"),
    }
    // Repaired, the canister serves new jobs.
    let (r,): (ApiResult<()>,) = c
        .update(controller(), "set_message_instruction_limit", (limit,))
        .unwrap();
    r.unwrap();
    let id = start(&mut c, controller(), greedy(GOLDEN_PROMPT, 10));
    let v = c.run_job(controller(), id, |_| {}).unwrap();
    assert_eq!(v.tokens, GOLDEN_IDS);
}

fn upload_status(c: &mut LocalCanister) -> UploadStatus {
    let (r,): (ApiResult<UploadStatus>,) = c.query(controller(), "upload_status", ()).unwrap();
    r.unwrap()
}

fn chunk(c: &mut LocalCanister, caller: Principal, offset: u64, data: &[u8]) -> ApiResult<UploadStatus> {
    let (r,): (ApiResult<UploadStatus>,) = c
        .update(
            caller,
            "upload_chunk",
            (offset, serde_bytes::ByteBuf::from(data.to_vec())),
        )
        .unwrap();
    r
}

fn begin(c: &mut LocalCanister, size: usize, sha: [u8; 32]) -> ApiResult<UploadStatus> {
    let (r,): (ApiResult<UploadStatus>,) = c
        .update(
            controller(),
            "upload_begin",
            (UploadBegin {
                size: size as u64,
                sha256: sha.to_vec(),
                parts: None,
            },),
        )
        .unwrap();
    r
}

fn finalize_until_settled(c: &mut LocalCanister) -> UploadStatus {
    let (r,): (ApiResult<UploadStatus>,) = c.update(controller(), "upload_finalize", ()).unwrap();
    r.unwrap();
    for _ in 0..10_000 {
        let s = upload_status(c);
        if matches!(s.state, UploadState::Done | UploadState::Failed(_)) {
            return s;
        }
        c.round();
    }
    panic!("upload never settled");
}

fn model_state(c: &mut LocalCanister) -> String {
    let (info,): (ModelInfo,) = c.query(user(9), "model_info", ()).unwrap();
    info.state
}

#[test]
fn upload_chunks_out_of_order_and_resent() {
    let init = InitArgs {
        message_instruction_limit: Some(IC_LIMIT),
        ..InitArgs::default()
    };
    let mut c = LocalCanister::install(wasm(), init, IC_LIMIT).unwrap();
    let model = model_bytes();
    begin(&mut c, model.len(), sha256(model)).unwrap();
    // Small chunks, last first, with one resent.
    let size = 100_000;
    let offsets: Vec<usize> = (0..model.len()).step_by(size).collect();
    for &o in offsets.iter().rev() {
        chunk(&mut c, controller(), o as u64, &model[o..(o + size).min(model.len())]).unwrap();
    }
    chunk(&mut c, controller(), 0, &model[..size]).unwrap();
    let s = upload_status(&mut c);
    assert!(s.missing.is_empty());
    assert_eq!(s.received_bytes, model.len() as u64);
    assert_eq!(finalize_until_settled(&mut c).state, UploadState::Done);
    let (info,): (ModelInfo,) = c.query(user(9), "model_info", ()).unwrap();
    assert_eq!((info.state.as_str(), info.architecture.as_str()), ("ready", "llama"));
    assert_eq!(
        (info.n_layers, info.dim, info.vocab_size, info.context_length),
        (5, 64, 512, 128)
    );
    assert_eq!(info.sha256, sha256(model).to_vec());
    // And it generates.
    let id = start(&mut c, controller(), greedy(GOLDEN_PROMPT, 10));
    assert_eq!(c.run_job(controller(), id, |_| {}).unwrap().text, GOLDEN_TEXT);
}

#[test]
fn bad_uploads_are_refused_and_the_previous_model_stays_usable() {
    let mut c = canister_with_model(IC_LIMIT);
    let model = model_bytes().to_vec();

    // Wrong sha256.
    begin(&mut c, model.len(), [7; 32]).unwrap();
    for (i, part) in model.chunks(UPLOAD_CHUNK_BYTES).enumerate() {
        chunk(&mut c, controller(), (i * UPLOAD_CHUNK_BYTES) as u64, part).unwrap();
    }
    match finalize_until_settled(&mut c).state {
        UploadState::Failed(reason) => assert!(reason.contains("sha256 mismatch"), "{reason}"),
        s => panic!("wrong hash accepted: {s:?}"),
    }

    // A missing range: finalize refuses and says what is missing.
    begin(&mut c, model.len(), sha256(&model)).unwrap();
    chunk(&mut c, controller(), 0, &model[..1000]).unwrap();
    let (r,): (ApiResult<UploadStatus>,) = c.update(controller(), "upload_finalize", ()).unwrap();
    match r {
        Err(ApiError::Upload(m)) => assert!(m.contains("missing"), "{m}"),
        other => panic!("finalize with a gap: {other:?}"),
    }
    // A chunk past the end, and an empty one.
    assert!(matches!(
        chunk(&mut c, controller(), model.len() as u64, &[1]),
        Err(ApiError::InvalidArgument(_))
    ));
    assert!(matches!(
        chunk(&mut c, controller(), 0, &[]),
        Err(ApiError::InvalidArgument(_))
    ));

    // Not a GGUF file (hash matches, content does not parse).
    let junk = vec![0x42u8; 5000];
    begin(&mut c, junk.len(), sha256(&junk)).unwrap();
    chunk(&mut c, controller(), 0, &junk).unwrap();
    match finalize_until_settled(&mut c).state {
        UploadState::Failed(reason) => assert!(reason.contains("GGUF"), "{reason}"),
        s => panic!("junk accepted: {s:?}"),
    }

    // A truncated GGUF file.
    let cut = &model[..model.len() / 2];
    begin(&mut c, cut.len(), sha256(cut)).unwrap();
    chunk(&mut c, controller(), 0, cut).unwrap();
    match finalize_until_settled(&mut c).state {
        UploadState::Failed(reason) => assert!(reason.contains("past the end"), "{reason}"),
        s => panic!("truncated file accepted: {s:?}"),
    }

    // The model loaded first still serves jobs.
    assert_eq!(model_state(&mut c), "ready");
    let id = start(&mut c, controller(), greedy(GOLDEN_PROMPT, 10));
    assert_eq!(c.run_job(controller(), id, |_| {}).unwrap().text, GOLDEN_TEXT);
}

#[test]
fn access_rules() {
    let mut c = canister_with_model(IC_LIMIT);
    let (alice, bob) = (user(1), user(2));

    // Only controllers upload or change settings.
    let (r,): (ApiResult<UploadStatus>,) = c
        .update(
            controller(),
            "upload_begin",
            (UploadBegin {
                size: 10,
                sha256: vec![0; 32],
                parts: None,
            },),
        )
        .unwrap();
    r.unwrap();
    let err = c
        .update::<_, (ApiResult<UploadStatus>,)>(alice, "upload_chunk", (0u64, serde_bytes::ByteBuf::from(vec![1u8])))
        .expect_err("inspect_message drops a non-controller's chunk");
    assert!(err.to_string().contains("rejected"), "{err}");
    let (r,): (ApiResult<UploadStatus>,) = c.query(alice, "upload_status", ()).unwrap();
    assert!(matches!(r, Err(ApiError::NotAuthorized(_))));

    // Anonymous callers are refused by default.
    assert!(c.start_job(Principal::anonymous(), greedy("Hi", 3)).is_err());

    // A job belongs to its owner.
    let id = start(&mut c, alice, greedy(GOLDEN_PROMPT, 5));
    assert!(matches!(c.poll(bob, id, 0).unwrap(), Err(ApiError::NotFound(_))));
    // A stranger's step or cancel is dropped by inspect_message.
    assert!(c.step(bob, id).is_err());
    assert!(c.update::<_, (ApiResult<JobStatus>,)>(bob, "cancel", (id,)).is_err());
    let (bobs,): (Vec<JobSummary>,) = c.query(bob, "list_jobs", ()).unwrap();
    assert!(bobs.is_empty());
    let (alices,): (Vec<JobSummary>,) = c.query(alice, "list_jobs", ()).unwrap();
    assert_eq!(alices.len(), 1);
    let (r,): (ApiResult<Vec<JobSummary>>,) = c.query(alice, "admin_list_jobs", ()).unwrap();
    assert!(matches!(r, Err(ApiError::NotAuthorized(_))));
    assert!(c.poll(alice, id, 0).unwrap().is_ok());
    let (r,): (ApiResult<JobStatus>,) = c.update(alice, "cancel", (id,)).unwrap();
    assert_eq!(r.unwrap(), JobStatus::Cancelled);

    // Allowlist policy.
    let policy = AccessPolicy {
        mode: AccessMode::Allowlist(vec![alice]),
        allow_anonymous: false,
    };
    let (r,): (ApiResult<()>,) = c.update(controller(), "set_policy", (policy,)).unwrap();
    r.unwrap();
    assert!(
        c.start_job(bob, greedy("Hi", 3)).is_err(),
        "bob is not on the allowlist"
    );
    start(&mut c, alice, greedy("Hi", 3));

    // Quotas: per caller.
    let limits = Limits {
        max_active_jobs_per_caller: 1,
        ..Limits::default()
    };
    let (r,): (ApiResult<()>,) = c.update(controller(), "set_limits", (limits,)).unwrap();
    r.unwrap();
    match c.start_job(alice, greedy("Hi", 3)).unwrap() {
        Err(ApiError::QuotaExceeded(m)) => assert!(m.contains("unfinished jobs"), "{m}"),
        other => panic!("per-caller quota not enforced: {other:?}"),
    }
}

#[test]
fn bad_job_requests_get_clear_errors() {
    let mut c = canister_with_model(IC_LIMIT);
    let long_prompt = "Once upon a time there was a dog. ".repeat(40);
    match c.start_job(controller(), greedy(&long_prompt, 10)).unwrap() {
        Err(ApiError::InvalidArgument(m)) => assert!(m.contains("context"), "{m}"),
        other => panic!("{other:?}"),
    }
    let mut bad = greedy("Hi", 10);
    bad.temperature = Some(-1.0);
    assert!(matches!(
        c.start_job(controller(), bad).unwrap(),
        Err(ApiError::InvalidArgument(_))
    ));
    assert!(matches!(
        c.start_job(controller(), greedy("Hi", 0)).unwrap(),
        Err(ApiError::InvalidArgument(_))
    ));
    assert!(matches!(
        c.poll(controller(), 999, 0).unwrap(),
        Err(ApiError::NotFound(_))
    ));

    // No model: a fresh canister says so.
    let mut empty = LocalCanister::install(wasm(), InitArgs::default(), IC_LIMIT).unwrap();
    match empty.start_job(controller(), greedy("Hi", 3)).unwrap() {
        Err(ApiError::ModelNotReady(m)) => assert!(m.contains("no model"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn seedless_jobs_draw_their_seed_from_raw_rand() {
    let mut c = canister_with_model(IC_LIMIT);
    let req = JobRequest {
        prompt: "Once".into(),
        max_tokens: 20,
        temperature: Some(1.0),
        ..JobRequest::default()
    };
    let a = start(&mut c, controller(), req.clone());
    let b = start(&mut c, controller(), req);
    let ta = c.run_job(controller(), a, |_| {}).unwrap().tokens;
    let tb = c.run_job(controller(), b, |_| {}).unwrap().tokens;
    assert_ne!(ta, tb, "two raw_rand seeds gave the same sampled text");
}

#[test]
fn forty_concurrent_jobs_from_several_principals_all_finish() {
    let limit = 30_000_000;
    let mut c = canister_with_model(limit);
    let limits = Limits {
        max_active_jobs_per_caller: 10,
        ..Limits::default()
    };
    let (r,): (ApiResult<()>,) = c.update(controller(), "set_limits", (limits,)).unwrap();
    r.unwrap();
    let prompts = ["Joe loves writing stories", "Once upon a time", "The cat", "Lily"];
    let mut jobs = Vec::new();
    for i in 0..40u8 {
        let owner = user(1 + i % 4);
        let id = start(&mut c, owner, greedy(prompts[(i % 4) as usize], 12));
        jobs.push((owner, id, i % 4));
    }
    // Round-robin: after 40 scheduler messages every job has had one.
    for _ in 0..40 {
        c.round();
    }
    for &(owner, id, _) in &jobs {
        let v = final_view(&mut c, owner, id);
        assert!(v.messages >= 1, "job {id} got no message in the first 40 rounds");
    }
    let mut by_prompt: [Option<Vec<u32>>; 4] = Default::default();
    for &(owner, id, p) in &jobs {
        let v = c.run_job(owner, id, |_| {}).unwrap();
        assert_eq!(v.status, JobStatus::Done("max_tokens".into()));
        // Same prompt, greedy: same tokens, whatever the interleaving.
        let prev = by_prompt[p as usize].get_or_insert_with(|| v.tokens.clone());
        assert_eq!(*prev, v.tokens);
    }
    assert_eq!(by_prompt[0].as_deref().unwrap()[..10], GOLDEN_IDS);
    assert_no_message_over(&c, limit);
}

#[test]
fn max_context_lets_jobs_run_past_the_trained_context() {
    let init = InitArgs {
        max_context: Some(256),
        ..InitArgs::default()
    };
    let mut c = LocalCanister::install(wasm(), init, IC_LIMIT).unwrap();
    let model = model_bytes();
    c.upload_model(model, sha256(model)).unwrap();
    // 16 prompt tokens + 200 generated: past stories260K's trained 128.
    let mut req = greedy("", 200);
    req.ctx_size = Some(256);
    let id = start(&mut c, controller(), req);
    let v = c.run_job(controller(), id, |_| {}).unwrap();
    assert_eq!(v.status, JobStatus::Done("max_tokens".into()));
    assert_eq!(v.generated_tokens, 200);
    // From BOS alone, llama2.c's reference story (models/README.md).
    assert!(
        v.text
            .starts_with("Once upon a time, there was a little girl named Lily."),
        "{}",
        v.text
    );
    assert!(
        v.text.ends_with("Lily didn't want to help her mom, so she"),
        "{}",
        v.text
    );
    // Beyond the configured maximum: refused with the reason.
    let mut too_big = greedy("Hi", 10);
    too_big.ctx_size = Some(300);
    match c.start_job(controller(), too_big).unwrap() {
        Err(ApiError::InvalidArgument(m)) => assert!(m.contains("ctx_size"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_context_whose_kv_cache_would_not_fit_the_heap_is_refused_with_the_numbers() {
    let init = InitArgs {
        max_context: Some(4_000_000),
        ..InitArgs::default()
    };
    let mut c = LocalCanister::install(wasm(), init, IC_LIMIT).unwrap();
    let model = model_bytes();
    c.upload_model(model, sha256(model)).unwrap();
    // stories260K: 5 layers × 2 × 32 f32 per position; 4 M positions are 4.9 GiB.
    let mut req = greedy("Hi", 3);
    req.ctx_size = Some(4_000_000);
    match c.start_job(controller(), req).unwrap() {
        Err(ApiError::InvalidArgument(m)) => {
            assert!(m.contains("KV cache") && m.contains("positions fit"), "{m}")
        }
        other => panic!("{other:?}"),
    }
}

/// Uploads `bytes` into the spare slot and waits until the upload settles.
fn upload(c: &mut LocalCanister, bytes: &[u8]) -> UploadState {
    begin(c, bytes.len(), sha256(bytes)).unwrap();
    for (i, part) in bytes.chunks(UPLOAD_CHUNK_BYTES).enumerate() {
        chunk(c, controller(), (i * UPLOAD_CHUNK_BYTES) as u64, part).unwrap();
    }
    finalize_until_settled(c).state
}

#[test]
fn a_model_that_fits_only_alone_replaces_the_active_one_and_a_failed_one_brings_it_back() {
    use icllm_engine::format::gguf::writer::{parts_of, write};
    use icllm_engine::format::gguf::Value;
    let model = model_bytes();
    let mut probe = canister_with_model(IC_LIMIT);
    let (info,): (ModelInfo,) = probe.query(user(9), "model_info", ()).unwrap();
    let heap = info.heap_bytes;
    // Room for the weights, the largest tensor staged (tok_embd, 128 KiB)
    // and a job's KV cache, but not for two copies of the weights.
    let init = InitArgs {
        heap_budget: Some(heap + heap / 2 + (256 << 10)),
        ..InitArgs::default()
    };
    let mut c = LocalCanister::install(wasm(), init, IC_LIMIT).unwrap();
    c.upload_model(model, sha256(model)).unwrap();
    let waiting = start(&mut c, controller(), greedy(GOLDEN_PROMPT, 10));

    // The same model again: it cannot load beside the active one, so that one
    // makes way (its job fails with the reason) and the new one serves.
    assert_eq!(upload(&mut c, model), UploadState::Done);
    match final_view(&mut c, controller(), waiting).status {
        JobStatus::Failed(reason) => assert!(reason.contains("do not fit the heap together"), "{reason}"),
        s => panic!("{s:?}"),
    }
    let id = start(&mut c, controller(), greedy(GOLDEN_PROMPT, 10));
    assert_eq!(c.run_job(controller(), id, |_| {}).unwrap().text, GOLDEN_TEXT);

    // A model whose chat template does not compile fails only after its
    // tensors are loaded (the active one already gone): the active model
    // is loaded back from its slot.
    let (mut metadata, tensors) = parts_of(model).unwrap();
    metadata.retain(|(k, _)| k != "tokenizer.chat_template");
    metadata.push(("tokenizer.chat_template".into(), Value::String("{% if %}".into())));
    let broken = write(&metadata, &tensors);
    match upload(&mut c, &broken) {
        UploadState::Failed(reason) => assert!(reason.contains("chat template"), "{reason}"),
        s => panic!("{s:?}"),
    }
    assert_ne!(model_state(&mut c), "ready", "the active model made way for the upload");
    for _ in 0..1000 {
        if model_state(&mut c) == "ready" {
            break;
        }
        c.round();
    }
    assert_eq!(model_state(&mut c), "ready");
    let id = start(&mut c, controller(), greedy(GOLDEN_PROMPT, 10));
    assert_eq!(c.run_job(controller(), id, |_| {}).unwrap().text, GOLDEN_TEXT);
}

#[test]
fn a_model_that_fits_only_in_its_compact_layout_is_loaded_compact() {
    use icllm_engine::model::Model;
    use icllm_engine::synth::{self, QuantMix};
    // F16 kept as 16-bit floats; Q5_0 and IQ4_NL kept as the file's blocks
    // (their wasm kernels must give the byte layouts' ids).
    for mix in ["f16", "q5_0", "iq4_nl"] {
        let file = synth::quantize_gguf(model_bytes(), QuantMix::parse(mix).unwrap()).unwrap();
        let (widened, gguf) = Model::from_gguf_bytes(&file).unwrap();
        let (kept, _) = Model::from_gguf_bytes_with(&file, |l| match mix {
            "f16" => l.keep_16_bit_floats(),
            _ => l.keep_nibbles(),
        })
        .unwrap();
        let staged = gguf.tensors.iter().map(|t| t.size).max().unwrap();
        assert!(widened.heap_bytes() > kept.heap_bytes(), "{mix}");
        let ids = |init: InitArgs| {
            let mut c = LocalCanister::install(wasm(), init, IC_LIMIT).unwrap();
            c.upload_model(&file, sha256(&file)).unwrap();
            let (info,): (ModelInfo,) = c.query(user(9), "model_info", ()).unwrap();
            let id = start(&mut c, controller(), greedy(GOLDEN_PROMPT, 10));
            let v = c.run_job(controller(), id, |_| {}).unwrap();
            assert_eq!(v.status, JobStatus::Done("max_tokens".into()), "{mix}");
            (info.heap_bytes, v.tokens)
        };
        // Room for the compact model (and a job's KV cache), not the widened one.
        let tight = InitArgs {
            heap_budget: Some((kept.heap_bytes() + widened.heap_bytes()) / 2 + staged),
            ..InitArgs::default()
        };
        let (heap, compact_ids) = ids(tight);
        assert_eq!(heap, kept.heap_bytes(), "{mix}");
        let (heap, wide_ids) = ids(InitArgs::default());
        assert_eq!(heap, widened.heap_bytes(), "{mix}");
        assert_eq!(compact_ids, wide_ids, "{mix}");
        assert_eq!(compact_ids.len(), 10);
    }
}

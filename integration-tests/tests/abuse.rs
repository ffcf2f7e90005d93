//! Hostile and careless callers against the real canister wasm (issue 21):
//! every refusal is a clean `ApiError` (or an ingress rejection) that costs
//! at most [`MAX_REJECTED`] instructions whatever the argument, with ingress
//! (through `inspect_message`) and with canister callers (which skip it).
//! Each test prints `cost <what>: <instructions>`; README's "Reliability
//! and limits" quotes them (`cargo test --release -p integration-tests
//! --test abuse -- --nocapture`).

use candid::utils::{ArgumentDecoder, ArgumentEncoder};
use candid::{decode_args, encode_args, Principal};
use icllm::local_canister::{controller, sha256, user, LocalCanister, UPLOAD_CHUNK_BYTES};
use icllm_api::*;
use integration_tests::{canister_with_model, model_bytes, wasm};
use std::time::Duration;

/// No refused call may cost more, whatever its argument (≤ 2 MB).
const MAX_REJECTED: u64 = 50_000_000;
const IC_LIMIT: u64 = 40_000_000_000;
/// Greedy continuation of "Joe loves writing stories" by stories260K.
const GOLDEN_PROMPT: &str = "Joe loves writing stories";
const GOLDEN_IDS: [u32; 10] = [426, 346, 397, 355, 267, 337, 335, 345, 267, 422];

/// A canister (not installed here) that calls ours: `inspect_message` does
/// not run for it.
fn other_canister() -> Principal {
    local_ic::canister_id(77)
}

/// How a call went and what it cost: the instructions of every message it
/// caused (the inspect message of a rejected ingress call included).
struct Call {
    reply: Result<Vec<u8>, local_ic::Error>,
    instructions: u64,
}

impl Call {
    fn decode<R: for<'a> ArgumentDecoder<'a>>(&self) -> R {
        let bytes = self.reply.as_ref().expect("the call was answered");
        decode_args(bytes).expect("reply decodes")
    }

    fn rejected(&self) -> bool {
        self.reply.is_err()
    }
}

fn call_raw(c: &mut LocalCanister, caller: Principal, method: &str, arg: Vec<u8>, from_canister: bool) -> Call {
    let start = c.rt.reports().len();
    let reply = if from_canister {
        c.rt.update_from_canister(c.id, caller, method, arg)
    } else {
        c.rt.update(c.id, caller, method, arg)
    }
    .map(|r| r.bytes);
    let instructions = c.rt.reports()[start..].iter().map(|r| r.instructions).sum();
    Call { reply, instructions }
}

fn call<A: ArgumentEncoder>(
    c: &mut LocalCanister,
    caller: Principal,
    method: &str,
    args: A,
    from_canister: bool,
) -> Call {
    call_raw(c, caller, method, encode_args(args).unwrap(), from_canister)
}

/// A refusal that is an `ApiError` reply, under [`MAX_REJECTED`].
fn refused<T: candid::CandidType + for<'a> candid::Deserialize<'a>>(what: &str, call: &Call) -> ApiError {
    println!("cost {what}: {}", call.instructions);
    assert!(call.instructions <= MAX_REJECTED, "{what} cost {}", call.instructions);
    let (r,): (ApiResult<T>,) = call.decode();
    match r {
        Err(e) => e,
        Ok(_) => panic!("{what} was accepted"),
    }
}

/// An ingress call dropped by `inspect_message`, under [`MAX_REJECTED`].
fn dropped(what: &str, call: &Call) {
    println!("cost {what}: {}", call.instructions);
    assert!(call.rejected(), "{what} was not rejected");
    let err = call.reply.as_ref().unwrap_err();
    assert!(
        matches!(err.reason(), Some(local_ic::ExecError::MessageRejected)),
        "{what}: {err}"
    );
    assert!(call.instructions <= MAX_REJECTED, "{what} cost {}", call.instructions);
}

fn seeded(prompt: &str, max_tokens: u32) -> JobRequest {
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

fn cancel(c: &mut LocalCanister, caller: Principal, id: JobId) -> ApiResult<JobStatus> {
    let (r,): (ApiResult<JobStatus>,) = c.update(caller, "cancel", (id,)).expect("cancel call");
    r
}

fn set_limits(c: &mut LocalCanister, limits: Limits) -> ApiResult<()> {
    let (r,): (ApiResult<()>,) = c
        .update(controller(), "set_limits", (limits,))
        .expect("set_limits call");
    r
}

fn health(c: &mut LocalCanister) -> Health {
    let (h,): (Health,) = c.query(controller(), "health", ()).unwrap();
    h
}

fn list_jobs(c: &mut LocalCanister, caller: Principal) -> Vec<JobSummary> {
    let (l,): (Vec<JobSummary>,) = c.query(caller, "list_jobs", ()).unwrap();
    l
}

fn empty_messages(n: usize) -> JobRequest {
    let m = ChatMessage {
        role: String::new(),
        content: String::new(),
    };
    JobRequest {
        messages: Some(vec![m; n]),
        max_tokens: 1,
        seed: Some(1),
        ..JobRequest::default()
    }
}

/// Defect 1: a million empty chat messages (2 MB) and a hundred thousand
/// (200 KB) are refused at the size check, 80,000 (160 KB) by the
/// decoding quota, 257 by the count.
#[test]
fn d01_message_floods_are_refused_before_decoding_them() {
    let mut c = canister_with_model(IC_LIMIT);
    for (n, what) in [
        (1_000_000, "1 M messages"),
        (100_000, "100 K messages"),
        (80_000, "80 K messages"),
        (257, "257 messages"),
    ] {
        let req = empty_messages(n);
        dropped(
            &format!("start_job {what}, ingress"),
            &call(&mut c, user(1), "start_job", (req.clone(),), false),
        );
        let r = call(&mut c, other_canister(), "start_job", (req,), true);
        let e = refused::<JobId>(&format!("start_job {what}, canister caller"), &r);
        assert!(matches!(e, ApiError::InvalidArgument(_)), "{e:?}");
    }
    // A canister the policy does not allow is refused before decoding.
    let policy = AccessPolicy {
        mode: AccessMode::Allowlist(vec![user(1)]),
        allow_anonymous: false,
    };
    let (r,): (ApiResult<()>,) = c.update(controller(), "set_policy", (policy,)).unwrap();
    r.unwrap();
    let r = call(
        &mut c,
        other_canister(),
        "start_job",
        (empty_messages(1_000_000),),
        true,
    );
    let e = refused::<JobId>("start_job 1 M messages, canister not allowed", &r);
    assert!(matches!(e, ApiError::NotAuthorized(_)), "{e:?}");
}

/// Defect 2: finished records are capped per caller and in all, expire,
/// and can be deleted by their owner and by controllers.
#[test]
fn d02_job_records_are_capped_expire_and_can_be_deleted() {
    let mut c = canister_with_model(IC_LIMIT);
    set_limits(
        &mut c,
        Limits {
            max_finished_jobs_per_caller: 3,
            max_stored_jobs: Some(8),
            finished_job_ttl_seconds: Some(60),
            ..Limits::default()
        },
    )
    .unwrap();
    for n in 1..=4 {
        for _ in 0..5 {
            let id = start(&mut c, user(n), seeded("Hi", 1));
            cancel(&mut c, user(n), id).unwrap();
        }
        assert!(list_jobs(&mut c, user(n)).len() <= 3, "per-caller cap");
        assert!(health(&mut c).total_jobs <= 8, "global cap");
    }
    // The owner deletes a record; a stranger's delete is dropped; a
    // controller deletes anyone's.
    let alices = list_jobs(&mut c, user(4));
    let (r,): (ApiResult<()>,) = c.update(user(4), "delete_job", (alices[0].id,)).unwrap();
    r.unwrap();
    assert!(matches!(
        c.poll(user(4), alices[0].id, 0).unwrap(),
        Err(ApiError::NotFound(_))
    ));
    dropped(
        "delete_job of another caller's job, ingress",
        &call(&mut c, user(3), "delete_job", (alices[1].id,), false),
    );
    let r = call(&mut c, other_canister(), "delete_job", (alices[1].id,), true);
    let e = refused::<()>("delete_job of another caller's job, canister caller", &r);
    assert!(matches!(e, ApiError::NotFound(_)), "{e:?}");
    let (r,): (ApiResult<()>,) = c.update(controller(), "delete_job", (alices[1].id,)).unwrap();
    r.unwrap();
    // After the time-to-live, the next start_job deletes them.
    c.rt.advance_time(Duration::from_secs(61));
    start(&mut c, user(9), seeded("Hi", 1));
    assert_eq!(health(&mut c).total_jobs, 1, "only the new job is left");
}

/// Instructions of a `start_job` and of a `list_jobs` (one job listed) by
/// a fresh caller, with `stored` records of another caller in the table.
fn probe_costs(c: &mut LocalCanister, probe: Principal) -> (u64, u64) {
    let r = call(c, probe, "start_job", (seeded("Hi", 1),), false);
    let (id,): (ApiResult<JobId>,) = r.decode();
    cancel(c, probe, id.unwrap()).unwrap();
    let list = c.rt.query(c.id, probe, "list_jobs", encode_args(()).unwrap()).unwrap();
    (r.instructions, list.report.instructions)
}

fn fill(c: &mut LocalCanister, filler: Principal, n: usize) {
    for _ in 0..n {
        let id = start(c, filler, seeded("a", 1));
        cancel(c, filler, id).unwrap();
    }
}

fn costs_do_not_grow_with_stored_jobs(many: usize) {
    let mut c = canister_with_model(IC_LIMIT);
    set_limits(
        &mut c,
        Limits {
            max_finished_jobs_per_caller: 1_000_000,
            ..Limits::default()
        },
    )
    .unwrap();
    fill(&mut c, user(1), 10);
    let (start_few, list_few) = probe_costs(&mut c, user(100));
    fill(&mut c, user(1), many - 11);
    assert_eq!(health(&mut c).total_jobs as usize, many);
    let (start_many, list_many) = probe_costs(&mut c, user(101));
    println!("cost start_job with 10 / {many} records: {start_few} / {start_many}");
    println!("cost list_jobs with 10 / {many} records: {list_few} / {list_many}");
    // A deeper B-tree costs a little (a few more 64 KiB pages touched, 80 K
    // each under the page charges); a scan would cost ≥ 64 K per record,
    // 640 M for 10,000.
    assert!(start_many <= 2 * start_few, "{start_few} → {start_many}");
    assert!(list_many <= 2 * list_few, "{list_few} → {list_many}");
}

/// Defect 2: `start_job` and `list_jobs` do not read other callers'
/// records: the same cost with 10 and 10,000 of them (20,000 small calls,
/// ~25 s).
#[test]
fn d02_start_job_and_list_jobs_cost_the_same_with_10_or_10000_records() {
    costs_do_not_grow_with_stored_jobs(10_000);
}

/// Defect 3: twenty concurrent seedless `start_job` calls of one caller,
/// interleaved at their `raw_rand` await, get exactly the quota's 4 jobs.
#[test]
fn d03_the_per_caller_quota_holds_under_20_concurrent_calls() {
    let mut c = canister_with_model(IC_LIMIT);
    let req = JobRequest {
        seed: None,
        ..seeded("Once", 5)
    };
    let pending: Vec<_> = (0..20)
        .map(|_| {
            let arg = encode_args((req.clone(),)).unwrap();
            c.rt.submit_update(c.id, user(1), "start_job", arg)
                .expect("accepted by inspect_message")
        })
        .collect();
    let mut ok = 0;
    for p in pending {
        let reply = c.rt.await_update(p).expect("answered");
        let (r,): (ApiResult<JobId>,) = decode_args(&reply.bytes).unwrap();
        match r {
            Ok(_) => ok += 1,
            Err(ApiError::QuotaExceeded(m)) => assert!(m.contains("limit per caller"), "{m}"),
            Err(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(ok, Limits::default().max_active_jobs_per_caller);
    assert_eq!(health(&mut c).active_jobs, ok);
}

/// Defect 4: a prompt too long for the context is refused by its size,
/// before the tokenizer runs.
#[test]
fn d04_long_prompts_are_refused_before_tokenizing() {
    let mut c = canister_with_model(IC_LIMIT);
    let huge = seeded(&"Once upon a time. ".repeat(110_000), 5); // ~2 MB
    dropped(
        "start_job 2 MB prompt, ingress",
        &call(&mut c, user(1), "start_job", (huge.clone(),), false),
    );
    let e = refused::<JobId>(
        "start_job 2 MB prompt, canister caller",
        &call(&mut c, other_canister(), "start_job", (huge,), true),
    );
    assert!(matches!(e, ApiError::InvalidArgument(_)), "{e:?}");
    let long = seeded(&"Once upon a time. ".repeat(7_000), 5); // ~126 KB
    for (caller, from_canister) in [(user(1), false), (other_canister(), true)] {
        let r = call(&mut c, caller, "start_job", (long.clone(),), from_canister);
        match refused::<JobId>(
            &format!("start_job 126 KB prompt (canister caller: {from_canister})"),
            &r,
        ) {
            ApiError::InvalidArgument(m) => assert!(m.contains("at least"), "{m}"),
            e => panic!("{e:?}"),
        }
    }
}

/// Defect 5: the message limit must lie within the IC's.
#[test]
fn d05_message_limits_above_the_ics_are_refused() {
    let mut c = LocalCanister::install(wasm(), InitArgs::default(), IC_LIMIT).unwrap();
    for bad in [u64::MAX, IC_LIMIT + 1, 4_999_999] {
        let r = call(&mut c, controller(), "set_message_instruction_limit", (bad,), false);
        let e = refused::<()>("set_message_instruction_limit out of range", &r);
        assert!(matches!(e, ApiError::InvalidArgument(_)), "{e:?}");
    }
    let (r,): (ApiResult<()>,) = c
        .update(controller(), "set_message_instruction_limit", (IC_LIMIT,))
        .unwrap();
    r.unwrap();
    let init = InitArgs {
        message_instruction_limit: Some(u64::MAX),
        ..InitArgs::default()
    };
    assert!(
        LocalCanister::install(wasm(), init, IC_LIMIT).is_err(),
        "a bad init arg fails the install"
    );
}

/// Defect 6: queries are not accepted as updates, and a stranger's poll is
/// refused from the owner index without decoding the record.
#[test]
fn d06_queries_are_not_updates_and_strangers_are_refused_early() {
    let mut c = canister_with_model(IC_LIMIT);
    let id = start(&mut c, user(1), seeded(GOLDEN_PROMPT, 30));
    c.run_job(user(1), id, |_| {}).unwrap();
    for (method, caller) in [
        ("list_jobs", Principal::anonymous()),
        ("list_jobs", user(2)),
        ("health", user(2)),
    ] {
        dropped(
            &format!("{method} as an update"),
            &call(&mut c, caller, method, (), false),
        );
    }
    dropped(
        "poll as an update",
        &call(&mut c, user(2), "poll", (id, None::<u32>), false),
    );
    let arg = encode_args((id, None::<u32>)).unwrap();
    let owner =
        c.rt.query(c.id, user(1), "poll", arg.clone())
            .unwrap()
            .report
            .instructions;
    let stranger = c.rt.query(c.id, user(2), "poll", arg).unwrap();
    let (r,): (ApiResult<JobView>,) = decode_args(&stranger.bytes).unwrap();
    assert!(matches!(r, Err(ApiError::NotFound(_))), "{r:?}");
    let stranger = stranger.report.instructions;
    println!("cost poll by the owner / by a stranger: {owner} / {stranger}");
    // Mostly page charges (a query pays 80 K per 64 KiB page it reads); the
    // stranger's record is not decoded.
    assert!(stranger < owner && stranger < 1_500_000, "{stranger} vs {owner}");
}

/// Defects 7 and 13: with every slot taken, `start_job` is refused before
/// tokenizing or allocating, says why, and uses no job id.
#[test]
fn d07_a_refused_start_job_does_no_work_and_uses_no_id() {
    let mut c = canister_with_model(IC_LIMIT);
    set_limits(
        &mut c,
        Limits {
            max_active_jobs: 2,
            ..Limits::default()
        },
    )
    .unwrap();
    let a = start(&mut c, user(1), seeded("Hi", 5));
    let b = start(&mut c, user(2), seeded("Hi", 5));
    let heap = health(&mut c).heap_bytes;
    let long = seeded(&"Once upon a time. ".repeat(1_000), 5);
    for from_canister in [false, true] {
        let caller = if from_canister { other_canister() } else { user(3) };
        let r = call(&mut c, caller, "start_job", (long.clone(),), from_canister);
        match refused::<JobId>("start_job with every slot taken", &r) {
            ApiError::QuotaExceeded(m) => assert!(m.contains("all 2 job slots are taken"), "{m}"),
            e => panic!("{e:?}"),
        }
    }
    assert_eq!(health(&mut c).heap_bytes, heap, "no KV cache was allocated");
    cancel(&mut c, user(2), b).unwrap();
    let next = start(&mut c, user(3), seeded("Hi", 5));
    assert_eq!((a, b, next), (1, 2, 3), "refused calls used no id");
}

/// Defect 8: an upgrade while an upload is being verified does not make
/// the controller send the file again: verification resumes by itself.
#[test]
fn d08_an_upgrade_during_verification_resumes_it() {
    let limit = 6_000_000;
    let mut c = canister_with_model(limit);
    let model = model_bytes();
    let begin = UploadBegin {
        size: model.len() as u64,
        sha256: sha256(model).to_vec(),
        parts: None,
    };
    let (r,): (ApiResult<UploadStatus>,) = c.update(controller(), "upload_begin", (begin,)).unwrap();
    r.unwrap();
    for (i, chunk) in model.chunks(UPLOAD_CHUNK_BYTES).enumerate() {
        let arg = (
            (i * UPLOAD_CHUNK_BYTES) as u64,
            serde_bytes::ByteBuf::from(chunk.to_vec()),
        );
        let (r,): (ApiResult<UploadStatus>,) = c.update(controller(), "upload_chunk", arg).unwrap();
        r.unwrap();
    }
    let (r,): (ApiResult<UploadStatus>,) = c.update(controller(), "upload_finalize", ()).unwrap();
    assert_eq!(r.unwrap().state, UploadState::Verifying);
    c.upgrade().unwrap();
    let (r,): (ApiResult<UploadStatus>,) = c.query(controller(), "upload_status", ()).unwrap();
    assert_eq!(
        r.unwrap().state,
        UploadState::Verifying,
        "still verifying after the upgrade"
    );
    let done = c.finalize_upload().expect("finalize after the upgrade goes on");
    assert_eq!(done.state, UploadState::Done);
    let id = start(&mut c, user(1), seeded(GOLDEN_PROMPT, 10));
    assert_eq!(c.run_job(user(1), id, |_| {}).unwrap().tokens, GOLDEN_IDS);
}

/// Defect 9: declaring a 64 GiB upload allocates no stable memory; chunks
/// grow it as they arrive.
#[test]
fn d09_upload_begin_does_not_grow_stable_memory() {
    let mut c = LocalCanister::install(wasm(), InitArgs::default(), IC_LIMIT).unwrap();
    let before = health(&mut c).stable_bytes;
    let begin = UploadBegin {
        size: 64 << 30,
        sha256: vec![0; 32],
        parts: None,
    };
    let (r,): (ApiResult<UploadStatus>,) = c.update(controller(), "upload_begin", (begin,)).unwrap();
    r.unwrap();
    assert!(
        health(&mut c).stable_bytes <= before + (16 << 20),
        "upload_begin grew stable memory"
    );
    let chunk = (0u64, serde_bytes::ByteBuf::from(vec![7u8; 5_000]));
    let (r,): (ApiResult<UploadStatus>,) = c.update(controller(), "upload_chunk", chunk).unwrap();
    assert_eq!(r.unwrap().received_bytes, 5_000);
    let after = health(&mut c).stable_bytes;
    println!("stable bytes before / after a 64 GiB upload_begin and a 5 KB chunk: {before} / {after}");
    assert!(
        after <= before + (16 << 20),
        "a 5 KB chunk grew stable memory to {after}"
    );
}

/// Defect 10: a subnormal temperature samples greedily.
#[test]
fn d10_a_subnormal_temperature_is_greedy() {
    let mut c = canister_with_model(IC_LIMIT);
    let req = JobRequest {
        temperature: Some(1e-38),
        ..seeded(GOLDEN_PROMPT, 10)
    };
    let id = start(&mut c, user(1), req);
    assert_eq!(c.run_job(user(1), id, |_| {}).unwrap().tokens, GOLDEN_IDS);
}

/// Defect 11: a malformed argument gets an `ApiError`, not a trap.
#[test]
fn d11_malformed_arguments_get_an_api_error() {
    let mut c = canister_with_model(IC_LIMIT);
    let text = encode_args(("not a request",)).unwrap();
    for (method, arg) in [
        ("start_job", text.clone()),
        ("step", text.clone()),
        ("cancel", b"DIDL garbage".to_vec()),
    ] {
        let r = call_raw(&mut c, other_canister(), method, arg.clone(), true);
        let e = match method {
            "start_job" => refused::<JobId>(&format!("{method} malformed, canister caller"), &r),
            "step" => refused::<StepProgress>(&format!("{method} malformed, canister caller"), &r),
            _ => refused::<JobStatus>(&format!("{method} malformed, canister caller"), &r),
        };
        assert!(matches!(e, ApiError::InvalidArgument(_)), "{e:?}");
        dropped(
            &format!("{method} malformed, ingress"),
            &call_raw(&mut c, user(1), method, arg, false),
        );
    }
}

/// Defect 12: anonymous callers' jobs have random capability ids, are not
/// listed, and share a quota of their own.
#[test]
fn d12_anonymous_jobs_are_capabilities_with_their_own_quota() {
    let mut c = canister_with_model(IC_LIMIT);
    let policy = AccessPolicy {
        mode: AccessMode::Open,
        allow_anonymous: true,
    };
    let (r,): (ApiResult<()>,) = c.update(controller(), "set_policy", (policy,)).unwrap();
    r.unwrap();
    let anon = Principal::anonymous();
    let mine = start(&mut c, user(1), seeded("Hi", 3));
    let a = start(&mut c, anon, seeded("Hi", 3));
    let b = start(&mut c, anon, seeded("Hi", 3));
    assert!(a >= 1 << 63 && b >= 1 << 63 && a != b, "capability ids: {a:x} {b:x}");
    assert!(b.abs_diff(a) > 1_000_000, "not sequential");
    let r = call(&mut c, anon, "start_job", (seeded("Hi", 3),), false);
    match refused::<JobId>("anonymous start_job over the anonymous quota", &r) {
        ApiError::QuotaExceeded(m) => assert!(m.contains("anonymous"), "{m}"),
        e => panic!("{e:?}"),
    }
    assert!(list_jobs(&mut c, anon).is_empty(), "anonymous jobs are not listed");
    assert!(c.poll(anon, a, 0).unwrap().is_ok(), "the id is the capability");
    assert!(matches!(c.poll(anon, mine, 0).unwrap(), Err(ApiError::NotFound(_))));
    assert!(matches!(c.poll(anon, a ^ 1, 0).unwrap(), Err(ApiError::NotFound(_))));
    dropped(
        "anonymous cancel of a signed-in caller's job",
        &call(&mut c, anon, "cancel", (mine,), false),
    );
    let (r,): (ApiResult<()>,) = c.update(anon, "delete_job", (a,)).unwrap();
    r.unwrap();
    // The freed place admits another anonymous job; signed-in callers keep theirs.
    start(&mut c, anon, seeded("Hi", 3));
    start(&mut c, user(1), seeded("Hi", 3));
}

/// Defect 13: settings that would make the canister useless are refused
/// with the reason, and chunk errors show the real numbers.
#[test]
fn d13_clear_messages_for_bad_settings_and_chunks() {
    let mut c = canister_with_model(IC_LIMIT);
    for (field, limits) in [
        (
            "max_active_jobs",
            Limits {
                max_active_jobs: 0,
                ..Limits::default()
            },
        ),
        (
            "max_new_tokens",
            Limits {
                max_new_tokens: 0,
                ..Limits::default()
            },
        ),
        (
            "max_kv_bytes",
            Limits {
                max_kv_bytes: 0,
                ..Limits::default()
            },
        ),
    ] {
        match set_limits(&mut c, limits) {
            Err(ApiError::InvalidArgument(m)) => assert!(m.contains(field), "{m}"),
            other => panic!("{field}: {other:?}"),
        }
    }
    let begin = UploadBegin {
        size: 10,
        sha256: vec![0; 32],
        parts: None,
    };
    let (r,): (ApiResult<UploadStatus>,) = c.update(controller(), "upload_begin", (begin,)).unwrap();
    r.unwrap();
    let chunk = (u64::MAX - 1, serde_bytes::ByteBuf::from(vec![1u8; 3]));
    let (r,): (ApiResult<UploadStatus>,) = c.update(controller(), "upload_chunk", chunk).unwrap();
    match r {
        Err(ApiError::InvalidArgument(m)) => {
            assert!(m.contains("3 bytes at offset 18446744073709551614"), "{m}");
            assert!(!m.contains("18446744073709551615"), "{m}");
        }
        other => panic!("{other:?}"),
    }
    // Refused start_job calls use no ids.
    let first = start(&mut c, user(1), seeded("Hi", 1));
    for bad in [
        JobRequest {
            temperature: Some(-1.0),
            ..seeded("Hi", 1)
        },
        seeded("Hi", 0),
        seeded("Hi", 100_000),
    ] {
        assert!(matches!(
            c.start_job(user(1), bad).unwrap(),
            Err(ApiError::InvalidArgument(_))
        ));
    }
    assert_eq!(start(&mut c, user(1), seeded("Hi", 1)), first + 1);
}

/// The runtime rolls a trapped message's heap growth back, as the replica
/// does: a `start_job` that allocates a 20 MB KV cache (growing the heap)
/// and then traps at a small limit leaves `health.heap_bytes` as it was.
#[test]
fn a_trapped_message_leaves_the_heap_size_as_it_was() {
    let limit = 12_000_000;
    let init = InitArgs {
        message_instruction_limit: Some(limit),
        max_context: Some(16_384),
        ..InitArgs::default()
    };
    let mut c = LocalCanister::install(wasm(), init, limit).expect("install");
    let model = model_bytes();
    c.upload_model(model, sha256(model)).expect("upload");
    let req = JobRequest {
        ctx_size: Some(16_384),
        ..seeded(GOLDEN_PROMPT, 40)
    };
    let before = health(&mut c).heap_bytes;
    let err = c
        .start_job(user(1), req.clone())
        .expect_err("zeroing the KV cache passes the limit");
    assert!(err.to_string().contains("exceeded the limit"), "{err}");
    let after = health(&mut c).heap_bytes;
    assert_eq!(after, before, "the trapped growth is rolled back");
    // Under a larger limit the same call does grow the heap.
    let limits = c.rt.limits();
    c.rt.set_limits(local_ic::Limits {
        update: 1_000_000_000,
        ..limits
    });
    start(&mut c, user(1), req);
    let grown = health(&mut c).heap_bytes;
    println!("heap bytes before / after a trapped start_job / after one that returned: {before} / {after} / {grown}");
    assert!(grown >= before + (16 << 20), "the job's 20 MB KV cache is in the heap");
}

/// A canister low on cycles refuses new jobs with the reason while those
/// it runs finish; a top-up lets new jobs in again.
#[test]
fn low_cycles_refuse_new_jobs_and_the_running_ones_finish() {
    let mut c = canister_with_model(IC_LIMIT);
    let floor: u128 = 200_000_000_000;
    let limits = Limits {
        min_liquid_cycles: Some(floor),
        ..Limits::default()
    };
    let (r,): (ApiResult<()>,) = c.update(controller(), "set_limits", (limits,)).unwrap();
    r.unwrap();
    let running = c.start_job(user(1), greedy_golden()).unwrap().unwrap();
    // Drain to just under the floor above the freezing reserve.
    let balance = c.rt.cycle_balance(c.id).unwrap();
    let reserve = balance - c.rt.liquid_cycle_balance(c.id).unwrap();
    c.rt.set_cycle_balance(c.id, reserve + floor - 1).unwrap();
    let (health,): (Health,) = c.query(user(2), "health", ()).unwrap();
    assert!(health.liquid_cycle_balance < floor, "{health:?}");
    match c.start_job(user(2), greedy_golden()).unwrap() {
        Err(ApiError::QuotaExceeded(m)) => assert!(m.contains("low on cycles"), "{m}"),
        other => panic!("expected a refusal for low cycles, got {other:?}"),
    }
    let v = c.run_job(user(1), running, |_| {}).unwrap();
    assert_eq!(v.tokens, GOLDEN_IDS);
    c.rt.set_cycle_balance(c.id, balance).unwrap();
    let id = c
        .start_job(user(2), greedy_golden())
        .unwrap()
        .expect("accepted after the top-up");
    assert_eq!(c.run_job(user(2), id, |_| {}).unwrap().tokens, GOLDEN_IDS);
}

fn greedy_golden() -> JobRequest {
    JobRequest {
        prompt: GOLDEN_PROMPT.into(),
        max_tokens: 10,
        temperature: Some(0.0),
        seed: Some(1),
        ..JobRequest::default()
    }
}

//! `generate_query`: a whole generation inside one query, equal to the job
//! path's output for the same request and seed, refused with the numbers
//! when it does not fit, and leaving no trace.

use icllm::local_canister::{sha256, user, LocalCanister};
use icllm_api::*;
use integration_tests::{canister_with_model, memory_charges_for, model_bytes, wasm};

/// From models/README.md: llama.cpp's greedy continuation of "Joe loves writing stories".
const GOLDEN_PROMPT: &str = "Joe loves writing stories";
const GOLDEN_IDS: [u32; 10] = [426, 346, 397, 355, 267, 337, 335, 345, 267, 422];

fn request(temperature: f32, seed: u64, n: u32) -> JobRequest {
    JobRequest {
        prompt: GOLDEN_PROMPT.into(),
        max_tokens: n,
        temperature: Some(temperature),
        seed: Some(seed),
        ..JobRequest::default()
    }
}

fn in_query(c: &mut LocalCanister, req: JobRequest) -> ApiResult<QueryGeneration> {
    let (r,): (ApiResult<QueryGeneration>,) = c.query(user(1), "generate_query", (req,)).expect("the query runs");
    r
}

fn as_job(c: &mut LocalCanister, req: JobRequest) -> (Vec<u32>, JobView) {
    let id = c.start_job(user(2), req).expect("start_job runs").expect("accepted");
    let mut tokens = Vec::new();
    let view = c
        .run_job(user(2), id, |v| tokens.extend_from_slice(&v.tokens))
        .expect("the job ends");
    (tokens, view)
}

#[test]
fn a_query_generation_equals_the_jobs_for_the_same_request_and_seed() {
    let mut c = canister_with_model(40_000_000_000);
    let jobs_before = c.query::<_, (Health,)>(user(1), "health", ()).unwrap().0.total_jobs;
    for (temperature, seed) in [(0.0, 42), (0.9, 7)] {
        let q = in_query(&mut c, request(temperature, seed, 32)).expect("fits one query");
        let (tokens, view) = as_job(&mut c, request(temperature, seed, 32));
        assert_eq!(q.tokens, tokens, "temperature {temperature}");
        let mut text = String::new();
        let id = view.id;
        let (r,): (ApiResult<JobView>,) = c.query(user(2), "poll", (id, Some(0u32))).unwrap();
        text.push_str(&r.unwrap().text);
        assert_eq!(q.text, text);
        assert_eq!(q.finish_reason, "max_tokens");
        assert!(q.instructions > 0 && q.instructions < 5_000_000_000);
        if temperature == 0.0 {
            assert_eq!(q.tokens[..10], GOLDEN_IDS);
        }
    }
    // Only the two jobs were recorded: the queries left nothing.
    let jobs_after = c.query::<_, (Health,)>(user(1), "health", ()).unwrap().0.total_jobs;
    assert_eq!(jobs_after, jobs_before + 2);
}

#[test]
fn a_generation_that_does_not_fit_is_refused_with_the_numbers() {
    // A canister kept to 30 M instructions a message: its queries too.
    let limit = 30_000_000;
    let init = InitArgs {
        message_instruction_limit: Some(limit),
        ..InitArgs::default()
    };
    let mut c = LocalCanister::install_with(wasm(), init, limit, false, memory_charges_for(limit)).expect("install");
    c.upload_model(model_bytes(), sha256(model_bytes())).expect("upload");
    let refused = in_query(&mut c, request(0.0, 1, 200));
    let Err(ApiError::QuotaExceeded(message)) = refused else {
        panic!("refused as a quota, not trapped: {refused:?}")
    };
    assert!(
        message.contains("of the 30000000 instructions") && message.contains("start a job instead"),
        "{message}"
    );
    // A short one fits the same canister.
    let q = in_query(&mut c, request(0.0, 1, 2)).expect("two tokens fit");
    assert_eq!(q.tokens, GOLDEN_IDS[..2]);
    // Jobs only: continuations and callbacks are refused.
    let mut req = request(0.0, 1, 2);
    req.continue_from = Some(1);
    assert!(matches!(in_query(&mut c, req), Err(ApiError::InvalidArgument(_))));
}

//! The OpenAI-shaped candid API (`completions`, `chat_completions`,
//! `get_completion`) of the canister wasm in the local runtime.

use candid::Principal;
use icllm::local_canister::{controller, find_or_build_wasm, sha256, user, LocalCanister};
use icllm_api::*;

const IC_LIMIT: u64 = 40_000_000_000;
/// From models/README.md: greedy continuation of "Joe loves writing stories".
const GOLDEN_PROMPT: &str = "Joe loves writing stories";
const GOLDEN_TEXT: &str = ". He liked to play with his toy";

fn canister() -> LocalCanister {
    let wasm = find_or_build_wasm(None).expect("canister wasm");
    let mut c = LocalCanister::install(wasm, InitArgs::default(), IC_LIMIT).expect("install");
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/stories260Ktok512.gguf");
    let model = std::fs::read(path).expect("models/stories260Ktok512.gguf is shipped");
    c.upload_model(&model, sha256(&model)).expect("upload");
    c
}

fn complete(c: &mut LocalCanister, caller: Principal, req: CompletionRequest) -> ApiResult<Completion> {
    let (r,): (ApiResult<Completion>,) = c.update(caller, "completions", (req,)).expect("completions call");
    r
}

fn chat(c: &mut LocalCanister, caller: Principal, req: ChatCompletionRequest) -> ApiResult<Completion> {
    let (r,): (ApiResult<Completion>,) = c.update(caller, "chat_completions", (req,)).expect("chat call");
    r
}

fn get(c: &mut LocalCanister, caller: Principal, id: JobId) -> ApiResult<Completion> {
    let (r,): (ApiResult<Completion>,) = c.query(caller, "get_completion", (id,)).expect("get_completion call");
    r
}

/// Runs rounds until the completion has a finish reason.
fn finish(c: &mut LocalCanister, caller: Principal, id: JobId) -> Completion {
    for _ in 0..100_000 {
        let done = get(c, caller, id).expect("get_completion");
        if done.choices[0].finish_reason.is_some() {
            return done;
        }
        c.round();
    }
    panic!("completion {id} did not finish");
}

fn greedy(prompt: &str, max_tokens: u32) -> CompletionRequest {
    CompletionRequest {
        prompt: prompt.into(),
        max_tokens: Some(max_tokens),
        temperature: Some(0.0),
        ..CompletionRequest::default()
    }
}

#[test]
fn a_text_completion_gives_the_golden_text_and_openais_object() {
    let mut c = canister();
    let started = complete(&mut c, controller(), greedy(GOLDEN_PROMPT, 10)).unwrap();
    assert_eq!(started.object, "text_completion");
    assert_eq!(started.choices[0].finish_reason, None);
    let done = finish(&mut c, controller(), started.job_id);
    assert_eq!(done.id, format!("cmpl-{}", started.job_id));
    assert_eq!(done.model, "llama", "stories260K's general.name");
    assert_eq!(done.choices[0].text.as_deref(), Some(GOLDEN_TEXT));
    assert_eq!(done.choices[0].finish_reason.as_deref(), Some("length"));
    assert_eq!(
        done.usage,
        CompletionUsage {
            prompt_tokens: 16,
            completion_tokens: 10,
            total_tokens: 26,
            prompt_tokens_details: Some(PromptTokensDetails { cached_tokens: 0 }),
        }
    );
    assert!(done.created > 1_700_000_000);
}

#[test]
fn a_stop_string_ends_the_text_before_it() {
    let mut c = canister();
    let req = CompletionRequest {
        stop: Some(vec![" play".into(), "zzz".into()]),
        ..greedy(GOLDEN_PROMPT, 10)
    };
    let id = complete(&mut c, controller(), req).unwrap().job_id;
    let done = finish(&mut c, controller(), id);
    assert_eq!(done.choices[0].text.as_deref(), Some(". He liked to"));
    assert_eq!(done.choices[0].finish_reason.as_deref(), Some("stop"));
    assert_eq!(done.status, JobStatus::Done("stop".into()));
    // ". He liked to play": the tokens up to " play" count, not the rest of the step's.
    assert!((5..10).contains(&done.usage.completion_tokens), "{:?}", done.usage);
}

#[test]
fn the_same_seed_gives_the_same_sampled_text_and_penalties_change_it() {
    let mut c = canister();
    let req = CompletionRequest {
        prompt: "Once upon a time".into(),
        max_tokens: Some(30),
        temperature: Some(1.0),
        seed: Some(42),
        ..CompletionRequest::default()
    };
    let mut texts = Vec::new();
    for r in [
        req.clone(),
        req.clone(),
        CompletionRequest {
            frequency_penalty: Some(2.0),
            presence_penalty: Some(2.0),
            ..req.clone()
        },
    ] {
        let id = complete(&mut c, controller(), r).unwrap().job_id;
        texts.push(finish(&mut c, controller(), id).choices[0].text.clone().unwrap());
    }
    assert_eq!(texts[0], texts[1]);
    assert_ne!(texts[0], texts[2]);
}

#[test]
fn chat_without_a_template_and_bad_requests_get_error_variants() {
    let mut c = canister();
    let msg = |role: &str| ChatMessage {
        role: role.into(),
        content: "Hi".into(),
    };
    // stories260K has no chat template.
    match chat(
        &mut c,
        controller(),
        ChatCompletionRequest {
            messages: vec![msg("user")],
            ..Default::default()
        },
    ) {
        Err(ApiError::InvalidArgument(m)) => assert!(m.contains("chat template"), "{m}"),
        other => panic!("{other:?}"),
    }
    match chat(
        &mut c,
        controller(),
        ChatCompletionRequest {
            messages: vec![msg("tool")],
            ..Default::default()
        },
    ) {
        Err(ApiError::InvalidArgument(m)) => assert!(m.contains("tool"), "{m}"),
        other => panic!("{other:?}"),
    }
    let long = "Once upon a time there was a dog. ".repeat(40);
    let refused = [
        (greedy(&long, 10), "context"),
        (greedy("Hi", 5000), "max_tokens"),
        (
            CompletionRequest {
                n: Some(3),
                ..greedy("Hi", 4)
            },
            "one choice",
        ),
    ];
    for (req, why) in refused {
        match complete(&mut c, controller(), req) {
            Err(ApiError::InvalidArgument(m)) => assert!(m.contains(why), "{why}: {m}"),
            other => panic!("{why}: {other:?}"),
        }
    }
    // Past the bounds: dropped by inspect_message before the endpoint runs.
    let five_stops = CompletionRequest {
        stop: Some(vec!["a".into(); 5]),
        ..greedy("Hi", 4)
    };
    let r: Result<(ApiResult<Completion>,), _> = c.update(controller(), "completions", (five_stops,));
    assert!(r.is_err(), "{r:?}");
    assert!(matches!(
        complete(
            &mut c,
            controller(),
            CompletionRequest {
                model: Some("gpt-4o".into()),
                ..greedy("Hi", 4)
            }
        ),
        Err(ApiError::NotFound(_))
    ));
    // Nothing refused left a job behind.
    let (h,): (Health,) = c.query(controller(), "health", ()).unwrap();
    assert_eq!((h.active_jobs, h.total_jobs), (0, 0));
}

#[test]
fn another_callers_completion_is_not_found_and_cancelling_is_reported() {
    let mut c = canister();
    let id = complete(&mut c, user(1), greedy("Hi", 50)).unwrap().job_id;
    assert!(matches!(get(&mut c, user(2), id), Err(ApiError::NotFound(_))));
    let (r,): (ApiResult<JobStatus>,) = c.update(user(1), "cancel", (id,)).unwrap();
    assert_eq!(r.unwrap(), JobStatus::Cancelled);
    let done = get(&mut c, user(1), id).unwrap();
    assert_eq!(done.choices[0].finish_reason.as_deref(), Some("cancelled"));
}

/// Logprobs are kept with the job's tokens: a job upgraded in the middle
/// shows the same ones as a job that was not, `poll` carries them beside
/// its tokens, and greedy's chosen token is its own top alternative.
#[test]
fn logprobs_survive_an_upgrade_and_poll_carries_them() {
    let mut c = canister();
    c.set_message_limit(10_000_000).expect("limit");
    let req = CompletionRequest {
        logprobs: Some(5),
        ..greedy(GOLDEN_PROMPT, 10)
    };
    let plain = complete(&mut c, controller(), req.clone()).unwrap();
    let plain = finish(&mut c, controller(), plain.job_id);
    let upgraded = complete(&mut c, controller(), req).unwrap();
    let id = upgraded.job_id;
    while c.poll(controller(), id, 0).unwrap().unwrap().generated_tokens < 4 {
        c.round();
    }
    assert!(
        c.poll(controller(), id, 0).unwrap().unwrap().status.is_active(),
        "upgraded mid-job"
    );
    c.upgrade().expect("upgrade");
    let upgraded = finish(&mut c, controller(), id);
    assert_eq!(upgraded.choices[0].text.as_deref(), Some(GOLDEN_TEXT));
    let (a, b) = (plain.choices[0].logprobs.clone(), upgraded.choices[0].logprobs.clone());
    let a = a.expect("logprobs");
    assert_eq!(Some(a.clone()), b);
    assert_eq!(a.tokens.as_ref().map(Vec::len), Some(10));
    let view = c.poll(controller(), id, 7).unwrap().unwrap();
    let rows = view.logprobs.expect("poll carries logprobs");
    assert_eq!(rows.len(), view.tokens.len());
    for (k, row) in rows.iter().enumerate() {
        assert_eq!(Some(row.logprob), a.token_logprobs.as_ref().map(|l| l[7 + k]));
        assert_eq!(row.top_logprobs[0].logprob, row.logprob, "greedy picks the most likely");
        assert_eq!(row.top_logprobs.len(), 5);
    }
    let none = complete(&mut c, controller(), greedy(GOLDEN_PROMPT, 3)).unwrap();
    assert!(finish(&mut c, controller(), none.job_id).choices[0].logprobs.is_none());
}

/// A model whose chat template makes data on a path minijinja does not
/// charge fuel for: the render stops at the engine's heap cap, the call
/// traps with that reason and is rolled back (no job, nothing held), and
/// the canister serves the next request.
#[test]
fn a_chat_template_that_holds_too_much_heap_traps_its_call_and_loses_nothing() {
    use icllm_engine::chat::RENDER_HEAP_CAP_IN_CANISTER;
    use icllm_engine::format::gguf::writer::{parts_of, write};
    use icllm_engine::format::gguf::Value;
    let wasm = find_or_build_wasm(None).expect("canister wasm");
    let mut c = LocalCanister::install(wasm, InitArgs::default(), IC_LIMIT).expect("install");
    let (mut metadata, tensors) = parts_of(integration_tests::model_bytes()).unwrap();
    metadata.retain(|(k, _)| k != "tokenizer.chat_template");
    let bomb = "{% set ns = namespace(s=[1]) %}{% for i in range(100) %}{% set ns.s = [ns.s, ns.s] %}{% endfor %}{{ ns.s|tojson }}";
    metadata.push(("tokenizer.chat_template".into(), Value::String(bomb.into())));
    let model = write(&metadata, &tensors);
    c.upload_model(&model, sha256(&model)).expect("upload");

    let request = ChatCompletionRequest {
        messages: vec![ChatMessage {
            role: "user".into(),
            content: "Hi".into(),
        }],
        ..Default::default()
    };
    let r: Result<(ApiResult<Completion>,), _> = c.update(user(1), "chat_completions", (request,));
    let reject = format!("{:?}", r.expect_err("the call traps"));
    let reason = format!(
        "the chat template tried to hold more than {} MiB",
        RENDER_HEAP_CAP_IN_CANISTER >> 20
    );
    assert!(reject.contains(&reason), "{reject}");

    let (h,): (Health,) = c.query(controller(), "health", ()).unwrap();
    assert_eq!((h.active_jobs, h.total_jobs), (0, 0));
    let id = complete(&mut c, user(1), greedy(GOLDEN_PROMPT, 10)).unwrap().job_id;
    assert_eq!(
        finish(&mut c, user(1), id).choices[0].text.as_deref(),
        Some(GOLDEN_TEXT)
    );
}

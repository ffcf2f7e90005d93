//! Conversations that keep their KV cache: a chat request that continues a
//! finished job of the caller (`continue_from`) takes over that job's KV
//! slot and prefills only its new tokens; without `continue_from`, a request
//! that goes on with one of the caller's kept conversations does the same.
//! Every warm turn is compared with a fresh caller's cold run of the same
//! full prompt.

use candid::{decode_one, encode_one, Principal};
use icllm::local_canister::{controller, sha256, user, LocalCanister};
use icllm_api::*;
use icllm_engine::chat::{encode_chat, ChatTemplate, Message};
use icllm_engine::format::gguf::writer::{parts_of, write};
use icllm_engine::format::gguf::{Gguf, Value};
use icllm_engine::tokenizer::Tokenizer;
use integration_tests::{model_bytes, wasm};

const IC_LIMIT: u64 = 40_000_000_000;
/// The conversation is its messages' text, one after the other.
const TEMPLATE: &str = "{% for m in messages %}{{ m.content }}{% endfor %}";
const MAX_TOKENS: u32 = 12;
const USER_TURNS: [&str; 4] = [
    "Joe loves writing stories",
    " Then Joe went to the park with his dog.",
    " The sun was warm and the birds sang.",
    " At night, Joe wrote a story about the dog.",
];

/// stories260K with [`TEMPLATE`] as its chat template.
fn chat_model() -> Vec<u8> {
    let (mut metadata, tensors) = parts_of(model_bytes()).unwrap();
    metadata.retain(|(k, _)| k != "tokenizer.chat_template");
    metadata.push(("tokenizer.chat_template".into(), Value::String(TEMPLATE.into())));
    write(&metadata, &tensors)
}

fn canister() -> LocalCanister {
    let mut c = LocalCanister::install(wasm(), InitArgs::default(), IC_LIMIT).expect("install");
    let model = chat_model();
    c.upload_model(&model, sha256(&model)).expect("upload");
    c
}

/// The prompt tokens the canister makes of `messages` (the same template
/// and tokenizer, natively).
fn prompt_ids(messages: &[ChatMessage]) -> Vec<u32> {
    let bytes = chat_model();
    let gguf = Gguf::parse(&bytes).unwrap();
    let tok = Tokenizer::from_gguf(&gguf).unwrap();
    let template: ChatTemplate = ChatTemplate::from_gguf(&gguf).unwrap().expect("a template");
    let messages: Vec<Message> = messages.iter().map(|m| Message::new(&m.role, &m.content)).collect();
    encode_chat(&tok, &template, &messages).unwrap().0
}

fn msg(role: &str, content: &str) -> ChatMessage {
    ChatMessage {
        role: role.into(),
        content: content.into(),
    }
}

/// `history` followed by the assistant's `reply` and the user's next message.
fn reply_and_ask(history: &[ChatMessage], reply: &str, next: &str) -> Vec<ChatMessage> {
    let mut messages = history.to_vec();
    messages.push(msg("assistant", reply));
    messages.push(msg("user", next));
    messages
}

/// One finished chat turn.
#[derive(Debug)]
struct Turn {
    id: JobId,
    view: JobView,
    usage: CompletionUsage,
    /// Instructions of the `chat_completions` call (parse, tokenize, claim,
    /// and for a warm turn the KV rows read from its slot).
    start_instructions: u64,
}

fn request(messages: &[ChatMessage], continue_from: Option<JobId>) -> ChatCompletionRequest {
    ChatCompletionRequest {
        messages: messages.to_vec(),
        max_tokens: Some(MAX_TOKENS),
        temperature: Some(0.0),
        seed: Some(7),
        continue_from,
        ..Default::default()
    }
}

fn start_chat(c: &mut LocalCanister, caller: Principal, req: ChatCompletionRequest) -> ApiResult<(JobId, u64)> {
    let reply =
        c.rt.update(c.id, caller, "chat_completions", encode_one(req).unwrap())
            .expect("chat_completions call");
    let r: ApiResult<Completion> = decode_one(&reply.bytes).unwrap();
    r.map(|done| (done.job_id, reply.report.instructions))
}

fn turn(c: &mut LocalCanister, caller: Principal, messages: &[ChatMessage], from: Option<JobId>) -> ApiResult<Turn> {
    let (id, start_instructions) = start_chat(c, caller, request(messages, from))?;
    let view = c.run_job(caller, id, |_| {}).expect("the job finishes");
    let (r,): (ApiResult<Completion>,) = c.query(caller, "get_completion", (id,)).unwrap();
    let usage = r.unwrap().usage;
    assert_eq!(
        usage.prompt_tokens_details.as_ref().unwrap().cached_tokens,
        view.cached_prompt_tokens.unwrap()
    );
    Ok(Turn {
        id,
        view,
        usage,
        start_instructions,
    })
}

/// Positions whose KV rows a finished turn left complete: its prompt and
/// reply, but a last token that was sampled and never fed back (`length`).
fn complete_positions(t: &Turn) -> usize {
    let fed_last = !matches!(&t.view.status, JobStatus::Done(r) if r == "max_tokens");
    t.view.prompt_tokens as usize + t.view.generated_tokens as usize - usize::from(!fed_last)
}

/// The tokens a turn's KV rows hold, as the next prompt's tokens see them.
fn cached_expected(prev_prompt: &[u32], prev: &Turn, next_prompt: &[u32]) -> u32 {
    let held: Vec<u32> = prev_prompt.iter().chain(&prev.view.tokens).copied().collect();
    let held = &held[..complete_positions(prev)];
    let lcp = held.iter().zip(next_prompt).take_while(|(a, b)| a == b).count();
    lcp.min(next_prompt.len() - 1) as u32
}

fn health(c: &mut LocalCanister) -> Health {
    let (h,): (Health,) = c.query(controller(), "health", ()).unwrap();
    h
}

fn wait_ready(c: &mut LocalCanister) {
    for _ in 0..10_000 {
        if health(c).model_state == "ready" {
            return;
        }
        c.round();
    }
    panic!("the model did not load");
}

#[test]
fn a_four_turn_chat_prefills_only_its_new_tokens_across_an_upgrade() {
    let mut c = canister();
    let me = user(1);
    let mut messages = Vec::new();
    let mut prev: Option<(Vec<u32>, Turn)> = None;
    for (n, text) in USER_TURNS.iter().enumerate() {
        let n = n + 1;
        if n == 3 {
            c.upgrade().expect("upgrade");
            wait_ready(&mut c);
        }
        messages.push(msg("user", text));
        let ids = prompt_ids(&messages);
        let warm = turn(&mut c, me, &messages, prev.as_ref().map(|(_, t)| t.id)).unwrap();
        let cold = turn(&mut c, user(100 + n as u8), &messages, None).unwrap();
        assert_eq!(warm.view.prompt_tokens as usize, ids.len(), "turn {n}");
        assert_eq!(
            warm.view.tokens, cold.view.tokens,
            "turn {n}: the same reply, warm or cold"
        );
        assert_eq!(warm.view.text, cold.view.text);
        assert_eq!(cold.view.cached_prompt_tokens.unwrap(), 0);
        let expected = prev.as_ref().map_or(0, |(p, t)| cached_expected(p, t, &ids));
        assert_eq!(warm.view.cached_prompt_tokens.unwrap(), expected, "turn {n}");
        assert_eq!(
            warm.usage.prompt_tokens_details.as_ref().unwrap().cached_tokens,
            expected
        );
        let new_tokens = ids.len() as u32 - warm.view.cached_prompt_tokens.unwrap();
        println!(
            "cost turn {n}: new tokens {new_tokens} of {}, warm prefill instructions {}, cold {} \
             (start call: warm {}, cold {})",
            ids.len(),
            warm.view.prompt_instructions,
            cold.view.prompt_instructions,
            warm.start_instructions,
            cold.start_instructions
        );
        if n > 1 {
            assert!(
                expected as usize > ids.len() / 2,
                "turn {n}: most of the conversation is cached"
            );
            assert!(
                warm.view.prompt_instructions * 2 < cold.view.prompt_instructions,
                "turn {n}: warm prefill {} vs cold {}",
                warm.view.prompt_instructions,
                cold.view.prompt_instructions
            );
        }
        messages.push(msg("assistant", &warm.view.text));
        prev = Some((ids, warm));
    }
}

#[test]
fn a_stateless_client_resending_the_history_gets_its_rows_without_asking() {
    let mut c = canister();
    let (me, other) = (user(1), user(2));
    let first = vec![msg("user", USER_TURNS[0])];
    let t1 = turn(&mut c, me, &first, None).unwrap();
    let next = reply_and_ask(&first, &t1.view.text, USER_TURNS[1]);
    // Another caller sending the same history matches nothing of `me`'s.
    let stranger = turn(&mut c, other, &next, None).unwrap();
    assert_eq!(stranger.view.cached_prompt_tokens.unwrap(), 0);
    // `me` resends the whole conversation with no `continue_from`: the
    // canister finds the kept rows of `t1` and prefills only the rest.
    let warm = turn(&mut c, me, &next, None).unwrap();
    let expected = cached_expected(&prompt_ids(&first), &t1, &prompt_ids(&next));
    assert!(expected > 0);
    assert_eq!(warm.view.cached_prompt_tokens.unwrap(), expected);
    assert_eq!(warm.view.tokens, stranger.view.tokens, "the same reply, warm or cold");
    assert!(warm.view.prompt_instructions * 2 < stranger.view.prompt_instructions);
    // A new conversation that shares less than half of a kept one's rows
    // leaves it alone, and its own continuation still finds them.
    let unrelated = vec![msg("user", " The sun was warm.")];
    let u = turn(&mut c, me, &unrelated, None).unwrap();
    assert_eq!(u.view.cached_prompt_tokens.unwrap(), 0);
    let more = reply_and_ask(&next, &warm.view.text, USER_TURNS[2]);
    let third = turn(&mut c, me, &more, None).unwrap();
    assert_eq!(
        third.view.cached_prompt_tokens.unwrap(),
        cached_expected(&prompt_ids(&next), &warm, &prompt_ids(&more))
    );
}

#[test]
fn a_slot_is_handed_over_once() {
    let mut c = canister();
    let me = user(1);
    let first = vec![msg("user", USER_TURNS[0])];
    let t1 = turn(&mut c, me, &first, None).unwrap();
    let next = reply_and_ask(&first, &t1.view.text, USER_TURNS[1]);
    let a = turn(&mut c, me, &next, Some(t1.id)).unwrap();
    assert!(a.view.cached_prompt_tokens.unwrap() > 0);
    // The slot went to `a`: a second continuation of t1 starts cold, and
    // still gives the same reply.
    let b = turn(&mut c, me, &next, Some(t1.id)).unwrap();
    assert_eq!(b.view.cached_prompt_tokens.unwrap(), 0);
    assert_eq!(b.usage.prompt_tokens_details.as_ref().unwrap().cached_tokens, 0);
    assert_eq!(b.view.tokens, a.view.tokens);
    // `a` left its own rows: continuing it works.
    let more = reply_and_ask(&next, &a.view.text, USER_TURNS[2]);
    let d = turn(&mut c, me, &more, Some(a.id)).unwrap();
    assert!(d.view.cached_prompt_tokens.unwrap() > a.view.prompt_tokens);
}

#[test]
fn continuations_of_jobs_that_are_not_the_callers_finished_ones_are_refused() {
    let mut c = canister();
    let me = user(1);
    let first = vec![msg("user", USER_TURNS[0])];
    let t1 = turn(&mut c, me, &first, None).unwrap();
    let before = health(&mut c);
    // Another caller's job, and a job that does not exist: not found alike.
    for (caller, id) in [(user(2), t1.id), (me, 999_999)] {
        match start_chat(&mut c, caller, request(&first, Some(id))) {
            Err(ApiError::NotFound(m)) => assert!(m.contains(&id.to_string()), "{m}"),
            other => panic!("{other:?}"),
        }
    }
    // A running job.
    let long = ChatCompletionRequest {
        max_tokens: Some(200),
        ..request(&first, None)
    };
    let (running, _) = start_chat(&mut c, me, long).unwrap();
    // It sends t1's prompt again, so it went on with t1's rows on its own.
    let running_cached = c.poll(me, running, 0).unwrap().unwrap().cached_prompt_tokens.unwrap();
    assert!(running_cached > 0);
    match start_chat(&mut c, me, request(&first, Some(running))) {
        Err(ApiError::InvalidArgument(m)) => assert!(m.contains("still running"), "{m}"),
        other => panic!("{other:?}"),
    }
    let (r,): (ApiResult<JobStatus>,) = c.update(me, "cancel", (running,)).unwrap();
    assert_eq!(r.unwrap(), JobStatus::Cancelled);
    // A KV cache of another type.
    let q8 = JobRequest {
        messages: Some(first.clone()),
        max_tokens: 4,
        temperature: Some(0.0),
        kv_cache: Some(KvCacheType::Q8),
        continue_from: Some(t1.id),
        ..Default::default()
    };
    match c.start_job(me, q8).unwrap() {
        Err(ApiError::InvalidArgument(m)) => assert!(m.contains("KV cache") && m.contains("q8"), "{m}"),
        other => panic!("{other:?}"),
    }
    // Nothing refused left a job behind. A cancelled job can be continued:
    // this one was cancelled before its first step, so it hands on the rows
    // it took from t1 and no more.
    assert_eq!(health(&mut c).total_jobs, before.total_jobs + 1);
    let after_cancel = turn(&mut c, me, &first, Some(running)).unwrap();
    assert_eq!(after_cancel.view.cached_prompt_tokens.unwrap(), running_cached);
    assert_eq!(after_cancel.view.tokens, t1.view.tokens);
}

#[test]
fn kept_slots_give_way_to_new_jobs_and_stable_memory_does_not_grow() {
    let mut c = canister();
    let (r,): (ApiResult<()>,) = c
        .update(
            controller(),
            "set_limits",
            (Limits {
                max_active_jobs: 3,
                ..Limits::default()
            },),
        )
        .unwrap();
    r.unwrap();
    let first = vec![msg("user", USER_TURNS[0])];
    // Three callers' finished jobs keep the three slots.
    let kept: Vec<Turn> = (1..=3).map(|n| turn(&mut c, user(n), &first, None).unwrap()).collect();
    let stable = health(&mut c).stable_bytes;
    // Three more jobs at once: the kept slots make way, oldest first.
    let ids: Vec<JobId> = (4..=6)
        .map(|n| start_chat(&mut c, user(n), request(&first, None)).unwrap().0)
        .collect();
    assert_eq!(health(&mut c).active_jobs, 3);
    for (n, id) in (4..=6).zip(&ids) {
        let view = c.run_job(user(n), *id, |_| {}).unwrap();
        assert_eq!(view.tokens, kept[0].view.tokens);
    }
    assert_eq!(health(&mut c).stable_bytes, stable, "no slot was added");
    // Their rows are gone: continuing starts cold, with the same reply.
    let t = turn(&mut c, user(1), &first, Some(kept[0].id)).unwrap();
    assert_eq!(t.view.cached_prompt_tokens.unwrap(), 0);
    assert_eq!(t.view.tokens, kept[0].view.tokens);
    assert_eq!(health(&mut c).stable_bytes, stable);
}

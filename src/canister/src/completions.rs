//! OpenAI-shaped completions over jobs: a `completions` or
//! `chat_completions` request becomes a [`JobRequest`] plus what OpenAI
//! adds ([`OpenAiStart`]: stop strings, penalties, logit bias), and a job
//! record is shown as OpenAI's completion object by [`completion`].
//!
//! Stop strings are the canister's: after each step the new text is
//! searched for them; the first one found ends the job (`stop`) and the
//! text is cut before it. While a job runs, [`visible_text`] leaves out an
//! ending that may be the start of a stop string, so a reader never sees
//! text that is later taken back.
//!
//! Pure: no `ic_cdk`, unit-tested below.

use crate::jobs::JobRecord;
use icllm_api::{
    ApiError, ApiResult, ChatCompletionRequest, ChatMessage, ChoiceLogprobs, Completion, CompletionChoice,
    CompletionRequest, CompletionUsage, JobRequest, JobStatus, PromptTokensDetails, TokenLogprob, TopLogprob,
};
use icllm_engine::logprobs::Logprobs;
use serde::{Deserialize, Serialize};

/// Stop strings a request may give (as OpenAI).
pub const MAX_STOP_STRINGS: usize = 4;
/// Bytes of one stop string.
pub const MAX_STOP_BYTES: usize = 256;
/// Entries of `logit_bias` (as OpenAI).
pub const MAX_LOGIT_BIAS: usize = 300;
/// Bytes of `user` and of `model`.
pub const MAX_NAME_BYTES: usize = 256;
/// Highest temperature (as OpenAI).
pub const MAX_TEMPERATURE: f32 = 2.0;
/// `max_tokens` of a text completion that gives none (OpenAI's default).
pub const DEFAULT_COMPLETION_MAX_TOKENS: u32 = 16;
/// Most `top_logprobs` OpenAI lets a request ask for.
pub const MAX_TOP_LOGPROBS: u32 = 5;

/// Which OpenAI object a job is shown as.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompletionKind {
    Text,
    Chat,
}

/// What the job record keeps of an OpenAI-shaped request.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct OpenAiJob {
    pub kind: CompletionKind,
    /// The model's name when the job started.
    pub model: String,
    pub stop: Vec<String>,
}

/// An OpenAI-shaped request's additions to its [`JobRequest`].
#[derive(Clone, Debug, PartialEq)]
pub struct OpenAiStart {
    pub job: OpenAiJob,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    pub logit_bias: Vec<(u32, f32)>,
    /// Alternatives per token whose log-probabilities the job keeps, if asked.
    pub logprobs: Option<u32>,
}

/// The fields text and chat requests share.
struct Common<'a> {
    model: &'a Option<String>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    n: Option<u32>,
    stop: &'a Option<Vec<String>>,
    seed: Option<u64>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    logit_bias: &'a Option<Vec<(u32, f32)>>,
    user: &'a Option<String>,
}

fn invalid(msg: String) -> ApiError {
    ApiError::InvalidArgument(msg)
}

/// Sizes and counts, before any work (as `bounds::check_job_request`).
fn check_common_bounds(c: &Common) -> ApiResult<()> {
    if let Some(stop) = c.stop {
        if stop.len() > MAX_STOP_STRINGS {
            return Err(invalid(format!(
                "{} stop strings; at most {MAX_STOP_STRINGS} are accepted",
                stop.len()
            )));
        }
        if let Some(s) = stop.iter().find(|s| s.len() > MAX_STOP_BYTES) {
            return Err(invalid(format!(
                "a stop string is {} bytes; at most {MAX_STOP_BYTES} are accepted",
                s.len()
            )));
        }
        if stop.iter().any(|s| s.is_empty()) {
            return Err(invalid("a stop string is empty".into()));
        }
    }
    if let Some(bias) = c.logit_bias {
        if bias.len() > MAX_LOGIT_BIAS {
            return Err(invalid(format!(
                "logit_bias has {} entries; at most {MAX_LOGIT_BIAS} are accepted",
                bias.len()
            )));
        }
    }
    for (name, v) in [("user", c.user), ("model", c.model)] {
        if let Some(v) = v.as_ref().filter(|v| v.len() > MAX_NAME_BYTES) {
            return Err(invalid(format!(
                "{name} is {} bytes; at most {MAX_NAME_BYTES} are accepted",
                v.len()
            )));
        }
    }
    Ok(())
}

/// Bounds of a text completion request (cheap; before the model is asked).
pub fn check_completion_bounds(req: &CompletionRequest) -> ApiResult<()> {
    check_common_bounds(&common_of_completion(req))?;
    crate::bounds::check_job_request(&JobRequest {
        prompt: req.prompt.clone(),
        ..JobRequest::default()
    })
}

/// Bounds of a chat request (cheap; before the model is asked).
pub fn check_chat_bounds(req: &ChatCompletionRequest) -> ApiResult<()> {
    check_common_bounds(&common_of_chat(req))?;
    crate::bounds::check_job_request(&JobRequest {
        messages: Some(req.messages.clone()),
        chat_template: req.chat_template.clone(),
        ..JobRequest::default()
    })
}

fn common_of_completion(r: &CompletionRequest) -> Common<'_> {
    Common {
        model: &r.model,
        temperature: r.temperature,
        top_p: r.top_p,
        n: r.n,
        stop: &r.stop,
        seed: r.seed,
        presence_penalty: r.presence_penalty,
        frequency_penalty: r.frequency_penalty,
        logit_bias: &r.logit_bias,
        user: &r.user,
    }
}

fn common_of_chat(r: &ChatCompletionRequest) -> Common<'_> {
    Common {
        model: &r.model,
        temperature: r.temperature,
        top_p: r.top_p,
        n: r.n,
        stop: &r.stop,
        seed: r.seed,
        presence_penalty: r.presence_penalty,
        frequency_penalty: r.frequency_penalty,
        logit_bias: &r.logit_bias,
        user: &r.user,
    }
}

/// The loaded model a request runs on: its name and vocabulary size.
pub struct ServedModel<'a> {
    pub name: &'a str,
    pub vocab_size: usize,
}

/// Checks what both kinds share and builds the job request's sampling
/// part and the OpenAI additions.
fn prepare(c: &Common, kind: CompletionKind, model: &ServedModel) -> ApiResult<(JobRequest, OpenAiStart)> {
    check_common_bounds(c)?;
    if let Some(m) = c.model.as_ref().filter(|m| m.as_str() != model.name) {
        return Err(ApiError::NotFound(format!(
            "the model `{m}` is not served here; this canister serves `{}` (or leave `model` out)",
            model.name
        )));
    }
    if let Some(n) = c.n.filter(|&n| n != 1) {
        return Err(invalid(format!(
            "n = {n}: the canister generates one choice per request (each is a job of its own); \
             send {n} requests, with different seeds"
        )));
    }
    let temperature = c.temperature.unwrap_or(1.0);
    if !(0.0..=MAX_TEMPERATURE).contains(&temperature) {
        return Err(invalid(format!(
            "temperature must be between 0 and {MAX_TEMPERATURE}, got {temperature}"
        )));
    }
    let logit_bias = c.logit_bias.clone().unwrap_or_default();
    if let Some((t, _)) = logit_bias.iter().find(|(t, _)| *t as usize >= model.vocab_size) {
        return Err(invalid(format!(
            "logit_bias names token {t}, outside the vocabulary ({} tokens)",
            model.vocab_size
        )));
    }
    let req = JobRequest {
        temperature: Some(temperature),
        top_k: Some(0),
        top_p: Some(c.top_p.unwrap_or(1.0)),
        seed: c.seed,
        ..JobRequest::default()
    };
    let start = OpenAiStart {
        job: OpenAiJob {
            kind,
            model: model.name.to_string(),
            stop: c.stop.clone().unwrap_or_default(),
        },
        presence_penalty: c.presence_penalty.unwrap_or(0.0),
        frequency_penalty: c.frequency_penalty.unwrap_or(0.0),
        logit_bias,
        logprobs: None,
    };
    Ok((req, start))
}

/// A text completion request as a job request (`jobs::create` checks
/// `max_tokens` against the limits and the prompt against the context).
pub fn from_completion(req: &CompletionRequest, model: &ServedModel) -> ApiResult<(JobRequest, OpenAiStart)> {
    if let Some(k) = req.logprobs {
        check_top_logprobs("logprobs", k)?;
    }
    let (mut job, mut start) = prepare(&common_of_completion(req), CompletionKind::Text, model)?;
    start.logprobs = req.logprobs;
    job.prompt = req.prompt.clone();
    job.max_tokens = req.max_tokens.unwrap_or(DEFAULT_COMPLETION_MAX_TOKENS);
    job.continue_from = req.continue_from;
    Ok((job, start))
}

/// A chat request as a job request; `default_max_tokens` is used when it
/// gives neither `max_tokens` nor `max_completion_tokens`.
pub fn from_chat(
    req: &ChatCompletionRequest,
    model: &ServedModel,
    default_max_tokens: u32,
) -> ApiResult<(JobRequest, OpenAiStart)> {
    if let Some(k) = req.top_logprobs {
        check_top_logprobs("top_logprobs", k)?;
        if req.logprobs != Some(true) {
            return Err(invalid(format!(
                "top_logprobs ({k}) needs logprobs: true (it says how many alternatives each token's logprobs show)"
            )));
        }
    }
    let max_tokens = match (req.max_tokens, req.max_completion_tokens) {
        (Some(a), Some(b)) if a != b => {
            return Err(invalid(format!(
                "max_tokens ({a}) and max_completion_tokens ({b}) differ; give one of them"
            )))
        }
        (Some(a), _) | (None, Some(a)) => a,
        (None, None) => default_max_tokens,
    };
    if req.messages.is_empty() {
        return Err(invalid("messages is empty: give at least one message".into()));
    }
    let mut messages = Vec::with_capacity(req.messages.len());
    for (i, m) in req.messages.iter().enumerate() {
        let role = match m.role.as_str() {
            "system" | "user" | "assistant" => m.role.clone(),
            // OpenAI's newer name for the system prompt.
            "developer" => "system".to_string(),
            "tool" | "function" => {
                return Err(invalid(format!(
                    "message {i} has role `{}`: tool messages are not supported (the canister calls no tools)",
                    m.role
                )))
            }
            other => {
                return Err(invalid(format!(
                    "message {i} has role `{other}`; the roles are system, user and assistant"
                )))
            }
        };
        messages.push(ChatMessage {
            role,
            content: m.content.clone(),
        });
    }
    let (mut job, mut start) = prepare(&common_of_chat(req), CompletionKind::Chat, model)?;
    start.logprobs = (req.logprobs == Some(true)).then_some(req.top_logprobs.unwrap_or(0));
    job.messages = Some(messages);
    job.max_tokens = max_tokens;
    job.continue_from = req.continue_from;
    job.chat_template = req.chat_template.clone();
    Ok((job, start))
}

fn check_top_logprobs(name: &str, k: u32) -> ApiResult<()> {
    if k > MAX_TOP_LOGPROBS {
        return Err(invalid(format!("{name} must be at most {MAX_TOP_LOGPROBS}, got {k}")));
    }
    Ok(())
}

/// Where the first stop string begins and ends in `text`, searching
/// matches that end after byte `from` (the text before it was searched already).
pub fn find_stop(text: &str, from: usize, stops: &[String]) -> Option<(usize, usize)> {
    let longest = stops.iter().map(|s| s.len()).max()?;
    let mut start = from.saturating_sub(longest.saturating_sub(1)).min(text.len());
    while !text.is_char_boundary(start) {
        start -= 1;
    }
    stops
        .iter()
        .filter_map(|s| text[start..].find(s.as_str()).map(|i| (start + i, start + i + s.len())))
        .min()
}

/// `text` without an ending that is the beginning of a stop string (it may
/// yet become one).
pub fn visible_text<'a>(text: &'a str, stops: &[String]) -> &'a str {
    let held = stops
        .iter()
        .flat_map(|s| {
            (1..s.len())
                .rev()
                .filter(|&k| s.is_char_boundary(k))
                .map(move |k| &s[..k])
        })
        .filter(|p| text.ends_with(p))
        .map(str::len)
        .max()
        .unwrap_or(0);
    &text[..text.len() - held]
}

/// OpenAI's `finish_reason` for a job status; `None` while it runs.
pub fn finish_reason(status: &JobStatus) -> Option<&'static str> {
    match status {
        JobStatus::Queued | JobStatus::Prefilling | JobStatus::Generating => None,
        JobStatus::Done(r) if r == "max_tokens" || r == "context_full" => Some("length"),
        JobStatus::Done(_) => Some("stop"),
        JobStatus::Cancelled => Some("cancelled"),
        JobStatus::Failed(_) => Some("error"),
    }
}

/// A token as OpenAI shows it: its piece's text (lossy for a piece that
/// holds part of a character) and bytes.
fn top_logprob(piece: &dyn Fn(u32) -> Vec<u8>, token: u32, logprob: f32) -> TopLogprob {
    let bytes = piece(token);
    TopLogprob {
        token: String::from_utf8_lossy(&bytes).into_owned(),
        logprob,
        bytes,
    }
}

/// Chat's `logprobs.content` (and `poll`'s) for `tokens`, whose rows in
/// `kept` start at index `from`.
pub fn token_logprobs(
    kept: &Logprobs,
    tokens: &[u32],
    from: usize,
    piece: &dyn Fn(u32) -> Vec<u8>,
) -> Vec<TokenLogprob> {
    let rows = (from..).map_while(|i| kept.get(i));
    tokens
        .iter()
        .zip(rows)
        .map(|(&t, row)| {
            let chosen = top_logprob(piece, t, row.logprob);
            TokenLogprob {
                token: chosen.token,
                logprob: chosen.logprob,
                bytes: chosen.bytes,
                top_logprobs: row.top.iter().map(|&(id, lp)| top_logprob(piece, id, lp)).collect(),
            }
        })
        .collect()
}

/// Text completions' `logprobs`: OpenAI's legacy shape, whose maps hold
/// the chosen token too when it is not among the most likely (up to
/// `logprobs` + 1 entries, as OpenAI documents). `ends[i]` is where token
/// `i`'s text ends in the choice's text.
fn text_logprobs(content: Vec<TokenLogprob>, ends: &[u32]) -> ChoiceLogprobs {
    let text_offset = (0..content.len())
        .map(|i| if i == 0 { 0 } else { ends[i - 1] })
        .collect();
    let mut out = ChoiceLogprobs {
        text_offset: Some(text_offset),
        ..ChoiceLogprobs::default()
    };
    let (mut tokens, mut token_logprobs, mut top_logprobs) = (vec![], vec![], vec![]);
    for t in content {
        let mut top = t.top_logprobs;
        if !top.iter().any(|a| a.bytes == t.bytes && a.logprob == t.logprob) {
            top.push(TopLogprob {
                token: t.token.clone(),
                logprob: t.logprob,
                bytes: t.bytes,
            });
        }
        tokens.push(t.token);
        token_logprobs.push(t.logprob);
        top_logprobs.push(top);
    }
    out.tokens = Some(tokens);
    out.token_logprobs = Some(token_logprobs);
    out.top_logprobs = Some(top_logprobs);
    out
}

/// Tokens whose log-probabilities a completion shows: while the job runs,
/// those whose text is shown (`visible` bytes); once it has finished, the
/// tokens `usage` counts.
fn shown_tokens(rec: &JobRecord, visible: usize) -> usize {
    let generated = rec.engine.generated().len();
    if rec.status.is_active() {
        rec.text_ends.partition_point(|&e| e as usize <= visible)
    } else {
        rec.tokens_until_stop.map_or(generated, |n| n as usize).min(generated)
    }
}

/// The job as OpenAI's completion object. A job started by `start_job` is
/// shown as a text completion of `model_name`. `piece` gives a token's
/// bytes, for the log-probabilities of a job that keeps them (`None`: the
/// model that generated them is not loaded, and they are left out).
pub fn completion(rec: &JobRecord, model_name: &str, piece: Option<&dyn Fn(u32) -> Vec<u8>>) -> Completion {
    let (kind, model, stops) = match &rec.openai {
        Some(o) => (o.kind, o.model.clone(), o.stop.as_slice()),
        None => (CompletionKind::Text, model_name.to_string(), &[][..]),
    };
    let text = if rec.status.is_active() {
        visible_text(&rec.text, stops)
    } else {
        &rec.text
    }
    .to_string();
    let logprobs = rec.engine.logprobs().zip(piece).map(|(kept, piece)| {
        let n = shown_tokens(rec, text.len());
        let content = token_logprobs(kept, &rec.engine.generated()[..n], 0, piece);
        match kind {
            CompletionKind::Chat => ChoiceLogprobs {
                content: Some(content),
                ..ChoiceLogprobs::default()
            },
            CompletionKind::Text => text_logprobs(content, &rec.text_ends),
        }
    });
    let (id, object, text, message) = match kind {
        CompletionKind::Text => (format!("cmpl-{}", rec.id), "text_completion", Some(text), None),
        CompletionKind::Chat => (
            format!("chatcmpl-{}", rec.id),
            "chat.completion",
            None,
            Some(ChatMessage {
                role: "assistant".into(),
                content: text,
            }),
        ),
    };
    let prompt_tokens = rec.engine.prompt().len() as u32;
    // A stop string's own tokens count; what the step generated after them does not.
    let completion_tokens = rec.tokens_until_stop.unwrap_or(rec.engine.generated().len() as u32);
    Completion {
        id,
        job_id: rec.id,
        object: object.into(),
        created: rec.created_at_ns / 1_000_000_000,
        model,
        choices: vec![CompletionChoice {
            index: 0,
            text,
            message,
            finish_reason: finish_reason(&rec.status).map(str::to_string),
            logprobs,
        }],
        usage: CompletionUsage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
            prompt_tokens_details: Some(PromptTokensDetails {
                cached_tokens: rec.cached_prompt_tokens,
            }),
        },
        status: rec.status.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODEL: ServedModel = ServedModel {
        name: "llama",
        vocab_size: 512,
    };

    fn stops(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn stop_strings_are_found_across_steps_and_held_back_while_running() {
        let s = stops(&["END", "\n\n"]);
        assert_eq!(find_stop("abcEN", 0, &s), None);
        // "EN" was searched already; "D" completes it.
        assert_eq!(find_stop("abcEND", 5, &s), Some((3, 6)));
        assert_eq!(find_stop("a\n\nb END", 0, &s), Some((1, 3)));
        assert_eq!(visible_text("abcEN", &s), "abc");
        assert_eq!(visible_text("abc\n", &s), "abc");
        assert_eq!(visible_text("abcE!", &s), "abcE!");
        assert_eq!(find_stop("héllo", 3, &stops(&["llo"])), Some((3, 6)));
        assert_eq!(find_stop("x", 1, &[]), None);
    }

    #[test]
    fn finish_reasons_are_openais() {
        assert_eq!(finish_reason(&JobStatus::Done("eos".into())), Some("stop"));
        assert_eq!(finish_reason(&JobStatus::Done("stop".into())), Some("stop"));
        assert_eq!(finish_reason(&JobStatus::Done("max_tokens".into())), Some("length"));
        assert_eq!(finish_reason(&JobStatus::Done("context_full".into())), Some("length"));
        assert_eq!(finish_reason(&JobStatus::Cancelled), Some("cancelled"));
        assert_eq!(finish_reason(&JobStatus::Generating), None);
    }

    #[test]
    fn fields_that_cannot_be_honoured_are_refused() {
        let ok = CompletionRequest {
            prompt: "Once".into(),
            ..Default::default()
        };
        let (job, start) = from_completion(&ok, &MODEL).unwrap();
        assert_eq!(job.max_tokens, DEFAULT_COMPLETION_MAX_TOKENS);
        assert_eq!((job.temperature, job.top_k, job.top_p), (Some(1.0), Some(0), Some(1.0)));
        assert_eq!(start.job.kind, CompletionKind::Text);
        let refused = [
            CompletionRequest {
                n: Some(2),
                ..ok.clone()
            },
            CompletionRequest {
                logprobs: Some(6),
                ..ok.clone()
            },
            CompletionRequest {
                stop: Some(stops(&["a", "b", "c", "d", "e"])),
                ..ok.clone()
            },
            CompletionRequest {
                temperature: Some(2.5),
                ..ok.clone()
            },
            CompletionRequest {
                logit_bias: Some(vec![(512, 1.0)]),
                ..ok.clone()
            },
            CompletionRequest {
                logit_bias: Some(vec![(1, 0.0); MAX_LOGIT_BIAS + 1]),
                ..ok.clone()
            },
        ];
        for r in refused {
            assert!(
                matches!(from_completion(&r, &MODEL), Err(ApiError::InvalidArgument(_))),
                "{r:?}"
            );
        }
        let other_model = CompletionRequest {
            model: Some("gpt-4".into()),
            ..ok
        };
        assert!(matches!(
            from_completion(&other_model, &MODEL),
            Err(ApiError::NotFound(_))
        ));
    }

    #[test]
    fn chat_roles_and_token_limits() {
        let msg = |role: &str| ChatMessage {
            role: role.into(),
            content: "hi".into(),
        };
        let ok = ChatCompletionRequest {
            messages: vec![msg("developer"), msg("user"), msg("assistant")],
            max_completion_tokens: Some(7),
            ..Default::default()
        };
        let (job, start) = from_chat(&ok, &MODEL, 4096).unwrap();
        assert_eq!(job.max_tokens, 7);
        assert_eq!(job.messages.unwrap()[0].role, "system");
        assert_eq!(start.job.kind, CompletionKind::Chat);
        let refused = [
            ChatCompletionRequest {
                messages: vec![msg("tool")],
                ..ok.clone()
            },
            ChatCompletionRequest {
                messages: vec![],
                ..ok.clone()
            },
            ChatCompletionRequest {
                max_tokens: Some(8),
                ..ok.clone()
            },
            ChatCompletionRequest {
                logprobs: Some(true),
                top_logprobs: Some(6),
                ..ok.clone()
            },
            // top_logprobs says how many alternatives logprobs shows: alone it means nothing.
            ChatCompletionRequest {
                top_logprobs: Some(2),
                ..ok.clone()
            },
            ChatCompletionRequest {
                logprobs: Some(false),
                top_logprobs: Some(0),
                ..ok.clone()
            },
        ];
        for r in refused {
            assert!(
                matches!(from_chat(&r, &MODEL, 4096), Err(ApiError::InvalidArgument(_))),
                "{r:?}"
            );
        }
    }

    #[test]
    fn logprobs_requests_set_how_many_alternatives_the_job_keeps() {
        let text = CompletionRequest {
            prompt: "Once".into(),
            logprobs: Some(3),
            ..Default::default()
        };
        assert_eq!(from_completion(&text, &MODEL).unwrap().1.logprobs, Some(3));
        let msg = ChatMessage {
            role: "user".into(),
            content: "hi".into(),
        };
        let chat = |logprobs, top_logprobs| ChatCompletionRequest {
            messages: vec![msg.clone()],
            logprobs,
            top_logprobs,
            ..Default::default()
        };
        let kept = |r| from_chat(&r, &MODEL, 16).unwrap().1.logprobs;
        assert_eq!(kept(chat(Some(true), Some(5))), Some(5));
        assert_eq!(kept(chat(Some(true), None)), Some(0));
        assert_eq!(kept(chat(Some(false), None)), None);
        assert_eq!(kept(chat(None, None)), None);
    }

    #[test]
    fn text_logprobs_have_openais_legacy_shape() {
        use icllm_engine::logprobs::TokenLogprobs;
        let mut kept = Logprobs::new(2).unwrap();
        kept.push(&TokenLogprobs {
            logprob: -0.1,
            top: vec![(7, -0.1), (8, -2.5)],
        });
        kept.push(&TokenLogprobs {
            logprob: -3.0,
            top: vec![(7, -0.2), (8, -1.9)],
        });
        let piece = |t: u32| format!("<{t}>").into_bytes();
        let content = token_logprobs(&kept, &[7, 9], 0, &piece);
        assert_eq!(content[1].token, "<9>");
        assert_eq!(content[1].top_logprobs.len(), 2);
        // poll's rows start at its `since`.
        assert_eq!(token_logprobs(&kept, &[9], 1, &piece), content[1..]);
        let text = text_logprobs(content, &[3, 6]);
        assert_eq!(text.tokens, Some(vec!["<7>".to_string(), "<9>".to_string()]));
        assert_eq!(text.token_logprobs, Some(vec![-0.1, -3.0]));
        assert_eq!(text.text_offset, Some(vec![0, 3]));
        let top = text.top_logprobs.unwrap();
        // The chosen token is added when it is not among the most likely.
        assert_eq!(top[0].len(), 2);
        assert_eq!(
            top[1].iter().map(|t| (t.token.as_str(), t.logprob)).collect::<Vec<_>>(),
            [("<7>", -0.2), ("<8>", -1.9), ("<9>", -3.0)]
        );
        assert!(text.content.is_none());
    }
}

//! OpenAI's JSON on the wire: request bodies (parsed strictly: a field the
//! canister does not take is refused by name, not ignored), the candid
//! requests they become, the response and chunk objects, and error objects.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use icllm_api::{ApiError, ChatCompletionRequest, ChatMessage, Completion, CompletionRequest, TopLogprob};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// An OpenAI error object with its HTTP status.
#[derive(Debug)]
pub struct HttpError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub code: Option<&'static str>,
    pub message: String,
}

impl HttpError {
    pub fn bad_request(message: impl Into<String>) -> HttpError {
        HttpError {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            code: None,
            message: message.into(),
        }
    }

    pub fn internal(message: impl Into<String>) -> HttpError {
        HttpError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            kind: "server_error",
            code: None,
            message: message.into(),
        }
    }

    pub fn not_found(message: impl Into<String>) -> HttpError {
        HttpError {
            status: StatusCode::NOT_FOUND,
            kind: "invalid_request_error",
            code: None,
            message: message.into(),
        }
    }

    pub fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": null, "code": self.code}})
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}

/// The canister's refusal as an HTTP error: bad input 400, not the caller's
/// (or no such model/job) 404, not allowed 403, over a quota 429, no model yet 503.
impl From<ApiError> for HttpError {
    fn from(e: ApiError) -> HttpError {
        let (status, kind, code, message) = match e {
            ApiError::InvalidArgument(m) => (StatusCode::BAD_REQUEST, "invalid_request_error", None, m),
            ApiError::NotFound(m) if m.contains("model") => (
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                Some("model_not_found"),
                m,
            ),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, "invalid_request_error", None, m),
            ApiError::NotAuthorized(m) => (StatusCode::FORBIDDEN, "permission_error", None, m),
            ApiError::QuotaExceeded(m) => (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", None, m),
            ApiError::ModelNotReady(m) => (StatusCode::SERVICE_UNAVAILABLE, "server_error", None, m),
            ApiError::Upload(m) => (StatusCode::SERVICE_UNAVAILABLE, "server_error", None, m),
        };
        HttpError {
            status,
            kind,
            code,
            message,
        }
    }
}

#[derive(Deserialize, Debug)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// The body of `POST /v1/completions`.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct TextBody {
    model: Option<String>,
    prompt: OneOrMany,
    max_tokens: Option<u32>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    n: Option<u32>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    stop: Option<OneOrMany>,
    seed: Option<u64>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    logit_bias: Option<BTreeMap<String, f32>>,
    logprobs: Option<u32>,
    user: Option<String>,
    echo: Option<bool>,
    suffix: Option<String>,
    best_of: Option<u32>,
    continue_from: Option<JobRef>,
}

/// The body of `POST /v1/chat/completions`.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct ChatBody {
    model: Option<String>,
    messages: Vec<MessageBody>,
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    n: Option<u32>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    stop: Option<OneOrMany>,
    seed: Option<u64>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    logit_bias: Option<BTreeMap<String, f32>>,
    logprobs: Option<bool>,
    top_logprobs: Option<u32>,
    user: Option<String>,
    continue_from: Option<JobRef>,
    /// icllm's own: a built-in chat template by name (see `JobRequest::chat_template`).
    pub chat_template: Option<String>,
}

/// icllm's `continue_from`: a finished completion whose conversation the
/// request continues, by its `id` (`chatcmpl-7`, `cmpl-7`) or its job id (7).
#[derive(Deserialize, Debug)]
#[serde(untagged)]
enum JobRef {
    Job(u64),
    Id(String),
}

impl JobRef {
    fn job_id(self) -> Result<u64, HttpError> {
        match self {
            JobRef::Job(id) => Ok(id),
            JobRef::Id(s) => s
                .strip_prefix("chatcmpl-")
                .or_else(|| s.strip_prefix("cmpl-"))
                .unwrap_or(&s)
                .parse()
                .map_err(|_| {
                    HttpError::bad_request(format!(
                        "continue_from `{s}` is not a completion id (chatcmpl-N, cmpl-N) or a job id"
                    ))
                }),
        }
    }
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct MessageBody {
    role: String,
    content: Content,
}

#[derive(Deserialize, Debug)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct ContentPart {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
}

/// Parses a JSON body, or says what is wrong with it.
pub fn parse<T: for<'a> Deserialize<'a>>(body: &[u8]) -> Result<T, HttpError> {
    serde_json::from_slice(body).map_err(|e| {
        HttpError::bad_request(format!(
            "the request body is not valid JSON for this endpoint: {e} (fields the canister cannot honour are refused by name)"
        ))
    })
}

fn logit_bias(map: Option<BTreeMap<String, f32>>) -> Result<Option<Vec<(u32, f32)>>, HttpError> {
    map.map(|m| {
        m.into_iter()
            .map(|(k, v)| {
                k.parse::<u32>()
                    .map(|t| (t, v))
                    .map_err(|_| HttpError::bad_request(format!("logit_bias key `{k}` is not a token id")))
            })
            .collect()
    })
    .transpose()
}

impl TextBody {
    pub fn into_request(self) -> Result<CompletionRequest, HttpError> {
        if self.echo == Some(true) {
            return Err(HttpError::bad_request("echo is not supported"));
        }
        if self.suffix.is_some() {
            return Err(HttpError::bad_request(
                "suffix is not supported (no fill-in-the-middle)",
            ));
        }
        if self.best_of.is_some_and(|b| b != 1) {
            return Err(HttpError::bad_request("best_of must be 1: one choice per request"));
        }
        let prompt = match self.prompt {
            OneOrMany::One(p) => p,
            OneOrMany::Many(mut v) if v.len() == 1 => v.remove(0),
            OneOrMany::Many(v) => {
                return Err(HttpError::bad_request(format!(
                    "prompt holds {} strings: send one prompt per request",
                    v.len()
                )))
            }
        };
        Ok(CompletionRequest {
            model: self.model,
            prompt,
            max_tokens: self.max_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            n: self.n,
            stop: self.stop.map(OneOrMany::into_vec),
            seed: self.seed,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            logit_bias: logit_bias(self.logit_bias)?,
            logprobs: self.logprobs,
            user: self.user,
            continue_from: self.continue_from.map(JobRef::job_id).transpose()?,
        })
    }
}

impl ChatBody {
    pub fn into_request(self) -> Result<ChatCompletionRequest, HttpError> {
        let mut messages = Vec::with_capacity(self.messages.len());
        for (i, m) in self.messages.into_iter().enumerate() {
            let content = match m.content {
                Content::Text(t) => t,
                Content::Parts(parts) => {
                    let mut text = String::new();
                    for p in parts {
                        match (p.kind.as_str(), p.text) {
                            ("text", Some(t)) => text.push_str(&t),
                            (kind, _) => {
                                return Err(HttpError::bad_request(format!(
                                    "message {i} has a `{kind}` part: only text parts are supported"
                                )))
                            }
                        }
                    }
                    text
                }
            };
            messages.push(ChatMessage { role: m.role, content });
        }
        Ok(ChatCompletionRequest {
            model: self.model,
            messages,
            max_tokens: self.max_tokens,
            max_completion_tokens: self.max_completion_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            n: self.n,
            stop: self.stop.map(OneOrMany::into_vec),
            seed: self.seed,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            logit_bias: logit_bias(self.logit_bias)?,
            logprobs: self.logprobs,
            top_logprobs: self.top_logprobs,
            user: self.user,
            continue_from: self.continue_from.map(JobRef::job_id).transpose()?,
            chat_template: self.chat_template,
        })
    }
}

/// The text so far of the completion's one choice.
pub fn text_of(c: &Completion) -> &str {
    let choice = &c.choices[0];
    choice
        .text
        .as_deref()
        .or(choice.message.as_ref().map(|m| m.content.as_str()))
        .unwrap_or("")
}

pub fn usage(c: &Completion) -> Value {
    json!({
        "prompt_tokens": c.usage.prompt_tokens,
        "completion_tokens": c.usage.completion_tokens,
        "total_tokens": c.usage.total_tokens,
        "prompt_tokens_details": {
            "cached_tokens": c.usage.prompt_tokens_details.as_ref().map_or(0, |d| d.cached_tokens),
        },
    })
}

fn is_chat(c: &Completion) -> bool {
    c.object == "chat.completion"
}

/// Tokens the choice's logprobs cover so far (0 without logprobs).
pub fn logprob_count(c: &Completion) -> usize {
    let Some(l) = &c.choices[0].logprobs else { return 0 };
    l.content
        .as_ref()
        .map_or(0, Vec::len)
        .max(l.tokens.as_ref().map_or(0, Vec::len))
}

fn top_json(t: &TopLogprob) -> Value {
    json!({"token": t.token, "logprob": t.logprob, "bytes": t.bytes})
}

/// The choice's `logprobs` in OpenAI's JSON from token `from` on: chat's
/// `{content: [...]}`, or the legacy `{tokens, token_logprobs,
/// top_logprobs: [{token: logprob}], text_offset}`; null when not asked.
pub fn logprobs_json(c: &Completion, from: usize) -> Value {
    let Some(l) = &c.choices[0].logprobs else {
        return Value::Null;
    };
    if let Some(content) = &l.content {
        let entries: Vec<Value> = content
            .iter()
            .skip(from)
            .map(|t| {
                let top: Vec<Value> = t.top_logprobs.iter().map(top_json).collect();
                json!({"token": t.token, "logprob": t.logprob, "bytes": t.bytes, "top_logprobs": top})
            })
            .collect();
        return json!({"content": entries, "refusal": null});
    }
    fn tail<T: Clone>(v: &Option<Vec<T>>, from: usize) -> Vec<T> {
        v.iter().flatten().skip(from).cloned().collect()
    }
    let maps: Vec<Value> = tail(&l.top_logprobs, from)
        .into_iter()
        .map(|alternatives: Vec<TopLogprob>| {
            Value::Object(alternatives.into_iter().map(|t| (t.token, json!(t.logprob))).collect())
        })
        .collect();
    json!({
        "tokens": tail(&l.tokens, from),
        "token_logprobs": tail(&l.token_logprobs, from),
        "top_logprobs": maps,
        "text_offset": tail(&l.text_offset, from),
    })
}

/// The finished completion as OpenAI's JSON object.
pub fn object(c: &Completion) -> Value {
    let choice = &c.choices[0];
    let mut choice_json = json!({
        "index": choice.index,
        "finish_reason": choice.finish_reason,
        "logprobs": logprobs_json(c, 0),
    });
    if is_chat(c) {
        choice_json["message"] = json!({"role": "assistant", "content": text_of(c)});
    } else {
        choice_json["text"] = json!(text_of(c));
    }
    json!({
        "id": c.id,
        "object": c.object,
        "created": c.created,
        "model": c.model,
        "system_fingerprint": null,
        "choices": [choice_json],
        "usage": usage(c),
    })
}

/// One streamed chunk: new text (`delta`) with the logprobs of its tokens
/// (`logprobs`, null if none), the role first (chat), or the finish reason last.
pub fn chunk(c: &Completion, delta: Option<&str>, role: bool, finish_reason: Option<&str>) -> Value {
    chunk_with(c, delta, Value::Null, role, finish_reason)
}

pub fn chunk_with(
    c: &Completion,
    delta: Option<&str>,
    logprobs: Value,
    role: bool,
    finish_reason: Option<&str>,
) -> Value {
    let choice = if is_chat(c) {
        let mut d = json!({});
        if role {
            d["role"] = json!("assistant");
            d["content"] = json!("");
        }
        if let Some(t) = delta {
            d["content"] = json!(t);
        }
        json!({"index": 0, "delta": d, "finish_reason": finish_reason, "logprobs": logprobs})
    } else {
        json!({"index": 0, "text": delta.unwrap_or(""), "finish_reason": finish_reason, "logprobs": logprobs})
    };
    json!({
        "id": c.id,
        "object": if is_chat(c) { "chat.completion.chunk" } else { "text_completion" },
        "created": c.created,
        "model": c.model,
        "system_fingerprint": null,
        "choices": [choice],
    })
}

/// The usage chunk at the end of a stream (`stream_options.include_usage`).
pub fn usage_chunk(c: &Completion) -> Value {
    let mut v = chunk(c, None, false, None);
    v["choices"] = json!([]);
    v["usage"] = usage(c);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_and_several_prompts_are_refused() {
        assert!(parse::<TextBody>(br#"{"prompt": "x", "tools": []}"#).is_err());
        assert!(parse::<TextBody>(b"{not json").is_err());
        let two: TextBody = parse(br#"{"prompt": ["a", "b"]}"#).unwrap();
        assert!(two.into_request().is_err());
        let one: TextBody = parse(br#"{"prompt": "a", "stop": "x", "logit_bias": {"5": -100}}"#).unwrap();
        let r = one.into_request().unwrap();
        assert_eq!(r.stop, Some(vec!["x".to_string()]));
        assert_eq!(r.logit_bias, Some(vec![(5, -100.0)]));
    }

    #[test]
    fn chat_text_parts_are_joined() {
        let body: ChatBody =
            parse(br#"{"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]}"#).unwrap();
        assert_eq!(body.into_request().unwrap().messages[0].content, "Hi");
    }

    #[test]
    fn continue_from_takes_a_completion_id_or_a_job_id() {
        let chat = |body: &str| parse::<ChatBody>(body.as_bytes()).unwrap().into_request();
        let id = |r: Result<ChatCompletionRequest, HttpError>| r.unwrap().continue_from;
        let msgs = r#""messages": [{"role": "user", "content": "Hi"}]"#;
        assert_eq!(
            id(chat(&format!(r#"{{{msgs}, "continue_from": "chatcmpl-7"}}"#))),
            Some(7)
        );
        assert_eq!(id(chat(&format!(r#"{{{msgs}, "continue_from": 9}}"#))), Some(9));
        assert_eq!(id(chat(&format!("{{{msgs}}}"))), None);
        assert!(chat(&format!(r#"{{{msgs}, "continue_from": "chatcmpl-x"}}"#)).is_err());
        let text: TextBody = parse(br#"{"prompt": "a", "continue_from": "cmpl-3"}"#).unwrap();
        assert_eq!(text.into_request().unwrap().continue_from, Some(3));
    }
}

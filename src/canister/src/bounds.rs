//! Bounds on what callers send, checked before any expensive work and
//! cheapest first: the argument's byte size (no decoding), then candid
//! decoding under a quota, then element counts and byte sizes of the
//! decoded request. Pure functions (the size comes in as a number), so
//! `inspect_message` (ingress) and the endpoints (canister callers, which
//! `inspect_message` never sees) apply the same rules.

use candid::utils::ArgumentDecoder;
use candid::DecoderConfig;
use icllm_api::{ApiError, ApiResult, JobRequest};

/// Largest argument of any method but `upload_chunk`: a request with a
/// prompt of [`MAX_PROMPT_BYTES`] and the rest of its fields fits.
pub const MAX_ARG_BYTES: usize = MAX_PROMPT_BYTES + 64 * 1024;
/// Largest argument of `upload_chunk`: a chunk and its candid header.
pub const MAX_CHUNK_ARG_BYTES: usize = crate::upload::MAX_CHUNK_BYTES + 1024;
/// Largest argument of `shard_forward`: a batch's hidden state and its header.
pub const MAX_SHARD_ARG_BYTES: usize = crate::sharding::MAX_BATCH_BYTES + 1024;
/// Candid decoding budget, in candid's cost units: about 1 per byte of
/// text, 7 per `nat32` of a vector, 31 per empty chat message (measured
/// with candid 0.10; a unit costs up to ~115 instructions in the canister).
/// The largest legitimate requests stay under it (tested below); a hostile
/// one (80,000 empty messages in 160 KB) is cut off after ~30 M
/// instructions instead of being decoded in full.
pub const DECODING_QUOTA: usize = 240_000;
/// Most bytes a chunk argument may cost to decode (one blob).
pub const CHUNK_DECODING_QUOTA: usize = 2 * MAX_CHUNK_ARG_BYTES;
/// Characters of candid's own error kept in an `InvalidArgument`.
const MAX_REASON_CHARS: usize = 300;
/// Candid's quota for skipping values of unknown fields.
pub const SKIPPING_QUOTA: usize = 10_000;

/// Text a job's prompt (or its messages' contents together) may hold
/// (about 32 K tokens of English).
pub const MAX_PROMPT_BYTES: usize = 128 * 1024;
/// Turns of a conversation.
pub const MAX_MESSAGES: usize = 256;
/// Bytes of one message's role (`system`, `user`, `assistant`, …).
pub const MAX_ROLE_BYTES: usize = 64;
/// Token ids in `prompt_tokens`.
pub const MAX_PROMPT_TOKENS: usize = 32 * 1024;

/// Largest argument `method` accepts, in bytes.
pub fn max_arg_bytes(method: &str) -> usize {
    match method {
        "upload_chunk" => MAX_CHUNK_ARG_BYTES,
        "shard_forward" => MAX_SHARD_ARG_BYTES,
        _ => MAX_ARG_BYTES,
    }
}

/// Refuses an argument of `size` bytes for `method` without reading it.
pub fn check_arg_size(method: &str, size: usize) -> ApiResult<()> {
    let max = max_arg_bytes(method);
    if size > max {
        return Err(ApiError::InvalidArgument(format!(
            "the argument of {method} is {size} bytes; at most {max} are accepted"
        )));
    }
    Ok(())
}

/// Decodes the candid argument of `method` under the size limit and the
/// decoding quota: a malformed or oversized argument is an error, not a trap.
pub fn decode_args<T: for<'a> ArgumentDecoder<'a>>(method: &str, bytes: &[u8]) -> ApiResult<T> {
    check_arg_size(method, bytes.len())?;
    let bytes: &[u8] = if bytes.is_empty() { b"DIDL\x00\x00" } else { bytes };
    let quota = match method {
        "upload_chunk" => CHUNK_DECODING_QUOTA,
        "shard_forward" => 2 * MAX_SHARD_ARG_BYTES,
        _ => DECODING_QUOTA,
    };
    let mut config = DecoderConfig::new();
    config
        .set_decoding_quota(quota)
        .set_skipping_quota(SKIPPING_QUOTA)
        .set_full_error_message(false);
    candid::utils::decode_args_with_config(bytes, &config).map_err(|e| {
        // candid's message may quote the whole input: keep its head.
        let reason: String = e.to_string().chars().take(MAX_REASON_CHARS).collect();
        ApiError::InvalidArgument(format!(
            "the argument of {method} is not valid candid for it, or costs too much to decode: {reason}"
        ))
    })
}

/// Element counts and byte sizes of a job request, before it is tokenized.
/// Longest built-in chat template name accepted (the names are short words).
pub const MAX_TEMPLATE_NAME_BYTES: usize = 64;
/// Longest `notify` method name accepted.
pub const MAX_NOTIFY_METHOD_BYTES: usize = 256;

pub fn check_job_request(req: &JobRequest) -> ApiResult<()> {
    if req.prompt.len() > MAX_PROMPT_BYTES {
        return Err(ApiError::InvalidArgument(format!(
            "the prompt is {} bytes; at most {MAX_PROMPT_BYTES} are accepted",
            req.prompt.len()
        )));
    }
    if let Some(messages) = &req.messages {
        if messages.len() > MAX_MESSAGES {
            return Err(ApiError::InvalidArgument(format!(
                "{} messages; at most {MAX_MESSAGES} are accepted",
                messages.len()
            )));
        }
        if let Some(m) = messages.iter().find(|m| m.role.len() > MAX_ROLE_BYTES) {
            return Err(ApiError::InvalidArgument(format!(
                "a message role is {} bytes; at most {MAX_ROLE_BYTES} are accepted",
                m.role.len()
            )));
        }
        let content: usize = messages.iter().map(|m| m.content.len()).sum();
        if content > MAX_PROMPT_BYTES {
            return Err(ApiError::InvalidArgument(format!(
                "the messages hold {content} bytes of content; at most {MAX_PROMPT_BYTES} are accepted"
            )));
        }
    }
    if let Some(name) = req
        .chat_template
        .as_deref()
        .filter(|n| n.len() > MAX_TEMPLATE_NAME_BYTES)
    {
        return Err(ApiError::InvalidArgument(format!(
            "the chat template name is {} bytes; at most {MAX_TEMPLATE_NAME_BYTES} are accepted",
            name.len()
        )));
    }
    if let Some(method) = &req.notify {
        if method.is_empty() || method.len() > MAX_NOTIFY_METHOD_BYTES {
            return Err(ApiError::InvalidArgument(format!(
                "notify names a method of 1 to {MAX_NOTIFY_METHOD_BYTES} bytes (got {})",
                method.len()
            )));
        }
    }
    if let Some(ids) = &req.prompt_tokens {
        if ids.len() > MAX_PROMPT_TOKENS {
            return Err(ApiError::InvalidArgument(format!(
                "prompt_tokens holds {} ids; at most {MAX_PROMPT_TOKENS} are accepted",
                ids.len()
            )));
        }
    }
    Ok(())
}

/// Bytes of text the prompt will be tokenized from (prompt, or the
/// messages' roles and contents).
pub fn prompt_text_bytes(req: &JobRequest) -> usize {
    match &req.messages {
        Some(m) => m.iter().map(|m| m.role.len() + m.content.len()).sum(),
        None => req.prompt.len(),
    }
}

/// Refuses a prompt that must encode to at least `ctx_size` tokens without
/// tokenizing it: no token covers more than `max_piece_bytes` bytes of
/// text, so `bytes` of text make at least `bytes / max_piece_bytes` tokens.
pub fn check_prompt_fits(bytes: usize, max_piece_bytes: usize, ctx_size: u32) -> ApiResult<()> {
    let fewest_tokens = bytes / max_piece_bytes.max(1);
    if fewest_tokens >= ctx_size as usize {
        return Err(ApiError::InvalidArgument(format!(
            "the prompt's {bytes} bytes encode to at least {fewest_tokens} tokens; \
             the context holds {ctx_size}, leaving no room to generate"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use icllm_api::ChatMessage;

    #[test]
    fn oversized_arguments_are_refused_before_decoding() {
        assert!(check_arg_size("start_job", MAX_ARG_BYTES).is_ok());
        assert!(matches!(
            check_arg_size("start_job", MAX_ARG_BYTES + 1),
            Err(ApiError::InvalidArgument(_))
        ));
        assert!(check_arg_size("upload_chunk", MAX_ARG_BYTES + 1).is_ok());
    }

    #[test]
    fn too_many_messages_are_refused() {
        let msg = ChatMessage {
            role: "user".into(),
            content: String::new(),
        };
        let mut req = JobRequest {
            messages: Some(vec![msg.clone(); MAX_MESSAGES]),
            ..JobRequest::default()
        };
        assert!(check_job_request(&req).is_ok());
        req.messages.as_mut().unwrap().push(msg);
        assert!(matches!(check_job_request(&req), Err(ApiError::InvalidArgument(_))));
    }

    #[test]
    fn many_empty_records_exhaust_the_decoding_quota() {
        let msg = ChatMessage {
            role: String::new(),
            content: String::new(),
        };
        let req = JobRequest {
            messages: Some(vec![msg; 80_000]),
            ..JobRequest::default()
        };
        let bytes = candid::encode_one(&req).unwrap();
        assert!(bytes.len() < MAX_ARG_BYTES);
        let r: ApiResult<(JobRequest,)> = decode_args("start_job", &bytes);
        match r {
            Err(ApiError::InvalidArgument(m)) => assert!(m.len() < 600, "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_largest_legitimate_requests_decode_within_the_quota() {
        let text = |n: usize| "x".repeat(n);
        let per_message = MAX_PROMPT_BYTES / MAX_MESSAGES;
        let requests = [
            JobRequest {
                prompt: text(MAX_PROMPT_BYTES),
                ..JobRequest::default()
            },
            JobRequest {
                messages: Some(vec![
                    ChatMessage {
                        role: text(MAX_ROLE_BYTES),
                        content: text(per_message),
                    };
                    MAX_MESSAGES
                ]),
                ..JobRequest::default()
            },
            JobRequest {
                prompt_tokens: Some(vec![u32::MAX; MAX_PROMPT_TOKENS]),
                ..JobRequest::default()
            },
        ];
        for req in requests {
            let bytes = candid::encode_one(&req).unwrap();
            let r: ApiResult<(JobRequest,)> = decode_args("start_job", &bytes);
            assert!(r.is_ok(), "{r:?}");
            assert!(check_job_request(&r.unwrap().0).is_ok());
        }
    }

    #[test]
    fn a_prompt_longer_than_the_context_can_hold_is_refused_by_its_bytes() {
        assert!(check_prompt_fits(100, 10, 11).is_ok());
        assert!(check_prompt_fits(110, 10, 11).is_err());
    }
}

//! An endpoint's candid argument as the canister decodes it: the first byte
//! picks the endpoint, the rest is the argument. Decoding runs under the
//! canister's size limit, decoding quota and skipping quota
//! (`bounds::decode_args`), then the checks each endpoint makes before it
//! acts. Any input must give a value or an error, never a panic, and a
//! candid bomb must be cut off by the quotas (libFuzzer's per-input timeout
//! fails the run otherwise).
#![no_main]

use icllm_api::{AccessPolicy, JobId, JobRequest, Limits, UploadBegin};
use icllm_canister::bounds::{check_job_request, decode_args};
use icllm_canister::settings::{validate_limits, validate_message_limit};
use libfuzzer_sys::fuzz_target;
use serde_bytes::ByteBuf;

fuzz_target!(|data: &[u8]| {
    let Some((&endpoint, arg)) = data.split_first() else { return };
    match endpoint % 8 {
        0 => {
            if let Ok((req,)) = decode_args::<(JobRequest,)>("start_job", arg) {
                let _ = check_job_request(&req);
            }
        }
        1 => {
            let _ = decode_args::<(u64, ByteBuf)>("upload_chunk", arg);
        }
        2 => {
            let _ = decode_args::<(UploadBegin,)>("upload_begin", arg);
        }
        3 => {
            let _ = decode_args::<(JobId, Option<u32>)>("poll", arg);
        }
        4 => {
            let _ = decode_args::<(JobId,)>("step", arg);
        }
        5 => {
            let _ = decode_args::<(AccessPolicy,)>("set_policy", arg);
        }
        6 => {
            if let Ok((limits,)) = decode_args::<(Limits,)>("set_limits", arg) {
                let _ = validate_limits(&limits);
            }
        }
        7 => {
            if let Ok((limit,)) = decode_args::<(u64,)>("set_message_instruction_limit", arg) {
                let _ = validate_message_limit(limit);
            }
        }
        _ => {}
    }
});

//! Chunked model upload into the inactive model slot.
//!
//! `begin(size, sha256)` → `chunk(offset, bytes)` in any order, resendable →
//! `finalize()` starts the pipeline (hash, parse, load) that runs across
//! messages; the slot becomes active only if all of it succeeds, so a bad
//! upload never disturbs the model in use.

use crate::model_store::Pipeline;
use crate::settings::{self, ModelSlot, UploadRecord};
use crate::{memory, ranges, scheduler, state};
use ic_stable_structures::Memory as _;
use icllm_api::{ApiError, ApiResult, UploadBegin, UploadState, UploadStatus};

/// Largest chunk accepted: the 2 MiB ingress limit minus room for the envelope.
pub const MAX_CHUNK_BYTES: usize = 2 * 1024 * 1024 - 64 * 1024;
/// Largest model file accepted (the two slots share 500 GiB of stable memory).
pub const MAX_MODEL_BYTES: u64 = 64 << 30;

fn busy(u: &UploadRecord) -> bool {
    matches!(u.state, UploadState::Verifying | UploadState::Loading)
}

pub fn begin(req: UploadBegin) -> ApiResult<UploadStatus> {
    if req.sha256.len() != 32 {
        return Err(ApiError::InvalidArgument(format!(
            "sha256 must be 32 bytes, got {}",
            req.sha256.len()
        )));
    }
    if req.size == 0 || req.size > MAX_MODEL_BYTES {
        return Err(ApiError::InvalidArgument(format!(
            "size must be between 1 and {MAX_MODEL_BYTES} bytes, got {}",
            req.size
        )));
    }
    settings::mutate(|s| {
        if s.upload.as_ref().is_some_and(busy) {
            return Err(ApiError::Upload(
                "an upload is being verified or loaded; wait for it to finish".into(),
            ));
        }
        let slot = match &s.active_model {
            Some(m) => 1 - m.slot,
            None => 0,
        };
        s.upload = Some(UploadRecord {
            target: ModelSlot {
                slot,
                size: req.size,
                sha256: req.sha256.clone(),
            },
            received: Vec::new(),
            state: UploadState::Receiving,
        });
        Ok(())
    })?;
    // Stable memory grows as chunks arrive (see `chunk`): a declared size
    // costs nothing until bytes are sent.
    Ok(status())
}

pub fn chunk(offset: u64, data: &[u8]) -> ApiResult<UploadStatus> {
    let up = settings::read(|s| s.upload.clone())
        .ok_or_else(|| ApiError::Upload("no upload under way: call upload_begin first".into()))?;
    if up.state != UploadState::Receiving {
        return Err(ApiError::Upload(format!(
            "the upload is not receiving chunks (state {:?})",
            up.state
        )));
    }
    if data.is_empty() || data.len() > MAX_CHUNK_BYTES {
        return Err(ApiError::InvalidArgument(format!(
            "a chunk must hold 1 to {MAX_CHUNK_BYTES} bytes, got {}",
            data.len()
        )));
    }
    let end = offset
        .checked_add(data.len() as u64)
        .filter(|&e| e <= up.target.size)
        .ok_or_else(|| {
            ApiError::InvalidArgument(format!(
                "a chunk of {} bytes at offset {offset} lies outside the file of {} bytes",
                data.len(),
                up.target.size
            ))
        })?;
    let blob = memory::model_slot(up.target.slot);
    if !memory::ensure_size(&blob, end) {
        return Err(ApiError::Upload("stable memory is full: no room for this chunk".into()));
    }
    blob.write(offset, data);
    settings::mutate(|s| {
        if let Some(u) = s.upload.as_mut() {
            ranges::insert(&mut u.received, offset, end);
        }
    });
    Ok(status())
}

pub fn finalize() -> ApiResult<UploadStatus> {
    let up = settings::read(|s| s.upload.clone())
        .ok_or_else(|| ApiError::Upload("no upload under way: call upload_begin first".into()))?;
    match &up.state {
        UploadState::Receiving => {}
        UploadState::Verifying | UploadState::Loading | UploadState::Done => return Ok(status()),
        UploadState::Failed(reason) => {
            return Err(ApiError::Upload(format!(
                "the upload failed ({reason}); start again with upload_begin"
            )))
        }
        UploadState::Idle => return Err(ApiError::Upload("no upload under way".into())),
    }
    let missing = ranges::missing(&up.received, up.target.size);
    if !missing.is_empty() {
        let bytes: u64 = missing.iter().map(|(a, b)| b - a).sum();
        return Err(ApiError::Upload(format!(
            "{} byte range(s) ({bytes} bytes) are still missing, first [{}, {})",
            missing.len(),
            missing[0].0,
            missing[0].1
        )));
    }
    settings::mutate(|s| {
        if let Some(u) = s.upload.as_mut() {
            u.state = UploadState::Verifying;
        }
    });
    state::mutate(|s| {
        s.pipeline = Some(Pipeline::verify_and_load(up.target.clone()));
        s.pipeline_error = None;
    });
    scheduler::advance_pipeline(&crate::env::Ic);
    scheduler::ensure_armed();
    Ok(status())
}

pub fn status() -> UploadStatus {
    let progress = state::read(|s| s.pipeline.as_ref().map(|p| p.progress_bytes()).unwrap_or(0));
    match settings::read(|s| s.upload.clone()) {
        None => UploadStatus {
            state: UploadState::Idle,
            size: 0,
            received_bytes: 0,
            missing: vec![],
            progress_bytes: 0,
            sha256: None,
        },
        Some(u) => UploadStatus {
            missing: ranges::missing(&u.received, u.target.size),
            received_bytes: ranges::covered(&u.received),
            size: u.target.size,
            state: u.state,
            progress_bytes: progress,
            sha256: Some(u.target.sha256),
        },
    }
}

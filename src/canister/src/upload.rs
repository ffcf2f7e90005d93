//! Chunked model upload into the inactive model slot.
//!
//! `begin(size, sha256)` → `chunk(offset, bytes)` in any order, resendable →
//! `finalize()` starts the pipeline (hash, parse, load) that runs across
//! messages; the slot becomes active only if all of it succeeds, so a bad
//! upload never disturbs the model in use. A shard's coordinator sends only
//! the shard's part of the file (`UploadBegin::parts`), which the shard loads
//! without hashing: the coordinator verified the whole file.

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

/// Starts an upload; `from_coordinator`: the caller is this shard's
/// coordinator, the only one who may send a partial upload.
pub fn begin(req: UploadBegin, from_coordinator: bool) -> ApiResult<UploadStatus> {
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
    let parts = match req.parts {
        None => None,
        Some(_) if !from_coordinator => {
            return Err(ApiError::NotAuthorized(
                "only a shard's coordinator may send part of a file (`parts`)".into(),
            ))
        }
        Some(list) => {
            let mut merged = Vec::new();
            for (start, end) in list {
                if start >= end || end > req.size {
                    return Err(ApiError::InvalidArgument(format!(
                        "part [{start}, {end}) is empty or outside the file of {} bytes",
                        req.size
                    )));
                }
                ranges::insert(&mut merged, start, end);
            }
            Some(merged)
        }
    };
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
            parts,
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
    if let Some(parts) = &up.parts {
        if !ranges::contains(parts, offset, end) {
            return Err(ApiError::InvalidArgument(format!(
                "a chunk at [{offset}, {end}) is not inside one of the parts this upload declared"
            )));
        }
    }
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
    let missing = missing(&up);
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
    let pipeline = match up.parts {
        Some(_) => Pipeline::load_verified(up.target.clone()),
        None => Pipeline::verify_and_load(up.target.clone()),
    };
    state::mutate(|s| {
        s.pipeline = Some(pipeline);
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
            missing: missing(&u),
            received_bytes: ranges::covered(&u.received),
            size: u.target.size,
            state: u.state,
            progress_bytes: progress,
            sha256: Some(u.target.sha256),
        },
    }
}

/// What the upload still lacks: of the whole file, or of its parts.
fn missing(u: &UploadRecord) -> Vec<(u64, u64)> {
    match &u.parts {
        Some(parts) => ranges::missing_of(&u.received, parts),
        None => ranges::missing(&u.received, u.target.size),
    }
}

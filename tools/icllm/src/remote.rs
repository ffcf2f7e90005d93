//! icllm on a real network (a replica, `icllm replica`, or mainnet)
//! through `ic-agent`: identities as dfx and icp-cli store them, deploying
//! the canister, uploading a model with resumption, and jobs.

use anyhow::{anyhow, bail, Context, Result};
use candid::utils::{ArgumentDecoder, ArgumentEncoder};
use candid::{decode_args, encode_args, CandidType, Deserialize, Nat, Principal};
use futures_util::stream::{self, StreamExt};
use ic_agent::identity::{AnonymousIdentity, BasicIdentity, Prime256v1Identity, Secp256k1Identity};
use ic_agent::{Agent, AgentError, Identity};
use icllm_api::*;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Mainnet's API boundary.
pub const MAINNET_URL: &str = "https://icp-api.io";
/// dfx's local replica.
pub const LOCAL_URL: &str = "http://127.0.0.1:4943";
/// Largest `upload_chunk` payload: the canister's limit.
pub const MAX_CHUNK_BYTES: usize = 2 * 1024 * 1024 - 64 * 1024;
/// Chunks of a wasm module in the management canister's chunk store.
const WASM_CHUNK_BYTES: usize = 1 << 20;
/// A module above this goes through the chunk store (the ingress limit is
/// 2 MiB, the envelope needs room).
const WASM_INLINE_MAX: usize = 1_900_000;

/// `local`, `ic` or a URL.
pub fn network_url(network: &str) -> String {
    match network {
        "local" => LOCAL_URL.to_string(),
        "ic" | "mainnet" => MAINNET_URL.to_string(),
        url => url.trim_end_matches('/').to_string(),
    }
}

/// An identity from a PEM file as dfx (`~/.config/dfx/identity/<name>/identity.pem`)
/// and icp-cli write them: Ed25519 (PKCS#8), secp256k1 (SEC1 `EC PRIVATE KEY`
/// or PKCS#8) or P-256.
/// `None`: the anonymous identity.
pub fn load_identity(pem: Option<&Path>) -> Result<Arc<dyn Identity>> {
    let Some(path) = pem else {
        return Ok(Arc::new(AnonymousIdentity));
    };
    let path = resolve_identity_path(path);
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read identity {}", path.display()))?;
    if text.contains("ENCRYPTED") {
        bail!(
            "{} is an encrypted identity: export it unencrypted (`dfx identity export NAME` or `icp identity export NAME`) and pass that file",
            path.display()
        );
    }
    // dfx writes Ed25519 keys as PKCS#8 and secp256k1 keys as SEC1 (`EC
    // PRIVATE KEY`); icp-cli may write either curve as PKCS#8: try each.
    if let Ok(id) = Secp256k1Identity::from_pem(text.as_bytes()) {
        return Ok(Arc::new(id));
    }
    if let Ok(id) = BasicIdentity::from_pem(text.as_bytes()) {
        return Ok(Arc::new(id));
    }
    if let Ok(id) = Prime256v1Identity::from_pem(text.as_bytes()) {
        return Ok(Arc::new(id));
    }
    bail!(
        "{} holds no Ed25519, secp256k1 or P-256 private key in PEM form",
        path.display()
    )
}

/// A path, or the name of a dfx identity.
fn resolve_identity_path(path: &Path) -> PathBuf {
    if path.exists() || path.components().count() > 1 {
        return path.to_path_buf();
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
    let dfx = home.join(".config/dfx/identity").join(path).join("identity.pem");
    if dfx.exists() {
        dfx
    } else {
        path.to_path_buf()
    }
}

/// An agent for `url`; off mainnet the root key is fetched from the replica.
pub async fn connect(url: &str, identity: Arc<dyn Identity>) -> Result<Agent> {
    let agent = Agent::builder()
        .with_url(url)
        .with_arc_identity(identity)
        .with_max_polling_time(Duration::from_secs(600))
        .build()
        .with_context(|| format!("cannot create an agent for {url}"))?;
    if url != MAINNET_URL {
        agent
            .fetch_root_key()
            .await
            .with_context(|| format!("cannot reach the replica at {url}"))?;
    }
    Ok(agent)
}

/// A rejection or transport error said in a user's terms.
fn agent_error(method: &str, canister: Principal, e: AgentError) -> anyhow::Error {
    let text = e.to_string();
    if text.contains("out of cycles") {
        return anyhow!("canister {canister} is out of cycles: top it up (`dfx canister deposit-cycles` or `icp canister top-up`), then retry. ({method}: {text})");
    }
    if text.contains("is not a controller") || text.contains("Only controllers") {
        return anyhow!("the identity is not a controller of canister {canister}: use a controller's identity (--identity). ({method}: {text})");
    }
    anyhow!("{method} on {canister}: {text}")
}

/// The canister's own refusal, said in a user's terms.
fn api_error(method: &str, canister: Principal, e: ApiError) -> anyhow::Error {
    match e {
        ApiError::NotAuthorized(m) => {
            anyhow!("{method}: not allowed ({m}); use a controller's identity (--identity) for canister {canister}")
        }
        other => anyhow!("{method}: {other:?}"),
    }
}

fn decode_reply<R: for<'a> ArgumentDecoder<'a>>(method: &str, bytes: &[u8]) -> Result<R> {
    decode_args(bytes).with_context(|| format!("decoding the reply of {method}"))
}

/// Calls `method` as an update and decodes the reply.
pub async fn update<A: ArgumentEncoder, R: for<'a> ArgumentDecoder<'a>>(
    agent: &Agent,
    canister: Principal,
    method: &str,
    args: A,
) -> Result<R> {
    update_at(agent, canister, canister, method, args).await
}

/// An update to `canister` routed by `effective` (the target canister of a
/// management canister call).
async fn update_at<A: ArgumentEncoder, R: for<'a> ArgumentDecoder<'a>>(
    agent: &Agent,
    canister: Principal,
    effective: Principal,
    method: &str,
    args: A,
) -> Result<R> {
    let bytes = agent
        .update(&canister, method)
        .with_effective_canister_id(effective)
        .with_arg(encode_args(args)?)
        .call_and_wait()
        .await
        .map_err(|e| agent_error(method, effective, e))?;
    decode_reply(method, &bytes)
}

/// Calls `method` as a query and decodes the reply.
pub async fn query<A: ArgumentEncoder, R: for<'a> ArgumentDecoder<'a>>(
    agent: &Agent,
    canister: Principal,
    method: &str,
    args: A,
) -> Result<R> {
    let bytes = agent
        .query(&canister, method)
        .with_arg(encode_args(args)?)
        .call()
        .await
        .map_err(|e| agent_error(method, canister, e))?;
    decode_reply(method, &bytes)
}

async fn management<A: ArgumentEncoder, R: for<'a> ArgumentDecoder<'a>>(
    agent: &Agent,
    effective: Principal,
    method: &str,
    args: A,
) -> Result<R> {
    update_at(agent, Principal::management_canister(), effective, method, args).await
}

#[derive(CandidType, Deserialize)]
struct CanisterIdRecord {
    canister_id: Principal,
}

#[derive(CandidType)]
struct CreateArgs {
    amount: Option<Nat>,
    settings: Option<()>,
}

#[derive(CandidType, Deserialize, Clone)]
enum InstallMode {
    #[serde(rename = "install")]
    Install,
    #[serde(rename = "upgrade")]
    Upgrade(Option<()>),
}

#[derive(CandidType)]
struct InstallCodeArgs<'a> {
    mode: InstallMode,
    canister_id: Principal,
    wasm_module: &'a serde_bytes::Bytes,
    arg: &'a serde_bytes::Bytes,
}

#[derive(CandidType, Deserialize)]
struct ChunkHash {
    hash: serde_bytes::ByteBuf,
}

#[derive(CandidType)]
struct UploadChunkArgs<'a> {
    canister_id: Principal,
    chunk: &'a serde_bytes::Bytes,
}

#[derive(CandidType)]
struct InstallChunkedCodeArgs<'a> {
    mode: InstallMode,
    target_canister: Principal,
    store_canister: Option<Principal>,
    chunk_hashes_list: Vec<ChunkHash>,
    wasm_module_hash: &'a serde_bytes::Bytes,
    arg: &'a serde_bytes::Bytes,
}

#[derive(CandidType, Deserialize)]
struct StatusReply {
    module_hash: Option<serde_bytes::ByteBuf>,
}

/// What `deploy` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deployed {
    Installed,
    Upgraded,
}

/// Installs `wasm` (with `init_arg`) into `canister`, creating it when
/// `None` (provisional cycles: local replicas only), or upgrades it with
/// `upgrade_arg` when it already holds code. Modules above the ingress
/// limit go through the management canister's chunk store.
pub async fn deploy(
    agent: &Agent,
    canister: Option<Principal>,
    wasm: &[u8],
    init_arg: Vec<u8>,
    upgrade_arg: Vec<u8>,
    log: impl Fn(&str),
) -> Result<(Principal, Deployed)> {
    let id = match canister {
        Some(id) => id,
        None => {
            // The effective id only routes the call to a subnet: the first
            // canister id of the local ranges.
            let effective = local_ic::canister_id(0);
            let (created,): (CanisterIdRecord,) = management(
                agent,
                effective,
                "provisional_create_canister_with_cycles",
                (CreateArgs {
                    amount: Some(Nat::from(100_000_000_000_000u128)),
                    settings: None,
                },),
            )
            .await
            .context("creating a canister (provisional cycles exist on local replicas only; on mainnet create it with dfx or icp-cli and pass --canister-id)")?;
            log(&format!("created canister {}", created.canister_id));
            created.canister_id
        }
    };
    let (status,): (StatusReply,) =
        management(agent, id, "canister_status", (CanisterIdRecord { canister_id: id },)).await?;
    let (mode, arg, action) = if status.module_hash.is_some() {
        (InstallMode::Upgrade(None), upgrade_arg, Deployed::Upgraded)
    } else {
        (InstallMode::Install, init_arg, Deployed::Installed)
    };
    let arg = serde_bytes::Bytes::new(&arg);
    if wasm.len() <= WASM_INLINE_MAX {
        let args = InstallCodeArgs {
            mode,
            canister_id: id,
            wasm_module: serde_bytes::Bytes::new(wasm),
            arg,
        };
        let () = management(agent, id, "install_code", (args,)).await?;
    } else {
        let () = management(agent, id, "clear_chunk_store", (CanisterIdRecord { canister_id: id },)).await?;
        let mut hashes = Vec::new();
        for (i, chunk) in wasm.chunks(WASM_CHUNK_BYTES).enumerate() {
            log(&format!(
                "wasm chunk {} of {}",
                i + 1,
                wasm.len().div_ceil(WASM_CHUNK_BYTES)
            ));
            let (h,): (ChunkHash,) = management(
                agent,
                id,
                "upload_chunk",
                (UploadChunkArgs {
                    canister_id: id,
                    chunk: serde_bytes::Bytes::new(chunk),
                },),
            )
            .await?;
            hashes.push(h);
        }
        let module_hash: [u8; 32] = Sha256::digest(wasm).into();
        let args = InstallChunkedCodeArgs {
            mode,
            target_canister: id,
            store_canister: None,
            chunk_hashes_list: hashes,
            wasm_module_hash: serde_bytes::Bytes::new(&module_hash),
            arg,
        };
        let () = management(agent, id, "install_chunked_code", (args,)).await?;
        let () = management(agent, id, "clear_chunk_store", (CanisterIdRecord { canister_id: id },)).await?;
    }
    Ok((id, action))
}

/// How `upload` proceeds.
#[derive(Debug, Clone)]
pub struct UploadOptions {
    pub chunk_bytes: usize,
    /// Chunks in flight at once.
    pub parallel: usize,
    /// Attempts per chunk before giving up.
    pub attempts: u32,
    /// Stop (as if interrupted) after sending this many chunks: for tests
    /// of resumption.
    pub stop_after_chunks: Option<usize>,
}

impl Default for UploadOptions {
    fn default() -> Self {
        Self {
            chunk_bytes: MAX_CHUNK_BYTES,
            parallel: 4,
            attempts: 5,
            stop_after_chunks: None,
        }
    }
}

/// What `upload` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadSummary {
    /// Chunks sent by this run.
    pub chunks_sent: usize,
    /// Bytes sent by this run.
    pub bytes_sent: u64,
    /// Bytes the canister already held from an interrupted run.
    pub bytes_resumed: u64,
    /// Chunks resent after a failed attempt.
    pub retries: usize,
    pub finished: bool,
}

/// Progress callbacks of `upload`.
pub trait UploadProgress: Sync {
    fn sending(&self, _total: u64, _already: u64) {}
    fn sent(&self, _bytes: u64) {}
    fn finalizing(&self, _status: &UploadStatus) {}
}

impl UploadProgress for () {}

/// `[start, end)` ranges of `size` bytes cut into chunks of `chunk` bytes.
pub fn chunk_ranges(missing: &[(u64, u64)], chunk: usize) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for &(start, end) in missing {
        let mut at = start;
        while at < end {
            let next = (at + chunk as u64).min(end);
            out.push((at, next));
            at = next;
        }
    }
    out
}

/// Runs `op` until it succeeds or has failed `attempts` times, with a
/// growing pause; `retries` counts the failed attempts. Only for calls
/// that are safe to send again (queries, and updates whose effect a
/// resend repeats harmlessly).
async fn with_retries<T, F: std::future::Future<Output = Result<T>>>(
    attempts: u32,
    retries: &std::sync::atomic::AtomicUsize,
    mut op: impl FnMut() -> F,
) -> Result<T> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if attempt >= attempts => return Err(e.context(format!("failed {attempt} times"))),
            Err(_) => {
                retries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200 << attempt.min(5))).await;
            }
        }
    }
}

/// Uploads `bytes` as the canister's model: resumes an interrupted upload
/// of the same file (same size and SHA-256) by sending only the missing
/// ranges, sends chunks in parallel with retries, then finalizes and
/// follows verification and loading until the model is active.
pub async fn upload(
    agent: &Agent,
    canister: Principal,
    bytes: &[u8],
    opts: &UploadOptions,
    progress: &dyn UploadProgress,
) -> Result<UploadSummary> {
    if opts.chunk_bytes == 0 || opts.chunk_bytes > MAX_CHUNK_BYTES {
        bail!("chunk size must be 1 to {MAX_CHUNK_BYTES} bytes");
    }
    let sha: [u8; 32] = Sha256::digest(bytes).into();
    let size = bytes.len() as u64;
    let retries = std::sync::atomic::AtomicUsize::new(0);
    let status_now = || async {
        let (r,): (ApiResult<UploadStatus>,) =
            with_retries(opts.attempts, &retries, || query(agent, canister, "upload_status", ())).await?;
        r.map_err(|e| api_error("upload_status", canister, e))
    };
    let status = status_now().await?;
    let same_file = status.size == size && status.sha256.as_deref() == Some(&sha[..]);
    let missing = match status.state {
        UploadState::Receiving if same_file => status.missing.clone(),
        UploadState::Verifying | UploadState::Loading if same_file => Vec::new(),
        _ => {
            let begin = UploadBegin {
                size,
                sha256: sha.to_vec(),
                parts: None,
            };
            // A resent upload_begin only begins the same empty upload again.
            let (r,): (ApiResult<UploadStatus>,) = with_retries(opts.attempts, &retries, || {
                update(agent, canister, "upload_begin", (begin.clone(),))
            })
            .await?;
            r.map_err(|e| api_error("upload_begin", canister, e))?.missing
        }
    };
    let to_send: u64 = missing.iter().map(|(s, e)| e - s).sum();
    let resumed = size - to_send;
    progress.sending(size, resumed);
    let mut ranges = chunk_ranges(&missing, opts.chunk_bytes);
    let interrupted = opts.stop_after_chunks.is_some_and(|n| n < ranges.len());
    if let Some(n) = opts.stop_after_chunks {
        ranges.truncate(n);
    }
    let results: Vec<Result<u64>> = stream::iter(ranges.iter().copied())
        .map(|(start, end)| {
            let retries = &retries;
            async move {
                let chunk = serde_bytes::ByteBuf::from(bytes[start as usize..end as usize].to_vec());
                let (r,): (ApiResult<UploadStatus>,) = with_retries(opts.attempts, retries, || {
                    update(agent, canister, "upload_chunk", (start, chunk.clone()))
                })
                .await
                .with_context(|| format!("upload_chunk at {start}"))?;
                // The canister's refusal will not change on a resend.
                r.map_err(|e| api_error("upload_chunk", canister, e))?;
                progress.sent(end - start);
                Ok(end - start)
            }
        })
        .buffer_unordered(opts.parallel.max(1))
        .collect()
        .await;
    let mut bytes_sent = 0;
    for r in &results {
        match r {
            Ok(n) => bytes_sent += n,
            Err(e) => bail!("{e:#}"),
        }
    }
    let mut summary = UploadSummary {
        chunks_sent: results.len(),
        bytes_sent,
        bytes_resumed: resumed,
        retries: retries.load(std::sync::atomic::Ordering::Relaxed),
        finished: false,
    };
    if interrupted {
        return Ok(summary);
    }
    let mut finalize_attempts = 0;
    loop {
        let status = status_now().await?;
        if status.state != UploadState::Receiving {
            break;
        }
        if !status.missing.is_empty() {
            bail!("the canister still misses {:?} after the upload", status.missing);
        }
        // Sent again only while the canister says it has not started.
        finalize_attempts += 1;
        let sent: Result<(ApiResult<UploadStatus>,)> = update(agent, canister, "upload_finalize", ()).await;
        match sent {
            Ok((r,)) => {
                r.map_err(|e| api_error("upload_finalize", canister, e))?;
                break;
            }
            Err(e) if finalize_attempts >= opts.attempts => return Err(e),
            Err(_) => {
                retries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200 << finalize_attempts.min(5))).await;
            }
        }
    }
    loop {
        let status = status_now().await?;
        progress.finalizing(&status);
        match &status.state {
            UploadState::Done => break,
            UploadState::Failed(reason) => bail!("the canister refused the model: {reason}"),
            UploadState::Idle => bail!("the upload vanished (another client began a new one?)"),
            _ => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
    let (info,): (ModelInfo,) =
        with_retries(opts.attempts, &retries, || query(agent, canister, "model_info", ())).await?;
    if info.sha256 != sha {
        bail!(
            "the canister's active model has SHA-256 {} but the file has {}",
            hex(&info.sha256),
            hex(&sha)
        );
    }
    summary.finished = true;
    summary.retries = retries.load(std::sync::atomic::Ordering::Relaxed);
    Ok(summary)
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Starts a job; its id.
pub async fn start_job(agent: &Agent, canister: Principal, req: JobRequest) -> Result<JobId> {
    let (r,): (ApiResult<JobId>,) = update(agent, canister, "start_job", (req,)).await?;
    r.map_err(|e| api_error("start_job", canister, e))
}

pub async fn poll(agent: &Agent, canister: Principal, id: JobId, since: u32) -> Result<JobView> {
    let (r,): (ApiResult<JobView>,) = query(agent, canister, "poll", (id, Some(since))).await?;
    r.map_err(|e| api_error("poll", canister, e))
}

pub async fn cancel(agent: &Agent, canister: Principal, id: JobId) -> Result<JobStatus> {
    let (r,): (ApiResult<JobStatus>,) = update(agent, canister, "cancel", (id,)).await?;
    r.map_err(|e| api_error("cancel", canister, e))
}

/// Polls job `id` until it ends, handing each new piece of text to `on_text`.
pub async fn follow(
    agent: &Agent,
    canister: Principal,
    id: JobId,
    mut on_text: impl FnMut(&JobView),
) -> Result<JobView> {
    let mut since = 0;
    loop {
        let view = poll(agent, canister, id, since).await?;
        on_text(&view);
        since = view.next_since;
        if !view.status.is_active() {
            return Ok(view);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

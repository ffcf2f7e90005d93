//! The icllm canister running in the local IC runtime, driven through its
//! real candid API: install, chunked upload, jobs, timers, upgrades.
//! `icllm run`, `icllm bench` and the integration tests all go through here.

use anyhow::{anyhow, bail, Context, Result};
use candid::utils::{ArgumentDecoder, ArgumentEncoder};
use candid::{decode_args, encode_args, Principal};
use icllm_api::IC_UPDATE_INSTRUCTION_LIMIT;
use icllm_api::*;
use local_ic::{CanisterId, Limits, MemoryCharges, MessageKind, MessageReport, Runtime, RuntimeConfig};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Bytes per `upload_chunk` call: under the 2 MiB ingress limit with room for the envelope.
pub const UPLOAD_CHUNK_BYTES: usize = 1_900_000;
/// Simulated time between scheduler rounds.
pub const ROUND: Duration = Duration::from_millis(1);

/// The workspace root (two levels above this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root exists")
}

/// Where `tools/build-wasm.sh` puts the canister wasm.
pub fn default_wasm_path() -> PathBuf {
    canister_wasm_path("icllm_canister")
}

/// The Rust toolchain's standard library for wasm32, without which cargo
/// fails with "can't find crate for `core`": checked first, to say what to do.
fn check_wasm32_target() -> Result<()> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = std::process::Command::new(&rustc)
        .current_dir(workspace_root())
        .args(["--print", "sysroot"])
        .output()
        .with_context(|| format!("running {rustc} --print sysroot"))?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if out.status.success() && !sysroot.join("lib/rustlib/wasm32-unknown-unknown").is_dir() {
        bail!(
            "the canister is built for wasm32-unknown-unknown, which this Rust toolchain ({}) lacks; \
             install it with `rustup target add wasm32-unknown-unknown` (or tools/setup.sh), \
             or pass --wasm FILE with a prebuilt canister",
            sysroot.display()
        );
    }
    Ok(())
}

/// Where the `canister` profile puts the wasm of a workspace canister (its
/// library name: `icllm_canister`, `storyteller`, …).
pub fn canister_wasm_path(lib_name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    target.join(format!("wasm32-unknown-unknown/canister/{lib_name}.wasm"))
}

/// Builds a workspace canister with cargo (profile `canister`, SIMD128):
/// the product (`icllm-canister`) or a test canister. Its wasm is at
/// [`canister_wasm_path`].
pub fn build_package_wasm(package: &str) -> Result<()> {
    check_wasm32_target()?;
    let status = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(workspace_root())
        .args([
            "build",
            "--profile",
            "canister",
            "--target",
            "wasm32-unknown-unknown",
            "-p",
            package,
        ])
        .status()
        .with_context(|| format!("running cargo to build {package} (pass --wasm FILE to use a prebuilt one)"))?;
    if !status.success() {
        bail!("building {package} failed ({status})");
    }
    Ok(())
}

/// Builds the canister wasm with cargo (release profile `canister`, SIMD128).
pub fn build_wasm() -> Result<PathBuf> {
    build_package_wasm("icllm-canister")?;
    Ok(default_wasm_path())
}

/// The canister wasm: `path` if given, else the default build output, built
/// if missing.
pub fn find_or_build_wasm(path: Option<&Path>) -> Result<Vec<u8>> {
    let path = match path {
        Some(p) => p.to_path_buf(),
        None if default_wasm_path().exists() => default_wasm_path(),
        None => {
            eprintln!("building the canister wasm (once)…");
            build_wasm()?
        }
    };
    std::fs::read(&path).with_context(|| format!("reading canister wasm {}", path.display()))
}

/// Where `tools/build-wasm64.sh` puts the wasm64 build of the canister.
pub fn wasm64_path() -> PathBuf {
    canister_wasm_path("icllm_canister")
        .parent()
        .and_then(|p| p.parent())
        .and_then(|p| p.parent())
        .expect("the wasm path has a target directory")
        .join("wasm64-unknown-unknown/canister/icllm_canister.wasm")
}

/// The canister's wasm64 build, built with `tools/build-wasm64.sh` (nightly
/// Rust with build-std) if missing.
pub fn find_or_build_wasm64() -> Result<Vec<u8>> {
    let path = wasm64_path();
    if !path.exists() {
        eprintln!("building the wasm64 canister (once)…");
        let status = std::process::Command::new("bash")
            .arg(workspace_root().join("tools/build-wasm64.sh"))
            .status()
            .context("running tools/build-wasm64.sh")?;
        if !status.success() {
            bail!("tools/build-wasm64.sh failed ({status})");
        }
    }
    std::fs::read(&path).with_context(|| format!("reading canister wasm {}", path.display()))
}

/// The canister wasm: `path` if given, else rebuilt from the workspace
/// sources (a no-op when up to date), so the CLI never runs a stale build.
pub fn build_or_read_wasm(path: Option<&Path>) -> Result<Vec<u8>> {
    let path = match path {
        Some(p) => p.to_path_buf(),
        None => build_wasm()?,
    };
    std::fs::read(&path).with_context(|| format!("reading canister wasm {}", path.display()))
}

/// The principal that installs and controls the canister in local runs.
pub fn controller() -> Principal {
    Principal::from_slice(&[0xC0, 0x17, 0x01])
}

/// A distinct non-anonymous user principal for tests.
pub fn user(n: u8) -> Principal {
    Principal::from_slice(&[0x05, 0xE5, n])
}

/// A local IC runtime enforcing `update_limit` instructions per
/// update/timer message, optionally profiling (`RuntimeConfig::profile`),
/// under the given memory charges.
pub fn new_runtime(update_limit: u64, profile: bool, memory_charges: MemoryCharges) -> Runtime {
    let limits = Limits {
        update: update_limit,
        ..Limits::default()
    };
    // Compiled modules are kept beside the build (`$LOCAL_IC_MODULE_CACHE`
    // wins): Cranelift needs seconds for the canister, loading milliseconds.
    let defaults = RuntimeConfig::default();
    let module_cache_dir = defaults
        .module_cache_dir
        .clone()
        .or_else(|| default_wasm_path().parent().map(|p| p.join("local-ic-module-cache")));
    Runtime::new(RuntimeConfig {
        limits,
        module_cache_dir,
        profile,
        memory_charges,
        // The canister's `ic_cdk::println!` output, for debugging.
        print_debug: std::env::var_os("ICLLM_DEBUG_PRINT").is_some(),
        ..defaults
    })
}

pub struct LocalCanister {
    pub rt: Runtime,
    pub id: CanisterId,
    pub wasm: Vec<u8>,
}

impl LocalCanister {
    /// Installs the canister with `init`, the runtime enforcing `update_limit`
    /// instructions per update/timer message.
    pub fn install(wasm: Vec<u8>, init: InitArgs, update_limit: u64) -> Result<LocalCanister> {
        Self::install_with(wasm, init, update_limit, false, MemoryCharges::default())
    }

    /// [`Self::install`], optionally in a profiling runtime
    /// (`RuntimeConfig::profile`: a counter per wasm function, read with
    /// `rt.profile(id)`; slower, same counts), under the given memory
    /// charges (`RuntimeConfig::memory_charges`).
    pub fn install_with(
        wasm: Vec<u8>,
        init: InitArgs,
        update_limit: u64,
        profile: bool,
        memory_charges: MemoryCharges,
    ) -> Result<LocalCanister> {
        let mut rt = new_runtime(update_limit, profile, memory_charges);
        let arg = encode_args((Some(init),))?;
        let id = rt
            .install(&wasm, arg, vec![controller()])
            .map_err(|e| anyhow!("install: {e}"))?;
        Ok(LocalCanister { rt, id, wasm })
    }

    /// The canister `id` of the same runtime, through this handle's methods
    /// (another canister of a sharded model, say); then back.
    pub fn on_canister<R>(&mut self, id: CanisterId, f: impl FnOnce(&mut LocalCanister) -> R) -> R {
        let own = std::mem::replace(&mut self.id, id);
        let r = f(self);
        self.id = own;
        r
    }

    /// An update call with typed arguments and reply.
    pub fn update<A: ArgumentEncoder, R: for<'a> ArgumentDecoder<'a>>(
        &mut self,
        caller: Principal,
        method: &str,
        args: A,
    ) -> Result<R, local_ic::Error> {
        let bytes = encode_args(args).expect("candid encoding of our own types");
        let reply = self.rt.update(self.id, caller, method, bytes)?;
        Ok(decode_args(&reply.bytes).unwrap_or_else(|e| panic!("{method} replied with unexpected candid: {e}")))
    }

    /// A query call with typed arguments and reply.
    pub fn query<A: ArgumentEncoder, R: for<'a> ArgumentDecoder<'a>>(
        &mut self,
        caller: Principal,
        method: &str,
        args: A,
    ) -> Result<R, local_ic::Error> {
        let bytes = encode_args(args).expect("candid encoding of our own types");
        let reply = self.rt.query(self.id, caller, method, bytes)?;
        Ok(decode_args(&reply.bytes).unwrap_or_else(|e| panic!("{method} replied with unexpected candid: {e}")))
    }

    /// One scheduler round: advance the clock and run the timer messages due.
    pub fn round(&mut self) -> Vec<MessageReport> {
        self.rt.advance_time(ROUND)
    }

    /// Uploads `bytes` as the model through the chunk API (chunks in the
    /// order given by `order`, default ascending), finalizes, and runs
    /// rounds until the model is verified and loaded.
    pub fn upload_model(&mut self, bytes: &[u8], sha256: [u8; 32]) -> Result<UploadStatus> {
        // The upload's ingress calls run under the IC's 40 B whatever budget
        // the canister gives its own background messages: a 2 MB chunk,
        // copied into fresh heap and stable pages, costs ~20 M under the
        // memory tracker's charges.
        let limits = self.rt.limits();
        self.rt.set_limits(Limits {
            update: limits.update.max(IC_UPDATE_INSTRUCTION_LIMIT),
            ..limits
        });
        let sent = self.send_upload(bytes, sha256);
        self.rt.set_limits(limits);
        sent?;
        self.finalize_upload()
    }

    fn send_upload(&mut self, bytes: &[u8], sha256: [u8; 32]) -> Result<()> {
        let begin = UploadBegin {
            size: bytes.len() as u64,
            sha256: sha256.to_vec(),
            parts: None,
        };
        let (r,): (ApiResult<UploadStatus>,) = self.update(controller(), "upload_begin", (begin,))?;
        r.map_err(|e| anyhow!("upload_begin: {e:?}"))?;
        for (i, chunk) in bytes.chunks(UPLOAD_CHUNK_BYTES).enumerate() {
            let offset = (i * UPLOAD_CHUNK_BYTES) as u64;
            let (r,): (ApiResult<UploadStatus>,) = self.update(
                controller(),
                "upload_chunk",
                (offset, serde_bytes::ByteBuf::from(chunk.to_vec())),
            )?;
            r.map_err(|e| anyhow!("upload_chunk at {offset}: {e:?}"))?;
        }
        Ok(())
    }

    /// Finalizes and runs rounds until the upload is done or failed.
    pub fn finalize_upload(&mut self) -> Result<UploadStatus> {
        let (r,): (ApiResult<UploadStatus>,) = self.update(controller(), "upload_finalize", ())?;
        let mut status = r.map_err(|e| anyhow!("upload_finalize: {e:?}"))?;
        for _ in 0..100_000 {
            match &status.state {
                UploadState::Done => return Ok(status),
                UploadState::Failed(reason) => bail!("the upload failed: {reason}"),
                _ => {}
            }
            self.round();
            let (r,): (ApiResult<UploadStatus>,) = self.query(controller(), "upload_status", ())?;
            status = r.map_err(|e| anyhow!("upload_status: {e:?}"))?;
        }
        bail!("the upload did not finish")
    }

    /// Sets the instruction limit of update/timer messages, in the runtime
    /// and in the canister's budget (`set_message_instruction_limit`).
    pub fn set_message_limit(&mut self, limit: u64) -> Result<()> {
        let mut limits = self.rt.limits();
        limits.update = limit;
        self.rt.set_limits(limits);
        let (r,): (ApiResult<()>,) = self.update(controller(), "set_message_instruction_limit", (limit,))?;
        r.map_err(|e| anyhow!("set_message_instruction_limit: {e:?}"))
    }

    pub fn start_job(&mut self, caller: Principal, req: JobRequest) -> Result<ApiResult<JobId>, local_ic::Error> {
        self.update(caller, "start_job", (req,)).map(|(r,)| r)
    }

    pub fn poll(&mut self, caller: Principal, id: JobId, since: u32) -> Result<ApiResult<JobView>, local_ic::Error> {
        self.query(caller, "poll", (id, Some(since))).map(|(r,)| r)
    }

    pub fn step(&mut self, caller: Principal, id: JobId) -> Result<ApiResult<StepProgress>, local_ic::Error> {
        self.update(caller, "step", (id,)).map(|(r,)| r)
    }

    /// Upgrades the canister to `wasm` (another release), which is then the
    /// one [`LocalCanister::upgrade`] reinstalls.
    pub fn upgrade_to(&mut self, wasm: Vec<u8>) -> Result<MessageReport> {
        self.wasm = wasm;
        self.upgrade()
    }

    /// Upgrades the canister to its own wasm (heap reset, stable memory kept).
    pub fn upgrade(&mut self) -> Result<MessageReport> {
        let arg = encode_args((None::<InitArgs>,))?;
        let wasm = self.wasm.clone();
        self.rt
            .upgrade(self.id, &wasm, arg, controller())
            .map_err(|e| anyhow!("upgrade: {e}"))
    }

    /// Runs rounds until job `id` is no longer active, calling `on_view`
    /// with each new poll (text since the previous one). Returns the final view.
    pub fn run_job(&mut self, caller: Principal, id: JobId, mut on_view: impl FnMut(&JobView)) -> Result<JobView> {
        self.run_job_while(caller, id, |v| {
            on_view(v);
            true
        })
    }

    /// Like [`Self::run_job`], but stops early (returning the last view) when
    /// `on_view` returns false.
    pub fn run_job_while(
        &mut self,
        caller: Principal,
        id: JobId,
        mut on_view: impl FnMut(&JobView) -> bool,
    ) -> Result<JobView> {
        let mut since = 0;
        for _ in 0..10_000_000u64 {
            let view = self.poll(caller, id, since)?.map_err(|e| anyhow!("poll: {e:?}"))?;
            if !on_view(&view) {
                return Ok(view);
            }
            since = view.next_since;
            if !view.status.is_active() {
                return self.poll(caller, id, 0)?.map_err(|e| anyhow!("poll: {e:?}"));
            }
            self.round();
        }
        bail!("job {id} did not finish")
    }
}

/// The canister's internal method that runs one background job step.
pub const STEP_METHOD: &str = "<icllm internal> step";

/// What went wrong among `reports`: messages that trapped (queries left
/// out), and job steps re-run after a trapped step (the scheduler retries
/// with half the budget).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrapStats {
    pub traps: u64,
    pub retries: u64,
}

pub fn trap_stats(reports: &[MessageReport]) -> TrapStats {
    let mut stats = TrapStats::default();
    let mut step_trapped = false;
    for r in reports.iter().filter(|r| r.kind != MessageKind::Query) {
        let step = r.method == STEP_METHOD;
        if step && step_trapped {
            stats.retries += 1;
        }
        if step {
            step_trapped = r.error.is_some();
        }
        stats.traps += r.error.is_some() as u64;
    }
    stats
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

//! The network commands end to end, as a user runs them: `icllm replica`
//! on a loopback port, `icllm deploy` with a PEM identity in dfx's formats
//! (testdata/identities, made with openssl), `icllm upload` interrupted and
//! resumed, `icllm job start --wait`. With gemma-3-270m in the model cache
//! (tools/fetch-models) also a 253 MB upload whose model continues as
//! llama.cpp does.

mod common;

use candid::Decode;
use common::{cached_model, ReplicaProcess};
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// From models/README.md: llama.cpp's greedy continuation of "Joe loves writing stories".
const GOLDEN_IDS: [u32; 10] = [426, 346, 397, 355, 267, 337, 335, 345, 267, 422];

fn repo(path: &str) -> String {
    format!("{}/../../{path}", env!("CARGO_MANIFEST_DIR"))
}

fn icllm(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_icllm"))
        .args(args)
        .output()
        .expect("icllm runs");
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn ok(args: &[&str]) -> (String, String) {
    let (success, stdout, stderr) = icllm(args);
    assert!(success, "icllm {args:?} failed: {stderr}");
    (stdout, stderr)
}

fn stat(stderr: &str, key: &str) -> u64 {
    stderr
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}: ")))
        .unwrap_or_else(|| panic!("no `{key}:` in\n{stderr}"))
        .trim()
        .parse()
        .unwrap()
}

/// `icllm job start --wait --print-ids`, greedy: the ids, stdout and stderr.
fn greedy_job(url: &str, id: &str, identity: &str, prompt: &str, n: usize) -> (Vec<u32>, String, String) {
    let n = n.to_string();
    let (stdout, stderr) = ok(&[
        "job",
        "start",
        "--canister-id",
        id,
        "--network",
        url,
        "--identity",
        identity,
        "--prompt",
        prompt,
        "-n",
        &n,
        "--temperature",
        "0",
        "--wait",
        "--print-ids",
    ]);
    let ids = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    (ids, stdout, stderr)
}

fn deploy(url: &str, identity: &str) -> String {
    let (stdout, _) = ok(&["deploy", "--network", url, "--identity", identity]);
    stdout.trim().to_string()
}

#[test]
fn deploy_upload_resume_and_generate_through_the_cli() {
    let replica = ReplicaProcess::start();
    let identity = repo("testdata/identities/secp256k1.pem");
    let id = deploy(&replica.url, &identity);
    let model = repo("models/stories260Ktok512.gguf");
    // `icllm upload` of `file` to the canister as its controller.
    let upload_cmd = |file: &str, extra: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_icllm"));
        c.args([
            "upload",
            file,
            "--canister-id",
            &id,
            "--network",
            &replica.url,
            "--identity",
            &identity,
        ]);
        c.args(extra);
        c
    };
    let upload = |extra: &[&str]| {
        let out = upload_cmd(&model, &[&["--chunk-bytes", "100000"], extra].concat())
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (success, stderr) = upload(&["--stop-after-chunks", "4"]);
    assert!(
        !success && stderr.contains("upload interrupted after 4 chunks"),
        "{stderr}"
    );
    let (success, stderr) = upload(&[]);
    assert!(success, "{stderr}");
    // 1,185,376 bytes in 100,000-byte chunks: 12, of which 4 had arrived.
    assert_eq!(stat(&stderr, "chunks_sent"), 8, "{stderr}");
    assert_eq!(stat(&stderr, "bytes_resumed"), 400_000, "{stderr}");

    // A real kill: the process dies mid-upload (a new upload of the same
    // file, in 4 KB chunks one at a time), and the rerun sends only the rest.
    let tiny = || upload_cmd(&model, &["--chunk-bytes", "4096", "--parallel", "1"]);
    let pem = repo("testdata/identities/ed25519.pem");
    let begin = upload_cmd(&pem, &["--stop-after-chunks", "0"]).output().unwrap();
    assert!(
        !begin.status.success(),
        "stopping before any chunk reports an interrupted upload"
    );
    let mut child = tiny().stderr(Stdio::null()).spawn().unwrap();
    let canister = candid::Principal::from_text(&id).unwrap();
    let received = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let pem = icllm::remote::load_identity(Some(std::path::Path::new(&identity))).unwrap();
        let agent = icllm::remote::connect(&replica.url, pem).await.unwrap();
        loop {
            let (r,): (icllm_api::ApiResult<icllm_api::UploadStatus>,) =
                icllm::remote::query(&agent, canister, "upload_status", ())
                    .await
                    .unwrap();
            let status = r.unwrap();
            if status.sha256.as_deref() == Some(&icllm::local_canister::sha256(&std::fs::read(&model).unwrap())[..])
                && status.received_bytes >= 40_960
            {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let (r,): (icllm_api::ApiResult<icllm_api::UploadStatus>,) =
            icllm::remote::query(&agent, canister, "upload_status", ())
                .await
                .unwrap();
        r.unwrap().received_bytes
    });
    let size = std::fs::metadata(&model).unwrap().len();
    assert!(received < size, "killed before the end: {received} of {size}");
    let out = tiny().output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stat(&stderr, "bytes_resumed"), received, "{stderr}");
    assert_eq!(stat(&stderr, "bytes_sent"), size - received, "{stderr}");

    // Another identity (dfx's Ed25519 format) is not a controller.
    let (success, _, stderr) = icllm(&[
        "upload",
        &model,
        "--canister-id",
        &id,
        "--network",
        &replica.url,
        "--identity",
        &pem,
    ]);
    assert!(!success && stderr.contains("not a controller"), "{stderr}");

    let (ids, stdout, stderr) = greedy_job(&replica.url, &id, &pem, "Joe loves writing stories", 16);
    assert_eq!(ids[..10], GOLDEN_IDS, "{stdout}{stderr}");
    assert!(stdout.starts_with(". He liked to play"), "{stdout}");
    assert!(stat(&stderr, "max_message_instructions") > 0);

    // A two-turn chat from stdin: the second turn continues the first job.
    let mut child = Command::new(env!("CARGO_BIN_EXE_icllm"))
        .args(["chat", "--canister-id", &id, "--network", &replica.url, "--identity"])
        .arg(&pem)
        .args(["--chat-template", "chatml", "-n", "6", "--temperature", "0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("icllm chat starts");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"Joe loves writing\nTell me more\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let turns: Vec<&str> = stderr.lines().filter(|l| l.starts_with("[job ")).collect();
    assert_eq!(turns.len(), 2, "{stderr}");
    assert!(
        turns[0].contains("(0 cached)") && !turns[1].contains("(0 cached)"),
        "{stderr}"
    );

    // Upgrading keeps the model: deploy again to the same id.
    let (stdout, stderr) = ok(&[
        "deploy",
        "--network",
        &replica.url,
        "--identity",
        &identity,
        "--canister-id",
        &id,
    ]);
    assert_eq!(stdout.trim(), id);
    assert!(stderr.contains("upgraded icllm"), "{stderr}");
}

/// A 253 MB model over the network: uploaded in 1.9 MB chunks, verified,
/// loaded, and continuing "The capital of France is" as llama.cpp does
/// (up to its first near-tie, as the other gemma tests check).
#[test]
fn gemma3_270m_uploads_over_the_network_and_continues_as_llama_cpp_does() {
    let Some(model) = cached_model("gemma-3-270m-q4_k_m.gguf") else {
        eprintln!("skipped: gemma-3-270m-q4_k_m.gguf is not in the model cache (run tools/fetch-models)");
        return;
    };
    let case = &common::gemma3_reference()["cases"][0];
    let want: Vec<u32> = serde_json::from_value(case["greedy"].clone()).unwrap();
    let clear_steps = common::clear_steps(case);

    let replica = ReplicaProcess::start();
    let identity = repo("testdata/identities/ed25519.pem");
    let id = deploy(&replica.url, &identity);
    let (_, stderr) = ok(&[
        "upload",
        model.to_str().unwrap(),
        "--canister-id",
        &id,
        "--network",
        &replica.url,
        "--identity",
        &identity,
    ]);
    assert!(stat(&stderr, "bytes_sent") > 100_000_000, "{stderr}");
    let (got, stdout, stderr) = greedy_job(&replica.url, &id, &identity, case["text"].as_str().unwrap(), want.len());
    assert_eq!(got[..clear_steps], want[..clear_steps], "{stdout}{stderr}");
    assert!(stat(&stderr, "max_message_instructions") <= 40_000_000_000, "{stderr}");
}

/// icp-cli (the npm package `@icp-sdk/icp-cli-linux-x64`, installed by
/// tools/icp-cli-check.sh) calls the deployed canister through the replica
/// with an identity imported from dfx's PEM format: `health` as a query,
/// `start_job` as an update (its certificate checked by icp-cli), `poll`
/// until the job ends.
#[test]
fn icp_cli_calls_health_start_job_and_poll() {
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| repo("target"));
    let icp = PathBuf::from(target).join("npm/node_modules/@icp-sdk/icp-cli-linux-x64/bin/icp");
    assert!(icp.exists(), "{} is missing: run tools/icp-cli-check.sh", icp.display());
    let home = std::env::temp_dir().join(format!("icllm-icp-home-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&home);
    std::fs::create_dir_all(&home).unwrap();
    let icp_run = |args: &[&str]| {
        let out = Command::new(&icp)
            .args(args)
            .env("HOME", &home)
            .env("DO_NOT_TRACK", "1")
            .output()
            .expect("icp runs");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "icp {args:?}: {}{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    let pem = repo("testdata/identities/ed25519.pem");
    icp_run(&[
        "identity",
        "import",
        "dev",
        "--storage",
        "plaintext",
        "--from-pem",
        &pem,
    ]);

    let replica = ReplicaProcess::start();
    let id = deploy(&replica.url, &pem);
    let model = repo("models/stories260Ktok512.gguf");
    ok(&[
        "upload",
        &model,
        "--canister-id",
        &id,
        "--network",
        &replica.url,
        "--identity",
        &pem,
    ]);

    let call = |method: &str, arg: &str, query: bool| -> Vec<u8> {
        let mut args = vec![
            "canister",
            "call",
            &id,
            method,
            arg,
            "--network",
            &replica.url,
            "--root-key",
            "fetch",
            "--identity",
            "dev",
            "--json",
        ];
        if query {
            args.push("--query");
        }
        let stdout = icp_run(&args);
        let reply: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
        let hex = reply["response_bytes"].as_str().unwrap();
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect()
    };
    let health = Decode!(&call("health", "()", true), icllm_api::Health).unwrap();
    assert_eq!(health.model_state, "ready");
    let job = Decode!(
        &call(
            "start_job",
            "(record { prompt = \"Joe loves writing stories\"; max_tokens = 12 : nat32; temperature = opt (0.0 : float32) })",
            false
        ),
        icllm_api::ApiResult<u64>
    )
    .unwrap()
    .expect("the job starts");
    let view = loop {
        let view = Decode!(
            &call("poll", &format!("({job} : nat64, null)"), true),
            icllm_api::ApiResult<icllm_api::JobView>
        )
        .unwrap()
        .expect("the caller's job");
        if !view.status.is_active() {
            break view;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert_eq!(view.status, icllm_api::JobStatus::Done("max_tokens".into()));
    assert_eq!(view.tokens[..10], GOLDEN_IDS);
    let _ = std::fs::remove_dir_all(&home);
}

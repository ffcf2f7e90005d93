//! `icllm serve` driven by clients nobody here wrote: the official `openai`
//! Python package (installed by tools/setup.sh into a venv beside the build)
//! and curl.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The server process, killed when dropped.
struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// stories260K with a chat template that wraps the user's text as
/// "<text> stories": the chat message "Joe loves writing" becomes the golden prompt.
fn chat_model(name: &str) -> PathBuf {
    use icllm_engine::format::gguf::{writer, Gguf, Value};
    let bytes = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../models/stories260Ktok512.gguf"
    ))
    .unwrap();
    let g = Gguf::parse(&bytes).unwrap();
    let mut meta: Vec<(String, Value)> = g.metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    meta.push((
        "tokenizer.chat_template".into(),
        Value::String("{% for m in messages %}{{ m.content }} stories{% endfor %}".into()),
    ));
    let tensors: Vec<writer::TensorData> = g
        .tensors
        .iter()
        .map(|t| writer::TensorData {
            name: t.name.clone(),
            dims: t.dims.clone(),
            ty: t.ty,
            bytes: bytes[t.byte_range()].to_vec(),
        })
        .collect();
    let path = std::env::temp_dir().join(format!("icllm-serve-{name}-{}.gguf", std::process::id()));
    std::fs::write(&path, writer::write(&meta, &tensors)).unwrap();
    path
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `icllm serve` and waits for its `listening on` line.
fn serve(model: &Path, extra: &[&str]) -> Server {
    serve_with(&["--model", model.to_str().unwrap()], extra)
}

fn serve_with(source: &[&str], extra: &[&str]) -> Server {
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_icllm"))
        .arg("serve")
        .args(source)
        .args(["--port", &port.to_string()])
        .args(extra)
        .stderr(Stdio::piped())
        .spawn()
        .expect("icllm serve starts");
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let want = format!("listening on http://127.0.0.1:{port}");
    let mut seen = Vec::new();
    loop {
        match lines.next() {
            Some(Ok(line)) if line == want => break,
            Some(Ok(line)) => seen.push(line),
            _ => panic!("icllm serve stopped before listening: {seen:?}"),
        }
    }
    // Keep draining stderr so the server never blocks on it.
    std::thread::spawn(move || for _ in lines {});
    Server {
        child,
        base: format!("http://127.0.0.1:{port}"),
    }
}

/// The build's target directory (where tools/setup.sh puts the test clients).
fn target_dir() -> PathBuf {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_icllm"));
    exe.parent().and_then(Path::parent).unwrap().to_path_buf()
}

/// The venv tools/setup.sh makes beside the build (`<target>/openai-venv`).
fn venv_python() -> PathBuf {
    let target = target_dir();
    let python = target.join("openai-venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run tools/setup.sh (it installs the openai package there)",
        python.display()
    );
    python
}

/// tests/openai_client.py against `server`, which serves `model`.
fn run_openai_client(server: &Server, model: &Path) {
    let out = Command::new(venv_python())
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/openai_client.py"))
        .env("ICLLM_BASE_URL", format!("{}/v1", server.base))
        .env("ICLLM_BIN", env!("CARGO_BIN_EXE_icllm"))
        .env("ICLLM_MODEL", model)
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "openai client checks failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("all checks passed"), "{stdout}");
}

fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "-N", "--max-time", "120", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl runs");
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap(), body.to_string())
}

#[test]
fn the_openai_python_client_and_curl_drive_icllm_serve() {
    let model = chat_model("openai");
    // The smallest message limit: a reply takes several canister messages,
    // so streams have several events and a job runs long enough to cancel.
    let server = serve(&model, &["--instruction-limit", "10000000"]);
    run_openai_client(&server, &model);

    let url = |p: &str| format!("{}{p}", server.base);
    let json = ["-H", "content-type: application/json", "-d"];
    // A streamed chat reply over SSE, ending with [DONE].
    let (code, body) = curl(&[
        &url("/v1/chat/completions"),
        json[0],
        json[1],
        json[2],
        r#"{"messages":[{"role":"user","content":"Joe loves writing"}],"max_tokens":10,"temperature":0,"stream":true}"#,
    ]);
    assert_eq!(code, 200, "{body}");
    let events: Vec<&str> = body.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    assert_eq!(events.last(), Some(&"[DONE]"), "{body}");
    let text: String = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str::<serde_json::Value>(e).unwrap())
        .filter_map(|v| v["choices"][0]["delta"]["content"].as_str().map(str::to_string))
        .collect();
    assert_eq!(text, ". He liked to play with his toy");
    // Malformed JSON and bad requests: OpenAI error objects.
    for (body, status) in [
        ("{not json", 400),
        (r#"{"prompt":"Hi","max_tokens":3,"model":"nope"}"#, 404),
        (r#"{"prompt":"Hi","max_tokens":3,"stop":["a","b","c","d","e"]}"#, 400),
        (r#"{"prompt":"Hi","max_tokens":0}"#, 400),
    ] {
        let (code, reply) = curl(&[&url("/v1/completions"), json[0], json[1], json[2], body]);
        assert_eq!(code, status, "{body}: {reply}");
        let v: serde_json::Value = serde_json::from_str(&reply).unwrap();
        assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{reply}");
    }
    let (code, _) = curl(&[&url("/v1/nothing")]);
    assert_eq!(code, 404);
    // Nothing leaked: no job is left running.
    std::thread::sleep(Duration::from_millis(200));
    let (_, health) = curl(&[&url("/health")]);
    let v: serde_json::Value = serde_json::from_str(&health).unwrap();
    assert_eq!(v["active_jobs"], 0, "{health}");
    drop(server);
    std::fs::remove_file(&model).unwrap();
}

fn icllm_ok(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_icllm"))
        .args(args)
        .output()
        .expect("icllm runs");
    assert!(
        out.status.success(),
        "icllm {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The same `openai` checks against `icllm serve --canister-id`, in front
/// of a canister deployed to `icllm replica` (over ic-agent: per-key
/// principals, certified calls, polling instead of watching rounds).
#[test]
fn the_openai_python_client_drives_icllm_serve_in_front_of_a_deployed_canister() {
    let model = chat_model("remote");
    let replica = common::ReplicaProcess::start();
    let url = replica.url.clone();
    let identity = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/identities/ed25519.pem");
    let id = icllm_ok(&["deploy", "--network", &url, "--identity", identity]);
    let id = id.trim();
    icllm_ok(&[
        "upload",
        model.to_str().unwrap(),
        "--canister-id",
        id,
        "--network",
        &url,
        "--identity",
        identity,
    ]);
    // Several canister messages per reply, as in the local test.
    let canister = candid::Principal::from_text(id).unwrap();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let pem = icllm::remote::load_identity(Some(Path::new(identity))).unwrap();
        let agent = icllm::remote::connect(&url, pem).await.unwrap();
        let (r,): (icllm_api::ApiResult<()>,) =
            icllm::remote::update(&agent, canister, "set_message_instruction_limit", (10_000_000u64,))
                .await
                .unwrap();
        r.unwrap();
    });
    let server = serve_with(&["--canister-id", id, "--network", &url, "--identity", identity], &[]);
    run_openai_client(&server, &model);
    std::fs::remove_file(&model).unwrap();
}

/// The chat page in headless Chromium, driven by puppeteer-core (both
/// installed by tools/setup.sh): screenshots at desktop and phone widths go
/// to `<target>/test-artefacts/`.
#[test]
fn the_chat_page_streams_stops_and_fits_a_phone_in_headless_chromium() {
    let target = target_dir();
    let puppeteer = target.join("npm-chat-page/node_modules/puppeteer-core");
    assert!(
        puppeteer.exists(),
        "{} is missing: run tools/setup.sh",
        puppeteer.display()
    );
    let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("chromium is missing: run tools/setup.sh");
    let shots = target.join("test-artefacts");
    std::fs::create_dir_all(&shots).unwrap();
    let model = chat_model("page");
    // A few tokens per message: a long reply runs long enough to stop. (At
    // 5 M, the smallest limit the canister takes, stories260K's prompt batch
    // never fits a message and the job stays in prefill.)
    let server = serve(&model, &["--instruction-limit", "10000000"]);
    let out = Command::new("node")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/chat_page.mjs"))
        .env("ICLLM_URL", format!("{}/", server.base))
        .env("CHROMIUM", chromium)
        .env("PUPPETEER", puppeteer)
        .env("SHOTS", &shots)
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "chat page checks failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("all page checks passed"), "{stdout}");
    for shot in ["chat-desktop.png", "chat-phone.png"] {
        assert!(std::fs::metadata(shots.join(shot)).unwrap().len() > 10_000, "{shot}");
    }
    drop(server);
    std::fs::remove_file(&model).unwrap();
}

//! `icllm run`: the main command, through the real canister wasm in the local
//! IC runtime. Golden text from models/README.md.

use std::process::Command;

fn icllm_run(extra: &[&str]) -> (String, String) {
    let model = concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/stories260Ktok512.gguf");
    let out = Command::new(env!("CARGO_BIN_EXE_icllm"))
        .args([
            "run",
            "--model",
            model,
            "--prompt",
            "Joe loves writing stories",
            "-n",
            "10",
            "--temperature",
            "0",
        ])
        .args(extra)
        .output()
        .expect("icllm runs");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "icllm run failed: {stderr}");
    (stdout, stderr)
}

/// The value of `key: value` in the statistics.
fn stat(stderr: &str, key: &str) -> u64 {
    let line = stderr
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}: ")))
        .unwrap_or_else(|| panic!("no `{key}:` line in\n{stderr}"));
    line.trim()
        .parse()
        .unwrap_or_else(|_| panic!("`{key}: {line}` is not a number"))
}

#[test]
fn run_prints_the_golden_text_and_statistics() {
    let (stdout, stderr) = icllm_run(&[]);
    assert_eq!(stdout, ". He liked to play with his toy\n");
    for key in [
        "messages",
        "instructions_per_token",
        "prompt_instructions_per_token",
        "tokens_per_message",
        "cycles",
    ] {
        assert!(stat(&stderr, key) > 0, "{key} is zero:\n{stderr}");
    }
    assert!(stat(&stderr, "max_message_instructions") <= 40_000_000_000);
    assert_eq!(stat(&stderr, "traps"), 0, "{stderr}");
    assert_eq!(stat(&stderr, "retries"), 0, "{stderr}");
}

#[test]
fn run_under_a_small_instruction_limit_gives_the_same_text_in_more_messages() {
    // The smallest limit the canister accepts (`set_message_instruction_limit`).
    let limit = 10_000_000u64;
    let (stdout, stderr) = icllm_run(&["--instruction-limit", &limit.to_string()]);
    assert_eq!(stdout, ". He liked to play with his toy\n");
    // At least as many messages as the limit forces (3 for this job at the
    // time of writing; a fixed count breaks whenever a token gets cheaper).
    let (messages, instructions) = (stat(&stderr, "messages"), stat(&stderr, "instructions"));
    assert!(messages >= instructions.div_ceil(limit).max(3), "{stderr}");
    assert!(stat(&stderr, "max_message_instructions") <= limit, "{stderr}");
}

/// `--chat`: the canister renders the model's own template. stories260K with a
/// template that wraps the user's text as "<text> stories" turns the chat
/// prompt "Joe loves writing" into the golden prompt.
#[test]
fn run_chat_renders_the_models_template_in_the_canister() {
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
    let path = std::env::temp_dir().join(format!("icllm-run-chat-{}.gguf", std::process::id()));
    std::fs::write(&path, writer::write(&meta, &tensors)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_icllm"))
        .args([
            "run",
            "--model",
            path.to_str().unwrap(),
            "--prompt",
            "Joe loves writing",
            "--chat",
            "-n",
            "10",
        ])
        .args(["--temperature", "0"])
        .output()
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        ". He liked to play with his toy\n"
    );
}

//! `icllm run`: the main command, through the real canister wasm in the local
//! IC runtime. Golden text from ../shared/README.md.

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
}

#[test]
fn run_under_a_small_instruction_limit_gives_the_same_text_in_more_messages() {
    let limit = 8_000_000u64;
    let (stdout, stderr) = icllm_run(&["--instruction-limit", &limit.to_string()]);
    assert_eq!(stdout, ". He liked to play with his toy\n");
    assert!(stat(&stderr, "messages") >= 5, "{stderr}");
    assert!(stat(&stderr, "max_message_instructions") <= limit, "{stderr}");
}

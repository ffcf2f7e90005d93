//! `icllm generate` as a user runs it, against the golden outputs of
//! models/README.md.

use std::path::PathBuf;
use std::process::Command;

fn stories() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/stories260Ktok512.gguf")
}

fn icllm(args: &[&str]) -> (String, String, bool) {
    let out = Command::new(env!("CARGO_BIN_EXE_icllm"))
        .args(args)
        .output()
        .expect("icllm runs");
    (
        String::from_utf8(out.stdout).expect("utf-8 stdout"),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.success(),
    )
}

#[test]
fn golden_prompt_prints_only_the_generated_text() {
    let model = stories();
    let (stdout, stderr, ok) = icllm(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "Joe loves writing stories",
        "-n",
        "10",
        "--temperature",
        "0",
    ]);
    assert!(ok, "{stderr}");
    assert_eq!(stdout, ". He liked to play with his toy\n");
    assert!(stderr.contains("generated:  10 tokens"), "{stderr}");
    assert!(stderr.contains("tokens/s"), "{stderr}");
}

#[test]
fn no_prompt_starts_from_bos_and_may_exceed_the_trained_context() {
    let model = stories();
    let (stdout, stderr, ok) = icllm(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "-n",
        "200",
        "--temperature",
        "0",
        "--ctx-size",
        "256",
    ]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.starts_with(
            "Once upon a time, there was a little girl named Lily. She loved to play outside in the park."
        ),
        "{stdout}"
    );
    assert!(
        stdout.trim_end().ends_with("Lily didn't want to help her mom, so she"),
        "{stdout}"
    );
    assert!(stderr.contains("generated:  200 tokens"), "{stderr}");
}

#[test]
fn default_context_is_the_trained_one() {
    let model = stories();
    let (_, stderr, ok) = icllm(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "-n",
        "500",
        "--temperature",
        "0",
    ]);
    assert!(ok, "{stderr}");
    // BOS + 127 more positions processed + one last sampled token, unless EOS came first.
    assert!(
        stderr.contains("context full") || stderr.contains("end of text"),
        "{stderr}"
    );
    assert!(stderr.contains("ctx 128"), "{stderr}");
}

#[test]
fn same_seed_same_text() {
    let model = stories();
    let args = [
        "generate",
        "--model",
        model.to_str().unwrap(),
        "-n",
        "40",
        "--seed",
        "7",
        "--prompt",
        "Lily",
    ];
    let (a, _, ok_a) = icllm(&args);
    let (b, _, ok_b) = icllm(&args);
    assert!(ok_a && ok_b);
    assert_eq!(a, b);
}

#[test]
fn bad_input_gives_clear_errors() {
    let model = stories();
    let (_, stderr, ok) = icllm(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "Joe",
        "--temperature",
        "-1",
    ]);
    assert!(!ok);
    assert!(stderr.contains("temperature must be"), "{stderr}");

    let (_, stderr, ok) = icllm(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "Joe",
        "--ctx-size",
        "2",
    ]);
    assert!(!ok);
    assert!(stderr.contains("context holds 2"), "{stderr}");

    let (_, stderr, ok) = icllm(&["generate", "--model", "/nonexistent.gguf"]);
    assert!(!ok);
    assert!(stderr.contains("cannot read /nonexistent.gguf"), "{stderr}");
}

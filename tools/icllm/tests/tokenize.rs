//! `icllm tokenize` as a user runs it: GGUF and tokenizer.json tokenizers,
//! special tokens in the text, BOS by the model's default or not at all.

use std::path::PathBuf;
use std::process::Command;

fn testdata(path: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata")
        .join(path)
        .to_str()
        .unwrap()
        .to_string()
}

/// Runs `icllm tokenize ARGS`; returns the ids printed on stdout.
fn tokenize(args: &[&str]) -> Vec<u32> {
    let out = Command::new(env!("CARGO_BIN_EXE_icllm"))
        .arg("tokenize")
        .args(args)
        .output()
        .expect("icllm runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "icllm tokenize {args:?} failed: {stderr}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("stdout is not a JSON array of ids: {e}"))
}

#[test]
fn qwen_tokenizer_json_recognizes_chat_markers_and_adds_no_bos() {
    let json = testdata("tokenizers/qwen2.5/tokenizer.json");
    let ids = tokenize(&[
        "--tokenizer",
        &json,
        "--text",
        "<|im_start|>user\nHello world<|im_end|>",
    ]);
    assert_eq!(ids.first(), Some(&151644));
    assert_eq!(ids.last(), Some(&151645));
    // Qwen2.5 adds no BOS, so --no-bos changes nothing.
    let no_bos = tokenize(&[
        "--tokenizer",
        &json,
        "--no-bos",
        "--text",
        "<|im_start|>user\nHello world<|im_end|>",
    ]);
    assert_eq!(ids, no_bos);
    // " world" is one token: the vector file's "Hello world" case.
    assert_eq!(tokenize(&["--tokenizer", &json, "--text", "Hello world"]), [9707, 1879]);
}

#[test]
fn llama3_tokenizer_json_adds_bos_unless_told_not_to() {
    let json = testdata("tokenizers/llama3.2/tokenizer.json");
    assert_eq!(
        tokenize(&["--tokenizer", &json, "--text", "Hello world"]),
        [128000, 9906, 1917]
    );
    assert_eq!(
        tokenize(&["--tokenizer", &json, "--no-bos", "--text", "Hello world"]),
        [9906, 1917]
    );
    // A BOS written in the text is recognized too.
    assert_eq!(
        tokenize(&["--tokenizer", &json, "--no-bos", "--text", "<|begin_of_text|>Hello"]),
        [128000, 9906]
    );
}

/// Llama 2's and Phi-3's SentencePiece-style tokenizer.json: BOS by
/// default, chat markers in the text, Phi-3's markers eating the newline
/// after them, all as the Hugging Face library gives them (hf-cases.json).
#[test]
fn sentencepiece_style_tokenizer_json_works_like_hugging_face() {
    let llama2 = testdata("tokenizers/llama-spm/tokenizer.json");
    assert_eq!(
        tokenize(&["--tokenizer", &llama2, "--text", "Hello world"]),
        [1, 15043, 3186]
    );
    assert_eq!(
        tokenize(&[
            "--tokenizer",
            &llama2,
            "--no-bos",
            "--text",
            " Hello<s> world </s> again"
        ]),
        [29871, 15043, 1, 29871, 3186, 29871, 2, 29871, 1449]
    );
    let phi3 = testdata("tokenizers/phi-3/tokenizer.json");
    assert_eq!(
        tokenize(&[
            "--tokenizer",
            &phi3,
            "--text",
            "<|user|>\nHi there<|end|>\n<|assistant|>\n"
        ]),
        [1, 32010, 6324, 727, 32007, 32001]
    );
}

#[test]
fn gguf_vocabularies_work_too() {
    let gpt2 = testdata("vocab/ggml-vocab-gpt-2.gguf");
    // GPT-2 adds no BOS; <|endoftext|> in the text is its control token.
    assert_eq!(
        tokenize(&["--model", &gpt2, "--text", "Hello world<|endoftext|>"]),
        [15496, 995, 50256]
    );
    let spm = testdata("vocab/ggml-vocab-llama-spm.gguf");
    let ids = tokenize(&["--model", &spm, "--text", "Hello world"]);
    assert_eq!(ids[0], 1, "SPM adds BOS");
    assert_eq!(
        &ids[1..],
        tokenize(&["--model", &spm, "--no-bos", "--text", "Hello world"])
    );
}

#[test]
fn a_missing_file_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_icllm"))
        .args(["tokenize", "--tokenizer", "/nonexistent/tokenizer.json", "--text", "x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read /nonexistent/tokenizer.json"));
}

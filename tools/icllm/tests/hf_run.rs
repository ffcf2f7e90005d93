//! Hugging Face checkpoints through the canister: `icllm run --model DIR`
//! converts the directory to GGUF in memory, uploads it to the real canister
//! wasm in the local IC runtime and generates the same tokens as `icllm
//! generate --model DIR` (the engine natively, on the checkpoint itself);
//! `icllm convert` writes the same GGUF to a file. The checkpoints are the
//! engine tests' tiny random ones, with a byte-level BPE tokenizer.

use safetensors::tensor::Dtype;
use std::path::Path;
use std::process::Command;

#[path = "../../../src/engine/tests/common/tiny_hf.rs"]
mod tiny_hf;
use tiny_hf::*;

fn icllm(args: &[&str]) -> (String, String, bool) {
    let out = Command::new(env!("CARGO_BIN_EXE_icllm"))
        .args(args)
        .output()
        .expect("icllm runs");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.success(),
    )
}

/// The `generated_ids: [...]` line of `--print-ids`.
fn generated_ids(stderr: &str) -> Vec<u32> {
    let line = stderr
        .lines()
        .find_map(|l| l.strip_prefix("generated_ids: "))
        .unwrap_or_else(|| panic!("no generated_ids line in\n{stderr}"));
    serde_json::from_str(line).unwrap()
}

const PROMPT: &str = "hello world, the end";

/// Greedy generation of 12 tokens with `command` (`generate` or `run`) on `model`.
fn greedy(command: &str, model: &Path) -> (Vec<u32>, String, String) {
    let (stdout, stderr, ok) = icllm(&[
        command,
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        PROMPT,
        "-n",
        "12",
        "--temperature",
        "0",
        "--print-ids",
    ]);
    assert!(ok, "icllm {command} failed:\n{stderr}");
    (generated_ids(&stderr), stdout, stderr)
}

#[test]
fn run_on_an_hf_directory_generates_what_generate_does() {
    for (name, shape, dtype, style) in [
        (
            "llama-bf16",
            LLAMA_WITH_TOKENIZER,
            Dtype::BF16,
            PreStyle::Llama3 { ignore_merges: false },
        ),
        (
            "qwen2-f16",
            Shape {
                arch: "qwen2",
                tied: true,
                ..LLAMA_WITH_TOKENIZER
            },
            Dtype::F16,
            PreStyle::Qwen2,
        ),
        (
            "qwen3-f32",
            Shape {
                arch: "qwen3",
                head_dim: 16,
                ..LLAMA_WITH_TOKENIZER
            },
            Dtype::F32,
            PreStyle::Qwen2,
        ),
    ] {
        let dir = tmp_dir(&format!("cli-run-{name}"));
        write_tiny_checkpoint(&dir, &shape, dtype, 2, "", style, 21);
        let (native, native_text, _) = greedy("generate", &dir);
        let (canister, canister_text, stderr) = greedy("run", &dir);
        assert!(
            stderr.contains("converting the Hugging Face checkpoint") && stderr.contains("to GGUF in memory"),
            "{name}: run says it converts:\n{stderr}"
        );
        assert_eq!(native.len(), 12, "{name}: {native:?}");
        assert_eq!(canister, native, "{name}: the canister generates the native tokens");
        assert_eq!(canister_text, native_text, "{name}");
        eprintln!("{name}: {native:?} {native_text:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn convert_writes_the_gguf_that_run_uploads() {
    let dir = tmp_dir("cli-convert");
    write_tiny_checkpoint(&dir, &LLAMA_WITH_TOKENIZER, Dtype::BF16, 1, "", PreStyle::Qwen2, 22);
    let out = dir.join("tiny.gguf");
    let (_, stderr, ok) = icllm(&["convert", dir.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("wrote ") && stderr.contains("llama, 21 tensors (bf16: 16, f32: 5)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("tokenizer.ggml.pre qwen2; chat template: yes"),
        "{stderr}"
    );
    // The file generates what the checkpoint does.
    let (from_dir, _, _) = greedy("generate", &dir);
    let (from_file, _, _) = greedy("generate", &out);
    assert_eq!(from_file, from_dir);
    let (stdout, stderr, ok) = icllm(&["inspect", out.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    for want in [
        "architecture:  llama",
        "bf16: 16",
        "tokenizer:     gpt2",
        "chat template: yes",
    ] {
        assert!(stdout.contains(want), "missing {want:?} in\n{stdout}");
    }

    // --quant: the 2-D weights in the asked type (ffn_down's rows of 48 do
    // not split into blocks of 32: F16, as llama.cpp falls back), vectors F32.
    let q8 = dir.join("tiny-q8_0.gguf");
    let (_, stderr, ok) = icllm(&[
        "convert",
        dir.to_str().unwrap(),
        "-o",
        q8.to_str().unwrap(),
        "--quant",
        "q8_0",
    ]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("(q8_0: 14, f32: 5, f16: 2)"), "{stderr}");
    let (_, stderr, ok) = icllm(&[
        "convert",
        dir.to_str().unwrap(),
        "-o",
        q8.to_str().unwrap(),
        "--quant",
        "iq2_xxs",
    ]);
    assert!(!ok && stderr.contains("unknown --quant \"iq2_xxs\""), "{stderr}");

    // bench measures the checkpoint through the canister, converted in memory.
    let (stdout, stderr, ok) = icllm(&[
        "bench",
        "--model",
        dir.to_str().unwrap(),
        "--prompt-tokens",
        "8",
        "--gen-tokens",
        "4",
        "--no-overhead",
        "--json",
    ]);
    assert!(ok && stderr.contains("to GGUF in memory"), "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["architecture"], "Llama", "{stdout}");
    assert_eq!(report["weights_type"], "Some(BF16)", "{stdout}");
    assert_eq!(report["generated_tokens"], 4, "{stdout}");

    // A GGUF file is not converted.
    let (_, stderr, ok) = icllm(&["convert", out.to_str().unwrap(), "-o", "/tmp/x.gguf"]);
    assert!(
        !ok && stderr.contains("convert takes a Hugging Face checkpoint directory"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn checkpoints_that_cannot_be_converted_fail_before_anything_runs() {
    // No tokenizer.json: convert writes nothing, run stops before building the canister.
    let dir = tmp_dir("cli-no-tokenizer");
    write_tiny_checkpoint(&dir, &LLAMA_WITH_TOKENIZER, Dtype::F32, 1, "", PreStyle::Gpt2, 23);
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    let out = dir.join("out.gguf");
    let (_, stderr, ok) = icllm(&["convert", dir.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert!(!ok && stderr.contains("tokenizer.json is missing"), "{stderr}");
    assert!(
        !out.exists() && !dir.join("out.gguf.partial").exists(),
        "no partial file"
    );
    let (_, stderr, ok) = icllm(&["run", "--model", dir.to_str().unwrap(), "-n", "1"]);
    assert!(!ok && stderr.contains("tokenizer.json is missing"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();

    // A pre-tokenizer no GGUF name stands for.
    let dir = tmp_dir("cli-odd-pre");
    write_tiny_checkpoint(&dir, &LLAMA_WITH_TOKENIZER, Dtype::F32, 1, "", PreStyle::Qwen2, 24);
    let json = std::fs::read_to_string(dir.join("tokenizer.json")).unwrap();
    let json = json.replace(&json_str(QWEN2_REGEX), &json_str(r"\p{L}+|\p{N}+|\s+"));
    std::fs::write(dir.join("tokenizer.json"), json).unwrap();
    let (_, stderr, ok) = icllm(&["bench", "--model", dir.to_str().unwrap()]);
    assert!(!ok && stderr.contains("matches no tokenizer.ggml.pre name"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[derive(serde::Deserialize, PartialEq, Debug)]
struct Logits {
    ids: Vec<u32>,
    logits: Vec<f32>,
}

fn logits(model: &Path) -> Logits {
    let (stdout, stderr, ok) = icllm(&["logits", "--model", model.to_str().unwrap(), "--prompt", PROMPT]);
    assert!(ok, "{stderr}");
    serde_json::from_str(&stdout).unwrap()
}

/// A Llama-2-style checkpoint (bf16, SentencePiece-style tokenizer.json,
/// tied or untied head): `convert` writes a `llama` tokenizer, and `logits`,
/// `generate` and `run` give on the GGUF what they give on the directory.
#[test]
fn llama2_style_checkpoint_through_convert_logits_generate_and_run() {
    for tied in [false, true] {
        let dir = tmp_dir(&format!("cli-llama2-{tied}"));
        write_llama2_checkpoint(&dir, &Shape { tied, ..LLAMA2 }, Dtype::BF16, 31);
        let out = dir.join("llama2.gguf");
        let (_, stderr, ok) = icllm(&["convert", dir.to_str().unwrap(), "-o", out.to_str().unwrap()]);
        assert!(ok, "{stderr}");
        assert!(
            stderr.contains("tokenizer 32000 tokens (vocabulary 32000), tokenizer.ggml.pre default"),
            "{stderr}"
        );
        let (stdout, stderr, ok) = icllm(&["inspect", dir.to_str().unwrap()]);
        assert!(
            ok && stdout.contains("BPE with byte fallback (SentencePiece-style)"),
            "{stdout}{stderr}"
        );
        let (stdout, stderr, ok) = icllm(&["inspect", out.to_str().unwrap()]);
        assert!(ok && stdout.contains("tokenizer:     llama"), "{stdout}{stderr}");
        let from_dir = logits(&dir);
        // BOS, then "▁hello" "▁world" "," "▁the" "▁end" in Llama 2's vocabulary.
        assert_eq!(from_dir.ids, [1, 22172, 3186, 29892, 278, 1095]);
        assert_eq!(
            logits(&out),
            from_dir,
            "tied {tied}: the GGUF gives the checkpoint's logits"
        );

        let (native, native_text, _) = greedy("generate", &dir);
        let (from_file, _, _) = greedy("generate", &out);
        let (canister, canister_text, _) = greedy("run", &dir);
        assert_eq!(native.len(), 12, "{native:?}");
        assert_eq!(from_file, native, "tied {tied}");
        assert_eq!(
            canister, native,
            "tied {tied}: the canister generates the native tokens"
        );
        assert_eq!(canister_text, native_text);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! Writes the seed corpora of the fuzz targets into `fuzz/seeds/<target>/`:
//! tiny but complete inputs (a model as GGUF and as a Hugging Face
//! checkpoint, a byte-level BPE tokenizer.json, chat templates) so the
//! fuzzers start from the deep paths. Run from the repository root:
//! `cargo run --manifest-path fuzz/Cargo.toml --bin make_seeds`.

#[path = "../../../src/engine/tests/common/tiny_hf.rs"]
#[allow(dead_code)]
mod tiny_hf;

use safetensors::tensor::Dtype;
use std::path::Path;

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new("fuzz/seeds").join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn joined(a: &[u8], b: &[u8]) -> Vec<u8> {
    [a, &[0], b].concat()
}

fn main() {
    let shape = tiny_hf::Shape {
        dim: 8,
        hidden: 16,
        heads: 2,
        kv_heads: 1,
        head_dim: 4,
        vocab: 12,
        ..tiny_hf::LLAMA
    };
    let weights = tiny_hf::random_weights(&shape, 1);
    for (dtype, name) in [(Dtype::F32, "f32"), (Dtype::F16, "f16")] {
        write("gguf", &format!("tiny-llama-{name}.gguf"), &tiny_hf::gguf_bytes(&shape, &weights, dtype, None));
    }
    let stories = std::fs::read("models/stories260Ktok512.gguf").expect("run from the repository root");
    write("gguf", "stories260K-header.gguf", &stories[..16 * 1024]);

    let config = tiny_hf::config_json(&shape, "");
    let all: Vec<&tiny_hf::Weight> = weights.iter().collect();
    for (dtype, name) in [(Dtype::BF16, "bf16"), (Dtype::F32, "f32")] {
        let shard = tiny_hf::safetensors_bytes(&all, dtype);
        write("hf_checkpoint", &format!("tiny-llama-{name}"), &joined(config.as_bytes(), &shard));
    }

    for (style, name) in [
        (tiny_hf::PreStyle::Qwen2, "qwen2"),
        (tiny_hf::PreStyle::Llama3 { ignore_merges: true }, "llama3"),
    ] {
        let (tokenizer, tokenizer_config, _) = tiny_hf::tiny_tokenizer(style);
        write(
            "tokenizer_json",
            &format!("tiny-{name}"),
            &joined(tokenizer.as_bytes(), tokenizer_config.as_bytes()),
        );
    }

    write("chat_template", "chatml", tiny_hf::TINY_CHAT_TEMPLATE.as_bytes());
    let llama = std::fs::read("testdata/templates/llama3.2-instruct.chat_template.jinja").unwrap();
    write("chat_template", "llama3.2-instruct", &llama);
    let qwen = std::fs::read("testdata/tokenizers/qwen2.5/tokenizer_config.json").unwrap();
    let qwen: serde_json::Value = serde_json::from_slice(&qwen).unwrap();
    let qwen = qwen["chat_template"].as_str().expect("the Qwen config has a chat_template");
    write("chat_template", "qwen", qwen.as_bytes());

    candid_seeds();
    // Upload ranges: a file size, then (start, length) chunks.
    write("upload_ranges", "in-order", &[0x00, 0x01, 0, 0, 0, 1, 0, 1, 0, 1]);
    write("upload_ranges", "resent-out-of-order", &[0xff, 0x0f, 0, 8, 0, 4, 0, 0, 0, 4, 0, 4, 0, 4, 0, 8, 0, 0]);
}

/// One valid argument per endpoint the `candid_args` target drives (its
/// first byte picks the endpoint).
fn candid_seeds() {
    use candid::Encode;
    use icllm_api::*;
    let request = JobRequest {
        prompt: "Joe loves writing stories".into(),
        max_tokens: 10,
        temperature: Some(0.0),
        messages: Some(vec![ChatMessage {
            role: "user".into(),
            content: "Hi".into(),
        }]),
        ..JobRequest::default()
    };
    let begin = UploadBegin {
        size: 1 << 20,
        sha256: vec![7; 32],
        parts: None,
    };
    let policy = AccessPolicy {
        mode: AccessMode::Allowlist(vec![candid::Principal::anonymous()]),
        allow_anonymous: true,
    };
    let seeds: [(u8, &str, Vec<u8>); 8] = [
        (0, "start_job", Encode!(&request).unwrap()),
        (1, "upload_chunk", Encode!(&0u64, &serde_bytes::ByteBuf::from(vec![1u8; 64])).unwrap()),
        (2, "upload_begin", Encode!(&begin).unwrap()),
        (3, "poll", Encode!(&5u64, &Some(3u32)).unwrap()),
        (4, "step", Encode!(&5u64).unwrap()),
        (5, "set_policy", Encode!(&policy).unwrap()),
        (6, "set_limits", Encode!(&Limits::default()).unwrap()),
        (7, "set_message_instruction_limit", Encode!(&40_000_000_000u64).unwrap()),
    ];
    for (endpoint, name, arg) in seeds {
        write("candid_args", name, &[&[endpoint][..], &arg].concat());
    }
}

//! `icllm logits`, `inspect` and `generate --chat` as a user runs them, on
//! the shipped stories260K model and on the same model converted back to a
//! Hugging Face checkpoint (PyTorch names and shapes, q/k rows in HF's
//! rotate-half order).

use icllm_engine::format::gguf::writer::{parts_of, write};
use icllm_engine::format::gguf::{Gguf, Value};
use safetensors::tensor::{Dtype, TensorView};
use std::path::{Path, PathBuf};
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

fn tmp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("icllm-cli-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// BOS + "Joe loves writing stories" and the first greedy token after it
/// (models/README.md).
const GOLDEN_PROMPT: &str = "1,410,454,414,411,401,360,419,263,420,275,299,349,304,417,406";
const GOLDEN_NEXT: usize = 426;

#[derive(serde::Deserialize)]
struct Logits {
    ids: Vec<u32>,
    logits: Vec<f32>,
}

fn logits(model: &Path, extra: &[&str]) -> Logits {
    let mut args = vec!["logits", "--model", model.to_str().unwrap()];
    args.extend_from_slice(extra);
    let (stdout, stderr, ok) = icllm(&args);
    assert!(ok, "{stderr}");
    assert_eq!(stdout.lines().count(), 1, "one JSON line");
    serde_json::from_str(&stdout).unwrap()
}

fn argmax(v: &[f32]) -> usize {
    (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap()
}

/// stories260K as a Hugging Face checkpoint: GGUF names → HF names, ggml
/// dims reversed, and q/k rows put back in HF order (the inverse of the
/// converter's permutation: GGUF row 2j + i came from HF row i·half + j).
fn stories_as_hf(dir: &Path) {
    let bytes = std::fs::read(stories()).unwrap();
    let g = Gguf::parse(&bytes).unwrap();
    let u = |k: &str| g.get(&format!("llama.{k}")).unwrap().as_u64().unwrap();
    let (dim, heads, kv_heads) = (
        u("embedding_length"),
        u("attention.head_count"),
        u("attention.head_count_kv"),
    );
    let head_dim = (dim / heads) as usize;
    let mut tensors = Vec::new();
    for t in &g.tensors {
        let name = match t.name.as_str() {
            "token_embd.weight" => "model.embed_tokens.weight".to_string(),
            "output_norm.weight" => "model.norm.weight".to_string(),
            "output.weight" => "lm_head.weight".to_string(),
            other => {
                let rest = other.strip_prefix("blk.").unwrap();
                let (l, suffix) = rest.split_once('.').unwrap();
                let hf = match suffix {
                    "attn_norm.weight" => "input_layernorm.weight",
                    "attn_q.weight" => "self_attn.q_proj.weight",
                    "attn_k.weight" => "self_attn.k_proj.weight",
                    "attn_v.weight" => "self_attn.v_proj.weight",
                    "attn_output.weight" => "self_attn.o_proj.weight",
                    "ffn_norm.weight" => "post_attention_layernorm.weight",
                    "ffn_gate.weight" => "mlp.gate_proj.weight",
                    "ffn_up.weight" => "mlp.up_proj.weight",
                    "ffn_down.weight" => "mlp.down_proj.weight",
                    other => panic!("{other}"),
                };
                format!("model.layers.{l}.{hf}")
            }
        };
        let shape: Vec<usize> = t.dims.iter().rev().map(|&d| d as usize).collect();
        let mut data = bytes[t.byte_range()].to_vec();
        let n_head = if t.name.ends_with("attn_q.weight") {
            Some(heads as usize)
        } else if t.name.ends_with("attn_k.weight") {
            Some(kv_heads as usize)
        } else {
            None
        };
        if let Some(n_head) = n_head {
            let row = shape[1] * 4;
            let half = head_dim / 2;
            let mut hf = vec![0u8; data.len()];
            for h in 0..n_head {
                for i in 0..2 {
                    for j in 0..half {
                        let gguf_row = h * head_dim + 2 * j + i;
                        let hf_row = h * head_dim + i * half + j;
                        hf[hf_row * row..(hf_row + 1) * row]
                            .copy_from_slice(&data[gguf_row * row..(gguf_row + 1) * row]);
                    }
                }
            }
            data = hf;
        }
        tensors.push((name, shape, data));
    }
    let views = tensors
        .iter()
        .map(|(n, s, d)| (n.clone(), TensorView::new(Dtype::F32, s.clone(), d).unwrap()));
    std::fs::write(
        dir.join("model.safetensors"),
        safetensors::serialize(views, None).unwrap(),
    )
    .unwrap();
    let config = format!(
        r#"{{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": {dim},
            "intermediate_size": {}, "num_hidden_layers": {}, "num_attention_heads": {heads},
            "num_key_value_heads": {kv_heads}, "rms_norm_eps": 1e-5, "max_position_embeddings": 128,
            "vocab_size": 512, "tie_word_embeddings": false, "bos_token_id": 1, "eos_token_id": 2}}"#,
        u("feed_forward_length"),
        u("block_count"),
    );
    std::fs::write(dir.join("config.json"), config).unwrap();
}

#[test]
fn logits_of_the_golden_prompt_point_at_the_golden_token() {
    let out = logits(&stories(), &["--prompt", "Joe loves writing stories"]);
    let golden: Vec<u32> = GOLDEN_PROMPT.split(',').map(|s| s.parse().unwrap()).collect();
    assert_eq!(out.ids, golden);
    assert_eq!(out.logits.len(), 512);
    assert_eq!(argmax(&out.logits), GOLDEN_NEXT);
    // --ids gives the same scores without a tokenizer.
    let by_ids = logits(&stories(), &["--ids", GOLDEN_PROMPT]);
    assert_eq!(by_ids.logits, out.logits);
}

#[test]
fn hf_checkpoint_of_stories_gives_the_same_logits() {
    let dir = tmp_dir("stories-hf");
    stories_as_hf(&dir);
    let gguf = logits(&stories(), &["--ids", GOLDEN_PROMPT]);
    let hf = logits(&dir, &["--ids", GOLDEN_PROMPT]);
    assert_eq!(hf.ids, gguf.ids);
    assert_eq!(hf.logits, gguf.logits, "bit-identical");
    assert_eq!(argmax(&hf.logits), GOLDEN_NEXT);

    // Without tokenizer.json a text prompt is refused with the reason.
    let (_, stderr, ok) = icllm(&["logits", "--model", dir.to_str().unwrap(), "--prompt", "Joe"]);
    assert!(!ok && stderr.contains("tokenizer.json"), "{stderr}");

    // inspect describes the checkpoint.
    std::fs::copy(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/tokenizers/qwen2.5/tokenizer_config.json"),
        dir.join("tokenizer_config.json"),
    )
    .unwrap();
    let (stdout, stderr, ok) = icllm(&["inspect", "--tensors", dir.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    for want in [
        "Hugging Face checkpoint, 1 shard",
        "architecture:  llama",
        "dim 64, layers 5, heads 8 (kv 4), head_dim 8",
        "tensors:       48 ",
        "f32: 48",
        "model.layers.0.self_attn.q_proj.weight",
        "[64, 64]",
        "tokenizer:     none",
        "chat template: yes",
        "\"<|im_end|>\"",
    ] {
        assert!(stdout.contains(want), "missing {want:?} in\n{stdout}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn inspect_a_gguf_file() {
    let (stdout, stderr, ok) = icllm(&["inspect", stories().to_str().unwrap()]);
    assert!(ok, "{stderr}");
    for want in [
        "(GGUF v3)",
        "architecture:  llama",
        "head_dim 8",
        "ctx 128",
        "rope:          Normal, base 10000",
        "f32: 48",
        "tokenizer:     llama, 512 tokens",
        "bos 1 \"<s>\"",
        "chat template: no",
    ] {
        assert!(stdout.contains(want), "missing {want:?} in\n{stdout}");
    }
    assert!(
        !stdout.contains("blk.0.attn_q.weight"),
        "no tensor list without --tensors"
    );
}

#[test]
fn generate_chat_uses_the_template_and_needs_one() {
    // stories260K has no template: --chat is refused.
    let (_, stderr, ok) = icllm(&[
        "generate",
        "--model",
        stories().to_str().unwrap(),
        "--prompt",
        "Joe loves writing stories",
        "--chat",
    ]);
    assert!(!ok && stderr.contains("has no chat template"), "{stderr}");

    // With a template that wraps the user's text as "<text> stories", the
    // chat prompt "Joe loves writing" is the golden prompt.
    let bytes = std::fs::read(stories()).unwrap();
    let (mut meta, tensors) = parts_of(&bytes).unwrap();
    meta.push((
        "tokenizer.chat_template".into(),
        Value::String("{% for m in messages %}{{ m.content }} stories{% endfor %}".into()),
    ));
    let dir = tmp_dir("chat");
    let path = dir.join("stories-chat.gguf");
    std::fs::write(&path, write(&meta, &tensors)).unwrap();
    let (stdout, stderr, ok) = icllm(&[
        "generate",
        "--model",
        path.to_str().unwrap(),
        "--prompt",
        "Joe loves writing",
        "--chat",
        "-n",
        "10",
        "--temperature",
        "0",
    ]);
    assert!(ok, "{stderr}");
    assert_eq!(stdout, ". He liked to play with his toy\n");
    let (stdout, _, ok) = icllm(&["inspect", path.to_str().unwrap()]);
    assert!(
        ok && stdout.contains("chat template: yes") && stdout.contains("stops at \"</s>\""),
        "{stdout}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

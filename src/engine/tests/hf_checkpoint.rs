//! Hugging Face checkpoints load to the same model as their GGUF conversion.
//!
//! Each test draws ONE set of random weights, writes it twice — as an HF
//! directory (config.json + safetensors, PyTorch names and row order) and as
//! a GGUF file the way llama.cpp's converter would (GGUF names, ggml dims,
//! and for llama the q/k rows permuted so that adjacent-pair RoPE applies) —
//! and compares the logits of both models on a few token sequences.
//! Then: broken checkpoints give clear errors, never panics.

use icllm_engine::format::hf::{self, HfError};
use icllm_engine::model::{Architecture, Model, ModelError};
use safetensors::tensor::{Dtype, TensorView};
use std::path::{Path, PathBuf};

mod common;
use common::tiny_hf::*;

fn check_round_trip(name: &str, s: Shape, dtype: Dtype, n_shards: usize, extra_config: &str, tol: f32) -> Model {
    let weights = random_weights(&s, name.len() as u64 * 7919 + 13);
    let dir = tmp_dir(name);
    write_hf(&dir, &config_json(&s, extra_config), &weights, dtype, n_shards);
    let hf_model = hf::load_dir(&dir).unwrap();
    let (gguf_model, _) = Model::from_gguf_bytes(&gguf_bytes(&s, &weights, dtype, None)).unwrap();
    assert_same_logits(&hf_model, &gguf_model, tol);
    std::fs::remove_dir_all(&dir).unwrap();
    hf_model
}

#[test]
fn llama_hf_equals_its_gguf_conversion_bit_for_bit() {
    let m = check_round_trip("llama-f32", LLAMA, Dtype::F32, 1, "", 0.0);
    assert_eq!(m.config.arch, Architecture::Llama);
    assert!(m.output.is_some());
}

#[test]
fn llama_without_the_permutation_would_differ() {
    // The permutation matters: a GGUF written WITHOUT it is another model.
    let weights = random_weights(&LLAMA, 99);
    let dir = tmp_dir("llama-unpermuted");
    write_hf(&dir, &config_json(&LLAMA, ""), &weights, Dtype::F32, 1);
    let hf_model = hf::load_dir(&dir).unwrap();
    let (unpermuted, _) = Model::from_gguf_bytes(&gguf_bytes_with(&LLAMA, &weights, Dtype::F32, None, false)).unwrap();
    let a = last_logits(&hf_model, SEQUENCES[2]);
    let b = last_logits(&unpermuted, SEQUENCES[2]);
    let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    assert!(
        worst > 1e-3,
        "without the permutation the logits should differ, worst {worst}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn llama_f16_and_bf16_sharded_checkpoints() {
    // F16 and BF16 weights multiply activations rounded to their type (as
    // llama.cpp's CPU backend does), so they are the F32 GGUF of the rounded
    // values up to that rounding (largest logit difference measured: 0.004
    // for F16, 0.024 for BF16); their own conversions, F16 and BF16, are the
    // same bits (hf_convert.rs).
    check_round_trip("llama-f16", LLAMA, Dtype::F16, 1, "", 0.01);
    check_round_trip("llama-bf16-3shards", LLAMA, Dtype::BF16, 3, "", 0.05);
}

#[test]
fn llama_tied_embeddings() {
    let s = Shape { tied: true, ..LLAMA };
    let m = check_round_trip("llama-tied", s, Dtype::F32, 1, "", 0.0);
    assert!(m.output.is_none());
}

#[test]
fn llama3_rope_scaling_matches_the_converters_rope_freqs() {
    let s = Shape {
        head_dim: 16,
        heads: 2,
        kv_heads: 1,
        ..LLAMA
    };
    let extra = r#", "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                   "high_freq_factor": 4.0, "original_max_position_embeddings": 32}"#;
    let weights = random_weights(&s, 4242);
    let dir = tmp_dir("llama3-rope");
    write_hf(&dir, &config_json(&s, extra), &weights, Dtype::F32, 1);
    let hf_model = hf::load_dir(&dir).unwrap();
    // The converter's rope_freqs, computed here from its description:
    // wavelen = 2π / base^(-2j/d); < 32/4 → 1; > 32/1 → 8; else 1 / ((1 - s) / 8 + s).
    let ff: Vec<f32> = (0..s.head_dim / 2)
        .map(|j| {
            let freq = 10000f64.powf(-(2.0 * j as f64) / s.head_dim as f64);
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            if wavelen < 32.0 / 4.0 {
                1.0
            } else if wavelen > 32.0 {
                8.0
            } else {
                let smooth = (32.0 / wavelen - 1.0) / (4.0 - 1.0);
                (1.0 / ((1.0 - smooth) / 8.0 + smooth)) as f32
            }
        })
        .collect();
    assert!(ff.contains(&1.0) && ff.contains(&8.0));
    assert!(ff.iter().any(|&f| f > 1.0 && f < 8.0), "{ff:?}");
    let (gguf_model, _) = Model::from_gguf_bytes(&gguf_bytes(&s, &weights, Dtype::F32, Some(ff))).unwrap();
    assert_same_logits(&hf_model, &gguf_model, 1e-6);
    // And the scaling changes the model (vs the same weights unscaled).
    let (plain, _) = Model::from_gguf_bytes(&gguf_bytes(&s, &weights, Dtype::F32, None)).unwrap();
    let a = last_logits(&hf_model, SEQUENCES[2]);
    let b = last_logits(&plain, SEQUENCES[2]);
    assert!(a.iter().zip(&b).any(|(x, y)| (x - y).abs() > 1e-4));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn qwen2_with_biases_equals_its_gguf_conversion() {
    let s = Shape {
        arch: "qwen2",
        tied: true,
        ..LLAMA
    };
    let m = check_round_trip("qwen2", s, Dtype::F32, 1, "", 0.0);
    assert_eq!(m.config.arch, Architecture::Qwen2);
    assert!(m.layers[0].qkv_bias.is_some() && m.output.is_none());
}

#[test]
fn qwen3_with_qk_norm_and_wide_heads_equals_its_gguf_conversion() {
    let s = Shape {
        arch: "qwen3",
        head_dim: 16, // q_dim = 64 ≠ dim = 32
        ..LLAMA
    };
    let m = check_round_trip("qwen3", s, Dtype::F32, 2, "", 0.0);
    assert_eq!(m.config.arch, Architecture::Qwen3);
    assert_eq!((m.config.q_dim, m.config.dim), (64, 32));
    assert!(m.layers[1].qk_norm.is_some());
}

// ---- broken checkpoints ----

fn good_dir(name: &str) -> (PathBuf, Vec<Weight>) {
    let weights = random_weights(&LLAMA, 5);
    let dir = tmp_dir(name);
    write_hf(&dir, &config_json(&LLAMA, ""), &weights, Dtype::F32, 1);
    (dir, weights)
}

fn load_err(dir: &Path) -> ModelError {
    let err = hf::load_dir(dir).unwrap_err();
    std::fs::remove_dir_all(dir).unwrap();
    err
}

#[test]
fn corrupt_safetensors_header_is_an_error() {
    let (dir, _) = good_dir("corrupt");
    let path = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[8] = b'#'; // the JSON header's opening brace
    std::fs::write(&path, &bytes).unwrap();
    let err = load_err(&dir);
    assert!(
        matches!(&err, ModelError::Hf(HfError::Header { file, .. }) if file == "model.safetensors"),
        "{err}"
    );
    assert!(err.to_string().contains("not a valid safetensors file"), "{err}");

    // A header length beyond the file.
    let (dir, _) = good_dir("corrupt-len");
    let path = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let err = load_err(&dir);
    assert!(matches!(&err, ModelError::Hf(HfError::Header { .. })), "{err}");

    // Truncated data.
    let (dir, _) = good_dir("truncated");
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 4]).unwrap();
    let err = load_err(&dir);
    assert!(err.to_string().contains("bytes of data but the file has"), "{err}");
}

#[test]
fn missing_shard_is_named() {
    let weights = random_weights(&LLAMA, 6);
    let dir = tmp_dir("missing-shard");
    write_hf(&dir, &config_json(&LLAMA, ""), &weights, Dtype::F32, 2);
    std::fs::remove_file(dir.join("model-00002-of-00002.safetensors")).unwrap();
    let err = load_err(&dir);
    assert_eq!(
        err,
        ModelError::Hf(HfError::MissingShard {
            file: "model-00002-of-00002.safetensors".into()
        })
    );
    assert_eq!(
        err.to_string(),
        "shard \"model-00002-of-00002.safetensors\" (named by model.safetensors.index.json) is missing"
    );
}

#[test]
fn unknown_architecture_is_named() {
    let (dir, _) = good_dir("unknown-arch");
    let config = config_json(&LLAMA, "").replace("\"model_type\": \"llama\"", "\"model_type\": \"mamba\"");
    std::fs::write(dir.join("config.json"), config).unwrap();
    let err = load_err(&dir);
    assert_eq!(
        err.to_string(),
        "model architecture \"mamba\" is not supported (supported: llama, qwen2, qwen3)"
    );
    // Inferred from `architectures` when model_type is absent.
    let hf = hf::HfConfig::from_json(r#"{"architectures": ["GemmaForCausalLM"]}"#).unwrap();
    assert!(hf.resolve().unwrap_err().to_string().contains("\"gemma\""));
}

#[test]
fn wrong_shape_is_named_in_hf_terms() {
    let (dir, mut weights) = good_dir("wrong-shape");
    let w = weights
        .iter_mut()
        .find(|w| w.hf_name == "model.layers.1.mlp.up_proj.weight")
        .unwrap();
    w.shape = vec![LLAMA.hidden - 1, LLAMA.dim];
    w.values.truncate((LLAMA.hidden - 1) * LLAMA.dim);
    write_hf(&dir, &config_json(&LLAMA, ""), &weights, Dtype::F32, 1);
    let err = load_err(&dir);
    assert_eq!(
        err.to_string(),
        "tensor \"model.layers.1.mlp.up_proj.weight\" has shape [47, 32], expected [48, 32]"
    );
}

#[test]
fn other_checkpoint_errors_are_clear() {
    // A needed tensor missing.
    let (dir, mut weights) = good_dir("missing-tensor");
    weights.retain(|w| w.hf_name != "model.layers.0.self_attn.v_proj.weight");
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    write_hf(&dir, &config_json(&LLAMA, ""), &weights, Dtype::F32, 1);
    assert_eq!(
        load_err(&dir).to_string(),
        "the checkpoint has no tensor \"model.layers.0.self_attn.v_proj.weight\""
    );

    // An unsupported dtype.
    let dir = tmp_dir("dtype");
    std::fs::write(dir.join("config.json"), config_json(&LLAMA, "")).unwrap();
    let weights = random_weights(&LLAMA, 8);
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = weights
        .iter()
        .map(|w| {
            let dtype_bytes = if w.hf_name == "model.norm.weight" {
                w.values
                    .iter()
                    .flat_map(|v| ((*v * 100.0) as i32).to_le_bytes())
                    .collect()
            } else {
                bytes_of(&w.values, Dtype::F32)
            };
            (w.hf_name.clone(), w.shape.clone(), dtype_bytes)
        })
        .collect();
    let views = data.iter().map(|(n, shape, b)| {
        let dtype = if n == "model.norm.weight" {
            Dtype::I32
        } else {
            Dtype::F32
        };
        (n.clone(), TensorView::new(dtype, shape.clone(), b).unwrap())
    });
    std::fs::write(
        dir.join("model.safetensors"),
        safetensors::serialize(views, None).unwrap(),
    )
    .unwrap();
    assert_eq!(
        load_err(&dir).to_string(),
        "tensor \"model.norm.weight\" has dtype I32, which is not supported (supported: F32, F16, BF16)"
    );

    // config.json that is not JSON, or lacks a required field.
    let (dir, _) = good_dir("bad-config");
    std::fs::write(dir.join("config.json"), "{\"hidden_size\": ").unwrap();
    assert!(load_err(&dir)
        .to_string()
        .starts_with("config.json: not a valid model config"));
    let (dir, _) = good_dir("config-missing-field");
    let config = config_json(&LLAMA, "").replace("\"intermediate_size\": 48,", "");
    std::fs::write(dir.join("config.json"), config).unwrap();
    assert_eq!(
        load_err(&dir).to_string(),
        "model metadata \"config.json: intermediate_size\": missing"
    );

    // No shards at all.
    let dir = tmp_dir("no-shards");
    std::fs::write(dir.join("config.json"), config_json(&LLAMA, "")).unwrap();
    assert!(matches!(load_err(&dir), ModelError::Hf(HfError::NoShards)));
}

#[test]
fn incremental_loading_follows_next_needed() {
    // The canister's path: headers first, then each tensor's bytes as asked.
    let weights = random_weights(&LLAMA, 12);
    let all: Vec<&Weight> = weights.iter().collect();
    let file = safetensors_bytes(&all, Dtype::F32);
    let header = hf::ShardHeader::parse("model.safetensors", &file, file.len() as u64).unwrap();
    let mut loader = hf::HfLoader::new(&config_json(&LLAMA, ""), &[header]).unwrap();
    let mut last_start = 0;
    let mut count = 0;
    while let Some(src) = loader.next_needed() {
        assert!(src.range.start >= last_start, "file order");
        last_start = src.range.start;
        let (name, range) = (src.hf_name.clone(), src.range.clone());
        loader
            .add_tensor(&name, &file[range.start as usize..range.end as usize])
            .unwrap();
        count += 1;
        // Adding the same tensor twice is refused.
        if count == 1 {
            let err = loader.add_tensor(&name, &file[range.start as usize..range.end as usize]);
            assert!(err.is_err());
        }
    }
    assert_eq!(count, weights.len());
    let model = loader.finish().unwrap();
    let (gguf_model, _) = Model::from_gguf_bytes(&gguf_bytes(&LLAMA, &weights, Dtype::F32, None)).unwrap();
    assert_same_logits(&model, &gguf_model, 0.0);
}

//! Hugging Face checkpoints load to the same model as their GGUF conversion.
//!
//! Each test draws ONE set of random weights, writes it twice — as an HF
//! directory (config.json + safetensors, PyTorch names and row order) and as
//! a GGUF file the way llama.cpp's converter would (GGUF names, ggml dims,
//! and for llama the q/k rows permuted so that adjacent-pair RoPE applies) —
//! and compares the logits of both models on a few token sequences.
//! Then: broken checkpoints give clear errors, never panics.

use icllm_engine::format::gguf::writer::{write, TensorData};
use icllm_engine::format::gguf::Value;
use icllm_engine::format::hf::{self, HfError};
use icllm_engine::job::KvCache;
use icllm_engine::model::{forward, Architecture, Model, ModelError};
use icllm_engine::tensor::GgmlType;
use safetensors::tensor::{Dtype, TensorView};
use std::path::{Path, PathBuf};

/// Shapes of a tiny model.
#[derive(Clone, Copy)]
struct Shape {
    arch: &'static str,
    dim: usize,
    hidden: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    vocab: usize,
    tied: bool,
}

impl Shape {
    fn q_dim(&self) -> usize {
        self.heads * self.head_dim
    }
    fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }
}

const LLAMA: Shape = Shape {
    arch: "llama",
    dim: 32,
    hidden: 48,
    layers: 2,
    heads: 4,
    kv_heads: 2,
    head_dim: 8,
    vocab: 40,
    tied: false,
};

/// One tensor in HF terms: name, PyTorch shape (outermost first), f32 values.
struct Weight {
    hf_name: String,
    shape: Vec<usize>,
    values: Vec<f32>,
}

/// Deterministic values in [-0.5, 0.5).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    }
    fn vec(&mut self, n: usize, scale: f32, offset: f32) -> Vec<f32> {
        (0..n).map(|_| offset + scale * self.next()).collect()
    }
}

/// Random weights of a model with shape `s`, in HF names.
fn random_weights(s: &Shape, seed: u64) -> Vec<Weight> {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut w = Vec::new();
    let mut push = |name: String, shape: Vec<usize>, scale: f32, offset: f32, rng: &mut Rng| {
        let n = shape.iter().product();
        w.push(Weight {
            hf_name: name,
            shape,
            values: rng.vec(n, scale, offset),
        })
    };
    push(
        "model.embed_tokens.weight".into(),
        vec![s.vocab, s.dim],
        2.0,
        0.0,
        &mut rng,
    );
    for l in 0..s.layers {
        let p = |x: &str| format!("model.layers.{l}.{x}");
        push(p("input_layernorm.weight"), vec![s.dim], 0.5, 1.0, &mut rng);
        push(p("self_attn.q_proj.weight"), vec![s.q_dim(), s.dim], 1.0, 0.0, &mut rng);
        push(
            p("self_attn.k_proj.weight"),
            vec![s.kv_dim(), s.dim],
            1.0,
            0.0,
            &mut rng,
        );
        push(
            p("self_attn.v_proj.weight"),
            vec![s.kv_dim(), s.dim],
            1.0,
            0.0,
            &mut rng,
        );
        push(p("self_attn.o_proj.weight"), vec![s.dim, s.q_dim()], 0.5, 0.0, &mut rng);
        if s.arch == "qwen2" {
            push(p("self_attn.q_proj.bias"), vec![s.q_dim()], 1.0, 0.0, &mut rng);
            push(p("self_attn.k_proj.bias"), vec![s.kv_dim()], 1.0, 0.0, &mut rng);
            push(p("self_attn.v_proj.bias"), vec![s.kv_dim()], 1.0, 0.0, &mut rng);
        }
        if s.arch == "qwen3" {
            push(p("self_attn.q_norm.weight"), vec![s.head_dim], 0.5, 1.0, &mut rng);
            push(p("self_attn.k_norm.weight"), vec![s.head_dim], 0.5, 1.0, &mut rng);
        }
        push(p("post_attention_layernorm.weight"), vec![s.dim], 0.5, 1.0, &mut rng);
        push(p("mlp.gate_proj.weight"), vec![s.hidden, s.dim], 1.0, 0.0, &mut rng);
        push(p("mlp.up_proj.weight"), vec![s.hidden, s.dim], 1.0, 0.0, &mut rng);
        push(p("mlp.down_proj.weight"), vec![s.dim, s.hidden], 0.5, 0.0, &mut rng);
    }
    push("model.norm.weight".into(), vec![s.dim], 0.5, 1.0, &mut rng);
    if !s.tied {
        push("lm_head.weight".into(), vec![s.vocab, s.dim], 1.0, 0.0, &mut rng);
    }
    w
}

fn config_json(s: &Shape, extra: &str) -> String {
    format!(
        r#"{{"architectures": ["{}ForCausalLM"], "model_type": "{}", "hidden_size": {}, "intermediate_size": {},
            "num_hidden_layers": {}, "num_attention_heads": {}, "num_key_value_heads": {}, "head_dim": {},
            "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 64, "vocab_size": {},
            "tie_word_embeddings": {}, "bos_token_id": 1, "eos_token_id": 2{extra}}}"#,
        match s.arch {
            "llama" => "Llama",
            "qwen2" => "Qwen2",
            _ => "Qwen3",
        },
        s.arch,
        s.dim,
        s.hidden,
        s.layers,
        s.heads,
        s.kv_heads,
        s.head_dim,
        s.vocab,
        s.tied
    )
}

fn tmp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("icllm-hf-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn bytes_of(values: &[f32], dtype: Dtype) -> Vec<u8> {
    match dtype {
        Dtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Dtype::F16 => values
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_bits().to_le_bytes())
            .collect(),
        Dtype::BF16 => values
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_bits().to_le_bytes())
            .collect(),
        other => panic!("{other:?}"),
    }
}

/// Serializes `weights` as one safetensors file.
fn safetensors_bytes(weights: &[&Weight], dtype: Dtype) -> Vec<u8> {
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = weights
        .iter()
        .map(|w| (w.hf_name.clone(), w.shape.clone(), bytes_of(&w.values, dtype)))
        .collect();
    let views = data
        .iter()
        .map(|(n, shape, b)| (n.clone(), TensorView::new(dtype, shape.clone(), b).unwrap()));
    safetensors::serialize(views, None).unwrap()
}

/// Writes an HF checkpoint directory: one shard, or `n_shards` with an index.
fn write_hf(dir: &Path, config: &str, weights: &[Weight], dtype: Dtype, n_shards: usize) {
    std::fs::write(dir.join("config.json"), config).unwrap();
    if n_shards == 1 {
        let all: Vec<&Weight> = weights.iter().collect();
        std::fs::write(dir.join("model.safetensors"), safetensors_bytes(&all, dtype)).unwrap();
        return;
    }
    let mut map = Vec::new();
    for k in 0..n_shards {
        let file = format!("model-{:05}-of-{:05}.safetensors", k + 1, n_shards);
        let part: Vec<&Weight> = weights.iter().skip(k).step_by(n_shards).collect();
        for w in &part {
            map.push(format!("\"{}\": \"{file}\"", w.hf_name));
        }
        std::fs::write(dir.join(&file), safetensors_bytes(&part, dtype)).unwrap();
    }
    let index = format!(
        "{{\"metadata\": {{\"total_size\": 0}}, \"weight_map\": {{{}}}}}",
        map.join(", ")
    );
    std::fs::write(dir.join("model.safetensors.index.json"), index).unwrap();
}

/// llama.cpp's converter permutes q/k of llama checkpoints: viewing the rows
/// as (n_head, 2, head_dim / 2) and swapping the last two axes. Written here
/// from that description, independently of the engine's own permutation.
fn converter_permute(values: &[f32], rows: usize, cols: usize, n_head: usize) -> Vec<f32> {
    let per_head = rows / n_head;
    let half = per_head / 2;
    let mut out = vec![0.0; values.len()];
    for h in 0..n_head {
        for a in 0..2 {
            for b in 0..half {
                // new index (h, b, a) ← old index (h, a, b)
                let old_row = h * per_head + a * half + b;
                let new_row = h * per_head + b * 2 + a;
                out[new_row * cols..(new_row + 1) * cols]
                    .copy_from_slice(&values[old_row * cols..(old_row + 1) * cols]);
            }
        }
    }
    out
}

/// The GGUF name of an HF tensor, written out in the test (not the engine's map).
fn gguf_name(hf_name: &str) -> String {
    let globals = [
        ("model.embed_tokens.weight", "token_embd.weight"),
        ("model.norm.weight", "output_norm.weight"),
        ("lm_head.weight", "output.weight"),
    ];
    if let Some((_, g)) = globals.iter().find(|(h, _)| *h == hf_name) {
        return g.to_string();
    }
    let rest = hf_name.strip_prefix("model.layers.").unwrap();
    let (l, suffix) = rest.split_once('.').unwrap();
    let g = match suffix {
        "input_layernorm.weight" => "attn_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "self_attn.q_proj.bias" => "attn_q.bias",
        "self_attn.k_proj.bias" => "attn_k.bias",
        "self_attn.v_proj.bias" => "attn_v.bias",
        "self_attn.q_norm.weight" => "attn_q_norm.weight",
        "self_attn.k_norm.weight" => "attn_k_norm.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        other => panic!("{other}"),
    };
    format!("blk.{l}.{g}")
}

/// The GGUF conversion of the same weights (F32; values first rounded
/// through `dtype` so both sides hold the same numbers).
fn gguf_bytes(s: &Shape, weights: &[Weight], dtype: Dtype, rope_freqs: Option<Vec<f32>>) -> Vec<u8> {
    gguf_bytes_with(s, weights, dtype, rope_freqs, true)
}

fn gguf_bytes_with(
    s: &Shape,
    weights: &[Weight],
    dtype: Dtype,
    rope_freqs: Option<Vec<f32>>,
    permute_llama_qk: bool,
) -> Vec<u8> {
    let a = s.arch;
    let k = |x: &str| format!("{a}.{x}");
    let mut meta = vec![
        ("general.architecture".to_string(), Value::String(a.into())),
        (k("context_length"), Value::U32(64)),
        (k("embedding_length"), Value::U32(s.dim as u32)),
        (k("block_count"), Value::U32(s.layers as u32)),
        (k("feed_forward_length"), Value::U32(s.hidden as u32)),
        (k("attention.head_count"), Value::U32(s.heads as u32)),
        (k("attention.head_count_kv"), Value::U32(s.kv_heads as u32)),
        (k("attention.key_length"), Value::U32(s.head_dim as u32)),
        (k("attention.value_length"), Value::U32(s.head_dim as u32)),
        (k("attention.layer_norm_rms_epsilon"), Value::F32(1e-5)),
        (k("rope.freq_base"), Value::F32(10000.0)),
    ];
    meta.push(("tokenizer.ggml.eos_token_id".into(), Value::U32(2)));
    let mut tensors = Vec::new();
    for w in weights {
        let rounded: Vec<f32> = match dtype {
            Dtype::F32 => w.values.clone(),
            Dtype::F16 => w.values.iter().map(|v| half::f16::from_f32(*v).to_f32()).collect(),
            Dtype::BF16 => w.values.iter().map(|v| half::bf16::from_f32(*v).to_f32()).collect(),
            other => panic!("{other:?}"),
        };
        let mut values = rounded;
        let is_q = w.hf_name.ends_with("self_attn.q_proj.weight");
        let is_k = w.hf_name.ends_with("self_attn.k_proj.weight");
        if a == "llama" && permute_llama_qk && (is_q || is_k) {
            let n_head = if is_q { s.heads } else { s.kv_heads };
            values = converter_permute(&values, w.shape[0], w.shape[1], n_head);
        }
        tensors.push(TensorData {
            name: gguf_name(&w.hf_name),
            dims: w.shape.iter().rev().map(|&d| d as u64).collect(),
            ty: GgmlType::F32,
            bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        });
    }
    if let Some(ff) = rope_freqs {
        tensors.push(TensorData {
            name: "rope_freqs.weight".into(),
            dims: vec![ff.len() as u64],
            ty: GgmlType::F32,
            bytes: ff.iter().flat_map(|v| v.to_le_bytes()).collect(),
        });
    }
    write(&meta, &tensors)
}

/// Logits at the last position after running `tokens` through the model.
fn last_logits(model: &Model, tokens: &[u32]) -> Vec<f32> {
    let c = &model.config;
    let mut kv = KvCache::new(c.n_layers, 64, c.kv_dim).unwrap();
    let mut x = vec![0.0; tokens.len() * c.dim];
    forward::embed(model, tokens, &mut x);
    for layer in 0..c.n_layers {
        forward::attention_block(model, layer, 0, &mut x, &mut kv);
        forward::ffn_block(model, layer, &mut x);
    }
    let mut logits = vec![0.0; c.vocab_size];
    forward::logits(model, &x[(tokens.len() - 1) * c.dim..], &mut logits);
    logits
}

const SEQUENCES: &[&[u32]] = &[&[1], &[1, 5, 9, 13], &[3, 39, 0, 7, 7, 21, 30, 2, 11]];

/// Loads both forms and checks their logits agree to `tol` (0 = bit-identical).
fn assert_same_logits(hf_model: &Model, gguf_model: &Model, tol: f32) {
    assert_eq!(hf_model.config, gguf_model.config);
    for seq in SEQUENCES {
        let a = last_logits(hf_model, seq);
        let b = last_logits(gguf_model, seq);
        let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        assert!(worst <= tol, "sequence {seq:?}: logits differ by {worst}");
        assert!(a.iter().any(|v| v.abs() > 0.1), "logits are not trivial");
    }
}

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
    check_round_trip("llama-f16", LLAMA, Dtype::F16, 1, "", 1e-4);
    // BF16 is widened to F32 at load: exactly the F32 GGUF of the rounded values.
    check_round_trip("llama-bf16-3shards", LLAMA, Dtype::BF16, 3, "", 0.0);
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

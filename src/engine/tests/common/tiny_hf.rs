//! A tiny Hugging Face checkpoint written by tests: random weights of a
//! llama / qwen2 / qwen3 shape as config.json + safetensors (PyTorch names
//! and row order), the same weights as a GGUF file written the way
//! llama.cpp's converter would (independently of the engine's own
//! conversion), and a small byte-level BPE tokenizer.json.
//!
//! Shared by the engine's HF tests and, through `#[path]`, the CLI's tests.

#![allow(dead_code)]

use icllm_engine::format::gguf::writer::{write, TensorData};
use icllm_engine::format::gguf::Value;
use icllm_engine::job::KvCache;
use icllm_engine::model::{forward, Model};
use icllm_engine::tensor::GgmlType;
use safetensors::tensor::{Dtype, TensorView};
use std::path::{Path, PathBuf};

/// Shapes of a tiny model.
#[derive(Clone, Copy)]
pub struct Shape {
    pub arch: &'static str,
    pub dim: usize,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub tied: bool,
}

impl Shape {
    pub fn q_dim(&self) -> usize {
        self.heads * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }
}

pub const LLAMA: Shape = Shape {
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
pub struct Weight {
    pub hf_name: String,
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// Deterministic values in [-0.5, 0.5).
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    }
    pub fn vec(&mut self, n: usize, scale: f32, offset: f32) -> Vec<f32> {
        (0..n).map(|_| offset + scale * self.next()).collect()
    }
}

/// Random weights of a model with shape `s`, in HF names.
pub fn random_weights(s: &Shape, seed: u64) -> Vec<Weight> {
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

pub fn config_json(s: &Shape, extra: &str) -> String {
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

pub fn tmp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("icllm-hf-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn bytes_of(values: &[f32], dtype: Dtype) -> Vec<u8> {
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
pub fn safetensors_bytes(weights: &[&Weight], dtype: Dtype) -> Vec<u8> {
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
pub fn write_hf(dir: &Path, config: &str, weights: &[Weight], dtype: Dtype, n_shards: usize) {
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
pub fn converter_permute(values: &[f32], rows: usize, cols: usize, n_head: usize) -> Vec<f32> {
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
pub fn gguf_name(hf_name: &str) -> String {
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
pub fn gguf_bytes(s: &Shape, weights: &[Weight], dtype: Dtype, rope_freqs: Option<Vec<f32>>) -> Vec<u8> {
    gguf_bytes_with(s, weights, dtype, rope_freqs, true)
}

pub fn gguf_bytes_with(
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
pub fn last_logits(model: &Model, tokens: &[u32]) -> Vec<f32> {
    let c = &model.config;
    let mut kv = KvCache::new(icllm_engine::kv::KvShape::of(c), 64).unwrap();
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

pub const SEQUENCES: &[&[u32]] = &[&[1], &[1, 5, 9, 13], &[3, 39, 0, 7, 7, 21, 30, 2, 11]];

/// Loads both forms and checks their logits agree to `tol` (0 = bit-identical).
pub fn assert_same_logits(hf_model: &Model, gguf_model: &Model, tol: f32) {
    assert_eq!(hf_model.config, gguf_model.config);
    for seq in SEQUENCES {
        let a = last_logits(hf_model, seq);
        let b = last_logits(gguf_model, seq);
        let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        assert!(worst <= tol, "sequence {seq:?}: logits differ by {worst}");
        assert!(a.iter().any(|v| v.abs() > 0.1), "logits are not trivial");
    }
}

// ---- a tiny byte-level BPE tokenizer.json ----

/// The pre-tokenizer of the tiny tokenizer.json, as the real families write it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreStyle {
    /// Qwen2's `Split` regex (single digits), no BOS, NFC normalizer, merges as "a b".
    Qwen2,
    /// Llama 3's `Split` regex, BOS added by a `TemplateProcessing`
    /// post-processor, merges as `["a", "b"]` pairs.
    Llama3 { ignore_merges: bool },
    /// GPT-2: a `ByteLevel` pre-tokenizer with its own regex.
    Gpt2,
}

pub const QWEN2_REGEX: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
pub const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Merge rules of the tiny vocabulary (each result becomes a token).
pub const TINY_MERGES: &[(&str, &str)] = &[
    ("Ġ", "t"),
    ("h", "e"),
    ("Ġt", "he"),
    ("i", "n"),
    ("Ġ", "a"),
    ("e", "r"),
    ("o", "n"),
    ("l", "l"),
    ("Ġ", "w"),
    ("o", "r"),
    ("Ġw", "or"),
    ("l", "d"),
    ("Ġwor", "ld"),
    ("he", "ll"),
    ("hell", "o"),
    ("Ġ", "h"),
    ("Ġh", "e"),
    ("1", "2"),
    ("12", "3"),
    ("Ċ", "Ċ"),
];

/// A chat template in the ChatML style, with the tiny vocabulary's markers.
pub const TINY_CHAT_TEMPLATE: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// Texts the tiny tokenizer's conversion is checked on (special-token texts included).
pub const TINY_TEXTS: &[&str] = &[
    "hello world",
    "Hello the world in the end\n\n123 4567!",
    "<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n",
    "<think>x</think> <|end|><|begin|>",
    "Cửa Việt 🦙 naïve",
    "  spaces   and\ttabs\r\n",
];

/// `tokenizer.json` and `tokenizer_config.json` of a byte-level BPE
/// vocabulary: `<|endoftext|>` `<|begin|>` (BOS) `<|end|>` (EOS) as ids 0-2,
/// the 256 byte tokens, the merges' results, an id with no token, then
/// `<|im_start|>` `<|im_end|>` (control) and `<think>` (user-defined).
/// Returns the two files and the number of ids.
pub fn tiny_tokenizer(style: PreStyle) -> (String, String, usize) {
    let mut vocab: Vec<String> = Vec::new();
    for b in 0..=255u8 {
        vocab.push(icllm_engine::synth::gpt2_byte_char(b).to_string());
    }
    for (l, r) in TINY_MERGES {
        let joined = format!("{l}{r}");
        if !vocab.contains(&joined) {
            vocab.push(joined);
        }
    }
    let first = 3;
    let mut entries: Vec<String> = vocab
        .iter()
        .enumerate()
        .map(|(i, t)| format!("{}: {}", json_str(t), i + first))
        .collect();
    let hole = vocab.len() + first; // no token has this id
    let im_start = hole + 1;
    entries.sort();
    let added = |id: usize, content: &str, special: bool| {
        format!(
            r#"{{"id": {id}, "content": {}, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": {special}}}"#,
            json_str(content)
        )
    };
    let added_tokens = [
        added(0, "<|endoftext|>", true),
        added(1, "<|begin|>", true),
        added(2, "<|end|>", true),
        added(im_start, "<|im_start|>", true),
        added(im_start + 1, "<|im_end|>", true),
        added(im_start + 2, "<think>", false),
    ]
    .join(", ");
    let n_ids = im_start + 3;
    let (merges, ignore_merges) = match style {
        PreStyle::Llama3 { ignore_merges } => (
            TINY_MERGES
                .iter()
                .map(|(l, r)| format!("[{}, {}]", json_str(l), json_str(r)))
                .collect::<Vec<_>>(),
            ignore_merges,
        ),
        _ => (
            TINY_MERGES.iter().map(|(l, r)| json_str(&format!("{l} {r}"))).collect(),
            false,
        ),
    };
    let split = |re: &str| {
        format!(
            r#"{{"type": "Sequence", "pretokenizers": [{{"type": "Split", "pattern": {{"Regex": {}}}, "behavior": "Isolated", "invert": false}}, {{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}}]}}"#,
            json_str(re)
        )
    };
    let (normalizer, pre, post, bos) = match style {
        PreStyle::Qwen2 => (
            r#"{"type": "NFC"}"#.to_string(),
            split(QWEN2_REGEX),
            r#"{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}"#
                .to_string(),
            "null",
        ),
        PreStyle::Llama3 { .. } => (
            "null".to_string(),
            split(LLAMA3_REGEX),
            r#"{"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<|begin|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}], "pair": [], "special_tokens": {"<|begin|>": {"id": "<|begin|>", "ids": [1], "tokens": ["<|begin|>"]}}}"#.to_string(),
            r#""<|begin|>""#,
        ),
        PreStyle::Gpt2 => (
            "null".to_string(),
            r#"{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}"#.to_string(),
            "null".to_string(),
            r#""<|begin|>""#,
        ),
    };
    let tokenizer = format!(
        r#"{{"version": "1.0", "truncation": null, "padding": null, "added_tokens": [{added_tokens}],
  "normalizer": {normalizer}, "pre_tokenizer": {pre}, "post_processor": {post},
  "decoder": {{"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true}},
  "model": {{"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null, "end_of_word_suffix": null,
    "fuse_unk": false, "byte_fallback": false, "ignore_merges": {ignore_merges},
    "vocab": {{{}}}, "merges": [{}]}}}}"#,
        entries.join(", "),
        merges.join(", ")
    );
    let config = format!(
        r#"{{"bos_token": {bos}, "eos_token": "<|end|>", "clean_up_tokenization_spaces": false,
  "chat_template": {}}}"#,
        json_str(TINY_CHAT_TEMPLATE)
    );
    (tokenizer, config, n_ids)
}

/// A JSON string literal.
pub fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A llama shape whose vocabulary holds the tiny tokenizer (and pads it).
pub const LLAMA_WITH_TOKENIZER: Shape = Shape { vocab: 300, ..LLAMA };

/// Writes a whole tiny checkpoint into `dir`: config.json, safetensors
/// (`n_shards`), tokenizer.json and tokenizer_config.json. Returns the weights.
pub fn write_tiny_checkpoint(
    dir: &Path,
    s: &Shape,
    dtype: Dtype,
    n_shards: usize,
    extra_config: &str,
    style: PreStyle,
    seed: u64,
) -> Vec<Weight> {
    let weights = random_weights(s, seed);
    write_hf(dir, &config_json(s, extra_config), &weights, dtype, n_shards);
    let (tokenizer, config, n_ids) = tiny_tokenizer(style);
    assert!(n_ids <= s.vocab, "the tokenizer has {n_ids} ids, the model {}", s.vocab);
    std::fs::write(dir.join("tokenizer.json"), tokenizer).unwrap();
    std::fs::write(dir.join("tokenizer_config.json"), config).unwrap();
    weights
}

// ---- a Llama-2-style checkpoint: SentencePiece-style tokenizer.json ----

/// A llama shape with Llama 2's vocabulary of 32,000 tokens.
pub const LLAMA2: Shape = Shape { vocab: 32_000, ..LLAMA };

/// Texts for the Llama 2 tokenizer: spaces, bytes outside the vocabulary, special-token texts.
pub const LLAMA2_TEXTS: &[&str] = &[
    "Hello world",
    "  two leading spaces and\ttabs\n\nnewlines ",
    "Cửa Việt 🦙 naïve 你好 ⁂",
    "<s>[INST] Hi [/INST] sure</s>",
];

/// Writes a Llama-2-style checkpoint into `dir`: config.json, one
/// safetensors file, and Llama 2's SentencePiece-style tokenizer.json and
/// tokenizer_config.json (testdata/tokenizers/llama-spm, made by Hugging
/// Face's converter). Returns the weights.
pub fn write_llama2_checkpoint(dir: &Path, s: &Shape, dtype: Dtype, seed: u64) -> Vec<Weight> {
    let weights = random_weights(s, seed);
    write_hf(dir, &config_json(s, ""), &weights, dtype, 1);
    // Both test crates live two levels below the repository root.
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/tokenizers/llama-spm");
    for file in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(src.join(file), dir.join(file)).unwrap();
    }
    weights
}

//! Converting a Hugging Face checkpoint to GGUF (`format::convert`): the
//! converted file loads to the same model as the checkpoint (logits bit for
//! bit, same config), carries the checkpoint's tensor types (BF16 as GGUF
//! BF16), and its tokenizer and chat template give the same ids as
//! tokenizer.json / tokenizer_config.json. Then what cannot be converted
//! fails with a clear error.

use icllm_engine::chat::{encode_chat, ChatTemplate, Message};
use icllm_engine::format::convert::{convert_dir, ConvertError, ConvertOptions};
use icllm_engine::format::gguf::Gguf;
use icllm_engine::format::hf;
use icllm_engine::model::{Architecture, Model};
use icllm_engine::synth::QuantMix;
use icllm_engine::tensor::GgmlType;
use icllm_engine::tokenizer::{EncodeOptions, TokenType, Tokenizer, TokenizerError};
use safetensors::tensor::Dtype;
use std::path::Path;

mod common;
use common::tiny_hf::*;

fn convert(dir: &Path, quant: Option<QuantMix>) -> Result<Vec<u8>, ConvertError> {
    let mut out = Vec::new();
    let opts = ConvertOptions { quant, threads: 2 };
    let summary = convert_dir(dir, &opts, &mut out)?;
    assert_eq!(summary.bytes, out.len() as u64);
    assert_eq!(summary.plan.file_size(), out.len() as u64);
    Ok(out)
}

fn hf_tokenizer(dir: &Path) -> Tokenizer {
    let json = std::fs::read_to_string(dir.join("tokenizer.json")).unwrap();
    let config = std::fs::read_to_string(dir.join("tokenizer_config.json")).unwrap();
    Tokenizer::from_hf_json(&json, Some(&config)).unwrap()
}

/// The two tokenizers encode `texts` the same way (with and without special
/// parsing, with the BOS each adds by default) and decode the ids alike.
fn assert_same_tokenizer(hf: &Tokenizer, gguf: &Tokenizer, texts: &[&str]) {
    assert_eq!(gguf.model_name(), hf.model_name());
    assert_eq!(gguf.add_bos_default(), hf.add_bos_default(), "add_bos");
    assert_eq!(gguf.add_eos_default(), hf.add_eos_default(), "add_eos");
    assert_eq!(gguf.eos_id(), hf.eos_id(), "eos");
    if hf.bos_id().is_some() {
        assert_eq!(gguf.bos_id(), hf.bos_id(), "bos");
    }
    assert!(gguf.vocab_size() >= hf.vocab_size());
    for id in 0..hf.vocab_size() as u32 {
        assert_eq!(gguf.token_str(id), hf.token_str(id), "text of {id}");
        assert_eq!(gguf.token_type(id), hf.token_type(id), "type of {id}");
        assert_eq!(gguf.is_eog(id), hf.is_eog(id), "end of generation {id}");
    }
    for id in hf.vocab_size() as u32..gguf.vocab_size() as u32 {
        assert_eq!(gguf.token_type(id), Some(TokenType::Unused), "padding {id}");
        assert_eq!(gguf.piece(id), b"");
    }
    for text in texts {
        for parse_special in [false, true] {
            let opts = EncodeOptions {
                add_bos: hf.add_bos_default(),
                parse_special,
            };
            let a = hf.encode_with(text, opts);
            let b = gguf.encode_with(text, opts);
            assert_eq!(b, a, "{text:?} (parse_special {parse_special})");
            assert_eq!(gguf.decode(&b), hf.decode(&a), "{text:?}");
        }
    }
}

/// Converts the checkpoint in `dir` and checks the GGUF against the HF load.
fn check_conversion(dir: &Path, texts: &[&str]) -> (Model, Gguf, Vec<u8>) {
    let bytes = convert(dir, None).unwrap();
    let (gguf_model, gguf) = Model::from_gguf_bytes(&bytes).unwrap();
    let hf_model = hf::load_dir(dir).unwrap();
    assert_same_logits(&hf_model, &gguf_model, 0.0);
    let tok = Tokenizer::from_gguf(&gguf).unwrap();
    assert_same_tokenizer(&hf_tokenizer(dir), &tok, texts);
    (gguf_model, gguf, bytes)
}

fn types(g: &Gguf) -> Vec<(String, GgmlType)> {
    g.tensors.iter().map(|t| (t.name.clone(), t.ty)).collect()
}

#[test]
fn llama_converts_to_the_same_model_and_tokenizer() {
    let dir = tmp_dir("convert-llama");
    let s = LLAMA_WITH_TOKENIZER;
    let weights = write_tiny_checkpoint(
        &dir,
        &s,
        Dtype::F32,
        1,
        "",
        PreStyle::Llama3 { ignore_merges: false },
        1,
    );
    let (model, gguf, bytes) = check_conversion(&dir, TINY_TEXTS);
    assert_eq!(model.config.arch, Architecture::Llama);
    assert!(model.output.is_some());
    assert_eq!(gguf.get_str("tokenizer.ggml.pre").unwrap(), "smaug-bpe");
    assert!(types(&gguf).iter().all(|(_, ty)| *ty == GgmlType::F32));
    // The q/k rows are exactly where llama.cpp's converter puts them (the
    // test's own permutation, not the engine's).
    let reference = Gguf::parse(&gguf_bytes(&s, &weights, Dtype::F32, None)).unwrap();
    let reference_bytes = gguf_bytes(&s, &weights, Dtype::F32, None);
    for name in ["blk.0.attn_q.weight", "blk.1.attn_k.weight", "blk.1.attn_v.weight"] {
        let (a, b) = (gguf.tensor(name).unwrap(), reference.tensor(name).unwrap());
        assert_eq!(a.dims, b.dims, "{name}");
        assert_eq!(bytes[a.byte_range()], reference_bytes[b.byte_range()], "{name}");
    }
    // The chat template renders the same conversation to the same ids.
    let template = ChatTemplate::from_gguf(&gguf).unwrap().expect("a template");
    let hf_template = ChatTemplate::from_tokenizer_config(
        &std::fs::read_to_string(dir.join("tokenizer_config.json")).unwrap(),
        None,
    )
    .unwrap()
    .unwrap();
    let chat = [Message::system("be brief"), Message::user("hello world")];
    let gguf_tok = Tokenizer::from_gguf(&gguf).unwrap();
    let hf_tok = hf_tokenizer(&dir);
    assert_eq!(
        encode_chat(&gguf_tok, &template, &chat).unwrap(),
        encode_chat(&hf_tok, &hf_template, &chat).unwrap()
    );
    assert_eq!(template.source(), TINY_CHAT_TEMPLATE);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Llama 2 / TinyLlama: bf16 safetensors, a SentencePiece-style
/// tokenizer.json, tied or untied head. The GGUF holds the tensors llama.cpp's
/// converter writes (the test's own reference) and a `llama` tokenizer that
/// encodes as the tokenizer.json does.
#[test]
fn llama2_style_checkpoint_converts_with_its_sentencepiece_tokenizer() {
    for tied in [false, true] {
        let dir = tmp_dir(&format!("convert-llama2-{tied}"));
        let s = Shape { tied, ..LLAMA2 };
        let weights = write_llama2_checkpoint(&dir, &s, Dtype::BF16, 3);
        let (model, gguf, bytes) = check_conversion(&dir, LLAMA2_TEXTS);
        assert_eq!(model.output.is_none(), tied);
        assert_eq!(gguf.get_str("tokenizer.ggml.model").unwrap(), "llama");
        assert_eq!(gguf.get_str("tokenizer.ggml.pre").unwrap(), "default");
        let scores = gguf.get("tokenizer.ggml.scores").unwrap().as_array().unwrap();
        assert_eq!(scores.len(), 32_000);
        let tok = Tokenizer::from_gguf(&gguf).unwrap();
        assert_eq!((tok.bos_id(), tok.eos_id(), tok.unk_id()), (Some(1), Some(2), Some(0)));
        assert_eq!(tok.token_type(0), Some(TokenType::Unknown));
        assert_eq!(tok.token_type(3), Some(TokenType::Byte));
        assert!(tok.add_bos_default() && !tok.add_eos_default());
        assert_eq!(tok.encode("Hello world", true), [1, 15043, 3186]);
        let reference_bytes = gguf_bytes(&s, &weights, Dtype::BF16, None);
        let reference = Gguf::parse(&reference_bytes).unwrap();
        for t in &reference.tensors {
            let ours = gguf.tensor(&t.name).unwrap();
            assert_eq!(ours.dims, t.dims, "{}", t.name);
            let widened: Vec<f32> = match ours.ty {
                GgmlType::BF16 => bytes[ours.byte_range()]
                    .chunks_exact(2)
                    .map(|c| half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
                    .collect(),
                _ => bytes[ours.byte_range()]
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            };
            let want: Vec<f32> = reference_bytes[t.byte_range()]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            assert_eq!(widened, want, "{}", t.name);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn llama_with_ignore_merges_is_llama_bpe() {
    let dir = tmp_dir("convert-llama-bpe");
    let s = Shape {
        tied: true,
        ..LLAMA_WITH_TOKENIZER
    };
    write_tiny_checkpoint(&dir, &s, Dtype::F32, 1, "", PreStyle::Llama3 { ignore_merges: true }, 2);
    let (model, gguf, _) = check_conversion(&dir, TINY_TEXTS);
    assert_eq!(gguf.get_str("tokenizer.ggml.pre").unwrap(), "llama-bpe");
    assert!(model.output.is_none(), "tied embeddings stay tied");
    assert!(gguf.tensor("output.weight").is_none());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn f16_and_bf16_keep_their_types() {
    for (dtype, ty, shards) in [(Dtype::F16, GgmlType::F16, 1), (Dtype::BF16, GgmlType::BF16, 3)] {
        let dir = tmp_dir(&format!("convert-{dtype:?}"));
        write_tiny_checkpoint(&dir, &LLAMA_WITH_TOKENIZER, dtype, shards, "", PreStyle::Gpt2, 3);
        let (_, gguf, _) = check_conversion(&dir, TINY_TEXTS);
        assert_eq!(gguf.get_str("tokenizer.ggml.pre").unwrap(), "gpt-2");
        for (name, t) in types(&gguf) {
            let vector = gguf.tensor(&name).unwrap().dims.len() == 1;
            assert_eq!(t, if vector { GgmlType::F32 } else { ty }, "{name}");
        }
        assert_eq!(
            gguf.get("general.file_type").and_then(|v| v.as_u64()),
            Some(if ty == GgmlType::F16 { 1 } else { 32 })
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn qwen2_converts_with_biases_and_no_bos() {
    let dir = tmp_dir("convert-qwen2");
    let s = Shape {
        arch: "qwen2",
        tied: true,
        ..LLAMA_WITH_TOKENIZER
    };
    write_tiny_checkpoint(&dir, &s, Dtype::BF16, 1, "", PreStyle::Qwen2, 4);
    let (model, gguf, _) = check_conversion(&dir, TINY_TEXTS);
    assert_eq!(model.config.arch, Architecture::Qwen2);
    assert!(model.layers[0].qkv_bias.is_some());
    assert_eq!(gguf.get_str("tokenizer.ggml.pre").unwrap(), "qwen2");
    // The tokenizer has no BOS: config.json's (id 1) is written, never added.
    let tok = Tokenizer::from_gguf(&gguf).unwrap();
    assert_eq!(hf_tokenizer(&dir).bos_id(), None);
    assert_eq!(tok.bos_id(), Some(1));
    assert!(!tok.add_bos_default());
    assert_eq!(
        gguf.get("tokenizer.ggml.add_bos_token").and_then(|v| v.as_bool()),
        Some(false)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn qwen3_converts_with_qk_norm_and_wide_heads() {
    let dir = tmp_dir("convert-qwen3");
    let s = Shape {
        arch: "qwen3",
        head_dim: 16,
        ..LLAMA_WITH_TOKENIZER
    };
    write_tiny_checkpoint(&dir, &s, Dtype::F32, 2, "", PreStyle::Qwen2, 5);
    let (model, gguf, _) = check_conversion(&dir, TINY_TEXTS);
    assert_eq!(model.config.arch, Architecture::Qwen3);
    assert_eq!((model.config.q_dim, model.config.dim), (64, 32));
    assert!(model.layers[1].qk_norm.is_some());
    assert_eq!(gguf.get_u64("qwen3.attention.key_length").unwrap(), 16);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn rope_scaling_llama3_and_linear() {
    let s = Shape {
        head_dim: 16,
        heads: 2,
        kv_heads: 1,
        ..LLAMA_WITH_TOKENIZER
    };
    let llama3 = r#", "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                   "high_freq_factor": 4.0, "original_max_position_embeddings": 32}"#;
    let dir = tmp_dir("convert-rope-llama3");
    write_tiny_checkpoint(&dir, &s, Dtype::F32, 1, llama3, PreStyle::Gpt2, 6);
    let (_, gguf, _) = check_conversion(&dir, &[]);
    assert_eq!(gguf.tensor("rope_freqs.weight").unwrap().dims, vec![8]);
    std::fs::remove_dir_all(&dir).unwrap();

    let linear = r#", "rope_scaling": {"type": "linear", "factor": 4.0}"#;
    let dir = tmp_dir("convert-rope-linear");
    write_tiny_checkpoint(&dir, &s, Dtype::F32, 1, linear, PreStyle::Gpt2, 7);
    let (model, gguf, _) = check_conversion(&dir, &[]);
    assert_eq!(model.config.rope_freq_scale, 0.25);
    assert_eq!(gguf.get_str("llama.rope.scaling.type").unwrap(), "linear");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn quantized_conversion_keeps_vectors_f32_and_stays_close() {
    // Rows of 256 so that the K-quants apply (dim 256, hidden 512).
    let s = Shape {
        dim: 256,
        hidden: 512,
        heads: 4,
        kv_heads: 2,
        head_dim: 64,
        ..LLAMA_WITH_TOKENIZER
    };
    let dir = tmp_dir("convert-quant");
    write_tiny_checkpoint(&dir, &s, Dtype::BF16, 1, "", PreStyle::Gpt2, 8);
    let hf_model = hf::load_dir(&dir).unwrap();
    let plain = convert(&dir, None).unwrap();
    for (mix, name) in [
        (QuantMix::Uniform(GgmlType::Q8_0), "q8_0"),
        (QuantMix::Q4KM, "q4_k_m"),
        (QuantMix::Q5KM, "q5_k_m"),
        (QuantMix::Uniform(GgmlType::Q5_0), "q5_0"),
    ] {
        let bytes = convert(&dir, Some(mix)).unwrap();
        let (model, gguf) = Model::from_gguf_bytes(&bytes).unwrap();
        assert_eq!(model.config, hf_model.config);
        for (tname, ty) in types(&gguf) {
            let vector = gguf.tensor(&tname).unwrap().dims.len() == 1;
            let want = match mix {
                _ if vector => GgmlType::F32,
                QuantMix::Uniform(t) => t,
                QuantMix::Q4KM | QuantMix::Q5KM if tname == "output.weight" => GgmlType::Q6K,
                // llama.cpp's use_more_bits of 2 layers: layer 1 (the last eighth), not layer 0.
                QuantMix::Q4KM | QuantMix::Q5KM
                    if tname.starts_with("blk.1.") && (tname.contains("attn_v.") || tname.contains("ffn_down.")) =>
                {
                    GgmlType::Q6K
                }
                QuantMix::Q4KM => GgmlType::Q4K,
                QuantMix::Q5KM => GgmlType::Q5K,
                QuantMix::Q3KM => unreachable!("not among the mixes above"),
            };
            assert_eq!(ty, want, "{name}: {tname}");
        }
        assert_eq!(gguf.get_u64("general.quantization_version").unwrap(), 2);
        // The same tensors as the engine's re-quantizer makes of the unquantized conversion.
        let requantized = icllm_engine::synth::quantize_gguf(&plain, mix).unwrap();
        let r = Gguf::parse(&requantized).unwrap();
        for t in &gguf.tensors {
            let u = r.tensor(&t.name).unwrap();
            assert_eq!((&t.dims, t.ty), (&u.dims, u.ty), "{name}: {}", t.name);
            assert!(
                bytes[t.byte_range()] == requantized[u.byte_range()],
                "{name}: {} bytes",
                t.name
            );
        }
        // The logits stay close to the unquantized model's. On one token
        // (attention over itself alone) this measures the weights' rounding;
        // over longer sequences this random model's sharp attention turns
        // small differences into large ones, so they say little (the
        // quantizers' accuracy is measured in tests/quantized_models.rs).
        let a = last_logits(&hf_model, &[1]);
        let b = last_logits(&model, &[1]);
        let dot = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(p, q)| *p as f64 * *q as f64).sum::<f64>();
        let cos = dot(&a, &b) / (dot(&a, &a) * dot(&b, &b)).sqrt();
        eprintln!("{name}: cosine of the logits {cos:.5}");
        let min = if name == "q8_0" { 0.999 } else { 0.97 };
        assert!(cos >= min, "{name}: cosine {cos}");
        // The tokenizer is untouched by quantization.
        assert_same_tokenizer(&hf_tokenizer(&dir), &Tokenizer::from_gguf(&gguf).unwrap(), TINY_TEXTS);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---- what cannot be converted ----

fn convert_err(dir: &Path) -> String {
    let err = convert(dir, None).unwrap_err().to_string();
    std::fs::remove_dir_all(dir).unwrap();
    err
}

#[test]
fn missing_tokenizer_and_missing_shard_are_named() {
    let dir = tmp_dir("convert-no-tokenizer");
    write_tiny_checkpoint(&dir, &LLAMA_WITH_TOKENIZER, Dtype::F32, 1, "", PreStyle::Gpt2, 9);
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    let err = convert_err(&dir);
    assert!(
        err.ends_with("tokenizer.json is missing: the GGUF file carries the tokenizer, so the checkpoint needs one"),
        "{err}"
    );

    let dir = tmp_dir("convert-no-shard");
    write_tiny_checkpoint(&dir, &LLAMA_WITH_TOKENIZER, Dtype::F32, 2, "", PreStyle::Gpt2, 10);
    std::fs::remove_file(dir.join("model-00001-of-00002.safetensors")).unwrap();
    assert_eq!(
        convert_err(&dir),
        "shard \"model-00001-of-00002.safetensors\" (named by model.safetensors.index.json) is missing"
    );
}

/// Writes a checkpoint whose tokenizer.json is edited by `edit`.
fn dir_with_tokenizer(name: &str, style: PreStyle, edit: impl Fn(String) -> String) -> std::path::PathBuf {
    let dir = tmp_dir(name);
    write_tiny_checkpoint(&dir, &LLAMA_WITH_TOKENIZER, Dtype::F32, 1, "", style, 11);
    let json = std::fs::read_to_string(dir.join("tokenizer.json")).unwrap();
    let edited = edit(json.clone());
    assert_ne!(edited, json, "the edit applies");
    std::fs::write(dir.join("tokenizer.json"), edited).unwrap();
    dir
}

#[test]
fn unsupported_tokenizers_are_refused_with_the_reason() {
    // A split pattern no tokenizer.ggml.pre name stands for.
    let dir = dir_with_tokenizer("convert-odd-pre", PreStyle::Qwen2, |j| {
        j.replace(&json_str(QWEN2_REGEX), &json_str(r"\p{N}+| ?\p{L}+|\s+"))
    });
    let err = convert_err(&dir);
    assert!(
        err.starts_with("the tokenizer cannot be written as GGUF metadata: its pre-tokenizer")
            && err.contains(r#"\\p{N}+| ?\\p{L}+|\\s+"#)
            && err.contains("matches no tokenizer.ggml.pre name"),
        "{err}"
    );
    // A prefix space, which GGUF cannot express.
    let dir = dir_with_tokenizer("convert-prefix-space", PreStyle::Gpt2, |j| {
        j.replacen(r#""add_prefix_space": false"#, r#""add_prefix_space": true"#, 1)
    });
    assert!(convert_err(&dir).contains("adds a prefix space"));
    // An added token with rstrip.
    let dir = dir_with_tokenizer("convert-rstrip", PreStyle::Gpt2, |j| {
        j.replacen(r#""rstrip": false"#, r#""rstrip": true"#, 1)
    });
    let err = convert_err(&dir);
    assert!(
        err.contains("\"<|endoftext|>\" strips the whitespace after it"),
        "{err}"
    );
    // Byte fallback marks a SentencePiece-style file, whose spaces are "▁":
    // a byte-level pre-tokenizer does not belong in one.
    let dir = dir_with_tokenizer("convert-byte-fallback", PreStyle::Gpt2, |j| {
        j.replace(r#""byte_fallback": false"#, r#""byte_fallback": true"#)
    });
    let err = convert_err(&dir);
    assert!(
        err.starts_with("tokenizer.json: unsupported pre_tokenizer \"ByteLevel\" in a SentencePiece-style tokenizer"),
        "{err}"
    );
    let dir = tmp_dir("convert-unigram");
    write_tiny_checkpoint(&dir, &LLAMA_WITH_TOKENIZER, Dtype::F32, 1, "", PreStyle::Gpt2, 12);
    let unigram = r#"{"version": "1.0", "added_tokens": [], "normalizer": null, "pre_tokenizer": {"type": "Metaspace"},
        "post_processor": null, "decoder": {"type": "Metaspace"},
        "model": {"type": "Unigram", "unk_id": 0, "vocab": [["<unk>", 0.0], ["▁a", -1.5]], "byte_fallback": true}}"#;
    std::fs::write(dir.join("tokenizer.json"), unigram).unwrap();
    assert_eq!(convert_err(&dir), TokenizerError::HfUnigram.to_string());
}

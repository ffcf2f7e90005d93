//! Synthetic files: every shape's plan loads (header-only) with the shapes
//! the loader expects, mixes follow llama.cpp's rules, generation is seeded.

use super::*;
use crate::format::gguf::Gguf;
use crate::model::{ModelConfig, ModelLoader};

/// A header-only view of a synthetic file (no tensor data generated).
fn header(shape: &Shape, quant: QuantMix, layers: usize) -> Gguf {
    let opts = SynthOptions::new(quant);
    let tensors = plan(shape, quant, layers);
    let md = metadata(shape, &opts, layers);
    let headers: Vec<TensorHeader> = tensors.iter().map(PlannedTensor::header).collect();
    let bytes = writer::write_header(&md, &headers);
    let mut len = bytes.len() as u64;
    for (i, h) in headers.iter().enumerate() {
        if i > 0 {
            len += writer::padding(len, 32) as u64;
        }
        len += h.data_bytes();
    }
    Gguf::parse_header(&bytes, len).expect("header parses")
}

#[test]
fn every_shape_has_its_published_geometry() {
    for s in SHAPES {
        let g = header(s, QuantMix::Q4KM, s.n_layers);
        let arch = s.arch.name();
        assert_eq!(g.get_str("general.architecture").unwrap(), arch);
        assert_eq!(g.get_u64(&format!("{arch}.block_count")).unwrap() as usize, s.n_layers);
        let embd = g.tensor("token_embd.weight").unwrap();
        assert_eq!(embd.dims, vec![s.dim as u64, s.vocab_size as u64], "{}", s.name);
        assert_eq!(g.tensor("output.weight").is_none(), s.tied_embeddings, "{}", s.name);
        let q_dim = (s.n_heads * s.head_dim()) as u64;
        let attn = (0..s.n_layers).find(|&l| !s.is_conv(l)).unwrap();
        if s.arch == Arch::Phi3 {
            // Fused as llama.cpp's converter writes them.
            let kv_dim = (s.n_kv_heads * s.head_dim()) as u64;
            let qkv = g.tensor("blk.0.attn_qkv.weight").unwrap();
            assert_eq!(qkv.dims, vec![s.dim as u64, q_dim + 2 * kv_dim]);
            let up = g.tensor("blk.0.ffn_up.weight").unwrap();
            assert_eq!(up.dims, vec![s.dim as u64, 2 * s.hidden_dim as u64]);
            assert!(g.tensor("blk.0.ffn_gate.weight").is_none() && g.tensor("blk.0.attn_q.weight").is_none());
        } else {
            let q = g.tensor(&format!("blk.{attn}.attn_q.weight")).unwrap();
            assert_eq!(q.dims, vec![s.dim as u64, q_dim]);
        }
        assert_eq!(
            g.tensor(&format!("blk.{attn}.attn_q.bias")).is_some(),
            s.arch == Arch::Qwen2,
            "{}",
            s.name
        );
        assert_eq!(
            g.tensor(&format!("blk.{attn}.attn_k_norm.weight")).is_some(),
            matches!(s.arch, Arch::Qwen3 | Arch::Lfm2 | Arch::Gemma3),
            "{}",
            s.name
        );
        for l in 0..s.n_layers {
            let conv = g.tensor(&format!("blk.{l}.shortconv.in_proj.weight")).is_some();
            assert_eq!(conv, s.is_conv(l), "{} layer {l}", s.name);
            // Phi-3's attention is the fused `attn_qkv`.
            let attn_q = if s.arch == Arch::Phi3 { "attn_qkv" } else { "attn_q" };
            assert_eq!(g.tensor(&format!("blk.{l}.{attn_q}.weight")).is_none(), conv);
        }
        let params: u64 = g
            .tensors
            .iter()
            .filter(|t| t.name != "rope_freqs.weight")
            .map(|t| t.n_elements())
            .sum();
        assert_eq!(params, s.n_params(), "{}", s.name);
        {
            // The loader accepts the file: names, shapes and types.
            let loader = ModelLoader::new(&g).unwrap_or_else(|e| panic!("{}: {e}", s.name));
            let c: &ModelConfig = loader.config();
            assert_eq!(
                (c.dim, c.n_heads, c.n_kv_heads, c.hidden_dim),
                (s.dim, s.n_heads, s.n_kv_heads, s.hidden_dim)
            );
            assert_eq!(c.vocab_size, s.vocab_size);
        }
    }
    // Sizes a reader can check against the published parameter counts.
    let p = |n: &str| shape(n).unwrap().n_params() as f64 / 1e6;
    // The stories models share the classifier in llama2.c (15M); GGUF conversions store `output.weight`.
    assert!((p("stories15M") - 24.4).abs() < 0.3, "{}", p("stories15M"));
    assert!((p("stories110M") - 134.0).abs() < 1.0, "{}", p("stories110M")); // 110M + untied head
    assert!((p("smollm2-135m") - 134.5).abs() < 0.5, "{}", p("smollm2-135m"));
    assert!((p("smollm2-360m") - 361.8).abs() < 0.5, "{}", p("smollm2-360m"));
    assert!((p("qwen2.5-0.5b") - 494.0).abs() < 1.0, "{}", p("qwen2.5-0.5b"));
    assert!((p("qwen3-0.6b") - 596.0).abs() < 1.5, "{}", p("qwen3-0.6b"));
    assert!((p("llama3.2-1b") - 1235.8).abs() < 1.0, "{}", p("llama3.2-1b"));
    assert!((p("tinyllama-1.1b") - 1100.0).abs() < 5.0, "{}", p("tinyllama-1.1b"));
    assert!((p("qwen3-1.7b") - 1720.0).abs() < 10.0, "{}", p("qwen3-1.7b"));
    // Liquid AI's model cards: 1.17B and 2.57B parameters.
    assert!((p("lfm2.5-1.2b") - 1170.0).abs() < 5.0, "{}", p("lfm2.5-1.2b"));
    assert!((p("lfm2.5-2.6b") - 2570.0).abs() < 10.0, "{}", p("lfm2.5-2.6b"));
    assert!((p("phi-3-mini-4k") - 3821.1).abs() < 0.1, "{}", p("phi-3-mini-4k"));
    // Google's model card: 270M (170M embedding, 100M transformer).
    assert!((p("gemma-3-270m") - 268.1).abs() < 1.0, "{}", p("gemma-3-270m"));
}

#[test]
fn q4_k_m_follows_llama_cpp_rules() {
    let s = shape("qwen3-1.7b").unwrap();
    let g = header(s, QuantMix::Q4KM, s.n_layers);
    let ty = |n: &str| g.tensor(n).unwrap().ty;
    // Tied embedding = output head: Q6_K.
    assert_eq!(ty("token_embd.weight"), GgmlType::Q6K);
    assert_eq!(ty("blk.5.attn_q.weight"), GgmlType::Q4K);
    // use_more_bits(i, 28): i < 3, i >= 24, (i - 3) % 3 == 2.
    for l in 0..28 {
        let more = !(3..24).contains(&l) || (l - 3) % 3 == 2;
        let want = if more { GgmlType::Q6K } else { GgmlType::Q4K };
        assert_eq!(ty(&format!("blk.{l}.attn_v.weight")), want, "layer {l}");
        assert_eq!(ty(&format!("blk.{l}.ffn_down.weight")), want, "layer {l}");
    }
    assert_eq!(ty("blk.0.attn_norm.weight"), GgmlType::F32);
    // Rows that are not whole super-blocks fall back as llama.cpp's
    // quantizer does (896 = 3.5 × 256): Q4_K → Q5_0, Q6_K → Q8_0.
    let g = header(shape("qwen2.5-0.5b").unwrap(), QuantMix::Q4KM, 2);
    assert_eq!(g.tensor("blk.0.attn_q.weight").unwrap().ty, GgmlType::Q5_0);
    assert_eq!(g.tensor("blk.0.ffn_up.weight").unwrap().ty, GgmlType::Q5_0);
    assert_eq!(g.tensor("blk.1.attn_v.weight").unwrap().ty, GgmlType::Q8_0);
    assert_eq!(g.tensor("token_embd.weight").unwrap().ty, GgmlType::Q8_0);
    // 4864 = 19 × 256; layer 1 of 2 is in the last eighth: Q6_K.
    assert_eq!(g.tensor("blk.1.ffn_down.weight").unwrap().ty, GgmlType::Q6K);
    // Untied: token_embd Q4_K, output Q6_K.
    let g = header(shape("tinyllama-1.1b").unwrap(), QuantMix::Q4KM, 2);
    assert_eq!(g.tensor("token_embd.weight").unwrap().ty, GgmlType::Q4K);
    assert_eq!(g.tensor("output.weight").unwrap().ty, GgmlType::Q6K);
    // Q5_K_M: Q5_K, falling back to Q5_1.
    let g = header(shape("tinyllama-1.1b").unwrap(), QuantMix::Q5KM, 2);
    assert_eq!(g.tensor("blk.0.attn_q.weight").unwrap().ty, GgmlType::Q5K);
    assert_eq!(g.tensor("blk.1.attn_v.weight").unwrap().ty, GgmlType::Q6K);
    let g = header(shape("qwen2.5-0.5b").unwrap(), QuantMix::Q5KM, 2);
    assert_eq!(g.tensor("blk.0.attn_q.weight").unwrap().ty, GgmlType::Q5_1);
    // A fused QKV (phi3) gets one step more in every layer: Q5_K for
    // Q4_K_M, Q6_K for Q5_K_M; its fused gate-up is an ordinary ffn_up.
    let phi3 = shape("phi-3-mini-4k").unwrap();
    let g = header(phi3, QuantMix::Q4KM, phi3.n_layers);
    let ty = |n: &str| g.tensor(n).unwrap().ty;
    for l in [0, 5, 31] {
        assert_eq!(ty(&format!("blk.{l}.attn_qkv.weight")), GgmlType::Q5K, "layer {l}");
        assert_eq!(ty(&format!("blk.{l}.ffn_up.weight")), GgmlType::Q4K, "layer {l}");
    }
    assert_eq!(ty("blk.0.ffn_down.weight"), GgmlType::Q6K);
    assert_eq!(ty("blk.5.ffn_down.weight"), GgmlType::Q4K);
    assert_eq!(
        (ty("token_embd.weight"), ty("output.weight")),
        (GgmlType::Q4K, GgmlType::Q6K)
    );
    let g = header(phi3, QuantMix::Q5KM, 2);
    assert_eq!(g.tensor("blk.1.attn_qkv.weight").unwrap().ty, GgmlType::Q6K);
}

#[test]
fn q3_k_m_follows_llama_cpp_rules() {
    // llama3.2-1b: 16 layers, tied embedding (the output head: Q6_K).
    let s = shape("llama3.2-1b").unwrap();
    let g = header(s, QuantMix::Q3KM, s.n_layers);
    let ty = |n: &str| g.tensor(n).unwrap().ty;
    assert_eq!(ty("token_embd.weight"), GgmlType::Q6K);
    assert_eq!(ty("blk.3.attn_q.weight"), GgmlType::Q3K);
    assert_eq!(ty("blk.3.ffn_gate.weight"), GgmlType::Q3K);
    assert_eq!(ty("blk.3.ffn_up.weight"), GgmlType::Q3K);
    assert_eq!(ty("blk.3.attn_output.weight"), GgmlType::Q4K);
    // attn_v: Q5_K in the first two layers; ffn_down: Q5_K in the first
    // sixteenth (layer 0 of 16), Q4_K elsewhere.
    assert_eq!(ty("blk.0.attn_v.weight"), GgmlType::Q5K);
    assert_eq!(ty("blk.1.attn_v.weight"), GgmlType::Q5K);
    assert_eq!(ty("blk.2.attn_v.weight"), GgmlType::Q4K);
    assert_eq!(ty("blk.0.ffn_down.weight"), GgmlType::Q5K);
    assert_eq!(ty("blk.1.ffn_down.weight"), GgmlType::Q4K);
    assert_eq!(ty("blk.15.ffn_down.weight"), GgmlType::Q4K);
    // 896-wide rows fall back: Q3_K → Q4_0, Q4_K → Q5_0, Q5_K → Q5_1.
    let g = header(shape("qwen2.5-0.5b").unwrap(), QuantMix::Q3KM, 2);
    assert_eq!(g.tensor("blk.1.attn_q.weight").unwrap().ty, GgmlType::Q4_0);
    assert_eq!(g.tensor("blk.1.attn_output.weight").unwrap().ty, GgmlType::Q5_0);
    assert_eq!(g.tensor("blk.0.attn_v.weight").unwrap().ty, GgmlType::Q5_1);
    assert_eq!(QuantMix::Q3KM.file_type(), 12);
    assert_eq!(QuantMix::parse("Q3_K_M"), Some(QuantMix::Q3KM));
}

#[test]
fn fallback_types() {
    assert_eq!(fallback(GgmlType::Q4K, 512), GgmlType::Q4K);
    assert_eq!(fallback(GgmlType::Q4K, 288), GgmlType::Q5_0);
    assert_eq!(fallback(GgmlType::Q5K, 288), GgmlType::Q5_1);
    assert_eq!(fallback(GgmlType::Q6K, 896), GgmlType::Q8_0);
    assert_eq!(fallback(GgmlType::Q3K, 640), GgmlType::Q4_0);
    assert_eq!(fallback(GgmlType::Q2K, 896), GgmlType::Q4_0);
    assert_eq!(fallback(GgmlType::IQ4XS, 896), GgmlType::IQ4NL);
    assert_eq!(fallback(GgmlType::Q4K, 100), GgmlType::F16);
    assert_eq!(fallback(GgmlType::Q8_0, 172), GgmlType::F16);
    assert_eq!(fallback(GgmlType::F32, 172), GgmlType::F32);
    assert_eq!(fallback(GgmlType::BF16, 172), GgmlType::BF16);
}

#[test]
fn generation_is_seeded_and_streams_what_the_header_says() {
    let s = shape("stories15M").unwrap();
    let mut opts = SynthOptions::new(QuantMix::Q4KM);
    opts.layers = Some(1);
    opts.seed = 3;
    let mut a = Vec::new();
    let sum = write_gguf(s, &opts, &mut a).unwrap();
    assert_eq!(sum.bytes, a.len() as u64);
    opts.threads = 2;
    let mut b = Vec::new();
    write_gguf(s, &opts, &mut b).unwrap();
    assert_eq!(a, b, "threads do not change the bytes");
    opts.seed = 4;
    let mut c = Vec::new();
    write_gguf(s, &opts, &mut c).unwrap();
    assert_ne!(a, c);
    let (model, _) = crate::model::Model::from_gguf_bytes(&a).expect("loads");
    assert_eq!(model.config.n_layers, 1);
    // 288-wide rows are not whole super-blocks: Q5_0, as llama.cpp falls back.
    assert_eq!(model.tok_embd.ty, GgmlType::Q5_0);
    assert_eq!(model.layers[0].w_down.ty, GgmlType::Q6K);
}

#[test]
fn llama3_rope_factors_span_one_to_factor() {
    let s = shape("llama3.2-1b").unwrap();
    let f = llama3_rope_factors(s, s.head_dim() / 2);
    assert_eq!(f.len(), 32);
    assert_eq!(f[0], 1.0);
    assert_eq!(*f.last().unwrap(), 32.0);
    assert!(f.windows(2).all(|w| w[0] <= w[1]));
}

#[test]
fn synthetic_vocab_spells_bytes_like_gpt2() {
    assert_eq!(gpt2_byte_char(b'A'), 'A');
    assert_eq!(gpt2_byte_char(b' '), 'Ġ');
    assert_eq!(gpt2_byte_char(b'\n'), 'Ċ');
    let v = synthetic_vocab(1000);
    let tokens = v
        .iter()
        .find(|(k, _)| k == "tokenizer.ggml.tokens")
        .unwrap()
        .1
        .as_array()
        .unwrap();
    assert_eq!(tokens.len(), 1000);
    let distinct: std::collections::BTreeSet<_> = tokens.iter().map(|t| t.as_str().unwrap()).collect();
    assert_eq!(distinct.len(), 1000);
}

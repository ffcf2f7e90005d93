//! Models quantized from F32 keep F32's predictions: the shipped stories260K
//! (whose 172-wide FFN rows stay F16, like llama.cpp's fallback) and a
//! synthetic llama with dims that are multiples of 256 in every type.

use icllm_engine::model::Model;
use icllm_engine::synth::{self, QuantMix};
use icllm_engine::tensor::GgmlType;
#[path = "common/quant_models.rs"]
mod quant_models;
use quant_models::{all_logits, argmax, greedy, stories_bytes, synth_256_bytes};

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// Share of positions where the reference's top-1 token is in `other`'s top `k`.
fn top1_in_topk(reference: &[Vec<f32>], other: &[Vec<f32>], k: usize) -> f64 {
    let hits = reference
        .iter()
        .zip(other)
        .filter(|(r, o)| {
            let want = argmax(r);
            let mut idx: Vec<usize> = (0..o.len()).collect();
            idx.sort_by(|&a, &b| o[b].total_cmp(&o[a]));
            idx[..k].contains(&(want as usize))
        })
        .count();
    hits as f64 / reference.len() as f64
}

struct Agreement {
    top1: f64,
    top5: f64,
    min_cosine: f64,
}

fn agreement(reference: &[Vec<f32>], other: &[Vec<f32>]) -> Agreement {
    Agreement {
        top1: top1_in_topk(reference, other, 1),
        top5: top1_in_topk(reference, other, 5),
        min_cosine: reference
            .iter()
            .zip(other)
            .map(|(a, b)| cosine(a, b))
            .fold(f64::INFINITY, f64::min),
    }
}

/// The stories260K golden prompt's ids (BOS + "Joe loves writing stories") and
/// the golden continuation, as one sequence of positions.
const STORIES_TOKENS: [u32; 26] = [
    1, 410, 454, 414, 411, 401, 360, 419, 263, 420, 275, 299, 349, 304, 417, 406, 426, 346, 397, 355, 267, 337, 335,
    345, 267, 422,
];

#[test]
fn stories260k_quantized_keeps_f32_predictions() {
    let f32_bytes = stories_bytes();
    let (reference, _) = Model::from_gguf_bytes(&f32_bytes).unwrap();
    let ref_logits = all_logits(&reference, &STORIES_TOKENS);
    let ref_greedy = greedy(&reference, &STORIES_TOKENS[..16], 10);
    assert_eq!(ref_greedy, STORIES_TOKENS[16..], "the F32 model gives the golden ids");

    for name in [
        "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl", "q4_k_m", "q5_k_m", "q6_k", "q3_k_m", "q2_k", "iq4_xs",
    ] {
        let mix = QuantMix::parse(name).unwrap();
        let bytes = synth::quantize_gguf(&f32_bytes, mix).unwrap();
        let (model, _) = Model::from_gguf_bytes(&bytes).unwrap();
        // 64-wide rows: the 32-element types as asked, K-quants fall back as
        // llama.cpp's quantizer does (Q4_K → Q5_0, Q5_K → Q5_1, Q6_K → Q8_0,
        // Q3_K/Q2_K → Q4_0, IQ4_XS → IQ4_NL);
        // 172-wide rows: F16.
        let expected_wq = match name {
            "q4_k_m" => GgmlType::Q5_0,
            "q5_k_m" => GgmlType::Q5_1,
            "q6_k" => GgmlType::Q8_0,
            "q3_k_m" | "q2_k" => GgmlType::Q4_0,
            "iq4_xs" => GgmlType::IQ4NL,
            other => match QuantMix::parse(other).unwrap() {
                QuantMix::Uniform(t) => t,
                _ => unreachable!(),
            },
        };
        assert_eq!(model.layers[0].attention().unwrap().wq.ty, expected_wq, "{name}");
        assert_eq!(model.layers[0].w_down.ty, GgmlType::F16, "{name}");
        let logits = all_logits(&model, &STORIES_TOKENS);
        let a = agreement(&ref_logits, &logits);
        let g = greedy(&model, &STORIES_TOKENS[..16], 10);
        eprintln!(
            "stories260K {name}: top-1 {:.3}, ref top-1 in top-5 {:.3}, min cosine {:.5}, greedy {:?}",
            a.top1, a.top5, a.min_cosine, g
        );
        match name {
            "q8_0" | "q6_k" => {
                assert_eq!(g, ref_greedy, "{name}: greedy ids");
                assert_eq!(a.top1, 1.0, "{name}");
                assert!(a.min_cosine > 0.999, "{name}");
            }
            _ => {
                // Measured (stories260K's 64-wide rows, 26 positions): top-1
                // 0.85 to 0.96, min cosine 0.987 (iq4_nl) to 0.9985 (q5_1).
                // IQ4_NL's quantizer (ggml's, byte for byte: see
                // `block_codecs_match_ggml`) weights its fit by x², which
                // favours a block's large weights over its many small ones.
                let min_cosine = if matches!(name, "iq4_nl" | "q3_k_m" | "q2_k" | "iq4_xs") {
                    0.985
                } else {
                    0.99
                };
                assert!(a.top1 >= 0.8, "{name}");
                assert!(a.top5 >= 0.95, "{name}");
                assert!(a.min_cosine > min_cosine, "{name}");
            }
        }
    }
}

#[test]
fn synthetic_model_in_every_type_tracks_its_f32_version() {
    let build = |quant: QuantMix| Model::from_gguf_bytes(&synth_256_bytes(quant)).unwrap().0;
    let reference = build(QuantMix::Uniform(GgmlType::F32));
    let tokens: Vec<u32> = (0..64u32).map(|i| (i * 37 + 5) % 512).collect();
    let ref_logits = all_logits(&reference, &tokens);
    // (type, min top-1 agreement, min share of positions whose reference
    // top-1 is in the top 5, min cosine). Random weights give flat logits
    // (small top-1 margins), so top-1 agreement is noisy; the cosine tracks
    // the weight error. Measured (64 positions, seed 42), top-1 / top-5 /
    // cosine: f16 1.000 / 1.000 / 1.00000, bf16 0.984 / 1.000 / 0.99999,
    // q8_0 0.953 / 1.000 / 0.99981, q6_k 0.922 / 1.000 / 0.99837, q5_k
    // 0.766 / 1.000 / 0.99196, q4_k 0.641 / 0.953 / 0.97790, q4_0 0.594 /
    // 0.984 / 0.96757, q4_k_m 0.734 / 0.953 / 0.97798, iq4_xs 0.484 / 0.953
    // / 0.97226, q3_k_m 0.531 / 0.922 / 0.95460, q3_k 0.453 / 0.781 /
    // 0.90309, q2_k 0.141 / 0.391 / 0.65563 (two bits on Gaussian weights:
    // the per-weight RMSE is 0.29σ, see `round_trip_error_is_within_ggml_figures`).
    let cases = [
        ("f16", 1.0, 0.95, 0.99999),
        ("bf16", 0.95, 0.95, 0.9999),
        ("q8_0", 0.9, 0.95, 0.9995),
        ("q6_k", 0.85, 0.95, 0.997),
        ("q5_k", 0.7, 0.95, 0.99),
        ("q4_k", 0.6, 0.95, 0.975),
        ("q4_0", 0.5, 0.95, 0.96),
        ("q4_k_m", 0.65, 0.95, 0.975),
        ("q3_k", 0.4, 0.75, 0.89),
        ("q3_k_m", 0.45, 0.9, 0.945),
        ("iq4_xs", 0.42, 0.93, 0.965),
        ("q2_k", 0.1, 0.3, 0.6),
    ];
    for (name, min_top1, min_top5, min_cos) in cases {
        let model = build(QuantMix::parse(name).unwrap());
        let a = agreement(&ref_logits, &all_logits(&model, &tokens));
        eprintln!(
            "synthetic 256/768 {name}: top-1 {:.3}, ref top-1 in top-5 {:.3}, min cosine {:.5}",
            a.top1, a.top5, a.min_cosine
        );
        assert!(a.top1 >= min_top1, "{name}: top-1 agreement {}", a.top1);
        assert!(a.top5 >= min_top5, "{name}: top-5 {}", a.top5);
        assert!(a.min_cosine >= min_cos, "{name}: cosine {}", a.min_cosine);
    }
}

#[test]
fn f16_widened_at_load_gives_the_f16_kernels_bits() {
    use icllm_engine::kernels::WeightMatrix;
    let bytes = synth::quantize_gguf(&stories_bytes(), QuantMix::parse("f16").unwrap()).unwrap();
    let (widened, _) = Model::from_gguf_bytes(&bytes).unwrap();
    let (kept, _) = Model::from_gguf_bytes_with(&bytes, |l| l.keep_16_bit_floats()).unwrap();
    assert_eq!(widened.layers[0].attention().unwrap().wq.ty, GgmlType::F16);
    assert!(
        widened.layers[0].attention().unwrap().wq.layout() == "f32 rows in lanes",
        "a small model is widened"
    );
    assert_eq!(kept.layers[0].attention().unwrap().wq.layout(), "f16");
    let (a, b) = (
        all_logits(&widened, &STORIES_TOKENS),
        all_logits(&kept, &STORIES_TOKENS),
    );
    for (ra, rb) in a.iter().zip(&b) {
        assert!(ra.iter().zip(rb).all(|(x, y)| x.to_bits() == y.to_bits()));
    }
}

#[test]
fn nibble_quants_widened_to_bytes_at_load_give_the_compact_kernels_bits() {
    use icllm_engine::kernels::WeightMatrix;
    for mix in ["q4_k", "q5_k", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl"] {
        let bytes = synth_256_bytes(QuantMix::parse(mix).unwrap());
        let (wide, _) = Model::from_gguf_bytes(&bytes).unwrap();
        let (nibbles, _) = Model::from_gguf_bytes_with(&bytes, |l| l.keep_nibbles()).unwrap();
        assert!(
            wide.layers[0].attention().unwrap().wq.layout().ends_with(" bytes"),
            "{mix}: a small model gets the byte layout"
        );
        let compact = nibbles.layers[0].attention().unwrap().wq.layout();
        assert!(
            compact.ends_with(" nibbles") || compact.ends_with(" file blocks"),
            "{mix}: {compact}"
        );
        let tokens: Vec<u32> = (0..16u32).map(|i| (i * 37 + 5) % 512).collect();
        let (a, b) = (all_logits(&wide, &tokens), all_logits(&nibbles, &tokens));
        for (ra, rb) in a.iter().zip(&b) {
            assert!(ra.iter().zip(rb).all(|(x, y)| x.to_bits() == y.to_bits()), "{mix}");
        }
    }
}

#[test]
fn the_loader_knows_the_heap_a_model_will_take() {
    for mix in [
        "f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl", "q4_k", "q5_k", "q6_k", "q4_k_m",
        "q3_k", "q2_k", "iq4_xs", "q3_k_m",
    ] {
        let bytes = synth_256_bytes(QuantMix::parse(mix).unwrap());
        for keep in [false, true] {
            let mut planned = 0;
            let (model, _) = Model::from_gguf_bytes_with(&bytes, |l| {
                if keep {
                    l.keep_16_bit_floats();
                    l.keep_nibbles();
                }
                planned = l.heap_bytes();
            })
            .unwrap();
            assert_eq!(planned, model.heap_bytes(), "{mix} keep {keep}");
        }
    }
}

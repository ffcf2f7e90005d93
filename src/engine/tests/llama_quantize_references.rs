//! llama.cpp's own quantizer and inference as references for every tensor
//! type icllm reads: testdata/llama-quantize/references.json holds, for the
//! shipped stories260K and the synthetic 256-wide llama quantized by
//! `llama_model_quantize` (the function behind `llama-quantize`) to a file
//! type, each tensor's type and the SHA-256 of its bytes, and llama.cpp's
//! argmax at every prompt position, last-position logits and greedy ids for
//! that file (tools/reference/make-llama-quantize-references.py).
//!
//! Here the same base is quantized by icllm to the same tensor types: the
//! bytes must equal llama.cpp's (so the file icllm runs is llama.cpp's
//! file), and its logits and ids must be llama.cpp's for it. Where icllm
//! names llama.cpp's mix (`q3_k_m`, `q4_k_m`, `q5_k_m`), its own choice of
//! tensor types must be llama.cpp's too.

#[path = "common/quant_models.rs"]
mod quant_models;

use icllm_engine::format::gguf::Gguf;
use icllm_engine::model::Model;
use icllm_engine::synth::{self, QuantMix};
use icllm_engine::tensor::GgmlType;
use quant_models::{all_logits, argmax, greedy, stories_bytes, synth_256_bytes};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::HashMap;

fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn references() -> Value {
    let path =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/llama-quantize/references.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// Pearson correlation.
fn correlation(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (
        a.iter().map(|&x| x as f64).sum::<f64>() / n,
        b.iter().map(|&x| x as f64).sum::<f64>() / n,
    );
    let cov: f64 = a.iter().zip(b).map(|(&x, &y)| (x as f64 - ma) * (y as f64 - mb)).sum();
    let va: f64 = a.iter().map(|&x| (x as f64 - ma).powi(2)).sum();
    let vb: f64 = b.iter().map(|&y| (y as f64 - mb).powi(2)).sum();
    cov / (va * vb).sqrt()
}

#[test]
fn icllm_quantizes_as_llama_quantize_does_and_runs_its_files_as_llama_cpp_does() {
    let doc = references();
    let prompt = ids(&doc["prompt"]);
    let stories = stories_bytes();
    let synth_256 = synth_256_bytes(QuantMix::Uniform(GgmlType::F32));
    let cases = doc["cases"].as_array().unwrap();
    assert!(cases.len() >= 10);
    let mut types_seen = std::collections::BTreeSet::new();
    let mut failures = Vec::new();
    for case in cases {
        let (base_name, ftype) = (case["base"].as_str().unwrap(), case["ftype"].as_str().unwrap());
        let label = format!("{base_name} {ftype}");
        let base = match base_name {
            "stories260K" => &stories,
            "synth-256" => &synth_256,
            other => panic!("unknown base {other}"),
        };
        assert_eq!(
            hex_sha256(base),
            case["base_sha256"].as_str().unwrap(),
            "{label}: the base model changed since the references were made: rerun the script"
        );
        let want: HashMap<String, (GgmlType, String)> = case["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                let ty = GgmlType::from_id(t["type_id"].as_u64().unwrap() as u32).unwrap();
                (
                    t["name"].as_str().unwrap().to_string(),
                    (ty, t["sha256"].as_str().unwrap().to_string()),
                )
            })
            .collect();
        let bytes = synth::quantize_gguf_with(base, case["ftype_id"].as_u64().unwrap() as u32, |name, _, _| {
            want.get(name)
                .unwrap_or_else(|| panic!("{label}: llama.cpp wrote no {name}"))
                .0
        })
        .unwrap();
        let gguf = Gguf::parse(&bytes).unwrap();
        assert_eq!(gguf.tensors.len(), want.len(), "{label}");
        for t in &gguf.tensors {
            let (ty, sha) = &want[&t.name];
            types_seen.insert(ty.name());
            assert_eq!(
                &hex_sha256(&bytes[t.byte_range()]),
                sha,
                "{label}: {} in {} differs from llama.cpp's bytes",
                t.name,
                ty.name()
            );
        }
        // icllm's own mixes choose llama.cpp's types.
        if matches!(ftype, "q3_k_m" | "q4_k_m" | "q5_k_m") {
            let own = Gguf::parse(&synth::quantize_gguf(base, QuantMix::parse(ftype).unwrap()).unwrap())
                .unwrap()
                .tensors
                .iter()
                .map(|t| (t.name.clone(), t.ty))
                .collect::<HashMap<_, _>>();
            for (name, (ty, _)) in &want {
                assert_eq!(
                    own[name],
                    *ty,
                    "{label}: icllm's mix puts {name} in {}",
                    own[name].name()
                );
            }
        }

        let (model, _) = Model::from_gguf_bytes(&bytes).unwrap();
        let logits = all_logits(&model, &prompt);
        let argmaxes: Vec<u32> = logits.iter().map(|l| argmax(l)).collect();
        let reference: Vec<f32> = case["last_logits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        let last = logits.last().unwrap();
        let corr = correlation(last, &reference);
        let max_diff = last
            .iter()
            .zip(&reference)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        let range =
            reference.iter().fold(f32::MIN, |m, &x| m.max(x)) - reference.iter().fold(f32::MAX, |m, &x| m.min(x));
        let g = greedy(&model, &prompt, 10);
        eprintln!("{label}: correlation {corr:.6}, max |diff| {max_diff:.5} on a range of {range:.2}, greedy {g:?}");
        // A decision counts where llama.cpp's top logit leads the second by
        // at least twice the largest logit difference measured: a closer
        // call may go either way under two implementations' rounding.
        let clear = 2.0 * max_diff as f64;
        let margins = |key: &str| -> Vec<f64> {
            case[key]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m.as_f64().unwrap())
                .collect()
        };
        let want_argmax = ids(&case["argmax"]);
        let mut checked = 0;
        for (pos, m) in margins("argmax_margin").iter().enumerate() {
            if *m >= clear {
                checked += 1;
                if argmaxes[pos] != want_argmax[pos] {
                    failures.push(format!(
                        "{label}: position {pos}: argmax {}, llama.cpp {} (by {m})",
                        argmaxes[pos], want_argmax[pos]
                    ));
                }
            }
        }
        // Greedy ids: equal up to the first step llama.cpp decides by less.
        let want_greedy = ids(&case["greedy"]);
        let steps = margins("greedy_margin").iter().take_while(|m| **m >= clear).count();
        if g[..steps] != want_greedy[..steps] {
            failures.push(format!(
                "{label}: greedy {g:?}, llama.cpp {want_greedy:?} (clear for {steps} steps)"
            ));
        }
        eprintln!(
            "    argmax checked at {checked} of {} positions, greedy ids for {steps} of {} steps",
            want_argmax.len(),
            want_greedy.len()
        );
        if corr < 0.998 || max_diff > 0.3 {
            failures.push(format!("{label}: correlation {corr}, max |diff| {max_diff}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    for ty in [
        "q4_1", "q5_0", "q5_1", "iq4_nl", "iq4_xs", "q2_K", "q3_K", "q4_K", "q5_K", "q6_K", "q8_0", "q4_0",
    ] {
        assert!(types_seen.contains(ty), "no reference file holds {ty}: {types_seen:?}");
    }
}

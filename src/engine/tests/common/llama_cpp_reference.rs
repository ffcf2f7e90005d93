//! Reading llama.cpp's reference outputs (`testdata/*/*-llama-cpp.json`)
//! and comparing logits with them; and stepping a job in small pieces
//! through CBOR, as the architecture tests do. Shared through `#[path]`.

#![allow(dead_code)]

use icllm_engine::job::{step, Job, StepOutcome, UnitBudget};
use icllm_engine::model::Model;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::PathBuf;

/// The JSON document at `testdata/<path>`.
pub fn read_reference(path: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata")
        .join(path);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

/// The case named `name` of a reference document.
pub fn case<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no case {name}"))
}

pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

pub fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

pub fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Pearson correlation.
pub fn correlation(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len() as f64;
    let mean = |v: &[f32]| v.iter().map(|&x| x as f64).sum::<f64>() / n;
    let (ma, mb) = (mean(a), mean(b));
    let cov: f64 = a.iter().zip(b).map(|(&x, &y)| (x as f64 - ma) * (y as f64 - mb)).sum();
    let var = |v: &[f32], m: f64| v.iter().map(|&x| (x as f64 - m).powi(2)).sum::<f64>();
    cov / (var(a, ma) * var(b, mb)).sqrt()
}

pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Runs `job` to its end, `units` units per step, through CBOR after every
/// step (as a canister checkpoint would): how many steps stopped inside a
/// prompt batch and inside a generated token's.
pub fn step_through_cbor(model: &Model, mut job: Job, units: u32, prompt_len: usize) -> (Job, u32, u32) {
    let (mut mid_prompt, mut mid_decode) = (0, 0);
    for _ in 0..10_000 {
        let report = step(model, &mut job, &mut UnitBudget::new(units));
        let cur = job.state.cursor();
        if cur.batch_len > 0 && (cur.pos as usize) < prompt_len {
            mid_prompt += 1;
        } else if cur.batch_len > 0 {
            mid_decode += 1;
        }
        let mut bytes = Vec::new();
        ciborium::into_writer(&job, &mut bytes).unwrap();
        job = ciborium::from_reader(bytes.as_slice()).unwrap();
        if let StepOutcome::Finished(_) = report.outcome {
            return (job, mid_prompt, mid_decode);
        }
        assert_eq!(report.outcome, StepOutcome::Yielded);
    }
    panic!("the job did not finish in 10,000 steps");
}

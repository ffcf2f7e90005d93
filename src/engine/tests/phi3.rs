//! phi3 as llama.cpp reads it: stories260K rewritten as llama.cpp's
//! converter writes Phi-3 (fused `attn_qkv`, fused gate-up `ffn_up`, see
//! common/phi3_models.rs) against llama.cpp's logits and greedy ids for the
//! same files (testdata/phi3/phi3-llama-cpp.json, made by
//! tools/reference/make-phi3-reference.py); LongRoPE's short and long
//! factors and attention factor; fused and separate projections alike; resumable jobs.

#[path = "common/llama_cpp_reference.rs"]
mod llama_cpp_reference;
#[path = "common/phi3_models.rs"]
mod phi3_models;
#[path = "common/quant_models.rs"]
mod quant_models;

use icllm_engine::format::gguf::writer::write;
use icllm_engine::job::{step, Job, StepOutcome, UnitBudget, Unlimited};
use icllm_engine::model::{Architecture, Model};
use icllm_engine::sampler::SamplingParams;
use llama_cpp_reference::{correlation, floats, hex_sha256, ids, read_reference};
use phi3_models::{phi3_parts, Phi3File, LONGROPE_ORIGINAL_CONTEXT};
use quant_models::{all_logits, all_logits_in_context, argmax};
use serde_json::Value;

fn references() -> Value {
    read_reference("phi3/phi3-llama-cpp.json")
}

/// Runs `job` to the end, `budget()` units per step; the generated ids.
fn run(model: &Model, job: &mut Job, budget: impl Fn() -> Box<dyn icllm_engine::job::Budget>) -> Vec<u32> {
    loop {
        match step(model, job, &mut *budget()).outcome {
            StepOutcome::Yielded => continue,
            StepOutcome::Finished(_) => return job.state.generated().to_vec(),
            StepOutcome::Failed(msg) => panic!("{msg}"),
        }
    }
}

/// The files are the ones llama.cpp ran (same bytes); icllm's last-position
/// logits correlate with llama.cpp's (≥ 0.999 in F32, ≥ 0.995 in Q8_0,
/// where llama.cpp also rounds activations to 8 bits), with the same
/// argmax at every prompt position, and its 16 greedy ids are
/// llama.cpp's (whose smallest top-2 lead is 0.04, far above the F32 and
/// Q8_0 differences). The prompt (21 tokens) is longer than the files'
/// sliding window of 8, which llama.cpp ignores for phi3: so does icllm.
#[test]
fn phi3_files_run_as_llama_cpp_runs_them() {
    let doc = references();
    let cases = doc["cases"].as_array().unwrap();
    assert_eq!(cases.len(), Phi3File::ALL.len());
    for file in Phi3File::ALL {
        let case = cases.iter().find(|c| c["name"] == file.name()).unwrap();
        let bytes = file.bytes();
        assert_eq!(
            hex_sha256(&bytes),
            case["sha256"].as_str().unwrap(),
            "{}: the file changed since the reference was made: rerun the script",
            file.name()
        );
        let (model, _) = Model::from_gguf_bytes(&bytes).unwrap();
        assert_eq!(model.config.arch, Architecture::Phi3);
        assert_eq!(
            model.config.attention_window(0),
            None,
            "phi3 ignores the sliding window"
        );
        let prompt = ids(&case["ids"]);
        let logits = all_logits(&model, &prompt);
        let argmaxes: Vec<u32> = logits.iter().map(|l| argmax(l)).collect();
        assert_eq!(
            argmaxes,
            ids(&case["argmax"]),
            "{}: argmax at every position",
            file.name()
        );
        let last = logits.last().unwrap();
        let want = floats(&case["logits"]);
        let corr = correlation(last, &want);
        let max_diff = last.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        eprintln!("{}: correlation {corr:.7}, max |diff| {max_diff:.5}", file.name());
        let min_corr = if file == Phi3File::Q8_0 { 0.995 } else { 0.999 };
        assert!(corr >= min_corr, "{}: correlation {corr}", file.name());
        let greedy = ids(&case["greedy"]);
        let ctx = case["n_ctx"].as_u64().unwrap() as u32;
        let mut job = Job::new(&model, prompt, SamplingParams::greedy(), greedy.len() as u32, ctx).unwrap();
        assert_eq!(
            run(&model, &mut job, || Box::new(Unlimited)),
            greedy,
            "{}: greedy ids",
            file.name()
        );
    }
}

/// As llama.cpp, a sequence whose context is at most the original one
/// rotates with the short factors and a longer one with the long factors,
/// whatever the position: both match llama.cpp's logits for the same
/// context (and differ from each other, so each set really is used).
#[test]
fn longrope_picks_the_short_or_long_factors_by_the_context() {
    let (model, _) = Model::from_gguf_bytes(&Phi3File::F32LongRope.bytes()).unwrap();
    let c = &model.config;
    assert_eq!(c.longrope_context, Some(LONGROPE_ORIGINAL_CONTEXT));
    assert_eq!(c.usable_context(), LONGROPE_ORIGINAL_CONTEXT as usize);
    assert!(
        (c.rope_attn_factor - 1.5f32.sqrt()).abs() < 1e-6,
        "{}",
        c.rope_attn_factor
    );
    let doc = references();
    let case = doc["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == Phi3File::F32LongRope.name())
        .unwrap();
    let prompt = ids(&case["ids"]);
    let (short_want, long_want) = (floats(&case["logits"]), floats(&case["logits_long_factors"]));
    let original = LONGROPE_ORIGINAL_CONTEXT;
    // llama.cpp ran the long case with twice the original context.
    for (ctx, want, other) in [
        (original, &short_want, &long_want),
        (2 * original, &long_want, &short_want),
    ] {
        let last = all_logits_in_context(&model, &prompt, ctx).pop().unwrap();
        let (corr, corr_other) = (correlation(&last, want), correlation(&last, other));
        eprintln!("ctx {ctx}: correlation {corr:.7} (with the other set's {corr_other:.4})");
        assert!(corr >= 0.999 && corr_other < 0.99, "ctx {ctx}: {corr}, {corr_other}");
        assert_eq!(argmax(&last), argmax(want), "ctx {ctx}");
    }
    // A job of the longer context generates with the long factors.
    let long_logits_argmax = argmax(&long_want);
    let mut job = Job::new(&model, prompt.clone(), SamplingParams::greedy(), 1, 2 * original).unwrap();
    assert_eq!(run(&model, &mut job, || Box::new(Unlimited)), vec![long_logits_argmax]);
    // The plain file has no factors and no original context.
    let (plain, _) = Model::from_gguf_bytes(&Phi3File::F32.bytes()).unwrap();
    assert_eq!(
        (plain.config.longrope_context, plain.config.rope_attn_factor),
        (None, 1.0)
    );
    assert!(!plain.uses_long_rope(u32::MAX));
}

/// K rows cached under one set of factors are not adopted by a job of the
/// other: a continuation across the original context starts afresh.
#[test]
fn rows_rotated_with_other_factors_are_not_adopted() {
    let (model, _) = Model::from_gguf_bytes(&Phi3File::F32LongRope.bytes()).unwrap();
    let original = LONGROPE_ORIGINAL_CONTEXT;
    let prompt = vec![1, 403, 407, 300, 290];
    let mut first = Job::new(&model, prompt.clone(), SamplingParams::greedy(), 4, original).unwrap();
    run(&model, &mut first, || Box::new(Unlimited));
    let mut next_prompt = prompt.clone();
    next_prompt.extend(first.state.generated());
    next_prompt.push(403);
    let saved = first.state.complete_positions();
    let same = Job::new(&model, next_prompt.clone(), SamplingParams::greedy(), 4, original).unwrap();
    assert_eq!(same.adoptable_rows(&model, &first.state, saved), saved);
    let longer = Job::new(&model, next_prompt, SamplingParams::greedy(), 4, original + 1).unwrap();
    assert_eq!(longer.adoptable_rows(&model, &first.state, saved), 0);
}

/// llama.cpp also accepts separate `attn_q`/`attn_k`/`attn_v` for phi3:
/// the split of the fused matrix gives exactly their bits.
#[test]
fn fused_and_separate_projections_give_the_same_bits() {
    let load = |fused| {
        let (md, tensors) = phi3_parts(true, fused);
        Model::from_gguf_bytes(&write(&md, &tensors)).unwrap().0
    };
    let (fused, separate) = (load(true), load(false));
    assert_eq!(fused.layers, separate.layers);
    let prompt = [1, 403, 407, 261, 378, 432, 383, 286, 261, 376];
    assert_eq!(all_logits(&fused, &prompt), all_logits(&separate, &prompt));
}

/// A job cut into steps of every size from 1 to 9 units ends bit for bit
/// where one uninterrupted step ends (ids, KV cache, state), greedy and sampled.
#[test]
fn chunked_generation_equals_uninterrupted() {
    let (model, _) = Model::from_gguf_bytes(&Phi3File::Q8_0.bytes()).unwrap();
    let prompt = vec![1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315];
    let sampled = SamplingParams {
        temperature: 0.9,
        top_k: 40,
        top_p: 0.9,
        seed: 7,
        ..Default::default()
    };
    for params in [SamplingParams::greedy(), sampled] {
        let new_job = || Job::new(&model, prompt.clone(), params.clone(), 20, 64).unwrap();
        let mut whole = new_job();
        let ids = run(&model, &mut whole, || Box::new(Unlimited));
        assert_eq!(ids.len(), 20);
        for k in 1..=9 {
            let mut job = new_job();
            assert_eq!(run(&model, &mut job, || Box::new(UnitBudget::new(k))), ids, "k = {k}");
            assert_eq!(job.kv, whole.kv, "k = {k}: KV cache");
        }
    }
}

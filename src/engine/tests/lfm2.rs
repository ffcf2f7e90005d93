//! LFM2 (gated short convolutions beside GQA attention) on a tiny model
//! llama.cpp loads (`common/lfm2_tiny.rs`), against llama.cpp's logits and
//! greedy ids (testdata/lfm2, made by tools/reference/make-lfm2-reference.py),
//! and the conv state as part of a resumable job: checkpointed, serialized
//! and restored anywhere, batched any way, the same bits.

#[path = "common/lfm2_tiny.rs"]
mod lfm2_tiny;
#[path = "common/llama_cpp_reference.rs"]
mod llama_cpp_reference;

use icllm_engine::job::{step, Job, JobError, StepOutcome, Unlimited};
use icllm_engine::kv::{KvCache, KvShape, KvType};
use icllm_engine::model::{forward, Architecture, Model};
use icllm_engine::sampler::SamplingParams;
use icllm_engine::synth::QuantMix;
use icllm_engine::tensor::GgmlType;
use lfm2_tiny::{lfm2_tiny_bytes, CONV_LAYERS};
use llama_cpp_reference::{correlation, floats, hex_sha256, ids, read_reference, step_through_cbor};

fn reference() -> serde_json::Value {
    read_reference("lfm2/lfm2-tiny-llama-cpp.json")
}

fn argmax(x: &[f32]) -> usize {
    (0..x.len()).fold(0, |b, i| if x[i] > x[b] { i } else { b })
}

/// Logits at every position of `tokens`, fed as batches of `batch`.
fn all_logits(model: &Model, tokens: &[u32], batch: usize) -> Vec<Vec<f32>> {
    let c = &model.config;
    let mut kv = KvCache::with_type(KvShape::of(c), tokens.len() as u32, KvType::F32).unwrap();
    let mut conv = vec![0.0; c.conv_state_len()];
    let mut rows = Vec::new();
    for (b, chunk) in tokens.chunks(batch).enumerate() {
        let mut x = vec![0.0; chunk.len() * c.dim];
        forward::embed(model, chunk, &mut x);
        for l in 0..c.n_layers {
            forward::mixer_block(model, l, (b * batch) as u32, &mut x, &mut kv, &mut conv);
            forward::ffn_block(model, l, &mut x);
        }
        for row in x.chunks_exact(c.dim) {
            let mut out = vec![0.0; c.vocab_size];
            forward::logits(model, row, &mut out);
            rows.push(out);
        }
    }
    rows
}

fn load(bytes: &[u8]) -> Model {
    Model::from_gguf_bytes(bytes).unwrap().0
}

#[test]
fn conv_layers_and_their_tensors_are_read_as_llama_cpp_reads_them() {
    let model = load(&lfm2_tiny_bytes(None));
    let c = &model.config;
    assert_eq!(c.arch, Architecture::Lfm2);
    assert_eq!(c.conv_layers, CONV_LAYERS);
    assert_eq!((c.conv_kernel, c.n_kv_heads, c.head_dim), (3, 4, 8));
    // Only the attention layers have KV rows, in order.
    assert_eq!(
        (0..5).map(|l| c.kv_layer(l)).collect::<Vec<_>>(),
        [None, None, Some(0), None, Some(1)]
    );
    assert_eq!(KvShape::of(c).n_layers, 2);
    assert_eq!(c.conv_state_len(), 3 * 2 * 64);
    assert!(model.layers[0].attention().is_none() && model.layers[2].attention().is_some());
    assert!(model.layers[2].qk_norm.is_some());
    // The final norm is `token_embd_norm` (not 1: it was stories' output norm).
    assert!(model.output_norm.iter().any(|&w| w != 1.0));
}

/// Same bytes as llama.cpp ran, then its last-position logits (correlation,
/// argmax), its argmax at every prompt position, and its greedy ids up to
/// the first step it decides by less than `CLEAR_LEAD`.
fn agrees_with_llama_cpp(mix: Option<QuantMix>, key: &str, min_correlation: f64) {
    let doc = reference();
    let want = &doc[key];
    let bytes = lfm2_tiny_bytes(mix);
    let sha = hex_sha256(&bytes);
    assert_eq!(
        sha,
        want["sha256"].as_str().unwrap(),
        "{key}: not the file llama.cpp ran"
    );
    let model = load(&bytes);
    let prompt = ids(&doc["prompt"]);
    let logits = all_logits(&model, &prompt, 64);
    let last = logits.last().unwrap();
    let want_last = floats(&want["last_logits"]);
    let r = correlation(last, &want_last);
    let worst = last
        .iter()
        .zip(&want_last)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    eprintln!("{key}: last-position logits correlation {r:.6}, largest difference {worst:.4}");
    assert!(r >= min_correlation, "{key}: correlation {r} < {min_correlation}");
    assert_eq!(argmax(last), argmax(&want_last), "{key}: argmax");
    let argmaxes: Vec<u32> = logits.iter().map(|l| argmax(l) as u32).collect();
    assert_eq!(argmaxes, ids(&want["argmax"]), "{key}: argmax at each prompt position");

    const CLEAR_LEAD: f64 = 0.05;
    let steps = want["greedy_lead"]
        .as_array()
        .unwrap()
        .iter()
        .take_while(|m| m.as_f64().unwrap() >= CLEAR_LEAD)
        .count();
    let want_ids = ids(&want["greedy"]);
    let mut job = Job::new(&model, prompt, SamplingParams::greedy(), want_ids.len() as u32, 128).unwrap();
    job.set_stop_tokens(Vec::new());
    let report = step(&model, &mut job, &mut Unlimited);
    assert!(matches!(report.outcome, StepOutcome::Finished(_)), "{report:?}");
    let got = job.state.generated();
    let equal = got.iter().zip(&want_ids).take_while(|(a, b)| a == b).count();
    eprintln!(
        "{key}: greedy ids checked for {steps} of {} steps, equal for {equal}",
        want_ids.len()
    );
    assert!(steps >= 3, "{key}: too few clear steps ({steps}) to compare");
    assert_eq!(
        got[..steps],
        want_ids[..steps],
        "{key}: greedy ids (llama.cpp: {want_ids:?})"
    );
}

#[test]
fn f32_agrees_with_llama_cpp() {
    agrees_with_llama_cpp(None, "f32", 0.999);
}

#[test]
fn q8_0_agrees_with_llama_cpp() {
    agrees_with_llama_cpp(Some(QuantMix::Uniform(GgmlType::Q8_0)), "q8_0", 0.995);
}

/// Batches of any size give the bits of one token at a time (the conv reads
/// the previous batch's rows from its state).
#[test]
fn batching_never_changes_a_bit() {
    let model = load(&lfm2_tiny_bytes(None));
    let prompt = ids(&reference()["prompt"]);
    let one = all_logits(&model, &prompt, 1);
    for batch in [2, 3, 7, 40] {
        assert_eq!(all_logits(&model, &prompt, batch), one, "batch {batch}");
    }
}

/// A job run a few units per step, serialized to CBOR and restored after
/// every step (what a checkpoint and an upgrade do), mid-prompt and
/// mid-decode, ends equal to the job run in one step: ids, KV rows, conv
/// state, cursor, every bit. With smaller prompt batches the ids, the KV
/// rows and the conv state are still the same bits.
#[test]
fn chunked_and_restored_equals_uninterrupted() {
    let model = load(&lfm2_tiny_bytes(None));
    let prompt = ids(&reference()["prompt"]);
    let new_job = |max_batch| {
        let mut job = Job::new(&model, prompt.clone(), SamplingParams::greedy(), 12, 128).unwrap();
        job.set_stop_tokens(Vec::new());
        job.set_max_batch(max_batch);
        job
    };
    let mut whole = new_job(16);
    assert!(matches!(
        step(&model, &mut whole, &mut Unlimited).outcome,
        StepOutcome::Finished(_)
    ));
    assert_eq!(whole.state.generated().len(), 12);
    assert!(whole.state.conv_state().iter().any(|&v| v != 0.0));

    for (max_batch, units) in [(16, 1), (16, 3), (5, 2)] {
        let (job, mid_prompt, mid_decode) = step_through_cbor(&model, new_job(max_batch), units, prompt.len());
        assert!(mid_prompt > 0 && mid_decode > 0, "{mid_prompt} {mid_decode}");
        if max_batch == 16 {
            assert_eq!(job, whole, "max batch {max_batch}, {units} units per step");
        } else {
            assert_eq!(job.state.generated(), whole.state.generated());
            assert_eq!(job.state.conv_state(), whole.state.conv_state());
            assert_eq!(job.kv, whole.kv);
        }
    }
}

/// The KV rows of a prefix say nothing of the conv layers' state there, so
/// a job on this model never starts from another job's rows.
#[test]
fn a_cached_prefix_is_never_reused() {
    let model = load(&lfm2_tiny_bytes(None));
    let prompt = ids(&reference()["prompt"]);
    let mut first = Job::new(&model, prompt.clone(), SamplingParams::greedy(), 2, 128).unwrap();
    step(&model, &mut first, &mut Unlimited);
    assert_eq!(first.state.reusable_prefix(&prompt), 0);
    let mut next = Job::new(&model, prompt, SamplingParams::greedy(), 2, 128).unwrap();
    assert_eq!(
        next.skip_cached_prefix(4),
        Err(JobError::CachedPrefixWithConvState { rows: 4 })
    );
    assert_eq!(next.skip_cached_prefix(0), Ok(()));
}

//! Model loading from GGUF: clear errors for files the engine cannot use,
//! tied embeddings and F16 weights. Variants are built by rewriting the
//! shipped stories260K file with the GGUF writer.

use icllm_engine::format::gguf::writer::{parts_of, write, Parts};
use icllm_engine::format::gguf::{Gguf, Value};
use icllm_engine::job::{step, Job, StepOutcome, Unlimited};
use icllm_engine::kernels::WeightMatrix;
use icllm_engine::model::{forward, Model, ModelError};
use icllm_engine::sampler::SamplingParams;
use icllm_engine::tensor::GgmlType;
use std::path::PathBuf;

/// stories260K as (metadata, tensors), ready to be edited and rewritten.
fn stories_parts() -> Parts {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/stories260Ktok512.gguf");
    parts_of(&std::fs::read(path).unwrap()).unwrap()
}

fn load(parts: &Parts) -> Result<Model, ModelError> {
    Model::from_gguf_bytes(&write(&parts.0, &parts.1)).map(|(m, _)| m)
}

fn set_key(parts: &mut Parts, key: &str, value: Value) {
    parts.0.retain(|(k, _)| k != key);
    parts.0.push((key.to_string(), value));
}

fn greedy_ids(model: &Model, prompt: &[u32], n: u32) -> Vec<u32> {
    let mut job = Job::new(model, prompt.to_vec(), SamplingParams::greedy(), n, 128).unwrap();
    let report = step(model, &mut job, &mut Unlimited);
    assert!(matches!(report.outcome, StepOutcome::Finished(_)), "{report:?}");
    job.state.generated().to_vec()
}

/// BOS + "Joe loves writing stories" (from models/README.md).
const GOLDEN_PROMPT: [u32; 16] = [
    1, 410, 454, 414, 411, 401, 360, 419, 263, 420, 275, 299, 349, 304, 417, 406,
];
const GOLDEN_IDS: [u32; 10] = [426, 346, 397, 355, 267, 337, 335, 345, 267, 422];

#[test]
fn rewritten_stories_still_gives_the_golden_ids() {
    let model = load(&stories_parts()).unwrap();
    assert_eq!(greedy_ids(&model, &GOLDEN_PROMPT, 10), GOLDEN_IDS);
}

#[test]
fn unknown_architecture_is_named() {
    let mut parts = stories_parts();
    set_key(&mut parts, "general.architecture", Value::String("mamba".into()));
    let err = load(&parts).unwrap_err();
    assert!(matches!(err, ModelError::UnknownArchitecture { ref name, .. } if name == "mamba"));
    assert_eq!(
        err.to_string(),
        "model architecture \"mamba\" is not supported (supported: llama, qwen2, qwen3, gemma3, lfm2, phi3)"
    );
}

#[test]
fn missing_key_is_named() {
    let mut parts = stories_parts();
    parts.0.retain(|(k, _)| k != "llama.attention.head_count");
    let err = load(&parts).unwrap_err().to_string();
    assert!(
        err.contains("llama.attention.head_count") && err.contains("missing"),
        "{err}"
    );
}

#[test]
fn inconsistent_heads_are_refused() {
    let mut parts = stories_parts();
    set_key(&mut parts, "llama.attention.head_count_kv", Value::U32(3));
    let err = load(&parts).unwrap_err().to_string();
    assert!(err.contains("head_count_kv") && err.contains("not a multiple"), "{err}");
}

#[test]
fn wrong_tensor_shape_is_named() {
    let mut parts = stories_parts();
    let t = parts.1.iter_mut().find(|t| t.name == "blk.2.attn_k.weight").unwrap();
    t.dims = vec![32, 64]; // transposed
    let err = load(&parts).unwrap_err();
    assert_eq!(
        err.to_string(),
        "tensor \"blk.2.attn_k.weight\" has dims [32, 64] (ggml order), expected [64, 32]"
    );
}

#[test]
fn missing_tensor_is_named() {
    let mut parts = stories_parts();
    parts.1.retain(|t| t.name != "blk.4.ffn_down.weight");
    assert_eq!(
        load(&parts).unwrap_err(),
        ModelError::MissingTensor("blk.4.ffn_down.weight".into())
    );
}

#[test]
fn unsupported_tensor_type_is_named() {
    let mut parts = stories_parts();
    let t = parts.1.iter_mut().find(|t| t.name == "blk.0.ffn_up.weight").unwrap();
    t.ty = GgmlType::MXFP4;
    t.bytes = vec![0; GgmlType::MXFP4.row_bytes(t.dims[0] as usize) * t.dims[1] as usize];
    let err = load(&parts).unwrap_err().to_string();
    assert!(
        err.contains("blk.0.ffn_up.weight") && err.contains("mxfp4") && err.contains("not supported"),
        "{err}"
    );
}

#[test]
fn loader_refuses_wrong_byte_counts_and_unknown_names() {
    let bytes = write(&stories_parts().0, &stories_parts().1);
    let gguf = Gguf::parse(&bytes).unwrap();
    let mut loader = icllm_engine::model::ModelLoader::new(&gguf).unwrap();
    let first = loader.next_needed().unwrap().clone();
    let err = loader
        .add_tensor(&first.name, &bytes[first.byte_range()][1..])
        .unwrap_err();
    assert!(err.to_string().contains("expected"), "{err}");
    assert!(matches!(
        loader.add_tensor("blk.9.nope.weight", &[]),
        Err(ModelError::UnexpectedTensor(_))
    ));
    let err = loader.finish().unwrap_err();
    assert!(matches!(err, ModelError::Incomplete(_)), "{err}");
}

#[test]
fn tied_embeddings_use_the_token_embedding_as_output() {
    let mut parts = stories_parts();
    parts.1.retain(|t| t.name != "output.weight");
    let model = load(&parts).unwrap();
    assert!(model.output.is_none());
    assert_eq!(model.output_weights(), &model.tok_embd);
    // Runs end to end (the text is meaningless: stories260K is not tied).
    assert_eq!(greedy_ids(&model, &GOLDEN_PROMPT, 5).len(), 5);
}

#[test]
fn f16_weights_load_and_agree_with_f32() {
    let f32_model = load(&stories_parts()).unwrap();
    let mut parts = stories_parts();
    for t in parts.1.iter_mut().filter(|t| t.dims.len() == 2) {
        t.ty = GgmlType::F16;
        t.bytes = t
            .bytes
            .chunks_exact(4)
            .flat_map(|c| half::f16::from_f32(f32::from_le_bytes([c[0], c[1], c[2], c[3]])).to_le_bytes())
            .collect();
    }
    // Kept as f16 (a model this small would otherwise be widened to f32 at load).
    let f16_model = Model::from_gguf_bytes_with(&write(&parts.0, &parts.1), |l| l.keep_16_bit_floats())
        .unwrap()
        .0;
    assert_eq!(f16_model.layers[0].attention().unwrap().wq.layout(), "f16");
    assert_eq!(f16_model.tok_embd.layout(), "f16");

    // Logits of the golden prompt's last token agree closely.
    let logits = |model: &Model| {
        let c = &model.config;
        let mut kv = icllm_engine::job::KvCache::new(icllm_engine::kv::KvShape::of(c), 128).unwrap();
        let mut x = vec![0.0; GOLDEN_PROMPT.len() * c.dim];
        forward::embed(model, &GOLDEN_PROMPT, &mut x);
        for layer in 0..c.n_layers {
            forward::attention_block(model, layer, 0, &mut x, &mut kv);
            forward::ffn_block(model, layer, &mut x);
        }
        let mut out = vec![0.0; c.vocab_size];
        forward::logits(model, &x[(GOLDEN_PROMPT.len() - 1) * c.dim..], &mut out);
        out
    };
    let (a, b) = (logits(&f32_model), logits(&f16_model));
    let max_diff = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    assert!(max_diff < 0.05, "max logit difference {max_diff}");
    assert_eq!(greedy_ids(&f16_model, &GOLDEN_PROMPT, 10), GOLDEN_IDS);
}

//! A model split into parts (the ends on a coordinator, layer ranges on
//! shards, see `ModelPart`) generates bit for bit what the whole model
//! generates: on stories260K, and on a gemma3 file whose sliding layers,
//! q/k norms and post-norms fall on both sides of a cut; whatever the batch
//! sizes, and after rewinding to positions a shard still holds.

#[path = "common/gemma3_tiny.rs"]
mod gemma3_tiny;
#[path = "common/quant_models.rs"]
mod quant_models;

use icllm_engine::format::gguf::Gguf;
use icllm_engine::job::{step, Job, KvCache, KvShape, KvType, StepOutcome, Unlimited, DEFAULT_MAX_BATCH};
use icllm_engine::model::{forward, Model, ModelLoader, ModelPart};
use icllm_engine::sampler::SamplingParams;

fn load_part(bytes: &[u8], part: ModelPart) -> Model {
    let gguf = Gguf::parse(bytes).unwrap();
    let mut loader = ModelLoader::new(&gguf).unwrap();
    loader.select_part(part).unwrap();
    while let Some(info) = loader.next_needed() {
        let (name, range) = (info.name.clone(), info.byte_range());
        loader.add_tensor(&name, &bytes[range]).unwrap();
    }
    loader.finish().unwrap()
}

/// A shard: its layers and one job's cache of them.
struct Shard {
    model: Model,
    kv: KvCache,
    conv_state: Vec<f32>,
}

fn sampled(seed: u64) -> SamplingParams {
    SamplingParams {
        temperature: 0.8,
        top_k: 40,
        top_p: 0.95,
        seed,
        ..SamplingParams::default()
    }
}

/// Generates through the ends and shards cut at `cuts`, with batches of
/// at most `max_n` tokens; rewinds `rewind` positions once, after
/// `rewind_after` batches.
fn sharded(bytes: &[u8], cuts: &[usize], prompt: &[u32], params: &SamplingParams, n: u32, max_n: usize) -> Vec<u32> {
    let whole = Model::from_gguf_bytes(bytes).unwrap().0;
    let ends = load_part(bytes, ModelPart::ends());
    assert!(ends.layers.is_empty() && ends.config.n_layers == 0);
    let ctx = 64;
    let mut bounds = vec![0];
    bounds.extend_from_slice(cuts);
    bounds.push(whole.config.n_layers);
    let mut shards: Vec<Shard> = bounds
        .windows(2)
        .map(|w| {
            let model = load_part(bytes, ModelPart::layers(w[0]..w[1]));
            assert_eq!(model.layers.len(), w[1] - w[0]);
            assert_eq!(model.tok_embd.rows, 0, "a shard holds no embedding");
            let kv = KvCache::with_type(KvShape::of_job(&model.config, DEFAULT_MAX_BATCH), ctx, KvType::F32).unwrap();
            let conv_state = vec![0.0; model.config.conv_state_len()];
            Shard { model, kv, conv_state }
        })
        .collect();
    let mut job = Job::new(&ends, prompt.to_vec(), params.clone(), n, ctx).unwrap();
    let mut batches = 0;
    while let Some(batch) = job.pipeline_batch(&ends, max_n).unwrap() {
        let mut x = batch.hidden;
        for s in &mut shards {
            forward::layers(&s.model, batch.pos0, &mut x, &mut s.kv, &mut s.conv_state);
        }
        job.pipeline_finish(&ends, batch.pos0, &x).unwrap();
        batches += 1;
        // A shard that lost its last batch: the coordinator goes back to
        // where every shard still holds rows, and nothing changes.
        if batches == 3 {
            job.pipeline_rewind(batch.pos0);
        }
    }
    job.state.generated().to_vec()
}

fn whole(bytes: &[u8], prompt: &[u32], params: &SamplingParams, n: u32) -> Vec<u32> {
    let model = Model::from_gguf_bytes(bytes).unwrap().0;
    let mut job = Job::new(&model, prompt.to_vec(), params.clone(), n, 64).unwrap();
    assert!(matches!(
        step(&model, &mut job, &mut Unlimited).outcome,
        StepOutcome::Finished(_)
    ));
    job.state.generated().to_vec()
}

#[test]
fn stories260k_over_two_and_three_shards_generates_what_it_generates_whole() {
    let bytes = quant_models::stories_bytes();
    let prompt = [1, 403, 407, 261, 378, 5, 352, 424];
    for params in [SamplingParams::greedy(), sampled(7)] {
        let want = whole(&bytes, &prompt, &params, 30);
        assert_eq!(want.len(), 30);
        for cuts in [&[2][..], &[1, 3], &[4], &[1, 2, 3, 4]] {
            for max_n in [1, 3, 64] {
                let got = sharded(&bytes, cuts, &prompt, &params, 30, max_n);
                assert_eq!(got, want, "cuts {cuts:?}, batches of {max_n}");
            }
        }
    }
}

#[test]
fn gemma3_sliding_layers_cut_anywhere_generate_what_they_generate_whole() {
    // Layers 0, 1, 3, 4 slide over 8 positions, layer 2 is global: the
    // prompt and generation run past the window.
    let bytes = gemma3_tiny::Gemma3File::F32.bytes();
    let prompt: Vec<u32> = (0..12).map(|i| 1 + (i * 37) % 500).collect();
    let params = sampled(3);
    let want = whole(&bytes, &prompt, &params, 24);
    for cuts in [&[2][..], &[3], &[1, 4]] {
        for max_n in [1, 5] {
            assert_eq!(
                sharded(&bytes, cuts, &prompt, &params, 24, max_n),
                want,
                "cuts {cuts:?}"
            );
        }
    }
}

#[test]
fn a_part_outside_the_model_is_refused() {
    let bytes = quant_models::stories_bytes();
    let gguf = Gguf::parse(&bytes).unwrap();
    let mut loader = ModelLoader::new(&gguf).unwrap();
    let n = loader.config().n_layers;
    let err = loader.select_part(ModelPart::layers(2..n + 1)).unwrap_err();
    assert!(err.to_string().contains("not a part of a model of 5 layers"), "{err}");
    assert!(loader.select_part(ModelPart::layers(3..3)).is_err(), "an empty shard");
}

#[test]
fn a_shard_loads_only_its_layers_and_the_coordinator_only_the_ends() {
    let bytes = quant_models::stories_bytes();
    let gguf = Gguf::parse(&bytes).unwrap();
    let names = |part: ModelPart| {
        let mut loader = ModelLoader::new(&gguf).unwrap();
        loader.select_part(part).unwrap();
        loader.needed().map(|t| t.name.clone()).collect::<Vec<_>>()
    };
    let shard = names(ModelPart::layers(1..3));
    assert!(
        shard.iter().all(|n| n.starts_with("blk.1.") || n.starts_with("blk.2.")),
        "{shard:?}"
    );
    assert_eq!(shard.len(), 2 * 9);
    let ends = names(ModelPart::ends());
    assert!(ends.iter().all(|n| !n.starts_with("blk.")), "{ends:?}");
    assert!(ends.contains(&"token_embd.weight".to_string()));
}

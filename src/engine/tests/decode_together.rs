//! Jobs generating together (`step_together`: one pass over the weights
//! for every job's token) generate bit for bit what each generates alone,
//! whatever the budget, however the jobs arrive (some still reading their
//! prompt, some mid-token), across models with every per-job state: KV
//! caches of both types, sliding windows, LFM2's convolution state, and
//! LongRoPE contexts that rotate with different factors.

#[path = "common/lfm2_tiny.rs"]
mod lfm2_tiny;
#[path = "common/phi3_models.rs"]
mod phi3_models;
#[path = "common/quant_models.rs"]
mod quant_models;

use icllm_engine::job::{step, step_together, Job, KvType, StepOutcome, UnitBudget, Unlimited};
use icllm_engine::model::Model;
use icllm_engine::sampler::SamplingParams;
use icllm_engine::synth::QuantMix;
use phi3_models::{Phi3File, LONGROPE_ORIGINAL_CONTEXT};

/// What each job of `specs` is: prompt, sampling, tokens to generate,
/// context, KV type.
struct Spec {
    prompt: Vec<u32>,
    params: SamplingParams,
    max_new: u32,
    ctx: u32,
    kv: KvType,
}

fn new_job(model: &Model, s: &Spec) -> Job {
    Job::with_kv_type(model, s.prompt.clone(), s.params.clone(), s.max_new, s.ctx, s.kv).unwrap()
}

fn alone(model: &Model, s: &Spec) -> Vec<u32> {
    let mut job = new_job(model, s);
    match step(model, &mut job, &mut Unlimited).outcome {
        StepOutcome::Finished(_) => job.state.generated().to_vec(),
        other => panic!("{other:?}"),
    }
}

/// A small deterministic generator for budgets and arrival times.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// Runs the jobs of `specs` together: job `i` joins after `i * stagger`
/// calls, every call gets a random number of units (1..=max_units), and the
/// jobs go through CBOR every few calls, as the canister's checkpoints do.
/// Each job's ids must equal its run alone.
fn together_equals_alone(model: &Model, specs: &[Spec], seed: u64, max_units: u64, stagger: usize) {
    let want: Vec<Vec<u32>> = specs.iter().map(|s| alone(model, s)).collect();
    let mut rng = Lcg(seed);
    let mut jobs: Vec<Job> = Vec::new();
    let mut grouped_units = 0u32;
    for call in 0.. {
        if jobs.len() < specs.len() && call >= jobs.len() * stagger {
            jobs.push(new_job(model, &specs[jobs.len()]));
        }
        let mut refs: Vec<&mut Job> = jobs.iter_mut().collect();
        let mut budget = UnitBudget::new(1 + rng.next(max_units) as u32);
        let before = budget.remaining;
        let reports = step_together(model, &mut refs, &mut budget);
        let units: u32 = reports.iter().map(|r| r.units).sum();
        // A group unit counts once against the budget but once per job in the reports.
        grouped_units += units - (before - budget.remaining);
        for r in &reports {
            assert!(!matches!(r.outcome, StepOutcome::Failed(_)), "{:?}", r.outcome);
        }
        if call % 3 == 2 {
            for job in jobs.iter_mut() {
                let mut bytes = Vec::new();
                ciborium::into_writer(&job.state, &mut bytes).unwrap();
                job.state = ciborium::from_reader(bytes.as_slice()).unwrap();
            }
        }
        let all_done = jobs.len() == specs.len() && jobs.iter().all(|j| j.state.finish_reason().is_some());
        if all_done {
            break;
        }
        assert!(call < 100_000, "the jobs do not finish");
    }
    for (i, (job, want)) in jobs.iter().zip(&want).enumerate() {
        assert_eq!(job.state.generated(), want.as_slice(), "job {i} (seed {seed})");
    }
    assert!(grouped_units > 0, "no unit ran for several jobs at once");
}

fn sampled(seed: u64) -> SamplingParams {
    SamplingParams {
        temperature: 0.9,
        repeat_penalty: 1.1,
        seed,
        ..SamplingParams::default()
    }
}

fn stories_specs() -> Vec<Spec> {
    let prompt = |n: usize, k: u32| (0..n as u32).map(|i| 1 + (i * 37 + k * 11) % 500).collect::<Vec<u32>>();
    vec![
        Spec {
            prompt: prompt(5, 0),
            params: SamplingParams::greedy(),
            max_new: 30,
            ctx: 64,
            kv: KvType::F32,
        },
        Spec {
            prompt: prompt(12, 1),
            params: sampled(7),
            max_new: 24,
            ctx: 48,
            kv: KvType::Q8,
        },
        Spec {
            prompt: prompt(1, 2),
            params: sampled(8),
            max_new: 40,
            ctx: 128,
            kv: KvType::F32,
        },
        Spec {
            prompt: prompt(20, 3),
            params: SamplingParams::greedy(),
            max_new: 12,
            ctx: 40,
            kv: KvType::Q8,
        },
    ]
}

#[test]
fn stories260k_jobs_together_generate_what_each_generates_alone() {
    let (model, _) = Model::from_gguf_bytes(&quant_models::stories_bytes()).unwrap();
    for (seed, max_units, stagger) in [(1, 7, 0), (2, 30, 3), (3, 1, 1), (4, 200, 2)] {
        together_equals_alone(&model, &stories_specs(), seed, max_units, stagger);
    }
}

/// Quantized weights in the byte layout (whose batched kernels differ from
/// the one-token pass) and a Q8_0 head.
#[test]
fn quantized_jobs_together_generate_what_each_generates_alone() {
    for mix in ["q8_0", "q4_k_m"] {
        let bytes = quant_models::synth_256_bytes(QuantMix::parse(mix).unwrap());
        let (model, _) = Model::from_gguf_bytes(&bytes).unwrap();
        let mut specs = stories_specs();
        specs.iter_mut().for_each(|s| s.ctx = s.ctx.min(128));
        together_equals_alone(&model, &specs, 5, 9, 1);
    }
}

/// LFM2: each job's convolution state goes with it through the group.
#[test]
fn lfm2_jobs_together_generate_what_each_generates_alone() {
    let (model, _) = Model::from_gguf_bytes(&lfm2_tiny::lfm2_tiny_bytes(None)).unwrap();
    together_equals_alone(&model, &stories_specs(), 6, 11, 2);
}

/// Phi-3 with LongRoPE: jobs of contexts on either side of the original
/// one rotate with different factors in the same group.
#[test]
fn longrope_jobs_of_both_factor_sets_together_generate_what_each_generates_alone() {
    let (model, _) = Model::from_gguf_bytes(&Phi3File::F32LongRope.bytes()).unwrap();
    let mut specs = stories_specs();
    specs[0].ctx = LONGROPE_ORIGINAL_CONTEXT;
    specs[2].ctx = 2 * LONGROPE_ORIGINAL_CONTEXT;
    assert!(model.uses_long_rope(specs[2].ctx) && !model.uses_long_rope(specs[0].ctx));
    together_equals_alone(&model, &specs, 7, 13, 1);
}

/// Accepts any unit of at most `max_macs` multiply-adds: one job's, never
/// a group's.
struct MacCap {
    max_macs: u64,
    asked: Vec<u64>,
}
impl icllm_engine::job::Budget for MacCap {
    fn can_afford(&mut self, macs: u64) -> bool {
        self.asked.push(macs);
        macs <= self.max_macs
    }
}

/// A budget that fits one job's largest unit but not a group's must still
/// advance the jobs (the group is halved down to one job), and each job's
/// ids stay its own. Before, every job of the group was stepped with no
/// unit run, forever (the 1,000-job load stalled in its 8th wave).
#[test]
fn a_budget_too_small_for_the_group_still_advances_its_jobs() {
    let (model, _) = Model::from_gguf_bytes(&quant_models::stories_bytes()).unwrap();
    // One-token prompts: every unit a job runs is then one token's.
    let mut specs = stories_specs();
    specs.iter_mut().for_each(|s| s.prompt.truncate(1));
    let want: Vec<Vec<u32>> = specs.iter().map(|s| alone(&model, s)).collect();
    // The most one job's unit asks for, run alone.
    let one_job = specs
        .iter()
        .map(|s| {
            let mut budget = MacCap {
                max_macs: u64::MAX,
                asked: Vec::new(),
            };
            step(&model, &mut new_job(&model, s), &mut budget);
            budget.asked.into_iter().max().unwrap()
        })
        .max()
        .unwrap();
    let mut jobs: Vec<Job> = specs.iter().map(|s| new_job(&model, s)).collect();
    let mut done = vec![false; jobs.len()];
    for call in 0.. {
        assert!(call < 100_000, "the jobs stopped advancing");
        let mut refs: Vec<&mut Job> = jobs
            .iter_mut()
            .zip(&done)
            .filter(|(_, d)| !**d)
            .map(|(j, _)| j)
            .collect();
        if refs.is_empty() {
            break;
        }
        let mut budget = MacCap {
            max_macs: one_job,
            asked: Vec::new(),
        };
        let reports = step_together(&model, &mut refs, &mut budget);
        assert!(
            reports.iter().map(|r| r.units).sum::<u32>() > 0,
            "call {call} ran no unit: cap {one_job}, asked {:?}, reports {:?}",
            budget.asked,
            reports.iter().map(|r| (r.units, &r.outcome)).collect::<Vec<_>>()
        );
        let open: Vec<usize> = (0..done.len()).filter(|&i| !done[i]).collect();
        for (i, r) in open.into_iter().zip(&reports) {
            done[i] = matches!(r.outcome, StepOutcome::Finished(_));
        }
    }
    for (job, want) in jobs.iter().zip(&want) {
        assert_eq!(job.state.generated(), &want[..]);
    }
}

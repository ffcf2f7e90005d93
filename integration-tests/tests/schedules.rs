//! Random schedules: seeded runs of the canister wasm that mix per-message
//! budgets, upgrades at random points (during the upload, the model's
//! verification and load, prompt processing and decoding), traps at random
//! instruction counts, cancels, explicit steps and concurrent jobs from
//! several callers. Whatever the schedule, every job that finishes has the
//! tokens of its uninterrupted run (a cancelled one a prefix of them), no job
//! is lost, and no message runs past its limit.
//!
//! `ICLLM_SCHEDULES=N` sets how many schedules run (default 24, seeds 0..N);
//! `ICLLM_SCHEDULE_SEED=S` replays one. README records the 1,000-schedule run.

use candid::Principal;
use icllm::local_canister::{controller, sha256, user, LocalCanister};
use icllm_api::*;
use integration_tests::{memory_charges_for, model_bytes, wasm};
use local_ic::Limits as RuntimeLimits;
use std::collections::BTreeMap;
use std::sync::OnceLock;

const IC_LIMIT: u64 = 40_000_000_000;

/// SplitMix64: small, seedable, and the same on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// The jobs schedules draw from: greedy and sampled, f32 and q8 KV caches,
/// text and token prompts, prompts that take several messages.
fn request_pool() -> Vec<JobRequest> {
    let long_prompt = ["Joe loves writing stories"; 3].join(". ");
    vec![
        JobRequest {
            prompt: "Joe loves writing stories".into(),
            max_tokens: 30,
            temperature: Some(0.0),
            seed: Some(1),
            ..JobRequest::default()
        },
        JobRequest {
            prompt: "Once upon a time".into(),
            max_tokens: 40,
            temperature: Some(0.8),
            top_p: Some(0.9),
            seed: Some(7),
            kv_cache: Some(KvCacheType::Q8),
            ..JobRequest::default()
        },
        JobRequest {
            prompt: long_prompt,
            max_tokens: 25,
            temperature: Some(0.0),
            seed: Some(1),
            kv_cache: Some(KvCacheType::Q8),
            ..JobRequest::default()
        },
        JobRequest {
            prompt: String::new(),
            prompt_tokens: Some(vec![1, 403, 407, 261, 130, 443, 267]),
            max_tokens: 50,
            temperature: Some(1.0),
            top_k: Some(40),
            seed: Some(3),
            ..JobRequest::default()
        },
    ]
}

/// Each pool request's tokens, run alone and uninterrupted under the IC's limit.
fn references() -> &'static [Vec<u32>] {
    static REFS: OnceLock<Vec<Vec<u32>>> = OnceLock::new();
    REFS.get_or_init(|| {
        let mut c = LocalCanister::install(wasm(), InitArgs::default(), IC_LIMIT).expect("install");
        c.upload_model(model_bytes(), sha256(model_bytes())).expect("upload");
        request_pool()
            .into_iter()
            .map(|req| {
                let id = c.start_job(controller(), req).unwrap().unwrap();
                let v = c.run_job(controller(), id, |_| {}).unwrap();
                assert!(matches!(v.status, JobStatus::Done(_)), "{:?}", v.status);
                v.tokens
            })
            .collect()
    })
}

/// Where in the canister's life an upgrade landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Upload,
    Load,
    Prefill,
    Decode,
}

#[derive(Default, Debug)]
struct Tally {
    upgrades: BTreeMap<String, u64>,
    injected_traps: u64,
    trapped_messages: u64,
    cancels: u64,
    steps: u64,
    jobs: u64,
    messages: u64,
}

impl Tally {
    fn upgrade(&mut self, phase: Phase) {
        *self.upgrades.entry(format!("{phase:?}")).or_default() += 1;
    }

    fn add(&mut self, other: Tally) {
        for (k, v) in other.upgrades {
            *self.upgrades.entry(k).or_default() += v;
        }
        self.injected_traps += other.injected_traps;
        self.trapped_messages += other.trapped_messages;
        self.cancels += other.cancels;
        self.steps += other.steps;
        self.jobs += other.jobs;
        self.messages += other.messages;
    }
}

struct Job {
    owner: Principal,
    pool_index: usize,
    id: Option<JobId>,
    cancelled: bool,
}

fn upgrade(c: &mut LocalCanister, tally: &mut Tally, phase: Phase) {
    c.upgrade().expect("upgrade");
    tally.upgrade(phase);
}

/// Runs `f` under a lower runtime limit than the canister was told, so its
/// message traps at a random instruction count; then restores the limit.
fn with_injected_trap(c: &mut LocalCanister, rng: &mut Rng, limit: u64, f: impl FnOnce(&mut LocalCanister)) {
    let saved = c.rt.limits();
    let at = limit / 50 + rng.below(limit - limit / 50);
    c.rt.set_limits(RuntimeLimits { update: at, ..saved });
    f(c);
    c.rt.set_limits(saved);
}

fn upload_with_upgrades(c: &mut LocalCanister, rng: &mut Rng, tally: &mut Tally) {
    let model = model_bytes();
    let begin = UploadBegin {
        size: model.len() as u64,
        sha256: sha256(model).to_vec(),
        parts: None,
    };
    let (r,): (ApiResult<UploadStatus>,) = c.update(controller(), "upload_begin", (begin,)).unwrap();
    r.unwrap();
    let chunk_bytes = (32 << 10) << rng.below(4);
    let mut offsets: Vec<usize> = (0..model.len()).step_by(chunk_bytes).collect();
    // Some chunks out of order, some sent twice.
    for i in 0..offsets.len() {
        let j = rng.below(offsets.len() as u64) as usize;
        if rng.chance(30) {
            offsets.swap(i, j);
        }
    }
    if rng.chance(50) {
        let again = *rng.pick(&offsets);
        offsets.push(again);
    }
    for off in offsets {
        let data = &model[off..(off + chunk_bytes).min(model.len())];
        let (r,): (ApiResult<UploadStatus>,) = c
            .update(
                controller(),
                "upload_chunk",
                (off as u64, serde_bytes::ByteBuf::from(data.to_vec())),
            )
            .unwrap();
        r.unwrap();
        if rng.chance(15) {
            upgrade(c, tally, Phase::Upload);
        }
    }
    let (r,): (ApiResult<UploadStatus>,) = c.update(controller(), "upload_finalize", ()).unwrap();
    r.unwrap();
    for _ in 0..100_000 {
        let (r,): (ApiResult<UploadStatus>,) = c.query(controller(), "upload_status", ()).unwrap();
        match r.unwrap().state {
            UploadState::Done => return,
            UploadState::Failed(reason) => panic!("the upload failed: {reason}"),
            _ => {}
        }
        if rng.chance(10) {
            upgrade(c, tally, Phase::Load);
        } else {
            c.round();
        }
    }
    panic!("the upload never finished");
}

fn view(c: &mut LocalCanister, owner: Principal, id: JobId) -> JobView {
    c.poll(owner, id, 0).expect("poll").expect("the job exists")
}

/// One seeded schedule; returns what it did.
fn run_schedule(seed: u64) -> Tally {
    let mut rng = Rng(seed);
    let mut tally = Tally::default();
    let limit = *rng.pick(&[6_000_000, 9_000_000, 12_000_000, 25_000_000, 150_000_000, 2_000_000_000]);
    let init = InitArgs {
        message_instruction_limit: Some(limit),
        ..InitArgs::default()
    };
    let mut c = LocalCanister::install_with(wasm(), init, limit, false, memory_charges_for(limit)).expect("install");
    let first_report = c.rt.reports().len();
    upload_with_upgrades(&mut c, &mut rng, &mut tally);

    let pool = request_pool();
    let callers = [controller(), user(1), user(2), user(3)];
    let mut jobs: Vec<Job> = (0..1 + rng.below(4))
        .map(|_| Job {
            owner: *rng.pick(&callers),
            pool_index: rng.below(pool.len() as u64) as usize,
            id: None,
            cancelled: false,
        })
        .collect();
    tally.jobs = jobs.len() as u64;

    for round in 0..200_000u64 {
        // Start jobs: the first at once, the others at random later points.
        for j in jobs.iter_mut().filter(|j| j.id.is_none()) {
            if round == 0 || rng.chance(10) {
                // After an upgrade the model reloads; callers retry meanwhile.
                match c.start_job(j.owner, pool[j.pool_index].clone()).unwrap() {
                    Ok(id) => j.id = Some(id),
                    Err(ApiError::ModelNotReady(_)) => {}
                    Err(e) => panic!("seed {seed}: start_job refused: {e:?}"),
                }
                break;
            }
        }
        let mut active = Vec::new();
        for j in jobs.iter().filter(|j| j.id.is_some()) {
            let v = view(&mut c, j.owner, j.id.unwrap());
            if v.status.is_active() {
                active.push((j.owner, j.id.unwrap(), v.status == JobStatus::Prefilling));
            }
        }
        if active.is_empty() && jobs.iter().all(|j| j.id.is_some()) {
            break;
        }
        let phase = if active.iter().any(|&(_, _, prefilling)| prefilling) {
            Phase::Prefill
        } else {
            Phase::Decode
        };
        match rng.below(100) {
            0..=54 => {
                c.round();
            }
            55..=69 if !active.is_empty() => {
                let (owner, id, _) = *rng.pick(&active);
                // A step may be refused (the job just finished) but never traps here.
                let _progress_or_refusal = c.step(owner, id).expect("step");
                tally.steps += 1;
            }
            70..=77 => upgrade(&mut c, &mut tally, phase),
            78..=86 => {
                tally.injected_traps += 1;
                let step_target = (!active.is_empty() && rng.chance(50)).then(|| *rng.pick(&active));
                with_injected_trap(&mut c, &mut rng, limit, |c| match step_target {
                    Some((owner, id, _)) => {
                        let _ = c.step(owner, id);
                    }
                    None => {
                        c.round();
                    }
                });
            }
            87..=89 if !active.is_empty() => {
                let (owner, id, _) = *rng.pick(&active);
                let (r,): (ApiResult<JobStatus>,) = c.update(owner, "cancel", (id,)).unwrap();
                r.unwrap_or_else(|e| panic!("seed {seed}: cancel refused: {e:?}"));
                jobs.iter_mut().find(|j| j.id == Some(id)).unwrap().cancelled = true;
                tally.cancels += 1;
            }
            _ => {
                c.round();
            }
        }
        assert!(round < 199_999, "seed {seed}: the jobs never finished");
    }

    // Every job is there, with its reference tokens (or a prefix of them
    // when cancelled).
    let refs = references();
    for j in &jobs {
        let id = j.id.unwrap();
        let v = view(&mut c, j.owner, id);
        let expected = &refs[j.pool_index];
        match &v.status {
            JobStatus::Done(_) => assert_eq!(
                &v.tokens, expected,
                "seed {seed}: job {id} (pool {}) diverged from its uninterrupted run",
                j.pool_index
            ),
            JobStatus::Cancelled if j.cancelled => assert!(
                expected.starts_with(&v.tokens),
                "seed {seed}: cancelled job {id}'s tokens are not a prefix of its reference"
            ),
            other => panic!("seed {seed}: job {id} ended {other:?}"),
        }
        let listed = {
            let (list,): (Vec<JobSummary>,) = c.query(j.owner, "list_jobs", ()).unwrap();
            list.iter().any(|s| s.id == id)
        };
        assert!(listed, "seed {seed}: job {id} is missing from its owner's list");
    }
    let reports = &c.rt.reports()[first_report..];
    for r in reports {
        assert!(
            r.instructions <= r.limit,
            "seed {seed}: {} used {} instructions, over its limit {}",
            r.method,
            r.instructions,
            r.limit
        );
    }
    tally.trapped_messages = reports.iter().filter(|r| r.error.is_some()).count() as u64;
    tally.messages = reports.len() as u64;
    tally
}

#[test]
fn random_schedules_give_every_job_its_uninterrupted_tokens() {
    let seeds: Vec<u64> = match std::env::var("ICLLM_SCHEDULE_SEED") {
        Ok(s) => vec![s.parse().expect("ICLLM_SCHEDULE_SEED is a number")],
        Err(_) => {
            let n = std::env::var("ICLLM_SCHEDULES")
                .map(|s| s.parse().expect("ICLLM_SCHEDULES is a number"))
                .unwrap_or(24u64);
            (0..n).collect()
        }
    };
    references();
    let mut total = Tally::default();
    for &seed in &seeds {
        total.add(run_schedule(seed));
    }
    eprintln!("{} schedules, 0 divergences: {total:?}", seeds.len());
    // The schedules exercised what they claim to.
    if seeds.len() >= 24 {
        for phase in ["Upload", "Load", "Prefill", "Decode"] {
            assert!(
                total.upgrades.get(phase).copied().unwrap_or(0) > 0,
                "no upgrade during {phase}: {total:?}"
            );
        }
        assert!(
            total.trapped_messages > 0 && total.cancels > 0 && total.steps > 0,
            "{total:?}"
        );
    }
}

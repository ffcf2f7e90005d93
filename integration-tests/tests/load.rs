//! Load: many principals submit many jobs at once to one canister, in
//! waves. Every job either finishes or is refused by a quota with the
//! reason (and is submitted again later, as a client would); none is lost.
//! Measured: fairness (the most scheduler rounds a running job waited
//! between two of its steps), the largest heap, and stable memory across
//! waves once finished records are pruned (it must not grow).
//!
//! `ICLLM_LOAD_JOBS` (default 200), `ICLLM_LOAD_PRINCIPALS` (default 20) and
//! `ICLLM_LOAD_WAVES` (default 2) size it; README records the 1,000-job,
//! 100-principal, 10-wave run (`-- --nocapture` prints the figures).

use candid::Principal;
use icllm::local_canister::{controller, user, LocalCanister};
use icllm_api::*;
use integration_tests::canister_with_model;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// Small enough that a job takes a few messages, so that jobs interleave.
const LIMIT: u64 = 12_000_000;
/// The canister's default heap budget for weights and KV caches (3.5 GiB).
const HEAP_BUDGET: u64 = (4 << 30) - (512 << 20);

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).map_or(default, |v| v.parse().unwrap_or_else(|_| panic!("{name} is a number")))
}

fn principal(n: u64) -> Principal {
    // `user(u8)` covers 255 callers; beyond, distinct self-authenticating-like ids.
    if n < 255 {
        user(n as u8 + 1)
    } else {
        Principal::from_slice(&[&n.to_be_bytes()[..], &[0x02]].concat())
    }
}

fn request(n: u64) -> JobRequest {
    let prompts = [
        "Joe loves writing stories",
        "Once upon a time",
        "The cat",
        "Lily and Ben",
    ];
    JobRequest {
        prompt: prompts[(n % 4) as usize].into(),
        max_tokens: 8 + (n % 17) as u32,
        temperature: Some(if n.is_multiple_of(3) { 0.0 } else { 0.9 }),
        seed: Some(n),
        ..JobRequest::default()
    }
}

struct Running {
    owner: Principal,
    messages: u64,
    rounds_waiting: u64,
}

#[derive(Default, Debug)]
struct WaveFigures {
    finished: u64,
    refusals: BTreeMap<String, u64>,
    max_rounds_between_steps: u64,
    max_concurrent: usize,
    max_heap_bytes: u64,
    rounds: u64,
}

/// The kind of a quota refusal, without its numbers.
fn refusal_kind(e: &ApiError) -> String {
    match e {
        ApiError::QuotaExceeded(m) => m.split([':', '(']).next().unwrap_or(m).trim().to_string(),
        other => panic!("a job was refused for another reason than a quota: {other:?}"),
    }
}

fn run_wave(c: &mut LocalCanister, jobs: u64, principals: u64, first: u64) -> WaveFigures {
    let mut f = WaveFigures::default();
    // Each principal's jobs, submitted in order.
    let mut pending: Vec<Vec<u64>> = (0..principals)
        .map(|p| (first..first + jobs).filter(|n| n % principals == p).rev().collect())
        .collect();
    let mut running: HashMap<JobId, Running> = HashMap::new();
    // Clients back off as a refusal tells them: a caller at its own limit
    // waits for one of its jobs to finish; when the canister is full,
    // everyone waits for any job to finish.
    let mut at_own_limit = vec![false; principals as usize];
    let mut canister_full = false;
    while f.finished < jobs {
        for k in 0..principals {
            // A different caller goes first each round.
            let p = ((k + f.rounds) % principals) as usize;
            while let Some(&n) = pending[p].last() {
                if canister_full || at_own_limit[p] {
                    break;
                }
                let owner = principal(p as u64);
                match c.start_job(owner, request(n)).expect("start_job call") {
                    Ok(id) => {
                        pending[p].pop();
                        running.insert(
                            id,
                            Running {
                                owner,
                                messages: 0,
                                rounds_waiting: 0,
                            },
                        );
                    }
                    Err(e) => {
                        let kind = refusal_kind(&e);
                        if kind.starts_with("all ") {
                            canister_full = true;
                        } else {
                            at_own_limit[p] = true;
                        }
                        *f.refusals.entry(kind).or_default() += 1;
                    }
                }
            }
        }
        f.max_concurrent = f.max_concurrent.max(running.len());
        c.round();
        f.rounds += 1;
        assert!(f.rounds < 1_000_000, "the wave never finished");
        let mut done = Vec::new();
        for (&id, r) in running.iter_mut() {
            let v = c.poll(r.owner, id, 0).expect("poll").expect("the job exists");
            if v.messages > r.messages {
                r.messages = v.messages;
                r.rounds_waiting = 0;
            } else if v.messages > 0 {
                r.rounds_waiting += 1;
                f.max_rounds_between_steps = f.max_rounds_between_steps.max(r.rounds_waiting);
            }
            match v.status {
                JobStatus::Done(_) => done.push(id),
                s if s.is_active() => {}
                other => panic!("job {id} ended {other:?}"),
            }
        }
        for id in done {
            let r = running.remove(&id).expect("a running job");
            f.finished += 1;
            canister_full = false;
            let p = (0..principals)
                .find(|&p| principal(p) == r.owner)
                .expect("a known caller");
            at_own_limit[p as usize] = false;
        }
        let (health,): (Health,) = c.query(user(0), "health", ()).unwrap();
        f.max_heap_bytes = f.max_heap_bytes.max(health.heap_bytes);
    }
    f
}

#[test]
fn many_principals_many_jobs_none_lost_and_stable_memory_does_not_grow() {
    let jobs = env_or("ICLLM_LOAD_JOBS", 200);
    let principals = env_or("ICLLM_LOAD_PRINCIPALS", 20);
    let waves = env_or("ICLLM_LOAD_WAVES", 2).max(2);
    let mut c = canister_with_model(LIMIT);
    let (settings,): (ApiResult<SettingsView>,) = c.query(controller(), "get_settings", ()).unwrap();
    let settings = settings.unwrap();
    let ttl = settings.limits.finished_job_ttl_seconds();
    let mut stable_after = Vec::new();
    for w in 0..waves {
        let f = run_wave(&mut c, jobs, principals, w * jobs);
        assert_eq!(f.finished, jobs);
        let (health,): (Health,) = c.query(user(0), "health", ()).unwrap();
        // The next wave comes after the finished records' time-to-live:
        // each `start_job` prunes a few expired records.
        c.rt.advance_time(Duration::from_secs(ttl + 60));
        stable_after.push(c.rt.stable_size(c.id).unwrap());
        eprintln!(
            "wave {w}: {jobs} jobs from {principals} principals, {} rounds, at most {} running at once, \
             refusals {:?}, most rounds a running job waited between steps: {}, largest heap {} MiB, \
             job records stored: {}, stable memory {} MiB",
            f.rounds,
            f.max_concurrent,
            f.refusals,
            f.max_rounds_between_steps,
            f.max_heap_bytes >> 20,
            health.total_jobs,
            (stable_after[w as usize] * 65536) >> 20
        );
        // This wave's records, and none of the waves before (pruned by this one).
        assert_eq!(health.total_jobs, jobs, "expired records were not pruned");
        // The weights and the cached jobs' KV caches stay within the default heap budget.
        assert!(
            f.max_heap_bytes <= HEAP_BUDGET,
            "heap over budget: {} bytes",
            f.max_heap_bytes
        );
    }
    // Freed B-tree nodes and KV slots are reused: no growth after the first wave.
    assert!(
        stable_after.windows(2).skip(1).all(|w| w[1] <= w[0]),
        "stable memory grew across waves: {stable_after:?} pages"
    );
}

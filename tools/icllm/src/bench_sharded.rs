//! `icllm bench --shards K`: the model sharded over a coordinator and K
//! shards (even layer ranges) in the local runtime, each the real canister
//! wasm; `--jobs` greedy jobs at once (their rows share each shard
//! message), measured from the runtime's reports of every
//! canister: instructions, messages and cycles per decode token, the
//! largest message, and an estimate of tokens per second.

use crate::bench::BenchArgs;
use anyhow::{anyhow, bail, Result};
use icllm::local_canister::controller;
use icllm::local_sharded::{even_ranges, LocalShards};
use icllm_api::{InitArgs, JobRequest, JobStatus};
use icllm_engine::format::gguf::Gguf;
use icllm_engine::model::ModelConfig;
use local_ic::{CanisterId, MessageKind};
use serde_json::json;
use std::time::Instant;

/// Instructions per second one canister executes on a subnet (the
/// estimate's model: every hop of a token is a subnet-local call that runs
/// in the same round while the round lasts).
const SUBNET_INSTRUCTIONS_PER_SECOND: f64 = 2e9;

pub fn bench_sharded(
    args: &BenchArgs,
    wasm: Vec<u8>,
    label: String,
    bytes: Vec<u8>,
    k: u32,
) -> Result<serde_json::Value> {
    let start = Instant::now();
    let gguf = Gguf::parse(&bytes).map_err(|e| anyhow!("{e}"))?;
    let config = ModelConfig::from_gguf(&gguf).map_err(|e| anyhow!("{e}"))?;
    let ranges = even_ranges(config.n_layers as u32, k);
    let prompt: Vec<u32> = (0..args.prompt_tokens)
        .map(|i| 1 + (i * 7) % (config.vocab_size as u32 - 1))
        .collect();
    let ctx = args.ctx.unwrap_or(args.prompt_tokens + args.gen_tokens + 1);
    let init = InitArgs {
        max_context: Some(ctx),
        heap_budget: args.heap_budget_mib.map(|m| m << 20),
        ..InitArgs::default()
    };
    let mut s = LocalShards::install(wasm, init, args.instruction_limit, &ranges)?;
    eprintln!(
        "bench: {label} over {k} shards {ranges:?}: uploading to the coordinator, which sends each shard its part"
    );
    s.upload_model(&bytes, icllm::local_canister::sha256(&bytes))?;
    drop(bytes);
    eprintln!("bench: loaded in {:.0} s", start.elapsed().as_secs_f64());
    let canisters: Vec<CanisterId> = std::iter::once(s.coordinator.id)
        .chain(s.shards.iter().copied())
        .collect();
    let balance = |s: &LocalShards| -> u128 {
        canisters
            .iter()
            .map(|&c| s.coordinator.rt.cycle_balance(c).unwrap())
            .sum()
    };

    let req = JobRequest {
        prompt_tokens: Some(prompt),
        max_tokens: args.gen_tokens,
        temperature: Some(0.0),
        ctx_size: Some(ctx),
        kv_cache: Some(crate::api_kv_type(args.kv_cache)),
        ..JobRequest::default()
    };
    // `--jobs` identical jobs at once: the coordinator sends their rows
    // through the shards together, and each must generate the same tokens.
    let ids = (0..args.jobs)
        .map(|_| {
            s.coordinator
                .start_job(controller(), req.clone())?
                .map_err(|e| anyhow!("start_job: {e:?}"))
        })
        .collect::<Result<Vec<_>>>()?;
    // The decode span: from the round after every job's first token to the end.
    let (mut first_report, mut first_balance, mut at_first) = (None, 0u128, Vec::new());
    let views = loop {
        let views = ids
            .iter()
            .map(|&id| {
                s.coordinator
                    .poll(controller(), id, 0)?
                    .map_err(|e| anyhow!("poll: {e:?}"))
            })
            .collect::<Result<Vec<_>>>()?;
        if first_report.is_none() && views.iter().all(|v| v.generated_tokens >= 1) {
            first_report = Some(s.coordinator.rt.reports().len());
            first_balance = balance(&s);
            at_first = views.clone();
        }
        if views.iter().all(|v| !v.status.is_active()) {
            break views;
        }
        s.coordinator.round();
    };
    for v in &views {
        if v.status != JobStatus::Done("max_tokens".into()) {
            bail!("job {} ended with {:?}", v.id, v.status);
        }
        if v.tokens != views[0].tokens {
            bail!("job {} generated other tokens than job {}", v.id, views[0].id);
        }
    }
    let Some(first) = first_report else {
        bail!("the jobs generated no token");
    };
    let generated = |vs: &[icllm_api::JobView]| vs.iter().map(|v| v.generated_tokens as u64).sum::<u64>();
    let tokens = (generated(&views) - generated(&at_first)) as f64;
    if tokens < 1.0 {
        bail!("give --gen-tokens of at least 2: decode is measured after the first token");
    }
    let reports = &s.coordinator.rt.reports()[first..];
    let paid = |c: CanisterId| {
        reports
            .iter()
            .filter(|r| {
                r.canister == c && r.committed && !matches!(r.kind, MessageKind::Query | MessageKind::InspectMessage)
            })
            .map(|r| r.charged_instructions())
            .sum::<u64>() as f64
    };
    let per_canister: Vec<f64> = canisters.iter().map(|&c| paid(c) / tokens).collect();
    let total: f64 = per_canister.iter().sum();
    let largest_message = reports
        .iter()
        .filter(|r| canisters.contains(&r.canister))
        .map(|r| r.charged_instructions())
        .max()
        .unwrap_or(0);
    let messages = reports
        .iter()
        .filter(|r| canisters.contains(&r.canister) && r.committed)
        .filter(|r| !matches!(r.kind, MessageKind::Query | MessageKind::InspectMessage))
        .count() as f64
        / tokens;
    let cycles = (first_balance - balance(&s)) as f64 / tokens;
    let prefill = at_first[0].prompt_instructions as f64 / args.prompt_tokens as f64;
    Ok(json!({
        "model": label,
        "shards": k,
        "jobs": args.jobs,
        "layer_ranges": ranges.iter().map(|r| format!("{}..{}", r.start, r.end)).collect::<Vec<_>>(),
        "prompt_tokens": args.prompt_tokens,
        "decode_tokens": tokens,
        "decode_instructions_per_token": total,
        "coordinator_instructions_per_token": per_canister[0],
        "shard_instructions_per_token": &per_canister[1..],
        "largest_message_instructions": largest_message,
        "decode_messages_per_token": messages,
        "decode_cycles_per_token": cycles,
        "prefill_instructions_per_token": prefill,
        "estimated_tokens_per_second": SUBNET_INSTRUCTIONS_PER_SECOND / total,
        "estimated_tokens_per_second_model": "all jobs together; a batch's hops run one after another, each at 2 B instructions per second, subnet-local calls within the round",
        "seconds": start.elapsed().as_secs_f64(),
    }))
}

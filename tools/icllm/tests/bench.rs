//! `icllm bench`: the keys issue 6 asks for, on the shipped model and on a
//! two-layer synthetic shape, including the fixed cost per message.

use std::process::Command;

fn bench(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_icllm"))
        .arg("bench")
        .args(args)
        .args(["--json", "--prompt-tokens", "24", "--gen-tokens", "8"])
        .output()
        .expect("icllm runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "icllm bench failed: {stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not one JSON object ({e}): {stdout}"))
}

fn check(r: &serde_json::Value) {
    for key in [
        "instructions_per_token",
        "prefill_instructions_per_token",
        "message_overhead_instructions",
        "fixed_cost_per_message",
        "tick_overhead_instructions",
        "tokens_per_message",
        "prefill_tokens_per_message",
        "macs_per_token",
        "heap_bytes",
        "stable_bytes",
    ] {
        let v = r[key].as_f64().unwrap_or_else(|| panic!("no number at {key}: {r}"));
        assert!(v > 0.0, "{key} is {v}: {r}");
    }
    assert!(r["heap_dirty_page_instructions_per_message"].as_f64().is_some(), "{r}");
    // The replica's memory tracker by default: every message pays for the
    // pages it touches, and the budget foresees it.
    assert_eq!(r["memory_charges"], "dmt", "{r}");
    assert!(r["page_instructions_per_message"].as_f64().unwrap_or(0.0) > 0.0, "{r}");
    assert!(r["slices_per_message"].as_f64().unwrap_or(0.0) >= 1.0, "{r}");
    assert_eq!(r["traps"], 0, "{r}");
    assert_eq!(r["retries"], 0, "{r}");
    assert_eq!(r["decode_context_position"], 28, "{r}");
    let ipm = r["instructions_per_mac"].as_f64().unwrap();
    assert!(ipm > 0.1 && ipm < 100.0, "{r}");
}

#[test]
fn bench_reports_every_key_for_the_shipped_model() {
    let model = concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/stories260Ktok512.gguf");
    check(&bench(&["--model", model]));
}

#[test]
fn bench_runs_a_synthetic_shape() {
    let r = bench(&["--shape", "stories15M", "--quant", "q8_0", "--layers", "2"]);
    check(&r);
    assert_eq!(r["n_layers"], 2, "{r}");
}

/// The main run's keys without the fixed-cost runs.
fn bench_main(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_icllm"))
        .arg("bench")
        .args(args)
        .args(["--json", "--no-overhead"])
        .output()
        .expect("icllm runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "icllm bench failed: {stderr}");
    serde_json::from_str(String::from_utf8(out.stdout).unwrap().trim()).unwrap()
}

/// stories15M (F32, 60 MB of weights touched by every message) under the
/// memory tracker's charges: under a 2 B message limit every message is one
/// slice and none traps; under a limit a few tokens wide the job takes 100+
/// messages, each paying its page charges, still without a trap or a retry.
#[test]
fn stories15m_jobs_never_trap_under_page_charges() {
    for (limit, min_messages) in [(2_000_000_000u64, 3u64), (150_000_000, 100)] {
        let limit_arg = limit.to_string();
        let r = bench_main(&[
            "--shape",
            "stories15M",
            "--quant",
            "f32",
            "--prompt-tokens",
            "120",
            "--gen-tokens",
            "135",
            "--instruction-limit",
            &limit_arg,
        ]);
        assert_eq!(r["memory_charges"], "dmt", "{r}");
        assert_eq!(r["traps"], 0, "{r}");
        assert_eq!(r["retries"], 0, "{r}");
        assert_eq!(r["generated_tokens"], 135, "{r}");
        let messages = r["messages"].as_u64().unwrap();
        assert!(messages >= min_messages, "{messages} messages under {limit}: {r}");
        assert!(r["max_message_instructions"].as_u64().unwrap() <= limit, "{r}");
        assert!(r["page_instructions_per_message"].as_f64().unwrap() > 0.0, "{r}");
        if limit <= 2_000_000_000 {
            assert_eq!(r["slices_per_message"].as_f64(), Some(1.0), "{r}");
        }
    }
}

/// `--query`: stories15M F32 fills one 5 B query (the count found by the
/// canister's refusal and confirmed by a query asking for exactly it).
#[test]
fn bench_query_counts_the_tokens_one_query_generates() {
    let out = Command::new(env!("CARGO_BIN_EXE_icllm"))
        .args([
            "bench",
            "--shape",
            "stories15M",
            "--quant",
            "f32",
            "--prompt-tokens",
            "16",
            "--query",
            "--json",
        ])
        .output()
        .expect("icllm runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["limited_by_context"], false, "{r}");
    let tokens = r["tokens_per_query"].as_u64().unwrap();
    assert!((100..240).contains(&tokens), "{r}");
    let spent = r["query_instructions"].as_u64().unwrap();
    assert!(
        spent <= 5_000_000_000 && spent > 4_000_000_000,
        "the query limit nearly filled: {r}"
    );
}

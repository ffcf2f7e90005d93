#!/usr/bin/env bash
# Opt-in check (15 to 30 minutes per model on the 2-core development machine;
# too slow for CI): jobs of 100+ messages at the IC's 40 B limit under the
# replica's memory charges (dmt, the default) run with no trap and no
# retry, and no message exceeds 40 B. CI runs the stories15M version
# (tools/icllm/tests/bench.rs, stories15m_jobs_never_trap_under_page_charges).
#   tools/dmt-long-jobs.sh [qwen2.5-0.5b|qwen3-1.7b]...
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}
cargo build --release -p icllm
# shape, quant, generated tokens (~100 messages at the measured tokens per
# message), KV cache (q8 keeps qwen3-1.7b's long context within the heap).
declare -A quant=([qwen2.5-0.5b]=q8_0 [qwen3-1.7b]=q4_k_m)
declare -A gen=([qwen2.5-0.5b]=11000 [qwen3-1.7b]=3400)
declare -A kv=([qwen2.5-0.5b]=f32 [qwen3-1.7b]=q8)
shapes=("$@")
[ ${#shapes[@]} -gt 0 ] || shapes=(qwen2.5-0.5b qwen3-1.7b)
for shape in "${shapes[@]}"; do
  out=$("$target/release/icllm" bench --shape "$shape" --quant "${quant[$shape]}" \
    --prompt-tokens 120 --gen-tokens "${gen[$shape]}" --kv-cache "${kv[$shape]}" --no-overhead --json)
  echo "$out"
  python3 - "$out" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
ok = r["traps"] == 0 and r["retries"] == 0 and r["messages"] >= 100 \
    and r["max_message_instructions"] <= 40_000_000_000
print(f'{r["model"]}: {r["messages"]} messages, max {r["max_message_instructions"]}, '
      f'traps {r["traps"]}, retries {r["retries"]}: {"ok" if ok else "FAILED"}')
sys.exit(0 if ok else 1)
PY
done

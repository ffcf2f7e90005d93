#!/usr/bin/env bash
# Builds the icllm canister wasm (profile `canister`, SIMD128; the candid
# interface is embedded as `icp:public candid:service`) and, given a path,
# copies it there: icp-cli's build step passes $ICP_WASM_OUTPUT_PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
cargo build --profile canister --target wasm32-unknown-unknown -p icllm-canister
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
wasm="$target/wasm32-unknown-unknown/canister/icllm_canister.wasm"
if [ $# -gt 0 ]; then
  cp "$wasm" "$1"
else
  echo "$wasm"
fi

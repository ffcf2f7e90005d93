#!/usr/bin/env bash
# Builds the local-ic test canisters (integration-tests/canisters/*) into
# ${CARGO_TARGET_DIR:-<workspace>/target}/wasm32-unknown-unknown/canister/<name>.wasm,
# where tools/local-ic/tests find them. The tests build missing ones
# themselves; CI runs this first so the test output stays readable.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --profile canister --target wasm32-unknown-unknown \
  -p test-canister-counter -p test-canister-metering -p test-canister-timers

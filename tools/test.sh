#!/usr/bin/env bash
# The project's test command: format check, every wasm built once (wasm32,
# and the canister for wasm64), all tests
# (engine, runtime, canister in the runtime, CLI, repository guard), icp-cli
# building the canister from icp.yaml, then clippy. Installs what a machine with only rustup's stable toolchain lacks
# (the wasm32 target, rustfmt, clippy; nightly with rust-src for wasm64), so it passes on a fresh clone.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
cargo fmt --all --check
tools/build-wasm.sh
# The wasm64 build too (nightly with build-std; installed if missing): its
# test checks it generates the wasm32 build's tokens at wasm64's prices.
tools/build-wasm64.sh
tools/icp-cli-check.sh
cargo test --workspace --release
cargo clippy --workspace --all-targets --release -- -D warnings
# The wasm64 build's own code (its stable memory over ic0.stable64_*) too.
rustup +nightly component list --installed | grep -q '^clippy' || rustup +nightly component add clippy
cargo +nightly clippy -Z build-std=std,panic_abort --profile canister --target wasm64-unknown-unknown \
  -p icllm-canister -- -D warnings
# A short coverage-guided run of every fuzz target, FUZZ_SECONDS each (CI
# sets it; 0 or unset skips): nightly and cargo-fuzz are installed if missing.
if [ "${FUZZ_SECONDS:-0}" -gt 0 ]; then
  tools/fuzz.sh "$FUZZ_SECONDS"
fi

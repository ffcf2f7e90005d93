#!/usr/bin/env bash
# The project's test command: format check, every wasm built once, all tests
# (engine, runtime, canister in the runtime, CLI, repository guard), icp-cli
# building the canister from icp.yaml, then clippy. Installs what a machine with only rustup's stable toolchain lacks
# (the wasm32 target, rustfmt, clippy), so it passes on a fresh clone.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
cargo fmt --all --check
tools/build-wasm.sh
tools/icp-cli-check.sh
cargo test --workspace --release
cargo clippy --workspace --all-targets --release -- -D warnings
# A short coverage-guided run of every fuzz target, FUZZ_SECONDS each (CI
# sets it; 0 or unset skips): nightly and cargo-fuzz are installed if missing.
if [ "${FUZZ_SECONDS:-0}" -gt 0 ]; then
  tools/fuzz.sh "$FUZZ_SECONDS"
fi

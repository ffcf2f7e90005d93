#!/usr/bin/env bash
# The project's test command: format check, every wasm built once, all tests
# (engine, runtime, canister in the runtime, CLI), then clippy.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all --check
tools/build-wasm.sh
cargo test --workspace --release
cargo clippy --workspace --all-targets --release -- -D warnings

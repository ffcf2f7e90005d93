#!/usr/bin/env bash
# Builds the product canister for wasm64 (6 GiB heap, for models above the
# wasm32 heap): nightly Rust with the standard library rebuilt for
# wasm64-unknown-unknown (tier 3, no prebuilt std), with the wasm32 build's
# flags (.cargo/config.toml) and profile:
#   target/wasm64-unknown-unknown/canister/icllm_canister.wasm
set -euo pipefail
cd "$(dirname "$0")/.."
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
rustup +nightly component list --installed | grep -q '^rust-src' || rustup +nightly component add rust-src
cargo +nightly build -Z build-std=std,panic_abort --profile canister \
  --target wasm64-unknown-unknown -p icllm-canister

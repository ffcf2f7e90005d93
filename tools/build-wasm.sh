#!/usr/bin/env bash
# Builds every canister wasm of the workspace (the product canister and the
# small canisters the runtime tests use) once, with the `canister` profile:
#   target/wasm32-unknown-unknown/canister/<crate>.wasm
set -euo pipefail
cd "$(dirname "$0")/.."
# The product canister alone first: `icllm run` rebuilds it the same way, so
# the two invocations share one set of resolved features (no rebuilds).
cargo build --profile canister --target wasm32-unknown-unknown -p icllm-canister
packages=()
for dir in integration-tests/canisters/*/; do
  [ -f "$dir/Cargo.toml" ] || continue
  name=$(sed -n 's/^name *= *"\(.*\)"/\1/p' "$dir/Cargo.toml" | head -n1)
  packages+=(-p "$name")
done
if [ ${#packages[@]} -gt 0 ]; then
  cargo build --profile canister --target wasm32-unknown-unknown "${packages[@]}"
fi

#!/usr/bin/env bash
# Installs the Rust pieces the project builds with beyond a plain stable
# toolchain: the wasm32 target of the canister, rustfmt and clippy. Quiet and
# quick when they are already there.
set -euo pipefail
if ! command -v rustup >/dev/null 2>&1; then
  sysroot=$(rustc --print sysroot)
  if [ ! -d "$sysroot/lib/rustlib/wasm32-unknown-unknown" ]; then
    echo "setup: the wasm32-unknown-unknown target is missing and rustup is not here to add it" >&2
    exit 1
  fi
  exit 0
fi
installed=$(rustup target list --installed)
grep -qx wasm32-unknown-unknown <<<"$installed" || rustup target add wasm32-unknown-unknown
components=$(rustup component list --installed)
for c in rustfmt clippy; do
  grep -q "^$c" <<<"$components" || rustup component add "$c"
done

#!/usr/bin/env bash
# Installs what the project builds and tests with beyond a plain stable
# toolchain: the wasm32 target of the canister, rustfmt and clippy, and the
# official `openai` Python package (pinned, in a venv beside the build:
# <target>/openai-venv) that the `icllm serve` tests drive the server with.
# Quiet and quick when they are already there.
set -euo pipefail
cd "$(dirname "$0")/.."

OPENAI_VERSION=1.109.1

rust_pieces() {
  if ! command -v rustup >/dev/null 2>&1; then
    sysroot=$(rustc --print sysroot)
    if [ ! -d "$sysroot/lib/rustlib/wasm32-unknown-unknown" ]; then
      echo "setup: the wasm32-unknown-unknown target is missing and rustup is not here to add it" >&2
      exit 1
    fi
    return
  fi
  installed=$(rustup target list --installed)
  grep -qx wasm32-unknown-unknown <<<"$installed" || rustup target add wasm32-unknown-unknown
  components=$(rustup component list --installed)
  for c in rustfmt clippy; do
    grep -q "^$c" <<<"$components" || rustup component add "$c"
  done
}

openai_client() {
  local venv="${CARGO_TARGET_DIR:-target}/openai-venv"
  if "$venv/bin/python" -c "import openai, sys; sys.exit(openai.__version__ != '$OPENAI_VERSION')" 2>/dev/null; then
    return
  fi
  python3 -m venv "$venv" || {
    echo "setup: python3 -m venv failed (on Debian: apt-get install python3-venv)" >&2
    exit 1
  }
  "$venv/bin/pip" install --quiet --disable-pip-version-check "openai==$OPENAI_VERSION"
}

rust_pieces
openai_client

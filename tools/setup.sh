#!/usr/bin/env bash
# Installs what the project builds and tests with beyond a plain stable
# toolchain: the wasm32 target of the canister, rustfmt and clippy, and the
# official `openai` Python package (pinned, in a venv beside the build:
# <target>/openai-venv) that the `icllm serve` tests drive the server with,
# and for the chat page's test Debian's chromium (apt-get, when missing)
# and puppeteer-core (pinned, from npm into <target>/npm-chat-page), and
# @icp-sdk/core (pinned, into <target>/npm-agent) for the network tests.
# Quiet and quick when they are already there.
set -euo pipefail
cd "$(dirname "$0")/.."

OPENAI_VERSION=1.109.1
PUPPETEER_VERSION=24.43.1
ICP_SDK_CORE_VERSION=6.1.0

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

chat_page_browser() {
  if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null || {
        apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null
      }
    else
      echo "setup: chromium is missing; install it (Debian: apt-get install chromium)" >&2
      exit 1
    fi
  fi
  local prefix="${CARGO_TARGET_DIR:-target}/npm-chat-page"
  if ! grep -qs "\"version\": \"$PUPPETEER_VERSION\"" "$prefix/node_modules/puppeteer-core/package.json"; then
    command -v npm >/dev/null 2>&1 || { echo "setup: npm is missing (Debian: apt-get install npm)" >&2; exit 1; }
    mkdir -p "$prefix"
    DO_NOT_TRACK=1 npm install --silent --no-save --prefix "$prefix" "puppeteer-core@$PUPPETEER_VERSION" >/dev/null
  fi
}

# The JS agent (@icp-sdk/core, successor of @dfinity/agent) that the
# network tests call the canister with through `icllm replica`.
js_agent() {
  local prefix="${CARGO_TARGET_DIR:-target}/npm-agent"
  if ! grep -qs "\"version\": \"$ICP_SDK_CORE_VERSION\"" "$prefix/node_modules/@icp-sdk/core/package.json"; then
    command -v npm >/dev/null 2>&1 || { echo "setup: npm is missing (Debian: apt-get install npm)" >&2; exit 1; }
    mkdir -p "$prefix"
    DO_NOT_TRACK=1 npm install --silent --no-save --prefix "$prefix" "@icp-sdk/core@$ICP_SDK_CORE_VERSION" >/dev/null
  fi
}

rust_pieces
openai_client
chat_page_browser
js_agent

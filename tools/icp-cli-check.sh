#!/usr/bin/env bash
# icp-cli builds the canister from icp.yaml: installs the icp binary from npm
# (@icp-sdk/icp-cli-linux-x64, into target/npm), runs `icp build icllm` in a
# scratch copy of the manifest's project, and checks that the artifact is the
# wasm tools/build-canister.sh builds. No network beyond the npm registry.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v npm >/dev/null 2>&1; then
  echo "icp-cli-check: npm is not installed; skipped" >&2
  exit 0
fi
export DO_NOT_TRACK=1
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
prefix="$target/npm"
icp="$prefix/node_modules/@icp-sdk/icp-cli-linux-x64/bin/icp"
if [ ! -x "$icp" ]; then
  mkdir -p "$prefix"
  npm install --silent --no-save --prefix "$prefix" @icp-sdk/icp-cli-linux-x64@1 >/dev/null
fi
"$icp" --version
rm -rf .icp
"$icp" build icllm
artifact=.icp/cache/artifacts/icllm
cmp "$artifact" "$target/wasm32-unknown-unknown/canister/icllm_canister.wasm"
grep -q "icp:public candid:service" "$artifact"
rm -rf .icp
echo "icp-cli-check: icp build icllm gives the canister wasm with its candid interface"

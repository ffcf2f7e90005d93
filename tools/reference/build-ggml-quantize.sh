#!/usr/bin/env bash
# Builds tools/reference/ggml-quantize.c against ggml's quantizers from the
# llama-cpp-python source package on PyPI (its vendored llama.cpp), into
# $1 (default: target/reference). Prints the binary's path. Nothing here is
# committed but the harness's own source.
set -euo pipefail
cd "$(dirname "$0")/../.."
out="${1:-${CARGO_TARGET_DIR:-target}/reference}"
version=0.3.36
mkdir -p "$out"
if [ ! -d "$out/llama_cpp_python-$version" ]; then
  # The sdist's address from PyPI's JSON API (some mirrors give it relative).
  url=$(curl -sSf "https://pypi.org/pypi/llama-cpp-python/json" | python3 -c '
import json, sys
v = sys.argv[1]
u = next(f["url"] for f in json.load(sys.stdin)["releases"][v] if f["packagetype"] == "sdist")
print(u if u.startswith("http") else "https://files.pythonhosted.org/packages/" + u.split("packages/packages/", 1)[1])
' "$version")
  curl -sSfL "$url" | tar xz -C "$out"
fi
ggml="$out/llama_cpp_python-$version/vendor/llama.cpp/ggml"
gcc -O2 -I"$ggml/include" -I"$ggml/src" tools/reference/ggml-quantize.c "$ggml/src/ggml-quants.c" -lm -o "$out/ggml-quantize"
echo "$out/ggml-quantize"

#!/usr/bin/env bash
# Coverage-guided fuzzing of the parsers users and callers feed icllm
# (fuzz/README.md): each target runs for SECONDS (default 60) from its
# committed seeds (fuzz/seeds/<target>) plus the corpus it grew before
# (<target dir>/fuzz/corpus/<target>). Prints one line per target: runs,
# coverage (libFuzzer's cov and ft counters), corpus size, crashes; exits
# non-zero on a crash, with the input that caused it in fuzz/artifacts/.
#   [FUZZ_TIMEOUT=seconds per input, default 10] tools/fuzz.sh [SECONDS] [TARGET...]
# (a long run beside builds wants a larger FUZZ_TIMEOUT: a starved fuzzer
# reports timeouts that are not the input's)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(gguf hf_checkpoint tokenizer_json chat_template candid_args upload_ranges)

# The fuzz targets alone need nightly (sanitizer coverage) and cargo-fuzz.
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --version 0.13.2 --locked

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}/fuzz"
corpus_root="$CARGO_TARGET_DIR/corpus"
cargo +nightly fuzz build --fuzz-dir fuzz -O
status=0
for t in "${targets[@]}"; do
  mkdir -p "$corpus_root/$t"
  log="$CARGO_TARGET_DIR/$t.log"
  # -rss_limit_mb: a model file may make the loader allocate what it claims,
  # up to what its bytes can back; far more is a bug. -timeout: one input.
  if cargo +nightly fuzz run --fuzz-dir fuzz -O "$t" "$corpus_root/$t" "fuzz/seeds/$t" -- \
      -max_total_time="$seconds" -timeout="${FUZZ_TIMEOUT:-10}" -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    crashes=0
  else
    crashes=1
    status=1
  fi
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -n1)
  cov=$(grep -o 'cov: [0-9]* ft: [0-9]*' "$log" | tail -n1)
  corp=$(find "$corpus_root/$t" -type f | wc -l)
  echo "fuzz $t: ${seconds}s runs=${runs:-?} ${cov:-cov: ?} corpus=$corp crashes=$crashes"
  if [ "$crashes" = 1 ]; then
    grep -E 'ERROR|panicked|SUMMARY|Test unit written' "$log" | head -n 20 >&2 || tail -n 40 "$log" >&2
  fi
done
exit $status

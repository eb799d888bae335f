#!/usr/bin/env bash
# Short smoke run of every fuzz target (docs/fuzzing.md): builds fuzz/ with cargo-fuzz
# on a nightly toolchain and runs each target for FUZZ_SECONDS (default 15) over its
# committed corpus, failing on any crash, panic or timeout. New inputs found go to a
# scratch directory, never into fuzz/corpus/.
#
# Installs cargo-fuzz when missing. When cargo-fuzz or a nightly toolchain cannot be had:
# under CI=true that is a failure; otherwise it prints what was skipped and why and
# exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_TARGET="${FUZZ_SECONDS:-15}"
TOOLCHAIN="${FUZZ_TOOLCHAIN:-nightly}"
in_ci() { [[ "${CI:-}" == "true" ]]; }
skip() {
  if in_ci; then
    echo "fuzz-smoke: $*" >&2
    exit 1
  fi
  echo "fuzz-smoke: SKIPPED: $*" >&2
  exit 0
}

if ! rustup run "$TOOLCHAIN" rustc --version >/dev/null 2>&1; then
  rustup toolchain install "$TOOLCHAIN" --profile minimal >/dev/null 2>&1 ||
    skip "no $TOOLCHAIN toolchain and it cannot be installed (cargo-fuzz needs -Z flags)"
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz-smoke: installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked >/dev/null 2>&1 ||
    skip "cargo-fuzz is not installed and 'cargo install cargo-fuzz' failed"
fi

# No sanitizer: the crate forbids unsafe code, and without ASan each run does about
# twice the executions. libFuzzer still catches panics, overflows (debug assertions
# are on), timeouts and runaway memory.
cargo "+$TOOLCHAIN" fuzz build -s none
TARGETS=$(cargo "+$TOOLCHAIN" fuzz list)
SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT
for target in $TARGETS; do
  mkdir -p "$SCRATCH/$target" "fuzz/corpus/$target"
  echo "==> fuzz $target (${SECONDS_PER_TARGET}s)"
  # New inputs go to the scratch dir (first corpus dir); the committed corpus is read only.
  log="$SCRATCH/$target.log"
  if ! cargo "+$TOOLCHAIN" fuzz run -s none "$target" "$SCRATCH/$target" "fuzz/corpus/$target" -- \
    -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "fuzz-smoke: $target failed; the crashing input is in fuzz/artifacts/$target/" >&2
    exit 1
  fi
  grep -E '^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::peak_rss_mb)' "$log" || true
done
echo "fuzz-smoke: every target ran ${SECONDS_PER_TARGET}s without a crash"

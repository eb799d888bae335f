#!/usr/bin/env bash
# CPU time and context switches per request of a whole `hookwarden standalone` process
# under the receiver bench's `--standalone` load (docs/bench.md "CPU per delivery",
# session 9): runs `cargo bench --bench receiver -- --standalone --state-dir DIR --rounds 1
# --seconds 6 --no-nginx --no-half-rate`, and counts, with `perf stat -e
# task-clock,context-switches`, the standalone process over 3 s inside its 6 s pass; divides
# by the requests of those 3 s (the pass's rate × 3). Alternate builds in one run to compare
# them (HOOKWARDEN_BENCH_BIN); the figures move ±5–10 % from pass to pass on the 2-core VM.
#
# usage: [HOOKWARDEN_BENCH_BIN=…] [BENCH=…] scripts/bench-product-cpu.sh [DIR] [extra bench args]
#   DIR: the state folder's parent (default /dev/shm/hookwarden-bench: the journal on tmpfs)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh
command -v perf >/dev/null || { echo "perf is not installed: apt-get install -y linux-perf" >&2; exit 1; }
bench=${BENCH:-$(receiver_bench)}
hookwarden=$(hookwarden_for_bench "$bench")
dir=${1:-/dev/shm/hookwarden-bench}
shift || true
rm -rf "$dir"
mkdir -p "$dir"
out=$(mktemp)
trap 'rm -f "$out" "$out.perf"' EXIT
HOOKWARDEN_BENCH_BIN=$hookwarden "$bench" --standalone --state-dir "$dir" --rounds 1 --seconds 6 \
  --no-nginx --no-half-rate "$@" >"$out" 2>&1 &
bp=$!
sleep 3
pid=$(pgrep -P "$bp" -f "standalone" | head -1 || true)
[ -n "$pid" ] || { wait "$bp" || true; cat "$out" >&2; echo "no standalone process under the bench" >&2; exit 1; }
perf stat -x, -e task-clock,context-switches -p "$pid" -o "$out.perf" -- sleep 3 >/dev/null 2>&1
wait "$bp"
rate=$(grep -oE '[0-9]+ req/s' "$out" | head -1 | grep -oE '[0-9]+')
ms=$(awk -F, '/task-clock/ {print $1}' "$out.perf")
cs=$(awk -F, '/context-switches/ {print $1}' "$out.perf")
awk -v ms="$ms" -v r="$rate" -v cs="$cs" -v h="$hookwarden" 'BEGIN {
  printf "%s: %.2f µs of CPU and %.3f context switches per request (%.0f %% of a core) at %d req/s\n",
    h, ms * 1000 / (r * 3), cs / (r * 3), ms / 30, r }'

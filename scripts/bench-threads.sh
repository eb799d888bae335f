#!/usr/bin/env bash
# Where each thread's time goes during a `--standalone` pass (docs/bench.md "Forwarding"):
# runs `cargo bench --bench receiver -- --standalone [--forward]` for 6 s and, over 2 s in
# the middle of the pass, reads every `hookwarden standalone` thread's schedstat: the
# share of the wall clock it ran on a CPU and the share it was runnable but waited for one.
# A worker near 100 % run is CPU-bound; a large wait share means the machine's cores are
# taken (by the bench client, its target, or the receiver's other threads).
#
# usage: scripts/bench-threads.sh [STATE_DIR] [-- extra bench args, e.g. --forward]
#   STATE_DIR: where the journal lives (default target/tmp; /dev/shm takes fsync out)
set -euo pipefail
cd "$(dirname "$0")/.."
state=${1:-target/tmp}
shift $(( $# > 1 ? 1 : $# )) || true
[ "${1:-}" = "--" ] && shift
mkdir -p "$state"
. scripts/bench-lib.sh
bench=$(receiver_bench)
bin=$(hookwarden_for_bench "$bench")
out=$(mktemp)
HOOKWARDEN_BENCH_BIN=$bin "$bench" --standalone --rounds 1 --no-nginx --no-half-rate \
  --seconds 6 --state-dir "$state" "$@" >"$out" 2>&1 &
bench_pid=$!
sleep 3
pid=$(pgrep -f "standalone --listen 127.0.0.1:0" | head -1 || true)
[ -n "$pid" ] || { wait "$bench_pid" || true; cat "$out"; echo "no standalone process" >&2; exit 1; }
snap() {
  for t in /proc/"$pid"/task/*; do
    printf '%s/%s %s\n' "${t##*/}" "$(tr ' ' _ <"$t/comm")" "$(cat "$t/schedstat")"
  done 2>/dev/null || true
}
snap >"$out.1"; sleep 2; snap >"$out.2"
join <(sort "$out.1") <(sort "$out.2") |
  awk '{r=($5-$2)/2e7; w=($6-$3)/2e7; if (r>0.5||w>0.5) printf "  %-28s run %5.1f %%  wait for a CPU %5.1f %%\n", $1, r, w}'
wait "$bench_pid" || { cat "$out"; exit 1; }
grep -E 'req/s|^forwards:' "$out" || true
rm -f "$out" "$out.1" "$out.2"

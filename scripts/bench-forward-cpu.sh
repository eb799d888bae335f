#!/usr/bin/env bash
# What forwarding costs per delivery, in CPU rather than wall-clock (docs/bench.md
# "Forwarding"): runs `cargo bench --bench receiver -- --standalone` without and with
# `--forward`, ROUNDS times alternately, and prints each run's requests/s and the CPU time
# (user + system, from /proc/PID/stat, over the whole life of the process) per delivery of
#   - the `hookwarden standalone` process (intake, and with --forward the forwarder too:
#     every forward is sent before the bench ends), and
#   - the bench process (the load client, and with --forward the target it runs).
# CPU per delivery moves far less than requests/s when other work shares the machine.
#
# usage: scripts/bench-forward-cpu.sh [STATE_DIR] [ROUNDS] [-- extra bench args]
#   STATE_DIR: where the journal lives (default target/tmp; /dev/shm takes fsync out)
set -euo pipefail
cd "$(dirname "$0")/.."
state=${1:-target/tmp}
rounds=${2:-3}
shift $(( $# > 2 ? 2 : $# )) || true
[ "${1:-}" = "--" ] && shift
seconds=${SECONDS_PER_PASS:-5}
mkdir -p "$state"
. scripts/bench-lib.sh
bench=$(receiver_bench)
bin=$(hookwarden_for_bench "$bench")
tck=$(getconf CLK_TCK)
for round in $(seq 1 "$rounds"); do
  for mode in "" --forward; do
    out=$(mktemp)
    HOOKWARDEN_BENCH_BIN=$bin "$bench" --standalone $mode --rounds 1 --no-nginx --no-half-rate \
      --seconds "$seconds" --state-dir "$state" "$@" >"$out" 2>&1 &
    bench_pid=$!
    pid=""
    for _ in $(seq 1 400); do
      pid=$(pgrep -f "^$bin standalone" | head -1 || true)
      [ -n "$pid" ] && break
      sleep 0.05
    done
    [ -n "$pid" ] || { cat "$out"; echo "the standalone process did not start" >&2; exit 1; }
    own=0 client=0
    while kill -0 "$pid" 2>/dev/null; do
      t=$(awk '{print $14+$15}' "/proc/$pid/stat" 2>/dev/null || true); [ -n "$t" ] && own=$t
      t=$(awk '{print $14+$15}' "/proc/$bench_pid/stat" 2>/dev/null || true); [ -n "$t" ] && client=$t
      sleep 0.05
    done
    wait "$bench_pid" || { cat "$out"; exit 1; }
    n=$(grep -oE '\(([0-9]+) requests' "$out" | head -1 | grep -oE '[0-9]+')
    rate=$(grep -oE '[0-9]+ req/s' "$out" | head -1)
    # Every delivery of the run: the pass plus the 1 s warm-up at about the pass's rate.
    total=$(( n * (seconds + 1) / seconds ))
    printf 'round %s %-9s %s, ~%s deliveries; CPU µs per delivery: hookwarden %s, bench (client%s) %s\n' \
      "$round" "${mode:-plain}" "$rate" "$total" \
      "$(echo "scale=1; $own*1000000/$tck/$total" | bc)" "${mode:+ + target}" \
      "$(echo "scale=1; $client*1000000/$tck/$total" | bc)"
    grep -E '^forwards:' "$out" || true
    rm -f "$out"
  done
done

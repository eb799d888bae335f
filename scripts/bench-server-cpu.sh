#!/usr/bin/env bash
# CPU per request of the server under the in-process bench's load, next to nginx's
# (docs/bench.md "Which side the nginx passes measure"): runs
# `cargo bench --bench receiver -- ARGS --rounds 1 --seconds 6 --no-half-rate` and reads, over
# 3 s inside the receiver's pass and 3 s inside nginx's, the CPU time of every thread of the
# bench process and of nginx's worker (/proc/*/stat). The in-process server's runtime is
# built before the client's, so its worker is the first `tokio-rt-worker`; the client's
# thread is the one busy in both passes. A thread near 100 % bounds its pass.
#
# usage: scripts/bench-server-cpu.sh [bench args, e.g. --provider datadog | --transport-floor]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh
bench=$(receiver_bench)
PATH=$PATH:/usr/sbin
command -v nginx >/dev/null || { echo "nginx is not installed: apt-get install -y nginx-light" >&2; exit 1; }
out=$(mktemp)
"$bench" "$@" --rounds 1 --seconds 6 --no-half-rate >"$out" 2>&1 &
bp=$!
tck=$(getconf CLK_TCK)
snap() {
  for t in /proc/"$bp"/task/*; do
    printf '%s/%s %s\n' "${t##*/}" "$(tr ' ' _ <"$t/comm")" "$(awk '{print $14+$15}' "$t/stat")"
  done 2>/dev/null || true
  for n in $(pgrep -f "nginx: worker" || true); do
    printf 'nginx-worker/%s %s\n' "$n" "$(awk '{print $14+$15}' "/proc/$n/stat")"
  done
}
# Timeline: warm-ups of 1 s each, the receiver's 6 s pass, then nginx's 6 s pass.
sleep 3; snap >"$out.1"; sleep 3; snap >"$out.2"; sleep 4; snap >"$out.3"; sleep 3; snap >"$out.4"
wait "$bp" || { cat "$out"; exit 1; }
rates=($(grep -oE '[0-9]+ req/s' "$out" | grep -oE '[0-9]+'))
[ "${#rates[@]}" -ge 2 ] || { cat "$out"; echo "no nginx pass in the output" >&2; exit 1; }
show() { # snapshot-a snapshot-b rate label
  echo "$4 pass, $3 req/s:"
  join <(sort "$1") <(sort "$2") | awk -v rate="$3" -v tck="$tck" '{
    s = ($3 - $2) / tck / 3; if (s > 0.01) printf "  %-28s %5.1f %% CPU  %5.2f µs per request\n", $1, 100 * s, 1e6 * s / rate }'
}
show "$out.1" "$out.2" "${rates[0]}" "$(grep -m1 'req/s' "$out" | awk -F' [(]' '{print $1}')"
show "$out.3" "$out.4" "${rates[1]}" "nginx"
rm -f "$out" "$out".[1-4]

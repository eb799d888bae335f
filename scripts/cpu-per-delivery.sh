#!/usr/bin/env bash
# Instructions per delivery (user space, callgrind) of the in-process receiver pipeline
# for each preset, and of nginx `return 200` answering the same requests from the same
# client: docs/bench.md "CPU per delivery (issue #21)".
#
#   scripts/cpu-per-delivery.sh [PRESET…]          # default: every preset but aws-sns, then nginx
#   N=1000 scripts/cpu-per-delivery.sh github nginx
#
# Each measurement starts the server under `valgrind --tool=callgrind` (the receiver:
# `benches/receiver.rs --serve`, one tokio worker, memory sink; nginx: one process,
# `master_process off`), sends it exactly N and then, in a fresh server, 2N unique signed
# deliveries with the bench client (`--count`, 32 keep-alive connections) from a second
# process, and stops the server; the cost per delivery is (I(2N) − I(N)) / N, so start-up,
# connection setup and shutdown cancel out. The client is not measured. Kernel work
# (loopback TCP, epoll) is not in these figures: valgrind sees user space only.
#
# Environment: BENCH (the bench binary; default: built with `cargo bench --no-run`),
# REPEAT (default 1: the N/2N pair is run that many times and the median slope printed;
# one slope moves by ±15 % from run to run), N (default 1000), CONNECTIONS (32), OUT (a folder for the callgrind files; default a
# temporary one, removed at the end), NGINX (default: nginx on PATH or /usr/sbin/nginx).
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-1000}
CONNECTIONS=${CONNECTIONS:-32}
if [[ -z "${BENCH:-}" ]]; then
  BENCH=$(cargo bench --bench receiver --no-run --message-format=json 2>/dev/null |
    sed -n 's/.*"executable":"\([^"]*receiver-[^"]*\)".*/\1/p' | tail -1)
fi
[[ -x "$BENCH" ]] || { echo "no bench binary (set BENCH=…)" >&2; exit 1; }
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
keep_out=${OUT:+yes}
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
[[ -n "$keep_out" ]] || trap 'rm -rf "$OUT"' EXIT

presets=("$@")
if [[ ${#presets[@]} -eq 0 ]]; then
  presets=(github gitlab stripe slack standard-webhooks svix shopify pagerduty twilio sentry
    linear grafana zendesk jira bitbucket datadog alertmanager discord sendgrid zoom twitch
    azure-event-grid gitea forgejo paddle generic google-pubsub github-actions nginx)
fi

# Total instructions of one callgrind output file.
total() { sed -n 's/^summary: *\([0-9]*\).*/\1/p;s/^totals: *\([0-9]*\).*/\1/p' "$1" | head -1; }
# Instructions in SHA-256's software block function: valgrind does not emulate the SHA
# extensions, so under callgrind sha2 takes its portable path; natively (SHA-NI) the same
# blocks cost a fraction of this.
sha() { callgrind_annotate --inclusive=no "$1" 2>/dev/null | awk '/sha2::sha256::soft::compress/ {gsub(",", "", $1); print $1; f=1; exit} END {if (!f) print 0}'; }

# receiver PRESET COUNT → prints the total instructions of a server that answered COUNT.
receiver() {
  local preset=$1 count=$2 tag="$1.$2"
  local fifo="$OUT/$tag.stdin"
  rm -f "$fifo" "$OUT/$tag.serving"
  mkfifo "$fifo"
  valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.$tag" \
    "$BENCH" --serve --provider "$preset" <"$fifo" >"$OUT/$tag.serving" 2>"$OUT/$tag.log" &
  local server=$!
  exec 3>"$fifo"
  local line=""
  for _ in $(seq 600); do
    line=$(grep -m1 '^serving ' "$OUT/$tag.serving" || true)
    [[ -n "$line" ]] && break
    sleep 0.1
  done
  [[ -n "$line" ]] || { echo "$preset: the server did not start; $OUT/$tag.log" >&2; exec 3>&-; wait $server; return 1; }
  read -r _ url secret <<<"$line"
  if ! "$BENCH" --url "$url" --secret "$secret" --provider "$preset" --count "$count" \
      --connections "$CONNECTIONS" >"$OUT/$tag.client" 2>&1; then
    echo "$preset: the client failed: $(cat "$OUT/$tag.client")" >&2
    exec 3>&-; wait $server || true; return 1
  fi
  exec 3>&-
  wait $server
  echo "$(total "$OUT/callgrind.$tag") $(sha "$OUT/callgrind.$tag")"
}

# nginx COUNT → prints the total instructions of one nginx process that answered COUNT.
nginx_run() {
  local count=$1 tag="nginx.$1" prefix="$OUT/nginx.$1"
  mkdir -p "$prefix"
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  cat >"$prefix/nginx.conf" <<EOF
master_process off;
daemon off;
worker_processes 1;
pid $prefix/nginx.pid;
error_log $prefix/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $prefix/body;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$port; location / { return 200 "ok\n"; } }
}
EOF
  valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.$tag" \
    "$NGINX" -p "$prefix" -c "$prefix/nginx.conf" -e "$prefix/error.log" 2>"$OUT/$tag.log" &
  local server=$!
  for _ in $(seq 600); do
    (exec 4<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
  done
  "$BENCH" --url "http://127.0.0.1:$port/hooks/bench" --secret bench-secret-0123456789abcdef \
    --provider github --expect-status 200 --count "$count" --connections "$CONNECTIONS" \
    >"$OUT/$tag.client" 2>&1 || { echo "nginx: the client failed: $(cat "$OUT/$tag.client")" >&2; }
  kill -QUIT $server
  wait $server || true
  echo "$(total "$OUT/callgrind.$tag") 0"
}

printf '%-20s %14s %14s %14s %18s\n' preset "I($N)" "I($((2 * N)))" "instr/delivery" "of which SHA-256"
for preset in "${presets[@]}"; do
  slopes=()
  for _ in $(seq "${REPEAT:-1}"); do
    if [[ $preset == nginx ]]; then
      one=$(nginx_run "$N") && two=$(nginx_run $((2 * N))) || continue
    else
      one=$(receiver "$preset" "$N") && two=$(receiver "$preset" $((2 * N))) || continue
    fi
    read -r i1 s1 <<<"$one"
    read -r i2 s2 <<<"$two"
    slopes+=($(((i2 - i1) / N)))
  done
  [[ ${#slopes[@]} -gt 0 ]] || continue
  # The median of REPEAT slopes: one slope moves by ±15 % from run to run.
  median=$(printf '%s\n' "${slopes[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR + 1) / 2)]}')
  printf '%-20s %14d %14d %14d %18d  (slopes: %s)\n' "$preset" "$i1" "$i2" "$median" $(((s2 - s1) / N)) "${slopes[*]}"
done

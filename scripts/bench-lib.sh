# Shared by the bench scripts (bench-forward-cpu.sh, bench-threads.sh,
# bench-server-cpu.sh): sourced from the repository's root, not run.

# Builds `cargo bench --bench receiver` (release) and prints its executable.
receiver_bench() {
  cargo bench --bench receiver --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    m=json.loads(l)
    if m.get("reason")=="compiler-artifact" and m.get("executable") and m["target"]["name"]=="receiver":
        print(m["executable"])'
}

# The `hookwarden` binary the bench at $1 runs with --standalone: $HOOKWARDEN_BENCH_BIN,
# else the release build beside the bench (built when missing).
hookwarden_for_bench() {
  local bin=${HOOKWARDEN_BENCH_BIN:-$(dirname "$(dirname "$1")")/hookwarden}
  [ -x "$bin" ] || cargo build --release --bin hookwarden >&2
  printf '%s\n' "$bin"
}

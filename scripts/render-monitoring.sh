#!/usr/bin/env bash
# Renders the chart's monitoring objects for users without Helm or the Prometheus Operator:
#   manifests/monitoring/prometheusrule.yaml    the PrometheusRule (kubectl apply -f)
#   manifests/monitoring/prometheus-rules.yaml  the same alerts as a plain Prometheus rule
#                                               file (rule_files:); `promtool test rules`
#                                               tests it (tests/monitoring/rules-test.yaml)
#   manifests/monitoring/grafana-dashboard.json the dashboard (Grafana → Import)
# from charts/hookwarden with default values (release hookwarden, namespace hookwarden).
# scripts/check-chart.sh fails when the committed files differ from a fresh render.
#
# Usage: scripts/render-monitoring.sh [DIR]   (default manifests/monitoring)
#        extra arguments after DIR go to helm template (e.g. -f tests/monitoring/values.yaml)
# Needs helm on PATH or in HOOKWARDEN_HELM.
set -euo pipefail
cd "$(dirname "$0")/.."

HELM="${HOOKWARDEN_HELM:-helm}"
KUBE_VERSION="${HOOKWARDEN_KUBE_VERSION:-1.34.0}"
out="${1:-manifests/monitoring}"
shift || true
mkdir -p "$out"

header='# hookwarden: rendered from charts/hookwarden by scripts/render-monitoring.sh. Do not edit;
# change the chart (templates/_alerts.tpl) and re-render.'
rule="$("$HELM" template hookwarden charts/hookwarden --namespace hookwarden --kube-version "$KUBE_VERSION" \
  --set metrics.prometheusRule.enabled=true --show-only templates/prometheusrule.yaml "$@")"
{ echo "$header"; echo "$rule"; } >"$out/prometheusrule.yaml"
# The PrometheusRule's spec is a rule file indented by two spaces: everything after `spec:`.
{
  echo "$header"
  echo "# Plain Prometheus rule file: list it under rule_files: in prometheus.yml."
  sed -n '/^spec:$/,$p' <<<"$rule" | tail -n +2 | sed 's/^  //'
} >"$out/prometheus-rules.yaml"
cp charts/hookwarden/dashboards/hookwarden.json "$out/grafana-dashboard.json"
echo "wrote $out/prometheusrule.yaml, $out/prometheus-rules.yaml, $out/grafana-dashboard.json" >&2

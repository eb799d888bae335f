#!/usr/bin/env bash
# Checks the Helm chart, the plain manifests and the examples:
#   helm lint --strict (default and non-default values), helm template of each values
#   set, Kubernetes schema validation of every rendered object (kubernetes-validate
#   --strict), the RBAC each component gets (scripts/check-rbac.py), workload hardening
#   (scripts/check-workloads.py), example WebhookIntegrations against our CRD schema
#   (scripts/validate-examples.py), drift of charts/hookwarden/crds,
#   manifests/install.yaml, manifests/monitoring and the values table in the docs, and the
#   alert rules with promtool (check rules; test rules over tests/monitoring/rules-test.yaml).
# Tools: helm (HOOKWARDEN_HELM, PATH, or scripts/install-kube-tools.sh) and a Python venv
# (HOOKWARDEN_VENV, default ~/.cache/hookwarden/venv) with pinned packages, installed here.
# Under CI=true a tool that cannot be installed fails the run; otherwise the checks that
# need it are skipped and named.
set -uo pipefail
cd "$(dirname "$0")/.."

KUBE_VERSION="${HOOKWARDEN_KUBE_VERSION:-1.34.0}"
VENV="${HOOKWARDEN_VENV:-$HOME/.cache/hookwarden/venv}"
# Pinned: kubernetes-validate carries the Kubernetes schemas, so its version decides
# which API versions exist. 1.37.0 ships schemas for 1.33 to 1.37. standardwebhooks is the
# official library tests/it/forward_sdk.rs verifies forwarded signatures with (cargo test
# runs after this script in scripts/test.sh, so the venv is ready by then). PyJWT and
# cryptography mint the OIDC tokens and SNS messages of tests/it/oidc_sns.rs; PyNaCl (what
# Discord's docs verify with), cryptography, sendgrid and paddle-python-sdk sign and check
# the issue-19 senders' deliveries in tests/it/senders.rs.
PY_REQUIREMENTS="kubernetes-validate==1.37.0 jsonschema==4.26.0 PyYAML==6.0.3 cel-python==0.5.0 standardwebhooks==1.3.0 PyJWT==2.15.1 PyNaCl==1.5.0 cryptography==51.0.1 sendgrid==6.12.5 paddle-python-sdk==1.16.1"
CHART=charts/hookwarden
RELEASE=hookwarden
NAMESPACE=hookwarden

in_ci() { [[ "${CI:-}" == "true" ]]; }
passed=0 failed=0 skipped=0
failures=() skips=()
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# check NAME COMMAND...: runs one check, shows its output, counts the result.
check() {
  local name="$1"; shift
  printf -- '--- %s\n' "$name"
  if "$@"; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1)); failures+=("$name")
    printf 'FAILED: %s\n' "$name"
  fi
}

# skip NAME REASON: names a check that cannot run here; a failure under CI=true.
skip() {
  if in_ci; then
    failed=$((failed + 1)); failures+=("$1 (CI=true, cannot run: $2)")
    printf -- '--- %s\nFAILED under CI=true: %s\n' "$1" "$2"
  else
    skipped=$((skipped + 1)); skips+=("$1: $2")
    printf -- '--- %s\nSKIPPED: %s\n' "$1" "$2"
  fi
}

# --- tools ---------------------------------------------------------------------------
HELM=""
helm_missing=""
if [[ -n "${HOOKWARDEN_HELM:-}" && -x "${HOOKWARDEN_HELM}" ]]; then
  HELM="$HOOKWARDEN_HELM"
elif command -v helm >/dev/null 2>&1; then
  HELM="$(command -v helm)"
elif bin="$(scripts/install-kube-tools.sh)" && [[ -x "$bin/helm" ]]; then
  HELM="$bin/helm"
else
  helm_missing="helm is not on PATH and scripts/install-kube-tools.sh could not install it"
fi
[[ -n "$HELM" ]] && echo "helm: $HELM ($("$HELM" version --short 2>/dev/null))"

PY=""
py_missing=""
stamp="$VENV/.hookwarden-requirements"
if [[ -x "$VENV/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$PY_REQUIREMENTS" ]]; then
  PY="$VENV/bin/python"
elif ! command -v python3 >/dev/null 2>&1; then
  py_missing="python3 is not installed"
elif ! { python3 -m venv "$VENV" >/dev/null 2>&1 || { rm -rf "$VENV" && python3 -m venv "$VENV"; }; }; then
  py_missing="python3 -m venv $VENV failed (Debian: apt-get install python3-venv)"
elif ! "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check $PY_REQUIREMENTS; then
  py_missing="pip could not install $PY_REQUIREMENTS into $VENV"
else
  echo "$PY_REQUIREMENTS" >"$stamp"
  PY="$VENV/bin/python"
fi
[[ -n "$PY" ]] && echo "python venv: $VENV ($PY_REQUIREMENTS)"

# --- drift that needs no tool ------------------------------------------------------------
crd_drift() {
  local ok=0 f
  for f in crds/*.yaml; do
    if ! diff -u "$f" "$CHART/crds/$(basename "$f")"; then
      echo "$CHART/crds/$(basename "$f") differs from $f; run: scripts/sync-chart.sh" >&2
      ok=1
    fi
  done
  for f in "$CHART"/crds/*.yaml; do
    [[ -f "crds/$(basename "$f")" ]] || { echo "$f has no source in crds/; remove it" >&2; ok=1; }
  done
  return $ok
}
check "chart CRDs are the generated crds/ (no drift)" crd_drift

# --- helm lint and render -----------------------------------------------------------------
values_sets=(default "$CHART/ci/full-values.yaml" "$CHART/ci/minimal-values.yaml")
values_args() { [[ "$1" == default ]] || printf -- '-f\n%s\n' "$1"; }
render_file() { echo "$work/render-$(basename "$1" .yaml).yaml"; }

if [[ -n "$HELM" ]]; then
  for v in "${values_sets[@]}"; do
    mapfile -t args < <(values_args "$v")
    check "helm lint --strict ($v values)" \
      "$HELM" lint --strict --kube-version "$KUBE_VERSION" --namespace "$NAMESPACE" "$CHART" "${args[@]}"
    check "helm template ($v values)" bash -c '
      "$1" template "$2" "$3" --namespace "$4" --kube-version "$5" --include-crds "${@:7}" >"$6"' _ \
      "$HELM" "$RELEASE" "$CHART" "$NAMESPACE" "$KUBE_VERSION" "$(render_file "$v")" "${args[@]}"
  done

  # What a user sees from values: the public URL is wired into both components.
  expect_arg() { # NAME EXPECTED-LINE helm-args...
    local want="$1"; shift
    local out
    out="$("$HELM" template "$RELEASE" "$CHART" -n "$NAMESPACE" --kube-version "$KUBE_VERSION" "$@")" || return 1
    local n
    n="$(grep -cxF -- "            - $want" <<<"$out")"
    [[ "$n" == 2 ]] || { echo "expected '$want' in both controller and receiver args, found $n" >&2; return 1; }
  }
  check "external base URL: explicit value, trailing slash trimmed" \
    expect_arg "--external-base-url=https://hooks.example.com" --set externalBaseURL=https://hooks.example.com/
  check "external base URL: derived from the Ingress host (TLS on)" \
    expect_arg "--external-base-url=https://in.example.com" --set receiver.ingress.enabled=true,receiver.ingress.host=in.example.com
  check "external base URL: derived from the HTTPRoute hostname" \
    expect_arg "--external-base-url=https://gw.example.com" --set receiver.httpRoute.enabled=true \
      --set 'receiver.httpRoute.parentRefs[0].name=public' --set 'receiver.httpRoute.hostnames[0]=gw.example.com'
  check "values schema rejects a misspelt key" bash -c \
    '! "$1" template x "$2" --kube-version "$3" --set receiver.replica=3 >/dev/null 2>&1' _ "$HELM" "$CHART" "$KUBE_VERSION"
  check "Ingress without a host is refused with a message" bash -c \
    '"$1" template x "$2" --kube-version "$3" --set receiver.ingress.enabled=true 2>&1 >/dev/null | grep -q "receiver.ingress.host is required"' \
    _ "$HELM" "$CHART" "$KUBE_VERSION"

  # notes_contain "TEXT|TEXT|..." helm-args...: the post-install notes show each TEXT.
  notes_contain() {
    local wants="$1"; shift
    local out want
    out="$("$HELM" install "$RELEASE" "$CHART" -n "$NAMESPACE" --dry-run=client "$@" 2>&1)" || { echo "$out"; return 1; }
    out="${out#*NOTES:}"
    IFS='|' read -ra wants <<<"$wants"
    for want in "${wants[@]}"; do
      grep -qF -- "$want" <<<"$out" || { echo "NOTES.txt lacks '$want'" >&2; return 1; }
    done
  }
  check "NOTES: how to create a first integration and read its URL; warns when no public URL" \
    notes_contain "kind: WebhookIntegration|get whi -o wide|secret github-webhook|WARNING: no public base URL|docs/helm.md"
  check "NOTES: names the public endpoint when an Ingress host is set" \
    notes_contain "Public endpoint: https://in.example.com/hooks/" \
      --set receiver.ingress.enabled=true,receiver.ingress.host=in.example.com

  install_drift() {
    HOOKWARDEN_HELM="$HELM" HOOKWARDEN_KUBE_VERSION="$KUBE_VERSION" scripts/render-install.sh - >"$work/install.yaml" || return 1
    diff -u manifests/install.yaml "$work/install.yaml" || {
      echo "manifests/install.yaml is stale; run: scripts/sync-chart.sh" >&2; return 1; }
  }
  check "manifests/install.yaml is a fresh render of the default values (no drift)" install_drift

  monitoring_drift() {
    HOOKWARDEN_HELM="$HELM" HOOKWARDEN_KUBE_VERSION="$KUBE_VERSION" scripts/render-monitoring.sh "$work/monitoring" 2>/dev/null || return 1
    diff -ru manifests/monitoring "$work/monitoring" || {
      echo "manifests/monitoring is stale; run: scripts/sync-chart.sh" >&2; return 1; }
  }
  check "manifests/monitoring is a fresh render of the chart's alerts and dashboard (no drift)" monitoring_drift
  check "PrometheusRule and dashboard ConfigMap render with non-default values" bash -c '
    out="$("$1" template x "$2" --kube-version "$3" --set metrics.prometheusRule.enabled=true \
      --set metrics.prometheusRule.alertLabels.team=payments --set metrics.grafanaDashboard.enabled=true \
      --set metrics.grafanaDashboard.namespace=monitoring)" || exit 1
    grep -q "kind: PrometheusRule" <<<"$out" && grep -q "team: payments" <<<"$out" \
      && grep -q "grafana_dashboard: \"1\"" <<<"$out" && grep -q "namespace: monitoring" <<<"$out"' \
    _ "$HELM" "$CHART" "$KUBE_VERSION"
else
  for v in "${values_sets[@]}"; do skip "helm lint/template ($v values)" "$helm_missing"; done
  skip "manifests/install.yaml drift" "$helm_missing"
fi

# --- alert rules: promtool ----------------------------------------------------------------
PROM_BIN=""
if [[ -n "${HOOKWARDEN_PROMETHEUS_BIN:-}" && -x "$HOOKWARDEN_PROMETHEUS_BIN/promtool" ]]; then
  PROM_BIN="$HOOKWARDEN_PROMETHEUS_BIN"
elif bin="$(scripts/install-prometheus.sh)" && [[ -x "$bin/promtool" ]]; then
  PROM_BIN="$bin"
fi
if [[ -n "$PROM_BIN" ]]; then
  check "promtool check rules: manifests/monitoring/prometheus-rules.yaml" \
    "$PROM_BIN/promtool" check rules manifests/monitoring/prometheus-rules.yaml
  check "promtool test rules: every shipped alert fires on its condition and not beside it (tests/monitoring/rules-test.yaml)" \
    "$PROM_BIN/promtool" test rules tests/monitoring/rules-test.yaml
else
  skip "promtool check/test rules" "promtool is not on PATH and scripts/install-prometheus.sh could not install it"
fi

# --- validation -----------------------------------------------------------------------------
if [[ -n "$PY" ]]; then
  kv() { "$VENV/bin/kubernetes-validate" --strict --quiet -k "$KUBE_VERSION" "$@"; }
  for v in "${values_sets[@]}"; do
    f="$(render_file "$v")"
    if [[ -s "$f" ]]; then
      check "kubernetes-validate --strict -k $KUBE_VERSION ($v values)" kv "$f"
      check "workload hardening ($v values)" "$PY" scripts/check-workloads.py "$f"
    fi
  done
  for v in default "$CHART/ci/full-values.yaml"; do
    f="$(render_file "$v")"
    [[ -s "$f" ]] && check "RBAC is exactly what each component needs ($v values)" "$PY" scripts/check-rbac.py "$f"
  done
  check "kubernetes-validate --strict: manifests/install.yaml" kv manifests/install.yaml
  example_dirs=(manifests/examples)
  [[ -d examples ]] && example_dirs+=(examples)
  check "kubernetes-validate --strict: examples (custom resources only warn)" kv $(find "${example_dirs[@]}" -name '*.yaml' | sort)
  check "example WebhookIntegrations match the CRD schema" \
    "$PY" scripts/validate-examples.py --crd crds/webhookintegrations.yaml "${example_dirs[@]}"
  check "values table in the docs is current and every value is documented" \
    "$PY" scripts/values-table.py --check README.md docs/*.md
  check "the example validator rejects each broken integration, for the expected reason" \
    "$PY" scripts/validate-examples.py --expect-invalid --crd crds/webhookintegrations.yaml tests/chart/invalid-integrations.yaml
else
  skip "kubernetes-validate, RBAC, hardening and example validation" "$py_missing"
fi

# --- summary --------------------------------------------------------------------------------
echo
echo "check-chart: $passed check(s) passed, $failed failed, $skipped skipped"
for s in "${skips[@]}"; do echo "  skipped: $s"; done
for f in "${failures[@]}"; do echo "  failed:  $f"; done
[[ "$failed" == 0 ]]

#!/usr/bin/env bash
# The import rules of docs/architecture.md, checked on the source text:
#   crd.rs (API types)  imports no behaviour: nothing from domain, receiver, controller, standalone
#   domain/             imports only crd, route and itself; no I/O, no clock of its own
#   receiver/           never imports controller or standalone
#   controller/         never imports receiver or standalone
#   journal/            never imports receiver, controller or standalone
# standalone/ and the CLI compose the components and may import any of them.
set -uo pipefail
cd "$(dirname "$0")/.."

failed=0
# rule NAME FILES... -- PATTERN: fails when PATTERN matches a line of FILES.
rule() {
  local name="$1" pattern="$2"; shift 2
  local hits
  # Test modules in their own files (tests.rs) may read fixtures.
  # Comments (doc links included) are not imports.
  hits=$(grep -rnE --include='*.rs' --exclude='tests.rs' "$pattern" "$@" 2>/dev/null |
    grep -vE '^[^:]+:[0-9]+:[[:space:]]*//')
  if [[ -n "$hits" ]]; then
    printf 'layer rule broken: %s\n%s\n\n' "$name" "$hits"
    failed=1
  fi
}

rule "the API types (src/crd.rs) import no behaviour" \
  'crate::(domain|receiver|controller|standalone|journal|tools|cli)\b' src/crd.rs
rule "the domain imports only crd, route and itself" \
  'crate::(receiver|controller|standalone|journal|forwarder|tools|cli|events|telemetry|signal)\b' src/domain
rule "the domain does no I/O" \
  '\b(tokio|hyper|axum|std::fs|std::net|std::process)::|kube::(Client|Api\b|runtime|api::(Api|Patch|PatchParams|ListParams|DeleteParams))' src/domain
rule "the domain reads no wall clock (the time is passed in; a test may time itself)" \
  '(SystemTime::now|Timestamp::now|Utc::now)\(' src/domain
rule "the receiver never imports the controller or standalone" \
  'crate::(controller|standalone)\b' src/receiver
rule "the controller never imports the receiver or standalone" \
  'crate::(receiver|standalone)\b' src/controller
rule "the journal never imports a component" \
  'crate::(receiver|controller|standalone)\b' src/journal
rule "wall-clock time is read through crate::clock" \
  '(SystemTime::now|Timestamp::now)\(' src/receiver src/journal

if [[ $failed -ne 0 ]]; then
  echo "see docs/architecture.md for what each module may import" >&2
  exit 1
fi
echo "layers: every import rule holds"

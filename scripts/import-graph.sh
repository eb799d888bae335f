#!/usr/bin/env bash
# Prints which top-level modules of src/ each module imports (crate::X paths), one line
# per module: the import graph docs/architecture.md describes. Usage: scripts/import-graph.sh
set -eu
cd "$(dirname "$0")/../src"
for m in crd clock signal route events telemetry domain journal receiver controller standalone tools cli; do
  if [[ -d "$m" ]]; then files=$(find "$m" -name '*.rs'); else files="$m.rs"; fi
  deps=$(grep -hvE '^[[:space:]]*//' $files 2>/dev/null | grep -ohE 'crate::[a-z_]+' | sed 's/crate:://' | sort -u | { grep -vx "$m" || true; } | tr '\n' ' ')
  printf '%-11s -> %s\n' "$m" "${deps:-(none)}"
done

#!/usr/bin/env bash
# Peak resident memory (GNU time's maximum RSS) of two runs, each from an empty cache:
#   sdm   the 9-organ SDMs of the 12 real PDDCA mask cases (load + edt-sdm, 512 x 512 x N)
#   demo  the demo pipeline (pipelines/demo.yaml), with train.epochs=1 unless FULL=1
# Usage: bench/memory.sh [PIPELINE_BINARY]   (default: target/release/pipeline)
#        DEMO=path/to/demo.yaml bench/memory.sh OTHER_BINARY   (an older build reads its own demo file)
# Compare two builds by running it with each binary; the figures are in docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/pipeline}
BIN=$(realpath "$BIN")
DATA=$(realpath ../shared/data/pddca-masks)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# `plugin:` (the older key) so that builds from before `stage:` read it too.
cat > "$tmp/sdm.yaml" <<YAML
name: sdm-memory
stages:
  load: {plugin: load, params: {format: pddca, root: "$DATA", require_image: false, split: none}}
  sdm: {plugin: edt-sdm, after: [load]}
YAML
peak() { # label, command...
  local label=$1; shift
  /usr/bin/time -f "%M %e" -o "$tmp/time" "$@" > "$tmp/$label.log" 2>&1 || {
    echo "$label failed:"; tail -20 "$tmp/$label.log"; exit 1; }
  read -r kb s < <(tail -n 1 "$tmp/time")
  printf '%-6s peak RSS %7.1f MiB  wall %6.1f s  (%s)\n' "$label" "$(echo "$kb / 1024" | bc -l)" "$s" "$BIN"
}
peak sdm "$BIN" run "$tmp/sdm.yaml" --cache "$tmp/c1" --runs "$tmp/r1" -j 2
sets=(--set train.epochs=1)
[ "${FULL:-0}" = 1 ] && sets=()
peak demo "$BIN" run "${DEMO:-pipelines/demo.yaml}" --cache "$tmp/c2" --runs "$tmp/r2" "${sets[@]}"

#!/usr/bin/env bash
# load + head-crop + resample per case: ours vs SimpleITK on the same files, at 1 thread and
# at all threads, in one run. Cases: the real H&N CT and two generated phantom CTs (written
# as PDDCA-layout NRRD first). Writes bench/results/preprocess-<date>.jsonl, prints ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(./scripts/pyref.sh)
REPS=${1:-5}
ALL=$(nproc)
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
cargo build --release --bench preprocess >&2
cargo bench --bench preprocess -- write-phantoms "$TMP" 2 >&2
CASES=(../shared/data/hn-ct-frm2 "$TMP/phantom000" "$TMP/phantom001")
mkdir -p bench/results
OUT=bench/results/preprocess-$(date +%Y%m%d-%H%M%S).jsonl
for t in 1 "$ALL"; do
  RAYON_NUM_THREADS=$t cargo bench --bench preprocess -- "${CASES[@]}" | grep '^{' >> "$OUT"
  "$PY" bench/preprocess_peers.py "$t" "$REPS" "${CASES[@]}" >> "$OUT"
done
"$PY" bench/table.py "$OUT"

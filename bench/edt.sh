#!/usr/bin/env bash
# edt-sdm benchmark: ours vs scipy, seung-lab edt and SimpleITK on the same real masks, at
# 1 thread and at all threads, in one run. Writes bench/results/edt-<date>.jsonl and prints
# the ratio table. Usage: bench/edt.sh [PEER_REPS]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(./scripts/pyref.sh)
REPS=${1:-3}
ALL=$(nproc)
CASES=(../shared/data/pddca-masks/0522c0057 ../shared/data/hippocampus/labelsTr/hippocampus_001.nii.gz)
mkdir -p bench/results
OUT=bench/results/edt-$(date +%Y%m%d-%H%M%S).jsonl
cargo build --release --bench edt >&2
for t in 1 "$ALL"; do
  RAYON_NUM_THREADS=$t cargo bench --bench edt -- "${CASES[@]}" | grep '^{' >> "$OUT"
  OMP_NUM_THREADS=$t "$PY" bench/edt_peers.py "$t" "$REPS" "${CASES[@]}" >> "$OUT"
done
RAYON_NUM_THREADS=$ALL cargo bench --bench edt -- cached "${CASES[0]}" | grep '^{' >> "$OUT"
RAYON_NUM_THREADS=1 cargo bench --bench edt -- crossover | grep '^{' >> "$OUT"
"$PY" bench/table.py "$OUT"

#!/usr/bin/env bash
# Metrics benchmark: ours (both surface definitions) vs MONAI, medpy and surface-distance on
# the same 9 real organ masks (PDDCA 0522c0057) against their one-voxel shift, at 1 thread
# and at all threads. Writes bench/results/metrics-<date>.jsonl; prints ratios and values.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(./scripts/pyref.sh)
REPS=${1:-3}
ALL=$(nproc)
CASE=../shared/data/pddca-masks/0522c0057
mkdir -p bench/results
OUT=bench/results/metrics-$(date +%Y%m%d-%H%M%S).jsonl
cargo build --release --bench metrics >&2
for t in 1 "$ALL"; do
  RAYON_NUM_THREADS=$t cargo bench --bench metrics -- "$CASE" | grep '^{' >> "$OUT"
  OMP_NUM_THREADS=$t "$PY" bench/metrics_peers.py "$t" "$REPS" "$CASE" >> "$OUT"
done
"$PY" bench/table.py "$OUT"
"$PY" - "$OUT" <<'PYEOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
seen = set()
print("\nvalues (threads=1): organ, then Dice / HD95 / ASSD per tool")
ones = [r for r in rows if r["threads"] == 1 and "values" in r]
for organ in ones[0]["values"]:
    cells = [f"{r['tool']}: {r['values'][organ]['dice']:.4f} / {r['values'][organ]['hd95']:.3f} / {r['values'][organ]['assd']:.3f}" for r in ones]
    print(f"{organ:<16} " + " | ".join(cells))
PYEOF

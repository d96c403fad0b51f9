#!/usr/bin/env bash
# Training-step benchmark: the UNet of pipelines/hippocampus.yaml (depth 4, 16 base channels,
# batch 4 of 32x48x32), forward + joint loss + backward + Adam, in tch (ours) and in PyTorch
# from Python (its usual layout and channels-last), same libtorch wheel (.venv), same weights
# and batch, at 1 thread and at all threads, alternating. Writes
# bench/results/step-<date>.jsonl; prints the ratio table.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-torch.sh >&2
PY=.venv/bin/python
REPS=${1:-7}
ALL=$(nproc)
mkdir -p bench/results
OUT=bench/results/step-$(date +%Y%m%d-%H%M%S).jsonl
IO=$(mktemp -d)/step.safetensors
cargo build --release -p shapeflow-learn --bench step >&2
for t in 1 "$ALL"; do
  cargo bench -p shapeflow-learn --bench step -- --threads "$t" --reps "$REPS" --io "$IO" | grep '^{' >> "$OUT"
  "$PY" bench/step_peer.py "$IO" "$t" "$REPS" 2>/dev/null | grep '^{' >> "$OUT"
  PEER_LAYOUT=channels_last "$PY" bench/step_peer.py "$IO" "$t" "$REPS" 2>/dev/null | grep '^{' >> "$OUT"
done
"$PY" - "$OUT" <<'PYEOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
for t in sorted({r["threads"] for r in rows}):
    ours = next(r for r in rows if r["threads"] == t and r["tool"] == "shapeflow-tch")
    for r in rows:
        if r["threads"] == t:
            print(f"{r['case']}  threads {t}  {r['tool']:<22} median {r['median_s']*1e3:8.1f} ms  "
                  f"({r['runs']} steps)  x{r['median_s']/ours['median_s']:.2f} of ours  "
                  f"first losses {', '.join(f'{l:.4f}' for l in r['losses'][:3])}")
PYEOF

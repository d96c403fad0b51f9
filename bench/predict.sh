#!/usr/bin/env bash
# Inference benchmark (issue 15): `pipeline predict` against MONAI's sliding_window_inference
# with the PyTorch twin of our network (python/shapeflow_unet.py), same weights, same images
# (OpenKBP CTs at 128^3, on their own grid: no resampling on either side), window
# 64^3 (so that both tile 128 voxels at 0, 32, 64), overlap 0.5, Gaussian weights (sigma 0.125 of the window), 2 windows per
# call, CPU, THREADS threads each, end to end (read, normalise, segment, decide organs,
# write), alternating, REPS times. The model is a small one trained here for a minute: the
# speed does not depend on how well it segments.
#
#   bench/predict.sh [CASES] [REPS] [THREADS]      (default 8 cases, 3 reps, all cores)
#
# Writes bench/results/predict-<date>.jsonl and prints medians and the ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
CASES=${1:-8}
REPS=${2:-3}
THREADS=${3:-$(nproc)}
ROOT=${OPENKBP_ROOT:-$(cd .. && pwd)/shared/data/openkbp}
PY=${SHAPEFLOW_PYTHON:-$(./scripts/pyref.sh)}
./scripts/setup-torch.sh >&2
cargo build --release --bin pipeline >&2
BIN=$PWD/target/release/pipeline
W=$(mktemp -d)
[ -n "${KEEP:-}" ] || trap 'rm -rf "$W"' EXIT; echo "work dir: $W" >&2
mkdir -p bench/results "$W/in"
OUT=bench/results/predict-$(date +%Y%m%d-%H%M%S).jsonl
cat > "$W/p.yaml" <<YAML
name: predict-bench
stages:
  load:
    stage: load
    params:
      format: organ-files
      root: $ROOT
      image: ct.nii.gz
      organs: [Brainstem, SpinalCord, RightParotid, LeftParotid, Esophagus, Larynx, Mandible]
      folders: {train: train}
      val_fraction: 0.0
      limit: 6
  sdm: {stage: edt-sdm, after: [load], params: {band_mm: 20}}
  augment: {stage: augment, after: [load, sdm]}
  train:
    stage: train
    after: [load, sdm, augment]
    params:
      mode: joint-organ-scaled
      epochs: 1
      iterations: 2
      patch: [64, 64, 48]
      net: {depth: 4, base_channels: 8, max_channels: 64, groups: 4}
      window: [-160, 240]
      device: cpu
  infer: {stage: infer, after: [load, train], params: {batch: 2, overlap: 0.5, sigma: 0.125, patch: [64, 64, 64]}}
YAML
(cd "$W" && "$BIN" run p.yaml --cache cache --runs runs --no-progress -q) >&2
MODEL=$(ls -d "$W"/runs/*/train)
n=0
for d in "$ROOT"/validation/pt_*; do
  [ $n -ge "$CASES" ] && break
  ln -s "$d/ct.nii.gz" "$W/in/$(basename "$d").nii.gz"
  n=$((n + 1))
done
for r in $(seq 1 "$REPS"); do
  rm -rf "$W/ours"
  t0=$(date +%s.%N)
  RAYON_NUM_THREADS=$THREADS "$BIN" -q predict -m "$MODEL" -i "$W/in" -o "$W/ours" --device cpu --batch 2 2> "$W/ours.log"
  t1=$(date +%s.%N)
  # Also the time predict itself reports from its first case to its last (the process
  # started and libtorch loaded), comparable to MONAI's (Python running, torch imported).
  inproc=$(sed -n 's/^[0-9]* case(s) in \([0-9.]*\) s.*/\1/p' "$W/ours.log")
  echo "{\"tool\": \"shapeflow-predict\", \"threads\": $THREADS, \"rep\": $((r - 1)), \"cases\": $n, \"seconds\": $(echo "$t1 - $t0" | bc), \"seconds_in_process\": ${inproc:-null}}" >> "$OUT"
  if [ "$r" = "$REPS" ]; then
    # Untimed: our maps, for the comparison the last MONAI pass makes.
    "$BIN" -q predict -m "$MODEL" -i "$W/in" -o "$W/maps" --device cpu --batch 2 --save-maps >&2
  fi
  OMP_NUM_THREADS=$THREADS "$PY" bench/predict_peer.py "$MODEL" "$W/monai" "$THREADS" 1 \
    "$([ "$r" = "$REPS" ] && echo "$W/maps" || echo "")" "$W"/in/*.nii.gz | grep '^{' >> "$OUT"
done
"$PY" - "$OUT" <<'PYEOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
med = {t: statistics.median(r["seconds"] for r in rows if r["tool"] == t) for t in {r["tool"] for r in rows}}
ours = med["shapeflow-predict"]
for t, s in sorted(med.items()):
    r0 = next(r for r in rows if r["tool"] == t)
    print(f"{t:<22} {r0['cases']} cases, {r0['threads']} threads: median {s:.2f} s "
          f"({s / r0['cases']:.2f} s/case) over {sum(r['tool'] == t for r in rows)} runs, x{s / ours:.2f} of ours")
inproc = [r["seconds_in_process"] for r in rows if r.get("seconds_in_process") is not None]
if inproc:
    s = statistics.median(inproc)
    print(f"shapeflow-predict without process start: median {s:.2f} s, "
          f"MONAI x{med['monai-sliding-window'] / s:.2f} of it")
last = [r for r in rows if r["tool"] == "monai-sliding-window"][-1]
print(f"maps: largest |ours - MONAI's| {last.get('max_abs_map_diff')}, "
      f"organ-wise voxel agreement >= {last.get('voxel_agreement_min')}")
PYEOF
echo "results: $OUT"

#!/usr/bin/env bash
# The GPU check, for a machine lent with one NVIDIA GPU and torch 2.11.0+cu130 at
# /opt/torch/.venv (no network). Prepare here (scripts/gpu-prepare.sh builds the binaries,
# strips them and copies the hippocampus data into the git-ignored .gpu/), then run this
# script there with `.gpu` carried, in one call (timeout_s 570).
#
# What it measures, into $OUT (or .gpu/out):
#  1. one training step on CUDA, fp32 and bf16, in tch (our binary) and in PyTorch, same
#     weights and batch (median of 30 steps, peak memory from PyTorch's allocator);
#  2. the hippocampus study at the paper's budget: pipelines/hippocampus.yaml, 200 epochs,
#     the five variants (three heads, the SDM heads also as the paper trained them) training
#     at once on the one GPU (`--slots gpu=5`), 3 loader workers each; per-epoch seconds and loader waits are in each variant's metrics.jsonl;
#  3. nvidia-smi memory samples every 200 ms throughout.
# Results come back as summary.txt, step.jsonl, study.log and study.tgz (report + curves).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-$ROOT/.gpu/out}
mkdir -p "$OUT"
STUDY_S=${STUDY_S:-450}
PY=/opt/torch/.venv/bin/python
[ -x "$PY" ] || PY=python3
say() { echo "[$(date +%T) +${SECONDS}s] $*" | tee -a "$OUT/summary.txt"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$OUT/summary.txt"
nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader,nounits -lms 200 \
  > "$OUT/smi-samples.txt" 2>/dev/null &
SMI=$!
trap 'kill $SMI 2>/dev/null' EXIT

# 0. Does our binary find libtorch and CUDA? (fails fast, before the long part)
ldd .gpu/pipeline | grep -E "libtorch_cuda|not found" | tee -a "$OUT/summary.txt"
IO=$(mktemp -d)/step.safetensors
if ! timeout 90 .gpu/step --device cuda --threads 4 --reps 3 --io "$IO" > "$OUT/smoke.txt" 2>&1; then
  say "smoke failed:"; tail -20 "$OUT/smoke.txt" | tee -a "$OUT/summary.txt"; exit 1
fi
say "smoke ok"

# 1. Training step, tch vs PyTorch, fp32 and bf16, the same inputs (written by the smoke run).
for mode in "" "--bf16"; do
  timeout 90 .gpu/step --device cuda --threads 4 --reps 30 --io "$IO" $mode | grep '^{' >> "$OUT/step.jsonl"
  timeout 90 "$PY" bench/step_peer.py "$IO" 4 30 cuda ${mode:+bf16} 2>>"$OUT/peer.err" | grep '^{' >> "$OUT/step.jsonl"
done
"$PY" - "$OUT/step.jsonl" <<'EOF' | tee -a "$OUT/summary.txt"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
for r in rows:
    print(f"{r['tool']:<28} median {r['median_s']*1e3:7.2f} ms over {r['runs']} steps  first loss {r['losses'][0]:.5f}  peak {r.get('peak_gpu_bytes')}")
EOF
say "step benches done"

# 2. The study at the paper's budget.
export MSD_HIPPOCAMPUS=$ROOT/.gpu/data/hippocampus
timeout "$STUDY_S" .gpu/pipeline run pipelines/hippocampus.yaml \
  --set train.val_every=10 --set train.workers=3 --slots gpu=5 \
  --cache /tmp/sf-cache --runs /tmp/sf-runs --no-progress > "$OUT/study.log" 2>&1
say "study exit $?"
tail -30 "$OUT/study.log" >> "$OUT/summary.txt"
run=$(ls -td /tmp/sf-runs/*-hippocampus 2>/dev/null | head -1)
if [ -n "$run" ]; then
  for f in "$run"/train/*/metrics.jsonl; do
    v=$(basename "$(dirname "$f")")
    say "$v: $(wc -l < "$f") epochs; last: $(tail -n 1 "$f" | cut -c1-300)"
  done
  (cd "$run" && tar czf "$OUT/study.tgz" --exclude='*.safetensors' --exclude='*.nii.gz' .)
fi
kill $SMI 2>/dev/null
say "nvidia-smi: peak memory $(cut -d, -f1 "$OUT/smi-samples.txt" | sort -n | tail -1) MiB, median utilisation $(cut -d, -f2 "$OUT/smi-samples.txt" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')%"

#!/usr/bin/env bash
# The GPU check, for a machine lent with one NVIDIA GPU and torch 2.11.0+cu130 at
# /opt/torch/.venv (no network). Build here first:
#   cargo build --release && cargo build --release -p shapeflow-learn --bench step
#   mkdir -p .gpu && cp target/release/pipeline .gpu/ && cp "$(ls -t target/release/deps/step-* | grep -v '\.d$' | head -1)" .gpu/step
# then run this script there with `.gpu` and `python` carried (one call, timeout ~400 s).
# Reports, into $OUT (or .gpu/out): the training step on CUDA (fp32 and bf16) in tch and in
# PyTorch (median step time, voxels/s, peak GPU memory from PyTorch's allocator and from
# nvidia-smi sampling), and a short demo run on CUDA (train holds the GPU; loader batches/s
# vs GPU batches/s: metrics.jsonl records per epoch the seconds spent waiting for the loader).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-.gpu/out}
mkdir -p "$OUT"
PY=/opt/torch/.venv/bin/python
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.csv" 2>&1
nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$OUT/mem-samples.txt" 2>/dev/null &
SMI=$!
IO=$(mktemp -d)/step.safetensors
for mode in "" "--bf16"; do
  timeout 120 .gpu/step --device cuda --threads 4 --reps 20 --io "$IO" $mode | grep '^{' >> "$OUT/step.jsonl"
  timeout 120 "$PY" bench/step_peer.py "$IO" 4 20 cuda ${mode:+bf16} 2>/dev/null | grep '^{' >> "$OUT/step.jsonl"
done
# The demo pipeline on the GPU, 40 epochs per variant.
( cd "$OUT" && timeout 240 ../../.gpu/pipeline run ../../pipelines/demo.yaml --cache cache --runs runs --no-progress --set train.device=cuda ) > "$OUT/demo.log" 2>&1
kill $SMI 2>/dev/null
echo "peak nvidia-smi MiB: $(sort -n "$OUT/mem-samples.txt" | tail -1)" | tee "$OUT/summary.txt"
cat "$OUT/step.jsonl" | tee -a "$OUT/summary.txt"
tail -25 "$OUT/demo.log" | tee -a "$OUT/summary.txt"
echo "last epochs of each variant (seconds vs loader_wait_s):" | tee -a "$OUT/summary.txt"
for f in "$OUT"/runs/*/train/*/metrics.jsonl; do tail -n 1 "$f"; done | tee -a "$OUT/summary.txt"

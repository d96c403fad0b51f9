#!/usr/bin/env bash
# Builds what scripts/gpu-check.sh runs on the GPU machine into the git-ignored .gpu/:
# the stripped `pipeline` binary and training-step bench, and a copy of the hippocampus data
# (the GPU machine sees only the repository and carried paths). Then call the device with
# carry [".gpu"] and the command `scripts/gpu-check.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-torch.sh > /dev/null
cargo build --release
cargo build --release -p shapeflow-learn --bench step
step=$(ls -t target/release/deps/step-* | grep -v '\.d$' | head -1)
rm -rf .gpu && mkdir -p .gpu/data
strip -o .gpu/pipeline target/release/pipeline
strip -o .gpu/step "$step"
cp -r "${MSD_HIPPOCAMPUS:-../shared/data/hippocampus}" .gpu/data/hippocampus
du -sh .gpu

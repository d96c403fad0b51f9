#!/usr/bin/env bash
# The hippocampus ablation study of docs/results/hippocampus/: pipelines/hippocampus.yaml on
# the 200 MSD Task04 cases (../shared/data/hippocampus unless MSD_HIPPOCAMPUS is set), every
# variant (the Dice, SDM and joint heads; the SDM heads also as the paper trained them), then
# the report copied into docs/results/hippocampus/<run>/.
#
#   scripts/study-hippocampus.sh                    # the CPU-sized run (40 epochs)
#   EPOCHS=200 scripts/study-hippocampus.sh         # the paper's budget (a GPU)
set -euo pipefail
cd "$(dirname "$0")/.."
EPOCHS=${EPOCHS:-40}
./scripts/setup-torch.sh > /dev/null
cargo build --release
./target/release/pipeline run pipelines/hippocampus.yaml \
  --set train.epochs="$EPOCHS" --set train.val_every=5 --set train.workers=1 \
  --cache .pipeline/cache --runs runs --no-progress
run=$(ls -td runs/*-hippocampus | head -1)
dest=docs/results/hippocampus/$(basename "$run")
mkdir -p "$dest"
cp -r "$run/report/." "$dest/"
for t in "$run"/train/*/; do
  v=$(basename "$t")
  mkdir -p "$dest/train-$v"
  cp "$t/metrics.jsonl" "$t/loss.png" "$t/model.json" "$dest/train-$v/"
done
echo "report copied to $dest"

#!/usr/bin/env bash
# The demo in one command: installs libtorch into .venv if needed (scripts/setup-torch.sh),
# builds, and runs pipelines/demo.yaml (extra arguments go to `pipeline run`, e.g.
# --set train.epochs=10).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-torch.sh > /dev/null
exec cargo run --release -- run pipelines/demo.yaml "$@"

#!/usr/bin/env bash
# The whole test suite: what the README's test command and CI (.ci/run) run.
# Sets up the Python reference venv (.venv-ref) that the cross-check tests call.
set -euo pipefail
cd "$(dirname "$0")/.."
SHAPEFLOW_PYTHON=$(./scripts/pyref.sh)
export SHAPEFLOW_PYTHON
cargo test --workspace --locked "$@"

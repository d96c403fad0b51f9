#!/usr/bin/env bash
# The whole test suite: what the README's test command and CI (.ci/run) run.
# Installs libtorch (.venv, for the learn plugin) and the Python reference implementations
# (.venv-ref, for the cross-check tests) on first use; both are idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-torch.sh > /dev/null
SHAPEFLOW_PYTHON=$(./scripts/pyref.sh)
export SHAPEFLOW_PYTHON
cargo test --workspace --locked "$@"

#!/usr/bin/env bash
# The whole test suite: what the README's test command and CI (.ci/run) run.
# Installs libtorch (.venv, for the learn plugin) and the Python reference implementations
# (.venv-ref, for the cross-check tests) on first use; both are idempotent. Starts the
# single-node Slurm the executor's tests use (scripts/slurm.sh; installs it where it can)
# and stops it afterwards if it was not running before. Without one, those tests say they
# are skipped (under CI=true they fail instead).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-torch.sh > /dev/null
SHAPEFLOW_PYTHON=$(./scripts/pyref.sh)
export SHAPEFLOW_PYTHON
if ./scripts/slurm.sh status > /dev/null 2>&1; then
  slurm_started=0
elif ./scripts/slurm.sh start; then
  slurm_started=1
else
  slurm_started=0
  echo "test.sh: no Slurm here; the Slurm executor tests will be skipped" >&2
fi
if [[ $slurm_started == 1 ]]; then
  trap './scripts/slurm.sh stop' EXIT
fi
cargo test --workspace --locked "$@"

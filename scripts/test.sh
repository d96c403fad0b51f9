#!/usr/bin/env bash
# The whole test suite: what the README's test command and CI (.ci/run) run.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --locked "$@"

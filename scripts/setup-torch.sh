#!/usr/bin/env bash
# Installs libtorch for the `learn` plugin: PyPI's torch==2.11.0 wheel (the CUDA 13.0 build,
# which also runs on CPU) in the project-local virtualenv .venv. `.cargo/config.toml` points
# LIBTORCH at it and the learn crate's build.rs adds an rpath, so binaries run without any
# exported variable. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv
WANT=2.11.0
PY=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV" >&2
fi
have=$("$VENV/bin/python" -c "import importlib.metadata as m; print(m.version('torch'))" 2>/dev/null || true)
if [ "${have%%+*}" != "$WANT" ]; then
  echo "installing torch==$WANT into $VENV (about 4.6 GB, a minute or two)" >&2
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "torch==$WANT" >&2
fi
echo "$PWD/$VENV/lib/$("$VENV/bin/python" -c 'import sys; print(f"python{sys.version_info.major}.{sys.version_info.minor}")')/site-packages/torch"

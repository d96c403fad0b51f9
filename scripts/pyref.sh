#!/usr/bin/env bash
# Creates .venv-ref: the Python reference implementations that tests and benchmarks compare
# against (independent readers, scipy / edt / SimpleITK distance transforms, metrics).
# MONAI brings torch (about 4.6 GB with its CUDA libraries; it also runs on CPU).
# Idempotent: re-running only installs what is missing. Prints the venv's python path.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-ref
PY=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV" >&2
fi
STAMP="$VENV/.installed-v6"
if [ ! -f "$STAMP" ]; then
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    "numpy>=2,<3" "scipy>=1.13" "pynrrd==1.1.3" "nibabel>=5" "edt==3.1.2" "simpleitk>=2.4" "medpy==0.5.2" "surface-distance==0.1" "monai==1.6.1" "onnx>=1.17" "onnxruntime>=1.20" "pydicom>=3" "rt-utils==1.2.7" >&2
  touch "$STAMP"
fi
echo "$PWD/$VENV/bin/python"

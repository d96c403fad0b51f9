"""Loads a `train` output dir with shapeflow_unet.load and compares its output on a saved
input with the Rust model's: prints {"max_abs_diff": ..., "max_abs": ...}.

usage: check_load.py MODEL_DIR IO.safetensors  (tensors `input` and `output`)"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch  # noqa: E402
from shapeflow_unet import load, read_safetensors  # noqa: E402

net, config = load(sys.argv[1])
io = read_safetensors(sys.argv[2])
with torch.no_grad():
    out = net(io["input"])
print(json.dumps({
    "max_abs_diff": float((out - io["output"]).abs().max()),
    "max_abs": float(io["output"].abs().max()),
    "shape": list(out.shape),
}))

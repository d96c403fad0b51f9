"""Runs an exported network (TorchScript with torch, ONNX with ONNX Runtime) on a saved
input and compares with the Rust model's output: prints {"max_abs_diff": ...}.

usage: check_export.py FILE torchscript|onnx IO.safetensors  (tensors `input`, `output`)"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np  # noqa: E402
from shapeflow_unet import read_safetensors  # noqa: E402

path, fmt, io_path = sys.argv[1:4]
io = read_safetensors(io_path)
x, want = io["input"], io["output"].numpy()
if fmt == "torchscript":
    import torch
    net = torch.jit.load(path)
    with torch.no_grad():
        got = net(x).numpy()
else:
    import onnxruntime as ort
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = sess.run(None, {"image": x.numpy()})[0]
print(json.dumps({"max_abs_diff": float(np.abs(got - want).max()),
                  "max_abs": float(np.abs(want).max()), "shape": list(got.shape)}))

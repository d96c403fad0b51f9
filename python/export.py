"""Exports a model trained by `pipeline` (a model folder: model.safetensors + model.json, and
pipeline.json when a run wrote it) for deployment: TorchScript or ONNX, with the
preprocessing it expects in a JSON file beside it (`<out>.json`).

usage: export.py MODEL_DIR torchscript|onnx OUT

The network takes [batch, C, z, y, x] float32 (C image channels, `unet.in_channels`; each
normalised as `norm` in the JSON says (a list, one per channel, when C > 1), on the
model's training spacing) and returns [batch, organs, z, y, x] raw outputs: tanh of
them is the SDM (sdm and joint heads; organ where < 0), sigmoid the probability (dice
heads; `dice-sdm` returns twice the organs' channels, the first half its probabilities).
Any z, y, x that are multiples of 2^depth are accepted.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch  # noqa: E402
from shapeflow_unet import load  # noqa: E402

model_dir, fmt, out = sys.argv[1], sys.argv[2], sys.argv[3]
net, config = load(model_dir)
net.eval()
px, py, pz = config["patch"]
channels = config["unet"].get("in_channels", 1)
example = torch.zeros(1, channels, pz, py, px)
with torch.no_grad():
    if fmt == "torchscript":
        traced = torch.jit.trace(net, example)
        traced.save(out)
    elif fmt == "onnx":
        axes = {0: "batch", 2: "z", 3: "y", 4: "x"}
        torch.onnx.export(
            net, (example,), out, input_names=["image"], output_names=["output"],
            dynamic_axes={"image": axes, "output": axes}, opset_version=17, dynamo=False,
        )
    else:
        sys.exit(f"unknown format {fmt!r} (torchscript or onnx)")
# The SDM and joint modes (sdm, joint, sdm-shell-balanced, ...) decode maps; dice and
# dice-sdm probabilities. dice-sdm's network has a second block of channels, one map per
# organ, for training only.
head = "sdm" if config["mode"].startswith(("sdm", "joint")) else "probability"
n_organs = len(config["organs"])
n_out = config["unet"].get("out_channels", n_organs)
decode = "organ where tanh(output) < 0" if head == "sdm" else "sigmoid(output) > 0.5"
if n_out > n_organs:
    decode += f" on the first {n_organs} channels (the others: auxiliary maps, not a prediction)"
meta = {
    "format": fmt,
    "input": {"layout": f"[batch, {channels}, z, y, x] float32", "norm": config["norm"],
              "spacing_mm": config["spacing"], "multiple_of": 2 ** config["unet"]["depth"]},
    "output": {"layout": f"[batch, {n_out}, z, y, x] float32, raw",
               "organs": config["organs"], "head": head, "decode": decode},
    "model": config,
}
pipeline = os.path.join(model_dir, "pipeline.json")
if os.path.exists(pipeline):
    with open(pipeline) as f:
        meta["preprocess"] = json.load(f).get("preprocess", [])
with open(out + ".json", "w") as f:
    json.dump(meta, f, indent=2)
print(json.dumps({"written": out}))

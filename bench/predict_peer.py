"""MONAI's sliding-window inference on the images `pipeline predict` segments, with the same
network weights (python/shapeflow_unet.py), overlap, Gaussian weighting and threads: each
case read (nibabel), normalised as the model says, segmented, organs decided and written,
timed end to end as `pipeline predict` is. Prints one JSON line per repetition and, for the
last one, how its maps compare with ours.

usage: predict_peer.py MODEL_DIR OUT_DIR THREADS REPS OUR_MAPS_DIR IMAGE...
"""
import json
import os
import sys
import time

import nibabel as nib
import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python"))
from shapeflow_unet import load  # noqa: E402
from monai.inferers import sliding_window_inference  # noqa: E402


def main():
    model_dir, out_dir, threads, reps, ours = sys.argv[1:6]
    images = sys.argv[6:]
    torch.set_num_threads(int(threads))
    net, cfg = load(model_dir)
    net.eval()
    px, py, pz = cfg["patch"]
    # The window `infer` applies with, as the model's package recorded it.
    with open(os.path.join(model_dir, "pipeline.json")) as f:
        apply = json.load(f)["apply"][0]["params"]
    if apply.get("patch"):
        px, py, pz = apply["patch"]
    overlap, sigma = apply.get("overlap", 0.5), apply.get("sigma", 0.125)
    norm = cfg["norm"]
    sdm_head = cfg["mode"] != "dice"
    organs = cfg["organs"]
    os.makedirs(out_dir, exist_ok=True)
    for rep in range(int(reps)):
        t0 = time.perf_counter()
        maps_of = {}
        for path in images:
            img = nib.load(path)
            x = np.asarray(img.dataobj, dtype=np.float32)  # (x, y, z)
            if norm["kind"] == "ct":
                lo, hi = norm["lo"], norm["hi"]
                c, h = (lo + hi) / 2, max((hi - lo) / 2, 1e-6)
                x = (np.clip(x, lo, hi) - c) / h
            else:
                x = (x - x.mean()) / max(x.std(), 1e-6)
            t = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 1, 0)))[None, None]
            with torch.no_grad():
                out = sliding_window_inference(
                    t, (pz, py, px), 2, net, overlap=overlap, mode="gaussian",
                    sigma_scale=sigma, padding_mode="constant", cval=float(t.min()))
            maps = torch.tanh(out[0]) if sdm_head else torch.sigmoid(out[0])
            maps = maps.numpy()
            if sdm_head:
                best = maps.argmin(0)
                fg = maps.min(0) < 0
            else:
                best = maps.argmax(0)
                fg = maps.max(0) > 0.5
            labels = np.where(fg, best + 1, 0).astype(np.uint8).transpose(2, 1, 0)
            case = os.path.basename(os.path.dirname(path)) if os.path.basename(path) == "ct.nii.gz" \
                else os.path.basename(path).split(".")[0]
            nib.save(nib.Nifti1Image(labels, img.affine), os.path.join(out_dir, case + ".nii.gz"))
            maps_of[case] = maps
        dt = time.perf_counter() - t0
        row = {"tool": "monai-sliding-window", "monai": __import__("monai").__version__,
               "torch": torch.__version__, "threads": int(threads), "rep": rep,
               "cases": len(images), "seconds": dt}
        if rep == int(reps) - 1 and ours:
            diffs, agree = [], []
            for case, maps in maps_of.items():
                for k, organ in enumerate(organs):
                    p = os.path.join(ours, f"{case}_{organ}.nii.gz")
                    if not os.path.exists(p):
                        continue
                    theirs = np.asarray(nib.load(p).dataobj, dtype=np.float32).transpose(2, 1, 0)
                    diffs.append(float(np.abs(theirs - maps[k]).max()))
                    a, b = theirs < 0 if sdm_head else theirs > 0.5, maps[k] < 0 if sdm_head else maps[k] > 0.5
                    agree.append(float((a == b).mean()))
            row["max_abs_map_diff"] = max(diffs) if diffs else None
            row["voxel_agreement_min"] = min(agree) if agree else None
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()

"""Reference metrics with DeepMind's surface-distance 0.1 (surface elements weighted by
area) for the pairs written by the Rust test (NAME.ref.u8, NAME.pred.u8, NAME.json).
Usage: deepmind_metrics.py DIR TOLERANCE_MM -> JSON {NAME: {hd95, assd, hd, surface_dice}}."""
import json, os, sys

import numpy as np
import surface_distance as sd

d, tol = sys.argv[1], float(sys.argv[2])
out = {}
for f in sorted(os.listdir(d)):
    if not f.endswith(".ref.u8"):
        continue
    name = f[: -len(".ref.u8")]
    meta = json.load(open(os.path.join(d, name + ".json")))
    nx, ny, nz = meta["dims"]
    sx, sy, sz = meta["spacing"]
    ref = np.fromfile(os.path.join(d, name + ".ref.u8"), dtype=np.uint8).reshape(nz, ny, nx).astype(bool)
    pred = np.fromfile(os.path.join(d, name + ".pred.u8"), dtype=np.uint8).reshape(nz, ny, nx).astype(bool)
    r = sd.compute_surface_distances(ref, pred, (sz, sy, sx))
    gt_to_pred, pred_to_gt = sd.compute_average_surface_distance(r)
    out[name] = {
        "hd95": float(sd.compute_robust_hausdorff(r, 95)),
        "hd": float(sd.compute_robust_hausdorff(r, 100)),
        "assd": float((gt_to_pred + pred_to_gt) / 2),
        "surface_dice": float(sd.compute_surface_dice_at_tolerance(r, tol)),
    }
print(json.dumps(out))

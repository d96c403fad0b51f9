"""Reference metrics with MONAI 1.6 (boundary voxels; HD95 = larger directed 95th
percentile, ASSD = mean of both directions pooled) for the pairs written by the Rust test.
Usage: monai_metrics.py DIR -> JSON {NAME: {dice, hd95, assd}}."""
import json, sys

import numpy as np
import torch
from monai.metrics import compute_average_surface_distance, compute_dice, compute_hausdorff_distance

from pairs import read_pairs

out = {}
for name, ref, pred, sp in read_pairs(sys.argv[1]):
    r = torch.from_numpy(ref[None, None].astype(np.float32))
    p = torch.from_numpy(pred[None, None].astype(np.float32))
    out[name] = {
        "dice": float(compute_dice(p, r, include_background=True)),
        "hd95": float(compute_hausdorff_distance(p, r, include_background=True, percentile=95, spacing=sp)),
        "assd": float(compute_average_surface_distance(p, r, include_background=True, symmetric=True, spacing=sp)),
    }
print(json.dumps(out))

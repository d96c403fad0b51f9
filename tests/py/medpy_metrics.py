"""Reference metrics with medpy 0.5 for pairs of masks written by the Rust test.

For every NAME.ref.u8 / NAME.pred.u8 (with NAME.json: dims [x, y, z], spacing [x, y, z]):
  dice, and with medpy's own definitions hd95 (both directions pooled) and assd (mean of the
  two directed means); from medpy's directed surface distances, the MONAI definitions:
  hd95 = max of the directed 95th percentiles, assd = mean of both directions pooled.
Usage: medpy_metrics.py DIR -> JSON {NAME: {...}}."""
import json, sys

import numpy as np
from medpy.metric import binary

from pairs import read_pairs

surface_distances = getattr(binary, "__surface_distances")
out = {}
for name, ref, pred, sp in read_pairs(sys.argv[1]):
    d_pr = surface_distances(pred, ref, sp, 1)
    d_rp = surface_distances(ref, pred, sp, 1)
    out[name] = {
        "dice": float(binary.dc(pred, ref)),
        "medpy_hd95": float(binary.hd95(pred, ref, voxelspacing=sp)),
        "medpy_assd": float(binary.assd(pred, ref, voxelspacing=sp)),
        "monai_hd95": float(max(np.percentile(d_pr, 95), np.percentile(d_rp, 95))),
        "monai_assd": float(np.concatenate([d_pr, d_rp]).mean()),
        "hd": float(max(d_pr.max(), d_rp.max())),
    }
print(json.dumps(out))

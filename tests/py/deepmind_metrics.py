"""Reference metrics with DeepMind's surface-distance 0.1 (surface elements weighted by
area) for the pairs written by the Rust test (NAME.ref.u8, NAME.pred.u8, NAME.json).
Usage: deepmind_metrics.py DIR TOLERANCE_MM -> JSON {NAME: {hd95, assd, hd, surface_dice}}."""
import json, sys

import surface_distance as sd

from pairs import read_pairs

tol = float(sys.argv[2])
out = {}
for name, ref, pred, sp in read_pairs(sys.argv[1]):
    r = sd.compute_surface_distances(ref, pred, sp)
    gt_to_pred, pred_to_gt = sd.compute_average_surface_distance(r)
    out[name] = {
        "hd95": float(sd.compute_robust_hausdorff(r, 95)),
        "hd": float(sd.compute_robust_hausdorff(r, 100)),
        "assd": float((gt_to_pred + pred_to_gt) / 2),
        "surface_dice": float(sd.compute_surface_dice_at_tolerance(r, tol)),
    }
print(json.dumps(out))

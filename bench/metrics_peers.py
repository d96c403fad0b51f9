"""Peers for the metrics benchmark: Dice, HD95 and ASSD for the 9 PDDCA organs of one case
against the same masks shifted by one voxel in x and y, with MONAI (if installed), medpy
and DeepMind surface-distance. Prints one JSON line per tool, with its values.
Usage: metrics_peers.py THREADS REPS CASE_DIR"""
import json, os, sys, time

import numpy as np
import nrrd

threads, reps, case = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
ORGANS = ["BrainStem", "Chiasm", "Mandible", "OpticNerve_L", "OpticNerve_R",
          "Parotid_L", "Parotid_R", "Submandibular_L", "Submandibular_R"]
pairs, spacing = [], None
for o in ORGANS:
    f = os.path.join(case, "structures", o + ".nrrd")
    if not os.path.exists(f):
        continue
    data, h = nrrd.read(f, index_order="C")  # z, y, x
    spacing = tuple(float(np.linalg.norm(d)) for d in np.asarray(h["space directions"])[::-1])
    m = data != 0
    p = np.zeros_like(m)
    p[:, 1:, 1:] = m[:, :-1, :-1]
    pairs.append((o, m, p))


def medpy_run():
    from medpy.metric import binary
    return {o: {"dice": binary.dc(p, m), "hd95": binary.hd95(p, m, voxelspacing=spacing), "assd": binary.assd(p, m, voxelspacing=spacing)} for o, m, p in pairs}


def deepmind_run():
    import surface_distance as sd
    out = {}
    for o, m, p in pairs:
        r = sd.compute_surface_distances(m, p, spacing)
        a, b = sd.compute_average_surface_distance(r)
        out[o] = {"dice": sd.compute_dice_coefficient(m, p), "hd95": sd.compute_robust_hausdorff(r, 95), "assd": (a + b) / 2}
    return out


def monai_run():
    import torch
    from monai.metrics import compute_average_surface_distance, compute_dice, compute_hausdorff_distance
    torch.set_num_threads(threads)
    out = {}
    for o, m, p in pairs:
        # MONAI wants one-hot [batch, class, ...]; spacing in the array's axis order.
        mt = torch.from_numpy(m[None, None].astype(np.float32))
        pt = torch.from_numpy(p[None, None].astype(np.float32))
        out[o] = {
            "dice": float(compute_dice(pt, mt, include_background=True)),
            "hd95": float(compute_hausdorff_distance(pt, mt, include_background=True, percentile=95, spacing=spacing)),
            "assd": float(compute_average_surface_distance(pt, mt, include_background=True, symmetric=True, spacing=spacing)),
        }
    return out


tools = [("medpy", medpy_run), ("surface-distance", deepmind_run)]
try:
    import monai  # noqa: F401
    tools.insert(0, ("MONAI", monai_run))
except ImportError:
    print("MONAI not installed: skipped", file=sys.stderr)
for name, fn in tools:
    n = 1 if name == "medpy" else reps
    times, values = [], None
    for _ in range(n):
        t = time.perf_counter()
        values = fn()
        times.append(time.perf_counter() - t)
    values = {o: {k: float(v) for k, v in d.items()} for o, d in values.items()}
    print(json.dumps({"tool": name, "case": os.path.basename(case), "threads": threads, "organs": len(pairs),
                      "median_s": float(np.median(times)), "runs": n, "times_s": times, "values": values}), flush=True)

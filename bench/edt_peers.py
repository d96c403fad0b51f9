"""Peers for the edt-sdm benchmark: the same 9-organ signed maps with scipy, seung-lab edt
and SimpleITK, on the same masks. Prints one JSON line per measurement.
Usage: edt_peers.py THREADS REPS CASE_DIR_OR_LABEL_FILE..."""
import json, os, sys, time

import numpy as np

threads, reps = int(sys.argv[1]), int(sys.argv[2])
os.environ.setdefault("OMP_NUM_THREADS", str(threads))
import edt
import nrrd
import nibabel as nib
import SimpleITK as sitk
from scipy import ndimage

sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
ORGANS = ["BrainStem", "Chiasm", "Mandible", "OpticNerve_L", "OpticNerve_R",
          "Parotid_L", "Parotid_R", "Submandibular_L", "Submandibular_R"]


def load(path):
    """Label map (z, y, x) and spacing (z, y, x), organs in label order."""
    if os.path.isdir(path):
        labels, spacing = None, None
        for k, o in enumerate(ORGANS):
            f = os.path.join(path, "structures", o + ".nrrd")
            if not os.path.exists(f):
                continue
            data, h = nrrd.read(f, index_order="C")
            if labels is None:
                labels = np.zeros(data.shape, np.uint8)
                spacing = tuple(float(np.linalg.norm(d)) for d in np.asarray(h["space directions"])[::-1])
            labels[data != 0] = k + 1
        return os.path.basename(path), labels, spacing
    img = nib.load(path)
    data = np.asarray(img.dataobj).astype(np.uint8).transpose(2, 1, 0).copy()
    return os.path.basename(path), data, tuple(float(z) for z in img.header.get_zooms()[::-1])


def normalize(out, inside, mask):
    return np.where(mask, -inside / max(inside.max(), 1e-12), out / max(out.max(), 1e-12)).astype(np.float32)


def scipy_maps(labels, spacing, ids):
    maps = []
    for k in ids:
        m = labels == k
        out = ndimage.distance_transform_edt(~m, sampling=spacing)
        inside = ndimage.distance_transform_edt(m, sampling=spacing)
        maps.append(normalize(out, inside, m))
    return maps


def edt_maps(labels, spacing, ids):
    # One multi-label pass gives every organ's inside distances; one pass per organ outside.
    inside_all = edt.edt(labels, anisotropy=spacing, black_border=False, parallel=threads)
    maps = []
    for k in ids:
        m = labels == k
        out = edt.edt(~m, anisotropy=spacing, black_border=False, parallel=threads)
        maps.append(normalize(out, np.where(m, inside_all, 0), m))
    return maps


def sitk_maps(labels, spacing, ids):
    maps = []
    for k in ids:
        img = sitk.GetImageFromArray((labels == k).astype(np.uint8))
        img.SetSpacing(spacing[::-1])
        d = sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(img, insideIsPositive=False, squaredDistance=False, useImageSpacing=True))
        m = labels == k
        maps.append(normalize(np.maximum(d, 0), np.maximum(-d, 0), m))
    return maps


for path in sys.argv[3:]:
    name, labels, spacing = load(path)
    ids = [k for k in range(1, 10) if (labels == k).any()]
    for tool, fn in [("scipy", scipy_maps), ("edt", edt_maps), ("SimpleITK", sitk_maps)]:
        if tool == "scipy" and threads > 1:
            continue  # single-threaded: its 1-thread time stands for both
        # Small cases take milliseconds: 21 runs, as ours, so that the median means something.
        n = 21 if labels.size < 1_000_000 else reps if tool != "scipy" else 1
        times = []
        for _ in range(n):
            t = time.perf_counter()
            fn(labels, spacing, ids)
            times.append(time.perf_counter() - t)
        print(json.dumps({"tool": tool, "case": name, "threads": threads, "organs": len(ids),
                          "median_s": float(np.median(times)), "runs": n, "times_s": times}), flush=True)

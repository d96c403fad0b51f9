#!/usr/bin/env python3
"""Audit the contours of an organ-files dataset (OpenKBP, PDDCA layout).

Per organ, over the cases that contour it: the number of cases, the contour's volume (cc),
its length along the slice axis (mm), and the share of its voxels below an air threshold
(HU) in the CT; cases whose air share exceeds a limit are listed (an esophagus contour that
covers the airway is a labelling choice the network cannot learn from the image). With
`--predictions` (an `infer` output folder: `<case>.nii.gz` label maps and `labels.json`),
also where each organ's false positives lie: in air, and beyond the reference's slices,
and each organ's mean Dice as predicted and within the slices the reference spans (how
much of the loss is where the contour starts and stops); with `--windows`, also with the
prediction cut to the run of slices of that many mm that holds most of it (would knowing
an organ's extent along the body mend its false positives?).

    .venv-ref/bin/python python/contour_audit.py ../shared/data/openkbp/train \
        --organs Esophagus Larynx --air-hu -500 --flag 0.1
    .venv-ref/bin/python python/contour_audit.py ../shared/data/openkbp/validation \
        --organs Esophagus Larynx --predictions runs/<run>/infer/joint
    .venv-ref/bin/python python/contour_audit.py ../shared/data/openkbp/validation \
        --organs Esophagus Larynx --predictions runs/<run>/infer/joint --windows 30 50 80

Reads NIfTI with nibabel; needs numpy. Prints Markdown tables, then the flagged cases.
"""

import argparse
import json
import os
import sys

import nibabel as nib
import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", help="folder of cases, each <case>/<image> + <case>/structures/")
    ap.add_argument("--organs", nargs="+", required=True)
    ap.add_argument("--image", default="ct.nii.gz")
    ap.add_argument("--structures", default="structures")
    ap.add_argument("--extension", default=".nii.gz")
    ap.add_argument("--air-hu", type=float, default=-500.0, help="voxels below: air")
    ap.add_argument("--flag", type=float, default=0.1, help="list cases above this air share")
    ap.add_argument("--predictions", help="an infer output folder (<case>.nii.gz, labels.json)")
    ap.add_argument("--windows", nargs="*", type=float, default=[],
                    help="with --predictions: window lengths (mm) to cut predictions to")
    a = ap.parse_args()
    if a.windows and not a.predictions:
        print("error: --windows needs --predictions", file=sys.stderr)
        return 2
    if any(w <= 0 for w in a.windows):
        print("error: --windows: lengths must be positive", file=sys.stderr)
        return 2
    codes = {}
    if a.predictions:
        try:
            with open(os.path.join(a.predictions, "labels.json")) as f:
                codes = {name: int(k) for k, name in json.load(f).items()}
        except (OSError, ValueError) as e:
            print(f"error: {a.predictions}/labels.json: {e}", file=sys.stderr)
            return 2
    # organ -> [predicted, true positive, false positive in air, beyond the slices]
    fp = {o: [0, 0, 0, 0] for o in a.organs}
    # organ -> per column (None: as predicted, "slab": within the reference's slices, a
    # window length), each case's Dice
    cut = {o: {w: [] for w in [None, "slab"] + a.windows} for o in a.organs}
    if not os.path.isdir(a.root):
        print(f"error: {a.root}: not a folder", file=sys.stderr)
        return 2
    cases = sorted(d for d in os.listdir(a.root) if os.path.isdir(os.path.join(a.root, d)))
    rows = {o: [] for o in a.organs}
    for case in cases:
        d = os.path.join(a.root, case)
        ct = None
        labels = None  # the case's predicted label map, read once
        pf = os.path.join(a.predictions, case + ".nii.gz") if a.predictions else None
        for organ in a.organs:
            f = os.path.join(d, a.structures, organ + a.extension)
            if not os.path.exists(f):
                continue  # not contoured
            img = nib.load(f)
            mask = np.asarray(img.dataobj) > 0
            if not mask.any():
                continue
            if ct is None:
                ct = np.asarray(nib.load(os.path.join(d, a.image)).dataobj)
            if ct.shape != mask.shape:
                print(f"error: {f}: shape {mask.shape}, image {ct.shape}", file=sys.stderr)
                return 2
            zooms = img.header.get_zooms()[:3]
            slices = np.flatnonzero(mask.any(axis=(0, 1)))
            rows[organ].append(
                (
                    case,
                    mask.sum() * float(np.prod(zooms)) / 1000.0,
                    (slices[-1] - slices[0] + 1) * float(zooms[2]),
                    float((ct[mask] < a.air_hu).mean()),
                )
            )
            if pf and organ in codes and os.path.exists(pf):
                if labels is None:
                    labels = np.asarray(nib.load(pf).dataobj)
                if labels.shape != mask.shape:
                    print(f"error: {pf}: shape {labels.shape}, reference {mask.shape}",
                          file=sys.stderr)
                    return 2
                pred = labels == codes[organ]
                wrong = pred & ~mask
                beyond = np.ones(mask.shape[2], bool)
                beyond[slices[0]:slices[-1] + 1] = False
                fp[organ][0] += int(pred.sum())
                fp[organ][1] += int((pred & mask).sum())
                fp[organ][2] += int((wrong & (ct < a.air_hu)).sum())
                fp[organ][3] += int(wrong[:, :, beyond].sum())
                for w, dices in cut[organ].items():
                    if w is None:
                        p, m = pred, mask
                    elif w == "slab":
                        p, m = pred[:, :, ~beyond], mask[:, :, ~beyond]
                    else:
                        p, m = window(pred, w, float(zooms[2])), mask
                    dices.append(dice(p, m))
    print(f"| organ | cases | volume cc, median [IQR] | length mm, median [IQR] | "
          f"share below {a.air_hu:g} HU, median [90th pct] | cases above {a.flag:g} |")
    print("|---|---|---|---|---|---|")
    for organ, r in rows.items():
        if not r:
            print(f"| {organ} | 0 | | | | |")
            continue
        vol, length, air = (np.array([x[i] for x in r]) for i in (1, 2, 3))
        q = lambda v: f"{np.median(v):.1f} [{np.percentile(v, 25):.1f}, {np.percentile(v, 75):.1f}]"
        print(f"| {organ} | {len(r)} | {q(vol)} | {q(length)} | {np.median(air):.3f} "
              f"[{np.percentile(air, 90):.3f}] | {int((air > a.flag).sum())} |")
    if a.predictions:
        print(f"\nPredictions {a.predictions}, pooled over the cases that contour the organ:\n")
        print(f"| organ | predicted voxels | in the reference | false positives: below "
              f"{a.air_hu:g} HU | beyond the reference's slices |")
        print("|---|---|---|---|---|")
        for organ, (n, tp, air, beyond) in fp.items():
            share = lambda x, of: f"{x / of:.3f}" if of else "–"
            print(f"| {organ} | {n} | {share(tp, n)} | {share(air, n - tp)} | "
                  f"{share(beyond, n - tp)} |")
    if a.predictions:
        print("\nMean Dice over the cases that contour the organ: as predicted, within the "
              "slices the reference spans, and cut to the window (mm along the slice axis) "
              "holding most of the prediction:\n")
        print(("| organ | cases | as predicted | within the contoured slices | "
               + "".join(f"{w:g} mm | " for w in a.windows)).rstrip())
        print("|---|---|---|---|" + "---|" * len(a.windows))
        for organ, by in cut.items():
            mean = lambda v: f"{np.mean(v):.3f}" if v else "–"
            print(f"| {organ} | {len(by[None])} | "
                  + " | ".join(mean(v) for v in by.values()) + " |")
    for organ, r in rows.items():
        flagged = [f"{c} ({s:.2f})" for c, _, _, s in r if s > a.flag]
        if flagged:
            print(f"\n{organ}, air share above {a.flag:g}: {', '.join(flagged)}")
    return 0


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    total = int(pred.sum()) + int(ref.sum())
    return 2.0 * int((pred & ref).sum()) / total if total else 1.0


def window(pred: np.ndarray, mm: float, dz: float) -> np.ndarray:
    """`pred` outside the `mm`-long run of slices (last axis) holding most of its voxels
    set to False (the first such run where several tie)."""
    if not pred.any():
        return pred
    per = pred.sum(axis=(0, 1))
    w = min(len(per), max(1, int(round(mm / dz))))
    start = int(np.argmax(np.convolve(per, np.ones(w, dtype=np.int64), "valid")))
    out = np.zeros_like(pred)
    out[:, :, start:start + w] = pred[:, :, start:start + w]
    return out


if __name__ == "__main__":
    sys.exit(main())

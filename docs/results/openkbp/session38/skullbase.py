"""Record script (section 38), not a tested tool: how far from the mandible the SDM heads'
false "mandible" lies, and how deep their maps go there and in the mandible itself.

    pipeline predict -m <model> -i <folder of case folders> -o <out> --save-maps
    OPENKBP_ROOT=... SPLIT=train .venv-ref/bin/python skullbase.py NAME=<out> ... -- pt_136 ...

Per model and case: the mean map in the reference mandible; then each of the three
largest negative components (map < 0) with under 5% of its voxels in the reference: its
voxels, slices (axis 2, inferior), the median distance of its voxels to the mandible (scipy's
exact EDT with the CT's spacing) and the mean map there.
"""
import os
import sys

import nibabel as nib
import numpy as np
from scipy import ndimage

ROOT = os.path.join(os.environ.get("OPENKBP_ROOT", "../shared/data/openkbp"),
                    os.environ.get("SPLIT", "train"))


def main(models, cases):
    print("| model | case | mean map in the mandible | component voxels | slices | median distance (mm) | mean map there |")
    print("|---|---|---|---|---|---|---|")
    for spec in models:
        name, folder = spec.split("=", 1)
        for pt in cases:
            m = np.asarray(nib.load(f"{folder}/{pt}_Mandible.nii.gz").dataobj).astype(float)
            img = nib.load(f"{ROOT}/{pt}/structures/Mandible.nii.gz")
            ref = np.asarray(img.dataobj) > 0
            dist = ndimage.distance_transform_edt(~ref, sampling=img.header.get_zooms()[:3])
            cc, n = ndimage.label(m < 0)
            sizes = ndimage.sum(np.ones_like(m), cc, range(1, n + 1))
            rows = 0
            for i in np.argsort(-sizes)[:3]:
                c = cc == i + 1
                if ref[c].mean() >= 0.05:
                    continue
                z = np.argwhere(c)[:, 2]
                print(f"| {name} | {pt} | {m[ref].mean():.3f} | {int(c.sum())} | {z.min()}-{z.max()} | "
                      f"{np.median(dist[c]):.0f} | {m[c].mean():.3f} |")
                rows += 1
            if rows == 0:
                print(f"| {name} | {pt} | {m[ref].mean():.3f} | none | | | |")


if __name__ == "__main__":
    args = sys.argv[1:]
    cut = args.index("--")
    main(args[:cut], args[cut + 1:])

#!/usr/bin/env python3
"""Section 36's record script (not a tested tool): where an SDM head's organ channels say
"inside" on one case. For each organ: its reference voxels, the share of them where the
predicted map is negative, the map's mean there, the negative voxels outside the organ and
how many of those lie in each other organ's reference, and the three largest negative
components (size, voxels in the organ, their deepest value).

    pipeline predict -m runs/<run>/calibrate -i <folder holding pt_201/> --image ct.nii.gz \
        -o maps42 --save-maps
    .venv-ref/bin/python map_overlap.py ../shared/data/openkbp/validation/pt_201/structures maps42 pt_201

Needs nibabel, numpy and scipy (.venv-ref).
"""
import sys

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

ORGANS = ["Brainstem", "SpinalCord", "RightParotid", "LeftParotid", "Mandible"]


def main(structures, maps, case):
    refs = {o: nib.load(f"{structures}/{o}.nii.gz").get_fdata() > 0.5 for o in ORGANS}
    print("| organ | voxels | negative inside | mean inside | negative outside | of them in other organs | largest negative components (size, in organ, min) |")
    print("|---|---|---|---|---|---|---|")
    for o, m in refs.items():
        p = nib.load(f"{maps}/{case}_{o}.nii.gz").get_fdata()
        neg = p < 0
        out = neg & ~m
        others = ", ".join(f"{k} {int((out & v).sum())}" for k, v in refs.items() if k != o)
        lab, n = ndi.label(neg)
        sizes = ndi.sum(np.ones_like(p), lab, range(1, n + 1)) if n else np.array([])
        comps = []
        for i in np.argsort(sizes)[::-1][:3]:
            c = lab == i + 1
            comps.append(f"({int(sizes[i])}, {int((c & m).sum())}, {p[c].min():+.3f})")
        print(f"| {o} | {int(m.sum())} | {np.mean(neg[m]):.2f} | {p[m].mean():+.3f} | {int(out.sum())} | {others} | {' '.join(comps)} |")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])

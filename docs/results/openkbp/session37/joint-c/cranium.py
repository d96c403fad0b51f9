"""Record script (section 37), not a tested tool: where the joint head's mandible channel
says "inside" on test CTs whose mandible it missed (seed 7: pt_222, pt_229).

    pipeline predict -m runs/<run>/calibrate/joint-c_7 -i <folder with pt_222/ct.nii.gz,
        pt_229/ct.nii.gz> -o /tmp/pred-j7 --save-maps
    OPENKBP_ROOT=... .venv-ref/bin/python cranium.py /tmp/pred-j7 pt_222 pt_229 > cranium.md

Per case: the map's values in the reference mandible, then its negative components (map
< 0) by size: voxels, slice range (axis 2, 2.5 mm, inferior), median CT HU, the fraction in
the reference mandible, the deepest value; and which component the largest-component rule
keeps against the one with the largest summed depth (sum of -map).
"""
import os
import sys

import nibabel as nib
import numpy as np
from scipy import ndimage

# OPENKBP_ROOT as the pipelines read it (default: ../shared/data/openkbp beside the project).
ROOT = os.path.join(os.environ.get("OPENKBP_ROOT", "../shared/data/openkbp"), "validation")


def main(pred, cases):
    print("| case | component (by size) | voxels | slices | median HU | in reference | deepest |")
    print("|---|---|---|---|---|---|---|")
    notes = []
    for pt in cases:
        m = np.asarray(nib.load(f"{pred}/{pt}_Mandible.nii.gz").dataobj).astype(float)
        ct = np.asarray(nib.load(f"{ROOT}/{pt}/ct.nii.gz").dataobj).astype(float)
        ref = np.asarray(nib.load(f"{ROOT}/{pt}/structures/Mandible.nii.gz").dataobj) > 0
        cc, n = ndimage.label(m < 0)
        idx = range(1, n + 1)
        size = ndimage.sum(np.ones_like(m), cc, idx)
        depth = ndimage.sum(-m, cc, idx)
        inref = ndimage.sum(ref, cc, idx)
        for rank, i in enumerate(np.argsort(-size)[:4]):
            c = cc == i + 1
            z = np.argwhere(c)[:, 2]
            print(f"| {pt} | {rank + 1} | {int(size[i])} | {z.min()}-{z.max()} | "
                  f"{np.median(ct[c]):.0f} | {inref[i] / size[i]:.2f} | {m[c].min():.2f} |")
        a, b = int(np.argmax(size)), int(np.argmax(depth))
        notes.append(
            f"- {pt}: in the reference mandible the map is negative at "
            f"{(m[ref] < 0).mean():.2f} of its voxels (mean {m[ref].mean():.3f}); the largest "
            f"component has {int(inref[a])} reference voxels, the deepest by summed depth "
            f"({depth[b]:.0f} against the largest's {depth[a]:.0f}) {int(inref[b])}.")
    print()
    print("\n".join(notes))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])

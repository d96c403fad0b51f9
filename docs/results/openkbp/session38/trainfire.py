"""Record script (section 38), not a tested tool: does a model's mandible channel say
"inside" on the skull-base bone of *training* CTs, as the SDM heads' do on test CTs
(section 37, cranium.md)? If it does on cases it trained on, the remedy is in training, not
in generalisation.

    pipeline predict -m <model> -i <folder of training case folders> -o <out> --save-maps
    OPENKBP_ROOT=... .venv-ref/bin/python trainfire.py NAME=<out>:sdm|prob ... -- pt_136 pt_21 ...

Per model and case: the fraction of the reference mandible called inside (an SDM map < 0,
a probability > 0.5), and of the bone above the mandible (CT > 300 HU on the slices above
its top slice less 3, axis 2, inferior): its voxel count and the fraction called inside.
"""
import os
import sys

import nibabel as nib
import numpy as np

ROOT = os.path.join(os.environ.get("OPENKBP_ROOT", "../shared/data/openkbp"), "train")


def main(models, cases):
    print("| model | case | reference called inside | bone above the mandible (voxels) | of it called inside |")
    print("|---|---|---|---|---|")
    for spec in models:
        name, rest = spec.split("=", 1)
        folder, kind = rest.rsplit(":", 1)
        for pt in cases:
            m = np.asarray(nib.load(f"{folder}/{pt}_Mandible.nii.gz").dataobj).astype(float)
            inside = m < 0 if kind == "sdm" else m > 0.5
            ref = np.asarray(nib.load(f"{ROOT}/{pt}/structures/Mandible.nii.gz").dataobj) > 0
            ct = np.asarray(nib.load(f"{ROOT}/{pt}/ct.nii.gz").dataobj)
            top = int(np.where(ref.any((0, 1)))[0].min())
            bone = ct > 300
            bone[:, :, max(top - 3, 0):] = False
            print(f"| {name} | {pt} | {inside[ref].mean():.2f} | {int(bone.sum())} | "
                  f"{inside[bone].mean() if bone.any() else float('nan'):.3f} |")


if __name__ == "__main__":
    args = sys.argv[1:]
    cut = args.index("--")
    main(args[:cut], args[cut + 1:])

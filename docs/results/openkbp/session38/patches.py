"""Record script (section 38), not a tested tool: how often the first model's training
patches hold bone above the mandible (the skull base the SDM heads call mandible).

    OPENKBP_ROOT=... .venv-ref/bin/python patches.py > patches.md

Every other training case (sorted by name) whose mandible is contoured; 2,000 patch centres
per case drawn as `augment` draws them (an organ's voxel with probability 0.67, the organ
uniform among the contoured ones, else uniform in the volume; rotation and scale left out),
patches of 48 x 48 x 32 voxels on the original grid (about 4 x 4 x 3 mm, the profile's
resampled grid). A patch "holds the bone" with at least 200 voxels of CT > 400 HU above the
mandible's top slice (axis 2, inferior), "and the mandible" with at least 50 of its voxels.
"""
import glob
import os

import nibabel as nib
import numpy as np

ROOT = os.path.join(os.environ.get("OPENKBP_ROOT", "../shared/data/openkbp"), "train")
ORGANS = ["Brainstem", "SpinalCord", "RightParotid", "LeftParotid", "Esophagus", "Larynx",
          "Mandible"]
HALF = (24, 24, 16)


def box_count(cum, c, shape):
    lo = [max(0, int(c[a]) - h) for a, h in enumerate(HALF)]
    hi = [min(shape[a], int(c[a]) + h) for a, h in enumerate(HALF)]
    (x0, y0, z0), (x1, y1, z1) = lo, hi
    return (cum[x1, y1, z1] - cum[x0, y1, z1] - cum[x1, y0, z1] - cum[x1, y1, z0]
            + cum[x0, y0, z1] + cum[x0, y1, z0] + cum[x1, y0, z0] - cum[x0, y0, z0])


def integral(mask):
    return np.pad(mask, ((1, 0), (1, 0), (1, 0))).astype(np.int32).cumsum(0).cumsum(1).cumsum(2)


def main():
    rng = np.random.default_rng(0)
    bone_share, both_share = [], []
    print("| case | mandible top slice | bone voxels above | patches with the bone | with the bone and the mandible |")
    print("|---|---|---|---|---|")
    for d in sorted(glob.glob(f"{ROOT}/pt_*"))[::2]:
        if not os.path.exists(f"{d}/structures/Mandible.nii.gz"):
            continue
        ct = np.asarray(nib.load(f"{d}/ct.nii.gz").dataobj).astype(np.float32)
        masks = {o: np.asarray(nib.load(f"{d}/structures/{o}.nii.gz").dataobj) > 0
                 for o in ORGANS if os.path.exists(f"{d}/structures/{o}.nii.gz")}
        voxels = [np.argwhere(m) for m in masks.values() if m.any()]
        top = int(np.where(masks["Mandible"].any((0, 1)))[0].min())
        bone = ct > 400
        bone[:, :, top:] = False
        cb, cm = integral(bone), integral(masks["Mandible"])
        n, hit, hit_both = 2000, 0, 0
        for _ in range(n):
            if rng.random() < 0.67:
                v = voxels[rng.integers(len(voxels))]
                c = v[rng.integers(len(v))]
            else:
                c = [rng.uniform(0, s - 1) for s in ct.shape]
            has_bone = box_count(cb, c, ct.shape) >= 200
            hit += has_bone
            hit_both += has_bone and box_count(cm, c, ct.shape) >= 50
        bone_share.append(hit / n)
        both_share.append(hit_both / n)
        print(f"| {os.path.basename(d)} | {top} | {int(bone.sum())} | {hit / n:.3f} | {hit_both / n:.3f} |")
    print()
    print(f"Median over {len(bone_share)} cases: {np.median(bone_share):.3f} of the patches hold "
          f"the bone, {np.median(both_share):.3f} the bone and the mandible.")


if __name__ == "__main__":
    main()

# For each test case: voxels of each true parotid predicted as RightParotid / LeftParotid.
import json, sys, glob, os
import nibabel as nib, numpy as np
pred_dir, root = sys.argv[1], sys.argv[2]
labels = {v: int(k) for k, v in json.load(open(f"{pred_dir}/labels.json")).items()}
tot = {}
for f in sorted(glob.glob(f"{pred_dir}/pt_*.nii.gz")):
    case = os.path.basename(f).split(".")[0]
    if "_" in case[3:]:
        continue
    p = np.asarray(nib.load(f).dataobj)
    for true in ["RightParotid", "LeftParotid"]:
        m = f"{root}/validation/{case}/structures/{true}.nii.gz"
        if not os.path.exists(m):
            continue
        t = np.asarray(nib.load(m).dataobj) > 0
        for pred in ["RightParotid", "LeftParotid"]:
            tot[(true, pred)] = tot.get((true, pred), 0) + int((p[t] == labels[pred]).sum())
        tot[(true, "voxels")] = tot.get((true, "voxels"), 0) + int(t.sum())
for k, v in sorted(tot.items()):
    print(k, v)

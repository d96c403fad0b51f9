"""Independent reference for the NRRD reader: shape, spacing and voxel count of each mask,
read with pynrrd. Usage: nrrd_counts.py ROOT -> JSON on stdout."""
import json, os, sys

import nrrd
import numpy as np

root = sys.argv[1]
out = {}
for case in sorted(os.listdir(root)):
    sdir = os.path.join(root, case, "structures")
    if not os.path.isdir(sdir):
        continue
    out[case] = {}
    for f in sorted(os.listdir(sdir)):
        if not f.endswith(".nrrd"):
            continue
        data, header = nrrd.read(os.path.join(sdir, f))
        dirs = np.asarray(header["space directions"], dtype=float)
        out[case][f[:-5]] = {
            "shape": list(data.shape),
            "spacing": [float(np.linalg.norm(d)) for d in dirs],
            "count": int(np.count_nonzero(data)),
        }
print(json.dumps(out))

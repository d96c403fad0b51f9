"""Reference signed distance maps with scipy.ndimage.distance_transform_edt.

For every NAME.u8 (with NAME.json: dims [x, y, z], spacing [x, y, z]) in DIR, writes NAME.f32:
outside +distance to the organ, inside -distance to the nearest non-organ voxel, 0 on the
boundary (organ voxels with a face neighbour outside the organ), all in mm.
Usage: scipy_sdm.py DIR -> prints {"done": N}."""
import json, os, sys

import numpy as np
from scipy import ndimage

d = sys.argv[1]
n = 0
for f in sorted(os.listdir(d)):
    if not f.endswith(".u8"):
        continue
    name = f[:-3]
    meta = json.load(open(os.path.join(d, name + ".json")))
    nx, ny, nz = meta["dims"]
    sx, sy, sz = meta["spacing"]
    mask = np.fromfile(os.path.join(d, f), dtype=np.uint8).reshape(nz, ny, nx).astype(bool)
    sampling = (sz, sy, sx)
    d_out = ndimage.distance_transform_edt(~mask, sampling=sampling)
    d_in = ndimage.distance_transform_edt(mask, sampling=sampling)
    eroded = ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(3, 1), border_value=1)
    boundary = mask & ~eroded
    sdm = np.where(mask, -d_in, d_out)
    sdm[boundary] = 0.0
    sdm.astype(np.float32).tofile(os.path.join(d, name + ".f32"))
    n += 1
print(json.dumps({"done": n}))

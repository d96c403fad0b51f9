"""Reads the mask pairs the Rust tests write for the reference scripts: for every
NAME.ref.u8 / NAME.pred.u8 with NAME.json (dims [x, y, z], spacing [x, y, z]), yields
(NAME, reference, prediction, spacing) as boolean (z, y, x) arrays and (z, y, x) spacing."""
import json, os

import numpy as np


def read_pairs(d):
    for f in sorted(os.listdir(d)):
        if not f.endswith(".ref.u8"):
            continue
        name = f[: -len(".ref.u8")]
        meta = json.load(open(os.path.join(d, name + ".json")))
        nx, ny, nz = meta["dims"]
        sx, sy, sz = meta["spacing"]
        load = lambda suffix: np.fromfile(os.path.join(d, name + suffix), dtype=np.uint8).reshape(nz, ny, nx).astype(bool)
        yield name, load(".ref.u8"), load(".pred.u8"), (sz, sy, sx)

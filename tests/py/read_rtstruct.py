"""rt-utils as the independent reader of an RTSTRUCT that shapeflow wrote: each ROI's mask
(OpenCV fillPoly of the contours, as rt-utils reads them) against the original mask file.

  read_rtstruct.py SERIES_DIR RTSTRUCT IMAGE ORGAN=MASK_FILE ...

SERIES_DIR: the CT series (as write_dicom_rt.py wrote it from IMAGE). Prints JSON: per ROI,
Dice against the original and both voxel counts, and the ROI names rt-utils found.
"""
import contextlib
import json
import os
import sys

import numpy as np
from rt_utils import RTStructBuilder

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from write_dicom_rt import mask_stack, read, slice_order  # noqa: E402

series_dir, rtstruct, image = sys.argv[1:4]
masks = dict(a.split("=", 1) for a in sys.argv[4:])
vol, affine = read(image)
order = slice_order(affine, vol.shape[2])
with contextlib.redirect_stdout(sys.stderr):
    rt = RTStructBuilder.create_from(dicom_series_path=series_dir, rt_struct_path=rtstruct)
out = {"names": rt.get_roi_names(), "rois": {}}
for organ, path in masks.items():
    want = mask_stack(path, order)
    got = rt.get_roi_mask_by_name(organ)
    clipped = 0
    if got.shape != want.shape:
        # rt-utils 1.2.7 makes each slice's mask (Columns, Rows) and fills it indexed
        # [row, column] (OpenCV's order): on a non-square image it reads the rows that fit.
        # Compared where both are defined; what the original holds beyond, reported.
        r, c = min(got.shape[0], want.shape[0]), min(got.shape[1], want.shape[1])
        clipped = int(want.sum() - want[:r, :c].sum())
        want, got = want[:r, :c], got[:r, :c]
    both = int(np.logical_and(want, got).sum())
    out["rois"][organ] = {
        "dice": 2.0 * both / max(int(want.sum()) + int(got.sum()), 1),
        "original": int(want.sum()),
        "read": int(got.sum()),
        "beyond_rt_utils_rows": clipped,
    }
print(json.dumps(out))

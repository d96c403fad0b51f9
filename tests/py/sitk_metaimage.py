"""SimpleITK as the independent MetaImage implementation.

  sitk_metaimage.py write SRC DIR   read SRC (NIfTI), give it a rotated direction, write
                                    DIR/sitk.mha (compressed) and DIR/sitk.mhd (raw)
  sitk_metaimage.py read FILE OUT   read FILE, write its voxels as float32 to OUT
Prints JSON: the image's size, RAS affine (4x4, voxel index -> RAS mm), and voxel count.
"""
import json
import sys

import numpy as np
import SimpleITK as sitk


def ras_affine(img):
    d = np.array(img.GetDirection()).reshape(3, 3)
    a = np.eye(4)
    a[:3, :3] = d @ np.diag(img.GetSpacing())
    a[:3, 3] = img.GetOrigin()
    return (np.diag([-1.0, -1.0, 1.0, 1.0]) @ a).tolist()


def describe(img):
    return {"size": list(img.GetSize()), "affine": ras_affine(img), "pixel": img.GetPixelIDTypeAsString()}


mode = sys.argv[1]
if mode == "write":
    img = sitk.ReadImage(sys.argv[2])
    t, u = np.deg2rad(30.0), np.deg2rad(20.0)
    rz = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(u), -np.sin(u)], [0, np.sin(u), np.cos(u)]])
    d = rz @ rx @ np.array(img.GetDirection()).reshape(3, 3)
    assert np.abs(d - d.T).max() > 0.1, "the test needs a direction that is not symmetric"
    img.SetDirection(tuple(d.ravel()))
    img.SetOrigin((12.5, -40.25, 7.0))
    sitk.WriteImage(img, sys.argv[3] + "/sitk.mha", True)
    sitk.WriteImage(img, sys.argv[3] + "/sitk.mhd", False)
    # The voxels in x-fastest order, as float32.
    sitk.GetArrayFromImage(img).astype(np.float32).tofile(sys.argv[3] + "/sitk.bin")
    print(json.dumps(describe(img)))
else:
    img = sitk.ReadImage(sys.argv[2])
    sitk.GetArrayFromImage(img).astype(np.float32).tofile(sys.argv[3])
    print(json.dumps(describe(img)))

"""pydicom + rt-utils as the independent DICOM-RT implementation: writes a real volume as a
CT series (one file per slice, uncompressed, geometry from the volume's affine) and its organ
masks as an RTSTRUCT (rt-utils traces each slice's mask with OpenCV, holes as inner contours).

  write_dicom_rt.py IMAGE OUT_DIR ORGAN=MASK_FILE ...

IMAGE and the masks: NIfTI (.nii.gz, nibabel) or NRRD (.nrrd, pynrrd), on one grid.
Prints JSON: the number of slices, the RAS affine written and each ROI's voxel count.
"""
import contextlib
import json
import os
import sys

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from rt_utils import RTStructBuilder


def read(path):
    """Voxels (x, y, z) and the RAS affine."""
    if path.endswith(".nrrd"):
        import nrrd

        data, h = nrrd.read(path)
        d = np.array(h["space directions"], dtype=float).T  # columns = axes
        a = np.eye(4)
        a[:3, :3] = d
        a[:3, 3] = h["space origin"]
        space = h.get("space", "left-posterior-superior")
        flip = {"left-posterior-superior": [-1, -1, 1], "right-anterior-superior": [1, 1, 1]}[space]
        return data, np.diag(flip + [1]) @ a
    import nibabel as nib

    img = nib.load(path)
    return np.asarray(img.dataobj), img.affine


def slice_order(affine, nz):
    """The volume's z indices in the order rt-utils sorts its slices (along row x column)."""
    lps = np.diag([-1.0, -1.0, 1.0]) @ affine[:3, :]
    normal = np.cross(lps[:, 0], lps[:, 1])
    return list(range(nz)) if np.dot(normal, lps[:, 2]) > 0 else list(range(nz))[::-1]


def mask_stack(path, order):
    """A mask file as rt-utils holds masks: (rows, cols, slices) in its slice order."""
    m, _ = read(path)
    m = m > 0
    return np.stack([m[:, :, k].T for k in order], axis=2)


def main():
    image_path, out = sys.argv[1], sys.argv[2]
    masks = dict(a.split("=", 1) for a in sys.argv[3:])
    vol, affine = read(image_path)
    vol = np.rint(vol).astype(np.int16)
    os.makedirs(out, exist_ok=True)
    lps = np.diag([-1.0, -1.0, 1.0]) @ affine[:3, :]
    sx, sy, sz = (np.linalg.norm(lps[:, i]) for i in range(3))
    xdir, ydir = lps[:, 0] / sx, lps[:, 1] / sy
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    nx, ny, nz = vol.shape
    for k in range(nz):
        uid = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = os.path.join(out, f"ct_{k:04d}.dcm")
        ds = FileDataset(path, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, uid
        ds.Modality = "CT"
        ds.PatientName, ds.PatientID = "Test^Patient", "shapeflow-test"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.StudyDate, ds.StudyTime, ds.StudyID = "20261202", "120000", "1"
        ds.SeriesNumber, ds.InstanceNumber = 1, k + 1
        ds.ImagePositionPatient = [float(v) for v in lps[:, 3] + k * lps[:, 2]]
        ds.ImageOrientationPatient = [float(v) for v in np.concatenate([xdir, ydir])]
        ds.PixelSpacing = [float(sy), float(sx)]  # between rows, between columns
        ds.SliceThickness = float(sz)
        ds.Rows, ds.Columns = ny, nx
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = np.ascontiguousarray(vol[:, :, k].T).astype("<i2").tobytes()
        ds.save_as(path, enforce_file_format=True)

    # rt-utils takes masks as (rows, cols, slices), slices in its order.
    order = slice_order(affine, nz)
    rt = RTStructBuilder.create_new(dicom_series_path=out)
    counts = {}
    for organ, path in masks.items():
        stack = mask_stack(path, order)
        counts[organ] = int(stack.sum())
        rt.add_roi(mask=stack, name=organ)
    with contextlib.redirect_stdout(sys.stderr):  # rt-utils prints what it writes
        rt.save(os.path.join(out, "rtstruct.dcm"))
    print(json.dumps({"slices": nz, "affine": affine.tolist(), "voxels": counts, "pydicom": pydicom.__version__}))


if __name__ == "__main__":
    main()

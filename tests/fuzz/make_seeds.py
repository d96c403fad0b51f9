"""Seeds for the fuzz corpus, from the real data in ../shared/data, written by independent
writers (nibabel, pynrrd, SimpleITK) and cut small (libFuzzer works best on small inputs).

  .venv-ref/bin/python tests/fuzz/make_seeds.py
"""
import gzip
import json
import pathlib
import shutil

import nibabel as nib
import nrrd
import numpy as np
import SimpleITK as sitk

here = pathlib.Path(__file__).parent
shared = here.parent.parent.parent / "shared" / "data"
c = here / "corpus"

img = nib.load(shared / "hippocampus/imagesTr/hippocampus_001.nii.gz")
a = np.asarray(img.dataobj)[10:16, 20:26, 10:16]
lab = np.asarray(nib.load(shared / "hippocampus/labelsTr/hippocampus_001.nii.gz").dataobj)[10:16, 20:26, 10:16]
for dtype, name in [(np.float32, "f32"), (np.int16, "i16"), (np.uint8, "u8"), (np.float64, "f64"), (np.int32, "i32")]:
    v = nib.Nifti1Image(a.astype(dtype), img.affine)
    nib.save(v, c / "nifti" / f"hippo_{name}.nii")
    nib.save(v, c / "nifti" / f"hippo_{name}.nii.gz")
nib.save(nib.Nifti1Image(lab.astype(np.uint8), img.affine), c / "nifti" / "label_u8.nii.gz")
big = nib.Nifti1Image(a.astype(np.int16), img.affine)
big.header.set_data_dtype(">i2")
nib.save(big, c / "nifti" / "big_endian_i16.nii")

mask, hdr = nrrd.read(str(shared / "pddca-masks/0522c0057/structures/Mandible.nrrd"))
small = np.ascontiguousarray(mask[100:106, 100:106, 60:66])
h = {k: hdr[k] for k in ("space", "space directions", "space origin") if k in hdr}
for enc in ("raw", "gzip"):
    nrrd.write(str(c / "nrrd" / f"mandible_{enc}.nrrd"), small, dict(h, encoding=enc))
    nrrd.write(str(c / "nrrd" / f"ct_{enc}.nrrd"), a.astype(np.int16), dict(h, encoding=enc, endian="big"))
# Detached: header, a 0 byte, then the data file's bytes (see nrrd_detached.rs).
for enc, data_name in (("raw", "data.raw"), ("gzip", "data.raw.gz")):
    raw = a.astype("<i2").tobytes(order="F")
    data = gzip.compress(raw) if enc == "gzip" else raw
    header = (
        "NRRD0004\ntype: short\ndimension: 3\nsizes: 6 6 6\nendian: little\n"
        f"encoding: {enc}\nspace: left-posterior-superior\n"
        "space directions: (1,0,0) (0,1,0) (0,0,1)\nspace origin: (0,0,0)\n"
        f"data file: {data_name}\n"
    ).encode()
    (c / "nrrd_detached" / f"short_{enc}").write_bytes(header + b"\0" + data)

s = sitk.GetImageFromArray(a.astype(np.float32))
s.SetSpacing((0.8, 0.9, 2.5))
s.SetOrigin((1.0, -2.0, 3.0))
sitk.WriteImage(s, str(c / "metaimage" / "f32_zlib.mha"), True)
sitk.WriteImage(sitk.Cast(s, sitk.sitkInt16), str(c / "metaimage" / "i16_raw.mha"), False)

ds = json.loads((shared / "hippocampus/dataset.json").read_text())
ds["training"] = ds["training"][:2]
ds.pop("test", None)
(c / "dataset_json" / "msd.json").write_text(json.dumps(ds))
(c / "dataset_json" / "nnunet_v2.json").write_text(json.dumps({
    "channel_names": {"0": "MRI"}, "labels": {"background": 0, "Anterior": 1, "Posterior": 2},
    "numTraining": 0, "file_ending": ".nii.gz"}))

# DICOM: a small CT series and its RTSTRUCT, written by pydicom and rt-utils (the writer the
# DICOM-RT test uses), from a cut of the hippocampus case; one slice and the structure set.
import subprocess, sys, tempfile  # noqa: E401,E402
with tempfile.TemporaryDirectory() as t:
    t = pathlib.Path(t)
    nib.save(nib.Nifti1Image(a.astype(np.int16), img.affine), t / "img.nii.gz")
    nib.save(nib.Nifti1Image(lab.astype(np.uint8), img.affine), t / "lab.nii.gz")
    subprocess.run([sys.executable, str(here.parent / "py" / "write_dicom_rt.py"), str(t / "img.nii.gz"),
                    str(t / "dcm"), f"hippocampus={t / 'lab.nii.gz'}"], check=True, capture_output=True)
    (c / "dicom").mkdir(exist_ok=True)
    shutil.copy(t / "dcm" / "ct_0003.dcm", c / "dicom" / "ct_slice.dcm")
    shutil.copy(t / "dcm" / "rtstruct.dcm", c / "dicom" / "rtstruct.dcm")

for p in (here.parent.parent / "pipelines").glob("*.yaml"):
    shutil.copy(p, c / "pipeline_yaml" / p.name)
print("seeds written")

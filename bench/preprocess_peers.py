"""SimpleITK peer for the preprocessing benchmark: the same steps on the same files as
`cargo bench --bench preprocess`: read img.nrrd and every structure, body = HU > -300, its
largest connected component, a 200 x 200 x 220 mm box from the top of the skull centred
in-plane on the head, crop, resample to 1 x 1 x 2.5 mm (linear image, nearest labels).
Usage: preprocess_peers.py THREADS REPS CASE_DIR..."""
import json, os, sys, time

import numpy as np
import SimpleITK as sitk

threads, reps = int(sys.argv[1]), int(sys.argv[2])
sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


def run(case):
    img = sitk.ReadImage(os.path.join(case, "img.nrrd"))
    sdir = os.path.join(case, "structures")
    labels = None
    for k, f in enumerate(sorted(os.listdir(sdir))):
        m = sitk.ReadImage(os.path.join(sdir, f)) > 0
        m = sitk.Cast(m, sitk.sitkUInt8) * (k + 1)
        labels = m if labels is None else sitk.Maximum(labels, m)
    body = sitk.RelabelComponent(sitk.ConnectedComponent(img > -300), sortByObjectSize=True) == 1
    arr = sitk.GetArrayViewFromImage(body)  # z, y, x
    zs = np.nonzero(arr.any(axis=(1, 2)))[0]
    sp = img.GetSpacing()
    size = [min(int(round(200 / sp[0])), img.GetWidth()), min(int(round(200 / sp[1])), img.GetHeight()), min(int(round(220 / sp[2])), img.GetDepth())]
    top = zs.max()  # index increases towards superior in these scans
    z0 = max(top + 1 - size[2], 0)
    slab = arr[z0:top + 1]
    _, ys, xs = np.nonzero(slab)
    start = [0, 0, z0]
    for a, c, n in ((0, xs.mean(), img.GetWidth()), (1, ys.mean(), img.GetHeight())):
        start[a] = int(min(max(round(c - size[a] / 2), 0), n - size[a]))
    size[2] = top + 1 - z0
    size = [int(v) for v in size]
    start = [int(v) for v in start]
    img_c = sitk.RegionOfInterest(img, size, start)
    lab_c = sitk.RegionOfInterest(labels, size, start)
    new_sp = (1.0, 1.0, 2.5)
    new_size = [max(1, int(round(size[a] * sp[a] / new_sp[a]))) for a in range(3)]
    origin = list(img_c.GetOrigin())
    d = np.asarray(img_c.GetDirection()).reshape(3, 3)
    for a in range(3):
        shift = 0.5 * new_sp[a] - 0.5 * sp[a]
        origin = [origin[r] + d[r, a] * shift for r in range(3)]
    ref = sitk.Image(new_size, sitk.sitkUInt8)
    ref.SetSpacing(new_sp)
    ref.SetOrigin(origin)
    ref.SetDirection(img_c.GetDirection())
    out_img = sitk.Resample(img_c, ref, sitk.Transform(), sitk.sitkLinear, -1024.0, img_c.GetPixelID())
    out_lab = sitk.Resample(lab_c, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    return out_img.GetSize()


for case in sys.argv[3:]:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        dims = run(case)
        times.append(time.perf_counter() - t)
    print(json.dumps({"tool": "SimpleITK", "case": os.path.basename(case), "threads": threads,
                      "median_s": float(np.median(times)), "runs": reps, "times_s": times, "out_dims": list(dims)}), flush=True)

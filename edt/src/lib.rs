//! Exact Euclidean distance transforms with anisotropic spacing, and signed distance maps.
//!
//! The algorithm is Felzenszwalb & Huttenlocher's lower envelope of parabolas, applied
//! separably along x, y and z: exact squared distances in linear time per line. Lines are
//! processed in parallel on rayon; each pass skips lines that cannot hold a finite value
//! yet (for a small organ the first two passes touch only its bounding box), and the
//! z pass works on one y-slab at a time so that memory is read row by row.
//!
//! Voxel order is x fastest: `index = x + nx * (y + ny * z)`. Distances are between voxel
//! centres, in the units of `spacing` (mm).

use rayon::prelude::*;

/// Marks "no feature yet" in squared-distance buffers.
pub const INF: f32 = f32::INFINITY;

/// Squared distance transform of one line, in place: `f[i]` is 0 at features and `INF`
/// elsewhere on entry (or a squared distance from an earlier pass); on exit the squared
/// distance to the nearest feature along the line, with sample spacing `s`.
pub fn line_sq(f: &mut [f32], s: f64) {
    Scratch::new(f.len(), s).transform_line(f, false);
}

/// The first pass on a binary line (0 at features, `INF` elsewhere): squared distance to the
/// nearest feature by two sweeps, no parabolas needed. Lines without features stay `INF`.
fn binary_line(row: &mut [f32], s: f64) {
    let mut last: Option<usize> = None;
    for (q, v) in row.iter_mut().enumerate() {
        if *v == 0.0 {
            last = Some(q);
        } else if let Some(l) = last {
            let d = (q - l) as f64 * s;
            *v = (d * d) as f32;
        }
    }
    if last.is_none() {
        return;
    }
    let mut next: Option<usize> = None;
    for (q, v) in row.iter_mut().enumerate().rev() {
        if *v == 0.0 {
            next = Some(q);
        } else if let Some(r) = next {
            let d = (r - q) as f64 * s;
            let d2 = (d * d) as f32;
            if d2 < *v {
                *v = d2;
            }
        }
    }
}

/// Per-thread buffers for line transforms along one axis.
struct Scratch {
    /// The input value at each site (by position), kept while the line is overwritten.
    out: Vec<f64>,
    v: Vec<usize>,
    z: Vec<f64>,
    /// `a[q] = f[q] + s^2 q^2`, the parabola offsets.
    a: Vec<f64>,
    /// `rinv[d] = 1 / (2 s^2 d)`: the intersections need no division.
    rinv: Vec<f64>,
    s2: f64,
}

impl Scratch {
    fn new(n: usize, s: f64) -> Self {
        let s2 = s * s;
        Scratch {
            out: vec![0.0; n],
            v: vec![0; n],
            z: vec![0.0; n + 1],
            a: vec![0.0; n],
            rinv: (0..n.max(1))
                .map(|d| {
                    if d == 0 {
                        0.0
                    } else {
                        1.0 / (2.0 * s2 * d as f64)
                    }
                })
                .collect(),
            s2,
        }
    }

    /// Felzenszwalb-Huttenlocher on `line`, in place (the site values it needs are kept in
    /// scratch, so the output can overwrite the input); with `sqrt` the result is the
    /// distance rather than its square. False, and `line` untouched, if no value is finite.
    fn transform_line(&mut self, line: &mut [f32], sqrt: bool) -> bool {
        let n = line.len();
        debug_assert!(n <= self.v.len() && n < self.z.len() && n <= self.rinv.len().max(1));
        let s2 = self.s2;
        let v = self.v.as_mut_ptr();
        let z = self.z.as_mut_ptr();
        let a = self.a.as_mut_ptr();
        let fv = self.out.as_mut_ptr(); // f at each site, by position
        let rinv = self.rinv.as_ptr();
        let mut k: usize = 0;
        let mut any = false;
        // SAFETY: every index is below n (v, a, out, rinv have n elements, z has n + 1; the
        // envelope holds at most n sites, so k + 1 <= n), as asserted above.
        unsafe {
            for (q, &fq) in line.iter().enumerate() {
                if fq == INF {
                    continue;
                }
                let qf = q as f64;
                let aq = fq as f64 + s2 * qf * qf;
                *a.add(q) = aq;
                *fv.add(q) = fq as f64;
                if !any {
                    any = true;
                    *v = q;
                    *z = f64::NEG_INFINITY;
                    *z.add(1) = f64::INFINITY;
                    continue;
                }
                loop {
                    let p = *v.add(k);
                    let sct = (aq - *a.add(p)) * *rinv.add(q - p);
                    if sct <= *z.add(k) && k > 0 {
                        k -= 1;
                        continue;
                    }
                    k += 1;
                    *v.add(k) = q;
                    *z.add(k) = sct;
                    *z.add(k + 1) = f64::INFINITY;
                    break;
                }
            }
            if !any {
                return false;
            }
            let mut j = 0usize;
            for (q, out) in line.iter_mut().enumerate() {
                let qf = q as f64;
                while *z.add(j + 1) < qf {
                    j += 1;
                }
                let p = *v.add(j);
                let d = qf - p as f64;
                let h = s2 * d * d + *fv.add(p);
                *out = if sqrt { h.sqrt() as f32 } else { h as f32 };
            }
        }
        true
    }
}

/// An inclusive box of voxel indices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BBox {
    pub lo: [usize; 3],
    pub hi: [usize; 3],
}

/// Work items per rayon job so that a job has at least ~256 Ki voxels: small volumes run in
/// one job instead of paying for splits and per-job scratch.
fn min_len(voxels_per_item: usize) -> usize {
    ((1usize << 18) / voxels_per_item.max(1)).max(1)
}

/// Voxels per job for element-wise parallel loops.
const ELEMS_PER_JOB: usize = 1 << 18;

/// Lines per block in the strided passes: one 64-byte cache line of f32.
const BLOCK: usize = 16;

/// Transforms the `count` lines `data[x + count * i]` (i in `0..len`) of a row-major
/// `len x count` array, `BLOCK` lines at a time so that every cache line read is used whole.
/// With `take_sqrt` the results are distances rather than squares.
fn strided_pass(
    data: &mut [f32],
    len: usize,
    count: usize,
    sc: &mut Scratch,
    blk: &mut Vec<f32>,
    take_sqrt: bool,
) {
    blk.resize(BLOCK * len, 0.0);
    let mut x0 = 0;
    while x0 < count {
        let w = BLOCK.min(count - x0);
        for i in 0..len {
            let row = &data[x0 + count * i..x0 + count * i + w];
            for (k, &v) in row.iter().enumerate() {
                blk[k * len + i] = v;
            }
        }
        for k in 0..w {
            let line = &mut blk[k * len..(k + 1) * len];
            let finite = len > 1 && sc.transform_line(line, take_sqrt);
            if !finite && take_sqrt {
                line.iter_mut().for_each(|o| *o = o.sqrt());
            }
        }
        for i in 0..len {
            let row = &mut data[x0 + count * i..x0 + count * i + w];
            for (k, v) in row.iter_mut().enumerate() {
                *v = blk[k * len + i];
            }
        }
        x0 += w;
    }
}

/// Squared EDT, in place: `buf` holds 0 at features and `INF` elsewhere. `features` is a
/// box containing every feature (pass it to skip work), or `None` for the whole volume.
pub fn sq_edt_in_place(
    buf: &mut [f32],
    dims: [usize; 3],
    spacing: [f64; 3],
    features: Option<BBox>,
) {
    sq_edt_passes(buf, dims, spacing, features, false);
}

/// The three passes; with `take_sqrt` the last pass writes distances instead of squares.
fn sq_edt_passes(
    buf: &mut [f32],
    dims: [usize; 3],
    spacing: [f64; 3],
    features: Option<BBox>,
    take_sqrt: bool,
) {
    let [nx, ny, nz] = dims;
    assert_eq!(buf.len(), nx * ny * nz, "buffer does not match dims");
    if buf.is_empty() {
        return;
    }
    let bb = features.unwrap_or(BBox {
        lo: [0, 0, 0],
        hi: [nx - 1, ny - 1, nz - 1],
    });
    let slice = nx * ny;
    // Passes 1 and 2 (x, then y) per slice: only slices within the feature box's z range,
    // and in pass 1 only rows within its y range, can hold finite values.
    buf.par_chunks_mut(slice)
        .with_min_len(min_len(slice))
        .enumerate()
        .for_each_init(
            || (Scratch::new(ny, spacing[1]), Vec::new()),
            |(sy, blk), (z, sl)| {
                if z < bb.lo[2] || z > bb.hi[2] {
                    return;
                }
                // The input is binary (0 at features, INF elsewhere): two sweeps suffice.
                for y in bb.lo[1]..=bb.hi[1] {
                    binary_line(&mut sl[y * nx..(y + 1) * nx], spacing[0]);
                }
                if ny > 1 {
                    strided_pass(sl, ny, nx, sy, blk, false);
                }
            },
        );
    // Pass 3, along z, one y-slab at a time (rows of x are contiguous in memory).
    if nz > 1 || take_sqrt {
        let ptr = SyncPtr(buf.as_mut_ptr());
        (0..ny)
            .into_par_iter()
            .with_min_len(min_len(nx * nz))
            .for_each_init(
                || {
                    (
                        Scratch::new(nz, spacing[2]),
                        vec![0f32; nx * nz],
                        Vec::new(),
                    )
                },
                |(sc, tile, blk), y| {
                    let p = ptr;
                    // SAFETY: each y touches the disjoint set of rows {y + ny * z}; no two tasks
                    // share an element, and `buf` outlives the parallel loop.
                    unsafe {
                        for z in 0..nz {
                            let src = p.0.add(nx * (y + ny * z));
                            std::ptr::copy_nonoverlapping(src, tile.as_mut_ptr().add(z * nx), nx);
                        }
                    }
                    strided_pass(tile, nz, nx, sc, blk, take_sqrt);
                    unsafe {
                        for z in 0..nz {
                            let dst = p.0.add(nx * (y + ny * z));
                            std::ptr::copy_nonoverlapping(tile.as_ptr().add(z * nx), dst, nx);
                        }
                    }
                },
            );
    }
}

/// Distance (not squared) transform, in place; see [`sq_edt_in_place`].
pub fn edt_in_place(buf: &mut [f32], dims: [usize; 3], spacing: [f64; 3], features: Option<BBox>) {
    sq_edt_passes(buf, dims, spacing, features, true);
}

#[derive(Clone, Copy)]
struct SyncPtr(*mut f32);
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}

/// Squared distance from every voxel to the nearest voxel where `is_feature` holds.
pub fn sq_edt(
    dims: [usize; 3],
    spacing: [f64; 3],
    is_feature: impl Fn(usize) -> bool + Sync,
) -> Vec<f32> {
    let n = dims[0] * dims[1] * dims[2];
    let mut buf: Vec<f32> = (0..n)
        .into_par_iter()
        .map(|i| if is_feature(i) { 0.0 } else { INF })
        .collect();
    sq_edt_in_place(&mut buf, dims, spacing, None);
    buf
}

/// How a signed map is scaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    /// Millimetres: negative inside, positive outside.
    Millimetres,
    /// Inside divided by the largest inside distance, outside by the largest outside
    /// distance: values in [-1, 1].
    Normalized,
}

/// Bounding box of the voxels with `labels[i] == label`; `None` if there are none.
pub fn bbox_of(labels: &[u8], dims: [usize; 3], label: u8) -> Option<BBox> {
    let [nx, ny, _] = dims;
    let slice = nx * ny;
    let per_slice: Vec<Option<BBox>> = labels
        .par_chunks(slice)
        .with_min_len(min_len(slice))
        .enumerate()
        .map(|(z, sl)| {
            let mut b: Option<BBox> = None;
            for (i, &l) in sl.iter().enumerate() {
                if l == label {
                    let (x, y) = (i % nx, i / nx);
                    let bb = b.get_or_insert(BBox {
                        lo: [x, y, z],
                        hi: [x, y, z],
                    });
                    bb.lo[0] = bb.lo[0].min(x);
                    bb.hi[0] = bb.hi[0].max(x);
                    bb.lo[1] = bb.lo[1].min(y);
                    bb.hi[1] = bb.hi[1].max(y);
                }
            }
            b
        })
        .collect();
    per_slice.into_iter().flatten().reduce(|a, b| BBox {
        lo: std::array::from_fn(|k| a.lo[k].min(b.lo[k])),
        hi: std::array::from_fn(|k| a.hi[k].max(b.hi[k])),
    })
}

/// True when voxel `i` (with label `label`) has a face neighbour inside the volume whose
/// label differs: the organ's boundary (its "inner" boundary voxels).
#[inline]
pub fn is_boundary(labels: &[u8], dims: [usize; 3], i: usize, label: u8) -> bool {
    let [nx, ny, nz] = dims;
    let x = i % nx;
    let y = (i / nx) % ny;
    let z = i / (nx * ny);
    let s = nx * ny;
    (x > 0 && labels[i - 1] != label)
        || (x + 1 < nx && labels[i + 1] != label)
        || (y > 0 && labels[i - nx] != label)
        || (y + 1 < ny && labels[i + nx] != label)
        || (z > 0 && labels[i - s] != label)
        || (z + 1 < nz && labels[i + s] != label)
}

/// The signed distance map of the voxels labelled `label`.
///
/// Definition (the SDM literature's, e.g. Xue et al. 2020): with S the organ's voxels and
/// its boundary ∂S the voxels of S that have a face neighbour (inside the volume) outside S,
///
/// - outside S: `+d(x, S)`, the distance to the nearest voxel of S;
/// - on ∂S: `0`;
/// - inside S \ ∂S: `-d(x, complement of S)`, the distance to the nearest voxel outside S;
///
/// [`Scale::Normalized`] divides the outside by its maximum and the inside by the maximum
/// of `d(x, complement)` over S, giving [-1, 1]. Edge cases: an empty organ is `+1`
/// (normalized) or `+INF` (mm) everywhere; an organ filling the volume, which has no
/// outside, is `-1` (normalized) or `-INF` (mm) everywhere.
///
/// Returns `None` if `label` does not occur: the caller decides between "absent" (not
/// annotated) and "empty" (annotated, no voxels).
pub fn signed_map(
    labels: &[u8],
    dims: [usize; 3],
    spacing: [f64; 3],
    label: u8,
    scale: Scale,
) -> Option<Vec<f32>> {
    let n = dims[0] * dims[1] * dims[2];
    assert_eq!(labels.len(), n, "labels do not match dims");
    let bb = bbox_of(labels, dims, label)?;
    let everything = labels
        .par_iter()
        .with_min_len(ELEMS_PER_JOB)
        .all(|&l| l == label);
    if everything {
        return Some(vec![
            if scale == Scale::Normalized {
                -1.0
            } else {
                -INF
            };
            n
        ]);
    }
    // Outside: squared distance to the organ, whole volume.
    let mut out: Vec<f32> = labels
        .par_iter()
        .map(|&l| if l == label { 0.0 } else { INF })
        .collect();
    edt_in_place(&mut out, dims, spacing, Some(bb));
    // Inside: squared distance to the nearest non-organ voxel, computed on the organ's box
    // grown by one voxel: the ring around the box is outside the organ, so every inside
    // voxel's nearest outside voxel lies within the grown box (exact, not approximate).
    let lo: [usize; 3] = std::array::from_fn(|a| bb.lo[a].saturating_sub(1));
    let hi: [usize; 3] = std::array::from_fn(|a| (bb.hi[a] + 1).min(dims[a] - 1));
    let sub = [hi[0] - lo[0] + 1, hi[1] - lo[1] + 1, hi[2] - lo[2] + 1];
    let mut inside = vec![INF; sub[0] * sub[1] * sub[2]];
    for z in 0..sub[2] {
        for y in 0..sub[1] {
            for x in 0..sub[0] {
                let g = (lo[0] + x) + dims[0] * ((lo[1] + y) + dims[1] * (lo[2] + z));
                if labels[g] != label {
                    inside[x + sub[0] * (y + sub[1] * z)] = 0.0;
                }
            }
        }
    }
    if inside.contains(&0.0) {
        sq_edt_in_place(&mut inside, sub, spacing, None);
    }
    // Maxima for normalisation (over S for the inside, over the complement outside).
    let max_in = inside
        .par_iter()
        .filter(|v| v.is_finite())
        .cloned()
        .reduce(|| 0.0, f32::max)
        .sqrt();
    let max_out = out
        .par_iter()
        .with_min_len(ELEMS_PER_JOB)
        .cloned()
        .reduce(|| 0.0, f32::max);
    let nx = dims[0];
    let ny = dims[1];
    let (k_in, k_out) = match scale {
        Scale::Millimetres => (-1.0, 1.0),
        Scale::Normalized => (-1.0 / max_in as f64, 1.0 / max_out as f64),
    };
    if scale == Scale::Normalized {
        // Outside voxels: scale (organ voxels are 0 here and are rewritten below).
        out.par_iter_mut()
            .for_each(|o| *o = (*o as f64 * k_out) as f32);
    }
    // Organ voxels: only the organ's box is visited.
    out.par_chunks_mut(nx * ny)
        .with_min_len(min_len(nx * ny))
        .enumerate()
        .for_each(|(z, sl)| {
            if z < bb.lo[2] || z > bb.hi[2] {
                return;
            }
            for y in bb.lo[1]..=bb.hi[1] {
                for x in bb.lo[0]..=bb.hi[0] {
                    let j = x + nx * y;
                    let i = j + nx * ny * z;
                    if labels[i] != label {
                        continue;
                    }
                    sl[j] = if is_boundary(labels, dims, i, label) {
                        0.0
                    } else {
                        let li = (x - lo[0]) + sub[0] * ((y - lo[1]) + sub[1] * (z - lo[2]));
                        (inside[li].sqrt() as f64 * k_in) as f32
                    };
                }
            }
        });
    Some(out)
}

#[cfg(test)]
mod tests;

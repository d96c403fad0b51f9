//! Exact Euclidean distance transforms with anisotropic spacing, and signed distance maps.
//!
//! This crate knows nothing of volumes, files, pipelines or the cache: a flat `u8` label
//! array with its dims and spacing in, distances out (its one dependency is rayon).
//!
//! Separable and exact: pass 1 along x (two sweeps on the binary input), then passes along
//! y and z that take, for every voxel, the minimum over the line of `f(p) + (s (q - p))^2`.
//! That minimum is computed one of two ways, both exact: Felzenszwalb & Huttenlocher's lower
//! envelope of parabolas (linear per line, branchy, one line at a time), or direct
//! minimisation over the positions that can hold a finite value (`envelope_rows`: branch-free
//! and vectorised across neighbouring lines, whose values lie side by side in memory). The
//! direct way costs the length of that run per voxel, so it is used for runs up to a length
//! that depends on the CPU's vector width ([`Method::auto`]); for an organ, the run is its
//! bounding box's extent along the axis. Each pass skips lines that cannot hold a finite
//! value yet (for a small organ the first two passes touch only its bounding box); the z
//! pass works on blocks of whole x rows so that memory is read in long contiguous runs.
//! Work is spread over rayon, with small volumes kept in one job.
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
    edt_passes(buf, dims, spacing, features, false, Method::auto());
}

/// The vector instructions [`envelope_rows`] is compiled for.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Simd {
    /// What the target guarantees (on x86-64: SSE2, four f32 lanes).
    Portable,
    /// AVX2: eight lanes.
    Avx2,
    /// AVX-512F: sixteen lanes.
    Avx512,
}

impl Simd {
    /// The widest this CPU has (detected once).
    pub fn detect() -> Simd {
        static DETECTED: std::sync::OnceLock<Simd> = std::sync::OnceLock::new();
        *DETECTED.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            {
                if std::arch::is_x86_feature_detected!("avx512f") {
                    return Simd::Avx512;
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    return Simd::Avx2;
                }
            }
            Simd::Portable
        })
    }

    /// Every level this CPU can run, narrowest first.
    pub fn available() -> Vec<Simd> {
        [Simd::Portable, Simd::Avx2, Simd::Avx512]
            .into_iter()
            .filter(|s| *s <= Simd::detect())
            .collect()
    }
}

/// How the passes along y and z are computed: a run of at most `brute_max` rows that can
/// hold finite values goes through [`envelope_rows`] (direct minimisation, vectorised across
/// lines), a longer one through Felzenszwalb-Huttenlocher. The direct method costs the run's
/// length per voxel, FH a constant, so FH wins on long runs; where depends on the vector width.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Method {
    pub simd: Simd,
    pub brute_max: usize,
}

impl Method {
    /// The fastest for this CPU. The crossovers were measured at one thread on a 256 x 256 x
    /// 120 volume with feature boxes of 16 to 192 rows (docs/benchmarks.md, "Direct
    /// minimisation or FH"): with AVX2 or AVX-512 the direct method was still ahead at 192 rows,
    /// with SSE2 only up to about 40.
    pub fn auto() -> Method {
        let simd = Simd::detect();
        Method {
            simd,
            brute_max: match simd {
                Simd::Portable => 40,
                Simd::Avx2 | Simd::Avx512 => 192,
            },
        }
    }
}

/// The squared distances `cost[d] = (s d)^2` for `d` in `0..n`.
fn sq_costs(n: usize, s: f64) -> Vec<f32> {
    (0..n).map(|d| ((d as f64 * s).powi(2)) as f32).collect()
}

/// Exact 1-D squared distance along an axis by direct minimisation, for many lines at once:
/// for each position `q` in `0..len`,
/// `dst[q * width + x] = min over p in first..first + count of row(p)[x] + cost[|q - p|]`,
/// where `row(p)` is the `width` values at position `p` (rows outside that range hold only
/// `INF`). It has no branches and runs across lines (`x`), so it vectorises; it costs
/// `count` candidates per voxel, which for short runs is less than FH's envelope upkeep and
/// needs no transposes. Four outputs are formed together, so each row read serves four.
#[inline(always)]
fn envelope_rows_impl<'a>(
    row: impl Fn(usize) -> &'a [f32],
    first: usize,
    count: usize,
    cost: &[f32],
    dst: &mut [f32],
    width: usize,
) {
    const Q: usize = 4;
    /// Lanes `x0..x0 + CH` of `Q` output rows; `costs[i][j]` is the cost from candidate row
    /// `first + i` to output row `j`.
    #[inline(always)]
    fn block<'a, const CH: usize>(
        row: &impl Fn(usize) -> &'a [f32],
        first: usize,
        costs: &[[f32; Q]],
        x0: usize,
        outs: &mut [&mut [f32]; Q],
    ) {
        #[inline(always)]
        fn lower<const CH: usize>(acc: &mut [f32; CH], r: &[f32; CH], c: f32) {
            for k in 0..CH {
                let v = r[k] + c;
                acc[k] = if v < acc[k] { v } else { acc[k] };
            }
        }
        let (mut a0, mut a1, mut a2, mut a3) = ([INF; CH], [INF; CH], [INF; CH], [INF; CH]);
        for (p, c) in (first..).zip(costs) {
            let r: &[f32; CH] = row(p)[x0..x0 + CH].try_into().expect("chunk");
            lower(&mut a0, r, c[0]);
            lower(&mut a1, r, c[1]);
            lower(&mut a2, r, c[2]);
            lower(&mut a3, r, c[3]);
        }
        for (o, a) in outs.iter_mut().zip([a0, a1, a2, a3]) {
            o[x0..x0 + CH].copy_from_slice(&a);
        }
    }
    #[inline(always)]
    fn sweep<'a, const CH: usize>(
        row: &impl Fn(usize) -> &'a [f32],
        first: usize,
        costs: &[[f32; Q]],
        width: usize,
        outs: &mut [&mut [f32]; Q],
    ) {
        let mut x0 = 0;
        while x0 + CH <= width {
            block::<CH>(row, first, costs, x0, outs);
            x0 += CH;
        }
        if x0 < width {
            // The last chunk overlaps the one before: it rewrites a few values with equal ones.
            block::<CH>(row, first, costs, width - CH, outs);
        }
    }
    if width == 0 {
        return;
    }
    let len = dst.len() / width;
    let mut costs: Vec<[f32; Q]> = vec![[0.0; Q]; count];
    let mut spare = [vec![0f32; width], vec![0f32; width], vec![0f32; width]];
    let mut q0 = 0;
    while q0 < len {
        let n = Q.min(len - q0);
        for (i, c) in costs.iter_mut().enumerate() {
            // Rows past the end (a short last group) get a copy of the last real one.
            *c = std::array::from_fn(|j| cost[(q0 + j.min(n - 1)).abs_diff(first + i)]);
        }
        let (head, rest) = dst[q0 * width..].split_at_mut(width);
        let mut it = rest.chunks_exact_mut(width).take(n - 1);
        let mut sp = spare.iter_mut();
        let mut next = || match it.next() {
            Some(o) => o,
            None => sp.next().expect("three spares").as_mut_slice(),
        };
        let mut outs: [&mut [f32]; Q] = [head, next(), next(), next()];
        if width >= 16 {
            sweep::<16>(&row, first, &costs, width, &mut outs);
        } else if width >= 4 {
            sweep::<4>(&row, first, &costs, width, &mut outs);
        } else {
            sweep::<1>(&row, first, &costs, width, &mut outs);
        }
        q0 += n;
    }
}

/// [`envelope_rows_impl`] compiled for `simd` (the caller checked that the CPU has it).
fn envelope_rows<'a>(
    simd: Simd,
    row: impl Fn(usize) -> &'a [f32],
    first: usize,
    count: usize,
    cost: &[f32],
    dst: &mut [f32],
    width: usize,
) {
    #[cfg(target_arch = "x86_64")]
    {
        /// `envelope_rows_impl` compiled with a target feature enabled.
        macro_rules! compiled_with {
            ($name:ident, $feature:literal) => {
                #[target_feature(enable = $feature)]
                fn $name<'a>(
                    row: impl Fn(usize) -> &'a [f32],
                    first: usize,
                    count: usize,
                    cost: &[f32],
                    dst: &mut [f32],
                    width: usize,
                ) {
                    envelope_rows_impl(row, first, count, cost, dst, width)
                }
            };
        }
        compiled_with!(avx512, "avx512f");
        compiled_with!(avx2, "avx2");
        assert!(simd <= Simd::detect(), "{simd:?} is not available");
        match simd {
            // SAFETY: the CPU has the feature (asserted above).
            Simd::Avx512 => return unsafe { avx512(row, first, count, cost, dst, width) },
            Simd::Avx2 => return unsafe { avx2(row, first, count, cost, dst, width) },
            Simd::Portable => {}
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = simd;
    envelope_rows_impl(row, first, count, cost, dst, width)
}

/// The three passes; with `take_sqrt` the last pass writes distances instead of squares.
/// `method` picks the algorithm per pass ([`Method::auto`] in the public functions).
#[doc(hidden)]
pub fn edt_passes(
    buf: &mut [f32],
    dims: [usize; 3],
    spacing: [f64; 3],
    features: Option<BBox>,
    take_sqrt: bool,
    method: Method,
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
    let y_rows = bb.hi[1] + 1 - bb.lo[1];
    let y_brute = y_rows <= method.brute_max;
    let y_cost = sq_costs(ny, spacing[1]);
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
                if ny == 1 {
                    return;
                }
                if y_brute {
                    blk.resize(slice, 0.0);
                    let src: &[f32] = sl;
                    envelope_rows(
                        method.simd,
                        |y| &src[y * nx..(y + 1) * nx],
                        bb.lo[1],
                        y_rows,
                        &y_cost,
                        blk,
                        nx,
                    );
                    sl.copy_from_slice(blk);
                } else {
                    strided_pass(sl, ny, nx, sy, blk, false);
                }
            },
        );
    // Pass 3, along z, on blocks of whole x rows: for a block of rows y0..y1, the voxels
    // of one z are contiguous, so a block is `nz` runs of `nx * (y1 - y0)` values.
    if nz == 1 && !take_sqrt {
        return;
    }
    let z_rows = bb.hi[2] + 1 - bb.lo[2];
    let z_brute = nz > 1 && z_rows <= method.brute_max;
    let z_cost = sq_costs(nz, spacing[2]);
    let by = (PASS3_RUN / nx).clamp(1, ny);
    let ptr = SyncPtr(buf.as_mut_ptr());
    (0..ny.div_ceil(by))
        .into_par_iter()
        .with_min_len(min_len(nx * by * nz))
        .for_each_init(
            || (Scratch::new(nz, spacing[2]), Vec::new(), Vec::new()),
            |(sc, tile, blk), b| {
                let p = ptr;
                let y0 = b * by;
                let w = nx * (by.min(ny - y0));
                let at = |z: usize| nx * (y0 + ny * z);
                tile.resize(w * nz, 0.0);
                if z_brute {
                    // SAFETY: block b reads and writes only its rows y0..y0 + by of every z,
                    // disjoint between blocks; the shared borrows end before the writes.
                    envelope_rows(
                        method.simd,
                        |z| unsafe { std::slice::from_raw_parts(p.0.add(at(z)), w) },
                        bb.lo[2],
                        z_rows,
                        &z_cost,
                        tile,
                        w,
                    );
                } else {
                    for z in 0..nz {
                        // SAFETY: as above.
                        let src = unsafe { std::slice::from_raw_parts(p.0.add(at(z)), w) };
                        tile[z * w..(z + 1) * w].copy_from_slice(src);
                    }
                    strided_pass(tile, nz, w, sc, blk, false);
                }
                for z in 0..nz {
                    // SAFETY: as above.
                    let dst = unsafe { std::slice::from_raw_parts_mut(p.0.add(at(z)), w) };
                    let src = &tile[z * w..(z + 1) * w];
                    if take_sqrt {
                        dst.iter_mut().zip(src).for_each(|(d, s)| *d = s.sqrt());
                    } else {
                        dst.copy_from_slice(src);
                    }
                }
            },
        );
}

/// Values per run in pass 3: blocks of x rows this long share each read of a z position.
const PASS3_RUN: usize = 1024;

/// Distance (not squared) transform, in place; see [`sq_edt_in_place`].
pub fn edt_in_place(buf: &mut [f32], dims: [usize; 3], spacing: [f64; 3], features: Option<BBox>) {
    edt_passes(buf, dims, spacing, features, true, Method::auto());
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
    if slice == 0 {
        return None;
    }
    let per_slice: Vec<Option<BBox>> = labels
        .par_chunks(slice)
        .with_min_len(min_len(slice))
        .enumerate()
        .map(|(z, sl)| {
            let mut b: Option<BBox> = None;
            for (y, row) in sl.chunks_exact(nx).enumerate() {
                // A branch-free test first (it vectorises); most rows miss the organ.
                if !row.iter().fold(false, |a, &l| a | (l == label)) {
                    continue;
                }
                let x0 = row.iter().position(|&l| l == label).unwrap_or(0);
                let x1 = row.iter().rposition(|&l| l == label).unwrap_or(0);
                let bb = b.get_or_insert(BBox {
                    lo: [x0, y, z],
                    hi: [x1, y, z],
                });
                bb.lo[0] = bb.lo[0].min(x0);
                bb.hi[0] = bb.hi[0].max(x1);
                bb.hi[1] = y;
            }
            b
        })
        .collect();
    per_slice.into_iter().flatten().reduce(|a, b| BBox {
        lo: std::array::from_fn(|k| a.lo[k].min(b.lo[k])),
        hi: std::array::from_fn(|k| a.hi[k].max(b.hi[k])),
    })
}

/// The largest value of `v` below `INF` (0 if there is none). Sixteen running maxima side by
/// side, so that the loop vectorises.
fn finite_max(v: &[f32]) -> f32 {
    fn lanes(c: &[f32]) -> f32 {
        let mut acc = [0f32; 16];
        let mut it = c.chunks_exact(16);
        for ch in &mut it {
            for k in 0..16 {
                let x = if ch[k] < INF { ch[k] } else { 0.0 };
                acc[k] = if x > acc[k] { x } else { acc[k] };
            }
        }
        let tail = it.remainder().iter().filter(|x| **x < INF);
        tail.chain(&acc).fold(0f32, |m, &x| m.max(x))
    }
    v.par_chunks(ELEMS_PER_JOB)
        .map(lanes)
        .reduce(|| 0.0, f32::max)
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
    signed_map_with(labels, dims, spacing, label, scale, Method::auto())
}

/// [`signed_map`] with the passes' algorithm given.
#[doc(hidden)]
pub fn signed_map_with(
    labels: &[u8],
    dims: [usize; 3],
    spacing: [f64; 3],
    label: u8,
    scale: Scale,
    method: Method,
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
    let mut out = vec![0f32; n];
    out.par_chunks_mut(ELEMS_PER_JOB)
        .zip(labels.par_chunks(ELEMS_PER_JOB))
        .for_each(|(o, l)| {
            for (o, &l) in o.iter_mut().zip(l) {
                *o = if l == label { 0.0 } else { INF };
            }
        });
    edt_passes(&mut out, dims, spacing, Some(bb), true, method);
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
        edt_passes(&mut inside, sub, spacing, None, false, method);
    }
    // Maxima for normalisation (over S for the inside, over the complement outside).
    let max_in = finite_max(&inside).sqrt();
    let max_out = finite_max(&out);
    let nx = dims[0];
    let ny = dims[1];
    let d_in = match scale {
        Scale::Millimetres => 1.0,
        Scale::Normalized => max_in,
    };
    if scale == Scale::Normalized {
        // Outside voxels (organ voxels are 0 here and are rewritten below). In f64 the
        // product of the largest value and its reciprocal rounds to exactly 1.
        let r = 1.0 / max_out as f64;
        out.par_chunks_mut(ELEMS_PER_JOB).for_each(|c| {
            for o in c {
                *o = (*o as f64 * r) as f32;
            }
        });
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
                        -(inside[li].sqrt() / d_in)
                    };
                }
            }
        });
    Some(out)
}

#[cfg(test)]
mod tests;

//! Resampling a volume onto another grid, in world coordinates.
//!
//! One function, [`resample_to_grid`], serves both directions: forward (onto a grid of a new
//! spacing) and inverse (a prediction back onto the patient's original grid, undoing crop and
//! resample at once), because every volume carries its exact voxel-to-world affine.

use crate::volume::{Grid, Volume, VoxelData};
use rayon::prelude::*;

/// How intensities are interpolated.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    Default,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum ImageInterp {
    Nearest,
    #[default]
    Linear,
    /// Cubic B-spline (with the exact prefilter), as SimpleITK's `sitkBSpline`.
    Bspline,
}

/// How label maps are interpolated.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    Default,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum LabelInterp {
    Nearest,
    /// Each label's indicator interpolated linearly, then the arg-max (nnU-Net's way):
    /// smoother boundaries than nearest neighbour.
    #[default]
    Linear,
}

/// The grid with spacing `target` (per axis; `None` keeps that axis) covering the same field
/// of view: dims are rounded, and the origin moves so that the grid's outer edge stays put
/// (half a voxel of the old spacing minus half of the new).
pub fn grid_with_spacing(g: &Grid, target: [Option<f64>; 3]) -> Grid {
    let sp = g.spacing();
    let mut out = *g;
    for a in 0..3 {
        let Some(t) = target[a] else { continue };
        let n = ((g.dims[a] as f64 * sp[a] / t).round() as usize).max(1);
        out.dims[a] = n;
        let scale = t / sp[a];
        for r in 0..3 {
            let dir = g.affine[r][a];
            out.affine[r][a] = dir * scale;
            // Voxel 0 of the new grid sits at old continuous index (0.5 * scale - 0.5).
            out.affine[r][3] += dir * (0.5 * scale - 0.5);
        }
    }
    out
}

/// Maps target voxel indices to source continuous voxel coordinates: `src = M * [i, j, k, 1]`.
fn index_map(src: &Grid, dst: &Grid) -> Option<[[f64; 4]; 3]> {
    let inv = src.inverse()?;
    let a = &dst.affine;
    Some(std::array::from_fn(|r| {
        let mut row = [0.0; 4];
        for (c, cell) in row.iter_mut().enumerate() {
            *cell = (0..3).map(|k| inv[r][k] * a[k][c]).sum::<f64>()
                + if c == 3 { inv[r][3] } else { 0.0 };
        }
        row
    }))
}

/// Cubic B-spline prefilter along one axis (mirror boundaries; Unser's recursive filter).
fn prefilter_axis(c: &mut [f32], dims: [usize; 3], axis: usize) {
    let n = dims[axis];
    if n < 2 {
        return;
    }
    let z = 3f64.sqrt() - 2.0;
    let lambda = (1.0 - z) * (1.0 - 1.0 / z);
    let stride = match axis {
        0 => 1,
        1 => dims[0],
        _ => dims[0] * dims[1],
    };
    let lines: Vec<usize> = (0..dims[0] * dims[1] * dims[2])
        .filter(|&i| (i / stride) % n == 0)
        .collect();
    let ptr = c.as_mut_ptr() as usize;
    lines.par_iter().for_each(|&start| {
        let p = ptr as *mut f32;
        let mut line: Vec<f64> = (0..n)
            .map(|k| unsafe { *p.add(start + k * stride) } as f64 * lambda)
            .collect();
        // Causal initialisation (truncated sum, mirror boundary).
        let horizon = n.min(30);
        let mut sum = line[0];
        let mut zk = z;
        for v in line.iter().take(horizon).skip(1) {
            sum += zk * v;
            zk *= z;
        }
        line[0] = sum;
        for k in 1..n {
            line[k] += z * line[k - 1];
        }
        line[n - 1] = (z / (z * z - 1.0)) * (line[n - 1] + z * line[n - 2]);
        for k in (0..n - 1).rev() {
            line[k] = z * (line[k + 1] - line[k]);
        }
        for (k, v) in line.iter().enumerate() {
            // SAFETY: lines are disjoint (distinct starts along a different axis).
            unsafe { *p.add(start + k * stride) = *v as f32 };
        }
    });
}

fn bspline_weights(t: f64) -> [f64; 4] {
    let u = 1.0 - t;
    [
        u * u * u / 6.0,
        (3.0 * t * t * t - 6.0 * t * t + 4.0) / 6.0,
        (-3.0 * t * t * t + 3.0 * t * t + 3.0 * t + 1.0) / 6.0,
        t * t * t / 6.0,
    ]
}

#[inline]
fn mirror(i: i64, n: usize) -> usize {
    let n = n as i64;
    if n == 1 {
        return 0;
    }
    let period = 2 * (n - 1);
    let mut m = i.rem_euclid(period);
    if m >= n {
        m = period - m;
    }
    m as usize
}

/// One target index's view of one source axis: where it lands and the voxels around it.
#[derive(Debug, Clone, Copy, Default)]
struct Tap {
    /// Continuous source index.
    p: f64,
    /// Within the source's field of view, which ends at its voxels' edges (half a voxel
    /// beyond the first and last centres).
    inside: bool,
    /// The nearest source voxel.
    near: usize,
    /// The source voxels below and above, clamped to the axis.
    at: [usize; 2],
    /// Their linear weights: `1 - t` and `t`.
    w: [f64; 2],
}

fn tap(p: f64, n: usize) -> Tap {
    let clampi = |v: f64| (v.max(0.0) as usize).min(n - 1);
    let f = p.floor();
    let t = p - f;
    Tap {
        p,
        inside: p >= -0.5 && p <= n as f64 - 0.5,
        near: clampi(p.round()),
        at: [clampi(f), clampi(f + 1.0)],
        w: [1.0 - t, t],
    }
}

/// Where every target voxel looks in the source.
struct Sampler<'g, R> {
    /// Target dims.
    dims: [usize; 3],
    /// Source dims.
    src_dims: [usize; 3],
    /// Per-axis taps, when the index map is axis-aligned.
    tables: Option<[Vec<Tap>; 3]>,
    /// Otherwise: source coordinates of voxel (0, y, z), and their change per step in x.
    row_start: &'g R,
    step: [f64; 3],
}

impl<R: Fn(usize, usize) -> [f64; 3] + Sync> Sampler<'_, R> {
    /// `f` of every target voxel's taps, one row of x at a time in parallel.
    fn each<T: Send + Copy + Default>(&self, f: impl Fn([&Tap; 3]) -> T + Sync) -> Vec<T> {
        let [nx, ny, nz] = self.dims;
        let mut out = vec![T::default(); nx * ny * nz];
        out.par_chunks_mut(nx).enumerate().for_each(|(row, o)| {
            let (y, z) = (row % ny, row / ny);
            match &self.tables {
                Some(t) => {
                    let (ty, tz) = (&t[1][y], &t[2][z]);
                    for (v, tx) in o.iter_mut().zip(&t[0]) {
                        *v = f([tx, ty, tz]);
                    }
                }
                None => {
                    let s0 = (self.row_start)(y, z);
                    for (x, v) in o.iter_mut().enumerate() {
                        let xf = x as f64;
                        let t: [Tap; 3] = std::array::from_fn(|a| {
                            tap(s0[a] + self.step[a] * xf, self.src_dims[a])
                        });
                        *v = f([&t[0], &t[1], &t[2]]);
                    }
                }
            }
        });
        out
    }
}

/// Resamples `vol` onto `dst`. Outside the source's field of view: `fill`. Labels (u8
/// volumes) use `labels`; other types use `image` and keep their type (rounded for i16).
pub fn resample_to_grid(
    vol: &Volume,
    dst: &Grid,
    image: ImageInterp,
    labels: LabelInterp,
    fill: f32,
) -> Result<Volume, String> {
    resample_impl(vol, dst, image, labels, fill, true)
}

/// [`resample_to_grid`]; `per_axis` allows the per-axis tables for axis-aligned maps (the
/// tests compare both ways).
fn resample_impl(
    vol: &Volume,
    dst: &Grid,
    image: ImageInterp,
    labels: LabelInterp,
    fill: f32,
    per_axis: bool,
) -> Result<Volume, String> {
    let m = index_map(&vol.grid(), dst).ok_or("the source volume's affine is singular")?;
    let [sx, sy, sz] = vol.dims;
    // Source coordinates of a target voxel, computed per row: start + x * step.
    let row_start = |y: usize, z: usize| -> [f64; 3] {
        std::array::from_fn(|r| m[r][1] * y as f64 + m[r][2] * z as f64 + m[r][3])
    };
    let step: [f64; 3] = std::array::from_fn(|r| m[r][0]);
    // Source coordinate r depends on target index r alone when the map has no off-diagonal
    // terms (the usual case: a new spacing, same orientation). Then each coordinate comes from
    // a table per axis, equal bit for bit to the general formula (the zero terms add nothing).
    let axis_aligned = per_axis && (0..3).all(|r| (0..3).all(|c| r == c || m[r][c] == 0.0));
    let sampler = Sampler {
        dims: dst.dims,
        src_dims: vol.dims,
        tables: axis_aligned.then(|| {
            std::array::from_fn(|a| {
                (0..dst.dims[a])
                    .map(|i| tap(m[a][a] * i as f64 + m[a][3], vol.dims[a]))
                    .collect()
            })
        }),
        row_start: &row_start,
        step,
    };
    let idx = |x: usize, y: usize, z: usize| x + sx * (y + sy * z);
    let spacing = Grid {
        dims: dst.dims,
        affine: dst.affine,
    }
    .spacing();
    let out_vol = |data: VoxelData| Volume {
        dims: dst.dims,
        spacing,
        affine: dst.affine,
        data,
    };

    if let VoxelData::U8(src) = &vol.data {
        let label_at = |[tx, ty, tz]: [&Tap; 3]| -> u8 {
            if !(tx.inside && ty.inside && tz.inside) {
                return fill as u8;
            }
            match labels {
                LabelInterp::Nearest => src[idx(tx.near, ty.near, tz.near)],
                LabelInterp::Linear => {
                    let mut best = [(0u8, 0f64); 8];
                    let mut used = 0;
                    for c in 0..8 {
                        let o = [c & 1, (c >> 1) & 1, (c >> 2) & 1];
                        let w = tx.w[o[0]] * ty.w[o[1]] * tz.w[o[2]];
                        if w == 0.0 {
                            continue;
                        }
                        let l = src[idx(tx.at[o[0]], ty.at[o[1]], tz.at[o[2]])];
                        match best[..used].iter_mut().find(|(lab, _)| *lab == l) {
                            Some(e) => e.1 += w,
                            None => {
                                best[used] = (l, w);
                                used += 1;
                            }
                        }
                    }
                    // Ties go to the lower label: deterministic.
                    let mut pick = (0u8, -1.0f64);
                    for &(l, w) in &best[..used] {
                        if w > pick.1 + 1e-12 || ((w - pick.1).abs() <= 1e-12 && l < pick.0) {
                            pick = (l, w);
                        }
                    }
                    pick.0
                }
            }
        };
        let out = sampler.each(label_at);
        return Ok(out_vol(VoxelData::U8(out)));
    }

    let mut src = vol.to_f32();
    if image == ImageInterp::Bspline {
        for a in 0..3 {
            prefilter_axis(&mut src, vol.dims, a);
        }
    }
    let value_at = |[tx, ty, tz]: [&Tap; 3]| -> f32 {
        if !(tx.inside && ty.inside && tz.inside) {
            return fill;
        }
        match image {
            ImageInterp::Nearest => src[idx(tx.near, ty.near, tz.near)],
            ImageInterp::Linear => {
                let mut acc = 0.0;
                for c in 0..8 {
                    let o = [c & 1, (c >> 1) & 1, (c >> 2) & 1];
                    let w = tx.w[o[0]] * ty.w[o[1]] * tz.w[o[2]];
                    if w != 0.0 {
                        acc += w * src[idx(tx.at[o[0]], ty.at[o[1]], tz.at[o[2]])] as f64;
                    }
                }
                acc as f32
            }
            ImageInterp::Bspline => {
                let p = [tx.p, ty.p, tz.p];
                let f: [i64; 3] = std::array::from_fn(|a| p[a].floor() as i64);
                let w: [[f64; 4]; 3] = std::array::from_fn(|a| bspline_weights(p[a] - f[a] as f64));
                let mut acc = 0.0;
                for (dz, wz) in w[2].iter().enumerate() {
                    let z = mirror(f[2] - 1 + dz as i64, sz);
                    for (dy, wy) in w[1].iter().enumerate() {
                        let y = mirror(f[1] - 1 + dy as i64, sy);
                        for (dx, wx) in w[0].iter().enumerate() {
                            let x = mirror(f[0] - 1 + dx as i64, sx);
                            acc += wx * wy * wz * src[idx(x, y, z)] as f64;
                        }
                    }
                }
                acc as f32
            }
        }
    };
    let vals = sampler.each(value_at);
    let data = match vol.data {
        VoxelData::I16(_) => VoxelData::I16(
            vals.iter()
                .map(|v| v.round().clamp(i16::MIN as f32, i16::MAX as f32) as i16)
                .collect(),
        ),
        _ => VoxelData::F32(vals),
    };
    Ok(out_vol(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sphere(dims: [usize; 3], spacing: [f64; 3], r: f64) -> Volume {
        let c: [f64; 3] = std::array::from_fn(|a| dims[a] as f64 * spacing[a] / 2.0);
        let data: Vec<u8> = (0..dims[0] * dims[1] * dims[2])
            .map(|i| {
                let p = [
                    (i % dims[0]) as f64 * spacing[0],
                    ((i / dims[0]) % dims[1]) as f64 * spacing[1],
                    (i / (dims[0] * dims[1])) as f64 * spacing[2],
                ];
                ((0..3).map(|a| (p[a] - c[a]).powi(2)).sum::<f64>() <= r * r) as u8
            })
            .collect();
        Volume::new(dims, spacing, VoxelData::U8(data)).unwrap()
    }

    fn count(v: &Volume) -> usize {
        let VoxelData::U8(d) = &v.data else { panic!() };
        d.iter().filter(|&&x| x == 1).count()
    }

    fn dice(a: &Volume, b: &Volume) -> f64 {
        let (VoxelData::U8(x), VoxelData::U8(y)) = (&a.data, &b.data) else {
            panic!()
        };
        let inter = x
            .iter()
            .zip(y)
            .filter(|(p, q)| **p == 1 && **q == 1)
            .count();
        2.0 * inter as f64 / (count(a) + count(b)) as f64
    }

    #[test]
    fn sphere_keeps_its_volume_and_round_trips() {
        // A 20 mm sphere at 0.8 x 0.8 x 2.5 mm, resampled to 1.5 mm isotropic.
        let s = sphere([80, 80, 28], [0.8, 0.8, 2.5], 20.0);
        let exact = 4.0 / 3.0 * std::f64::consts::PI * 20f64.powi(3);
        let mm3 = |v: &Volume| count(v) as f64 * v.spacing.iter().product::<f64>();
        assert!((mm3(&s) - exact).abs() / exact < 0.02);
        let target = grid_with_spacing(&s.grid(), [Some(1.5), Some(1.5), Some(1.5)]);
        for interp in [LabelInterp::Linear, LabelInterp::Nearest] {
            let r = resample_to_grid(&s, &target, ImageInterp::Linear, interp, 0.0).unwrap();
            assert!((r.spacing[0] - 1.5).abs() < 1e-9);
            let rel = (mm3(&r) - mm3(&s)).abs() / mm3(&s);
            assert!(
                rel < 0.01,
                "{interp:?}: volume changed by {:.2}%",
                rel * 100.0
            );
            let back = resample_to_grid(&r, &s.grid(), ImageInterp::Linear, interp, 0.0).unwrap();
            assert_eq!(back.dims, s.dims);
            assert!(back.grid().same_as(&s.grid(), 1e-9));
            let d = dice(&back, &s);
            // Nearest neighbour loses a shell of voxels twice; the default (linear) must not.
            let want = if interp == LabelInterp::Linear {
                0.98
            } else {
                0.95
            };
            assert!(d > want, "{interp:?}: round-trip Dice {d}");
        }
    }

    /// The per-axis tables give exactly what the per-voxel computation gives, for every
    /// interpolation, on grids that shrink, grow, shift and overhang the source.
    #[test]
    fn per_axis_tables_equal_the_general_path() {
        let dims = [13, 9, 7];
        let n = dims[0] * dims[1] * dims[2];
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let img = Volume::new(
            dims,
            [0.9, 1.1, 2.5],
            VoxelData::F32((0..n).map(|_| (next() % 2000) as f32 - 1000.0).collect()),
        )
        .unwrap();
        let lab = img.with_data(VoxelData::U8((0..n).map(|_| (next() % 4) as u8).collect()));
        let lab = lab.unwrap();
        let mut checked = 0;
        for target in [
            [Some(1.0), Some(1.0), Some(1.0)],
            [Some(0.35), None, Some(4.0)],
            [Some(2.2), Some(0.6), None],
        ] {
            let mut g = grid_with_spacing(&img.grid(), target);
            // Shift by a fraction of a voxel and widen, so that some voxels fall outside.
            g.affine[0][3] -= 1.3;
            g.dims[1] += 3;
            for im in [
                ImageInterp::Nearest,
                ImageInterp::Linear,
                ImageInterp::Bspline,
            ] {
                for lb in [LabelInterp::Nearest, LabelInterp::Linear] {
                    for v in [&img, &lab] {
                        let fast = resample_impl(v, &g, im, lb, -7.0, true).unwrap();
                        let slow = resample_impl(v, &g, im, lb, -7.0, false).unwrap();
                        assert_eq!(fast, slow, "{target:?} {im:?} {lb:?}");
                        checked += 1;
                    }
                }
            }
        }
        assert_eq!(checked, 36);
    }

    #[test]
    fn grid_keeps_the_field_of_view() {
        let g = Grid {
            dims: [100, 50, 20],
            affine: [
                [0.8, 0.0, 0.0, 10.0],
                [0.0, -0.8, 0.0, 5.0],
                [0.0, 0.0, 2.5, -3.0],
                [0.0, 0.0, 0.0, 1.0],
            ],
        };
        let t = grid_with_spacing(&g, [Some(1.6), None, Some(1.25)]);
        assert_eq!(t.dims, [50, 50, 40]);
        // Outer edge of voxel 0 unchanged: origin - spacing/2 along each axis direction.
        assert!((t.affine[0][3] - 0.8 - (10.0 - 0.4)).abs() < 1e-9);
        assert!((t.affine[2][3] - 0.625 - (-3.0 - 1.25)).abs() < 1e-9);
        assert_eq!(t.affine[1], g.affine[1]);
    }

    #[test]
    fn linear_and_bspline_reproduce_smooth_images() {
        let dims = [24, 20, 16];
        let f = |x: f64, y: f64, z: f64| (x * 0.2).sin() + (y * 0.15).cos() + 0.05 * z;
        let data: Vec<f32> = (0..dims[0] * dims[1] * dims[2])
            .map(|i| f((i % 24) as f64, ((i / 24) % 20) as f64, (i / 480) as f64) as f32)
            .collect();
        let v = Volume::new(dims, [1.0; 3], VoxelData::F32(data)).unwrap();
        let target = grid_with_spacing(&v.grid(), [Some(0.7), Some(0.7), Some(0.7)]);
        for (interp, tol) in [(ImageInterp::Linear, 0.02), (ImageInterp::Bspline, 0.003)] {
            let r = resample_to_grid(&v, &target, interp, LabelInterp::Nearest, 0.0).unwrap();
            let rg = r.grid();
            let mut worst = 0f64;
            for i in 0..r.len() {
                let (x, y, z) = (
                    i % r.dims[0],
                    (i / r.dims[0]) % r.dims[1],
                    i / (r.dims[0] * r.dims[1]),
                );
                let w = rg.world([x as f64, y as f64, z as f64]);
                // Stay away from the borders, where boundary handling dominates.
                if (0..3).any(|a| w[a] < 3.0 || w[a] > dims[a] as f64 - 4.0) {
                    continue;
                }
                worst = worst.max((r.data.get_f32(i) as f64 - f(w[0], w[1], w[2])).abs());
            }
            assert!(worst < tol, "{interp:?}: worst error {worst}");
        }
    }
}

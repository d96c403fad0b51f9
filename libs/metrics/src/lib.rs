//! Segmentation metrics in millimetres: Dice, HD95, ASSD, surface Dice, volumes (and
//! contours whose volume is far from their organ's: [`volumes`]).
//!
//! This crate knows nothing of volumes' geometry beyond spacing, nor of files, pipelines or
//! the cache: two label arrays and a spacing in, numbers out.
//!
//! Surface distances come from exact distance transforms (`shapeflow-edt`), never from
//! pairwise point search, computed on the bounding box of both masks grown by one voxel:
//! every feature lies in that box, so the distances are exact, and small organs in large
//! scans cost little.
//!
//! Surface definition ("boundary voxels", as MONAI and medpy compute HD95 and ASSD): the
//! voxels of a mask with at least one face neighbour outside it, where outside the volume
//! counts as outside (scipy's `binary_erosion` with `border_value=0`). The distance of a
//! surface voxel of A to B is the distance to the nearest surface voxel of B.

pub mod volumes;
pub use volumes::{volume_outliers, VolumeOutlier, OUTLIER_MIN_CASES};

use shapeflow_edt::{edt_in_place, BBox, INF};

/// How the two directed distance sets are combined.
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
pub enum Convention {
    /// MONAI 1.x: HD95 is the larger of the two directed 95th percentiles; ASSD is the mean
    /// of both directions' distances pooled.
    #[default]
    Monai,
    /// medpy 0.5: HD95 is the 95th percentile of both directions pooled; ASSD is the mean of
    /// the two directed means.
    Medpy,
}

/// Which surface the distances are measured on.
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
#[serde(rename_all = "kebab-case")]
pub enum Surface {
    /// Boundary voxels (MONAI, medpy).
    #[default]
    BoundaryVoxels,
    /// Area-weighted surface elements on the voxel-corner grid (DeepMind `surface-distance`).
    SurfaceElements,
}

/// Whether an organ could be compared in a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Both masks non-empty: every metric is a number.
    Compared,
    /// Both empty: perfect agreement (Dice 1, distances 0).
    BothEmpty,
    /// The reference is empty, the prediction is not: Dice 0, distances infinite.
    EmptyReference,
    /// The prediction is empty, the reference is not: Dice 0, distances infinite.
    EmptyPrediction,
}

/// The metrics of one organ in one case. Infinite distances are kept infinite (and the
/// summaries count them) rather than turned into NaN.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct OrganMetrics {
    pub outcome: Outcome,
    pub dice: f64,
    /// mm; +inf when one mask is empty.
    pub hd95: f64,
    /// mm; +inf when one mask is empty.
    pub assd: f64,
    /// Hausdorff distance (100th percentile), mm.
    pub hd: f64,
    /// Fraction of both surfaces within `tolerance_mm` of the other surface.
    pub surface_dice: f64,
    pub tolerance_mm: f64,
    pub reference_mm3: f64,
    pub prediction_mm3: f64,
    /// (prediction - reference) / reference; +inf when the reference is empty.
    pub volume_difference: f64,
}

/// numpy's default (linear) percentile of sorted values.
pub fn percentile_sorted(sorted: &[f64], p: f64) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        1 => sorted[0],
        n => {
            let pos = (n - 1) as f64 * p / 100.0;
            let lo = pos.floor() as usize;
            let hi = (lo + 1).min(n - 1);
            sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
        }
    }
}

fn bbox_union(a: &[bool], b: &[bool], dims: [usize; 3]) -> Option<BBox> {
    let mut lo = dims;
    let mut hi = [0usize; 3];
    let mut any = false;
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        if x || y {
            let c = [
                i % dims[0],
                (i / dims[0]) % dims[1],
                i / (dims[0] * dims[1]),
            ];
            for k in 0..3 {
                lo[k] = lo[k].min(c[k]);
                hi[k] = hi[k].max(c[k]);
            }
            any = true;
        }
    }
    any.then_some(BBox { lo, hi })
}

/// Surface voxels of `m` (dims `d`): in `m`, with a face neighbour outside `m` or outside
/// the array.
fn surface(m: &[bool], d: [usize; 3]) -> Vec<bool> {
    let (nx, ny, nz) = (d[0], d[1], d[2]);
    let s = nx * ny;
    (0..m.len())
        .map(|i| {
            if !m[i] {
                return false;
            }
            let (x, y, z) = (i % nx, (i / nx) % ny, i / s);
            x == 0
                || x + 1 == nx
                || y == 0
                || y + 1 == ny
                || z == 0
                || z + 1 == nz
                || !m[i - 1]
                || !m[i + 1]
                || !m[i - nx]
                || !m[i + nx]
                || !m[i - s]
                || !m[i + s]
        })
        .collect()
}

/// Distances (mm) from each surface voxel of `from` to the nearest surface voxel of `to`.
fn directed(from: &[bool], to: &[bool], d: [usize; 3], spacing: [f64; 3]) -> Vec<f64> {
    let mut buf: Vec<f32> = to.iter().map(|&t| if t { 0.0 } else { INF }).collect();
    edt_in_place(&mut buf, d, spacing, None);
    from.iter()
        .zip(&buf)
        .filter(|(f, _)| **f)
        .map(|(_, &v)| v as f64)
        .collect()
}

/// Crops `m` to `b` grown by one voxel (clamped); voxels outside the volume stay outside.
fn crop(m: &[bool], dims: [usize; 3], b: BBox) -> (Vec<bool>, [usize; 3]) {
    let lo: [usize; 3] = std::array::from_fn(|k| b.lo[k].saturating_sub(1));
    let hi: [usize; 3] = std::array::from_fn(|k| (b.hi[k] + 1).min(dims[k] - 1));
    let sub = [hi[0] - lo[0] + 1, hi[1] - lo[1] + 1, hi[2] - lo[2] + 1];
    let mut out = Vec::with_capacity(sub[0] * sub[1] * sub[2]);
    for z in lo[2]..=hi[2] {
        for y in lo[1]..=hi[1] {
            let row = dims[0] * (y + dims[1] * z);
            out.extend_from_slice(&m[row + lo[0]..=row + hi[0]]);
        }
    }
    (out, sub)
}

/// Compares prediction `pred` with reference `gt` (same grid, `spacing` in mm).
pub fn organ_metrics(
    gt: &[bool],
    pred: &[bool],
    dims: [usize; 3],
    spacing: [f64; 3],
    tolerance_mm: f64,
    convention: Convention,
) -> OrganMetrics {
    organ_metrics_with(
        gt,
        pred,
        dims,
        spacing,
        tolerance_mm,
        convention,
        Surface::BoundaryVoxels,
    )
}

/// [`organ_metrics`] with a choice of surface definition.
pub fn organ_metrics_with(
    gt: &[bool],
    pred: &[bool],
    dims: [usize; 3],
    spacing: [f64; 3],
    tolerance_mm: f64,
    convention: Convention,
    surface_def: Surface,
) -> OrganMetrics {
    assert_eq!(gt.len(), pred.len(), "masks differ in size");
    let voxel_mm3 = spacing.iter().product::<f64>();
    let n_gt = gt.iter().filter(|&&v| v).count();
    let n_pred = pred.iter().filter(|&&v| v).count();
    let inter = gt.iter().zip(pred).filter(|(a, b)| **a && **b).count();
    let reference_mm3 = n_gt as f64 * voxel_mm3;
    let prediction_mm3 = n_pred as f64 * voxel_mm3;
    let volume_difference = if n_gt > 0 {
        (prediction_mm3 - reference_mm3) / reference_mm3
    } else if n_pred > 0 {
        f64::INFINITY
    } else {
        0.0
    };
    let base = |outcome, dice, dist: f64, sd| OrganMetrics {
        outcome,
        dice,
        hd95: dist,
        assd: dist,
        hd: dist,
        surface_dice: sd,
        tolerance_mm,
        reference_mm3,
        prediction_mm3,
        volume_difference,
    };
    match (n_gt, n_pred) {
        (0, 0) => return base(Outcome::BothEmpty, 1.0, 0.0, 1.0),
        (0, _) => return base(Outcome::EmptyReference, 0.0, f64::INFINITY, 0.0),
        (_, 0) => return base(Outcome::EmptyPrediction, 0.0, f64::INFINITY, 0.0),
        _ => {}
    }
    let dice = 2.0 * inter as f64 / (n_gt + n_pred) as f64;
    let b = bbox_union(gt, pred, dims).expect("non-empty");
    let (g, sub) = crop(gt, dims, b);
    let (p, _) = crop(pred, dims, b);
    let (hd95, assd, hd, surface_dice) = match surface_def {
        Surface::SurfaceElements => {
            surfels::distances(&g, &p, sub, spacing, tolerance_mm, convention)
        }
        Surface::BoundaryVoxels => {
            boundary_distances(&g, &p, sub, spacing, tolerance_mm, convention)
        }
    };
    OrganMetrics {
        outcome: Outcome::Compared,
        dice,
        hd95,
        assd,
        hd,
        surface_dice,
        tolerance_mm,
        reference_mm3,
        prediction_mm3,
        volume_difference,
    }
}

/// (hd95, assd, hd, surface dice) with boundary voxels as the surface, on a crop `sub`.
fn boundary_distances(
    g: &[bool],
    p: &[bool],
    sub: [usize; 3],
    spacing: [f64; 3],
    tolerance_mm: f64,
    convention: Convention,
) -> (f64, f64, f64, f64) {
    // The crop's outer ring is background unless it is the volume's own edge; in both cases
    // treating outside-the-crop as outside matches `border_value=0` on the full volume.
    let (sg, sp) = (surface(g, sub), surface(p, sub));
    let mut d_pg = directed(&sp, &sg, sub, spacing);
    let mut d_gp = directed(&sg, &sp, sub, spacing);
    let within = d_pg
        .iter()
        .chain(&d_gp)
        .filter(|&&d| d <= tolerance_mm)
        .count();
    let surface_dice = within as f64 / (d_pg.len() + d_gp.len()) as f64;
    d_pg.sort_by(f64::total_cmp);
    d_gp.sort_by(f64::total_cmp);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let hd = d_pg
        .last()
        .copied()
        .unwrap_or(0.0)
        .max(d_gp.last().copied().unwrap_or(0.0));
    let (hd95, assd) = match convention {
        Convention::Monai => (
            percentile_sorted(&d_pg, 95.0).max(percentile_sorted(&d_gp, 95.0)),
            (d_pg.iter().sum::<f64>() + d_gp.iter().sum::<f64>())
                / (d_pg.len() + d_gp.len()) as f64,
        ),
        Convention::Medpy => {
            let mut pooled: Vec<f64> = d_pg.iter().chain(&d_gp).copied().collect();
            pooled.sort_by(f64::total_cmp);
            (
                percentile_sorted(&pooled, 95.0),
                (mean(&d_pg) + mean(&d_gp)) / 2.0,
            )
        }
    };
    (hd95, assd, hd, surface_dice)
}

/// How [`label_metrics`] compares.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Options {
    /// Surface Dice tolerance, mm.
    pub tolerance_mm: f64,
    pub convention: Convention,
    pub surface: Surface,
}

/// Per-label statistics gathered in one pass over two label maps.
struct LabelStats {
    count: Vec<usize>,
    lo: Vec<[usize; 3]>,
    hi: Vec<[usize; 3]>,
}

impl LabelStats {
    fn new() -> Self {
        LabelStats {
            count: vec![0; 256],
            lo: vec![[usize::MAX; 3]; 256],
            hi: vec![[0; 3]; 256],
        }
    }
    fn bbox(&self, l: u8) -> Option<BBox> {
        (self.count[l as usize] > 0).then(|| BBox {
            lo: self.lo[l as usize],
            hi: self.hi[l as usize],
        })
    }
}

fn label_stats(labels: &[u8], dims: [usize; 3]) -> LabelStats {
    use rayon::prelude::*;
    let [nx, ny, _] = dims;
    let merge = |mut a: LabelStats, b: LabelStats| {
        for k in 0..256 {
            if b.count[k] > 0 {
                a.count[k] += b.count[k];
                for ax in 0..3 {
                    a.lo[k][ax] = a.lo[k][ax].min(b.lo[k][ax]);
                    a.hi[k][ax] = a.hi[k][ax].max(b.hi[k][ax]);
                }
            }
        }
        a
    };
    labels
        .par_chunks(nx * ny)
        .enumerate()
        .fold(LabelStats::new, |mut s, (z, slice)| {
            for (y, row) in slice.chunks(nx).enumerate() {
                // Background rows are skipped at memory speed.
                let Some(first) = row.iter().position(|&v| v != 0) else {
                    continue;
                };
                for (x, &l) in row.iter().enumerate().skip(first) {
                    if l == 0 {
                        continue;
                    }
                    let k = l as usize;
                    s.count[k] += 1;
                    for (ax, c) in [x, y, z].into_iter().enumerate() {
                        s.lo[k][ax] = s.lo[k][ax].min(c);
                        s.hi[k][ax] = s.hi[k][ax].max(c);
                    }
                }
            }
            s
        })
        .reduce(LabelStats::new, merge)
}

/// Metrics for several organs at once, straight from two label maps on one grid: one pass
/// over each map finds every label's voxel count and box, then each organ is compared on
/// its own small box. `pairs` holds (reference label, prediction label) per organ.
pub fn label_metrics(
    reference: &[u8],
    prediction: &[u8],
    dims: [usize; 3],
    spacing: [f64; 3],
    pairs: &[(u8, u8)],
    opts: Options,
) -> Vec<OrganMetrics> {
    let Options {
        tolerance_mm,
        convention,
        surface: surface_def,
    } = opts;
    assert_eq!(
        reference.len(),
        prediction.len(),
        "label maps differ in size"
    );
    let (sr, sp) = (label_stats(reference, dims), label_stats(prediction, dims));
    pairs
        .iter()
        .map(|&(lr, lp)| {
            let b = match (sr.bbox(lr), sp.bbox(lp)) {
                (Some(a), Some(b)) => Some(BBox {
                    lo: std::array::from_fn(|k| a.lo[k].min(b.lo[k])),
                    hi: std::array::from_fn(|k| a.hi[k].max(b.hi[k])),
                }),
                (a, b) => a.or(b),
            };
            let Some(b) = b else {
                // Neither map has the organ: compare two empty masks.
                return organ_metrics_with(
                    &[],
                    &[],
                    [0, 0, 0],
                    spacing,
                    tolerance_mm,
                    convention,
                    surface_def,
                );
            };
            // Extract both organs on the union box grown by one voxel.
            let lo: [usize; 3] = std::array::from_fn(|k| b.lo[k].saturating_sub(1));
            let hi: [usize; 3] = std::array::from_fn(|k| (b.hi[k] + 1).min(dims[k] - 1));
            let sub = [hi[0] - lo[0] + 1, hi[1] - lo[1] + 1, hi[2] - lo[2] + 1];
            let n = sub[0] * sub[1] * sub[2];
            let (mut g, mut p) = (Vec::with_capacity(n), Vec::with_capacity(n));
            for z in lo[2]..=hi[2] {
                for y in lo[1]..=hi[1] {
                    let row = dims[0] * (y + dims[1] * z);
                    for x in lo[0]..=hi[0] {
                        g.push(reference[row + x] == lr);
                        p.push(prediction[row + x] == lp);
                    }
                }
            }
            organ_metrics_with(&g, &p, sub, spacing, tolerance_mm, convention, surface_def)
        })
        .collect()
}

/// Surface elements ("surfels") on the voxel-corner grid, weighted by area, as DeepMind's
/// `surface-distance` defines them: each corner of the grid looks at the 2 x 2 x 2 voxels
/// around it; where they are neither all inside nor all outside, the marching-cubes surface
/// crosses that cell, and its area there (edge-midpoint vertices, scaled by the spacing)
/// weights the corner's distance to the other surface.
pub mod surfels {
    use super::{percentile_sorted, Convention};
    use shapeflow_edt::{edt_in_place, INF};

    /// Corner offsets of bit `b` of a neighbour code: (dx, dy, dz) in {0, 1}.
    fn corner(b: usize) -> [usize; 3] {
        [b & 1, (b >> 1) & 1, (b >> 2) & 1]
    }

    /// The 12 cube edges as pairs of corner bits.
    const EDGES: [(usize, usize); 12] = [
        (0, 1),
        (2, 3),
        (4, 5),
        (6, 7),
        (0, 2),
        (1, 3),
        (4, 6),
        (5, 7),
        (0, 4),
        (1, 5),
        (2, 6),
        (3, 7),
    ];

    /// The 6 faces, each as its 4 corner bits in cyclic order.
    const FACES: [[usize; 4]; 6] = [
        [0, 1, 3, 2],
        [4, 5, 7, 6],
        [0, 1, 5, 4],
        [2, 3, 7, 6],
        [0, 2, 6, 4],
        [1, 3, 7, 5],
    ];

    fn edge_index(a: usize, b: usize) -> usize {
        EDGES
            .iter()
            .position(|&(x, y)| (x, y) == (a, b) || (x, y) == (b, a))
            .unwrap_or(0)
    }

    /// Surface area inside one cell for each of the 256 neighbour codes, in mm^2.
    ///
    /// The surface is the marching-cubes one with vertices at the midpoints of the edges whose
    /// corners differ. On each face, crossing edges are joined into segments (a face with
    /// four crossings separates its inside corners); segments join into closed polygons,
    /// each triangulated as a fan around its centroid after scaling by the spacing.
    pub fn area_table(spacing: [f64; 3]) -> [f64; 256] {
        let mut table = [0.0; 256];
        for (code, area) in table.iter_mut().enumerate() {
            let inside = |b: usize| code >> b & 1 == 1;
            let mut links: Vec<(usize, usize)> = Vec::new();
            for f in FACES {
                let crossings: Vec<usize> = (0..4)
                    .filter(|&i| inside(f[i]) != inside(f[(i + 1) % 4]))
                    .map(|i| edge_index(f[i], f[(i + 1) % 4]))
                    .collect();
                match crossings.len() {
                    2 => links.push((crossings[0], crossings[1])),
                    4 => {
                        // Ambiguous face (diagonal corners alike): cut off corners f[0] and
                        // f[2], whichever side they are on, so that a mask and its complement
                        // have one and the same surface. crossings[i] is edge (f[i], f[i+1]).
                        links.push((crossings[3], crossings[0]));
                        links.push((crossings[1], crossings[2]));
                    }
                    _ => {}
                }
            }
            let mid = |e: usize| -> [f64; 3] {
                let (a, b) = EDGES[e];
                let (ca, cb) = (corner(a), corner(b));
                std::array::from_fn(|k| (ca[k] + cb[k]) as f64 / 2.0 * spacing[k])
            };
            // Walk the links into loops.
            let mut used = vec![false; links.len()];
            for start in 0..links.len() {
                if used[start] {
                    continue;
                }
                used[start] = true;
                let mut poly = vec![links[start].0];
                let mut cur = links[start].1;
                while cur != poly[0] {
                    poly.push(cur);
                    let Some(next) = (0..links.len())
                        .find(|&j| !used[j] && (links[j].0 == cur || links[j].1 == cur))
                    else {
                        break;
                    };
                    used[next] = true;
                    cur = if links[next].0 == cur {
                        links[next].1
                    } else {
                        links[next].0
                    };
                }
                let pts: Vec<[f64; 3]> = poly.iter().map(|&e| mid(e)).collect();
                let c: [f64; 3] = std::array::from_fn(|k| {
                    pts.iter().map(|p| p[k]).sum::<f64>() / pts.len() as f64
                });
                for i in 0..pts.len() {
                    let (a, b) = (pts[i], pts[(i + 1) % pts.len()]);
                    let u: [f64; 3] = std::array::from_fn(|k| a[k] - c[k]);
                    let v: [f64; 3] = std::array::from_fn(|k| b[k] - c[k]);
                    let x = [
                        u[1] * v[2] - u[2] * v[1],
                        u[2] * v[0] - u[0] * v[2],
                        u[0] * v[1] - u[1] * v[0],
                    ];
                    *area += (x[0] * x[0] + x[1] * x[1] + x[2] * x[2]).sqrt() / 2.0;
                }
            }
        }
        table
    }

    /// Neighbour codes on the corner grid of a mask (dims + 1 per axis; voxels outside the
    /// mask's array are outside).
    pub fn codes(m: &[bool], d: [usize; 3]) -> (Vec<u8>, [usize; 3]) {
        let c = [d[0] + 1, d[1] + 1, d[2] + 1];
        let at = |x: isize, y: isize, z: isize| -> bool {
            x >= 0
                && y >= 0
                && z >= 0
                && (x as usize) < d[0]
                && (y as usize) < d[1]
                && (z as usize) < d[2]
                && m[x as usize + d[0] * (y as usize + d[1] * z as usize)]
        };
        let mut out = vec![0u8; c[0] * c[1] * c[2]];
        for z in 0..c[2] {
            for y in 0..c[1] {
                for x in 0..c[0] {
                    let mut code = 0u8;
                    for b in 0..8 {
                        let o = corner(b);
                        if at(
                            x as isize - 1 + o[0] as isize,
                            y as isize - 1 + o[1] as isize,
                            z as isize - 1 + o[2] as isize,
                        ) {
                            code |= 1 << b;
                        }
                    }
                    out[x + c[0] * (y + c[1] * z)] = code;
                }
            }
        }
        (out, c)
    }

    /// Distances from `from`'s surfels to `to`'s surfels, with `from`'s surfel areas.
    fn directed(
        from: &[u8],
        to: &[u8],
        c: [usize; 3],
        spacing: [f64; 3],
        table: &[f64; 256],
    ) -> (Vec<f64>, Vec<f64>) {
        let mut buf: Vec<f32> = to
            .iter()
            .map(|&k| if k != 0 && k != 255 { 0.0 } else { INF })
            .collect();
        edt_in_place(&mut buf, c, spacing, None);
        let mut pairs: Vec<(f64, f64)> = from
            .iter()
            .zip(&buf)
            .filter(|(&k, _)| k != 0 && k != 255)
            .map(|(&k, &d)| (d as f64, table[k as usize]))
            .collect();
        pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
        pairs.into_iter().unzip()
    }

    /// `surface-distance`'s robust Hausdorff: the first distance whose cumulative area
    /// fraction reaches `percent`.
    fn area_percentile(d: &[f64], a: &[f64], percent: f64) -> f64 {
        let total: f64 = a.iter().sum();
        let mut cum = 0.0;
        for (i, (&di, &ai)) in d.iter().zip(a).enumerate() {
            cum += ai;
            if cum / total >= percent / 100.0 || i + 1 == d.len() {
                return di;
            }
        }
        f64::NAN
    }

    /// (hd95, assd, hd, surface dice) with the surface-element definition. Both masks must be
    /// non-empty (see `organ_metrics` for the empty cases). `convention` is ignored here:
    /// HD95 is the larger directed value, ASSD the mean of the two directed area-weighted
    /// means, as `surface-distance` reports them.
    pub fn distances(
        gt: &[bool],
        pred: &[bool],
        d: [usize; 3],
        spacing: [f64; 3],
        tolerance_mm: f64,
        _convention: Convention,
    ) -> (f64, f64, f64, f64) {
        let table = area_table(spacing);
        let (cg, c) = codes(gt, d);
        let (cp, _) = codes(pred, d);
        let (dg, ag) = directed(&cg, &cp, c, spacing, &table);
        let (dp, ap) = directed(&cp, &cg, c, spacing, &table);
        let hd95 = area_percentile(&dg, &ag, 95.0).max(area_percentile(&dp, &ap, 95.0));
        let wmean = |d: &[f64], a: &[f64]| {
            d.iter().zip(a).map(|(x, w)| x * w).sum::<f64>() / a.iter().sum::<f64>()
        };
        let assd = (wmean(&dg, &ag) + wmean(&dp, &ap)) / 2.0;
        let hd = dg
            .last()
            .copied()
            .unwrap_or(0.0)
            .max(dp.last().copied().unwrap_or(0.0));
        let within = |d: &[f64], a: &[f64]| {
            d.iter()
                .zip(a)
                .filter(|(x, _)| **x <= tolerance_mm)
                .map(|(_, w)| w)
                .sum::<f64>()
        };
        let sd = (within(&dg, &ag) + within(&dp, &ap))
            / (ag.iter().sum::<f64>() + ap.iter().sum::<f64>());
        let _ = percentile_sorted;
        (hd95, assd, hd, sd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cube(d: [usize; 3], lo: [usize; 3], hi: [usize; 3]) -> Vec<bool> {
        (0..d[0] * d[1] * d[2])
            .map(|i| {
                let c = [i % d[0], (i / d[0]) % d[1], i / (d[0] * d[1])];
                (0..3).all(|k| c[k] >= lo[k] && c[k] <= hi[k])
            })
            .collect()
    }

    #[test]
    fn identical_masks_are_perfect() {
        let d = [10, 9, 8];
        let a = cube(d, [2, 2, 2], [6, 5, 5]);
        let m = organ_metrics(&a, &a, d, [0.8, 0.8, 2.5], 1.0, Convention::Monai);
        assert_eq!(
            (m.dice, m.hd95, m.assd, m.surface_dice),
            (1.0, 0.0, 0.0, 1.0)
        );
    }

    #[test]
    fn shifted_cube_has_known_distances() {
        // Shift by one voxel along x (spacing 2 mm): every surface voxel is 0 or 2 mm away.
        let d = [12, 8, 8];
        let a = cube(d, [2, 2, 2], [5, 5, 5]);
        let b = cube(d, [3, 2, 2], [6, 5, 5]);
        let m = organ_metrics(&a, &b, d, [2.0, 1.0, 1.0], 1.0, Convention::Monai);
        assert!((m.dice - 0.75).abs() < 1e-12);
        assert_eq!(m.hd, 2.0);
        assert!(m.assd > 0.0 && m.assd < 2.0);
        assert!(m.surface_dice < 1.0);
    }

    #[test]
    fn empty_masks_are_defined() {
        let d = [4, 4, 4];
        let e = vec![false; 64];
        let a = cube(d, [1, 1, 1], [2, 2, 2]);
        let both = organ_metrics(&e, &e, d, [1.0; 3], 1.0, Convention::Monai);
        assert_eq!(
            (both.outcome, both.dice, both.hd95),
            (Outcome::BothEmpty, 1.0, 0.0)
        );
        let no_pred = organ_metrics(&a, &e, d, [1.0; 3], 1.0, Convention::Monai);
        assert_eq!(no_pred.outcome, Outcome::EmptyPrediction);
        assert_eq!((no_pred.dice, no_pred.hd95), (0.0, f64::INFINITY));
        let no_ref = organ_metrics(&e, &a, d, [1.0; 3], 1.0, Convention::Medpy);
        assert_eq!(no_ref.outcome, Outcome::EmptyReference);
        assert!(no_ref.volume_difference.is_infinite());
    }

    #[test]
    fn edge_voxels_are_surface() {
        // A mask filling the volume: its surface is the volume's outer layer (border_value=0).
        let d = [3, 3, 3];
        let s = surface(&[true; 27], d);
        assert_eq!(s.iter().filter(|&&v| v).count(), 26);
    }

    #[test]
    fn surfel_areas_of_simple_configurations() {
        let t = surfels::area_table([1.0, 1.0, 1.0]);
        assert_eq!(t[0], 0.0);
        assert_eq!(t[255], 0.0);
        // One corner: a triangle with legs 0.5 * sqrt(2): area sqrt(3) / 8.
        assert!((t[1] - 3f64.sqrt() / 8.0).abs() < 1e-12);
        // Half the cube (a face's four corners): a unit square.
        assert!((t[0b0000_1111] - 1.0).abs() < 1e-12);
        // Complements have the same surface.
        for c in 0..256 {
            assert!((t[c] - t[255 - c]).abs() < 1e-12, "code {c}");
        }
        // Spacing scales a flat cut by the product of the two in-plane spacings.
        let ts = surfels::area_table([2.0, 3.0, 5.0]);
        assert!((ts[0b0000_1111] - 6.0).abs() < 1e-12);
    }

    #[test]
    fn surface_elements_on_a_shifted_cube() {
        let d = [12, 8, 8];
        let a = cube(d, [2, 2, 2], [5, 5, 5]);
        let m = organ_metrics_with(
            &a,
            &a,
            d,
            [1.0; 3],
            1.0,
            Convention::Monai,
            Surface::SurfaceElements,
        );
        assert_eq!((m.hd95, m.assd, m.surface_dice), (0.0, 0.0, 1.0));
        let b = cube(d, [3, 2, 2], [6, 5, 5]);
        let m = organ_metrics_with(
            &a,
            &b,
            d,
            [2.0, 1.0, 1.0],
            1.0,
            Convention::Monai,
            Surface::SurfaceElements,
        );
        assert_eq!(m.hd, 2.0);
        assert!(m.assd > 0.0 && m.assd < 2.0);
    }

    #[test]
    fn label_maps_give_the_same_metrics_as_masks() {
        let d = [14, 12, 10];
        let a = cube(d, [2, 2, 2], [6, 6, 5]);
        let b = cube(d, [3, 2, 2], [7, 7, 5]);
        let c = cube(d, [9, 1, 1], [12, 4, 8]);
        let gt: Vec<u8> = (0..a.len())
            .map(|i| {
                if a[i] {
                    1
                } else if c[i] {
                    2
                } else {
                    0
                }
            })
            .collect();
        let pr: Vec<u8> = (0..a.len()).map(|i| if b[i] { 3 } else { 0 }).collect();
        for surface in [Surface::BoundaryVoxels, Surface::SurfaceElements] {
            let opts = Options {
                tolerance_mm: 1.0,
                convention: Convention::Monai,
                surface,
            };
            let m = label_metrics(
                &gt,
                &pr,
                d,
                [0.9, 0.9, 2.5],
                &[(1, 3), (2, 4), (5, 6)],
                opts,
            );
            assert_eq!(
                m[0],
                organ_metrics_with(&a, &b, d, [0.9, 0.9, 2.5], 1.0, Convention::Monai, surface)
            );
            assert_eq!(m[1].outcome, Outcome::EmptyPrediction);
            assert_eq!(m[2].outcome, Outcome::BothEmpty);
        }
    }

    #[test]
    fn percentile_matches_numpy_linear() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert!((percentile_sorted(&v, 95.0) - 3.85).abs() < 1e-12);
        assert_eq!(percentile_sorted(&v, 0.0), 1.0);
    }
}

//! Training patches with augmentation, streamed by worker threads.
//!
//! A sample is a patch of a case: image, label map and one signed distance map per organ,
//! all warped by the same random spatial transform (rotation, scaling, optional elastic
//! displacement, left-right flip with left/right organs swapped), then intensity
//! augmentation on the image. The SDMs are interpolated linearly and multiplied by the
//! scale factor (distances grow with the zoom), so the cached SDMs are never recomputed per
//! batch. Every sample draws from its own random stream, derived from (seed, epoch, index):
//! batches are identical whatever the number of worker threads.

use crossbeam_channel::{bounded, Receiver};
use rayon::prelude::*;
use shapeflow_core::{CaseData, SdmSet, VoxelData};
use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

mod store;
pub use store::{quantise, MapView, StoreWriter, TrainStore};

pub use shapeflow_core::rng::Rng;

/// The random stream of sample `index` of `epoch`.
pub fn sample_rng(seed: u64, epoch: u64, index: u64) -> Rng {
    let mut r = Rng::new(seed);
    let a = r.next_u64() ^ epoch.wrapping_mul(0xD1B5_4A32_D192_ED03);
    let mut r = Rng::new(a);
    Rng::new(r.next_u64() ^ index.wrapping_mul(0x8CB9_2BA7_2F3D_8DD7))
}

/// What to sample and how to augment.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentConfig {
    /// Patch size in voxels of the (already resampled) training grid. Set by the `train`
    /// stage from its own `patch` and `batch` params, hence not part of this mapping.
    #[serde(skip)]
    pub patch: [usize; 3],
    #[serde(skip)]
    pub batch: usize,
    /// Probability that a patch is centred on a voxel of a randomly chosen present organ
    /// (each organ equally likely, so small organs such as the chiasm appear often).
    pub foreground: f64,
    /// Largest rotation about each axis, degrees.
    pub rotation_deg: [f64; 3],
    /// Isotropic scale range.
    pub scale: [f64; 2],
    /// Elastic displacement: standard deviation (mm) of a smooth random field, 0 = off.
    pub elastic_mm: f64,
    /// Control-point spacing of the elastic field, mm.
    pub elastic_grid_mm: f64,
    /// Probability of a left-right flip (with left/right organs swapped).
    pub flip: f64,
    /// Intensity scaling range (a factor on the normalised image).
    pub intensity_scale: [f64; 2],
    /// Additive intensity shift range, in normalised image units.
    pub intensity_shift: [f64; 2],
    /// Gamma range applied to the normalised image.
    pub gamma: [f64; 2],
    /// Standard deviation of Gaussian noise, image units.
    pub noise: f64,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        AugmentConfig {
            patch: [64, 64, 32],
            batch: 2,
            foreground: 0.67,
            rotation_deg: [10.0, 10.0, 15.0],
            scale: [0.85, 1.15],
            elastic_mm: 0.0,
            elastic_grid_mm: 32.0,
            flip: 0.5,
            intensity_scale: [0.9, 1.1],
            intensity_shift: [-0.1, 0.1],
            gamma: [0.8, 1.25],
            noise: 0.02,
        }
    }
}

impl AugmentConfig {
    /// No augmentation at all: patches are plain crops (for validation and tests).
    pub fn none(patch: [usize; 3]) -> Self {
        AugmentConfig {
            patch,
            batch: 1,
            foreground: 0.0,
            rotation_deg: [0.0; 3],
            scale: [1.0, 1.0],
            elastic_mm: 0.0,
            elastic_grid_mm: 32.0,
            flip: 0.0,
            intensity_scale: [1.0, 1.0],
            intensity_shift: [0.0, 0.0],
            gamma: [1.0, 1.0],
            noise: 0.0,
        }
    }
}

/// Each organ's voxel indices (label `k + 1` for organ `k`), for foreground sampling.
pub fn organ_voxels(labels: &[u8], organs: usize) -> Vec<Vec<u32>> {
    let mut out = vec![Vec::new(); organs];
    for (i, &v) in labels.iter().enumerate() {
        if v > 0 && (v as usize) <= organs {
            out[v as usize - 1].push(i as u32);
        }
    }
    out
}

/// A training case: normalised image, labels, SDMs (same grid) and organ table. The voxels
/// live in a [`TrainStore`] shared by every case of a training set (in memory or mapped
/// from a file); the case holds where its arrays are.
pub struct TrainCase {
    pub id: String,
    pub dims: [usize; 3],
    pub spacing: [f64; 3],
    pub organs: Vec<String>,
    pub present: Vec<bool>,
    /// Voxel indices of each organ, for foreground sampling.
    organ_voxels: Vec<Vec<u32>>,
    store: Arc<TrainStore>,
    /// Byte ranges in the store: each image channel as f32, the labels as u8, each organ's
    /// SDM as 16-bit with its scale (None: absent organ, or a head that needs no maps).
    images: Vec<Range<usize>>,
    labels: Range<usize>,
    sdms: Vec<Option<(Range<usize>, f32)>>,
    /// Per channel, what lies outside the volume: the channel's minimum (air in a CT,
    /// background in an MRI), not 0, which in a windowed CT is soft tissue.
    pads: Vec<f32>,
    /// The voxel axis that runs left-right in the world (from the affine): what a
    /// left-right flip mirrors. Axis 0 for RAS/LPS-ordered volumes, 1 for OpenKBP's PLI.
    lr_axis: usize,
}

/// Builds a training set case by case into one [`TrainStore`], holding one case's voxels
/// at a time.
pub struct TrainSetBuilder {
    writer: StoreWriter,
    /// Whether SDMs are kept (heads trained on SDM targets need them; a Dice head not).
    keep_maps: bool,
    cases: Vec<Pending>,
}

/// A case whose voxels are written, waiting for the store to be finished.
struct Pending {
    id: String,
    dims: [usize; 3],
    spacing: [f64; 3],
    organs: Vec<String>,
    present: Vec<bool>,
    organ_voxels: Vec<Vec<u32>>,
    images: Vec<Range<usize>>,
    labels: Range<usize>,
    sdms: Vec<Option<(Range<usize>, f32)>>,
    pads: Vec<f32>,
    lr_axis: usize,
}

impl TrainSetBuilder {
    /// Voxels in memory.
    pub fn in_memory(keep_maps: bool) -> TrainSetBuilder {
        TrainSetBuilder {
            writer: StoreWriter::in_memory(),
            keep_maps,
            cases: Vec::new(),
        }
    }

    /// Voxels in an unnamed, memory-mapped file under `dir`.
    pub fn in_file(dir: &std::path::Path, keep_maps: bool) -> Result<TrainSetBuilder, String> {
        Ok(TrainSetBuilder {
            writer: StoreWriter::in_file(dir).map_err(|e| {
                format!(
                    "cannot create the training set file in {}: {e}",
                    dir.display()
                )
            })?,
            keep_maps,
            cases: Vec::new(),
        })
    }

    /// Adds a case (its image channels normalised already) and its SDMs (same grid), with
    /// each organ's voxel indices precomputed (by the `augment` stage, see
    /// [`organ_voxels`]) or found from the labels (`None`). Every case of a set has the
    /// same number of channels.
    pub fn add(
        &mut self,
        id: &str,
        case: &CaseData,
        sdms: &SdmSet,
        voxels: Option<Vec<Vec<u32>>>,
    ) -> Result<(), String> {
        let image = case
            .image()
            .ok_or_else(|| format!("case {id} has no image"))?;
        let labels = case
            .labels
            .as_ref()
            .ok_or_else(|| format!("case {id} has no labels"))?;
        case.check_grids().map_err(|m| format!("case {id}: {m}"))?;
        if let Some(first) = self.cases.first() {
            if first.images.len() != case.images.len() {
                return Err(format!(
                    "case {id} has {} image channel(s), case {} {}",
                    case.images.len(),
                    first.id,
                    first.images.len()
                ));
            }
        }
        let VoxelData::U8(l) = &labels.data else {
            return Err(format!("case {id}: labels must be u8"));
        };
        let organ_voxels = match voxels {
            Some(v) if v.len() == case.organs.len() => v,
            Some(v) => {
                return Err(format!(
                    "case {id}: sampler data has {} organs, the case {}",
                    v.len(),
                    case.organs.len()
                ))
            }
            None => organ_voxels(l, case.organs.len()),
        };
        let io = |e: std::io::Error| format!("case {id}: cannot write the training set: {e}");
        let mut images = Vec::with_capacity(case.images.len());
        let mut pads = Vec::with_capacity(case.images.len());
        for channel in &case.images {
            let img = channel.to_f32();
            pads.push(
                img.iter()
                    .copied()
                    .filter(|v| v.is_finite())
                    .fold(f32::INFINITY, f32::min)
                    .min(0.0),
            );
            images.push(self.writer.f32s(&img).map_err(io)?);
        }
        let labels_at = self.writer.u8s(l).map_err(io)?;
        let mut maps = Vec::with_capacity(sdms.maps.len());
        for m in &sdms.maps {
            maps.push(match m {
                Some(v) if self.keep_maps => {
                    if v.dims != image.dims {
                        return Err(format!("case {id}: SDM grid differs from the image"));
                    }
                    let (q, scale) = store::quantise(&v.to_f32());
                    Some((self.writer.i16s(&q).map_err(io)?, scale))
                }
                _ => None,
            });
        }
        self.cases.push(Pending {
            id: id.to_string(),
            dims: image.dims,
            spacing: image.spacing,
            organs: case.organs.clone(),
            present: case.present.clone(),
            organ_voxels,
            images,
            labels: labels_at,
            sdms: maps,
            pads,
            lr_axis: crate::tta::left_right_axis(&image.affine),
        });
        Ok(())
    }

    /// The cases, sharing the finished store.
    pub fn finish(self) -> Result<Vec<TrainCase>, String> {
        let store = Arc::new(
            self.writer
                .finish()
                .map_err(|e| format!("cannot finish the training set: {e}"))?,
        );
        Ok(self
            .cases
            .into_iter()
            .map(|p| TrainCase {
                id: p.id,
                dims: p.dims,
                spacing: p.spacing,
                organs: p.organs,
                present: p.present,
                organ_voxels: p.organ_voxels,
                store: store.clone(),
                images: p.images,
                labels: p.labels,
                sdms: p.sdms,
                pads: p.pads,
                lr_axis: p.lr_axis,
            })
            .collect())
    }
}

impl TrainCase {
    /// One case in memory, from a case and its SDMs (same grid). The image is used as is:
    /// normalise it first.
    pub fn new(id: &str, case: &CaseData, sdms: &SdmSet) -> Result<TrainCase, String> {
        let mut b = TrainSetBuilder::in_memory(true);
        b.add(id, case, sdms, None)?;
        Ok(b.finish()?.remove(0))
    }

    /// The normalised image's first channel, x fastest.
    pub fn image(&self) -> &[f32] {
        self.channel(0)
    }

    /// The normalised image's channel `c`, x fastest.
    pub fn channel(&self, c: usize) -> &[f32] {
        self.store.f32s(&self.images[c])
    }

    /// How many image channels the case has.
    pub fn channels(&self) -> usize {
        self.images.len()
    }

    /// The label map (0 background, k = organs[k - 1]).
    pub fn labels(&self) -> &[u8] {
        self.store.u8s(&self.labels)
    }

    /// Organ `k`'s SDM, if held.
    pub fn sdm(&self, k: usize) -> Option<MapView<'_>> {
        let (r, scale) = self.sdms.get(k)?.as_ref()?;
        Some(MapView {
            q: self.store.i16s(r),
            scale: *scale,
        })
    }

    /// The store this case's voxels are in.
    pub fn store(&self) -> &TrainStore {
        &self.store
    }

    /// Organ index pairs (left, right) found by name: `X_L`/`X_R`, `X-Lt`/`X-Rt`,
    /// `LeftX`/`RightX`, `Left X`/`Right X` (see [`crate::tta::left_right_pairs`]).
    pub fn left_right_pairs(&self) -> Vec<(usize, usize)> {
        crate::tta::left_right_pairs(&self.organs)
    }

    /// The voxel axis a left-right flip mirrors.
    pub fn left_right_axis(&self) -> usize {
        self.lr_axis
    }
}

/// One augmented patch.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub case: String,
    /// Patch voxels, x fastest, the image's channels one after another.
    pub image: Vec<f32>,
    pub labels: Vec<u8>,
    /// One map per organ (patch-sized), zeros where the organ is absent.
    pub sdms: Vec<Vec<f32>>,
    /// Whether each organ is annotated in this case (absent organs are masked from losses).
    pub present: Vec<bool>,
    pub flipped: bool,
    pub scale: f64,
}

fn rotation(ax: f64, ay: f64, az: f64) -> [[f64; 3]; 3] {
    let (sx, cx) = ax.sin_cos();
    let (sy, cy) = ay.sin_cos();
    let (sz, cz) = az.sin_cos();
    // R = Rz * Ry * Rx
    [
        [cz * cy, cz * sy * sx - sz * cx, cz * sy * cx + sz * sx],
        [sz * cy, sz * sy * sx + cz * cx, sz * sy * cx - cz * sx],
        [-sy, cy * sx, cy * cx],
    ]
}

/// Trilinear interpolation of `data` (dims `d`) at continuous voxel coordinates `p`,
/// clamped to the volume.
fn trilinear(data: &[f32], d: [usize; 3], p: [f64; 3]) -> f32 {
    trilinear_by(d, p, |i| data[i])
}

/// [`trilinear`] over voxels read by `at` (index, x fastest).
#[inline]
fn trilinear_by(d: [usize; 3], p: [f64; 3], at: impl Fn(usize) -> f32) -> f32 {
    Corners::at(d, p).apply(at)
}

/// The (up to) eight voxels and weights of a trilinear interpolation at one point: computed
/// once per patch voxel and applied to the image and every map (the same sums, in the same
/// order, as interpolating each on its own).
struct Corners {
    idx: [usize; 8],
    w: [f64; 8],
    n: usize,
}

impl Corners {
    #[inline]
    fn at(d: [usize; 3], p: [f64; 3]) -> Corners {
        let f: [f64; 3] = std::array::from_fn(|a| p[a].clamp(0.0, (d[a] - 1) as f64));
        let i0: [usize; 3] = std::array::from_fn(|a| f[a].floor() as usize);
        let t: [f64; 3] = std::array::from_fn(|a| f[a] - i0[a] as f64);
        let mut out = Corners {
            idx: [0; 8],
            w: [0.0; 8],
            n: 0,
        };
        for c in 0..8 {
            let o = [c & 1, (c >> 1) & 1, (c >> 2) & 1];
            let idx: [usize; 3] = std::array::from_fn(|a| (i0[a] + o[a]).min(d[a] - 1));
            let w: f64 = (0..3)
                .map(|a| if o[a] == 1 { t[a] } else { 1.0 - t[a] })
                .product();
            if w != 0.0 {
                out.idx[out.n] = idx[0] + d[0] * (idx[1] + d[1] * idx[2]);
                out.w[out.n] = w;
                out.n += 1;
            }
        }
        out
    }

    #[inline]
    fn apply(&self, at: impl Fn(usize) -> f32) -> f32 {
        let mut acc = 0.0;
        for c in 0..self.n {
            acc += self.w[c] * at(self.idx[c]) as f64;
        }
        acc as f32
    }
}

/// A normalised SDM value seen through a zoom of `scale`: distances grow with the zoom,
/// within [-1, 1] (what a tanh head can reach); a saturated value (the far field of a
/// band-limited map, at least a band away) stays saturated, so that zooming out never turns
/// the far field into the band around the organ.
pub fn zoomed(v: f32, scale: f32) -> f32 {
    if v.abs() >= 1.0 - 1e-4 {
        v
    } else {
        (v * scale).clamp(-1.0, 1.0)
    }
}

/// Draws sample `index` of `epoch` from `cases`. Deterministic in (seed, epoch, index).
pub fn sample(
    cases: &[TrainCase],
    cfg: &AugmentConfig,
    seed: u64,
    epoch: u64,
    index: u64,
) -> Sample {
    let mut rng = sample_rng(seed, epoch, index);
    let case = &cases[rng.below(cases.len())];
    let d = case.dims;
    let sp = case.spacing;
    // Patch centre: an organ voxel (organ chosen uniformly among present, non-empty ones) or
    // a uniform voxel.
    let candidates: Vec<usize> = (0..case.organs.len())
        .filter(|&k| {
            case.present.get(k).copied().unwrap_or(false) && !case.organ_voxels[k].is_empty()
        })
        .collect();
    let centre: [f64; 3] = if !candidates.is_empty() && rng.uniform() < cfg.foreground {
        let k = candidates[rng.below(candidates.len())];
        let v = case.organ_voxels[k][rng.below(case.organ_voxels[k].len())] as usize;
        [
            (v % d[0]) as f64,
            ((v / d[0]) % d[1]) as f64,
            (v / (d[0] * d[1])) as f64,
        ]
    } else {
        std::array::from_fn(|a| rng.range(0.0, d[a] as f64 - 1.0).max(0.0))
    };
    let deg = std::f64::consts::PI / 180.0;
    let ang: [f64; 3] =
        std::array::from_fn(|a| rng.range(-cfg.rotation_deg[a], cfg.rotation_deg[a]) * deg);
    let rot = rotation(ang[0], ang[1], ang[2]);
    let scale = rng.range(cfg.scale[0], cfg.scale[1]);
    let flipped = rng.uniform() < cfg.flip;
    // Elastic: Gaussian displacements on a coarse control grid, trilinear in between.
    let ps = cfg.patch;
    let half: [f64; 3] = std::array::from_fn(|a| (ps[a] as f64 - 1.0) / 2.0);
    let grid_n: [usize; 3] = std::array::from_fn(|a| {
        ((ps[a] as f64 * sp[a] / cfg.elastic_grid_mm.max(1.0)).ceil() as usize + 1).max(2)
    });
    let field: Vec<Vec<f32>> = (0..3)
        .map(|_| {
            (0..grid_n.iter().product::<usize>())
                .map(|_| {
                    if cfg.elastic_mm > 0.0 {
                        (rng.normal() * cfg.elastic_mm) as f32
                    } else {
                        0.0
                    }
                })
                .collect()
        })
        .collect();
    let i_scale = rng.range(cfg.intensity_scale[0], cfg.intensity_scale[1]) as f32;
    let i_shift = rng.range(cfg.intensity_shift[0], cfg.intensity_shift[1]) as f32;
    let gamma = rng.range(cfg.gamma[0], cfg.gamma[1]) as f32;
    let noise_seed = rng.next_u64();
    // Intensity augmentation per channel: channel 0 as drawn above (a one-channel case
    // draws exactly what it did before channels existed), the others from their own draws.
    let channels = case.channels();
    let mut intensity = vec![(i_scale, i_shift, gamma, Rng::new(noise_seed))];
    for _ in 1..channels {
        intensity.push((
            rng.range(cfg.intensity_scale[0], cfg.intensity_scale[1]) as f32,
            rng.range(cfg.intensity_shift[0], cfg.intensity_shift[1]) as f32,
            rng.range(cfg.gamma[0], cfg.gamma[1]) as f32,
            Rng::new(rng.next_u64()),
        ));
    }

    let n = ps[0] * ps[1] * ps[2];
    let labels = case.labels();
    let imgs: Vec<&[f32]> = (0..channels).map(|c| case.channel(c)).collect();
    let swap: BTreeMap<usize, usize> = if flipped {
        case.left_right_pairs()
            .into_iter()
            .flat_map(|(l, r)| [(l, r), (r, l)])
            .collect()
    } else {
        BTreeMap::new()
    };
    let k = case.organs.len();
    // Where each output channel reads from (its left-right partner when flipped).
    let source: Vec<usize> = (0..k).map(|c| *swap.get(&c).unwrap_or(&c)).collect();
    let maps: Vec<Option<MapView<'_>>> = source.iter().map(|&c| case.sdm(c)).collect();
    let mut out = Sample {
        case: case.id.clone(),
        image: vec![0.0; n * channels],
        labels: vec![0; n],
        sdms: vec![vec![0.0; n]; k],
        present: (0..k)
            .map(|o| case.present.get(source[o]).copied().unwrap_or(false))
            .collect(),
        flipped,
        scale,
    };
    for z in 0..ps[2] {
        for y in 0..ps[1] {
            for x in 0..ps[0] {
                let o = x + ps[0] * (y + ps[1] * z);
                // Patch offset in mm (a flip mirrors the left-right axis), rotated and
                // divided by the scale.
                let mut q = [
                    (x as f64 - half[0]) * sp[0],
                    (y as f64 - half[1]) * sp[1],
                    (z as f64 - half[2]) * sp[2],
                ];
                if flipped {
                    q[case.lr_axis] = -q[case.lr_axis];
                }
                // (Without an elastic field the displacement is 0: not interpolated.)
                let disp: [f64; 3] = if cfg.elastic_mm > 0.0 {
                    let pos = [x, y, z];
                    let g: [f64; 3] = std::array::from_fn(|a| {
                        pos[a] as f64 / (ps[a].max(2) - 1) as f64 * (grid_n[a] - 1) as f64
                    });
                    std::array::from_fn(|a| trilinear(&field[a], grid_n, g) as f64)
                } else {
                    [0.0; 3]
                };
                let r: [f64; 3] = std::array::from_fn(|i| {
                    (rot[0][i] * q[0] + rot[1][i] * q[1] + rot[2][i] * q[2]) / scale + disp[i]
                });
                let src: [f64; 3] = std::array::from_fn(|a| centre[a] + r[a] / sp[a]);
                let inside = (0..3).all(|a| src[a] >= -0.5 && src[a] <= d[a] as f64 - 0.5);
                let lab = if inside {
                    let idx: [usize; 3] =
                        std::array::from_fn(|a| (src[a].round().max(0.0) as usize).min(d[a] - 1));
                    labels[idx[0] + d[0] * (idx[1] + d[1] * idx[2])]
                } else {
                    0
                };
                out.labels[o] = if lab > 0 {
                    // A flip swaps the pairs both ways: the source of `c` is where `c` goes.
                    (source
                        .get(lab as usize - 1)
                        .copied()
                        .unwrap_or(lab as usize - 1)
                        + 1) as u8
                } else {
                    0
                };
                let corners = Corners::at(d, src);
                for (dst, m) in out.sdms.iter_mut().zip(&maps) {
                    if let Some(m) = m {
                        dst[o] = zoomed(corners.apply(|i| m.get(i)), scale as f32);
                    }
                }
                // Intensity, per channel: scale, shift, gamma (sign-preserving: images are
                // normalised to zero mean), noise.
                for (c, (img, (i_scale, i_shift, gamma, noise))) in
                    imgs.iter().zip(intensity.iter_mut()).enumerate()
                {
                    let v = if inside {
                        corners.apply(|i| img[i])
                    } else {
                        case.pads[c]
                    };
                    let mut vi = v * *i_scale + *i_shift;
                    if *gamma != 1.0 {
                        vi = vi.signum() * vi.abs().powf(*gamma);
                    }
                    if cfg.noise > 0.0 {
                        vi += (noise.normal() * cfg.noise) as f32;
                    }
                    out.image[c * n + o] = vi;
                }
            }
        }
    }
    out
}

/// Streams `batches` batches of epoch `epoch`: worker threads (a rayon pool of `workers`)
/// build them ahead into a bounded channel of `prefetch` batches, delivered in order.
pub fn loader(
    cases: Arc<Vec<TrainCase>>,
    cfg: AugmentConfig,
    seed: u64,
    epoch: u64,
    batches: usize,
    workers: usize,
    prefetch: usize,
) -> Receiver<Vec<Sample>> {
    let (tx, rx) = bounded(prefetch.max(1));
    std::thread::spawn(move || {
        let pool = match rayon::ThreadPoolBuilder::new()
            .num_threads(workers.max(1))
            .build()
        {
            Ok(p) => p,
            Err(_) => return,
        };
        // Build a few batches at a time in parallel, send them in order.
        let chunk = workers.max(1);
        let mut b = 0;
        while b < batches {
            let upto = (b + chunk).min(batches);
            let built: Vec<Vec<Sample>> = pool.install(|| {
                (b..upto)
                    .into_par_iter()
                    .map(|bi| {
                        (0..cfg.batch)
                            .map(|j| sample(&cases, &cfg, seed, epoch, (bi * cfg.batch + j) as u64))
                            .collect()
                    })
                    .collect()
            });
            for batch in built {
                if tx.send(batch).is_err() {
                    return; // the consumer hung up
                }
            }
            b = upto;
        }
    });
    rx
}

#[cfg(test)]
mod tests;

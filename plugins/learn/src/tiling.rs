//! Tiling: sliding-window inference over whole volumes, and turning predicted maps into organs.
//!
//! The model is any function from a batch of image patches to per-channel output patches,
//! so this module does not depend on the deep-learning runtime: the `infer` stage wraps its
//! network in such a function. Patches tile the volume with a configured overlap; each
//! patch's output is weighted by a Gaussian centred on the patch (the centre of a patch is
//! predicted with more context than its border), and overlapping outputs are blended by
//! the weighted mean.

use shapeflow_core::volume::large_components;

/// How the volume is tiled.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WindowConfig {
    /// Patch size in voxels (the network's input size).
    pub patch: [usize; 3],
    /// Fraction of a patch shared with its neighbour, in [0, 1).
    pub overlap: f64,
    /// Standard deviation of the Gaussian weight, as a fraction of the patch size
    /// (nnU-Net uses 1/8).
    pub sigma: f64,
    /// Patches per model call.
    pub batch: usize,
}

impl Default for WindowConfig {
    fn default() -> Self {
        WindowConfig {
            patch: [64, 64, 32],
            overlap: 0.5,
            sigma: 0.125,
            batch: 2,
        }
    }
}

/// Start positions along one axis so that patches of `patch` voxels with the given overlap
/// cover `0..n` (the last patch ends exactly at `n`; one patch if `n <= patch`).
pub fn starts(n: usize, patch: usize, overlap: f64) -> Vec<usize> {
    if n <= patch {
        return vec![0];
    }
    let step = ((patch as f64 * (1.0 - overlap.clamp(0.0, 0.95))).floor() as usize).max(1);
    let last = n - patch;
    let count = last.div_ceil(step) + 1;
    // Spread the starts evenly between 0 and `last` (as nnU-Net does).
    (0..count)
        .map(|i| ((i as f64 * last as f64 / (count - 1).max(1) as f64).round()) as usize)
        .collect()
}

/// Gaussian importance weights of a patch, largest 1 at the centre, never below 1e-3 (so
/// the border still counts where only one patch covers a voxel).
pub fn gaussian(patch: [usize; 3], sigma: f64) -> Vec<f32> {
    let c: [f64; 3] = std::array::from_fn(|a| (patch[a] as f64 - 1.0) / 2.0);
    let s: [f64; 3] = std::array::from_fn(|a| (patch[a] as f64 * sigma).max(1e-6));
    let mut w = Vec::with_capacity(patch.iter().product());
    for z in 0..patch[2] {
        for y in 0..patch[1] {
            for x in 0..patch[0] {
                let p = [x as f64, y as f64, z as f64];
                let e: f64 = (0..3).map(|a| ((p[a] - c[a]) / s[a]).powi(2)).sum::<f64>() / 2.0;
                w.push(((-e).exp() as f32).max(1e-3));
            }
        }
    }
    w
}

/// Per patch, per channel, the output voxels.
pub type PatchOutputs = Vec<Vec<Vec<f32>>>;

/// A network as [`sliding_window`] sees it: a batch of patches in, outputs per patch out.
pub type Model<'a, E> = dyn FnMut(&[Vec<f32>]) -> Result<PatchOutputs, E> + 'a;

/// Runs `model` over `image` (input channels one after another, each of dims `dims`, x
/// fastest) and returns `channels` maps of the volume's size. `pads` holds one value per
/// input channel: what fills the parts of a patch that fall outside a volume smaller than
/// the patch. `model` gets up to `cfg.batch` patches (input channels one after another) and
/// must return, per patch, `channels` vectors of patch size.
///
/// Two savings that leave the maps as they were (up to the order of the float sums):
/// windows that hold nothing but the pad values (the air around a CT's body, once clipped
/// to its intensity window) all give the model the same input, so it runs once for all of
/// them; and a lone last window is sent with a copy of itself when `cfg.batch >= 2`
/// (libtorch's 3D convolutions on the CPU take longer for one patch than for two:
/// `bench/window.py`).
pub fn sliding_window<E>(
    image: &[f32],
    dims: [usize; 3],
    channels: usize,
    cfg: &WindowConfig,
    pads: &[f32],
    model: &mut Model<'_, E>,
) -> Result<Vec<Vec<f32>>, WindowError<E>> {
    let p = cfg.patch;
    let pn: usize = p.iter().product();
    let n: usize = dims.iter().product();
    if pads.is_empty() || image.len() != n * pads.len() {
        return Err(WindowError::Shape(format!(
            "image has {} voxels, dims {dims:?} and {} input channels need {}",
            image.len(),
            pads.len(),
            n * pads.len()
        )));
    }
    let mut blend = Blend {
        w: gaussian(p, cfg.sigma),
        acc: vec![vec![0f32; n]; channels],
        norm: vec![0f32; n],
        dims,
        patch: p,
    };
    let (sx, sy, sz) = (
        starts(dims[0], p[0], cfg.overlap),
        starts(dims[1], p[1], cfg.overlap),
        starts(dims[2], p[2], cfg.overlap),
    );
    let extract = |s: [usize; 3]| -> Vec<f32> {
        let mut out = Vec::with_capacity(pn * pads.len());
        for (c, &pad) in pads.iter().enumerate() {
            let image = &image[c * n..(c + 1) * n];
            for z in 0..p[2] {
                for y in 0..p[1] {
                    for x in 0..p[0] {
                        let g = [s[0] + x, s[1] + y, s[2] + z];
                        out.push(if g[0] < dims[0] && g[1] < dims[1] && g[2] < dims[2] {
                            image[g[0] + dims[0] * (g[1] + dims[1] * g[2])]
                        } else {
                            pad
                        });
                    }
                }
            }
        }
        out
    };
    let is_pad = |patch: &[f32]| {
        patch
            .chunks(pn)
            .zip(pads)
            .all(|(c, &pad)| c.iter().all(|&v| v == pad))
    };
    let batch = cfg.batch.max(1);
    // The model's output for the all-pad patch, once it has run, and the all-pad windows
    // waiting for it.
    let mut pad_out: Option<Vec<Vec<f32>>> = None;
    let mut pad_queued = false;
    let mut waiting: Vec<[usize; 3]> = Vec::new();
    // The next call: its patches, and per patch its window (None: the all-pad patch).
    let mut patches: Vec<Vec<f32>> = Vec::with_capacity(batch + 1);
    let mut at: Vec<Option<[usize; 3]>> = Vec::with_capacity(batch);
    let mut run = |patches: &mut Vec<Vec<f32>>,
                   at: &mut Vec<Option<[usize; 3]>>,
                   blend: &mut Blend,
                   pad_out: &mut Option<Vec<Vec<f32>>>,
                   waiting: &mut Vec<[usize; 3]>|
     -> Result<(), WindowError<E>> {
        if patches.len() == 1 && batch >= 2 {
            patches.push(patches[0].clone());
        }
        let outs = model(patches).map_err(WindowError::Model)?;
        if outs.len() != patches.len()
            || outs
                .iter()
                .any(|o| o.len() != channels || o.iter().any(|c| c.len() != pn))
        {
            return Err(WindowError::Shape(format!(
                "the model must return {channels} channels of {pn} voxels per patch"
            )));
        }
        patches.clear();
        for (a, out) in at.drain(..).zip(outs) {
            match a {
                Some(s) => blend.add(s, &out),
                None => {
                    for s in waiting.drain(..) {
                        blend.add(s, &out);
                    }
                    *pad_out = Some(out);
                }
            }
        }
        Ok(())
    };
    for &z in &sz {
        for &y in &sy {
            for &x in &sx {
                let s = [x, y, z];
                let patch = extract(s);
                if is_pad(&patch) {
                    if let Some(out) = &pad_out {
                        blend.add(s, out);
                        continue;
                    }
                    waiting.push(s);
                    if pad_queued {
                        continue;
                    }
                    pad_queued = true;
                    at.push(None);
                } else {
                    at.push(Some(s));
                }
                patches.push(patch);
                if patches.len() == batch {
                    run(
                        &mut patches,
                        &mut at,
                        &mut blend,
                        &mut pad_out,
                        &mut waiting,
                    )?;
                }
            }
        }
    }
    if !patches.is_empty() {
        run(
            &mut patches,
            &mut at,
            &mut blend,
            &mut pad_out,
            &mut waiting,
        )?;
    }
    let Blend { mut acc, norm, .. } = blend;
    for ch in acc.iter_mut() {
        for (v, &nv) in ch.iter_mut().zip(&norm) {
            *v /= nv;
        }
    }
    Ok(acc)
}

/// The Gaussian-weighted sums of patch outputs over a volume.
struct Blend {
    w: Vec<f32>,
    acc: Vec<Vec<f32>>,
    norm: Vec<f32>,
    dims: [usize; 3],
    patch: [usize; 3],
}

impl Blend {
    /// Adds the output of the window starting at `s` (per channel, patch voxels).
    fn add(&mut self, s: [usize; 3], out: &[Vec<f32>]) {
        let (p, dims) = (self.patch, self.dims);
        for z in 0..p[2] {
            for y in 0..p[1] {
                for x in 0..p[0] {
                    let g = [s[0] + x, s[1] + y, s[2] + z];
                    if g[0] >= dims[0] || g[1] >= dims[1] || g[2] >= dims[2] {
                        continue;
                    }
                    let gi = g[0] + dims[0] * (g[1] + dims[1] * g[2]);
                    let pi = x + p[0] * (y + p[1] * z);
                    let w = self.w[pi];
                    self.norm[gi] += w;
                    for (acc, ch) in self.acc.iter_mut().zip(out) {
                        acc[gi] += w * ch[pi];
                    }
                }
            }
        }
    }
}

/// Errors of [`sliding_window`].
#[derive(Debug, thiserror::Error)]
pub enum WindowError<E> {
    #[error("{0}")]
    Shape(String),
    #[error("the model failed: {0}")]
    Model(E),
}

/// Per channel of a planar image (`voxels` per channel), what lies outside it for the
/// sliding window: the channel's smallest value (air in a CT).
pub fn pads(image: &[f32], voxels: usize) -> Vec<f32> {
    image
        .chunks(voxels.max(1))
        .map(|c| c.iter().copied().fold(f32::INFINITY, f32::min))
        .collect()
}

/// Organs from signed distance maps: organ `k` where its map is below `level` (0: the exact
/// Heaviside); where several organs claim a voxel, the smallest (most inside) map wins.
/// Returns a label map: 0 background, k + 1 for organ k.
pub fn labels_from_sdms(sdms: &[Vec<f32>], level: f32) -> Vec<u8> {
    crate::levels::decode(
        crate::losses::Head::Sdm,
        sdms,
        &vec![level; sdms.len()],
        crate::levels::Contest::OwnLevel,
    )
}

/// Organs from probabilities: organ `k` where its probability exceeds `threshold`, the most
/// probable organ winning where several do.
pub fn labels_from_probabilities(probs: &[Vec<f32>], threshold: f32) -> Vec<u8> {
    crate::levels::decode(
        crate::losses::Head::Probability,
        probs,
        &vec![threshold; probs.len()],
        crate::levels::Contest::OwnLevel,
    )
}

/// Keeps of each organ `k` in `labels` (label `k + 1`) its 6-connected components of at
/// least `shares[k]` of its largest one's voxels (1: the largest alone, 0: all).
pub fn keep_large_components(labels: &mut [u8], dims: [usize; 3], shares: &[f32]) {
    for (k, &share) in (1..=u8::MAX).zip(shares).filter(|(_, &s)| s > 0.0) {
        let mask: Vec<bool> = labels.iter().map(|&v| v == k).collect();
        if !mask.iter().any(|&m| m) {
            continue;
        }
        let keep = large_components(&mask, dims, share.into());
        for (l, (&m, &kp)) in labels.iter_mut().zip(mask.iter().zip(&keep)) {
            if m && !kp {
                *l = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_cover_the_axis_evenly() {
        assert_eq!(starts(10, 16, 0.5), vec![0]);
        assert_eq!(starts(16, 16, 0.5), vec![0]);
        let s = starts(100, 32, 0.5);
        assert_eq!((s[0], *s.last().unwrap()), (0, 68));
        for w in s.windows(2) {
            assert!(w[1] > w[0] && w[1] - w[0] <= 16, "{s:?}");
        }
    }

    #[test]
    fn gaussian_peaks_at_the_centre() {
        let g = gaussian([5, 5, 3], 0.125);
        assert_eq!(g[2 + 5 * (2 + 5)], 1.0);
        assert!(g.iter().all(|&v| (1e-3..=1.0).contains(&v)));
    }

    #[test]
    fn an_exact_model_is_reconstructed_exactly() {
        // The "model" returns, for each patch, the patch itself and its negation: blending
        // identical overlapping values must give the volume back, whatever the weights.
        let dims = [23, 17, 9];
        let image: Vec<f32> = (0..dims.iter().product::<usize>())
            .map(|i| (i as f32 * 0.37).sin())
            .collect();
        let cfg = WindowConfig {
            patch: [8, 8, 4],
            overlap: 0.5,
            sigma: 0.125,
            batch: 3,
        };
        let mut calls = 0;
        let out = sliding_window(&image, dims, 2, &cfg, &[0.0], &mut |batch: &[Vec<
            f32,
        >]|
         -> Result<
            Vec<Vec<Vec<f32>>>,
            String,
        > {
            calls += 1;
            assert!(batch.len() <= 3);
            Ok(batch
                .iter()
                .map(|p| vec![p.clone(), p.iter().map(|v| -v).collect()])
                .collect())
        })
        .unwrap();
        for (i, &v) in image.iter().enumerate() {
            assert!((out[0][i] - v).abs() < 1e-5 && (out[1][i] + v).abs() < 1e-5);
        }
        assert!(calls > 1);
    }

    #[test]
    fn a_volume_smaller_than_the_patch_is_padded() {
        let dims = [3, 3, 2];
        let image = vec![1.0; 18];
        let cfg = WindowConfig {
            patch: [4, 4, 4],
            ..Default::default()
        };
        let out = sliding_window(
            &image,
            dims,
            1,
            &cfg,
            &[-5.0],
            &mut |b: &[Vec<f32>]| -> Result<_, String> {
                assert!(b[0].contains(&-5.0), "padding reaches the model");
                Ok(b.iter().map(|p| vec![p.clone()]).collect())
            },
        )
        .unwrap();
        assert!(out[0].iter().all(|&v| v == 1.0));
        // A model that returns the wrong shape is a named error, not a panic.
        let e = sliding_window(
            &image,
            dims,
            2,
            &cfg,
            &[0.0],
            &mut |b: &[Vec<f32>]| -> Result<_, String> {
                Ok(b.iter().map(|p| vec![p.clone()]).collect())
            },
        );
        assert!(matches!(e, Err(WindowError::Shape(_))));
    }

    /// Several input channels travel one after another in each patch, each padded with its
    /// own value; a model that returns its input channels gives the volume's back.
    #[test]
    fn input_channels_are_cut_and_padded_each_on_its_own() {
        let dims = [5, 4, 3];
        let n: usize = dims.iter().product();
        let image: Vec<f32> = (0..2 * n).map(|i| i as f32).collect();
        let cfg = WindowConfig {
            patch: [4, 4, 4],
            overlap: 0.5,
            ..Default::default()
        };
        let pn = 64;
        let out = sliding_window(&image, dims, 2, &cfg, &[-1.0, -2.0], &mut |b: &[Vec<
            f32,
        >]|
         -> Result<
            _,
            String,
        > {
            for p in b {
                assert_eq!(p.len(), 2 * pn);
                // z = 3 lies outside the 3-slice volume: each channel's own pad.
                assert_eq!(p[3 * 16], -1.0);
                assert_eq!(p[pn + 3 * 16], -2.0);
            }
            Ok(b.iter()
                .map(|p| vec![p[..pn].to_vec(), p[pn..].to_vec()])
                .collect())
        })
        .unwrap();
        for (c, got) in out.iter().enumerate() {
            for (i, v) in got.iter().enumerate() {
                assert!(
                    (v - image[c * n + i]).abs() < 1e-3,
                    "channel {c} voxel {i}: {v}"
                );
            }
        }
        // An image that is not a whole number of channels is refused.
        let e = sliding_window(
            &image[1..],
            dims,
            2,
            &cfg,
            &[0.0, 0.0],
            &mut |b: &[Vec<f32>]| -> Result<_, String> { Ok(b.iter().map(|_| vec![]).collect()) },
        );
        assert!(matches!(e, Err(WindowError::Shape(_))));
    }

    /// Windows of nothing but pad run once, a lone last window travels with a copy of
    /// itself, and the maps are those of running every window on its own.
    #[test]
    fn all_pad_windows_run_once_and_no_call_has_one_patch() {
        let dims = [30, 20, 10];
        let n: usize = dims.iter().product();
        let pad = -1.0;
        // A "body" in one corner, pad (air) elsewhere.
        let image: Vec<f32> = (0..n)
            .map(|i| {
                let (x, y) = (i % dims[0], (i / dims[0]) % dims[1]);
                if x < 9 && y < 7 {
                    (i as f32 * 0.37).sin()
                } else {
                    pad
                }
            })
            .collect();
        let cfg = WindowConfig {
            patch: [8, 8, 4],
            overlap: 0.5,
            sigma: 0.125,
            batch: 2,
        };
        // Output depends on the whole patch (its mean) and on the voxel.
        let f = |p: &Vec<f32>| {
            let m = p.iter().sum::<f32>() / p.len() as f32;
            vec![p.iter().map(|v| (v * 0.5 + m).tanh()).collect::<Vec<f32>>()]
        };
        let (mut calls, mut pad_patches, mut patches) = (0, 0, 0);
        let got = sliding_window(&image, dims, 1, &cfg, &[pad], &mut |b: &[Vec<f32>]| {
            calls += 1;
            assert_eq!(b.len(), 2, "every call has the batch's two patches");
            patches += b.len();
            pad_patches += b.iter().filter(|p| p.iter().all(|&v| v == pad)).count();
            Ok::<_, String>(b.iter().map(f).collect())
        })
        .unwrap();
        // By hand: every window on its own.
        let (sx, sy, sz) = (
            starts(dims[0], 8, 0.5),
            starts(dims[1], 8, 0.5),
            starts(dims[2], 4, 0.5),
        );
        let windows = sx.len() * sy.len() * sz.len();
        let w = gaussian(cfg.patch, cfg.sigma);
        let (mut acc, mut norm) = (vec![0f32; n], vec![0f32; n]);
        for &z in &sz {
            for &y in &sy {
                for &x in &sx {
                    let idx = |a: usize, b: usize, c: usize| {
                        (x + a) + dims[0] * ((y + b) + dims[1] * (z + c))
                    };
                    let mut patch = Vec::new();
                    for c in 0..4 {
                        for b in 0..8 {
                            for a in 0..8 {
                                patch.push(image[idx(a, b, c)]);
                            }
                        }
                    }
                    let out = f(&patch);
                    for c in 0..4 {
                        for b in 0..8 {
                            for a in 0..8 {
                                let pi = a + 8 * (b + 8 * c);
                                acc[idx(a, b, c)] += w[pi] * out[0][pi];
                                norm[idx(a, b, c)] += w[pi];
                            }
                        }
                    }
                }
            }
        }
        for i in 0..n {
            assert!((got[0][i] - acc[i] / norm[i]).abs() < 1e-5, "voxel {i}");
        }
        assert!((1..=2).contains(&pad_patches), "{pad_patches}");
        assert!(patches < windows, "{patches} patches for {windows} windows");
        assert!(calls >= 2);
    }

    #[test]
    fn smallest_sdm_wins_and_heaviside_is_exact() {
        let a = vec![-0.5, -0.1, 0.0, 0.3];
        let b = vec![-0.2, -0.4, 0.2, -0.0001];
        assert_eq!(
            labels_from_sdms(&[a.clone(), b.clone()], 0.0),
            vec![1, 2, 0, 2]
        );
        // A level above 0 keeps the voxels where a map is exactly 0 (the boundary layer).
        assert_eq!(labels_from_sdms(&[a, b], 0.02), vec![1, 2, 1, 2]);
        assert_eq!(
            labels_from_probabilities(&[vec![0.9, 0.2], vec![0.6, 0.4]], 0.5),
            vec![1, 0]
        );
    }

    #[test]
    fn largest_component_per_organ() {
        let dims = [6, 1, 1];
        let mut l = vec![1, 1, 0, 1, 2, 0];
        keep_large_components(&mut l, dims, &[1.0, 1.0]);
        assert_eq!(l, vec![1, 1, 0, 0, 2, 0]);
        // Per organ: all of organ 1, the largest of organ 2.
        let mut l = vec![1, 1, 0, 1, 2, 0, 2, 2];
        keep_large_components(&mut l, [8, 1, 1], &[0.0, 1.0]);
        assert_eq!(l, vec![1, 1, 0, 1, 0, 0, 2, 2]);
        // Components of at least half the largest.
        let mut l = vec![1, 1, 1, 1, 0, 1, 1, 0, 1];
        keep_large_components(&mut l, [9, 1, 1], &[0.5]);
        assert_eq!(l, vec![1, 1, 1, 1, 0, 1, 1, 0, 0]);
    }
}

//! A trained model as stages exchange it: the UNet's weights (safetensors bytes) and the
//! config needed to use it (organs, head, intensity normalisation, grid spacing, patch).

use crate::fit::Mode;
use crate::unet::{UNet, UNetConfig};
use serde::{Deserialize, Serialize};
use shapeflow_core::{CancelToken, CaseData, Item, StageError, Volume, VoxelData};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use tch::{nn, Device, Kind, Tensor};

/// How image intensities are mapped before the network sees them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Intensity {
    /// CT (i16 images in HU): `ct`; anything else: `zscore`.
    #[default]
    Auto,
    /// Clip to the window, then map it linearly to [-1, 1].
    Ct,
    /// Per case: subtract the mean, divide by the standard deviation (MRI).
    Zscore,
    /// As stored.
    None,
}

/// The normalisation a model was trained with, resolved (never `Auto`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Norm {
    Ct { lo: f32, hi: f32 },
    Zscore,
    None,
}

impl Norm {
    /// Resolves `Auto` from the image's voxel type.
    pub fn resolve(i: Intensity, window: [f64; 2], image: &Volume) -> Norm {
        let ct = Norm::Ct {
            lo: window[0] as f32,
            hi: window[1] as f32,
        };
        match i {
            Intensity::Ct => ct,
            Intensity::Zscore => Norm::Zscore,
            Intensity::None => Norm::None,
            Intensity::Auto => match image.data {
                VoxelData::I16(_) => ct,
                _ => Norm::Zscore,
            },
        }
    }

    /// The image's voxels, normalised.
    pub fn apply(&self, image: &Volume) -> Vec<f32> {
        let mut v = image.to_f32();
        match *self {
            Norm::Ct { lo, hi } => {
                let (c, h) = ((lo + hi) / 2.0, ((hi - lo) / 2.0).max(1e-6));
                for x in &mut v {
                    *x = (x.clamp(lo, hi) - c) / h;
                }
            }
            Norm::Zscore => {
                let n = v.len().max(1) as f64;
                let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
                let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
                let sd = var.sqrt().max(1e-6);
                for x in &mut v {
                    *x = ((*x as f64 - mean) / sd) as f32;
                }
            }
            Norm::None => {}
        }
        v
    }

    /// One norm per channel of `images`, each resolved from its channel.
    pub fn resolve_channels(i: Intensity, window: [f64; 2], images: &[Arc<Volume>]) -> Vec<Norm> {
        images.iter().map(|v| Norm::resolve(i, window, v)).collect()
    }
}

/// `case` with each image channel replaced by its normalised f32 voxels (`norms`: one per
/// channel, as the model was trained).
pub fn normalise_case(norms: &[Norm], case: &CaseData) -> Result<CaseData, StageError> {
    check_channels(norms, case.images.len())?;
    let mut c = case.clone();
    c.images = norms
        .iter()
        .zip(&case.images)
        .map(|(n, img)| {
            img.with_data(VoxelData::F32(n.apply(img)))
                .map(Arc::new)
                .map_err(|e| StageError::msg(e.to_string()))
        })
        .collect::<Result<_, _>>()?;
    Ok(c)
}

/// The network's input for a whole case: each channel normalised, one after another.
pub fn normalised_input(norms: &[Norm], images: &[Arc<Volume>]) -> Result<Vec<f32>, StageError> {
    check_channels(norms, images.len())?;
    let mut x = Vec::with_capacity(images.iter().map(|v| v.len()).sum());
    for (n, img) in norms.iter().zip(images) {
        x.extend(n.apply(img));
    }
    Ok(x)
}

fn check_channels(norms: &[Norm], channels: usize) -> Result<(), StageError> {
    if norms.len() != channels {
        return Err(StageError::msg(format!(
            "the image has {channels} channel(s), the model takes {} (give one file per \
             channel, named <case>_0000, <case>_0001, ..., or a 4D NIfTI)",
            norms.len()
        )));
    }
    Ok(())
}

/// `norm` in `model.json`: one object for a one-channel model (as models made before
/// multi-channel input have it), a list of them, one per channel, otherwise.
mod one_or_many {
    use super::Norm;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &[Norm], s: S) -> Result<S::Ok, S::Error> {
        match v {
            [one] => one.serialize(s),
            many => many.serialize(s),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Norm>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(Norm),
            Many(Vec<Norm>),
        }
        Ok(match OneOrMany::deserialize(d)? {
            OneOrMany::One(n) => vec![n],
            OneOrMany::Many(v) => v,
        })
    }
}

/// Everything needed to use trained weights, saved beside them as `model.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelConfig {
    /// `shapeflow-unet/1`.
    pub format: String,
    pub unet: UNetConfig,
    /// Output channel `k` is `organs[k]`.
    pub organs: Vec<String>,
    pub mode: Mode,
    /// Sharpness of the smooth Heaviside `sigmoid(-k sdm)` (joint mode).
    pub k: f64,
    /// Per input channel, how its intensities are normalised.
    #[serde(with = "one_or_many")]
    pub norm: Vec<Norm>,
    /// Patch size (x, y, z voxels) the model was trained on.
    pub patch: [usize; 3],
    /// Spacing (mm) of the training grid.
    pub spacing: [f64; 3],
    /// Training summary: epochs, steps, final loss, validation Dice.
    #[serde(default)]
    pub trained: serde_json::Value,
    /// The images it learned from, on their own grids (absent in models made before 0.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training_data: Option<TrainingData>,
    /// Whether training mirrored left-right (the augmentation's `flip` > 0): the one
    /// mirroring test-time augmentation may average over. Absent in older models: assumed
    /// (the default `flip` is 0.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub left_right_flip: Option<bool>,
    /// Per organ, the decision level chosen on the validation cases at the end of training
    /// (`crate::levels`; what `infer.levels: validated` decodes with). Absent when the
    /// training had no validation cases, and in models made before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub levels: Option<Vec<crate::levels::OrganLevel>>,
    /// The contest rule `levels` were searched under, and decode with (`own-level`, the
    /// rule of `train`'s levels, is left out of model.json).
    #[serde(default, skip_serializing_if = "crate::levels::Contest::is_own_level")]
    pub contest: crate::levels::Contest,
    /// Whether `levels` were chosen on maps averaged with the left-right mirror image
    /// (`calibrate.tta`); left out of model.json when not.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub levels_mirrored: bool,
}

/// What the training images looked like on their own grids (before any crop or resample):
/// applying a model to an image far outside this is warned about, with the numbers.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct TrainingData {
    pub cases: usize,
    /// Smallest and largest spacing per voxel axis (mm).
    pub spacing_min: [f64; 3],
    pub spacing_max: [f64; 3],
    /// Each orientation seen (`Grid::axcodes`) and how many images had it.
    pub orientations: BTreeMap<String, usize>,
}

/// How far outside the training spacings an image may be before a warning: 1.5 times
/// beyond the smallest or the largest.
const SPACING_SLACK: f64 = 1.5;

impl TrainingData {
    pub fn add(&mut self, g: &shapeflow_core::Grid) {
        let sp = g.spacing();
        if self.cases == 0 {
            (self.spacing_min, self.spacing_max) = (sp, sp);
        } else {
            self.spacing_min = std::array::from_fn(|a| self.spacing_min[a].min(sp[a]));
            self.spacing_max = std::array::from_fn(|a| self.spacing_max[a].max(sp[a]));
        }
        *self.orientations.entry(g.axcodes()).or_default() += 1;
        self.cases += 1;
    }

    /// What is unusual about an image on grid `g`, in words (empty: nothing).
    pub fn check(&self, g: &shapeflow_core::Grid) -> Vec<String> {
        let mut out = Vec::new();
        if self.cases == 0 {
            return out;
        }
        let o = g.axcodes();
        if !self.orientations.contains_key(&o) {
            let seen: Vec<String> = self
                .orientations
                .iter()
                .map(|(k, n)| format!("{k} ({n})"))
                .collect();
            out.push(format!(
                "its orientation {o} is not among the training images' ({}): the network \
                 sees it turned; reorient it, or train on such images",
                seen.join(", ")
            ));
        }
        let sp = g.spacing();
        let far: Vec<usize> = (0..3)
            .filter(|&a| {
                sp[a] < self.spacing_min[a] / SPACING_SLACK
                    || sp[a] > self.spacing_max[a] * SPACING_SLACK
            })
            .collect();
        if !far.is_empty() {
            let fmt = |v: [f64; 3]| format!("{:.2} x {:.2} x {:.2}", v[0], v[1], v[2]);
            out.push(format!(
                "its spacing {} mm is far outside the training images' {} to {} mm (axis {}): \
                 resampling makes up or throws away that much detail",
                fmt(sp),
                fmt(self.spacing_min),
                fmt(self.spacing_max),
                far.iter()
                    .map(|a| ["x", "y", "z"][*a])
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        out
    }
}

pub const FORMAT: &str = "shapeflow-unet/1";

/// A model: config plus weights (safetensors bytes).
pub struct Model {
    pub config: ModelConfig,
    pub weights: Vec<u8>,
}

impl Model {
    pub fn to_item(&self) -> Item {
        let mut m = BTreeMap::new();
        m.insert(
            "config".into(),
            Item::Json(serde_json::to_value(&self.config).unwrap_or_default()),
        );
        m.insert("weights".into(), Item::Bytes(self.weights.clone()));
        Item::Bundle(m)
    }

    pub fn from_item(item: &Item) -> Result<Model, StageError> {
        let bad = || {
            StageError::msg(format!(
                "expected a model (from `train`), got a {} item",
                item.kind()
            ))
        };
        let config = item
            .part("config")
            .and_then(Item::as_json)
            .ok_or_else(bad)?;
        let config: ModelConfig = serde_json::from_value(config.clone())
            .map_err(|e| StageError::msg(format!("model config: {e}")))?;
        if config.format != FORMAT {
            return Err(StageError::msg(format!(
                "model format {} is not {FORMAT}",
                config.format
            )));
        }
        let Some(Item::Bytes(weights)) = item.part("weights") else {
            return Err(bad());
        };
        Ok(Model {
            config,
            weights: weights.clone(),
        })
    }

    /// Builds the network on `device` with these weights (`scratch` holds a temporary file).
    pub fn load(&self, device: Device, scratch: &Path) -> Result<(nn::VarStore, UNet), StageError> {
        let mut vs = nn::VarStore::new(device);
        let net = UNet::new(&vs.root(), self.config.unet);
        let f = scratch.join("weights.safetensors");
        std::fs::write(&f, &self.weights)
            .map_err(|e| StageError::msg(format!("{}: {e}", f.display())))?;
        tch::no_grad(|| vs.read_safetensors(&f))
            .map_err(|e| StageError::msg(format!("model weights: {e}")))?;
        let _ = std::fs::remove_file(&f);
        vs.freeze();
        Ok((vs, net))
    }

    /// The head's output for a batch of patches: SDMs (tanh) or probabilities (sigmoid),
    /// `[patch][channel][voxel]`.
    pub fn predict(
        &self,
        net: &UNet,
        patches: &[Vec<f32>],
        patch: [usize; 3],
        device: Device,
        bf16: bool,
    ) -> Result<Vec<Vec<Vec<f32>>>, tch::TchError> {
        let b = patches.len() as i64;
        let c = self.config.unet.in_channels;
        let want = c as usize * patch.iter().product::<usize>();
        if let Some(p) = patches.iter().find(|p| p.len() != want) {
            return Err(tch::TchError::Shape(format!(
                "a patch of {} values; the model takes {c} channel(s) of {patch:?} voxels",
                p.len()
            )));
        }
        let flat: Vec<f32> = patches.iter().flatten().copied().collect();
        let x = Tensor::from_slice(&flat)
            .view([b, c, patch[2] as i64, patch[1] as i64, patch[0] as i64])
            .to_device(device);
        let out = tch::no_grad(|| {
            crate::amp::autocast_bf16(bf16 && device.is_cuda(), || {
                self.config.mode.prediction(&net.forward(&x))
            })
        })
        .to_kind(Kind::Float)
        .to_device(Device::Cpu)
        .contiguous();
        let k = self.config.organs.len();
        let pn: usize = patch.iter().product();
        let all = Vec::<f32>::try_from(out.view([-1]))?;
        Ok((0..patches.len())
            .map(|i| {
                (0..k)
                    .map(|c| all[(i * k + c) * pn..(i * k + c + 1) * pn].to_vec())
                    .collect()
            })
            .collect())
    }
}

/// A model whose network is built on a device: what `train`'s validation, `calibrate` and
/// `infer` run over whole cases, so the three see a case alike.
pub struct Predictor<'a> {
    pub model: &'a Model,
    pub net: &'a UNet,
    pub device: Device,
    /// Autocast to bf16 (on CUDA only).
    pub bf16: bool,
}

impl Predictor<'_> {
    /// The head's maps over a whole image (`x`: the normalised input channels one after
    /// another, each of `dims`), one per organ: the sliding window of `wcfg`, the parts of a
    /// patch outside the image filled per channel by [`crate::tiling::pads`]. Stops between
    /// batches when `cancel` is set ([`StageError::Cancelled`]).
    pub fn maps(
        &self,
        x: &[f32],
        dims: [usize; 3],
        wcfg: &crate::tiling::WindowConfig,
        cancel: Option<&CancelToken>,
    ) -> Result<Vec<Vec<f32>>, StageError> {
        let cancelled = || cancel.is_some_and(|c| c.is_cancelled());
        let k = self.model.config.organs.len();
        let pads = crate::tiling::pads(x, dims.iter().product());
        crate::tiling::sliding_window(x, dims, k, wcfg, &pads, &mut |p| {
            if cancelled() {
                return Err(tch::TchError::Kind("cancelled".into()));
            }
            self.model
                .predict(self.net, p, wcfg.patch, self.device, self.bf16)
        })
        .map_err(|e| {
            if cancelled() {
                StageError::Cancelled
            } else {
                StageError::msg(e.to_string())
            }
        })
    }

    /// [`Predictor::maps`], averaged with those of the image mirrored left-right when `tta`
    /// (left and right organs swapped back; `affine` finds the left-right axis): only the
    /// mirroring training augmented with, never along the other axes, whose mirror images
    /// (upside down, back to front) the network has never seen. A model trained without
    /// flips (`left_right_flip: false`) is run once.
    pub fn maps_mirrored(
        &self,
        x: &[f32],
        dims: [usize; 3],
        affine: &[[f64; 4]; 4],
        wcfg: &crate::tiling::WindowConfig,
        tta: bool,
        cancel: Option<&CancelToken>,
    ) -> Result<Vec<Vec<f32>>, StageError> {
        let mut window = |x: &[f32]| self.maps(x, dims, wcfg, cancel);
        if !tta {
            return window(x);
        }
        let organs = &self.model.config.organs;
        let pairs = crate::tta::left_right_pairs(organs);
        let lr = crate::tta::left_right_axis(affine);
        let axes = crate::tta::mirror_axes(self.model.config.left_right_flip, lr);
        crate::tta::mirrored(x, dims, &axes, lr, &pairs, &mut window)
    }
}

/// `e` with `context` before its message; cancellation stays cancellation.
pub fn in_context(context: &str, e: StageError) -> StageError {
    match e {
        StageError::Cancelled => StageError::Cancelled,
        e => StageError::msg(format!("{context}: {e}")),
    }
}

/// Saves the store's variables as safetensors bytes (via a file in `scratch`).
pub fn weights_bytes(vs: &nn::VarStore, scratch: &Path) -> Result<Vec<u8>, StageError> {
    let f = scratch.join("weights-out.safetensors");
    save_cpu(vs, &f)?;
    let b = std::fs::read(&f).map_err(|e| StageError::msg(format!("{}: {e}", f.display())))?;
    let _ = std::fs::remove_file(&f);
    Ok(b)
}

/// Writes the store's variables (moved to the CPU, f32) as safetensors.
pub fn save_cpu(vs: &nn::VarStore, path: &Path) -> Result<(), StageError> {
    let named: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .collect::<BTreeMap<_, _>>()
        .into_iter()
        .map(|(n, t)| (n, t.to_device(Device::Cpu).to_kind(Kind::Float)))
        .collect();
    Tensor::write_safetensors(&named, path)
        .map_err(|e| StageError::msg(format!("{}: {e}", path.display())))
}

/// `auto` (CUDA when present), `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(s: &str) -> Result<Device, String> {
    match s {
        "auto" => Ok(Device::cuda_if_available()),
        "cpu" => Ok(Device::Cpu),
        "cuda" => Ok(Device::Cuda(0)),
        _ => s
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok())
            .map(Device::Cuda)
            .ok_or_else(|| format!("`{s}` is not a device: use auto, cpu, cuda or cuda:N")),
    }
}

/// Checks a device is usable now (CUDA present, index in range).
pub fn check_device(d: Device) -> Result<(), StageError> {
    if let Device::Cuda(i) = d {
        let n = tch::Cuda::device_count() as usize;
        if n == 0 {
            return Err(StageError::msg(
                "device cuda requested but libtorch sees no CUDA device (use device: auto or cpu)",
            ));
        }
        if i >= n {
            return Err(StageError::msg(format!(
                "device cuda:{i} requested but there are {n} CUDA devices"
            )));
        }
    }
    Ok(())
}

/// A label map from the head's outputs: SDM heads, organ where the map is below
/// `sdm_level` (0: the exact Heaviside; the smallest map wins a contested voxel); Dice
/// heads, probability above 0.5 (the largest wins).
pub fn labels_from_outputs(mode: Mode, out: &[Vec<f32>], sdm_level: f32) -> Vec<u8> {
    mode.head().decode(out, sdm_level)
}

#[cfg(test)]
mod training_data_tests {
    use super::*;
    use shapeflow_core::Grid;

    fn grid(sp: [f64; 3], flip_x: bool) -> Grid {
        let mut affine = [[0.0; 4]; 4];
        for a in 0..3 {
            affine[a][a] = sp[a];
        }
        if flip_x {
            affine[0][0] = -sp[0];
        }
        affine[3][3] = 1.0;
        Grid {
            dims: [10, 10, 10],
            affine,
        }
    }

    #[test]
    fn images_far_from_the_training_data_are_named_with_their_numbers() {
        let mut seen = TrainingData::default();
        seen.add(&grid([1.0, 1.0, 2.5], false));
        seen.add(&grid([1.2, 1.2, 3.0], false));
        assert_eq!(seen.cases, 2);
        assert_eq!(
            (seen.spacing_min, seen.spacing_max),
            ([1.0, 1.0, 2.5], [1.2, 1.2, 3.0])
        );
        // Within 1.5 times the range: nothing to say.
        assert!(seen.check(&grid([0.8, 1.1, 4.4], false)).is_empty());
        // 5 mm slices, 1.5 x beyond 3.0 mm: named, with both ranges.
        let w = seen.check(&grid([1.0, 1.0, 5.0], false));
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("5.00") && w[0].contains("3.00") && w[0].contains("axis z"),
            "{}",
            w[0]
        );
        // A mirrored image: its orientation is not the training images'.
        let w = seen.check(&grid([1.0, 1.0, 2.5], true));
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("LAS") && w[0].contains("RAS (2)"), "{}", w[0]);
    }
}

#[cfg(test)]
mod predictor_tests {
    use super::*;
    use crate::tiling::{sliding_window, WindowConfig};

    fn model(vs: &nn::VarStore) -> (Model, UNet) {
        let unet = UNetConfig {
            in_channels: 1,
            out_channels: 2,
            depth: 2,
            base_channels: 8,
            groups: 4,
            slope: 0.01,
            max_channels: 16,
        };
        let net = UNet::new(&vs.root(), unet);
        let config = ModelConfig {
            format: FORMAT.into(),
            unet,
            organs: vec!["a".into(), "b".into()],
            mode: Mode::Sdm,
            k: 1500.0,
            norm: vec![Norm::None],
            patch: [8, 8, 8],
            spacing: [1.0; 3],
            trained: Default::default(),
            training_data: None,
            left_right_flip: None,
            levels: None,
            contest: Default::default(),
            levels_mirrored: false,
        };
        let weights = Vec::new();
        (Model { config, weights }, net)
    }

    /// The shared pass covers the whole case (patches past its edge filled with its
    /// smallest value), stops when cancelled, and names what failed.
    #[test]
    fn maps_cover_a_case_stop_when_cancelled_and_keep_their_context() {
        tch::manual_seed(3);
        let vs = nn::VarStore::new(Device::Cpu);
        let (m, net) = model(&vs);
        let p = Predictor {
            model: &m,
            net: &net,
            device: Device::Cpu,
            bf16: false,
        };
        let dims = [11, 9, 6];
        let n: usize = dims.iter().product();
        let x: Vec<f32> = (0..n).map(|i| ((i * 7) % 13) as f32 / 13.0 - 0.3).collect();
        let wcfg = WindowConfig {
            patch: [8, 8, 8],
            overlap: 0.25,
            ..Default::default()
        };
        let maps = p.maps(&x, dims, &wcfg, None).unwrap();
        assert_eq!(maps.len(), 2);
        assert!(maps.iter().all(|c| c.len() == n));
        assert!(maps
            .iter()
            .flatten()
            .all(|v| v.is_finite() && v.abs() <= 1.0));
        // The same as the window run by hand with the image's smallest value outside it.
        let by_hand = sliding_window(&x, dims, 2, &wcfg, &[-0.3], &mut |b| {
            m.predict(&net, b, wcfg.patch, Device::Cpu, false)
        })
        .unwrap();
        assert!(maps == by_hand, "maps differ from the window run by hand");
        let zeros = sliding_window(&x, dims, 2, &wcfg, &[0.0], &mut |b| {
            m.predict(&net, b, wcfg.patch, Device::Cpu, false)
        })
        .unwrap();
        assert!(maps != zeros, "the pad value reaches the maps");

        let cancel = CancelToken::default();
        cancel.cancel();
        let e = p.maps(&x, dims, &wcfg, Some(&cancel)).unwrap_err();
        assert!(matches!(in_context("case `x`", e), StageError::Cancelled));
        let e = p.maps(&x[1..], dims, &wcfg, None).unwrap_err();
        let e = in_context("case `x`", e).to_string();
        assert!(e.starts_with("case `x`: ") && e.contains("voxels"), "{e}");
    }
    /// Mirroring averages the pass over the image with the pass over its left-right mirror
    /// image flipped back, the paired organs' channels swapped back; a model trained
    /// without flips, or `tta: false`, runs once.
    #[test]
    fn mirrored_maps_average_the_mirror_image_with_pairs_swapped_back() {
        tch::manual_seed(4);
        let vs = nn::VarStore::new(Device::Cpu);
        let (mut m, net) = model(&vs);
        m.config.organs = vec!["Parotid_L".into(), "Parotid_R".into()];
        let dims = [10, 7, 5];
        let n: usize = dims.iter().product();
        let x: Vec<f32> = (0..n).map(|i| ((i * 5) % 11) as f32 / 11.0).collect();
        let wcfg = WindowConfig {
            patch: [8, 8, 8],
            ..Default::default()
        };
        // The left-right axis of this affine is voxel axis 1.
        let mut affine = [[0.0; 4]; 4];
        (affine[0][1], affine[1][0], affine[2][2], affine[3][3]) = (-1.0, 1.0, 1.0, 1.0);
        let p = Predictor {
            model: &m,
            net: &net,
            device: Device::Cpu,
            bf16: false,
        };
        let mirrored = |p: &Predictor, tta: bool| {
            p.maps_mirrored(&x, dims, &affine, &wcfg, tta, None)
                .unwrap()
        };
        let plain = p.maps(&x, dims, &wcfg, None).unwrap();
        let mut xm = x.clone();
        crate::tta::flip(&mut xm, dims, 1);
        let mut mirror = p.maps(&xm, dims, &wcfg, None).unwrap();
        for c in &mut mirror {
            crate::tta::flip(c, dims, 1);
        }
        mirror.swap(0, 1);
        let got = mirrored(&p, true);
        for k in 0..2 {
            for i in 0..n {
                let want = (plain[k][i] + mirror[k][i]) / 2.0;
                assert!((got[k][i] - want).abs() < 1e-6, "organ {k}, voxel {i}");
            }
        }
        assert!(got != plain, "the mirror image reaches the maps");
        assert!(mirrored(&p, false) == plain);
        let mut config = m.config.clone();
        config.left_right_flip = Some(false);
        let unflipped = Model {
            config,
            weights: Vec::new(),
        };
        let q = Predictor {
            model: &unflipped,
            ..p
        };
        assert!(
            mirrored(&q, true) == plain,
            "trained without flips: one pass"
        );
    }
}

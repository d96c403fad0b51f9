//! The `augment` stage: per case, what the training sampler needs (each organ's voxel
//! locations for foreground-biased patch centres, intensity statistics), plus the
//! augmentation policy, validated. `train` streams its batches from these items, so a
//! change of augmentation params recomputes these cheap items and retrains, nothing
//! upstream (as nnU-Net precomputes class locations during preprocessing).

use crate::augment::{organ_voxels, AugmentConfig};
use serde::Deserialize;
use shapeflow_core::{
    CaseInfo, Inputs, Item, Kind, Port, Shape, Stage, StageCtx, StageError, VoxelData,
};
use std::collections::BTreeMap;

pub const HELP: &str = r#"
Prepares each training and validation case for the `train` stage's patch sampler, as
nnU-Net does during preprocessing: the voxel locations of every organ (patch centres are
drawn on a present organ's voxel with probability `foreground`, each organ equally
likely), intensity statistics of the image (overall and inside the organs), and the
augmentation policy below, which `train` applies to every patch: one random spatial
transform per patch (rotation, isotropic scale, optional smooth elastic field, left-right
flip with `_L`/`_R` organs swapped) applied to image, labels (nearest) and SDMs (linear,
multiplied by the scale), then intensity scale, shift and gamma and Gaussian noise on the
normalised image. Every patch draws from its own random stream (seed, epoch, index), so
batches do not depend on the number of loader threads.

Inputs: the cases (image + labels on the training grid) and their SDMs (checked to be on
the same grid). Cases of the `test` split are skipped. Cheap: changing a param here
recomputes these items and retrains, nothing upstream.
"#;

/// Intensity statistics of one case's image (in the image's own units, before training's
/// normalisation).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct IntensityStats {
    pub min: f64,
    pub max: f64,
    pub mean: f64,
    pub sd: f64,
    /// Inside the union of the organs (0 when no organ is present).
    pub organ_mean: f64,
    pub organ_sd: f64,
}

impl IntensityStats {
    fn of(image: &VoxelData, labels: &[u8]) -> Self {
        let (mut n, mut s, mut s2) = (0f64, 0f64, 0f64);
        let (mut fn_, mut fs, mut fs2) = (0f64, 0f64, 0f64);
        let (mut min, mut max) = (f64::INFINITY, f64::NEG_INFINITY);
        for (i, &l) in labels.iter().enumerate().take(image.len()) {
            let v = image.get_f32(i) as f64;
            min = min.min(v);
            max = max.max(v);
            n += 1.0;
            s += v;
            s2 += v * v;
            if l > 0 {
                fn_ += 1.0;
                fs += v;
                fs2 += v * v;
            }
        }
        let moments = |n: f64, s: f64, s2: f64| {
            if n == 0.0 {
                (0.0, 0.0)
            } else {
                let m = s / n;
                (m, (s2 / n - m * m).max(0.0).sqrt())
            }
        };
        let (mean, sd) = moments(n, s, s2);
        let (organ_mean, organ_sd) = moments(fn_, fs, fs2);
        IntensityStats {
            min: if n > 0.0 { min } else { 0.0 },
            max: if n > 0.0 { max } else { 0.0 },
            mean,
            sd,
            organ_mean,
            organ_sd,
        }
    }
}

/// One case's sampler data: the `augment` stage's item, read by `train`.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplerData {
    pub organs: Vec<String>,
    /// Voxel indices of each organ on the training grid.
    pub organ_voxels: Vec<Vec<u32>>,
    pub stats: IntensityStats,
    pub policy: AugmentConfig,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Meta {
    organs: Vec<String>,
    counts: Vec<usize>,
    stats: IntensityStats,
    policy: AugmentConfig,
}

impl SamplerData {
    pub fn to_item(&self) -> Item {
        let mut bytes =
            Vec::with_capacity(4 * self.organ_voxels.iter().map(Vec::len).sum::<usize>());
        for v in self.organ_voxels.iter().flatten() {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        let meta = Meta {
            organs: self.organs.clone(),
            counts: self.organ_voxels.iter().map(Vec::len).collect(),
            stats: self.stats,
            policy: self.policy.clone(),
        };
        let mut parts = BTreeMap::new();
        parts.insert(
            "sampler".to_string(),
            Item::Json(serde_json::to_value(meta).unwrap_or_default()),
        );
        parts.insert("voxels".to_string(), Item::Bytes(bytes));
        Item::Bundle(parts)
    }

    pub fn from_item(item: &Item) -> Result<SamplerData, StageError> {
        let bad = |m: &str| StageError::msg(format!("not sampler data (from `augment`): {m}"));
        let meta = item
            .part("sampler")
            .and_then(Item::as_json)
            .ok_or_else(|| bad("no `sampler` part"))?;
        let meta = Meta::deserialize(meta).map_err(|e| bad(&e.to_string()))?;
        let Some(Item::Bytes(bytes)) = item.part("voxels") else {
            return Err(bad("no `voxels` part"));
        };
        if bytes.len() != 4 * meta.counts.iter().sum::<usize>() {
            return Err(bad("voxel list length disagrees with its counts"));
        }
        let mut all = bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]));
        let organ_voxels = meta
            .counts
            .iter()
            .map(|&n| all.by_ref().take(n).collect())
            .collect();
        Ok(SamplerData {
            organs: meta.organs,
            organ_voxels,
            stats: meta.stats,
            policy: meta.policy,
        })
    }
}

/// Checks an augmentation policy, as (field, message).
pub fn check_policy(p: &AugmentConfig) -> Result<(), (String, String)> {
    let unit = |f: &str, v: f64| {
        if (0.0..=1.0).contains(&v) {
            Ok(())
        } else {
            Err((f.to_string(), "must be a probability in [0, 1]".to_string()))
        }
    };
    unit("foreground", p.foreground)?;
    unit("flip", p.flip)?;
    let range = |f: &str, r: [f64; 2], positive: bool| {
        if r.iter().all(|v| v.is_finite()) && r[0] <= r[1] && (!positive || r[0] > 0.0) {
            Ok(())
        } else {
            Err((
                f.to_string(),
                format!(
                    "must be [low, high] with low <= high{}",
                    if positive { " and low > 0" } else { "" }
                ),
            ))
        }
    };
    range("scale", p.scale, true)?;
    range("intensity_scale", p.intensity_scale, true)?;
    range("intensity_shift", p.intensity_shift, false)?;
    range("gamma", p.gamma, true)?;
    for (f, v) in [
        ("elastic_mm", p.elastic_mm),
        ("noise", p.noise),
        ("elastic_grid_mm", p.elastic_grid_mm),
    ] {
        if !(v.is_finite() && v >= 0.0) {
            return Err((f.to_string(), "must be a non-negative number".into()));
        }
    }
    if p.elastic_grid_mm <= 0.0 {
        return Err(("elastic_grid_mm".into(), "must be positive".into()));
    }
    if p.rotation_deg
        .iter()
        .any(|r| !(r.is_finite() && (0.0..=180.0).contains(r)))
    {
        return Err((
            "rotation_deg".into(),
            "each must be in [0, 180] degrees".into(),
        ));
    }
    Ok(())
}

/// The `augment` stage.
pub struct Augment(pub AugmentConfig);

impl Stage for Augment {
    fn output(&self) -> Kind {
        Kind::SamplerData
    }

    fn ports(&self) -> Vec<Port> {
        vec![
            Port::new("cases", Kind::Case),
            Port::new("sdms", Kind::Sdms),
        ]
    }

    fn shape(&self) -> Shape {
        Shape::PerCase
    }

    fn accepts(&self, case: &CaseInfo) -> bool {
        case.split.as_deref() != Some("test")
    }

    fn run_case(&self, _: &StageCtx, info: &CaseInfo, inputs: &Inputs) -> Result<Item, StageError> {
        let at = |m: String| StageError::msg(format!("case `{}`: {m}", info.id));
        let case = inputs.case("cases")?;
        let sdms = inputs.sdms("sdms")?;
        let image = case
            .image()
            .ok_or_else(|| at("the case has no image".into()))?;
        case.check_grids().map_err(at)?;
        let labels = case
            .labels
            .as_ref()
            .ok_or_else(|| at("the case has no labels".into()))?;
        let VoxelData::U8(l) = &labels.data else {
            return Err(at("labels must be u8".into()));
        };
        if !image.grid().same_as(&labels.grid(), 1e-3) {
            return Err(at("image and labels differ in grid".into()));
        }
        if sdms.organs != case.organs {
            return Err(at(format!(
                "SDM organs {:?} differ from the case's {:?}",
                sdms.organs, case.organs
            )));
        }
        if let Some(m) = sdms.maps.iter().flatten().next() {
            if m.dims != image.dims {
                return Err(at("SDM grid differs from the image".into()));
            }
        }
        Ok(SamplerData {
            organs: case.organs.clone(),
            organ_voxels: organ_voxels(l, case.organs.len()),
            stats: IntensityStats::of(&image.data, l),
            policy: self.0.clone(),
        }
        .to_item())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampler_data_roundtrips_and_rejects_damage() {
        let d = SamplerData {
            organs: vec!["a".into(), "b".into(), "c".into()],
            organ_voxels: vec![vec![1, 5, 9], vec![], vec![4_000_000_000]],
            stats: IntensityStats::of(&VoxelData::I16(vec![-10, 0, 10, 40]), &[0, 1, 1, 0]),
            policy: AugmentConfig::default(),
        };
        assert_eq!(d.stats.min, -10.0);
        assert_eq!(d.stats.max, 40.0);
        assert_eq!(d.stats.mean, 10.0);
        assert_eq!((d.stats.organ_mean, d.stats.organ_sd), (5.0, 5.0));
        let item = d.to_item();
        assert_eq!(SamplerData::from_item(&item).unwrap(), d);
        let Item::Bundle(mut parts) = item else {
            unreachable!()
        };
        parts.insert("voxels".into(), Item::Bytes(vec![0; 8]));
        assert!(SamplerData::from_item(&Item::Bundle(parts)).is_err());
    }

    #[test]
    fn bad_policies_name_their_field() {
        let p = AugmentConfig {
            flip: 1.5,
            ..Default::default()
        };
        assert_eq!(check_policy(&p).unwrap_err().0, "flip");
        let p = AugmentConfig {
            gamma: [1.2, 0.8],
            ..Default::default()
        };
        assert_eq!(check_policy(&p).unwrap_err().0, "gamma");
        assert!(check_policy(&AugmentConfig::default()).is_ok());
    }
}

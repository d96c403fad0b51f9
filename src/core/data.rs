//! How the data model's types travel between stages: as [`Item`]s, and which [`Kind`] of
//! data a stage produces or takes, so that `validate` can check a pipeline's wiring before
//! anything runs.
//!
//! A case is an [`Item::Bundle`] with parts `image` (then `image.1`, ... for more
//! channels), `labels` (each optional, shared
//! `Arc<Volume>`s: decoding copies no voxels) and `meta`; SDMs a bundle of per-organ maps
//! (quantised to i16 by default) and `sdm-meta`.

use crate::item::Item;
use crate::stage::StageError;
use shapeflow_volume::{CaseData, Grid, SdmSet, SdmStorage, SdmUnits, Volume, VoxelData};
use std::collections::BTreeMap;
use std::sync::Arc;

/// What kind of data an item holds. Stages declare the kind they produce and the kinds
/// their input ports take; `validate` checks every `after:` against them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// A case: image and/or organ labels with the organ table ([`CaseData`]).
    Case,
    /// A case's per-organ signed distance maps ([`SdmSet`]).
    Sdms,
    /// Per-case data a training sampler needs (organ locations, intensity statistics).
    SamplerData,
    /// A trained model.
    Model,
    /// Predicted organs of a case (a [`CaseData`] whose labels are predictions).
    Predictions,
    /// Per-case metrics.
    Metrics,
    /// A report (files for people; nothing reads it).
    Report,
    /// Anything else, e.g. an `exec` stage's outputs: checked by the stage at run time.
    Any,
}

impl Kind {
    /// How a user reads it in messages.
    pub fn describe(self) -> &'static str {
        match self {
            Kind::Case => "cases (image + labels)",
            Kind::Sdms => "signed distance maps",
            Kind::SamplerData => "sampler data (from `augment`)",
            Kind::Model => "a trained model",
            Kind::Predictions => "predictions",
            Kind::Metrics => "metrics",
            Kind::Report => "a report",
            Kind::Any => "any item",
        }
    }

    /// Whether a port of kind `self` takes an item of kind `given`. Predictions are cases
    /// too (a case port reads them, e.g. `evaluate`'s reference side cannot tell), but a
    /// predictions port takes only predictions.
    pub fn takes(self, given: Kind) -> bool {
        self == Kind::Any
            || given == Kind::Any
            || self == given
            || (self == Kind::Case && given == Kind::Predictions)
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Meta {
    organs: Vec<String>,
    present: Vec<bool>,
    original: Option<Grid>,
    #[serde(default)]
    notes: serde_json::Map<String, serde_json::Value>,
}

/// The part holding image channel `c`: `image` for the first (as items made before
/// multi-channel cases have it), `image.1`, `image.2`, ... for the others.
fn channel_part(c: usize) -> String {
    if c == 0 {
        "image".to_string()
    } else {
        format!("image.{c}")
    }
}

/// [`CaseData`] to and from its item.
pub trait CaseDataItem: Sized {
    fn to_item(&self) -> Item;
    fn from_item(item: &Item) -> Result<Self, StageError>;
}

impl CaseDataItem for CaseData {
    fn to_item(&self) -> Item {
        let mut parts = BTreeMap::new();
        for (c, i) in self.images.iter().enumerate() {
            parts.insert(channel_part(c), Item::Volume(Arc::clone(i)));
        }
        if let Some(l) = &self.labels {
            parts.insert("labels".to_string(), Item::Volume(Arc::clone(l)));
        }
        let meta = Meta {
            organs: self.organs.clone(),
            present: self.present.clone(),
            original: self.original,
            notes: self.notes.clone(),
        };
        parts.insert(
            "meta".to_string(),
            Item::Json(serde_json::to_value(meta).unwrap_or_default()),
        );
        Item::Bundle(parts)
    }

    fn from_item(item: &Item) -> Result<CaseData, StageError> {
        let meta = item.part("meta").and_then(Item::as_json).ok_or_else(|| {
            StageError::msg(format!(
                "expected a case (image, labels, meta), got a {} item",
                item.kind()
            ))
        })?;
        let meta: Meta = serde_json::from_value(meta.clone())
            .map_err(|e| StageError::msg(format!("bad case metadata: {e}")))?;
        Ok(CaseData {
            images: (0..)
                .map_while(|c| item.part(&channel_part(c)).and_then(Item::as_shared_volume))
                .collect(),
            labels: item.part("labels").and_then(Item::as_shared_volume),
            organs: meta.organs,
            present: meta.present,
            original: meta.original,
            notes: meta.notes,
        })
    }
}

/// [`SdmSet`] to and from its item.
pub trait SdmSetItem: Sized {
    /// Encodes with `storage`; i16 keeps infinities as the extreme values.
    fn to_item(&self, storage: SdmStorage) -> Item;
    /// Decodes (and dequantizes) an item made by [`SdmSetItem::to_item`].
    fn from_item(item: &Item) -> Result<Self, StageError>;
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SdmMeta {
    organs: Vec<String>,
    present: Vec<bool>,
    units: SdmUnits,
    storage: SdmStorage,
    /// Per organ: stored value x scale = distance (i16 storage).
    scales: Vec<f64>,
    /// The maps' grid (all maps of a case share it).
    grid: Option<Grid>,
    spacing: Option<[f64; 3]>,
}

const I16_MAX: f64 = 32767.0;

/// i16 storage layout: values quantised, delta-coded along x (each row restarts), then split
/// into a plane of low bytes and a plane of high bytes. SDMs are smooth, so the deltas are
/// small and the high-byte plane is nearly constant: zstd compresses it to almost nothing.
fn pack_i16(vals: &[f32], row: usize, scale: f64) -> Vec<u8> {
    let n = vals.len();
    let mut out = vec![0u8; 2 * n];
    let (lo, hi) = out.split_at_mut(n);
    let mut prev = 0i16;
    for (i, &x) in vals.iter().enumerate() {
        let q = if x.is_finite() {
            (x as f64 / scale)
                .round()
                .clamp(-(I16_MAX - 1.0), I16_MAX - 1.0) as i16
        } else {
            (x.signum() as f64 * I16_MAX) as i16
        };
        if i % row == 0 {
            prev = 0;
        }
        let d = q.wrapping_sub(prev).to_le_bytes();
        prev = q;
        lo[i] = d[0];
        hi[i] = d[1];
    }
    out
}

fn unpack_i16(bytes: &[u8], row: usize, scale: f64) -> Vec<f32> {
    let n = bytes.len() / 2;
    let (lo, hi) = bytes.split_at(n);
    let mut out = Vec::with_capacity(n);
    let mut prev = 0i16;
    for i in 0..n {
        if i % row == 0 {
            prev = 0;
        }
        let q = prev.wrapping_add(i16::from_le_bytes([lo[i], hi[i]]));
        prev = q;
        out.push(if q.unsigned_abs() as f64 >= I16_MAX {
            (q as f32).signum() * f32::INFINITY
        } else {
            (q as f64 * scale) as f32
        });
    }
    out
}

impl SdmSetItem for SdmSet {
    /// Encodes with `storage`; i16 keeps infinities as the extreme values.
    fn to_item(&self, storage: SdmStorage) -> Item {
        let mut parts = BTreeMap::new();
        let mut scales = Vec::new();
        let first = self.maps.iter().flatten().next();
        for (name, map) in self.organs.iter().zip(&self.maps) {
            let Some(v) = map else {
                scales.push(0.0);
                continue;
            };
            let owned;
            let vals: &[f32] = match &v.data {
                VoxelData::F32(d) => d,
                _ => {
                    owned = v.to_f32();
                    &owned
                }
            };
            match storage {
                SdmStorage::F32 => {
                    scales.push(1.0);
                    parts.insert(format!("sdm/{name}"), Item::Volume(Arc::new(v.clone())));
                }
                SdmStorage::I16 => {
                    let m = vals
                        .iter()
                        .filter(|x| x.is_finite())
                        .fold(0f32, |a, &x| a.max(x.abs())) as f64;
                    // Finite values use +-32766; +-32767 is kept for infinities.
                    let scale = if m > 0.0 {
                        m / (I16_MAX - 1.0)
                    } else {
                        1.0 / (I16_MAX - 1.0)
                    };
                    scales.push(scale);
                    parts.insert(
                        format!("sdm/{name}"),
                        Item::Bytes(pack_i16(vals, v.dims[0].max(1), scale)),
                    );
                }
            }
        }
        let meta = SdmMeta {
            organs: self.organs.clone(),
            present: self.maps.iter().map(Option::is_some).collect(),
            units: self.units,
            storage,
            scales,
            grid: first.map(Volume::grid),
            spacing: first.map(|v| v.spacing),
        };
        parts.insert(
            "sdm-meta".into(),
            Item::Json(serde_json::to_value(meta).unwrap_or_default()),
        );
        Item::Bundle(parts)
    }

    /// Decodes (and dequantizes) an item made by [`SdmSet::to_item`].
    fn from_item(item: &Item) -> Result<SdmSet, StageError> {
        let meta = item
            .part("sdm-meta")
            .and_then(Item::as_json)
            .ok_or_else(|| {
                StageError::msg(format!(
                    "expected signed distance maps, got a {} item",
                    item.kind()
                ))
            })?;
        let meta: SdmMeta = serde_json::from_value(meta.clone())
            .map_err(|e| StageError::msg(format!("bad SDM metadata: {e}")))?;
        let mut maps = Vec::new();
        for (k, name) in meta.organs.iter().enumerate() {
            if !meta.present.get(k).copied().unwrap_or(false) {
                maps.push(None);
                continue;
            }
            let part = item
                .part(&format!("sdm/{name}"))
                .ok_or_else(|| StageError::msg(format!("SDM of {name} missing from the item")))?;
            let v = match (part, meta.storage) {
                (Item::Volume(v), SdmStorage::F32) => Volume::clone(v),
                (Item::Bytes(b), SdmStorage::I16) => {
                    let (Some(grid), Some(spacing)) = (meta.grid, meta.spacing) else {
                        return Err(StageError::msg("SDM metadata lacks the grid"));
                    };
                    let n = grid.dims.iter().product::<usize>();
                    if b.len() != 2 * n {
                        return Err(StageError::msg(format!(
                            "SDM of {name}: {} bytes for {n} voxels",
                            b.len()
                        )));
                    }
                    let s = meta.scales.get(k).copied().unwrap_or(1.0);
                    Volume {
                        dims: grid.dims,
                        spacing,
                        affine: grid.affine,
                        data: VoxelData::F32(unpack_i16(b, grid.dims[0].max(1), s)),
                    }
                }
                _ => {
                    return Err(StageError::msg(format!(
                        "SDM of {name} is not stored as its metadata says"
                    )))
                }
            };
            maps.push(Some(v));
        }
        Ok(SdmSet {
            organs: meta.organs,
            maps,
            units: meta.units,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A case's channels travel in order (`image`, `image.1`, ...) and come back shared,
    /// not copied; a one-channel case is the bundle it always was (`image` alone).
    #[test]
    fn image_channels_travel_in_order() {
        let v = |x: f32| {
            Arc::new(Volume::new([2, 1, 1], [1.0; 3], VoxelData::F32(vec![x, x])).unwrap())
        };
        let mut case = CaseData {
            images: vec![v(0.0), v(1.0), v(2.0)],
            labels: None,
            organs: vec!["a".into()],
            present: vec![false],
            original: None,
            notes: Default::default(),
        };
        let item = case.to_item();
        let back = CaseData::from_item(&item).unwrap();
        assert_eq!(back, case);
        assert!(Arc::ptr_eq(&back.images[2], &case.images[2]));
        let decoded = CaseData::from_item(&Item::decode(&item.encode()).unwrap()).unwrap();
        assert_eq!(decoded, case);
        case.images.truncate(1);
        let item = case.to_item();
        let Item::Bundle(parts) = &item else {
            panic!("a case is a bundle")
        };
        assert_eq!(
            parts.keys().collect::<Vec<_>>(),
            ["image", "meta"],
            "the parts of a one-channel case"
        );
    }
}

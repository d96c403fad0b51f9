//! A case as stages exchange it: image, organ label map, organ table, original grid.
//!
//! Stored as an [`Item::Bundle`] with parts `image`, `labels` (each optional) and `meta`.

use crate::item::Item;
use crate::stage::StageError;
use crate::volume::{Grid, Volume, VoxelData};
use std::collections::BTreeMap;

/// One case's image and organs.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseData {
    /// The image (CT in HU as i16, MRI as f32), if the dataset has one.
    pub image: Option<Volume>,
    /// One u8 label map: 0 background, `k` = `organs[k - 1]`. Same grid as the image.
    pub labels: Option<Volume>,
    /// Organ names, in label order.
    pub organs: Vec<String>,
    /// Whether each organ was annotated in this case. An absent organ is never an empty
    /// mask by accident: stages must treat it as unknown, not as "no organ here".
    pub present: Vec<bool>,
    /// The grid the case was loaded on, so predictions can be written back onto it.
    pub original: Option<Grid>,
    /// Provenance and per-stage notes (source files, crop box, overlaps), free-form.
    pub notes: serde_json::Map<String, serde_json::Value>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Meta {
    organs: Vec<String>,
    present: Vec<bool>,
    original: Option<Grid>,
    #[serde(default)]
    notes: serde_json::Map<String, serde_json::Value>,
}

impl CaseData {
    /// The grid of the image, else of the labels.
    pub fn grid(&self) -> Option<Grid> {
        self.image
            .as_ref()
            .or(self.labels.as_ref())
            .map(Volume::grid)
    }

    /// The binary mask of organ `k` (0-based) as u8 {0,1}, if labels exist.
    pub fn organ_mask(&self, k: usize) -> Option<Vec<u8>> {
        let VoxelData::U8(l) = &self.labels.as_ref()?.data else {
            return None;
        };
        let label = (k + 1) as u8;
        Some(l.iter().map(|&v| (v == label) as u8).collect())
    }

    /// Voxel count of each organ's label.
    pub fn organ_voxels(&self) -> Vec<usize> {
        let mut counts = vec![0usize; self.organs.len()];
        if let Some(Volume {
            data: VoxelData::U8(l),
            ..
        }) = &self.labels
        {
            for &v in l {
                if v > 0 && (v as usize) <= counts.len() {
                    counts[v as usize - 1] += 1;
                }
            }
        }
        counts
    }

    pub fn to_item(&self) -> Item {
        let mut parts = BTreeMap::new();
        if let Some(i) = &self.image {
            parts.insert("image".to_string(), Item::Volume(i.clone()));
        }
        if let Some(l) = &self.labels {
            parts.insert("labels".to_string(), Item::Volume(l.clone()));
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

    pub fn from_item(item: &Item) -> Result<CaseData, StageError> {
        let meta = item.part("meta").and_then(Item::as_json).ok_or_else(|| {
            StageError::msg(format!(
                "expected a case (image, labels, meta), got a {} item",
                item.kind()
            ))
        })?;
        let meta: Meta = serde_json::from_value(meta.clone())
            .map_err(|e| StageError::msg(format!("bad case metadata: {e}")))?;
        Ok(CaseData {
            image: item.part("image").and_then(Item::as_volume).cloned(),
            labels: item.part("labels").and_then(Item::as_volume).cloned(),
            organs: meta.organs,
            present: meta.present,
            original: meta.original,
            notes: meta.notes,
        })
    }
}

/// Units of a set of signed distance maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SdmUnits {
    /// Inside scaled by its largest distance, outside by its largest: [-1, 1].
    Normalized,
    /// Millimetres.
    Mm,
}

/// How SDM voxels are stored in the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SdmStorage {
    F32,
    /// i16 with a per-map scale: 1/32767 of the largest finite magnitude.
    #[default]
    I16,
}

/// One case's signed distance maps, one per organ (`None`: organ absent in this case).
#[derive(Debug, Clone, PartialEq)]
pub struct SdmSet {
    pub organs: Vec<String>,
    /// f32 volumes, negative inside.
    pub maps: Vec<Option<Volume>>,
    pub units: SdmUnits,
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

impl SdmSet {
    /// Encodes with `storage`; i16 keeps infinities as the extreme values.
    pub fn to_item(&self, storage: SdmStorage) -> Item {
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
                    parts.insert(format!("sdm/{name}"), Item::Volume(v.clone()));
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
    pub fn from_item(item: &Item) -> Result<SdmSet, StageError> {
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
                (Item::Volume(v), SdmStorage::F32) => v.clone(),
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

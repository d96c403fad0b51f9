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

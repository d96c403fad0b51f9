//! A case: image, organ label map, organ table, original grid; and its signed distance maps.

use crate::volume::{Grid, Volume, VoxelData};
use std::sync::Arc;

/// One case's image and organs.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseData {
    /// The image's channels (CT in HU as i16, MRI as f32; several sequences, or CT and
    /// PET), all on one grid; empty if the dataset has no image. Shared between the stages
    /// that read them: a stage that changes one makes its own (`Arc::make_mut`).
    pub images: Vec<Arc<Volume>>,
    /// One u8 label map: 0 background, `k` = `organs[k - 1]`. Same grid as the image.
    pub labels: Option<Arc<Volume>>,
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

impl CaseData {
    /// The image's first channel (the one to show, and to crop or check grids by).
    pub fn image(&self) -> Option<&Arc<Volume>> {
        self.images.first()
    }

    /// The grid of the image, else of the labels.
    pub fn grid(&self) -> Option<Grid> {
        self.image().or(self.labels.as_ref()).map(|v| v.grid())
    }

    /// Checks that every channel lies on the grid of the first, and the labels too: a
    /// message naming the first that does not.
    pub fn check_grids(&self) -> Result<(), String> {
        let Some(first) = self.image() else {
            return Ok(());
        };
        let g = first.grid();
        for (c, v) in self.images.iter().enumerate().skip(1) {
            if !v.grid().same_as(&g, 1e-3) {
                return Err(format!(
                    "image channel {c} is on another grid than channel 0 ({:?} at {:?} mm, \
                     channel 0 {:?} at {:?} mm)",
                    v.dims, v.spacing, first.dims, first.spacing
                ));
            }
        }
        if let Some(l) = &self.labels {
            if !l.grid().same_as(&g, 1e-3) {
                return Err(format!(
                    "the labels are on another grid than the image ({:?} at {:?} mm, image \
                     {:?} at {:?} mm)",
                    l.dims, l.spacing, first.dims, first.spacing
                ));
            }
        }
        Ok(())
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
        if let Some(VoxelData::U8(l)) = self.labels.as_deref().map(|v| &v.data) {
            for &v in l {
                if v > 0 && (v as usize) <= counts.len() {
                    counts[v as usize - 1] += 1;
                }
            }
        }
        counts
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
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
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

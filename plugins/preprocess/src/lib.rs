//! The `preprocess` family: `head-crop` and `resample`.

pub mod crop;
/// Resampling lives in the core (the `infer` stage maps predictions back with it).
pub use shapeflow_core::resample;

use crop::CropBox;
use resample::{grid_with_spacing, resample_to_grid, ImageInterp, LabelInterp};
use serde::{Deserialize, Serialize};
use shapeflow_core::CaseDataItem as _;
use shapeflow_core::{
    CaseData, CaseInfo, Inputs, Item, Kind, ParamError, Plugin, Port, Registry, Shape, Stage,
    StageCtx, StageDef, StageError,
};
use std::sync::Arc;

/// Registers `head-crop` and `resample`.
pub struct PreprocessPlugin;

impl Plugin for PreprocessPlugin {
    fn name(&self) -> &'static str {
        "preprocess"
    }

    fn register(&self, registry: &mut Registry) {
        registry.add(StageDef::<CropParams> {
            name: "head-crop",
            version: 1,
            summary:
                "Crop a head-and-neck CT to a box around the head (or an MRI to its foreground)",
            help: CROP_HELP,
            build: |p, _| {
                if p.size_mm.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
                    return Err(ParamError {
                        path: vec!["size_mm".into()],
                        message: "sizes must be positive mm".into(),
                    });
                }
                Ok(Arc::new(HeadCrop(p)))
            },
        });
        registry.add(StageDef::<ResampleParams> {
            name: "resample",
            version: 1,
            summary: "Resample image and labels to a target spacing (mm), geometry kept exact",
            help: RESAMPLE_HELP,
            build: |p, _| {
                if p.spacing.len() != 3 {
                    return Err(ParamError {
                        path: vec!["spacing".into()],
                        message: "give three values, e.g. [1.0, 1.0, keep]".into(),
                    });
                }
                for (i, s) in p.spacing.iter().enumerate() {
                    if let AxisSpacing::Mm(v) = s {
                        if !(v.is_finite() && *v > 0.0) {
                            return Err(ParamError {
                                path: vec!["spacing".into(), i.to_string()],
                                message: "spacing must be a positive number of mm or `keep`".into(),
                            });
                        }
                    }
                }
                Ok(Arc::new(Resample(p)))
            },
        });
    }
}

const CROP_HELP: &str = r#"
The MICCAI 2015 scans run from the top of the head to the shoulders; the paper crops around
the head. `mode: ct`:
  1. body = voxels above `threshold_hu` (default -300 HU: air and the table fall out);
  2. keep the body's largest 6-connected component (drops the couch and stray noise);
  3. the superior voxel axis is the one most aligned with world z; the top of the skull is
     the most superior slice holding body;
  4. the box spans `size_mm` along each axis: from the top of the skull downwards, and
     centred in-plane on the body's centroid within that slab; it is shifted (not shrunk)
     to stay inside the volume, and clipped only if the volume is smaller.
`mode: foreground` (MRI): the bounding box of voxels different from `background`, grown by
`margin_mm`.
Labels are cropped with the image. The box and the number of organ voxels left outside it
are recorded in the case notes; the original grid is kept, so predictions can be put back.
"#;

const RESAMPLE_HELP: &str = r#"
Resamples image and labels onto a grid of the target spacing covering the same field of
view: the number of voxels is rounded and the origin moves by half the old minus half the
new spacing, so the grid's outer edge stays in place. Interpolation happens in world
coordinates through each volume's affine, so the same function maps predictions back onto
the original grid (undoing crop and resample at once).
Images: trilinear (default), cubic B-spline with its exact prefilter, or nearest.
Labels: per-label linear interpolation followed by arg-max (default, nnU-Net's way), or
nearest neighbour.
"#;

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum CropMode {
    #[default]
    Ct,
    Foreground,
}

/// Params of `head-crop`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CropParams {
    /// ct: find the head from HU; foreground: bounding box of non-background voxels.
    pub mode: CropMode,
    /// ct: HU above which a voxel is body.
    pub threshold_hu: f32,
    /// ct: the box size in mm along each voxel axis.
    pub size_mm: [f64; 3],
    /// foreground: the background intensity.
    pub background: f32,
    /// foreground: margin around the foreground box.
    pub margin_mm: f64,
}

impl Default for CropParams {
    fn default() -> Self {
        CropParams {
            mode: CropMode::Ct,
            threshold_hu: -300.0,
            size_mm: [200.0, 200.0, 220.0],
            background: 0.0,
            margin_mm: 10.0,
        }
    }
}

struct HeadCrop(CropParams);

/// Crops `case` to `b` (every image channel and the labels), recording the box and what it lost.
pub fn crop_case(case: &CaseData, b: CropBox) -> CaseData {
    let mut out = meta_only(case);
    out.images = case
        .images
        .iter()
        .map(|v| Arc::new(v.crop(b.start, b.size)))
        .collect();
    out.labels = case
        .labels
        .as_ref()
        .map(|v| Arc::new(v.crop(b.start, b.size)));
    let lost = case
        .labels
        .as_ref()
        .map(|l| crop::lost_label_voxels(l, &b))
        .unwrap_or(0);
    out.notes
        .insert("crop".into(), serde_json::to_value(b).unwrap_or_default());
    out.notes
        .insert("crop_lost_organ_voxels".into(), serde_json::json!(lost));
    out
}

impl Stage for HeadCrop {
    fn output(&self) -> Kind {
        Kind::Case
    }

    fn ports(&self) -> Vec<Port> {
        vec![Port::new("cases", Kind::Case)]
    }

    fn shape(&self) -> Shape {
        Shape::PerCase
    }

    fn run_case(
        &self,
        _ctx: &StageCtx,
        case: &CaseInfo,
        inputs: &Inputs,
    ) -> Result<Item, StageError> {
        let data = inputs.case("cases")?;
        let img = data.image().ok_or_else(|| {
            StageError::msg(format!("case {}: head-crop needs an image", case.id))
        })?;
        let b = match self.0.mode {
            CropMode::Ct => crop::head_box(img, self.0.threshold_hu, self.0.size_mm)
                .map_err(|e| StageError::msg(format!("case {}: {e}", case.id)))?,
            CropMode::Foreground => crop::foreground_box(img, self.0.background, self.0.margin_mm),
        };
        let out = crop_case(&data, b);
        if let Some(lost) = out
            .notes
            .get("crop_lost_organ_voxels")
            .and_then(|v| v.as_u64())
        {
            if lost > 0 {
                tracing::warn!(case = %case.id, lost, "organ voxels fall outside the head-crop box; enlarge `size_mm`");
            }
        }
        Ok(out.to_item())
    }
}

/// One axis of a target spacing.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum AxisSpacing {
    Mm(f64),
    Keep(Keep),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Keep {
    Keep,
}

/// Params of `resample`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ResampleParams {
    /// Target mm per voxel axis; `keep` keeps an axis.
    pub spacing: Vec<AxisSpacing>,
    /// Image interpolation.
    pub image: ImageInterp,
    /// Label interpolation: per-label linear then arg-max, or nearest.
    pub labels: LabelInterp,
}

impl Default for ResampleParams {
    fn default() -> Self {
        ResampleParams {
            spacing: vec![AxisSpacing::Keep(Keep::Keep); 3],
            image: ImageInterp::Linear,
            labels: LabelInterp::Linear,
        }
    }
}

struct Resample(ResampleParams);

/// Resamples a case's image channels and labels to `target` spacing.
pub fn resample_case(
    case: &CaseData,
    target: [Option<f64>; 3],
    image: ImageInterp,
    labels: LabelInterp,
) -> Result<CaseData, String> {
    let grid = case.grid().ok_or("the case has neither image nor labels")?;
    let dst = grid_with_spacing(&grid, target);
    let mut out = meta_only(case);
    // Each channel with its own background (air in a CT, 0 in a PET or an MRI).
    out.images = case
        .images
        .iter()
        .map(|v| resample_to_grid(v, &dst, image, labels, background_of(v)).map(Arc::new))
        .collect::<Result<_, _>>()?;
    out.labels = case
        .labels
        .as_ref()
        .map(|v| resample_to_grid(v, &dst, image, labels, 0.0).map(Arc::new))
        .transpose()?;
    Ok(out)
}

/// `case` without its voxels (no copy of image or labels).
fn meta_only(case: &CaseData) -> CaseData {
    CaseData {
        images: Vec::new(),
        labels: None,
        organs: case.organs.clone(),
        present: case.present.clone(),
        original: case.original,
        notes: case.notes.clone(),
    }
}

/// The value outside the field of view: the image's minimum (air for CT).
fn background_of(v: &shapeflow_core::Volume) -> f32 {
    use shapeflow_core::VoxelData;
    match &v.data {
        VoxelData::U8(d) => d.iter().copied().min().unwrap_or(0) as f32,
        VoxelData::I16(d) => d.iter().copied().min().unwrap_or(0) as f32,
        VoxelData::F32(d) => d.iter().copied().fold(f32::INFINITY, f32::min),
    }
}

impl Stage for Resample {
    fn output(&self) -> Kind {
        Kind::Case
    }

    fn ports(&self) -> Vec<Port> {
        vec![Port::new("cases", Kind::Case)]
    }

    fn shape(&self) -> Shape {
        Shape::PerCase
    }

    fn run_case(
        &self,
        _ctx: &StageCtx,
        case: &CaseInfo,
        inputs: &Inputs,
    ) -> Result<Item, StageError> {
        let data = inputs.case("cases")?;
        let target: [Option<f64>; 3] = std::array::from_fn(|a| match self.0.spacing.get(a) {
            Some(AxisSpacing::Mm(v)) => Some(*v),
            _ => None,
        });
        let out = resample_case(&data, target, self.0.image, self.0.labels)
            .map_err(|e| StageError::msg(format!("case {}: {e}", case.id)))?;
        Ok(out.to_item())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_are_documented() {
        Registry::new()
            .with(&PreprocessPlugin)
            .unwrap()
            .check_docs()
            .unwrap();
    }
}

//! The `labels` family: stages on organ label maps. `select-organs` keeps a subset of a
//! case's organs (a second model trained on some organs only); `merge-labels` combines two
//! predictions of one case (a cascade: a model for the small organs merged into the
//! predictions of a model for all of them).

use serde::{Deserialize, Serialize};
use shapeflow_core::CaseDataItem as _;
use shapeflow_core::{
    CaseData, CaseInfo, Inputs, Item, Kind, ParamError, Plugin, Port, Registry, Shape, Stage,
    StageCtx, StageDef, StageError, Volume, VoxelData,
};
use shapeflow_formats::NiftiIo;
use std::collections::BTreeSet;
use std::sync::Arc;

/// Registers `select-organs` and `merge-labels`.
pub struct LabelsPlugin;

impl Plugin for LabelsPlugin {
    fn name(&self) -> &'static str {
        "labels"
    }

    fn register(&self, registry: &mut Registry) {
        registry.add(StageDef::<SelectParams> {
            name: "select-organs",
            version: 1,
            summary: "Keep some of a case's organs; the others become background",
            help: SELECT_HELP,
            build: |p, _| {
                check_organ_list(&p.organs, "organs")?;
                Ok(Arc::new(Select(p)))
            },
        });
        registry.add(StageDef::<MergeParams> {
            name: "merge-labels",
            version: 1,
            summary: "Merge a second prediction's organs into a first one's (a cascade)",
            help: MERGE_HELP,
            build: |p, _| {
                for (name, v) in [("base", &p.base), ("overlay", &p.overlay)] {
                    if v.trim().is_empty() {
                        return Err(ParamError {
                            path: vec![name.into()],
                            message: format!(
                                "name the `after:` stage whose predictions are the {name}"
                            ),
                        });
                    }
                }
                if p.base == p.overlay {
                    return Err(ParamError {
                        path: vec!["overlay".into()],
                        message: format!("`overlay` names `base`'s stage `{}`", p.base),
                    });
                }
                if let Some(o) = &p.organs {
                    check_organ_list(o, "organs")?;
                }
                Ok(Arc::new(Merge(p)))
            },
        });
    }
}

const SELECT_HELP: &str = r#"
Keeps the listed organs of every case, relabelled 1, 2, ... in the order listed; the
voxels of the other organs become background, and so does what they were: a voxel of a
contoured organ left out is known not to be any kept organ, so a model trained on the
selection learns it as background. Whether each kept organ was contoured (absent is not
empty) carries over. Images are shared, not copied. A case without one of the listed
organs in its organ table is an error naming the case and the organ.

An image without labels or organ table (a new patient under `pipeline predict`) passes
through with the listed organs marked not contoured.

Used to train a second model on some organs only (the small ones, which share the steps of
a model for all organs badly), merged back into the first model's predictions by
`merge-labels`.
"#;

const MERGE_HELP: &str = r#"
Per case, combines the predictions of two `after:` stages (usually two `infer` stages) on
the same grid: the `base` prediction keeps its organs, except those taken from `overlay`
(`organs`, default all of the overlay's), whose base voxels are cleared; each taken organ's
overlay voxels are then written where the base says background (`priority: base`, the
default: the base model's other organs keep their voxels) or everywhere (`priority:
overlay`). Organs the base does not have are appended after its own. The output is a
prediction like `infer`'s (label map + organ names, written as NIfTI with labels.json for
people), for `evaluate` and `report`.
"#;

fn check_organ_list(organs: &[String], field: &str) -> Result<(), ParamError> {
    if organs.is_empty() {
        return Err(ParamError {
            path: vec![field.into()],
            message: "list at least one organ".into(),
        });
    }
    if organs.len() > 255 {
        return Err(ParamError {
            path: vec![field.into()],
            message: format!("{} organs: a u8 label map holds at most 255", organs.len()),
        });
    }
    let mut seen = BTreeSet::new();
    for (i, o) in organs.iter().enumerate() {
        if !seen.insert(o.as_str()) {
            return Err(ParamError {
                path: vec![field.into(), i.to_string()],
                message: format!("organ `{o}` is listed twice"),
            });
        }
    }
    Ok(())
}

/// Params of `select-organs`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SelectParams {
    /// The organs to keep, in the order of their new labels (1, 2, ...).
    pub organs: Vec<String>,
}

struct Select(SelectParams);

/// `case` with only `organs` (relabelled in that order); the labels of the others become
/// background. Errors name the organ the case lacks.
pub fn select_organs(case: &CaseData, organs: &[String]) -> Result<CaseData, String> {
    // An image without labels (a new patient, as `pipeline predict` replays this stage):
    // the listed organs, none contoured.
    if case.labels.is_none() && case.organs.is_empty() {
        let mut out = case.clone();
        out.organs = organs.to_vec();
        out.present = vec![false; organs.len()];
        return Ok(out);
    }
    // new_label[old label] (0 = background).
    let mut new_label = [0u8; 256];
    let mut present = Vec::with_capacity(organs.len());
    for (i, o) in organs.iter().enumerate() {
        let at = case.organs.iter().position(|c| c == o).ok_or_else(|| {
            format!(
                "no organ `{o}` (its organs: {})",
                if case.organs.is_empty() {
                    "none".to_string()
                } else {
                    case.organs.join(", ")
                }
            )
        })?;
        if at >= 255 {
            return Err(format!(
                "organ `{o}` is number {}: a u8 label map holds 255",
                at + 1
            ));
        }
        new_label[at + 1] = u8::try_from(i + 1).map_err(|_| "more than 255 organs")?;
        present.push(case.present.get(at).copied().unwrap_or(false));
    }
    let labels = match &case.labels {
        None => None,
        Some(l) => {
            let VoxelData::U8(d) = &l.data else {
                return Err("its label map is not u8".into());
            };
            let data = d.iter().map(|&v| new_label[v as usize]).collect();
            Some(Arc::new(
                l.with_data(VoxelData::U8(data))
                    .map_err(|e| e.to_string())?,
            ))
        }
    };
    let mut notes = case.notes.clone();
    notes.insert("select_organs".into(), serde_json::json!(organs));
    Ok(CaseData {
        images: case.images.clone(),
        labels,
        organs: organs.to_vec(),
        present,
        original: case.original,
        notes,
    })
}

impl Stage for Select {
    fn output(&self) -> Kind {
        Kind::Case
    }

    fn ports(&self) -> Vec<Port> {
        vec![Port::new("cases", Kind::Case)]
    }

    fn shape(&self) -> Shape {
        Shape::PerCase
    }

    fn run_case(&self, _: &StageCtx, info: &CaseInfo, inputs: &Inputs) -> Result<Item, StageError> {
        let case = inputs.case("cases")?;
        select_organs(&case, &self.0.organs)
            .map(|c| c.to_item())
            .map_err(|e| StageError::msg(format!("case {}: {e}", info.id)))
    }
}

/// Who keeps a voxel both predictions claim.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// The base prediction's organ; the overlay fills only the base's background.
    #[default]
    Base,
    /// The overlay's organ.
    Overlay,
}

/// Params of `merge-labels`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct MergeParams {
    /// The `after:` stage whose prediction is the base (e.g. the model of all organs).
    pub base: String,
    /// The `after:` stage whose organs are merged in (e.g. the model of the small organs).
    pub overlay: String,
    /// The overlay's organs to take (default: all of them).
    pub organs: Option<Vec<String>>,
    /// Who keeps a voxel both claim.
    pub priority: Priority,
}

struct Merge(MergeParams);

/// The merged prediction: `base`'s organs less those taken from `overlay`, then the taken
/// organs written where the base says background (or everywhere with
/// [`Priority::Overlay`]). Both label maps must be on one grid.
pub fn merge_labels(
    base: &CaseData,
    overlay: &CaseData,
    take: Option<&[String]>,
    priority: Priority,
) -> Result<CaseData, String> {
    let taken: Vec<String> = match take {
        Some(t) => t.to_vec(),
        None => overlay.organs.clone(),
    };
    let (Some(bl), Some(ol)) = (&base.labels, &overlay.labels) else {
        return Err(format!(
            "the {} prediction has no label map",
            if base.labels.is_none() {
                "base"
            } else {
                "overlay"
            }
        ));
    };
    if !bl.grid().same_as(&ol.grid(), 1e-4) {
        return Err(format!(
            "the base and overlay predictions are on different grids (dims {:?} and {:?}): \
             predict both on the same grid",
            bl.dims, ol.dims
        ));
    }
    let (VoxelData::U8(b), VoxelData::U8(o)) = (&bl.data, &ol.data) else {
        return Err("a prediction's label map is not u8".into());
    };
    let mut organs = base.organs.clone();
    let mut present = base.present.clone();
    present.resize(organs.len(), true);
    // base label -> output label (a taken organ's base voxels are cleared).
    let mut from_base = [0u8; 256];
    for (i, name) in base.organs.iter().enumerate().take(255) {
        if !taken.contains(name) {
            from_base[i + 1] = (i + 1) as u8;
        }
    }
    // overlay label -> output label (0: not taken).
    let mut from_overlay = [0u8; 256];
    for name in &taken {
        let at = overlay
            .organs
            .iter()
            .position(|c| c == name)
            .ok_or_else(|| {
                format!(
                    "the overlay prediction has no organ `{name}` (its organs: {})",
                    overlay.organs.join(", ")
                )
            })?;
        if at >= 255 {
            return Err(format!(
                "the overlay's organ `{name}` is number {}: a u8 label map holds 255",
                at + 1
            ));
        }
        let out = match organs.iter().position(|c| c == name) {
            Some(i) => {
                present[i] = overlay.present.get(at).copied().unwrap_or(true);
                i
            }
            None => {
                organs.push(name.clone());
                present.push(overlay.present.get(at).copied().unwrap_or(true));
                organs.len() - 1
            }
        };
        from_overlay[at + 1] =
            u8::try_from(out + 1).map_err(|_| "the merged prediction has over 255 organs")?;
    }
    let data: Vec<u8> = b
        .iter()
        .zip(o)
        .map(|(&bv, &ov)| {
            let kept = from_base[bv as usize];
            let put = from_overlay[ov as usize];
            match (put, priority) {
                (0, _) => kept,
                (_, Priority::Overlay) => put,
                (_, Priority::Base) if kept == 0 => put,
                _ => kept,
            }
        })
        .collect();
    let labels = bl
        .with_data(VoxelData::U8(data))
        .map_err(|e| e.to_string())?;
    let mut notes = base.notes.clone();
    notes.insert(
        "merge_labels".into(),
        serde_json::json!({"taken": taken, "priority": priority, "overlay": overlay.notes}),
    );
    Ok(CaseData {
        images: Vec::new(),
        labels: Some(Arc::new(labels)),
        organs,
        present,
        original: base.original,
        notes,
    })
}

impl Stage for Merge {
    fn output(&self) -> Kind {
        Kind::Predictions
    }

    fn ports(&self) -> Vec<Port> {
        vec![
            Port::new("base", Kind::Case).from_param("base", Some(&self.0.base)),
            Port::new("overlay", Kind::Case).from_param("overlay", Some(&self.0.overlay)),
        ]
    }

    fn shape(&self) -> Shape {
        Shape::PerCase
    }

    fn run_case(
        &self,
        ctx: &StageCtx,
        info: &CaseInfo,
        inputs: &Inputs,
    ) -> Result<Item, StageError> {
        let at = |e: String| StageError::msg(format!("case {}: {e}", info.id));
        let base = inputs.case("base")?;
        let overlay = inputs.case("overlay")?;
        let merged =
            merge_labels(&base, &overlay, self.0.organs.as_deref(), self.0.priority).map_err(at)?;
        write_for_people(ctx, &info.id, &merged).map_err(at)?;
        Ok(merged.to_item())
    }
}

/// The merged label map as `<output dir>/<case>.nii.gz` and the organ names as
/// `labels.json`, as `infer` writes its predictions.
fn write_for_people(ctx: &StageCtx, id: &str, case: &CaseData) -> Result<(), String> {
    let out = &ctx.output_dir;
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    if let Some(l) = &case.labels {
        let v: &Volume = l;
        v.write_nifti_atomic(&out.join(format!("{id}.nii.gz")))
            .map_err(|e| e.to_string())?;
    }
    let names: serde_json::Map<String, serde_json::Value> = case
        .organs
        .iter()
        .enumerate()
        .map(|(i, o)| ((i + 1).to_string(), serde_json::json!(o)))
        .collect();
    let bytes = serde_json::to_vec_pretty(&names).map_err(|e| e.to_string())?;
    shapeflow_core::atomic::write(&out.join("labels.json"), &bytes)
        .map_err(|e| format!("{}: {e}", out.join("labels.json").display()))
}

#[cfg(test)]
mod tests;

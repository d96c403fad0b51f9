//! DICOM-RT: `<root>/<case>/` holds one image series (CT or MR slices) and, where the case is
//! contoured, one RTSTRUCT whose ROIs become the organ label map on the series' grid
//! (`shapeflow_formats::dicom`). ROI names are matched to `organs` case-insensitively, or
//! through `aliases`; an organ without an ROI is absent. A case folder without an RTSTRUCT is
//! an unlabeled (test) case.

use super::{Found, Layout};
use crate::datasets;
use shapeflow_core::{CaseData, VoxelData};
use shapeflow_formats::dicom;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub struct DicomRt {
    root: PathBuf,
    organs: Vec<String>,
    aliases: BTreeMap<String, Vec<String>>,
}

impl DicomRt {
    pub fn new(root: PathBuf, organs: Vec<String>, aliases: BTreeMap<String, Vec<String>>) -> Self {
        DicomRt {
            root,
            organs,
            aliases,
        }
    }

    fn case_dirs(&self) -> Result<Vec<PathBuf>, String> {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(&self.root)
            .map_err(|e| format!("{}: {e}", self.root.display()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        dirs.sort();
        Ok(dirs)
    }

    /// The names an organ's ROI may have (lower case).
    fn names(&self, organ: &str) -> Vec<String> {
        std::iter::once(organ.to_string())
            .chain(self.aliases.get(organ).into_iter().flatten().cloned())
            .map(|n| n.trim().to_ascii_lowercase())
            .collect()
    }
}

/// The one image series and the structure set (if any) of a case folder.
fn contents(dir: &Path) -> Result<(Vec<PathBuf>, Option<PathBuf>), String> {
    let f = dicom::scan(dir).map_err(|e| e.to_string())?;
    let series = f
        .one_series(dir)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{}: no DICOM image series", dir.display()))?
        .to_vec();
    let rt = match f.structure_sets.as_slice() {
        [] => None,
        [one] => Some(one.clone()),
        many => {
            return Err(format!(
                "{}: {} RTSTRUCT files; a case folder holds one",
                dir.display(),
                many.len()
            ))
        }
    };
    Ok((series, rt))
}

impl Layout for DicomRt {
    fn discover(&self, _seed: u64) -> Result<Vec<Found>, String> {
        let mut out = Vec::new();
        for dir in self.case_dirs()? {
            let (series, rt) = contents(&dir)?;
            let files: Vec<PathBuf> = series.iter().cloned().chain(rt.clone()).collect();
            out.push(Found {
                id: dir
                    .file_name()
                    .map(|n| n.to_string_lossy().to_string())
                    .unwrap_or_default(),
                split: None,
                labeled: rt.is_some(),
                fingerprint: datasets::fingerprint(&self.root, &files),
            });
        }
        if out.is_empty() {
            return Err(format!("{}: no case folders", self.root.display()));
        }
        Ok(out)
    }

    fn read(&self, _seed: u64, id: &str) -> Result<CaseData, String> {
        let dir = self.root.join(id);
        let (series, rt) = contents(&dir)?;
        let image = dicom::read_series(&series).map_err(|e| e.to_string())?;
        let mut notes = serde_json::Map::new();
        notes.insert("source".into(), dir.display().to_string().into());
        let Some(rt) = rt else {
            notes.insert("unlabeled".into(), true.into());
            return Ok(CaseData {
                original: Some(image.grid()),
                images: vec![Arc::new(image)],
                labels: None,
                organs: self.organs.clone(),
                present: vec![false; self.organs.len()],
                notes,
            });
        };
        let rois = dicom::read_rtstruct(&rt).map_err(|e| e.to_string())?;
        let grid = image.grid();
        let mut masks: Vec<Option<Vec<u8>>> = Vec::with_capacity(self.organs.len());
        for organ in &self.organs {
            let names = self.names(organ);
            let matching: Vec<&dicom::Roi> = rois
                .iter()
                .filter(|r| names.contains(&r.name.trim().to_ascii_lowercase()))
                .collect();
            masks.push(match matching.as_slice() {
                [] => None,
                [roi] => Some(
                    dicom::rasterise(roi, &grid).map_err(|e| format!("{}: {e}", rt.display()))?,
                ),
                many => {
                    return Err(format!(
                        "{}: organ `{organ}` matches {} ROIs ({}); keep one in `aliases`",
                        rt.display(),
                        many.len(),
                        many.iter()
                            .map(|r| r.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                }
            });
        }
        let views: Vec<Option<&[u8]>> = masks.iter().map(|m| m.as_deref()).collect();
        let (labels, overlaps) = datasets::labels_from_masks(image.len(), &self.organs, &views);
        let unmatched: Vec<&str> = rois
            .iter()
            .filter(|r| {
                !self
                    .organs
                    .iter()
                    .any(|o| self.names(o).contains(&r.name.trim().to_ascii_lowercase()))
            })
            .map(|r| r.name.as_str())
            .collect();
        notes.insert("overlapping_voxels".into(), overlaps.into());
        notes.insert("rois_not_loaded".into(), serde_json::json!(unmatched));
        let labels = image
            .with_data(VoxelData::U8(labels))
            .map_err(|e| e.to_string())?;
        Ok(CaseData {
            original: Some(grid),
            images: vec![Arc::new(image)],
            labels: Some(Arc::new(labels)),
            organs: self.organs.clone(),
            present: masks.iter().map(Option::is_some).collect(),
            notes,
        })
    }
}

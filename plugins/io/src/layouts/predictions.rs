//! A folder of predictions as `pipeline predict` and `infer` write them: `<case>.nii.gz` label
//! maps (1..K) and `labels.json` (`{"1": organ, ...}`), beside optional per-organ maps
//! `<case>_<organ>.nii.gz`, which are skipped. No images: the cases are label maps only, for
//! `evaluate` against a reference dataset.

use super::{Found, Layout};
use crate::datasets;
use shapeflow_core::{CaseData, VoxelData};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub struct Predictions {
    root: PathBuf,
}

const ENDING: &str = ".nii.gz";

impl Predictions {
    pub fn new(root: PathBuf) -> Self {
        Predictions { root }
    }

    /// The organ names in label order, from `labels.json`.
    fn organs(&self) -> Result<Vec<String>, String> {
        let path = self.root.join("labels.json");
        let at = |m: String| format!("{}: {m}", path.display());
        let text = std::fs::read_to_string(&path).map_err(|e| {
            at(format!(
                "{e} (a predictions folder holds labels.json, as `pipeline predict` writes it)"
            ))
        })?;
        let j: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&text).map_err(|e| at(format!("invalid JSON: {e}")))?;
        let mut table = Vec::new();
        for (value, name) in &j {
            let v: u8 = value
                .parse()
                .ok()
                .filter(|&v| v > 0)
                .ok_or_else(|| at(format!("`{value}` is not a label value from 1 to 255")))?;
            let name = name
                .as_str()
                .ok_or_else(|| at(format!("label {value}: the organ name must be a string")))?;
            table.push((v, name.to_string()));
        }
        table.sort();
        for (i, (v, name)) in table.iter().enumerate() {
            if *v as usize != i + 1 {
                return Err(at(format!(
                    "labels must be 1..{} without gaps; `{name}` is {v}",
                    table.len()
                )));
            }
        }
        if table.is_empty() {
            return Err(at("no labels".into()));
        }
        Ok(table.into_iter().map(|(_, n)| n).collect())
    }

    fn file(&self, id: &str) -> PathBuf {
        self.root.join(format!("{id}{ENDING}"))
    }
}

impl Layout for Predictions {
    fn discover(&self, _seed: u64) -> Result<Vec<Found>, String> {
        let organs = self.organs()?;
        let entries =
            std::fs::read_dir(&self.root).map_err(|e| format!("{}: {e}", self.root.display()))?;
        let stems: BTreeSet<String> = entries
            .flatten()
            .filter(|e| e.path().is_file())
            .filter_map(|e| {
                e.file_name()
                    .to_string_lossy()
                    .strip_suffix(ENDING)
                    .map(str::to_string)
            })
            .collect();
        // `<case>_<organ>` beside `<case>` is a map, not a case.
        let is_map = |s: &str| {
            organs.iter().any(|o| {
                s.strip_suffix(o.as_str())
                    .and_then(|p| p.strip_suffix('_'))
                    .is_some_and(|case| stems.contains(case))
            })
        };
        let found: Vec<Found> = stems
            .iter()
            .filter(|s| !is_map(s))
            .map(|id| Found {
                labeled: true,
                fingerprint: datasets::fingerprint(
                    &self.root,
                    &[self.file(id), self.root.join("labels.json")],
                ),
                id: id.clone(),
                split: None,
            })
            .collect();
        if found.is_empty() {
            return Err(format!(
                "{}: no predictions (<case>{ENDING})",
                self.root.display()
            ));
        }
        Ok(found)
    }

    fn read(&self, _seed: u64, id: &str) -> Result<CaseData, String> {
        let organs = self.organs()?;
        let path = self.file(id);
        let labels = datasets::as_labels(datasets::read_volume(&path)?, &path)?;
        check_values(&labels.data, organs.len(), &path)?;
        let mut notes = serde_json::Map::new();
        notes.insert("source".into(), path.display().to_string().into());
        Ok(CaseData {
            images: Vec::new(),
            original: Some(labels.grid()),
            labels: Some(Arc::new(labels)),
            present: vec![true; organs.len()],
            organs,
            notes,
        })
    }
}

/// Every value a label of the table (0..=k).
fn check_values(data: &VoxelData, k: usize, path: &Path) -> Result<(), String> {
    let VoxelData::U8(v) = data else {
        return Ok(());
    };
    match v.iter().copied().max() {
        Some(m) if m as usize > k => Err(format!(
            "{}: label value {m}, but labels.json lists {k} organ(s)",
            path.display()
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shapeflow_core::Volume;
    use shapeflow_formats::NiftiIo;

    fn write_case(dir: &Path, name: &str, values: Vec<u8>) {
        let v = Volume::new([2, 2, 1], [1.0; 3], VoxelData::U8(values)).unwrap();
        v.write_nifti(&dir.join(name)).unwrap();
    }

    /// Cases are the label maps; per-organ maps beside them are not cases; values outside
    /// the table and a missing or gapped table are named errors.
    #[test]
    fn reads_label_maps_skips_organ_maps_and_names_mistakes() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("labels.json"),
            r#"{"1": "Brainstem", "2": "Mandible"}"#,
        )
        .unwrap();
        write_case(d.path(), "pt_1.nii.gz", vec![0, 1, 2, 0]);
        write_case(d.path(), "pt_1_Mandible.nii.gz", vec![0, 0, 0, 0]);
        write_case(d.path(), "pt_2.nii.gz", vec![0, 3, 0, 0]);
        let p = Predictions::new(d.path().to_path_buf());
        let ids: Vec<String> = p.discover(0).unwrap().into_iter().map(|f| f.id).collect();
        assert_eq!(ids, ["pt_1", "pt_2"]);
        let c = p.read(0, "pt_1").unwrap();
        assert_eq!(c.organs, ["Brainstem", "Mandible"]);
        assert!(c.images.is_empty());
        assert_eq!(
            c.labels.as_ref().unwrap().data,
            VoxelData::U8(vec![0, 1, 2, 0])
        );
        let e = p.read(0, "pt_2").unwrap_err();
        assert!(
            e.contains("pt_2.nii.gz") && e.contains("label value 3"),
            "{e}"
        );
        std::fs::write(
            d.path().join("labels.json"),
            r#"{"1": "Brainstem", "3": "Mandible"}"#,
        )
        .unwrap();
        let e = p.discover(0).unwrap_err();
        assert!(e.contains("without gaps"), "{e}");
        std::fs::remove_file(d.path().join("labels.json")).unwrap();
        let e = p.discover(0).unwrap_err();
        assert!(e.contains("labels.json"), "{e}");
    }
}

//! nnU-Net v2 raw datasets: `dataset.json` (`channel_names`, `labels` as name -> value,
//! `file_ending`, `numTraining`), `imagesTr/<case>_0000<ending>`, `labelsTr/<case><ending>`,
//! and `imagesTs/<case>_0000<ending>` (no labels: test cases for `infer`).

use super::{Found, Layout};
use crate::datasets::{self, MsdCase};
use shapeflow_core::CaseData;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub struct NnUnet {
    root: PathBuf,
    merge: BTreeMap<String, Vec<u8>>,
}

/// What `dataset.json` says.
struct Description {
    ending: String,
    /// (organ, label values), background excluded, in label-value order.
    labels: Vec<(String, Vec<u8>)>,
    num_training: Option<usize>,
}

impl NnUnet {
    pub fn new(root: PathBuf, merge: BTreeMap<String, Vec<u8>>) -> Self {
        NnUnet { root, merge }
    }

    fn description(&self) -> Result<Description, String> {
        let path = self.root.join("dataset.json");
        let at = |m: String| format!("{}: {m}", path.display());
        let text = std::fs::read_to_string(&path).map_err(|e| at(e.to_string()))?;
        let j: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| at(format!("invalid JSON: {e}")))?;
        if j.get("channel_names").is_none() {
            return Err(at(if j.get("training").is_some() {
                "no `channel_names`: this is an MSD / nnU-Net v1 dataset; use `format: msd`".into()
            } else {
                "no `channel_names`: not an nnU-Net v2 dataset.json".into()
            }));
        }
        let channels = j["channel_names"]
            .as_object()
            .ok_or_else(|| at("`channel_names` must be a mapping".into()))?;
        if channels.len() != 1 {
            let names: Vec<String> = channels
                .values()
                .map(|v| v.as_str().unwrap_or("?").to_string())
                .collect();
            return Err(at(format!(
                "{} channels ({}): multi-channel input is not supported yet; one channel is",
                channels.len(),
                names.join(", ")
            )));
        }
        let ending = j["file_ending"]
            .as_str()
            .ok_or_else(|| at("missing `file_ending` (e.g. \".nii.gz\")".into()))?
            .to_string();
        if shapeflow_formats::for_path(Path::new(&format!("x{ending}"))).is_none() {
            return Err(at(format!(
                "`file_ending: {ending}` is not an image format this build reads"
            )));
        }
        let mut labels = Vec::new();
        let table = j["labels"]
            .as_object()
            .ok_or_else(|| at("missing `labels` (name -> value)".into()))?;
        let mut background = false;
        for (name, v) in table {
            let value = match v.as_u64() {
                Some(x) if x <= 255 => x as u8,
                _ if v.is_array() => {
                    return Err(at(format!(
                        "label `{name}: {v}` is a region (several values): region-based \
                         labels are not supported; list each label as name: value, and merge \
                         with the load stage's `merge`"
                    )))
                }
                _ => {
                    return Err(at(format!(
                        "label `{name}: {v}` must be a whole number from 0 to 255"
                    )))
                }
            };
            if value == 0 {
                background = true;
            } else {
                labels.push((name.clone(), vec![value]));
            }
        }
        if !background {
            return Err(at("`labels` has no background (value 0)".into()));
        }
        labels.sort_by_key(|(_, v)| v[0]);
        Ok(Description {
            ending,
            labels,
            num_training: j["numTraining"].as_u64().map(|n| n as usize),
        })
    }

    fn cases(&self, d: &Description) -> Result<Vec<MsdCase>, String> {
        let images = self.root.join("imagesTr");
        let suffix = format!("_0000{}", d.ending);
        let mut cases = Vec::new();
        let entries =
            std::fs::read_dir(&images).map_err(|e| format!("{}: {e}", images.display()))?;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let Some(id) = name.strip_suffix(&suffix) else {
                continue;
            };
            let label = self.root.join("labelsTr").join(format!("{id}{}", d.ending));
            if !label.exists() {
                return Err(format!(
                    "{}: no label for case `{id}` (expected {})",
                    self.root.display(),
                    label.display()
                ));
            }
            cases.push(MsdCase {
                id: id.to_string(),
                image: e.path(),
                label,
            });
        }
        cases.sort_by(|a, b| a.id.cmp(&b.id));
        if let Some(n) = d.num_training {
            if n != cases.len() {
                return Err(format!(
                    "{}: `numTraining` is {n} but imagesTr holds {} cases (files `<case>{suffix}`)",
                    self.root.join("dataset.json").display(),
                    cases.len()
                ));
            }
        }
        Ok(cases)
    }

    fn organs(&self, d: &Description) -> Vec<(String, Vec<u8>)> {
        if self.merge.is_empty() {
            d.labels.clone()
        } else {
            self.merge
                .iter()
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect()
        }
    }
}

impl NnUnet {
    /// `imagesTs/<case>_0000<ending>`: images without labels, as (case id, path).
    fn tests(&self, d: &Description) -> Result<Vec<(String, PathBuf)>, String> {
        let dir = self.root.join("imagesTs");
        if !dir.is_dir() {
            return Ok(Vec::new());
        }
        let suffix = format!("_0000{}", d.ending);
        let mut out: Vec<(String, PathBuf)> = std::fs::read_dir(&dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().to_string();
                Some((name.strip_suffix(&suffix)?.to_string(), e.path()))
            })
            .collect();
        out.sort();
        Ok(out)
    }
}

impl Layout for NnUnet {
    fn discover(&self, _seed: u64) -> Result<Vec<Found>, String> {
        let d = self.description()?;
        let tests = self.tests(&d)?.into_iter().map(|(id, image)| Found {
            labeled: false,
            fingerprint: datasets::fingerprint(&self.root, &[image]),
            id,
            split: None,
        });
        Ok(self
            .cases(&d)?
            .into_iter()
            .map(|c| Found {
                labeled: true,
                fingerprint: datasets::fingerprint(&self.root, &[c.image.clone(), c.label.clone()]),
                id: c.id,
                split: None,
            })
            .chain(tests)
            .collect())
    }

    fn read(&self, _seed: u64, id: &str) -> Result<CaseData, String> {
        let d = self.description()?;
        let suffix = format!("_0000{}", d.ending);
        let test = self.root.join("imagesTs").join(format!("{id}{suffix}"));
        if !self
            .root
            .join("imagesTr")
            .join(format!("{id}{suffix}"))
            .exists()
            && test.exists()
        {
            let names: Vec<String> = self.organs(&d).into_iter().map(|(n, _)| n).collect();
            return datasets::load_unlabeled(&test, &names);
        }
        let case = MsdCase {
            id: id.to_string(),
            image: self.root.join("imagesTr").join(format!("{id}{suffix}")),
            label: self.root.join("labelsTr").join(format!("{id}{}", d.ending)),
        };
        datasets::load_msd(&case, &self.organs(&d))
    }
}

//! nnU-Net v2 raw datasets: `dataset.json` (`channel_names`, `labels` as name -> value,
//! `file_ending`, `numTraining`), `imagesTr/<case>_<channel><ending>` (`_0000`, `_0001`,
//! ... one file per channel), `labelsTr/<case><ending>`, and `imagesTs/` (no labels: test
//! cases for `infer`).

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
    /// Channel names in channel order (`channel_names`' keys are 0, 1, ...).
    channels: Vec<String>,
}

impl Description {
    /// The files of case `id`'s channels in `dir`, in channel order.
    fn channel_files(&self, dir: &Path, id: &str) -> Vec<PathBuf> {
        (0..self.channels.len())
            .map(|c| dir.join(format!("{id}_{c:04}{}", self.ending)))
            .collect()
    }

    /// [`Description::channel_files`], each checked to exist: a missing one is named.
    fn existing_channel_files(&self, dir: &Path, id: &str) -> Result<Vec<PathBuf>, String> {
        let files = self.channel_files(dir, id);
        for (c, f) in files.iter().enumerate() {
            if !f.is_file() {
                return Err(format!(
                    "case `{id}`: no file for channel {c} ({}), which `channel_names` in \
                     dataset.json lists: expected {}",
                    self.channels[c],
                    f.display()
                ));
            }
        }
        Ok(files)
    }
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
        let mut named: Vec<(usize, String)> = Vec::with_capacity(channels.len());
        for (key, name) in channels {
            let c = key.parse::<usize>().map_err(|_| {
                at(format!(
                    "`channel_names` key `{key}` is not a channel number (0, 1, ...)"
                ))
            })?;
            named.push((c, name.as_str().unwrap_or(key).to_string()));
        }
        named.sort();
        if named.is_empty() || named.iter().enumerate().any(|(i, (c, _))| *c != i) {
            return Err(at(format!(
                "`channel_names` must number its channels 0, 1, ... without gaps (has {:?})",
                named.iter().map(|(c, _)| *c).collect::<Vec<_>>()
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
            channels: named.into_iter().map(|(_, n)| n).collect(),
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
                images: d
                    .existing_channel_files(&images, id)
                    .map_err(|m| format!("{}: {m}", self.root.display()))?,
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
    /// `imagesTs/<case>_<channel><ending>`: images without labels, as (case id, files).
    fn tests(&self, d: &Description) -> Result<Vec<(String, Vec<PathBuf>)>, String> {
        let dir = self.root.join("imagesTs");
        if !dir.is_dir() {
            return Ok(Vec::new());
        }
        let suffix = format!("_0000{}", d.ending);
        let mut ids: Vec<String> = std::fs::read_dir(&dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().to_string();
                Some(name.strip_suffix(&suffix)?.to_string())
            })
            .collect();
        ids.sort();
        ids.into_iter()
            .map(|id| {
                let files = d
                    .existing_channel_files(&dir, &id)
                    .map_err(|m| format!("{}: {m}", self.root.display()))?;
                Ok((id, files))
            })
            .collect()
    }
}

impl Layout for NnUnet {
    fn discover(&self, _seed: u64) -> Result<Vec<Found>, String> {
        let d = self.description()?;
        let tests = self.tests(&d)?.into_iter().map(|(id, images)| Found {
            labeled: false,
            fingerprint: datasets::fingerprint(&self.root, &images),
            id,
            split: None,
        });
        Ok(self
            .cases(&d)?
            .into_iter()
            .map(|c| Found {
                labeled: true,
                fingerprint: datasets::fingerprint(&self.root, &c.files()),
                id: c.id,
                split: None,
            })
            .chain(tests)
            .collect())
    }

    fn read(&self, _seed: u64, id: &str) -> Result<CaseData, String> {
        let d = self.description()?;
        let train = self.root.join("imagesTr");
        let test = self.root.join("imagesTs");
        let first = |dir: &Path| d.channel_files(dir, id)[0].exists();
        let at = |m: String| format!("{}: {m}", self.root.display());
        if !first(&train) && first(&test) {
            let names: Vec<String> = self.organs(&d).into_iter().map(|(n, _)| n).collect();
            let files = d.existing_channel_files(&test, id).map_err(at)?;
            return datasets::load_unlabeled(&files, &names);
        }
        let case = MsdCase {
            id: id.to_string(),
            images: d.existing_channel_files(&train, id).map_err(at)?,
            label: self.root.join("labelsTr").join(format!("{id}{}", d.ending)),
        };
        let data = datasets::load_msd(&case, &self.organs(&d))?;
        if data.images.len() != d.channels.len() {
            return Err(format!(
                "case `{id}`: {} image channels in its files, `channel_names` lists {}",
                data.images.len(),
                d.channels.len()
            ));
        }
        Ok(data)
    }
}

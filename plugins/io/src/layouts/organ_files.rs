//! One folder per case with an image file and one mask file per organ:
//! `<case>/<image>` + `<case>/<structures>/<Organ><extension>`. PDDCA (MICCAI 2015, NRRD),
//! OpenKBP and TotalSegmentator's dataset are laid out so. A missing organ file means the
//! organ was not contoured in that case: absent, never empty. Cases may sit in split
//! folders (`train/`, `validation/`) that give their split.

use super::{Found, Layout};
use crate::datasets::{self, OrganFilesCase};
use crate::LoadParams;
use shapeflow_core::CaseData;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Where a case's files are.
#[derive(Debug, Clone, PartialEq)]
pub struct OrganFilesSpec {
    /// The image's file name inside a case folder.
    pub image: String,
    /// The folder of organ masks inside a case folder.
    pub structures: String,
    /// The masks' file name ending (`.nrrd`, `.nii.gz`, `.nii`, `.nhdr`, `.mha`, `.mhd`).
    pub extension: String,
    /// Split folders under the root: folder name -> split (`train`, `val`, `test`). Empty:
    /// the case folders sit directly under the root.
    pub folders: BTreeMap<String, String>,
}

impl OrganFilesSpec {
    /// PDDCA 1.4.1: `<case>/img.nrrd`, `<case>/structures/<Organ>.nrrd`.
    pub fn pddca() -> Self {
        OrganFilesSpec {
            image: "img.nrrd".into(),
            structures: "structures".into(),
            extension: ".nrrd".into(),
            folders: BTreeMap::new(),
        }
    }

    /// From `load`'s `organ-files` params.
    pub fn from_params(p: &LoadParams) -> Result<Self, String> {
        let ext = p.extension.to_ascii_lowercase();
        if shapeflow_formats::for_path(std::path::Path::new(&format!("x{ext}"))).is_none() {
            return Err(format!(
                "extension `{}`: not an image format this build reads (.nii.gz, .nii, .nrrd, .nhdr, .mha, .mhd)",
                p.extension
            ));
        }
        for (folder, split) in &p.folders {
            if !["train", "val", "test"].contains(&split.as_str()) {
                return Err(format!(
                    "folders: `{folder}: {split}`: a split is train, val or test"
                ));
            }
        }
        Ok(OrganFilesSpec {
            image: p.image.clone(),
            structures: p.structures.clone(),
            extension: p.extension.clone(),
            folders: p.folders.clone(),
        })
    }
}

pub struct OrganFiles {
    root: PathBuf,
    spec: OrganFilesSpec,
    organs: Vec<String>,
    aliases: BTreeMap<String, Vec<String>>,
    require_image: bool,
    /// PDDCA's official split, when asked for.
    miccai2015: bool,
}

impl OrganFiles {
    pub fn new(root: PathBuf, spec: OrganFilesSpec, p: &LoadParams) -> Self {
        let miccai2015 = spec == OrganFilesSpec::pddca() && p.format == crate::Format::Pddca;
        OrganFiles {
            root,
            spec,
            organs: p.organ_names(),
            aliases: p.aliases.clone(),
            require_image: p.require_image,
            miccai2015,
        }
    }

    fn cases(&self) -> Result<Vec<(OrganFilesCase, Option<String>)>, String> {
        let mut out = Vec::new();
        if self.spec.folders.is_empty() {
            for c in
                datasets::organ_file_cases(&self.root, &self.spec, &self.organs, &self.aliases)?
            {
                let split = self
                    .miccai2015
                    .then(|| datasets::miccai2015_split(&c.id).to_string());
                out.push((c, split));
            }
        } else {
            for (folder, split) in &self.spec.folders {
                let dir = self.root.join(folder);
                for c in datasets::organ_file_cases(&dir, &self.spec, &self.organs, &self.aliases)?
                {
                    out.push((c, Some(split.clone())));
                }
            }
            out.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        }
        Ok(out)
    }
}

impl Layout for OrganFiles {
    fn discover(&self, _seed: u64) -> Result<Vec<Found>, String> {
        Ok(self
            .cases()?
            .into_iter()
            .map(|(c, split)| {
                let files: Vec<PathBuf> = c
                    .image
                    .iter()
                    .cloned()
                    .chain(c.masks.iter().flatten().cloned())
                    .collect();
                Found {
                    labeled: true,
                    fingerprint: datasets::fingerprint(&self.root, &files),
                    id: c.id,
                    split,
                }
            })
            .collect())
    }

    fn read(&self, _seed: u64, id: &str) -> Result<CaseData, String> {
        let all = self.cases()?;
        let (c, _) = all
            .iter()
            .find(|(c, _)| c.id == id)
            .ok_or_else(|| format!("case {id} vanished from {}", self.root.display()))?;
        datasets::load_organ_files(c, &self.spec.image, &self.organs, self.require_image)
    }
}

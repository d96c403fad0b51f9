//! The `io` family: the `load` stage, our NRRD reader, dataset layouts and phantoms.

pub mod datasets;
pub mod layouts;
pub use shapeflow_formats::nrrd;
pub mod phantom;

use serde::{Deserialize, Serialize};
use shapeflow_core::CaseDataItem as _;
use shapeflow_core::{
    BuildCtx, CaseInfo, Inputs, Item, Kind, ParamError, Plugin, Port, Registry, Shape, Stage,
    StageCtx, StageDef, StageError,
};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Registers `load`.
pub struct IoPlugin;

impl Plugin for IoPlugin {
    fn name(&self) -> &'static str {
        "io"
    }

    fn register(&self, registry: &mut Registry) {
        registry.add(StageDef::<LoadParams> {
            name: "load",
            version: 1,
            summary: "Load cases: per-organ mask files (PDDCA, OpenKBP; NIfTI or NRRD), MSD / nnU-Net raw, or synthetic phantoms",
            help: LOAD_HELP,
            build: build_load,
        });
    }
}

const LOAD_HELP: &str = r#"
Finds the cases of a dataset and loads each as an image (one or more channels on one grid),
one organ label map and the organ table. Geometry is kept exactly (spacing, origin, direction) in RAS+ millimetres, and the
original grid is recorded so that predictions can be written back onto it.

Formats:
  organ-files  <root>/[<split folder>/]<case>/<image> + <case>/<structures>/<Organ><extension>
           (OpenKBP, TotalSegmentator, PDDCA): image file name, structures folder, extension
           (.nii.gz, .nii, .nrrd, .nhdr, .mha, .mhd) and organ aliases are params. A missing organ file
           means not contoured: absent, never an empty mask. `folders` maps split folders
           (train/, validation/) to splits; `val_fraction` carves val out of train.
  nnunet-v2  nnU-Net v2 raw: <root>/dataset.json (channel_names, labels as name -> value,
           file_ending, numTraining), imagesTr/<case>_0000<ending> (and _0001, ... one file per
           channel in `channel_names`), labelsTr/<case><ending>; imagesTs/ holds test cases
           without labels. Region-based labels are refused (use `merge`).
  pddca    <root>/<case>/img.nrrd + <root>/<case>/structures/<Organ>.nrrd (MICCAI 2015).
           An organ without a file is recorded as absent, never as an empty mask. Where two
           masks overlap the smaller structure wins (chiasm > optic nerves > brainstem >
           submandibular > parotid > others); the count is in the case notes.
           `split: official` gives the challenge split: 38 train, 10 test (0522c0555-0746).
  msd      Medical Segmentation Decathlon / nnU-Net raw: dataset.json, imagesTr/, labelsTr/.
           Image and label must share one grid; a 4D image (several modalities) is read as
           one channel per entry of its fourth dimension. `merge` renames or merges labels.
           `test` entries (imagesTs/) are test cases without labels.

Images without labels are always `test` cases, whatever `split` says: `infer` segments them,
`evaluate` records their organs as not annotated, nothing trains on them.
  dicom-rt  <root>/<case>/: one DICOM image series (CT or MR slices, uncompressed; sorted by
           position, rescale applied; irregular spacing and gantry tilt refused) and an
           RTSTRUCT whose closed contours are rasterised onto it (holes as contours inside
           contours; a voxel whose centre is on a contour is inside). ROI names match
           `organs` case-insensitively or through `aliases`; no ROI = absent organ; no
           RTSTRUCT = an unlabeled test case.
  predictions  <root>/<case>.nii.gz label maps + <root>/labels.json, as `pipeline predict`
           and `infer` write them (per-organ maps <case>_<organ>.nii.gz are skipped): no
           images; the prediction input of `evaluate` against a reference dataset.
  phantom  Deterministic synthetic data from the pipeline's seed: `head-neck` (CT in HU with
           the 9 MICCAI 2015 organs) or `mri` (one hippocampus-like organ).

A case's fingerprint is its files' paths, sizes and modification times: editing or adding a
file recomputes that case only. The layouts implement one trait (`layouts::Layout`).
"#;

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    #[default]
    Phantom,
    Pddca,
    Msd,
    OrganFiles,
    NnunetV2,
    Predictions,
    DicomRt,
}

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// MICCAI 2015 for pddca, holdout otherwise.
    #[default]
    Official,
    Holdout,
    None,
    File,
    Kfold,
}

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum PhantomKind {
    #[default]
    HeadNeck,
    Mri,
}

/// Params of `load`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LoadParams {
    /// Dataset layout.
    pub format: Format,
    /// Dataset directory (pddca, msd); relative to the pipeline file. Where the data is, not
    /// what it holds (files are fingerprinted by content): a dataset moved elsewhere is
    /// served from the cache.
    #[schemars(extend("x-locator" = true))]
    pub root: Option<String>,
    /// pddca, organ-files, dicom-rt: organ names (file stems under the structures folder); default the
    /// 9 MICCAI 2015 organs.
    pub organs: Vec<String>,
    /// pddca, organ-files, dicom-rt: other file stems (ROI names) per organ, e.g. {BrainStem: [Brainstem]}.
    pub aliases: BTreeMap<String, Vec<String>>,
    /// organ-files: the image's file name inside each case folder.
    pub image: String,
    /// organ-files: the folder of organ masks inside each case folder.
    pub structures: String,
    /// organ-files: the masks' file name ending (.nii.gz, .nii, .nrrd, .nhdr, .mha, .mhd).
    pub extension: String,
    /// organ-files: split folders under `root` and the split each gives (train, val or
    /// test), e.g. {train: train, validation: test}; empty: case folders directly under root.
    /// With `split: official`, `val_fraction` of the train folder's cases become `val`.
    pub folders: BTreeMap<String, String>,
    /// msd, nnunet-v2: organ name -> source label values, e.g. {hippocampus: [1, 2]}; default one organ
    /// per label.
    pub merge: BTreeMap<String, Vec<u8>>,
    /// How cases get train/val/test: official is the dataset's own split (MICCAI 2015 for
    /// pddca, the split folders for organ-files; a holdout where there is none), holdout
    /// orders all cases by a hash of their id (exact fractions), none makes all train, file
    /// takes fold `fold` of an nnU-Net `splits_final.json` (`splits_file`; cases in neither
    /// list are test), kfold holds out `test_fraction` for test and makes fold `fold` of
    /// `folds` (by a hash of the id) val. Split params only assign cases: folds as variants
    /// share every per-case item.
    #[schemars(extend("x-assignment" = true))]
    pub split: Split,
    /// holdout: fraction of cases for validation.
    #[schemars(extend("x-assignment" = true))]
    pub val_fraction: f64,
    /// holdout, kfold: fraction of cases for test.
    #[schemars(extend("x-assignment" = true))]
    pub test_fraction: f64,
    /// file: nnU-Net's `splits_final.json` (a list of folds, each `{train: [ids], val:
    /// [ids]}`), relative to the pipeline file.
    #[schemars(extend("x-assignment" = true))]
    pub splits_file: Option<String>,
    /// kfold: the number of folds.
    #[schemars(extend("x-assignment" = true))]
    pub folds: usize,
    /// file, kfold: the fold whose cases are val (from 0).
    #[schemars(extend("x-assignment" = true))]
    pub fold: usize,
    /// pddca: fail a case without img.nrrd (false: load masks alone).
    pub require_image: bool,
    /// msd: allow `dataset.json` entries that point outside `root` (absolute paths, `..`);
    /// refused by default.
    #[schemars(extend("x-execution" = true))]
    pub allow_outside_root: bool,
    /// Load at most this many cases (0: all).
    pub limit: usize,
    /// phantom: which synthetic dataset.
    pub phantom: PhantomKind,
    /// phantom: number of cases.
    pub cases: usize,
    /// phantom: volume size in voxels (default per phantom).
    pub dims: Option<[usize; 3]>,
    /// phantom: voxel size in mm (default per phantom).
    pub spacing: Option<[f64; 3]>,
    /// phantom: noise standard deviation (HU for head-neck, intensity for mri).
    pub noise: Option<f64>,
    /// Contours to read as not contoured, per organ: case ids, e.g. `{SpinalCord: [pt_215,
    /// pt_216]}` for contours of another structure under the organ's name (`pipeline
    /// inspect` names those far from their organ's volume). The organ is then absent in
    /// those cases (its voxels background), as a missing file would make it; the case's
    /// other organs stay. An organ the case does not have, or a case the dataset lacks, is
    /// an error naming the field. Per case: setting it recomputes only the cases it names.
    #[schemars(extend("x-per-case" = true))]
    pub not_contoured: BTreeMap<String, Vec<String>>,
}

impl Default for LoadParams {
    fn default() -> Self {
        LoadParams {
            format: Format::Phantom,
            root: None,
            organs: Vec::new(),
            aliases: BTreeMap::new(),
            image: "image.nii.gz".into(),
            structures: "structures".into(),
            extension: ".nii.gz".into(),
            folders: BTreeMap::new(),
            merge: BTreeMap::new(),
            split: Split::Official,
            val_fraction: 0.0,
            test_fraction: 0.2,
            require_image: true,
            allow_outside_root: false,
            splits_file: None,
            folds: 5,
            fold: 0,
            limit: 0,
            phantom: PhantomKind::HeadNeck,
            cases: 8,
            dims: None,
            spacing: None,
            noise: None,
            not_contoured: BTreeMap::new(),
        }
    }
}

fn bad(field: &str, message: impl Into<String>) -> ParamError {
    ParamError {
        path: vec![field.to_string()],
        message: message.into(),
    }
}

fn build_load(p: LoadParams, ctx: &BuildCtx) -> Result<Arc<dyn Stage>, ParamError> {
    if !(0.0..1.0).contains(&(p.val_fraction + p.test_fraction))
        || p.val_fraction < 0.0
        || p.test_fraction < 0.0
    {
        return Err(bad(
            "test_fraction",
            "val_fraction + test_fraction must be in [0, 1)",
        ));
    }
    let splits_file = match p.split {
        Split::File => {
            let f = p.splits_file.as_deref().ok_or_else(|| {
                bad(
                    "splits_file",
                    "`split: file` needs `splits_file:` (a splits_final.json)",
                )
            })?;
            Some(ctx.path(f))
        }
        Split::Kfold => {
            if p.folds < 2 || p.fold >= p.folds {
                return Err(bad(
                    "fold",
                    format!(
                        "`split: kfold` needs folds >= 2 and 0 <= fold < folds (folds {}, fold {})",
                        p.folds, p.fold
                    ),
                ));
            }
            None
        }
        _ => None,
    };
    if p.organs.len() > 255 || p.merge.len() > 255 {
        return Err(bad("organs", "at most 255 organs fit in one label map"));
    }
    if let Some(s) = p.spacing {
        if s.iter().any(|x| !(x.is_finite() && *x > 0.0)) {
            return Err(bad(
                "spacing",
                "every spacing must be a positive number of mm",
            ));
        }
    }
    if let Some(d) = p.dims {
        if d.iter().any(|x| !(8..=1024).contains(x)) {
            return Err(bad(
                "dims",
                "phantom dims must be between 8 and 1024 voxels",
            ));
        }
    }
    let root = match p.format {
        Format::Phantom => None,
        _ => {
            let r = p
                .root
                .as_deref()
                .ok_or_else(|| bad("root", "this format needs `root:`, the dataset directory"))?;
            Some(ctx.path(r))
        }
    };
    let layout = layouts::make(&p, root).map_err(|m| {
        let field = if m.starts_with("folders") {
            "folders"
        } else if m.starts_with("extension") {
            "extension"
        } else {
            "format"
        };
        bad(field, m)
    })?;
    Ok(Arc::new(Load {
        p,
        layout,
        splits_file,
    }))
}

impl LoadParams {
    /// The organ table: `organs`, default the 9 MICCAI 2015 organs.
    pub fn organ_names(&self) -> Vec<String> {
        if self.organs.is_empty() {
            phantom::HN_ORGANS.iter().map(|s| s.to_string()).collect()
        } else {
            self.organs.clone()
        }
    }
}

struct Load {
    p: LoadParams,
    layout: Box<dyn layouts::Layout>,
    /// `split: file`: the splits file, resolved.
    splits_file: Option<std::path::PathBuf>,
}

/// Cases ordered by a hash of their id: the same order on every machine, whatever order
/// the files are listed in.
fn hash_order(cases: &[CaseInfo], which: impl Fn(&CaseInfo) -> bool) -> Vec<usize> {
    let mut order: Vec<(blake3::Hash, usize)> = cases
        .iter()
        .enumerate()
        .filter(|(_, c)| which(c))
        .map(|(i, c)| (blake3::hash(c.id.as_bytes()), i))
        .collect();
    order.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    order.into_iter().map(|(_, i)| i).collect()
}

impl Load {
    /// The holdout split: cases ordered by a hash of their id; the first
    /// round(n x test_fraction) are `test`, the next round(n x val_fraction) `val`, the rest
    /// `train`. Exact fractions, independent of the order files are listed in, and the same
    /// split on every machine.
    fn holdout(&self, cases: &mut [CaseInfo]) {
        let n = cases.len();
        let n_test = (n as f64 * self.p.test_fraction).round() as usize;
        let n_val = (n as f64 * self.p.val_fraction).round() as usize;
        for (rank, i) in hash_order(cases, |_| true).into_iter().enumerate() {
            cases[i].split = Some(
                if rank < n_test {
                    "test"
                } else if rank < n_test + n_val {
                    "val"
                } else {
                    "train"
                }
                .into(),
            );
        }
    }

    /// `test_fraction` of the cases (hash order) are test; of the rest, in hash order, every
    /// `folds`-th from `fold` is val, the others train.
    fn kfold(&self, cases: &mut [CaseInfo]) {
        let n_test = (cases.len() as f64 * self.p.test_fraction).round() as usize;
        for (rank, i) in hash_order(cases, |_| true).into_iter().enumerate() {
            let split = if rank < n_test {
                "test"
            } else if (rank - n_test) % self.p.folds == self.p.fold {
                "val"
            } else {
                "train"
            };
            cases[i].split = Some(split.into());
        }
    }

    /// Fold `fold` of an nnU-Net `splits_final.json`: its `train` and `val` lists; cases in
    /// neither are test. Ids the file lists but the dataset lacks are an error.
    fn split_from_file(&self, cases: &mut [CaseInfo]) -> Result<(), String> {
        let path = self.splits_file.as_deref().ok_or("no splits_file")?;
        let at = |m: String| format!("{}: {m}", path.display());
        let text = std::fs::read_to_string(path).map_err(|e| at(e.to_string()))?;
        let folds: Vec<BTreeMap<String, Vec<String>>> =
            serde_json::from_str(&text).map_err(|e| {
                at(format!(
                    "expected a list of folds, each {{\"train\": [...], \"val\": [...]}}: {e}"
                ))
            })?;
        let fold = folds.get(self.p.fold).ok_or_else(|| {
            at(format!(
                "fold {} asked for, the file has {}",
                self.p.fold,
                folds.len()
            ))
        })?;
        let mut of: std::collections::HashMap<&str, &str> = std::collections::HashMap::new();
        for split in ["train", "val"] {
            for id in fold.get(split).map(Vec::as_slice).unwrap_or_default() {
                if let Some(prev) = of.insert(id, split) {
                    return Err(at(format!(
                        "fold {}: case `{id}` is in both `{prev}` and `{split}`",
                        self.p.fold
                    )));
                }
            }
        }
        let known: std::collections::HashSet<&str> = cases.iter().map(|c| c.id.as_str()).collect();
        let mut unknown: Vec<&str> = of
            .keys()
            .copied()
            .filter(|id| !known.contains(id))
            .collect();
        if !unknown.is_empty() {
            unknown.sort_unstable();
            let shown = unknown
                .iter()
                .take(5)
                .copied()
                .collect::<Vec<_>>()
                .join(", ");
            return Err(at(format!(
                "fold {} lists {} case(s) the dataset does not have: {shown}{}",
                self.p.fold,
                unknown.len(),
                if unknown.len() > 5 { ", ..." } else { "" }
            )));
        }
        for c in cases.iter_mut() {
            c.split = Some(of.get(c.id.as_str()).copied().unwrap_or("test").to_string());
        }
        Ok(())
    }

    /// `val_fraction` of the `train` cases become `val` (hash order, exact count).
    fn carve_val(&self, cases: &mut [CaseInfo]) {
        let train = hash_order(cases, |c| c.split.as_deref() == Some("train"));
        let n_val = (train.len() as f64 * self.p.val_fraction).round() as usize;
        for &i in train.iter().take(n_val) {
            cases[i].split = Some("val".into());
        }
    }
}

impl Stage for Load {
    fn output(&self) -> Kind {
        Kind::Case
    }

    fn ports(&self) -> Vec<Port> {
        Vec::new()
    }

    fn shape(&self) -> Shape {
        Shape::Source
    }

    fn uses_seed(&self) -> bool {
        self.layout.uses_seed()
    }

    fn discover(&self, ctx: &StageCtx) -> Result<Vec<CaseInfo>, StageError> {
        let found = self.layout.discover(ctx.seed).map_err(StageError::msg)?;
        // Unlabeled images are test cases whatever the policy; the policy splits the rest.
        let (labeled, unlabeled): (Vec<_>, Vec<_>) = found.into_iter().partition(|f| f.labeled);
        let own_split = labeled.iter().any(|f| f.split.is_some());
        let mut cases: Vec<CaseInfo> = labeled
            .into_iter()
            .map(|f| CaseInfo {
                id: f.id,
                split: f.split,
                fingerprint: f.fingerprint,
            })
            .collect();
        // Ids under `not_contoured` must name labelled cases of the dataset (a typo would
        // silently keep the contour), whether or not `limit` keeps them.
        let known: std::collections::HashSet<&str> = cases.iter().map(|c| c.id.as_str()).collect();
        for (organ, ids) in &self.p.not_contoured {
            if let Some(id) = ids.iter().find(|id| !known.contains(id.as_str())) {
                return Err(StageError::msg(format!(
                    "not_contoured.{organ}: no labelled case `{id}` in the dataset"
                )));
            }
        }
        if self.p.limit > 0 {
            cases.truncate(self.p.limit);
        }
        let unlabeled: Vec<CaseInfo> = unlabeled
            .into_iter()
            .map(|f| CaseInfo {
                id: f.id,
                split: Some("test".into()),
                fingerprint: f.fingerprint,
            })
            .collect();
        match self.p.split {
            Split::None => cases
                .iter_mut()
                .for_each(|c| c.split = Some("train".into())),
            Split::Official if own_split => self.carve_val(&mut cases),
            Split::Official | Split::Holdout => self.holdout(&mut cases),
            Split::Kfold => self.kfold(&mut cases),
            Split::File => self.split_from_file(&mut cases).map_err(StageError::msg)?,
        }
        // What it asks of a case is part of that case's fingerprint (the param is per case:
        // not in the items' keys), so only the cases it names recompute.
        for c in cases.iter_mut() {
            let dropped: Vec<&str> = self
                .p
                .not_contoured
                .iter()
                .filter(|(_, ids)| ids.contains(&c.id))
                .map(|(organ, _)| organ.as_str())
                .collect();
            if !dropped.is_empty() {
                c.fingerprint = format!("{} not_contoured={}", c.fingerprint, dropped.join(","));
            }
        }
        cases.extend(unlabeled);
        Ok(cases)
    }

    fn run_case(&self, ctx: &StageCtx, case: &CaseInfo, _: &Inputs) -> Result<Item, StageError> {
        let mut data = self
            .layout
            .read(ctx.seed, &case.id)
            .map_err(StageError::msg)?;
        for (organ, ids) in &self.p.not_contoured {
            if ids.contains(&case.id) {
                drop_contour(&mut data, organ).map_err(|m| {
                    StageError::msg(format!("not_contoured.{organ}, case {}: {m}", case.id))
                })?;
            }
        }
        Ok(data.to_item())
    }
}

/// Makes `organ` absent in `case` (not contoured): its voxels background, noted under
/// `not_contoured`.
fn drop_contour(case: &mut shapeflow_core::CaseData, organ: &str) -> Result<(), String> {
    let k = case.organs.iter().position(|o| o == organ).ok_or_else(|| {
        format!(
            "no organ `{organ}` in the case (its organs: {})",
            case.organs.join(", ")
        )
    })?;
    case.present[k] = false;
    if let Some(labels) = case.labels.as_mut() {
        let label = (k + 1) as u8;
        match &mut std::sync::Arc::make_mut(labels).data {
            shapeflow_core::VoxelData::U8(v) => {
                v.iter_mut().filter(|x| **x == label).for_each(|x| *x = 0)
            }
            _ => return Err("the case's labels are not a u8 label map".into()),
        }
    }
    let noted = case
        .notes
        .entry("not_contoured")
        .or_insert_with(|| serde_json::json!([]));
    if let Some(list) = noted.as_array_mut() {
        list.push(organ.into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An organ read as not contoured: absent, its voxels background, the other organ's
    /// kept; an organ the case lacks is an error naming it.
    #[test]
    fn a_contour_dropped_is_absent_and_background() {
        let labels = shapeflow_core::Volume::new(
            [4, 1, 1],
            [1.0; 3],
            shapeflow_core::VoxelData::U8(vec![0, 1, 2, 2]),
        )
        .unwrap();
        let mut case = shapeflow_core::CaseData {
            images: vec![],
            labels: Some(std::sync::Arc::new(labels)),
            organs: vec!["Cord".into(), "Lens".into()],
            present: vec![true, true],
            original: None,
            notes: Default::default(),
        };
        drop_contour(&mut case, "Lens").unwrap();
        assert_eq!(case.present, [true, false]);
        let v = case.labels.as_ref().unwrap().data.clone();
        assert_eq!(v, shapeflow_core::VoxelData::U8(vec![0, 1, 0, 0]));
        assert_eq!(case.notes["not_contoured"], serde_json::json!(["Lens"]));
        let e = drop_contour(&mut case, "Chiasm").unwrap_err();
        assert_eq!(e, "no organ `Chiasm` in the case (its organs: Cord, Lens)");
    }

    #[test]
    fn params_are_documented() {
        Registry::new()
            .with(&IoPlugin)
            .unwrap()
            .check_docs()
            .unwrap();
    }

    #[test]
    fn official_split_is_38_train_10_test() {
        let ids = [
            "0522c0001",
            "0522c0002",
            "0522c0003",
            "0522c0009",
            "0522c0013",
            "0522c0014",
            "0522c0017",
            "0522c0057",
            "0522c0070",
            "0522c0077",
            "0522c0079",
            "0522c0081",
            "0522c0125",
            "0522c0132",
            "0522c0147",
            "0522c0149",
            "0522c0159",
            "0522c0161",
            "0522c0190",
            "0522c0195",
            "0522c0226",
            "0522c0248",
            "0522c0251",
            "0522c0253",
            "0522c0328",
            "0522c0329",
            "0522c0330",
            "0522c0427",
            "0522c0433",
            "0522c0441",
            "0522c0455",
            "0522c0457",
            "0522c0479",
            "0522c0555",
            "0522c0576",
            "0522c0598",
            "0522c0659",
            "0522c0661",
            "0522c0667",
            "0522c0669",
            "0522c0708",
            "0522c0727",
            "0522c0746",
            "0522c0788",
            "0522c0806",
            "0522c0845",
            "0522c0857",
            "0522c0878",
        ];
        let test = ids
            .iter()
            .filter(|i| datasets::miccai2015_split(i) == "test")
            .count();
        assert_eq!((ids.len() - test, test), (38, 10));
    }
}

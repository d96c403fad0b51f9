//! The organ-files layout (PDDCA, OpenKBP, TotalSegmentator) on real OpenKBP CT: absent
//! organs from missing files, empty masks stay present, aliases, NIfTI and NRRD, and the
//! split from the dataset's folders.

mod common;

use common::*;
use shapeflow_core::{config::parse_set, plan, resolve, CancelToken, CaseData, PipelineFile};
use shapeflow_io::{layouts, LoadParams};
use std::collections::BTreeMap;
use std::path::Path;

const OPENKBP_ORGANS: [&str; 7] = [
    "Brainstem",
    "SpinalCord",
    "RightParotid",
    "LeftParotid",
    "Esophagus",
    "Larynx",
    "Mandible",
];

fn params(extension: &str, image: &str) -> LoadParams {
    LoadParams {
        format: shapeflow_io::Format::OrganFiles,
        organs: OPENKBP_ORGANS.iter().map(|s| s.to_string()).collect(),
        image: image.into(),
        extension: extension.into(),
        folders: [("train", "train"), ("validation", "test")]
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
        ..Default::default()
    }
}

fn read(root: &Path, p: &LoadParams, id: &str) -> CaseData {
    layouts::make(p, Some(root.to_path_buf()))
        .unwrap()
        .read(0, id)
        .unwrap()
}

/// A missing structure file is "not contoured": the organ is absent, counted exactly as on
/// disk (the dataset README: Mandible in 134 of 202 cases).
#[test]
fn missing_structure_files_are_absent_organs() {
    let root = shared("openkbp");
    let p = params(".nii.gz", "ct.nii.gz");
    let layout = layouts::make(&p, Some(root.clone())).unwrap();
    let found = layout.discover(0).unwrap();
    assert_eq!(found.len(), 202, "170 train + 32 validation folders");
    let on_disk = |organ: &str| {
        ["train", "validation"]
            .iter()
            .flat_map(|f| std::fs::read_dir(root.join(f)).unwrap())
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .join(format!("structures/{organ}.nii.gz"))
                    .is_file()
            })
            .count()
    };
    assert_eq!(on_disk("Mandible"), 134);
    // Read a case without a mandible and one with: absent vs present.
    let without = found
        .iter()
        .find(|f| {
            let dir = ["train", "validation"]
                .iter()
                .map(|s| root.join(s).join(&f.id))
                .find(|d| d.is_dir())
                .unwrap();
            !dir.join("structures/Mandible.nii.gz").exists()
        })
        .unwrap();
    let c = read(&root, &p, &without.id);
    let k = OPENKBP_ORGANS
        .iter()
        .position(|o| *o == "Mandible")
        .unwrap();
    assert!(
        !c.present[k],
        "{}: Mandible has no file: absent",
        without.id
    );
    assert_eq!(c.organ_voxels()[k], 0);
    assert!(c.present[0] || c.present[1], "other organs load");
    let img = c.image().unwrap();
    assert_eq!(img.dims, [128, 128, 128]);
    assert_eq!(img.data.dtype(), "i16", "CT stays integer HU");
}

/// `folders` gives the split; `val_fraction` carves validation cases out of `train/`.
#[test]
fn split_comes_from_the_dataset_folders() {
    let d = tempfile::tempdir().unwrap();
    let yaml = format!(
        "name: kbp\nstages:\n  load:\n    stage: load\n    params:\n      format: organ-files\n      root: {}\n      image: ct.nii.gz\n      organs: [Brainstem, Mandible]\n      folders: {{train: train, validation: test}}\n      val_fraction: 0.1\n",
        shared("openkbp").display()
    );
    std::fs::write(d.path().join("p.yaml"), yaml).unwrap();
    let file = PipelineFile::load(&d.path().join("p.yaml")).unwrap();
    let registry = shapeflow::default_registry().unwrap();
    let r = resolve::resolve(&file, &registry, &[parse_set("load.limit=0").unwrap()]).unwrap();
    let p = plan::make_plan(&r, &CancelToken::default()).unwrap();
    let mut n: BTreeMap<String, usize> = BTreeMap::new();
    for it in &p.nodes[0].items {
        *n.entry(it.case.split.clone().unwrap_or_default())
            .or_default() += 1;
        let in_validation = shared("openkbp/validation").join(&it.case.id).is_dir();
        assert_eq!(
            it.case.split.as_deref() == Some("test"),
            in_validation,
            "{}",
            it.case.id
        );
    }
    assert_eq!(n["test"], 32);
    assert_eq!(n["val"], 17, "round(170 x 0.1)");
    assert_eq!(n["train"], 153);
}

/// The same case as NRRD (written by our writer into a temporary copy of the layout) loads
/// to the same labels; aliases find renamed files; an all-zero mask file stays present.
#[test]
fn nrrd_aliases_and_empty_masks() {
    let src = shared("openkbp/train");
    let case = std::fs::read_dir(&src)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|id| src.join(id).join("structures/Brainstem.nii.gz").is_file())
        .min()
        .unwrap();
    let nifti = read(&shared("openkbp"), &params(".nii.gz", "ct.nii.gz"), &case);
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("validation")).unwrap();
    let dir = d.path().join("train").join(&case);
    std::fs::create_dir_all(dir.join("structures")).unwrap();
    shapeflow_formats::write(nifti.image().unwrap(), &dir.join("ct.nrrd")).unwrap();
    for e in std::fs::read_dir(src.join(&case).join("structures")).unwrap() {
        let path = e.unwrap().path();
        let stem = path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .replace(".nii.gz", "");
        // Brainstem under another name, found through an alias.
        let name = if stem == "Brainstem" {
            "BrainStem".to_string()
        } else {
            stem
        };
        let v = shapeflow_formats::read(&path).unwrap();
        shapeflow_formats::write(&v, &dir.join(format!("structures/{name}.nrrd"))).unwrap();
    }
    // Esophagus: an empty mask file (contoured, nothing there) unless the case has one.
    let esophagus = dir.join("structures/Esophagus.nrrd");
    let empty_written = !esophagus.exists();
    if empty_written {
        let img = nifti.image().unwrap();
        let zero = img
            .with_data(shapeflow_core::VoxelData::U8(vec![0; img.len()]))
            .unwrap();
        shapeflow_formats::write(&zero, &esophagus).unwrap();
    }
    let mut p = params(".nrrd", "ct.nrrd");
    p.aliases
        .insert("Brainstem".into(), vec!["BrainStem".into()]);
    let nrrd = read(d.path(), &p, &case);
    assert_eq!(
        nrrd.labels.as_ref().unwrap().data,
        nifti.labels.as_ref().unwrap().data
    );
    assert_eq!(nrrd.image().unwrap().data, nifti.image().unwrap().data);
    assert!(nrrd.present[0], "Brainstem found through its alias");
    let k = OPENKBP_ORGANS
        .iter()
        .position(|o| *o == "Esophagus")
        .unwrap();
    assert!(
        nrrd.present[k],
        "an existing (even empty) mask file is present"
    );
    if empty_written {
        assert!(!nifti.present[k]);
        assert_eq!(nrrd.organ_voxels()[k], 0, "present and empty");
    }
    // Without the alias, the renamed Brainstem is not found: absent.
    let p = params(".nrrd", "ct.nrrd");
    assert!(!read(d.path(), &p, &case).present[0]);
}

//! Loading the real data in ../shared/data: PDDCA masks, the real H&N CT, MSD hippocampus.

mod common;

use common::*;
use shapeflow_core::{CaseData, VoxelData};
use shapeflow_formats::NiftiIo;
use shapeflow_io::{datasets, nrrd, phantom::HN_ORGANS};
use std::collections::BTreeMap;

/// As the `pipeline` binary: readers may cap single allocations (the DICOM regression input).
#[global_allocator]
static ALLOC: shapeflow_formats::alloc::Capped = shapeflow_formats::alloc::Capped;

fn organs() -> Vec<String> {
    HN_ORGANS.iter().map(|s| s.to_string()).collect()
}

#[test]
fn pddca_masks_match_an_independent_reader() {
    let root = shared("pddca-masks");
    let cases = datasets::pddca_cases(&root, &organs(), &BTreeMap::new()).unwrap();
    assert_eq!(cases.len(), 12);
    let reference = python_json("nrrd_counts.py", &[root.to_str().unwrap()]);
    let mut checked = 0;
    for c in &cases {
        for (k, m) in c.masks.iter().enumerate() {
            let Some(path) = m else { continue };
            let v = nrrd::read(path).unwrap();
            assert_eq!(v.dims[0], 512, "{}", path.display());
            assert!((76..=272).contains(&v.dims[2]), "{}", path.display());
            assert!(
                (0.75..=1.18).contains(&v.spacing[0]) && (1.2..=3.01).contains(&v.spacing[2]),
                "{:?}",
                v.spacing
            );
            let VoxelData::U8(d) = &v.data else {
                panic!("masks are u8")
            };
            let count = d.iter().filter(|&&x| x != 0).count();
            assert!(count > 0, "{} is empty", path.display());
            if let Some(r) = &reference {
                let e = &r[&c.id][&HN_ORGANS[k]];
                assert_eq!(
                    e["count"].as_u64().unwrap() as usize,
                    count,
                    "{} {}",
                    c.id,
                    HN_ORGANS[k]
                );
                let shape: Vec<usize> = e["shape"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_u64().unwrap() as usize)
                    .collect();
                assert_eq!(shape, v.dims.to_vec());
                for a in 0..3 {
                    assert!((e["spacing"][a].as_f64().unwrap() - v.spacing[a]).abs() < 1e-6);
                }
                checked += 1;
            }
        }
    }
    if reference.is_some() {
        assert!(checked >= 100, "checked {checked} masks");
    }
}

#[test]
fn missing_pddca_organs_are_absent_not_empty() {
    let root = shared("pddca-masks");
    let cases = datasets::pddca_cases(&root, &organs(), &BTreeMap::new()).unwrap();
    for c in &cases {
        let data: CaseData = datasets::load_pddca(c, &organs(), false).unwrap();
        let lacks_subm_r = ["0522c0014", "0522c0077", "0522c0147"].contains(&c.id.as_str());
        assert_eq!(data.present[8], !lacks_subm_r, "{}", c.id);
        let counts = data.organ_voxels();
        for k in 0..9 {
            if data.present[k] {
                assert!(counts[k] > 0, "{} {} present but empty", c.id, HN_ORGANS[k]);
            } else {
                assert_eq!(counts[k], 0);
            }
        }
        assert!(data.images.is_empty());
    }
    // Without `require_image: false` the missing CT is an error naming the case.
    let e = datasets::load_pddca(&cases[0], &organs(), true).unwrap_err();
    assert!(e.contains(&cases[0].id) && e.contains("img.nrrd"), "{e}");
}

#[test]
fn real_ct_has_plausible_hu_and_mandible_in_bone() {
    let root = shared("hn-ct-frm2");
    let img = nrrd::read(&root.join("img.nrrd")).unwrap();
    assert_eq!(img.dims, [139, 141, 31]);
    assert_eq!(img.spacing, [1.5, 1.5, 3.0]);
    let VoxelData::I16(hu) = &img.data else {
        panic!("CT is i16")
    };
    let (min, max) = (*hu.iter().min().unwrap(), *hu.iter().max().unwrap());
    assert!(
        (-1100..=-900).contains(&min) && max > 1000 && max < 4000,
        "HU range {min}..{max}"
    );
    let mand = nrrd::read(&root.join("structures/Mandible.nrrd")).unwrap();
    assert!(mand.grid().same_as(&img.grid(), 1e-6));
    let VoxelData::U8(m) = &mand.data else {
        panic!()
    };
    let mut inside: Vec<i16> = hu
        .iter()
        .zip(m)
        .filter(|(_, &l)| l != 0)
        .map(|(&h, _)| h)
        .collect();
    inside.sort();
    let median = inside[inside.len() / 2];
    assert!(median > 300, "median HU in the mandible is {median}");
    // Through the pddca layout, with an alias for the one organ named differently.
    let cases = datasets::pddca_cases(
        root.parent().unwrap(),
        &["Mandible".into(), "Submandibular".into()],
        &BTreeMap::from([(
            "Submandibular".to_string(),
            vec!["Submandibular_unspecified_side".to_string()],
        )]),
    )
    .unwrap();
    let c = cases.iter().find(|c| c.id == "hn-ct-frm2").unwrap();
    let data = datasets::load_pddca(c, &["Mandible".into(), "Submandibular".into()], true).unwrap();
    assert_eq!(data.present, vec![true, true]);
    assert!(!data.images.is_empty());
}

#[test]
fn all_200_hippocampus_cases_load() {
    let root = shared("hippocampus");
    let ds = datasets::msd_dataset(&root, false).unwrap();
    assert_eq!(ds.cases.len(), 200);
    assert_eq!(ds.labels.get(&1).map(String::as_str), Some("Anterior"));
    let merged = vec![("hippocampus".to_string(), vec![1u8, 2])];
    let mut total = 0usize;
    for c in &ds.cases {
        let d = datasets::load_msd(c, &merged).unwrap();
        let img = d.image().unwrap();
        assert!(
            (31..=43).contains(&img.dims[0])
                && (40..=59).contains(&img.dims[1])
                && (24..=47).contains(&img.dims[2]),
            "{} {:?}",
            c.id,
            img.dims
        );
        assert!(img.grid().same_as(&d.labels.as_ref().unwrap().grid(), 1e-3));
        let n = d.organ_voxels()[0];
        assert!(n > 500, "{}: {n} voxels", c.id);
        total += n;
        // Merged count equals the two source labels together.
        let two = datasets::load_msd(c, &[("a".into(), vec![1]), ("p".into(), vec![2])]).unwrap();
        assert_eq!(two.organ_voxels().iter().sum::<usize>(), n);
    }
    assert!(total > 200 * 1000);
}

#[test]
fn msd_with_mismatched_grids_is_a_named_error() {
    use shapeflow_core::Volume;
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("imagesTr")).unwrap();
    std::fs::create_dir_all(d.path().join("labelsTr")).unwrap();
    let img = Volume::new([4, 4, 3], [1.0; 3], VoxelData::F32(vec![0.5; 48])).unwrap();
    let lab = Volume::new([4, 4, 2], [1.0; 3], VoxelData::U8(vec![1; 32])).unwrap();
    img.write_nifti(&d.path().join("imagesTr/x_001.nii.gz"))
        .unwrap();
    lab.write_nifti(&d.path().join("labelsTr/x_001.nii.gz"))
        .unwrap();
    std::fs::write(
        d.path().join("dataset.json"),
        r#"{"labels": {"0": "background", "1": "organ"}, "training": [{"image": "./imagesTr/x_001.nii.gz", "label": "./labelsTr/x_001.nii.gz"}]}"#,
    )
    .unwrap();
    let ds = datasets::msd_dataset(d.path(), false).unwrap();
    let e = datasets::load_msd(&ds.cases[0], &[("organ".into(), vec![1])]).unwrap_err();
    assert!(
        e.contains("imagesTr/x_001.nii.gz")
            && e.contains("labelsTr/x_001.nii.gz")
            && e.contains("different voxel grids"),
        "{e}"
    );
    // A label map with a non-integer value is refused too.
    let frac = Volume::new([4, 4, 3], [1.0; 3], VoxelData::F32(vec![0.5; 48])).unwrap();
    frac.write_nifti(&d.path().join("labelsTr/x_001.nii.gz"))
        .unwrap();
    let e = datasets::load_msd(&ds.cases[0], &[("organ".into(), vec![1])]).unwrap_err();
    assert!(
        e.contains("labelsTr/x_001.nii.gz") && e.contains("whole number"),
        "{e}"
    );
}

/// MetaImage against SimpleITK, both ways, on a real CT (OpenKBP pt_201) given a rotated
/// direction and an offset: SimpleITK's `.mha` (zlib) and `.mhd` (raw) read by ours, ours
/// read by SimpleITK; voxels equal, geometry to 1e-3 mm.
#[test]
fn metaimage_agrees_with_simpleitk_both_ways() {
    let src = shared("openkbp/validation/pt_201/ct.nii.gz");
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().to_str().unwrap();
    let Some(theirs) = python_json("sitk_metaimage.py", &["write", src.to_str().unwrap(), dir])
    else {
        return;
    };
    let expected: Vec<f32> = std::fs::read(d.path().join("sitk.bin"))
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let affine = |j: &serde_json::Value| -> Vec<Vec<f64>> {
        serde_json::from_value(j["affine"].clone()).unwrap()
    };
    let close = |a: &[[f64; 4]; 4], b: &[Vec<f64>]| {
        (0..3).all(|r| (0..4).all(|c| (a[r][c] - b[r][c]).abs() < 1e-3))
    };
    for name in ["sitk.mha", "sitk.mhd"] {
        let v = shapeflow_formats::read(&d.path().join(name)).unwrap();
        assert_eq!(
            v.dims.map(|x| x as u64).to_vec(),
            serde_json::from_value::<Vec<u64>>(theirs["size"].clone()).unwrap()
        );
        assert_eq!(v.to_f32(), expected, "{name}: voxels");
        assert!(
            close(&v.affine, &affine(&theirs)),
            "{name}: {:?} vs {}",
            v.affine,
            theirs["affine"]
        );
        // Ours, read back by SimpleITK.
        let ours = d.path().join(format!("ours_{name}"));
        shapeflow_formats::write(&v, &ours).unwrap();
        let out = d.path().join("ours.bin");
        let back = python_json(
            "sitk_metaimage.py",
            &["read", ours.to_str().unwrap(), out.to_str().unwrap()],
        )
        .unwrap();
        let got: Vec<f32> = std::fs::read(&out)
            .unwrap()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(got, expected, "{name}: SimpleITK reading ours");
        assert!(
            close(&v.affine, &affine(&back)),
            "{name}: {:?} vs {}",
            v.affine,
            back["affine"]
        );
    }
}

/// An nnU-Net v2 raw dataset built (as symlinks) from the shared hippocampus loads the same
/// cases as the MSD loader; its mistakes are named.
#[test]
fn nnunet_v2_dataset_loads_like_its_msd_original() {
    use shapeflow_io::{layouts, Format, LoadParams};
    let src = shared("hippocampus");
    let ds = datasets::msd_dataset(&src, false).unwrap();
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("Dataset004_Hippocampus");
    for sub in ["imagesTr", "labelsTr"] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
    }
    let cases = &ds.cases[..4];
    for c in cases {
        let id = &c.id;
        std::os::unix::fs::symlink(
            &c.images[0],
            root.join(format!("imagesTr/{id}_0000.nii.gz")),
        )
        .unwrap();
        std::os::unix::fs::symlink(&c.label, root.join(format!("labelsTr/{id}.nii.gz"))).unwrap();
    }
    let json = |labels: serde_json::Value, n: usize, channels: serde_json::Value| {
        let j = serde_json::json!({
            "channel_names": channels, "labels": labels, "numTraining": n, "file_ending": ".nii.gz"
        });
        std::fs::write(root.join("dataset.json"), j.to_string()).unwrap();
    };
    let labels = serde_json::json!({"background": 0, "Anterior": 1, "Posterior": 2});
    let one = serde_json::json!({"0": "MRI"});
    json(labels.clone(), 4, one.clone());
    let params = LoadParams {
        format: Format::NnunetV2,
        ..Default::default()
    };
    let layout = layouts::make(&params, Some(root.clone())).unwrap();
    let found = layout.discover(0).unwrap();
    assert_eq!(
        found.iter().map(|f| f.id.as_str()).collect::<Vec<_>>(),
        cases.iter().map(|c| c.id.as_str()).collect::<Vec<_>>()
    );
    let organs = vec![
        ("Anterior".to_string(), vec![1u8]),
        ("Posterior".into(), vec![2]),
    ];
    for c in cases {
        let ours = layout.read(0, &c.id).unwrap();
        let msd = datasets::load_msd(c, &organs).unwrap();
        assert_eq!(ours.organs, msd.organs);
        assert_eq!(ours.images, msd.images, "{}", c.id);
        assert_eq!(ours.labels, msd.labels, "{}", c.id);
    }
    // Mistakes, each named.
    for (labels, n, channels, needle) in [
        (labels.clone(), 5, one.clone(), "`numTraining` is 5"),
        (
            serde_json::json!({"background": 0, "whole": [1, 2]}),
            4,
            one.clone(),
            "region",
        ),
        (
            serde_json::json!({"Anterior": 1}),
            4,
            one.clone(),
            "background",
        ),
        (
            labels.clone(),
            4,
            serde_json::json!({"0": "T1", "1": "T2"}),
            "no file for channel 1 (T2)",
        ),
        (
            labels.clone(),
            4,
            serde_json::json!({"0": "T1", "2": "T2"}),
            "without gaps",
        ),
    ] {
        json(labels, n, channels);
        let e = layout.discover(0).unwrap_err();
        assert!(e.contains("dataset.json") && e.contains(needle), "{e}");
    }
}

/// Two-channel datasets as users have them, built from the shared hippocampus (channel 0
/// the MRI, channel 1 its intensities inverted, written by us): nnU-Net v2 with one file
/// per channel (`_0000`, `_0001`), and MSD with one 4D NIfTI per case (written with the
/// `nifti` crate, as the Decathlon's multi-modal tasks are). Both load as the same two
/// channels on the label's grid; a missing channel file and a channel on another grid are
/// named.
#[test]
fn two_channel_datasets_load_as_channels() {
    use shapeflow_io::{layouts, Format, LoadParams};
    let ds = datasets::msd_dataset(&shared("hippocampus"), false).unwrap();
    let d = tempfile::tempdir().unwrap();
    let v2 = d.path().join("Dataset104_TwoChannels");
    let msd = d.path().join("Task104_TwoChannels");
    for sub in ["imagesTr", "labelsTr"] {
        std::fs::create_dir_all(v2.join(sub)).unwrap();
        std::fs::create_dir_all(msd.join(sub)).unwrap();
    }
    let cases = &ds.cases[..3];
    let mut training = Vec::new();
    let mut expected = Vec::new();
    for c in cases {
        let id = &c.id;
        let mri = shapeflow_formats::read(&c.images[0]).unwrap();
        let inverted = inverted(&mri);
        std::os::unix::fs::symlink(&c.images[0], v2.join(format!("imagesTr/{id}_0000.nii.gz")))
            .unwrap();
        shapeflow_formats::write(&inverted, &v2.join(format!("imagesTr/{id}_0001.nii.gz")))
            .unwrap();
        std::os::unix::fs::symlink(&c.label, v2.join(format!("labelsTr/{id}.nii.gz"))).unwrap();
        // The same two channels as one 4D file.
        write_nifti_channels(
            &[mri.clone(), inverted.clone()],
            &msd.join(format!("imagesTr/{id}.nii.gz")),
        );
        std::os::unix::fs::symlink(&c.label, msd.join(format!("labelsTr/{id}.nii.gz"))).unwrap();
        training.push(serde_json::json!({
            "image": format!("./imagesTr/{id}.nii.gz"), "label": format!("./labelsTr/{id}.nii.gz")
        }));
        expected.push((mri, inverted));
    }
    std::fs::write(
        v2.join("dataset.json"),
        serde_json::json!({
            "channel_names": {"0": "MRI", "1": "inverted"},
            "labels": {"background": 0, "Anterior": 1, "Posterior": 2},
            "numTraining": 3, "file_ending": ".nii.gz"
        })
        .to_string(),
    )
    .unwrap();
    std::fs::write(
        msd.join("dataset.json"),
        serde_json::json!({
            "modality": {"0": "MRI", "1": "inverted"},
            "labels": {"0": "background", "1": "Anterior", "2": "Posterior"},
            "training": training, "test": []
        })
        .to_string(),
    )
    .unwrap();
    for (format, root) in [(Format::NnunetV2, &v2), (Format::Msd, &msd)] {
        let params = LoadParams {
            format,
            ..Default::default()
        };
        let layout = layouts::make(&params, Some(root.clone())).unwrap();
        assert_eq!(layout.discover(0).unwrap().len(), 3);
        for (c, (mri, inverted)) in cases.iter().zip(&expected) {
            let got = layout.read(0, &c.id).unwrap();
            assert_eq!(got.images.len(), 2, "{format:?} {}", c.id);
            assert_eq!(got.images[0].to_f32(), mri.to_f32(), "{format:?} {}", c.id);
            assert_eq!(
                got.images[1].to_f32(),
                inverted.to_f32(),
                "{format:?} {}",
                c.id
            );
            assert!(got.images[1].grid().same_as(&mri.grid(), 1e-4));
            got.check_grids().unwrap();
            assert!(got.present.iter().all(|&p| p));
        }
    }
    // A missing channel file, and a channel on another grid, each named.
    let id = &cases[0].id;
    let second = v2.join(format!("imagesTr/{id}_0001.nii.gz"));
    let kept = std::fs::read(&second).unwrap();
    std::fs::remove_file(&second).unwrap();
    let layout = layouts::make(
        &LoadParams {
            format: Format::NnunetV2,
            ..Default::default()
        },
        Some(v2.clone()),
    )
    .unwrap();
    let e = layout.discover(0).unwrap_err();
    assert!(
        e.contains(&format!("{id}_0001.nii.gz")) && e.contains("channel 1 (inverted)"),
        "{e}"
    );
    std::fs::write(&second, kept).unwrap();
    let mut moved = expected[0].1.clone();
    moved.affine[0][3] += 5.0;
    shapeflow_formats::write(&moved, &second).unwrap();
    let e = layout.read(0, id).unwrap_err();
    assert!(
        e.contains(&format!("{id}_0001.nii.gz")) && e.contains("different voxel grids"),
        "{e}"
    );
}

/// Every fuzz seed, corpus entry and found input (tests/fuzz/corpus/, tests/fuzz/regressions/)
/// through the readers the fuzz targets drive: a value or an error, never a panic.
#[test]
fn fuzz_corpus_and_regressions_read_without_panic() {
    let base = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz");
    let d = tempfile::tempdir().unwrap();
    let mut n = 0;
    for kind in ["corpus", "regressions"] {
        for (target, ending) in [("nifti", "nii"), ("nrrd", "nrrd"), ("metaimage", "mha")] {
            let Ok(files) = std::fs::read_dir(base.join(kind).join(target)) else {
                continue;
            };
            for f in files.flatten() {
                let p = d.path().join(format!("input.{ending}"));
                std::fs::copy(f.path(), &p).unwrap();
                let _ = shapeflow_formats::read(&p);
                let _ = shapeflow_formats::read_channels(&p);
                n += 1;
            }
        }
        if let Ok(files) = std::fs::read_dir(base.join(kind).join("nrrd_detached")) {
            for f in files.flatten() {
                let data = std::fs::read(f.path()).unwrap();
                let cut = data.iter().position(|&b| b == 0).unwrap_or(data.len());
                let rest = data.get(cut + 1..).unwrap_or(&[]);
                std::fs::write(d.path().join("data.raw"), rest).unwrap();
                std::fs::write(d.path().join("data.raw.gz"), rest).unwrap();
                std::fs::write(d.path().join("input.nhdr"), &data[..cut]).unwrap();
                let _ = shapeflow_formats::read(&d.path().join("input.nhdr"));
                n += 1;
            }
        }
        if let Ok(files) = std::fs::read_dir(base.join(kind).join("dicom")) {
            let dir = d.path().join("dcm");
            std::fs::create_dir_all(&dir).unwrap();
            for f in files.flatten() {
                let p = dir.join("input.dcm");
                std::fs::copy(f.path(), &p).unwrap();
                let _ = shapeflow_formats::dicom::scan(&dir);
                let grid = shapeflow_formats::dicom::read_series(std::slice::from_ref(&p))
                    .map(|v| v.grid());
                if let (Ok(rois), Ok(g)) = (shapeflow_formats::dicom::read_rtstruct(&p), &grid) {
                    for r in &rois {
                        let _ = shapeflow_formats::dicom::rasterise(r, g);
                    }
                }
                n += 1;
            }
        }
        if let Ok(files) = std::fs::read_dir(base.join(kind).join("dataset_json")) {
            let root = d.path().join("ds");
            std::fs::create_dir_all(root.join("imagesTr")).unwrap();
            for f in files.flatten() {
                std::fs::copy(f.path(), root.join("dataset.json")).unwrap();
                if let Ok(ds) = datasets::msd_dataset(&root, false) {
                    assert!(ds
                        .cases
                        .iter()
                        .all(|c| c.images.iter().all(|i| i.starts_with(&root))));
                }
                n += 1;
            }
        }
        if let Ok(files) = std::fs::read_dir(base.join(kind).join("pipeline_yaml")) {
            let registry = shapeflow::default_registry().unwrap();
            for f in files.flatten() {
                let Ok(text) = std::fs::read_to_string(f.path()) else {
                    continue;
                };
                if let Ok(pf) = shapeflow_core::PipelineFile::parse(&f.path(), &text, &|_| None) {
                    let _ = shapeflow_core::resolve::resolve(&pf, &registry, &[]);
                }
                n += 1;
            }
        }
    }
    assert!(n >= 20, "only {n} inputs: is tests/fuzz/corpus there?");
}

/// DICOM-RT against an independent implementation: real CTs with their organs (an OpenKBP
/// patient, NIfTI; the matRad head-and-neck CT, NRRD) written as a CT series and an RTSTRUCT
/// by pydicom and rt-utils (tests/py/write_dicom_rt.py), read back by `load`'s `dicom-rt`:
/// the CT voxel for voxel and its geometry within 1e-3 mm, each organ's mask with Dice > 0.99
/// against the original (organs are small at these spacings: a voxel is 1-2% of Dice).
/// The reverse direction: our RTSTRUCT of the original masks, read by rt-utils (Dice > 0.99)
/// and by our reader (voxel for voxel).
/// Then the refusals: a missing slice (irregular spacing), no RTSTRUCT (an unlabeled case).
#[test]
fn dicom_rt_written_by_pydicom_and_rt_utils_reads_back_the_originals() {
    use shapeflow_io::{layouts, Format, LoadParams};
    let d = tempfile::tempdir().unwrap();
    let okbp = shared("openkbp/validation/pt_201");
    let frm = shared("hn-ct-frm2");
    type Organs = Vec<(&'static str, std::path::PathBuf)>;
    let cases: [(&str, std::path::PathBuf, Organs); 2] = [
        (
            "pt_201",
            okbp.join("ct.nii.gz"),
            [
                "Brainstem",
                "SpinalCord",
                "LeftParotid",
                "RightParotid",
                "Mandible",
            ]
            .iter()
            .map(|o| (*o, okbp.join(format!("structures/{o}.nii.gz"))))
            .collect(),
        ),
        (
            "frm2",
            frm.join("img.nrrd"),
            ["BrainStem", "Mandible", "Parotid_L", "Parotid_R"]
                .iter()
                .map(|o| (*o, frm.join(format!("structures/{o}.nrrd"))))
                .collect(),
        ),
    ];
    for (id, image, organs) in &cases {
        let mut args = vec![
            image.to_str().unwrap().to_string(),
            d.path().join("dcm").join(id).to_str().unwrap().to_string(),
        ];
        args.extend(organs.iter().map(|(o, p)| format!("{o}={}", p.display())));
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let Some(_) = python_json("write_dicom_rt.py", &a) else {
            return;
        };
    }
    for (id, image, organs) in &cases {
        let names: Vec<String> = organs.iter().map(|(o, _)| o.to_string()).collect();
        let params = LoadParams {
            format: Format::DicomRt,
            organs: names.clone(),
            ..Default::default()
        };
        let layout = layouts::make(&params, Some(d.path().join("dcm"))).unwrap();
        let found = layout.discover(0).unwrap();
        assert!(found.iter().any(|f| f.id == *id && f.labeled));
        let ours = layout.read(0, id).unwrap();
        let original = datasets::read_volume(image).unwrap();
        let img = ours.image().unwrap();
        assert_eq!(img.dims, original.dims, "{id}");
        for r in 0..3 {
            for c in 0..4 {
                assert!(
                    (img.affine[r][c] - original.affine[r][c]).abs() < 1e-3,
                    "{id}: affine {:?} vs {:?}",
                    img.affine,
                    original.affine
                );
            }
        }
        assert_eq!(img.to_f32(), original.to_f32(), "{id}: CT voxels");
        let VoxelData::U8(labels) = &ours.labels.as_ref().unwrap().data else {
            panic!()
        };
        for (k, (organ, path)) in organs.iter().enumerate() {
            let truth = datasets::as_labels(datasets::read_volume(path).unwrap(), path).unwrap();
            let VoxelData::U8(t) = &truth.data else {
                panic!()
            };
            let (mut both, mut a, mut b) = (0usize, 0usize, 0usize);
            for (&l, &t) in labels.iter().zip(t) {
                let (x, y) = (l as usize == k + 1, t > 0);
                both += usize::from(x && y);
                a += usize::from(x);
                b += usize::from(y);
            }
            let dice = 2.0 * both as f64 / (a + b) as f64;
            eprintln!("{id} {organ}: Dice {dice:.4} ({a} vs {b} voxels)");
            assert!(
                dice > 0.99,
                "{id} {organ}: Dice {dice:.4} ({a} vs {b} voxels)"
            );
        }
    }
    // The reverse direction: our RTSTRUCT of the original masks on each series, read back
    // by rt-utils (OpenCV fillPoly) and by our own reader.
    use shapeflow_formats::dicom;
    for (id, image, organs) in &cases {
        let dir = d.path().join("dcm").join(id);
        let folder = dicom::scan(&dir).unwrap();
        let files = &folder.series[0].2;
        let grid = dicom::read_series(files).unwrap().grid();
        let series = dicom::read_series_ref(files).unwrap();
        let truths: Vec<Vec<u8>> = organs
            .iter()
            .map(|(_, p)| {
                let v = datasets::read_volume(p).unwrap();
                v.to_f32().iter().map(|&x| u8::from(x > 0.0)).collect()
            })
            .collect();
        let rois: Vec<(&str, &[u8])> = organs
            .iter()
            .zip(&truths)
            .map(|((o, _), m)| (*o, m.as_slice()))
            .collect();
        let ours = d.path().join(format!("ours-{id}.dcm"));
        dicom::write_rtstruct(&ours, &series, &grid, &rois, "shapeflow test").unwrap();
        for (roi, (organ, truth)) in dicom::read_rtstruct(&ours).unwrap().iter().zip(&rois) {
            assert_eq!(roi.name, *organ);
            let back = dicom::rasterise(roi, &grid).unwrap();
            let differ = back.iter().zip(*truth).filter(|(a, b)| a != b).count();
            assert_eq!(
                differ, 0,
                "{id} {organ}: our reader differs in {differ} voxels"
            );
        }
        let mut args = vec![
            dir.to_str().unwrap().to_string(),
            ours.to_str().unwrap().to_string(),
            image.to_str().unwrap().to_string(),
        ];
        args.extend(organs.iter().map(|(o, p)| format!("{o}={}", p.display())));
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let Some(read) = python_json("read_rtstruct.py", &a) else {
            return;
        };
        for (organ, _) in organs {
            let r = &read["rois"][organ];
            let dice = r["dice"].as_f64().unwrap();
            eprintln!("{id} {organ}: rt-utils reads our RTSTRUCT with Dice {dice:.4} ({r})");
            assert!(dice > 0.99, "{id} {organ}: rt-utils Dice {dice:.4} ({r})");
        }
    }
    // A missing slice: irregular spacing, named.
    let dir = d.path().join("dcm/pt_201");
    std::fs::remove_file(dir.join("ct_0050.dcm")).unwrap();
    let params = LoadParams {
        format: Format::DicomRt,
        organs: vec!["Brainstem".into()],
        ..Default::default()
    };
    let layout = layouts::make(&params, Some(d.path().join("dcm"))).unwrap();
    let e = layout.read(0, "pt_201").unwrap_err();
    assert!(
        e.contains("ct_0051.dcm") && e.contains("irregular slice spacing"),
        "{e}"
    );
    // No RTSTRUCT: an unlabeled case.
    std::fs::remove_file(d.path().join("dcm/frm2/rtstruct.dcm")).unwrap();
    let found = layout.discover(0).unwrap();
    assert!(found.iter().any(|f| f.id == "frm2" && !f.labeled));
    assert!(layout.read(0, "frm2").unwrap().labels.is_none());
}

/// The `dicom` fuzz target's finding: a 1 kB file whose element declares 2.5 GB made the
/// DICOM crate reserve and zero that much (2.6 GB resident) before failing. With single
/// allocations capped near the file's size while parsing, it is an error naming the file,
/// and the process's peak memory does not move.
#[test]
fn a_dicom_element_longer_than_its_file_is_refused_without_allocating_it() {
    use shapeflow_formats::dicom;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/regressions/dicom");
    let input = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("oom-"))
        .unwrap();
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("slice.dcm");
    std::fs::copy(&input, &p).unwrap();
    let peak = || -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    };
    let before = peak();
    let _ = dicom::scan(d.path());
    assert!(dicom::read_series(std::slice::from_ref(&p)).is_err());
    let e = dicom::read_rtstruct(&p).unwrap_err().to_string();
    assert!(
        e.contains("slice.dcm") && e.contains("not a readable DICOM file"),
        "{e}"
    );
    let grew_mb = (peak() - before) / 1024;
    assert!(
        grew_mb < 256,
        "reading a 1 kB file raised the peak by {grew_mb} MB"
    );
}

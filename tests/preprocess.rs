//! head-crop and resample on phantoms and on the real head-and-neck CT, and predictions put
//! back on the original grid.

mod common;

use common::*;
use shapeflow_core::{CaseData, VoxelData};
use shapeflow_formats::NiftiIo;
use shapeflow_io::{datasets, phantom};
use shapeflow_preprocess::resample::{resample_to_grid, ImageInterp, LabelInterp};
use shapeflow_preprocess::{crop, crop_case, resample_case};
use std::collections::BTreeMap;

fn real_ct() -> CaseData {
    let root = shared("hn-ct-frm2");
    let organs: Vec<String> = [
        "BrainStem",
        "Mandible",
        "Parotid_L",
        "Parotid_R",
        "Submandibular_unspecified_side",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let cases = datasets::pddca_cases(root.parent().unwrap(), &organs, &BTreeMap::new()).unwrap();
    let c = cases.iter().find(|c| c.id == "hn-ct-frm2").unwrap();
    datasets::load_pddca(c, &organs, true).unwrap()
}

#[test]
fn head_crop_keeps_every_organ_voxel_on_phantoms() {
    for index in 0..4 {
        let case = phantom::head_neck(
            7,
            index,
            phantom::HnSpec {
                dims: [96, 96, 100],
                spacing: [2.5, 2.5, 3.0],
                noise_hu: 15.0,
            },
        );
        let img = case.image().unwrap();
        let b = crop::head_box(img, -300.0, [200.0, 200.0, 220.0]).unwrap();
        let out = crop_case(&case, b);
        assert_eq!(
            out.notes["crop_lost_organ_voxels"], 0,
            "phantom {index}: box {b:?}"
        );
        assert_eq!(out.organ_voxels(), case.organ_voxels());
        // The neck and shoulders are cut: the crop is smaller than the scan along z.
        assert!(b.size[2] < img.dims[2], "{b:?}");
        // Geometry: the crop's voxel 0 is the original's voxel `start`.
        let g = out.image().unwrap().grid();
        let w = img
            .grid()
            .world([b.start[0] as f64, b.start[1] as f64, b.start[2] as f64]);
        assert_eq!(g.world([0.0, 0.0, 0.0]), w);
    }
}

#[test]
fn head_crop_keeps_every_organ_voxel_on_the_real_ct() {
    let case = real_ct();
    let b = crop::head_box(case.image().unwrap(), -300.0, [200.0, 200.0, 220.0]).unwrap();
    let out = crop_case(&case, b);
    assert_eq!(out.notes["crop_lost_organ_voxels"], 0, "{b:?}");
    assert!(case.organ_voxels().iter().all(|&n| n > 0));
}

#[test]
fn real_ct_prediction_returns_to_the_original_grid() {
    let case = real_ct();
    let original = case.original.unwrap();
    let b = crop::head_box(case.image().unwrap(), -300.0, [180.0, 180.0, 180.0]).unwrap();
    let cropped = crop_case(&case, b);
    let small = resample_case(
        &cropped,
        [Some(2.0), Some(2.0), Some(2.5)],
        ImageInterp::Linear,
        LabelInterp::Linear,
    )
    .unwrap();
    // A "prediction" on the preprocessed grid: the labels themselves.
    let pred = small.labels.as_ref().unwrap();
    let back = resample_to_grid(
        pred,
        &original,
        ImageInterp::Linear,
        LabelInterp::Nearest,
        0.0,
    )
    .unwrap();
    assert_eq!(back.dims, case.image().unwrap().dims);
    assert!(back.grid().same_as(&original, 1e-9));
    assert_eq!(back.affine, case.image().unwrap().affine);
    // And it lands where the organs are: per-organ Dice against the original masks.
    let (VoxelData::U8(a), VoxelData::U8(o)) = (&back.data, &case.labels.as_ref().unwrap().data)
    else {
        panic!()
    };
    for k in 1..=5u8 {
        let inter = a
            .iter()
            .zip(o)
            .filter(|(x, y)| **x == k && **y == k)
            .count() as f64;
        let sum =
            (a.iter().filter(|&&x| x == k).count() + o.iter().filter(|&&x| x == k).count()) as f64;
        let dice = 2.0 * inter / sum;
        assert!(
            dice > 0.8,
            "organ {k}: Dice {dice:.3} after crop + resample + back"
        );
    }
    // Written as NIfTI, it keeps shape and affine.
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("pred.nii.gz");
    back.write_nifti(&p).unwrap();
    let r = shapeflow_core::Volume::read_nifti(&p).unwrap();
    assert_eq!(r.dims, back.dims);
    for (ra, rb) in r.affine.iter().zip(back.affine.iter()) {
        for (x, y) in ra.iter().zip(rb.iter()) {
            assert!((x - y).abs() < 1e-4);
        }
    }
}

#[test]
fn foreground_crop_on_mri() {
    let case = phantom::mri(1, 0, [36, 48, 36], [1.0; 3], 0.0);
    let img = case.image().unwrap();
    // Everything is foreground in this phantom, so the box is the whole volume.
    assert_eq!(
        crop::foreground_box(img, 0.0, 5.0),
        crop::CropBox {
            start: [0; 3],
            size: [36, 48, 36]
        }
    );
}

/// Every channel of a case is cropped and resampled onto the same grid: a second channel
/// holding the first's voxels comes out equal to it; one holding the first's negation
/// comes out as its negation inside the field of view, with its own background outside.
#[test]
fn crop_and_resample_treat_every_channel_alike() {
    let mut case = real_ct();
    let ct = case.image().unwrap().clone();
    let negated = ct
        .with_data(VoxelData::F32(ct.to_f32().iter().map(|v| -v).collect()))
        .unwrap();
    case.images = vec![ct.clone(), ct.clone(), std::sync::Arc::new(negated)];
    let b = crop::head_box(&ct, -300.0, [200.0, 200.0, 220.0]).unwrap();
    let cropped = crop_case(&case, b);
    cropped.check_grids().unwrap();
    assert_eq!(cropped.images.len(), 3);
    assert_eq!(cropped.images[1], cropped.images[0]);
    let out = resample_case(
        &cropped,
        [Some(2.5), Some(2.5), Some(3.0)],
        ImageInterp::Linear,
        LabelInterp::Linear,
    )
    .unwrap();
    out.check_grids().unwrap();
    assert_eq!(out.images.len(), 3);
    assert_eq!(out.images[1], out.images[0]);
    // Inside the CT's field of view (above its background, air at its minimum); the CT
    // is resampled as i16 (rounded), its negation as f32.
    let (a, n) = (out.images[0].to_f32(), out.images[2].to_f32());
    let air = a.iter().copied().fold(f32::INFINITY, f32::min);
    let inside: Vec<usize> = (0..a.len()).filter(|&i| a[i] > air + 1.0).collect();
    let same = inside
        .iter()
        .filter(|&&i| (a[i] + n[i]).abs() <= 0.5 + 1e-3)
        .count();
    assert!(
        inside.len() > a.len() / 4,
        "{} of {}",
        inside.len(),
        a.len()
    );
    assert!(
        same as f64 > 0.99 * inside.len() as f64,
        "{same} of {}",
        inside.len()
    );
}

//! edt-sdm against scipy on the real PDDCA masks (crops around each organ).

mod common;

use common::*;
use shapeflow_core::VoxelData;
use shapeflow_edt::{signed_map, Scale};
use shapeflow_io::{datasets, phantom::HN_ORGANS};
use std::collections::BTreeMap;

#[test]
fn signed_maps_equal_scipy_on_real_pddca_masks() {
    let root = shared("pddca-masks");
    let organs: Vec<String> = HN_ORGANS.iter().map(|s| s.to_string()).collect();
    let cases = datasets::pddca_cases(&root, &organs, &BTreeMap::new()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut crops = Vec::new();
    for c in &cases {
        let data = datasets::load_pddca(c, &organs, false).unwrap();
        let labels = data.labels.as_ref().unwrap();
        let VoxelData::U8(l) = &labels.data else {
            panic!()
        };
        for (k, organ) in organs.iter().enumerate() {
            let Some(bb) = shapeflow_edt::bbox_of(l, labels.dims, (k + 1) as u8) else {
                continue;
            };
            // A margin of 12 voxels in-plane, 4 across slices, so outside distances are real.
            let m = [12, 12, 4];
            let lo: [usize; 3] = std::array::from_fn(|a| bb.lo[a].saturating_sub(m[a]));
            let size: [usize; 3] =
                std::array::from_fn(|a| (bb.hi[a] + m[a] + 1).min(labels.dims[a]) - lo[a]);
            let crop = labels.crop(lo, size);
            let VoxelData::U8(cl) = &crop.data else {
                panic!()
            };
            let mask: Vec<u8> = cl.iter().map(|&v| (v == (k + 1) as u8) as u8).collect();
            let name = format!("{}_{}", c.id, organ);
            std::fs::write(dir.path().join(format!("{name}.u8")), &mask).unwrap();
            std::fs::write(
                dir.path().join(format!("{name}.json")),
                serde_json::json!({"dims": crop.dims, "spacing": crop.spacing}).to_string(),
            )
            .unwrap();
            crops.push((name, mask, crop.dims, crop.spacing));
        }
    }
    assert!(crops.len() >= 100, "{} organ crops", crops.len());
    let Some(done) = python_json("scipy_sdm.py", &[dir.path().to_str().unwrap()]) else {
        return;
    };
    assert_eq!(done["done"].as_u64().unwrap() as usize, crops.len());
    let mut worst = 0f64;
    for (name, mask, dims, spacing) in &crops {
        let ours = signed_map(mask, *dims, *spacing, 1, Scale::Millimetres).unwrap();
        let bytes = std::fs::read(dir.path().join(format!("{name}.f32"))).unwrap();
        let want: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(want.len(), ours.len());
        for (o, w) in ours.iter().zip(&want) {
            let e = (*o as f64 - *w as f64).abs();
            worst = worst.max(e);
            assert!(e < 1e-3, "{name}: {o} vs scipy {w}");
        }
    }
    eprintln!(
        "{} organ maps equal to scipy; largest difference {worst:.2e} mm",
        crops.len()
    );
}

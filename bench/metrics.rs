//! Metrics speed on a real 512 x 512 x N case (run through `bench/metrics.sh`, which runs
//! MONAI, medpy and surface-distance on the same masks and prints ratios).
//! Reference: the 9 PDDCA masks as one label map; prediction: the label map shifted by one
//! voxel in x and y (the peers get the same masks, organ by organ).

use shapeflow_core::VoxelData;
use shapeflow_io::{datasets, phantom::HN_ORGANS};
use shapeflow_metrics::{label_metrics, Convention, Options, Surface};
use std::path::PathBuf;
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let case_dir = PathBuf::from(
        std::env::args()
            .skip(1)
            .find(|a| !a.starts_with("--"))
            .expect("CASE_DIR"),
    );
    let organs: Vec<String> = HN_ORGANS.iter().map(|s| s.to_string()).collect();
    let id = case_dir.file_name().unwrap().to_string_lossy().to_string();
    let cases =
        datasets::pddca_cases(case_dir.parent().unwrap(), &organs, &Default::default()).unwrap();
    let c = cases.iter().find(|c| c.id == id).unwrap();
    let data = datasets::load_pddca(c, &organs, false).unwrap();
    let labels = data.labels.as_ref().unwrap();
    let VoxelData::U8(l) = &labels.data else {
        unreachable!()
    };
    // The prediction label map: every organ shifted by one voxel in x and y.
    let d = labels.dims;
    let mut pred = vec![0u8; l.len()];
    for z in 0..d[2] {
        for y in 1..d[1] {
            for x in 1..d[0] {
                pred[x + d[0] * (y + d[1] * z)] = l[(x - 1) + d[0] * ((y - 1) + d[1] * z)];
            }
        }
    }
    let present: Vec<usize> = (0..organs.len()).filter(|&k| data.present[k]).collect();
    let pairs: Vec<(u8, u8)> = present
        .iter()
        .map(|&k| ((k + 1) as u8, (k + 1) as u8))
        .collect();
    for (surface, name) in [
        (Surface::BoundaryVoxels, "shapeflow-boundary-voxels"),
        (Surface::SurfaceElements, "shapeflow-surface-elements"),
    ] {
        let mut times = Vec::new();
        let mut values = serde_json::Map::new();
        for _ in 0..5 {
            let t = Instant::now();
            let opts = Options {
                tolerance_mm: 1.0,
                convention: Convention::Monai,
                surface,
            };
            let ms = label_metrics(l, &pred, labels.dims, labels.spacing, &pairs, opts);
            for (&k, r) in present.iter().zip(&ms) {
                values.insert(
                    organs[k].clone(),
                    serde_json::json!({"dice": r.dice, "hd95": r.hd95, "assd": r.assd}),
                );
            }
            times.push(t.elapsed().as_secs_f64());
        }
        println!(
            "{}",
            serde_json::json!({"tool": name, "case": id, "threads": rayon::current_num_threads(), "organs": present.len(),
                "median_s": median(times.clone()), "runs": times.len(), "times_s": times, "values": values})
        );
    }
}

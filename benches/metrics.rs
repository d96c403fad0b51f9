//! Metrics speed on a real 512 x 512 x N case (run through `bench/metrics.sh`, which runs
//! MONAI, medpy and surface-distance on the same masks and prints ratios).
//! Reference: the 9 PDDCA masks; prediction: each mask shifted by one voxel in x and y.

use shapeflow_core::VoxelData;
use shapeflow_io::{datasets, phantom::HN_ORGANS};
use shapeflow_metrics::{organ_metrics_with, Convention, Surface};
use std::path::PathBuf;
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// The shifted prediction used by both sides: voxel (x, y, z) takes (x - 1, y - 1, z).
pub fn shifted(m: &[bool], d: [usize; 3]) -> Vec<bool> {
    let mut out = vec![false; m.len()];
    for z in 0..d[2] {
        for y in 1..d[1] {
            for x in 1..d[0] {
                out[x + d[0] * (y + d[1] * z)] = m[(x - 1) + d[0] * ((y - 1) + d[1] * z)];
            }
        }
    }
    out
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
    let pairs: Vec<(String, Vec<bool>, Vec<bool>)> = (0..organs.len())
        .filter(|&k| data.present[k])
        .map(|k| {
            let m: Vec<bool> = l.iter().map(|&v| v == (k + 1) as u8).collect();
            let p = shifted(&m, labels.dims);
            (organs[k].clone(), m, p)
        })
        .collect();
    for (surface, name) in [
        (Surface::BoundaryVoxels, "shapeflow-boundary-voxels"),
        (Surface::SurfaceElements, "shapeflow-surface-elements"),
    ] {
        let mut times = Vec::new();
        let mut values = serde_json::Map::new();
        for _ in 0..5 {
            let t = Instant::now();
            for (organ, m, p) in &pairs {
                let r = organ_metrics_with(
                    m,
                    p,
                    labels.dims,
                    labels.spacing,
                    1.0,
                    Convention::Monai,
                    surface,
                );
                values.insert(
                    organ.clone(),
                    serde_json::json!({"dice": r.dice, "hd95": r.hd95, "assd": r.assd}),
                );
            }
            times.push(t.elapsed().as_secs_f64());
        }
        println!(
            "{}",
            serde_json::json!({"tool": name, "case": id, "threads": rayon::current_num_threads(), "organs": pairs.len(),
                "median_s": median(times.clone()), "runs": times.len(), "times_s": times, "values": values})
        );
    }
}

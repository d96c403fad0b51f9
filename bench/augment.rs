//! Loader throughput: augmented batches per second at 1 and all worker threads, on phantom
//! head-and-neck cases (96 x 96 x 80 at 2.5 x 2.5 x 3 mm, 9 organs with SDMs).
//! Run: `cargo bench --bench augment`. Prints medians of repeated runs.

use shapeflow_io::phantom;
use shapeflow_learn::augment::{loader, AugmentConfig, TrainCase};
use std::sync::Arc;
use std::time::Instant;

fn main() {
    let cases: Vec<TrainCase> = (0..4)
        .map(|i| {
            let c = phantom::head_neck(
                1,
                i,
                phantom::HnSpec {
                    dims: [96, 96, 80],
                    spacing: [2.5, 2.5, 3.0],
                    noise_hu: 15.0,
                },
            );
            let s = shapeflow_sdm::case_sdms(&c, true).unwrap();
            TrainCase::new(&format!("p{i}"), &c, &s).unwrap()
        })
        .collect();
    let cases = Arc::new(cases);
    let all = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    for (name, cfg) in [
        (
            "rotation+scale+flip+intensity",
            AugmentConfig {
                patch: [64, 64, 32],
                batch: 2,
                ..Default::default()
            },
        ),
        (
            "plus elastic",
            AugmentConfig {
                patch: [64, 64, 32],
                batch: 2,
                elastic_mm: 3.0,
                ..Default::default()
            },
        ),
    ] {
        for workers in [1, all] {
            let mut rates = Vec::new();
            for rep in 0..5 {
                let n = 12;
                let t = Instant::now();
                let got = loader(cases.clone(), cfg.clone(), 3, rep, n, workers, 4)
                    .iter()
                    .count();
                assert_eq!(got, n);
                rates.push(n as f64 / t.elapsed().as_secs_f64());
            }
            rates.sort_by(|a, b| a.partial_cmp(b).unwrap());
            println!(
                "{name}: patch 64x64x32, batch 2, {workers} worker(s): median {:.1} batches/s ({:.0} voxels/s incl. 9 SDM channels), 5 runs",
                rates[2],
                rates[2] * 2.0 * 64.0 * 64.0 * 32.0 * 11.0
            );
        }
    }
}

//! load + head-crop + resample per case (run through `bench/preprocess.sh`, which runs the
//! same steps with SimpleITK on the same files and prints ratios).
//!
//! Usage: cargo bench --bench preprocess -- write-phantoms DIR N
//!        cargo bench --bench preprocess -- CASE_DIR...   (PDDCA layout: img.nrrd + structures/)

use shapeflow_io::{datasets, nrrd, phantom};
use shapeflow_preprocess::resample::{ImageInterp, LabelInterp};
use shapeflow_preprocess::{crop, crop_case, resample_case};
use std::path::{Path, PathBuf};
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn organs_of(dir: &Path) -> Vec<String> {
    let mut o: Vec<String> = std::fs::read_dir(dir.join("structures"))
        .unwrap()
        .flatten()
        .map(|e| e.path().file_stem().unwrap().to_string_lossy().to_string())
        .collect();
    o.sort();
    o
}

fn run_case(dir: &Path, labels: LabelInterp) -> (f64, [usize; 3]) {
    let t = Instant::now();
    let organs = organs_of(dir);
    let cases = datasets::pddca_cases(dir.parent().unwrap(), &organs, &Default::default()).unwrap();
    let id = dir.file_name().unwrap().to_string_lossy();
    let c = cases.iter().find(|c| c.id == id).unwrap();
    let data = datasets::load_pddca(c, &organs, true).unwrap();
    let b = crop::head_box(data.image().unwrap(), -300.0, [200.0, 200.0, 220.0]).unwrap();
    let cropped = crop_case(&data, b);
    let out = resample_case(
        &cropped,
        [Some(1.0), Some(1.0), Some(2.5)],
        ImageInterp::Linear,
        labels,
    )
    .unwrap();
    (t.elapsed().as_secs_f64(), out.image().unwrap().dims)
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if args.first().map(String::as_str) == Some("write-phantoms") {
        let dir = PathBuf::from(&args[1]);
        let n: u64 = args[2].parse().unwrap();
        for i in 0..n {
            let case = phantom::head_neck(
                2015,
                i,
                phantom::HnSpec {
                    dims: [256, 256, 120],
                    spacing: [0.98, 0.98, 2.5],
                    noise_hu: 15.0,
                },
            );
            let cd = dir.join(format!("phantom{i:03}"));
            std::fs::create_dir_all(cd.join("structures")).unwrap();
            let opts = nrrd::WriteOptions {
                gzip: true,
                big_endian: false,
                detached: false,
            };
            nrrd::write(case.image().unwrap(), &cd.join("img.nrrd"), opts).unwrap();
            for (k, o) in case.organs.iter().enumerate() {
                let mask = case.organ_mask(k).unwrap();
                let v = case
                    .labels
                    .as_ref()
                    .unwrap()
                    .with_data(shapeflow_core::VoxelData::U8(mask))
                    .unwrap();
                nrrd::write(&v, &cd.join("structures").join(format!("{o}.nrrd")), opts).unwrap();
            }
        }
        return;
    }
    let threads = rayon::current_num_threads();
    for a in &args {
        let dir = PathBuf::from(a);
        for (name, interp) in [
            ("nearest", LabelInterp::Nearest),
            ("linear", LabelInterp::Linear),
        ] {
            let mut times = Vec::new();
            let mut dims = [0; 3];
            for _ in 0..5 {
                let (t, d) = run_case(&dir, interp);
                times.push(t);
                dims = d;
            }
            println!(
                "{}",
                serde_json::json!({"tool": if name == "nearest" { "shapeflow" } else { "shapeflow-labels-linear" }, "case": dir.file_name().unwrap().to_string_lossy(),
                    "threads": threads, "median_s": median(times.clone()), "runs": times.len(), "times_s": times, "out_dims": dims})
            );
        }
    }
}

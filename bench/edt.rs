//! edt-sdm speed on real data (run through `bench/edt.sh`, which adds the Python peers and
//! prints ratios). Prints one JSON line per measurement.
//!
//! Usage: cargo bench --bench edt -- CASE_DIR... ; threads from RAYON_NUM_THREADS.

use shapeflow_io::{datasets, phantom::HN_ORGANS};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn bench_case(name: &str, case: &shapeflow_core::CaseData, reps: usize) {
    let threads = rayon::current_num_threads();
    let labels = case.labels.as_ref().unwrap();
    let organs = case.present.iter().filter(|p| **p).count();
    let mut times = Vec::new();
    let mut out_bytes = 0;
    for _ in 0..reps {
        let t = Instant::now();
        let s = shapeflow_sdm::case_sdms(case, true).unwrap();
        times.push(t.elapsed().as_secs_f64());
        out_bytes = s.maps.iter().flatten().map(|m| m.len() * 4).sum::<usize>();
        std::hint::black_box(&s);
    }
    // Memory-bandwidth bound: read the label map once per organ and write each f32 map.
    let n = labels.len();
    let mut copy = Vec::new();
    for _ in 0..reps {
        let t = Instant::now();
        let maps: Vec<Vec<f32>> = (0..organs)
            .map(|_| {
                let shapeflow_core::VoxelData::U8(l) = &labels.data else {
                    unreachable!()
                };
                l.iter().map(|&x| x as f32).collect()
            })
            .collect();
        copy.push(t.elapsed().as_secs_f64());
        std::hint::black_box(&maps);
    }
    println!(
        "{}",
        serde_json::json!({
            "tool": "shapeflow", "case": name, "threads": threads, "dims": labels.dims,
            "spacing": labels.spacing, "organs": organs, "voxels": n,
            "median_s": median(times.clone()), "runs": reps, "times_s": times,
            "copy_bound_s": median(copy), "output_bytes": out_bytes, "peak_rss_bytes": peak_rss(),
        })
    );
}

/// Peak resident memory of this process so far, in bytes.
fn peak_rss() -> u64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    ru.ru_maxrss as u64 * 1024
}

/// The edt-sdm stage through the cache: cold run, cached run, stored bytes per case.
fn cached(case_dir: &Path) {
    for storage in ["i16", "f32"] {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("data");
        std::fs::create_dir(&root).unwrap();
        std::os::unix::fs::symlink(
            case_dir.canonicalize().unwrap(),
            root.join(case_dir.file_name().unwrap()),
        )
        .unwrap();
        let text = format!(
            "name: edt-cache\nstages:\n  load: {{plugin: load, params: {{format: pddca, root: data, require_image: false}}}}\n  sdm: {{plugin: edt-sdm, after: [load], params: {{storage: {storage}}}}}\n"
        );
        std::fs::write(d.path().join("p.yaml"), text).unwrap();
        let reg = shapeflow::default_registry().unwrap();
        let run = || {
            let t = Instant::now();
            let (r, _) = shapeflow::cli::run_pipeline(
                &d.path().join("p.yaml"),
                &[],
                &reg,
                shapeflow::cli::RunSettings {
                    cache: Some(d.path().join("cache")),
                    runs: d.path().join("runs"),
                    ..Default::default()
                },
            )
            .unwrap();
            assert!(r.ok(), "{}", r.table());
            (
                t.elapsed().as_secs_f64(),
                r.node("sdm", "default").unwrap().wall_s,
                r.computed(),
            )
        };
        let (cold_total, cold_sdm, computed) = run();
        assert_eq!(computed, 2);
        let mut warm = Vec::new();
        for _ in 0..5 {
            let (t, _, c) = run();
            assert_eq!(c, 0);
            warm.push(t);
        }
        let cache = shapeflow_cache::Cache::open(
            d.path().join("cache"),
            shapeflow_cache::WaitPolicy::NoWait,
            &|_| {},
        )
        .unwrap();
        let stats = cache.stats().unwrap();
        let sdm = &stats["sdm"];
        println!(
            "{}",
            serde_json::json!({
                "tool": "shapeflow-cached", "case": case_dir.file_name().unwrap().to_string_lossy(),
                "threads": rayon::current_num_threads(), "storage": storage,
                "cold_run_s": cold_total, "cold_sdm_stage_s": cold_sdm, "cached_run_median_s": median(warm),
                "sdm_raw_bytes": sdm.raw_bytes, "sdm_stored_bytes": sdm.stored_bytes,
            })
        );
    }
}

/// Where direct minimisation stops paying against Felzenszwalb-Huttenlocher: the distance
/// transform of a synthetic 256 x 256 x 120 volume (0.98 x 0.98 x 2.5 mm) whose features (10%
/// of the voxels, seeded) fill a box of `rows` rows along y and z, each way, at each vector
/// width this CPU has. `Method::auto` picks its threshold from these.
fn crossover() {
    use shapeflow_edt::{edt_passes, BBox, Method, Simd, INF};
    let dims = [256usize, 256, 120];
    let n = dims[0] * dims[1] * dims[2];
    for rows in [16usize, 32, 48, 64, 96, 128, 192] {
        let rz = rows.min(110);
        let bb = BBox {
            lo: [30, 30, 5],
            hi: [30 + rows / 2, 30 + rows - 1, 5 + rz - 1],
        };
        let mut base = vec![INF; n];
        let mut s = 12345u64;
        for z in bb.lo[2]..=bb.hi[2] {
            for y in bb.lo[1]..=bb.hi[1] {
                for x in bb.lo[0]..=bb.hi[0] {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    if s.is_multiple_of(10) {
                        base[x + dims[0] * (y + dims[1] * z)] = 0.0;
                    }
                }
            }
        }
        let mut work = base.clone();
        for simd in Simd::available() {
            let mut med = Vec::new();
            for brute_max in [0, usize::MAX] {
                let method = Method { simd, brute_max };
                let mut times = Vec::new();
                for _ in 0..5 {
                    work.copy_from_slice(&base);
                    let t = Instant::now();
                    edt_passes(&mut work, dims, [0.98, 0.98, 2.5], Some(bb), true, method);
                    times.push(t.elapsed().as_secs_f64());
                }
                med.push(median(times));
            }
            println!(
                "{}",
                serde_json::json!({
                    "tool": "crossover", "threads": rayon::current_num_threads(),
                    "simd": format!("{simd:?}"), "rows_y": rows, "rows_z": rz, "dims": dims,
                    "fh_median_s": med[0], "direct_median_s": med[1], "runs": 5,
                    "auto_brute_max": Method::auto().brute_max,
                })
            );
        }
    }
}

fn main() {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    if raw.first().map(String::as_str) == Some("cached") {
        cached(Path::new(&raw[1]));
        return;
    }
    if raw.first().map(String::as_str) == Some("crossover") {
        crossover();
        return;
    }
    let args: Vec<String> = raw.into_iter().filter(|a| !a.starts_with("--")).collect();
    let organs: Vec<String> = HN_ORGANS.iter().map(|s| s.to_string()).collect();
    for a in args {
        let p = PathBuf::from(&a);
        if p.join("structures").is_dir() {
            let root = p.parent().unwrap_or(Path::new("."));
            let id = p.file_name().unwrap().to_string_lossy().to_string();
            let cases = datasets::pddca_cases(root, &organs, &BTreeMap::new()).unwrap();
            let c = cases.iter().find(|c| c.id == id).unwrap();
            let data = datasets::load_pddca(c, &organs, false).unwrap();
            bench_case(&id, &data, 5);
        } else {
            // An MSD label file: hippocampus, anterior + posterior as two organs.
            let v = datasets::as_labels(datasets::read_volume(&p).unwrap(), &p).unwrap();
            let case = shapeflow_core::CaseData {
                images: Vec::new(),
                labels: Some(std::sync::Arc::new(v)),
                organs: vec!["anterior".into(), "posterior".into()],
                present: vec![true, true],
                original: None,
                notes: Default::default(),
            };
            bench_case(&p.file_name().unwrap().to_string_lossy(), &case, 21);
        }
    }
}

//! The cost of running past one process (run: `cargo bench --bench slurm`; the Slurm part
//! needs `scripts/slurm.sh start` and is skipped without it).
//!
//! 1. Cache write throughput with 1, 4 and 16 concurrent writer processes (shared views,
//!    as cluster jobs write), then the owner adopting every blob they wrote.
//! 2. Per-item overhead of the Slurm executor against the local one: the same pipeline
//!    (200 tiny phantom cases, load -> resample), cold cache, jobs of 5, 20 and 200 cases.
//!
//! Prints medians of repeated runs with the machine's core count.

use shapeflow_cache::{Cache, CacheKey, WaitPolicy};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

const EXE: &str = env!("CARGO_BIN_EXE_pipeline");
const BLOBS: usize = 200;
const BLOB_BYTES: usize = 256 << 10;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// One writer process: `BLOBS` blobs of `BLOB_BYTES` (half compressible), its own keys.
fn writer(root: &str, w: usize) {
    let c = Cache::open_shared(root).expect("shared view");
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ w as u64;
    for i in 0..BLOBS {
        let bytes: Vec<u8> = (0..BLOB_BYTES)
            .map(|j| {
                if j % 2 == 0 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                } else {
                    0
                }
            })
            .collect();
        let k = CacheKey::of(format!("{w}-{i}").as_bytes());
        c.put(&k, "bench", "c", &bytes).expect("put");
    }
}

fn writers(n: usize) -> (f64, f64) {
    let d = tempfile::tempdir().unwrap();
    let owner = Cache::open(d.path(), WaitPolicy::NoWait, &|_| {}).unwrap();
    let exe = std::env::current_exe().unwrap();
    let t = Instant::now();
    let children: Vec<_> = (0..n)
        .map(|w| {
            Command::new(&exe)
                .env(
                    "SHAPEFLOW_BENCH_WRITER",
                    format!("{}:{w}", d.path().display()),
                )
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let write_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for w in 0..n {
        for i in 0..BLOBS {
            assert!(owner
                .contains(&CacheKey::of(format!("{w}-{i}").as_bytes()))
                .unwrap());
        }
    }
    let adopt_s = t.elapsed().as_secs_f64();
    assert!(owner.verify().unwrap().is_clean());
    (write_s, adopt_s)
}

fn cache_writers() {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    for n in [1usize, 4, 16] {
        let runs: Vec<(f64, f64)> = (0..3).map(|_| writers(n)).collect();
        let w = median(runs.iter().map(|r| r.0).collect());
        let a = median(runs.iter().map(|r| r.1).collect());
        let items = (n * BLOBS) as f64;
        let mib = items * BLOB_BYTES as f64 / (1 << 20) as f64;
        println!(
            "cache writers: {n:>2} processes x {BLOBS} blobs of {} KiB ({cores} cores): median {:.2} s, {:.0} blobs/s, {:.0} MiB/s; owner adopts them in {:.2} s ({:.0} blobs/s), 3 runs",
            BLOB_BYTES >> 10,
            w,
            items / w,
            mib / w,
            a,
            items / a
        );
    }
}

fn slurm_conf() -> Option<String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/slurm.sh");
    let ok = Command::new(&script)
        .arg("status")
        .output()
        .ok()?
        .status
        .success();
    if !ok {
        return None;
    }
    let o = Command::new(&script).arg("conf").output().ok()?;
    Some(String::from_utf8_lossy(&o.stdout).trim().to_string())
}

fn run_once(conf: &str, executor: &str, per_job: usize) -> f64 {
    let d = tempfile::tempdir().unwrap();
    let yaml = format!(
        "name: sfbench
executor: {{kind: slurm, per_job: {per_job}, poll_max_s: 0.5}}
stages:
  load:
    stage: load
    params: {{format: phantom, phantom: head-neck, cases: 200, dims: [16, 16, 12], spacing: [10.0, 10.0, 12.0], split: none}}
  resample:
    stage: resample
    after: [load]
    params: {{spacing: [12.0, 12.0, 12.0]}}
"
    );
    std::fs::write(d.path().join("p.yaml"), yaml).unwrap();
    let t = Instant::now();
    let o = Command::new(EXE)
        .args([
            "run",
            "p.yaml",
            "--cache",
            "cache",
            "--no-progress",
            "-q",
            "--executor",
            executor,
        ])
        .current_dir(d.path())
        .env("SLURM_CONF", conf)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    t.elapsed().as_secs_f64()
}

fn executor_overhead() {
    let Some(conf) = slurm_conf() else {
        println!("slurm executor: skipped (no Slurm running; scripts/slurm.sh start)");
        return;
    };
    let items = 400.0;
    let local = median((0..3).map(|_| run_once(&conf, "local", 20)).collect());
    println!(
        "local executor: 200 cases x 2 stages (400 items), cold cache: median {local:.2} s over 3 runs"
    );
    for per_job in [200usize, 20, 5] {
        let runs = if per_job < 20 { 1 } else { 3 };
        let s = median(
            (0..runs)
                .map(|_| run_once(&conf, "slurm", per_job))
                .collect(),
        );
        println!(
            "slurm executor, {per_job} case(s) per job ({} jobs): median {s:.2} s over {runs} run(s), {:.1}x local, {:.1} ms more per item",
            2 * 200usize.div_ceil(per_job),
            s / local,
            (s - local) / items * 1000.0
        );
    }
}

fn main() {
    if let Ok(spec) = std::env::var("SHAPEFLOW_BENCH_WRITER") {
        let (root, w) = spec.rsplit_once(':').unwrap();
        writer(root, w.parse().unwrap());
        return;
    }
    // `cargo bench` passes --bench; nothing else is taken.
    cache_writers();
    executor_overhead();
}

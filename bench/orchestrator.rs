//! Orchestrator overhead and cache throughput (run: `cargo bench --bench orchestrator`).
//!
//! 1. A fully cached re-run of a 200-case x 6-stage pipeline: everything `pipeline run` does
//!    (parse, validate, plan with 1,001 keys, check the cache, write the manifest).
//! 2. Cache put/get of the same bytes next to a plain file write (+fsync), read and copy.
//!
//! Prints medians of repeated runs, with the thread count.

#[path = "../tests/common/mod.rs"]
mod common;

use shapeflow::cli::{run_pipeline, RunSettings};
use shapeflow_cache::{Cache, CacheKey, WaitPolicy};
use std::io::Write;
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// `n` cases through 5 per-case stages and a gather: 5n + 1 items.
fn chain(n: usize) -> String {
    format!(
        "name: bench
stages:
  src: {{plugin: numbers, params: {{n: {n}}}}}
  s1: {{plugin: add, after: [src], params: {{add: 1}}}}
  s2: {{plugin: add, after: [s1], params: {{add: 1}}}}
  s3: {{plugin: add, after: [s2], params: {{add: 1}}}}
  s4: {{plugin: add, after: [s3], params: {{add: 1}}}}
  total: {{plugin: sum, after: [s4]}}
"
    )
}

fn cached_rerun(threads: usize) {
    let d = tempfile::tempdir().unwrap();
    common::write(d.path(), "p.yaml", &chain(200));
    let settings = || RunSettings {
        cache: Some(d.path().join("cache")),
        runs: d.path().join("runs"),
        ..Default::default()
    };
    let reg = common::registry();
    let t = Instant::now();
    let (r, _) = run_pipeline(&d.path().join("p.yaml"), &[], &reg, settings()).unwrap();
    let cold = t.elapsed().as_secs_f64();
    assert_eq!(r.computed(), 200 * 5 + 1);
    let mut times = Vec::new();
    for _ in 0..9 {
        let t = Instant::now();
        let (r, _) = run_pipeline(&d.path().join("p.yaml"), &[], &reg, settings()).unwrap();
        times.push(t.elapsed().as_secs_f64());
        assert_eq!(r.computed(), 0);
        assert_eq!(r.cached(), 1001);
    }
    println!(
        "cached re-run, 200 cases x 6 stages (1001 items), {threads} threads: median {:.3} s over {} runs (min {:.3}, max {:.3}); cold run {:.3} s",
        median(times.clone()),
        times.len(),
        times.iter().cloned().fold(f64::INFINITY, f64::min),
        times.iter().cloned().fold(0.0, f64::max),
        cold
    );
}

fn throughput() {
    let d = tempfile::tempdir().unwrap();
    let cache = Cache::open(d.path().join("cache"), WaitPolicy::NoWait, &|_| {}).unwrap();
    let n = 16 << 20; // 16 Mi f32 = 64 MiB, a 256 x 256 x 256 volume
                      // A smooth SDM-like field (compressible) and noise (incompressible).
    let smooth: Vec<u8> = (0..n)
        .flat_map(|i| {
            let (x, y, z) = (
                (i % 256) as f32,
                ((i / 256) % 256) as f32,
                (i / 65536) as f32,
            );
            let r = ((x - 128.0).powi(2) + (y - 128.0).powi(2) + (z - 128.0).powi(2)).sqrt();
            ((r - 60.0) / 200.0).to_le_bytes()
        })
        .collect();
    let mut state = 0x9e3779b97f4a7c15u64;
    let noise: Vec<u8> = (0..n * 4)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let mb = (n * 4) as f64 / (1 << 20) as f64;
    for (name, bytes) in [("smooth f32 field", &smooth), ("random bytes", &noise)] {
        let (mut put, mut get, mut write, mut read, mut copy) =
            (vec![], vec![], vec![], vec![], vec![]);
        let mut stored = 0;
        let t = Instant::now();
        let mut h = blake3::Hasher::new();
        h.update_rayon(bytes);
        let _ = h.finalize();
        let hash_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let _ = zstd::bulk::compress(&bytes[..1 << 18], 3);
        println!(
            "  (blake3 {:.0} MiB/s; zstd probe {:.1} ms)",
            mb / hash_s,
            t.elapsed().as_secs_f64() * 1e3
        );
        for rep in 0..7 {
            let key = CacheKey::of(format!("{name}{rep}").as_bytes());
            let p = d.path().join(format!("plain-{}-{rep}", name.len()));
            // Flush earlier writes first so that no fsync pays for another's data, and
            // alternate which of the two writes goes first.
            let timed_put = |put: &mut Vec<f64>| {
                unsafe { libc::sync() };
                let t = Instant::now();
                let s = cache.put(&key, "bench", "c", bytes).unwrap().stored_bytes;
                put.push(t.elapsed().as_secs_f64());
                s
            };
            let timed_write = |write: &mut Vec<f64>| {
                unsafe { libc::sync() };
                let t = Instant::now();
                let mut f = std::fs::File::create(&p).unwrap();
                f.write_all(bytes).unwrap();
                f.sync_all().unwrap();
                write.push(t.elapsed().as_secs_f64());
            };
            if rep % 2 == 0 {
                stored = timed_put(&mut put);
                timed_write(&mut write);
            } else {
                timed_write(&mut write);
                stored = timed_put(&mut put);
            }
            let t = Instant::now();
            let back = cache.get(&key).unwrap().unwrap();
            get.push(t.elapsed().as_secs_f64());
            assert_eq!(back.len(), bytes.len());
            let t = Instant::now();
            let r = std::fs::read(&p).unwrap();
            read.push(t.elapsed().as_secs_f64());
            assert_eq!(r.len(), bytes.len());
            unsafe { libc::sync() };
            let t = Instant::now();
            std::fs::copy(&p, d.path().join(format!("copy-{}-{rep}", name.len()))).unwrap();
            copy.push(t.elapsed().as_secs_f64());
        }
        let (put, get, write, read, copy) = (
            median(put),
            median(get),
            median(write),
            median(read),
            median(copy),
        );
        println!(
            "{name}, {mb:.0} MiB (stored {:.1} MiB): cache put {:.0} MiB/s vs plain write+fsync {:.0} MiB/s (ratio {:.2}); cache get {:.0} MiB/s vs plain read {:.0} MiB/s (ratio {:.2}); plain copy {:.0} MiB/s",
            stored as f64 / (1 << 20) as f64,
            mb / put,
            mb / write,
            write / put,
            mb / get,
            mb / read,
            read / get,
            mb / copy
        );
    }
}

/// Planning at cluster scale: 20,000 cases x 5 per-case stages + a gather (100,001 keys),
/// and the plan's JSON, which a Slurm run writes once for its jobs to read.
fn plan_100k(threads: usize) {
    let d = tempfile::tempdir().unwrap();
    common::write(d.path(), "p.yaml", &chain(20_000));
    let reg = common::registry();
    let pf = shapeflow_core::PipelineFile::load(&d.path().join("p.yaml")).unwrap();
    let resolved = shapeflow_core::resolve::resolve(&pf, &reg, &[]).unwrap();
    let mut plan_s = Vec::new();
    let mut json_s = Vec::new();
    let mut bytes = 0;
    for _ in 0..5 {
        let t = Instant::now();
        let p = shapeflow_core::plan::make_plan(&resolved, &Default::default()).unwrap();
        plan_s.push(t.elapsed().as_secs_f64());
        let items: usize = p.nodes.iter().map(|n| n.items.len()).sum();
        assert_eq!(items, 100_001);
        let t = Instant::now();
        let j = serde_json::to_vec(&p).unwrap();
        let back: shapeflow_core::Plan = serde_json::from_slice(&j).unwrap();
        json_s.push(t.elapsed().as_secs_f64());
        assert_eq!(back.nodes.len(), p.nodes.len());
        bytes = j.len();
    }
    println!(
        "plan of 100,001 items (20,000 cases x 5 stages + 1), {threads} threads: median {:.3} s over 5 runs; its JSON ({:.1} MiB) written and read back in {:.3} s",
        median(plan_s),
        bytes as f64 / (1 << 20) as f64,
        median(json_s)
    );
}

fn main() {
    let threads = rayon::current_num_threads();
    cached_rerun(threads);
    throughput();
    plan_100k(threads);
}

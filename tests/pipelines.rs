//! The ready pipelines in pipelines/: each validates, and the demo runs end to end.

mod common;

use common::*;
use shapeflow::cli::{run_pipeline, RunSettings};
use std::path::Path;

#[test]
fn child_entry() {
    maybe_run_child();
}

fn pipelines_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines")
}

#[test]
fn every_ready_pipeline_validates() {
    let d = tempfile::tempdir().unwrap();
    for f in ["demo.yaml", "hn2015.yaml", "hippocampus.yaml"] {
        let p = pipelines_dir().join(f);
        let out = run_child(d.path(), &["validate", p.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(0), "{f}: {}", text(&out));
    }
}

#[test]
fn demo_runs_end_to_end_and_reruns_from_cache() {
    let d = tempfile::tempdir().unwrap();
    let file = pipelines_dir().join("demo.yaml");
    let sets: Vec<String> = [
        "load.cases=2",
        "load.dims=[64, 64, 56]",
        "load.spacing=[3.5, 3.5, 4.3]",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let settings = || RunSettings {
        cache: Some(d.path().join("cache")),
        runs: d.path().join("runs"),
        ..Default::default()
    };
    let (r, _) = run_pipeline(&file, &sets, &registry(), settings()).unwrap();
    assert!(r.ok(), "{}", r.table());
    // load, crop, resample shared by both variants; sdm once per variant.
    assert_eq!(r.nodes.len(), 5, "{}", r.table());
    assert_eq!(r.computed(), 2 * 5);
    let (r, _) = run_pipeline(&file, &sets, &registry(), settings()).unwrap();
    assert_eq!(r.computed(), 0, "{}", r.table());
    // Changing the resample spacing recomputes resample and sdm only.
    let mut changed = sets.clone();
    changed.push("resample.spacing=[3.0, 3.0, 3.0]".into());
    let (r, _) = run_pipeline(&file, &changed, &registry(), settings()).unwrap();
    assert_eq!(r.node("load", "unit").unwrap().computed, 0);
    assert_eq!(r.node("crop", "unit").unwrap().computed, 0);
    assert_eq!(r.node("resample", "unit").unwrap().computed, 2);
    assert_eq!(r.computed(), 2 * 3, "{}", r.table());
}

#[test]
fn hippocampus_pipeline_plans_200_cases() {
    let d = tempfile::tempdir().unwrap();
    let p = pipelines_dir().join("hippocampus.yaml");
    let out = run_child(d.path(), &["plan", p.to_str().unwrap(), "--cache", "cache"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert!(
        t.lines()
            .any(|l| l.starts_with("load[merged]") && l.contains(" 200 ")),
        "{t}"
    );
}

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

/// The demo at toy size, load to report, all three variants: outputs where the README says,
/// predictions on the original grid, a second run computes nothing, and a new epoch count
/// recomputes train, infer and evaluate only.
#[test]
fn demo_runs_end_to_end_and_reruns_from_cache() {
    let d = tempfile::tempdir().unwrap();
    let file = pipelines_dir().join("demo.yaml");
    let sets: Vec<String> = [
        "load.dims=[64, 64, 56]",
        "load.spacing=[3.5, 3.5, 4.3]",
        "resample.spacing=[4.0, 4.0, 4.0]",
        "train.epochs=1",
        "train.iterations=2",
        "train.patch=[16, 16, 16]",
        "train.net={depth: 2, base_channels: 4, max_channels: 16, groups: 2}",
        "train.val_every=1",
        "train.workers=1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let settings = || RunSettings {
        cache: Some(d.path().join("cache")),
        runs: d.path().join("runs"),
        ..Default::default()
    };
    let (r, manifest) = run_pipeline(&file, &sets, &registry(), settings()).unwrap();
    assert!(r.ok(), "{}", r.table());
    // load, crop, resample, sdm shared; train, infer, evaluate, report per variant.
    assert_eq!(r.nodes.len(), 4 + 3 * 4, "{}", r.table());
    let run_dir = manifest.parent().unwrap();
    let tests = r.node("infer", "joint").unwrap().computed;
    assert_eq!(tests, 3, "10 cases, test_fraction 0.3");
    for v in ["dice", "sdm", "joint"] {
        for f in ["model.safetensors", "model.json", "metrics.jsonl", "loss.png"] {
            let p = run_dir.join("train").join(v).join(f);
            assert!(p.is_file(), "{}", p.display());
        }
        assert!(run_dir.join("report").join(v).join("report.md").is_file());
        let infer = run_dir.join("infer").join(v);
        let niftis: Vec<_> = std::fs::read_dir(&infer)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().ends_with(".nii.gz"))
            .collect();
        assert_eq!(niftis.len(), 3, "{}", infer.display());
        // On the phantom's original grid, not the cropped and resampled one.
        let pred = shapeflow_core::Volume::read_nifti(&niftis[0]).unwrap();
        assert_eq!(pred.dims, [64, 64, 56]);
        assert!((pred.spacing[2] - 4.3).abs() < 1e-4);
    }
    assert!(run_dir.join("report").join("variants.md").is_file());

    let (r, _) = run_pipeline(&file, &sets, &registry(), settings()).unwrap();
    for n in &r.nodes {
        if n.stage != "report" {
            assert_eq!(n.computed, 0, "{}", r.table());
        }
    }
    let mut changed = sets.clone();
    changed.push("train.epochs=2".into());
    let (r, _) = run_pipeline(&file, &changed, &registry(), settings()).unwrap();
    assert!(r.ok(), "{}", r.table());
    for n in &r.nodes {
        let want = match n.stage.as_str() {
            "load" | "crop" | "resample" | "sdm" => 0,
            "train" => 1,
            "infer" | "evaluate" => 3,
            _ => continue,
        };
        assert_eq!(n.computed, want, "{}: {}", n.stage, r.table());
    }
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
            .any(|l| l.starts_with("load ") && l.contains(" 200 ")),
        "{t}"
    );
}

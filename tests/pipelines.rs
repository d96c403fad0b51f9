//! The ready pipelines in pipelines/: each validates, and the demo runs end to end.

mod common;

use common::*;
use shapeflow::cli::{run_pipeline, RunSettings};
use shapeflow_formats::NiftiIo;
use shapeflow_learn::levels::Contest;
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
    for f in [
        "demo.yaml",
        "hn2015.yaml",
        "hippocampus.yaml",
        "openkbp.yaml",
        "openkbp-cascade.yaml",
    ] {
        let p = pipelines_dir().join(f);
        let out = run_child(d.path(), &["validate", p.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(0), "{f}: {}", text(&out));
    }
}

/// The demo at toy size, load to report, all four variants: outputs where the README says,
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
    // load, crop, resample shared; sdm and augment once for the paper's maps (dice,
    // joint-paper) and once for the band-limited ones (sdm, joint); train, infer, evaluate,
    // report per variant.
    assert_eq!(r.nodes.len(), 3 + 2 * 2 + 4 * 4, "{}", r.table());
    let run_dir = manifest.parent().unwrap();
    let tests = r.node("infer", "joint").unwrap().computed;
    assert_eq!(tests, 3, "10 cases, test_fraction 0.3");
    for v in ["dice", "sdm", "joint", "joint-paper"] {
        for f in [
            "model.safetensors",
            "model.json",
            "metrics.jsonl",
            "loss.png",
        ] {
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
            "load" | "crop" | "resample" | "sdm" | "augment" => 0,
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

/// Through the stages, on the real CT: load -> head-crop -> resample -> train (a token
/// network) -> infer writes its label map on the CT's original grid: same shape, same affine.
#[test]
fn infer_writes_predictions_on_the_real_ct_original_grid() {
    let d = tempfile::tempdir().unwrap();
    let root = shared("");
    let yaml = format!(
        r#"
name: real-ct
stages:
  load:
    plugin: load
    params:
      format: pddca
      root: "{}"
      organs: [BrainStem, Mandible, Parotid_L, Parotid_R]
      split: none
  crop: {{plugin: head-crop, after: [load], params: {{size_mm: [180, 180, 180]}}}}
  resample: {{plugin: resample, after: [crop], params: {{spacing: [4.0, 4.0, 4.0]}}}}
  sdm: {{plugin: edt-sdm, after: [resample]}}
  augment: {{stage: augment, after: [resample, sdm]}}
  train:
    plugin: train
    after: [resample, sdm, augment]
    params:
      epochs: 1
      iterations: 1
      patch: [16, 16, 16]
      net: {{depth: 2, base_channels: 4, max_channels: 8, groups: 2}}
      device: cpu
  infer: {{plugin: infer, after: [resample, train], params: {{split: all, write_maps: true}}}}
"#,
        root.display()
    );
    write(d.path(), "p.yaml", &yaml);
    let (r, manifest) = run_with_manifest(d.path(), "p.yaml", &[]);
    assert!(r.ok(), "{}", r.table());
    let infer_dir = manifest.parent().unwrap().join("infer");
    let pred = shapeflow_core::Volume::read_nifti(&infer_dir.join("hn-ct-frm2.nii.gz")).unwrap();
    let organs: Vec<String> = ["BrainStem", "Mandible", "Parotid_L", "Parotid_R"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let cases = shapeflow_io::datasets::pddca_cases(&root, &organs, &Default::default()).unwrap();
    let c = cases.iter().find(|c| c.id == "hn-ct-frm2").unwrap();
    let ct = shapeflow_io::datasets::load_pddca(c, &organs, true).unwrap();
    let img = ct.image().unwrap();
    assert_eq!(pred.dims, img.dims);
    for r in 0..3 {
        for c in 0..4 {
            assert!(
                (pred.affine[r][c] - img.affine[r][c]).abs() < 1e-3,
                "affine {:?} vs {:?}",
                pred.affine,
                img.affine
            );
        }
    }
    // The per-organ maps are there too, on the same grid.
    let map =
        shapeflow_core::Volume::read_nifti(&infer_dir.join("hn-ct-frm2_Mandible.nii.gz")).unwrap();
    assert_eq!(map.dims, img.dims);
    assert!(infer_dir.join("labels.json").is_file());

    // The model package, applied to the CT file alone by `pipeline predict` (head-crop and
    // resample replayed from it), gives the same prediction voxel for voxel.
    let out = d.path().join("predicted");
    let run = run_child(
        d.path(),
        &[
            "predict",
            "-m",
            manifest.parent().unwrap().join("train").to_str().unwrap(),
            "-i",
            c.image.as_ref().unwrap().to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(run.status.code(), Some(0), "{}", text(&run));
    let again = shapeflow_core::Volume::read_nifti(&out.join("img.nii.gz")).unwrap();
    assert_eq!(again, pred);
    // The continuous map too (an untrained model's labels may be all background; its map
    // is not constant, and moves with any change in the replayed preprocessing).
    let map_again = shapeflow_core::Volume::read_nifti(&out.join("img_Mandible.nii.gz")).unwrap();
    let values = map.to_f32();
    assert!(
        values.iter().any(|&v| v != values[0]),
        "a constant map proves nothing"
    );
    assert_eq!(map_again, map);

    // The same CT as a DICOM series (pydicom): predict reads the series folder and writes,
    // beside the label map, an RTSTRUCT on the series whose ROIs (named as labels.json,
    // in its order) fill back to the label map voxel for voxel.
    let series = d.path().join("dcm").join("frm2");
    let ct = c.image.as_ref().unwrap().to_str().unwrap().to_string();
    let Some(_) = python_json(
        "write_dicom_rt.py",
        &[ct.as_str(), series.to_str().unwrap()],
    ) else {
        return;
    };
    let out = d.path().join("predicted-dicom");
    let run = run_child(
        d.path(),
        &[
            "predict",
            "-m",
            manifest.parent().unwrap().join("train").to_str().unwrap(),
            "-i",
            series.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(run.status.code(), Some(0), "{}", text(&run));
    let labels = shapeflow_core::Volume::read_nifti(&out.join("frm2.nii.gz")).unwrap();
    assert_eq!(labels.dims, pred.dims);
    let same = labels
        .to_f32()
        .iter()
        .zip(pred.to_f32())
        .filter(|(a, b)| *a == b)
        .count();
    assert!(
        same as f64 > 0.999 * pred.to_f32().len() as f64,
        "DICOM and NRRD predictions agree in {same} voxels"
    );
    let rois = shapeflow_formats::dicom::read_rtstruct(&out.join("frm2.rtstruct.dcm")).unwrap();
    let names: Vec<&str> = rois.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["BrainStem", "Mandible", "Parotid_L", "Parotid_R"]);
    let values = labels.to_f32();
    for (k, roi) in rois.iter().enumerate() {
        let mask = shapeflow_formats::dicom::rasterise(roi, &labels.grid()).unwrap();
        let want: Vec<u8> = values
            .iter()
            .map(|&v| u8::from(v == (k + 1) as f32))
            .collect();
        assert_eq!(mask, want, "ROI {}", roi.name);
    }
}

/// `pipeline predict` on the hippocampus test cases (never seen in training), given as a
/// plain folder of images with nnU-Net's `_0000` naming: equal voxel for voxel to what
/// `infer` wrote inside the training pipeline. Its errors are named.
#[test]
fn predict_on_unseen_cases_equals_infer_inside_the_pipeline() {
    let d = tempfile::tempdir().unwrap();
    // The cases and their preparation, shared by the training pipeline and the one that
    // applies its package.
    let prepare = format!(
        r#"
  load:
    stage: load
    params: {{format: msd, root: "{}", merge: {{hippocampus: [1, 2]}}, split: holdout, val_fraction: 0.0, test_fraction: 0.3, limit: 10}}
  resample: {{stage: resample, after: [load], params: {{spacing: [1.5, 1.5, 1.5]}}}}"#,
        shared("hippocampus").display()
    );
    let yaml = format!(
        r#"
name: hippo-small
stages:{prepare}
  sdm: {{stage: edt-sdm, after: [resample]}}
  augment: {{stage: augment, after: [resample, sdm]}}
  train:
    stage: train
    after: [resample, sdm, augment]
    params:
      epochs: 1
      iterations: 2
      patch: [16, 16, 16]
      net: {{depth: 2, base_channels: 4, max_channels: 8, groups: 2}}
      device: cpu
  infer: {{stage: infer, after: [resample, train], params: {{largest_component: true, tta: true}}}}
  evaluate: {{stage: evaluate, after: [load, infer]}}
  report: {{stage: report, after: [evaluate], params: {{figures: false}}}}
"#
    );
    write(d.path(), "p.yaml", &yaml);
    let (r, manifest) = run_with_manifest(d.path(), "p.yaml", &[]);
    assert!(r.ok(), "{}", r.table());
    let run_dir = manifest.parent().unwrap();
    let predicted: Vec<String> = std::fs::read_dir(run_dir.join("infer"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("hippocampus_") && n.ends_with(".nii.gz"))
        .collect();
    assert_eq!(predicted.len(), 3, "{predicted:?}");
    let input = d.path().join("new");
    std::fs::create_dir_all(&input).unwrap();
    for n in &predicted {
        let id = n.trim_end_matches(".nii.gz");
        std::os::unix::fs::symlink(
            shared(&format!("hippocampus/imagesTr/{n}")),
            input.join(format!("{id}_0000.nii.gz")),
        )
        .unwrap();
    }
    let out = d.path().join("out");
    let model = run_dir.join("train");
    let args = |m: &str, i: &str| {
        vec![
            "predict".to_string(),
            "-m".into(),
            m.into(),
            "-i".into(),
            i.into(),
            "-o".into(),
            out.to_str().unwrap().into(),
        ]
    };
    let run = |a: Vec<String>| {
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        run_child(d.path(), &a)
    };
    let mut a = args(model.to_str().unwrap(), input.to_str().unwrap());
    a.extend([
        "--device".into(),
        "cpu".into(),
        "--batch".into(),
        "3".into(),
    ]);
    let o = run(a);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    for n in &predicted {
        let theirs = shapeflow_core::Volume::read_nifti(&run_dir.join("infer").join(n)).unwrap();
        let ours = shapeflow_core::Volume::read_nifti(&out.join(n)).unwrap();
        assert_eq!(ours, theirs, "{n}");
    }
    // Train -> predict -> evaluate: `predict`'s folder read back by `load`'s `predictions`
    // format and scored against the dataset gives the metrics the training pipeline's own
    // evaluation gave.
    let scoring = format!(
        r#"
name: score
stages:
  load:
    stage: load
    params: {{format: msd, root: "{}", merge: {{hippocampus: [1, 2]}}, split: holdout, val_fraction: 0.0, test_fraction: 0.3, limit: 10}}
  prediction: {{stage: load, params: {{format: predictions, root: "{}"}}}}
  evaluate: {{stage: evaluate, after: [load, prediction]}}
  report: {{stage: report, after: [evaluate], params: {{figures: false}}}}
"#,
        shared("hippocampus").display(),
        out.display()
    );
    write(d.path(), "score.yaml", &scoring);
    let (rs, scored) = run_with_manifest(d.path(), "score.yaml", &[]);
    assert!(rs.ok(), "{}", rs.table());
    assert_eq!(rs.node("evaluate", "default").unwrap().computed, 3);
    let csv = |run: &Path| std::fs::read_to_string(run.join("report/metrics.csv")).unwrap();
    let inside = csv(run_dir);
    assert_eq!(inside.lines().count(), 4, "{inside}");
    assert_eq!(csv(scored.parent().unwrap()), inside);
    // The same model as a package inside another pipeline (`infer.package`): the same
    // predictions; the package's content is in the key, so a second run computes nothing.
    let q = format!(
        r#"
name: hippo-apply
stages:{prepare}
  infer: {{stage: infer, after: [resample], params: {{package: "{}", largest_component: true, tta: true}}}}
"#,
        model.display()
    );
    write(d.path(), "q.yaml", &q);
    let (r2, manifest2) = run_with_manifest(d.path(), "q.yaml", &[]);
    assert!(r2.ok(), "{}", r2.table());
    assert_eq!(r2.node("infer", "default").unwrap().computed, 3);
    for n in &predicted {
        let theirs = shapeflow_core::Volume::read_nifti(&run_dir.join("infer").join(n)).unwrap();
        let ours =
            shapeflow_core::Volume::read_nifti(&manifest2.parent().unwrap().join("infer").join(n))
                .unwrap();
        assert_eq!(ours, theirs, "{n}");
    }
    let (r3, _) = run_with_manifest(d.path(), "q.yaml", &[]);
    assert_eq!(r3.node("infer", "default").unwrap().computed, 0);
    write(
        d.path(),
        "bad.yaml",
        &q.replace(model.to_str().unwrap(), d.path().to_str().unwrap()),
    );
    let o = run_child(d.path(), &["validate", "bad.yaml"]);
    assert!(
        o.status.code() == Some(2) && text(&o).contains("a model package is the folder"),
        "{}",
        text(&o)
    );
    // An image far outside the training images (its header claims 4 mm slices; they had
    // 1 mm): predicted, with a warning that gives the numbers.
    let odd_dir = d.path().join("odd");
    std::fs::create_dir_all(&odd_dir).unwrap();
    let first = shapeflow_core::Volume::read_nifti(&input.join(format!(
        "{}_0000.nii.gz",
        predicted[0].trim_end_matches(".nii.gz")
    )))
    .unwrap();
    let mut thick = first.clone();
    for r in 0..3 {
        thick.affine[r][2] *= 4.0;
    }
    thick.spacing[2] *= 4.0;
    thick.write_nifti(&odd_dir.join("thick.nii.gz")).unwrap();
    let o = run(args(model.to_str().unwrap(), odd_dir.to_str().unwrap()));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("far outside the training images'") && text(&o).contains("axis z"),
        "{}",
        text(&o)
    );
    // Errors a user meets, named.
    let o = run(args(d.path().to_str().unwrap(), input.to_str().unwrap()));
    assert!(
        o.status.code() == Some(1) && text(&o).contains("not a model package"),
        "{}",
        text(&o)
    );
    let empty = d.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let o = run(args(model.to_str().unwrap(), empty.to_str().unwrap()));
    assert!(text(&o).contains("no images"), "{}", text(&o));
    // A package from an incompatible version: a newer package format, or a preprocessing
    // stage whose version differs from this build's (its output may differ), is refused
    // with both versions named; nothing is written.
    let lineage: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("pipeline.json")).unwrap())
            .unwrap();
    let edited = |name: &str, edit: &dyn Fn(&mut serde_json::Value)| -> std::path::PathBuf {
        let dir = d.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for e in std::fs::read_dir(&model).unwrap().flatten() {
            if e.path().is_file() {
                std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
            }
        }
        let mut l = lineage.clone();
        edit(&mut l);
        std::fs::write(dir.join("pipeline.json"), l.to_string()).unwrap();
        dir
    };
    let newer = edited("newer", &|l| l["format"] = "shapeflow-pipeline/2".into());
    let stale = edited("stale", &|l| {
        let steps = l["preprocess"].as_array_mut().unwrap();
        let resample = steps.iter_mut().find(|s| s["stage"] == "resample").unwrap();
        let v = resample["version"].as_u64().unwrap();
        resample["version"] = (v + 1).into();
    });
    // The stage that applies the model is this build's: an older version of it is used
    // with a note (a newer build applies the same weights, with its fixes).
    let older = edited("older-infer", &|l| {
        let v = l["apply"][0]["version"].as_u64().unwrap();
        l["apply"][0]["version"] = (v + 7).into();
    });
    let mut a = args(older.to_str().unwrap(), input.to_str().unwrap());
    a[6] = d.path().join("older-out").to_str().unwrap().into();
    let o = run(a);
    assert!(
        o.status.code() == Some(0) && text(&o).contains("note: applying with stage `infer`"),
        "{}",
        text(&o)
    );
    let refused = d.path().join("refused");
    for (pkg, expect) in [
        (&newer, "package format `shapeflow-pipeline/2`"),
        (&stale, "the model was made with version"),
    ] {
        let mut a = args(pkg.to_str().unwrap(), input.to_str().unwrap());
        a[6] = refused.to_str().unwrap().into();
        let o = run(a);
        assert!(
            o.status.code() == Some(1) && text(&o).contains(expect),
            "{}",
            text(&o)
        );
        assert!(!refused.exists(), "a refused package wrote {refused:?}");
    }
}

const TRAIN_SLOW: &str = r#"
name: resume
seed: 3
stages:
  load: {plugin: load, params: {format: phantom, phantom: mri, cases: 3, split: none, dims: [32, 32, 32]}}
  sdm: {plugin: edt-sdm, after: [load]}
  augment: {stage: augment, after: [load, sdm]}
  train:
    plugin: train
    after: [load, sdm, augment]
    params:
      epochs: 30
      iterations: 3
      patch: [16, 16, 16]
      net: {depth: 2, base_channels: 4, max_channels: 8, groups: 2}
      device: cpu
      threads: 1
      workers: 1
"#;

/// `pipeline run`, Ctrl-C in the middle of training, `pipeline run` again: training resumes
/// from the last checkpoint (not from zero), finishes all epochs, and its resumable state is
/// removed once the model is cached.
#[test]
fn ctrl_c_during_training_then_rerun_resumes_from_the_checkpoint() {
    use std::time::{Duration, Instant};
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "p.yaml", TRAIN_SLOW);
    let work = d.path().join("cache/work");
    let checkpoint_epochs = || -> usize {
        std::fs::read_dir(&work)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path().join("checkpoint.json")).ok())
            .filter_map(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .filter_map(|v| v["epochs_done"].as_u64())
            .max()
            .unwrap_or(0) as usize
    };
    let c = spawn_child(d.path(), &["run", "p.yaml", "--cache", "cache"]);
    let t0 = Instant::now();
    while checkpoint_epochs() < 3 {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no checkpoint written"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    unsafe {
        libc::kill(c.id() as i32, libc::SIGINT);
    }
    let out = c.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
    let done = checkpoint_epochs();
    assert!((3..30).contains(&done), "checkpoint at epoch {done}");
    let out = run_child(d.path(), &["run", "p.yaml", "--cache", "cache"]);
    let t = strip_ansi(&text(&out));
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert!(
        t.contains("resuming training from checkpoint") && t.contains(&format!("epoch={done}")),
        "{t}"
    );
    // The full history: 30 epochs, steps continuing where the first run stopped.
    let runs: Vec<_> = std::fs::read_dir(d.path().join("runs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let last = runs.iter().max().unwrap();
    let jsonl = std::fs::read_to_string(last.join("train/metrics.jsonl")).unwrap();
    let steps: Vec<u64> = jsonl
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(steps, (1..=30).map(|e| 3 * e).collect::<Vec<u64>>());
    assert_eq!(
        checkpoint_epochs(),
        0,
        "work dir removed once the model is cached"
    );
}

/// `s` without terminal colour codes (ESC [ ... m).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Every item key of the demo, per (stage, variant), under `sets`.
fn demo_keys(sets: &[&str]) -> std::collections::BTreeMap<(String, String), Vec<String>> {
    use shapeflow_core::{config::parse_set, plan, resolve, CancelToken, PipelineFile};
    let file = PipelineFile::load(&pipelines_dir().join("demo.yaml")).unwrap();
    let sets: Vec<_> = sets.iter().map(|s| parse_set(s).unwrap()).collect();
    let registry = shapeflow::default_registry().unwrap();
    let r = resolve::resolve(&file, &registry, &sets).unwrap();
    let p = plan::make_plan(&r, &CancelToken::default()).unwrap();
    let mut out = std::collections::BTreeMap::new();
    for (variant, stages) in &r.by_variant {
        for (stage, &n) in stages {
            let keys = p.nodes[n].items.iter().map(|i| i.key.to_hex()).collect();
            out.insert((stage.clone(), variant.clone()), keys);
        }
    }
    out
}

/// Stages whose keys differ between the default demo and the demo under `sets`.
fn changed_stages(sets: &[&str]) -> std::collections::BTreeSet<String> {
    let (a, b) = (demo_keys(&[]), demo_keys(sets));
    assert_eq!(a.len(), b.len());
    a.iter()
        .filter(|(k, v)| b[*k] != **v)
        .map(|((stage, _), _)| stage.clone())
        .collect()
}

/// Execution-only params (how to run) are not in the cache key; output-defining ones are.
#[test]
fn execution_only_params_do_not_change_keys() {
    for set in [
        "train.workers=3",
        "train.threads=1",
        "train.checkpoint_every=5",
        "infer.batch=4",
        "infer.threads=2",
    ] {
        let changed = changed_stages(&[set]);
        assert!(changed.is_empty(), "{set} changed the keys of {changed:?}");
    }
    let changed = changed_stages(&["train.lr=0.003"]);
    let want: std::collections::BTreeSet<String> = ["train", "infer", "evaluate", "report"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    // `report` is not cached (recomputed every run) but its key still follows its inputs.
    assert_eq!(changed, want, "train.lr");
    assert_eq!(
        changed_stages(&["infer.overlap=0.25"]),
        ["infer", "evaluate", "report"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        "infer.overlap"
    );
    // The manifest still records the execution-only values.
    let registry = shapeflow::default_registry().unwrap();
    let train = registry.get("train").unwrap();
    let workers = train
        .params()
        .into_iter()
        .find(|p| p.name == "workers")
        .unwrap();
    assert!(workers.execution, "workers is execution-only");
    let lr = train.params().into_iter().find(|p| p.name == "lr").unwrap();
    assert!(
        !lr.execution && !lr.doc.is_empty() && lr.ty == "number",
        "{lr:?}"
    );
}

/// `seeds:` runs every variant once per seed, sharing every item that draws no random
/// numbers (data, preprocessing, sampler data) and none that does (training and after).
#[test]
fn seeds_share_preprocessing_and_split_training() {
    use shapeflow_core::{plan, resolve, CancelToken, PipelineFile};
    let d = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(pipelines_dir().join("demo.yaml"))
        .unwrap()
        .replace("seed: 2015\n", "seed: 2015\nseeds: [1, 2]\n");
    std::fs::write(d.path().join("demo.yaml"), text).unwrap();
    let file = PipelineFile::load(&d.path().join("demo.yaml")).unwrap();
    let names: Vec<String> = file.variants.iter().map(|v| v.name.clone()).collect();
    assert_eq!(
        names,
        [
            "dice@1",
            "dice@2",
            "sdm@1",
            "sdm@2",
            "joint@1",
            "joint@2",
            "joint-paper@1",
            "joint-paper@2"
        ]
    );
    let registry = shapeflow::default_registry().unwrap();
    let r = resolve::resolve(&file, &registry, &[]).unwrap();
    let p = plan::make_plan(&r, &CancelToken::default()).unwrap();
    let keys = |stage: &str, variant: &str| -> Vec<String> {
        let n = r.by_variant[variant][stage];
        p.nodes[n].items.iter().map(|i| i.key.to_hex()).collect()
    };
    for stage in ["load", "crop", "resample", "sdm", "augment"] {
        assert_eq!(keys(stage, "joint@1"), keys(stage, "joint@2"), "{stage}");
        // The same maps (band-limited for sdm and joint, the paper's for the others).
        assert_eq!(keys(stage, "joint@1"), keys(stage, "sdm@2"), "{stage}");
        assert_eq!(
            keys(stage, "dice@1"),
            keys(stage, "joint-paper@2"),
            "{stage}"
        );
    }
    for stage in ["load", "crop", "resample"] {
        assert_eq!(keys(stage, "joint@1"), keys(stage, "dice@2"), "{stage}");
    }
    for stage in ["train", "infer", "evaluate"] {
        assert_ne!(keys(stage, "joint@1"), keys(stage, "joint@2"), "{stage}");
    }
    // The phantoms still come from `seed: 2015`: the same data as without `seeds:`.
    assert_eq!(
        keys("load", "joint@1"),
        demo_keys(&[])[&("load".into(), "joint".into())]
    );
}

/// Cross-validation folds as variants (`split: kfold`, `fold` per variant): the folds'
/// validation cases partition the dataset, and every per-case item (load, SDMs, sampler data)
/// is computed once and shared, while each fold trains its own model.
#[test]
fn cross_validation_folds_share_every_per_case_item() {
    let d = tempfile::tempdir().unwrap();
    let file = |variants: &str| {
        format!(
            r#"
name: cv
stages:
  load: {{stage: load, params: {{format: phantom, phantom: mri, cases: 6, dims: [24, 24, 24], split: kfold, folds: 3, test_fraction: 0.0}}}}
  sdm: {{stage: edt-sdm, after: [load]}}
  augment: {{stage: augment, after: [load, sdm]}}
  train:
    stage: train
    after: [load, sdm, augment]
    params: {{epochs: 1, iterations: 1, patch: [16, 16, 16], net: {{depth: 2, base_channels: 4, max_channels: 8, groups: 2}}, device: cpu}}
variants:
{variants}"#
        )
    };
    write(d.path(), "one.yaml", &file("  f0: {load.fold: 0}\n"));
    let r = run_in(d.path(), "one.yaml", &[]);
    assert!(r.ok(), "{}", r.table());
    let all = "  f0: {load.fold: 0}\n  f1: {load.fold: 1}\n  f2: {load.fold: 2}\n";
    write(d.path(), "all.yaml", &file(all));
    // The folds' val cases partition the six cases.
    let pf = shapeflow_core::PipelineFile::load(&d.path().join("all.yaml")).unwrap();
    let resolved = shapeflow_core::resolve::resolve(&pf, &registry(), &[]).unwrap();
    let plan = shapeflow_core::plan::make_plan(&resolved, &Default::default()).unwrap();
    let mut val: Vec<String> = Vec::new();
    for (i, n) in resolved
        .nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| n.id == "load")
    {
        let v: Vec<String> = plan.nodes[i]
            .items
            .iter()
            .filter(|it| it.case.split.as_deref() == Some("val"))
            .map(|it| it.case.id.clone())
            .collect();
        assert_eq!(v.len(), 2, "{:?}: {v:?}", n.variants);
        val.extend(v);
    }
    val.sort();
    val.dedup();
    assert_eq!(
        val.len(),
        6,
        "every case is val in exactly one fold: {val:?}"
    );
    let r = run_in(d.path(), "all.yaml", &[]);
    assert!(r.ok(), "{}", r.table());
    let counts = |stage: &str, v: &str| {
        let n = r.node(stage, v).unwrap_or_else(|| panic!("{stage}/{v}"));
        (n.computed, n.cached)
    };
    for v in ["f1", "f2"] {
        for stage in ["load", "sdm", "augment"] {
            assert_eq!(counts(stage, v), (0, 6), "{stage}/{v}: {}", r.table());
        }
        assert_eq!(counts("train", v), (1, 0), "train/{v}: {}", r.table());
    }
    assert_eq!(counts("train", "f0"), (0, 1), "{}", r.table());
}

/// `split: file` reads nnU-Net's `splits_final.json`: a fold's train and val lists, the
/// rest test; a fold out of range, an unknown case or a case in both lists is named.
#[test]
fn splits_file_assigns_cases_and_names_its_mistakes() {
    let d = tempfile::tempdir().unwrap();
    let yaml = r#"
name: split-file
stages:
  load: {stage: load, params: {format: phantom, phantom: mri, cases: 5, dims: [16, 16, 16], split: file, splits_file: splits.json, fold: 1}}
"#;
    write(d.path(), "p.yaml", yaml);
    let splits = |json: &str| write(d.path(), "splits.json", json);
    let plan_of = || -> Result<Vec<(String, String)>, String> {
        let pf = shapeflow_core::PipelineFile::load(&d.path().join("p.yaml")).unwrap();
        let r = shapeflow_core::resolve::resolve(&pf, &registry(), &[]).unwrap();
        let p = shapeflow_core::plan::make_plan(&r, &Default::default())?;
        Ok(p.nodes[0]
            .items
            .iter()
            .map(|i| (i.case.id.clone(), i.case.split.clone().unwrap_or_default()))
            .collect())
    };
    let ids: Vec<String> = {
        splits(r#"[{"train": [], "val": []}, {"train": [], "val": []}]"#);
        plan_of().unwrap().into_iter().map(|(id, _)| id).collect()
    };
    splits(&format!(
        r#"[{{"train": [], "val": []}}, {{"train": ["{}", "{}"], "val": ["{}"]}}]"#,
        ids[0], ids[1], ids[2]
    ));
    let got = plan_of().unwrap();
    let split_of = |id: &str| got.iter().find(|(i, _)| i == id).unwrap().1.clone();
    assert_eq!(split_of(&ids[0]), "train");
    assert_eq!(split_of(&ids[2]), "val");
    assert_eq!(split_of(&ids[4]), "test");
    for (json, needle) in [
        (
            r#"[{"train": [], "val": []}]"#.to_string(),
            "fold 1 asked for, the file has 1",
        ),
        (
            r#"[{}, {"train": ["nope"], "val": []}]"#.to_string(),
            "does not have: nope",
        ),
        (
            format!(r#"[{{}}, {{"train": ["{0}"], "val": ["{0}"]}}]"#, ids[0]),
            "in both",
        ),
    ] {
        splits(&json);
        let e = plan_of().unwrap_err();
        assert!(e.contains("splits.json") && e.contains(needle), "{e}");
    }
}

/// Inputs are fingerprinted by content, relative to the dataset root: a copy of the dataset
/// at another path (another mount point, another node) is served from the cache; an edited
/// file is recomputed, alone.
#[test]
fn a_moved_dataset_is_served_from_the_cache() {
    let d = tempfile::tempdir().unwrap();
    let src = shared("hippocampus");
    let copy = |to: &Path| {
        for sub in ["imagesTr", "labelsTr"] {
            std::fs::create_dir_all(to.join(sub)).unwrap();
        }
        let mut entries = Vec::new();
        for id in ["hippocampus_001", "hippocampus_003", "hippocampus_004"] {
            for sub in ["imagesTr", "labelsTr"] {
                let f = format!("{sub}/{id}.nii.gz");
                std::fs::copy(src.join(&f), to.join(&f)).unwrap();
            }
            entries.push(format!(
                r#"{{"image": "./imagesTr/{id}.nii.gz", "label": "./labelsTr/{id}.nii.gz"}}"#
            ));
        }
        let json = format!(
            r#"{{"labels": {{"0": "background", "1": "a", "2": "p"}}, "training": [{}]}}"#,
            entries.join(",")
        );
        std::fs::write(to.join("dataset.json"), json).unwrap();
    };
    copy(&d.path().join("first"));
    copy(&d.path().join("mnt/elsewhere"));
    let yaml = |root: &str| {
        format!(
            "name: moved\nstages:\n  load: {{stage: load, params: {{format: msd, root: {root}, split: none}}}}\n  resample: {{stage: resample, after: [load], params: {{spacing: [1.5, 1.5, 1.5]}}}}\n"
        )
    };
    write(d.path(), "a.yaml", &yaml("first"));
    write(d.path(), "b.yaml", &yaml("mnt/elsewhere"));
    let r = run_in(d.path(), "a.yaml", &[]);
    assert!(r.ok(), "{}", r.table());
    let r = run_in(d.path(), "b.yaml", &[]);
    let n = r.node("resample", "default").unwrap();
    assert_eq!((n.computed, n.cached), (0, 3), "{}", r.table());
    // An edit keeping the size (one byte flipped in a label) recomputes that case only.
    let f = d
        .path()
        .join("mnt/elsewhere/labelsTr/hippocampus_003.nii.gz");
    let mut bytes = std::fs::read(&f).unwrap();
    let label = shapeflow_formats::read(&f).unwrap();
    let mut v: Vec<u8> = label.to_f32().iter().map(|&x| x as u8).collect();
    v[0] = if v[0] == 0 { 1 } else { 0 };
    shapeflow_formats::write(
        &label.with_data(shapeflow_core::VoxelData::U8(v)).unwrap(),
        &f,
    )
    .unwrap();
    bytes.clear();
    let r = run_in(d.path(), "b.yaml", &[]);
    let n = r.node("resample", "default").unwrap();
    assert_eq!((n.computed, n.cached), (1, 2), "{}", r.table());
}

/// `cross_validation: {stage: load, folds: 3}`: every variant once per fold, sharing every
/// per-case item; each fold's model segments its own val cases, and the report pools the
/// folds (every case once: the cross-validation result) and lists each fold's mean.
#[test]
fn cross_validation_runs_every_fold_and_pools_them_in_the_report() {
    let d = tempfile::tempdir().unwrap();
    let yaml = r#"
name: cv
cross_validation: {stage: load, folds: 3}
stages:
  load: {stage: load, params: {format: phantom, phantom: mri, cases: 6, dims: [24, 24, 24], test_fraction: 0.0}}
  sdm: {stage: edt-sdm, after: [load]}
  augment: {stage: augment, after: [load, sdm]}
  train:
    stage: train
    after: [load, sdm, augment]
    params: {epochs: 1, iterations: 1, patch: [16, 16, 16], net: {depth: 2, base_channels: 4, max_channels: 8, groups: 2}, device: cpu}
  infer: {stage: infer, after: [load, train], params: {split: val}}
  evaluate: {stage: evaluate, after: [load, infer]}
  report: {stage: report, after: [evaluate], params: {figures: false}}
variants:
  dice: {train.mode: dice}
  joint: {train.mode: joint}
"#;
    write(d.path(), "cv.yaml", yaml);
    let (r, manifest) = run_with_manifest(d.path(), "cv.yaml", &[]);
    assert!(r.ok(), "{}", r.table());
    // Six cases loaded, and their SDMs computed, once: the folds' nodes (each shared by
    // both variants) plan the same keys, and run one after another.
    for stage in ["load", "sdm", "augment"] {
        let computed: usize = (0..3)
            .map(|i| r.node(stage, &format!("dice:f{i}")).unwrap().computed)
            .sum();
        assert_eq!(computed, 6, "{stage}: {}", r.table());
    }
    for f in ["dice:f0", "dice:f1", "dice:f2"] {
        assert_eq!(
            r.node("infer", f).unwrap().computed + r.node("infer", f).unwrap().cached,
            2,
            "{f}"
        );
    }
    let report = manifest.parent().unwrap().join("report");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("variants.json")).unwrap())
            .unwrap();
    let folds = json["per_fold_means"].as_array().unwrap();
    assert!(
        folds
            .iter()
            .any(|f| f["variant"] == "dice" && f["per_fold"].as_array().unwrap().len() == 3),
        "{json}"
    );
    let md = std::fs::read_to_string(report.join("variants.md")).unwrap();
    assert!(
        md.contains("## Cross-validation folds") && md.contains("| dice |"),
        "{md}"
    );
    // `--variants dice` selects dice's three folds.
    let o = run_child(d.path(), &["plan", "cv.yaml", "--variants", "dice"]);
    let t = text(&o);
    assert!(
        o.status.code() == Some(0) && t.contains("dice:f2") && !t.contains("joint:f0"),
        "{t}"
    );
    // Mistakes are named with their line.
    write(
        d.path(),
        "bad.yaml",
        &yaml.replace("{stage: load, folds: 3}", "{stage: lod, folds: 1}"),
    );
    let o = run_child(d.path(), &["validate", "bad.yaml"]);
    assert!(
        o.status.code() == Some(2) && text(&o).contains("no stage `lod`"),
        "{}",
        text(&o)
    );
}

/// An nnU-Net v2 dataset with `imagesTs/` (no labels), built from the shared hippocampus:
/// its test images are test cases whatever the split policy; every stage takes them
/// (SDMs none, no training on them), `infer` segments them, and `evaluate` records their
/// organs as not annotated instead of failing.
#[test]
fn unlabeled_test_images_are_segmented_and_not_scored() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("Dataset004_Hippocampus");
    let tests = hippocampus_nnunet_v2(&root, 6, 2, false);
    let yaml = format!(
        r#"
name: unlabeled
stages:
  load: {{stage: load, params: {{format: nnunet-v2, root: "{}", split: holdout, val_fraction: 0.0, test_fraction: 0.0}}}}
  sdm: {{stage: edt-sdm, after: [load]}}
  augment: {{stage: augment, after: [load, sdm]}}
  train:
    stage: train
    after: [load, sdm, augment]
    params: {{epochs: 1, iterations: 1, patch: [16, 16, 16], net: {{depth: 2, base_channels: 4, max_channels: 8, groups: 2}}, device: cpu}}
  infer: {{stage: infer, after: [load, train]}}
  evaluate: {{stage: evaluate, after: [load, infer]}}
  report: {{stage: report, after: [evaluate], params: {{figures: false}}}}
"#,
        root.display()
    );
    write(d.path(), "p.yaml", &yaml);
    let (r, manifest) = run_with_manifest(d.path(), "p.yaml", &[]);
    assert!(r.ok(), "{}", r.table());
    assert_eq!(r.node("load", "default").unwrap().computed, 8);
    assert_eq!(r.node("infer", "default").unwrap().computed, 2);
    let run = manifest.parent().unwrap();
    for id in &tests {
        assert!(run.join(format!("infer/{id}.nii.gz")).is_file(), "{id}");
    }
    let csv = std::fs::read_to_string(run.join("report/metrics.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    assert_eq!(rows.len(), 4, "{csv}");
    assert!(
        rows.iter()
            .all(|l| tests.iter().any(|t| l.starts_with(t.as_str())) && l.contains(",absent,")),
        "{csv}"
    );
}

/// `infer.levels: validated`: the training keeps per-organ levels chosen on its validation
/// cases (in model.json), `infer` decides each organ at them (recorded in its notes), and a
/// model trained without validation is refused with the way out named.
#[test]
fn validated_levels_travel_from_training_to_inference() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("Dataset004_Hippocampus");
    hippocampus_nnunet_v2(&root, 8, 1, false);
    let yaml = |val_every: usize| {
        format!(
            r#"
name: levels
stages:
  load: {{stage: load, params: {{format: nnunet-v2, root: "{}", split: holdout, val_fraction: 0.25, test_fraction: 0.0}}}}
  sdm: {{stage: edt-sdm, after: [load]}}
  augment: {{stage: augment, after: [load, sdm]}}
  train:
    stage: train
    after: [load, sdm, augment]
    params: {{mode: sdm, epochs: 2, iterations: 2, val_every: {val_every}, patch: [16, 16, 16], net: {{depth: 2, base_channels: 4, max_channels: 8, groups: 2}}, device: cpu}}
  infer: {{stage: infer, after: [load, train], params: {{levels: validated, write_maps: true}}}}
"#,
            root.display()
        )
    };
    write(d.path(), "p.yaml", &yaml(1));
    let (r, manifest) = run_with_manifest(d.path(), "p.yaml", &[]);
    assert!(r.ok(), "{}", r.table());
    let run = manifest.parent().unwrap();
    let model: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("train/model.json")).unwrap()).unwrap();
    let levels = model["levels"]
        .as_array()
        .expect("levels in model.json")
        .clone();
    assert_eq!(levels.len(), 2, "{model}");
    for l in &levels {
        assert!(l["cases"].as_u64().unwrap() >= 1, "{l}");
        assert!(
            l["dice"].as_f64().unwrap() >= l["dice_fixed"].as_f64().unwrap(),
            "{l}"
        );
    }
    // The predictions were decided at those levels: decoding the written maps with them
    // gives the written labels.
    let checked = decoded_as_written(
        &run.join("infer"),
        &adopted(&levels),
        Contest::OwnLevel,
        &[0.0; 2],
    );
    assert!(checked >= 1);
    // Without validation there are no levels to decide at.
    write(d.path(), "q.yaml", &yaml(0));
    let (r, _) = run_with_manifest(d.path(), "q.yaml", &[]);
    let infer = r.node("infer", "default").unwrap();
    assert!(
        matches!(&infer.status, shapeflow_core::Status::Failed(m) if m.contains("no validated levels") && m.contains("levels: fixed")),
        "{:?}",
        infer.status
    );
}

/// Each organ at its searched level where that gains MIN_GAIN, else at the fixed 0.
fn adopted(levels: &[serde_json::Value]) -> Vec<f32> {
    levels
        .iter()
        .map(|l| {
            serde_json::from_value::<shapeflow_learn::levels::OrganLevel>(l.clone())
                .unwrap()
                .adopted(0.0)
        })
        .collect()
}

/// Decodes the SDMs an `infer` folder wrote (`write_maps`) at `levels` under `contest`,
/// keeping of each organ its components of at least `shares` of the largest's voxels,
/// checks that this gives the label maps it wrote, and returns how many cases it checked.
fn decoded_as_written(
    infer_dir: &std::path::Path,
    levels: &[f32],
    contest: Contest,
    shares: &[f32],
) -> usize {
    let names: std::collections::BTreeMap<String, String> =
        serde_json::from_slice(&std::fs::read(infer_dir.join("labels.json")).unwrap()).unwrap();
    let mut checked = 0;
    for e in std::fs::read_dir(infer_dir).unwrap().flatten() {
        let file = e.file_name().to_string_lossy().to_string();
        let Some(id) = file.strip_suffix(".nii.gz") else {
            continue;
        };
        if names.values().any(|o| id.ends_with(&format!("_{o}"))) {
            continue;
        }
        let pred = shapeflow_core::Volume::read_nifti(&e.path()).unwrap();
        let maps: Vec<Vec<f32>> = (1..=names.len())
            .map(|k| {
                let o = &names[&k.to_string()];
                shapeflow_core::Volume::read_nifti(&infer_dir.join(format!("{id}_{o}.nii.gz")))
                    .unwrap()
                    .to_f32()
            })
            .collect();
        let mut decoded = shapeflow_learn::levels::decode(
            shapeflow_learn::losses::Head::Sdm,
            &maps,
            levels,
            contest,
        );
        shapeflow_learn::tiling::keep_large_components(&mut decoded, pred.dims, shares);
        let labels: Vec<u8> = pred.to_f32().iter().map(|&v| v as u8).collect();
        assert_eq!(decoded.len(), labels.len(), "{id}");
        let differ = decoded.iter().zip(&labels).filter(|(a, b)| a != b).count();
        assert_eq!(
            differ, 0,
            "{id}: {differ} voxels decode otherwise under {contest:?}"
        );
        checked += 1;
    }
    checked
}

/// `calibrate`: levels chosen apart from training. Each organ alone under the own-level
/// contest, with the training's validation window (overlap 0.25), it chooses exactly the
/// levels `train` recorded; under the fixed-owner contest `infer` decodes with that rule
/// (model.json says which); by default the levels are searched together; `search: false`
/// passes the model through; without validation cases it fails naming the way out.
#[test]
fn calibrate_chooses_levels_apart_from_training() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("Dataset004_Hippocampus");
    hippocampus_nnunet_v2(&root, 8, 1, false);
    let yaml = |val_fraction: f64| {
        format!(
            r#"
name: calibrate
stages:
  load: {{stage: load, params: {{format: nnunet-v2, root: "{}", split: holdout, val_fraction: {val_fraction}, test_fraction: 0.0}}}}
  sdm: {{stage: edt-sdm, after: [load]}}
  augment: {{stage: augment, after: [load, sdm]}}
  train:
    stage: train
    after: [load, sdm, augment]
    params: {{mode: sdm, epochs: 2, iterations: 2, val_every: 1, patch: [16, 16, 16], net: {{depth: 2, base_channels: 4, max_channels: 8, groups: 2}}, device: cpu}}
  own: {{stage: calibrate, after: [load, train], params: {{joint: false, overlap: 0.25, device: cpu}}}}
  owner: {{stage: calibrate, after: [load, train], params: {{contest: fixed-owner, joint: false, device: cpu}}}}
  through: {{stage: calibrate, after: [load, train], params: {{search: false}}}}
  together: {{stage: calibrate, after: [load, train], params: {{device: cpu}}}}
  chosen: {{stage: calibrate, after: [load, train], params: {{components: true, device: cpu}}}}
  alone: {{stage: calibrate, after: [load, train], params: {{components: true, joint: false, device: cpu}}}}
  infer: {{stage: infer, after: [load, owner], params: {{levels: validated, write_maps: true}}}}
  kept: {{stage: infer, after: [load, chosen], params: {{levels: validated, largest_component: validated, write_maps: true}}}}
  mirrored: {{stage: calibrate, after: [load, train], params: {{tta: true, device: cpu}}}}
  unmirrored: {{stage: infer, after: [load, mirrored], params: {{levels: validated}}}}
"#,
            root.display()
        )
    };
    write(d.path(), "p.yaml", &yaml(0.25));
    let (r, manifest) = run_with_manifest(d.path(), "p.yaml", &[]);
    assert!(r.ok(), "{}", r.table());
    let run = manifest.parent().unwrap();
    let json = |stage: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(run.join(stage).join("model.json")).unwrap()).unwrap()
    };
    let (trained, own, owner) = (json("train"), json("own"), json("owner"));
    assert!(trained.get("contest").is_none(), "{trained}");
    assert_eq!(
        own["levels"], trained["levels"],
        "the training's search, redone"
    );
    assert!(
        own.get("contest").is_none(),
        "own-level is the default rule"
    );
    assert_eq!(json("through"), trained, "passed through");
    // Levels chosen on mirrored maps say so; decoding them unmirrored is warned about
    // (`predict` replays `unmirrored`, tta off), and not with `--tta`.
    assert_eq!(json("mirrored")["levels_mirrored"], true);
    assert!(json("own").get("levels_mirrored").is_none());
    for (flag, warned) in [(None, true), (Some("--tta"), false)] {
        let mut args = vec![
            "predict".to_string(),
            "-m".into(),
            run.join("mirrored").display().to_string(),
            "-i".into(),
            root.join("imagesTs").display().to_string(),
            "-o".into(),
            d.path().join(format!("m{warned}")).display().to_string(),
        ];
        args.extend(flag.map(String::from));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let p = run_child(d.path(), &args);
        assert_eq!(p.status.code(), Some(0), "{}", text(&p));
        assert_eq!(
            text(&p).contains("chosen on maps with test-time mirroring"),
            warned,
            "{}",
            text(&p)
        );
    }
    let together = json("together");
    let joint = together["levels"].as_array().expect("levels");
    assert!(joint.iter().all(|l| l["joint"] == true), "{together}");
    assert_eq!(owner["contest"], "fixed-owner");
    let levels = owner["levels"].as_array().expect("levels").clone();
    assert_eq!(levels.len(), 2);
    for l in &levels {
        assert!(l["cases"].as_u64().unwrap() >= 1, "{l}");
        assert!(l["dice"].as_f64() >= l["dice_fixed"].as_f64(), "{l}");
    }
    let checked = decoded_as_written(
        &run.join("infer"),
        &adopted(&levels),
        Contest::FixedOwner,
        &[0.0; 2],
    );
    assert!(checked >= 1);
    // `components: true` chooses per organ what share of its largest component a component
    // `infer` keeps must hold, at the same levels; `largest_component: validated` keeps so.
    let chosen = json("chosen");
    let with_choice = chosen["levels"].as_array().expect("levels").clone();
    let shares: Vec<f32> = with_choice
        .iter()
        .map(|l| l["component_share"].as_f64().expect("chosen") as f32)
        .collect();
    let mut without: Vec<serde_json::Value> = with_choice.clone();
    for l in &mut without {
        l.as_object_mut().unwrap().remove("component_share");
    }
    assert_eq!(&without, joint, "the same levels");
    assert!(json("alone")["levels"]
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l["component_share"].is_number()));
    let checked = decoded_as_written(
        &run.join("kept"),
        &adopted(&with_choice),
        Contest::OwnLevel,
        &shares,
    );
    assert!(checked >= 1);
    // `pipeline predict -m` takes the calibrated model's folder and decides as `infer` did.
    let out = d.path().join("predicted");
    let p = run_child(
        d.path(),
        &[
            "predict",
            "-m",
            run.join("owner").to_str().unwrap(),
            "-i",
            root.join("imagesTs").to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(p.status.code(), Some(0), "{}", text(&p));
    let mut same = 0;
    for e in std::fs::read_dir(&out).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.ends_with(".nii.gz") {
            let inferred = shapeflow_core::Volume::read_nifti(&run.join("infer").join(&name));
            assert_eq!(
                shapeflow_core::Volume::read_nifti(&e.path()).unwrap(),
                inferred.unwrap(),
                "{name}"
            );
            same += 1;
        }
    }
    assert_eq!(
        same, 3,
        "the test image's labels and its two maps (`write_maps`)"
    );
    // The training's own folder: no stage applies that model here; predict names the ones
    // that made a model from it.
    let p = run_child(
        d.path(),
        &[
            "predict",
            "-m",
            run.join("train").to_str().unwrap(),
            "-i",
            root.join("imagesTs").to_str().unwrap(),
            "-o",
            d.path().join("unused").to_str().unwrap(),
        ],
    );
    assert_ne!(p.status.code(), Some(0));
    for stage in [
        "own", "owner", "through", "together", "chosen", "alone", "mirrored",
    ] {
        let t = text(&p);
        assert!(
            t.contains(&format!("`{stage}`")) && t.contains(" made"),
            "{t}"
        );
    }
    // No validation cases: named, with the way out.
    write(d.path(), "q.yaml", &yaml(0.0));
    let (r, _) = run_with_manifest(d.path(), "q.yaml", &[]);
    let failed = r.node("owner", "default").unwrap();
    assert!(
        matches!(&failed.status, shapeflow_core::Status::Failed(m) if m.contains("no validation cases") && m.contains("val_fraction")),
        "{:?}",
        failed.status
    );
}

/// A two-channel nnU-Net v2 dataset (the shared hippocampus MRI and its inverted
/// intensities, `_0000` / `_0001`) through load -> SDMs -> train -> infer, then `pipeline
/// predict` on the test case's two files: the model takes two channels and records two
/// normalisations, predict gives what `infer` gave, and one file where the model takes
/// two is refused with the case and the count named.
#[test]
fn a_two_channel_dataset_trains_infers_and_predicts() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("Dataset104_TwoChannels");
    let test_id = hippocampus_nnunet_v2(&root, 4, 1, true).remove(0);
    let yaml = format!(
        r#"
name: two-channels
stages:
  load: {{stage: load, params: {{format: nnunet-v2, root: "{}", split: holdout, val_fraction: 0.25, test_fraction: 0.0}}}}
  sdm: {{stage: edt-sdm, after: [load]}}
  augment: {{stage: augment, after: [load, sdm], params: {{intensity_scale: [0.9, 1.1], noise: 0.05}}}}
  train:
    stage: train
    after: [load, sdm, augment]
    params: {{epochs: 2, iterations: 2, val_every: 1, patch: [16, 16, 16], net: {{depth: 2, base_channels: 4, max_channels: 8, groups: 2}}, device: cpu}}
  infer: {{stage: infer, after: [load, train], params: {{write_maps: true}}}}
"#,
        root.display()
    );
    write(d.path(), "p.yaml", &yaml);
    let (r, manifest) = run_with_manifest(d.path(), "p.yaml", &[]);
    assert!(r.ok(), "{}", r.table());
    let run = manifest.parent().unwrap();
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("train/model.json")).unwrap()).unwrap();
    assert_eq!(config["unet"]["in_channels"], 2, "{config}");
    assert_eq!(
        config["norm"],
        serde_json::json!([{"kind": "zscore"}, {"kind": "zscore"}]),
        "{config}"
    );
    let infer_map =
        shapeflow_core::Volume::read_nifti(&run.join(format!("infer/{test_id}_anterior.nii.gz")))
            .unwrap();
    let values = infer_map.to_f32();
    assert!(
        values.iter().any(|&v| v != values[0]),
        "a constant map proves nothing"
    );
    // predict on the test case's two files (the dataset's imagesTs).
    let out = d.path().join("predicted");
    let p = run_child(
        d.path(),
        &[
            "predict",
            "-m",
            run.join("train").to_str().unwrap(),
            "-i",
            root.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--save-maps",
        ],
    );
    assert_eq!(p.status.code(), Some(0), "{}", text(&p));
    let map = shapeflow_core::Volume::read_nifti(&out.join(format!("{test_id}_anterior.nii.gz")))
        .unwrap();
    assert_eq!(map, infer_map);
    // The same two channels as one 4D NIfTI file (the Decathlon's multi-modal layout).
    let c0 =
        shapeflow_formats::read(&root.join(format!("imagesTs/{test_id}_0000.nii.gz"))).unwrap();
    let c1 =
        shapeflow_formats::read(&root.join(format!("imagesTs/{test_id}_0001.nii.gz"))).unwrap();
    let four_d = d.path().join("4d");
    std::fs::create_dir_all(&four_d).unwrap();
    write_nifti_channels(&[c0, c1], &four_d.join(format!("{test_id}.nii.gz")));
    let out4 = d.path().join("predicted-4d");
    let p = run_child(
        d.path(),
        &[
            "predict",
            "-m",
            run.join("train").to_str().unwrap(),
            "-i",
            four_d.join(format!("{test_id}.nii.gz")).to_str().unwrap(),
            "-o",
            out4.to_str().unwrap(),
            "--save-maps",
        ],
    );
    assert_eq!(p.status.code(), Some(0), "{}", text(&p));
    let map4 = shapeflow_core::Volume::read_nifti(&out4.join(format!("{test_id}_anterior.nii.gz")))
        .unwrap();
    assert_eq!(
        map4, infer_map,
        "a 4D file predicts as its two channel files"
    );
    // One channel where the model takes two.
    let one = d.path().join("one");
    std::fs::create_dir_all(&one).unwrap();
    std::fs::copy(
        root.join(format!("imagesTs/{test_id}_0000.nii.gz")),
        one.join(format!("{test_id}_0000.nii.gz")),
    )
    .unwrap();
    let p = run_child(
        d.path(),
        &[
            "predict",
            "-m",
            run.join("train").to_str().unwrap(),
            "-i",
            one.to_str().unwrap(),
            "-o",
            d.path().join("nothing").to_str().unwrap(),
        ],
    );
    let t = text(&p);
    assert_ne!(p.status.code(), Some(0), "{t}");
    assert!(
        t.contains(&test_id) && t.contains("1 channel(s), the model takes 2"),
        "{t}"
    );
    assert!(!d.path().join(format!("nothing/{test_id}.nii.gz")).exists());
}

/// `--set seed=N` replaces the file's seed: what draws random numbers (training) runs again,
/// the rest comes from the cache; a seed that is not a number is named.
#[test]
fn set_seed_replaces_the_files_seed() {
    let d = tempfile::tempdir().unwrap();
    let yaml = format!(
        r#"
name: seeded
seed: 1
stages:
  load: {{stage: load, params: {{format: msd, root: "{}", merge: {{hippocampus: [1, 2]}}, split: none, limit: 3}}}}
  sdm: {{stage: edt-sdm, after: [load]}}
  augment: {{stage: augment, after: [load, sdm]}}
  train:
    stage: train
    after: [load, sdm, augment]
    params: {{epochs: 1, iterations: 1, patch: [16, 16, 16], net: {{depth: 2, base_channels: 4, max_channels: 8, groups: 2}}, device: cpu}}
"#,
        shared("hippocampus").display()
    );
    write(d.path(), "p.yaml", &yaml);
    let (r, m1) = run_with_manifest(d.path(), "p.yaml", &[]);
    assert!(r.ok(), "{}", r.table());
    let (r, m2) = run_with_manifest(d.path(), "p.yaml", &["seed=7"]);
    assert!(r.ok(), "{}", r.table());
    assert_eq!(
        r.node("train", "default").unwrap().computed,
        1,
        "{}",
        r.table()
    );
    assert_eq!(
        r.node("load", "default").unwrap().computed,
        0,
        "{}",
        r.table()
    );
    let seed = |m: &Path| std::fs::read_to_string(m).unwrap().contains("\"seed\": 7");
    assert!(!seed(&m1) && seed(&m2));
    let o = run_child(d.path(), &["plan", "p.yaml", "--set", "seed=seven"]);
    assert!(
        o.status.code() != Some(0) && text(&o).contains("the seed is a non-negative whole number"),
        "{}",
        text(&o)
    );
    // `--set seeds=1,7,3`: the seed axis from the command line; seeds 1 and 7 are the
    // trainings of the two runs above, served from the cache; seed 3 trains.
    let r = run_in(d.path(), "p.yaml", &["seeds=1,7,3"]);
    assert!(r.ok(), "{}", r.table());
    let computed = |v: &str| r.node("train", v).unwrap().computed;
    assert_eq!(
        (computed("seed@1"), computed("seed@7"), computed("seed@3")),
        (0, 0, 1),
        "{}",
        r.table()
    );
    for bad in ["seeds=1,x", "seeds=2,2"] {
        let o = run_child(d.path(), &["plan", "p.yaml", "--set", bad]);
        assert!(
            o.status.code() != Some(0) && text(&o).contains(&format!("--set {bad}")),
            "{}",
            text(&o)
        );
    }
}

/// `pipeline predict -m A -m B`: an ensemble's maps are the mean of its members' maps
/// (each member predicted alone), and packages that replay different preprocessing are
/// refused with the difference named.
#[test]
fn predict_ensemble_averages_its_members() {
    let d = tempfile::tempdir().unwrap();
    let yaml = |spacing: f64, name: &str| {
        format!(
            r#"
name: {name}
seeds: [1, 2]
stages:
  load:
    stage: load
    params: {{format: msd, root: "{}", merge: {{hippocampus: [1, 2]}}, split: holdout, val_fraction: 0.0, test_fraction: 0.3, limit: 6}}
  resample: {{stage: resample, after: [load], params: {{spacing: [{spacing}, {spacing}, {spacing}]}}}}
  sdm: {{stage: edt-sdm, after: [resample]}}
  augment: {{stage: augment, after: [resample, sdm]}}
  train:
    stage: train
    after: [resample, sdm, augment]
    params:
      epochs: 1
      iterations: 2
      patch: [16, 16, 16]
      net: {{depth: 2, base_channels: 4, max_channels: 8, groups: 2}}
      device: cpu
  infer: {{stage: infer, after: [resample, train], params: {{write_maps: true}}}}
"#,
            shared("hippocampus").display()
        )
    };
    write(d.path(), "p.yaml", &yaml(1.5, "ens"));
    let (r, manifest) = run_with_manifest(d.path(), "p.yaml", &[]);
    assert!(r.ok(), "{}", r.table());
    let train = manifest.parent().unwrap().join("train");
    let mut members: Vec<std::path::PathBuf> = std::fs::read_dir(&train)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("pipeline.json").is_file())
        .collect();
    members.sort();
    assert_eq!(members.len(), 2, "{members:?}");
    let image = shared("hippocampus/imagesTr/hippocampus_001.nii.gz");
    let predict = |models: &[&Path], out: &Path| {
        let mut args = vec!["predict".to_string()];
        for m in models {
            args.push("-m".into());
            args.push(m.to_str().unwrap().into());
        }
        args.extend([
            "-i".into(),
            image.to_str().unwrap().into(),
            "-o".into(),
            out.to_str().unwrap().into(),
        ]);
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        run_child(d.path(), &a)
    };
    let map = |out: &Path| -> Vec<f32> {
        shapeflow_core::Volume::read_nifti(&out.join("hippocampus_001_hippocampus.nii.gz"))
            .unwrap()
            .to_f32()
    };
    let (a, b, e) = (d.path().join("a"), d.path().join("b"), d.path().join("e"));
    for (models, out) in [
        (vec![members[0].as_path()], &a),
        (vec![members[1].as_path()], &b),
        (vec![members[0].as_path(), members[1].as_path()], &e),
    ] {
        let o = predict(&models, out);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    }
    let (ma, mb, me) = (map(&a), map(&b), map(&e));
    assert_ne!(ma, mb, "two seeds, two models");
    let worst = ma
        .iter()
        .zip(&mb)
        .zip(&me)
        .map(|((x, y), z)| ((x + y) / 2.0 - z).abs())
        .fold(0.0f32, f32::max);
    assert!(
        worst < 1e-5,
        "ensemble map differs from the mean by {worst}"
    );
    // A package with other preprocessing cannot join the ensemble.
    write(d.path(), "q.yaml", &yaml(2.0, "other"));
    let (r, manifest) = run_with_manifest(d.path(), "q.yaml", &[]);
    assert!(r.ok(), "{}", r.table());
    let other = std::fs::read_dir(manifest.parent().unwrap().join("train"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("pipeline.json").is_file())
        .unwrap();
    let o = predict(
        &[members[0].as_path(), other.as_path()],
        &d.path().join("x"),
    );
    let t = text(&o);
    assert!(
        o.status.code() == Some(1)
            && t.contains("cannot form an ensemble")
            && t.contains("resample"),
        "{t}"
    );
}

/// `pipeline export`: the network as TorchScript (run by torch) and ONNX (run by ONNX
/// Runtime from PyPI) computes what the project's own network computes, within 1e-5 of its
/// largest output, with the preprocessing written beside it.
#[test]
fn exported_networks_compute_what_ours_computes() {
    use shapeflow_learn::fit::Mode;
    use shapeflow_learn::model::{self, Model, ModelConfig, Norm};
    use shapeflow_learn::tch::{nn, Device, Kind, Tensor};
    use shapeflow_learn::unet::{UNet, UNetConfig};
    let Some(py) = python() else { return };
    let d = tempfile::tempdir().unwrap();
    shapeflow_learn::tch::manual_seed(14);
    let vs = nn::VarStore::new(Device::Cpu);
    let unet = UNetConfig {
        in_channels: 1,
        out_channels: 2,
        depth: 2,
        base_channels: 4,
        groups: 2,
        slope: 0.01,
        max_channels: 16,
    };
    let net = UNet::new(&vs.root(), unet);
    let m = Model {
        config: ModelConfig {
            format: model::FORMAT.into(),
            unet,
            organs: vec!["Parotid_L".into(), "Parotid_R".into()],
            mode: Mode::JointShellBalanced,
            k: 1500.0,
            norm: vec![Norm::Zscore],
            patch: [16, 12, 8],
            spacing: [1.0; 3],
            trained: Default::default(),
            training_data: None,
            left_right_flip: None,
            levels: None,
            contest: Default::default(),
            levels_mirrored: false,
        },
        weights: model::weights_bytes(&vs, d.path()).unwrap(),
    };
    let dir = d.path().join("model");
    shapeflow_learn::history::write_model(&dir, &m).unwrap();
    // Another size than the patch it was traced at: the exported graphs take any multiple.
    let x = Tensor::randn([2, 1, 8, 16, 24], (Kind::Float, Device::Cpu));
    let y = net.forward(&x);
    let io = d.path().join("io.safetensors");
    Tensor::write_safetensors(&[("input", &x), ("output", &y)], &io).unwrap();
    for (format, file) in [("torchscript", "net.pt"), ("onnx", "net.onnx")] {
        let out = d.path().join(file);
        let o = run_child(
            d.path(),
            &[
                "export",
                "-m",
                dir.to_str().unwrap(),
                "--format",
                format,
                "-o",
                out.to_str().unwrap(),
                "--python",
                py.to_str().unwrap(),
            ],
        );
        assert_eq!(o.status.code(), Some(0), "{format}: {}", text(&o));
        let meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(format!("{}.json", out.display())).unwrap())
                .unwrap();
        assert_eq!(
            meta["output"]["organs"],
            serde_json::json!(["Parotid_L", "Parotid_R"])
        );
        // Every SDM and joint mode decodes maps (the export once listed only four modes).
        assert_eq!(meta["output"]["head"], "sdm", "{meta}");
        let check = std::process::Command::new(&py)
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("python/check_export.py"))
            .args([out.to_str().unwrap(), format, io.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "{}",
            String::from_utf8_lossy(&check.stderr)
        );
        let r: serde_json::Value = serde_json::from_str(
            String::from_utf8_lossy(&check.stdout)
                .lines()
                .last()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(r["shape"], serde_json::json!([2, 2, 8, 16, 24]), "{format}");
        let (diff, max_abs) = (
            r["max_abs_diff"].as_f64().unwrap(),
            r["max_abs"].as_f64().unwrap(),
        );
        assert!(max_abs > 0.01);
        // Relative, as in plugins/learn/tests/pytorch.rs (measured up to 1.8e-6 of the largest
        // over 6 random nets, both formats; that crate's test cannot share this file's helpers).
        assert!(
            diff <= 1e-5 * max_abs,
            "{format}: outputs differ by {diff} (largest output {max_abs})"
        );
    }
}

/// `--variants` runs a subset of a file's variants (what a CPU-sized study profile needs);
/// an unknown name is refused with the list.
#[test]
fn variants_flag_selects_a_subset_and_names_unknown_ones() {
    let d = tempfile::tempdir().unwrap();
    let demo = pipelines_dir().join("demo.yaml");
    let demo = demo.to_str().unwrap();
    let o = run_child(
        d.path(),
        &["plan", demo, "--variants", "dice,joint", "--cache", "c"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let t = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        t.contains("train[dice]") && t.contains("train[joint]"),
        "{t}"
    );
    assert!(!t.contains("[sdm]"), "{t}");
    let o = run_child(
        d.path(),
        &["plan", demo, "--variants", "nope", "--cache", "c"],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("`nope` is not a variant") && text(&o).contains("dice, sdm, joint"),
        "{}",
        text(&o)
    );
}

/// `default_variants:` is what `run` and `plan` take without `--variants` (a study beside
/// its named experiments); `--variants` still reaches every variant, `validate` checks them
/// all, and a name that is not a variant is an error with its line.
#[test]
fn default_variants_are_run_without_the_flag() {
    let d = tempfile::tempdir().unwrap();
    let demo = std::fs::read_to_string(pipelines_dir().join("demo.yaml")).unwrap();
    let write = |defaults: &str| {
        let text = demo.replace("seed: 2015\n", &format!("seed: 2015\n{defaults}\n"));
        assert_ne!(text, demo);
        std::fs::write(d.path().join("demo.yaml"), text).unwrap();
    };
    write("default_variants: [dice, joint]");
    let plan = |args: &[&str]| {
        let mut all = vec!["plan", "demo.yaml", "--cache", "c"];
        all.extend_from_slice(args);
        let o = run_child(d.path(), &all);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    let t = plan(&[]);
    assert!(
        t.contains("train[dice]") && t.contains("train[joint]"),
        "{t}"
    );
    assert!(
        !t.contains("train[sdm]") && !t.contains("joint-paper"),
        "{t}"
    );
    let t = plan(&["--variants", "sdm,joint-paper"]);
    assert!(
        t.contains("train[sdm]") && t.contains("train[joint-paper]") && !t.contains("[dice]"),
        "{t}"
    );
    // With seeds, each default variant once per seed.
    let t = plan(&["--set", "seeds=1,2"]);
    assert!(t.contains("train[dice@2]") && !t.contains("sdm@"), "{t}");
    let o = run_child(d.path(), &["validate", "demo.yaml"]);
    assert!(
        text(&o).contains("4 variants (2 run by default: dice, joint)"),
        "{}",
        text(&o)
    );
    write("default_variants: [dice, jiont]");
    let o = run_child(d.path(), &["validate", "demo.yaml"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("demo.yaml:") && t.contains("`jiont` is not in `variants:`"),
        "{t}"
    );
}

/// `executor:` and per-stage `resources:` are checked with the file's other fields: a
/// mistake is a validation error (exit 2) with its line, before anything runs.
#[test]
fn executor_and_resources_mistakes_fail_validation_with_their_line() {
    let d = tempfile::tempdir().unwrap();
    let good = "name: r
executor: {kind: slurm, per_job: 5, resources: {partition: short}}
stages:
  load:
    stage: load
    params: {format: phantom, cases: 2, dims: [16, 16, 16], split: none}
    resources: {cpus: 2, memory: 4G, time: \"1:00:00\", sbatch: [\"--qos=low\"]}
";
    write(d.path(), "good.yaml", good);
    let o = run_child(d.path(), &["validate", "good.yaml"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    for (bad, says, line) in [
        (good.replace("cpus: 2", "cpus: 0"), "at least 1", ":7:"),
        (good.replace("memory: 4G", "memory: lots"), "4G", ":7:"),
        (
            good.replace("kind: slurm", "kind: pbs"),
            "kind: slurm",
            ":2:",
        ),
        (
            good.replace("per_job: 5", "perjob: 5"),
            "unknown field `perjob`",
            ":2:",
        ),
    ] {
        write(d.path(), "bad.yaml", &bad);
        let o = run_child(d.path(), &["validate", "bad.yaml"]);
        let t = text(&o);
        assert_eq!(o.status.code(), Some(2), "{t}");
        assert!(
            t.contains(says) && t.contains(line),
            "{says} at {line}: {t}"
        );
    }
}

/// `python/contour_audit.py` on a one-case organ-files dataset with values known by hand:
/// the contour's volume, length and air share, and where a prediction's false positives
/// lie (one in air inside the contoured slices, one beyond them in tissue).
#[test]
fn the_contour_audit_counts_air_and_false_positives_by_hand() {
    let Some(py) = python() else { return };
    let d = tempfile::tempdir().unwrap();
    let case = d.path().join("data/pt_1");
    std::fs::create_dir_all(case.join("structures")).unwrap();
    // 4 x 4 x 4 voxels of 5 x 5 x 2 mm. The esophagus: 4 voxels in slices 1-2, one of them
    // air (-1000 HU); the rest of the image soft tissue (40 HU) but for one air voxel.
    let dims = [4usize, 4, 4];
    let at = |x: usize, y: usize, z: usize| x + 4 * (y + 4 * z);
    let organ = [at(1, 1, 1), at(2, 1, 1), at(1, 1, 2), at(2, 1, 2)];
    let mut ct = vec![40i16; 64];
    ct[at(1, 1, 1)] = -1000;
    ct[at(3, 3, 1)] = -1000;
    let mut mask = vec![0u8; 64];
    for &i in &organ {
        mask[i] = 1;
    }
    let vol = |data| shapeflow_core::Volume::new(dims, [5.0, 5.0, 2.0], data).unwrap();
    vol(shapeflow_core::VoxelData::I16(ct))
        .write_nifti(&case.join("ct.nii.gz"))
        .unwrap();
    vol(shapeflow_core::VoxelData::U8(mask.clone()))
        .write_nifti(&case.join("structures/Esophagus.nii.gz"))
        .unwrap();
    // The prediction: three of the organ's voxels, the air voxel in slice 1, a tissue voxel
    // in slice 3 (beyond the contour).
    let pred_dir = d.path().join("infer");
    std::fs::create_dir_all(&pred_dir).unwrap();
    let mut pred = vec![0u8; 64];
    for &i in &organ[..3] {
        pred[i] = 1;
    }
    pred[at(3, 3, 1)] = 1;
    pred[at(0, 0, 3)] = 1;
    vol(shapeflow_core::VoxelData::U8(pred))
        .write_nifti(&pred_dir.join("pt_1.nii.gz"))
        .unwrap();
    write(&pred_dir, "labels.json", r#"{"1": "Esophagus"}"#);
    let out = std::process::Command::new(&py)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("python/contour_audit.py"))
        .arg(d.path().join("data"))
        .args(["--organs", "Esophagus", "Larynx", "--predictions"])
        .arg(&pred_dir)
        .output()
        .unwrap();
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    // 4 voxels of 50 mm3 = 0.2 cc over 2 slices of 2 mm; a quarter of it air.
    assert!(
        t.contains("| Esophagus | 1 | 0.2 [0.2, 0.2] | 4.0 [4.0, 4.0] | 0.250 [0.250] | 1 |"),
        "{t}"
    );
    assert!(t.contains("| Larynx | 0 |"), "{t}");
    // 5 predicted, 3 in the reference; of the 2 false positives one in air, one beyond.
    assert!(
        t.contains("| Esophagus | 5 | 0.600 | 0.500 | 0.500 |"),
        "{t}"
    );
    assert!(
        t.contains("Esophagus, air share above 0.1: pt_1 (0.25)"),
        "{t}"
    );
    // Dice: as predicted 6/9; within the contoured slices 1-2 (3 of the organ + air) 6/8;
    // cut to windows along the slices (2 mm each; predicted per slice 0, 3, 1, 1), 2 mm
    // keeps slice 1 (2 of the organ + air): 4/7; 4 mm slices 1-2: 6/8.
    let out = std::process::Command::new(&py)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("python/contour_audit.py"))
        .arg(d.path().join("data"))
        .args(["--organs", "Esophagus", "Larynx", "--predictions"])
        .arg(&pred_dir)
        .args(["--windows", "2", "4"])
        .output()
        .unwrap();
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains("| organ | cases | as predicted | within the contoured slices | 2 mm | 4 mm |"),
        "{t}"
    );
    assert!(
        t.contains("| Esophagus | 1 | 0.667 | 0.750 | 0.571 | 0.750 |"),
        "{t}"
    );
    assert!(t.contains("| Larynx | 0 | – | – | – | – |"), "{t}");
    let out = std::process::Command::new(&py)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("python/contour_audit.py"))
        .arg(d.path().join("data"))
        .args(["--organs", "Esophagus", "--windows", "2"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("--windows needs --predictions"));
}

/// `select-organs` and `merge-labels` wired as a cascade, on the phantom's reference labels:
/// the organs split into two selections (the first without the small organs, the second
/// with them and the mandible) and merged back give every organ of the reference with Dice
/// 1, the small organs appended after the first selection's own; the overlay's mandible,
/// not among the organs taken, leaves the base's as it was.
#[test]
fn selected_organs_merge_back_into_the_reference() {
    let d = tempfile::tempdir().unwrap();
    let yaml = "name: cascade
stages:
  load: {stage: load, params: {format: phantom, cases: 3, dims: [64, 64, 56], spacing: [3.5, 3.5, 4.3], split: none}}
  large: {stage: select-organs, after: [load], params: {organs: [BrainStem, Mandible, Parotid_L, Parotid_R, Submandibular_L, Submandibular_R]}}
  small: {stage: select-organs, after: [load], params: {organs: [Chiasm, Mandible, OpticNerve_L, OpticNerve_R]}}
  cascade: {stage: merge-labels, after: [large, small], params: {base: large, overlay: small, organs: [Chiasm, OpticNerve_L, OpticNerve_R]}}
  evaluate: {stage: evaluate, after: [load, cascade]}
  report: {stage: report, after: [evaluate], params: {figures: false}}
";
    write(d.path(), "p.yaml", yaml);
    let (r, manifest) = run_with_manifest(d.path(), "p.yaml", &[]);
    assert!(r.ok(), "{}", r.table());
    let run = manifest.parent().unwrap();
    let labels: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("cascade/labels.json")).unwrap()).unwrap();
    assert_eq!(labels["7"], "Chiasm", "{labels}");
    assert_eq!(labels["9"], "OpticNerve_R", "{labels}");
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("report/summary.json")).unwrap()).unwrap();
    let organs = summary["organs"].as_object().unwrap();
    assert_eq!(organs.len(), 9, "{summary}");
    for (organ, s) in organs {
        let dice = s["dice"]["mean"].as_f64().unwrap();
        assert!(dice > 0.999, "{organ}: {dice}");
        assert_eq!(s["outcomes"]["compared"], 3, "{organ}: {s}");
    }
    // An organ the overlay lacks is an error naming the case and the organ, not a panic.
    let bad = yaml.replace(
        "organs: [Chiasm, OpticNerve_L",
        "organs: [Larynx, OpticNerve_L",
    );
    write(d.path(), "bad.yaml", &bad);
    let r = run_in(d.path(), "bad.yaml", &[]);
    let failed = r.node("cascade", "default").unwrap();
    assert!(
        matches!(&failed.status, shapeflow_core::Status::Failed(m) if m.contains("`Larynx`") && m.contains("case ")),
        "{:?}",
        failed.status
    );
}

/// Training cases that contour none of the organs teach nothing (absent organs are masked
/// out of every loss term): `train` leaves them out, and when that leaves none it fails
/// saying so, instead of spending its steps on zero gradients.
#[test]
fn training_leaves_out_cases_that_contour_no_organ() {
    let d = tempfile::tempdir().unwrap();
    let dims = [16usize, 16, 16];
    for (case, split) in [
        ("c1", "train"),
        ("c2", "train"),
        ("c3", "train"),
        ("c4", "validation"),
    ] {
        let dir = d.path().join("data").join(split).join(case);
        std::fs::create_dir_all(dir.join("structures")).unwrap();
        let ct: Vec<i16> = (0..4096).map(|i| (i % 97) as i16 * 10 - 400).collect();
        shapeflow_core::Volume::new(dims, [2.0; 3], shapeflow_core::VoxelData::I16(ct))
            .unwrap()
            .write_nifti(&dir.join("ct.nii.gz"))
            .unwrap();
    }
    // Only the test case contours the organ.
    let mut mask = vec![0u8; 4096];
    mask[8 + 16 * (8 + 16 * 8)] = 1;
    shapeflow_core::Volume::new(dims, [2.0; 3], shapeflow_core::VoxelData::U8(mask))
        .unwrap()
        .write_nifti(&d.path().join("data/validation/c4/structures/Organ.nii.gz"))
        .unwrap();
    let yaml = "name: none
stages:
  load: {stage: load, params: {format: organ-files, root: data, image: ct.nii.gz, organs: [Organ], folders: {train: train, validation: test}, val_fraction: 0.0}}
  sdm: {stage: edt-sdm, after: [load]}
  augment: {stage: augment, after: [load, sdm]}
  train:
    stage: train
    after: [load, sdm, augment]
    params: {epochs: 1, iterations: 1, patch: [16, 16, 16], net: {depth: 2, base_channels: 4, max_channels: 8, groups: 2}, device: cpu, val_every: 0}
";
    write(d.path(), "p.yaml", yaml);
    let (r, _) = run_with_manifest(d.path(), "p.yaml", &[]);
    let train = r.node("train", "default").unwrap();
    assert!(
        matches!(&train.status, shapeflow_core::Status::Failed(m) if m.contains("3 training case(s) contour none of the organs")),
        "{:?}",
        train.status
    );
}

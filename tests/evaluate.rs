//! evaluate + report as pipeline stages, on the real inter-rater pair of PDDCA 0522c0057.

mod common;

use common::*;
use shapeflow_core::Status;

#[test]
fn child_entry() {
    maybe_run_child();
}

#[test]
fn inter_rater_pipeline_writes_reports() {
    let d = tempfile::tempdir().unwrap();
    // Two PDDCA-layout roots for one patient: the PDDCA annotation and the oncologist's.
    for (root, src) in [
        ("a", None),
        ("b", Some(shared("deepmind-0522c0057-oncologist"))),
    ] {
        let s = d.path().join(root).join("0522c0057/structures");
        std::fs::create_dir_all(&s).unwrap();
        match &src {
            None => {
                for e in std::fs::read_dir(shared("pddca-masks/0522c0057/structures"))
                    .unwrap()
                    .flatten()
                {
                    std::os::unix::fs::symlink(e.path(), s.join(e.file_name())).unwrap();
                }
            }
            Some(dm) => {
                for (ours, theirs) in RATER_PAIRS {
                    std::os::unix::fs::symlink(
                        dm.join(format!("{theirs}.nrrd")),
                        s.join(format!("{ours}.nrrd")),
                    )
                    .unwrap();
                }
            }
        }
    }
    let text = "name: raters
stages:
  pddca: {plugin: load, params: {format: pddca, root: a, require_image: false}}
  oncologist: {plugin: load, params: {format: pddca, root: b, require_image: false}}
  compare: {plugin: evaluate, after: [pddca, oncologist], params: {tolerance_mm: 2.0}}
  summary: {plugin: report, after: [compare, pddca, oncologist], params: {title: Inter-rater agreement, reference: pddca, prediction: oncologist}}
";
    write(d.path(), "p.yaml", text);
    let (r, manifest) = run_with_manifest(d.path(), "p.yaml", &[]);
    assert!(r.ok(), "{}", r.table());
    let dir = manifest.parent().unwrap().join("summary");
    let csv = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 9, "{csv}");
    // The oncologist did not outline the chiasm: absent, not a zero.
    assert!(
        csv.lines()
            .any(|l| l.starts_with("0522c0057,Chiasm,absent-in-prediction")),
        "{csv}"
    );
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("summary.json")).unwrap()).unwrap();
    let dice = summary["organs"]["Mandible"]["dice"]["mean"]
        .as_f64()
        .unwrap();
    assert!((dice - 0.89).abs() < 0.01, "{dice}");
    assert!(
        summary["organs"].get("Chiasm").is_none(),
        "an absent organ has no summary numbers"
    );
    let md = std::fs::read_to_string(dir.join("summary.md")).unwrap();
    assert!(
        md.contains("# Inter-rater agreement") && md.contains("| Parotid_L | 1 |"),
        "{md}"
    );
    // A second run computes nothing but still writes the report into the new run directory.
    let (r, manifest2) = run_with_manifest(d.path(), "p.yaml", &[]);
    assert_eq!(r.node("compare", "default").unwrap().computed, 0);
    assert!(manifest2
        .parent()
        .unwrap()
        .join("summary/summary.md")
        .is_file());
}

#[test]
fn variants_get_an_ablation_table() {
    let d = tempfile::tempdir().unwrap();
    let s = d.path().join("a/0522c0057/structures");
    std::fs::create_dir_all(&s).unwrap();
    let s2 = d.path().join("b/0522c0057/structures");
    std::fs::create_dir_all(&s2).unwrap();
    for (ours, theirs) in RATER_PAIRS {
        std::os::unix::fs::symlink(
            shared(&format!("pddca-masks/0522c0057/structures/{ours}.nrrd")),
            s.join(format!("{ours}.nrrd")),
        )
        .unwrap();
        std::os::unix::fs::symlink(
            shared(&format!("deepmind-0522c0057-oncologist/{theirs}.nrrd")),
            s2.join(format!("{ours}.nrrd")),
        )
        .unwrap();
    }
    let text = "name: ablation
stages:
  ref: {plugin: load, params: {format: pddca, root: a, require_image: false}}
  other: {plugin: load, params: {format: pddca, root: b, require_image: false}}
  compare: {plugin: evaluate, after: [ref, other]}
  summary: {plugin: report, after: [compare]}
variants:
  tight: {compare.tolerance_mm: 0.5}
  loose: {compare.tolerance_mm: 3.0}
";
    write(d.path(), "p.yaml", text);
    let (r, manifest) = run_with_manifest(d.path(), "p.yaml", &[]);
    assert!(r.ok(), "{}", r.table());
    let out = manifest.parent().unwrap().join("summary");
    // One folder per variant for the per-variant reports, and the comparison beside them.
    assert!(out.join("tight/summary.md").is_file() && out.join("loose/summary.md").is_file());
    let md = std::fs::read_to_string(out.join("variants.md")).unwrap();
    assert!(md.contains("| organ | metric | tight | loose |"), "{md}");
    // A looser tolerance gives a higher surface Dice: `loose` is best on that row.
    let row = md
        .lines()
        .find(|l| l.starts_with("| Mandible | surface_dice |"))
        .unwrap();
    let cells: Vec<&str> = row.split('|').map(str::trim).collect();
    assert!(
        cells[4].starts_with("**") && !cells[3].starts_with("**"),
        "{row}"
    );
    assert!(row.contains("vs tight:"), "{row}");
    let j: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("variants.json")).unwrap()).unwrap();
    assert_eq!(j["variants"], serde_json::json!(["tight", "loose"]));
}

#[test]
fn mismatched_grids_are_a_named_error() {
    let d = tempfile::tempdir().unwrap();
    let text = "stages:
  a: {plugin: load, params: {format: phantom, phantom: mri, cases: 1}}
  b: {plugin: load, params: {format: phantom, phantom: mri, cases: 1, dims: [30, 40, 30]}}
  e: {plugin: evaluate, after: [a, b]}
";
    write(d.path(), "p.yaml", text);
    let (r, _) = run_with_manifest(d.path(), "p.yaml", &[]);
    match &r.node("e", "default").unwrap().status {
        Status::Failed(m) => assert!(
            m.contains("different grids") && m.contains("phantom000"),
            "{m}"
        ),
        s => panic!("{s:?}"),
    }
}

/// The report names the reference contours far from their organ's median volume: on
/// OpenKBP's 32 validation cases, the two "SpinalCord" contours that cover the back of the
/// neck (`pt_215`, `pt_216`), in each variant's report and once in the comparison.
#[test]
fn reports_name_references_far_from_their_organs_volume() {
    let d = tempfile::tempdir().unwrap();
    let load = format!(
        "{{stage: load, params: {{format: organ-files, root: {}, image: ct.nii.gz, \
         require_image: false, organs: [SpinalCord, Brainstem], folders: {{validation: test}}}}}}",
        shared("openkbp").display()
    );
    let text = format!(
        "name: references
stages:
  ref: {load}
  same: {load}
  compare: {{stage: evaluate, after: [ref, same]}}
  summary: {{stage: report, after: [compare]}}
variants:
  tight: {{compare.tolerance_mm: 0.5}}
  loose: {{compare.tolerance_mm: 3.0}}
"
    );
    write(d.path(), "p.yaml", &text);
    let (r, manifest) = run_with_manifest(d.path(), "p.yaml", &[]);
    assert!(r.ok(), "{}", r.table());
    let out = manifest.parent().unwrap().join("summary");
    let named = "SpinalCord `pt_215` 477.7 cm³ (19.";
    for file in ["tight/report.md", "loose/summary.md", "variants.md"] {
        let md = std::fs::read_to_string(out.join(file)).unwrap();
        let notes: Vec<&str> = md
            .lines()
            .filter(|l| l.starts_with("Reference contours far from"))
            .collect();
        assert_eq!(notes.len(), 1, "{file}: {md}");
        assert!(
            notes[0].contains(named) && notes[0].contains("SpinalCord `pt_216` 542.7 cm³"),
            "{file}: {}",
            notes[0]
        );
        assert!(!notes[0].contains("Brainstem"), "{}", notes[0]);
        assert_eq!(notes[0].matches("pt_215").count(), 1, "{}", notes[0]);
    }
    let j: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("tight/summary.json")).unwrap()).unwrap();
    let cords = j["reference_outliers"]["SpinalCord"].as_array().unwrap();
    assert_eq!(cords.len(), 2, "{j}");
}

/// `pipeline compare` on committed OpenKBP records (three seeds of two variants, the report's
/// files as a run wrote them): its pooled means and paired p-values are scipy's on the same
/// numbers, over 50 pairs (the normal approximation) and under (the exact distribution).
#[test]
fn compare_pools_seeds_and_tests_as_scipy_does() {
    let records = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/results/openkbp");
    let seeds = ["2020", "7", "42"];
    let mut args = Vec::new();
    let mut py_args = Vec::new();
    for (variant, dir) in [
        ("joint-c", "session27/joint-c-filtered-vs-unfiltered"),
        ("dice-ce-c", "session27/dice-ce-c-filtered-vs-unfiltered"),
    ] {
        for s in seeds {
            let folder = records.join(dir).join(format!("{variant}_{s}"));
            py_args.push(format!(
                "{variant}@{s}={}",
                folder.join("metrics.csv").display()
            ));
            args.push(folder.to_string_lossy().into_owned());
        }
    }
    let mut inputs = Vec::new();
    for a in &args {
        inputs.extend(shapeflow::compare::inputs_of(a).unwrap());
    }
    let (_, ours) = shapeflow::compare::compare(&inputs).unwrap();
    let rows = ours["comparison"]["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 7 * 4, "seven organs, four metrics");
    let py_refs: Vec<&str> = py_args.iter().map(String::as_str).collect();
    let Some(reference) = python_json("wilcoxon_records.py", &py_refs) else {
        return;
    };
    let (mut large, mut small) = (0, 0);
    for row in rows {
        let (organ, metric) = (
            row["organ"].as_str().unwrap(),
            row["metric"].as_str().unwrap(),
        );
        let r = &reference[organ][metric];
        let n = row["cases"].as_u64().unwrap();
        assert_eq!(n, r["n"].as_u64().unwrap(), "{organ} {metric}: pairs");
        for v in ["joint-c", "dice-ce-c"] {
            let (a, b) = (
                row["means"][v].as_f64().unwrap(),
                r["means"][v].as_f64().unwrap(),
            );
            assert!(
                (a - b).abs() < 1e-12,
                "{organ} {metric} {v}: mean {a} vs scipy's {b}"
            );
        }
        let test = row["wilcoxon_best_vs"]
            .as_object()
            .and_then(|t| t.values().next());
        let (Some(test), Some(p)) = (test, r["p"].as_f64()) else {
            panic!("{organ} {metric}: a test on one side only: {row} / {r}");
        };
        let ours = test["p_value"].as_f64().unwrap();
        assert!(
            (ours - p).abs() <= 1e-9 * p.max(1e-300) + 1e-15,
            "{organ} {metric} ({n} pairs): p {ours} vs scipy's {p}"
        );
        if n > 50 {
            large += 1
        } else {
            small += 1
        }
    }
    assert!(
        large > 0 && small > 0,
        "both of scipy's paths: {large} / {small}"
    );
}

//! Test-only stages (never shipped in the binary), and helpers to run the CLI in a child
//! process: the test binary re-executes itself with `SHAPEFLOW_CHILD_ARGS` set.
#![allow(dead_code)]

use serde::{Deserialize, Serialize};
use shapeflow_core::{
    CaseInfo, Inputs, Item, Kind, Plugin, Port, Registry, Shape, Stage, StageCtx, StageDef,
    StageError,
};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

pub struct TestPlugin;

/// `numbers`: a source of `n` cases (`c00`, `c01`, ...) or one case per file in `dir`.
#[derive(Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct NumbersParams {
    /// cases
    pub n: usize,
    /// one case per file
    pub dir: Option<String>,
}

struct Numbers(NumbersParams);

impl Stage for Numbers {
    fn output(&self) -> Kind {
        Kind::Any
    }

    fn ports(&self) -> Vec<Port> {
        Vec::new()
    }

    fn shape(&self) -> Shape {
        Shape::Source
    }
    fn discover(&self, _: &StageCtx) -> Result<Vec<CaseInfo>, StageError> {
        if let Some(dir) = &self.0.dir {
            let mut out = Vec::new();
            let entries =
                std::fs::read_dir(dir).map_err(|e| StageError::msg(format!("{dir}: {e}")))?;
            for e in entries.flatten() {
                let p = e.path();
                let text = std::fs::read_to_string(&p)
                    .map_err(|e| StageError::msg(format!("{}: {e}", p.display())))?;
                out.push(CaseInfo {
                    id: p.file_stem().unwrap().to_string_lossy().to_string(),
                    split: None,
                    fingerprint: text,
                });
            }
            out.sort_by(|a, b| a.id.cmp(&b.id));
            return Ok(out);
        }
        Ok((0..self.0.n)
            .map(|i| CaseInfo {
                id: format!("c{i:02}"),
                split: Some(if i % 4 == 3 { "test" } else { "train" }.into()),
                fingerprint: i.to_string(),
            })
            .collect())
    }
    fn run_case(&self, _: &StageCtx, case: &CaseInfo, _: &Inputs) -> Result<Item, StageError> {
        let v: f64 = case.fingerprint.trim().parse().unwrap_or(0.0);
        Ok(Item::Json(
            serde_json::json!({ "case": case.id, "value": v }),
        ))
    }
}

/// `add`: value + `add` per case; can sleep, fail on one case, hold a resource, or wait for
/// a gate file (`hold_until`, relative to the run's folder) that the test creates.
#[derive(Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AddParams {
    pub add: f64,
    pub sleep_ms: u64,
    pub fail_on: Option<String>,
    pub resource: Option<String>,
    pub meet: Option<String>,
    pub meet_count: usize,
    pub only_split: Option<String>,
    pub hold_until: Option<String>,
}

struct Add(AddParams);

/// Stages holding a resource count themselves here (per resource name), so that a test can
/// check that no two ran at once; other tests running in parallel do not touch these.
pub static ACTIVE: AtomicUsize = AtomicUsize::new(0);
pub static MAX_ACTIVE: AtomicUsize = AtomicUsize::new(0);
pub const PROBED_RESOURCE: &str = "probe-gpu";

type Meeting = Arc<(Mutex<std::collections::HashMap<String, usize>>, Condvar)>;
fn meeting() -> &'static Meeting {
    static M: std::sync::OnceLock<Meeting> = std::sync::OnceLock::new();
    M.get_or_init(Default::default)
}

impl Stage for Add {
    fn output(&self) -> Kind {
        Kind::Any
    }

    fn ports(&self) -> Vec<Port> {
        vec![Port::new("inputs", Kind::Any)]
    }

    fn shape(&self) -> Shape {
        Shape::PerCase
    }
    fn resource(&self) -> Option<String> {
        self.0.resource.clone()
    }
    fn accepts(&self, case: &CaseInfo) -> bool {
        self.0.only_split.is_none() || case.split == self.0.only_split
    }
    fn run_case(&self, _: &StageCtx, case: &CaseInfo, inputs: &Inputs) -> Result<Item, StageError> {
        if self.0.fail_on.as_deref() == Some(case.id.as_str()) {
            return Err(StageError::msg(format!(
                "refusing case {} on purpose",
                case.id
            )));
        }
        tracing::info!(case = %case.id, add = self.0.add, "added");
        let probed = self.0.resource.as_deref() == Some(PROBED_RESOURCE);
        if probed {
            let now = ACTIVE.fetch_add(1, Ordering::SeqCst) + 1;
            MAX_ACTIVE.fetch_max(now, Ordering::SeqCst);
        }
        if let Some(name) = &self.0.meet {
            let (lock, cv) = &**meeting();
            let mut m = lock.lock().unwrap();
            *m.entry(name.clone()).or_insert(0) += 1;
            cv.notify_all();
            let (m, timeout) = cv
                .wait_timeout_while(m, Duration::from_secs(20), |m| m[name] < self.0.meet_count)
                .unwrap();
            drop(m);
            if timeout.timed_out() {
                if probed {
                    ACTIVE.fetch_sub(1, Ordering::SeqCst);
                }
                return Err(StageError::msg(
                    "the other branch never ran at the same time",
                ));
            }
        }
        if let Some(gate) = &self.0.hold_until {
            let t0 = std::time::Instant::now();
            while !Path::new(gate).exists() {
                if t0.elapsed() > Duration::from_secs(120) {
                    return Err(StageError::msg(format!("gate `{gate}` never opened")));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        std::thread::sleep(Duration::from_millis(self.0.sleep_ms));
        if probed {
            ACTIVE.fetch_sub(1, Ordering::SeqCst);
        }
        let mut total = 0.0;
        for (_, it) in inputs.iter() {
            total += it
                .as_json()
                .and_then(|j| j["value"].as_f64())
                .unwrap_or(0.0);
        }
        Ok(Item::Json(
            serde_json::json!({ "case": case.id, "value": total + self.0.add }),
        ))
    }
}

/// `sum`: one whole-dataset item, the sum of every case's value.
#[derive(Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SumParams {
    pub scale: f64,
}

struct Sum(SumParams);

impl Stage for Sum {
    fn output(&self) -> Kind {
        Kind::Any
    }

    fn ports(&self) -> Vec<Port> {
        vec![Port::new("inputs", Kind::Any)]
    }

    fn shape(&self) -> Shape {
        Shape::Gather
    }
    fn run_all(
        &self,
        _: &StageCtx,
        cases: &[(CaseInfo, Inputs)],
        global: &Inputs,
    ) -> Result<Item, StageError> {
        let mut s = 0.0;
        for (_, inp) in cases {
            for (_, it) in inp.iter() {
                s += it
                    .as_json()
                    .and_then(|j| j["value"].as_f64())
                    .unwrap_or(0.0);
            }
        }
        for (_, it) in global.iter() {
            s += it
                .as_json()
                .and_then(|j| j["value"].as_f64())
                .unwrap_or(0.0);
        }
        let scale = if self.0.scale == 0.0 {
            1.0
        } else {
            self.0.scale
        };
        Ok(Item::Json(
            serde_json::json!({ "value": s * scale, "cases": cases.len() }),
        ))
    }
}

impl Plugin for TestPlugin {
    fn name(&self) -> &'static str {
        "test"
    }

    fn register(&self, r: &mut Registry) {
        r.add(StageDef::<NumbersParams> {
            name: "numbers",
            version: 1,
            summary: "test source",
            help: "",
            build: |p, _| Ok(Arc::new(Numbers(p))),
        });
        r.add(StageDef::<AddParams> {
            name: "add",
            version: 1,
            summary: "test per-case stage",
            help: "",
            build: |p, _| Ok(Arc::new(Add(p))),
        });
        r.add(StageDef::<SumParams> {
            name: "sum",
            version: 1,
            summary: "test gather stage",
            help: "",
            build: |p, _| Ok(Arc::new(Sum(p))),
        });
    }
}

/// The binary's registry plus the test stages.
pub fn registry() -> Registry {
    shapeflow::default_registry()
        .and_then(|r| r.with(&TestPlugin))
        .unwrap()
}

/// If this process is a child started by [`child`], runs the CLI and exits.
pub fn maybe_run_child() {
    if let Ok(args) = std::env::var("SHAPEFLOW_CHILD_ARGS") {
        let args: Vec<String> = serde_json::from_str(&args).unwrap();
        let code = shapeflow::cli::main_with(
            registry(),
            std::iter::once("pipeline".to_string())
                .chain(args)
                .map(Into::into),
        );
        std::process::exit(code as i32);
    }
}

/// A command that runs `pipeline ARGS` (with the test stages) in `dir`.
pub fn child(dir: &Path, args: &[&str]) -> Command {
    let exe = std::env::current_exe().unwrap();
    let mut c = Command::new(exe);
    c.args(["child_entry", "--exact", "--nocapture", "--test-threads=1"])
        .env("SHAPEFLOW_CHILD_ARGS", serde_json::to_string(args).unwrap())
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

pub fn run_child(dir: &Path, args: &[&str]) -> Output {
    child(dir, args).output().unwrap()
}

pub fn spawn_child(dir: &Path, args: &[&str]) -> Child {
    child(dir, args).spawn().unwrap()
}

pub fn text(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// The reference Python (with numpy, scipy, pynrrd, ...) that `scripts/test.sh` sets up.
/// `None` outside that script (the cross-check then says it was skipped); under CI it must
/// be there.
pub fn python() -> Option<PathBuf> {
    match std::env::var_os("SHAPEFLOW_PYTHON") {
        Some(p) => Some(PathBuf::from(p)),
        None if std::env::var_os("CI").is_some() => {
            panic!("CI must run scripts/test.sh, which sets SHAPEFLOW_PYTHON")
        }
        None => {
            eprintln!(
                "SKIPPED python cross-check: run ./scripts/test.sh to set up the reference venv"
            );
            None
        }
    }
}

/// Runs a script from tests/py with the reference Python; returns its stdout parsed as JSON.
pub fn python_json(script: &str, args: &[&str]) -> Option<serde_json::Value> {
    let py = python()?;
    let out = Command::new(py)
        .arg(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/py")
                .join(script),
        )
        .args(args)
        .output()
        .expect("cannot start the reference python");
    assert!(
        out.status.success(),
        "{script} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_slice(&out.stdout).expect("script output is JSON"))
}

/// `../shared/data/<rel>` beside the project root.
pub fn shared(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data")
        .join(rel)
}

/// A second image channel made from a real image: its intensities inverted (largest value
/// minus each), as f32 on the same grid.
pub fn inverted(v: &shapeflow_core::Volume) -> shapeflow_core::Volume {
    let x = v.to_f32();
    let top = x.iter().copied().fold(f32::MIN, f32::max);
    v.with_data(shapeflow_core::VoxelData::F32(
        x.iter().map(|a| top - a).collect(),
    ))
    .expect("same size")
}

/// Writes `channels` (one grid) as one 4D NIfTI, channels along the fourth dimension, as
/// the Decathlon's multi-modal images are; with the `nifti` crate's writer, not ours (which
/// writes 3D only), geometry in the sform.
pub fn write_nifti_channels(channels: &[shapeflow_core::Volume], path: &Path) {
    let first = &channels[0];
    let sp = first.spacing.map(|s| s as f32);
    let header = nifti::NiftiHeader {
        pixdim: [1.0, sp[0], sp[1], sp[2], 1.0, 1.0, 1.0, 1.0],
        sform_code: 1,
        srow_x: first.affine[0].map(|v| v as f32),
        srow_y: first.affine[1].map(|v| v as f32),
        srow_z: first.affine[2].map(|v| v as f32),
        ..Default::default()
    };
    let d = first.dims;
    let stacked: Vec<f32> = channels.iter().flat_map(|c| c.to_f32()).collect();
    let a = ndarray::Array4::from_shape_vec(
        ndarray::ShapeBuilder::f((d[0], d[1], d[2], channels.len())),
        stacked,
    )
    .expect("channels on one grid");
    nifti::writer::WriterOptions::new(path)
        .reference_header(&header)
        .write_nifti(&a)
        .expect("write the 4D NIfTI");
}

/// An nnU-Net v2 dataset at `root` from the shared hippocampus: its first `train` cases in
/// `imagesTr/` + `labelsTr/`, the next `test` in `imagesTs/` (no labels); channel 0 the MRI
/// (a link), with `two_channels` channel 1 its [`inverted`] intensities. Labels `anterior`
/// and `posterior`. Returns the test cases' ids.
pub fn hippocampus_nnunet_v2(
    root: &Path,
    train: usize,
    test: usize,
    two_channels: bool,
) -> Vec<String> {
    let ds = shapeflow_io::datasets::msd_dataset(&shared("hippocampus"), false).expect("dataset");
    for sub in ["imagesTr", "labelsTr", "imagesTs"] {
        std::fs::create_dir_all(root.join(sub)).expect("folder");
    }
    for (i, c) in ds.cases[..train + test].iter().enumerate() {
        let (id, sub) = (&c.id, if i < train { "imagesTr" } else { "imagesTs" });
        std::os::unix::fs::symlink(&c.images[0], root.join(format!("{sub}/{id}_0000.nii.gz")))
            .expect("link");
        if two_channels {
            let second = inverted(&shapeflow_formats::read(&c.images[0]).expect("read"));
            shapeflow_formats::write(&second, &root.join(format!("{sub}/{id}_0001.nii.gz")))
                .expect("write");
        }
        if i < train {
            std::os::unix::fs::symlink(&c.label, root.join(format!("labelsTr/{id}.nii.gz")))
                .expect("link");
        }
    }
    let channels = if two_channels {
        serde_json::json!({"0": "MRI", "1": "inverted"})
    } else {
        serde_json::json!({"0": "MRI"})
    };
    let j = serde_json::json!({
        "channel_names": channels,
        "labels": {"background": 0, "anterior": 1, "posterior": 2},
        "numTraining": train, "file_ending": ".nii.gz"
    });
    std::fs::write(root.join("dataset.json"), j.to_string()).expect("dataset.json");
    ds.cases[train..train + test]
        .iter()
        .map(|c| c.id.clone())
        .collect()
}

/// PDDCA organ names and the names the oncologist's annotation of 0522c0057 uses for them.
pub const RATER_PAIRS: [(&str, &str); 8] = [
    ("BrainStem", "Brainstem"),
    ("Mandible", "Mandible"),
    ("OpticNerve_L", "Optic-Nerve-Lt"),
    ("OpticNerve_R", "Optic-Nerve-Rt"),
    ("Parotid_L", "Parotid-Lt"),
    ("Parotid_R", "Parotid-Rt"),
    ("Submandibular_L", "Submandibular-Lt"),
    ("Submandibular_R", "Submandibular-Rt"),
];

/// Writes `NAME.ref.u8`, `NAME.pred.u8` and `NAME.json` for the Python reference scripts,
/// cropped to both masks' box grown by 2 voxels (or to the volume's edge): the same
/// surfaces and distances as the full volume, and far less time in Python.
pub fn write_mask_pair(
    dir: &Path,
    name: &str,
    a: &[bool],
    b: &[bool],
    dims: [usize; 3],
    spacing: [f64; 3],
) {
    let mut lo = dims;
    let mut hi = [0; 3];
    for i in 0..a.len() {
        if a[i] || b[i] {
            let c = [
                i % dims[0],
                (i / dims[0]) % dims[1],
                i / (dims[0] * dims[1]),
            ];
            for k in 0..3 {
                lo[k] = lo[k].min(c[k]);
                hi[k] = hi[k].max(c[k]);
            }
        }
    }
    let lo: [usize; 3] = std::array::from_fn(|k| lo[k].saturating_sub(2));
    let hi: [usize; 3] = std::array::from_fn(|k| (hi[k] + 2).min(dims[k] - 1));
    let sub: [usize; 3] = std::array::from_fn(|k| hi[k] - lo[k] + 1);
    let crop = |m: &[bool]| -> Vec<u8> {
        let mut out = Vec::with_capacity(sub.iter().product());
        for z in lo[2]..=hi[2] {
            for y in lo[1]..=hi[1] {
                for x in lo[0]..=hi[0] {
                    out.push(m[x + dims[0] * (y + dims[1] * z)] as u8);
                }
            }
        }
        out
    };
    std::fs::write(dir.join(format!("{name}.ref.u8")), crop(a)).unwrap();
    std::fs::write(dir.join(format!("{name}.pred.u8")), crop(b)).unwrap();
    std::fs::write(
        dir.join(format!("{name}.json")),
        serde_json::json!({"dims": sub, "spacing": spacing}).to_string(),
    )
    .unwrap();
}

/// Runs pipeline file `file` in `dir` with the test stages, the cache in `dir/cache` and run
/// directories in `dir/runs`; returns the report and the manifest path.
pub fn run_with_manifest(
    dir: &Path,
    file: &str,
    sets: &[&str],
) -> (shapeflow_core::RunReport, PathBuf) {
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    let (report, manifest) = shapeflow::cli::run_pipeline(
        &dir.join(file),
        &sets,
        &registry(),
        shapeflow::cli::RunSettings {
            cache: Some(dir.join("cache")),
            runs: dir.join("runs"),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(manifest.is_file());
    (report, manifest)
}

/// [`run_with_manifest`] without the manifest path.
pub fn run_in(dir: &Path, file: &str, sets: &[&str]) -> shapeflow_core::RunReport {
    run_with_manifest(dir, file, sets).0
}

//! `pipeline run --executor slurm` against a real Slurm (slurmctld + slurmd + munge on this
//! machine, started by `scripts/slurm.sh`). Without one these tests say loudly that they
//! are skipped; under CI (`CI` set) a Slurm that cannot start is a failure.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

const EXE: &str = env!("CARGO_BIN_EXE_pipeline");

/// `SLURM_CONF` of the running test cluster, started if needed; `None`: skip.
fn cluster() -> Option<PathBuf> {
    static CONF: OnceLock<Option<PathBuf>> = OnceLock::new();
    CONF.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/slurm.sh");
        let ci = std::env::var_os("CI").is_some();
        if std::env::var("SHAPEFLOW_SLURM_TESTS").as_deref() == Ok("0") && !ci {
            eprintln!("\n*** SKIPPED: Slurm tests (SHAPEFLOW_SLURM_TESTS=0) ***\n");
            return None;
        }
        let out = Command::new(&script).arg("start").output();
        match out {
            Ok(o) if o.status.success() => {
                let conf = Command::new(&script).arg("conf").output().ok()?;
                Some(PathBuf::from(
                    String::from_utf8_lossy(&conf.stdout).trim().to_string(),
                ))
            }
            other => {
                let why = match other {
                    Ok(o) => String::from_utf8_lossy(&o.stderr).to_string(),
                    Err(e) => e.to_string(),
                };
                if ci {
                    panic!("CI needs a Slurm for these tests; scripts/slurm.sh start: {why}");
                }
                eprintln!(
                    "\n*** SKIPPED: the Slurm executor tests need a Slurm; scripts/slurm.sh \
                     start failed: {why} ***\n"
                );
                None
            }
        }
    })
    .clone()
}

/// One test at a time on the two-CPU test cluster (their jobs would queue behind each
/// other's and time out the slow ones).
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn pipeline(dir: &Path, conf: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(EXE);
    c.args(args)
        .current_dir(dir)
        .env("SLURM_CONF", conf)
        .env("PIPELINE_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Job states of the jobs named `name` (`squeue -t all`).
fn jobs_named(conf: &Path, name: &str) -> Vec<String> {
    let o = Command::new("squeue")
        .args(["-h", "-t", "all", "-n", name, "-o", "%T"])
        .env("SLURM_CONF", conf)
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn active(states: &[String]) -> usize {
    states
        .iter()
        .filter(|s| ["PENDING", "RUNNING", "CONFIGURING", "COMPLETING"].contains(&s.as_str()))
        .count()
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn verify_clean(dir: &Path, conf: &Path) {
    let o = pipeline(dir, conf, &["cache", "verify", "--cache", "cache"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let t = String::from_utf8_lossy(&o.stdout);
    assert!(
        t.contains("0 corrupt, 0 missing") && t.contains("0 temporary"),
        "{t}"
    );
}

const TOY: &[&str] = &[
    "--set",
    "load.dims=[64, 64, 56]",
    "--set",
    "load.spacing=[3.5, 3.5, 4.3]",
    "--set",
    "resample.spacing=[4.0, 4.0, 4.0]",
    "--set",
    "train.epochs=1",
    "--set",
    "train.iterations=2",
    "--set",
    "train.patch=[16, 16, 16]",
    "--set",
    "train.net={depth: 2, base_channels: 4, max_channels: 16, groups: 2}",
    "--set",
    "train.val_every=1",
    "--set",
    "train.workers=1",
];

fn files_under(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.to_string_lossy().ends_with(ext) {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The demo at toy size, once here and once through Slurm (load's ten cases in jobs of
/// four, every other stage's items in jobs too): the same cache keys, predictions equal
/// byte for byte, the same metrics, and a clean cache.
#[test]
fn the_demo_through_slurm_equals_the_local_run() {
    let Some(conf) = cluster() else { return };
    let _one = serial();
    let d = tempfile::tempdir().unwrap();
    let demo =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/demo.yaml"))
            .unwrap();
    std::fs::write(
        d.path().join("demo.yaml"),
        format!("{demo}\nexecutor: {{kind: slurm, per_job: 4, poll_max_s: 1}}\n"),
    )
    .unwrap();
    let mut results = Vec::new();
    for (executor, sub) in [("local", "local"), ("slurm", "slurm")] {
        let dir = d.path().join(sub);
        std::fs::create_dir_all(&dir).unwrap();
        let mut args = vec![
            "run",
            "../demo.yaml",
            "--cache",
            "cache",
            "--no-progress",
            "--executor",
            executor,
        ];
        args.extend_from_slice(TOY);
        let o = pipeline(&dir, &conf, &args).output().unwrap();
        assert!(o.status.success(), "{executor}: {}", text(&o));
        verify_clean(&dir, &conf);
        let keys: Vec<String> = files_under(&dir.join("cache/objects"), "")
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().to_string())
            .collect();
        let preds: Vec<(String, Vec<u8>)> = files_under(&dir.join("runs"), ".nii.gz")
            .iter()
            .filter(|p| p.to_string_lossy().contains("/infer/"))
            .map(|p| {
                let name = p.to_string_lossy();
                let rel = name[name.find("/infer/").unwrap()..].to_string();
                (rel, std::fs::read(p).unwrap())
            })
            .collect();
        let metrics: Vec<(String, String)> = files_under(&dir.join("runs"), "metrics.csv")
            .iter()
            .map(|p| {
                let name = p.to_string_lossy();
                let rel = name[name.find("/report/").unwrap_or(0)..].to_string();
                (rel, std::fs::read_to_string(p).unwrap())
            })
            .collect();
        if executor == "slurm" {
            let logs = files_under(&dir.join("runs"), ".log");
            assert!(logs.len() >= 10, "one log per job: {logs:?}");
        }
        results.push((keys, preds, metrics));
    }
    let (local, slurm) = (&results[0], &results[1]);
    assert!(!local.0.is_empty() && local.0 == slurm.0, "same cache keys");
    assert_eq!(local.1.len(), 12, "3 test cases x 4 variants");
    assert!(local.1 == slurm.1, "predictions equal byte for byte");
    assert!(!local.2.is_empty() && local.2 == slurm.2, "same metrics");
}

fn write_exec_pipeline(dir: &Path, name: &str, cases: usize, per_job: usize, script: &str) {
    let yaml = format!(
        r#"name: {name}
executor: {{kind: slurm, per_job: {per_job}, poll_max_s: 0.5}}
stages:
  load:
    stage: load
    params: {{format: phantom, phantom: head-neck, cases: {cases}, dims: [20, 20, 16], spacing: [8.0, 8.0, 9.0], split: none}}
  step:
    stage: exec
    after: [load]
    params:
      command: [sh, {script}, "{{case}}", "{{output}}"]
      output: json
      depends: [{script}]
  after:
    stage: exec
    after: [step]
    params:
      command: [sh, -c, 'echo "{{\"done\": 1}}" > "$1"', sh, "{{output}}"]
      output: json
"#,
        script = dir.join(script).display()
    );
    std::fs::write(dir.join("p.yaml"), yaml).unwrap();
}

/// A job that fails: its stage fails naming the job, its state and its log's last lines
/// (the command's own message); the stage after it is skipped; the other jobs' items are
/// kept; the cache stays clean.
#[test]
fn a_failed_job_is_named_and_its_dependents_skipped() {
    let Some(conf) = cluster() else { return };
    let _one = serial();
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("step.sh"),
        "if [ \"$1\" = phantom002 ]; then echo \"cannot handle $1\" >&2; exit 3; fi\n\
         echo '{\"ok\": 1}' > \"$2\"\n",
    )
    .unwrap();
    write_exec_pipeline(d.path(), "sffail", 4, 1, "step.sh");
    let o = run_p(d.path(), &conf, &[]).output().unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("Slurm job") && t.contains("FAILED"), "{t}");
    assert!(
        t.contains("cannot handle phantom002"),
        "the log's tail: {t}"
    );
    assert!(t.contains("phantom002"), "{t}");
    let table = String::from_utf8_lossy(&o.stdout).to_string();
    let status = |stage: &str| row(&table, stage).get(2).cloned().unwrap_or_default();
    assert!(status("step").to_lowercase().contains("failed"), "{table}");
    assert!(
        status("after").to_lowercase().contains("skipped"),
        "{table}"
    );
    assert_eq!(
        counts(&table, "step").0,
        3,
        "the other jobs' items: {table}"
    );
    // The summary lists the stage's jobs by state and id.
    assert!(
        table.contains("step: 4 Slurm job(s), 3 COMPLETED, 1 FAILED (ids "),
        "{table}"
    );
    // The three cases that worked are in the cache: a rerun computes none of them.
    let o = run_p(d.path(), &conf, &["--executor", "local"])
        .output()
        .unwrap();
    let t2 = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(counts(&t2, "step"), (0, 3), "{t2}");
    verify_clean(d.path(), &conf);
}

/// The columns of stage `stage`'s row in a run's summary table (empty if absent).
fn row(table: &str, stage: &str) -> Vec<String> {
    table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(stage))
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// (computed, cached) of stage `stage` in a run's summary table.
fn counts(table: &str, stage: &str) -> (usize, usize) {
    let r = row(table, stage);
    let n = |i: usize| r.get(i).and_then(|v| v.parse().ok()).unwrap_or(usize::MAX);
    (n(3), n(4))
}

/// `pipeline run p.yaml --cache cache --no-progress` and `extra`, in `dir`.
fn run_p(dir: &Path, conf: &Path, extra: &[&str]) -> Command {
    let mut args = vec!["run", "p.yaml", "--cache", "cache", "--no-progress"];
    args.extend_from_slice(extra);
    pipeline(dir, conf, &args)
}

fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// The driver killed with -9 mid-run: jobs go on; run again, it adopts what they finished,
/// re-attaches to the jobs still running, submits the rest, and no item runs twice.
#[test]
fn a_killed_driver_loses_nothing_and_runs_no_item_twice() {
    let Some(conf) = cluster() else { return };
    let _one = serial();
    let d = tempfile::tempdir().unwrap();
    let ran = d.path().join("ran.txt");
    std::fs::write(
        d.path().join("step.sh"),
        format!(
            "echo \"$1\" >> {}\nsleep 2\necho '{{\"ok\": 1}}' > \"$2\"\n",
            ran.display()
        ),
    )
    .unwrap();
    write_exec_pipeline(d.path(), "sfkill", 6, 1, "step.sh");
    let mut driver = run_p(d.path(), &conf, &[]).spawn().unwrap();
    wait_for("two items to start", Duration::from_secs(120), || {
        lines(&ran).len() >= 3
    });
    driver.kill().unwrap();
    driver.wait().unwrap();
    let o = run_p(d.path(), &conf, &[]).output().unwrap();
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    let mut seen = lines(&ran);
    seen.sort();
    let mut once = seen.clone();
    once.dedup();
    assert_eq!(seen, once, "an item ran twice: {seen:?}");
    assert_eq!(seen.len(), 6, "{seen:?}");
    let table = String::from_utf8_lossy(&o.stdout);
    let (computed, cached) = counts(&table, "step");
    assert_eq!(computed + cached, 6, "{table}");
    assert!(
        cached >= 1,
        "items finished before the kill come from the cache: {table}"
    );
    verify_clean(d.path(), &conf);
}

/// Ctrl-C cancels every job of the run: none is left in the queue; a second driver on the
/// same cache meanwhile says who holds it.
#[test]
fn ctrl_c_leaves_no_job_in_the_queue() {
    let Some(conf) = cluster() else { return };
    let _one = serial();
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("step.sh"),
        "sleep 60\necho '{\"ok\": 1}' > \"$2\"\n",
    )
    .unwrap();
    write_exec_pipeline(d.path(), "sfint", 4, 1, "step.sh");
    let driver = run_p(d.path(), &conf, &[]).spawn().unwrap();
    wait_for("a running job", Duration::from_secs(120), || {
        jobs_named(&conf, "sf-sfint-step")
            .iter()
            .any(|s| s == "RUNNING")
    });
    let second = pipeline(
        d.path(),
        &conf,
        &["run", "p.yaml", "--cache", "cache", "--no-wait"],
    )
    .output()
    .unwrap();
    assert_ne!(second.status.code(), Some(0), "{}", text(&second));
    assert!(
        text(&second).contains("in use by process"),
        "{}",
        text(&second)
    );
    let pid = driver.id().to_string();
    Command::new("kill").args(["-INT", &pid]).status().unwrap();
    let o = driver.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(130), "{}", text(&o));
    wait_for("the queue to empty", Duration::from_secs(30), || {
        active(&jobs_named(&conf, "sf-sfint-step")) == 0
    });
    verify_clean(d.path(), &conf);
}

/// A dataset moved to another root (another mount point on another node) is served from
/// the cache: inputs are fingerprinted by content, relative to their root.
#[test]
fn a_moved_dataset_root_is_served_from_the_cache() {
    let Some(conf) = cluster() else { return };
    let _one = serial();
    let d = tempfile::tempdir().unwrap();
    let shared = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data/hippocampus")
        .canonicalize();
    let Ok(shared) = shared else {
        eprintln!("*** SKIPPED: ../shared/data/hippocampus not found ***");
        return;
    };
    // A two-case dataset whose files are links to the real ones.
    let a = d.path().join("mount-a/hippo");
    for sub in ["imagesTr", "labelsTr"] {
        std::fs::create_dir_all(a.join(sub)).unwrap();
        for n in ["hippocampus_001.nii.gz", "hippocampus_003.nii.gz"] {
            std::os::unix::fs::symlink(shared.join(sub).join(n), a.join(sub).join(n)).unwrap();
        }
    }
    std::fs::write(
        a.join("dataset.json"),
        r#"{"name": "h", "labels": {"0": "background", "1": "Anterior", "2": "Posterior"},
            "modality": {"0": "MRI"}, "numTraining": 2,
            "training": [
              {"image": "./imagesTr/hippocampus_001.nii.gz", "label": "./labelsTr/hippocampus_001.nii.gz"},
              {"image": "./imagesTr/hippocampus_003.nii.gz", "label": "./labelsTr/hippocampus_003.nii.gz"}]}"#,
    )
    .unwrap();
    let yaml = "name: sfmove
executor: {kind: slurm, per_job: 1, poll_max_s: 0.5}
stages:
  load: {stage: load, params: {format: msd, root: \"${HIPPO_ROOT}\", split: none}}
  resample: {stage: resample, after: [load], params: {spacing: [2.0, 2.0, 2.0]}}
";
    std::fs::write(d.path().join("p.yaml"), yaml).unwrap();
    let run = |root: &Path| {
        let o = run_p(d.path(), &conf, &[])
            .env("HIPPO_ROOT", root)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o));
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    let first = run(&a);
    assert!(first.contains("4 computed, 0 from cache"), "{first}");
    let b = d.path().join("mount-b/elsewhere/hippo");
    std::fs::create_dir_all(b.parent().unwrap()).unwrap();
    std::fs::rename(&a, &b).unwrap();
    let second = run(&b);
    assert!(second.contains("0 computed, 4 from cache"), "{second}");
    verify_clean(d.path(), &conf);
}

//! Running items as Slurm jobs: the executor's settings (`executor:` and per-stage
//! `resources:` in the pipeline file), and a thin client of the scheduler's commands
//! (`sbatch --parsable`, `squeue`, `scontrol`, `scancel`), as Snakemake's and Nextflow's
//! Slurm executors drive it. Which items go into which job, and adopting what the jobs
//! wrote into the cache, is the executor's ([`crate::run`]).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Where items are computed.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Executor {
    /// In this process (threads for per-case work).
    #[default]
    Local,
    /// As Slurm jobs that run this binary on their share of the items and write to the
    /// shared cache.
    Slurm(SlurmSettings),
}

/// `executor:` in a pipeline file: `local`, `slurm`, or a mapping with `kind: slurm` and
/// these settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SlurmSettings {
    /// Cases per job for per-case stages (a stage's `resources.per_job` wins).
    #[serde(default = "default_per_job")]
    pub per_job: usize,
    /// Longest pause between two polls of the queue, in seconds (polls start at 0.5 s and
    /// double up to this).
    #[serde(default = "default_poll")]
    pub poll_max_s: f64,
    /// The binary jobs run (default: this one; on a cluster it must be on the shared
    /// filesystem).
    #[serde(default)]
    pub binary: Option<PathBuf>,
    /// Defaults for every stage's `resources`.
    #[serde(default)]
    pub resources: Resources,
}

fn default_per_job() -> usize {
    20
}

fn default_poll() -> f64 {
    5.0
}

impl Default for SlurmSettings {
    fn default() -> Self {
        SlurmSettings {
            per_job: default_per_job(),
            poll_max_s: default_poll(),
            binary: None,
            resources: Resources::default(),
        }
    }
}

/// What a stage's jobs ask the scheduler for (`resources:` of a stage). Execution only:
/// never part of a cache key.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// CPUs per job (default: 1 for per-case stages, 2 for whole-dataset ones).
    pub cpus: Option<u32>,
    /// Memory per job, as sbatch takes it (`4G`, `500M`; default: the partition's).
    pub memory: Option<String>,
    /// GPUs per job (default: 1 for stages that use a GPU when the cluster has GPUs, else 0).
    pub gpus: Option<u32>,
    /// Time limit, as sbatch takes it (`1:00:00`, `2-00:00:00`; default: the partition's).
    pub time: Option<String>,
    /// Partition (default: the cluster's default).
    pub partition: Option<String>,
    /// Cases per job (per-case stages).
    pub per_job: Option<usize>,
    /// More sbatch flags, e.g. `["--account=lab", "--qos=short"]`.
    #[serde(default)]
    pub sbatch: Vec<String>,
}

impl Resources {
    /// `self`, with what it leaves unset taken from `base`.
    pub fn or(&self, base: &Resources) -> Resources {
        Resources {
            cpus: self.cpus.or(base.cpus),
            memory: self.memory.clone().or_else(|| base.memory.clone()),
            gpus: self.gpus.or(base.gpus),
            time: self.time.clone().or_else(|| base.time.clone()),
            partition: self.partition.clone().or_else(|| base.partition.clone()),
            per_job: self.per_job.or(base.per_job),
            sbatch: if self.sbatch.is_empty() {
                base.sbatch.clone()
            } else {
                self.sbatch.clone()
            },
        }
    }

    /// Checks values sbatch would refuse late, with the field named.
    pub fn check(&self) -> Result<(), String> {
        if self.cpus == Some(0) {
            return Err("`cpus` must be at least 1".into());
        }
        if self.per_job == Some(0) {
            return Err("`per_job` must be at least 1".into());
        }
        if let Some(m) = &self.memory {
            let digits = m.trim_end_matches(['K', 'M', 'G', 'T', 'k', 'm', 'g', 't']);
            if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
                return Err(format!(
                    "`memory` must be a size such as 4G or 500M, not `{m}`"
                ));
            }
        }
        for f in &self.sbatch {
            if !f.starts_with('-') {
                return Err(format!(
                    "`sbatch` lists flags (each starting with -), not `{f}`"
                ));
            }
        }
        Ok(())
    }
}

/// Parses `executor:` (already converted to JSON).
pub fn parse_executor(v: &serde_json::Value) -> Result<Executor, String> {
    match v {
        serde_json::Value::String(s) if s == "local" => Ok(Executor::Local),
        serde_json::Value::String(s) if s == "slurm" => {
            Ok(Executor::Slurm(SlurmSettings::default()))
        }
        serde_json::Value::Object(m) => {
            let mut m = m.clone();
            match m.remove("kind") {
                Some(serde_json::Value::String(k)) if k == "local" && m.is_empty() => {
                    Ok(Executor::Local)
                }
                Some(serde_json::Value::String(k)) if k == "slurm" => {
                    let s: SlurmSettings = serde_json::from_value(serde_json::Value::Object(m))
                        .map_err(|e| format!("`executor`: {e}"))?;
                    if s.per_job == 0 {
                        return Err("`executor.per_job` must be at least 1".into());
                    }
                    if s.poll_max_s.is_nan() || s.poll_max_s <= 0.0 {
                        return Err("`executor.poll_max_s` must be positive".into());
                    }
                    s.resources
                        .check()
                        .map_err(|e| format!("`executor.resources`: {e}"))?;
                    Ok(Executor::Slurm(s))
                }
                _ => Err("`executor` mapping needs `kind: slurm` (or `kind: local` alone)".into()),
            }
        }
        _ => Err("`executor` is `local`, `slurm`, or a mapping with `kind: slurm`".into()),
    }
}

/// Parses a stage's `resources:` (already converted to JSON).
pub fn parse_resources(v: &serde_json::Value) -> Result<Resources, String> {
    let r: Resources = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
    r.check()?;
    Ok(r)
}

/// A job's state as Slurm names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobState {
    pub state: String,
    /// `Reason=` and `ExitCode=` where scontrol gives them.
    pub detail: String,
}

impl JobState {
    /// Still queued or running.
    pub fn active(&self) -> bool {
        matches!(
            self.state.as_str(),
            "PENDING"
                | "RUNNING"
                | "CONFIGURING"
                | "COMPLETING"
                | "SUSPENDED"
                | "REQUEUED"
                | "REQUEUE_HOLD"
                | "REQUEUE_FED"
                | "RESIZING"
                | "SIGNALING"
                | "STAGE_OUT"
                | "RESV_DEL_HOLD"
        )
    }
}

/// The scheduler's command-line client.
#[derive(Debug, Clone, Default)]
pub struct Slurm;

fn run(cmd: &mut Command) -> Result<String, String> {
    let name = format!("{:?}", cmd.get_program());
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {name}: {e} (is Slurm installed and on PATH?)"))?;
    if !out.status.success() {
        return Err(format!(
            "{name} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

/// Quotes `s` for a POSIX shell (sbatch `--wrap` runs its string with `sh -c`).
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// One job to submit.
pub struct Submission<'a> {
    pub name: &'a str,
    pub log: &'a Path,
    pub workdir: &'a Path,
    pub resources: &'a Resources,
    /// The command line the job runs.
    pub command: &'a [String],
}

impl Slurm {
    /// Whether the cluster offers GPUs (a `gpu` GRES on some node).
    pub fn has_gpus(&self) -> bool {
        run(Command::new("sinfo").args(["-h", "-o", "%G"]))
            .map(|s| s.contains("gpu"))
            .unwrap_or(false)
    }

    /// The sbatch arguments for `s` (without the program name).
    pub fn sbatch_args(s: &Submission) -> Vec<String> {
        let r = s.resources;
        let mut a = vec![
            "--parsable".to_string(),
            format!("--job-name={}", s.name),
            format!("--output={}", s.log.display()),
            format!("--chdir={}", s.workdir.display()),
            "--export=ALL".into(),
            "--no-requeue".into(),
        ];
        if let Some(c) = r.cpus {
            a.push(format!("--cpus-per-task={c}"));
        }
        if let Some(m) = &r.memory {
            a.push(format!("--mem={m}"));
        }
        if let Some(g) = r.gpus.filter(|g| *g > 0) {
            a.push(format!("--gres=gpu:{g}"));
        }
        if let Some(t) = &r.time {
            a.push(format!("--time={t}"));
        }
        if let Some(p) = &r.partition {
            a.push(format!("--partition={p}"));
        }
        a.extend(r.sbatch.iter().cloned());
        let wrap: Vec<String> = s.command.iter().map(|c| shell_quote(c)).collect();
        a.push(format!("--wrap={}", wrap.join(" ")));
        a
    }

    /// Submits `s`; returns the job id.
    pub fn submit(&self, s: &Submission) -> Result<String, String> {
        let out = run(Command::new("sbatch").args(Self::sbatch_args(s)))?;
        let id = out
            .trim()
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit() || c == '_') {
            return Err(format!("sbatch printed `{}`, not a job id", out.trim()));
        }
        Ok(id)
    }

    /// The states of `ids` (one `squeue` call); ids the queue no longer lists are asked of
    /// `scontrol` and, if it does not know them either, left out.
    pub fn states(&self, ids: &[String]) -> Result<BTreeMap<String, JobState>, String> {
        let mut out = BTreeMap::new();
        if ids.is_empty() {
            return Ok(out);
        }
        let listed = run(Command::new("squeue").args([
            "-h",
            "-t",
            "all",
            "-j",
            &ids.join(","),
            "-o",
            "%i %T",
        ]))
        .unwrap_or_default();
        for line in listed.lines() {
            let mut w = line.split_whitespace();
            if let (Some(id), Some(state)) = (w.next(), w.next()) {
                out.insert(
                    id.to_string(),
                    JobState {
                        state: state.to_string(),
                        detail: String::new(),
                    },
                );
            }
        }
        for id in ids {
            let terminal = out.get(id).map(|s| !s.active()).unwrap_or(true);
            if terminal {
                if let Some(s) = self.show(id) {
                    out.insert(id.clone(), s);
                }
            }
        }
        Ok(out)
    }

    /// `scontrol -o show job ID`: state, reason and exit code, if Slurm still knows the job.
    pub fn show(&self, id: &str) -> Option<JobState> {
        let text = run(Command::new("scontrol").args(["-o", "show", "job", id])).ok()?;
        let field = |name: &str| {
            text.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .map(str::to_string)
        };
        let state = field("JobState=")?;
        let reason = field("Reason=").unwrap_or_default();
        let code = field("ExitCode=").unwrap_or_default();
        Some(JobState {
            state,
            detail: format!("reason {reason}, exit code {code}"),
        })
    }

    /// Cancels `ids` (errors ignored: a job may have ended meanwhile).
    pub fn cancel(&self, ids: &[String]) {
        if !ids.is_empty() {
            let _ = run(Command::new("scancel").args(ids));
        }
    }
}

/// A job the driver submitted for a batch of items, remembered in the cache
/// (`<cache>/jobs/<batch>.json`) so that a driver started again after being killed
/// re-attaches to it instead of submitting the batch twice.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRecord {
    pub job: String,
    pub log: PathBuf,
    pub stage: String,
    pub cases: Vec<String>,
    /// The items' cache keys (hex): a later driver follows the job for these items only.
    #[serde(default)]
    pub keys: Vec<String>,
}

/// The last `n` lines of a job's log (empty when it cannot be read).
pub fn log_tail(path: &Path, n: usize) -> String {
    let Ok(bytes) = std::fs::read(path) else {
        return String::new();
    };
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Pauses between polls: 0.5 s, doubling up to `max`.
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(max_s: f64) -> Backoff {
        let max = Duration::from_secs_f64(max_s.max(0.05));
        Backoff {
            next: Duration::from_millis(500).min(max),
            max,
        }
    }

    /// The pause to take now.
    pub fn step(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn executor_settings_parse_with_errors_named() {
        assert_eq!(parse_executor(&json!("local")).unwrap(), Executor::Local);
        assert_eq!(
            parse_executor(&json!("slurm")).unwrap(),
            Executor::Slurm(SlurmSettings::default())
        );
        let e = parse_executor(&json!({"kind": "slurm", "per_job": 5,
            "resources": {"cpus": 4, "memory": "8G", "sbatch": ["--qos=short"]}}))
        .unwrap();
        let Executor::Slurm(s) = e else { panic!() };
        assert_eq!(s.per_job, 5);
        assert_eq!(s.resources.cpus, Some(4));
        for (bad, says) in [
            (
                json!({"kind": "slurm", "perjob": 5}),
                "unknown field `perjob`",
            ),
            (json!({"kind": "pbs"}), "kind: slurm"),
            (json!({"kind": "slurm", "per_job": 0}), "at least 1"),
            (
                json!({"kind": "slurm", "resources": {"memory": "lots"}}),
                "4G",
            ),
            (json!(3), "`executor` is"),
        ] {
            let e = parse_executor(&bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        assert!(parse_resources(&json!({"sbatch": ["qos=x"]}))
            .unwrap_err()
            .contains("flags"));
    }

    #[test]
    fn stage_resources_fall_back_to_the_executors() {
        let base = Resources {
            cpus: Some(2),
            memory: Some("4G".into()),
            sbatch: vec!["--qos=a".into()],
            ..Default::default()
        };
        let r = Resources {
            cpus: Some(8),
            ..Default::default()
        }
        .or(&base);
        assert_eq!(
            (r.cpus, r.memory.as_deref(), r.sbatch.len()),
            (Some(8), Some("4G"), 1)
        );
    }

    #[test]
    fn sbatch_arguments_quote_the_command() {
        let r = Resources {
            cpus: Some(2),
            gpus: Some(1),
            time: Some("1:00:00".into()),
            ..Default::default()
        };
        let cmd = vec![
            "/opt/pipeline".to_string(),
            "job".into(),
            "--set".into(),
            "train.net={depth: 3}".into(),
            "it's".into(),
        ];
        let a = Slurm::sbatch_args(&Submission {
            name: "sf-demo-train",
            log: Path::new("/runs/x/slurm/train-%j.log"),
            workdir: Path::new("/work"),
            resources: &r,
            command: &cmd,
        });
        assert!(a.contains(&"--cpus-per-task=2".to_string()));
        assert!(a.contains(&"--gres=gpu:1".to_string()));
        assert!(a.contains(&"--no-requeue".to_string()));
        let wrap = a.last().unwrap();
        assert_eq!(
            wrap,
            r"--wrap=/opt/pipeline job --set 'train.net={depth: 3}' 'it'\''s'"
        );
    }

    #[test]
    fn backoff_doubles_up_to_its_limit() {
        let mut b = Backoff::new(2.0);
        let s: Vec<f64> = (0..4).map(|_| b.step().as_secs_f64()).collect();
        assert_eq!(s, vec![0.5, 1.0, 2.0, 2.0]);
    }
}

//! The record of a run: `runs/<time>-<name>/manifest.json`.

use crate::plan::Plan;
use crate::resolve::Resolved;
use crate::run::RunReport;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Creates `root/<YYYYmmdd-HHMMSS>-<name>` (with a numeric suffix if taken).
pub fn new_run_dir(
    root: &Path,
    name: &str,
    now: chrono::DateTime<chrono::Local>,
) -> io::Result<PathBuf> {
    std::fs::create_dir_all(root)?;
    let base = format!("{}-{}", now.format("%Y%m%d-%H%M%S"), sanitize(name));
    for i in 0..1000 {
        let dir = if i == 0 {
            root.join(&base)
        } else {
            root.join(format!("{base}.{i}"))
        };
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("too many runs in the same second"))
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The git commit of the repository holding `file`, with `-dirty` if it has changes.
pub fn git_commit(file: &Path) -> Option<String> {
    let dir = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let commit = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let dirty = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .ok()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false);
    Some(if dirty {
        format!("{commit}-dirty")
    } else {
        commit
    })
}

/// The machine a run ran on: training results depend on the CPU (libtorch picks its
/// kernels by instruction set), so a run records which. `cpu` and `cpu_features` come from
/// `/proc/cpuinfo` (Linux; absent elsewhere).
pub fn host() -> serde_json::Value {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let (cpu, features) = cpu_from_cpuinfo(&info);
    serde_json::json!({
        "os": std::env::consts::OS,
        "arch": std::env::consts::ARCH,
        "logical_cpus": std::thread::available_parallelism().map(|n| n.get()).ok(),
        "cpu": cpu,
        "cpu_features": features,
        "numeric_env": numeric_env(|k| std::env::var(k).ok()),
    })
}

/// Environment variables that change which kernels run or how many threads sum a result
/// (measured: `DNNL_MAX_CPU_ISA=AVX2` alone moves a training's second-epoch validation Dice
/// on an AVX-512 CPU); those set are recorded beside the CPU.
const NUMERIC_ENV: &[&str] = &[
    "DNNL_MAX_CPU_ISA",
    "MKL_CBWR",
    "ATEN_CPU_CAPABILITY",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "CUBLAS_WORKSPACE_CONFIG",
];

fn numeric_env(get: impl Fn(&str) -> Option<String>) -> serde_json::Map<String, serde_json::Value> {
    NUMERIC_ENV
        .iter()
        .filter_map(|k| get(k).map(|v| (k.to_string(), serde_json::Value::String(v))))
        .collect()
}

/// The instruction-set extensions that change which numeric kernels run.
const KERNEL_FEATURES: &[&str] = &[
    "sse4_2",
    "fma",
    "avx",
    "avx2",
    "avx512f",
    "avx512_bf16",
    "avx512_fp16",
    "avx512_vnni",
    "avx_vnni",
    "amx_bf16",
    "amx_tile",
    "asimd",
    "sve",
];

/// The first processor's model name and which of [`KERNEL_FEATURES`] it has, from the text
/// of `/proc/cpuinfo` (x86 `flags`, Arm `Features`).
fn cpu_from_cpuinfo(text: &str) -> (Option<String>, Vec<&'static str>) {
    let field = |names: &[&str]| {
        text.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            names.contains(&k.trim()).then(|| v.trim().to_string())
        })
    };
    let model = field(&["model name", "Model", "cpu model"]).filter(|m| !m.is_empty());
    let flags = field(&["flags", "Features"]).unwrap_or_default();
    let have: std::collections::HashSet<&str> = flags.split_whitespace().collect();
    let features = KERNEL_FEATURES
        .iter()
        .copied()
        .filter(|f| have.contains(f))
        .collect();
    (model, features)
}

/// Everything needed to know what a run did and to reproduce it.
pub struct ManifestInput<'a> {
    pub resolved: &'a Resolved,
    pub plan: &'a Plan,
    pub report: &'a RunReport,
    pub started: chrono::DateTime<chrono::Local>,
    pub tool_version: &'a str,
    pub overrides: &'a [String],
}

/// Writes `manifest.json` into `run_dir` atomically; returns its path.
pub fn write(run_dir: &Path, m: &ManifestInput) -> io::Result<PathBuf> {
    let r = m.resolved;
    let variants: serde_json::Map<String, serde_json::Value> = r
        .variant_names()
        .into_iter()
        .map(|v| {
            let cfg = r.variant_config(&v);
            (v, cfg)
        })
        .collect();
    let mut plugins = serde_json::Map::new();
    for n in &r.nodes {
        plugins.insert(n.plugin.clone(), serde_json::json!(n.version));
    }
    let nodes: Vec<serde_json::Value> = r
        .nodes
        .iter()
        .zip(&m.plan.nodes)
        .zip(&m.report.nodes)
        .map(|((n, p), rep)| {
            let keys: serde_json::Map<String, serde_json::Value> = p
                .items
                .iter()
                .map(|it| (it.case.id.clone(), serde_json::json!(it.key.to_hex())))
                .collect();
            serde_json::json!({
                "stage": n.id,
                "plugin": n.plugin,
                "variants": n.variants,
                "signature": n.signature.to_hex(),
                "report": rep,
                "keys": keys,
            })
        })
        .collect();
    let doc = serde_json::json!({
        "pipeline": r.file.name,
        "file": r.file.path.canonicalize().unwrap_or_else(|_| r.file.path.clone()),
        "git_commit": git_commit(&r.file.path),
        "seed": r.file.seed,
        "overrides": m.overrides,
        "tool": {"name": "shapeflow", "version": m.tool_version},
        "host": host(),
        "plugins": plugins,
        "started": m.started.to_rfc3339(),
        "finished": chrono::Local::now().to_rfc3339(),
        "wall_s": m.report.wall_s,
        "ok": m.report.ok(),
        "cancelled": m.report.cancelled,
        "variants": variants,
        "nodes": nodes,
    });
    let path = run_dir.join("manifest.json");
    crate::atomic::write(&path, &serde_json::to_vec_pretty(&doc).unwrap_or_default())?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_is_read_from_cpuinfo_on_x86_and_arm() {
        let x86 = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Processor\n\
                   flags\t\t: fpu sse4_2 fma avx avx2 avx512f avx512_bf16 amx_tile ht\n\n\
                   processor\t: 1\nmodel name\t: Other\nflags\t\t: fpu\n";
        let (model, features) = cpu_from_cpuinfo(x86);
        assert_eq!(model.as_deref(), Some("Intel(R) Xeon(R) Processor"));
        assert_eq!(
            features,
            [
                "sse4_2",
                "fma",
                "avx",
                "avx2",
                "avx512f",
                "avx512_bf16",
                "amx_tile"
            ]
        );
        let arm = "processor\t: 0\nFeatures\t: fp asimd evtstrm sve\nCPU part\t: 0xd40\n";
        let (model, features) = cpu_from_cpuinfo(arm);
        assert_eq!(model, None);
        assert_eq!(features, ["asimd", "sve"]);
        assert_eq!(cpu_from_cpuinfo(""), (None, vec![]));
    }

    #[test]
    fn only_the_numeric_environment_that_is_set_is_recorded() {
        let env = numeric_env(|k| match k {
            "DNNL_MAX_CPU_ISA" => Some("AVX2".into()),
            "MKL_CBWR" => Some("AVX2".into()),
            _ => None,
        });
        assert_eq!(
            serde_json::Value::Object(env),
            serde_json::json!({"DNNL_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2"})
        );
    }
}

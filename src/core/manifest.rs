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

//! The `exec` stage: a step written in any language, run per case as an external command.

use serde::{Deserialize, Serialize};
use shapeflow_core::{
    CaseInfo, Inputs, Item, Kind, ParamError, Plugin, Port, Registry, Shape, Stage, StageCtx,
    StageDef, StageError, Volume,
};
use shapeflow_formats::NiftiIo;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

/// Registers `exec`.
pub struct ExecPlugin;

impl Plugin for ExecPlugin {
    fn name(&self) -> &'static str {
        "exec"
    }

    fn register(&self, registry: &mut Registry) {
        registry.add(StageDef::<ExecParams> {
            name: "exec",
            version: 1,
            summary: "Run an external command per case (Python, shell, anything)",
            help: HELP,
            build: |p, ctx| {
                if p.command.is_empty() || p.command[0].trim().is_empty() {
                    return Err(ParamError {
                        path: vec!["command".into()],
                        message: "`command` must name a program, e.g. [python3, step.py, \"{in}\", \"{output}\"]".into(),
                    });
                }
                let mut material = String::new();
                for f in &p.depends {
                    let bytes = std::fs::read(ctx.path(f)).map_err(|e| ParamError {
                        path: vec!["depends".into()],
                        message: format!("cannot read {f}: {e}"),
                    })?;
                    material.push_str(&format!("{f}={}\n", blake3::hash(&bytes).to_hex()));
                }
                Ok(Arc::new(Exec { p, material }))
            },
        });
    }
}

const HELP: &str = r#"
Runs `command` once per case, in the pipeline file's directory, with the case's inputs
handed over as files:

  {in}/<stage>.nii.gz      a volume input from stage <stage>
  {in}/<stage>.json        a JSON input
  {in}/<stage>.bin         a bytes input
  {in}/<stage>/<part>.*    each part of a bundle input (a case: image.nii.gz, then
                           image.1.nii.gz, ... for further channels, labels.nii.gz,
                           meta.json)

The command writes its result to {output} ({out}/output.nii.gz for `output: volume`,
{out}/output.json for `output: json`). The same paths are in the environment as
SHAPEFLOW_IN, SHAPEFLOW_OUT, SHAPEFLOW_OUTPUT, with SHAPEFLOW_CASE and SHAPEFLOW_SEED.

The command line, `env` and the content of `depends` files are part of the cache key, so
editing the command (or a listed script) recomputes this stage and what follows it.
A non-zero exit, or no file at {output}, fails the case with the command's stderr.
"#;

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum OutputKind {
    #[default]
    Volume,
    Json,
}

/// Params of `exec`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ExecParams {
    /// The program and its arguments. Placeholders: {case}, {in}, {out}, {output},
    /// {input:STAGE}.
    pub command: Vec<String>,
    /// Extra environment variables for the command.
    pub env: BTreeMap<String, String>,
    /// What the command writes at {output}: a NIfTI volume or a JSON document.
    pub output: OutputKind,
    /// Files the command reads (e.g. its script); their content is part of the cache key.
    pub depends: Vec<String>,
}

struct Exec {
    p: ExecParams,
    material: String,
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> StageError {
    StageError::msg(format!("cannot {what} {}: {e}", path.display()))
}

/// Writes `item` as file(s) named `stem.*`; returns the path written.
fn write_item(item: &Item, stem: &Path) -> Result<PathBuf, StageError> {
    let with_ext = |ext: &str| {
        let mut s = stem.as_os_str().to_owned();
        s.push(ext);
        PathBuf::from(s)
    };
    match item {
        Item::Volume(v) => {
            let p = with_ext(".nii.gz");
            v.write_nifti(&p)
                .map_err(|e| StageError::msg(e.to_string()))?;
            Ok(p)
        }
        Item::Json(j) => {
            let p = with_ext(".json");
            std::fs::write(&p, serde_json::to_vec_pretty(j).unwrap_or_default())
                .map_err(|e| io_err("write", &p, e))?;
            Ok(p)
        }
        Item::Bytes(b) => {
            let p = with_ext(".bin");
            std::fs::write(&p, b).map_err(|e| io_err("write", &p, e))?;
            Ok(p)
        }
        Item::Bundle(parts) => {
            std::fs::create_dir_all(stem).map_err(|e| io_err("create", stem, e))?;
            for (name, part) in parts {
                write_item(part, &stem.join(name))?;
            }
            Ok(stem.to_path_buf())
        }
    }
}

fn tail(bytes: &[u8], max: usize) -> String {
    let s = String::from_utf8_lossy(bytes);
    let s = s.trim_end();
    if s.len() > max {
        let mut start = s.len() - max;
        while !s.is_char_boundary(start) {
            start += 1;
        }
        format!("...{}", &s[start..])
    } else {
        s.to_string()
    }
}

impl Stage for Exec {
    fn output(&self) -> Kind {
        Kind::Any
    }

    fn ports(&self) -> Vec<Port> {
        vec![Port::new("inputs", Kind::Any)]
    }

    fn shape(&self) -> Shape {
        Shape::PerCase
    }

    fn uses_seed(&self) -> bool {
        true
    }

    fn key_material(&self) -> String {
        self.material.clone()
    }

    fn run_case(
        &self,
        ctx: &StageCtx,
        case: &CaseInfo,
        inputs: &Inputs,
    ) -> Result<Item, StageError> {
        let dir_in = ctx.scratch.join("in");
        let dir_out = ctx.scratch.join("out");
        for d in [&dir_in, &dir_out] {
            std::fs::create_dir_all(d).map_err(|e| io_err("create", d, e))?;
        }
        let mut input_paths = BTreeMap::new();
        for (stage, item) in inputs.iter() {
            input_paths.insert(stage.to_string(), write_item(item, &dir_in.join(stage))?);
        }
        let output = dir_out.join(match self.p.output {
            OutputKind::Volume => "output.nii.gz",
            OutputKind::Json => "output.json",
        });
        let subst = |arg: &str| -> Result<String, StageError> {
            let mut s = arg
                .replace("{case}", &case.id)
                .replace("{in}", &dir_in.to_string_lossy())
                .replace("{out}", &dir_out.to_string_lossy())
                .replace("{output}", &output.to_string_lossy());
            while let Some(i) = s.find("{input:") {
                let end = s[i..]
                    .find('}')
                    .map(|j| i + j)
                    .ok_or_else(|| StageError::msg(format!("unclosed `{{input:` in {arg:?}")))?;
                let name = &s[i + 7..end];
                let p = input_paths.get(name).ok_or_else(|| {
                    StageError::msg(format!(
                        "{arg:?} names input `{name}`, but this stage reads only: {}",
                        input_paths.keys().cloned().collect::<Vec<_>>().join(", ")
                    ))
                })?;
                s = format!("{}{}{}", &s[..i], p.to_string_lossy(), &s[end + 1..]);
            }
            Ok(s)
        };
        let args: Vec<String> = self
            .p
            .command
            .iter()
            .map(|a| subst(a))
            .collect::<Result<_, _>>()?;
        let mut cmd = Command::new(&args[0]);
        cmd.current_dir(&ctx.base_dir)
            .args(&args[1..])
            .env("SHAPEFLOW_CASE", &case.id)
            .env("SHAPEFLOW_IN", &dir_in)
            .env("SHAPEFLOW_OUT", &dir_out)
            .env("SHAPEFLOW_OUTPUT", &output)
            .env("SHAPEFLOW_SEED", ctx.seed.to_string());
        for (k, v) in &self.p.env {
            cmd.env(k, v);
        }
        let shown = args.join(" ");
        let out = cmd
            .output()
            .map_err(|e| StageError::msg(format!("cannot start `{shown}`: {e}")))?;
        if !out.status.success() {
            let code = out
                .status
                .code()
                .map(|c| format!("status {c}"))
                .unwrap_or_else(|| "a signal".into());
            return Err(StageError::msg(format!(
                "`{shown}` exited with {code}; stderr:\n{}",
                tail(&out.stderr, 4000)
            )));
        }
        if !output.is_file() {
            return Err(StageError::msg(format!(
                "`{shown}` succeeded but wrote no {} (expected {}); stderr:\n{}",
                match self.p.output {
                    OutputKind::Volume => "volume",
                    OutputKind::Json => "JSON",
                },
                output.display(),
                tail(&out.stderr, 2000)
            )));
        }
        match self.p.output {
            OutputKind::Volume => Volume::read_nifti(&output)
                .map(|v| Item::Volume(std::sync::Arc::new(v)))
                .map_err(|e| StageError::msg(format!("`{shown}` wrote an unreadable volume: {e}"))),
            OutputKind::Json => {
                let bytes = std::fs::read(&output).map_err(|e| io_err("read", &output, e))?;
                serde_json::from_slice(&bytes).map(Item::Json).map_err(|e| {
                    StageError::msg(format!(
                        "`{shown}` wrote invalid JSON at {}: {e}",
                        output.display()
                    ))
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_are_documented() {
        Registry::new()
            .with(&ExecPlugin)
            .unwrap()
            .check_docs()
            .unwrap();
    }
}

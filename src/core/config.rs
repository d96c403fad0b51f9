//! Pipeline files: parsing, `${ENV:-default}` substitution, and validation against the
//! registry. Every error names the file, line and column; all errors are reported together.
//!
//! ```yaml
//! name: demo
//! seed: 42
//! cache: .pipeline/cache        # optional
//! stages:
//!   load:  { plugin: phantom, params: { cases: 8 } }
//!   sdm:   { plugin: edt-sdm, after: [load] }
//!   train: { plugin: train, after: [load, sdm], params: { mode: joint } }
//! variants:                     # optional: each runs the whole graph with these overrides
//!   dice:  { train.mode: dice }
//!   joint: { train.mode: joint }
//! ```

use crate::stage::{nearest, Registry};
use crate::yaml::{self, Key, Node, Pos, Value};
use std::fmt;
use std::path::{Path, PathBuf};

/// What kind of mistake a [`ConfigError`] reports (tests match on it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Syntax,
    DuplicateKey,
    UnknownField,
    MissingField,
    WrongType,
    UnknownPlugin,
    UnknownParam,
    BadParam,
    UnknownDependency,
    /// An `after:` dependency gives a stage the wrong kind of input, or none it needs.
    Wiring,
    Cycle,
    BadVariant,
    BadOverride,
    Env,
    Io,
}

/// One problem in a pipeline file.
#[derive(Debug, Clone)]
pub struct ConfigError {
    pub file: PathBuf,
    pub pos: Pos,
    pub kind: ErrorKind,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.pos.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(f, "{}:{}: {}", self.file.display(), self.pos, self.message)
        }
    }
}

/// All problems found in a pipeline file.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "error: {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl ConfigErrors {
    pub fn kinds(&self) -> Vec<ErrorKind> {
        self.0.iter().map(|e| e.kind).collect()
    }
}

/// A stage as written in the file.
#[derive(Debug, Clone)]
pub struct StageSpec {
    pub id: String,
    pub pos: Pos,
    pub plugin: String,
    pub plugin_pos: Pos,
    /// The `params:` mapping (an empty mapping when absent).
    pub params: Node,
    pub after: Vec<(String, Pos)>,
    /// `resources:`, what the stage's jobs ask a cluster scheduler for (not part of any key).
    pub resources: Option<crate::slurm::Resources>,
}

/// `stage.param: value`, from a variant or `--set`.
#[derive(Debug, Clone)]
pub struct Override {
    pub stage: String,
    pub param: String,
    pub value: Node,
    /// Where it was written; line 0 for `--set`.
    pub pos: Pos,
    /// `variant NAME` or `--set`, for messages.
    pub origin: String,
}

/// A named set of overrides.
#[derive(Debug, Clone)]
pub struct VariantSpec {
    pub name: String,
    pub pos: Pos,
    pub overrides: Vec<Override>,
    /// With `seeds:`, the training seed of this copy of the variant (named
    /// `<variant>@<seed>`): it replaces `seed` for every stage that uses a seed except the
    /// sources, so that data and preprocessing are shared across seeds.
    pub seed: Option<u64>,
}

/// A parsed, structurally valid pipeline file (params not yet checked against plugins).
#[derive(Debug, Clone)]
pub struct PipelineFile {
    pub path: PathBuf,
    pub name: String,
    pub seed: u64,
    pub cache: Option<PathBuf>,
    pub stages: Vec<StageSpec>,
    /// Never empty: a file without `variants:` has the single variant `default`.
    pub variants: Vec<VariantSpec>,
    pub explicit_variants: bool,
    /// `default_variants:`: the variants `run` and `plan` take when `--variants` names none
    /// (a file's study beside its named experiments); `None`: every variant.
    pub default_variants: Option<Vec<String>>,
    /// `executor:` (default local); `pipeline run --executor` overrides it.
    pub executor: crate::slurm::Executor,
}

struct Errs<'a> {
    file: &'a Path,
    list: Vec<ConfigError>,
}

impl Errs<'_> {
    fn push(&mut self, pos: Pos, kind: ErrorKind, message: impl Into<String>) {
        self.list.push(ConfigError {
            file: self.file.to_path_buf(),
            pos,
            kind,
            message: message.into(),
        });
    }
}

const TOP_FIELDS: &[&str] = &[
    "name",
    "description",
    "seed",
    "seeds",
    "cross_validation",
    "cache",
    "stages",
    "variants",
    "default_variants",
    "executor",
];
const STAGE_FIELDS: &[&str] = &[
    "stage",
    "plugin",
    "params",
    "after",
    "description",
    "resources",
];

/// Whether `s` is exactly one `${...}` reference.
fn is_single_reference(s: &str) -> bool {
    s.starts_with("${")
        && s.ends_with('}')
        && s.matches("${").count() == 1
        && s.matches('}').count() == 1
}

/// Substitutes `${VAR}` and `${VAR:-default}` using `env`; `$${` is a literal `${`.
pub fn substitute_env(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i..];
        if let Some(r) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = r;
        } else if let Some(r) = after.strip_prefix("${") {
            let end = r
                .find('}')
                .ok_or_else(|| format!("unclosed `${{` in {s:?}"))?;
            let expr = &r[..end];
            let (var, default) = match expr.find(":-") {
                Some(j) => (&expr[..j], Some(&expr[j + 2..])),
                None => (expr, None),
            };
            let valid = !var.is_empty()
                && var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !var.starts_with(|c: char| c.is_ascii_digit());
            if !valid {
                return Err(format!("`${{{expr}}}` is not a valid variable reference"));
            }
            match (env(var).filter(|v| !v.is_empty()), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(format!(
                        "environment variable {var} is not set (write ${{{var}:-default}} to give a default)"
                    ))
                }
            }
            rest = &r[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

impl PipelineFile {
    /// Reads and structurally validates a pipeline file.
    pub fn load(path: &Path) -> Result<PipelineFile, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: path.to_path_buf(),
                pos: Pos::default(),
                kind: ErrorKind::Io,
                message: format!("cannot read pipeline file: {e}"),
            }])
        })?;
        Self::parse(path, &text, &|v| std::env::var(v).ok())
    }

    /// Parses pipeline text; `path` is used in messages only.
    pub fn parse(
        path: &Path,
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<PipelineFile, ConfigErrors> {
        let mut errs = Errs {
            file: path,
            list: Vec::new(),
        };
        let mut root = match parse_yaml(text) {
            Ok(n) => n,
            Err((pos, msg)) => {
                let kind = if msg.to_lowercase().contains("duplicate") {
                    ErrorKind::DuplicateKey
                } else {
                    ErrorKind::Syntax
                };
                errs.push(pos, kind, msg);
                return Err(ConfigErrors(errs.list));
            }
        };
        let mut env_errs = Vec::new();
        let _ = root.map_strings(&mut |s: &str, pos| -> Result<Value, ()> {
            match substitute_env(s, env) {
                // A scalar that is one whole `${...}` takes the type of what it expands to
                // (`epochs: ${EPOCHS:-200}` is a number); text around a reference keeps it
                // a string.
                Ok(v) if is_single_reference(s) => Ok(crate::yaml::typed_scalar(&v)),
                Ok(v) => Ok(Value::Str(v)),
                Err(m) => {
                    env_errs.push((pos, m));
                    Ok(Value::Str(s.to_string()))
                }
            }
        });
        for (pos, m) in env_errs {
            errs.push(pos, ErrorKind::Env, m);
        }
        let Value::Map(top) = &root.value else {
            errs.push(
                root.pos,
                ErrorKind::WrongType,
                "a pipeline file must be a mapping",
            );
            return Err(ConfigErrors(errs.list));
        };
        for (k, _) in top {
            check_field(&mut errs, k, TOP_FIELDS, "top-level field");
        }
        let name = match root.get("name") {
            Some(n) => match n.as_str() {
                Some(s) if valid_name(s) => s.to_string(),
                Some(s) => {
                    let shown: String = s.chars().take(40).collect();
                    errs.push(
                        n.pos,
                        ErrorKind::WrongType,
                        format!(
                            "`name` must be 1 to {MAX_NAME} letters, digits, `-`, `_` or `.` \
                             (it names the run folders), got {shown:?}{} ({} characters)",
                            if shown.len() < s.len() { "..." } else { "" },
                            s.chars().count()
                        ),
                    );
                    String::new()
                }
                None => {
                    errs.push(
                        n.pos,
                        ErrorKind::WrongType,
                        "`name` must be a non-empty string",
                    );
                    String::new()
                }
            },
            None => path
                .file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_else(|| "pipeline".into()),
        };
        let seed = match root.get("seed") {
            Some(Node {
                value: Value::Int(i),
                ..
            }) if *i >= 0 => *i as u64,
            Some(n) => {
                errs.push(
                    n.pos,
                    ErrorKind::WrongType,
                    format!(
                        "`seed` must be a non-negative integer, not {}",
                        n.type_name()
                    ),
                );
                0
            }
            None => 0,
        };
        let cache = match root.get("cache") {
            Some(n) => match n.as_str() {
                Some(s) => Some(PathBuf::from(s)),
                None => {
                    errs.push(
                        n.pos,
                        ErrorKind::WrongType,
                        "`cache` must be a directory path",
                    );
                    None
                }
            },
            None => None,
        };
        let executor = match root.get("executor") {
            Some(n) => match crate::slurm::parse_executor(&n.to_json()) {
                Ok(e) => e,
                Err(m) => {
                    errs.push(n.pos, ErrorKind::WrongType, m);
                    Default::default()
                }
            },
            None => Default::default(),
        };
        let stages = parse_stages(&mut errs, &root);
        let (mut variants, mut explicit_variants) = parse_variants(&mut errs, &root);
        let default_variants =
            parse_default_variants(&mut errs, &root, explicit_variants.then_some(&variants));
        if let Some((stage, k, pos)) = parse_cross_validation(&mut errs, &root, &stages) {
            // Every variant once per fold: `<variant>:f<i>` (`cv:f<i>` without variants), the
            // source stage told to split by k-fold and which fold is `val`. Those params only
            // assign splits, so the folds share every per-case item.
            let set = |param: &str, value: Value| Override {
                stage: stage.clone(),
                param: param.into(),
                value: Node::new(value, pos),
                pos,
                origin: "cross_validation".into(),
            };
            variants = variants
                .iter()
                .flat_map(|v| {
                    let set = &set;
                    (0..k).map(move |i| {
                        let mut overrides = v.overrides.clone();
                        overrides.push(set("split", Value::Str("kfold".into())));
                        overrides.push(set("folds", Value::Int(k as i64)));
                        overrides.push(set("fold", Value::Int(i as i64)));
                        VariantSpec {
                            name: if explicit_variants {
                                format!("{}:f{i}", v.name)
                            } else {
                                format!("cv:f{i}")
                            },
                            overrides,
                            ..v.clone()
                        }
                    })
                })
                .collect();
            explicit_variants = true;
        }
        if let Some(seeds) = parse_seeds(&mut errs, &root) {
            variants = seed_copies(&variants, &seeds, explicit_variants);
            explicit_variants = true;
        }
        if errs.list.is_empty() {
            check_graph(&mut errs, &stages);
        }
        if !errs.list.is_empty() {
            return Err(ConfigErrors(errs.list));
        }
        Ok(PipelineFile {
            path: path.to_path_buf(),
            name,
            seed,
            cache: cache.map(|c| match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.join(c),
                _ => c,
            }),
            stages,
            variants,
            explicit_variants,
            default_variants,
            executor,
        })
    }

    /// Replaces the file's `seeds:` (or adds one): every variant once per seed,
    /// `<variant>@<seed>`, as if the file listed `seeds` (`pipeline run --set seeds=...`).
    pub fn replace_seeds(&mut self, seeds: &[u64]) {
        let mut bases: Vec<VariantSpec> = Vec::new();
        for v in &self.variants {
            let base = match v.seed {
                Some(_) => v.name.rsplit_once('@').map_or(v.name.as_str(), |(b, _)| b),
                None => v.name.as_str(),
            };
            if !bases.iter().any(|b| b.name == base) {
                bases.push(VariantSpec {
                    name: base.to_string(),
                    seed: None,
                    ..v.clone()
                });
            }
        }
        self.variants = seed_copies(&bases, seeds, self.explicit_variants);
        self.explicit_variants = true;
    }

    /// The directory relative paths in the file are resolved against.
    pub fn base_dir(&self) -> PathBuf {
        match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    pub fn stage(&self, id: &str) -> Option<&StageSpec> {
        self.stages.iter().find(|s| s.id == id)
    }

    /// An error about this file at `pos`.
    pub fn error(&self, pos: Pos, kind: ErrorKind, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.path.clone(),
            pos,
            kind,
            message: message.into(),
        }
    }

    /// Validates every stage's params (with each variant's and the command line's overrides)
    /// against the registry. Returns all problems at once.
    pub fn validate(&self, registry: &Registry, sets: &[Override]) -> Result<(), ConfigErrors> {
        crate::resolve::resolve(self, registry, sets).map(|_| ())
    }
}

fn parse_yaml(text: &str) -> Result<Node, (Pos, String)> {
    yaml::parse(text).map_err(|e| (e.pos.unwrap_or(Pos { line: 1, column: 1 }), e.message))
}

fn check_field(errs: &mut Errs, k: &Key, allowed: &[&str], what: &str) {
    if !allowed.contains(&k.name.as_str()) {
        let hint = nearest(&k.name, allowed.iter().copied())
            .map(|n| format!(" (did you mean `{n}`?)"))
            .unwrap_or_default();
        errs.push(
            k.pos,
            ErrorKind::UnknownField,
            format!(
                "unknown {what} `{}`{hint}; expected one of: {}",
                k.name,
                allowed.join(", ")
            ),
        );
    }
}

fn parse_stages(errs: &mut Errs, root: &Node) -> Vec<StageSpec> {
    let Some(stages) = root.get("stages") else {
        errs.push(
            root.pos,
            ErrorKind::MissingField,
            "missing `stages:` (a mapping of stage id to stage)",
        );
        return Vec::new();
    };
    let Value::Map(entries) = &stages.value else {
        errs.push(
            stages.pos,
            ErrorKind::WrongType,
            format!("`stages` must be a mapping, not {}", stages.type_name()),
        );
        return Vec::new();
    };
    let mut out = Vec::new();
    for (key, node) in entries {
        let id = key.name.clone();
        if id.contains('.') || id.is_empty() {
            errs.push(
                key.pos,
                ErrorKind::WrongType,
                format!("stage id `{id}` must be non-empty and contain no `.`"),
            );
        }
        let Value::Map(fields) = &node.value else {
            errs.push(
                node.pos,
                ErrorKind::WrongType,
                format!("stage `{id}` must be a mapping with `stage:`"),
            );
            continue;
        };
        for (k, _) in fields {
            check_field(errs, k, STAGE_FIELDS, &format!("field of stage `{id}`"));
        }
        // `stage:` names the stage to run; `plugin:` is its old name (a plugin is the family
        // that registers stages), still read, with a deprecation warning.
        let named = match (node.get("stage"), node.get("plugin")) {
            (Some(_), Some(p)) => {
                errs.push(
                    p.pos,
                    ErrorKind::UnknownField,
                    format!("stage `{id}` has both `stage:` and `plugin:`; keep `stage:`"),
                );
                continue;
            }
            (Some(s), None) => Some(s),
            (None, Some(p)) => {
                tracing::warn!(
                    "{}:{}:{}: `plugin:` is deprecated, write `stage: {}` (it names a stage; \
                     plugins are the families that register stages)",
                    errs.file.display(),
                    p.pos.line,
                    p.pos.column,
                    p.as_str().unwrap_or("...")
                );
                Some(p)
            }
            (None, None) => None,
        };
        let (plugin, plugin_pos) = match named {
            Some(p) => match p.as_str() {
                Some(s) => (s.to_string(), p.pos),
                None => {
                    errs.push(
                        p.pos,
                        ErrorKind::WrongType,
                        format!("`stage` of stage `{id}` must be a string (a stage name)"),
                    );
                    continue;
                }
            },
            None => {
                errs.push(
                    key.pos,
                    ErrorKind::MissingField,
                    format!("stage `{id}` has no `stage:` (which stage to run)"),
                );
                continue;
            }
        };
        let params = match node.get("params") {
            Some(p) if matches!(p.value, Value::Map(_)) => p.clone(),
            Some(Node {
                value: Value::Null,
                pos,
            }) => Node::new(Value::Map(vec![]), *pos),
            Some(p) => {
                errs.push(
                    p.pos,
                    ErrorKind::WrongType,
                    format!("`params` of stage `{id}` must be a mapping"),
                );
                continue;
            }
            None => Node::new(Value::Map(vec![]), key.pos),
        };
        let mut after = Vec::new();
        match node.get("after") {
            None => {}
            Some(Node {
                value: Value::Str(s),
                pos,
            }) => after.push((s.clone(), *pos)),
            Some(Node {
                value: Value::Seq(items),
                ..
            }) => {
                for it in items {
                    match it.as_str() {
                        Some(s) => after.push((s.to_string(), it.pos)),
                        None => errs.push(
                            it.pos,
                            ErrorKind::WrongType,
                            "`after` lists stage ids (strings)",
                        ),
                    }
                }
            }
            Some(n) => errs.push(
                n.pos,
                ErrorKind::WrongType,
                "`after` must be a stage id or a list of them",
            ),
        }
        let resources = match node.get("resources") {
            None => None,
            Some(n) => match crate::slurm::parse_resources(&n.to_json()) {
                Ok(r) => Some(r),
                Err(m) => {
                    errs.push(
                        n.pos,
                        ErrorKind::WrongType,
                        format!("`resources` of stage `{id}`: {m}"),
                    );
                    None
                }
            },
        };
        out.push(StageSpec {
            id,
            pos: key.pos,
            plugin,
            plugin_pos,
            params,
            after,
            resources,
        });
    }
    out
}

/// Splits `stage.param` into its parts.
pub fn split_target(s: &str) -> Option<(&str, &str)> {
    let (a, b) = s.split_once('.')?;
    (!a.is_empty() && !b.is_empty()).then_some((a, b))
}

fn parse_variants(errs: &mut Errs, root: &Node) -> (Vec<VariantSpec>, bool) {
    let default = vec![VariantSpec {
        name: "default".into(),
        pos: Pos::default(),
        overrides: vec![],
        seed: None,
    }];
    let Some(vnode) = root.get("variants") else {
        return (default, false);
    };
    let Value::Map(entries) = &vnode.value else {
        errs.push(
            vnode.pos,
            ErrorKind::WrongType,
            "`variants` must be a mapping of name to overrides",
        );
        return (default, false);
    };
    if entries.is_empty() {
        return (default, false);
    }
    let mut out = Vec::new();
    for (key, node) in entries {
        let mut overrides = Vec::new();
        match &node.value {
            Value::Map(m) => {
                for (k, v) in m {
                    match split_target(&k.name) {
                        Some((s, p)) => overrides.push(Override {
                            stage: s.to_string(),
                            param: p.to_string(),
                            value: v.clone(),
                            pos: k.pos,
                            origin: format!("variant `{}`", key.name),
                        }),
                        None => errs.push(
                            k.pos,
                            ErrorKind::BadVariant,
                            format!(
                                "override `{}` in variant `{}` must be written `stage.param`",
                                k.name, key.name
                            ),
                        ),
                    }
                }
            }
            Value::Null => {}
            _ => errs.push(
                node.pos,
                ErrorKind::WrongType,
                format!(
                    "variant `{}` must be a mapping of `stage.param: value`",
                    key.name
                ),
            ),
        }
        if key.name.contains('@') || key.name.contains(':') {
            errs.push(
                key.pos,
                ErrorKind::BadVariant,
                format!(
                    "variant name `{}`: `@` is kept for seeds and `:` for cross-validation folds",
                    key.name
                ),
            );
        }
        out.push(VariantSpec {
            name: key.name.clone(),
            pos: key.pos,
            overrides,
            seed: None,
        });
    }
    (out, true)
}

/// `cross_validation: {stage: load, folds: 5}`: the source stage whose cases are split
/// and the number of folds (2 or more).
fn parse_cross_validation(
    errs: &mut Errs,
    root: &Node,
    stages: &[StageSpec],
) -> Option<(String, usize, Pos)> {
    let node = root.get("cross_validation")?;
    let usage = "`cross_validation` is a mapping: {stage: <the load stage>, folds: <2 or more>}";
    let Value::Map(fields) = &node.value else {
        errs.push(node.pos, ErrorKind::WrongType, usage);
        return None;
    };
    for (k, _) in fields {
        if k.name != "stage" && k.name != "folds" {
            errs.push(
                k.pos,
                ErrorKind::WrongType,
                format!("`cross_validation.{}` is not a field; {usage}", k.name),
            );
        }
    }
    let stage = match node.get("stage").map(|n| (&n.value, n.pos)) {
        Some((Value::Str(s), pos)) => {
            if !stages.iter().any(|st| st.id == *s) {
                errs.push(
                    pos,
                    ErrorKind::WrongType,
                    format!("`cross_validation.stage`: no stage `{s}` in this file"),
                );
                return None;
            }
            s.clone()
        }
        _ => {
            errs.push(node.pos, ErrorKind::WrongType, usage);
            return None;
        }
    };
    let folds = match node.get("folds").map(|n| (&n.value, n.pos)) {
        Some((Value::Int(k), _)) if *k >= 2 => *k as usize,
        Some((_, pos)) => {
            errs.push(
                pos,
                ErrorKind::WrongType,
                "`cross_validation.folds` is a whole number, 2 or more",
            );
            return None;
        }
        None => {
            errs.push(node.pos, ErrorKind::WrongType, usage);
            return None;
        }
    };
    Some((stage, folds, node.pos))
}

/// Every variant once per seed: `<variant>@<seed>` (`seed@<seed>` for a file without
/// variants).
fn seed_copies(variants: &[VariantSpec], seeds: &[u64], explicit: bool) -> Vec<VariantSpec> {
    variants
        .iter()
        .flat_map(|v| {
            seeds.iter().map(move |&s| VariantSpec {
                name: if explicit {
                    format!("{}@{s}", v.name)
                } else {
                    format!("seed@{s}")
                },
                seed: Some(s),
                ..v.clone()
            })
        })
        .collect()
}

/// `default_variants: [a, b]`: distinct names of the file's `variants:`.
fn parse_default_variants(
    errs: &mut Errs,
    root: &Node,
    variants: Option<&Vec<VariantSpec>>,
) -> Option<Vec<String>> {
    let node = root.get("default_variants")?;
    let Value::Seq(items) = &node.value else {
        errs.push(
            node.pos,
            ErrorKind::WrongType,
            "`default_variants` must be a list of variant names, e.g. [dice, joint]",
        );
        return None;
    };
    let Some(variants) = variants else {
        errs.push(
            node.pos,
            ErrorKind::BadVariant,
            "`default_variants` needs `variants:` to choose from",
        );
        return None;
    };
    let mut out: Vec<String> = Vec::new();
    for it in items {
        match it.as_str() {
            Some(n) if out.iter().any(|o| o == n) => errs.push(
                it.pos,
                ErrorKind::BadVariant,
                format!("`{n}` is listed twice in `default_variants`"),
            ),
            Some(n) if variants.iter().any(|v| v.name == n) => out.push(n.to_string()),
            Some(n) => {
                let names: Vec<&str> = variants.iter().map(|v| v.name.as_str()).collect();
                errs.push(
                    it.pos,
                    ErrorKind::BadVariant,
                    format!(
                        "default variant `{n}` is not in `variants:`; it has: {}",
                        names.join(", ")
                    ),
                )
            }
            None => errs.push(it.pos, ErrorKind::WrongType, "a variant name is a string"),
        }
    }
    if items.is_empty() {
        errs.push(
            node.pos,
            ErrorKind::BadVariant,
            "`default_variants` lists no variant",
        );
    }
    Some(out)
}

/// `seeds: [1, 2, 3]`: distinct non-negative integers.
fn parse_seeds(errs: &mut Errs, root: &Node) -> Option<Vec<u64>> {
    let node = root.get("seeds")?;
    let Value::Seq(items) = &node.value else {
        errs.push(
            node.pos,
            ErrorKind::WrongType,
            "`seeds` must be a list of non-negative integers, e.g. [1, 2, 3]",
        );
        return None;
    };
    let mut out = Vec::new();
    for it in items {
        match it.value {
            Value::Int(i) if i >= 0 && !out.contains(&(i as u64)) => out.push(i as u64),
            Value::Int(i) if i >= 0 => errs.push(
                it.pos,
                ErrorKind::WrongType,
                format!("seed {i} is listed twice"),
            ),
            _ => errs.push(
                it.pos,
                ErrorKind::WrongType,
                "a seed is a non-negative integer",
            ),
        }
    }
    if out.is_empty() {
        errs.push(node.pos, ErrorKind::WrongType, "`seeds` lists no seed");
        return None;
    }
    Some(out)
}

/// Unknown dependencies and cycles.
fn check_graph(errs: &mut Errs, stages: &[StageSpec]) {
    let ids: Vec<&str> = stages.iter().map(|s| s.id.as_str()).collect();
    let mut ok = true;
    for s in stages {
        for (dep, pos) in &s.after {
            if !ids.contains(&dep.as_str()) {
                ok = false;
                let hint = nearest(dep, ids.iter().copied())
                    .map(|n| format!(" (did you mean `{n}`?)"))
                    .unwrap_or_default();
                errs.push(*pos, ErrorKind::UnknownDependency, format!("stage `{}` runs after `{dep}`, which is not a stage of this pipeline{hint}", s.id));
            } else if dep == &s.id {
                ok = false;
                errs.push(
                    *pos,
                    ErrorKind::Cycle,
                    format!("stage `{}` depends on itself", s.id),
                );
            }
        }
    }
    if !ok {
        return;
    }
    if let Some(cycle) = find_cycle(stages) {
        let first = stages
            .iter()
            .find(|s| s.id == cycle[0])
            .map(|s| s.pos)
            .unwrap_or_default();
        errs.push(
            first,
            ErrorKind::Cycle,
            format!(
                "dependency cycle: {} (each runs after the next)",
                cycle.join(" -> ")
            ),
        );
    }
}

/// A cycle as stage ids, first repeated at the end; `None` if the graph is acyclic.
fn find_cycle(stages: &[StageSpec]) -> Option<Vec<String>> {
    let idx = |id: &str| stages.iter().position(|s| s.id == id);
    // 0 = unvisited, 1 = on the stack, 2 = done
    let mut state = vec![0u8; stages.len()];
    let mut stack: Vec<usize> = Vec::new();
    fn dfs(
        i: usize,
        stages: &[StageSpec],
        idx: &dyn Fn(&str) -> Option<usize>,
        state: &mut [u8],
        stack: &mut Vec<usize>,
    ) -> Option<Vec<String>> {
        state[i] = 1;
        stack.push(i);
        for (dep, _) in &stages[i].after {
            let j = idx(dep)?;
            if state[j] == 1 {
                let start = stack.iter().position(|&k| k == j).unwrap_or(0);
                let mut c: Vec<usize> = stack[start..].to_vec();
                // Start at the stage written first in the file.
                let first = c
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, &k)| k)
                    .map(|(p, _)| p)
                    .unwrap_or(0);
                c.rotate_left(first);
                let mut names: Vec<String> = c.iter().map(|&k| stages[k].id.clone()).collect();
                names.push(names[0].clone());
                return Some(names);
            }
            if state[j] == 0 {
                if let Some(c) = dfs(j, stages, idx, state, stack) {
                    return Some(c);
                }
            }
        }
        stack.pop();
        state[i] = 2;
        None
    }
    for i in 0..stages.len() {
        if state[i] == 0 {
            if let Some(c) = dfs(i, stages, &idx, &mut state, &mut stack) {
                return Some(c);
            }
        }
    }
    None
}

/// Parses `stage.param=value` from the command line.
pub fn parse_set(s: &str) -> Result<Override, String> {
    let (target, value) = s
        .split_once('=')
        .ok_or_else(|| format!("--set {s}: expected stage.param=value"))?;
    let (stage, param) = split_target(target.trim())
        .ok_or_else(|| format!("--set {s}: expected stage.param=value"))?;
    Ok(Override {
        stage: stage.to_string(),
        param: param.to_string(),
        value: yaml::parse_scalar(value.trim()),
        pos: Pos::default(),
        origin: format!("--set {target}"),
    })
}

/// Longest pipeline `name` (it is part of every run folder's name).
const MAX_NAME: usize = 64;

/// A pipeline name that is safe as part of a folder name on every system.
fn valid_name(s: &str) -> bool {
    (1..=MAX_NAME).contains(&s.len())
        && !s.starts_with('.')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn env_substitution() {
        let env = |v: &str| (v == "ROOT").then(|| "/data".to_string());
        assert_eq!(substitute_env("${ROOT}/x", &env).unwrap(), "/data/x");
        assert_eq!(substitute_env("${NOPE:-/d}/x", &env).unwrap(), "/d/x");
        assert_eq!(substitute_env("$${ROOT}", &env).unwrap(), "${ROOT}");
        assert!(is_single_reference("${EPOCHS:-200}"));
        assert!(!is_single_reference("${A}/${B}"));
        assert!(!is_single_reference("x${A}"));
        assert!(matches!(crate::yaml::typed_scalar("200"), Value::Int(200)));
        assert!(matches!(crate::yaml::typed_scalar("5e-4"), Value::Float(f) if f == 5e-4));
        assert!(matches!(
            crate::yaml::typed_scalar("true"),
            Value::Bool(true)
        ));
        assert!(matches!(crate::yaml::typed_scalar("inf"), Value::Str(_)));
        assert!(matches!(
            crate::yaml::typed_scalar("../data"),
            Value::Str(_)
        ));
        assert_eq!(substitute_env("cost $5", &env).unwrap(), "cost $5");
        assert!(substitute_env("${NOPE}", &env)
            .unwrap_err()
            .contains("NOPE"));
        assert!(substitute_env("${bad-name}", &env).is_err());
    }

    #[test]
    fn cycle_is_named() {
        let text = "stages:\n  a: {plugin: p, after: [c]}\n  b: {plugin: p, after: [a]}\n  c: {plugin: p, after: [b]}\n";
        let e = PipelineFile::parse(Path::new("x.yaml"), text, &no_env).unwrap_err();
        assert_eq!(e.kinds(), vec![ErrorKind::Cycle]);
        let m = &e.0[0].message;
        assert!(m.contains("a") && m.contains("b") && m.contains("c"), "{m}");
    }

    #[test]
    fn default_variants_name_variants_once() {
        let file = |defaults: &str, variants: &str| {
            format!("{defaults}\nstages:\n  s: {{plugin: p}}\n{variants}")
        };
        let two = "variants:\n  a: {s.n: 1}\n  b: {s.n: 2}\n";
        let ok = PipelineFile::parse(
            Path::new("x.yaml"),
            &file("default_variants: [b]", two),
            &no_env,
        )
        .unwrap();
        assert_eq!(ok.default_variants, Some(vec!["b".to_string()]));
        let none = PipelineFile::parse(Path::new("x.yaml"), &file("", two), &no_env).unwrap();
        assert_eq!(none.default_variants, None);
        for (defaults, variants, want) in [
            ("default_variants: [a, a]", two, "listed twice"),
            (
                "default_variants: [c]",
                two,
                "`c` is not in `variants:`; it has: a, b",
            ),
            ("default_variants: [a]", "", "needs `variants:`"),
            ("default_variants: []", two, "lists no variant"),
            ("default_variants: a", two, "must be a list"),
        ] {
            let e = PipelineFile::parse(Path::new("x.yaml"), &file(defaults, variants), &no_env)
                .unwrap_err();
            assert_eq!(e.0.len(), 1, "{defaults}: {e:?}");
            assert!(
                e.0[0].message.contains(want),
                "{defaults}: {}",
                e.0[0].message
            );
            assert_eq!(e.0[0].pos.line, 1, "{defaults}");
        }
    }

    #[test]
    fn set_parsing() {
        let o = parse_set("train.epochs=5").unwrap();
        assert_eq!((o.stage.as_str(), o.param.as_str()), ("train", "epochs"));
        assert_eq!(o.value.value, Value::Int(5));
        assert!(parse_set("epochs=5").is_err());
        assert!(parse_set("train.epochs").is_err());
    }
}

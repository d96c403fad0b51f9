//! The stage contract: what a plugin implements, and the registry that finds stages by name.
//!
//! The core knows no stage by name. A plugin crate implements [`Plugin`], whose `register`
//! adds one [`StageFactory`] per stage; the `pipeline` binary lists the plugins it ships.

use crate::data::{CaseDataItem, Kind, SdmSetItem};
use crate::item::Item;
use serde::de::DeserializeOwned;
use serde::Serialize;
use shapeflow_volume::{CaseData, SdmSet};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

/// How a stage maps inputs to outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Shape {
    /// Finds the cases (no inputs) and produces one item per case.
    Source,
    /// One item per case from the same case's inputs (plus any whole-dataset inputs).
    PerCase,
    /// One whole-dataset item from all cases' inputs (a model, a report).
    Gather,
}

/// A case as a source stage found it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CaseInfo {
    /// Unique within the pipeline, e.g. `0522c0057`.
    pub id: String,
    /// `train`, `val`, `test`, or none.
    pub split: Option<String>,
    /// Changes whenever the case's source data changes (file sizes, times, content hash).
    pub fingerprint: String,
}

/// Set on Ctrl-C: stages stop between items (long stages also check it inside).
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Progress bars a long stage may add under its own (hidden when stderr is no terminal).
#[derive(Clone, Default)]
pub struct Progress(Option<indicatif::MultiProgress>);

impl Progress {
    pub fn new(bars: indicatif::MultiProgress) -> Self {
        Progress(Some(bars))
    }

    /// A bar of `len` steps labelled `prefix`, showing its message (e.g. loss and lr).
    pub fn bar(&self, len: u64, prefix: &str) -> indicatif::ProgressBar {
        let Some(m) = &self.0 else {
            return indicatif::ProgressBar::hidden();
        };
        let bar = m.add(indicatif::ProgressBar::new(len));
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix:>24.bold} [{bar:30}] {pos}/{len} {elapsed}<{eta} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_prefix(prefix.to_string());
        bar
    }
}

/// What a stage may know while it is built from its params.
#[derive(Debug, Clone)]
pub struct BuildCtx {
    /// The pipeline file's directory: relative paths in params are relative to it.
    pub base_dir: PathBuf,
}

impl BuildCtx {
    /// `p` resolved against [`BuildCtx::base_dir`] unless absolute.
    pub fn path(&self, p: &str) -> PathBuf {
        self.base_dir.join(p)
    }
}

/// What a running stage may know about its run.
pub struct StageCtx<'a> {
    /// The pipeline file's directory: relative paths in params are relative to it.
    pub base_dir: PathBuf,
    /// The stage id in the pipeline file.
    pub stage_id: &'a str,
    /// The pipeline's seed.
    pub seed: u64,
    /// A private scratch directory for this stage and item, removed afterwards.
    pub scratch: PathBuf,
    /// The run directory (`runs/<time>-<name>`).
    pub run_dir: PathBuf,
    /// Where this stage writes files for people: `<run_dir>/<stage id>`, plus
    /// `/<variant>[+<variant>...]` when the pipeline has variants that this stage instance
    /// does not all serve.
    pub output_dir: PathBuf,
    /// A directory that survives an interrupted run of this very item (same cache key):
    /// `<cache>/work/<key>`. Long stages keep resumable state here (training checkpoints);
    /// the engine removes it once the item is stored.
    pub work_dir: PathBuf,
    pub cancel: &'a CancelToken,
    /// Extra progress bars (training epochs).
    pub progress: Progress,
}

/// A declared input of a stage: a role (`cases`, `sdms`, `model`), the [`Kind`] of data it
/// takes, and optionally the stage id a param names for it. `validate` binds every port to
/// one of the stage's `after:` dependencies before anything runs: the named one, else the
/// first whose output is of exactly this kind, else the first whose output this port takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    pub name: &'static str,
    pub kind: Kind,
    /// The stage id given by a param (e.g. `cases: resample`), and that param's name.
    pub from: Option<(String, &'static str)>,
    pub required: bool,
}

impl Port {
    /// A required port.
    pub fn new(name: &'static str, kind: Kind) -> Self {
        Port {
            name,
            kind,
            from: None,
            required: true,
        }
    }

    /// A port that may stay unbound.
    pub fn optional(mut self) -> Self {
        self.required = false;
        self
    }

    /// Bound to the stage id in param `param`, when that param is set.
    pub fn from_param(mut self, param: &'static str, value: Option<&str>) -> Self {
        self.from = value.map(|v| (v.to_string(), param));
        self
    }
}

/// Loads a dependency's item on demand (from the cache).
pub type Loader = Arc<dyn Fn() -> Result<Item, StageError> + Send + Sync>;

/// One dependency's item: at hand, or loaded when first asked for.
enum Slot {
    Ready(Arc<Item>),
    Lazy {
        loaded: OnceLock<Arc<Item>>,
        load: Loader,
    },
}

/// A stage's inputs for one case: one item per dependency, in `after` order, and which
/// dependency each declared [`Port`] is bound to.
///
/// A whole-dataset stage's per-case inputs are lazy: nothing is decoded until the stage asks.
/// [`Inputs::case`] and [`Inputs::sdms`] then load without keeping (memory is the caller's:
/// drop the value and it is gone); [`Inputs::get`] / [`Inputs::port`] keep what they load.
#[derive(Default)]
pub struct Inputs {
    items: Vec<(String, Slot)>,
    /// port name -> stage id.
    bindings: Arc<Vec<(String, String)>>,
}

impl Inputs {
    pub fn new(items: Vec<(String, Arc<Item>)>) -> Self {
        Inputs {
            items: items
                .into_iter()
                .map(|(s, i)| (s, Slot::Ready(i)))
                .collect(),
            bindings: Arc::default(),
        }
    }

    /// Adds dependency `stage`'s item.
    pub fn push(&mut self, stage: String, item: Arc<Item>) {
        self.items.push((stage, Slot::Ready(item)));
    }

    /// Adds dependency `stage`, whose item `load` reads when first needed.
    pub fn push_lazy(&mut self, stage: String, load: Loader) {
        self.items.push((
            stage,
            Slot::Lazy {
                loaded: OnceLock::new(),
                load,
            },
        ));
    }

    /// With the port bindings `validate` made.
    pub fn with_bindings(mut self, bindings: Arc<Vec<(String, String)>>) -> Self {
        self.bindings = bindings;
        self
    }

    fn slot(&self, stage: &str) -> Option<&Slot> {
        self.items.iter().find(|(s, _)| s == stage).map(|(_, i)| i)
    }

    fn kept(slot: &Slot) -> Result<&Item, StageError> {
        match slot {
            Slot::Ready(i) => Ok(i),
            Slot::Lazy { loaded, load } => {
                if loaded.get().is_none() {
                    let _ = loaded.set(Arc::new(load()?));
                }
                loaded
                    .get()
                    .map(|i| i.as_ref())
                    .ok_or_else(|| StageError::msg("an input could not be kept"))
            }
        }
    }

    /// The item of dependency `stage` (loaded and kept, if lazy; `None` if it cannot be read).
    pub fn get(&self, stage: &str) -> Option<&Item> {
        self.slot(stage).and_then(|s| Self::kept(s).ok())
    }

    /// The stage id bound to `port`, if any.
    pub fn bound(&self, port: &str) -> Option<&str> {
        self.bindings
            .iter()
            .find(|(p, _)| p == port)
            .map(|(_, s)| s.as_str())
    }

    /// The item bound to `port`, if the port is bound and its stage's item is among these
    /// inputs (per-case and whole-dataset inputs are passed apart).
    pub fn port_opt(&self, port: &str) -> Option<&Item> {
        self.bound(port).and_then(|s| self.get(s))
    }

    /// The item bound to `port` (loaded and kept, if lazy).
    pub fn port(&self, port: &str) -> Result<&Item, StageError> {
        let stage = self.bound(port).ok_or_else(|| unbound(port))?;
        let slot = self.slot(stage).ok_or_else(|| unbound(port))?;
        Self::kept(slot).map_err(|e| StageError::msg(format!("input `{port}`: {e}")))
    }

    /// Runs `f` on the item bound to `port` without keeping it (if lazy and not yet kept).
    fn with_port<T>(
        &self,
        port: &str,
        f: impl FnOnce(&Item) -> Result<T, String>,
    ) -> Result<T, StageError> {
        let stage = self.bound(port).ok_or_else(|| unbound(port))?;
        let at = |e: String| StageError::msg(format!("input `{port}`: {e}"));
        match self.slot(stage).ok_or_else(|| unbound(port))? {
            Slot::Ready(i) => f(i).map_err(at),
            Slot::Lazy { loaded, load } => match loaded.get() {
                Some(i) => f(i).map_err(at),
                None => f(&load().map_err(|e| at(e.to_string()))?).map_err(at),
            },
        }
    }

    /// The case bound to `port`; its volumes are shared, not copied, and not kept here.
    pub fn case(&self, port: &str) -> Result<CaseData, StageError> {
        self.with_port(port, |i| CaseData::from_item(i).map_err(|e| e.to_string()))
    }

    /// The signed distance maps bound to `port` (not kept here).
    pub fn sdms(&self, port: &str) -> Result<SdmSet, StageError> {
        self.with_port(port, |i| SdmSet::from_item(i).map_err(|e| e.to_string()))
    }

    /// Every dependency's item (lazy ones loaded and kept; one that cannot be read is left out).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Item)> {
        self.items
            .iter()
            .filter_map(|(s, i)| Some((s.as_str(), Self::kept(i).ok()?)))
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

fn unbound(port: &str) -> StageError {
    StageError::msg(format!(
        "input `{port}` is not bound (list its stage under `after`)"
    ))
}

/// A stage failed. The message should name the file, case or field at fault.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("{0}")]
    Message(String),
    #[error("cancelled")]
    Cancelled,
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl StageError {
    pub fn msg(m: impl Into<String>) -> Self {
        StageError::Message(m.into())
    }
}

/// A configured stage, ready to run.
pub trait Stage: Send + Sync {
    fn shape(&self) -> Shape;

    /// The kind of data this stage produces; `validate` checks it against the ports of the
    /// stages that list this one under `after`.
    fn output(&self) -> Kind;

    /// The inputs this stage reads, bound at `validate` to its `after:` dependencies.
    /// Empty: a source. A port of kind [`Kind::Any`] takes every remaining dependency.
    fn ports(&self) -> Vec<Port>;

    /// Whether outputs go to the cache (false: recomputed every run, kept in memory).
    fn cached(&self) -> bool {
        true
    }

    /// A resource the stage holds exclusively while it runs (e.g. `gpu`).
    fn resource(&self) -> Option<String> {
        None
    }

    /// Whether the pipeline seed changes this stage's output (then it is part of the key).
    fn uses_seed(&self) -> bool {
        false
    }

    /// Extra text hashed into every key of this stage: what its params only name, such as
    /// the content of a script file an `exec` stage runs.
    fn key_material(&self) -> String {
        String::new()
    }

    /// Whether the stage processes `case` (e.g. only the training split).
    fn accepts(&self, _case: &CaseInfo) -> bool {
        true
    }

    /// [`Shape::Source`] only: lists the cases. Must be cheap: `plan` calls it too.
    fn discover(&self, _ctx: &StageCtx) -> Result<Vec<CaseInfo>, StageError> {
        Err(StageError::msg("this stage is not a source"))
    }

    /// [`Shape::Source`] and [`Shape::PerCase`]: the item for one case.
    fn run_case(
        &self,
        _ctx: &StageCtx,
        _case: &CaseInfo,
        _inputs: &Inputs,
    ) -> Result<Item, StageError> {
        Err(StageError::msg("this stage does not run per case"))
    }

    /// [`Shape::Gather`]: writes this stage's files for people (in `ctx.output_dir`) for an
    /// item the run took from the cache, so a run that reuses a trained model still shows
    /// it. Default: nothing.
    fn publish(&self, _ctx: &StageCtx, _item: &Item) -> Result<(), StageError> {
        Ok(())
    }

    /// [`Shape::Gather`] only: called once after a run in which this stage id ran for several
    /// variants and every one of them finished, with each variant's item, so that a stage
    /// can compare variants (the ablation table). Default: nothing.
    fn combine_variants(
        &self,
        _ctx: &StageCtx,
        _outputs: &[(String, Arc<Item>)],
    ) -> Result<(), StageError> {
        Ok(())
    }

    /// [`Shape::Gather`]: one item from all cases. `global` holds whole-dataset inputs.
    fn run_all(
        &self,
        _ctx: &StageCtx,
        _cases: &[(CaseInfo, Inputs)],
        _global: &Inputs,
    ) -> Result<Item, StageError> {
        Err(StageError::msg("this stage does not gather"))
    }
}

/// One documented parameter of a stage, read from its params struct (doc comments and
/// types through `schemars`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ParamDoc {
    pub name: String,
    /// Type as a user reads it: `integer`, `number`, `string`, `list of strings`, ...
    pub ty: String,
    pub doc: String,
    /// The default, or `null` when the param is required.
    pub default: serde_json::Value,
    /// Execution-only: says how to run, not what comes out (threads, batch sizes). Not part
    /// of the cache key; still validated and recorded in the manifest.
    pub execution: bool,
    /// Assignment-only (sources): decides which split each case is in, not what a case's
    /// item holds. Not part of the items' keys (so variants that differ only in it, such as
    /// cross-validation folds, share every per-case item), but part of the stage's identity,
    /// and the split of every case a whole-dataset stage reads is part of its key.
    pub assignment: bool,
    /// Locator (sources): where the inputs are, not what they hold (their content is
    /// fingerprinted), e.g. a dataset's root folder. Like an assignment-only param: part of
    /// the stage's identity, not of its items' keys, so a dataset moved elsewhere is served
    /// from the cache.
    pub locator: bool,
    /// Keyed only when set: at its default the param is left out of the cache key, so that
    /// items computed before it was added keep their keys (a param added later, whose
    /// default is the behaviour from before).
    pub key_omits_default: bool,
    /// Per case (sources): names the cases it changes, and the stage folds what it asks of
    /// a case into that case's fingerprint (`CaseInfo::fingerprint`). Not part of the
    /// items' keys, so setting it recomputes only the cases it names.
    pub per_case: bool,
}

/// The schema extension that marks a param execution-only:
/// `#[schemars(extend("x-execution" = true))]` on the field.
pub const EXECUTION_MARK: &str = "x-execution";

/// The schema extension that marks a param assignment-only (see [`ParamDoc::assignment`]):
/// `#[schemars(extend("x-assignment" = true))]` on the field.
pub const ASSIGNMENT_MARK: &str = "x-assignment";

/// The schema extension that marks a param a locator (see [`ParamDoc::locator`]):
/// `#[schemars(extend("x-locator" = true))]` on the field.
pub const LOCATOR_MARK: &str = "x-locator";

/// The schema extension that marks a param per case (see [`ParamDoc::per_case`]):
/// `#[schemars(extend("x-per-case" = true))]` on the field.
pub const PER_CASE_MARK: &str = "x-per-case";

/// The schema extension that marks a param keyed only when set (see
/// [`ParamDoc::key_omits_default`]): `#[schemars(extend("x-key-omits-default" = true))]`.
pub const KEY_OMITS_DEFAULT_MARK: &str = "x-key-omits-default";

/// The params a stage declares, in declaration order, from `P`'s JSON schema.
pub fn param_docs<P: Params>() -> Vec<ParamDoc> {
    let schema = schemars::schema_for!(P);
    let root = schema.as_value();
    let defs = root
        .get("$defs")
        .and_then(|d| d.as_object())
        .cloned()
        .unwrap_or_default();
    let defaults = serde_json::to_value(P::default()).unwrap_or_default();
    let Some(props) = root.get("properties").and_then(|p| p.as_object()) else {
        return Vec::new();
    };
    props
        .iter()
        .map(|(name, s)| {
            let mut doc = s
                .get("description")
                .and_then(|d| d.as_str())
                .unwrap_or_default()
                .to_string();
            // A nested mapping lists its own fields.
            if let Some(fields) = resolve(s, &defs)
                .get("properties")
                .and_then(|p| p.as_object())
            {
                let inner: Vec<String> = fields
                    .iter()
                    .map(|(k, f)| {
                        let d = f.get("description").and_then(|d| d.as_str()).unwrap_or("");
                        let first = d.split(". ").next().unwrap_or("").trim_end_matches('.');
                        if first.is_empty() {
                            k.clone()
                        } else {
                            format!("{k} ({first})")
                        }
                    })
                    .collect();
                if !inner.is_empty() {
                    doc = format!("{doc} Fields: {}.", inner.join("; "));
                }
            }
            ParamDoc {
                name: name.clone(),
                ty: type_label(s, &defs),
                doc: doc.trim().to_string(),
                default: defaults.get(name).cloned().unwrap_or_default(),
                execution: s.get(EXECUTION_MARK).and_then(|v| v.as_bool()) == Some(true),
                assignment: s.get(ASSIGNMENT_MARK).and_then(|v| v.as_bool()) == Some(true),
                locator: s.get(LOCATOR_MARK).and_then(|v| v.as_bool()) == Some(true),
                key_omits_default: s.get(KEY_OMITS_DEFAULT_MARK).and_then(|v| v.as_bool())
                    == Some(true),
                per_case: s.get(PER_CASE_MARK).and_then(|v| v.as_bool()) == Some(true),
            }
        })
        .collect()
}

fn resolve<'a>(
    s: &'a serde_json::Value,
    defs: &'a serde_json::Map<String, serde_json::Value>,
) -> &'a serde_json::Value {
    let target = s.get("$ref").or_else(|| {
        s.get("allOf")
            .and_then(|a| a.as_array())
            .and_then(|a| a.first())
            .and_then(|f| f.get("$ref"))
    });
    match target
        .and_then(|r| r.as_str())
        .and_then(|r| r.strip_prefix("#/$defs/"))
        .and_then(|n| defs.get(n))
    {
        Some(d) => d,
        None => s,
    }
}

/// A schema as a user reads its type.
fn type_label(s: &serde_json::Value, defs: &serde_json::Map<String, serde_json::Value>) -> String {
    let s = resolve(s, defs);
    if let Some(e) = s.get("enum").and_then(|e| e.as_array()) {
        return e.iter().map(scalar).collect::<Vec<_>>().join(" | ");
    }
    if let Some(c) = s.get("const") {
        return scalar(c);
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(alts) = s.get(key).and_then(|a| a.as_array()) {
            let mut labels: Vec<String> = Vec::new();
            for a in alts {
                let l = type_label(a, defs);
                if !labels.contains(&l) {
                    labels.push(l);
                }
            }
            return labels.join(" | ");
        }
    }
    let one = |t: &str| -> String {
        match t {
            "array" => {
                let item = s
                    .get("items")
                    .map(|i| type_label(i, defs))
                    .unwrap_or_else(|| "value".into());
                let (min, max) = (s.get("minItems"), s.get("maxItems"));
                match (min.and_then(|m| m.as_u64()), max.and_then(|m| m.as_u64())) {
                    (Some(3), Some(3)) => format!("[x, y, z] of {item}"),
                    (Some(a), Some(b)) if a == b => format!("list of {a} {item}"),
                    _ => format!("list of {item}"),
                }
            }
            "object" => "mapping".into(),
            other => other.into(),
        }
    };
    match s.get("type") {
        Some(serde_json::Value::String(t)) => one(t),
        Some(serde_json::Value::Array(ts)) => ts
            .iter()
            .filter_map(|t| t.as_str())
            .map(one)
            .collect::<Vec<_>>()
            .join(" or "),
        _ if s.get("properties").is_some() => "mapping".into(),
        _ => "value".into(),
    }
}

fn scalar(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// What a stage's params struct must be: deserialisable from the pipeline file (with
/// `#[serde(deny_unknown_fields, default)]`), serialisable for the key and the manifest,
/// and described by a JSON schema whose doc comments are the params' documentation.
pub trait Params:
    DeserializeOwned + Serialize + Default + schemars::JsonSchema + Send + Sync + 'static
{
}

impl<T> Params for T where
    T: DeserializeOwned + Serialize + Default + schemars::JsonSchema + Send + Sync + 'static
{
}

/// A param failed to validate. `path` leads from the params mapping to the bad value.
#[derive(Debug, Clone)]
pub struct ParamError {
    pub path: Vec<String>,
    pub message: String,
}

/// A stage that [`StageFactory::build`] made, with its params in canonical form (every
/// param present, defaults filled in).
pub struct Built {
    pub stage: Arc<dyn Stage>,
    /// Every param: what the manifest records.
    pub canonical: serde_json::Value,
    /// The output-defining params only (execution-only ones removed): what the cache key
    /// hashes.
    pub keyed: serde_json::Value,
    /// The assignment-only, locator and per-case params (see [`ParamDoc::assignment`],
    /// [`ParamDoc::locator`], [`ParamDoc::per_case`]): part of the stage's identity, not of
    /// its items' keys.
    pub assignment: serde_json::Value,
}

/// Makes stages of one plugin name from their params.
pub trait StageFactory: Send + Sync {
    /// The name used as `plugin:` in pipeline files.
    fn name(&self) -> &str;
    /// Bumped whenever the stage's output changes meaning; part of every cache key.
    fn version(&self) -> u32;
    /// One line.
    fn summary(&self) -> &str;
    /// The full help: what it computes, how, and its outputs.
    fn help(&self) -> &str;
    fn params(&self) -> Vec<ParamDoc>;
    /// Every param with its default value (required params at their zero value).
    fn default_params(&self) -> serde_json::Value;
    fn build(&self, params: &serde_json::Value, ctx: &BuildCtx) -> Result<Built, ParamError>;
}

/// A family of stages (Bevy's `Plugin`): registers each of its stages once.
pub trait Plugin {
    /// The family's name, e.g. `learn`; named in errors and in `pipeline plugins`.
    fn name(&self) -> &'static str;
    fn register(&self, registry: &mut Registry);
}

/// Two plugins registered the same stage name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stage `{stage}` is registered twice: by plugin `{first}` and by plugin `{second}`")]
pub struct DuplicateStage {
    pub stage: String,
    pub first: String,
    pub second: String,
}

/// Makes a stage from its typed params.
pub type BuildFn<P> = fn(P, &BuildCtx) -> Result<Arc<dyn Stage>, ParamError>;

/// Builds a [`StageFactory`] from a typed params struct `P` (which should use
/// `#[serde(deny_unknown_fields, default)]` or mark required fields) and a constructor.
pub struct StageDef<P> {
    pub name: &'static str,
    pub version: u32,
    pub summary: &'static str,
    pub help: &'static str,
    pub build: BuildFn<P>,
}

impl<P: Params> StageFactory for StageDef<P> {
    fn name(&self) -> &str {
        self.name
    }
    fn version(&self) -> u32 {
        self.version
    }
    fn summary(&self) -> &str {
        self.summary
    }
    fn help(&self) -> &str {
        self.help
    }
    fn params(&self) -> Vec<ParamDoc> {
        param_docs::<P>()
    }
    fn default_params(&self) -> serde_json::Value {
        serde_json::to_value(P::default()).unwrap_or_default()
    }
    fn build(&self, params: &serde_json::Value, ctx: &BuildCtx) -> Result<Built, ParamError> {
        let p: P = serde_path_to_error::deserialize(params).map_err(|e| {
            let path = e
                .path()
                .iter()
                .filter_map(|seg| match seg {
                    serde_path_to_error::Segment::Map { key } => Some(key.clone()),
                    serde_path_to_error::Segment::Seq { index } => Some(index.to_string()),
                    _ => None,
                })
                .collect();
            ParamError {
                path,
                message: e.into_inner().to_string(),
            }
        })?;
        let canonical = serde_json::to_value(&p).map_err(|e| ParamError {
            path: vec![],
            message: e.to_string(),
        })?;
        let mut keyed = canonical.clone();
        let mut assignment = serde_json::Map::new();
        if let Some(obj) = keyed.as_object_mut() {
            for d in self.params() {
                if d.execution || (d.key_omits_default && obj.get(&d.name) == Some(&d.default)) {
                    obj.remove(&d.name);
                } else if d.assignment || d.locator || d.per_case {
                    if let Some(v) = obj.remove(&d.name) {
                        assignment.insert(d.name.clone(), v);
                    }
                }
            }
        }
        Ok(Built {
            stage: (self.build)(p, ctx)?,
            canonical,
            keyed,
            assignment: serde_json::Value::Object(assignment),
        })
    }
}

/// All stages known to this binary, by stage name.
#[derive(Default)]
pub struct Registry {
    factories: BTreeMap<String, (Arc<dyn StageFactory>, &'static str)>,
    /// The plugin whose `register` is running.
    current: &'static str,
    duplicates: Vec<DuplicateStage>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a stage factory for the plugin being registered. A name registered before is
    /// kept, and [`Registry::with`] reports the duplicate.
    pub fn add(&mut self, f: impl StageFactory + 'static) -> &mut Self {
        let name = f.name().to_string();
        if let Some((_, first)) = self.factories.get(&name) {
            self.duplicates.push(DuplicateStage {
                stage: name,
                first: first.to_string(),
                second: self.current.to_string(),
            });
        } else {
            self.factories.insert(name, (Arc::new(f), self.current));
        }
        self
    }

    /// Registers every stage of `plugin`; a stage name that another plugin (or this one)
    /// registered already is an error naming both.
    pub fn with(mut self, plugin: &dyn Plugin) -> Result<Self, DuplicateStage> {
        self.current = plugin.name();
        plugin.register(&mut self);
        self.current = "";
        match self.duplicates.first() {
            Some(d) => Err(d.clone()),
            None => Ok(self),
        }
    }

    /// The plugin (family) that registered stage `name`.
    pub fn plugin_of(&self, name: &str) -> Option<&'static str> {
        self.factories.get(name).map(|(_, p)| *p)
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn StageFactory>> {
        self.factories.get(name).map(|(f, _)| f)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.factories.keys().map(String::as_str)
    }

    pub fn factories(&self) -> impl Iterator<Item = &Arc<dyn StageFactory>> {
        self.factories.values().map(|(f, _)| f)
    }

    /// The known name closest to `name`, if reasonably close.
    pub fn nearest(&self, name: &str) -> Option<&str> {
        nearest(name, self.names())
    }

    /// Checks that every param of every stage is documented (a doc comment on its field)
    /// and that the documented params are exactly the ones its defaults have. Plugin crates
    /// call this in a test.
    pub fn check_docs(&self) -> Result<(), String> {
        for f in self.factories() {
            let docs = f.params();
            for d in &docs {
                if d.doc.trim().is_empty() {
                    return Err(format!(
                        "stage {}: param `{}` has no doc comment",
                        f.name(),
                        d.name
                    ));
                }
            }
            if let Some(obj) = f.default_params().as_object() {
                for k in obj.keys() {
                    if !docs.iter().any(|d| &d.name == k) {
                        return Err(format!("stage {}: param `{k}` is not documented", f.name()));
                    }
                }
                for d in &docs {
                    if !obj.contains_key(&d.name) {
                        return Err(format!(
                            "stage {}: documented param `{}` does not exist",
                            f.name(),
                            d.name
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// The candidate closest to `name` by edit distance, if within a third of its length (+1).
pub fn nearest<'a>(name: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .map(|c| (strsim::levenshtein(name, c), c))
        .filter(|(d, _)| *d <= name.len() / 3 + 1)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

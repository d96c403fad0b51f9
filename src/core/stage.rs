//! The stage contract: what a plugin implements, and the registry that finds stages by name.
//!
//! The core knows no stage by name. A plugin crate implements [`Plugin`], whose `register`
//! adds one [`StageFactory`] per stage; the `pipeline` binary lists the plugins it ships.

use crate::item::Item;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

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

/// A stage's inputs for one case: one item per dependency, in `after` order.
#[derive(Default)]
pub struct Inputs {
    items: Vec<(String, Arc<Item>)>,
}

impl Inputs {
    pub fn new(items: Vec<(String, Arc<Item>)>) -> Self {
        Inputs { items }
    }

    /// The item of dependency `stage`.
    pub fn get(&self, stage: &str) -> Option<&Item> {
        self.items
            .iter()
            .find(|(s, _)| s == stage)
            .map(|(_, i)| i.as_ref())
    }

    /// The input a param names (`name`: a stage id, which must be listed under `after`), or
    /// else the `index`-th input; `what` names the role in errors (`reference`, `cases`).
    pub fn named_or_nth(
        &self,
        name: Option<&str>,
        index: usize,
        what: &str,
    ) -> Result<&Item, StageError> {
        match name {
            Some(n) => self.get(n).ok_or_else(|| {
                StageError::msg(format!(
                    "`{what}: {n}` is not an input of this stage (list it under `after`)"
                ))
            }),
            None => self.iter().nth(index).map(|(_, i)| i).ok_or_else(|| {
                StageError::msg(format!(
                    "this stage needs the {what} as input {} (list it under `after`)",
                    index + 1
                ))
            }),
        }
    }

    /// The first input, or an error naming what is missing.
    pub fn first(&self) -> Result<&Item, StageError> {
        self.items
            .first()
            .map(|(_, i)| i.as_ref())
            .ok_or_else(|| StageError::msg("this stage needs an input: list one under `after`"))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Item)> {
        self.items.iter().map(|(s, i)| (s.as_str(), i.as_ref()))
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
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

/// One documented parameter of a stage.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ParamDoc {
    pub name: String,
    /// Type as a user reads it: `integer`, `number`, `string`, `list of strings`, ...
    pub ty: String,
    pub doc: String,
    /// The default, or `null` when the param is required.
    pub default: serde_json::Value,
}

/// A param failed to validate. `path` leads from the params mapping to the bad value.
#[derive(Debug, Clone)]
pub struct ParamError {
    pub path: Vec<String>,
    pub message: String,
}

/// A stage that [`StageFactory::build`] made, with its params in canonical form
/// (every param present, defaults filled in), which is what the cache key hashes.
pub struct Built {
    pub stage: Arc<dyn Stage>,
    pub canonical: serde_json::Value,
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

/// A family of stages.
pub trait Plugin {
    fn register(&self, registry: &mut Registry);
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
    /// (name, type, doc) for each field of `P`.
    pub params: &'static [(&'static str, &'static str, &'static str)],
    pub build: BuildFn<P>,
}

impl<P> StageFactory for StageDef<P>
where
    P: DeserializeOwned + Serialize + Default + Send + Sync + 'static,
{
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
        let defaults = serde_json::to_value(P::default()).unwrap_or_default();
        self.params
            .iter()
            .map(|(name, ty, doc)| ParamDoc {
                name: name.to_string(),
                ty: ty.to_string(),
                doc: doc.to_string(),
                default: defaults.get(*name).cloned().unwrap_or_default(),
            })
            .collect()
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
        Ok(Built {
            stage: (self.build)(p, ctx)?,
            canonical,
        })
    }
}

/// All stages known to this binary, by plugin name.
#[derive(Default)]
pub struct Registry {
    factories: BTreeMap<String, Arc<dyn StageFactory>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a stage factory; a second factory of the same name replaces the first.
    pub fn add(&mut self, f: impl StageFactory + 'static) -> &mut Self {
        self.factories.insert(f.name().to_string(), Arc::new(f));
        self
    }

    /// Registers every stage of `plugin`.
    pub fn with(mut self, plugin: &dyn Plugin) -> Self {
        plugin.register(&mut self);
        self
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn StageFactory>> {
        self.factories.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.factories.keys().map(String::as_str)
    }

    pub fn factories(&self) -> impl Iterator<Item = &Arc<dyn StageFactory>> {
        self.factories.values()
    }

    /// The known name closest to `name`, if reasonably close.
    pub fn nearest(&self, name: &str) -> Option<&str> {
        nearest(name, self.names())
    }

    /// Checks that every factory documents exactly the params its defaults have.
    /// Plugin crates call this in a test.
    pub fn check_docs(&self) -> Result<(), String> {
        for f in self.factories.values() {
            let documented: Vec<String> = f.params().iter().map(|p| p.name.clone()).collect();
            {
                if let Some(obj) = f.default_params().as_object() {
                    for k in obj.keys() {
                        if !documented.contains(k) {
                            return Err(format!(
                                "stage {}: param `{k}` is not documented",
                                f.name()
                            ));
                        }
                    }
                    for d in &documented {
                        if !obj.contains_key(d) {
                            return Err(format!(
                                "stage {}: documented param `{d}` does not exist",
                                f.name()
                            ));
                        }
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

//! Running a planned graph: each node computes what the cache lacks, per case in parallel
//! on rayon, inside `spawn_blocking` so CPU work never blocks the async runtime.
//!
//! Invariants:
//! - An item enters the cache only complete (the cache writes atomically); a failed or
//!   cancelled item leaves nothing behind.
//! - A node whose dependency failed or was skipped is skipped, naming the failed stage;
//!   other branches run to the end.
//! - A stage that declares a resource (the GPU) holds one of its slots for its whole run
//!   (one slot unless `RunOptions::slots` says more), and its cases run one at a time.
//! - A cached input that turns out corrupt or missing when read is recomputed on the spot.
//! - With the Slurm executor, cached stages' missing items are computed by jobs that run
//!   this binary (`pipeline job`) on a batch each and write blobs into the shared cache;
//!   the driver alone owns the index and adopts what they wrote when they end. A batch's
//!   job id is kept in `<cache>/jobs/` until it ends, so a driver started again re-attaches
//!   to it rather than running its items twice at once.

use crate::dag;
use crate::item::Item;
use crate::plan::{self, Plan, ALL_CASES};
use crate::resolve::Resolved;
use crate::slurm::{self, Executor, JobRecord, JobState, Slurm, SlurmSettings};
use crate::stage::{CancelToken, CaseInfo, Inputs, Shape, StageCtx, StageError};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use rayon::prelude::*;
use shapeflow_cache::{Cache, CacheError, CacheKey};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How a node ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case", tag = "status", content = "detail")]
pub enum Status {
    Done,
    Failed(String),
    /// Not run because this stage (label) failed upstream.
    Skipped(String),
    Cancelled,
}

impl Status {
    pub fn word(&self) -> &'static str {
        match self {
            Status::Done => "done",
            Status::Failed(_) => "FAILED",
            Status::Skipped(_) => "skipped",
            Status::Cancelled => "cancelled",
        }
    }
}

/// The outcome of one graph node.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeReport {
    pub stage: String,
    pub plugin: String,
    pub variants: Vec<String>,
    pub label: String,
    pub status: Status,
    pub computed: usize,
    pub cached: usize,
    /// Seconds the stage ran, from when it held its resource (if it declares one).
    pub wall_s: f64,
    /// Seconds it waited for its resource (another stage held it): not in `wall_s`.
    pub waited_s: f64,
    /// With the Slurm executor: the jobs that computed this node's items.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub jobs: Vec<JobReport>,
}

/// A cluster job as the run summary and the manifest record it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct JobReport {
    pub id: String,
    /// Slurm's final state (COMPLETED, FAILED, TIMEOUT, ...; GONE if Slurm forgot it).
    pub state: String,
    pub items: usize,
}

/// The outcome of a run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunReport {
    pub nodes: Vec<NodeReport>,
    pub cancelled: bool,
    pub wall_s: f64,
}

impl RunReport {
    pub fn ok(&self) -> bool {
        !self.cancelled && self.nodes.iter().all(|n| n.status == Status::Done)
    }

    pub fn computed(&self) -> usize {
        self.nodes.iter().map(|n| n.computed).sum()
    }

    pub fn cached(&self) -> usize {
        self.nodes.iter().map(|n| n.cached).sum()
    }

    /// The report of stage `id` serving `variant`.
    pub fn node(&self, id: &str, variant: &str) -> Option<&NodeReport> {
        self.nodes
            .iter()
            .find(|n| n.stage == id && n.variants.iter().any(|v| v == variant))
    }

    /// The summary table printed at the end of a run (with a `waited` column when a stage
    /// waited for its resource).
    pub fn table(&self) -> String {
        let waits = self.nodes.iter().any(|n| n.waited_s >= 0.005);
        let mut header = ["stage", "variant", "status", "computed", "cached", "wall"].to_vec();
        if waits {
            header.push("waited");
        }
        let mut rows = vec![header.into_iter().map(String::from).collect::<Vec<_>>()];
        for n in &self.nodes {
            let mut row = vec![
                n.stage.clone(),
                n.variants.join(","),
                n.status.word().to_string(),
                n.computed.to_string(),
                n.cached.to_string(),
                format!("{:.2}s", n.wall_s),
            ];
            if waits {
                row.push(format!("{:.2}s", n.waited_s));
            }
            rows.push(row);
        }
        let widths: Vec<usize> = (0..rows[0].len())
            .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
            .collect();
        let mut out = String::new();
        for r in &rows {
            let line: Vec<String> = r
                .iter()
                .enumerate()
                .map(|(c, s)| {
                    if c >= 3 {
                        format!("{s:>w$}", w = widths[c])
                    } else {
                        format!("{s:<w$}", w = widths[c])
                    }
                })
                .collect();
            out.push_str(line.join("  ").trim_end());
            out.push('\n');
        }
        for n in &self.nodes {
            if !n.jobs.is_empty() {
                let mut by_state: std::collections::BTreeMap<&str, usize> = Default::default();
                for j in &n.jobs {
                    *by_state.entry(j.state.as_str()).or_default() += 1;
                }
                let states: Vec<String> =
                    by_state.iter().map(|(s, k)| format!("{k} {s}")).collect();
                let ids: Vec<&str> = n.jobs.iter().map(|j| j.id.as_str()).collect();
                out.push_str(&format!(
                    "{}: {} Slurm job(s), {} (ids {})\n",
                    n.label,
                    n.jobs.len(),
                    states.join(", "),
                    ids.join(" ")
                ));
            }
        }
        for n in &self.nodes {
            match &n.status {
                Status::Failed(m) => out.push_str(&format!("\n{} failed: {m}\n", n.label)),
                Status::Skipped(because) => {
                    out.push_str(&format!("{} skipped: `{because}` failed\n", n.label))
                }
                _ => {}
            }
        }
        out
    }
}

/// Run settings.
pub struct RunOptions {
    pub run_dir: PathBuf,
    pub cancel: CancelToken,
    /// Draw progress bars (only where stderr is a terminal).
    pub progress: bool,
    /// How many stages may hold each resource at once (`gpu` -> 3 lets three small
    /// trainings share one GPU); a resource not named here has one slot.
    pub slots: HashMap<String, usize>,
    /// Where cached stages' items are computed.
    pub executor: Executor,
    /// What names this pipeline to a job: the file (absolute) and the `--set` overrides, as
    /// `pipeline job` takes them (`[FILE, --set, X, ...]`). Used by the Slurm executor.
    pub job_args: Vec<String>,
}

impl RunOptions {
    /// Local execution in `run_dir`, no progress bars.
    pub fn local(run_dir: PathBuf) -> RunOptions {
        RunOptions {
            run_dir,
            cancel: CancelToken::default(),
            progress: false,
            slots: HashMap::new(),
            executor: Executor::Local,
            job_args: Vec::new(),
        }
    }
}

/// A counting semaphore: the slots of one resource.
struct Slots {
    free: Mutex<usize>,
    released: Condvar,
}

impl Slots {
    fn new(n: usize) -> Slots {
        Slots {
            free: Mutex::new(n.max(1)),
            released: Condvar::new(),
        }
    }

    /// Waits for a free slot; the guard gives it back when dropped.
    fn acquire(self: &Arc<Self>) -> SlotGuard {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        while *free == 0 {
            free = self.released.wait(free).unwrap_or_else(|e| e.into_inner());
        }
        *free -= 1;
        SlotGuard(self.clone())
    }
}

struct SlotGuard(Arc<Slots>);

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let mut free = self.0.free.lock().unwrap_or_else(|e| e.into_inner());
        *free += 1;
        self.0.released.notify_one();
    }
}

struct NodeState {
    status: Option<Status>,
    jobs: Vec<JobReport>,
    computed: AtomicUsize,
    cached: AtomicUsize,
    wall: Duration,
    /// Time spent waiting for the stage's resource (part of `wall` until reported).
    waited: Duration,
}

struct Engine {
    resolved: Arc<Resolved>,
    plan: Arc<Plan>,
    cache: Arc<Cache>,
    cancel: CancelToken,
    run_dir: PathBuf,
    /// Items of uncached stages, and whole-dataset items once read (many cases read them).
    memory: Mutex<HashMap<CacheKey, Arc<Item>>>,
    /// node -> case id -> item index.
    index: Vec<HashMap<String, usize>>,
    states: Vec<Mutex<NodeState>>,
    resources: Mutex<HashMap<String, Arc<Slots>>>,
    slots: HashMap<String, usize>,
    bars: MultiProgress,
    scratch_root: PathBuf,
    executor: Executor,
    job_args: Vec<String>,
    /// Whether the cluster has GPUs (asked once, when the executor is Slurm).
    cluster_gpus: bool,
}

impl Engine {
    fn new(
        resolved: Arc<Resolved>,
        plan: Arc<Plan>,
        cache: Arc<Cache>,
        opts: &RunOptions,
        scratch_root: PathBuf,
    ) -> Engine {
        let n = resolved.nodes.len();
        let draw = if opts.progress && std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let index = plan
            .nodes
            .iter()
            .map(|np| {
                np.items
                    .iter()
                    .enumerate()
                    .map(|(i, it)| (it.case.id.clone(), i))
                    .collect()
            })
            .collect();
        let cluster_gpus = matches!(opts.executor, Executor::Slurm(_)) && Slurm.has_gpus();
        Engine {
            resolved,
            plan,
            cache,
            cancel: opts.cancel.clone(),
            run_dir: opts.run_dir.clone(),
            memory: Mutex::new(HashMap::new()),
            index,
            states: (0..n)
                .map(|_| {
                    Mutex::new(NodeState {
                        status: None,
                        jobs: Vec::new(),
                        computed: AtomicUsize::new(0),
                        cached: AtomicUsize::new(0),
                        wall: Duration::ZERO,
                        waited: Duration::ZERO,
                    })
                })
                .collect(),
            resources: Mutex::new(HashMap::new()),
            slots: opts.slots.clone(),
            bars: MultiProgress::with_draw_target(draw),
            scratch_root,
            executor: opts.executor.clone(),
            job_args: opts.job_args.clone(),
            cluster_gpus,
        }
    }

    fn item_index(&self, n: usize, case: &str) -> Result<usize, StageError> {
        let key = if self.resolved.nodes[n].shape == Shape::Gather {
            ALL_CASES
        } else {
            case
        };
        self.index[n].get(key).copied().ok_or_else(|| {
            StageError::msg(format!(
                "stage `{}` has no item for case `{case}`",
                self.resolved.nodes[n].id
            ))
        })
    }

    /// `<run_dir>/<stage id>[/<variants>]` for node `n`.
    fn output_dir(&self, n: usize) -> PathBuf {
        let node = &self.resolved.nodes[n];
        let dir = self.run_dir.join(&node.id);
        if node.variants.len() == self.resolved.file.variants.len() {
            dir
        } else {
            dir.join(sanitize(&node.variants.join("+")))
        }
    }

    /// `<cache>/work/<key>`: resumable state of item `key` (see [`StageCtx::work_dir`]).
    fn work_dir(&self, key: &CacheKey) -> PathBuf {
        self.cache.root().join("work").join(key.to_hex())
    }

    /// The item of node `n` for `case`: from memory, the cache, or computed now.
    fn load(&self, n: usize, case: &str) -> Result<Arc<Item>, StageError> {
        let i = self.item_index(n, case)?;
        let key = self.plan.nodes[n].items[i].key;
        if let Some(it) = self.memory.lock().map_err(poisoned)?.get(&key) {
            return Ok(it.clone());
        }
        let node = &self.resolved.nodes[n];
        if node.stage.cached() {
            match self.cache.get(&key) {
                Ok(Some(bytes)) => match Item::decode(&bytes) {
                    Ok(item) => {
                        let item = Arc::new(item);
                        if node.shape == Shape::Gather {
                            self.memory
                                .lock()
                                .map_err(poisoned)?
                                .insert(key, item.clone());
                        }
                        return Ok(item);
                    }
                    Err(e) => {
                        tracing::warn!(stage = %node.id, case, "cached item unreadable ({e}); recomputing");
                        let _ = self.cache.remove(&key);
                    }
                },
                Ok(None) => {}
                Err(e @ CacheError::Corrupt { .. }) => {
                    tracing::warn!(stage = %node.id, case, "{e}")
                }
                Err(e) => return Err(StageError::msg(e.to_string())),
            }
        }
        let item = Arc::new(self.compute(n, i)?);
        self.store(n, i, &item)?;
        Ok(item)
    }

    /// Inputs of node `n` for `case`, from the deps `which(dep_is_whole_dataset)` selects.
    fn inputs_for(
        &self,
        n: usize,
        case: &str,
        which: fn(bool) -> bool,
    ) -> Result<Inputs, StageError> {
        let node = &self.resolved.nodes[n];
        let mut items = Vec::new();
        for &d in &node.deps {
            if which(self.resolved.nodes[d].shape == Shape::Gather) {
                items.push((self.resolved.nodes[d].id.clone(), self.load(d, case)?));
            }
        }
        Ok(Inputs::new(items).with_bindings(node.bindings.clone()))
    }

    /// The per-case inputs of whole-dataset node `n` for `case`, each loaded from the cache
    /// only when the stage asks (items not in the cache are loaded now).
    fn lazy_inputs_for(&self, n: usize, case: &str) -> Result<Inputs, StageError> {
        let node = &self.resolved.nodes[n];
        let mut inputs = Inputs::default();
        for &d in &node.deps {
            let dep = &self.resolved.nodes[d];
            if dep.shape == Shape::Gather {
                continue;
            }
            let key = self.plan.nodes[d].items[self.item_index(d, case)?].key;
            let in_memory = self.memory.lock().map_err(poisoned)?.get(&key).cloned();
            let cached = dep.stage.cached()
                && self
                    .cache
                    .contains(&key)
                    .map_err(|e| StageError::msg(e.to_string()))?;
            match in_memory {
                None if cached => {
                    let cache = self.cache.clone();
                    let (stage, case) = (dep.id.clone(), case.to_string());
                    inputs.push_lazy(
                        dep.id.clone(),
                        Arc::new(move || match cache.get(&key) {
                            Ok(Some(bytes)) => Item::decode(&bytes).map_err(|e| {
                                StageError::msg(format!(
                                    "the cached item of `{stage}` for case `{case}` is unreadable: {e}"
                                ))
                            }),
                            Ok(None) => Err(StageError::msg(format!(
                                "the cached item of `{stage}` for case `{case}` is gone \
                                 (removed while this run used it?); run again"
                            ))),
                            Err(e) => Err(StageError::msg(e.to_string())),
                        }),
                    );
                }
                _ => inputs.push(dep.id.clone(), self.load(d, case)?),
            }
        }
        Ok(inputs.with_bindings(node.bindings.clone()))
    }

    fn compute(&self, n: usize, i: usize) -> Result<Item, StageError> {
        if self.cancel.is_cancelled() {
            return Err(StageError::Cancelled);
        }
        let node = &self.resolved.nodes[n];
        let item = &self.plan.nodes[n].items[i];
        let scratch = self
            .scratch_root
            .join(format!("{}-{}", node.id, node.signature.short()))
            .join(sanitize(&item.case.id));
        std::fs::create_dir_all(&scratch).map_err(|e| {
            StageError::msg(format!(
                "cannot create scratch dir {}: {e}",
                scratch.display()
            ))
        })?;
        let ctx = StageCtx {
            base_dir: self.resolved.file.base_dir(),
            stage_id: &node.id,
            seed: node.seed,
            scratch: scratch.clone(),
            run_dir: self.run_dir.clone(),
            output_dir: self.output_dir(n),
            work_dir: self.work_dir(&item.key),
            cancel: &self.cancel,
            progress: crate::stage::Progress::new(self.bars.clone()),
        };
        // What a stage logs names the stage and variant it ran for (`calibrate[joint-c@7]: ...`):
        // in a run of several variants, their lines interleave.
        let label = node.label(self.resolved.file.variants.len());
        let _span = tracing::info_span!("stage", label = %label).entered();
        let out = match node.shape {
            Shape::Source => node.stage.run_case(&ctx, &item.case, &Inputs::default()),
            Shape::PerCase => {
                let inputs = self.inputs_for(n, &item.case.id, |_| true)?;
                node.stage.run_case(&ctx, &item.case, &inputs)
            }
            Shape::Gather => {
                let members = &self.plan.nodes[n].members;
                // Per-case inputs are lazy: the stage decodes what it needs, when it needs
                // it, so memory follows the stage's use, not the dataset's size.
                let per_case: Result<Vec<(CaseInfo, Inputs)>, StageError> = members
                    .par_iter()
                    .map(|c| Ok((c.clone(), self.lazy_inputs_for(n, &c.id)?)))
                    .collect();
                let global = self.inputs_for(n, ALL_CASES, |whole| whole)?;
                node.stage.run_all(&ctx, &per_case?, &global)
            }
        };
        let _ = std::fs::remove_dir_all(&scratch);
        out
    }

    fn store(&self, n: usize, i: usize, item: &Arc<Item>) -> Result<(), StageError> {
        let node = &self.resolved.nodes[n];
        let planned = &self.plan.nodes[n].items[i];
        if node.stage.cached() {
            self.cache
                .put(&planned.key, &node.id, &planned.case.id, &item.encode())
                .map_err(|e| StageError::msg(e.to_string()))?;
            if node.shape == Shape::Gather {
                self.memory
                    .lock()
                    .map_err(poisoned)?
                    .insert(planned.key, item.clone());
            }
        } else {
            self.memory
                .lock()
                .map_err(poisoned)?
                .insert(planned.key, item.clone());
        }
        plan::record(&self.resolved, n, planned, &self.cache);
        let _ = std::fs::remove_dir_all(self.work_dir(&planned.key));
        Ok(())
    }

    /// What follows finding item `i` of node `n` in the cache: its record, and for a
    /// whole-dataset item its published files and lineage.
    fn finish_cached(&self, n: usize, i: usize) -> Result<(), StageError> {
        let node = &self.resolved.nodes[n];
        let planned = &self.plan.nodes[n].items[i];
        plan::record(&self.resolved, n, planned, &self.cache);
        if node.shape == Shape::Gather {
            let item = self.load(n, ALL_CASES)?;
            node.stage.publish(&self.ctx(n, &planned.key), &item)?;
            self.write_lineage(n, &item);
        }
        Ok(())
    }

    /// Makes item `i` of node `n` exist; true if it was computed now.
    fn ensure(&self, n: usize, i: usize) -> Result<bool, StageError> {
        let node = &self.resolved.nodes[n];
        let planned = &self.plan.nodes[n].items[i];
        if node.stage.cached()
            && self
                .cache
                .contains(&planned.key)
                .map_err(|e| StageError::msg(e.to_string()))?
        {
            self.finish_cached(n, i)?;
            return Ok(false);
        }
        let item = Arc::new(self.compute(n, i)?);
        self.store(n, i, &item)?;
        self.write_lineage(n, &item);
        Ok(true)
    }

    /// A context for work on node `n` outside `compute` (scratch is the run's own).
    fn ctx(&self, n: usize, key: &CacheKey) -> StageCtx<'_> {
        let node = &self.resolved.nodes[n];
        StageCtx {
            base_dir: self.resolved.file.base_dir(),
            stage_id: &node.id,
            seed: node.seed,
            scratch: self.scratch_root.clone(),
            run_dir: self.run_dir.clone(),
            output_dir: self.output_dir(n),
            work_dir: self.work_dir(key),
            cancel: &self.cancel,
            progress: Default::default(),
        }
    }

    /// For a model (a whole-dataset item that other per-case stages apply): writes
    /// `pipeline.json` beside its files, what `pipeline predict` replays on new images (the
    /// per-case stages that made its inputs, and the stage that applies it, with their
    /// params exactly as they ran), and `model.item`, the item itself.
    fn write_lineage(&self, n: usize, item: &Item) {
        let node = &self.resolved.nodes[n];
        if node.shape != Shape::Gather || node.stage.output() != crate::data::Kind::Model {
            return;
        }
        let nodes = &self.resolved.nodes;
        // Per-case ancestors, in the resolved (topological) order.
        let mut keep = vec![false; nodes.len()];
        let mut stack: Vec<usize> = node.deps.clone();
        while let Some(d) = stack.pop() {
            if nodes[d].shape != Shape::Gather && !keep[d] {
                keep[d] = true;
                stack.extend(nodes[d].deps.iter().copied());
            }
        }
        let step = |m: usize| {
            let nd = &nodes[m];
            serde_json::json!({
                "id": nd.id,
                "stage": nd.plugin,
                "version": nd.version,
                "params": nd.params,
                "after": nd.deps.iter().map(|&d| nodes[d].id.clone()).collect::<Vec<_>>(),
                "bindings": nd.bindings.as_ref(),
            })
        };
        let preprocess: Vec<_> = (0..nodes.len()).filter(|&m| keep[m]).map(step).collect();
        let apply: Vec<_> = (0..nodes.len())
            .filter(|&m| nodes[m].shape == Shape::PerCase && nodes[m].deps.contains(&n))
            .map(step)
            .collect();
        let models_made: Vec<_> = (0..nodes.len())
            .filter(|&m| {
                nodes[m].shape == Shape::Gather
                    && nodes[m].stage.output() == crate::data::Kind::Model
                    && nodes[m].deps.contains(&n)
            })
            .map(|m| nodes[m].id.clone())
            .collect();
        let doc = serde_json::json!({
            "format": "shapeflow-pipeline/1",
            "tool_version": env!("CARGO_PKG_VERSION"),
            "pipeline": self.resolved.file.name,
            "model_stage": node.id,
            "variants": node.variants,
            "preprocess": preprocess,
            "apply": apply,
            "models_made": models_made,
        });
        let dir = self.output_dir(n);
        let written = std::fs::create_dir_all(&dir)
            .and_then(|()| crate::atomic::write(&dir.join("model.item"), &item.encode()))
            .and_then(|()| {
                crate::atomic::write(
                    &dir.join("pipeline.json"),
                    &serde_json::to_vec_pretty(&doc).unwrap_or_default(),
                )
            });
        if let Err(e) = written {
            tracing::warn!(stage = %node.id, "cannot write {}: {e}", dir.join("pipeline.json").display());
        }
    }

    fn run_node(&self, n: usize) -> Status {
        let node = &self.resolved.nodes[n];
        let items = &self.plan.nodes[n].items;
        let label = node.label(self.resolved.file.variants.len());
        if let Executor::Slurm(s) = &self.executor {
            if node.stage.cached() {
                return self.run_node_slurm(n, s);
            }
        }
        let _held = node.stage.resource().map(|r| {
            let slots = self
                .resources
                .lock()
                .map(|mut map| {
                    map.entry(r.clone())
                        .or_insert_with(|| {
                            Arc::new(Slots::new(self.slots.get(&r).copied().unwrap_or(1)))
                        })
                        .clone()
                })
                .unwrap_or_else(|_| Arc::new(Slots::new(1)));
            tracing::debug!(stage = %label, resource = %r, "waiting for the resource");
            let asked = Instant::now();
            let held = slots.acquire();
            if let Ok(mut s) = self.states[n].lock() {
                s.waited = asked.elapsed();
            }
            held
        });
        let bar = self.node_bar(n);
        tracing::debug!(stage = %label, plugin = %node.plugin, items = items.len(), "stage started");
        let state = &self.states[n];
        let one = |i: usize| -> Result<(), (String, StageError)> {
            let r = self.ensure(n, i);
            bar.inc(1);
            match r {
                Ok(true) => {
                    if let Ok(s) = state.lock() {
                        s.computed.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(())
                }
                Ok(false) => {
                    if let Ok(s) = state.lock() {
                        s.cached.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(())
                }
                Err(e) => Err((items[i].case.id.clone(), e)),
            }
        };
        let errors: Vec<(String, StageError)> =
            if node.stage.resource().is_some() || items.len() <= 1 {
                (0..items.len()).filter_map(|i| one(i).err()).collect()
            } else {
                (0..items.len())
                    .into_par_iter()
                    .filter_map(|i| one(i).err())
                    .collect()
            };
        bar.finish_and_clear();
        if node.shape == Shape::Gather {
            release_free_memory();
        }
        node_status(errors)
    }

    fn node_bar(&self, n: usize) -> ProgressBar {
        let node = &self.resolved.nodes[n];
        let bar = self
            .bars
            .add(ProgressBar::new(self.plan.nodes[n].items.len() as u64));
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:>24.bold} [{bar:30}] {pos}/{len} {elapsed} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_prefix(node.label(self.resolved.file.variants.len()));
        bar
    }

    /// What a job computing `batch` (item indices of node `n`) needs of the plan, written
    /// to `path`: node `n`'s items for its cases and its ancestors' items those read (every
    /// member case's for a whole-dataset node); other nodes empty. A job reads only this, so
    /// what each job reads grows with its batch, not with the run.
    fn write_plan_slice(&self, n: usize, batch: &[usize], path: &Path) -> Result<(), StageError> {
        let nodes = &self.resolved.nodes;
        let mut wanted = vec![false; nodes.len()];
        let mut stack = vec![n];
        while let Some(m) = stack.pop() {
            if !std::mem::replace(&mut wanted[m], true) {
                stack.extend(nodes[m].deps.iter().copied());
            }
        }
        let cases: Option<std::collections::HashSet<&str>> = (nodes[n].shape != Shape::Gather)
            .then(|| {
                batch
                    .iter()
                    .map(|&i| self.plan.nodes[n].items[i].case.id.as_str())
                    .collect()
            });
        let slice = Plan {
            nodes: self
                .plan
                .nodes
                .iter()
                .enumerate()
                .map(|(m, np)| {
                    if !wanted[m] {
                        return plan::NodePlan::default();
                    }
                    let keep =
                        |id: &str| id == ALL_CASES || cases.as_ref().is_none_or(|c| c.contains(id));
                    plan::NodePlan {
                        items: np
                            .items
                            .iter()
                            .filter(|it| keep(&it.case.id))
                            .cloned()
                            .collect(),
                        members: if m == n {
                            np.members.clone()
                        } else {
                            Vec::new()
                        },
                    }
                })
                .collect(),
        };
        let json = serde_json::to_vec(&slice)
            .map_err(|e| StageError::msg(format!("cannot serialise the plan: {e}")))?;
        crate::atomic::write(path, &json)
            .map_err(|e| StageError::msg(format!("cannot write {}: {e}", path.display())))
    }

    /// Node `n` through Slurm: the items the cache lacks go to jobs of `per_job` cases
    /// (one job for a whole-dataset stage); the driver polls the queue, adopts what each
    /// finished job wrote, and reports a failed job by id, state and the tail of its log.
    fn run_node_slurm(&self, n: usize, s: &SlurmSettings) -> Status {
        let node = &self.resolved.nodes[n];
        let items = &self.plan.nodes[n].items;
        let label = node.label(self.resolved.file.variants.len());
        let state = &self.states[n];
        let bar = self.node_bar(n);
        let count = |computed: bool| {
            if let Ok(s) = state.lock() {
                if computed {
                    s.computed.fetch_add(1, Ordering::Relaxed);
                } else {
                    s.cached.fetch_add(1, Ordering::Relaxed);
                }
            }
        };
        let mut errors: Vec<(String, StageError)> = Vec::new();
        let mut missing = Vec::new();
        for (i, it) in items.iter().enumerate() {
            match self.cache.contains(&it.key) {
                Ok(true) => match self.finish_cached(n, i) {
                    Ok(()) => {
                        count(false);
                        bar.inc(1);
                    }
                    Err(e) => errors.push((it.case.id.clone(), e)),
                },
                Ok(false) => missing.push(i),
                Err(e) => errors.push((it.case.id.clone(), StageError::msg(e.to_string()))),
            }
        }
        if missing.is_empty() || !errors.is_empty() {
            bar.finish_and_clear();
            return node_status(errors);
        }
        let res = self.job_resources(n, s);
        let per_job = if node.shape == Shape::Gather {
            1
        } else {
            res.per_job.unwrap_or(s.per_job).max(1)
        };
        let jobs_dir = self.cache.root().join("jobs");
        let log_dir = self.run_dir.join("slurm");
        for d in [&jobs_dir, &log_dir.join("plans")] {
            if let Err(e) = std::fs::create_dir_all(d) {
                bar.finish_and_clear();
                return Status::Failed(format!("cannot create {}: {e}", d.display()));
            }
        }
        let slurm = Slurm;
        // A driver killed earlier may have left jobs running for some of these items:
        // follow them rather than run their items twice at once.
        let mut active = reattach(&slurm, &jobs_dir, &label, items, &mut missing);
        for j in &active {
            tracing::info!(stage = %label, job = %j.id, items = j.items.len(), "re-attaching to a running job");
        }
        for batch in missing.chunks(per_job) {
            let mut h = node.signature.to_hex();
            for &i in batch {
                h.push_str(&items[i].key.to_hex());
            }
            let batch_key = CacheKey::of(h.as_bytes());
            let record = jobs_dir.join(format!("{}.json", batch_key.to_hex()));
            let cases: Vec<String> = batch.iter().map(|&i| items[i].case.id.clone()).collect();
            let plan_file = log_dir
                .join("plans")
                .join(format!("{}.json", batch_key.short()));
            if let Err(e) = self.write_plan_slice(n, batch, &plan_file) {
                errors.push((cases[0].clone(), e));
                break;
            }
            let log = log_dir.join(format!("{}-{}-%j.log", sanitize(&label), batch_key.short()));
            let command = match self.job_command(n, &plan_file, &cases, s) {
                Ok(c) => c,
                Err(e) => {
                    errors.push((cases[0].clone(), e));
                    break;
                }
            };
            let name = format!("sf-{}-{}", self.resolved.file.name, node.id);
            let workdir = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
            match slurm.submit(&slurm::Submission {
                name: &name,
                log: &log,
                workdir: &workdir,
                resources: &res,
                command: &command,
            }) {
                Ok(id) => {
                    let log = PathBuf::from(log.to_string_lossy().replace("%j", &id));
                    let rec = JobRecord {
                        job: id.clone(),
                        log: log.clone(),
                        stage: label.clone(),
                        cases,
                        keys: batch.iter().map(|&i| items[i].key.to_hex()).collect(),
                    };
                    if let Ok(b) = serde_json::to_vec(&rec) {
                        let _ = crate::atomic::write(&record, &b);
                    }
                    tracing::debug!(stage = %label, job = %id, items = batch.len(), "submitted");
                    active.push(ActiveJob {
                        id,
                        items: batch.to_vec(),
                        record,
                        log,
                    });
                }
                Err(e) => {
                    errors.push((
                        cases[0].clone(),
                        StageError::msg(format!("cannot submit: {e}")),
                    ));
                    break;
                }
            }
        }
        let submit_failed = !errors.is_empty();
        let mut backoff = slurm::Backoff::new(s.poll_max_s);
        while !active.is_empty() {
            if submit_failed || self.cancel.is_cancelled() {
                // A failed submission or Ctrl-C: the jobs of this node are cancelled; what
                // they already wrote stays (complete blobs only). A failed job does not
                // stop the others: their items are kept, as a local run keeps the cases
                // that worked.
                let ids: Vec<String> = active.iter().map(|j| j.id.clone()).collect();
                slurm.cancel(&ids);
                for j in &active {
                    let _ = std::fs::remove_file(&j.record);
                    let _ = std::fs::remove_dir_all(self.cache.job_scratch_dir(&j.id));
                }
                if errors.is_empty() {
                    errors.push((ALL_CASES.into(), StageError::Cancelled));
                }
                break;
            }
            let pause = backoff.step();
            let until = Instant::now() + pause;
            while Instant::now() < until && !self.cancel.is_cancelled() {
                std::thread::sleep(Duration::from_millis(100).min(pause));
            }
            let ids: Vec<String> = active.iter().map(|j| j.id.clone()).collect();
            let states = match slurm.states(&ids) {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(stage = %label, "cannot read the queue: {e}");
                    continue;
                }
            };
            let (running, pending) = states.values().fold((0, 0), |(r, p), st| {
                (
                    r + (st.state == "RUNNING") as usize,
                    p + (st.state == "PENDING") as usize,
                )
            });
            bar.set_message(format!("slurm: {running} running, {pending} pending"));
            let mut still = Vec::new();
            for j in active.drain(..) {
                match states.get(&j.id) {
                    Some(st) if st.active() => still.push(j),
                    st => self.adopt_job(n, &j, st, &mut errors, &bar, &count),
                }
            }
            active = still;
        }
        bar.finish_and_clear();
        node_status(errors)
    }

    /// What a job asks for: the stage's `resources`, then the executor's, then defaults by
    /// stage kind.
    fn job_resources(&self, n: usize, s: &SlurmSettings) -> slurm::Resources {
        let node = &self.resolved.nodes[n];
        let stage = self
            .resolved
            .file
            .stage(&node.id)
            .and_then(|st| st.resources.clone())
            .unwrap_or_default();
        let mut r = stage.or(&s.resources);
        if r.cpus.is_none() {
            r.cpus = Some(if node.shape == Shape::Gather { 2 } else { 1 });
        }
        if r.gpus.is_none() {
            let wants = node.stage.resource().as_deref() == Some("gpu");
            r.gpus = Some((wants && self.cluster_gpus) as u32);
        }
        r
    }

    fn job_command(
        &self,
        n: usize,
        plan_file: &Path,
        cases: &[String],
        s: &SlurmSettings,
    ) -> Result<Vec<String>, StageError> {
        let exe = match &s.binary {
            Some(b) => b.clone(),
            None => std::env::current_exe()
                .map_err(|e| StageError::msg(format!("cannot find this binary: {e}")))?,
        };
        if self.job_args.is_empty() {
            return Err(StageError::msg(
                "the Slurm executor needs the pipeline file's path (RunOptions::job_args)",
            ));
        }
        let mut c = vec![exe.to_string_lossy().to_string(), "job".to_string()];
        c.extend(self.job_args.iter().cloned());
        for (flag, v) in [
            ("--cache", self.cache.root().to_string_lossy().to_string()),
            ("--run-dir", self.run_dir.to_string_lossy().to_string()),
            ("--plan", plan_file.to_string_lossy().to_string()),
            ("--node", n.to_string()),
            ("--signature", self.resolved.nodes[n].signature.to_hex()),
            ("--cases", cases.join(",")),
        ] {
            c.push(flag.to_string());
            c.push(v);
        }
        Ok(c)
    }

    /// A job of node `n` ended (or Slurm forgot it): adopt each item it wrote; an item it
    /// did not write is an error naming the job, its state and its log's last lines.
    fn adopt_job(
        &self,
        n: usize,
        job: &ActiveJob,
        st: Option<&JobState>,
        errors: &mut Vec<(String, StageError)>,
        bar: &ProgressBar,
        count: &dyn Fn(bool),
    ) {
        let items = &self.plan.nodes[n].items;
        let _ = std::fs::remove_file(&job.record);
        let _ = std::fs::remove_dir_all(self.cache.job_scratch_dir(&job.id));
        if let Ok(mut s) = self.states[n].lock() {
            s.jobs.push(JobReport {
                id: job.id.clone(),
                state: st.map(|s| s.state.clone()).unwrap_or_else(|| "GONE".into()),
                items: job.items.len(),
            });
        }
        let mut lost = Vec::new();
        for &i in &job.items {
            let adopted = self
                .cache
                .contains(&items[i].key)
                .map_err(|e| StageError::msg(e.to_string()))
                .and_then(|there| {
                    if there {
                        self.finish_cached(n, i).map(|_| true)
                    } else {
                        Ok(false)
                    }
                });
            match adopted {
                Ok(true) => {
                    count(true);
                    bar.inc(1);
                }
                Ok(false) => lost.push(items[i].case.id.clone()),
                Err(e) => errors.push((items[i].case.id.clone(), e)),
            }
        }
        if lost.is_empty() {
            return;
        }
        let (state, detail) = match st {
            Some(s) => (s.state.clone(), s.detail.clone()),
            None => ("GONE".into(), "Slurm no longer knows it".into()),
        };
        let tail = slurm::log_tail(&job.log, 12);
        let what = if lost.len() == 1 && lost[0] == ALL_CASES {
            String::new()
        } else {
            format!(" for {} case(s) ({})", lost.len(), lost.join(", "))
        };
        let msg = format!(
            "Slurm job {} {state}{}{what}; log {}{}",
            job.id,
            if detail.is_empty() {
                String::new()
            } else {
                format!(" ({detail})")
            },
            job.log.display(),
            if tail.is_empty() {
                String::new()
            } else {
                format!(":\n{tail}")
            }
        );
        errors.push((ALL_CASES.into(), StageError::msg(msg)));
    }
}

/// The jobs of stage `label` recorded in `jobs_dir` that still run, each with those of
/// `missing` (item indices) it computes, which are taken out of `missing`; the records of
/// jobs that ended are removed (what they wrote was adopted from the cache already).
fn reattach(
    slurm: &Slurm,
    jobs_dir: &Path,
    label: &str,
    items: &[plan::PlannedItem],
    missing: &mut Vec<usize>,
) -> Vec<ActiveJob> {
    let records: Vec<(PathBuf, JobRecord)> = std::fs::read_dir(jobs_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let p = e.path();
            let rec = serde_json::from_slice::<JobRecord>(&std::fs::read(&p).ok()?).ok()?;
            (rec.stage == label).then_some((p, rec))
        })
        .collect();
    let mut out = Vec::new();
    if records.is_empty() {
        return out;
    }
    let ids: Vec<String> = records.iter().map(|(_, r)| r.job.clone()).collect();
    let Ok(states) = slurm.states(&ids) else {
        return out;
    };
    for (p, r) in records {
        if !states.get(&r.job).is_some_and(|s| s.active()) {
            let _ = std::fs::remove_file(p);
            continue;
        }
        let mine: Vec<usize> = missing
            .iter()
            .copied()
            .filter(|&i| r.keys.contains(&items[i].key.to_hex()))
            .collect();
        missing.retain(|i| !mine.contains(i));
        if mine.is_empty() {
            // Another run's job (the same stage under other params): not ours to follow.
            continue;
        }
        out.push(ActiveJob {
            id: r.job,
            items: mine,
            record: p,
            log: r.log,
        });
    }
    out
}

/// A submitted job the driver follows.
struct ActiveJob {
    id: String,
    /// Item indices of its node.
    items: Vec<usize>,
    /// `<cache>/jobs/<batch>.json`, removed when it ends.
    record: PathBuf,
    log: PathBuf,
}

/// A node's status from its items' errors (cancellations aside, the first failure).
fn node_status(errors: Vec<(String, StageError)>) -> Status {
    let failures: Vec<&(String, StageError)> = errors
        .iter()
        .filter(|(_, e)| !matches!(e, StageError::Cancelled))
        .collect();
    if let Some((case, e)) = failures.first() {
        let more = if failures.len() > 1 {
            format!(" (and {} more cases)", failures.len() - 1)
        } else {
            String::new()
        };
        let what = if case == ALL_CASES {
            String::new()
        } else {
            format!("case `{case}`: ")
        };
        Status::Failed(format!("{what}{e}{more}"))
    } else if !errors.is_empty() {
        Status::Cancelled
    } else {
        Status::Done
    }
}

/// Gives the memory a finished whole-dataset stage freed back to the system. glibc keeps
/// freed blocks in its arenas; a run that trains several variants one after another then
/// held every training set at once (measured on OpenKBP: 11 GB during the first training,
/// 19.6 GB during the second, killed for memory at the third, on 24 GB).
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the kernel; it has no
    // preconditions and touches no live allocation.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn poisoned<T>(_: std::sync::PoisonError<T>) -> StageError {
    StageError::msg("internal lock poisoned by an earlier panic")
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The first failed ancestor of node `n` (its label), if any dependency did not finish.
fn blocked_by(engine: &Engine, n: usize) -> Option<Status> {
    let total = engine.resolved.file.variants.len();
    for &d in &engine.resolved.nodes[n].deps {
        let st = engine.states[d].lock().ok().and_then(|s| s.status.clone());
        match st {
            Some(Status::Done) => {}
            Some(Status::Failed(_)) => {
                return Some(Status::Skipped(engine.resolved.nodes[d].label(total)))
            }
            Some(Status::Skipped(root)) => return Some(Status::Skipped(root)),
            Some(Status::Cancelled) | None => return Some(Status::Cancelled),
        }
    }
    None
}

/// Per node, the earlier nodes that plan some of the same item keys (cross-validation
/// folds, variants that share per-case items under different split params): it runs after
/// them and finds those items in the cache instead of computing them a second time at the
/// same moment. An order only: their failure does not skip it (`blocked_by` reads the
/// data dependencies). Nodes are in topological order, so an edge from an earlier node
/// never closes a cycle.
fn shared_key_order(plan: &Plan) -> Vec<Vec<usize>> {
    let mut owner: HashMap<CacheKey, usize> = HashMap::new();
    plan.nodes
        .iter()
        .enumerate()
        .map(|(n, np)| {
            let mut earlier: Vec<usize> = Vec::new();
            for it in &np.items {
                match owner.get(&it.key) {
                    Some(&m) if m != n => {
                        if !earlier.contains(&m) {
                            earlier.push(m);
                        }
                    }
                    Some(_) => {}
                    None => {
                        owner.insert(it.key, n);
                    }
                }
            }
            earlier
        })
        .collect()
}

/// Calls `combine_variants` for every gather stage id that ran, and finished, for several
/// variants. Errors are logged: the run's own results are complete either way.
fn combine_variants(engine: &Engine) {
    let resolved = &engine.resolved;
    if resolved.file.variants.len() < 2 || engine.cancel.is_cancelled() {
        return;
    }
    let mut ids: Vec<&str> = resolved
        .nodes
        .iter()
        .filter(|n| n.shape == Shape::Gather)
        .map(|n| n.id.as_str())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    for id in ids {
        let nodes: Vec<usize> = (0..resolved.nodes.len())
            .filter(|&i| resolved.nodes[i].id == id)
            .collect();
        let done = nodes.iter().all(|&i| {
            engine.states[i]
                .lock()
                .map(|s| s.status == Some(Status::Done))
                .unwrap_or(false)
        });
        if !done {
            continue;
        }
        let mut outputs = Vec::new();
        for &i in &nodes {
            match engine.load(i, ALL_CASES) {
                Ok(item) => {
                    for v in &resolved.nodes[i].variants {
                        outputs.push((v.clone(), item.clone()));
                    }
                }
                Err(e) => {
                    tracing::error!(stage = id, "cannot read a variant's result: {e}");
                    outputs.clear();
                    break;
                }
            }
        }
        if outputs.len() < 2 {
            continue;
        }
        let first = nodes[0];
        let ctx = StageCtx {
            base_dir: resolved.file.base_dir(),
            stage_id: id,
            seed: resolved.file.seed,
            scratch: engine.scratch_root.clone(),
            run_dir: engine.run_dir.clone(),
            output_dir: engine.run_dir.join(id),
            work_dir: engine.scratch_root.clone(),
            cancel: &engine.cancel,
            progress: Default::default(),
        };
        if let Err(e) = resolved.nodes[first].stage.combine_variants(&ctx, &outputs) {
            tracing::error!(stage = id, "comparing variants failed: {e}");
        }
    }
}

/// Scratch lives in the cache's folder, so an interrupted run's is found and removed.
fn scratch_root(cache: &Cache) -> PathBuf {
    match cache.scratch_dir() {
        Ok(d) => d,
        Err(e) => {
            static RUNS: AtomicUsize = AtomicUsize::new(0);
            let d = std::env::temp_dir().join(format!(
                "shapeflow-{}-{}",
                std::process::id(),
                RUNS.fetch_add(1, Ordering::Relaxed)
            ));
            tracing::warn!("{e}; scratch goes to {}", d.display());
            d
        }
    }
}

/// A cluster job's work (`pipeline job`): computes and stores the items of node `n` for
/// `cases` (`*` for a whole-dataset node) in `cache`, a shared view beside the driver, and
/// nothing else (the driver records, publishes and indexes them when the job ends). Items
/// already there are skipped. `signature` must be node `n`'s: a job whose pipeline resolves
/// differently from its driver's (the file or the environment changed) refuses to run.
/// Returns how many items it computed.
pub fn execute_items(
    resolved: Arc<Resolved>,
    plan: Arc<Plan>,
    cache: Arc<Cache>,
    opts: RunOptions,
    n: usize,
    signature: &str,
    cases: &[String],
) -> Result<usize, String> {
    let node = resolved.nodes.get(n).ok_or_else(|| {
        format!(
            "the pipeline has {} stage nodes here, the driver asked for node {n}: it resolves differently on this machine",
            resolved.nodes.len()
        )
    })?;
    if node.signature.to_hex() != signature || plan.nodes.len() != resolved.nodes.len() {
        return Err(format!(
            "stage `{}` resolves differently here than in the driver (signature {} vs {}): the pipeline file, its --set overrides or the environment differ",
            node.id,
            node.signature.short(),
            signature.get(..12).unwrap_or(signature)
        ));
    }
    let scratch_root = scratch_root(&cache);
    let engine = Engine::new(resolved.clone(), plan, cache, &opts, scratch_root.clone());
    let items: Vec<usize> = cases
        .iter()
        .map(|c| engine.item_index(n, c).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    let one = |i: usize| -> Result<bool, String> {
        let planned = &engine.plan.nodes[n].items[i];
        let fail = |e: StageError| format!("case `{}`: {e}", planned.case.id);
        if engine
            .cache
            .contains(&planned.key)
            .map_err(|e| e.to_string())?
        {
            return Ok(false);
        }
        let item = Arc::new(engine.compute(n, i).map_err(fail)?);
        engine.store(n, i, &item).map_err(fail)?;
        Ok(true)
    };
    let results: Vec<Result<bool, String>> = if node.stage.resource().is_some() || items.len() <= 1
    {
        items.iter().map(|&i| one(i)).collect()
    } else {
        items.par_iter().map(|&i| one(i)).collect()
    };
    let _ = std::fs::remove_dir_all(&scratch_root);
    if let Some(job_dir) = scratch_root.parent() {
        let _ = std::fs::remove_dir(job_dir); // only if no other scratch is in it
    }
    let mut computed = 0;
    let mut errors = Vec::new();
    for r in results {
        match r {
            Ok(c) => computed += c as usize,
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(computed)
    } else {
        Err(errors.join("\n"))
    }
}

/// Runs every node of `plan`. Never panics on stage errors: they become statuses.
pub fn execute(
    resolved: Arc<Resolved>,
    plan: Arc<Plan>,
    cache: Arc<Cache>,
    opts: RunOptions,
) -> RunReport {
    let started = Instant::now();
    if cache.leftovers_removed() > 0 {
        tracing::info!(
            "removed {} temporary files and scratch folders left in the cache by an interrupted run",
            cache.leftovers_removed()
        );
    }
    let scratch_root = scratch_root(&cache);
    let engine = Arc::new(Engine::new(
        resolved.clone(),
        plan,
        cache,
        &opts,
        scratch_root.clone(),
    ));
    let mut deps: Vec<Vec<usize>> = resolved.nodes.iter().map(|nd| nd.deps.clone()).collect();
    for (n, earlier) in shared_key_order(&engine.plan).into_iter().enumerate() {
        for m in earlier {
            if !deps[n].contains(&m) {
                deps[n].push(m);
            }
        }
    }
    let eng = engine.clone();
    let job: dag::Job = Arc::new(move |i: usize| {
        let eng = eng.clone();
        Box::pin(async move {
            let t0 = Instant::now();
            let status = match blocked_by(&eng, i) {
                Some(s) => s,
                None if eng.cancel.is_cancelled() => Status::Cancelled,
                None => {
                    let e2 = eng.clone();
                    match tokio::task::spawn_blocking(move || e2.run_node(i)).await {
                        Ok(s) => s,
                        Err(e) => Status::Failed(format!("stage panicked: {e}")),
                    }
                }
            };
            if let Status::Failed(m) = &status {
                tracing::error!(stage = %eng.resolved.nodes[i].label(eng.resolved.file.variants.len()), "{m}");
            }
            if let Ok(mut s) = eng.states[i].lock() {
                s.status = Some(status);
                s.wall = t0.elapsed();
            }
        })
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build();
    let dag_result = match rt {
        Ok(rt) => {
            let cancel = opts.cancel.clone();
            rt.block_on(async move {
                tokio::spawn(async move {
                    if tokio::signal::ctrl_c().await.is_ok() {
                        eprintln!("\ninterrupted: finishing the items in progress, then stopping (Ctrl-C again to abort now)");
                        cancel.cancel();
                        if tokio::signal::ctrl_c().await.is_ok() {
                            std::process::exit(130);
                        }
                    }
                });
                if deps.is_empty() { Ok(()) } else { dag::run(&deps, job).await }
            })
        }
        Err(e) => Err(format!("cannot start the async runtime: {e}")),
    };
    if let Err(e) = dag_result {
        tracing::error!("executor: {e}");
    }
    combine_variants(&engine);
    let _ = engine.cache.flush();
    let _ = std::fs::remove_dir_all(&scratch_root);
    let total = resolved.file.variants.len();
    let nodes = resolved
        .nodes
        .iter()
        .enumerate()
        .map(|(i, nd)| {
            let s = engine.states[i].lock();
            let (status, computed, cached, wall, waited, jobs) = match s {
                Ok(s) => (
                    s.status.clone().unwrap_or(Status::Cancelled),
                    s.computed.load(Ordering::Relaxed),
                    s.cached.load(Ordering::Relaxed),
                    s.wall,
                    s.waited,
                    s.jobs.clone(),
                ),
                Err(_) => (
                    Status::Failed("internal state poisoned".into()),
                    0,
                    0,
                    Duration::ZERO,
                    Duration::ZERO,
                    Vec::new(),
                ),
            };
            NodeReport {
                stage: nd.id.clone(),
                plugin: nd.plugin.clone(),
                variants: nd.variants.clone(),
                label: nd.label(total),
                status,
                computed,
                cached,
                wall_s: wall.saturating_sub(waited).as_secs_f64(),
                waited_s: waited.as_secs_f64(),
                jobs,
            }
        })
        .collect();
    RunReport {
        nodes,
        cancelled: opts.cancel.is_cancelled(),
        wall_s: started.elapsed().as_secs_f64(),
    }
}

//! The `pipeline` command line.

use anyhow::{anyhow, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use shapeflow_cache::{Cache, WaitPolicy};
use shapeflow_core::config::parse_set;
use shapeflow_core::{
    manifest, plan, resolve, run, CancelToken, ConfigErrors, Override, PipelineFile, Registry,
};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Default cache directory, relative to the working directory.
pub const DEFAULT_CACHE: &str = ".pipeline/cache";

#[derive(Parser, Debug)]
#[command(
    name = "pipeline",
    version,
    about = "Cached, DAG-driven pipelines for 3D medical image segmentation"
)]
struct Cli {
    /// More log output (-v: debug, -vv: trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Only warnings and errors.
    #[arg(short, long, global = true)]
    quiet: bool,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Pretty, global = true)]
    log_format: LogFormat,
    /// Largest image accepted, in voxels (default 2^30 = 1073741824): a file whose header
    /// declares more is refused before anything is read.
    #[arg(long, global = true, env = "SHAPEFLOW_MAX_VOXELS", value_parser = clap::value_parser!(u64).range(1..))]
    max_voxels: Option<u64>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Pretty,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a pipeline: compute what the cache lacks, for every variant.
    Run(RunArgs),
    /// Show what `run` would compute and why, without running anything.
    Plan(PipelineArgs),
    /// Check a pipeline file (plugins, params, dependencies, variants) and exit.
    Validate(ValidateArgs),
    /// Apply a trained model to new images (no labels needed): the preprocessing it was
    /// trained with is replayed, predictions land on each image's own grid.
    Predict(PredictArgs),
    /// Export a trained model for deployment (TorchScript or ONNX) with its preprocessing in
    /// a JSON beside it; runs Python with torch (`--python`).
    Export(ExportArgs),
    /// Read every case of the pipeline's datasets: shapes, spacings, orientations, intensities,
    /// organs present/absent/empty, problems (exit 1 if any error), suggested settings.
    Inspect(InspectArgs),
    /// List the available stages, or show one stage's help and params.
    Plugins {
        /// A stage name, e.g. `exec`.
        name: Option<String>,
    },
    /// Compare variants whose reports different runs wrote (or records kept): the report's
    /// table and paired tests, seeds pooled by case and seed.
    Compare(CompareArgs),
    /// Inspect and maintain the cache.
    Cache(CacheArgs),
    /// A cluster job's work (what `run --executor slurm` submits): compute some items of one
    /// stage node into the shared cache.
    #[command(hide = true)]
    Job(JobArgs),
}

#[derive(Args, Debug)]
struct JobArgs {
    /// The pipeline YAML file (as the driver resolved it).
    file: PathBuf,
    #[arg(long = "set", value_name = "STAGE.PARAM=VALUE")]
    sets: Vec<String>,
    /// The driver's variant selection.
    #[arg(long, value_delimiter = ',')]
    variants: Vec<String>,
    /// The shared cache (the driver's).
    #[arg(long)]
    cache: PathBuf,
    /// The driver's run directory.
    #[arg(long)]
    run_dir: PathBuf,
    /// The driver's plan (JSON).
    #[arg(long)]
    plan: PathBuf,
    /// The stage node's index in the resolved graph.
    #[arg(long)]
    node: usize,
    /// The node's signature, checked against this machine's resolution.
    #[arg(long)]
    signature: String,
    /// Case ids, comma-separated (`*`: the whole-dataset item).
    #[arg(long, value_delimiter = ',')]
    cases: Vec<String>,
}

#[derive(Args, Debug)]
struct ValidateArgs {
    /// The pipeline YAML file.
    file: PathBuf,
    /// Override a param: `stage.param=value` (repeatable), the seed: `seed=N`, or the
    /// training seeds: `seeds=1,2,3`.
    #[arg(long = "set", value_name = "STAGE.PARAM=VALUE")]
    sets: Vec<String>,
}

#[derive(Args, Debug)]
struct PipelineArgs {
    /// The pipeline YAML file.
    file: PathBuf,
    /// Override a param: `stage.param=value` (repeatable; applies to every variant), the
    /// pipeline's seed: `seed=N`, or its training seeds (every variant once per seed, as
    /// `seeds:`): `seeds=1,2,3`.
    #[arg(long = "set", value_name = "STAGE.PARAM=VALUE")]
    sets: Vec<String>,
    /// Cache directory (default: the file's `cache:`, else .pipeline/cache).
    #[arg(long)]
    cache: Option<PathBuf>,
    /// Fail at once if another process holds the cache, instead of waiting.
    #[arg(long)]
    no_wait: bool,
    /// Only these variants (comma-separated; a name selects all its seeds and cross-validation
    /// folds). Default: the file's `default_variants:`, else every variant.
    #[arg(long, value_delimiter = ',')]
    variants: Vec<String>,
}

#[derive(Args, Debug)]
struct PredictArgs {
    /// A trained model's folder, as a run writes it (runs/<run>/<train stage>/[<variant>/]);
    /// several: an ensemble (their outputs averaged before organs are decided).
    #[arg(short, long = "model", required = true)]
    models: Vec<PathBuf>,
    /// An image; a folder of images (.nii.gz, .nii, .nrrd, .nhdr, .mha, .mhd; nnU-Net's
    /// `<case>_0000` naming understood); an MSD / nnU-Net dataset (its imagesTs/); or a
    /// folder of case folders (`<case>/ct.nii.gz`, as PDDCA and OpenKBP are laid out).
    #[arg(short, long)]
    input: PathBuf,
    /// In case folders: the image's file name (default: the folder's only image).
    #[arg(long)]
    image: Option<String>,
    /// Where the predictions go (`<case>.nii.gz`, as `infer` writes them).
    #[arg(short, long)]
    output: PathBuf,
    /// Test-time mirroring (left-right, as training augmented: 2 passes; left/right organs
    /// swapped back).
    #[arg(long)]
    tta: bool,
    /// Also write each organ's SDM or probability map.
    #[arg(long)]
    save_maps: bool,
    /// cpu, cuda, cuda:N or auto (default: as the model was applied in its pipeline).
    #[arg(long)]
    device: Option<String>,
    /// Windows per network call.
    #[arg(long)]
    batch: Option<usize>,
}

#[derive(Args, Debug)]
struct ExportArgs {
    /// A trained model's folder (model.safetensors, model.json).
    #[arg(short, long = "model")]
    model: PathBuf,
    /// torchscript or onnx.
    #[arg(long, value_parser = ["torchscript", "onnx"])]
    format: String,
    /// The file to write (and `<file>.json` with the preprocessing beside it).
    #[arg(short, long)]
    output: PathBuf,
    /// A Python with torch (and `onnx` for ONNX).
    #[arg(long, env = "SHAPEFLOW_EXPORT_PYTHON", default_value = "python3")]
    python: PathBuf,
}

#[derive(Args, Debug)]
struct CompareArgs {
    /// Reports to compare, each `[NAME=]PATH`: a report's `metrics.csv`, its folder, or a
    /// run's `report/` (each variant's folder in it). A folder `<variant>_<seed>` (as a run
    /// names a seed's report) is `<variant>@<seed>`; NAME (`<variant>` or
    /// `<variant>@<seed>`) names a report otherwise. A variant's seeds are pooled.
    #[arg(required = true, value_name = "[NAME=]PATH")]
    reports: Vec<String>,
    /// Print JSON instead of Markdown.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct InspectArgs {
    /// The pipeline YAML file: each of its case sources (e.g. `load`) is inspected.
    file: PathBuf,
    /// Override a param: `stage.param=value` (repeatable), the seed: `seed=N`, or the
    /// training seeds: `seeds=1,2,3`.
    #[arg(long = "set", value_name = "STAGE.PARAM=VALUE")]
    sets: Vec<String>,
    /// Print JSON instead of the report.
    #[arg(long)]
    json: bool,
    /// GPU memory the suggested patch size must fit (GiB).
    #[arg(long, default_value_t = 24.0)]
    gpu_memory: f64,
    /// Worker threads reading cases (default: all cores).
    #[arg(short, long)]
    jobs: Option<usize>,
}

#[derive(Args, Debug)]
struct RunArgs {
    #[command(flatten)]
    pipeline: PipelineArgs,
    /// Worker threads for per-case work (default: all cores).
    #[arg(short, long)]
    jobs: Option<usize>,
    /// Where run directories go.
    #[arg(long, default_value = "runs")]
    runs: PathBuf,
    /// No progress bars.
    #[arg(long)]
    no_progress: bool,
    /// Let N stages share a resource, e.g. `--slots gpu=3` trains three small models on
    /// one GPU at once (repeatable; default one stage per resource).
    #[arg(long = "slots", value_name = "RESOURCE=N", value_parser = parse_slots)]
    slots: Vec<(String, usize)>,
    /// Where items are computed: `local` (this process) or `slurm` (jobs on a Slurm
    /// cluster sharing the cache's filesystem). Default: the file's `executor:`, else local.
    #[arg(long, value_parser = ["local", "slurm"])]
    executor: Option<String>,
}

fn parse_slots(s: &str) -> Result<(String, usize), String> {
    let (name, n) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}`: expected RESOURCE=N, e.g. gpu=2"))?;
    if name.trim().is_empty() {
        return Err(format!("`{s}`: name the resource, e.g. gpu=2"));
    }
    match n.trim().parse::<usize>() {
        Ok(n) if n >= 1 => Ok((name.trim().to_string(), n)),
        _ => Err(format!("`{s}`: N must be a whole number of at least 1")),
    }
}

#[derive(Args, Debug)]
struct CacheArgs {
    /// Cache directory.
    #[arg(long, default_value = DEFAULT_CACHE, global = true)]
    cache: PathBuf,
    /// Fail at once if another process holds the cache.
    #[arg(long, global = true)]
    no_wait: bool,
    #[command(subcommand)]
    command: CacheCommand,
}

#[derive(Subcommand, Debug)]
enum CacheCommand {
    /// Entries and bytes by stage.
    Stats,
    /// Evict least-recently-used entries down to a size, e.g. `--max-size 20G`.
    Gc {
        #[arg(long, value_parser = parse_size)]
        max_size: u64,
    },
    /// Check every entry's checksum; exit 1 if any is corrupt or missing.
    Verify,
    /// Rebuild the index from the stored objects, dropping what is corrupt.
    Repair,
}

/// Parses sizes like `512M`, `20G`, `1.5T`, `1000` (bytes).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some('k' | 'K') => (&s[..s.len() - 1], 1u64 << 10),
        Some('m' | 'M') => (&s[..s.len() - 1], 1 << 20),
        Some('g' | 'G') => (&s[..s.len() - 1], 1 << 30),
        Some('t' | 'T') => (&s[..s.len() - 1], 1 << 40),
        _ => (s, 1),
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a size like 500M or 20G"))?;
    if !(v.is_finite() && v >= 0.0) {
        return Err(format!("`{s}` is not a size"));
    }
    Ok((v * mult as f64) as u64)
}

fn init_logging(cli: &Cli) {
    use tracing_subscriber::EnvFilter;
    let level = if cli.quiet {
        "warn"
    } else {
        match cli.verbose {
            0 => "info",
            1 => "debug",
            _ => "trace",
        }
    };
    let filter = EnvFilter::try_from_env("PIPELINE_LOG").unwrap_or_else(|_| EnvFilter::new(level));
    // Colours only on a terminal: logs redirected to a file stay plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match cli.log_format {
        LogFormat::Pretty => builder.with_target(false).try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Runs the CLI with `registry` on `args` (the first being the program name); returns the
/// exit code: 0 success, 1 a failed stage or command, 2 a bad pipeline file or usage,
/// 130 cancelled by Ctrl-C.
pub fn main_with(registry: Registry, args: impl IntoIterator<Item = OsString>) -> u8 {
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    init_logging(&cli);
    if let Some(n) = cli.max_voxels {
        shapeflow_formats::set_max_voxels(n);
    }
    match dispatch(cli, &registry) {
        Ok(code) => code,
        Err(e) => {
            if let Some(ce) = e.downcast_ref::<ConfigErrors>() {
                eprintln!("{ce}");
                return 2;
            }
            eprintln!("error: {e:#}");
            1
        }
    }
}

fn dispatch(cli: Cli, registry: &Registry) -> Result<u8> {
    match cli.command {
        Command::Run(a) => cmd_run(a, registry),
        Command::Plan(a) => cmd_plan(a, registry),
        Command::Validate(a) => cmd_validate(a, registry),
        Command::Inspect(a) => cmd_inspect(a, registry),
        Command::Predict(a) => cmd_predict(a, registry),
        Command::Export(a) => cmd_export(a),
        Command::Plugins { name } => cmd_plugins(name.as_deref(), registry),
        Command::Compare(a) => cmd_compare(a),
        Command::Cache(a) => cmd_cache(a),
        Command::Job(a) => cmd_job(a, registry),
    }
}

fn cmd_job(a: JobArgs, registry: &Registry) -> Result<u8> {
    // The scheduler's CPU share, not the node's core count.
    if let Some(n) = std::env::var("SLURM_CPUS_PER_TASK")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(n.max(1))
            .build_global();
    }
    let (resolved, _) = load_variants(&a.file, &a.sets, &a.variants, registry)?;
    let bytes = std::fs::read(&a.plan)
        .with_context(|| format!("cannot read the plan {}", a.plan.display()))?;
    let plan: plan::Plan = serde_json::from_slice(&bytes)
        .with_context(|| format!("cannot read the plan {}", a.plan.display()))?;
    let cache = Cache::open_shared(&a.cache)
        .with_context(|| format!("cannot open the shared cache {}", a.cache.display()))?;
    let started = std::time::Instant::now();
    let computed = run::execute_items(
        Arc::new(resolved),
        Arc::new(plan),
        Arc::new(cache),
        run::RunOptions::local(a.run_dir.clone()),
        a.node,
        &a.signature,
        &a.cases,
    )
    .map_err(|e| anyhow!(e))?;
    eprintln!(
        "job: {computed} of {} item(s) computed in {:.1}s",
        a.cases.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(0)
}

fn load(
    file: &Path,
    sets: &[String],
    registry: &Registry,
) -> Result<(resolve::Resolved, Vec<Override>)> {
    select_variants(file, sets, &[], true, registry)
}

/// [`load`], keeping only the variants named in `only`; when empty, the file's
/// `default_variants:` (all without it).
fn load_variants(
    file: &Path,
    sets: &[String],
    only: &[String],
    registry: &Registry,
) -> Result<(resolve::Resolved, Vec<Override>)> {
    select_variants(file, sets, only, false, registry)
}

/// The variants named in `only`; when it is empty, every variant if `all`, else the file's
/// `default_variants:` (every variant without it).
fn select_variants(
    file: &Path,
    sets: &[String],
    only: &[String],
    all: bool,
    registry: &Registry,
) -> Result<(resolve::Resolved, Vec<Override>)> {
    let mut pf = PipelineFile::load(file)?;
    let only = match &pf.default_variants {
        Some(d) if only.is_empty() && !all => d.clone(),
        _ => only.to_vec(),
    };
    // `--set seed=N` replaces the file's top-level `seed:`, `--set seeds=A,B` its `seeds:`
    // (before `--variants`, which may name `variant@seed`); the rest are stage params.
    let mut stage_sets = Vec::new();
    for s in sets {
        if let Some(v) = s.strip_prefix("seed=") {
            pf.seed = v
                .trim()
                .parse()
                .map_err(|_| anyhow!("--set {s}: the seed is a non-negative whole number"))?;
        } else if let Some(v) = s.strip_prefix("seeds=") {
            pf.replace_seeds(&parse_seed_list(v).map_err(|e| anyhow!("--set {s}: {e}"))?);
        } else {
            stage_sets.push(s);
        }
    }
    if !only.is_empty() {
        // A variant's name selects its seeds (`dice@1`) and folds (`dice:f0`), and a fold
        // its seeds.
        let selects = |want: &str, name: &str| {
            let no_seed = name.split('@').next().unwrap_or(name);
            let no_fold = no_seed.split(':').next().unwrap_or(no_seed);
            want == name || want == no_seed || want == no_fold
        };
        for want in &only {
            if !pf.variants.iter().any(|v| selects(want, &v.name)) {
                let names: Vec<&str> = pf.variants.iter().map(|v| v.name.as_str()).collect();
                return Err(anyhow!(
                    "--variants: `{want}` is not a variant of {}; it has: {}",
                    file.display(),
                    names.join(", ")
                ));
            }
        }
        pf.variants
            .retain(|v| only.iter().any(|w| selects(w, &v.name)));
    }
    let overrides: Vec<Override> = stage_sets
        .iter()
        .map(|s| parse_set(s))
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow!(e))?;
    let resolved = resolve::resolve(&pf, registry, &overrides)?;
    Ok((resolved, overrides))
}

/// `7,2020,42` or `[7, 2020, 42]`: distinct non-negative whole numbers, at least one.
fn parse_seed_list(v: &str) -> Result<Vec<u64>, String> {
    let inner = v.trim().trim_start_matches('[').trim_end_matches(']');
    let mut seeds = Vec::new();
    for part in inner.split(',') {
        let seed: u64 = part.trim().parse().map_err(|_| {
            format!(
                "`{}` is not a seed (a non-negative whole number; seeds=1,2,3)",
                part.trim()
            )
        })?;
        if seeds.contains(&seed) {
            return Err(format!("seed {seed} is listed twice"));
        }
        seeds.push(seed);
    }
    Ok(seeds)
}

fn open_cache(dir: &Path, no_wait: bool) -> Result<Cache> {
    let policy = if no_wait {
        WaitPolicy::NoWait
    } else {
        WaitPolicy::Wait
    };
    Cache::open(dir, policy, &|msg| eprintln!("{msg}"))
        .with_context(|| format!("cannot open cache {}", dir.display()))
}

fn cache_dir(args: &PipelineArgs, resolved: &resolve::Resolved) -> PathBuf {
    args.cache
        .clone()
        .or_else(|| resolved.file.cache.clone())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CACHE))
}

fn cmd_validate(a: ValidateArgs, registry: &Registry) -> Result<u8> {
    let (r, _) = load(&a.file, &a.sets, registry)?;
    let by_default = match &r.file.default_variants {
        Some(d) => format!(" ({} run by default: {})", d.len(), d.join(", ")),
        None => String::new(),
    };
    println!(
        "{}: ok ({} stages, {} variants{by_default}, {} stage instances to run)",
        a.file.display(),
        r.file.stages.len(),
        r.file.variants.len(),
        r.nodes.len()
    );
    Ok(0)
}

fn cmd_plan(a: PipelineArgs, registry: &Registry) -> Result<u8> {
    let (r, _) = load_variants(&a.file, &a.sets, &a.variants, registry)?;
    let cache = open_cache(&cache_dir(&a, &r), a.no_wait)?;
    let p = plan::make_plan(&r, &CancelToken::default()).map_err(|e| anyhow!(e))?;
    let why = plan::explain(&r, &p, &cache);
    let total_v = r.file.variants.len();
    println!(
        "{:<28} {:>6} {:>8} {:>8}  why",
        "stage", "items", "cached", "compute"
    );
    let (mut all_c, mut all_n) = (0, 0);
    for (i, node) in r.nodes.iter().enumerate() {
        let items = p.nodes[i].items.len();
        let cached = why[i].get(&plan::Reason::Cached).copied().unwrap_or(0);
        let reasons: Vec<String> = why[i]
            .iter()
            .filter(|(r, _)| **r != plan::Reason::Cached)
            .map(|(r, n)| format!("{} ({n})", r.describe()))
            .collect();
        all_c += cached;
        all_n += items - cached;
        println!(
            "{:<28} {:>6} {:>8} {:>8}  {}",
            node.label(total_v),
            items,
            cached,
            items - cached,
            reasons.join(", ")
        );
    }
    println!("\n{all_n} items to compute, {all_c} from the cache");
    Ok(0)
}

/// The exporter and the PyTorch UNet it loads, shipped inside the binary.
const EXPORT_PY: &str = include_str!("../python/export.py");
const UNET_PY: &str = include_str!("../python/shapeflow_unet.py");

fn cmd_export(a: ExportArgs) -> Result<u8> {
    for f in ["model.safetensors", "model.json"] {
        if !a.model.join(f).is_file() {
            return Err(anyhow!(
                "{}: no {f} (a model folder, as `train` writes it)",
                a.model.display()
            ));
        }
    }
    let dir = tempfile::tempdir().context("cannot create a scratch folder")?;
    std::fs::write(dir.path().join("export.py"), EXPORT_PY)?;
    std::fs::write(dir.path().join("shapeflow_unet.py"), UNET_PY)?;
    let out = std::process::Command::new(&a.python)
        .arg(dir.path().join("export.py"))
        .arg(&a.model)
        .arg(&a.format)
        .arg(&a.output)
        .output()
        .with_context(|| {
            format!(
                "cannot run {} (export needs a Python with torch: --python PATH)",
                a.python.display()
            )
        })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(8).collect();
        return Err(anyhow!(
            "export with {} failed:\n{}",
            a.python.display(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ));
    }
    eprintln!(
        "wrote {} and {}.json (preprocessing, organs, how to decode the output)",
        a.output.display(),
        a.output.display()
    );
    Ok(0)
}

fn cmd_predict(a: PredictArgs, registry: &Registry) -> Result<u8> {
    use crate::predict;
    let pkgs: Vec<predict::Package> = a
        .models
        .iter()
        .map(|m| predict::Package::open(m))
        .collect::<Result<_>>()?;
    let images = predict::input_images(&a.input, a.image.as_deref())?;
    // Ctrl-C ends the process; every file is written atomically, so none is left half.
    let cancel = CancelToken::default();
    eprintln!(
        "predicting {} case(s) with {}",
        images.len(),
        a.models
            .iter()
            .map(|m| m.display().to_string())
            .collect::<Vec<_>>()
            .join(" + ")
    );
    let started = std::time::Instant::now();
    let mut overrides: Vec<(String, serde_json::Value)> = Vec::new();
    if a.tta {
        overrides.push(("tta".into(), true.into()));
    }
    if a.save_maps {
        overrides.push(("write_maps".into(), true.into()));
    }
    if let Some(d) = &a.device {
        overrides.push(("device".into(), d.clone().into()));
    }
    if let Some(b) = a.batch {
        overrides.push(("batch".into(), b.into()));
    }
    use shapeflow_core::indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    let bar = ProgressBar::with_draw_target(
        Some(images.len() as u64),
        if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:.bold} [{bar:30}] {pos}/{len} {per_sec} eta {eta} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_prefix("predict");
    let done = predict::predict(
        registry, &pkgs, &images, &a.output, &overrides, &cancel, &bar,
    )?;
    bar.finish_and_clear();
    let total = started.elapsed().as_secs_f64();
    for d in &done {
        eprintln!("  {}: {:.1} s", d.id, d.seconds);
    }
    eprintln!(
        "{} case(s) in {total:.1} s ({:.2} cases/s); predictions in {}",
        done.len(),
        done.len() as f64 / total.max(1e-9),
        a.output.display()
    );
    Ok(0)
}

fn cmd_inspect(a: InspectArgs, registry: &Registry) -> Result<u8> {
    use rayon::prelude::*;
    use shapeflow_core::{CaseData, CaseDataItem, Inputs, Kind, Shape, StageCtx};
    let (r, _) = load(&a.file, &a.sets, registry)?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(a.jobs.unwrap_or(0))
        .build()
        .context("cannot start worker threads")?;
    let cancel = CancelToken::default();
    let scratch = std::env::temp_dir();
    let mut reports = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for node in &r.nodes {
        if node.shape != Shape::Source || node.stage.output() != Kind::Case {
            continue;
        }
        if !seen.insert(node.signature) {
            continue; // the same source in several variants
        }
        let ctx = StageCtx {
            base_dir: r.file.base_dir(),
            stage_id: &node.id,
            seed: node.seed,
            scratch: scratch.clone(),
            run_dir: scratch.clone(),
            output_dir: scratch.clone(),
            work_dir: scratch.clone(),
            cancel: &cancel,
            progress: Default::default(),
        };
        let cases = node
            .stage
            .discover(&ctx)
            .map_err(|e| anyhow!("stage `{}`: {e}", node.id))?;
        eprintln!("inspecting {} cases of stage `{}`", cases.len(), node.id);
        let read: Vec<(crate::inspect::CaseFacts, Vec<String>)> = pool.install(|| {
            cases
                .par_iter()
                .map(|c| {
                    let data = node
                        .stage
                        .run_case(&ctx, c, &Inputs::default())
                        .map_err(|e| e.to_string())
                        .and_then(|it| CaseData::from_item(&it).map_err(|e| e.to_string()));
                    let organs = data.as_ref().map(|d| d.organs.clone()).unwrap_or_default();
                    (crate::inspect::case_facts(c, data), organs)
                })
                .collect()
        });
        let organs = read
            .iter()
            .find(|(f, _)| f.error.is_none())
            .map(|(_, o)| o.clone())
            .unwrap_or_default();
        let facts = read.into_iter().map(|(f, _)| f).collect();
        reports.push(crate::inspect::inspect(
            &node.id,
            organs,
            facts,
            a.gpu_memory,
        ));
    }
    if reports.is_empty() {
        return Err(anyhow!(
            "{}: no stage yields cases to inspect (e.g. `load`)",
            a.file.display()
        ));
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        for rep in &reports {
            println!("{}", rep.markdown());
        }
    }
    let errors: usize = reports.iter().map(|r| r.errors.len()).sum();
    if errors > 0 {
        eprintln!("inspect: {errors} error(s) found");
    }
    Ok(u8::from(errors > 0))
}

/// Settings of [`run_pipeline`].
pub struct RunSettings {
    /// Cache directory; `None`: the file's `cache:`, else [`DEFAULT_CACHE`].
    pub cache: Option<PathBuf>,
    pub no_wait: bool,
    /// Where run directories go.
    pub runs: PathBuf,
    pub progress: bool,
    pub cancel: CancelToken,
    /// Stages allowed to share each resource (see `run --slots`).
    pub slots: Vec<(String, usize)>,
    /// `local` or `slurm`; `None`: the file's `executor:`.
    pub executor: Option<String>,
    /// Only these variants (empty: the file's `default_variants:`, else all).
    pub variants: Vec<String>,
}

impl Default for RunSettings {
    fn default() -> Self {
        RunSettings {
            cache: None,
            no_wait: false,
            runs: PathBuf::from("runs"),
            progress: false,
            cancel: CancelToken::default(),
            slots: Vec::new(),
            executor: None,
            variants: Vec::new(),
        }
    }
}

/// Validates, plans and runs a pipeline file; writes the run's manifest. Returns the report
/// and the manifest path. Stage failures are in the report, not errors.
pub fn run_pipeline(
    file: &Path,
    sets: &[String],
    registry: &Registry,
    settings: RunSettings,
) -> Result<(run::RunReport, PathBuf)> {
    let started = chrono::Local::now();
    let (r, _) = load_variants(file, sets, &settings.variants, registry)?;
    let dir = settings
        .cache
        .clone()
        .or_else(|| r.file.cache.clone())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CACHE));
    let cache = Arc::new(open_cache(&dir, settings.no_wait)?);
    let p = plan::make_plan(&r, &settings.cancel).map_err(|e| anyhow!(e))?;
    let run_dir =
        manifest::new_run_dir(&settings.runs, &r.file.name, started).with_context(|| {
            format!(
                "cannot create a run directory under {}",
                settings.runs.display()
            )
        })?;
    let executor = match settings.executor.as_deref() {
        None => r.file.executor.clone(),
        Some("local") => shapeflow_core::slurm::Executor::Local,
        Some("slurm") => match &r.file.executor {
            e @ shapeflow_core::slurm::Executor::Slurm(_) => e.clone(),
            _ => shapeflow_core::slurm::Executor::Slurm(Default::default()),
        },
        Some(other) => return Err(anyhow!("unknown executor `{other}` (local or slurm)")),
    };
    // What names this pipeline to a cluster job: the file, absolute, and the overrides.
    let mut job_args = vec![std::path::absolute(file)
        .unwrap_or_else(|_| file.to_path_buf())
        .to_string_lossy()
        .to_string()];
    for s in sets {
        job_args.push("--set".into());
        job_args.push(s.clone());
    }
    if !settings.variants.is_empty() {
        job_args.push("--variants".into());
        job_args.push(settings.variants.join(","));
    }
    let r = Arc::new(r);
    let p = Arc::new(p);
    tracing::info!(pipeline = %r.file.name, run_dir = %run_dir.display(), "run started");
    let report = run::execute(
        r.clone(),
        p.clone(),
        cache,
        run::RunOptions {
            run_dir: run_dir.clone(),
            cancel: settings.cancel,
            progress: settings.progress,
            slots: settings.slots.into_iter().collect(),
            executor,
            job_args,
        },
    );
    let m = manifest::write(
        &run_dir,
        &manifest::ManifestInput {
            resolved: &r,
            plan: &p,
            report: &report,
            started,
            tool_version: env!("CARGO_PKG_VERSION"),
            overrides: sets,
        },
    )
    .with_context(|| format!("cannot write the manifest in {}", run_dir.display()))?;
    Ok((report, m))
}

fn cmd_run(a: RunArgs, registry: &Registry) -> Result<u8> {
    if let Some(j) = a.jobs {
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(j.max(1))
            .build_global();
    }
    let (report, m) = run_pipeline(
        &a.pipeline.file,
        &a.pipeline.sets,
        registry,
        RunSettings {
            cache: a.pipeline.cache.clone(),
            no_wait: a.pipeline.no_wait,
            runs: a.runs.clone(),
            progress: !a.no_progress,
            cancel: CancelToken::default(),
            slots: a.slots.clone(),
            executor: a.executor.clone(),
            variants: a.pipeline.variants.clone(),
        },
    )?;
    print!("{}", report.table());
    println!(
        "\n{} computed, {} from cache, {:.2}s; manifest: {}",
        report.computed(),
        report.cached(),
        report.wall_s,
        m.display()
    );
    Ok(if report.cancelled {
        eprintln!("run cancelled: nothing half-written was kept; run again to continue");
        130
    } else if report.ok() {
        0
    } else {
        1
    })
}

fn cmd_plugins(name: Option<&str>, registry: &Registry) -> Result<u8> {
    match name {
        None => {
            for f in registry.factories() {
                println!(
                    "{:<16} {:<12} v{:<3} {}",
                    f.name(),
                    registry.plugin_of(f.name()).unwrap_or(""),
                    f.version(),
                    f.summary()
                );
            }
            println!("\n`pipeline plugins NAME` shows a stage's help and params.");
        }
        Some(n) => {
            let f = registry.get(n).ok_or_else(|| {
                let hint = registry
                    .nearest(n)
                    .map(|x| format!(" (did you mean `{x}`?)"))
                    .unwrap_or_default();
                anyhow!("no stage named `{n}`{hint}")
            })?;
            println!(
                "{} (version {})\n\n{}\n\n{}\n\nparams:",
                f.name(),
                f.version(),
                f.summary(),
                f.help().trim()
            );
            for p in f.params() {
                let mut default = if p.default.is_null() {
                    "required".to_string()
                } else {
                    format!("default {}", p.default)
                };
                if p.execution {
                    default.push_str(", execution-only (not in the cache key)");
                }
                if p.assignment {
                    default.push_str(", assigns splits (not in the cases' keys)");
                }
                if p.locator {
                    default.push_str(", where the data is (content fingerprinted, not the path)");
                }
                if p.per_case {
                    default.push_str(", per case (only the cases it names recompute)");
                }
                println!(
                    "  {:<18} {:<18} {}\n  {:<18} {}",
                    p.name, p.ty, default, "", p.doc
                );
            }
        }
    }
    Ok(0)
}

fn human(bytes: u64) -> String {
    let b = bytes as f64;
    match bytes {
        0..=1023 => format!("{bytes} B"),
        1024..=1048575 => format!("{:.1} KiB", b / 1024.0),
        1048576..=1073741823 => format!("{:.1} MiB", b / 1048576.0),
        _ => format!("{:.2} GiB", b / 1073741824.0),
    }
}

fn cmd_compare(a: CompareArgs) -> Result<u8> {
    let mut inputs = Vec::new();
    for r in &a.reports {
        inputs.extend(crate::compare::inputs_of(r)?);
    }
    let (md, json) = crate::compare::compare(&inputs)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        print!("{md}");
    }
    Ok(0)
}

fn cmd_cache(a: CacheArgs) -> Result<u8> {
    let cache = open_cache(&a.cache, a.no_wait)?;
    match a.command {
        CacheCommand::Stats => {
            let stats = cache.stats()?;
            println!(
                "{:<24} {:>8} {:>12} {:>12}",
                "stage", "entries", "raw", "stored"
            );
            let (mut e, mut r, mut s) = (0, 0, 0);
            for (stage, st) in &stats {
                println!(
                    "{:<24} {:>8} {:>12} {:>12}",
                    stage,
                    st.entries,
                    human(st.raw_bytes),
                    human(st.stored_bytes)
                );
                e += st.entries;
                r += st.raw_bytes;
                s += st.stored_bytes;
            }
            println!("{:<24} {:>8} {:>12} {:>12}", "total", e, human(r), human(s));
        }
        CacheCommand::Gc { max_size } => {
            let g = cache.gc(max_size)?;
            println!(
                "removed {} entries ({}); {} remain",
                g.removed_entries,
                human(g.removed_bytes),
                human(g.remaining_bytes)
            );
        }
        CacheCommand::Verify => {
            let v = cache.verify()?;
            println!(
                "{} ok, {} corrupt, {} missing, {} orphan objects, {} temporary files",
                v.ok,
                v.corrupt.len(),
                v.missing.len(),
                v.orphans,
                v.temp_files
            );
            for (k, why) in &v.corrupt {
                println!("corrupt {k}: {why}");
            }
            for k in &v.missing {
                println!("missing {k}");
            }
            if !v.is_clean() {
                println!("run `pipeline cache repair` to drop them; the next run recomputes them");
                return Ok(1);
            }
        }
        CacheCommand::Repair => {
            let r = cache.repair()?;
            println!(
                "kept {}, adopted {} orphan objects, dropped {} bad entries, removed {} temporary files",
                r.kept, r.adopted, r.dropped, r.temp_removed
            );
        }
    }
    Ok(0)
}

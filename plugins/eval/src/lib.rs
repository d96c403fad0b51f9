//! The `eval` family: `evaluate` (per case) and `report` (per dataset).

pub mod figures;
pub mod records;
pub mod stats;

use records::{CaseRecord, OrganRecord, BACKGROUND, CSV_COLUMNS, METRICS};
use serde::{Deserialize, Serialize};
use shapeflow_core::{
    CaseData, CaseInfo, Inputs, Item, Kind, ParamError, Plugin, Port, Registry, Shape, Stage,
    StageCtx, StageDef, StageError, VoxelData,
};
use shapeflow_metrics::{
    label_metrics, volume_outliers, Convention, Options, Surface, VolumeOutlier,
};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

/// Registers `evaluate` and `report`.
pub struct EvalPlugin;

impl Plugin for EvalPlugin {
    fn name(&self) -> &'static str {
        "eval"
    }

    fn register(&self, registry: &mut Registry) {
        registry.add(StageDef::<EvalParams> {
            name: "evaluate",
            // 2: records where each reference organ's voxels went (`labelled_as`).
            // 3: and where each predicted organ's voxels came from (`came_from`).
            version: 3,
            summary: "Per case and organ: Dice, HD95, ASSD, surface Dice, volumes (mm)",
            help: EVAL_HELP,
            build: |p, _| {
                if !(p.tolerance_mm.is_finite() && p.tolerance_mm >= 0.0) {
                    return Err(ParamError {
                        path: vec!["tolerance_mm".into()],
                        message: "must be a non-negative number of mm".into(),
                    });
                }
                Ok(Arc::new(Evaluate(p)))
            },
        });
        registry.add(StageDef::<ReportParams> {
            name: "report",
            version: 1,
            summary:
                "report.md with per-organ summary (mean, sd, median, IQR), CSV, JSON, box plots, overlays; ablation table across variants",
            help: REPORT_HELP,
            build: |p, _| Ok(Arc::new(Report(p))),
        });
    }
}

const EVAL_HELP: &str = r#"
Compares a prediction with a reference, organ by organ, on the reference's grid.

Two surface definitions (`surface`), named in the report header:
  boundary-voxels (default)  voxels of a mask with a face neighbour outside it (outside the
      volume counts as outside), as MONAI and medpy define them; each weighs the same.
  surface-elements  DeepMind surface-distance's: on the voxel-corner grid, wherever the
      2x2x2 voxels around a corner are mixed, the marching-cubes surface element there,
      weighted by its area (mm2); HD95 is the area-weighted 95th percentile, ASSD the mean
      of the two directed area-weighted means.
Distances are exact Euclidean (mm, anisotropic spacing) from a surface point to the other
surface, from the project's EDT, not a point search.

  dice          2|A and B| / (|A| + |B|)
  hd95          convention monai (default): the larger of the two directed 95th percentiles;
                convention medpy: the 95th percentile of both directions pooled
  assd          monai: mean of both directions pooled; medpy: mean of the two directed means
  hd            the largest distance
  surface_dice  fraction of both surfaces within `tolerance_mm` of the other
  volumes       reference and prediction in mm3, and their relative difference

Each compared organ also records where its reference voxels went (`labelled_as`: their
count per predicted label, the organ itself, background or another organ) and where its
predicted voxels came from (`came_from`: their count per reference label), which the
report tables: an organ lost to a neighbour's channel apart from one not found, an
over-segmentation into uncontoured tissue apart from one into a neighbour.

Defined results: both masks empty: dice 1, distances 0 ("both-empty"); one empty: dice 0,
distances +inf ("empty-prediction" / "empty-reference"). An organ not annotated in the
reference is "absent" and gets no metrics. Reports count these cases; they never vanish
from a mean as NaN.
"#;

const REPORT_HELP: &str = r#"
Gathers the `evaluate` results of every case and writes, under the run directory
(runs/<time>-<name>/<stage id>/, one subfolder per variant when variants differ here):
report.md (open this one: the summary table, where each organ's reference voxels went
(itself, background, other organs; pooled over cases), and the figures), boxplot_dice.png and
boxplot_hd95.png (one box per organ), and, when `reference` and `prediction` name inputs
holding the cases, overlay_<best|median|worst>_<case>_<organ>.png: axial, coronal and
sagittal slices through the organ with reference (green) and prediction (red) contours; metrics.csv (one row per case and organ), summary.json and
summary.md (per organ and metric: n, mean, sd, median, IQR over compared cases, with counts
of absent, empty and infinite results named beside them). With variants, also
variants.md and variants.json in <stage id>/: the ablation table, one column per variant,
the best per row marked, and a paired Wilcoxon signed-rank test of the best against each
other variant. Not cached: it rewrites its files on every run, from the cached per-case
metrics.
"#;

/// Params of `evaluate`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct EvalParams {
    /// The input holding the reference labels (default: the first input).
    pub reference: Option<String>,
    /// The input holding the predicted labels (default: the second input).
    pub prediction: Option<String>,
    /// Surface definition: boundary voxels (MONAI, medpy) or area-weighted surface elements
    /// (DeepMind surface-distance).
    pub surface: Surface,
    /// How HD95 and ASSD combine the two directions (see help).
    pub convention: Convention,
    /// Surface Dice tolerance in mm.
    pub tolerance_mm: f64,
    /// Prediction organ name per reference organ, when they differ.
    pub organs: BTreeMap<String, String>,
}

impl Default for EvalParams {
    fn default() -> Self {
        EvalParams {
            reference: None,
            prediction: None,
            surface: Surface::BoundaryVoxels,
            convention: Convention::Monai,
            tolerance_mm: 1.0,
            organs: BTreeMap::new(),
        }
    }
}

struct Evaluate(EvalParams);

/// The label value of `organ` in `case`, if the organ is in its table and annotated.
fn label_of(case: &CaseData, organ: &str) -> Option<u8> {
    let k = case.organs.iter().position(|o| o == organ)?;
    case.present
        .get(k)
        .copied()
        .unwrap_or(false)
        .then_some((k + 1) as u8)
}

/// Where voxels went, per compared (reference label, predicted label) pair.
#[derive(Debug, Default, PartialEq)]
struct Confusion {
    /// The reference organ's voxels per predicted label.
    labelled_as: BTreeMap<String, u64>,
    /// The predicted organ's voxels per reference label.
    came_from: BTreeMap<String, u64>,
}

/// For each (reference label, predicted label) pair, in one pass over the voxels: the
/// reference organ's voxels counted per predicted label (named by `predicted_names`) and
/// the predicted organ's voxels per reference label (named by `reference_names`); label k
/// is `names[k - 1]`, label 0 [`BACKGROUND`]. Counts under one name are summed.
fn confusion(
    reference: &[u8],
    prediction: &[u8],
    pairs: &[(u8, u8)],
    reference_names: &[String],
    predicted_names: &[String],
) -> Vec<Confusion> {
    // counts[reference label][predicted label], over voxels of a compared label.
    let mut counts = vec![[0u64; 256]; 256];
    let (mut want_r, mut want_p) = ([false; 256], [false; 256]);
    for &(r, p) in pairs {
        want_r[r as usize] = true;
        want_p[p as usize] = true;
    }
    for (&r, &p) in reference.iter().zip(prediction) {
        if want_r[r as usize] || want_p[p as usize] {
            counts[r as usize][p as usize] += 1;
        }
    }
    let name = |names: &[String], l: usize| match l {
        0 => BACKGROUND.to_string(),
        l => names
            .get(l - 1)
            .cloned()
            .unwrap_or_else(|| format!("label {l}")),
    };
    let by_name = |cells: &mut dyn Iterator<Item = (usize, u64)>, names: &[String]| {
        let mut m = BTreeMap::new();
        for (l, n) in cells.filter(|&(_, n)| n > 0) {
            *m.entry(name(names, l)).or_default() += n;
        }
        m
    };
    pairs
        .iter()
        .map(|&(r, p)| Confusion {
            labelled_as: by_name(
                &mut counts[r as usize].iter().copied().enumerate(),
                predicted_names,
            ),
            came_from: by_name(
                &mut counts.iter().map(|row| row[p as usize]).enumerate(),
                reference_names,
            ),
        })
        .collect()
}

/// Metrics of every reference organ of one case.
pub fn evaluate_case(
    reference: &CaseData,
    prediction: &CaseData,
    p: &EvalParams,
) -> Result<CaseRecord, StageError> {
    let name = |v: serde_json::Value| v.as_str().unwrap_or_default().to_string();
    let convention = match p.surface {
        Surface::BoundaryVoxels => name(serde_json::to_value(p.convention).unwrap_or_default()),
        Surface::SurfaceElements => "surface-distance".into(),
    };
    // An unlabeled reference case (an MSD `test` entry, nnU-Net's imagesTs): nothing to
    // compare, every organ recorded as not annotated.
    let Some(rl) = reference.labels.as_ref() else {
        return Ok(CaseRecord {
            convention,
            surface: name(serde_json::to_value(p.surface).unwrap_or_default()),
            organs: reference
                .organs
                .iter()
                .map(|o| (o.clone(), OrganRecord::absent("absent")))
                .collect(),
        });
    };
    let pl = prediction
        .labels
        .as_ref()
        .ok_or_else(|| StageError::msg("the prediction has no labels"))?;
    if !rl.grid().same_as(&pl.grid(), 1e-3) {
        return Err(StageError::msg(format!(
            "reference and prediction are on different grids (dims {:?} vs {:?}); resample the prediction onto the reference first",
            rl.dims, pl.dims
        )));
    }
    let (VoxelData::U8(rv), VoxelData::U8(pv)) = (&rl.data, &pl.data) else {
        return Err(StageError::msg("label maps must be u8"));
    };
    let mut out = BTreeMap::new();
    let mut pairs = Vec::new();
    let mut names = Vec::new();
    for organ in &reference.organs {
        let pred_name = p.organs.get(organ).unwrap_or(organ);
        let Some(lr) = label_of(reference, organ) else {
            out.insert(organ.clone(), OrganRecord::absent("absent"));
            continue;
        };
        // An organ the prediction does not have (a second rater who did not annotate it)
        // cannot be compared; a model's empty prediction is present and empty instead.
        let Some(lp) = label_of(prediction, pred_name) else {
            out.insert(organ.clone(), OrganRecord::absent("absent-in-prediction"));
            continue;
        };
        pairs.push((lr, lp));
        names.push(organ.clone());
    }
    let opts = Options {
        tolerance_mm: p.tolerance_mm,
        convention: p.convention,
        surface: p.surface,
    };
    // Predicted labels by the reference organ they are compared with (else their own name),
    // so that an organ's own share is under its name.
    let mut label_names = prediction.organs.clone();
    for (organ, &(_, lp)) in names.iter().zip(&pairs) {
        if let Some(n) = label_names.get_mut(lp as usize - 1) {
            *n = organ.clone();
        }
    }
    let went = confusion(rv, pv, &pairs, &reference.organs, &label_names);
    for ((organ, m), went) in names
        .into_iter()
        .zip(label_metrics(rv, pv, rl.dims, rl.spacing, &pairs, opts))
        .zip(went)
    {
        let mut r = OrganRecord::measured(&m);
        r.labelled_as = went.labelled_as;
        r.came_from = went.came_from;
        out.insert(organ, r);
    }
    Ok(CaseRecord {
        convention,
        surface: name(serde_json::to_value(p.surface).unwrap_or_default()),
        organs: out,
    })
}

impl Stage for Evaluate {
    fn output(&self) -> Kind {
        Kind::Metrics
    }

    fn ports(&self) -> Vec<Port> {
        // Both sides are cases: a prediction (from `infer`) or a second rater's labels. An
        // exact-kind match binds first, so `after: [infer, load]` still puts `load` on the
        // reference side.
        vec![
            Port::new("reference", Kind::Case).from_param("reference", self.0.reference.as_deref()),
            Port::new("prediction", Kind::Case)
                .from_param("prediction", self.0.prediction.as_deref()),
        ]
    }

    fn shape(&self) -> Shape {
        Shape::PerCase
    }

    fn run_case(&self, _: &StageCtx, case: &CaseInfo, inputs: &Inputs) -> Result<Item, StageError> {
        let r = inputs.case("reference")?;
        let p = inputs.case("prediction")?;
        let v = evaluate_case(&r, &p, &self.0)
            .map_err(|e| StageError::msg(format!("case {}: {e}", case.id)))?;
        Ok(Item::Json(v.to_json()))
    }
}

/// Params of `report`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ReportParams {
    /// Heading of report.md.
    pub title: Option<String>,
    /// Draw box plots (and overlays, with `reference` and `prediction`) as PNG.
    pub figures: bool,
    /// An input holding the reference case, for overlays.
    pub reference: Option<String>,
    /// An input holding the predicted case, for overlays.
    pub prediction: Option<String>,
}

impl Default for ReportParams {
    fn default() -> Self {
        ReportParams {
            title: None,
            figures: true,
            reference: None,
            prediction: None,
        }
    }
}

struct Report(ReportParams);

/// The report's voxel tables, pooled over cases: where each reference organ's voxels went
/// (`went`, from [`OrganRecord::labelled_as`]) and where each predicted organ's voxels came
/// from (`came`, from [`OrganRecord::came_from`]); empty when neither has any.
pub fn where_voxels_went(
    went: &BTreeMap<String, BTreeMap<String, u64>>,
    came: &BTreeMap<String, BTreeMap<String, u64>>,
) -> String {
    let mut md = voxel_table(
        went,
        "## Where the reference voxels went\n\nEach organ's reference voxels, all cases pooled, by the label the prediction gave them: the organ itself, background (not found), or another organ (its channel won these voxels).\n\n| organ | reference voxels | itself | background | other organs |\n|---|---|---|---|---|\n",
    );
    md += &voxel_table(
        came,
        "## Where the predicted voxels came from\n\nEach organ's predicted voxels, all cases pooled, by their reference label: the organ itself (the precision), background (no contoured organ there), or another contoured organ.\n\n| organ | predicted voxels | itself | background | other organs |\n|---|---|---|---|---|\n",
    );
    md
}

/// One organ per row: its voxels' shares by label (itself, background, the others, largest
/// first), under `head`.
fn voxel_table(counts: &BTreeMap<String, BTreeMap<String, u64>>, head: &str) -> String {
    if counts.is_empty() {
        return String::new();
    }
    let mut md = String::from(head);
    for (organ, labels) in counts {
        let total: u64 = labels.values().sum();
        let share = |n: u64| n as f64 / total.max(1) as f64;
        let own = labels.get(organ).copied().unwrap_or(0);
        let bg = labels.get(BACKGROUND).copied().unwrap_or(0);
        let mut others: Vec<(&String, u64)> = labels
            .iter()
            .filter(|(l, _)| *l != organ && l.as_str() != BACKGROUND)
            .map(|(l, &n)| (l, n))
            .collect();
        others.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let others: Vec<String> = others
            .iter()
            .map(|(l, n)| format!("{l} {:.3}", share(*n)))
            .collect();
        let _ = writeln!(
            md,
            "| {organ} | {total} | {:.3} | {:.3} | {} |",
            share(own),
            share(bg),
            if others.is_empty() {
                "–".to_string()
            } else {
                others.join(", ")
            }
        );
    }
    md.push('\n');
    md
}

/// n, mean, sd (sample), median, q1, q3 of finite values.
fn describe(v: &[f64]) -> serde_json::Value {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n == 0 {
        return serde_json::json!({"n": 0});
    }
    let mean = s.iter().sum::<f64>() / n as f64;
    let sd = if n > 1 {
        (s.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
    } else {
        0.0
    };
    let q = |p| shapeflow_metrics::percentile_sorted(&s, p);
    serde_json::json!({"n": n, "mean": mean, "sd": sd, "median": q(50.0), "q1": q(25.0), "q3": q(75.0), "n_infinite": v.len() - n})
}

/// A CSV cell: 4 decimals, `inf` for an infinite distance or a metric an absent organ lacks
/// (as `metrics.csv` always wrote them).
fn fmt_metric(v: Option<f64>) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{x:.4}"),
        Some(x) => format!("{x}"),
        None => "inf".into(),
    }
}

impl Report {
    /// Box plots of Dice and HD95 per organ, and overlays for the best, median and worst
    /// case (by mean Dice) when the report has the reference and prediction as inputs.
    /// Returns the Markdown that shows them.
    fn figures(
        &self,
        dir: &std::path::Path,
        cases: &[(CaseInfo, Inputs)],
        per_organ: &BTreeMap<String, BTreeMap<&str, Vec<f64>>>,
    ) -> Result<String, StageError> {
        let fail = |e: String| StageError::msg(format!("cannot draw a figure: {e}"));
        let organs: Vec<String> = per_organ.keys().cloned().collect();
        let mut md = String::from("## Figures\n\n");
        for (metric, label) in [("dice", "Dice"), ("hd95", "HD95 (mm)")] {
            let values: Vec<Vec<f64>> = organs
                .iter()
                .map(|o| per_organ[o].get(metric).cloned().unwrap_or_default())
                .collect();
            let name = format!("boxplot_{metric}.png");
            figures::box_plot(
                &dir.join(&name),
                &format!("{label} per organ"),
                label,
                &organs,
                &[("cases".to_string(), values)],
            )
            .map_err(fail)?;
            let _ = writeln!(md, "![{label} per organ]({name})\n");
        }
        if self.0.reference.is_none() || self.0.prediction.is_none() {
            return Ok(md);
        }
        // Mean Dice per case over its compared organs.
        let mean_dice: Vec<Option<f64>> = cases
            .iter()
            .map(|(_, inputs)| {
                let j = inputs.port_opt("metrics")?.as_json()?;
                CaseRecord::from_json(j).ok()?.mean_dice()
            })
            .collect();
        for (what, i, dice) in figures::pick_cases(&mean_dice) {
            let (case, inputs) = &cases[i];
            let (reference, prediction) = (inputs.case("reference")?, inputs.case("prediction")?);
            let _ = writeln!(md, "### {what} case: {} (mean Dice {dice:.3})\n", case.id);
            for organ in &organs {
                let name = format!("overlay_{what}_{}_{organ}.png", case.id);
                let title = format!("{} {organ} ({what} case)", case.id);
                match figures::overlay(&dir.join(&name), &title, &reference, &prediction, organ) {
                    Ok(()) => {
                        let _ = writeln!(md, "![{title}]({name})");
                    }
                    Err(e) => {
                        let _ = writeln!(md, "- {organ}: no overlay ({e})");
                    }
                }
            }
            md.push('\n');
        }
        Ok(md)
    }
}

/// A p-value with three significant digits.
/// A paragraph naming the reference contours far from their organ's median volume over
/// the cases reported (`shapeflow_metrics::volume_outliers`), or nothing.
fn reference_note(outliers: &BTreeMap<String, Vec<VolumeOutlier>>) -> String {
    if outliers.is_empty() {
        return String::new();
    }
    let listed: Vec<String> = outliers
        .iter()
        .flat_map(|(organ, list)| {
            list.iter().map(move |o| {
                format!(
                    "{organ} `{}` {:.1} cm³ ({:.2} times the median)",
                    o.case, o.cm3, o.ratio
                )
            })
        })
        .collect();
    format!(
        "\nReference contours far from their organ's median volume over these cases (more \
         than 5 times it or under a fifth, further for an organ whose volumes vary widely; \
         `pipeline inspect` names them in a whole dataset): \
         {}. Another structure under the organ's name, or a partial contour? The scores \
         include them.\n",
        listed.join(", ")
    )
}

fn fmt_p(p: f64) -> String {
    if p >= 0.001 {
        format!("{p:.3}")
    } else {
        format!("{p:.2e}")
    }
}

/// Higher is better for these metrics; lower for the distances.
fn higher_is_better(metric: &str) -> bool {
    matches!(metric, "dice" | "surface_dice")
}

/// Per (variant, organ, metric), each seed's mean over the cases: (seed, mean).
pub type SeedMeans = BTreeMap<(String, String, String), Vec<(String, f64)>>;

/// Variants run over several seeds (`<variant>@<seed>`, from `seeds:`) pooled into one
/// series per variant, keyed `<case>@<seed>`, so that means, spreads and the paired tests run
/// over cases and seeds; and, per variant, organ and metric, the per-seed means. `None`
/// when no variant name carries a seed.
pub fn pool_seeds(
    outputs: &[(String, serde_json::Value)],
) -> Option<(Vec<(String, serde_json::Value)>, SeedMeans)> {
    pool_by(outputs, '@')
}

/// Cross-validation folds (`<variant>:f<i>`, from `cross_validation:`) pooled as
/// [`pool_seeds`] pools seeds, keyed `<case>:<fold>`: the pooled series is the
/// cross-validation result (each fold's model on its own cases), and the per-fold means
/// show the spread over folds. `None` when no variant name carries a fold.
pub fn pool_folds(
    outputs: &[(String, serde_json::Value)],
) -> Option<(Vec<(String, serde_json::Value)>, SeedMeans)> {
    pool_by(outputs, ':')
}

fn pool_by(
    outputs: &[(String, serde_json::Value)],
    sep: char,
) -> Option<(Vec<(String, serde_json::Value)>, SeedMeans)> {
    if !outputs.iter().any(|(v, _)| v.contains(sep)) {
        return None;
    }
    let mut pooled: Vec<(String, serde_json::Value)> = Vec::new();
    let mut per_seed: SeedMeans = BTreeMap::new();
    for (name, doc) in outputs {
        let (base, seed) = name.split_once(sep).unwrap_or((name.as_str(), ""));
        let at = match pooled.iter().position(|(v, _)| v == base) {
            Some(i) => i,
            None => {
                pooled.push((base.to_string(), serde_json::json!({"per_case": {}})));
                pooled.len() - 1
            }
        };
        let Some(organs) = doc["per_case"].as_object() else {
            continue;
        };
        for (organ, metrics) in organs {
            let Some(metrics) = metrics.as_object() else {
                continue;
            };
            for (metric, cases) in metrics {
                let Some(cases) = cases.as_object() else {
                    continue;
                };
                let finite: Vec<f64> = cases.values().filter_map(|v| v.as_f64()).collect();
                if !finite.is_empty() {
                    per_seed
                        .entry((base.to_string(), organ.clone(), metric.clone()))
                        .or_default()
                        .push((
                            seed.to_string(),
                            finite.iter().sum::<f64>() / finite.len() as f64,
                        ));
                }
                for (case, v) in cases {
                    pooled[at].1["per_case"][organ][metric][format!("{case}{sep}{seed}")] =
                        v.clone();
                }
            }
        }
    }
    // One order for every table of a report or comparison, whatever order the seeds were
    // run or given in: numeric (1, 2, 7, 42, 2020), as the seed-unit table lists them.
    for seeds in per_seed.values_mut() {
        seeds.sort_by(|a, b| seed_order(&a.0, &b.0));
    }
    Some((pooled, per_seed))
}

/// Markdown: per variant, organ and metric, the per-seed means, their range and sd.
pub fn seed_spread_table(per_seed: &SeedMeans) -> String {
    spread_table(per_seed, "seed")
}

/// Markdown: per variant, organ and metric, the means per `what` (seed, fold), their
/// range and sd.
pub fn spread_table(per_seed: &SeedMeans, what: &str) -> String {
    let mut md = format!(
        "| variant | organ | metric | mean per {what} | range | sd over {what}s |\n|---|---|---|---|---|---|\n",
    );
    for ((variant, organ, metric), seeds) in per_seed {
        let vals: Vec<f64> = seeds.iter().map(|(_, m)| *m).collect();
        let n = vals.len() as f64;
        let mean = vals.iter().sum::<f64>() / n;
        let sd = if vals.len() < 2 {
            0.0
        } else {
            (vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
        };
        let lo = vals.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = vals.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let list: Vec<String> = seeds.iter().map(|(s, m)| format!("{s}: {m:.3}")).collect();
        let _ = writeln!(
            md,
            "| {variant} | {organ} | {metric} | {} | {lo:.3}–{hi:.3} | {sd:.3} |",
            list.join(", ")
        );
    }
    md
}

/// The first lines of every ablation table: what its cells and tests are.
pub const VARIANTS_INTRO: &str = "Mean ± sd over the cases every variant could be compared on (finite values); best per row in bold (highest Dice and surface Dice, lowest distances). p: two-sided Wilcoxon signed-rank test, paired by case, best variant against each other.";

/// The ablation table of per-variant reports (each `report`'s JSON, `per_case` read;
/// named `<variant>`, `<variant>@<seed>` or `<variant>:f<i>`): seeds and folds pooled
/// ([`pool_seeds`], [`pool_folds`]), [`compare_variants`], then a section per pooling with
/// each seed's or fold's means. Markdown, and the same as JSON.
pub fn variants_table(docs: &[(String, serde_json::Value)]) -> (String, serde_json::Value) {
    let pooled = pool_seeds(docs);
    let seeds_pooled = match &pooled {
        Some((p, _)) => p.clone(),
        None => docs.to_vec(),
    };
    let folds = pool_folds(&seeds_pooled);
    let (table, mut json) = match &folds {
        Some((p, _)) => compare_variants(p),
        None => compare_variants(&seeds_pooled),
    };
    // Per variant, organ and metric, each fold's (or seed's) mean: in the JSON under
    // `per_<what>_means`, and a section of the table.
    let mut spread = |means: &SeedMeans, what: &str, heading: &str, text: &str| -> String {
        json[format!("per_{what}_means")] = serde_json::json!(means
            .iter()
            .map(|((v, o, m), s)| serde_json::json!({"variant": v, "organ": o, "metric": m, format!("per_{what}"): s}))
            .collect::<Vec<_>>());
        format!(
            "\n\n## {heading}\n\n{text}\n\n{}",
            spread_table(means, what)
        )
    };
    let folds_md = folds.as_ref().map_or(String::new(), |(_, per_fold)| {
        spread(per_fold, "fold", "Cross-validation folds", "Each variant ran once per fold (`cross_validation:`); above, the folds' cases are pooled: the cross-validation result. Here, each fold's mean over its cases:")
    });
    let seeds_md = pooled.as_ref().map_or(String::new(), |(_, per_seed)| {
        spread(per_seed, "seed", "Spread over seeds", "Each variant ran once per seed (`seeds:`); above, cases and seeds are pooled (mean ± sd over (case, seed) pairs; Wilcoxon paired by case and seed). Here, each seed's mean over the cases:")
    });
    // With folds the seeds' cases are split among models: the seed-level test is left out.
    let units_md = match (&pooled, &folds) {
        (Some(_), None) => {
            let (md, rows) = seed_tests(&seeds_pooled, &json["rows"]);
            // One variant (or no best anywhere): nothing to test.
            let none = rows.as_array().is_none_or(|r| r.is_empty());
            json["seed_tests"] = rows;
            if none {
                String::new()
            } else {
                format!("\n\n## Seeds as the unit\n\n{SEED_TESTS_INTRO}\n\n{md}")
            }
        }
        _ => String::new(),
    };
    (format!("{table}{folds_md}{units_md}{seeds_md}"), json)
}

/// What the seed-level table is, and why it is there.
pub const SEED_TESTS_INTRO: &str = "The pooled test above takes each (case, seed) pair as independent, but a seed's model moves all its cases together: a difference of models can reach a tiny pooled p with the seeds split. Here each seed is one unit: the best variant minus each other, as the mean over the cases both have in that seed; the seeds on which the best is ahead; and the exact two-sided sign-flip test over those seed differences (with n seeds it cannot go below 2 / 2^n: 0.0625 with five, 0.25 with three).";

/// Per organ and metric of `rows` (from [`compare_variants`] on seed-pooled series, keyed
/// `<case>@<seed>`), the best variant against each other with seeds as the units: each
/// seed's mean difference over the cases both have, how many seeds favour the best, and
/// [`stats::sign_flip`] over the seed differences. Markdown, and the same as JSON.
pub fn seed_tests(
    pooled: &[(String, serde_json::Value)],
    rows: &serde_json::Value,
) -> (String, serde_json::Value) {
    let mut md = String::from(
        "| organ | metric | best | against | best minus it, per seed | seeds ahead | sign-flip p |\n|---|---|---|---|---|---|---|\n",
    );
    let mut out = Vec::new();
    for row in rows.as_array().into_iter().flatten() {
        let (Some(organ), Some(metric), Some(best)) = (
            row["organ"].as_str(),
            row["metric"].as_str(),
            row["best"].as_str(),
        ) else {
            continue;
        };
        let Some((_, best_doc)) = pooled.iter().find(|(v, _)| v == best) else {
            continue;
        };
        let b = finite_series(best_doc, organ, metric);
        for (other, doc) in pooled {
            if other == best {
                continue;
            }
            let o = finite_series(doc, organ, metric);
            // seed -> (sum of best - other, count) over the cases both have.
            let mut by_seed: BTreeMap<String, (f64, usize)> = BTreeMap::new();
            for (key, x) in &b {
                let (Some(y), Some((_, seed))) = (o.get(key), key.rsplit_once('@')) else {
                    continue;
                };
                let e = by_seed.entry(seed.to_string()).or_default();
                e.0 += x - y;
                e.1 += 1;
            }
            let mut diffs: Vec<(String, f64)> = by_seed
                .into_iter()
                .map(|(s, (sum, n))| (s, sum / n as f64))
                .collect();
            diffs.sort_by(|x, y| seed_order(&x.0, &y.0));
            if diffs.is_empty() {
                continue;
            }
            let ahead = diffs
                .iter()
                .filter(|(_, d)| {
                    if higher_is_better(metric) {
                        *d > 0.0
                    } else {
                        *d < 0.0
                    }
                })
                .count();
            let values: Vec<f64> = diffs.iter().map(|(_, d)| *d).collect();
            let p = stats::sign_flip(&values);
            let list: Vec<String> = diffs.iter().map(|(s, d)| format!("{s}: {d:+.3}")).collect();
            let _ = writeln!(
                md,
                "| {organ} | {metric} | {best} | {other} | {} | {ahead} of {} | {} |",
                list.join(", "),
                diffs.len(),
                p.map_or("–".to_string(), fmt_p)
            );
            out.push(serde_json::json!({
                "organ": organ, "metric": metric, "best": best, "against": other,
                "per_seed": diffs, "seeds_ahead": ahead, "sign_flip_p": p,
            }));
        }
    }
    (md, serde_json::Value::Array(out))
}

/// A report's per-case values of one organ and metric, the finite ones (infinite distances
/// are JSON null).
fn finite_series(doc: &serde_json::Value, organ: &str, metric: &str) -> BTreeMap<String, f64> {
    doc["per_case"][organ][metric]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(c, v)| v.as_f64().map(|x| (c.clone(), x)))
                .collect()
        })
        .unwrap_or_default()
}

/// Seeds in numeric order where both are numbers (1, 2, 7, 42, 2020), else by name.
pub fn seed_order(a: &str, b: &str) -> std::cmp::Ordering {
    match (a.parse::<i64>(), b.parse::<i64>()) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        _ => a.cmp(b),
    }
}

/// The ablation table: for each organ and metric, one column per variant (mean over the cases
/// every variant could be compared on), the best marked, and the Wilcoxon signed-rank p-value
/// of the best variant against each other variant, paired by case.
pub fn compare_variants(outputs: &[(String, serde_json::Value)]) -> (String, serde_json::Value) {
    let variants: Vec<&str> = outputs.iter().map(|(v, _)| v.as_str()).collect();
    let mut organs: Vec<String> = Vec::new();
    for (_, doc) in outputs {
        if let Some(o) = doc["per_case"].as_object() {
            for k in o.keys() {
                if !organs.contains(k) {
                    organs.push(k.clone());
                }
            }
        }
    }
    let mut md = String::from("| organ | metric |");
    for v in &variants {
        let _ = write!(md, " {v} |");
    }
    md.push_str(" paired Wilcoxon p (best vs each) |\n|---|---|");
    for _ in &variants {
        md.push_str("---|");
    }
    md.push_str("---|\n");
    let mut json_rows = Vec::new();
    for organ in &organs {
        for metric in ["dice", "hd95", "assd", "surface_dice"] {
            let series: Vec<BTreeMap<String, f64>> = outputs
                .iter()
                .map(|(_, d)| finite_series(d, organ, metric))
                .collect();
            // Cases every variant has a finite value for.
            let common: Vec<String> = series[0]
                .keys()
                .filter(|c| series.iter().all(|s| s.contains_key(*c)))
                .cloned()
                .collect();
            if common.is_empty() {
                continue;
            }
            let means: Vec<f64> = series
                .iter()
                .map(|s| common.iter().map(|c| s[c]).sum::<f64>() / common.len() as f64)
                .collect();
            let sds: Vec<f64> = series
                .iter()
                .zip(&means)
                .map(|(s, m)| {
                    if common.len() < 2 {
                        0.0
                    } else {
                        (common.iter().map(|c| (s[c] - m).powi(2)).sum::<f64>()
                            / (common.len() - 1) as f64)
                            .sqrt()
                    }
                })
                .collect();
            let best = (0..means.len())
                .max_by(|&a, &b| {
                    let o = means[a].total_cmp(&means[b]);
                    if higher_is_better(metric) {
                        o
                    } else {
                        o.reverse()
                    }
                })
                .unwrap_or(0);
            // When every variant scores the same, no variant is best.
            let tie = means.iter().all(|m| *m == means[best]);
            let _ = write!(md, "| {organ} | {metric} |");
            for (i, (m, s)) in means.iter().zip(&sds).enumerate() {
                if i == best && !tie {
                    let _ = write!(md, " **{m:.3} ± {s:.3}** |");
                } else {
                    let _ = write!(md, " {m:.3} ± {s:.3} |");
                }
            }
            let mut tests = serde_json::Map::new();
            let mut cells = Vec::new();
            if tie {
                cells.push("all variants equal".to_string());
            }
            for (i, v) in variants.iter().enumerate() {
                if i == best || tie {
                    continue;
                }
                let x: Vec<f64> = common.iter().map(|c| series[best][c]).collect();
                let y: Vec<f64> = common.iter().map(|c| series[i][c]).collect();
                match stats::wilcoxon(&x, &y) {
                    Some(w) => {
                        cells.push(format!("vs {v}: {}", fmt_p(w.p_value)));
                        tests.insert(v.to_string(), serde_json::to_value(w).unwrap_or_default());
                    }
                    None => cells.push(format!("vs {v}: identical")),
                }
            }
            let _ = writeln!(md, " {} |", cells.join(", "));
            json_rows.push(serde_json::json!({
                "organ": organ, "metric": metric, "cases": common.len(),
                "means": variants.iter().zip(&means).map(|(v, m)| (v.to_string(), serde_json::json!(m))).collect::<serde_json::Map<_, _>>(),
                "best": if tie { serde_json::Value::Null } else { serde_json::json!(variants[best]) },
                "wilcoxon_best_vs": tests,
            }));
        }
    }
    (
        md,
        serde_json::json!({"variants": variants, "rows": json_rows}),
    )
}

impl Stage for Report {
    fn output(&self) -> Kind {
        Kind::Report
    }

    fn ports(&self) -> Vec<Port> {
        vec![
            Port::new("metrics", Kind::Metrics),
            Port::new("reference", Kind::Case)
                .optional()
                .from_param("reference", self.0.reference.as_deref()),
            Port::new("prediction", Kind::Case)
                .optional()
                .from_param("prediction", self.0.prediction.as_deref()),
        ]
    }

    fn shape(&self) -> Shape {
        Shape::Gather
    }

    fn combine_variants(
        &self,
        ctx: &StageCtx,
        outputs: &[(String, Arc<Item>)],
    ) -> Result<(), StageError> {
        let docs: Vec<(String, serde_json::Value)> = outputs
            .iter()
            .map(|(v, i)| (v.clone(), i.as_json().cloned().unwrap_or_default()))
            .collect();
        let (table, json) = variants_table(&docs);
        let title = self
            .0
            .title
            .clone()
            .unwrap_or_else(|| "Segmentation metrics".into());
        // The references are the same for every variant: their far contours, once each.
        let mut outliers: BTreeMap<String, Vec<VolumeOutlier>> = BTreeMap::new();
        for (_, d) in &docs {
            let Ok(of) = serde_json::from_value::<BTreeMap<String, Vec<VolumeOutlier>>>(
                d["reference_outliers"].clone(),
            ) else {
                continue;
            };
            for (organ, list) in of {
                let kept = outliers.entry(organ).or_default();
                for o in list {
                    if !kept.iter().any(|k| k.case == o.case) {
                        kept.push(o);
                    }
                }
            }
        }
        let note = reference_note(&outliers);
        let md = format!("# {title}: variants compared\n\n{VARIANTS_INTRO}\n{note}\n{table}");
        let dir = ctx.output_dir.clone();
        std::fs::create_dir_all(&dir)
            .map_err(|e| StageError::msg(format!("cannot create {}: {e}", dir.display())))?;
        // Box plots with one box per organ and variant, and a report that ties them together.
        let mut figs = String::new();
        if self.0.figures {
            let mut organs: Vec<String> = Vec::new();
            for (_, d) in &docs {
                for o in d["per_case"]
                    .as_object()
                    .map(|m| m.keys().cloned().collect::<Vec<_>>())
                    .unwrap_or_default()
                {
                    if !organs.contains(&o) {
                        organs.push(o);
                    }
                }
            }
            for (metric, label) in [("dice", "Dice"), ("hd95", "HD95 (mm)")] {
                let series: Vec<(String, Vec<Vec<f64>>)> = docs
                    .iter()
                    .map(|(v, d)| {
                        let per: Vec<Vec<f64>> = organs
                            .iter()
                            .map(|o| {
                                d["per_case"][o][metric]
                                    .as_object()
                                    .map(|m| m.values().filter_map(|x| x.as_f64()).collect())
                                    .unwrap_or_default()
                            })
                            .collect();
                        (v.clone(), per)
                    })
                    .collect();
                let name = format!("boxplot_{metric}_variants.png");
                figures::box_plot(
                    &dir.join(&name),
                    &format!("{label} per organ and variant"),
                    label,
                    &organs,
                    &series,
                )
                .map_err(|e| StageError::msg(format!("cannot draw a figure: {e}")))?;
                let _ = writeln!(figs, "![{label} per organ and variant]({name})\n");
            }
        }
        let report = format!("{md}\n{figs}\nEach variant's own report (figures, per-case metrics) is in a subfolder of this directory.\n");
        for (name, bytes) in [
            ("report.md", report.into_bytes()),
            ("variants.md", md.into_bytes()),
            (
                "variants.json",
                serde_json::to_vec_pretty(&json).unwrap_or_default(),
            ),
        ] {
            let p = dir.join(name);
            std::fs::write(&p, bytes)
                .map_err(|e| StageError::msg(format!("cannot write {}: {e}", p.display())))?;
        }
        Ok(())
    }

    fn cached(&self) -> bool {
        false
    }

    fn run_all(
        &self,
        ctx: &StageCtx,
        cases: &[(CaseInfo, Inputs)],
        _: &Inputs,
    ) -> Result<Item, StageError> {
        let dir = ctx.output_dir.clone();
        std::fs::create_dir_all(&dir)
            .map_err(|e| StageError::msg(format!("cannot create {}: {e}", dir.display())))?;
        let mut csv = format!("case,organ,outcome,{}\n", CSV_COLUMNS.join(","));
        let mut per_organ: BTreeMap<String, BTreeMap<&str, Vec<f64>>> = BTreeMap::new();
        // organ -> metric -> case -> value, for the paired tests between variants.
        let mut per_case: BTreeMap<String, BTreeMap<&str, BTreeMap<String, f64>>> = BTreeMap::new();
        let mut outcomes: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
        // organ -> predicted label -> reference voxels, over all cases.
        let mut went: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        // organ -> reference label -> predicted voxels, over all cases.
        let mut came: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        let mut header = serde_json::Value::Null;
        // organ -> (case, reference cm³), for the contours far from their organ's volume.
        let mut references: BTreeMap<String, Vec<(String, f64)>> = BTreeMap::new();
        for (case, inputs) in cases {
            let j = inputs.port("metrics")?.as_json().ok_or_else(|| {
                StageError::msg("report reads the output of `evaluate`: list it under `after`")
            })?;
            let rec = CaseRecord::from_json(j)
                .map_err(|e| StageError::msg(format!("case {}: {e}", case.id)))?;
            header = serde_json::json!({"convention": rec.convention, "surface": rec.surface});
            for (organ, m) in &rec.organs {
                let outcome = m.outcome.clone();
                *outcomes
                    .entry(organ.clone())
                    .or_default()
                    .entry(outcome.clone())
                    .or_default() += 1;
                let cells: Vec<String> = CSV_COLUMNS
                    .iter()
                    .map(|k| fmt_metric(m.metric(k)))
                    .collect();
                let _ = writeln!(csv, "{},{},{},{}", case.id, organ, outcome, cells.join(","));
                if let Some(mm3) = m.metric("reference_mm3").filter(|v| *v > 0.0) {
                    references
                        .entry(organ.clone())
                        .or_default()
                        .push((case.id.clone(), mm3 / 1000.0));
                }
                if !m.is_measured() {
                    continue;
                }
                for (pooled, counts) in [(&mut went, &m.labelled_as), (&mut came, &m.came_from)] {
                    for (label, n) in counts {
                        *pooled
                            .entry(organ.clone())
                            .or_default()
                            .entry(label.clone())
                            .or_default() += n;
                    }
                }
                for k in METRICS {
                    let v = m.metric(k).unwrap_or(f64::INFINITY);
                    per_organ
                        .entry(organ.clone())
                        .or_default()
                        .entry(k)
                        .or_default()
                        .push(v);
                    if v.is_finite() {
                        per_case
                            .entry(organ.clone())
                            .or_default()
                            .entry(k)
                            .or_default()
                            .insert(case.id.clone(), v);
                    }
                }
            }
        }
        let mut summary = serde_json::Map::new();
        for (organ, metrics) in &per_organ {
            let mut o = serde_json::Map::new();
            for (k, v) in metrics {
                o.insert(k.to_string(), describe(v));
            }
            o.insert(
                "outcomes".into(),
                serde_json::to_value(&outcomes[organ]).unwrap_or_default(),
            );
            summary.insert(organ.clone(), serde_json::Value::Object(o));
        }
        let outliers: BTreeMap<String, Vec<VolumeOutlier>> = references
            .iter()
            .map(|(organ, v)| (organ.clone(), volume_outliers(v)))
            .filter(|(_, o)| !o.is_empty())
            .collect();
        let doc = serde_json::json!({"metrics": header, "cases": cases.len(), "organs": summary, "per_case": per_case, "labelled_as": went, "came_from": came, "reference_outliers": outliers});
        let title = self
            .0
            .title
            .clone()
            .unwrap_or_else(|| "Segmentation metrics".into());
        let mut md = format!(
            "# {title}\n\n{} cases. Surface: {}; HD95/ASSD convention: {}. Distances in mm. Mean ± sd and median [IQR] over compared cases; infinite distances (one mask empty) are counted, not averaged.\n\n| organ | n | Dice | HD95 | ASSD | surface Dice | outcomes |\n|---|---|---|---|---|---|---|\n",
            cases.len(),
            header["surface"].as_str().unwrap_or("?"),
            header["convention"].as_str().unwrap_or("?")
        );
        for (organ, o) in &summary {
            let cell = |k: &str| {
                let d = &o[k];
                if d["n"].as_u64().unwrap_or(0) == 0 {
                    return "–".to_string();
                }
                let inf = d["n_infinite"].as_u64().unwrap_or(0);
                format!(
                    "{:.3} ± {:.3}, {:.3} [{:.3}–{:.3}]{}",
                    d["mean"].as_f64().unwrap_or(f64::NAN),
                    d["sd"].as_f64().unwrap_or(f64::NAN),
                    d["median"].as_f64().unwrap_or(f64::NAN),
                    d["q1"].as_f64().unwrap_or(f64::NAN),
                    d["q3"].as_f64().unwrap_or(f64::NAN),
                    if inf > 0 {
                        format!(" ({inf} inf)")
                    } else {
                        String::new()
                    }
                )
            };
            let outs: Vec<String> = o["outcomes"]
                .as_object()
                .map(|m| m.iter().map(|(k, v)| format!("{k} {v}")).collect())
                .unwrap_or_default();
            let n = o["dice"]["n"].as_u64().unwrap_or(0);
            let _ = writeln!(
                md,
                "| {organ} | {n} | {} | {} | {} | {} | {} |",
                cell("dice"),
                cell("hd95"),
                cell("assd"),
                cell("surface_dice"),
                outs.join(", ")
            );
        }
        md.push_str(&reference_note(&outliers));
        let figures = if self.0.figures {
            self.figures(&dir, cases, &per_organ)?
        } else {
            String::new()
        };
        let report = format!(
            "{md}\n{}{figures}\nFiles: [metrics.csv](metrics.csv) (per case and organ), [summary.json](summary.json).\n",
            where_voxels_went(&went, &came)
        );
        for (name, bytes) in [
            ("report.md", report.into_bytes()),
            ("metrics.csv", csv.into_bytes()),
            ("summary.md", md.into_bytes()),
            (
                "summary.json",
                serde_json::to_vec_pretty(&doc).unwrap_or_default(),
            ),
        ] {
            let p = dir.join(name);
            shapeflow_core::atomic::write(&p, &bytes)
                .map_err(|e| StageError::msg(format!("cannot write {}: {e}", p.display())))?;
        }
        Ok(Item::Json(doc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_are_documented() {
        Registry::new()
            .with(&EvalPlugin)
            .unwrap()
            .check_docs()
            .unwrap();
    }

    fn case(organs: &[&str], present: &[bool], labels: Vec<u8>) -> CaseData {
        let n = labels.len();
        CaseData {
            images: vec![],
            labels: Some(Arc::new(
                shapeflow_core::Volume::new([n, 1, 1], [1.0; 3], VoxelData::U8(labels)).unwrap(),
            )),
            organs: organs.iter().map(|o| o.to_string()).collect(),
            present: present.to_vec(),
            original: None,
            notes: Default::default(),
        }
    }

    /// The larynx's voxels taken by the esophagus's channel, the brainstem missed: the
    /// record says where each reference organ's voxels went, under the reference's names
    /// (the prediction's `oesophagus` is compared with `Esophagus`).
    #[test]
    fn records_where_the_reference_and_predicted_voxels_went() {
        // Reference: 4 larynx voxels (label 1), 2 esophagus (2), 2 brainstem (3). The
        // prediction's labels: 1 oesophagus, 2 Larynx, 3 Brainstem.
        let reference = case(
            &["Larynx", "Esophagus", "Brainstem"],
            &[true, true, true],
            vec![1, 1, 1, 1, 2, 2, 3, 3, 0, 0],
        );
        let prediction = case(
            &["oesophagus", "Larynx", "Brainstem"],
            &[true, true, true],
            vec![1, 1, 1, 2, 1, 0, 0, 0, 1, 0],
        );
        let p = EvalParams {
            organs: [("Esophagus".to_string(), "oesophagus".to_string())].into(),
            ..Default::default()
        };
        let rec = evaluate_case(&reference, &prediction, &p).unwrap();
        let went = |o: &str| rec.organs[o].labelled_as.clone();
        let counts = |v: &[(&str, u64)]| -> BTreeMap<String, u64> {
            v.iter().map(|(k, n)| (k.to_string(), *n)).collect()
        };
        assert_eq!(went("Larynx"), counts(&[("Esophagus", 3), ("Larynx", 1)]));
        assert_eq!(
            went("Esophagus"),
            counts(&[("Esophagus", 1), (BACKGROUND, 1)])
        );
        assert_eq!(went("Brainstem"), counts(&[(BACKGROUND, 2)]));
        // The predicted oesophagus took three larynx voxels and one of no organ; the
        // predicted brainstem is empty.
        let came = |o: &str| rec.organs[o].came_from.clone();
        assert_eq!(
            came("Esophagus"),
            counts(&[("Larynx", 3), ("Esophagus", 1), (BACKGROUND, 1)])
        );
        assert_eq!(came("Larynx"), counts(&[("Larynx", 1)]));
        assert!(came("Brainstem").is_empty());
        // Through JSON (the cached item) and into the report's tables.
        let back = CaseRecord::from_json(&rec.to_json()).unwrap();
        let mut went_pooled: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        let mut came_pooled = went_pooled.clone();
        for (o, r) in &back.organs {
            went_pooled.insert(o.clone(), r.labelled_as.clone());
            came_pooled.insert(o.clone(), r.came_from.clone());
        }
        let md = where_voxels_went(&went_pooled, &came_pooled);
        let (went_md, came_md) = md
            .split_once("## Where the predicted voxels came from")
            .expect(&md);
        assert!(
            went_md.contains("| Larynx | 4 | 0.250 | 0.000 | Esophagus 0.750 |"),
            "{md}"
        );
        assert!(
            went_md.contains("| Brainstem | 2 | 0.000 | 1.000 | – |"),
            "{md}"
        );
        assert!(
            came_md.contains("| Esophagus | 5 | 0.200 | 0.200 | Larynx 0.600 |"),
            "{md}"
        );
        assert!(where_voxels_went(&BTreeMap::new(), &BTreeMap::new()).is_empty());
        // Two labels under one name are summed, not overwritten, on both sides.
        let names = ["A".to_string(), "A".to_string()];
        let c = confusion(&[1, 1, 2, 0], &[1, 2, 1, 1], &[(1, 1)], &names, &names);
        assert_eq!(c[0].labelled_as, counts(&[("A", 2)]));
        assert_eq!(c[0].came_from, counts(&[("A", 2), (BACKGROUND, 1)]));
    }

    #[test]
    fn describe_counts_infinities_instead_of_averaging_them() {
        let d = describe(&[1.0, 3.0, f64::INFINITY]);
        assert_eq!(d["n"], 2);
        assert_eq!(d["mean"], 2.0);
        assert_eq!(d["n_infinite"], 1);
    }
}

#[cfg(test)]
mod compare_tests {
    use super::{
        compare_variants, pool_folds, pool_seeds, seed_spread_table, spread_table, variants_table,
    };

    /// Two seeds far ahead and one a little behind: the pooled test over (case, seed) pairs
    /// is tiny, the seeds as units are not; for a distance the best is the lower.
    #[test]
    fn seeds_as_units_count_each_seed_once() {
        let doc = |seed: u32, joint: bool| {
            let (dice, hd95) = match (joint, seed) {
                (false, _) => (0.5, 10.0),
                (true, 3) => (0.49, 10.5),
                (true, _) => (0.6, 8.0),
            };
            let cases = |base: f64| {
                (0..30)
                    .map(|c| (format!("c{c}"), serde_json::json!(base + 0.001 * c as f64)))
                    .collect::<serde_json::Map<_, _>>()
            };
            serde_json::json!({"per_case": {"organ": {"dice": cases(dice), "hd95": cases(hd95)}}})
        };
        let outputs: Vec<(String, serde_json::Value)> = [1, 2, 3]
            .iter()
            .flat_map(|&s| {
                [
                    (format!("joint@{s}"), doc(s, true)),
                    (format!("dice@{s}"), doc(s, false)),
                ]
            })
            .collect();
        let (md, json) = variants_table(&outputs);
        let pooled_p = json["rows"][0]["wilcoxon_best_vs"]["dice"]["p_value"]
            .as_f64()
            .unwrap();
        assert!(pooled_p < 1e-6, "{pooled_p}");
        assert!(md.contains("## Seeds as the unit"), "{md}");
        assert!(
            md.contains("| organ | dice | joint | dice | 1: +0.100, 2: +0.100, 3: -0.010 | 2 of 3 | 0.500 |"),
            "{md}"
        );
        assert!(
            md.contains("| organ | hd95 | joint | dice | 1: -2.000, 2: -2.000, 3: +0.500 | 2 of 3 | 0.500 |"),
            "{md}"
        );
        assert_eq!(json["seed_tests"][0]["seeds_ahead"], 2);
        // Without seeds there is no such section.
        let (md, json) = variants_table(&[
            ("joint".into(), doc(1, true)),
            ("dice".into(), doc(1, false)),
        ]);
        assert!(!md.contains("Seeds as the unit") && json["seed_tests"].is_null());
        // One variant over seeds: no best to test, no empty section.
        let (md, _) = variants_table(
            &outputs[..1]
                .iter()
                .chain(&outputs[2..3])
                .cloned()
                .collect::<Vec<_>>(),
        );
        assert!(
            md.contains("Spread over seeds") && !md.contains("Seeds as the unit"),
            "{md}"
        );
    }

    /// Folds (each with its own cases) pool into one cross-validation series per variant;
    /// with seeds as well, seeds pool first, then folds.
    #[test]
    fn folds_pool_into_the_cross_validation_result() {
        let doc = |c: &str, v: f64| serde_json::json!({"per_case": {"organ": {"dice": {c: v}}}});
        let outputs = vec![
            ("dice:f0@1".to_string(), doc("a", 0.2)),
            ("dice:f0@2".to_string(), doc("a", 0.4)),
            ("dice:f1@1".to_string(), doc("b", 0.8)),
            ("dice:f1@2".to_string(), doc("b", 1.0)),
        ];
        let (by_seed, _) = pool_seeds(&outputs).unwrap();
        assert_eq!(by_seed.len(), 2);
        let (pooled, per_fold) = pool_folds(&by_seed).unwrap();
        assert_eq!(pooled.len(), 1);
        assert_eq!(pooled[0].0, "dice");
        let cases = pooled[0].1["per_case"]["organ"]["dice"]
            .as_object()
            .unwrap();
        assert_eq!(cases.len(), 4, "{cases:?}");
        assert_eq!(cases["b@2:f1"], 1.0);
        let f = &per_fold[&("dice".into(), "organ".into(), "dice".into())];
        assert_eq!(f.len(), 2);
        assert!(
            (f[0].1 - 0.3).abs() < 1e-12 && (f[1].1 - 0.9).abs() < 1e-12,
            "{f:?}"
        );
        let md = spread_table(&per_fold, "fold");
        assert!(
            md.contains("mean per fold") && md.contains("f0: 0.300, f1: 0.900"),
            "{md}"
        );
        assert!(pool_folds(&outputs[..0]).is_none());
    }

    #[test]
    fn seeds_pool_by_case_and_seed_and_report_their_spread() {
        let doc = |a: f64, b: f64| serde_json::json!({"per_case": {"organ": {"dice": {"c1": a, "c2": b}}}});
        let outputs = vec![
            ("joint@1".to_string(), doc(0.5, 0.7)),
            ("joint@2".to_string(), doc(0.7, 0.9)),
            ("dice@1".to_string(), doc(0.6, 0.6)),
            ("dice@2".to_string(), doc(0.6, 0.6)),
        ];
        let (pooled, per_seed) = pool_seeds(&outputs).unwrap();
        assert_eq!(pooled.len(), 2);
        assert_eq!(pooled[0].0, "joint");
        assert_eq!(pooled[0].1["per_case"]["organ"]["dice"]["c2@2"], 0.9);
        let joint = &per_seed[&("joint".into(), "organ".into(), "dice".into())];
        assert_eq!(joint, &vec![("1".to_string(), 0.6), ("2".to_string(), 0.8)]);
        let md = seed_spread_table(&per_seed);
        assert!(
            md.contains("| joint | organ | dice | 1: 0.600, 2: 0.800 | 0.600–0.800 | 0.141 |"),
            "{md}"
        );
        // Seeds run or given out of order are listed in numeric order.
        let shuffled = vec![
            ("joint@2020".to_string(), doc(0.1, 0.1)),
            ("joint@7".to_string(), doc(0.2, 0.2)),
            ("joint@10".to_string(), doc(0.3, 0.3)),
        ];
        let (_, per_seed) = pool_seeds(&shuffled).unwrap();
        let order: Vec<&str> = per_seed[&("joint".into(), "organ".into(), "dice".into())]
            .iter()
            .map(|(s, _)| s.as_str())
            .collect();
        assert_eq!(order, ["7", "10", "2020"]);
        // Means over the four (case, seed) pairs: joint 0.7, dice 0.6.
        let (table, _) = compare_variants(&pooled);
        let row = table
            .lines()
            .find(|l| l.starts_with("| organ | dice"))
            .unwrap();
        assert!(row.contains("**0.700"), "{row}");
        assert!(pool_seeds(&outputs[..0]).is_none());
    }

    #[test]
    fn a_tie_marks_no_variant_best() {
        let doc = |v: f64| serde_json::json!({"per_case": {"organ": {"dice": {"c1": v, "c2": v, "c3": v}}}});
        let (md, json) = compare_variants(&[("a".into(), doc(0.0)), ("b".into(), doc(0.0))]);
        let row = md
            .lines()
            .find(|l| l.starts_with("| organ | dice"))
            .unwrap();
        assert!(!row.contains("**"), "{row}");
        assert!(row.contains("all variants equal"), "{row}");
        assert!(json["rows"][0]["best"].is_null());
        let (md, json) = compare_variants(&[("a".into(), doc(0.5)), ("b".into(), doc(0.7))]);
        let row = md
            .lines()
            .find(|l| l.starts_with("| organ | dice"))
            .unwrap();
        assert!(row.contains("**0.700"), "{row}");
        assert_eq!(json["rows"][0]["best"], "b");
    }
}

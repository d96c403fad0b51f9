//! The `calibrate` stage: per-organ decision levels chosen on the validation cases, apart
//! from training (as nnU-Net chooses its post-processing after training): changing how
//! levels are chosen recomputes a pass over the validation cases, never a training.

use crate::levels::{fixed_level, Contest, JointSearch, LevelSearch, OrganLevel, SHARES};
use crate::model::{self, Model};
use crate::tiling::WindowConfig;
use serde::{Deserialize, Serialize};
use shapeflow_core::{
    CaseInfo, Inputs, Item, Kind, Port, Shape, Stage, StageCtx, StageError, VoxelData,
};

pub const HELP: &str = r#"
Chooses per-organ decision levels for a trained model (the `train` stage, a whole-dataset
input) on the validation cases (split `val`, held out of training): the model's maps over
each validation case (sliding window on the training grid, as `infer` makes them; with
`tta: true` averaged with the case mirrored left-right, as `infer`'s `tta`), then per organ
the level of the best mean Dice over the cases that contour it, every other organ at the
fixed level (SDM heads: -0.5..0.5 in steps of 0.01; probability heads: 0.05..0.95 in steps
of 0.05). Output: the same model carrying the levels and the `contest` rule they were
searched under; `infer` with `levels: validated` decodes with them (a level is adopted only
where it gains at least 0.01 mean Dice).

`joint: true` (default) searches the organs' levels together: from the fixed levels, each
organ in turn takes the level of the best sum of all organs' mean Dice with the others at
their current levels (what its level takes from another organ counted against it), where
that gains at least 0.01, in rounds until none moves (at most 4); it keeps each validation
case's voxels near some organ (every organ's map there) in memory. An organ may end with a
lower Dice of its own where that gains more on others (a warning names it). `joint:
false`: each organ alone, the others at the fixed level (as `train` chooses), kept where
its own Dice gains at least 0.01.

`contest` decides a voxel several organs claim at their levels. `own-level` (default): the
organ furthest past its own level. `fixed-owner`: the fixed decoder's organ keeps its
voxels while it claims them, and only voxels no organ has at the fixed level go to an
organ whose level moved out (organs searched alone then decode together as their searches
scored, but no level can take voxels from a channel that fires on another organ).
On OpenKBP (three heads, three seeds) `joint: true` under `own-level` was the best of the
four ways measured (docs/results/multi-organ/README.md, section 18).

`components: true` also chooses, per organ, what `infer`'s `largest_component: validated`
keeps of its connected components (6-connected, on the training grid): those of at
least a share of the largest one's voxels, the share from 1 (the largest alone), 0.5,
0.25, 0.1, 0.05, 0 (all) by mean validation Dice at the levels chosen; the largest alone
unless another share gains at least 0.01 (as nnU-Net chooses its post-processing). Stray
blobs cost HD95 more than Dice; a tubular organ the prediction breaks (the spinal cord
at the shoulders, on OpenKBP) loses whole stretches to the largest component. It keeps
the voxels near some organ in memory, as `joint: true` does.

`largest_component: true` scores each organ's levels keeping only its largest connected
component, as `infer`'s `largest_component: true` decodes them (with `joint: true`; the
other organs' Dice, while one organ's level moves, as decoded). Without it a level may be
chosen to remove stray blobs that filter removes anyway, shrinking the organ. On OpenKBP's
cascade, over three seeds, it lifted the Dice head's spinal cord by 0.049 and mandible by
0.028, the joint head's larynx by 0.020 (docs/results/multi-organ/README.md, section 27).

`search: false` passes the model through unchanged (for a pipeline whose variants
calibrate only some of their models). Writes the model's files like `train` (model.json
with the levels), so `pipeline predict -m` takes the calibrated model.
"#;

/// Params of `calibrate`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CalibrateParams {
    /// Input holding the cases on the training grid (default: the first per-case input).
    pub cases: Option<String>,
    /// The `train` stage (default: the whole-dataset input).
    pub model: Option<String>,
    /// Search levels; false: the model passes through unchanged.
    pub search: bool,
    /// How a voxel several organs claim is decided.
    pub contest: Contest,
    /// Search the organs' levels together (coordinate ascent on the sum of all organs' mean
    /// Dice, what one organ's level takes from another counted); false: each organ's
    /// alone, the others at the fixed level (as `train`).
    pub joint: bool,
    /// Also choose per organ whether `infer` keeps only its largest connected component
    /// (`largest_component: validated`).
    #[schemars(extend("x-key-omits-default" = true))]
    pub components: bool,
    /// Score each organ's levels keeping only its largest connected component, as
    /// `infer`'s `largest_component: true` decodes (needs `joint: true`).
    #[schemars(extend("x-key-omits-default" = true))]
    pub largest_component: bool,
    /// Fraction of a window shared with its neighbour (as `infer`).
    pub overlap: f64,
    /// Gaussian weight sd, as a fraction of the window (as `infer`).
    pub sigma: f64,
    /// Test-time mirroring, as `infer`'s `tta`: levels chosen on the maps `infer` with
    /// `tta: true` decodes.
    #[schemars(extend("x-key-omits-default" = true))]
    pub tta: bool,
    /// Windows per network call.
    #[schemars(extend("x-execution" = true))]
    pub batch: usize,
    /// Where to run; auto: CUDA when present.
    pub device: String,
    /// libtorch threads (0: one per core).
    #[schemars(extend("x-execution" = true))]
    pub threads: usize,
    /// bfloat16 autocast on CUDA.
    pub bf16: bool,
}

impl Default for CalibrateParams {
    fn default() -> Self {
        CalibrateParams {
            cases: None,
            model: None,
            search: true,
            contest: Contest::OwnLevel,
            joint: true,
            components: false,
            largest_component: false,
            overlap: 0.5,
            sigma: 0.125,
            tta: false,
            batch: 2,
            device: "auto".into(),
            threads: 0,
            bf16: true,
        }
    }
}

impl CalibrateParams {
    /// The first invalid field and why.
    pub fn check(&self) -> Result<(), (String, String)> {
        model::parse_device(&self.device).map_err(|e| ("device".to_string(), e))?;
        if self.largest_component && !self.joint {
            return Err((
                "largest_component".into(),
                "scores levels searched together: set `joint: true`".into(),
            ));
        }
        if !(0.0..0.95).contains(&self.overlap) {
            return Err(("overlap".into(), "must be in [0, 0.95)".into()));
        }
        if !(self.sigma.is_finite() && self.sigma > 0.0) {
            return Err(("sigma".into(), "must be a positive number".into()));
        }
        Ok(())
    }
}

pub struct Calibrate(pub CalibrateParams);

enum Search {
    Joint(JointSearch),
    Alone(LevelSearch),
}

impl Stage for Calibrate {
    fn output(&self) -> Kind {
        Kind::Model
    }

    fn ports(&self) -> Vec<Port> {
        vec![
            Port::new("cases", Kind::Case).from_param("cases", self.0.cases.as_deref()),
            Port::new("model", Kind::Model).from_param("model", self.0.model.as_deref()),
        ]
    }

    fn shape(&self) -> Shape {
        Shape::Gather
    }
    fn resource(&self) -> Option<String> {
        Some("gpu".into())
    }
    /// The validation cases, when searching (passing through reads none).
    fn accepts(&self, case: &CaseInfo) -> bool {
        self.0.search && case.split.as_deref() == Some("val")
    }

    fn publish(&self, ctx: &StageCtx, item: &Item) -> Result<(), StageError> {
        crate::history::publish_model(&ctx.output_dir, item)
    }

    fn run_all(
        &self,
        ctx: &StageCtx,
        cases: &[(CaseInfo, Inputs)],
        global: &Inputs,
    ) -> Result<Item, StageError> {
        let item = global.port("model")?;
        if item.ensemble_members().is_some() {
            return Err(StageError::msg(
                "`model` is an ensemble: calibrate takes one trained model",
            ));
        }
        let mut model = Model::from_item(item)?;
        if !self.0.search {
            crate::history::write_model(&ctx.output_dir, &model)?;
            return Ok(item.clone());
        }
        if cases.is_empty() {
            return Err(StageError::msg(
                "no validation cases (split `val`) to choose levels on: hold some training \
                 cases out (`load`'s `val_fraction`, or a split file) or set `search: false`",
            ));
        }
        let device = model::parse_device(&self.0.device).map_err(StageError::msg)?;
        model::check_device(device)?;
        if self.0.threads > 0 {
            tch::set_num_threads(self.0.threads as i32);
        }
        let (_vs, net) = model.load(device, &ctx.scratch)?;
        let predictor = model::Predictor {
            model: &model,
            net: &net,
            device,
            bf16: self.0.bf16,
        };
        let k = model.config.organs.len();
        let head = model.config.mode.head();
        let wcfg = WindowConfig {
            patch: model.config.patch,
            overlap: self.0.overlap,
            sigma: self.0.sigma,
            batch: self.0.batch.max(1),
        };
        let mut search = if self.0.joint {
            Search::Joint(
                JointSearch::new(head, k, self.0.contest)
                    .largest_component(self.0.largest_component),
            )
        } else {
            Search::Alone(LevelSearch::new(head, k, self.0.contest))
        };
        // What the components are chosen on: the joint search's voxels, or a copy of them.
        let mut kept =
            (self.0.components && !self.0.joint).then(|| JointSearch::new(head, k, self.0.contest));
        let bar = ctx.progress.bar(
            cases.len() as u64,
            &format!("{} validation cases", ctx.stage_id),
        );
        for (info, inputs) in cases {
            let at = |e: String| StageError::msg(format!("case `{}`: {e}", info.id));
            let case = inputs.case("cases").map_err(|e| at(e.to_string()))?;
            let image = case
                .image()
                .ok_or_else(|| at("the case has no image".into()))?;
            case.check_grids().map_err(at)?;
            if case.organs != model.config.organs {
                return Err(at(format!(
                    "its organs {:?} differ from the model's {:?}",
                    case.organs, model.config.organs
                )));
            }
            let Some(VoxelData::U8(labels)) = case.labels.as_ref().map(|l| &l.data) else {
                return Err(at("the case has no u8 label map".into()));
            };
            let x = model::normalised_input(&model.config.norm, &case.images)?;
            let maps = predictor
                .maps_mirrored(
                    &x,
                    image.dims,
                    &image.affine,
                    &wcfg,
                    self.0.tta,
                    Some(ctx.cancel),
                )
                .map_err(|e| model::in_context(&format!("case `{}`", info.id), e))?;
            match &mut search {
                Search::Joint(s) => s.add_volume(&maps, labels, &case.present, image.dims),
                Search::Alone(s) => s.add_case(&maps, labels, &case.present),
            }
            if let Some(s) = kept.as_mut() {
                s.add_volume(&maps, labels, &case.present, image.dims);
            }
            bar.inc(1);
        }
        bar.finish_and_clear();
        let mut levels: Vec<OrganLevel> = match &search {
            Search::Joint(s) => s.best(),
            Search::Alone(s) => s.best(),
        };
        let store = match (&search, &kept) {
            (_, Some(s)) | (Search::Joint(s), None) if self.0.components => Some(s),
            _ => None,
        };
        if let Some(store) = store {
            let fixed = fixed_level(head, 0.0);
            let adopted: Vec<f32> = levels.iter().map(|l| l.adopted(fixed)).collect();
            let dice = store.components(&adopted);
            for ((organ, l), d) in model.config.organs.iter().zip(&mut levels).zip(dice) {
                // An organ no validation case contours keeps its largest component.
                let share = d.map_or(SHARES[0], |d| d.chosen());
                l.component_share = Some(share);
                let scores = d.map_or("-".to_string(), |d| {
                    let s: Vec<String> = SHARES
                        .iter()
                        .zip(d.dice)
                        .map(|(s, v)| format!("{s}: {v:.3}"))
                        .collect();
                    s.join(", ")
                });
                tracing::info!(
                    organ = %organ,
                    share,
                    dice_by_share = %scores,
                    "validated components"
                );
            }
        }
        for (organ, l) in model.config.organs.iter().zip(&levels) {
            let dice = |d: Option<f64>| d.map_or("-".to_string(), |d| format!("{d:.3}"));
            tracing::info!(
                organ = %organ,
                level = %format!("{:.2}", l.level),
                dice = %dice(l.dice),
                dice_fixed = %dice(l.dice_fixed),
                cases = l.cases,
                contest = ?self.0.contest,
                "validated level"
            );
            if let (Some(d), Some(f)) = (l.dice, l.dice_fixed) {
                // A fall the printed values show (not 0.697 -> 0.697).
                if f - d >= 0.0005 {
                    tracing::warn!(
                        organ = %organ,
                        "its mean validation Dice falls at the levels searched together ({f:.3} \
                         -> {d:.3}): they gain more on other organs"
                    );
                }
            }
        }
        model.config.levels = Some(levels);
        model.config.contest = self.0.contest;
        model.config.levels_mirrored = self.0.tta;
        crate::history::write_model(&ctx.output_dir, &model)?;
        Ok(model.to_item())
    }
}

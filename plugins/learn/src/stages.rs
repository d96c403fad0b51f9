//! The `train`, `calibrate` and `infer` stages.

use crate::augment::{AugmentConfig, TrainSetBuilder};
use crate::levels::Contest;
use crate::model::{self, Model, Norm};
use crate::sampler::{self, Augment, SamplerData};
use crate::tiling::{keep_large_components, WindowConfig};
use crate::train::{self, Session, TrainConfig, ValCase};
use serde::{Deserialize, Serialize};
use shapeflow_core::CaseDataItem as _;
use shapeflow_core::{
    resample::{resample_to_grid, ImageInterp, LabelInterp},
    BuildCtx, Built, CaseData, CaseInfo, Inputs, Item, Kind, ParamDoc, ParamError, Plugin, Port,
    Registry, SdmUnits, Shape, Stage, StageCtx, StageDef, StageError, StageFactory, Volume,
    VoxelData,
};
use shapeflow_formats::NiftiIo;
use std::sync::{Arc, Mutex};
use tch::Device;

/// Registers `train`, `augment`, `calibrate` and `infer`.
pub struct LearnPlugin;

const TRAIN_HELP: &str = r#"
Trains the paper's 3D UNet (Xue et al., AAAI 2020) on the training cases and returns the
model. Inputs, per case: the case (image + labels on the training grid, e.g. from
`resample`) and its SDMs (from `edt-sdm`, normalised); cases in the `val` split are used
for validation only, cases in the `test` split are never read (editing them does not
retrain).

Heads by `mode`: dice (sigmoid per organ, Dice loss), sdm (tanh per organ, L1 + product
loss on the SDM), joint (the paper: tanh SDM, Dice of sigmoid(-k sdm) + lambda (L1 +
product)), and the remedies for many organs (`*-balanced`, `*-organ-scaled`). `ce` adds a
cross-entropy on the segmentation (the Dice head's, the joint heads' Heaviside) to its
Dice, as nnU-Net does; 0, the paper's, none. `exclusion` tells each organ "no" on the
other contoured organs' voxels (for partially contoured datasets; an SDM-only head's map
through its smooth Heaviside sigmoid(-k sdm)). `ce` acts on a segmentation: an SDM-only
mode refuses it, as it refuses `softmax`. `softmax` puts the
segmentation in one softmax over background and organs (nnU-Net's), an organ not contoured
in a case merged into its background (the marginal loss). The Dice head's output
starts at probability `head_prior`; an SDM head's (joint or SDM-only) Heaviside
sigmoid(-k sdm) at `joint_prior` where set (0, the default: bias 0, every channel around
0.5). `lambda_schedule: poly` lets the SDM terms' weight fall as lambda (1 - epoch /
epochs)^0.9 (`constant`, the paper's, keeps it). `far_weight` multiplies the far field's
false positives in the shell-balanced SDM terms (1: as defined); `inside_weight` is the
inside's share of their near terms, the shell's 1 minus it (0.5: as defined). Organs absent from a case
are masked out of every loss term.

Each epoch draws `iterations` batches of `batch` patches (foreground-biased, augmented, see
`augment`), deterministic for the pipeline seed. Adam (PyTorch's), lr `lr` times
`lr_decay` every `lr_every` epochs (`lr_schedule: step`, the paper's) or lr (1 - epoch /
epochs)^0.9 (`poly`, nnU-Net's). bfloat16 autocast on CUDA (`bf16`). Validation Dice
(sliding window over whole validation cases) every `val_every` epochs.

Resumable: a checkpoint (weights, optimiser state, history) is written every
`checkpoint_every` epochs under the cache (work/<key>/); re-running the pipeline after a
crash or Ctrl-C continues from it, not from zero. Holds the `gpu` resource.

Writes to runs/<time>-<name>/<stage>/: model.safetensors (loadable with
safetensors.torch.load_file; python/shapeflow_unet.py builds the matching module),
model.json (architecture, organs, head, normalisation, patch, spacing), metrics.jsonl (one
line per epoch: loss, lr, seconds, validation Dice) and loss.png.
"#;

const INFER_HELP: &str = r#"
Segments each case with a trained model (the `train` stage, a whole-dataset input):
sliding-window inference over the whole volume on the training grid (patch from the model
unless `patch` is set, `overlap`, Gaussian weighting of patch centres with sd `sigma` x
patch, `batch` patches per call), on CUDA or CPU.

The outputs (SDMs, or probabilities for dice heads) are resampled linearly onto the case's
original grid (undoing crop and resample at once), then: SDM heads, organ = sdm < 0 (the
exact Heaviside; `sdm_threshold` moves the level), the smallest SDM winning where organs
compete; dice heads, probability > 0.5, the largest winning. With `levels: validated` each
organ decides at the level the model carries (kept only where it gained at least 0.01 mean
validation Dice over the fixed level), under the model's contest rule: levels chosen by a
`calibrate` stage (its `contest`, `own-level` by default) or by `train` at the end of
training (`own-level`: a contested voxel goes to the organ furthest past its level); the
levels and the rule are in the model's model.json.
`largest_component: true` then keeps each organ's largest connected component (6-connected);
`validated`, per organ the components of at least the share of the largest one's voxels
that `calibrate` (`components: true`) chose on the validation cases (a spinal cord the
prediction breaks can keep its pieces).

Output: a case with the predicted label map on the original grid (same shape and affine as
the loaded image), and <stage>/<case>.nii.gz (u8 labels 1..K in the model's organ order,
see labels.json) plus, with `write_maps`, <case>_<organ>.nii.gz of each organ's SDM (or
probability), for 3D Slicer or ITK-SNAP over the original image.
"#;

/// The `train` stage's factory: [`StageDef`]'s, but an SDM-only head's exclusion term is
/// keyed under its own name. Binaries before session 37 accepted that setting, keyed it as
/// `exclusion` and trained without the term (`fit::loss` returned before it); a cached
/// item of theirs must not stand for a training that has it.
struct TrainFactory(StageDef<TrainParams>);

/// Where an SDM-only head's `exclusion` goes in the cache key.
const SDM_EXCLUSION_KEY: &str = "exclusion_on_maps";

impl StageFactory for TrainFactory {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn version(&self) -> u32 {
        self.0.version()
    }
    fn summary(&self) -> &str {
        self.0.summary()
    }
    fn help(&self) -> &str {
        self.0.help()
    }
    fn params(&self) -> Vec<ParamDoc> {
        self.0.params()
    }
    fn default_params(&self) -> serde_json::Value {
        self.0.default_params()
    }
    fn build(&self, params: &serde_json::Value, ctx: &BuildCtx) -> Result<Built, ParamError> {
        let mut built = self.0.build(params, ctx)?;
        let sdm_only =
            serde_json::from_value::<crate::losses::Mode>(built.canonical["mode"].clone())
                .is_ok_and(|m| !m.segments());
        if let (true, Some(keyed)) = (sdm_only, built.keyed.as_object_mut()) {
            if let Some(w) = keyed.remove("exclusion") {
                keyed.insert(SDM_EXCLUSION_KEY.into(), w);
            }
        }
        Ok(built)
    }
}

impl Plugin for LearnPlugin {
    fn name(&self) -> &'static str {
        "learn"
    }

    fn register(&self, registry: &mut Registry) {
        registry.add(TrainFactory(StageDef::<TrainParams> {
            name: "train",
            // 2: flips mirror the left-right axis found from the affine (was voxel axis 0,
            // which is anterior-posterior in OpenKBP's PLI volumes) and pair Left/Right organ
            // names too. 3: zoomed SDM targets stay within [-1, 1] and the far field of a
            // band-limited map stays saturated. 4: SDM targets are held as 16-bit integers
            // (at most 1.5e-5 of a normalised map off) in a memory-mapped training set.
            // 5: the model carries per-organ decision levels chosen on the validation cases.
            version: 5,
            summary: "Train the shape-aware 3D UNet (dice | sdm | joint) on libtorch, resumable",
            help: TRAIN_HELP,
            build: |p, _| {
                p.check().map_err(|(field, message)| ParamError {
                    path: vec![field],
                    message,
                })?;
                Ok(Arc::new(Train(p)))
            },
        }));
        registry.add(StageDef::<AugmentConfig> {
            name: "augment",
            version: 1,
            summary: "Per case: organ locations and intensity statistics for the patch sampler, and the augmentation policy",
            help: sampler::HELP,
            build: |p, _| {
                sampler::check_policy(&p).map_err(|(field, message)| ParamError {
                    path: vec![field],
                    message,
                })?;
                Ok(Arc::new(Augment(p)))
            },
        });
        registry.add(StageDef::<crate::calibrate::CalibrateParams> {
            name: "calibrate",
            version: 1,
            summary:
                "Per-organ decision levels chosen on the validation cases, apart from training",
            help: crate::calibrate::HELP,
            build: |p, _| {
                p.check().map_err(|(field, message)| ParamError {
                    path: vec![field],
                    message,
                })?;
                Ok(Arc::new(crate::calibrate::Calibrate(p)))
            },
        });
        registry.add(StageDef::<InferParams> {
            name: "infer",
            // 2: test-time mirroring along the left-right axis only (it mirrored all three
            // axes, which the training never did: it erased organs on OpenKBP). 3: a
            // validated level is adopted only where it gains `levels::MIN_GAIN`. 4: validated
            // levels decode under the model's contest rule (`calibrate`'s `fixed-owner`).
            version: 4,
            summary: "Sliding-window inference, back onto the original grid, NIfTI out",
            help: INFER_HELP,
            build: |p, ctx| {
                if let Err(e) = model::parse_device(&p.device) {
                    return Err(ParamError {
                        path: vec!["device".into()],
                        message: e,
                    });
                }
                if !(0.0..0.95).contains(&p.overlap) {
                    return Err(ParamError {
                        path: vec!["overlap".into()],
                        message: "must be in [0, 0.95)".into(),
                    });
                }
                if !(p.sdm_threshold.is_finite() && p.sdm_threshold.abs() < 1.0) {
                    return Err(ParamError {
                        path: vec!["sdm_threshold".into()],
                        message: "must be a number in (-1, 1)".into(),
                    });
                }
                if p.levels == Levels::Validated && p.sdm_threshold != 0.0 {
                    return Err(ParamError {
                        path: vec!["sdm_threshold".into()],
                        message: "is the fixed level: with `levels: validated` each organ's \
                                  level comes from the model; set one or the other"
                            .into(),
                    });
                }
                if matches!(p.largest_component, LargestComponent::Chosen(_))
                    && p.levels != Levels::Validated
                {
                    return Err(ParamError {
                        path: vec!["largest_component".into()],
                        message: "`validated` was chosen at the model's validated levels: set \
                                  `levels: validated` too"
                            .into(),
                    });
                }
                if !["test", "val", "train", "all"].contains(&p.split.as_str()) {
                    return Err(ParamError {
                        path: vec!["split".into()],
                        message: "must be test, val, train or all".into(),
                    });
                }
                let packaged = match &p.package {
                    None => None,
                    Some(dir) => {
                        let at = |message: String| ParamError {
                            path: vec!["package".into()],
                            message,
                        };
                        if p.model.is_some() {
                            return Err(at(
                                "name a `train` input (`model`) or a package, not both".into(),
                            ));
                        }
                        let file = ctx.path(dir).join("model.item");
                        let bytes = std::fs::read(&file).map_err(|e| {
                            at(format!(
                                "cannot read {} ({e}): a model package is the folder a run \
                                 writes for a trained model",
                                file.display()
                            ))
                        })?;
                        let item = Item::decode(&bytes)
                            .map_err(|e| at(format!("{}: {e}", file.display())))?;
                        Model::from_item(&item)
                            .map_err(|e| at(format!("{}: {e}", file.display())))?;
                        Some((Arc::new(item), blake3::hash(&bytes).to_hex().to_string()))
                    }
                };
                Ok(Arc::new(Infer {
                    p,
                    packaged,
                    net: Mutex::new(Vec::new()),
                    warned_mirroring: Default::default(),
                }))
            },
        });
    }
}

/// Params of `train`: the training config.
pub type TrainParams = TrainConfig;

struct Train(TrainParams);

impl Stage for Train {
    fn output(&self) -> Kind {
        Kind::Model
    }

    fn ports(&self) -> Vec<Port> {
        vec![
            Port::new("cases", Kind::Case).from_param("cases", self.0.cases.as_deref()),
            Port::new("sdms", Kind::Sdms).from_param("sdms", self.0.sdms.as_deref()),
            Port::new("sampler", Kind::SamplerData),
        ]
    }

    fn shape(&self) -> Shape {
        Shape::Gather
    }
    fn resource(&self) -> Option<String> {
        Some("gpu".into())
    }
    fn uses_seed(&self) -> bool {
        true
    }
    fn accepts(&self, case: &CaseInfo) -> bool {
        case.split.as_deref() != Some("test")
    }

    fn publish(&self, ctx: &StageCtx, item: &Item) -> Result<(), StageError> {
        crate::history::publish_model(&ctx.output_dir, item)
    }

    fn run_all(
        &self,
        ctx: &StageCtx,
        cases: &[(CaseInfo, Inputs)],
        _global: &Inputs,
    ) -> Result<Item, StageError> {
        let mut cfg = self.0.clone();
        let mut policy: Option<AugmentConfig> = None;
        // The training cases' voxels go to a memory-mapped file in the cache's scratch
        // folder, one case at a time: the process holds a few cases, whatever the size of
        // the dataset. The SDMs are kept for the modes that read them.
        let mut train_set = TrainSetBuilder::in_file(&ctx.scratch, cfg.mode.reads_maps())
            .map_err(StageError::msg)?;
        let mut val = Vec::new();
        let mut organs: Option<Vec<String>> = None;
        let mut norm: Option<Vec<Norm>> = None;
        let mut spacing = [1.0; 3];
        let mut seen = crate::model::TrainingData::default();
        let mut no_organ = 0usize;
        for (info, inputs) in cases {
            let at = |e: StageError| StageError::msg(format!("case `{}`: {e}", info.id));
            let case = inputs.case("cases").map_err(at)?;
            let image = case
                .image()
                .ok_or_else(|| at(StageError::msg("the case has no image")))?;
            case.check_grids().map_err(|m| at(StageError::msg(m)))?;
            seen.add(&case.original.unwrap_or_else(|| image.grid()));
            match &organs {
                None => organs = Some(case.organs.clone()),
                Some(o) if *o != case.organs => {
                    return Err(at(StageError::msg(format!(
                        "its organs {:?} differ from the first case's {:?}",
                        case.organs, o
                    ))))
                }
                _ => {}
            }
            let n = norm.get_or_insert_with(|| {
                spacing = image.spacing;
                Norm::resolve_channels(cfg.intensity, cfg.window, &case.images)
            });
            if n.len() != case.images.len() {
                return Err(at(StageError::msg(format!(
                    "it has {} image channel(s), the first case {}: every case needs the same",
                    case.images.len(),
                    n.len()
                ))));
            }
            let is_val = info.split.as_deref() == Some("val");
            // A training case that contours none of the organs gives every loss term nothing
            // (absent organs are masked out): sampling it would spend steps on zero
            // gradients. Left out before its image is normalised.
            if !is_val && !case.present.iter().any(|&p| p) {
                no_organ += 1;
                continue;
            }
            let case = model::normalise_case(n, &case).map_err(at)?;
            if is_val {
                let img: Vec<f32> = case.images.iter().flat_map(|v| v.to_f32()).collect();
                let Some(VoxelData::U8(labels)) = case.labels.as_ref().map(|l| l.data.clone())
                else {
                    return Err(at(StageError::msg("the case has no u8 label map")));
                };
                val.push(ValCase {
                    id: info.id.clone(),
                    image: img,
                    dims: image.dims,
                    labels,
                    present: case.present.clone(),
                });
                continue;
            }
            let sdms = inputs.sdms("sdms").map_err(at)?;
            if cfg.mode.reads_maps() && sdms.units != SdmUnits::Normalized {
                return Err(at(StageError::msg(
                    "SDM heads need normalised SDMs (edt-sdm `normalize: true`)",
                )));
            }
            let sampler = SamplerData::from_item(inputs.port("sampler")?).map_err(at)?;
            match &policy {
                None => policy = Some(sampler.policy.clone()),
                Some(p) if *p != sampler.policy => {
                    return Err(at(StageError::msg(
                        "its augmentation policy differs from the first case's (one `augment` stage feeds `train`)",
                    )))
                }
                _ => {}
            }
            train_set
                .add(&info.id, &case, &sdms, Some(sampler.organ_voxels))
                .map_err(StageError::msg)?;
        }
        if no_organ > 0 {
            tracing::info!(
                cases = no_organ,
                "left out of training: {no_organ} case(s) contour none of the organs"
            );
        }
        cfg.augment = policy.ok_or_else(|| {
            StageError::msg(if no_organ > 0 {
                format!(
                    "no training cases: the {no_organ} training case(s) contour none of the organs"
                )
            } else {
                "no training cases".to_string()
            })
        })?;
        let cfg = &cfg;
        let norm = norm.ok_or_else(|| StageError::msg("no cases to train on"))?;
        let train_cases = train_set.finish().map_err(StageError::msg)?;
        tracing::info!(
            train = train_cases.len(),
            val = val.len(),
            "training {:?} on {} cases",
            cfg.mode,
            train_cases.len()
        );
        let n_organs = organs.as_ref().map_or(0, Vec::len);
        if cfg.mode == crate::losses::Mode::Joint && n_organs > 1 {
            tracing::warn!(
                organs = n_organs,
                "`mode: joint` is the paper's joint head, which learned none of 9 organs on the \
                 demo and none of 7 on OpenKBP CT: for many organs use the `joint` variant of \
                 the shipped pipelines (docs/results/multi-organ/README.md)"
            );
        }
        let session = Session {
            seed: ctx.seed,
            work_dir: &ctx.work_dir,
            output_dir: Some(&ctx.output_dir),
            scratch: &ctx.scratch,
            cancel: ctx.cancel,
            bar: ctx
                .progress
                .bar(cfg.epochs as u64, &format!("{} epochs", ctx.stage_id)),
            on_epoch: None,
        };
        let mut trained = train::train(cfg, train_cases, val, norm, spacing, &session)?;
        session.bar.finish_and_clear();
        trained.model.config.training_data = Some(seen);
        crate::history::write_model_config(&ctx.output_dir, &trained.model.config)?;
        Ok(trained.model.to_item())
    }
}

/// Params of `infer`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct InferParams {
    /// Input holding the cases on the training grid (default: the first per-case input).
    pub cases: Option<String>,
    /// The `train` stage (default: the whole-dataset input).
    pub model: Option<String>,
    /// A trained model package instead of a `train` input: the folder a run writes for a
    /// model (`runs/<run>/<train stage>/[<variant>/]`, what `pipeline predict -m` takes).
    /// Its content is part of the cache key. The pipeline must prepare the cases as the
    /// model's training did (its `pipeline.json` lists those stages and params).
    pub package: Option<String>,
    /// Which cases to segment.
    pub split: String,
    /// Window size (default: the model's patch).
    pub patch: Option<[usize; 3]>,
    /// Fraction of a window shared with its neighbour.
    pub overlap: f64,
    /// Gaussian weight sd, as a fraction of the window.
    pub sigma: f64,
    /// Windows per network call.
    #[schemars(extend("x-execution" = true))]
    pub batch: usize,
    /// Keep each organ's largest connected component: true, false, or `validated` (the
    /// organs `calibrate` chose with `components: true`).
    pub largest_component: LargestComponent,
    /// Test-time mirroring: average the outputs over the volume as is and mirrored
    /// left-right (2 passes: the mirroring training augmented with), left and right organs
    /// (`_L`/`_R`, `Left`/`Right`) swapped back. With `levels: validated`, levels chosen
    /// otherwise (`calibrate.tta`) are warned about.
    pub tta: bool,
    /// SDM heads: organ where sdm < this (0: the exact Heaviside of the paper). The reference
    /// SDM is 0 on the organ's boundary voxels, so 0 drops that layer; half the first outside
    /// step (e.g. 0.02 for normalised maps of ~25 mm reach) keeps it.
    pub sdm_threshold: f32,
    /// The level each organ is decided at: `fixed` (sdm < `sdm_threshold`, p > 0.5) or
    /// `validated` (per organ, the model's level of the best validation Dice, from
    /// `calibrate` or `train`, decoded under the model's contest rule).
    #[schemars(extend("x-key-omits-default" = true))]
    pub levels: Levels,
    /// Write predictions on the case's original grid (else the training grid).
    pub original_grid: bool,
    /// Also write each organ's SDM (or probability) as NIfTI.
    pub write_maps: bool,
    /// Where to run; auto: CUDA when present.
    pub device: String,
    /// libtorch threads (0: one per core).
    #[schemars(extend("x-execution" = true))]
    pub threads: usize,
    /// bfloat16 autocast on CUDA.
    pub bf16: bool,
}

impl Default for InferParams {
    fn default() -> Self {
        InferParams {
            cases: None,
            model: None,
            package: None,
            split: "test".into(),
            patch: None,
            overlap: 0.5,
            sigma: 0.125,
            batch: 2,
            largest_component: LargestComponent::Every(false),
            tta: false,
            sdm_threshold: 0.0,
            levels: Levels::Fixed,
            original_grid: true,
            write_maps: false,
            device: "auto".into(),
            threads: 0,
            bf16: true,
        }
    }
}

/// How `infer` decides organs from a head's maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Levels {
    /// Every organ at the head's fixed level.
    Fixed,
    /// Every organ at the level the model carries (chosen on validation cases by
    /// `calibrate` or `train`), under the model's contest rule.
    Validated,
}

/// Which organs `infer` keeps only the largest connected component of. Written `true`,
/// `false` or `validated`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum LargestComponent {
    /// `true`: every organ; `false`: none.
    Every(bool),
    /// `validated`: per organ, as the model's calibration chose.
    Chosen(Validated),
}

/// The word `validated`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Validated {
    Validated,
}

impl<'de> Deserialize<'de> for LargestComponent {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = LargestComponent;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("true, false or validated")
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(LargestComponent::Every(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                match v {
                    "validated" => Ok(LargestComponent::Chosen(Validated::Validated)),
                    "true" => Ok(LargestComponent::Every(true)),
                    "false" => Ok(LargestComponent::Every(false)),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Str(v), &self)),
                }
            }
        }
        d.deserialize_any(V)
    }
}

impl LargestComponent {
    /// Per organ of `models` (one, or an ensemble's members alike): what share of its
    /// largest component's voxels a kept component holds at least (1: the largest alone,
    /// 0: all). `validated`: as the model's calibration chose (an ensemble: the largest
    /// share its members chose).
    fn shares(&self, models: &[Model]) -> Result<Vec<f32>, StageError> {
        let k = models.first().map_or(0, |m| m.config.organs.len());
        if let LargestComponent::Every(b) = *self {
            return Ok(vec![if b { 1.0 } else { 0.0 }; k]);
        }
        let mut shares = vec![0.0f32; k];
        for (i, m) in models.iter().enumerate() {
            let chosen: Option<Vec<f32>> = m
                .config
                .levels
                .as_ref()
                .filter(|l| l.len() == k)
                .and_then(|l| l.iter().map(|l| l.component_share).collect());
            let chosen = chosen.ok_or_else(|| {
                StageError::msg(format!(
                    "`largest_component: validated`, but model {i} carries no choice of \
                     components: calibrate it with `components: true`, or set \
                     `largest_component` to true or false"
                ))
            })?;
            for (s, c) in shares.iter_mut().zip(chosen) {
                *s = s.max(c);
            }
        }
        Ok(shares)
    }
}

/// A network built from a model's weights, kept while the same model is used.
struct Loaded {
    weights: blake3::Hash,
    _vs: tch::nn::VarStore,
    net: crate::unet::UNet,
    device: Device,
}

struct Infer {
    p: InferParams,
    /// The model of `package`, and the hash of its bytes (part of every key).
    packaged: Option<(Arc<Item>, String)>,
    /// Networks kept while the same models are used (one, or an ensemble's).
    net: Mutex<Vec<Loaded>>,
    /// Set once a mismatch of mirroring between levels and decoding has been warned of.
    warned_mirroring: std::sync::atomic::AtomicBool,
}

impl Infer {
    /// Per organ, the level to decide at: the fixed one, or the models' validated levels
    /// (averaged over an ensemble's members, as their maps are); and the contest rule.
    fn levels_of(&self, models: &[Model]) -> Result<(Vec<f32>, Contest), StageError> {
        let first = models
            .first()
            .ok_or_else(|| StageError::msg("an empty ensemble of models"))?;
        let k = first.config.organs.len();
        let head = first.config.mode.head();
        if self.p.levels == Levels::Fixed {
            let level = crate::levels::fixed_level(head, self.p.sdm_threshold);
            return Ok((vec![level; k], Contest::OwnLevel));
        }
        let contest = first.config.contest;
        if let Some(i) = models.iter().position(|m| m.config.contest != contest) {
            return Err(StageError::msg(format!(
                "ensemble member {i}'s levels were chosen under the {:?} contest, member 0's \
                 under {contest:?}: calibrate them alike",
                models[i].config.contest
            )));
        }
        if let Some(m) = models
            .iter()
            .find(|m| m.config.levels_mirrored != self.p.tta)
        {
            use std::sync::atomic::Ordering;
            if !self.warned_mirroring.swap(true, Ordering::Relaxed) {
                let (chosen, by) = if m.config.levels_mirrored {
                    ("with", "`calibrate.tta: true`")
                } else {
                    ("without", "by `train`, or `calibrate` without `tta`")
                };
                let decoded = if self.p.tta { "with" } else { "without" };
                tracing::warn!(
                    "the model's levels were chosen on maps {chosen} test-time mirroring \
                     ({by}) and are decoded {decoded} it (`tta: {}`): they may not fit; \
                     choose and decode alike",
                    self.p.tta
                );
            }
        }
        let mut sum = vec![0.0f32; k];
        for (i, m) in models.iter().enumerate() {
            let levels = m
                .config
                .levels
                .as_ref()
                .filter(|l| l.len() == k)
                .ok_or_else(|| {
                    StageError::msg(format!(
                        "`levels: validated`, but model {i} has no validated levels (trained \
                     without validation cases, `train.val_every: 0`, or by an older \
                     shapeflow): use `levels: fixed` or retrain"
                    ))
                })?;
            for (s, l) in sum.iter_mut().zip(levels) {
                *s += l.adopted(crate::levels::fixed_level(head, 0.0));
            }
        }
        let n = models.len() as f32;
        Ok((sum.into_iter().map(|s| s / n).collect(), contest))
    }

    /// One model's output maps over the whole image (per organ), with test-time mirroring
    /// if asked.
    fn maps_of(
        &self,
        ctx: &StageCtx,
        model: &Model,
        images: &[Arc<Volume>],
        device: Device,
    ) -> Result<Vec<Vec<f32>>, StageError> {
        let image = images
            .first()
            .ok_or_else(|| StageError::msg("the case has no image"))?;
        let mut guard = self
            .net
            .lock()
            .map_err(|_| StageError::msg("a previous inference panicked"))?;
        let hash = blake3::hash(&model.weights);
        let at = match guard
            .iter()
            .position(|l| (l.weights, l.device) == (hash, device))
        {
            Some(i) => i,
            None => {
                let (vs, net) = model.load(device, &ctx.scratch)?;
                guard.push(Loaded {
                    weights: hash,
                    _vs: vs,
                    net,
                    device,
                });
                guard.len() - 1
            }
        };
        let loaded = &guard[at];
        let patch = self.p.patch.unwrap_or(model.config.patch);
        let mult = 1usize << model.config.unet.depth;
        if patch.iter().any(|&p| p == 0 || p % mult != 0) {
            return Err(StageError::msg(format!(
                "`patch` {patch:?}: every size must be a multiple of {mult} for this model"
            )));
        }
        let x = model::normalised_input(&model.config.norm, images)?;
        let wcfg = WindowConfig {
            patch,
            overlap: self.p.overlap,
            sigma: self.p.sigma,
            batch: self.p.batch.max(1),
        };
        let predictor = model::Predictor {
            model,
            net: &loaded.net,
            device,
            bf16: self.p.bf16,
        };
        predictor
            .maps_mirrored(
                &x,
                image.dims,
                &image.affine,
                &wcfg,
                self.p.tta,
                Some(ctx.cancel),
            )
            .map_err(|e| model::in_context("inference", e))
    }
}

impl Stage for Infer {
    fn output(&self) -> Kind {
        Kind::Predictions
    }

    fn ports(&self) -> Vec<Port> {
        let cases = Port::new("cases", Kind::Case).from_param("cases", self.p.cases.as_deref());
        if self.packaged.is_some() {
            return vec![cases];
        }
        vec![
            cases,
            Port::new("model", Kind::Model).from_param("model", self.p.model.as_deref()),
        ]
    }

    fn key_material(&self) -> String {
        self.packaged
            .as_ref()
            .map(|(_, hash)| format!("package {hash}"))
            .unwrap_or_default()
    }

    fn shape(&self) -> Shape {
        Shape::PerCase
    }
    fn resource(&self) -> Option<String> {
        Some("gpu".into())
    }
    fn accepts(&self, case: &CaseInfo) -> bool {
        self.p.split == "all" || case.split.as_deref().unwrap_or("train") == self.p.split
    }

    fn run_case(
        &self,
        ctx: &StageCtx,
        info: &CaseInfo,
        inputs: &Inputs,
    ) -> Result<Item, StageError> {
        // One model, or an ensemble (several packages given to `pipeline predict`): their
        // maps are averaged before organs are decided.
        let item: &Item = match &self.packaged {
            Some((item, _)) => item,
            None => inputs.port("model")?,
        };
        let models: Vec<Model> = match item.ensemble_members() {
            Some(parts) => parts
                .into_iter()
                .map(Model::from_item)
                .collect::<Result<_, _>>()?,
            None => vec![Model::from_item(item)?],
        };
        let model = models
            .first()
            .ok_or_else(|| StageError::msg("an empty ensemble of models"))?;
        for (i, m) in models.iter().enumerate().skip(1) {
            let c = &m.config;
            if c.organs != model.config.organs || c.mode.head() != model.config.mode.head() {
                return Err(StageError::msg(format!(
                    "ensemble member {i} predicts {:?} as {:?}, member 0 {:?} as {:?}: an \
                     ensemble needs the same organs and the same kind of head",
                    c.organs,
                    c.mode.head(),
                    model.config.organs,
                    model.config.mode.head()
                )));
            }
        }
        let case = inputs.case("cases")?;
        let image = case
            .image()
            .ok_or_else(|| StageError::msg("the case has no image"))?;
        case.check_grids().map_err(StageError::msg)?;
        if let Some(seen) = &model.config.training_data {
            for w in seen.check(&case.original.unwrap_or_else(|| image.grid())) {
                tracing::warn!(case = %info.id, "{w}");
            }
        }
        let sp = model.config.spacing;
        if (0..3).any(|a| (image.spacing[a] - sp[a]).abs() > 0.01 * sp[a]) {
            tracing::warn!(
                case = %info.id,
                "spacing {:?} differs from the model's training spacing {:?}",
                image.spacing,
                sp
            );
        }
        let device = model::parse_device(&self.p.device).map_err(StageError::msg)?;
        model::check_device(device)?;
        if self.p.threads > 0 {
            tch::set_num_threads(self.p.threads as i32);
        }
        let k = model.config.organs.len();
        let mut maps: Vec<Vec<f32>> = Vec::new();
        for m in &models {
            let one = self.maps_of(ctx, m, &case.images, device)?;
            if maps.is_empty() {
                maps = one;
            } else {
                for (acc, o) in maps.iter_mut().zip(one) {
                    for (a, v) in acc.iter_mut().zip(o) {
                        *a += v;
                    }
                }
            }
        }
        if models.len() > 1 {
            let n = models.len() as f32;
            for m in maps.iter_mut() {
                for v in m.iter_mut() {
                    *v /= n;
                }
            }
        }
        // Onto the original grid: resample the continuous maps, then decide organs there.
        let mut grid = image.grid();
        let head = model.config.mode.head();
        if let (true, Some(orig)) = (self.p.original_grid, case.original) {
            if !orig.same_as(&grid, 1e-6) {
                let fill = head.background();
                maps = maps
                    .into_iter()
                    .map(|m| {
                        let v = image
                            .with_data(VoxelData::F32(m))
                            .map_err(|e| StageError::msg(e.to_string()))?;
                        resample_to_grid(&v, &orig, ImageInterp::Linear, LabelInterp::Linear, fill)
                            .map(|r| r.to_f32())
                            .map_err(StageError::msg)
                    })
                    .collect::<Result<_, _>>()?;
                grid = orig;
            }
        }
        let (levels, contest) = self.levels_of(&models)?;
        let mut labels = crate::levels::decode(head, &maps, &levels, contest);
        let shares = self.p.largest_component.shares(&models)?;
        keep_large_components(&mut labels, grid.dims, &shares);
        let on_grid = |data: VoxelData| -> Result<Volume, StageError> {
            Volume::from_grid(&grid, data).map_err(|e| StageError::msg(e.to_string()))
        };
        let label_vol = on_grid(VoxelData::U8(labels))?;
        // Files for people.
        let out = &ctx.output_dir;
        std::fs::create_dir_all(out)
            .map_err(|e| StageError::msg(format!("{}: {e}", out.display())))?;
        label_vol
            .write_nifti_atomic(&out.join(format!("{}.nii.gz", info.id)))
            .map_err(|e| StageError::msg(e.to_string()))?;
        let names: serde_json::Map<String, serde_json::Value> = model
            .config
            .organs
            .iter()
            .enumerate()
            .map(|(i, o)| ((i + 1).to_string(), serde_json::json!(o)))
            .collect();
        // Every case's task writes it (the same bytes): whole, through the atomic writer.
        let labels_json = out.join("labels.json");
        let bytes =
            serde_json::to_vec_pretty(&names).map_err(|e| StageError::msg(e.to_string()))?;
        shapeflow_core::atomic::write(&labels_json, &bytes)
            .map_err(|e| StageError::msg(format!("{}: {e}", labels_json.display())))?;
        if self.p.write_maps {
            for (o, m) in model.config.organs.iter().zip(maps) {
                let v = on_grid(VoxelData::F32(m))?;
                v.write_nifti_atomic(&out.join(format!("{}_{o}.nii.gz", info.id)))
                    .map_err(|e| StageError::msg(e.to_string()))?;
            }
        }
        let mut notes = serde_json::Map::new();
        notes.insert(
            "prediction".into(),
            serde_json::json!({"mode": model.config.mode, "patch": self.p.patch.unwrap_or(model.config.patch), "models": models.len(), "tta": self.p.tta, "overlap": self.p.overlap,
                "largest_component": self.p.largest_component, "component_shares": shares, "sdm_threshold": self.p.sdm_threshold,
                "levels": self.p.levels, "organ_levels": levels,
                "contest": (self.p.levels == Levels::Validated).then_some(contest)}),
        );
        Ok(CaseData {
            images: Vec::new(),
            labels: Some(Arc::new(label_vol)),
            organs: model.config.organs.clone(),
            present: vec![true; k],
            original: case.original,
            notes,
        }
        .to_item())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shapeflow_core::BuildCtx;

    fn build(name: &str, params: serde_json::Value) -> Result<(), ParamError> {
        let r = Registry::new().with(&LearnPlugin).unwrap();
        let ctx = BuildCtx {
            base_dir: ".".into(),
        };
        r.get(name).unwrap().build(&params, &ctx).map(|_| ())
    }

    #[test]
    fn params_are_documented() {
        Registry::new()
            .with(&LearnPlugin)
            .unwrap()
            .check_docs()
            .unwrap();
    }

    /// Params added later (`exclusion`, `joint_prior`, `softmax`) are keyed only when set: at their
    /// default the cache key is the one from before they existed, so no cached training is
    /// recomputed.
    #[test]
    fn params_added_later_are_keyed_only_when_set() {
        let r = Registry::new().with(&LearnPlugin).unwrap();
        let ctx = BuildCtx {
            base_dir: ".".into(),
        };
        let keyed = |p: serde_json::Value| r.get("train").unwrap().build(&p, &ctx).unwrap().keyed;
        let before = keyed(serde_json::json!({"k": 20}));
        assert!(before.get("ce").is_some());
        for name in ["exclusion", "joint_prior"] {
            assert!(before.get(name).is_none(), "{name}");
            assert_eq!(
                keyed(serde_json::json!({"k": 20, name: 0})),
                before,
                "{name}"
            );
            assert_eq!(
                keyed(serde_json::json!({"k": 20, name: 0.5}))[name],
                0.5,
                "{name}"
            );
            let doc = r.get("train").unwrap().params();
            let d = doc.iter().find(|d| d.name == name).unwrap();
            assert_eq!(d.default, serde_json::json!(0.0), "{name}");
        }
        assert!(before.get("far_weight").is_none());
        let shell = serde_json::json!({"k": 20, "mode": "joint-shell-balanced"});
        let shell_key = keyed(shell.clone());
        let mut at_one = shell.clone();
        at_one["far_weight"] = serde_json::json!(1.0);
        assert_eq!(keyed(at_one), shell_key);
        let mut at_four = shell.clone();
        at_four["far_weight"] = serde_json::json!(4.0);
        assert_eq!(keyed(at_four)["far_weight"], 4.0);
        assert!(before.get("inside_weight").is_none());
        let mut at_half = shell.clone();
        at_half["inside_weight"] = serde_json::json!(0.5);
        assert_eq!(keyed(at_half), shell_key);
        let mut at_quarter = shell;
        at_quarter["inside_weight"] = serde_json::json!(0.25);
        assert_eq!(keyed(at_quarter)["inside_weight"], 0.25);
        assert!(before.get("softmax").is_none());
        assert_eq!(
            keyed(serde_json::json!({"k": 20, "softmax": false})),
            before
        );
        assert_eq!(
            keyed(serde_json::json!({"k": 20, "softmax": true}))["softmax"],
            true
        );
    }

    /// An SDM-only head's exclusion term is keyed under its own name, so that no item a
    /// binary before session 37 trained without the term (it accepted the setting and
    /// ignored it) is taken for one trained with it; the Dice and joint heads' key is as
    /// before, and at 0 the SDM-only head's too.
    #[test]
    fn sdm_only_exclusion_has_its_own_key() {
        let r = Registry::new().with(&LearnPlugin).unwrap();
        let ctx = BuildCtx {
            base_dir: ".".into(),
        };
        let keyed = |p: serde_json::Value| r.get("train").unwrap().build(&p, &ctx).unwrap().keyed;
        let sdm = keyed(serde_json::json!({"mode": "sdm-shell-balanced", "exclusion": 0.3}));
        assert!(sdm.get("exclusion").is_none());
        assert_eq!(sdm[SDM_EXCLUSION_KEY], 0.3);
        assert_eq!(
            keyed(serde_json::json!({"mode": "sdm-shell-balanced", "exclusion": 0})),
            keyed(serde_json::json!({"mode": "sdm-shell-balanced"}))
        );
        for mode in ["dice", "joint-shell-balanced"] {
            let k = keyed(serde_json::json!({"mode": mode, "exclusion": 0.3}));
            assert_eq!(k["exclusion"], 0.3, "{mode}");
            assert!(k.get(SDM_EXCLUSION_KEY).is_none(), "{mode}");
        }
    }

    /// `infer.levels` at its default (`fixed`) is left out of the key: predictions made
    /// before it existed keep theirs.
    #[test]
    fn infer_levels_are_keyed_only_when_validated() {
        let r = Registry::new().with(&LearnPlugin).unwrap();
        let ctx = BuildCtx {
            base_dir: ".".into(),
        };
        let keyed = |p: serde_json::Value| r.get("infer").unwrap().build(&p, &ctx).unwrap().keyed;
        let before = keyed(serde_json::json!({}));
        assert!(before.get("levels").is_none());
        assert_eq!(keyed(serde_json::json!({"levels": "fixed"})), before);
        assert_eq!(
            keyed(serde_json::json!({"levels": "validated"}))["levels"],
            "validated"
        );
    }

    /// `largest_component` keys as the bool it was (cached predictions keep their keys) and
    /// as the word `validated`; `calibrate.components` and `largest_component` only when on.
    #[test]
    fn largest_component_keys() {
        let r = Registry::new().with(&LearnPlugin).unwrap();
        let ctx = BuildCtx {
            base_dir: ".".into(),
        };
        let keyed = |stage: &str, p: serde_json::Value| {
            r.get(stage).unwrap().build(&p, &ctx).unwrap().keyed
        };
        for b in [true, false] {
            let k = keyed("infer", serde_json::json!({"largest_component": b}));
            assert_eq!(k["largest_component"], b);
        }
        let k = keyed(
            "infer",
            serde_json::json!({"largest_component": "validated", "levels": "validated"}),
        );
        assert_eq!(k["largest_component"], "validated");
        let before = keyed("calibrate", serde_json::json!({}));
        for field in ["components", "largest_component"] {
            assert!(before.get(field).is_none(), "{field}");
            assert_eq!(
                keyed("calibrate", serde_json::json!({ field: false })),
                before
            );
            assert_eq!(
                keyed("calibrate", serde_json::json!({ field: true }))[field],
                true
            );
        }
    }

    #[test]
    fn bad_params_name_their_field() {
        let e = build("train", serde_json::json!({"patch": [48, 40, 32]})).unwrap_err();
        assert_eq!(e.path, vec!["patch"]);
        assert!(e.message.contains("2^depth"), "{}", e.message);
        let e = build("train", serde_json::json!({"mode": "dicee"})).unwrap_err();
        assert_eq!(e.path, vec!["mode"]);
        let e = build("train", serde_json::json!({"net": {"depht": 3}})).unwrap_err();
        assert_eq!(e.path, vec!["net", "depht"]);
        let e = build(
            "train",
            serde_json::json!({"augment": {"patch": [1, 1, 1]}}),
        )
        .unwrap_err();
        assert_eq!(
            e.path[0], "augment",
            "patch is a train param, not augment's"
        );
        let e = build("infer", serde_json::json!({"device": "gpu"})).unwrap_err();
        assert_eq!(e.path, vec!["device"]);
        let e = build("infer", serde_json::json!({"split": "tests"})).unwrap_err();
        assert_eq!(e.path, vec!["split"]);
        let e = build(
            "infer",
            serde_json::json!({"levels": "validated", "sdm_threshold": 0.02}),
        )
        .unwrap_err();
        assert_eq!(e.path, vec!["sdm_threshold"]);
        let e = build("infer", serde_json::json!({"levels": "best"})).unwrap_err();
        assert_eq!(e.path, vec!["levels"]);
        let e = build("infer", serde_json::json!({"largest_component": "most"})).unwrap_err();
        assert_eq!(e.path, vec!["largest_component"]);
        assert!(
            e.message.contains("true, false or validated"),
            "{}",
            e.message
        );
        let e = build(
            "infer",
            serde_json::json!({"largest_component": "validated"}),
        )
        .unwrap_err();
        assert_eq!(e.path, vec!["largest_component"]);
        build(
            "infer",
            serde_json::json!({"largest_component": "validated", "levels": "validated"}),
        )
        .unwrap();
        let e = build(
            "calibrate",
            serde_json::json!({"largest_component": true, "joint": false}),
        )
        .unwrap_err();
        assert_eq!(e.path, vec!["largest_component"]);
        assert!(e.message.contains("joint: true"), "{}", e.message);
        build(
            "train",
            serde_json::json!({"mode": "sdm", "patch": [32, 48, 32], "net": {"depth": 4}}),
        )
        .unwrap();
    }
}

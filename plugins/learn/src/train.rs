//! The training loop: epochs of augmented batches, Adam with a step schedule, validation
//! Dice, resumable checkpoints, JSONL metrics and a loss curve.

use crate::adam::Adam;
use crate::amp;
use crate::augment::{loader, AugmentConfig, TrainCase};
use crate::checkpoint;
use crate::fit::{self, Mode};
use crate::history;
pub use crate::history::EpochRecord;
use crate::model::{self, Model, ModelConfig, Norm};
use crate::tiling::WindowConfig;
use crate::unet::{UNet, UNetConfig};
use serde::{Deserialize, Serialize};
use shapeflow_core::{CancelToken, StageError};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;
use tch::{nn, Device};

/// The UNet's shape as a user configures it (channels in and out follow from the data).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct NetParams {
    /// Downsamplings (the paper: 6).
    pub depth: usize,
    pub base_channels: i64,
    pub max_channels: i64,
    /// GroupNorm groups.
    pub groups: i64,
    /// LeakyReLU negative slope.
    pub slope: f64,
}

impl Default for NetParams {
    fn default() -> Self {
        let u = UNetConfig::default();
        NetParams {
            depth: u.depth,
            base_channels: u.base_channels,
            max_channels: u.max_channels,
            groups: u.groups,
            slope: u.slope,
        }
    }
}

/// How to train (the `train` stage's params minus its input names).
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Input holding the cases (default: the first input).
    pub cases: Option<String>,
    /// Input holding the SDMs (default: the second input).
    pub sdms: Option<String>,
    /// Head and loss: dice, sdm, joint (the paper's ablation); sdm-balanced, joint-balanced
    /// (each organ's inside and outside weighted equally in the SDM terms);
    /// sdm-shell-balanced, joint-shell-balanced (inside, the band around it and the far field
    /// weighted equally: for band-limited maps); sdm-organ-scaled, joint-organ-scaled (each
    /// organ's errors summed and divided by its near voxels, as Dice weighs them: for
    /// band-limited maps); dice-sdm (the Dice head with a map per organ as an auxiliary
    /// task, under the shell-balanced terms at `lambda`; decoded as the Dice head).
    pub mode: Mode,
    /// Training epochs (the paper: 200 hippocampus, 600 head and neck).
    pub epochs: usize,
    /// Batches per epoch.
    pub iterations: usize,
    /// Patches per batch.
    pub batch: usize,
    /// Patch size in voxels; each a multiple of 2^depth.
    pub patch: [usize; 3],
    /// Adam learning rate (the paper: 5e-4).
    pub lr: f64,
    /// Factor applied every `lr_every` epochs (the paper: 0.8).
    pub lr_decay: f64,
    /// Epochs between decays (the paper: 25).
    pub lr_every: usize,
    /// How the learning rate falls over training: `step` (the paper: times `lr_decay`
    /// every `lr_every` epochs) or `poly` (nnU-Net's: lr (1 - epoch / epochs)^0.9, to
    /// almost 0 at the end, whatever the number of epochs; `lr_decay` and `lr_every`
    /// unused). (Keyed only when set, so that trainings from before it stay cached.)
    #[schemars(extend("x-key-omits-default" = true))]
    pub lr_schedule: LrSchedule,
    /// Smooth Heaviside sharpness in sigmoid(-k sdm) (the paper: 1500).
    pub k: f64,
    /// Weight of L1 + product loss in joint mode (the paper: 10).
    pub lambda: f64,
    /// How that weight moves over the epochs: `constant` (the paper's) or `poly` (it falls
    /// as nnU-Net's learning rate does, lambda (1 - epoch / epochs)^0.9, so the last epochs
    /// train the segmentation almost alone). Only for the modes that weigh SDM terms by
    /// `lambda` (joint and dice-sdm). (Keyed only when set, so that trainings from before
    /// it stay cached.)
    #[schemars(extend("x-key-omits-default" = true))]
    pub lambda_schedule: LambdaSchedule,
    /// Weight of a binary cross-entropy on the segmentation (the Dice head's probabilities,
    /// the joint heads' smooth Heaviside), added to its Dice as nnU-Net does; 0 (the paper):
    /// none. Refused for the SDM-only heads (no segmentation).
    pub ce: f64,
    /// With `ce`: per organ, its voxels and the rest weighted equally (each side's mean,
    /// averaged) instead of one mean over every voxel, so a small organ's voxels carry as
    /// much of the term as a large one's. false: nnU-Net's voxel mean.
    pub ce_balance: bool,
    /// Weight of the exclusion term ([`crate::losses::exclusion_loss`]): every organ's
    /// segmentation is told "no" on the voxels of the other organs contoured in the case,
    /// also where it is itself absent (not contoured); an SDM-only head's on its maps' smooth
    /// Heaviside sigmoid(-k sdm) (its map told to be positive there). 0 (the paper): none.
    /// (Keyed only when set, so that trainings from before it stay cached.)
    #[schemars(extend("x-key-omits-default" = true))]
    pub exclusion: f64,
    /// UNet: depth (downsamplings, the paper: 6), base_channels, max_channels, groups
    /// (GroupNorm), slope (LeakyReLU).
    pub net: NetParams,
    /// The augmentation policy: not a param of `train` but of the `augment` stage, whose
    /// items `train` reads (set from them before training).
    #[serde(skip)]
    pub augment: AugmentConfig,
    /// Image normalisation: ct clips to `window` and maps it to [-1, 1]; zscore per case; auto:
    /// ct for CT (i16), else zscore.
    pub intensity: model::Intensity,
    /// CT window in HU.
    pub window: [f64; 2],
    /// Validate every N epochs (0: never).
    pub val_every: usize,
    /// Checkpoint every N epochs.
    #[schemars(extend("x-execution" = true))]
    pub checkpoint_every: usize,
    /// Where to train; auto: CUDA when present.
    pub device: String,
    /// libtorch threads (0: one per core).
    #[schemars(extend("x-execution" = true))]
    pub threads: usize,
    /// Batch-loader threads.
    #[schemars(extend("x-execution" = true))]
    pub workers: usize,
    /// bfloat16 autocast on CUDA.
    pub bf16: bool,
    /// Dice head: every organ's probability before training (default 0.01; the output bias is
    /// its logit), so that no channel starts out firing everywhere.
    pub head_prior: f64,
    /// SDM heads (joint and SDM-only): every organ's smooth-Heaviside probability before
    /// training, as `head_prior` for the Dice head: the output bias b set so that
    /// sigmoid(-k tanh(b)) is this (the maps start at tanh(b) = -logit(p) / k, outside
    /// every organ), and the output weights divided by k (1 - tanh(b)^2) so that the logits
    /// -k tanh(raw) start with the Dice head's spread. 0 (the default): the default
    /// initialisation (bias 0: maps around 0, logits spread over +-k). Needs
    /// k > |logit(p)| (4.6 for 0.01). Named for the joint heads, where it was introduced.
    /// (Keyed only when set, so that trainings from before it stay cached.)
    #[schemars(extend("x-key-omits-default" = true))]
    pub joint_prior: f64,
    /// The segmentation (the Dice head's, the joint heads' Heaviside) as one softmax over
    /// the background (logit 0) and the organs, as nnU-Net's, instead of one sigmoid per
    /// organ: organs compete for each voxel in training as they do at decoding (the organ
    /// with the largest logit, if above 0). In a case where an organ is not contoured its
    /// probability is merged into the background's (Shi et al. 2021's marginal loss).
    /// Dice, and `ce` (then the softmax's cross-entropy, a voxel mean: no `ce_balance`), are
    /// computed on it. Decoding, levels and inference are unchanged. false (the paper):
    /// sigmoids. (Keyed only when set.)
    #[schemars(extend("x-key-omits-default" = true))]
    pub softmax: bool,
    /// The far field's weight in the shell-balanced SDM terms (modes `*-shell-balanced`,
    /// `dice-sdm`): each organ's map below 0 a band or more away from it, summed and divided
    /// by its near voxels, is multiplied by this. 1: as the terms were introduced. Refused
    /// for other modes (nothing to weigh). (Keyed only when set.)
    #[schemars(extend("x-key-omits-default" = true))]
    pub far_weight: f64,
    /// The inside's share of the shell-balanced SDM terms' near terms, the shell's 1 minus
    /// it (modes `*-shell-balanced`, `dice-sdm`). 0.5: the inside's mean and the shell's
    /// weighted equally, as the terms were introduced; below it an organ thinner than its
    /// band weighs its inside voxels less against its shell's. In (0, 1); refused for other
    /// modes. (Keyed only when set.)
    #[schemars(extend("x-key-omits-default" = true))]
    pub inside_weight: f64,
}

/// How `train`'s learning rate falls over the epochs.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    /// Times `lr_decay` every `lr_every` epochs (the paper's).
    #[default]
    Step,
    /// lr (1 - epoch / epochs)^0.9 (nnU-Net's).
    Poly,
}

/// How `train`'s SDM weight (`lambda`) moves over the epochs.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum LambdaSchedule {
    /// `lambda` at every epoch (the paper's).
    #[default]
    Constant,
    /// lambda (1 - epoch / epochs)^0.9, as [`LrSchedule::Poly`] moves the learning rate.
    Poly,
}

/// (1 - epoch / epochs)^0.9: nnU-Net's poly factor, 1 at the first epoch.
fn poly_factor(epoch: usize, epochs: usize) -> f64 {
    let left = 1.0 - epoch.min(epochs) as f64 / epochs.max(1) as f64;
    left.powf(0.9)
}

/// log(p / (1 - p)).
fn logit(p: f64) -> f64 {
    (p / (1.0 - p)).ln()
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            cases: None,
            sdms: None,
            mode: Mode::Joint,
            epochs: 200,
            iterations: 50,
            batch: 2,
            patch: [64, 64, 64],
            lr: 5e-4,
            lr_decay: 0.8,
            lr_every: 25,
            lr_schedule: LrSchedule::Step,
            k: 1500.0,
            lambda: 10.0,
            lambda_schedule: LambdaSchedule::Constant,
            ce: 0.0,
            ce_balance: false,
            exclusion: 0.0,
            net: NetParams::default(),
            augment: AugmentConfig::default(),
            intensity: model::Intensity::Auto,
            window: [-500.0, 500.0],
            val_every: 5,
            checkpoint_every: 1,
            device: "auto".into(),
            threads: 0,
            workers: 2,
            bf16: true,
            head_prior: 0.01,
            joint_prior: 0.0,
            softmax: false,
            far_weight: 1.0,
            inside_weight: 0.5,
        }
    }
}

impl TrainConfig {
    /// The mode as the YAML spells it (`"joint-shell-balanced"`), for messages.
    fn mode_name(&self) -> String {
        serde_json::to_string(&self.mode).unwrap_or_default()
    }

    /// Problems with the config alone, as (field, message).
    pub fn check(&self) -> Result<(), (String, String)> {
        let f = |field: &str, m: String| Err((field.to_string(), m));
        let mult = 1usize << self.net.depth;
        if self.net.depth > 8 {
            return f("net", "depth must be at most 8".into());
        }
        if self.patch.iter().any(|&p| p == 0 || p % mult != 0) {
            return f(
                "patch",
                format!(
                    "every size must be a positive multiple of 2^depth = {mult} (depth {})",
                    self.net.depth
                ),
            );
        }
        if self.epochs == 0 || self.iterations == 0 || self.batch == 0 {
            return f(
                "epochs",
                "epochs, iterations and batch must be positive".into(),
            );
        }
        if !(self.ce >= 0.0 && self.ce.is_finite()) {
            return f("ce", "must be a number >= 0".into());
        }
        if !(self.exclusion >= 0.0 && self.exclusion.is_finite()) {
            return f("exclusion", "must be a number >= 0".into());
        }
        if !(self.far_weight >= 0.0 && self.far_weight.is_finite()) {
            return f("far_weight", "must be a number >= 0".into());
        }
        if !(self.inside_weight > 0.0 && self.inside_weight < 1.0) {
            return f("inside_weight", "must be a number in (0, 1)".into());
        }
        // The shell-balanced terms' weights, away from their defaults, need those terms.
        let shell = [
            ("far_weight", self.far_weight, 1.0),
            ("inside_weight", self.inside_weight, 0.5),
        ];
        for (field, value, default) in shell {
            if value != default && !self.mode.shell_balanced() {
                let mode = self.mode_name();
                return f(
                    field,
                    format!("mode {mode} has no shell-balanced SDM terms to weigh: use sdm-shell-balanced, joint-shell-balanced or dice-sdm, or {default}"),
                );
            }
        }
        // The cross-entropy and the softmax act on the segmentation's logits; an SDM-only
        // mode has none, so they would be keyed and silently ignored (section 36). The
        // exclusion term reads an SDM-only head's maps through their smooth Heaviside
        // (section 37).
        if !self.mode.segments() {
            let mode = self.mode_name();
            if self.ce > 0.0 {
                return f(
                    "ce",
                    format!("mode {mode} has no segmentation for this term: use a dice or joint mode, or 0"),
                );
            }
            if self.softmax {
                return f(
                    "softmax",
                    format!("mode {mode} has no segmentation to put in a softmax: use a dice or joint mode"),
                );
            }
        }
        if self.softmax && self.ce_balance {
            return f(
                "ce_balance",
                "balances the per-organ cross-entropy; with softmax the cross-entropy is the softmax's".into(),
            );
        }
        if !(self.lambda >= 0.0 && self.lambda.is_finite()) {
            return f("lambda", "must be a number >= 0".into());
        }
        if self.lambda_schedule != LambdaSchedule::Constant && !self.mode.weighs_maps() {
            let mode = self.mode_name();
            return f(
                "lambda_schedule",
                format!(
                    "mode {mode} does not weigh SDM terms by lambda: use a joint mode or dice-sdm"
                ),
            );
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return f("lr", "must be a positive number".into());
        }
        if self.lr_every == 0 || self.lr_decay.is_nan() || self.lr_decay <= 0.0 {
            return f(
                "lr_every",
                "lr_every must be positive and lr_decay > 0".into(),
            );
        }
        if self.checkpoint_every == 0 {
            return f("checkpoint_every", "must be positive".into());
        }
        if self.net.base_channels <= 0 || self.net.groups <= 0 || self.net.max_channels <= 0 {
            return f("net", "channels and groups must be positive".into());
        }
        if self.window[0] >= self.window[1] {
            return f("window", "must be [low, high] with low < high".into());
        }
        if !(self.head_prior > 0.0 && self.head_prior < 1.0) {
            return f(
                "head_prior",
                "must be a probability strictly between 0 and 1".into(),
            );
        }
        if self.joint_prior != 0.0 {
            if !(self.joint_prior > 0.0 && self.joint_prior < 1.0) {
                return f(
                    "joint_prior",
                    "must be 0 (off) or a probability strictly between 0 and 1".into(),
                );
            }
            if logit(self.joint_prior).abs() >= self.k {
                return f(
                    "joint_prior",
                    format!(
                        "sigmoid(-k tanh(b)) cannot reach {} with k = {}: needs k > {:.2}",
                        self.joint_prior,
                        self.k,
                        logit(self.joint_prior).abs()
                    ),
                );
            }
        }
        model::parse_device(&self.device).map_err(|e| ("device".to_string(), e))?;
        Ok(())
    }

    /// Learning rate during `epoch` (0-based).
    pub fn lr_at(&self, epoch: usize) -> f64 {
        match self.lr_schedule {
            LrSchedule::Step => self.lr * self.lr_decay.powi((epoch / self.lr_every) as i32),
            LrSchedule::Poly => self.lr * poly_factor(epoch, self.epochs),
        }
    }

    /// The SDM terms' weight during `epoch` (0-based).
    pub fn lambda_at(&self, epoch: usize) -> f64 {
        match self.lambda_schedule {
            LambdaSchedule::Constant => self.lambda,
            LambdaSchedule::Poly => self.lambda * poly_factor(epoch, self.epochs),
        }
    }
}

/// A validation case: the normalised image and reference labels on the training grid.
pub struct ValCase {
    pub id: String,
    /// The image's channels, one after another.
    pub image: Vec<f32>,
    pub dims: [usize; 3],
    pub labels: Vec<u8>,
    pub present: Vec<bool>,
}

/// Where a run reports and keeps state.
pub struct Session<'a> {
    pub seed: u64,
    /// Survives an interrupted run: checkpoints live here.
    pub work_dir: &'a Path,
    /// Files for people: metrics.jsonl, loss.png, model.safetensors, model.json.
    pub output_dir: Option<&'a Path>,
    pub scratch: &'a Path,
    pub cancel: &'a CancelToken,
    pub bar: shapeflow_core::indicatif::ProgressBar,
    /// Called after every epoch (tests use it to interrupt a run).
    pub on_epoch: Option<&'a (dyn Fn(&EpochRecord) + Sync)>,
}

/// The result of training: the model, its history, and where it resumed from.
pub struct Trained {
    pub model: Model,
    pub history: Vec<EpochRecord>,
    /// The step the run started from (0 unless it resumed a checkpoint).
    pub resumed_from_step: i64,
}

/// Mean Dice per organ of the model on validation cases (None where no case has the organ).
pub fn validate(
    net: &UNet,
    cfg: &ModelConfig,
    cases: &[ValCase],
    device: Device,
    bf16: bool,
) -> Result<Vec<Option<f64>>, StageError> {
    Ok(validate_detail(net, cfg, cases, device, bf16)?.dice)
}

/// Per organ, over the validation cases where it is present (None where none has it).
#[derive(Debug, Clone, Default)]
pub struct Validation {
    /// Mean Dice of the decided organs.
    pub dice: Vec<Option<f64>>,
    /// The head's output averaged over the organ's reference voxels (an SDM head should be
    /// negative there, a probability head above 0.5).
    pub inside_mean: Vec<Option<f64>>,
    /// The fraction of the organ's reference voxels where the head alone says "organ"
    /// (sdm < 0, or p > 0.5), before organs compete for voxels.
    pub inside_hit: Vec<Option<f64>>,
    /// Per organ, the level of the best validation Dice (`crate::levels`).
    pub levels: Vec<crate::levels::OrganLevel>,
}

/// [`validate`] with what the head predicts inside each organ: how an SDM head fails.
pub fn validate_detail(
    net: &UNet,
    cfg: &ModelConfig,
    cases: &[ValCase],
    device: Device,
    bf16: bool,
) -> Result<Validation, StageError> {
    let k = cfg.organs.len();
    let head = cfg.mode.head();
    let mut inside = vec![(0.0f64, 0.0f64, 0usize); k];
    let m = Model {
        config: cfg.clone(),
        weights: Vec::new(),
    };
    let mut sums = vec![(0.0, 0usize); k];
    // `train`'s levels: the own-level contest (a `calibrate` stage searches under another).
    let mut search = crate::levels::LevelSearch::new(head, k, crate::levels::Contest::OwnLevel);
    let predictor = model::Predictor {
        model: &m,
        net,
        device,
        bf16,
    };
    let wcfg = WindowConfig {
        patch: cfg.patch,
        overlap: 0.25,
        ..Default::default()
    };
    for c in cases {
        let out = predictor
            .maps(c.image.as_slice(), c.dims, &wcfg, None)
            .map_err(|e| model::in_context(&format!("validation on {}", c.id), e))?;
        let labels = model::labels_from_outputs(cfg.mode, &out, 0.0);
        search.add_case(&out, &c.labels, &c.present);
        for (o, acc) in inside.iter_mut().enumerate() {
            if !c.present.get(o).copied().unwrap_or(false) {
                continue;
            }
            let want = (o + 1) as u8;
            for (&v, _) in out[o].iter().zip(&c.labels).filter(|(_, &r)| r == want) {
                acc.0 += v as f64;
                acc.1 += match head {
                    crate::losses::Head::Sdm => (v < 0.0) as u8 as f64,
                    crate::losses::Head::Probability => (v > 0.5) as u8 as f64,
                };
                acc.2 += 1;
            }
        }
        for (o, s) in sums.iter_mut().enumerate() {
            if !c.present.get(o).copied().unwrap_or(false) {
                continue;
            }
            let want = (o + 1) as u8;
            let (mut inter, mut a, mut b) = (0usize, 0usize, 0usize);
            for (&p, &r) in labels.iter().zip(&c.labels) {
                let (pp, rr) = (p == want, r == want);
                inter += (pp && rr) as usize;
                a += pp as usize;
                b += rr as usize;
            }
            let d = if a + b == 0 {
                1.0
            } else {
                2.0 * inter as f64 / (a + b) as f64
            };
            s.0 += d;
            s.1 += 1;
        }
    }
    Ok(Validation {
        dice: sums
            .iter()
            .map(|&(s, n)| (n > 0).then(|| s / n as f64))
            .collect(),
        inside_mean: inside
            .iter()
            .map(|&(s, _, n)| (n > 0).then(|| s / n as f64))
            .collect(),
        inside_hit: inside
            .iter()
            .map(|&(_, h, n)| (n > 0).then(|| h / n as f64))
            .collect(),
        levels: search.best(),
    })
}

/// The initial network of a training: seeded weights, and the output bias at the logit of
/// `head_prior` for a Dice head, at `joint_prior`'s for a joint head where set.
pub fn init_net(
    cfg: &TrainConfig,
    unet: UNetConfig,
    seed: u64,
    device: Device,
) -> (nn::VarStore, UNet) {
    // libtorch's generator is global: trainings sharing a GPU (`run --slots gpu=N`) take
    // turns to seed it and draw their initial weights, so each gets the same weights as alone.
    static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = INIT.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(seed as i64);
    let vs = nn::VarStore::new(device);
    let mut net = UNet::new(&vs.root(), unet);
    if cfg.mode.head() == crate::losses::Head::Probability {
        // The segmentation's channels; auxiliary maps keep the default initialisation.
        let organs = unet.out_channels / cfg.mode.out_channels(1);
        net.set_head_bias_of(0..organs, logit(cfg.head_prior));
    } else if cfg.joint_prior > 0.0 {
        // sigmoid(-k tanh(b)) = p  <=>  tanh(b) = -logit(p) / k. The logits -k tanh(b + w x)
        // are about logit(p) - k (1 - tanh(b)^2) w x: the weights divided by that factor give
        // them the Dice head's initial spread (at k = 20, with the bias alone, the default
        // weights leave them +-20-saturated noise: 10% of the voxels above 0.5 in
        // `the_dice_head_starts_at_its_prior`).
        let t = -logit(cfg.joint_prior) / cfg.k;
        net.set_head_bias(t.atanh());
        net.scale_head_weights(1.0 / (cfg.k * (1.0 - t * t)));
    }
    (vs, net)
}

/// Trains a UNet on `cases` (normalised with `norm`, one per image channel), validating on
/// `val`.
pub fn train(
    cfg: &TrainConfig,
    cases: Vec<TrainCase>,
    val: Vec<ValCase>,
    norm: Vec<Norm>,
    spacing: [f64; 3],
    s: &Session,
) -> Result<Trained, StageError> {
    let organs = cases
        .first()
        .map(|c| c.organs.clone())
        .ok_or_else(|| StageError::msg("no training cases (is every case in the test split?)"))?;
    let device = model::parse_device(&cfg.device).map_err(StageError::msg)?;
    model::check_device(device)?;
    if cfg.threads > 0 {
        tch::set_num_threads(cfg.threads as i32);
    }
    if let Some(c) = cases.iter().find(|c| c.channels() != norm.len()) {
        return Err(StageError::msg(format!(
            "case `{}` has {} image channel(s), the normalisation {}",
            c.id,
            c.channels(),
            norm.len()
        )));
    }
    let unet = UNetConfig {
        in_channels: norm.len() as i64,
        out_channels: cfg.mode.out_channels(organs.len()),
        depth: cfg.net.depth,
        base_channels: cfg.net.base_channels,
        groups: cfg.net.groups,
        slope: cfg.net.slope,
        max_channels: cfg.net.max_channels,
    };
    let mcfg = ModelConfig {
        format: model::FORMAT.into(),
        unet,
        organs: organs.clone(),
        mode: cfg.mode,
        k: cfg.k,
        norm,
        patch: cfg.patch,
        spacing,
        trained: serde_json::Value::Null,
        training_data: None,
        left_right_flip: Some(cfg.augment.flip > 0.0),
        levels: None,
        contest: Default::default(),
        levels_mirrored: false,
    };
    let (vs, net) = init_net(cfg, unet, s.seed, device);
    let mut adam = Adam::new(&vs, cfg.lr);

    // Resume from the last checkpoint of this very item, if any.
    let (start, mut history) = checkpoint::resume(s.work_dir, &vs, &mut adam)?;
    let resumed_from_step = adam.step;

    let mut aug = cfg.augment.clone();
    aug.patch = cfg.patch;
    aug.batch = cfg.batch;
    let cases = Arc::new(cases);
    let bar = &s.bar;
    let mut final_levels = None;
    bar.set_length(cfg.epochs as u64);
    bar.set_position(start as u64);
    for epoch in start..cfg.epochs {
        let t0 = Instant::now();
        adam.lr = cfg.lr_at(epoch);
        let lambda = cfg.lambda_at(epoch);
        let rx = loader(
            cases.clone(),
            aug.clone(),
            s.seed,
            epoch as u64,
            cfg.iterations,
            cfg.workers,
            cfg.workers.max(1) * 2,
        );
        let (mut sum, mut n) = (0.0, 0usize);
        let mut waited = std::time::Duration::ZERO;
        loop {
            let tw = Instant::now();
            let Ok(batch) = rx.recv() else { break };
            waited += tw.elapsed();
            if s.cancel.is_cancelled() {
                return Err(StageError::Cancelled);
            }
            let t = fit::to_tensors(&batch, cfg.patch, device);
            let loss = amp::autocast_bf16(cfg.bf16, || {
                fit::loss(&net, &t, cfg.mode, cfg.k, lambda, &fit::SegTerms::of(cfg))
            });
            adam.zero_grad();
            loss.backward();
            adam.step();
            let l = loss.double_value(&[]);
            if !l.is_finite() {
                return Err(StageError::msg(format!(
                    "the loss became {l} at epoch {} step {} (lower lr?)",
                    epoch + 1,
                    adam.step
                )));
            }
            sum += l;
            n += 1;
            bar.set_message(format!(
                "epoch {}/{} loss {:.4} lr {:.2e}",
                epoch + 1,
                cfg.epochs,
                sum / n as f64,
                adam.lr
            ));
        }
        if n < cfg.iterations {
            return Err(StageError::msg("the batch loader stopped early"));
        }
        let last = epoch + 1 == cfg.epochs;
        let validate_now =
            !val.is_empty() && cfg.val_every > 0 && ((epoch + 1) % cfg.val_every == 0 || last);
        let detail = if validate_now {
            Some(validate_detail(&net, &mcfg, &val, device, cfg.bf16)?)
        } else {
            None
        };
        if last {
            final_levels = detail.as_ref().map(|d| d.levels.clone());
        }
        let per_organ = detail.as_ref().map(|d| d.dice.clone());
        let rec = EpochRecord {
            epoch: epoch + 1,
            step: adam.step,
            lr: adam.lr,
            loss: sum / n as f64,
            seconds: t0.elapsed().as_secs_f64(),
            loader_wait_s: waited.as_secs_f64(),
            val_dice: per_organ.as_ref().and_then(|v| {
                let d: Vec<f64> = v.iter().flatten().copied().collect();
                (!d.is_empty()).then(|| d.iter().sum::<f64>() / d.len() as f64)
            }),
            val_dice_per_organ: per_organ,
            val_inside_mean_per_organ: detail.as_ref().map(|d| d.inside_mean.clone()),
            val_inside_hit_per_organ: detail.map(|d| d.inside_hit),
        };
        if let Some(d) = rec.val_dice {
            tracing::info!(
                epoch = rec.epoch,
                loss = rec.loss,
                val_dice = d,
                "validated"
            );
        }
        history.push(rec.clone());
        history::write_log(&history, s.work_dir, s.output_dir)?;
        tracing::debug!("{}", serde_json::to_string(&rec).unwrap_or_default());
        if (epoch + 1) % cfg.checkpoint_every == 0 || last {
            checkpoint::save(s.work_dir, &vs, &adam, epoch + 1, &history)?;
        }
        bar.set_position((epoch + 1) as u64);
        if let Some(f) = s.on_epoch {
            f(&rec);
        }
        if s.cancel.is_cancelled() {
            return Err(StageError::Cancelled);
        }
    }

    // The decision levels of the final network (resumed after its last epoch: validated now).
    if final_levels.is_none() && !val.is_empty() && cfg.val_every > 0 {
        final_levels = Some(validate_detail(&net, &mcfg, &val, device, cfg.bf16)?.levels);
    }
    let weights = model::weights_bytes(&vs, s.scratch)?;
    let last = history.last();
    let mut mcfg = mcfg;
    mcfg.levels = final_levels;
    mcfg.trained = serde_json::json!({
        "epochs": cfg.epochs,
        "steps": adam.step,
        "final_loss": last.map(|r| r.loss),
        "val_dice": history.iter().rev().find_map(|r| r.val_dice),
        "device": format!("{device:?}"),
    });
    let model = Model {
        config: mcfg,
        weights,
    };
    if let Some(out) = s.output_dir {
        history::write_outputs(out, &model, &history)?;
    }
    Ok(Trained {
        model,
        history,
        resumed_from_step,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use shapeflow_core::{CaseData, VoxelData};
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn setup() -> (Vec<TrainCase>, Vec<ValCase>, Vec<Norm>, [f64; 3]) {
        let c = shapeflow_io::phantom::mri(1, 0, [32, 32, 32], [1.0; 3], 0.05);
        let norm = vec![Norm::Zscore];
        let c = model::normalise_case(&norm, &c).unwrap();
        let s = crate::testutil::sdms(&c);
        let img = c.image().unwrap();
        let VoxelData::U8(labels) = c.labels.as_ref().unwrap().data.clone() else {
            unreachable!()
        };
        let val = ValCase {
            id: "m0".into(),
            image: img.to_f32(),
            dims: img.dims,
            labels,
            present: c.present.clone(),
        };
        let spacing = img.spacing;
        (
            vec![TrainCase::new("m0", &c, &s).unwrap()],
            vec![val],
            norm,
            spacing,
        )
    }

    /// A session with no output folder, progress bar or epoch callback.
    fn quiet_session<'a>(
        seed: u64,
        work_dir: &'a Path,
        scratch: &'a Path,
        cancel: &'a CancelToken,
    ) -> Session<'a> {
        Session {
            seed,
            work_dir,
            output_dir: None,
            scratch,
            cancel,
            bar: shapeflow_core::indicatif::ProgressBar::hidden(),
            on_epoch: None,
        }
    }

    fn config(epochs: usize) -> TrainConfig {
        TrainConfig {
            mode: Mode::Joint,
            epochs,
            iterations: 10,
            batch: 2,
            patch: [16, 16, 16],
            lr: 2e-3,
            lr_decay: 0.5,
            lr_every: 8,
            net: NetParams {
                depth: 2,
                base_channels: 8,
                max_channels: 32,
                groups: 4,
                slope: 0.01,
            },
            augment: AugmentConfig {
                foreground: 0.7,
                ..AugmentConfig::none([16, 16, 16])
            },
            val_every: 2,
            device: "cpu".into(),
            threads: 2,
            workers: 1,
            ..Default::default()
        }
    }

    /// Two organs of very different size (a ball of radius 9 voxels and one of radius 2) in
    /// a 48^3 volume, patches of 16^3: case, validation case, and its SDMs either with the
    /// paper's global normalisation or band-limited (`band_mm`).
    fn two_organs(band_mm: Option<f64>) -> (Vec<TrainCase>, Vec<ValCase>) {
        use shapeflow_core::Volume;
        let n = 48usize;
        let mut rng = crate::augment::Rng::new(11);
        let mut image = vec![0f32; n * n * n];
        let mut labels = vec![0u8; n * n * n];
        for z in 0..n {
            for y in 0..n {
                for x in 0..n {
                    let i = x + n * (y + n * z);
                    let d2 = |c: [f64; 3]| {
                        (x as f64 - c[0]).powi(2)
                            + (y as f64 - c[1]).powi(2)
                            + (z as f64 - c[2]).powi(2)
                    };
                    if d2([16.0, 20.0, 24.0]) <= 81.0 {
                        labels[i] = 1;
                        image[i] = 1.0;
                    } else if d2([36.0, 30.0, 22.0]) <= 4.0 {
                        labels[i] = 2;
                        image[i] = -1.0;
                    }
                    image[i] += 0.1 * rng.normal() as f32;
                }
            }
        }
        let spacing = [2.0; 3];
        let c = CaseData {
            images: vec![Arc::new(
                Volume::new([n; 3], spacing, VoxelData::F32(image)).unwrap(),
            )],
            labels: Some(Arc::new(
                Volume::new([n; 3], spacing, VoxelData::U8(labels.clone())).unwrap(),
            )),
            organs: vec!["big".into(), "small".into()],
            present: vec![true, true],
            original: None,
            notes: Default::default(),
        };
        let s = match band_mm {
            None => crate::testutil::sdms(&c),
            Some(b) => {
                let mut s = shapeflow_sdm::case_sdms(&c, false).unwrap();
                shapeflow_sdm::band_limit(&mut s, b);
                s
            }
        };
        let val = ValCase {
            id: "two".into(),
            image: c.image().unwrap().to_f32(),
            dims: [n; 3],
            labels,
            present: vec![true, true],
        };
        (vec![TrainCase::new("two", &c, &s).unwrap()], vec![val])
    }

    /// Issue 14: with many organs, the paper's joint head (maps normalised by the largest
    /// distance in the volume, Heaviside sharpness k = 1500) learns neither organ well
    /// (0.34 / 0.29 here): outside an organ its target is tiny, and sigmoid(-1500 sdm) has
    /// gradient only within a fraction of a voxel of the surface. Band-limited maps (20 mm),
    /// k = 50 and balanced SDM terms learn both (0.89 / 0.86 here).
    #[test]
    fn joint_head_learns_two_organs_of_different_size_with_band_limited_balanced_terms() {
        let run = |band: Option<f64>, k: f64, lambda: f64, mode: Mode| -> Vec<Option<f64>> {
            let (cases, val) = two_organs(band);
            let dir = tempfile::tempdir().unwrap();
            let cancel = CancelToken::default();
            let work = dir.path().join("work");
            let s = quiet_session(5, &work, dir.path(), &cancel);
            let mut cfg = config(12);
            cfg.k = k;
            cfg.lambda = lambda;
            cfg.mode = mode;
            cfg.val_every = 12;
            let t = train(&cfg, cases, val, vec![Norm::None], [2.0; 3], &s).unwrap();
            let dice = t
                .history
                .last()
                .unwrap()
                .val_dice_per_organ
                .clone()
                .unwrap();
            // The model's validated levels: the search's Dice at the fixed level is the
            // validation Dice, and the chosen level is no worse.
            let levels = t.model.config.levels.clone().expect("validated levels");
            assert_eq!(levels.len(), 2);
            for (l, d) in levels.iter().zip(&dice) {
                assert_eq!(l.cases, 1);
                assert!(
                    (l.dice_fixed.unwrap() - d.unwrap()).abs() < 1e-12,
                    "{l:?} {d:?}"
                );
                assert!(l.dice.unwrap() >= l.dice_fixed.unwrap(), "{l:?}");
            }
            dice
        };
        let band = run(Some(20.0), 50.0, 10.0, Mode::JointBalanced);
        eprintln!("band-limited, k 50, balanced: Dice per organ {band:?}");
        assert!(
            band.iter().all(|d| d.unwrap_or(0.0) > 0.5),
            "both organs learned: {band:?}"
        );
        // The setting trained to the end on OpenKBP (docs/results/multi-organ, section 7):
        // shell-balanced terms, k = 20, lambda = 1.
        let shell = run(Some(20.0), 20.0, 1.0, Mode::JointShellBalanced);
        eprintln!("band-limited, k 20, lambda 1, shell-balanced: Dice per organ {shell:?}");
        assert!(
            shell.iter().all(|d| d.unwrap_or(0.0) > 0.5),
            "both organs learned: {shell:?}"
        );
        // The Dice head with the maps as an auxiliary task (the cascade's `aux-c`) trains
        // end to end and learns the large organ; in these 12 epochs the maps slow its
        // segmentation (measured: 0.64 / 0.39, the Dice head alone 0.74 / 0.73, the maps at
        // weight 1 0.00 / 0.39).
        let aux = run(Some(20.0), 20.0, 0.1, Mode::DiceSdm);
        eprintln!("Dice head, auxiliary maps at 0.1: Dice per organ {aux:?}");
        assert!(aux[0].unwrap_or(0.0) > 0.5, "large organ learned: {aux:?}");
    }

    /// Several image channels reach the network: the organ is visible only in the second
    /// channel (the first is noise), and training on both learns it as the one-channel
    /// test does; the model takes two channels and says how each was normalised.
    #[test]
    fn the_second_channel_carries_what_the_first_lacks() {
        let (cases, val, _, spacing) = setup();
        let c = &cases[0];
        let n = c.image().len();
        let mut rng = crate::augment::Rng::new(11);
        let noise: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
        let two = |img: &[f32]| {
            let mut x = noise.clone();
            x.extend_from_slice(img);
            x
        };
        let grid =
            shapeflow_core::Volume::new(c.dims, spacing, VoxelData::F32(noise.clone())).unwrap();
        let case = CaseData {
            images: vec![
                Arc::new(grid.clone()),
                Arc::new(grid.with_data(VoxelData::F32(c.image().to_vec())).unwrap()),
            ],
            labels: Some(Arc::new(
                grid.with_data(VoxelData::U8(c.labels().to_vec())).unwrap(),
            )),
            organs: c.organs.clone(),
            present: c.present.clone(),
            original: None,
            notes: Default::default(),
        };
        let s = crate::testutil::sdms(&case);
        let train_cases = vec![TrainCase::new("m0", &case, &s).unwrap()];
        assert_eq!(train_cases[0].channels(), 2);
        let val: Vec<ValCase> = val
            .into_iter()
            .map(|v| ValCase {
                image: two(&v.image),
                ..v
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let cancel = CancelToken::default();
        let work = dir.path().join("work");
        let sess = quiet_session(5, &work, dir.path(), &cancel);
        let norms = vec![Norm::None, Norm::Zscore];
        let t = train(&config(20), train_cases, val, norms.clone(), spacing, &sess).unwrap();
        let dice: Vec<f64> = t.history.iter().filter_map(|r| r.val_dice).collect();
        eprintln!("two channels: validation Dice by epoch {dice:?}");
        let best = dice.iter().copied().fold(0.0, f64::max);
        assert!(best > 0.8, "{dice:?}");
        assert_eq!(t.model.config.unet.in_channels, 2);
        assert_eq!(t.model.config.norm, norms);
        // A list in model.json, read back; a one-channel model's single object still reads.
        let j = serde_json::to_value(&t.model.config).unwrap();
        assert!(j["norm"].is_array(), "{}", j["norm"]);
        let back: ModelConfig = serde_json::from_value(j.clone()).unwrap();
        assert_eq!(back.norm, norms);
        let mut one = j;
        one["norm"] = serde_json::json!({"kind": "zscore"});
        let back: ModelConfig = serde_json::from_value(one).unwrap();
        assert_eq!(back.norm, vec![Norm::Zscore]);
        // A case with the wrong number of channels is refused, not run.
        let err = model::normalise_case(&norms, &c_case(&grid)).unwrap_err();
        assert!(
            err.to_string().contains("1 channel(s), the model takes 2"),
            "{err}"
        );
    }

    fn c_case(grid: &shapeflow_core::Volume) -> CaseData {
        CaseData {
            images: vec![Arc::new(grid.clone())],
            labels: None,
            organs: vec![],
            present: vec![],
            original: None,
            notes: Default::default(),
        }
    }

    /// A small UNet learns a real signal: on one phantom case, with the paper's joint loss,
    /// the whole-volume Dice of the sdm < 0 segmentation rises above 0.8.
    #[test]
    fn joint_loss_learns_the_organ() {
        let (cases, val, norm, spacing) = setup();
        let dir = tempfile::tempdir().unwrap();
        let cancel = CancelToken::default();
        let (work, out) = (dir.path().join("work"), dir.path().join("out"));
        let s = Session {
            output_dir: Some(&out),
            ..quiet_session(5, &work, dir.path(), &cancel)
        };
        let cfg = config(20);
        // Dice of the untrained network, for comparison.
        let untrained = {
            let vs = nn::VarStore::new(Device::Cpu);
            let u = UNetConfig {
                in_channels: 1,
                out_channels: 1,
                depth: cfg.net.depth,
                base_channels: cfg.net.base_channels,
                groups: cfg.net.groups,
                slope: cfg.net.slope,
                max_channels: cfg.net.max_channels,
            };
            let net = UNet::new(&vs.root(), u);
            let mc = ModelConfig {
                format: model::FORMAT.into(),
                unet: u,
                organs: vec!["hippocampus".into()],
                mode: Mode::Joint,
                k: cfg.k,
                norm: norm.clone(),
                patch: cfg.patch,
                spacing,
                trained: Default::default(),
                training_data: None,
                left_right_flip: None,
                levels: None,
                contest: Default::default(),
                levels_mirrored: false,
            };
            validate(&net, &mc, &val, Device::Cpu, false).unwrap()[0].unwrap()
        };
        let t = train(&cfg, cases, val, norm, spacing, &s).unwrap();
        let dice: Vec<f64> = t.history.iter().filter_map(|r| r.val_dice).collect();
        let last = *dice.last().unwrap();
        eprintln!("untrained {untrained}, validation Dice by epoch {dice:?}");
        assert!(untrained < 0.5, "untrained Dice {untrained}");
        assert!(last > 0.8, "validation Dice by epoch: {dice:?}");
        let first_loss = t.history[0].loss;
        assert!(t.history.last().unwrap().loss < first_loss);
        // Files for people, and a model the stage can reload.
        for f in [
            "model.safetensors",
            "model.json",
            "metrics.jsonl",
            "loss.png",
        ] {
            assert!(dir.path().join("out").join(f).is_file(), "{f}");
        }
        let jsonl = std::fs::read_to_string(dir.path().join("out/metrics.jsonl")).unwrap();
        assert_eq!(jsonl.lines().count(), 20);
        let m = Model::from_item(&t.model.to_item()).unwrap();
        let (_vs, net) = m.load(Device::Cpu, dir.path()).unwrap();
        let (_, val, _, _) = setup();
        let again = validate(&net, &m.config, &val, Device::Cpu, false).unwrap();
        assert!(
            (again[0].unwrap() - last).abs() < 1e-9,
            "reloaded model gives the same Dice"
        );
    }

    /// An untrained Dice head predicts "nowhere" (about `head_prior`), a joint head too
    /// where `joint_prior` is set; otherwise it keeps its default initialisation.
    #[test]
    fn the_dice_head_starts_at_its_prior() {
        let unet = UNetConfig {
            in_channels: 1,
            out_channels: 3,
            depth: 2,
            base_channels: 8,
            groups: 4,
            slope: 0.01,
            max_channels: 32,
        };
        let x = tch::Tensor::randn([2, 1, 16, 16, 16], (tch::Kind::Float, Device::Cpu));
        // Mean probability and the fraction of voxels above 0.5, per head and prior.
        let stats = |mode: Mode, prior: f64, joint_prior: f64| {
            let cfg = TrainConfig {
                mode,
                head_prior: prior,
                joint_prior,
                k: 20.0,
                ..config(1)
            };
            let (_vs, net) = init_net(&cfg, unet, 3, Device::Cpu);
            // An SDM-only head has no segmentation term: its maps under the same Heaviside.
            let p = tch::no_grad(|| {
                let raw = net.forward(&x);
                mode.segmentation_logits(&raw, cfg.k)
                    .unwrap_or_else(|| raw.tanh() * -cfg.k)
                    .sigmoid()
            });
            (
                p.mean(tch::Kind::Float).double_value(&[]),
                p.gt(0.5)
                    .to_kind(tch::Kind::Float)
                    .mean(tch::Kind::Float)
                    .double_value(&[]),
            )
        };
        // The bias is the prior's logit; the random weights spread the logits around it.
        let (p, above) = stats(Mode::Dice, 0.01, 0.0);
        assert!(p < 0.05 && above < 0.01, "mean p {p}, {above} above 0.5");
        let (p, above) = stats(Mode::Joint, 0.01, 0.0);
        assert!(
            above > 0.1,
            "joint head untouched by head_prior: mean {p}, {above} above 0.5"
        );
        // With `joint_prior`, the SDM heads' smooth Heaviside starts there too (the SDM-only
        // heads' maps are then outside every organ: sigmoid(-k sdm) as for a joint head).
        for mode in [
            Mode::Joint,
            Mode::JointShellBalanced,
            Mode::SdmShellBalanced,
        ] {
            let (p, above) = stats(mode, 0.01, 0.01);
            assert!(
                p < 0.05 && above < 0.01,
                "{mode:?}: mean p {p}, {above} above 0.5"
            );
        }
        // Auxiliary maps: the segmentation starts at the prior, the maps' channels where
        // the default initialisation puts them (about 0), not at the prior's logit (tanh
        // saturated at -1, with no gradient).
        let cfg = TrainConfig {
            mode: Mode::DiceSdm,
            head_prior: 0.01,
            ..config(1)
        };
        let aux = UNetConfig {
            out_channels: Mode::DiceSdm.out_channels(3),
            ..unet
        };
        let (_vs, net) = init_net(&cfg, aux, 3, Device::Cpu);
        let raw = tch::no_grad(|| net.forward(&x));
        let p = Mode::DiceSdm.prediction(&raw);
        assert_eq!(p.size()[1], 3);
        let p = p.mean(tch::Kind::Float).double_value(&[]);
        let maps = Mode::DiceSdm.activate(&raw).narrow(1, 3, 3);
        let maps = maps.abs().mean(tch::Kind::Float).double_value(&[]);
        assert!(p < 0.05 && maps < 0.5, "mean p {p}, mean |map| {maps}");
        let bad = TrainConfig {
            head_prior: 1.0,
            ..config(1)
        };
        assert_eq!(bad.check().unwrap_err().0, "head_prior");
        // sigmoid(-k tanh(b)) >= sigmoid(-k): k = 4 cannot start at 0.01 (needs k > 4.6).
        for (joint_prior, k) in [(1.0, 20.0), (-0.1, 20.0), (0.01, 4.0)] {
            let bad = TrainConfig {
                joint_prior,
                k,
                ..config(1)
            };
            assert_eq!(
                bad.check().unwrap_err().0,
                "joint_prior",
                "{joint_prior} {k}"
            );
        }
    }

    /// Interrupted after epoch 2 of 4, the next run resumes from the checkpoint's step
    /// and ends with the losses and weights of the same training uninterrupted (CPU, one
    /// machine, two loader workers as the default; fails with the checkpoint's weights not
    /// read: checked).
    #[test]
    fn an_interrupted_run_resumes_from_its_checkpoint() {
        let (cases, val, norm, spacing) = setup();
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("work");
        let cancel = CancelToken::default();
        let epochs_seen = AtomicUsize::new(0);
        let stop_after_two = |r: &EpochRecord| {
            epochs_seen.fetch_add(1, Ordering::SeqCst);
            if r.epoch == 2 {
                cancel.cancel();
            }
        };
        let mut cfg = config(4);
        cfg.iterations = 3;
        // Two loader workers, as `train` defaults to.
        cfg.workers = 2;
        let s = Session {
            seed: 5,
            work_dir: &work,
            output_dir: None,
            scratch: dir.path(),
            cancel: &cancel,
            bar: shapeflow_core::indicatif::ProgressBar::hidden(),
            on_epoch: Some(&stop_after_two),
        };
        let r = train(&cfg, cases, val, norm.clone(), spacing, &s);
        assert!(matches!(r, Err(StageError::Cancelled)));
        assert_eq!(epochs_seen.load(Ordering::SeqCst), 2);
        let ck: crate::checkpoint::Checkpoint =
            serde_json::from_str(&std::fs::read_to_string(work.join("checkpoint.json")).unwrap())
                .unwrap();
        assert_eq!((ck.epochs_done, ck.step), (2, 6));

        let (cases, val, _, _) = setup();
        let cancel = CancelToken::default();
        let s = Session {
            cancel: &cancel,
            on_epoch: None,
            bar: shapeflow_core::indicatif::ProgressBar::hidden(),
            ..s
        };
        let t = train(&cfg, cases, val, norm.clone(), spacing, &s).unwrap();
        assert_eq!(
            t.resumed_from_step, 6,
            "continued from the checkpoint's step"
        );
        // The same training uninterrupted (its own work folder) ends with the same
        // losses and the same weights to the bit.
        let (cases, val, _, _) = setup();
        let whole_dir = dir.path().join("whole");
        let whole = train(
            &cfg,
            cases,
            val,
            norm,
            spacing,
            &Session {
                work_dir: &whole_dir,
                ..s
            },
        )
        .unwrap();
        assert_eq!(whole.resumed_from_step, 0);
        let losses = |t: &Trained| t.history.iter().map(|r| r.loss).collect::<Vec<_>>();
        assert_eq!(losses(&t)[2..], losses(&whole)[2..]);
        assert!(
            t.model.weights == whole.model.weights,
            "a resumed training ends with the uninterrupted one's weights"
        );
        assert_eq!(t.history.len(), 4);
        assert_eq!(
            t.history.iter().map(|r| r.step).collect::<Vec<_>>(),
            vec![3, 6, 9, 12]
        );
        // Only the latest checkpoint's files are kept.
        let weights = std::fs::read_dir(&work)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("weights-")
            })
            .count();
        assert_eq!(weights, 1);
    }

    #[test]
    fn config_errors_name_the_field() {
        let c = TrainConfig {
            patch: [64, 48, 40],
            ..Default::default()
        };
        assert_eq!(c.check().unwrap_err().0, "patch");
        let c = TrainConfig {
            device: "gpu0".into(),
            ..Default::default()
        };
        assert_eq!(c.check().unwrap_err().0, "device");
        // A softmax needs a segmentation; its cross-entropy is not the per-organ one.
        let c = TrainConfig {
            mode: Mode::SdmShellBalanced,
            softmax: true,
            ..Default::default()
        };
        let (field, message) = c.check().unwrap_err();
        assert_eq!(field, "softmax");
        assert!(message.contains("sdm-shell-balanced"), "{message}");
        let c = TrainConfig {
            mode: Mode::Dice,
            softmax: true,
            ce: 1.0,
            ce_balance: true,
            ..Default::default()
        };
        assert_eq!(c.check().unwrap_err().0, "ce_balance");
        // The cross-entropy acts on a segmentation: refused for an SDM-only head (it was
        // keyed and ignored), kept for the Dice and joint heads. The exclusion term acts on
        // every head (an SDM-only head's through its maps' Heaviside).
        let c = TrainConfig {
            mode: Mode::SdmShellBalanced,
            ce: 0.1,
            ..Default::default()
        };
        assert_eq!(c.check().unwrap_err().0, "ce");
        for mode in [Mode::Dice, Mode::JointShellBalanced] {
            let c = TrainConfig {
                mode,
                ce: 0.1,
                ..Default::default()
            };
            assert!(c.check().is_ok(), "{mode:?}");
        }
        for mode in [Mode::Dice, Mode::JointShellBalanced, Mode::SdmShellBalanced] {
            let c = TrainConfig {
                mode,
                exclusion: 0.3,
                ..Default::default()
            };
            assert!(c.check().is_ok(), "{mode:?}");
        }
        for mode in [Mode::Dice, Mode::JointShellBalanced] {
            let c = TrainConfig {
                mode,
                softmax: true,
                ..Default::default()
            };
            assert!(c.check().is_ok(), "{mode:?}");
        }
        // The shell-balanced terms' weights: only where those terms are; the far field's
        // never below 0, the inside's share strictly between 0 and 1.
        let far = |far_weight| TrainConfig {
            far_weight,
            ..Default::default()
        };
        let inside = |inside_weight| TrainConfig {
            inside_weight,
            ..Default::default()
        };
        for (mode, c, field, ok) in [
            (Mode::SdmShellBalanced, far(4.0), "far_weight", true),
            (Mode::JointShellBalanced, far(0.0), "far_weight", true),
            (Mode::DiceSdm, far(2.0), "far_weight", true),
            (Mode::JointShellBalanced, far(-1.0), "far_weight", false),
            (Mode::JointShellBalanced, far(f64::NAN), "far_weight", false),
            (Mode::Joint, far(4.0), "far_weight", false),
            (Mode::Dice, far(4.0), "far_weight", false),
            (Mode::Dice, far(1.0), "far_weight", true),
            (Mode::SdmShellBalanced, inside(0.25), "inside_weight", true),
            (Mode::JointShellBalanced, inside(0.9), "inside_weight", true),
            (Mode::SdmShellBalanced, inside(0.0), "inside_weight", false),
            (Mode::SdmShellBalanced, inside(1.0), "inside_weight", false),
            (
                Mode::SdmShellBalanced,
                inside(f64::NAN),
                "inside_weight",
                false,
            ),
            (Mode::SdmBalanced, inside(0.25), "inside_weight", false),
            (Mode::Dice, inside(0.25), "inside_weight", false),
            (Mode::Dice, inside(0.5), "inside_weight", true),
        ] {
            let c = TrainConfig { mode, ..c };
            match c.check() {
                Ok(()) => assert!(ok, "{mode:?} {field}"),
                Err((got, _)) => assert!(!ok && got == field, "{mode:?} {field}: {got}"),
            }
        }
        assert_eq!(TrainConfig::default().lr_at(24), 5e-4);
        assert!((TrainConfig::default().lr_at(25) - 4e-4).abs() < 1e-12);
        assert!((TrainConfig::default().lr_at(50) - 3.2e-4).abs() < 1e-12);
    }

    /// nnU-Net's schedule, by hand: lr (1 - e / E)^0.9, from lr at the first epoch to
    /// almost 0 at the last, whatever `lr_decay` and `lr_every` say.
    #[test]
    fn poly_schedule_falls_to_almost_zero() {
        let c = TrainConfig {
            lr: 1e-3,
            epochs: 80,
            lr_schedule: LrSchedule::Poly,
            ..Default::default()
        };
        assert_eq!(c.lr_at(0), 1e-3);
        // (1 - 40/80)^0.9 = 0.5^0.9 = 0.535887
        assert!((c.lr_at(40) - 5.35887e-4).abs() < 1e-9, "{}", c.lr_at(40));
        // (1/80)^0.9 = 0.019374
        assert!((c.lr_at(79) - 1.9374e-5).abs() < 1e-9, "{}", c.lr_at(79));
        assert!((1..80).all(|e| c.lr_at(e) < c.lr_at(e - 1)));
        // The key of a training that does not name it is unchanged (omitted when `step`).
        let v: TrainConfig = serde_json::from_str(r#"{"lr_schedule": "poly"}"#).unwrap();
        assert_eq!(v.lr_schedule, LrSchedule::Poly);
        let e = serde_json::from_str::<TrainConfig>(r#"{"lr_schedule": "cosine"}"#).unwrap_err();
        assert!(
            e.to_string().contains("step") && e.to_string().contains("poly"),
            "{e}"
        );
    }

    /// The SDM weight's schedule, by hand: constant (the paper's) by default; poly falls
    /// as the poly learning rate does, whatever the learning rate's own schedule; only for
    /// the modes whose loss weighs SDM terms by lambda.
    #[test]
    fn lambda_schedule_by_hand_and_only_where_lambda_weighs_maps() {
        let c = TrainConfig {
            mode: Mode::JointShellBalanced,
            lambda: 0.1,
            epochs: 60,
            ..Default::default()
        };
        assert!((0..60).all(|e| c.lambda_at(e) == 0.1));
        let p = TrainConfig {
            lambda_schedule: LambdaSchedule::Poly,
            ..c.clone()
        };
        assert!(p.check().is_ok());
        assert_eq!(p.lambda_at(0), 0.1);
        // (1 - 30/60)^0.9 = 0.535887; (1/60)^0.9 = 0.025099
        assert!(
            (p.lambda_at(30) - 0.0535887).abs() < 1e-7,
            "{}",
            p.lambda_at(30)
        );
        assert!(
            (p.lambda_at(59) - 0.0025099).abs() < 1e-7,
            "{}",
            p.lambda_at(59)
        );
        // The learning rate keeps its own (step) schedule.
        assert_eq!(p.lr_at(59), c.lr_at(59));
        for mode in [Mode::Dice, Mode::SdmShellBalanced] {
            let (field, msg) = TrainConfig { mode, ..p.clone() }.check().unwrap_err();
            assert_eq!(field, "lambda_schedule", "{mode:?}");
            assert!(msg.contains("lambda"), "{msg}");
        }
        assert!(TrainConfig {
            mode: Mode::DiceSdm,
            ..p.clone()
        }
        .check()
        .is_ok());
        let (field, _) = TrainConfig { lambda: -1.0, ..c }.check().unwrap_err();
        assert_eq!(field, "lambda");
        let v: TrainConfig = serde_json::from_str(r#"{"lambda_schedule": "poly"}"#).unwrap();
        assert_eq!(v.lambda_schedule, LambdaSchedule::Poly);
        let e =
            serde_json::from_str::<TrainConfig>(r#"{"lambda_schedule": "cosine"}"#).unwrap_err();
        assert!(e.to_string().contains("constant"), "{e}");
    }

    /// The training loop weighs the SDM terms by the schedule's lambda of each epoch: with
    /// the same seed, a poly run's first epoch is the constant run's to the bit (lambda
    /// the same), its second is not (lambda times 0.5^0.9).
    #[test]
    fn the_loop_weighs_maps_by_the_epochs_lambda() {
        let run = |schedule: LambdaSchedule| {
            let (cases, val, norm, spacing) = setup();
            let dir = tempfile::tempdir().unwrap();
            let cancel = CancelToken::default();
            let work = dir.path().join("work");
            let s = quiet_session(3, &work, dir.path(), &cancel);
            let cfg = TrainConfig {
                iterations: 2,
                val_every: 0,
                lambda_schedule: schedule,
                ..config(2)
            };
            let t = train(&cfg, cases, val, norm, spacing, &s).unwrap();
            t.history.iter().map(|r| r.loss).collect::<Vec<_>>()
        };
        let constant = run(LambdaSchedule::Constant);
        let poly = run(LambdaSchedule::Poly);
        assert_eq!(constant[0], poly[0]);
        assert!(
            (constant[1] - poly[1]).abs() > 1e-3 * constant[1].abs(),
            "{constant:?} {poly:?}"
        );
    }
}

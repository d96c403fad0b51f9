//! One optimisation step of the paper's training: augmented patches in, a loss out, Adam
//! updates the UNet. (The epoch loop, schedules, validation and checkpoints of the `train`
//! stage build on this.)

use crate::augment::Sample;

use crate::unet::UNet;
use tch::{nn, Device, Kind, Tensor};

pub use crate::losses::{Head, Mode, ShellWeights};

/// A batch as tensors: image [B, C, z, y, x], SDMs [B, K, ...], one-hot segmentation
/// [B, K, ...], present [B, K].
pub struct BatchTensors {
    pub image: Tensor,
    pub sdm: Tensor,
    pub seg: Tensor,
    pub present: Tensor,
}

/// Converts samples (patch `patch`, x fastest) to tensors on `device`.
pub fn to_tensors(batch: &[Sample], patch: [usize; 3], device: Device) -> BatchTensors {
    let (b, k) = (
        batch.len() as i64,
        batch.first().map(|s| s.sdms.len()).unwrap_or(0) as i64,
    );
    let shape = [patch[2] as i64, patch[1] as i64, patch[0] as i64];
    let channels = batch
        .first()
        .map(|s| s.image.len() / patch.iter().product::<usize>().max(1))
        .unwrap_or(1) as i64;
    let image: Vec<f32> = batch.iter().flat_map(|s| s.image.iter().copied()).collect();
    let sdm: Vec<f32> = batch
        .iter()
        .flat_map(|s| s.sdms.iter().flatten().copied())
        .collect();
    let seg: Vec<f32> = batch
        .iter()
        .flat_map(|s| {
            (0..k as usize).flat_map(move |o| {
                s.labels
                    .iter()
                    .map(move |&l| (l as usize == o + 1) as u8 as f32)
            })
        })
        .collect();
    let present: Vec<f32> = batch
        .iter()
        .flat_map(|s| s.present.iter().map(|&p| p as u8 as f32))
        .collect();
    BatchTensors {
        image: Tensor::from_slice(&image)
            .view([b, channels, shape[0], shape[1], shape[2]])
            .to_device(device),
        sdm: Tensor::from_slice(&sdm)
            .view([b, k, shape[0], shape[1], shape[2]])
            .to_device(device),
        seg: Tensor::from_slice(&seg)
            .view([b, k, shape[0], shape[1], shape[2]])
            .to_device(device),
        present: Tensor::from_slice(&present).view([b, k]).to_device(device),
    }
}

/// The terms added to a mode's loss on its segmentation (the Dice head's probabilities,
/// the joint heads' smooth Heaviside); of them only the exclusion term for the SDM-only
/// heads (on their maps' smooth Heaviside, [`Mode::indicator_logits`]); and the far
/// field's weight in the shell-balanced SDM terms.
#[derive(Debug, Clone, Copy)]
pub struct SegTerms {
    /// Weight of a cross-entropy ([`crate::losses::bce_loss`]).
    pub ce: f64,
    /// The cross-entropy class-balanced per organ.
    pub ce_balanced: bool,
    /// Weight of the exclusion term ([`crate::losses::exclusion_loss`]).
    pub exclusion: f64,
    /// Dice and cross-entropy on one softmax over background and organs, absent organs
    /// merged into background ([`crate::losses::marginal_softmax`]), in place of the
    /// per-organ sigmoids.
    pub softmax: bool,
    /// The regions' weights in the shell-balanced SDM terms
    /// ([`crate::losses::shell_balanced_sdm_terms_weighted`]).
    pub shell: ShellWeights,
}

impl Default for SegTerms {
    fn default() -> Self {
        SegTerms {
            ce: 0.0,
            ce_balanced: false,
            exclusion: 0.0,
            softmax: false,
            shell: ShellWeights::default(),
        }
    }
}

impl SegTerms {
    pub fn of(cfg: &crate::train::TrainConfig) -> SegTerms {
        SegTerms {
            ce: cfg.ce,
            ce_balanced: cfg.ce_balance,
            exclusion: cfg.exclusion,
            softmax: cfg.softmax,
            shell: ShellWeights {
                far: cfg.far_weight,
                inside: cfg.inside_weight,
            },
        }
    }
}

/// The loss of `net` on a batch, by mode (k and lambda as in the paper for `Joint`), plus
/// `extra`'s terms. The network's output is taken to float32 first, so that under bfloat16
/// autocast the loss (its sums over a whole patch, its ratios) is still computed in float32.
pub fn loss(
    net: &UNet,
    t: &BatchTensors,
    mode: Mode,
    k: f64,
    lambda: f64,
    extra: &SegTerms,
) -> Tensor {
    let out = net.forward(&t.image).to_kind(Kind::Float);
    let l = seg_loss(&out, t, mode, k, lambda, extra);
    if extra.exclusion > 0.0 {
        let logits = mode.indicator_logits(&out, k);
        l + crate::losses::exclusion_loss(&logits, &t.seg, &t.present) * extra.exclusion
    } else {
        l
    }
}

/// The mode's loss on the network's raw outputs `out`, plus `extra`'s terms on its
/// segmentation (cross-entropy, softmax): all but the exclusion term.
fn seg_loss(
    out: &Tensor,
    t: &BatchTensors,
    mode: Mode,
    k: f64,
    lambda: f64,
    extra: &SegTerms,
) -> Tensor {
    let Some(logits) = mode.segmentation_logits(out, k) else {
        return mode.loss(&mode.activate(out), t, k, lambda, extra.shell);
    };
    if extra.softmax {
        use crate::losses::{dice_loss, marginal_softmax, marginal_softmax_ce};
        let (organs, log_organs, log_background) = marginal_softmax(&logits, &t.present);
        let l = dice_loss(&organs, &t.seg, &t.present);
        // A joint head, or auxiliary maps, add their SDM terms; the Dice head has none
        // (and activates nothing for them).
        let terms = if mode.weighs_maps() {
            mode.sdm_terms(&mode.activate(out), t, extra.shell)
        } else {
            None
        };
        let l = match terms {
            Some(terms) => l + terms * lambda,
            None => l,
        };
        if extra.ce > 0.0 {
            l + marginal_softmax_ce(&log_organs, &log_background, &t.seg) * extra.ce
        } else {
            l
        }
    } else {
        let l = mode.loss(&mode.activate(out), t, k, lambda, extra.shell);
        if extra.ce > 0.0 {
            l + crate::losses::bce_loss(&logits, &t.seg, &t.present, extra.ce_balanced) * extra.ce
        } else {
            l
        }
    }
}

/// One Adam step (a voxel-mean cross-entropy if `ce` > 0); returns the loss before the
/// update.
pub fn step(
    net: &UNet,
    opt: &mut nn::Optimizer,
    t: &BatchTensors,
    mode: Mode,
    k: f64,
    lambda: f64,
    ce: f64,
) -> f64 {
    let extra = SegTerms {
        ce,
        ..SegTerms::default()
    };
    let l = loss(net, t, mode, k, lambda, &extra);
    opt.backward_step(&l);
    l.to_kind(Kind::Double).double_value(&[])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::augment::{sample, AugmentConfig, TrainCase};
    use crate::losses;
    use crate::unet::UNetConfig;
    use tch::nn::OptimizerConfig;

    /// A depth-1 UNet of 4 base channels with `out_channels` outputs.
    fn tiny_net(vs: &nn::VarStore, out_channels: i64) -> UNet {
        UNet::new(
            &vs.root(),
            UNetConfig {
                out_channels,
                depth: 1,
                base_channels: 4,
                groups: 2,
                ..Default::default()
            },
        )
    }

    /// `loss` adds the exclusion term to every head, an SDM-only head's on its maps'
    /// smooth Heaviside (before session 37 it returned before the term: keyed, ignored).
    #[test]
    fn exclusion_reaches_every_head() {
        tch::manual_seed(1);
        let vs = nn::VarStore::new(Device::Cpu);
        let net = tiny_net(&vs, 2);
        // Two organs: the first in the patch's lower half, the second in its upper half.
        let shape = [1, 2, 8, 8, 8];
        let lower = Tensor::arange(8, (Kind::Float, Device::Cpu))
            .lt(4.0)
            .to_kind(Kind::Float)
            .view([1, 1, 8, 1, 1])
            .expand([1, 1, 8, 8, 8], false);
        let seg = Tensor::cat(&[&lower, &(lower.ones_like() - &lower)], 1);
        let t = BatchTensors {
            image: Tensor::randn([1, 1, 8, 8, 8], (Kind::Float, Device::Cpu)),
            sdm: (seg.ones_like() - &seg * 2.0) * 0.5,
            seg: seg.shallow_clone(),
            present: Tensor::ones([1, 2], (Kind::Float, Device::Cpu)),
        };
        assert_eq!(t.seg.size(), shape.to_vec());
        let k = 20.0;
        let out = net.forward(&t.image);
        for mode in [Mode::SdmShellBalanced, Mode::JointShellBalanced, Mode::Dice] {
            let with = SegTerms {
                exclusion: 0.3,
                ..SegTerms::default()
            };
            let got = losses::value(&loss(&net, &t, mode, k, 0.1, &with))
                - losses::value(&loss(&net, &t, mode, k, 0.1, &SegTerms::default()));
            let term = losses::value(&losses::exclusion_loss(
                &mode.indicator_logits(&out, k),
                &t.seg,
                &t.present,
            ));
            assert!(term > 0.01, "{mode:?}: {term}");
            assert!((got - 0.3 * term).abs() < 1e-5, "{mode:?}: {got} {term}");
        }
    }

    /// `train.far_weight` and `train.inside_weight` reach the shell-balanced terms of the
    /// SDM-only and joint heads (the latter at lambda) and nothing else.
    #[test]
    fn shell_weights_reach_the_shell_balanced_terms() {
        tch::manual_seed(2);
        let vs = nn::VarStore::new(Device::Cpu);
        let net = tiny_net(&vs, 1);
        // One organ in the patch's lower half, its shell the next two slices, then its far
        // field (target 1).
        let z = Tensor::arange(8, (Kind::Float, Device::Cpu)).view([1, 1, 8, 1, 1]);
        let seg = z
            .lt(4.0)
            .to_kind(Kind::Float)
            .expand([1, 1, 8, 8, 8], false);
        let t = BatchTensors {
            image: Tensor::randn([1, 1, 8, 8, 8], (Kind::Float, Device::Cpu)),
            sdm: ((z - 3.5) / 2.5)
                .clamp(-1.0, 1.0)
                .expand([1, 1, 8, 8, 8], false),
            seg: seg.shallow_clone(),
            present: Tensor::ones([1, 1], (Kind::Float, Device::Cpu)),
        };
        let maps = net.forward(&t.image).tanh();
        let terms = |w| {
            losses::value(&losses::shell_balanced_sdm_terms_weighted(
                &maps, &t.sdm, &t.present, w,
            ))
        };
        let at_default = terms(ShellWeights::default());
        let lambda = 0.1;
        for cfg in [
            crate::train::TrainConfig {
                far_weight: 4.0,
                ..Default::default()
            },
            crate::train::TrainConfig {
                inside_weight: 0.25,
                ..Default::default()
            },
        ] {
            let extra = SegTerms::of(&cfg);
            let moved = terms(extra.shell) - at_default;
            assert!(moved.abs() > 0.01, "{cfg:?}: {moved}");
            for (mode, want) in [
                (Mode::SdmShellBalanced, moved),
                (Mode::JointShellBalanced, lambda * moved),
                (Mode::Dice, 0.0),
                (Mode::Joint, 0.0),
            ] {
                let got = losses::value(&loss(&net, &t, mode, 20.0, lambda, &extra))
                    - losses::value(&loss(&net, &t, mode, 20.0, lambda, &SegTerms::default()));
                assert!((got - want).abs() < 1e-5, "{mode:?}: {got} {want}");
            }
        }
    }

    #[test]
    fn joint_loss_falls_on_held_out_patches() {
        tch::manual_seed(0);
        tch::set_num_threads(2);
        let c = shapeflow_io::phantom::mri(1, 0, [32, 32, 32], [1.0; 3], 0.02);
        let s = crate::testutil::sdms(&c);
        let cases = vec![TrainCase::new("m0", &c, &s).unwrap()];
        let patch = [16, 16, 16];
        let cfg = AugmentConfig {
            foreground: 0.8,
            ..AugmentConfig::none(patch)
        };
        let vs = nn::VarStore::new(Device::Cpu);
        let net = UNet::new(
            &vs.root(),
            UNetConfig {
                out_channels: 1,
                depth: 2,
                base_channels: 8,
                groups: 4,
                ..Default::default()
            },
        );
        let mut opt = nn::Adam::default().build(&vs, 5e-3).unwrap();
        let batch = |i: u64| -> BatchTensors {
            let b: Vec<Sample> = (0..4)
                .map(|j| sample(&cases, &cfg, 7, 0, i * 4 + j))
                .collect();
            to_tensors(&b, patch, Device::Cpu)
        };
        let fixed = batch(10_000);
        let held_out = |net: &UNet| {
            losses::value(&loss(
                net,
                &fixed,
                Mode::Sdm,
                1500.0,
                10.0,
                &SegTerms::default(),
            ))
        };
        let before = held_out(&net);
        for i in 0..60 {
            step(&net, &mut opt, &batch(i), Mode::Sdm, 1500.0, 10.0, 0.0);
        }
        let after = held_out(&net);
        assert!(
            after < before * 0.7,
            "SDM loss on held-out patches: {before} -> {after}"
        );
    }
}

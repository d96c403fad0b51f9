//! The losses of Xue et al. (AAAI 2020). Tensors are [batch, organs, z, y, x];
//! `present` is [batch, organs] with 1 where the organ is annotated in that case and 0 where
//! it is absent: absent organs contribute to no term (they are not "empty").

use crate::fit::BatchTensors;
use tch::{Kind, Tensor};

/// What a network's output channels mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head {
    /// Per-organ probability (sigmoid); organ where p > 0.5, the most probable wins.
    Probability,
    /// Per-organ signed distance map in [-1, 1] (tanh); organ where sdm < level, the
    /// smallest wins.
    Sdm,
}

impl Head {
    /// The activation that turns raw outputs into this head's values.
    pub fn activate(self, raw: &Tensor) -> Tensor {
        match self {
            Head::Probability => raw.sigmoid(),
            Head::Sdm => raw.tanh(),
        }
    }

    /// Organ labels (1..K, 0 background) from per-organ maps of this head's values.
    pub fn decode(self, out: &[Vec<f32>], sdm_level: f32) -> Vec<u8> {
        match self {
            Head::Probability => crate::tiling::labels_from_probabilities(out, 0.5),
            Head::Sdm => crate::tiling::labels_from_sdms(out, sdm_level),
        }
    }

    /// What lies outside the volume when maps are resampled: no organ.
    pub fn background(self) -> f32 {
        match self {
            Head::Probability => 0.0,
            Head::Sdm => 1.0,
        }
    }
}

const EPS: f64 = 1e-6;
/// Dice smoothing, in voxels: with a target absent from the whole batch, Dice is
/// 1 / (sum p + 1), so false positives are still penalised (with a vanishing smoothing term
/// they cost nothing there, and a small organ's channel is free to fire anywhere).
const SMOOTH: f64 = 1.0;

/// A training mode: the paper's ablation variants and any loss added since. Each mode is a
/// head (what the output channels mean, hence their activation, initialisation and
/// decoding into organs) and a loss on that head's outputs. **Adding a loss is this file
/// only**: a variant here, its arm in [`Mode::head`] and in [`Mode::loss`], and the loss
/// function below.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    Default,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Sigmoid per organ, Dice loss.
    Dice,
    /// Tanh per organ, L1 + product loss on the SDM.
    Sdm,
    /// Tanh SDM; Dice of sigmoid(-k sdm) + lambda (L1 + product).
    #[default]
    Joint,
    /// As `sdm`, with each organ's inside and outside weighted equally (see
    /// [`balanced_sdm_terms`]): the voxel mean lets the far field, most of every patch,
    /// drown the organs.
    #[serde(rename = "sdm-balanced")]
    SdmBalanced,
    /// As `joint`, with the balanced SDM terms.
    #[serde(rename = "joint-balanced")]
    JointBalanced,
    /// As `sdm`, with each organ's inside and its shell (outside, within the band of a
    /// band-limited map) weighted equally and false positives in the far field paid per
    /// voxel against the organ's size (see [`shell_balanced_sdm_terms`]).
    #[serde(rename = "sdm-shell-balanced")]
    SdmShellBalanced,
    /// As `joint`, with the shell-balanced SDM terms.
    #[serde(rename = "joint-shell-balanced")]
    JointShellBalanced,
    /// As `sdm`, with each organ's errors summed over the batch and divided by the organ's
    /// near voxels (inside or within the band), as Dice weighs voxels: a false positive
    /// anywhere costs as much as a missed voxel of the organ (see
    /// [`organ_scaled_sdm_terms`]). Meant for band-limited maps (`sdm.band_mm`).
    #[serde(rename = "sdm-organ-scaled")]
    SdmOrganScaled,
    /// As `joint`, with the organ-scaled SDM terms.
    #[serde(rename = "joint-organ-scaled")]
    JointOrganScaled,
    /// The Dice head with the maps as an auxiliary task: twice the organs' channels, the
    /// first half the Dice head's (sigmoid, Dice, decoded as the Dice head), the second a
    /// tanh map per organ under the shell-balanced SDM terms at `lambda`. The maps shape
    /// only the features the two halves share; the segmentation never reads them. Tells
    /// the SDM terms' effect apart from decoding the segmentation as a map's Heaviside.
    #[serde(rename = "dice-sdm")]
    DiceSdm,
}

impl Mode {
    pub fn head(self) -> Head {
        match self {
            Mode::Dice | Mode::DiceSdm => Head::Probability,
            Mode::Sdm
            | Mode::Joint
            | Mode::SdmBalanced
            | Mode::JointBalanced
            | Mode::SdmShellBalanced
            | Mode::JointShellBalanced
            | Mode::SdmOrganScaled
            | Mode::JointOrganScaled => Head::Sdm,
        }
    }

    /// The network's output channels for `organs` organs: one each, two for the auxiliary
    /// maps' mode.
    pub fn out_channels(self, organs: usize) -> i64 {
        let per_organ = if self == Mode::DiceSdm { 2 } else { 1 };
        (per_organ * organs) as i64
    }

    /// Whether training reads the signed distance maps (an SDM head, or auxiliary maps).
    pub fn reads_maps(self) -> bool {
        self.head() == Head::Sdm || self == Mode::DiceSdm
    }

    /// The outputs training's loss reads: every channel activated (the auxiliary maps'
    /// mode: its segmentation's sigmoid, then its maps' tanh).
    pub fn activate(self, raw: &Tensor) -> Tensor {
        match self {
            Mode::DiceSdm => {
                let (seg, maps) = halves(raw);
                Tensor::cat(&[seg.sigmoid(), maps.tanh()], 1)
            }
            _ => self.head().activate(raw),
        }
    }

    /// The per-organ maps a model predicts, in its head's values: the auxiliary maps are
    /// for training only.
    pub fn prediction(self, raw: &Tensor) -> Tensor {
        match self {
            Mode::DiceSdm => halves(raw).0.sigmoid(),
            _ => self.head().activate(raw),
        }
    }

    /// The loss on a batch, given the outputs [`Mode::activate`] makes (`k`, `lambda`: the
    /// smooth Heaviside's sharpness and the SDM terms' weight, used by modes that need
    /// them).
    pub fn loss(
        self,
        out: &Tensor,
        t: &BatchTensors,
        k: f64,
        lambda: f64,
        w: ShellWeights,
    ) -> Tensor {
        let Some(terms) = self.sdm_terms(out, t, w) else {
            return dice_loss(out, &t.seg, &t.present);
        };
        if self == Mode::DiceSdm {
            dice_loss(&halves(out).0, &t.seg, &t.present) + terms * lambda
        } else if self.is_joint() {
            dice_loss(&(out * -k).sigmoid(), &t.seg, &t.present) + terms * lambda
        } else {
            terms
        }
    }

    /// The SDM terms of this mode's loss on the outputs [`Mode::activate`] makes,
    /// unweighted (a joint head, or the auxiliary maps, add them at `lambda` to the
    /// segmentation's Dice); `None` for the Dice head. `w`: the shell-balanced terms'
    /// weights ([`shell_balanced_sdm_terms_weighted`]; unused by the other terms).
    pub fn sdm_terms(self, out: &Tensor, t: &BatchTensors, w: ShellWeights) -> Option<Tensor> {
        let (y, present) = (&t.sdm, &t.present);
        Some(match self {
            Mode::Dice => return None,
            Mode::DiceSdm => shell_balanced_sdm_terms_weighted(&halves(out).1, y, present, w),
            Mode::Sdm | Mode::Joint => sdm_loss(out, y, present),
            Mode::SdmBalanced | Mode::JointBalanced => balanced_sdm_terms(out, y, present),
            Mode::SdmShellBalanced | Mode::JointShellBalanced => {
                shell_balanced_sdm_terms_weighted(out, y, present, w)
            }
            Mode::SdmOrganScaled | Mode::JointOrganScaled => {
                organ_scaled_sdm_terms(out, y, present)
            }
        })
    }
}

impl Mode {
    /// The joint heads: an SDM head that also segments, with the smooth Heaviside of its maps.
    pub fn is_joint(self) -> bool {
        match self {
            Mode::Joint
            | Mode::JointBalanced
            | Mode::JointShellBalanced
            | Mode::JointOrganScaled => true,
            Mode::Dice
            | Mode::DiceSdm
            | Mode::Sdm
            | Mode::SdmBalanced
            | Mode::SdmShellBalanced
            | Mode::SdmOrganScaled => false,
        }
    }

    /// Whether [`Mode::loss`] weighs SDM terms by `lambda` (the joint heads, the auxiliary
    /// maps); the SDM-only heads have nothing to weigh them against, the Dice head none.
    pub fn weighs_maps(self) -> bool {
        self.is_joint() || self == Mode::DiceSdm
    }

    /// Whether this mode's SDM terms are [`shell_balanced_sdm_terms`] (whose far field
    /// `train.far_weight` weighs).
    pub fn shell_balanced(self) -> bool {
        matches!(
            self,
            Mode::SdmShellBalanced | Mode::JointShellBalanced | Mode::DiceSdm
        )
    }

    /// Whether this mode has a segmentation term (the Dice head, the joint heads).
    pub fn segments(self) -> bool {
        self.head() == Head::Probability || self.is_joint()
    }

    /// The logits of this mode's segmentation, from the network's raw outputs: the Dice
    /// head's own (the first half's with auxiliary maps), the joint heads' smooth Heaviside
    /// sigmoid(-k sdm) as logits -k tanh(raw); `None` for the SDM-only heads (no
    /// segmentation term).
    pub fn segmentation_logits(self, raw: &Tensor, k: f64) -> Option<Tensor> {
        match self.head() {
            Head::Probability if self == Mode::DiceSdm => Some(halves(raw).0),
            Head::Probability => Some(raw.shallow_clone()),
            Head::Sdm if self.is_joint() => Some(raw.tanh() * -k),
            Head::Sdm => None,
        }
    }

    /// The logits of the organ indicator the exclusion term reads: the segmentation's
    /// ([`Mode::segmentation_logits`]), or for an SDM-only head the smooth Heaviside of its
    /// maps, -k tanh(raw), as a joint head's. The SDM-only head decodes "inside" as its map
    /// below a level, so telling a channel "no" on another organ's voxels means pushing its
    /// map above 0 there; with k = 20, softplus(-k tanh) costs 0.69 at 0 and under 0.01
    /// above 0.25.
    pub fn indicator_logits(self, raw: &Tensor, k: f64) -> Tensor {
        self.segmentation_logits(raw, k)
            .unwrap_or_else(|| raw.tanh() * -k)
    }
}

/// The first and second halves of `t`'s channels (dimension 1).
fn halves(t: &Tensor) -> (Tensor, Tensor) {
    let half = t.size()[1] / 2;
    (t.narrow(1, 0, half), t.narrow(1, half, half))
}

/// Binary cross-entropy of the segmentation `logits` against `target`, per organ the mean
/// over the voxels of the batch's cases where it is present, averaged over the organs
/// present somewhere in the batch. Added to Dice (`train.ce`), as nnU-Net does: its
/// gradient in the logits, p - y, is the same at every voxel of a missed organ however sure
/// the network is, where Dice's is scaled by p (1 - p) and vanishes once a channel has
/// learned to say "no" everywhere. On OpenKBP it helps both heads on average over two seeds
/// and does not stop every channel from dying at the CPU budget
/// (docs/results/multi-organ/README.md, section 10).
///
/// `balanced` (`train.ce_balance`): per organ, the mean over its voxels and the mean over
/// the other voxels, averaged (the background's mean alone where the organ is not in the
/// batch's patches). A voxel mean gives an organ of 0.1% of the patch 0.1% of the push;
/// balanced, its voxels carry half the term whatever its size.
pub fn bce_loss(logits: &Tensor, target: &Tensor, present: &Tensor, balanced: bool) -> Tensor {
    let (m, _) = mask(present, logits);
    let dims: &[i64] = &[0, 2, 3, 4];
    let kind = logits.kind();
    let per_voxel =
        logits.binary_cross_entropy_with_logits::<Tensor>(target, None, None, tch::Reduction::None);
    if !balanced {
        let sum = (per_voxel * &m).sum_dim_intlist(dims, false, kind);
        let n = m.expand_as(logits).sum_dim_intlist(dims, false, kind);
        return mean_over_present_organs(sum / n.clamp_min(1.0), present);
    }
    let pos = target * &m;
    let neg = (target.ones_like() - target) * &m;
    let n_pos = pos.sum_dim_intlist(dims, false, kind);
    let n_neg = neg.sum_dim_intlist(dims, false, kind);
    let on_pos = (&per_voxel * &pos).sum_dim_intlist(dims, false, kind) / n_pos.clamp_min(1.0);
    let on_neg = (&per_voxel * &neg).sum_dim_intlist(dims, false, kind) / n_neg.clamp_min(1.0);
    // 1 where the organ has voxels in the batch (counts are whole numbers), else 0.
    let has_pos = n_pos.clamp_max(1.0);
    let per_organ = (on_pos * &has_pos + on_neg) / (has_pos + 1.0);
    mean_over_present_organs(per_organ, present)
}

/// The exclusion term (`train.exclusion`; the "exclusion loss" of partially labelled
/// multi-organ training, Shi et al., Med. Image Anal. 70, 2021): per case and organ, the
/// binary cross-entropy towards "no" (softplus of the logit) averaged over the voxels of
/// the *other* organs contoured in that case (less any voxel of the organ itself), averaged
/// over the (case, organ) pairs that have such voxels. It covers absent organs too: a
/// channel whose organ is not contoured in a case gets no Dice or cross-entropy from it, and
/// may fire on a neighbour (on OpenKBP, seed 7, the larynx channel, contoured in half the
/// cases, took the left parotid's voxels at decoding: docs/results/multi-organ/README.md,
/// section 12). Assumes contoured organs do not overlap where the organ is absent (none do
/// in OpenKBP's training set).
pub fn exclusion_loss(logits: &Tensor, target: &Tensor, present: &Tensor) -> Tensor {
    let (m, _) = mask(present, logits);
    let dims: &[i64] = &[2, 3, 4];
    let kind = logits.kind();
    let known = target * &m;
    // Voxels of another contoured organ, not of this one.
    let others = (known.sum_dim_intlist([1i64].as_slice(), true, kind) - &known).clamp_max(1.0)
        * (target.ones_like() - target);
    let n = others.sum_dim_intlist(dims, false, kind);
    let sum = (logits.softplus() * &others).sum_dim_intlist(dims, false, kind);
    // 1 where the (case, organ) has such voxels (counts are whole numbers), else 0.
    let has = n.clamp_max(1.0);
    (sum / n.clamp_min(1.0) * &has).sum(kind) / has.sum(kind).clamp_min(1.0)
}

/// The segmentation as one softmax over the background and the organs (`train.softmax`,
/// nnU-Net's), with the background's logit fixed at 0 so that the network keeps one
/// channel per organ: p_c = e^(l_c) / (1 + sum_j e^(l_j)). In a case where an organ is not
/// contoured its probability is merged into the background's (the "marginal" probabilities
/// of Shi et al., Med. Image Anal. 70, 2021): a voxel the clinic did not draw may be that
/// organ or background, and neither is wrong. Returns the organs' probabilities ([B, K,
/// ...], 0 where absent), their logarithms, and the log of the merged background ([B, 1,
/// ...]). The organ decoded at a voxel is unchanged: l_c > 0 (sigmoid(l_c) > 0.5) and the
/// largest wins, which is the softmax's arg max, so maps, levels and inference are those of
/// the per-organ heads.
pub fn marginal_softmax(logits: &Tensor, present: &Tensor) -> (Tensor, Tensor, Tensor) {
    let s = logits.size();
    let kind = logits.kind();
    let background = Tensor::zeros([s[0], 1, s[2], s[3], s[4]], (kind, logits.device()));
    let norm = Tensor::cat(&[&background, logits], 1).logsumexp([1i64].as_slice(), true);
    let log_organs = logits - &norm;
    let contoured = present.view([s[0], s[1], 1, 1, 1]).to_kind(kind);
    let organs = log_organs.exp() * &contoured;
    // The background and the organs not contoured in the case, summed in log space.
    let absent_logits = logits.masked_fill(&contoured.gt(0.5), f64::NEG_INFINITY);
    let log_background =
        Tensor::cat(&[&background, &absent_logits], 1).logsumexp([1i64].as_slice(), true) - norm;
    (organs, log_organs, log_background)
}

/// Cross-entropy of [`marginal_softmax`]'s classes against the segmentation, the mean over
/// every voxel of the batch (nnU-Net's): an organ's voxel costs -log p_organ, any other
/// voxel -log of the merged background. Assumes contoured organs do not overlap.
pub fn marginal_softmax_ce(
    log_organs: &Tensor,
    log_background: &Tensor,
    target: &Tensor,
) -> Tensor {
    let kind = log_organs.kind();
    let organ_voxels = target.sum_dim_intlist([1i64].as_slice(), true, kind);
    let on_organs = (log_organs * target).sum_dim_intlist([1i64].as_slice(), true, kind);
    -(on_organs + log_background * (-organ_voxels + 1.0)).mean(kind)
}

/// `per_organ` ([organs]) averaged over the organs present somewhere in the batch.
fn mean_over_present_organs(per_organ: Tensor, present: &Tensor) -> Tensor {
    let kind = per_organ.kind();
    let organ_present = present
        .to_kind(kind)
        .sum_dim_intlist([0i64].as_slice(), false, kind)
        .clamp_max(1.0);
    (per_organ * &organ_present).sum(kind) / organ_present.sum(kind).clamp_min(1.0)
}

/// L1 + product per voxel, the product shifted by 1/3 so that a perfect prediction costs 0
/// (the product term of p = y is -1/3).
fn shifted_terms(pred: &Tensor, target: &Tensor) -> Tensor {
    let yp = pred * target;
    (pred - target).abs() - &yp / (&yp + pred.square() + target.square() + EPS) + 1.0 / 3.0
}

/// Per-(case, organ) weights broadcast over the voxels, and their count.
fn mask(present: &Tensor, like: &Tensor) -> (Tensor, Tensor) {
    let m = present
        .to_kind(like.kind())
        .view([present.size()[0], present.size()[1], 1, 1, 1]);
    let n = present.to_kind(like.kind()).sum(like.kind()).clamp_min(1.0);
    (m, n)
}

/// Soft Dice loss over the batch ("batch Dice", as nnU-Net): per organ,
/// 1 - (2 sum(p y) + 1) / (sum p + sum y + 1), the sums running over every voxel of every
/// case where the organ is present; averaged over the organs present somewhere in the batch.
/// Summing over the batch keeps a patch that misses a small organ from asking for an exactly
/// empty prediction (per-patch Dice of an empty target is 1 unless p is 0 everywhere).
pub fn dice_loss(prob: &Tensor, target: &Tensor, present: &Tensor) -> Tensor {
    let (m, _) = mask(present, prob);
    let dims: &[i64] = &[0, 2, 3, 4];
    let pm = prob * &m;
    let inter = (&pm * target).sum_dim_intlist(dims, false, prob.kind());
    let total = pm.sum_dim_intlist(dims, false, prob.kind())
        + (target * &m).sum_dim_intlist(dims, false, prob.kind());
    let dice = (inter * 2.0 + SMOOTH) / (total + SMOOTH);
    mean_over_present_organs(-dice + 1.0, present)
}

/// Mean absolute error of the SDM over the voxels of present organs.
pub fn l1_loss(pred: &Tensor, target: &Tensor, present: &Tensor) -> Tensor {
    let (m, n) = mask(present, pred);
    let voxels = (pred.size()[2] * pred.size()[3] * pred.size()[4]) as f64;
    ((pred - target).abs() * m).sum(pred.kind()) / (n * voxels)
}

/// The product loss, -(y p) / (y p + p^2 + y^2), averaged over the voxels of present organs
/// (the paper sums; the mean keeps the weight lambda independent of the patch size). It is
/// negative where prediction and target agree in sign, pushing the signs to agree, and its
/// magnitude is largest near the surface where both are small.
pub fn product_loss(pred: &Tensor, target: &Tensor, present: &Tensor) -> Tensor {
    let (m, n) = mask(present, pred);
    let voxels = (pred.size()[2] * pred.size()[3] * pred.size()[4]) as f64;
    let yp = pred * target;
    let term = -(&yp) / (&yp + pred.square() + target.square() + EPS);
    (term * m).sum(pred.kind()) / (n * voxels)
}

/// L1 + product terms with each organ's inside (target < 0) and outside weighted equally:
/// per organ, over the batch's cases where it is present, half the mean over its inside
/// voxels plus half the mean over its outside voxels (all the weight outside when the
/// batch holds none of it), averaged over the organs present in the batch. The paper's voxel
/// mean gives an organ's inside the weight of its voxel count, a few hundredths of a patch
/// for most head-and-neck organs, so predicting "outside" everywhere is nearly optimal.
pub fn balanced_sdm_terms(pred: &Tensor, target: &Tensor, present: &Tensor) -> Tensor {
    let (m, _) = mask(present, pred);
    let dims: &[i64] = &[0, 2, 3, 4];
    let kind = pred.kind();
    let yp = pred * target;
    let term = (pred - target).abs() - &yp / (&yp + pred.square() + target.square() + EPS);
    let inside = target.lt(0.0).to_kind(kind) * &m;
    let outside = target.ge(0.0).to_kind(kind) * &m;
    let n_in = inside.sum_dim_intlist(dims, false, kind);
    let n_out = outside.sum_dim_intlist(dims, false, kind);
    let mean_in = (&term * &inside).sum_dim_intlist(dims, false, kind) / n_in.clamp_min(1.0);
    let mean_out = (&term * &outside).sum_dim_intlist(dims, false, kind) / n_out.clamp_min(1.0);
    let has_in = n_in.gt(0.0).to_kind(kind);
    let per_organ = &mean_in * &has_in * 0.5 + &mean_out * (-&has_in * 0.5 + 1.0);
    mean_over_present_organs(per_organ, present)
}

/// Where a band-limited map saturates: targets at or above this are the far field.
const FAR: f64 = 1.0 - 1e-4;

/// The SDM terms (L1 + product, the product shifted by 1/3 so that a perfect prediction
/// costs 0) with each organ's inside (target < 0) and its shell (0 <= target < 1: outside,
/// within the band of a band-limited map) weighted equally, as means over the batch's
/// cases where the organ is present (a region the batch lacks gives its weight to the
/// other), plus, for the far field (target 1), its false positives max(0, -p) summed and
/// divided by the organ's near voxels (at least [`NEAR_FLOOR`] of the batch's), as in
/// [`organ_scaled_sdm_terms`]; averaged over the organs present in the batch. (With a
/// margin, max(0, 0.5 - p), every far voxel of the untrained network pays at once and the
/// head learned "outside everywhere" on OpenKBP.)
///
/// Measured on OpenKBP (docs/results/openkbp): with inside and outside as two means
/// (`balanced_sdm_terms`) the heads found every organ but predicted 6 to 18 times its volume,
/// two thirds of it in blobs far away (the brainstem's map negative along the spinal cord):
/// a far false positive cost its share of the whole far field. With every error divided by
/// the near voxels (`organ_scaled_sdm_terms`) the SDM head called no voxel inside at epoch
/// 10: under-segmentation costs no more than over-segmentation there, and an uncertain
/// network predicts "outside" (the median of an uncertain sign). Here the inside keeps half
/// the weight, so that organs are found, and far false positives cost what near ones do.
pub fn shell_balanced_sdm_terms(pred: &Tensor, target: &Tensor, present: &Tensor) -> Tensor {
    shell_balanced_sdm_terms_weighted(pred, target, present, ShellWeights::default())
}

/// How the shell-balanced SDM terms weigh their three regions (`train.far_weight`,
/// `train.inside_weight`); the default is the terms as introduced.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ShellWeights {
    /// Multiplies the far field's false positives. Measured on OpenKBP
    /// (docs/results/multi-organ/README.md, section 38): at 1 the SDM heads' mandible channel
    /// is negative on the skull base of training CTs as of test CTs, though 30% of the first
    /// model's patches show that bone with the mandible; at 4 it still is, and the heads lose
    /// elsewhere: not the profile's.
    pub far: f64,
    /// The inside's share of the near terms, the shell's 1 minus it (0.5: the two means
    /// weighted equally). Per voxel an inside voxel then weighs (inside / n_in) against a
    /// shell voxel's ((1 - inside) / n_shell): at 0.5 an organ thinner than its band weighs
    /// its inside voxels several times its shell's, and an uncertain map says "inside"
    /// (section 39: the SDM-only head's validated levels are -0.07 to -0.30, each organ
    /// predicted too large at 0).
    pub inside: f64,
}

impl Default for ShellWeights {
    fn default() -> Self {
        ShellWeights {
            far: 1.0,
            inside: 0.5,
        }
    }
}

/// [`shell_balanced_sdm_terms`] with its regions weighted by `w` ([`ShellWeights`]): per
/// organ inside mean_in + (1 - inside) mean_shell where the batch holds both regions (one
/// region's mean where it holds one), plus far times the far term. The default weights
/// compute exactly the terms as introduced (each region's weight is 1 then).
pub fn shell_balanced_sdm_terms_weighted(
    pred: &Tensor,
    target: &Tensor,
    present: &Tensor,
    w: ShellWeights,
) -> Tensor {
    let (m, _) = mask(present, pred);
    let dims: &[i64] = &[0, 2, 3, 4];
    let kind = pred.kind();
    let term = shifted_terms(pred, target);
    let mut sum = Tensor::zeros([pred.size()[1]], (kind, pred.device()));
    let mut count = Tensor::zeros([pred.size()[1]], (kind, pred.device()));
    let mut n_near = Tensor::zeros([pred.size()[1]], (kind, pred.device()));
    let regions = [
        (target.lt(0.0), 2.0 * w.inside),
        (
            target.ge(0.0).logical_and(&target.lt(FAR)),
            2.0 * (1.0 - w.inside),
        ),
    ];
    for (r, weight) in regions {
        let r = r.to_kind(kind) * &m;
        let n = r.sum_dim_intlist(dims, false, kind);
        let mean = (&term * &r).sum_dim_intlist(dims, false, kind) / n.clamp_min(1.0);
        let has = n.gt(0.0).to_kind(kind) * weight;
        sum += mean * &has;
        count += has;
        n_near += n;
    }
    let far_field = target.ge(FAR).to_kind(kind) * &m;
    let n_all = m.expand_as(pred).sum_dim_intlist(dims, false, kind);
    let far_sum = (-pred).relu() * &far_field;
    let far_sum = far_sum.sum_dim_intlist(dims, false, kind);
    let per_organ = sum / count.clamp_min(1e-12)
        + far_sum / n_near.maximum(&(&n_all * NEAR_FLOOR)).clamp_min(1.0) * w.far;
    mean_over_present_organs(per_organ, present)
}

/// In [`organ_scaled_sdm_terms`], the far field (a band or more away) costs only where the
/// prediction is below this: L1 towards exactly 1 drives a tanh head into saturation
/// everywhere, its gradient vanishes inside the organs too, and the head predicts nothing
/// (measured on OpenKBP: no organ voxel called inside at epoch 10).
pub const FAR_MARGIN: f64 = 0.5;

/// The smallest share of the batch an organ's near voxels count for in
/// [`organ_scaled_sdm_terms`]: a patch that clips a few voxels of an organ's band would
/// otherwise divide the whole patch's errors by those few (measured on OpenKBP: batch losses
/// of 10^4 and an unstable first epochs).
pub const NEAR_FLOOR: f64 = 0.01;

/// The SDM terms (L1 + product, the latter shifted by 1/3 so that a perfect prediction
/// costs 0; in the far field the hinge max(0, [`FAR_MARGIN`] - p)) of each organ summed
/// over the voxels of the batch's cases where it is present,
/// and divided by the number of its near voxels there (inside, or outside within the band:
/// target < 1), at least [`NEAR_FLOOR`] of those voxels; averaged over the organs present in
/// the batch. A batch that holds no near voxel of an organ gives the mean over its voxels
/// instead. Measured on OpenKBP
/// (docs/results/openkbp): with the terms averaged per region (`balanced_sdm_terms`,
/// `shell_balanced_sdm_terms`) a channel firing on another organ 10 cm away costs its share
/// of the whole far field, a few hundredths, and the heads do that (the brainstem's map
/// negative along the spinal cord). Here, as in Dice, a false positive voxel anywhere costs
/// about as much as one of the organ's own voxels predicted wrong.
pub fn organ_scaled_sdm_terms(pred: &Tensor, target: &Tensor, present: &Tensor) -> Tensor {
    let (m, _) = mask(present, pred);
    let dims: &[i64] = &[0, 2, 3, 4];
    let kind = pred.kind();
    let near_term = shifted_terms(pred, target);
    let far_term = (-pred + FAR_MARGIN).relu();
    let is_near = target.lt(FAR).to_kind(kind);
    let term = &near_term * &is_near + far_term * (-&is_near + 1.0);
    let near = is_near * &m;
    let n_near = near.sum_dim_intlist(dims, false, kind);
    let n_all = m.expand_as(pred).sum_dim_intlist(dims, false, kind);
    let has_near = n_near.gt(0.0).to_kind(kind);
    let denominator = (&n_near * &has_near + &n_all * (-&has_near + 1.0))
        .maximum(&(&n_all * NEAR_FLOOR))
        .clamp_min(1.0);
    let per_organ = (&term * &m).sum_dim_intlist(dims, false, kind) / denominator;
    mean_over_present_organs(per_organ, present)
}

/// The paper's joint loss written out: Dice of the smooth Heaviside sigmoid(-k p) against
/// the segmentation, plus lambda (L1 + product) on the SDM (k = 1500, lambda = 10 there).
/// Training computes it as [`Mode::loss`] of [`Mode::Joint`], tested equal to this.
#[cfg(test)]
pub fn joint_loss(
    sdm_pred: &Tensor,
    sdm_target: &Tensor,
    seg_target: &Tensor,
    present: &Tensor,
    k: f64,
    lambda: f64,
) -> Tensor {
    let seg = (sdm_pred * -k).sigmoid();
    dice_loss(&seg, seg_target, present)
        + (l1_loss(sdm_pred, sdm_target, present) + product_loss(sdm_pred, sdm_target, present))
            * lambda
}

/// The SDM-only loss of the ablation: L1 + product.
pub fn sdm_loss(sdm_pred: &Tensor, sdm_target: &Tensor, present: &Tensor) -> Tensor {
    l1_loss(sdm_pred, sdm_target, present) + product_loss(sdm_pred, sdm_target, present)
}

/// A scalar loss as f64.
pub fn value(t: &Tensor) -> f64 {
    t.to_kind(Kind::Double).double_value(&[])
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn t(v: &[f64], shape: &[i64]) -> Tensor {
        Tensor::from_slice(v).view(shape).to_kind(Kind::Double)
    }

    #[test]
    fn dice_by_hand() {
        // One case, one organ, 4 voxels: p = (1, 0.5, 0, 0), y = (1, 1, 0, 0):
        // (2 * 1.5 + 1) / (1.5 + 2 + 1) = 8/9.
        let p = t(&[1.0, 0.5, 0.0, 0.0], &[1, 1, 1, 2, 2]);
        let y = t(&[1.0, 1.0, 0.0, 0.0], &[1, 1, 1, 2, 2]);
        let present = t(&[1.0], &[1, 1]);
        assert!((value(&dice_loss(&p, &y, &present)) - (1.0 - 8.0 / 9.0)).abs() < 1e-5);
        // An absent organ contributes nothing, even if its prediction is wrong.
        let p2 = Tensor::cat(
            &[
                p.shallow_clone(),
                t(&[1.0, 1.0, 1.0, 1.0], &[1, 1, 1, 2, 2]),
            ],
            1,
        );
        let y2 = Tensor::cat(&[y.shallow_clone(), t(&[0.0; 4], &[1, 1, 1, 2, 2])], 1);
        let present2 = t(&[1.0, 0.0], &[1, 2]);
        assert!((value(&dice_loss(&p2, &y2, &present2)) - (1.0 - 8.0 / 9.0)).abs() < 1e-5);
        // Batch Dice: two cases, the second's patch misses the organ and predicts 0.5 in one
        // voxel: sums over both, (2 * 1.5 + 1) / (1.5 + 0.5 + 2 + 1) = 4/5.
        let p3 = Tensor::cat(
            &[
                p.shallow_clone(),
                t(&[0.5, 0.0, 0.0, 0.0], &[1, 1, 1, 2, 2]),
            ],
            0,
        );
        let y3 = Tensor::cat(&[y.shallow_clone(), t(&[0.0; 4], &[1, 1, 1, 2, 2])], 0);
        let present3 = t(&[1.0, 1.0], &[2, 1]);
        assert!((value(&dice_loss(&p3, &y3, &present3)) - 0.2).abs() < 1e-5);
        // ... and where the organ is absent in the second case, its voxels do not count.
        let present4 = t(&[1.0, 0.0], &[2, 1]);
        assert!((value(&dice_loss(&p3, &y3, &present4)) - (1.0 - 8.0 / 9.0)).abs() < 1e-5);
        // An organ annotated but absent from the whole batch: false positives cost,
        // 1 - 1 / (3 + 1); predicting nothing costs nothing.
        let zero = t(&[0.0; 4], &[1, 1, 1, 2, 2]);
        let fp = t(&[1.0, 1.0, 1.0, 0.0], &[1, 1, 1, 2, 2]);
        assert!((value(&dice_loss(&fp, &zero, &present)) - 0.75).abs() < 1e-6);
        assert!(value(&dice_loss(&zero, &zero, &present)).abs() < 1e-9);
    }

    #[test]
    fn l1_and_product_by_hand() {
        let p = t(&[0.5, -0.5, 0.2, 0.0], &[1, 1, 1, 2, 2]);
        let y = t(&[0.5, 0.5, -0.2, 0.1], &[1, 1, 1, 2, 2]);
        let present = t(&[1.0], &[1, 1]);
        assert!((value(&l1_loss(&p, &y, &present)) - (0.0 + 1.0 + 0.4 + 0.1) / 4.0).abs() < 1e-9);
        // Terms: yp/(yp + p^2 + y^2): 0.25/0.75, -0.25/0.25, -0.04/0.04, 0/0.01.
        let want = -(1.0 / 3.0 - 1.0 - 1.0 + 0.0) / 4.0;
        assert!(
            (value(&product_loss(&p, &y, &present)) - want).abs() < 1e-5,
            "{}",
            value(&product_loss(&p, &y, &present))
        );
    }

    #[test]
    fn balanced_terms_by_hand() {
        // One organ, 4 voxels, one inside: p = (-0.5, 0.5, 0.2, 0.0), y = (-0.5, 0.5, 0.4, 0.1).
        let p = t(&[-0.5, 0.5, 0.2, 0.0], &[1, 1, 1, 2, 2]);
        let y = t(&[-0.5, 0.5, 0.4, 0.1], &[1, 1, 1, 2, 2]);
        let present = t(&[1.0], &[1, 1]);
        // L1 + product per voxel: inside 0 - 1/3 ... each term is -(yp)/(yp + p^2 + y^2).
        let term = |p: f64, y: f64| (p - y).abs() - (y * p) / (y * p + p * p + y * y + 1e-6);
        let want =
            0.5 * term(-0.5, -0.5) + 0.5 * (term(0.5, 0.5) + term(0.2, 0.4) + term(0.0, 0.1)) / 3.0;
        let got = value(&balanced_sdm_terms(&p, &y, &present));
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        // No inside voxel in the batch: the outside mean alone.
        let y_out = t(&[0.5, 0.5, 0.4, 0.1], &[1, 1, 1, 2, 2]);
        let want = (term(-0.5, 0.5) + term(0.5, 0.5) + term(0.2, 0.4) + term(0.0, 0.1)) / 4.0;
        assert!((value(&balanced_sdm_terms(&p, &y_out, &present)) - want).abs() < 1e-6);
        // An absent organ adds nothing.
        let absent = t(&[0.0], &[1, 1]);
        assert!(value(&balanced_sdm_terms(&p, &y, &absent)).abs() < 1e-12);
    }

    #[test]
    fn balanced_terms_gradients_match_finite_differences() {
        let y = t(&[-0.5, 0.5, 0.4, 0.1, -0.2, 0.9], &[1, 1, 1, 2, 3]);
        let present = t(&[1.0], &[1, 1]);
        let p0 = [-0.3, 0.6, 0.1, 0.05, 0.2, 0.7];
        let p = t(&p0, &[1, 1, 1, 2, 3]).set_requires_grad(true);
        balanced_sdm_terms(&p, &y, &present).backward();
        let g = p.grad().view([-1]);
        for i in 0..p0.len() {
            let h = 1e-6;
            let at = |d: f64| {
                let mut q = p0;
                q[i] += d;
                value(&balanced_sdm_terms(&t(&q, &[1, 1, 1, 2, 3]), &y, &present))
            };
            let fd = (at(h) - at(-h)) / (2.0 * h);
            let an = g.double_value(&[i as i64]);
            assert!((fd - an).abs() < 1e-5, "voxel {i}: {an} vs {fd}");
        }
    }

    #[test]
    fn shell_balanced_terms_by_hand_and_gradients() {
        // One organ, 6 voxels: one inside, three in the shell, two far (target 1).
        let y = t(&[-0.5, 0.5, 0.4, 0.1, 1.0, 1.0], &[1, 1, 1, 2, 3]);
        let p0 = [-0.3, 0.6, 0.1, -0.2, 0.9, -0.4];
        let p = t(&p0, &[1, 1, 1, 2, 3]);
        let present = t(&[1.0], &[1, 1]);
        let term =
            |p: f64, y: f64| (p - y).abs() - (y * p) / (y * p + p * p + y * y + 1e-6) + 1.0 / 3.0;
        // Inside and shell means, half each; the far false positive (-0.4) over the 4 near
        // voxels.
        let want = 0.5 * term(-0.3, -0.5)
            + 0.5 * (term(0.6, 0.5) + term(0.1, 0.4) + term(-0.2, 0.1)) / 3.0
            + 0.4 / 4.0;
        let got = value(&shell_balanced_sdm_terms(&p, &y, &present));
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        // A perfect prediction, or any positive far value, costs nothing.
        assert!(value(&shell_balanced_sdm_terms(&y, &y, &present)).abs() < 1e-5);
        let fine = t(&[-0.5, 0.5, 0.4, 0.1, 0.6, 0.01], &[1, 1, 1, 2, 3]);
        assert!(value(&shell_balanced_sdm_terms(&fine, &y, &present)).abs() < 1e-5);
        // No inside voxel in the batch: the shell mean alone, plus the far term.
        let y2 = t(&[0.5, 0.5, 0.4, 0.1, 1.0, 1.0], &[1, 1, 1, 2, 3]);
        let want2 =
            (term(-0.3, 0.5) + term(0.6, 0.5) + term(0.1, 0.4) + term(-0.2, 0.1)) / 4.0 + 0.4 / 4.0;
        assert!((value(&shell_balanced_sdm_terms(&p, &y2, &present)) - want2).abs() < 1e-6);
        let absent = t(&[0.0], &[1, 1]);
        assert!(value(&shell_balanced_sdm_terms(&p, &y, &absent)).abs() < 1e-12);
        check_gradient(&|q| shell_balanced_sdm_terms(q, &y, &present), &p);
        tch::manual_seed(5);
        let y3 =
            (Tensor::rand([2, 2, 2, 2, 3], (Kind::Double, Device::Cpu)) * 1.6 - 0.5).clamp_max(1.0);
        let x3 = Tensor::randn([2, 2, 2, 2, 3], (Kind::Double, Device::Cpu)) * 0.3;
        let present3 = t(&[1.0, 1.0, 1.0, 0.0], &[2, 2]);
        check_gradient(&|q| shell_balanced_sdm_terms(q, &y3, &present3), &x3);
        // The far field's weight multiplies its false positives alone.
        let far = |far| ShellWeights {
            far,
            ..ShellWeights::default()
        };
        let far3 = value(&shell_balanced_sdm_terms_weighted(
            &p,
            &y,
            &present,
            far(3.0),
        ));
        assert!((far3 - (want + 2.0 * 0.4 / 4.0)).abs() < 1e-6, "{far3}");
        let fine3 = shell_balanced_sdm_terms_weighted(&fine, &y, &present, far(3.0));
        assert!(value(&fine3).abs() < 1e-5);
        let far0 = value(&shell_balanced_sdm_terms_weighted(
            &p,
            &y2,
            &present,
            far(0.0),
        ));
        assert!((far0 - (want2 - 0.4 / 4.0)).abs() < 1e-6, "{far0}");
        check_gradient(
            &|q| shell_balanced_sdm_terms_weighted(q, &y3, &present3, far(3.0)),
            &x3,
        );
        // The inside's share: a quarter inside, three quarters shell; alone, a region keeps
        // its mean whatever its share.
        let inside = |inside| ShellWeights {
            inside,
            ..ShellWeights::default()
        };
        let want_q = 0.25 * term(-0.3, -0.5)
            + 0.75 * (term(0.6, 0.5) + term(0.1, 0.4) + term(-0.2, 0.1)) / 3.0
            + 0.4 / 4.0;
        let got_q = value(&shell_balanced_sdm_terms_weighted(
            &p,
            &y,
            &present,
            inside(0.25),
        ));
        assert!((got_q - want_q).abs() < 1e-6, "{got_q} vs {want_q}");
        let alone = value(&shell_balanced_sdm_terms_weighted(
            &p,
            &y2,
            &present,
            inside(0.25),
        ));
        assert!((alone - want2).abs() < 1e-6, "{alone} vs {want2}");
        let y_in = t(&[-0.5, -0.2, 1.0, 1.0, 1.0, 1.0], &[1, 1, 1, 2, 3]);
        // No shell voxel: the inside's mean alone; the far false positives (-0.2, -0.4) over
        // the 2 near voxels.
        let want_in = (term(-0.3, -0.5) + term(0.6, -0.2)) / 2.0 + (0.2 + 0.4) / 2.0;
        let got_in = value(&shell_balanced_sdm_terms_weighted(
            &p,
            &y_in,
            &present,
            inside(0.1),
        ));
        assert!((got_in - want_in).abs() < 1e-6, "{got_in} vs {want_in}");
        check_gradient(
            &|q| shell_balanced_sdm_terms_weighted(q, &y3, &present3, inside(0.2)),
            &x3,
        );
    }

    #[test]
    fn organ_scaled_terms_by_hand_and_gradients() {
        // One organ, 6 voxels: one inside, three in the band, two far (target 1).
        let y = t(&[-0.5, 0.5, 0.4, 0.1, 1.0, 1.0], &[1, 1, 1, 2, 3]);
        let p0 = [-0.3, 0.6, 0.1, -0.2, 0.9, -0.4];
        let p = t(&p0, &[1, 1, 1, 2, 3]);
        let present = t(&[1.0], &[1, 1]);
        let term = |p: f64, y: f64| {
            if y >= 1.0 {
                (0.5 - p).max(0.0)
            } else {
                (p - y).abs() - (y * p) / (y * p + p * p + y * y + 1e-6) + 1.0 / 3.0
            }
        };
        // Every voxel's error, divided by the 4 near voxels.
        let all: f64 = (0..6)
            .map(|i| term(p0[i], [-0.5, 0.5, 0.4, 0.1, 1.0, 1.0][i]))
            .sum();
        let got = value(&organ_scaled_sdm_terms(&p, &y, &present));
        assert!((got - all / 4.0).abs() < 1e-6, "{got} vs {}", all / 4.0);
        // A perfect prediction costs (nearly) nothing; so does any far value above the margin.
        assert!(value(&organ_scaled_sdm_terms(&y, &y, &present)).abs() < 1e-5);
        let mut near_perfect = [-0.5, 0.5, 0.4, 0.1, 0.6, 0.7];
        assert!(
            value(&organ_scaled_sdm_terms(
                &t(&near_perfect, &[1, 1, 1, 2, 3]),
                &y,
                &present
            ))
            .abs()
                < 1e-5
        );
        near_perfect[5] = 0.4;
        assert!(
            (value(&organ_scaled_sdm_terms(
                &t(&near_perfect, &[1, 1, 1, 2, 3]),
                &y,
                &present
            )) - 0.1 / 4.0)
                .abs()
                < 1e-5
        );
        // The far false positive costs as much as a near error of the same size: moving it
        // to the right value lowers the loss by its own error over 4.
        let mut fixed = p0;
        fixed[5] = 1.0;
        let better = value(&organ_scaled_sdm_terms(
            &t(&fixed, &[1, 1, 1, 2, 3]),
            &y,
            &present,
        ));
        assert!((got - better - (term(-0.4, 1.0) - term(1.0, 1.0)) / 4.0).abs() < 1e-6);
        // No near voxel in the batch: the mean over the voxels.
        let far = t(&[1.0; 6], &[1, 1, 1, 2, 3]);
        let want: f64 = p0.iter().map(|&q| term(q, 1.0)).sum::<f64>() / 6.0;
        assert!((value(&organ_scaled_sdm_terms(&p, &far, &present)) - want).abs() < 1e-6);
        let absent = t(&[0.0], &[1, 1]);
        assert!(value(&organ_scaled_sdm_terms(&p, &y, &absent)).abs() < 1e-12);
        check_gradient(&|q| organ_scaled_sdm_terms(q, &y, &present), &p);
        // A patch that clips 2 near voxels of 1000: divided by the floor, 10, not by 2.
        let mut yv = vec![1.0; 1000];
        yv[0] = 0.5;
        yv[1] = -0.5;
        let pv = vec![0.0; 1000];
        let got = value(&organ_scaled_sdm_terms(
            &t(&pv, &[1, 1, 10, 10, 10]),
            &t(&yv, &[1, 1, 10, 10, 10]),
            &present,
        ));
        let sum = term(0.0, 0.5) + term(0.0, -0.5) + 998.0 * term(0.0, 1.0);
        assert!((got - sum / 10.0).abs() < 1e-6, "{got} vs {}", sum / 10.0);
        // Two cases and two organs, one absent in the second case.
        tch::manual_seed(4);
        let y2 =
            (Tensor::rand([2, 2, 2, 2, 3], (Kind::Double, Device::Cpu)) * 1.6 - 0.5).clamp_max(1.0);
        let x2 = Tensor::randn([2, 2, 2, 2, 3], (Kind::Double, Device::Cpu)) * 0.3;
        let present2 = t(&[1.0, 1.0, 1.0, 0.0], &[2, 2]);
        check_gradient(&|q| organ_scaled_sdm_terms(q, &y2, &present2), &x2);
    }

    #[test]
    fn joint_is_dice_of_the_smooth_heaviside_plus_weighted_sdm_terms() {
        let p = t(&[-0.01, 0.02, -0.003, 0.5], &[1, 1, 1, 2, 2]);
        let y = t(&[-0.02, 0.01, -0.001, 0.4], &[1, 1, 1, 2, 2]);
        let seg = t(&[1.0, 0.0, 1.0, 0.0], &[1, 1, 1, 2, 2]);
        let present = t(&[1.0], &[1, 1]);
        let j = value(&joint_loss(&p, &y, &seg, &present, 1500.0, 10.0));
        let h = (&p * -1500.0).sigmoid();
        let want =
            value(&dice_loss(&h, &seg, &present)) + 10.0 * value(&sdm_loss(&p, &y, &present));
        assert!((j - want).abs() < 1e-9);
        // What training computes for the paper's joint mode is this loss.
        let batch = BatchTensors {
            image: p.zeros_like(),
            sdm: y.shallow_clone(),
            seg: seg.shallow_clone(),
            present: present.shallow_clone(),
        };
        assert!(
            (value(&Mode::Joint.loss(&p, &batch, 1500.0, 10.0, ShellWeights::default())) - j).abs()
                < 1e-12
        );
    }

    /// The auxiliary maps' mode: Dice of its first half's sigmoid plus lambda times the
    /// shell-balanced terms of its second half's tanh; it predicts the first half alone.
    #[test]
    fn auxiliary_maps_add_their_terms_and_stay_out_of_the_prediction() {
        tch::manual_seed(5);
        let shape = [2, 2, 2, 2, 3];
        let y = (Tensor::rand(shape, (Kind::Double, Device::Cpu)) * 1.6 - 0.5).clamp_max(1.0);
        let seg = y.lt(0.0).to_kind(Kind::Double);
        let present = t(&[1.0, 1.0, 1.0, 0.0], &[2, 2]);
        let batch = BatchTensors {
            image: y.zeros_like(),
            sdm: y.shallow_clone(),
            seg: seg.shallow_clone(),
            present: present.shallow_clone(),
        };
        let logits = Tensor::randn(shape, (Kind::Double, Device::Cpu));
        let maps = Tensor::randn(shape, (Kind::Double, Device::Cpu)) * 0.5;
        let raw = Tensor::cat(&[&logits, &maps], 1);
        let mode = Mode::DiceSdm;
        assert_eq!(mode.out_channels(2), 4);
        assert_eq!(mode.head(), Head::Probability);
        assert!(mode.reads_maps() && mode.segments() && !mode.is_joint());
        let got = value(&mode.loss(
            &mode.activate(&raw),
            &batch,
            20.0,
            0.3,
            ShellWeights::default(),
        ));
        let dice = value(&dice_loss(&logits.sigmoid(), &seg, &present));
        let terms = value(&shell_balanced_sdm_terms(&maps.tanh(), &y, &present));
        assert!(terms > 0.01, "{terms}");
        assert!(
            (got - (dice + 0.3 * terms)).abs() < 1e-12,
            "{got} {dice} {terms}"
        );
        assert_eq!(
            value(
                &mode
                    .sdm_terms(&mode.activate(&raw), &batch, ShellWeights::default())
                    .unwrap()
            ),
            terms
        );
        // The prediction and the segmentation's logits are the first half's.
        let other = Tensor::cat(&[&logits, &(&maps * -1.0)], 1);
        assert_eq!(mode.prediction(&raw).size(), vec![2, 2, 2, 2, 3]);
        // Not bit for bit: the sigmoid of a slice and of a contiguous tensor take different
        // vector paths on some CPUs (an AVX-512 Xeon differs in the last bit).
        assert!(mode
            .prediction(&raw)
            .allclose(&logits.sigmoid(), 1e-14, 1e-15, false));
        assert!(mode.prediction(&other).equal(&mode.prediction(&raw)));
        assert!(mode.segmentation_logits(&raw, 20.0).unwrap().equal(&logits));
        // The mode's name in a pipeline file.
        let m: Mode = serde_json::from_str(r#""dice-sdm""#).unwrap();
        assert_eq!(m, Mode::DiceSdm);
        // Gradients reach both halves, as finite differences say.
        check_gradient(
            &|r| {
                mode.loss(
                    &mode.activate(r),
                    &batch,
                    20.0,
                    0.3,
                    ShellWeights::default(),
                )
            },
            &(raw * 0.5),
        );
    }

    /// Autograd against central differences, element by element.
    fn check_gradient(f: &dyn Fn(&Tensor) -> Tensor, x: &Tensor) {
        let xv = x.detach().set_requires_grad(true);
        let loss = f(&xv);
        loss.backward();
        let g = xv.grad();
        let h = 1e-6;
        for i in 0..x.numel() as i64 {
            let plus = x.detach().copy();
            let minus = x.detach().copy();
            let _ = plus.view([-1]).get(i).f_add_scalar_(h);
            let _ = minus.view([-1]).get(i).f_add_scalar_(-h);
            let numeric = (value(&f(&plus)) - value(&f(&minus))) / (2.0 * h);
            let analytic = g.view([-1]).double_value(&[i]);
            assert!(
                (numeric - analytic).abs() < 1e-5 * (1.0 + numeric.abs()),
                "element {i}: autograd {analytic}, numeric {numeric}"
            );
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        tch::manual_seed(3);
        let shape = [2, 2, 2, 2, 3];
        let y = Tensor::randn(shape, (Kind::Double, Device::Cpu)) * 0.3;
        let seg = y.lt(0.0).to_kind(Kind::Double);
        let present = t(&[1.0, 1.0, 1.0, 0.0], &[2, 2]);
        let x = Tensor::randn(shape, (Kind::Double, Device::Cpu)) * 0.3;
        let prob = x.sigmoid();
        check_gradient(&|p| dice_loss(p, &seg, &present), &prob);
        check_gradient(&|p| l1_loss(p, &y, &present), &x);
        check_gradient(&|p| product_loss(p, &y, &present), &x);
        // k small enough for finite differences to resolve the sigmoid.
        check_gradient(&|p| joint_loss(p, &y, &seg, &present, 5.0, 10.0), &x);
        check_gradient(&|p| bce_loss(p, &seg, &present, false), &x);
        check_gradient(&|p| bce_loss(p, &seg, &present, true), &x);
        check_gradient(&|p| exclusion_loss(p, &seg, &present), &x);
        // The softmax's Dice and cross-entropy, one organ absent in the second case.
        check_gradient(
            &|p| {
                let (organs, log_organs, log_background) = marginal_softmax(p, &present);
                dice_loss(&organs, &seg, &present)
                    + marginal_softmax_ce(&log_organs, &log_background, &seg)
            },
            &x,
        );
        check_gradient(
            &|p| {
                bce_loss(
                    &Mode::JointShellBalanced
                        .segmentation_logits(p, 5.0)
                        .unwrap(),
                    &seg,
                    &present,
                    false,
                )
            },
            &x,
        );
    }

    #[test]
    fn cross_entropy_by_hand() {
        // One organ, 4 voxels, logits (0, ln 3, -ln 3, 0) against (1, 1, 0, 0):
        // -ln(1/2), -ln(3/4), -ln(3/4), -ln(1/2), averaged.
        let x = t(&[0.0, 3f64.ln(), -(3f64.ln()), 0.0], &[1, 1, 1, 2, 2]);
        let y = t(&[1.0, 1.0, 0.0, 0.0], &[1, 1, 1, 2, 2]);
        let present = t(&[1.0], &[1, 1]);
        let want = (2.0 * 2f64.ln() + 2.0 * (4.0f64 / 3.0).ln()) / 4.0;
        assert!((value(&bce_loss(&x, &y, &present, false)) - want).abs() < 1e-9);
        // A second organ, absent, adds nothing; a second case where the first organ is
        // absent adds none of its voxels.
        let x2 = Tensor::cat(&[x.shallow_clone(), t(&[9.0; 4], &[1, 1, 1, 2, 2])], 1);
        let y2 = Tensor::cat(&[y.shallow_clone(), t(&[0.0; 4], &[1, 1, 1, 2, 2])], 1);
        let absent = t(&[1.0, 0.0], &[1, 2]);
        assert!((value(&bce_loss(&x2, &y2, &absent, false)) - want).abs() < 1e-9);
        let x3 = Tensor::cat(&[x.shallow_clone(), t(&[9.0; 4], &[1, 1, 1, 2, 2])], 0);
        let y3 = Tensor::cat(&[y.shallow_clone(), t(&[0.0; 4], &[1, 1, 1, 2, 2])], 0);
        let second_absent = t(&[1.0, 0.0], &[2, 1]);
        assert!((value(&bce_loss(&x3, &y3, &second_absent, false)) - want).abs() < 1e-9);
        // The joint heads' logits are -k tanh(raw); the SDM-only heads have none.
        let raw = t(&[0.5], &[1, 1, 1, 1, 1]);
        let l = Mode::Joint.segmentation_logits(&raw, 20.0).unwrap();
        assert!((value(&l) + 20.0 * 0.5f64.tanh()).abs() < 1e-12);
        assert!(Mode::Sdm.segmentation_logits(&raw, 20.0).is_none());
        // Where a Dice channel is sure of "no" inside the organ, Dice's gradient in the logit
        // has all but vanished and cross-entropy's has not.
        let sure_no = t(&[-12.0, -12.0, -12.0, -12.0], &[1, 1, 1, 2, 2]).set_requires_grad(true);
        dice_loss(&sure_no.sigmoid(), &y, &present).backward();
        let g_dice = sure_no.grad().abs().max().double_value(&[]);
        let sure_no = t(&[-12.0, -12.0, -12.0, -12.0], &[1, 1, 1, 2, 2]).set_requires_grad(true);
        bce_loss(&sure_no, &y, &present, false).backward();
        let g_ce = sure_no.grad().abs().max().double_value(&[]);
        assert!(g_dice < 1e-4 && g_ce > 0.2, "{g_dice} {g_ce}");
    }

    #[test]
    fn balanced_cross_entropy_by_hand() {
        // Logits (0, ln 3, -ln 3, 0) against (1, 0, 0, 0): the organ's voxel costs ln 2; the
        // others ln 4, ln 4/3, ln 2; balanced, the two means averaged.
        let x = t(&[0.0, 3f64.ln(), -(3f64.ln()), 0.0], &[1, 1, 1, 2, 2]);
        let y = t(&[1.0, 0.0, 0.0, 0.0], &[1, 1, 1, 2, 2]);
        let present = t(&[1.0], &[1, 1]);
        let neg = (4f64.ln() + (4.0f64 / 3.0).ln() + 2f64.ln()) / 3.0;
        let want = (2f64.ln() + neg) / 2.0;
        assert!((value(&bce_loss(&x, &y, &present, true)) - want).abs() < 1e-9);
        // An organ present but not in the patch: the background's mean alone.
        let none = t(&[0.0; 4], &[1, 1, 1, 2, 2]);
        let want = ((2.0f64).ln() + 4f64.ln() + (4.0f64 / 3.0).ln() + 2f64.ln()) / 4.0;
        assert!((value(&bce_loss(&x, &none, &present, true)) - want).abs() < 1e-9);
        // An absent organ adds nothing.
        let x2 = Tensor::cat(&[x.shallow_clone(), t(&[9.0; 4], &[1, 1, 1, 2, 2])], 1);
        let y2 = Tensor::cat(&[y.shallow_clone(), t(&[1.0; 4], &[1, 1, 1, 2, 2])], 1);
        let absent = t(&[1.0, 0.0], &[1, 2]);
        let want = (2f64.ln() + neg) / 2.0;
        assert!((value(&bce_loss(&x2, &y2, &absent, true)) - want).abs() < 1e-9);
        // A one-voxel organ in a patch of 1,000 that a channel is sure is not there: the
        // voxel mean pushes that voxel's logit by 1/1000, the balanced term by 1/2.
        let mut y = vec![0.0; 1000];
        y[500] = 1.0;
        let y = t(&y, &[1, 1, 10, 10, 10]);
        let grad = |balanced: bool| {
            let x = t(&[-12.0; 1000], &[1, 1, 10, 10, 10]).set_requires_grad(true);
            bce_loss(&x, &y, &present, balanced).backward();
            x.grad().view([-1]).double_value(&[500]).abs()
        };
        let (plain, bal) = (grad(false), grad(true));
        assert!(
            (plain - 1e-3).abs() < 1e-6 && (bal - 0.5).abs() < 1e-5,
            "{plain} {bal}"
        );
    }

    /// An SDM-only head's exclusion term reads its maps' smooth Heaviside: by hand on two
    /// voxels, and its gradient in the raw outputs against finite differences.
    #[test]
    fn sdm_only_exclusion_reads_the_maps_heaviside() {
        // One case, two organs, 2 voxels: organ 0 on voxel 0, organ 1 on voxel 1.
        let raw = t(&[-0.4, -0.2, 0.3, 0.1], &[1, 2, 1, 1, 2]);
        let y = t(&[1.0, 0.0, 0.0, 1.0], &[1, 2, 1, 1, 2]);
        let present = t(&[1.0, 1.0], &[1, 2]);
        let k = 20.0;
        for mode in [
            Mode::Sdm,
            Mode::SdmBalanced,
            Mode::SdmShellBalanced,
            Mode::SdmOrganScaled,
        ] {
            assert!(mode.segmentation_logits(&raw, k).is_none());
            assert!(mode.indicator_logits(&raw, k).equal(&(raw.tanh() * -k)));
        }
        let sp = |v: f64| (1.0 + v.exp()).ln();
        // Organ 0 is told "no" on voxel 1, where its map is tanh(-0.2) < 0 (it says inside:
        // costly); organ 1 on voxel 0, where its map is tanh(0.3) > 0 (cheap).
        let want = (sp(-k * (-0.2f64).tanh()) + sp(-k * 0.3f64.tanh())) / 2.0;
        let logits = Mode::SdmShellBalanced.indicator_logits(&raw, k);
        let got = value(&exclusion_loss(&logits, &y, &present));
        assert!((got - want).abs() < 1e-9, "{got} {want}");
        assert!(sp(-k * (-0.2f64).tanh()) > 3.0 && sp(-k * 0.3f64.tanh()) < 0.01);
        // The Dice and joint heads read their segmentation's logits.
        for mode in [Mode::Dice, Mode::Joint, Mode::JointShellBalanced] {
            let seg = mode.segmentation_logits(&raw, k).unwrap();
            assert!(mode.indicator_logits(&raw, k).equal(&seg));
        }
        // Gradients through tanh, k small enough for finite differences.
        tch::manual_seed(4);
        let shape = [2, 2, 2, 2, 3];
        let y = Tensor::randn(shape, (Kind::Double, Device::Cpu)) * 0.3;
        let seg = y.lt(0.0).to_kind(Kind::Double);
        let present = t(&[1.0, 1.0, 1.0, 0.0], &[2, 2]);
        let x = Tensor::randn(shape, (Kind::Double, Device::Cpu)) * 0.3;
        check_gradient(
            &|r| {
                exclusion_loss(
                    &Mode::SdmShellBalanced.indicator_logits(r, 5.0),
                    &seg,
                    &present,
                )
            },
            &x,
        );
    }

    #[test]
    fn exclusion_by_hand() {
        // One case, three organs, 4 voxels: organ 0 on voxel 0, organ 1 on voxel 1, organ 2
        // absent (its target, empty, is not "no"). Logits per organ over the voxels.
        let x = t(
            &[0.0, 1.0, 2.0, 3.0, -1.0, 0.0, 5.0, 5.0, 2.0, -2.0, 7.0, 7.0],
            &[1, 3, 1, 2, 2],
        );
        let y = t(
            &[1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            &[1, 3, 1, 2, 2],
        );
        let present = t(&[1.0, 1.0, 0.0], &[1, 3]);
        let sp = |v: f64| (1.0 + v.exp()).ln();
        // Organ 0 is told "no" on voxel 1 (organ 1's), organ 1 on voxel 0, the absent organ
        // 2 on both; voxels 2 and 3 belong to no contoured organ and count for none.
        let want = (sp(1.0) + sp(-1.0) + (sp(2.0) + sp(-2.0)) / 2.0) / 3.0;
        let got = value(&exclusion_loss(&x, &y, &present));
        assert!((got - want).abs() < 1e-9, "{got} {want}");
        // With organ 1 absent too, only organ 0 is contoured: organs 1 and 2 are told "no"
        // on voxel 0, organ 0 nowhere.
        let only_first = t(&[1.0, 0.0, 0.0], &[1, 3]);
        let y1 = t(
            &[1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            &[1, 3, 1, 2, 2],
        );
        let want = (sp(-1.0) + sp(2.0)) / 2.0;
        assert!((value(&exclusion_loss(&x, &y1, &only_first)) - want).abs() < 1e-9);
        // Overlapping contours: organ 0 on voxels 0 and 1, organ 1 on voxel 1. Neither is
        // told "no" on its own voxels: organ 0 nowhere, organ 1 on voxel 0, organ 2 on both.
        let overlap = t(
            &[1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            &[1, 3, 1, 2, 2],
        );
        let want = (sp(-1.0) + (sp(2.0) + sp(-2.0)) / 2.0) / 2.0;
        assert!((value(&exclusion_loss(&x, &overlap, &present)) - want).abs() < 1e-9);
        // No contoured organ: nothing to exclude.
        let none = t(&[0.0, 0.0, 0.0], &[1, 3]);
        assert!(value(&exclusion_loss(&x, &y, &none)).abs() < 1e-12);
    }

    #[test]
    fn marginal_softmax_by_hand() {
        // One voxel, two organs, logits (ln 2, ln 3) beside the background's 0: the
        // exponentials are 1, 2, 3, so p = (1/6 background, 2/6, 3/6).
        let x = t(&[2f64.ln(), 3f64.ln()], &[1, 2, 1, 1, 1]);
        let both = t(&[1.0, 1.0], &[1, 2]);
        let (organs, log_organs, log_bg) = marginal_softmax(&x, &both);
        let v = |t: &Tensor, i: i64| t.view([-1]).double_value(&[i]);
        assert!((v(&organs, 0) - 2.0 / 6.0).abs() < 1e-12);
        assert!((v(&organs, 1) - 3.0 / 6.0).abs() < 1e-12);
        assert!((v(&log_organs, 1) - 0.5f64.ln()).abs() < 1e-12);
        assert!((v(&log_bg, 0) - (1.0f64 / 6.0).ln()).abs() < 1e-12);
        // The second organ not contoured: its 3/6 is the background's, its probability 0.
        let first = t(&[1.0, 0.0], &[1, 2]);
        let (organs, log_organs, log_bg) = marginal_softmax(&x, &first);
        assert!((v(&organs, 0) - 2.0 / 6.0).abs() < 1e-12);
        assert!(v(&organs, 1).abs() < 1e-12);
        assert!((v(&log_organs, 0) - (2.0f64 / 6.0).ln()).abs() < 1e-12);
        assert!((v(&log_bg, 0) - (4.0f64 / 6.0).ln()).abs() < 1e-12);
        // Cross-entropy: a voxel of the first organ costs -ln(2/6); a voxel of neither
        // costs -ln(4/6) with the second organ absent (it may be that organ), -ln(1/6)
        // with it contoured (it is not).
        let organ = t(&[1.0, 0.0], &[1, 2, 1, 1, 1]);
        let none = t(&[0.0, 0.0], &[1, 2, 1, 1, 1]);
        let ce = |target: &Tensor, present: &Tensor| {
            let (_, lo, lb) = marginal_softmax(&x, present);
            value(&marginal_softmax_ce(&lo, &lb, target))
        };
        assert!((ce(&organ, &first) + (2.0f64 / 6.0).ln()).abs() < 1e-12);
        assert!((ce(&none, &first) + (4.0f64 / 6.0).ln()).abs() < 1e-12);
        assert!((ce(&none, &both) + (1.0f64 / 6.0).ln()).abs() < 1e-12);
        // The mean over voxels: both voxels together.
        let x2 = Tensor::cat(&[x.shallow_clone(), x.shallow_clone()], 2);
        let y2 = Tensor::cat(&[organ, none], 2);
        let (_, lo, lb) = marginal_softmax(&x2, &first);
        let want = -((2.0f64 / 6.0).ln() + (4.0f64 / 6.0).ln()) / 2.0;
        assert!((value(&marginal_softmax_ce(&lo, &lb, &y2)) - want).abs() < 1e-12);
    }

    /// The softmax's arg max (background logit 0) is what the per-organ heads decode:
    /// sigmoid(l) > 0.5 and the largest wins, so a softmax-trained model needs no other
    /// decoding.
    #[test]
    fn the_softmax_arg_max_is_the_per_organ_decoding() {
        tch::manual_seed(11);
        let x = Tensor::randn([1, 3, 4, 5, 6], (Kind::Double, Device::Cpu)) * 3.0;
        let full = Tensor::cat(&[x.zeros_like().narrow(1, 0, 1), x.shallow_clone()], 1);
        let arg: Vec<i64> = Vec::try_from(full.argmax(1, false).view([-1])).unwrap();
        let maps: Vec<Vec<f32>> = (0..3)
            .map(|c| {
                Vec::try_from(x.get(0).get(c).sigmoid().view([-1]).to_kind(Kind::Float)).unwrap()
            })
            .collect();
        let decoded = crate::tiling::labels_from_probabilities(&maps, 0.5);
        let arg: Vec<u8> = arg.iter().map(|&a| a as u8).collect();
        assert_eq!(decoded, arg);
        assert!(arg.contains(&0) && arg.contains(&3));
    }
}

//! Per-organ decision levels chosen on the validation cases (`infer.levels: validated`).
//!
//! A head's maps become organs at a level: an SDM head's organ is where its map is below
//! 0 (the exact Heaviside), a probability head's where its probability is above 0.5. A
//! trained map can be biased per organ (on OpenKBP the SDM-only head's larynx spans twice
//! the larynx's slices, its esophagus is never below 0), and the held-out validation cases
//! say by how much. At the end of training [`LevelSearch`] scores, per organ, every level
//! of a fixed grid by the mean Dice over the validation cases that contour the organ, the
//! other organs kept at the fixed level, and keeps the best (the fixed level on a tie), as
//! nnU-Net chooses its post-processing on validation predictions. Where several organs
//! claim a voxel, a [`Contest`] rule decides which one it goes to.

use crate::losses::Head;

/// Which organ a voxel goes to when several claim it at their levels. With one level for
/// every organ both rules are the fixed decoder (the organ furthest inside wins).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Contest {
    /// The organ furthest past its own level. An organ whose level moved outward takes
    /// voxels the fixed decoder gives another organ: levels searched one organ at a time
    /// then fight when decoded together (OpenKBP, SDM-only head, seed 42: the brainstem's
    /// level took the left parotid). The rule of the levels `train` chooses.
    #[default]
    OwnLevel,
    /// The fixed decoder's organ for a voxel keeps it while it claims it at its own level
    /// (and leaves it to the background otherwise); a voxel the fixed decoder leaves to the
    /// background goes to the organ furthest inside at the fixed level among those that
    /// claim it at their own levels. A level moves its organ out only into voxels no organ
    /// has at the fixed level: each organ's Dice decoded together is the one its search
    /// scored, but where two organs moved out into the same voxels.
    FixedOwner,
}

impl Contest {
    /// Whether this is the rule of models that do not name one (`OwnLevel`).
    pub fn is_own_level(&self) -> bool {
        *self == Contest::OwnLevel
    }
}

/// The level every organ decides at unless calibrated: 0 for SDMs, 0.5 for probabilities.
pub fn fixed_level(head: Head, sdm_level: f32) -> f32 {
    match head {
        Head::Sdm => sdm_level,
        Head::Probability => 0.5,
    }
}

/// The levels a search tries: SDMs from -0.5 to 0.5 in steps of 0.01 (with 20 mm bands,
/// 0.01 is 0.2 mm and the range +-10 mm; with the paper's maps, normalised by distances of
/// about 50-100 mm, 0.01 is 0.5-1 mm); probabilities from 0.05 to 0.95 in steps of 0.05.
pub fn grid(head: Head) -> Vec<f32> {
    match head {
        Head::Sdm => (-50..=50).map(|i| i as f32 / 100.0).collect(),
        Head::Probability => (1..=19).map(|i| i as f32 / 20.0).collect(),
    }
}

/// Organ labels (1..K, 0 background) from per-organ maps, organ `k` claiming a voxel at
/// `levels[k]`: an SDM organ where `map < level`, a probability organ where `map > level`;
/// a voxel several organs claim goes to the winner of `contest` (the lower organ on a tie).
pub fn decode(head: Head, maps: &[Vec<f32>], levels: &[f32], contest: Contest) -> Vec<u8> {
    let n = maps.first().map(Vec::len).unwrap_or(0);
    let sign = sign_of(head);
    let fixed = fixed_level(head, 0.0);
    // The organ (1..K) furthest inside among those with a positive `margin(k)` (0: none),
    // the lower organ on a tie.
    let furthest = |margin: &dyn Fn(usize) -> f32, score: &dyn Fn(usize) -> f32| {
        let mut best = (0u8, f32::NEG_INFINITY);
        for k in 0..maps.len().min(levels.len()) {
            if margin(k) > 0.0 && score(k) > best.1 {
                best = ((k + 1) as u8, score(k));
            }
        }
        best.0
    };
    (0..n)
        .map(|i| {
            let own = |k: usize| sign * (maps[k][i] - levels[k]);
            let at_fixed = |k: usize| sign * (maps[k][i] - fixed);
            match contest {
                Contest::OwnLevel => furthest(&own, &own),
                Contest::FixedOwner => match furthest(&at_fixed, &at_fixed) {
                    0 => furthest(&own, &at_fixed),
                    o if own(o as usize - 1) > 0.0 => o,
                    _ => 0,
                },
            }
        })
        .collect()
}

/// Margins are "how far inside": `sign * (map - level)`, level - map for SDMs, map - level
/// for probabilities.
fn sign_of(head: Head) -> f32 {
    match head {
        Head::Sdm => -1.0,
        Head::Probability => 1.0,
    }
}

/// The least gain in mean validation Dice for which `infer` decides an organ at its
/// searched level rather than the fixed one: a smaller gain is what one case moves (on
/// OpenKBP, seed 7, the SDM-only head's esophagus: 0.0014 over 7 cases at level 0.33, which
/// on the test CTs put stray voxels 19 cm away).
pub const MIN_GAIN: f64 = 0.01;

/// One organ's result of a search.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OrganLevel {
    /// The level chosen (the fixed level where no validation case contours the organ).
    pub level: f32,
    /// Mean validation Dice at the chosen level, and at the fixed level.
    pub dice: Option<f64>,
    pub dice_fixed: Option<f64>,
    /// Validation cases that contour the organ.
    pub cases: usize,
}

impl OrganLevel {
    /// The level to decide at: the searched one where it gains at least [`MIN_GAIN`] mean
    /// validation Dice over `fixed`, else `fixed`.
    pub fn adopted(&self, fixed: f32) -> f32 {
        match (self.dice, self.dice_fixed) {
            (Some(d), Some(f)) if d - f >= MIN_GAIN => self.level,
            _ => fixed,
        }
    }
}

/// Scores every level of [`grid`] per organ over validation cases, one case at a time.
#[derive(Debug, Clone)]
pub struct LevelSearch {
    head: Head,
    contest: Contest,
    fixed: f32,
    grid: Vec<f32>,
    /// Per organ, per level: the sum of the cases' Dice.
    sums: Vec<Vec<f64>>,
    cases: Vec<usize>,
}

impl LevelSearch {
    pub fn new(head: Head, organs: usize, contest: Contest) -> Self {
        let grid = grid(head);
        LevelSearch {
            head,
            contest,
            fixed: fixed_level(head, 0.0),
            sums: vec![vec![0.0; grid.len()]; organs],
            cases: vec![0; organs],
            grid,
        }
    }

    /// Adds one case: its maps (one per organ), its reference labels (organ `k` is
    /// `k + 1`) and which organs it contours (an organ it does not is not scored).
    pub fn add_case(&mut self, maps: &[Vec<f32>], labels: &[u8], present: &[bool]) {
        let k = self.sums.len().min(maps.len());
        let n = maps.first().map(Vec::len).unwrap_or(0).min(labels.len());
        let g = self.grid.len();
        for o in 0..k {
            if !present.get(o).copied().unwrap_or(false) {
                continue;
            }
            let want = (o + 1) as u8;
            let reference = labels[..n].iter().filter(|&&l| l == want).count();
            // Per voxel, the levels at which organ o wins it form a half-line (or nothing),
            // the others at the fixed level. Margins are "how far inside" (sign * (map -
            // level), as `decode`); a_j = sign * (m_j - fixed) is organ j's at the fixed
            // level, and the others claiming the voxel are those with a_j > 0.
            // - OwnLevel: o wins at level t when sign * (m_o - t) > c, c = max(0, a_j): for
            //   SDMs (sign -1) t > m_o + c, for probabilities (sign +1) t < m_o - c, so t
            //   beyond d = m_o - sign * c.
            // - FixedOwner: o wins when it claims the voxel (t beyond d = m_o) unless the
            //   fixed decoder gives the voxel another organ (the j of the largest a_j > 0,
            //   the lower on a tie), when o wins it at no level.
            // Each voxel is recorded at `at_or_past`, the first grid index past d, and counts
            // for a suffix (SDMs) or prefix (probabilities). Past `edge` (the grid's last
            // level for SDMs, its first for probabilities) o wins no voxel whatever the
            // others say.
            let sign = sign_of(self.head);
            let edge = match self.head {
                Head::Sdm => self.grid[g - 1],
                Head::Probability => self.grid[0],
            };
            let mut pred = vec![0usize; g + 1];
            let mut inter = vec![0usize; g + 1];
            for i in 0..n {
                let m = maps[o][i];
                if sign * (m - edge) <= 0.0 {
                    continue;
                }
                let d = match self.contest {
                    Contest::OwnLevel => {
                        let mut c = 0.0f32;
                        for (j, mj) in maps.iter().enumerate().take(k) {
                            if j != o {
                                c = c.max(sign * (mj[i] - self.fixed));
                            }
                        }
                        m - sign * c
                    }
                    Contest::FixedOwner => {
                        // The fixed decoder's organ of the voxel: when another, o gets it
                        // at no level.
                        let mut owner = (usize::MAX, 0.0f32);
                        for (j, mj) in maps.iter().enumerate().take(k) {
                            let a = sign * (mj[i] - self.fixed);
                            if a > owner.1 {
                                owner = (j, a);
                            }
                        }
                        if owner.0 != usize::MAX && owner.0 != o {
                            continue;
                        }
                        m
                    }
                };
                // SDMs: the first index with level > d (counted from there up);
                // probabilities: the first with level >= d (counted below it).
                let at_or_past = match self.head {
                    Head::Sdm => self.grid.partition_point(|&t| t <= d),
                    Head::Probability => self.grid.partition_point(|&t| t < d),
                };
                pred[at_or_past] += 1;
                if labels[i] == want {
                    inter[at_or_past] += 1;
                }
            }
            // Cumulate: SDM counts run from their index up, probability counts from below
            // theirs down.
            let (mut p, mut q) = (0usize, 0usize);
            let mut at = vec![(0usize, 0usize); g];
            match self.head {
                Head::Sdm => {
                    for t in 0..g {
                        p += pred[t];
                        q += inter[t];
                        at[t] = (p, q);
                    }
                }
                Head::Probability => {
                    for t in (0..g).rev() {
                        p += pred[t + 1];
                        q += inter[t + 1];
                        at[t] = (p, q);
                    }
                }
            }
            for (s, &(a, i)) in self.sums[o].iter_mut().zip(&at) {
                *s += if a + reference == 0 {
                    1.0
                } else {
                    2.0 * i as f64 / (a + reference) as f64
                };
            }
            self.cases[o] += 1;
        }
    }

    /// Per organ, the level of the best mean Dice (the fixed level on a tie; the nearest
    /// to it between other ties).
    pub fn best(&self) -> Vec<OrganLevel> {
        let fixed_at = self
            .grid
            .iter()
            .position(|&t| t == self.fixed)
            .unwrap_or(self.grid.len() / 2);
        self.sums
            .iter()
            .zip(&self.cases)
            .map(|(sums, &n)| {
                if n == 0 {
                    return OrganLevel {
                        level: self.fixed,
                        dice: None,
                        dice_fixed: None,
                        cases: 0,
                    };
                }
                let mut best = fixed_at;
                for (t, &s) in sums.iter().enumerate() {
                    let better = s > sums[best]
                        || (s == sums[best] && t.abs_diff(fixed_at) < best.abs_diff(fixed_at));
                    if better {
                        best = t;
                    }
                }
                OrganLevel {
                    level: self.grid[best],
                    dice: Some(sums[best] / n as f64),
                    dice_fixed: Some(sums[fixed_at] / n as f64),
                    cases: n,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Dice of organ `o` decoded with `levels`, the slow way.
    fn dice_of(
        head: Head,
        contest: Contest,
        maps: &[Vec<f32>],
        labels: &[u8],
        levels: &[f32],
        o: usize,
    ) -> f64 {
        let pred = decode(head, maps, levels, contest);
        let want = (o + 1) as u8;
        let (mut i, mut a, mut b) = (0, 0, 0);
        for (&p, &r) in pred.iter().zip(labels) {
            i += (p == want && r == want) as usize;
            a += (p == want) as usize;
            b += (r == want) as usize;
        }
        if a + b == 0 {
            1.0
        } else {
            2.0 * i as f64 / (a + b) as f64
        }
    }

    #[test]
    fn uniform_levels_decode_as_the_fixed_decoders() {
        let a = vec![-0.5, 0.1, -0.1, 0.3];
        let b = vec![-0.2, -0.3, 0.4, 0.01];
        let maps = [a, b];
        let p = [vec![0.9, 0.2, 0.55, 0.1], vec![0.6, 0.4, 0.7, 0.3]];
        for c in [Contest::OwnLevel, Contest::FixedOwner] {
            assert_eq!(decode(Head::Sdm, &maps, &[0.0, 0.0], c), vec![1, 2, 1, 0]);
            assert_eq!(decode(Head::Sdm, &maps, &[0.02, 0.02], c), vec![1, 2, 1, 2]);
            assert_eq!(
                decode(Head::Probability, &p, &[0.5, 0.5], c),
                vec![1, 0, 2, 0]
            );
        }
        // Per-organ levels, own-level contest: organ 2 at 0.35 takes the voxels of 0.4 and
        // 0.7 (margins 0.05 and 0.35 against organ 1's -0.3 and 0.05); at 0.35 an SDM
        // organ 2 takes the first voxel too (0.55 past its level against organ 1's 0.5).
        assert_eq!(
            decode(Head::Probability, &p, &[0.5, 0.35], Contest::OwnLevel),
            vec![1, 2, 2, 0]
        );
        assert_eq!(
            decode(Head::Sdm, &maps, &[0.0, 0.35], Contest::OwnLevel),
            vec![2, 2, 1, 2]
        );
        // Fixed-owner contest: organ 2's level only adds the voxels no organ has at the
        // fixed level (the probability 0.4, the SDM 0.01); the first voxel stays organ 1's
        // (-0.5 is further inside than -0.2).
        assert_eq!(
            decode(Head::Probability, &p, &[0.5, 0.35], Contest::FixedOwner),
            vec![1, 2, 2, 0]
        );
        assert_eq!(
            decode(Head::Sdm, &maps, &[0.0, 0.35], Contest::FixedOwner),
            vec![1, 2, 1, 2]
        );
    }

    /// Two organs' levels searched one at a time, then decoded together (OpenKBP's SDM-only
    /// head, seed 42, in small): organ 1 drops a false-positive blob by moving its level in
    /// (-0.10), organ 2, biased outward, reaches its organ by moving out (+0.09). Under the
    /// own-level contest organ 2 then takes organ 1's edge, which its search (organ 1 at
    /// the fixed level, 0.15 inside there) never saw it win; under the fixed-owner contest
    /// both decode as searched.
    #[test]
    fn levels_searched_one_at_a_time_fight_only_under_the_own_level_contest() {
        // Organ 1: voxels 0..10; organ 2: 10..20; background 20..30.
        let m1: Vec<f32> = (0..30)
            .map(|i| match i {
                0..5 => -0.2,
                5..10 => -0.15,
                20..23 => -0.095,
                _ => 0.3,
            })
            .collect();
        let m2: Vec<f32> = (0..30)
            .map(|i| match i {
                5..10 => 0.02,
                10..20 => 0.085,
                _ => 0.3,
            })
            .collect();
        let labels: Vec<u8> = (0..30)
            .map(|i| match i {
                0..10 => 1,
                10..20 => 2,
                _ => 0,
            })
            .collect();
        let maps = [m1, m2];
        for contest in [Contest::OwnLevel, Contest::FixedOwner] {
            let mut s = LevelSearch::new(Head::Sdm, 2, contest);
            s.add_case(&maps, &labels, &[true, true]);
            let best = s.best();
            let levels = [best[0].level, best[1].level];
            assert!((levels[0] + 0.10).abs() < 1e-6, "{contest:?}: {best:?}");
            assert!((levels[1] - 0.09).abs() < 1e-6, "{contest:?}: {best:?}");
            assert_eq!(best[0].dice, Some(1.0));
            assert_eq!(best[1].dice, Some(1.0));
            let decoded = decode(Head::Sdm, &maps, &levels, contest);
            match contest {
                Contest::OwnLevel => {
                    assert_eq!(decoded[5..10], [2; 5], "organ 2 takes organ 1's edge");
                    assert!(dice_of(Head::Sdm, contest, &maps, &labels, &levels, 0) < 0.7);
                }
                Contest::FixedOwner => assert_eq!(decoded, labels),
            }
        }
    }

    /// The search's Dice at every level equals decoding with that level, organ by organ,
    /// on random maps with three organs (checked against the slow way, both heads).
    #[test]
    fn the_search_scores_each_level_as_decoding_would() {
        let mut state = 12345u64;
        let mut rnd = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) as f64 / (1u64 << 31) as f64) as f32
        };
        for head in [Head::Sdm, Head::Probability] {
            let n = 400;
            let maps: Vec<Vec<f32>> = (0..3)
                .map(|_| {
                    (0..n)
                        .map(|_| match head {
                            Head::Sdm => (rnd() - 0.5) * 0.6,
                            Head::Probability => rnd(),
                        })
                        .collect()
                })
                .collect();
            let labels: Vec<u8> = (0..n).map(|_| (rnd() * 4.0) as u8 % 4).collect();
            let present = [true, true, false];
            for contest in [Contest::OwnLevel, Contest::FixedOwner] {
                let mut s = LevelSearch::new(head, 3, contest);
                s.add_case(&maps, &labels, &present);
                s.add_case(&maps, &labels, &present);
                let fixed = fixed_level(head, 0.0);
                for o in 0..2 {
                    for (t, &level) in grid(head).iter().enumerate() {
                        let mut levels = vec![fixed; 3];
                        levels[o] = level;
                        let want = dice_of(head, contest, &maps, &labels, &levels, o);
                        let got = s.sums[o][t] / 2.0;
                        assert!(
                            (got - want).abs() < 1e-12,
                            "{head:?} {contest:?} organ {o} level {level}: {got} vs {want}"
                        );
                    }
                }
                let best = s.best();
                assert_eq!(best[2].cases, 0, "an organ no case contours is not scored");
                assert_eq!(best[2].level, fixed);
                for b in &best[..2] {
                    assert_eq!(b.cases, 2);
                    assert!(b.dice >= b.dice_fixed);
                }
            }
        }
    }

    /// An SDM head whose organ map is biased outward by 0.05: the search moves the level
    /// to take it back, and decoding there recovers the organ exactly.
    #[test]
    fn a_biased_map_gets_its_level_back() {
        // A 1-D "organ" of 10 voxels in 40; its map is the true SDM (0.01 per voxel) + 0.05.
        let truth: Vec<f32> = (0..40)
            .map(|i| {
                let d = if (15..25).contains(&i) {
                    -(((i - 15).min(24 - i)) as f32 + 0.5)
                } else {
                    ((15 - i).max(i - 24)) as f32 - 0.5
                };
                d * 0.01 + 0.05
            })
            .collect();
        let labels: Vec<u8> = (0..40).map(|i| (15..25).contains(&i) as u8).collect();
        let mut s = LevelSearch::new(Head::Sdm, 1, Contest::OwnLevel);
        s.add_case(std::slice::from_ref(&truth), &labels, &[true]);
        let best = s.best()[0];
        assert_eq!(best.dice_fixed, Some(0.0));
        assert_eq!(best.dice, Some(1.0));
        assert!((best.level - 0.05).abs() < 1e-6, "{best:?}");
        assert_eq!(best.adopted(0.0), best.level);
        assert_eq!(
            decode(Head::Sdm, &[truth], &[best.level], Contest::OwnLevel),
            labels
        );
        // A gain below MIN_GAIN keeps the fixed level.
        let slight = OrganLevel {
            dice: Some(0.505),
            dice_fixed: Some(0.5),
            ..best
        };
        assert_eq!(slight.adopted(0.0), 0.0);
    }
}

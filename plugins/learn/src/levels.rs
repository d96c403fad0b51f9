//! Per-organ decision levels chosen on the validation cases (`infer.levels: validated`).
//!
//! A head's maps become organs at a level: an SDM head's organ is where its map is below
//! 0 (the exact Heaviside), a probability head's where its probability is above 0.5. A
//! trained map can be biased per organ (on OpenKBP the SDM-only head's larynx spans twice
//! the larynx's slices, its esophagus is never below 0), and the held-out validation cases
//! say by how much. At the end of training [`LevelSearch`] scores, per organ, every level
//! of a fixed grid by the mean Dice over the validation cases that contour the organ, the
//! other organs kept at the fixed level, and keeps the best (the fixed level on a tie), as
//! nnU-Net chooses its post-processing on validation predictions. With per-organ levels a
//! contested voxel goes to the organ furthest past its own level.

use crate::losses::Head;

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

/// Organ labels (1..K, 0 background) from per-organ maps, organ `k` deciding at
/// `levels[k]`: an SDM organ where `map < level`, a probability organ where
/// `map > level`; a voxel several organs claim goes to the one furthest past its level.
pub fn decode(head: Head, maps: &[Vec<f32>], levels: &[f32]) -> Vec<u8> {
    let n = maps.first().map(Vec::len).unwrap_or(0);
    // Margins are "how far inside": level - map for SDMs, map - level for probabilities.
    let sign = match head {
        Head::Sdm => -1.0f32,
        Head::Probability => 1.0,
    };
    (0..n)
        .map(|i| {
            let mut best = (0u8, 0.0f32);
            for (k, (m, &l)) in maps.iter().zip(levels).enumerate() {
                let margin = sign * (m[i] - l);
                if margin > best.1 {
                    best = ((k + 1) as u8, margin);
                }
            }
            best.0
        })
        .collect()
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
    fixed: f32,
    grid: Vec<f32>,
    /// Per organ, per level: the sum of the cases' Dice.
    sums: Vec<Vec<f64>>,
    cases: Vec<usize>,
}

impl LevelSearch {
    pub fn new(head: Head, organs: usize) -> Self {
        let grid = grid(head);
        LevelSearch {
            head,
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
            // Per voxel, the levels at which organ o wins it form a half-line. With margins
            // "how far inside" (sign * (map - level), as `decode`), o wins at level t when
            // sign * (m_o - t) > c, c = max(0, the others' margins at their fixed level):
            // for SDMs (sign -1) t > m_o + c, for probabilities (sign +1) t < m_o - c, so
            // t beyond d = m_o - sign * c. Each voxel is recorded at `at_or_past`, the first
            // grid index past d, and counts for a suffix (SDMs) or prefix (probabilities).
            // Past `edge` (the grid's last level for SDMs, its first for probabilities) o
            // wins no voxel whatever the others say.
            let (sign, edge) = match self.head {
                Head::Sdm => (-1.0f32, self.grid[g - 1]),
                Head::Probability => (1.0, self.grid[0]),
            };
            let mut pred = vec![0usize; g + 1];
            let mut inter = vec![0usize; g + 1];
            for i in 0..n {
                let m = maps[o][i];
                if sign * (m - edge) <= 0.0 {
                    continue;
                }
                let mut c = 0.0f32;
                for (j, mj) in maps.iter().enumerate().take(k) {
                    if j != o {
                        c = c.max(sign * (mj[i] - self.fixed));
                    }
                }
                let d = m - sign * c;
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
    fn dice_of(head: Head, maps: &[Vec<f32>], labels: &[u8], levels: &[f32], o: usize) -> f64 {
        let pred = decode(head, maps, levels);
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
        assert_eq!(
            decode(Head::Sdm, &maps, &[0.0, 0.0]),
            crate::tiling::labels_from_sdms(&maps, 0.0)
        );
        assert_eq!(
            decode(Head::Sdm, &maps, &[0.02, 0.02]),
            crate::tiling::labels_from_sdms(&maps, 0.02)
        );
        let p = [vec![0.9, 0.2, 0.55, 0.1], vec![0.6, 0.4, 0.7, 0.3]];
        assert_eq!(
            decode(Head::Probability, &p, &[0.5, 0.5]),
            crate::tiling::labels_from_probabilities(&p, 0.5)
        );
        // Per-organ levels: organ 2 at 0.35 takes the voxels of 0.4 and 0.7 (margins 0.05
        // and 0.35 against organ 1's -0.3 and 0.05); at 0.35 an SDM organ 2 takes the
        // first voxel too (0.55 past its level against organ 1's 0.5).
        assert_eq!(
            decode(Head::Probability, &p, &[0.5, 0.35]),
            vec![1, 2, 2, 0]
        );
        assert_eq!(decode(Head::Sdm, &maps, &[0.0, 0.35]), vec![2, 2, 1, 2]);
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
            let mut s = LevelSearch::new(head, 3);
            s.add_case(&maps, &labels, &present);
            s.add_case(&maps, &labels, &present);
            let fixed = fixed_level(head, 0.0);
            for o in 0..2 {
                for (t, &level) in grid(head).iter().enumerate() {
                    let mut levels = vec![fixed; 3];
                    levels[o] = level;
                    let want = dice_of(head, &maps, &labels, &levels, o);
                    let got = s.sums[o][t] / 2.0;
                    assert!(
                        (got - want).abs() < 1e-12,
                        "{head:?} organ {o} level {level}: {got} vs {want}"
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
        let mut s = LevelSearch::new(Head::Sdm, 1);
        s.add_case(std::slice::from_ref(&truth), &labels, &[true]);
        let best = s.best()[0];
        assert_eq!(best.dice_fixed, Some(0.0));
        assert_eq!(best.dice, Some(1.0));
        assert!((best.level - 0.05).abs() < 1e-6, "{best:?}");
        assert_eq!(best.adopted(0.0), best.level);
        assert_eq!(decode(Head::Sdm, &[truth], &[best.level]), labels);
        // A gain below MIN_GAIN keeps the fixed level.
        let slight = OrganLevel {
            dice: Some(0.505),
            dice_fixed: Some(0.5),
            ..best
        };
        assert_eq!(slight.adopted(0.0), 0.0);
    }
}

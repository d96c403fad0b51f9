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
    let k = maps.len().min(levels.len());
    let mut voxel = vec![0.0f32; k];
    (0..n)
        .map(|i| {
            for (v, m) in voxel.iter_mut().zip(maps) {
                *v = m[i];
            }
            decide(head, &voxel, levels, contest)
        })
        .collect()
}

/// [`decode`] of one voxel: `v[k]` is organ `k`'s map there.
fn decide(head: Head, v: &[f32], levels: &[f32], contest: Contest) -> u8 {
    let sign = sign_of(head);
    let fixed = fixed_level(head, 0.0);
    let own = |k: usize| sign * (v[k] - levels[k]);
    let at_fixed = |k: usize| sign * (v[k] - fixed);
    // The organ (1..K) furthest inside by `score` among those with a positive `margin(k)`
    // (0: none), the lower organ on a tie.
    let furthest = |margin: &dyn Fn(usize) -> f32, score: &dyn Fn(usize) -> f32| {
        let mut best = (0u8, f32::NEG_INFINITY);
        for k in 0..v.len().min(levels.len()) {
            if margin(k) > 0.0 && score(k) > best.1 {
                best = ((k + 1) as u8, score(k));
            }
        }
        best.0
    };
    match contest {
        Contest::OwnLevel => furthest(&own, &own),
        Contest::FixedOwner => match furthest(&at_fixed, &at_fixed) {
            0 => furthest(&own, &at_fixed),
            o if own(o as usize - 1) > 0.0 => o,
            _ => 0,
        },
    }
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
    /// Chosen by a [`JointSearch`], which took each move only where it gained at least
    /// [`MIN_GAIN`] on all organs together: the level is adopted as it is (an organ may
    /// move to give voxels to another, its own Dice unchanged).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub joint: bool,
    /// What `infer`'s `largest_component: validated` keeps of the organ: its connected
    /// components of at least this share of the largest one's voxels (1: the largest
    /// alone, 0: all), as chosen on [`JointSearch::components`]; `None`: not chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component_share: Option<f32>,
    /// Scored keeping only the organ's largest connected component, as `infer`'s
    /// `largest_component: true` decodes ([`JointSearch::largest_component`]): `dice` and
    /// `dice_fixed` are then that decoder's.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub largest_component: bool,
}

impl OrganLevel {
    /// The level to decide at: the searched one where it gains at least [`MIN_GAIN`] mean
    /// validation Dice over `fixed` (or was chosen jointly), else `fixed`.
    pub fn adopted(&self, fixed: f32) -> f32 {
        if self.joint {
            return self.level;
        }
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
                        joint: false,
                        component_share: None,
                        largest_component: false,
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
                    joint: false,
                    component_share: None,
                    largest_component: false,
                }
            })
            .collect()
    }
}

/// Rounds of a [`JointSearch`] at most (each organ once per round).
pub const JOINT_ROUNDS: usize = 4;

/// Levels searched together: coordinate ascent on the mean validation Dice of all organs.
/// Each organ in turn takes the level of the grid that scores best with the others at
/// their current levels, counting what its level takes from or gives to the others, and
/// keeps it only where that gains at least [`MIN_GAIN`]; rounds repeat until no organ
/// moves. Keeps, per validation case, the voxels some organ could claim at a level of the
/// grid (every organ's map there), so each round is a pass over memory, not the network.
#[derive(Debug, Clone)]
pub struct JointSearch {
    head: Head,
    contest: Contest,
    fixed: f32,
    grid: Vec<f32>,
    organs: usize,
    cases: Vec<KeptCase>,
    /// Score each organ's levels keeping only its largest connected component.
    largest: bool,
}

#[derive(Debug, Clone)]
struct KeptCase {
    /// Per organ, its reference voxels in the whole case, and whether it is contoured.
    reference: Vec<usize>,
    present: Vec<bool>,
    /// The kept voxels' maps, `organs` values per voxel, their reference labels, and
    /// where they lie in the case's volume (`dims`).
    maps: Vec<f32>,
    labels: Vec<u8>,
    index: Vec<usize>,
    dims: [usize; 3],
}

impl JointSearch {
    pub fn new(head: Head, organs: usize, contest: Contest) -> Self {
        JointSearch {
            head,
            contest,
            fixed: fixed_level(head, 0.0),
            grid: grid(head),
            organs,
            cases: Vec::new(),
            largest: false,
        }
    }

    /// Scores each organ's levels keeping only its largest connected component (6-connected,
    /// the first of equal ones), as `infer`'s `largest_component: true` decodes: stray blobs
    /// that filter removes anyway no longer pull the level inward (OpenKBP's cascade, three
    /// seeds: the Dice head's cord +0.049, the joint head's larynx +0.020). The other
    /// organs' Dice, while one organ's level moves, are counted as decoded (without their
    /// own filter).
    pub fn largest_component(mut self, on: bool) -> Self {
        self.largest = on;
        self
    }

    /// Adds one case: its maps (one per organ), its reference labels (organ `k` is
    /// `k + 1`) and which organs it contours, as a row of voxels (no shape: see
    /// [`JointSearch::add_volume`]).
    pub fn add_case(&mut self, maps: &[Vec<f32>], labels: &[u8], present: &[bool]) {
        let n = maps.first().map(Vec::len).unwrap_or(0).min(labels.len());
        self.add_volume(maps, labels, present, [n, 1, 1]);
    }

    /// Adds one case whose voxels form a volume of `dims` (x fastest), so that
    /// [`JointSearch::components`] can find its connected components.
    pub fn add_volume(
        &mut self,
        maps: &[Vec<f32>],
        labels: &[u8],
        present: &[bool],
        dims: [usize; 3],
    ) {
        let k = self.organs;
        let n = maps
            .first()
            .map(Vec::len)
            .unwrap_or(0)
            .min(labels.len())
            .min(dims.iter().product());
        let sign = sign_of(self.head);
        let edge = match self.head {
            Head::Sdm => self.grid[self.grid.len() - 1],
            Head::Probability => self.grid[0],
        };
        let mut reference = vec![0usize; k];
        let mut kept = KeptCase {
            reference: Vec::new(),
            present: (0..k)
                .map(|o| present.get(o).copied().unwrap_or(false))
                .collect(),
            maps: Vec::new(),
            labels: Vec::new(),
            index: Vec::new(),
            dims,
        };
        for i in 0..n {
            let l = labels[i] as usize;
            if (1..=k).contains(&l) {
                reference[l - 1] += 1;
            }
            // A voxel no organ claims at any level of the grid is background whatever the
            // levels: only its reference label counts (above).
            if maps.iter().take(k).all(|m| sign * (m[i] - edge) <= 0.0) {
                continue;
            }
            kept.maps
                .extend((0..k).map(|o| maps.get(o).map_or(f32::NAN, |m| m[i])));
            kept.labels.push(labels[i]);
            kept.index.push(i);
        }
        kept.reference = reference;
        self.cases.push(kept);
    }

    /// Cases contouring each organ.
    fn contoured(&self) -> Vec<usize> {
        (0..self.organs)
            .map(|o| self.cases.iter().filter(|c| c.present[o]).count())
            .collect()
    }

    /// Per organ, the mean Dice over the cases that contour it, decoded at `levels`.
    pub fn dice_at(&self, levels: &[f32]) -> Vec<Option<f64>> {
        let k = self.organs;
        let mut sums = vec![0.0f64; k];
        for c in &self.cases {
            let (mut pred, mut inter) = (vec![0usize; k], vec![0usize; k]);
            for (v, &l) in c.maps.chunks(k).zip(&c.labels) {
                let w = decide(self.head, v, levels, self.contest) as usize;
                if w > 0 {
                    pred[w - 1] += 1;
                    inter[w - 1] += (l as usize == w) as usize;
                }
            }
            for o in (0..k).filter(|&o| c.present[o]) {
                sums[o] += dice(inter[o], pred[o], c.reference[o]);
            }
        }
        let n = self.contoured();
        (0..k)
            .map(|o| (n[o] > 0).then(|| sums[o] / n[o] as f64))
            .collect()
    }

    /// For organ `o` with the others at `levels`: the objective (the sum over organs of
    /// their mean Dice over the cases that contour them) at each level of the grid.
    pub fn objective(&self, o: usize, levels: &[f32]) -> Vec<f64> {
        self.scores(o, levels, false)
    }

    /// As [`JointSearch::objective`], but organ `o` keeps only its largest connected
    /// component at each level (as [`shapeflow_core::volume::largest_component`]: the
    /// first in scan order of equal ones); the other organs' Dice as decoded. Still one
    /// pass per case: the voxels `o` wins join it in the order of the levels from which it
    /// wins them, connected by union-find, the largest component tracked as they merge.
    pub fn objective_largest(&self, o: usize, levels: &[f32]) -> Vec<f64> {
        self.scores(o, levels, true)
    }

    /// [`JointSearch::objective`], or with `largest` [`JointSearch::objective_largest`].
    fn scores(&self, o: usize, levels: &[f32], largest: bool) -> Vec<f64> {
        let k = self.organs;
        let g = self.grid.len();
        let sign = sign_of(self.head);
        let n_cases = self.contoured();
        let mut total = vec![0.0f64; g];
        for c in &self.cases {
            // Per voxel: `q`, its label (1..K, 0 background) while o does not win it, and
            // from which grid index on (SDMs: up; probabilities: down) o wins it, if ever.
            let mut base_pred = vec![0usize; k + 1];
            let mut base_inter = vec![0usize; k + 1];
            // moved[at][q]: voxels o takes from q from index `at` on; hit: those labelled
            // q; own: those labelled o.
            let mut moved = vec![vec![0usize; k + 1]; g + 1];
            let mut hit = vec![vec![0usize; k + 1]; g + 1];
            let mut own = vec![0usize; g + 1];
            // With `largest`: per grid index, the kept voxels o wins from that index on.
            let mut joins: Vec<Vec<u32>> = vec![Vec::new(); if largest { g + 1 } else { 0 }];
            for (j, (v, &l)) in c.maps.chunks(k).zip(&c.labels).enumerate() {
                let (d, q) = self.switch(v, o, levels, sign);
                base_pred[q] += 1;
                base_inter[q] += (l as usize == q) as usize;
                let Some(d) = d else { continue };
                let at = match self.head {
                    Head::Sdm => self.grid.partition_point(|&t| t <= d),
                    Head::Probability => self.grid.partition_point(|&t| t < d),
                };
                moved[at][q] += 1;
                hit[at][q] += (l as usize == q) as usize;
                own[at] += (l as usize == o + 1) as usize;
                if largest {
                    joins[at].push(j as u32);
                }
            }
            let mut forest = largest.then(|| Forest::new(c, (o + 1) as u8));
            let order: Vec<(usize, usize)> = match self.head {
                // Level index t counts the voxels recorded at indices <= t (SDMs) or
                // > t (probabilities).
                Head::Sdm => (0..g).map(|t| (t, t)).collect(),
                Head::Probability => (0..g).rev().map(|t| (t, t + 1)).collect(),
            };
            let mut m = vec![0usize; k + 1];
            let mut h = vec![0usize; k + 1];
            let mut w = 0usize;
            for (t, idx) in order {
                for q in 0..=k {
                    m[q] += moved[idx][q];
                    h[q] += hit[idx][q];
                }
                w += own[idx];
                let own_counts = match forest.as_mut() {
                    Some(f) => {
                        for &j in &joins[idx] {
                            f.add(j as usize);
                        }
                        f.largest()
                    }
                    None => (m.iter().sum::<usize>(), w),
                };
                let mut score = 0.0;
                for j in (0..k).filter(|&j| c.present[j]) {
                    let (pred, inter) = if j == o {
                        own_counts
                    } else {
                        (base_pred[j + 1] - m[j + 1], base_inter[j + 1] - h[j + 1])
                    };
                    score += dice(inter, pred, c.reference[j]) / n_cases[j] as f64;
                }
                total[t] += score;
            }
        }
        total
    }

    /// For one voxel and organ `o`, the others at `levels`: the first level past which o
    /// wins it (`None`: at no level), and its label while o does not win it.
    fn switch(&self, v: &[f32], o: usize, levels: &[f32], sign: f32) -> (Option<f32>, usize) {
        let k = self.organs;
        let own = |j: usize| sign * (v[j] - levels[j]);
        let at_fixed = |j: usize| sign * (v[j] - self.fixed);
        // The organ furthest inside by `score` among those j != o with `margin(j)` > 0.
        let best_other = |margin: &dyn Fn(usize) -> f32, score: &dyn Fn(usize) -> f32| {
            let mut best: Option<(usize, f32)> = None;
            for j in (0..k).filter(|&j| j != o) {
                if margin(j) > 0.0 && best.is_none_or(|(_, s)| score(j) > s) {
                    best = Some((j, score(j)));
                }
            }
            best
        };
        let label = |b: Option<(usize, f32)>| b.map_or(0, |(j, _)| j + 1);
        match self.contest {
            Contest::OwnLevel => {
                let other = best_other(&own, &own);
                let c = other.map_or(0.0, |(_, s)| s);
                (Some(v[o] - sign * c), label(other))
            }
            Contest::FixedOwner => {
                let mut owner: Option<(usize, f32)> = None;
                for j in 0..k {
                    if at_fixed(j) > 0.0 && owner.is_none_or(|(_, s)| at_fixed(j) > s) {
                        owner = Some((j, at_fixed(j)));
                    }
                }
                match owner {
                    Some((j, _)) if j == o => (Some(v[o]), 0),
                    Some((j, _)) => (None, if own(j) > 0.0 { j + 1 } else { 0 }),
                    None => {
                        let other = best_other(&own, &at_fixed);
                        let beaten = other
                            .is_some_and(|(j, s)| s > at_fixed(o) || (s == at_fixed(o) && j < o));
                        ((!beaten).then_some(v[o]), label(other))
                    }
                }
            }
        }
    }

    /// The levels by coordinate ascent from the fixed level, at most [`JOINT_ROUNDS`]
    /// rounds; per organ its level, its mean Dice there (with the others at theirs) and at
    /// the fixed levels.
    pub fn best(&self) -> Vec<OrganLevel> {
        let k = self.organs;
        let mut levels = vec![self.fixed; k];
        let n = self.contoured();
        for _ in 0..JOINT_ROUNDS {
            let mut moved = false;
            for o in (0..k).filter(|&o| n[o] > 0) {
                let scores = self.scores(o, &levels, self.largest);
                let now = self.grid.iter().position(|&t| t == levels[o]).unwrap_or(0);
                let mut best = now;
                for (t, &s) in scores.iter().enumerate() {
                    if s > scores[best] {
                        best = t;
                    }
                }
                if scores[best] - scores[now] >= MIN_GAIN {
                    levels[o] = self.grid[best];
                    moved = true;
                }
            }
            if !moved {
                break;
            }
        }
        let at = self.reported(&levels);
        let at_fixed = self.reported(&vec![self.fixed; k]);
        (0..k)
            .map(|o| OrganLevel {
                level: levels[o],
                dice: at[o],
                dice_fixed: at_fixed[o],
                cases: n[o],
                joint: true,
                component_share: None,
                largest_component: self.largest,
            })
            .collect()
    }
}

impl JointSearch {
    /// Per organ, the mean Dice the search reports at `levels`: as decoded, or keeping
    /// each organ's largest component where the search scores that way.
    fn reported(&self, levels: &[f32]) -> Vec<Option<f64>> {
        if self.largest {
            self.components(levels)
                .into_iter()
                .map(|c| c.map(|c| c.dice[0]))
                .collect()
        } else {
            self.dice_at(levels)
        }
    }
}

/// The connected components (6-connected) of a growing set of one case's kept voxels, by
/// union-find, with the largest one (the first in scan order of equal ones) at hand.
struct Forest<'a> {
    case: &'a KeptCase,
    organ: u8,
    /// Volume index -> kept position, for voxels added (`u32::MAX`: not added).
    slot: Vec<u32>,
    parent: Vec<u32>,
    /// Per root: its voxels, its first volume index, its voxels labelled `organ`.
    size: Vec<usize>,
    first: Vec<usize>,
    inter: Vec<usize>,
    /// (size, first reversed, root) of every component: the last is the largest.
    ranked: std::collections::BTreeSet<(usize, std::cmp::Reverse<usize>, u32)>,
}

impl<'a> Forest<'a> {
    fn new(case: &'a KeptCase, organ: u8) -> Self {
        let n = case.index.len();
        Forest {
            case,
            organ,
            slot: vec![u32::MAX; case.dims.iter().product()],
            parent: (0..n as u32).collect(),
            size: vec![0; n],
            first: vec![0; n],
            inter: vec![0; n],
            ranked: std::collections::BTreeSet::new(),
        }
    }

    fn find(&mut self, mut j: u32) -> u32 {
        while self.parent[j as usize] != j {
            let up = self.parent[self.parent[j as usize] as usize];
            self.parent[j as usize] = up;
            j = up;
        }
        j
    }

    fn key(&self, r: u32) -> (usize, std::cmp::Reverse<usize>, u32) {
        let r = r as usize;
        (self.size[r], std::cmp::Reverse(self.first[r]), r as u32)
    }

    /// Adds kept voxel `j` and joins it to its added neighbours.
    fn add(&mut self, j: usize) {
        let i = self.case.index[j];
        self.slot[i] = j as u32;
        self.size[j] = 1;
        self.first[j] = i;
        self.inter[j] = usize::from(self.case.labels[j] == self.organ);
        self.ranked.insert(self.key(j as u32));
        let [nx, ny, nz] = self.case.dims;
        let (x, y, z) = (i % nx, (i / nx) % ny, i / (nx * ny));
        let mut neighbours = [usize::MAX; 6];
        if x > 0 {
            neighbours[0] = i - 1;
        }
        if x + 1 < nx {
            neighbours[1] = i + 1;
        }
        if y > 0 {
            neighbours[2] = i - nx;
        }
        if y + 1 < ny {
            neighbours[3] = i + nx;
        }
        if z > 0 {
            neighbours[4] = i - nx * ny;
        }
        if z + 1 < nz {
            neighbours[5] = i + nx * ny;
        }
        for nb in neighbours {
            if nb != usize::MAX && self.slot[nb] != u32::MAX {
                self.union(j as u32, self.slot[nb]);
            }
        }
    }

    fn union(&mut self, a: u32, b: u32) {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra == rb {
            return;
        }
        let (big, small) = if self.size[ra as usize] >= self.size[rb as usize] {
            (ra, rb)
        } else {
            (rb, ra)
        };
        self.ranked.remove(&self.key(big));
        self.ranked.remove(&self.key(small));
        let (b, s) = (big as usize, small as usize);
        self.parent[s] = big;
        self.size[b] += self.size[s];
        self.first[b] = self.first[b].min(self.first[s]);
        self.inter[b] += self.inter[s];
        self.ranked.insert(self.key(big));
    }

    /// The largest component's voxels and those of them labelled the organ (0, 0: none).
    fn largest(&self) -> (usize, usize) {
        self.ranked
            .last()
            .map_or((0, 0), |&(size, _, r)| (size, self.inter[r as usize]))
    }
}

/// The shares of the largest component's voxels a kept component may hold at least, from
/// the largest alone (1) to every component (0): what [`JointSearch::components`] scores.
pub const SHARES: [f32; 6] = [1.0, 0.5, 0.25, 0.1, 0.05, 0.0];

impl JointSearch {
    /// Per organ, its mean Dice over the cases that contour it, decoded at `levels` (under
    /// the search's contest) and keeping only its connected components of at least each
    /// of [`SHARES`] of the largest's voxels (as `infer`'s `largest_component` does); `None`
    /// where no case contours it. Cases added by [`JointSearch::add_case`] are rows of
    /// voxels.
    pub fn components(&self, levels: &[f32]) -> Vec<Option<ComponentScores>> {
        let k = self.organs;
        let mut sums = vec![[0.0f64; SHARES.len()]; k];
        let n = self.contoured();
        for c in &self.cases {
            let mut decoded = vec![0u8; c.dims.iter().product()];
            for (j, &i) in c.index.iter().enumerate() {
                decoded[i] = decide(self.head, &c.maps[j * k..(j + 1) * k], levels, self.contest);
            }
            for o in (0..k).filter(|&o| c.present[o]) {
                let organ = (o + 1) as u8;
                let mask: Vec<bool> = decoded.iter().map(|&l| l == organ).collect();
                let (ids, sizes) = shapeflow_core::volume::component_labels(&mask, c.dims);
                // Per share, which components it keeps (as `infer` would).
                let kept: Vec<Vec<bool>> = SHARES
                    .iter()
                    .map(|&share| shapeflow_core::volume::kept_components(&sizes, share.into()))
                    .collect();
                // Counts over the kept voxels: the others are background at any level.
                let mut inter = [0usize; SHARES.len()];
                let mut pred = [0usize; SHARES.len()];
                for (j, &i) in c.index.iter().enumerate() {
                    if decoded[i] != organ {
                        continue;
                    }
                    let component = ids[i] as usize - 1;
                    let hit = usize::from(c.labels[j] == organ);
                    for (s, keep) in kept.iter().enumerate() {
                        if keep[component] {
                            pred[s] += 1;
                            inter[s] += hit;
                        }
                    }
                }
                for s in 0..SHARES.len() {
                    sums[o][s] += dice(inter[s], pred[s], c.reference[o]);
                }
            }
        }
        (0..k)
            .map(|o| {
                (n[o] > 0).then(|| ComponentScores {
                    dice: sums[o].map(|v| v / n[o] as f64),
                })
            })
            .collect()
    }
}

/// One organ's mean validation Dice keeping its components of at least each of [`SHARES`]
/// of the largest's voxels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ComponentScores {
    pub dice: [f64; SHARES.len()],
}

impl ComponentScores {
    /// The share to keep: the largest component alone unless another share gains at least
    /// [`MIN_GAIN`] mean Dice over it (then the best, the larger share on a tie). Stray
    /// blobs cost HD95 more than they cost Dice; an organ the prediction breaks (the spinal
    /// cord at the shoulders) loses whole stretches to the largest component.
    pub fn chosen(&self) -> f32 {
        let mut best = 0;
        for (s, &d) in self.dice.iter().enumerate() {
            if d > self.dice[best] {
                best = s;
            }
        }
        if self.dice[best] - self.dice[0] >= MIN_GAIN {
            SHARES[best]
        } else {
            SHARES[0]
        }
    }
}

/// Dice from counts; 1 where the organ is neither predicted nor in the reference.
fn dice(inter: usize, pred: usize, reference: usize) -> f64 {
    if pred + reference == 0 {
        1.0
    } else {
        2.0 * inter as f64 / (pred + reference) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Uniform numbers in [0, 1) from a linear congruential generator.
    fn uniform(mut state: u64) -> impl FnMut() -> f32 {
        move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) as f64 / (1u64 << 31) as f64) as f32
        }
    }

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
        let (maps, labels) = two_organs_that_fight();
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
        let mut rnd = uniform(12345u64);
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

    /// Organ 1 (voxels 0..10) with a false-positive blob at 20..23, organ 2 (10..20)
    /// biased outward and flat over organ 1's edge (5..10).
    fn two_organs_that_fight() -> (Vec<Vec<f32>>, Vec<u8>) {
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
        (vec![m1, m2], labels)
    }
    /// Two cases of three organs' random maps over `n` voxels (SDMs with some voxels beyond
    /// every level of the grid) and random labels 0..3.
    fn random_cases(rnd: &mut impl FnMut() -> f32, head: Head, n: usize) -> Vec<Case> {
        (0..2)
            .map(|_| {
                let maps = (0..3)
                    .map(|_| {
                        (0..n)
                            .map(|_| match head {
                                Head::Sdm => (rnd() - 0.4) * 1.4,
                                Head::Probability => rnd(),
                            })
                            .collect()
                    })
                    .collect();
                let labels = (0..n).map(|_| (rnd() * 4.0) as u8 % 4).collect();
                (maps, labels)
            })
            .collect()
    }

    type Case = (Vec<Vec<f32>>, Vec<u8>);

    /// The sum over organs of their mean Dice over the cases that contour them, decoded at
    /// `levels`, the slow way; `filtered`: organ `o` of a volume of `dims` keeps only its
    /// largest component.
    fn summed_dice(
        head: Head,
        contest: Contest,
        cases: &[Case],
        present: &[Vec<bool>],
        levels: &[f32],
        filtered: Option<(usize, [usize; 3])>,
    ) -> f64 {
        let mut total = 0.0;
        for j in 0..3 {
            let organ = (j + 1) as u8;
            let with: Vec<f64> = cases
                .iter()
                .zip(present)
                .filter(|(_, p)| p[j])
                .map(|((maps, labels), _)| {
                    let decoded = decode(head, maps, levels, contest);
                    let mut mask: Vec<bool> = decoded.iter().map(|&l| l == organ).collect();
                    if let Some((_, dims)) = filtered.filter(|f| f.0 == j) {
                        mask = shapeflow_core::volume::largest_component(&mask, dims);
                    }
                    let pred = mask.iter().filter(|&&p| p).count();
                    let inter = mask
                        .iter()
                        .zip(labels)
                        .filter(|(&p, &r)| p && r == organ)
                        .count();
                    let reference = labels.iter().filter(|&&r| r == organ).count();
                    dice(inter, pred, reference)
                })
                .collect();
            total += with.iter().sum::<f64>() / with.len() as f64;
        }
        total
    }

    /// The joint search's objective at every level of one organ, the others at random
    /// levels, equals decoding and summing every organ's mean Dice (both heads, both
    /// contests, three organs, two cases of which one leaves an organ uncontoured).
    #[test]
    fn the_joint_objective_scores_each_level_as_decoding_would() {
        let mut rnd = uniform(99u64);
        for head in [Head::Sdm, Head::Probability] {
            let cases = random_cases(&mut rnd, head, 300);
            let present = [vec![true, true, true], vec![true, false, true]];
            let g = grid(head);
            for contest in [Contest::OwnLevel, Contest::FixedOwner] {
                let mut s = JointSearch::new(head, 3, contest);
                for ((maps, labels), p) in cases.iter().zip(&present) {
                    s.add_case(maps, labels, p);
                }
                let mut levels: Vec<f32> = (0..3)
                    .map(|_| g[(rnd() * g.len() as f32) as usize % g.len()])
                    .collect();
                for o in 0..3 {
                    let got = s.objective(o, &levels);
                    for (t, &level) in g.iter().enumerate().step_by(3) {
                        levels[o] = level;
                        let want = summed_dice(head, contest, &cases, &present, &levels, None);
                        assert!(
                            (got[t] - want).abs() < 1e-9,
                            "{head:?} {contest:?} organ {o} level {level}: {} vs {want}",
                            got[t]
                        );
                    }
                }
                // Coordinate ascent never ends below where it started, and reports the
                // Dice of decoding at its levels.
                let best = s.best();
                let levels: Vec<f32> = best.iter().map(|b| b.level).collect();
                let (at, fixed) = (s.dice_at(&levels), s.dice_at(&[fixed_level(head, 0.0); 3]));
                let total = |d: &[Option<f64>]| d.iter().flatten().sum::<f64>();
                assert!(total(&at) >= total(&fixed), "{head:?} {contest:?}");
                for (o, b) in best.iter().enumerate() {
                    assert_eq!(b.dice, at[o]);
                    assert_eq!(b.dice_fixed, fixed[o]);
                    assert!(b.joint && b.adopted(0.3) == b.level);
                }
            }
        }
    }

    /// The own-level conflict above, searched together: organ 2 moves out only as far
    /// as pays with organ 1's loss counted, organ 1 answers, and the organs decoded
    /// together score what the search says (the sum of their Dice above the fixed
    /// level's 1.0 and the fight's 1.47).
    #[test]
    fn levels_searched_together_count_what_they_take_from_each_other() {
        let (maps, labels) = two_organs_that_fight();
        let mut s = JointSearch::new(Head::Sdm, 2, Contest::OwnLevel);
        s.add_case(&maps, &labels, &[true, true]);
        let best = s.best();
        let levels = [best[0].level, best[1].level];
        let d0 = dice_of(Head::Sdm, Contest::OwnLevel, &maps, &labels, &levels, 0);
        let d1 = dice_of(Head::Sdm, Contest::OwnLevel, &maps, &labels, &levels, 1);
        assert_eq!((best[0].dice, best[1].dice), (Some(d0), Some(d1)));
        assert!(d0 + d1 > 1.8, "{best:?}");
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

    /// On a 6 x 5 x 4 volume of random maps (both heads), the Dice `components` gives per
    /// share equals decoding, keeping each organ's components of that share of the largest
    /// (`large_components`), and counting, for every organ a case contours.
    #[test]
    fn component_scores_are_decoding_then_keeping_large_components() {
        let dims = [6, 5, 4];
        let n: usize = dims.iter().product();
        let mut rnd = uniform(7u64);
        for head in [Head::Sdm, Head::Probability] {
            let mut s = JointSearch::new(head, 2, Contest::OwnLevel);
            let mut cases = Vec::new();
            for present in [[true, true], [true, false]] {
                let maps: Vec<Vec<f32>> = (0..2)
                    .map(|_| {
                        (0..n)
                            .map(|_| match head {
                                Head::Sdm => (rnd() - 0.3) * 1.4,
                                Head::Probability => rnd(),
                            })
                            .collect()
                    })
                    .collect();
                let labels: Vec<u8> = (0..n).map(|_| (rnd() * 3.0) as u8 % 3).collect();
                s.add_volume(&maps, &labels, &present, dims);
                cases.push((maps, labels, present));
            }
            let levels = vec![fixed_level(head, 0.0); 2];
            let got = s.components(&levels);
            for (o, g) in got.iter().enumerate() {
                let organ = (o + 1) as u8;
                let g = g.expect("contoured");
                for (t, &share) in SHARES.iter().enumerate() {
                    let (mut sum, mut m) = (0.0, 0);
                    for (maps, labels, _) in cases.iter().filter(|c| c.2[o]) {
                        let decoded = decode(head, maps, &levels, Contest::OwnLevel);
                        let mask: Vec<bool> = decoded.iter().map(|&l| l == organ).collect();
                        let keep =
                            shapeflow_core::volume::large_components(&mask, dims, share.into());
                        let inter = keep.iter().zip(labels).filter(|(&p, &r)| p && r == organ);
                        let pred = keep.iter().filter(|&&p| p).count();
                        let reference = labels.iter().filter(|&&r| r == organ).count();
                        sum += dice(inter.count(), pred, reference);
                        m += 1;
                    }
                    let want = sum / m as f64;
                    assert!(
                        (g.dice[t] - want).abs() < 1e-12,
                        "{head:?} {o} {share}: {g:?}"
                    );
                }
                assert!(
                    g.dice[0] != g.dice[5],
                    "the maps must break the organ into pieces"
                );
            }
        }
    }

    /// On random 7 x 6 x 5 volumes (both heads, both contests, three organs, one case
    /// leaving an organ uncontoured), `objective_largest` at every level equals decoding,
    /// keeping the moving organ's largest component (`largest_component`, the first of
    /// equal ones), and summing every organ's mean Dice; `best` then reports that decoder's
    /// Dice.
    #[test]
    fn the_largest_component_objective_scores_each_level_as_infer_decodes() {
        let dims = [7, 6, 5];
        let n: usize = dims.iter().product();
        let mut rnd = uniform(2027u64);
        for head in [Head::Sdm, Head::Probability] {
            let cases = random_cases(&mut rnd, head, n);
            let present = [vec![true, true, true], vec![true, false, true]];
            let g = grid(head);
            for contest in [Contest::OwnLevel, Contest::FixedOwner] {
                let mut s = JointSearch::new(head, 3, contest).largest_component(true);
                for ((maps, labels), p) in cases.iter().zip(&present) {
                    s.add_volume(maps, labels, p, dims);
                }
                let mut levels: Vec<f32> = (0..3)
                    .map(|_| g[(rnd() * g.len() as f32) as usize % g.len()])
                    .collect();
                for o in 0..3 {
                    let got = s.objective_largest(o, &levels);
                    for (t, &level) in g.iter().enumerate().step_by(2) {
                        levels[o] = level;
                        let filtered = Some((o, dims));
                        let want = summed_dice(head, contest, &cases, &present, &levels, filtered);
                        assert!(
                            (got[t] - want).abs() < 1e-9,
                            "{head:?} {contest:?} organ {o} level {level}: {} vs {want}",
                            got[t]
                        );
                    }
                }
                let best = s.best();
                let levels: Vec<f32> = best.iter().map(|b| b.level).collect();
                let kept = s.components(&levels);
                for (o, b) in best.iter().enumerate() {
                    assert_eq!(b.dice, kept[o].map(|c| c.dice[0]));
                    assert!(b.largest_component && b.joint);
                }
            }
        }
    }

    /// A broken tube keeps all its pieces; an organ with a stray blob keeps its largest.
    #[test]
    fn the_largest_component_is_kept_unless_the_others_are_the_organ() {
        // Voxels in a row: organ 1 at 0..4 and 6..10 (the tube, broken at 4..6 in the
        // prediction, its second piece 3 voxels); organ 2 at 12..20, predicted there and at
        // 24 (a stray blob).
        let labels: Vec<u8> = (0..26)
            .map(|i| match i {
                0..10 => 1,
                12..20 => 2,
                _ => 0,
            })
            .collect();
        let m1: Vec<f32> = (0..26)
            .map(|i| if matches!(i, 0..4 | 7..10) { -0.3 } else { 0.3 })
            .collect();
        let m2: Vec<f32> = (0..26)
            .map(|i| if matches!(i, 12..20 | 24) { -0.3 } else { 0.3 })
            .collect();
        let mut s = JointSearch::new(Head::Sdm, 2, Contest::OwnLevel);
        s.add_volume(&[m1, m2], &labels, &[true, true], [26, 1, 1]);
        let c = s.components(&[0.0, 0.0]);
        let (tube, blob) = (c[0].unwrap(), c[1].unwrap());
        // Shares 1, 0.5, 0.25, 0.1, 0.05, 0: the second piece (3 of 4) from 0.5 on.
        let d = |inter: f64, pred: f64, reference: f64| 2.0 * inter / (pred + reference);
        let want = [
            d(4., 4., 10.),
            d(7., 7., 10.),
            d(7., 7., 10.),
            d(7., 7., 10.),
            d(7., 7., 10.),
            d(7., 7., 10.),
        ];
        for (g, w) in tube.dice.iter().zip(want) {
            assert!((g - w).abs() < 1e-12, "{tube:?}");
        }
        assert_eq!(tube.chosen(), 0.5, "the larger share of the best");
        // The blob is 1 of 8 voxels: kept from share 0.1 on.
        assert_eq!(blob.dice[..3], [1.0; 3]);
        assert!((blob.dice[3] - 16.0 / 17.0).abs() < 1e-12, "{blob:?}");
        assert_eq!(blob.chosen(), 1.0);
        // A gain below MIN_GAIN keeps the largest alone.
        let close = ComponentScores {
            dice: [0.7, 0.705, 0.705, 0.7, 0.7, 0.7],
        };
        assert_eq!(close.chosen(), 1.0);
    }
}

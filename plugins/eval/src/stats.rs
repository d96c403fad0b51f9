//! The Wilcoxon signed-rank test for paired samples (two-sided), as scipy 1.17 computes it by
//! default: zero differences dropped from the ranks; over 50 pairs (zeros counted), the
//! normal approximation; otherwise, without ties or zeros, the exact null distribution;
//! with ties or zeros and at most 13 pairs, the exact permutation distribution of the
//! tie-averaged ranks (all 2^n sign flips); otherwise the normal approximation. The normal
//! approximation has the tie correction and no continuity correction.

/// The result of a test.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Wilcoxon {
    /// min(W+, W-).
    pub statistic: f64,
    pub p_value: f64,
    /// Pairs with a non-zero difference.
    pub n: usize,
    pub exact: bool,
}

/// Upper tail of the standard normal distribution.
fn normal_sf(z: f64) -> f64 {
    0.5 * erfc(z / std::f64::consts::SQRT_2)
}

/// The complementary error function: erf's Taylor series for |x| < 2 (where it converges
/// fast), the Laplace continued fraction beyond.
fn erfc(x: f64) -> f64 {
    if x.abs() < 2.0 {
        // erf by its Taylor series: converges quickly for |x| < 2.
        let mut sum = x;
        let mut term = x;
        let x2 = x * x;
        for n in 1..200 {
            term *= -x2 / n as f64;
            let add = term / (2 * n + 1) as f64;
            sum += add;
            if add.abs() < 1e-17 * sum.abs() {
                break;
            }
        }
        1.0 - 2.0 / std::f64::consts::PI.sqrt() * sum
    } else {
        // Continued fraction for erfc, good for |x| >= 2.
        let ax = x.abs();
        let mut f = 0.0;
        for k in (1..=60).rev() {
            f = (k as f64 / 2.0) / (ax + f);
        }
        let v = (-ax * ax).exp() / std::f64::consts::PI.sqrt() / (ax + f);
        if x > 0.0 {
            v
        } else {
            2.0 - v
        }
    }
}

/// Two-sided Wilcoxon signed-rank test of `x - y`; `None` with fewer than one non-zero pair.
pub fn wilcoxon(x: &[f64], y: &[f64]) -> Option<Wilcoxon> {
    let all: Vec<f64> = x
        .iter()
        .zip(y)
        .map(|(a, b)| a - b)
        .filter(|v| v.is_finite())
        .collect();
    let zeros = all.contains(&0.0);
    // scipy decides between its methods on the pairs, zero differences included.
    let pairs = all.len();
    let mut d: Vec<f64> = all.into_iter().filter(|v| *v != 0.0).collect();
    let n = d.len();
    if n == 0 {
        return None;
    }
    d.sort_by(|a, b| a.abs().total_cmp(&b.abs()));
    // Average ranks of |d|.
    let mut ranks = vec![0.0; n];
    let mut ties = false;
    let mut tie_term = 0.0;
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j + 1 < n && d[j + 1].abs() == d[i].abs() {
            j += 1;
        }
        let r = (i + j) as f64 / 2.0 + 1.0;
        for rk in ranks.iter_mut().take(j + 1).skip(i) {
            *rk = r;
        }
        let t = (j - i + 1) as f64;
        if t > 1.0 {
            ties = true;
            tie_term += t * t * t - t;
        }
        i = j + 1;
    }
    let w_plus: f64 = d
        .iter()
        .zip(&ranks)
        .filter(|(v, _)| **v > 0.0)
        .map(|(_, r)| r)
        .sum();
    let total = (n * (n + 1)) as f64 / 2.0;
    let w_minus = total - w_plus;
    let statistic = w_plus.min(w_minus);
    if (ties || zeros) && pairs <= 13 {
        // Every sign assignment of the (averaged) ranks is equally likely under the null.
        let mut le = 0usize;
        let mut ge = 0usize;
        let eps = 1e-9 * total.max(1.0);
        for mask in 0u32..(1 << n) {
            let w: f64 = (0..n)
                .filter(|&k| mask >> k & 1 == 1)
                .map(|k| ranks[k])
                .sum();
            if w <= w_plus + eps {
                le += 1;
            }
            if w >= w_plus - eps {
                ge += 1;
            }
        }
        let all = (1u64 << n) as f64;
        let p = (2.0 * (le.min(ge) as f64 / all)).min(1.0);
        return Some(Wilcoxon {
            statistic,
            p_value: p,
            n,
            exact: true,
        });
    }
    if !ties && !zeros && pairs <= 50 {
        // Exact: the number of subsets of {1..n} with each rank sum.
        let max = n * (n + 1) / 2;
        let mut counts = vec![0f64; max + 1];
        counts[0] = 1.0;
        for k in 1..=n {
            for s in (k..=max).rev() {
                counts[s] += counts[s - k];
            }
        }
        let all: f64 = counts.iter().sum();
        let w = statistic.round() as usize;
        let lower: f64 = counts[..=w].iter().sum::<f64>() / all;
        return Some(Wilcoxon {
            statistic,
            p_value: (2.0 * lower).min(1.0),
            n,
            exact: true,
        });
    }
    let mean = total / 2.0;
    let var = (n * (n + 1) * (2 * n + 1)) as f64 / 24.0 - tie_term / 48.0;
    let z = (statistic - mean) / var.sqrt();
    Some(Wilcoxon {
        statistic,
        p_value: (2.0 * normal_sf(z.abs())).min(1.0),
        n,
        exact: false,
    })
}

/// Exact two-sided sign-flip test of the mean of `d` against 0: the share of the 2^n sign
/// assignments whose |sum| is at least the observed |sum|. Its units are the values of `d`
/// (e.g. one difference of means per seed), so with n of them it cannot go below 2 / 2^n.
/// `None` for no values or more than 20 (a million assignments).
pub fn sign_flip(d: &[f64]) -> Option<f64> {
    let n = d.len();
    if n == 0 || n > 20 {
        return None;
    }
    let observed = d.iter().sum::<f64>().abs();
    // Sums equal to the observed one up to rounding count as reaching it.
    let tol = 1e-12 * d.iter().map(|v| v.abs()).sum::<f64>().max(1.0);
    let total = 1u32 << n;
    let reached = (0..total)
        .filter(|mask| {
            let s: f64 = d
                .iter()
                .enumerate()
                .map(|(i, v)| if mask >> i & 1 == 1 { -v } else { *v })
                .sum();
            s.abs() >= observed - tol
        })
        .count();
    Some(reached as f64 / total as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Reference values from scipy.stats.wilcoxon (scipy 1.17.1, default arguments).
    #[test]
    fn exact_small_sample_matches_scipy() {
        let x = [0.81, 0.79, 0.85, 0.88, 0.77, 0.83, 0.80, 0.86, 0.84, 0.82];
        let y = [0.78, 0.80, 0.83, 0.85, 0.74, 0.80, 0.81, 0.83, 0.80, 0.79];
        let w = wilcoxon(&x, &y).unwrap();
        assert_eq!(w.statistic, 3.0);
        assert!(w.exact);
        assert!((w.p_value - 0.009765625).abs() < 1e-12, "{w:?}");
    }

    #[test]
    fn normal_approximation_matches_scipy() {
        let x: Vec<f64> = (0..60).map(|i| i as f64 / 59.0).collect();
        let y: Vec<f64> = x
            .iter()
            .enumerate()
            .map(|(i, v)| v + 0.01 * ((i % 7) as f64 - 3.0))
            .collect();
        let w = wilcoxon(&x, &y).unwrap();
        assert_eq!(w.statistic, 639.0);
        assert!(!w.exact);
        assert!((w.p_value - 0.8210057819560691).abs() < 1e-6, "{w:?}");
    }

    #[test]
    fn over_fifty_pairs_is_the_normal_approximation_even_without_ties() {
        let x: Vec<f64> = (0..60).map(|i| i as f64 / 59.0).collect();
        let y: Vec<f64> = x
            .iter()
            .enumerate()
            .map(|(i, v)| v + 0.001 * (((i * 37) % 61) as f64 - 30.0) + 1e-6 * i as f64)
            .collect();
        let w = wilcoxon(&x, &y).unwrap();
        assert_eq!(w.statistic, 894.0);
        assert!(!w.exact);
        // scipy's exact distribution would give 0.8809265455111113.
        assert!((w.p_value - 0.8771416661021247).abs() < 1e-9, "{w:?}");
    }

    #[test]
    fn a_zero_difference_counts_towards_the_permutation_limit() {
        // 14 pairs, one of them equal: 13 non-zero differences, but scipy counts 14 and
        // takes the normal approximation (its permutation distribution would give 0.0028).
        let off = [
            0.013, -0.021, 0.034, 0.045, -0.007, 0.062, 0.071, 0.088, 0.019, 0.026, 0.053, 0.092,
            0.101, 0.0,
        ];
        let x: Vec<f64> = (0..14).map(|i| 0.5 + 0.01 * i as f64).collect();
        let y: Vec<f64> = x.iter().zip(off).map(|(a, o)| a - o).collect();
        let w = wilcoxon(&x, &y).unwrap();
        assert_eq!((w.statistic, w.n, w.exact), (5.0, 13, false));
        assert!((w.p_value - 0.004649433819808542).abs() < 1e-9, "{w:?}");
    }

    #[test]
    fn sign_flip_counts_the_assignments_by_hand() {
        // Sums of +-3 +-1 +-1: 5, 3, 3, 1, -1, -3, -3, -5; |sum| >= 5 twice.
        assert_eq!(sign_flip(&[3.0, 1.0, 1.0]), Some(0.25));
        // Observed |sum| 1: every assignment reaches it.
        assert_eq!(sign_flip(&[3.0, -1.0, -1.0]), Some(1.0));
        // Five seeds all ahead: the smallest p five values allow, 2 / 32.
        assert_eq!(sign_flip(&[0.01, 0.02, 0.03, 0.04, 0.05]), Some(0.0625));
        // Rounding does not hide the observed assignment itself.
        assert_eq!(sign_flip(&[0.1, 0.2, 0.3 - 1e-17]), Some(0.25));
        assert_eq!(sign_flip(&[]), None);
        assert_eq!(sign_flip(&[1.0; 21]), None);
    }

    #[test]
    fn erfc_is_accurate() {
        assert!((erfc(0.5) - 0.4795001221869535).abs() < 1e-14);
        assert!((erfc(2.5) - 0.000_406_952_017_444_959).abs() < 1e-15);
        assert!((erfc(-1.0) - 1.8427007929497148).abs() < 1e-14);
    }
}

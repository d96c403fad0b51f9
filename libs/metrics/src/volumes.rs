//! Contours whose volume is far from the same organ's in the other cases: a structure saved
//! under the wrong name, or a contour of a few slices.

/// A contour much larger or smaller than the same organ's in the other cases.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct VolumeOutlier {
    pub case: String,
    pub cm3: f64,
    /// Its volume over the organ's median volume.
    pub ratio: f64,
}

/// Fewest non-empty contours of an organ for [`volume_outliers`] to judge any of them.
pub const OUTLIER_MIN_CASES: usize = 10;

/// The contours (case, cm³) whose volume is more than 5 times the organ's median or less
/// than a fifth of it, or, for an organ whose volumes spread widely (a tumour), further
/// from it than 5 robust standard deviations of the log volumes (each 1.4826 times the
/// median of |ln(volume / median)|). None with fewer than [`OUTLIER_MIN_CASES`] contours;
/// empty contours (0 cm³) are not judged. OpenKBP's validation `pt_215` and `pt_216` stand
/// out so: a "SpinalCord" of 478 and 543 cm³, the whole back of the neck, against a median
/// of 25.
pub fn volume_outliers(volumes: &[(String, f64)]) -> Vec<VolumeOutlier> {
    let judged: Vec<&(String, f64)> = volumes.iter().filter(|(_, v)| *v > 0.0).collect();
    if judged.len() < OUTLIER_MIN_CASES {
        return Vec::new();
    }
    let middle = median(judged.iter().map(|(_, v)| *v).collect());
    let spread = 1.4826
        * median(
            judged
                .iter()
                .map(|(_, v)| (v / middle).ln().abs())
                .collect(),
        );
    let limit = 5f64.ln().max(5.0 * spread);
    judged
        .into_iter()
        .filter(|(_, v)| (v / middle).ln().abs() > limit)
        .map(|(case, v)| VolumeOutlier {
            case: case.clone(),
            cm3: *v,
            ratio: v / middle,
        })
        .collect()
}

/// The median of a list (numpy's rule).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    crate::percentile_sorted(&v, 50.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The contours far from the median volume, and none where volumes spread widely or
    /// too few cases contour the organ.
    #[test]
    fn contours_far_from_the_median_volume_are_named() {
        let named = |v: &[(String, f64)]| -> Vec<String> {
            volume_outliers(v).into_iter().map(|o| o.case).collect()
        };
        // 20 cords of 20-29.5 cm³, one of 480 (another structure), one of 3 (a few
        // slices), one of 60 (large, within 5 times), one empty (not judged).
        let mut cords: Vec<(String, f64)> = (0..20)
            .map(|i| (format!("c{i}"), 20.0 + i as f64 * 0.5))
            .collect();
        for (case, v) in [
            ("big", 480.0),
            ("small", 3.0),
            ("large", 60.0),
            ("empty", 0.0),
        ] {
            cords.push((case.to_string(), v));
        }
        assert_eq!(named(&cords), ["big", "small"]);
        let big = &volume_outliers(&cords)[0];
        assert!((big.ratio - 480.0 / 25.0).abs() < 1e-9, "{big:?}");
        // Tumours from 1 to 800 cm³: a hundredfold is within their spread.
        let tumours: Vec<(String, f64)> = (0..30)
            .map(|i| (format!("t{i}"), 10f64.powf(i as f64 / 10.0)))
            .collect();
        assert!(named(&tumours).is_empty(), "{:?}", named(&tumours));
        // Too few cases to say what is usual.
        let few = &cords[15..];
        assert!(few.iter().filter(|c| c.1 > 0.0).count() < OUTLIER_MIN_CASES);
        assert!(named(few).is_empty());
    }
}

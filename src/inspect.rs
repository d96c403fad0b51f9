//! `pipeline inspect`: a dataset's fingerprint (what nnU-Net's planning step computes, and
//! more), its problems, and suggested training settings with the reasoning.
//!
//! Works on the cases any source stage yields (`CaseData`); knows no stage by name.

use serde::Serialize;
use shapeflow_core::{CaseData, CaseInfo, VoxelData};
use shapeflow_metrics::percentile_sorted;
pub use shapeflow_metrics::{volume_outliers, VolumeOutlier};
use std::collections::BTreeMap;

/// What one case is made of.
#[derive(Debug, Clone, Serialize)]
pub struct CaseFacts {
    pub id: String,
    pub split: Option<String>,
    /// The error reading it, if it could not be read (the rest is then empty).
    pub error: Option<String>,
    pub dims: [usize; 3],
    pub spacing: [f64; 3],
    /// Where each voxel axis points, nibabel's way: `RAS`, `LPS`, ...
    pub orientation: String,
    /// Per organ: voxels, or `None` when the organ is absent (not contoured).
    pub organ_voxels: Vec<Option<usize>>,
    /// Label values in the file that the organ table does not list, with voxel counts.
    pub unlisted_labels: BTreeMap<String, u64>,
    /// Image channels (0: no image).
    pub channels: usize,
    #[serde(skip)]
    image_hash: Option<String>,
    /// Per channel, sampled intensities inside the organs.
    #[serde(skip)]
    foreground: Vec<Vec<f32>>,
}

/// Most foreground voxels sampled per case for the intensity statistics.
const SAMPLES_PER_CASE: usize = 20_000;

/// The facts of one case (or its reading error).
pub fn case_facts(info: &CaseInfo, case: Result<CaseData, String>) -> CaseFacts {
    let mut f = CaseFacts {
        id: info.id.clone(),
        split: info.split.clone(),
        error: None,
        dims: [0; 3],
        spacing: [0.0; 3],
        orientation: String::new(),
        organ_voxels: Vec::new(),
        unlisted_labels: BTreeMap::new(),
        channels: 0,
        image_hash: None,
        foreground: Vec::new(),
    };
    let case = match case {
        Ok(c) => c,
        Err(e) => {
            f.error = Some(e);
            return f;
        }
    };
    if let Some(g) = case.grid() {
        f.dims = g.dims;
        f.spacing = g.spacing();
        f.orientation = g.axcodes();
    }
    let counts = case.organ_voxels();
    f.organ_voxels = counts
        .iter()
        .zip(&case.present)
        .map(|(&n, &p)| p.then_some(n))
        .collect();
    if let Some(u) = case
        .notes
        .get("unlisted_label_values")
        .and_then(|v| v.as_object())
    {
        f.unlisted_labels = u
            .iter()
            .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
            .collect();
    }
    f.channels = case.images.len();
    if !case.images.is_empty() {
        // A duplicate is the same voxels in every channel.
        let mut hasher = blake3::Hasher::new();
        for img in &case.images {
            match &img.data {
                VoxelData::U8(v) => hasher.update(v),
                VoxelData::I16(v) => {
                    hasher.update(&v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>())
                }
                VoxelData::F32(v) => {
                    hasher.update(&v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>())
                }
            };
        }
        f.image_hash = Some(hasher.finalize().to_hex().to_string());
        if let Some(VoxelData::U8(l)) = case.labels.as_ref().map(|l| &l.data) {
            let inside: Vec<usize> = (0..l.len()).filter(|&i| l[i] > 0).collect();
            let step = inside.len().div_ceil(SAMPLES_PER_CASE).max(1);
            f.foreground = case
                .images
                .iter()
                .map(|img| {
                    inside
                        .iter()
                        .step_by(step)
                        .filter(|&&i| i < img.len())
                        .map(|&i| img.data.get_f32(i))
                        .collect()
                })
                .collect();
        }
    }
    f
}

/// Mean, sd and percentiles of sampled intensities.
fn intensity_summary(mut fg: Vec<f64>) -> BTreeMap<String, f64> {
    let n = fg.len() as f64;
    let mean = fg.iter().sum::<f64>() / n;
    let sd = (fg.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
    fg.sort_by(f64::total_cmp);
    BTreeMap::from([
        ("mean".to_string(), mean),
        ("sd".to_string(), sd),
        ("p00_5".to_string(), percentile(&fg, 0.005)),
        ("median".to_string(), percentile(&fg, 0.5)),
        ("p99_5".to_string(), percentile(&fg, 0.995)),
    ])
}

/// nibabel's axis codes of an affine: for each voxel axis, the world direction it points to.
/// Settings a user can paste into the pipeline, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Suggestion {
    pub spacing: [f64; 3],
    pub patch: [usize; 3],
    pub depth: usize,
    pub base_channels: usize,
    pub batch: usize,
    pub estimated_gib: f64,
    pub reasoning: Vec<String>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    pub stage: String,
    pub cases: usize,
    pub organs: Vec<String>,
    pub splits: BTreeMap<String, usize>,
    pub spacing: Summary3,
    pub shape: Summary3,
    pub orientations: BTreeMap<String, usize>,
    /// Image channels per case (the most common count; cases that differ are errors).
    pub channels: usize,
    /// Pooled over the voxels inside any organ: mean, sd, 0.5 / 50 / 99.5 percentiles (of
    /// the first channel).
    pub foreground_intensity: Option<BTreeMap<String, f64>>,
    /// The same for every channel, when there are several.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub channel_intensity: Vec<BTreeMap<String, f64>>,
    /// Per organ: cases present, absent, present but empty; median voxels and cm³ when
    /// present; contours far from the median volume.
    pub organ_table: Vec<OrganRow>,
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
    pub suggestion: Option<Suggestion>,
    pub per_case: Vec<CaseFacts>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary3 {
    pub median: [f64; 3],
    pub min: [f64; 3],
    pub max: [f64; 3],
}

#[derive(Debug, Clone, Serialize)]
pub struct OrganRow {
    pub organ: String,
    pub present: usize,
    pub absent: usize,
    pub empty: usize,
    pub median_voxels: f64,
    /// Median contour volume over the cases that contour it (cm³; NaN: none).
    pub median_cm3: f64,
    /// Contours whose volume is far from the others' ([`volume_outliers`]).
    pub volume_outliers: Vec<VolumeOutlier>,
}

/// The median (NaN for none), sorting `v`.
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    percentile_sorted(v, 50.0)
}

/// The `q`-quantile (0-1) of sorted values, numpy's linear rule.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    percentile_sorted(sorted, q * 100.0)
}

fn summary3(rows: &[[f64; 3]]) -> Summary3 {
    let col = |a: usize| -> Vec<f64> { rows.iter().map(|r| r[a]).collect() };
    Summary3 {
        median: std::array::from_fn(|a| median(&mut col(a))),
        min: std::array::from_fn(|a| col(a).into_iter().fold(f64::INFINITY, f64::min)),
        max: std::array::from_fn(|a| col(a).into_iter().fold(f64::NEG_INFINITY, f64::max)),
    }
}

/// Puts the cases' facts together; `gpu_gib` sizes the suggestion.
pub fn inspect(
    stage: &str,
    organs: Vec<String>,
    facts: Vec<CaseFacts>,
    gpu_gib: f64,
) -> Inspection {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let ok: Vec<&CaseFacts> = facts.iter().filter(|f| f.error.is_none()).collect();
    for f in &facts {
        if let Some(e) = &f.error {
            errors.push(format!("case `{}` cannot be read: {e}", f.id));
        }
        if !f.unlisted_labels.is_empty() {
            errors.push(format!(
                "case `{}`: label values not in the organ table (read as background): {}",
                f.id,
                f.unlisted_labels
                    .iter()
                    .map(|(v, n)| format!("{v} ({n} voxels)"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    // Duplicated images.
    let mut by_hash: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for f in &ok {
        if let Some(h) = &f.image_hash {
            by_hash.entry(h).or_default().push(&f.id);
        }
    }
    for ids in by_hash.values().filter(|v| v.len() > 1) {
        errors.push(format!(
            "cases {} have the same image voxel for voxel (a duplicated case)",
            ids.iter()
                .map(|i| format!("`{i}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let mut orientations: BTreeMap<String, usize> = BTreeMap::new();
    for f in &ok {
        *orientations.entry(f.orientation.clone()).or_default() += 1;
    }
    if let Some((major, _)) = orientations.iter().max_by_key(|(_, n)| **n) {
        let odd: Vec<String> = ok
            .iter()
            .filter(|f| &f.orientation != major)
            .map(|f| format!("`{}` ({})", f.id, f.orientation))
            .collect();
        if !odd.is_empty() {
            warnings.push(format!(
                "{} case(s) oriented differently from the majority ({major}): {} (resampling \
                 handles it; worth a look)",
                odd.len(),
                odd.join(", ")
            ));
        }
    }
    let mut organ_table = Vec::new();
    for (k, organ) in organs.iter().enumerate() {
        let (mut present, mut absent, mut empty, mut sizes) = (0, 0, 0, Vec::new());
        let mut volumes = Vec::new();
        for f in &ok {
            match f.organ_voxels.get(k).copied().flatten() {
                None => absent += 1,
                Some(0) => {
                    empty += 1;
                    present += 1;
                }
                Some(n) => {
                    present += 1;
                    sizes.push(n as f64);
                    let voxel_mm3: f64 = f.spacing.iter().product();
                    volumes.push((f.id.clone(), n as f64 * voxel_mm3 / 1000.0));
                }
            }
        }
        let outliers = volume_outliers(&volumes);
        let mut cm3: Vec<f64> = volumes.iter().map(|(_, v)| *v).collect();
        let median_cm3 = median(&mut cm3);
        if !outliers.is_empty() {
            let listed: Vec<String> = outliers
                .iter()
                .map(|o| format!("`{}` {:.1} cm³ ({:.2} times)", o.case, o.cm3, o.ratio))
                .collect();
            warnings.push(format!(
                "{organ}: {} contour(s) far from the median volume of {} cases \
                 ({median_cm3:.1} cm³): {} (another structure under this name, or a partial \
                 contour? training and evaluation read them as given)",
                outliers.len(),
                volumes.len(),
                listed.join(", ")
            ));
        }
        if empty > 0 {
            let ids: Vec<&str> = ok
                .iter()
                .filter(|f| f.organ_voxels.get(k).copied().flatten() == Some(0))
                .map(|f| f.id.as_str())
                .collect();
            warnings.push(format!(
                "{organ}: contoured but empty in {empty} case(s): {}",
                ids.join(", ")
            ));
        }
        organ_table.push(OrganRow {
            organ: organ.clone(),
            present,
            absent,
            empty,
            median_voxels: median(&mut sizes),
            median_cm3,
            volume_outliers: outliers,
        });
    }
    let mut splits = BTreeMap::new();
    for f in &facts {
        *splits
            .entry(f.split.clone().unwrap_or_else(|| "none".into()))
            .or_default() += 1;
    }
    let spacings: Vec<[f64; 3]> = ok.iter().map(|f| f.spacing).collect();
    let shapes: Vec<[f64; 3]> = ok.iter().map(|f| f.dims.map(|d| d as f64)).collect();
    // Channels: every case should have as many as most do.
    let mut by_channels: BTreeMap<usize, Vec<&str>> = BTreeMap::new();
    for f in &ok {
        by_channels.entry(f.channels).or_default().push(&f.id);
    }
    let channels = by_channels
        .iter()
        .max_by_key(|(c, ids)| (ids.len(), std::cmp::Reverse(**c)))
        .map(|(c, _)| *c)
        .unwrap_or(0);
    for (c, ids) in by_channels.iter().filter(|(c, _)| **c != channels) {
        errors.push(format!(
            "{} case(s) have {c} image channel(s), most have {channels}: {}",
            ids.len(),
            ids.iter()
                .map(|i| format!("`{i}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let pooled = |c: usize| -> Vec<f64> {
        ok.iter()
            .filter(|f| f.channels == channels)
            .flat_map(|f| f.foreground.get(c).into_iter().flatten().map(|&v| v as f64))
            .collect()
    };
    let fg = pooled(0);
    let foreground_intensity = (!fg.is_empty()).then(|| intensity_summary(fg));
    let channel_intensity: Vec<BTreeMap<String, f64>> = if channels > 1 {
        (0..channels)
            .map(pooled)
            .filter(|v| !v.is_empty())
            .map(intensity_summary)
            .collect()
    } else {
        Vec::new()
    };
    let suggestion = (!ok.is_empty()).then(|| suggest(&spacings, &shapes, gpu_gib));
    Inspection {
        stage: stage.to_string(),
        cases: facts.len(),
        organs,
        splits,
        spacing: summary3(&spacings),
        shape: summary3(&shapes),
        orientations,
        channels,
        foreground_intensity,
        channel_intensity,
        organ_table,
        errors,
        warnings,
        suggestion,
        per_case: facts,
    }
}

/// Estimated training memory per patch voxel and base channel, bytes: each resolution level
/// keeps about 6 activations per voxel and channel for the backward pass (two convolutions,
/// each with its norm and activation) in float32, in the encoder and again in the decoder,
/// with channels doubling as voxels fall eightfold (so the levels sum to about 4/3 of the
/// first). An estimate, not a measurement.
const BYTES_PER_VOXEL_CHANNEL: f64 = 6.0 * 4.0 * 2.0 * 4.0 / 3.0;

/// nnU-Net's rules, simplified: the median spacing (the 10th percentile along an axis more
/// than 3 times coarser than the finest), a patch from the median shape that fits the GPU,
/// as many poolings as keep 4 voxels per axis at the bottom (at most 6, the paper's).
fn suggest(spacings: &[[f64; 3]], shapes: &[[f64; 3]], gpu_gib: f64) -> Suggestion {
    let mut reasoning = Vec::new();
    let med = summary3(spacings).median;
    let mut spacing = med;
    let finest = med.iter().copied().fold(f64::INFINITY, f64::min);
    for a in 0..3 {
        if med[a] > 3.0 * finest {
            let mut col: Vec<f64> = spacings.iter().map(|s| s[a]).collect();
            col.sort_by(f64::total_cmp);
            spacing[a] = percentile(&col, 0.1);
            reasoning.push(format!(
                "axis {a} is {:.1} times coarser than the finest: its spacing is the 10th \
                 percentile ({:.2} mm), not the median, as nnU-Net does for anisotropic data",
                med[a] / finest,
                spacing[a]
            ));
        }
    }
    reasoning.push(format!(
        "target spacing {:.2} x {:.2} x {:.2} mm: the median over the cases",
        spacing[0], spacing[1], spacing[2]
    ));
    let extent: Vec<[f64; 3]> = spacings
        .iter()
        .zip(shapes)
        .map(|(s, d)| std::array::from_fn(|a| d[a] * s[a] / spacing[a]))
        .collect();
    let median_shape = summary3(&extent).median;
    reasoning.push(format!(
        "median shape at that spacing: {:.0} x {:.0} x {:.0} voxels",
        median_shape[0], median_shape[1], median_shape[2]
    ));
    let base_channels = 32;
    let batch = 2;
    let budget = gpu_gib * 0.8 * (1u64 << 30) as f64;
    let memory = |p: &[usize; 3]| -> f64 {
        (p.iter().product::<usize>() * batch) as f64
            * base_channels as f64
            * BYTES_PER_VOXEL_CHANNEL
    };
    let depth_for = |p: &[usize; 3]| -> usize {
        let m = *p.iter().min().unwrap_or(&4) as f64;
        ((m / 4.0).log2().floor().max(1.0) as usize).min(6)
    };
    let round = |x: f64, k: usize| -> usize { ((x / k as f64).ceil() as usize).max(1) * k };
    let mut patch: [usize; 3] = std::array::from_fn(|a| round(median_shape[a], 16));
    let mut steps = 0;
    while memory(&patch) > budget && steps < 64 {
        // Shrink the axis longest in millimetres, by 16 voxels.
        let a = (0..3)
            .max_by(|&x, &y| {
                (patch[x] as f64 * spacing[x]).total_cmp(&(patch[y] as f64 * spacing[y]))
            })
            .unwrap_or(0);
        if patch[a] <= 16 {
            break;
        }
        patch[a] -= 16;
        steps += 1;
    }
    let depth = depth_for(&patch);
    let gib = memory(&patch) / (1u64 << 30) as f64;
    reasoning.push(format!(
        "patch {} x {} x {}: the median shape rounded up to a multiple of 16{}; estimated \
         training memory {gib:.1} GiB at batch {batch} and {base_channels} base channels \
         (about {:.0} bytes per patch voxel and base channel, an estimate; budget 80% of \
         {gpu_gib} GiB)",
        patch[0],
        patch[1],
        patch[2],
        if steps > 0 {
            format!(", its longest axis (in mm) shrunk {steps} time(s) by 16 voxels to fit")
        } else {
            String::new()
        },
        BYTES_PER_VOXEL_CHANNEL * batch as f64
    ));
    reasoning.push(format!(
        "depth {depth}: poolings that keep at least 4 voxels along the shortest patch axis \
         (at most 6, the paper's)"
    ));
    Suggestion {
        spacing,
        patch,
        depth,
        base_channels,
        batch,
        estimated_gib: gib,
        reasoning,
    }
}

fn fmt3(v: [f64; 3], digits: usize) -> String {
    format!("{:.digits$} x {:.digits$} x {:.digits$}", v[0], v[1], v[2])
}

impl Inspection {
    /// The report for people.
    pub fn markdown(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# Dataset of stage `{}`: {} cases\n",
            self.stage, self.cases
        );
        let splits: Vec<String> = self
            .splits
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(s, "Splits: {}\n", splits.join(", "));
        let _ = writeln!(s, "| | median | min | max |\n|---|---|---|---|");
        let _ = writeln!(
            s,
            "| spacing (mm) | {} | {} | {} |",
            fmt3(self.spacing.median, 2),
            fmt3(self.spacing.min, 2),
            fmt3(self.spacing.max, 2)
        );
        let _ = writeln!(
            s,
            "| shape (voxels) | {} | {} | {} |\n",
            fmt3(self.shape.median, 0),
            fmt3(self.shape.min, 0),
            fmt3(self.shape.max, 0)
        );
        let o: Vec<String> = self
            .orientations
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(s, "Orientations: {}\n", o.join(", "));
        if self.channel_intensity.len() > 1 {
            let _ = writeln!(s, "Image channels: {}\n", self.channels);
            for (c, fg) in self.channel_intensity.iter().enumerate() {
                let _ = writeln!(
                    s,
                    "Intensity inside the organs, channel {c}: mean {:.1}, sd {:.1}, 0.5% {:.1}, median {:.1}, 99.5% {:.1}\n",
                    fg["mean"], fg["sd"], fg["p00_5"], fg["median"], fg["p99_5"]
                );
            }
        } else if let Some(fg) = &self.foreground_intensity {
            let _ = writeln!(
                s,
                "Intensity inside the organs: mean {:.1}, sd {:.1}, 0.5% {:.1}, median {:.1}, 99.5% {:.1}\n",
                fg["mean"], fg["sd"], fg["p00_5"], fg["median"], fg["p99_5"]
            );
        }
        let _ = writeln!(
            s,
            "| organ | present | absent (not contoured) | empty | median voxels | median cm³ | far from the median |\n|---|---|---|---|---|---|---|"
        );
        for r in &self.organ_table {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {:.0} | {:.1} | {} |",
                r.organ,
                r.present,
                r.absent,
                r.empty,
                r.median_voxels,
                r.median_cm3,
                r.volume_outliers.len()
            );
        }
        let _ = writeln!(s);
        if let Some(g) = &self.suggestion {
            let _ = writeln!(s, "## Suggested settings\n");
            for r in &g.reasoning {
                let _ = writeln!(s, "- {r}");
            }
            let _ = writeln!(
                s,
                "\n```yaml\n  resample: {{params: {{spacing: [{:.2}, {:.2}, {:.2}]}}}}\n  train:\n    params:\n      patch: [{}, {}, {}]\n      batch: {}\n      net: {{depth: {}, base_channels: {}}}\n```\n",
                g.spacing[0], g.spacing[1], g.spacing[2], g.patch[0], g.patch[1], g.patch[2],
                g.batch, g.depth, g.base_channels
            );
        }
        let _ = writeln!(s, "## Problems\n");
        if self.errors.is_empty() && self.warnings.is_empty() {
            let _ = writeln!(s, "None found.");
        }
        for e in &self.errors {
            let _ = writeln!(s, "- error: {e}");
        }
        for w in &self.warnings {
            let _ = writeln!(s, "- warning: {w}");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_codes_follow_nibabel() {
        let axcodes = |affine: &[[f64; 4]; 4]| {
            shapeflow_core::Grid {
                dims: [1, 1, 1],
                affine: *affine,
            }
            .axcodes()
        };
        let mut a = [[0.0; 4]; 4];
        a[0][0] = -1.0;
        a[1][1] = -1.0;
        a[2][2] = 2.0;
        assert_eq!(axcodes(&a), "LPS");
        let mut b = [[0.0; 4]; 4];
        b[1][0] = 1.0;
        b[0][1] = 1.0;
        b[2][2] = -1.0;
        assert_eq!(axcodes(&b), "ARI");
    }

    /// `inspect` measures contours in cm³ (voxels times the case's voxel volume) and warns
    /// naming the organ, the case and the ratio.
    #[test]
    fn inspect_warns_of_a_contour_eight_times_the_others() {
        let facts = |id: &str, spacing: f64| CaseFacts {
            id: id.to_string(),
            split: None,
            error: None,
            dims: [100, 100, 100],
            spacing: [spacing; 3],
            orientation: "RAS".into(),
            organ_voxels: vec![Some(25_000), None],
            unlisted_labels: BTreeMap::new(),
            channels: 1,
            image_hash: Some(id.to_string()),
            foreground: Vec::new(),
        };
        let mut cases: Vec<CaseFacts> = (0..12).map(|i| facts(&format!("c{i}"), 1.0)).collect();
        // As many voxels, eight times the voxel volume.
        cases.push(facts("coarse", 2.0));
        let report = inspect("load", vec!["Cord".into(), "Lens".into()], cases, 8.0);
        let row = &report.organ_table[0];
        assert!((row.median_cm3 - 25.0).abs() < 1e-9, "{row:?}");
        assert_eq!(
            row.volume_outliers,
            [VolumeOutlier {
                case: "coarse".into(),
                cm3: 200.0,
                ratio: 8.0
            }]
        );
        assert!(report.organ_table[1].volume_outliers.is_empty());
        let warned: Vec<&String> = report
            .warnings
            .iter()
            .filter(|w| w.starts_with("Cord: 1 contour(s) far from the median volume"))
            .collect();
        assert_eq!(warned.len(), 1, "{:?}", report.warnings);
        assert!(
            warned[0].contains("`coarse` 200.0 cm³ (8.00 times)"),
            "{}",
            warned[0]
        );
        assert!(!warned[0].contains("  "), "a run of spaces: {}", warned[0]);
        assert!(report
            .markdown()
            .contains("| Cord | 13 | 0 | 0 | 25000 | 25.0 | 1 |"));
    }

    #[test]
    fn anisotropic_spacing_takes_the_tenth_percentile_and_the_patch_fits() {
        let spacings: Vec<[f64; 3]> = (0..10).map(|i| [0.7, 0.7, 3.0 + i as f64 * 0.5]).collect();
        let shapes: Vec<[f64; 3]> = vec![[512.0, 512.0, 100.0]; 10];
        let g = suggest(&spacings, &shapes, 8.0);
        assert!((g.spacing[2] - 3.45).abs() < 1e-9, "{:?}", g.spacing);
        assert!(g.estimated_gib <= 8.0 * 0.8, "{g:?}");
        assert!(g.patch.iter().all(|p| p % 16 == 0));
        assert!((1..=6).contains(&g.depth));
        let big = suggest(&spacings, &shapes, 80.0);
        assert!(big.patch.iter().product::<usize>() > g.patch.iter().product::<usize>());
    }
}

//! PNG figures for reports, drawn with `plotters` (bitmap backend, an embedded font: no
//! system fonts needed).

use plotters::coord::Shift;
use plotters::prelude::*;
use shapeflow_core::{CaseData, Volume, VoxelData};
use std::path::Path;

use shapeflow_plot::{ensure_font, err, FONT};

const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// One box per organ and series (variant): `series[v].1[o]` are the values of organ `o`.
pub fn box_plot(
    path: &Path,
    title: &str,
    y_desc: &str,
    organs: &[String],
    series: &[(String, Vec<Vec<f64>>)],
) -> Result<(), String> {
    ensure_font();
    let finite: Vec<f64> = series
        .iter()
        .flat_map(|(_, s)| s.iter().flatten().copied())
        .filter(|v| v.is_finite())
        .collect();
    if finite.is_empty() || organs.is_empty() {
        return Ok(());
    }
    let lo = finite.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = finite.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let pad = ((hi - lo) * 0.08).max(1e-3);
    let (w, h) = ((160 + 90 * organs.len() as u32).max(640), 480u32);
    let root = BitMapBackend::new(path, (w, h)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, 22))
        .margin(14)
        .x_label_area_size(70)
        .y_label_area_size(60)
        .build_cartesian_2d(
            (0..organs.len()).into_segmented(),
            (lo - pad) as f32..(hi + pad) as f32,
        )
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(organs.len())
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => {
                organs.get(*i).cloned().unwrap_or_default()
            }
            SegmentValue::Last => String::new(),
        })
        .x_label_style((FONT, 13))
        .y_desc(y_desc)
        .axis_desc_style((FONT, 15))
        .draw()
        .map_err(err)?;
    let n = series.len() as i32;
    let width = (60 / n.max(1)).clamp(8, 30) as u32;
    for (si, (name, per_organ)) in series.iter().enumerate() {
        let color = PALETTE[si % PALETTE.len()];
        let offset = (si as i32 - (n - 1) / 2) * (width as i32 + 4)
            - if n % 2 == 0 {
                (width as i32 + 4) / 2
            } else {
                0
            };
        let boxes: Vec<_> = per_organ
            .iter()
            .enumerate()
            .filter_map(|(o, vals)| {
                let v: Vec<f32> = vals
                    .iter()
                    .filter(|x| x.is_finite())
                    .map(|&x| x as f32)
                    .collect();
                (!v.is_empty()).then(|| {
                    Boxplot::new_vertical(SegmentValue::CenterOf(o), &Quartiles::new(&v))
                        .width(width)
                        .whisker_width(0.6)
                        .style(color)
                        .offset(offset as f64)
                })
            })
            .collect();
        chart
            .draw_series(boxes)
            .map_err(err)?
            .label(name.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
    }
    if series.len() > 1 {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font((FONT, 14))
            .draw()
            .map_err(err)?;
    }
    root.present().map_err(err)
}

/// A display window for the image: CT soft tissue (-200..300 HU) for integer images, the
/// 1st..99th percentile otherwise.
fn window(v: &Volume) -> (f32, f32) {
    match v.data {
        VoxelData::I16(_) => (-200.0, 300.0),
        _ => {
            let mut s: Vec<f32> = (0..v.len())
                .step_by((v.len() / 20000).max(1))
                .map(|i| v.data.get_f32(i))
                .collect();
            s.sort_by(f32::total_cmp);
            let q = |p: f64| s[((s.len() - 1) as f64 * p) as usize];
            (q(0.01), q(0.99).max(q(0.01) + 1e-6))
        }
    }
}

/// One view through voxel `c`: `axis` is the one held fixed. Returns an RGB buffer with
/// physical aspect (pixels of `px_mm`), reference contour green, prediction contour red.
#[allow(clippy::too_many_arguments)]
fn view(
    img: &Volume,
    refl: &[u8],
    predl: &[u8],
    label: u8,
    c: [usize; 3],
    axis: usize,
    px_mm: f64,
    window_box: ([usize; 3], [usize; 3]),
) -> (Vec<u8>, u32, u32) {
    let d = img.dims;
    let (u, w) = match axis {
        2 => (0, 1),
        1 => (0, 2),
        _ => (1, 2),
    };
    let (lo_b, hi_b) = window_box;
    let (u0, w0) = (lo_b[u], lo_b[w]);
    let wu = (hi_b[u] - lo_b[u] + 1) as f64 * img.spacing[u];
    let ww = (hi_b[w] - lo_b[w] + 1) as f64 * img.spacing[w];
    let (pw, ph) = (
        ((wu / px_mm).round() as u32).max(1),
        ((ww / px_mm).round() as u32).max(1),
    );
    let (lo, hi) = window(img);
    let at = |iu: usize, iw: usize| -> usize {
        let mut p = c;
        p[u] = iu;
        p[w] = iw;
        p[0] + d[0] * (p[1] + d[1] * p[2])
    };
    let edge = |m: &[u8], iu: usize, iw: usize| -> bool {
        if m[at(iu, iw)] != label {
            return false;
        }
        (iu == 0 || m[at(iu - 1, iw)] != label)
            || (iu + 1 == d[u] || m[at(iu + 1, iw)] != label)
            || (iw == 0 || m[at(iu, iw - 1)] != label)
            || (iw + 1 == d[w] || m[at(iu, iw + 1)] != label)
    };
    let mut buf = vec![0u8; (pw * ph * 3) as usize];
    for py in 0..ph {
        // Superior / anterior up: flip the vertical axis.
        let iw = w0 + (((ph - 1 - py) as f64 + 0.5) * px_mm / img.spacing[w]) as usize;
        let iw = iw.min(hi_b[w]);
        for px in 0..pw {
            let iu = u0 + (((px as f64) + 0.5) * px_mm / img.spacing[u]) as usize;
            let iu = iu.min(hi_b[u]);
            let g = ((img.data.get_f32(at(iu, iw)) - lo) / (hi - lo)).clamp(0.0, 1.0);
            let mut rgb = [(g * 255.0) as u8; 3];
            if edge(refl, iu, iw) {
                rgb = [40, 220, 60];
            }
            if edge(predl, iu, iw) {
                rgb = [235, 50, 40];
            }
            let o = ((py * pw + px) * 3) as usize;
            buf[o..o + 3].copy_from_slice(&rgb);
        }
    }
    (buf, pw, ph)
}

/// Axial, coronal and sagittal views of `organ` through its centroid in the reference, with
/// reference (green) and prediction (red) contours over the image.
pub fn overlay(
    path: &Path,
    title: &str,
    reference: &CaseData,
    prediction: &CaseData,
    organ: &str,
) -> Result<(), String> {
    ensure_font();
    let img = reference
        .image()
        .or(reference.labels.as_ref())
        .ok_or("no image to draw on")?;
    let k = reference
        .organs
        .iter()
        .position(|o| o == organ)
        .ok_or("organ not in the reference")?;
    let kp = prediction
        .organs
        .iter()
        .position(|o| o == organ)
        .ok_or("organ not in the prediction")?;
    let (
        Some(Volume {
            data: VoxelData::U8(rl),
            ..
        }),
        Some(Volume {
            data: VoxelData::U8(pl),
            ..
        }),
    ) = (reference.labels.as_deref(), prediction.labels.as_deref())
    else {
        return Err("labels must be u8".into());
    };
    let label = (k + 1) as u8;
    let pl: Vec<u8> = pl
        .iter()
        .map(|&v| if v as usize == kp + 1 { label } else { 0 })
        .collect();
    let d = img.dims;
    let (mut sum, mut n) = ([0f64; 3], 0f64);
    let (mut lo, mut hi) = (d, [0usize; 3]);
    for (i, &v) in rl.iter().enumerate() {
        if v == label || pl[i] == label {
            let c = [i % d[0], (i / d[0]) % d[1], i / (d[0] * d[1])];
            for a in 0..3 {
                lo[a] = lo[a].min(c[a]);
                hi[a] = hi[a].max(c[a]);
            }
            if v == label {
                for a in 0..3 {
                    sum[a] += c[a] as f64;
                }
                n += 1.0;
            }
        }
    }
    if n == 0.0 {
        return Err(format!("{organ} is empty in the reference"));
    }
    // Zoom: the organ (both outlines) with 30 mm around it, at least 100 mm wide.
    for a in 0..3 {
        let centre = (lo[a] + hi[a]) as f64 / 2.0;
        let half =
            ((hi[a] - lo[a]) as f64 / 2.0 + 30.0 / img.spacing[a]).max(50.0 / img.spacing[a]);
        lo[a] = (centre - half).max(0.0) as usize;
        hi[a] = ((centre + half) as usize).min(d[a] - 1);
    }
    let c: [usize; 3] = std::array::from_fn(|a| (sum[a] / n).round() as usize);
    // 0.25 mm pixels: a 100 mm view is 400 pixels wide.
    let px_mm = 0.25;
    let views: Vec<(Vec<u8>, u32, u32, &str)> = [(2, "axial"), (1, "coronal"), (0, "sagittal")]
        .into_iter()
        .map(|(axis, name)| {
            let (b, w, h) = view(img, rl, &pl, label, c, axis, px_mm, (lo, hi));
            (b, w, h, name)
        })
        .collect();
    let gap = 10u32;
    let top = 40u32;
    let width = views.iter().map(|v| v.1).sum::<u32>() + gap * (views.len() as u32 + 1);
    let height = views.iter().map(|v| v.2).max().unwrap_or(1) + top + 30;
    let root = BitMapBackend::new(path, (width, height)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    draw_text(&root, title, (gap as i32, 10), 20)?;
    let mut x = gap;
    for (buf, w, h, name) in views {
        let el =
            BitMapElement::<(i32, i32)>::with_owned_buffer((x as i32, top as i32), (w, h), buf)
                .ok_or("bad image buffer")?;
        root.draw(&el).map_err(err)?;
        draw_text(&root, name, (x as i32, (top + h + 6) as i32), 15)?;
        x += w + gap;
    }
    draw_text(
        &root,
        "green: reference   red: prediction",
        ((width as i32 - 260).max(0), (height - 22) as i32),
        14,
    )?;
    root.present().map_err(err)
}

fn draw_text(
    root: &DrawingArea<BitMapBackend, Shift>,
    s: &str,
    at: (i32, i32),
    size: u32,
) -> Result<(), String> {
    root.draw(&Text::new(s.to_string(), at, (FONT, size).into_font()))
        .map_err(err)
}

/// The cases a report draws: the best, median and worst by mean Dice (each once, however
/// few cases there are), as (label, case index, mean Dice). Cases without a value are
/// skipped.
pub fn pick_cases(mean_dice: &[Option<f64>]) -> Vec<(&'static str, usize, f64)> {
    let mut ranked: Vec<(f64, usize)> = mean_dice
        .iter()
        .enumerate()
        .filter_map(|(i, d)| d.map(|d| (d, i)))
        .collect();
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
    if ranked.is_empty() {
        return Vec::new();
    }
    let mut out: Vec<(&'static str, usize, f64)> = Vec::new();
    for (what, r) in [
        ("best", 0),
        ("median", ranked.len() / 2),
        ("worst", ranked.len() - 1),
    ] {
        let (dice, i) = ranked[r];
        if !out.iter().any(|(_, j, _)| *j == i) {
            out.push((what, i, dice));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_median_worst_each_once() {
        let picks = pick_cases(&[Some(0.5), None, Some(0.9), Some(0.1), Some(0.7)]);
        assert_eq!(
            picks,
            vec![("best", 2, 0.9), ("median", 0, 0.5), ("worst", 3, 0.1)]
        );
        assert_eq!(pick_cases(&[Some(0.3)]), vec![("best", 0, 0.3)]);
        assert!(pick_cases(&[None]).is_empty());
    }

    fn case(labels: Vec<u8>) -> CaseData {
        let v = Volume::new([6, 5, 4], [1.0, 1.0, 2.0], VoxelData::U8(labels)).unwrap();
        CaseData {
            images: Vec::new(),
            labels: Some(std::sync::Arc::new(v)),
            organs: vec!["a".into(), "b".into()],
            present: vec![true, true],
            original: None,
            notes: Default::default(),
        }
    }

    #[test]
    fn overlays_and_box_plots_are_pngs_and_empty_organs_are_errors() {
        let d = tempfile::tempdir().unwrap();
        let mut l = vec![0u8; 120];
        for i in [37, 38, 43, 44, 67, 68] {
            l[i] = 1;
        }
        let (r, p) = (case(l.clone()), case(l));
        overlay(&d.path().join("o.png"), "t", &r, &p, "a").unwrap();
        assert_eq!(
            &std::fs::read(d.path().join("o.png")).unwrap()[..4],
            b"\x89PNG"
        );
        // Organ b has no voxel anywhere: a named error, not a panic.
        let e = overlay(&d.path().join("b.png"), "t", &r, &p, "b").unwrap_err();
        assert!(e.contains("empty"), "{e}");
        let organs = vec!["a".to_string(), "b".to_string()];
        box_plot(
            &d.path().join("bp.png"),
            "Dice",
            "Dice",
            &organs,
            &[("x".into(), vec![vec![0.8, 0.9], vec![]])],
        )
        .unwrap();
        assert!(d.path().join("bp.png").is_file());
        // Nothing finite: no figure, no error.
        box_plot(
            &d.path().join("none.png"),
            "Dice",
            "Dice",
            &organs,
            &[("x".into(), vec![vec![f64::INFINITY], vec![]])],
        )
        .unwrap();
        assert!(!d.path().join("none.png").exists());
    }
}

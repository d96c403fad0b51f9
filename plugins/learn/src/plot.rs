//! The loss curve: training loss per epoch and validation Dice, as a PNG.

use crate::history::EpochRecord;
use plotters::prelude::*;
use std::path::Path;

use shapeflow_plot::{ensure_font, err, FONT};

/// One panel: a line of `points` (epoch, value) over epochs 1..=`last`, with markers when
/// `markers` (sparse series such as validation).
fn panel(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    caption: &str,
    last: f64,
    y: std::ops::Range<f64>,
    points: &[(f64, f64)],
    colour: RGBColor,
    markers: bool,
) -> Result<(), String> {
    let mut c = ChartBuilder::on(area)
        .caption(caption, (FONT, 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(1f64..last, y)
        .map_err(err)?;
    c.configure_mesh()
        .x_desc("epoch")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .label_style((FONT, 13))
        .draw()
        .map_err(err)?;
    c.draw_series(LineSeries::new(
        points.iter().copied(),
        colour.stroke_width(2),
    ))
    .map_err(err)?;
    if markers {
        c.draw_series(points.iter().map(|&p| Circle::new(p, 3, colour.filled())))
            .map_err(err)?;
    }
    Ok(())
}

/// Two panels: mean training loss per epoch (left), validation Dice (right).
pub fn training_curves(path: &Path, history: &[EpochRecord]) -> Result<(), String> {
    ensure_font();
    if history.is_empty() {
        return Ok(());
    }
    let root = BitMapBackend::new(path, (1100, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (left, right) = root.split_horizontally(550);
    let last = history.last().map(|r| r.epoch).unwrap_or(1).max(2) as f64;
    let losses: Vec<(f64, f64)> = history
        .iter()
        .filter(|r| r.loss.is_finite())
        .map(|r| (r.epoch as f64, r.loss))
        .collect();
    let (lo, hi) = losses
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
            (a.min(p.1), b.max(p.1))
        });
    let pad = ((hi - lo) * 0.05).max(1e-6);
    panel(
        &left,
        "training loss",
        last,
        (lo - pad)..(hi + pad),
        &losses,
        RGBColor(31, 119, 180),
        false,
    )?;
    let dice: Vec<(f64, f64)> = history
        .iter()
        .filter_map(|r| r.val_dice.map(|d| (r.epoch as f64, d)))
        .collect();
    panel(
        &right,
        "validation Dice (mean over organs)",
        last,
        0f64..1f64,
        &dice,
        RGBColor(255, 127, 14),
        true,
    )?;
    root.present().map_err(err)
}

//! The loss curve: training loss per epoch and validation Dice, as a PNG.

use crate::train::EpochRecord;
use plotters::prelude::*;
use std::path::Path;
use std::sync::Once;

const FONT: &str = "sans-serif";

fn ensure_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font(
            FONT,
            FontStyle::Normal,
            epaint_default_fonts::UBUNTU_LIGHT,
        );
    });
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
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
    let mut c = ChartBuilder::on(&left)
        .caption("training loss", (FONT, 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(1f64..last, (lo - pad)..(hi + pad))
        .map_err(err)?;
    c.configure_mesh()
        .x_desc("epoch")
        .label_style((FONT, 13))
        .draw()
        .map_err(err)?;
    c.draw_series(LineSeries::new(
        losses,
        RGBColor(31, 119, 180).stroke_width(2),
    ))
    .map_err(err)?;
    let dice: Vec<(f64, f64)> = history
        .iter()
        .filter_map(|r| r.val_dice.map(|d| (r.epoch as f64, d)))
        .collect();
    let mut c = ChartBuilder::on(&right)
        .caption("validation Dice (mean over organs)", (FONT, 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(1f64..last, 0f64..1f64)
        .map_err(err)?;
    c.configure_mesh()
        .x_desc("epoch")
        .label_style((FONT, 13))
        .draw()
        .map_err(err)?;
    c.draw_series(LineSeries::new(
        dice.iter().copied(),
        RGBColor(255, 127, 14).stroke_width(2),
    ))
    .map_err(err)?;
    c.draw_series(
        dice.iter()
            .map(|&p| Circle::new(p, 3, RGBColor(255, 127, 14).filled())),
    )
    .map_err(err)?;
    root.present().map_err(err)
}

//! What every figure shares: plotters with an embedded font, registered once, so that PNGs
//! render the same on machines without system fonts.
//!
//! This crate knows nothing of metrics, training or pipelines: callers bring the numbers.

pub use plotters;
use plotters::style::FontStyle;
use std::sync::Once;

/// The family name figures use; [`ensure_font`] must run first.
pub const FONT: &str = "sans-serif";

/// Registers the embedded font (Ubuntu Light) under [`FONT`]; cheap after the first call.
pub fn ensure_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font(
            FONT,
            FontStyle::Normal,
            epaint_default_fonts::UBUNTU_LIGHT,
        );
    });
}

/// A plotters error as text.
pub fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

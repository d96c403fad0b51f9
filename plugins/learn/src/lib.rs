//! The `learn` family on libtorch (tch): the paper's 3D UNet and its losses, the training
//! loop, and the `train`, `calibrate` and `infer` stages.

pub mod adam;
pub mod amp;
pub mod augment;
pub mod calibrate;
pub mod checkpoint;
pub mod fit;
pub mod history;
mod io;
pub mod levels;
pub mod losses;
pub mod model;
mod plot;
pub mod sampler;
pub mod stages;
pub mod tiling;
pub mod train;
pub mod tta;
pub mod unet;

#[cfg(test)]
mod testutil;

pub use stages::LearnPlugin;
pub use tch;

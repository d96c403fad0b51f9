//! The `learn` family's building blocks on libtorch (tch): the paper's 3D UNet and its
//! losses. (The `train` and `infer` stages that use them come next.)

pub mod fit;
pub mod losses;
pub mod unet;

pub use tch;

//! The medical-image data model: [`Volume`] (voxels with their exact geometry), [`Grid`],
//! [`CaseData`] (a case's image, organ labels and organ table), [`SdmSet`] (per-organ
//! signed distance maps) and the world-coordinate resampler.
//!
//! This crate knows nothing about pipelines, stages, the cache, files or any runtime
//! (no tokio, sled, dagrs, tch): it is plain data and arithmetic. File formats live in
//! `shapeflow-formats`; how these types travel between stages lives in `shapeflow-core`.

pub mod case;
pub mod resample;
pub mod rng;
pub mod volume;

pub use case::{CaseData, SdmSet, SdmStorage, SdmUnits};
pub use volume::{
    component_labels, large_components, largest_component, Grid, Spacing, Volume, VolumeError,
    VoxelData,
};

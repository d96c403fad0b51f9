//! Error helpers shared by training, checkpoints and the training record.

use shapeflow_core::StageError;
use std::path::Path;

pub fn io_err(p: &Path, e: impl std::fmt::Display) -> StageError {
    StageError::msg(format!("{}: {e}", p.display()))
}

/// Writes `bytes` to `path` through a temporary file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StageError> {
    shapeflow_core::atomic::write(path, bytes).map_err(|e| io_err(path, e))
}

pub fn tch_err(what: &str) -> impl Fn(tch::TchError) -> StageError + '_ {
    move |e| StageError::msg(format!("{what}: {e}"))
}

//! The training record: one `EpochRecord` per epoch, written as `metrics.jsonl` (in the work
//! directory, and in the output directory for people), and the trained model's files.

use crate::io::{io_err, write_atomic};
use crate::model::{Model, ModelConfig};
use crate::plot;
use serde::{Deserialize, Serialize};
use shapeflow_core::StageError;
use std::path::{Path, PathBuf};

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    /// Optimiser steps done at the end of this epoch.
    pub step: i64,
    pub lr: f64,
    /// Mean training loss over the epoch's batches.
    pub loss: f64,
    pub seconds: f64,
    /// Of `seconds`, the time the loop waited for the batch loader (0 when the loader keeps
    /// ahead of the device).
    #[serde(default)]
    pub loader_wait_s: f64,
    /// Mean Dice over validation cases and present organs, when validated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_dice: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_dice_per_organ: Option<Vec<Option<f64>>>,
    /// Per organ, the head's output averaged over the organ's reference voxels in the
    /// validation cases (SDM heads: negative when they find the organ).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_inside_mean_per_organ: Option<Vec<Option<f64>>>,
    /// Per organ, the fraction of its reference voxels the head alone calls organ.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_inside_hit_per_organ: Option<Vec<Option<f64>>>,
}

/// Rewrites `metrics.jsonl` (whole, atomically) in `work_dir` and in `output_dir`.
pub fn write_log(
    history: &[EpochRecord],
    work_dir: &Path,
    output_dir: Option<&Path>,
) -> Result<(), StageError> {
    let mut log = history
        .iter()
        .map(|r| serde_json::to_string(r).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n");
    log.push('\n');
    write_atomic(&work_dir.join("metrics.jsonl"), log.as_bytes())?;
    if let Some(out) = output_dir {
        std::fs::create_dir_all(out).map_err(|e| io_err(out, e))?;
        write_atomic(&out.join("metrics.jsonl"), log.as_bytes())?;
    }
    Ok(())
}

/// model.safetensors and model.json in `out`.
pub fn write_model(out: &Path, model: &Model) -> Result<(), StageError> {
    std::fs::create_dir_all(out).map_err(|e| io_err(out, e))?;
    write_atomic(&out.join("model.safetensors"), &model.weights)?;
    write_model_config(out, &model.config)
}

/// A model stage's `publish`: a run that reuses a cached model still gets its files (for
/// `pipeline predict`).
pub fn publish_model(out: &Path, item: &shapeflow_core::Item) -> Result<(), StageError> {
    if out.join("model.safetensors").exists() {
        return Ok(());
    }
    write_model(out, &Model::from_item(item)?)
}

/// model.json alone in `out` (after the config changed, the weights not).
pub fn write_model_config(out: &Path, config: &ModelConfig) -> Result<(), StageError> {
    write_atomic(
        &out.join("model.json"),
        &serde_json::to_vec_pretty(config).unwrap_or_default(),
    )
}

/// model.safetensors, model.json, metrics.jsonl and loss.png in `out`.
pub fn write_outputs(out: &Path, model: &Model, history: &[EpochRecord]) -> Result<(), StageError> {
    write_model(out, model)?;
    let png: PathBuf = out.join("loss.png");
    if let Err(e) = plot::training_curves(&png, history) {
        tracing::warn!("could not draw {}: {e}", png.display());
    }
    Ok(())
}

//! Resumable training state: weights, optimiser moments and the history so far, in the
//! item's work directory. `checkpoint.json` is renamed into place last, so the files it names
//! are complete whenever it exists.

use crate::adam::Adam;
use crate::history::EpochRecord;
use crate::io::{io_err, tch_err, write_atomic};
use crate::model;
use serde::{Deserialize, Serialize};
use shapeflow_core::StageError;
use std::path::Path;
use tch::nn;

/// What a checkpoint's `checkpoint.json` records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Checkpoint {
    /// Epochs completed.
    pub(crate) epochs_done: usize,
    pub(crate) step: i64,
    weights: String,
    adam: String,
    history: Vec<EpochRecord>,
}

/// Loads the last checkpoint in `dir` into `vs` and `adam`, if there is a readable one:
/// (epochs done, history); (0, []) otherwise.
pub fn resume(
    dir: &Path,
    vs: &nn::VarStore,
    adam: &mut Adam,
) -> Result<(usize, Vec<EpochRecord>), StageError> {
    std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    let ck_path = dir.join("checkpoint.json");
    let Ok(text) = std::fs::read_to_string(&ck_path) else {
        return Ok((0, Vec::new()));
    };
    match serde_json::from_str::<Checkpoint>(&text) {
        Ok(ck) => {
            tch::no_grad(|| vs.read_safetensors(dir.join(&ck.weights)))
                .map_err(tch_err("checkpoint weights"))?;
            adam.load(&dir.join(&ck.adam), ck.step)
                .map_err(tch_err("checkpoint optimiser state"))?;
            tracing::info!(
                epoch = ck.epochs_done,
                step = ck.step,
                "resuming training from checkpoint {}",
                ck_path.display()
            );
            Ok((ck.epochs_done, ck.history))
        }
        Err(e) => {
            tracing::warn!("ignoring unreadable checkpoint {}: {e}", ck_path.display());
            Ok((0, Vec::new()))
        }
    }
}

/// Writes a checkpoint after `epochs_done` epochs and removes the previous one.
pub fn save(
    dir: &Path,
    vs: &nn::VarStore,
    adam: &Adam,
    epochs_done: usize,
    history: &[EpochRecord],
) -> Result<(), StageError> {
    let previous: Option<Checkpoint> = std::fs::read_to_string(dir.join("checkpoint.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    let ck = Checkpoint {
        epochs_done,
        step: adam.step,
        weights: format!("weights-{epochs_done}.safetensors"),
        adam: format!("adam-{epochs_done}.safetensors"),
        history: history.to_vec(),
    };
    model::save_cpu(vs, &dir.join(&ck.weights))?;
    adam.save(&dir.join(&ck.adam))
        .map_err(tch_err("saving the optimiser state"))?;
    let json = serde_json::to_vec_pretty(&ck).unwrap_or_default();
    // The rename of checkpoint.json is the commit point: files it names are complete.
    write_atomic(&dir.join("checkpoint.json"), &json)?;
    if let Some(p) = previous.filter(|p| p.epochs_done != epochs_done) {
        let _ = std::fs::remove_file(dir.join(p.weights));
        let _ = std::fs::remove_file(dir.join(p.adam));
    }
    Ok(())
}

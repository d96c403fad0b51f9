//! The `pipeline` command line, and the set of plugins this binary ships.

pub mod cli;
pub mod compare;
pub mod inspect;
pub mod predict;

use shapeflow_core::{DuplicateStage, Registry};

/// Every stage family the `pipeline` binary ships. A stage name registered by two
/// families is an error naming both.
pub fn default_registry() -> Result<Registry, DuplicateStage> {
    Registry::new()
        .with(&shapeflow_io::IoPlugin)?
        .with(&shapeflow_preprocess::PreprocessPlugin)?
        .with(&shapeflow_sdm::SdmPlugin)?
        .with(&shapeflow_eval::EvalPlugin)?
        .with(&shapeflow_labels::LabelsPlugin)?
        .with(&shapeflow_exec::ExecPlugin)?
        .with(&shapeflow_learn::LearnPlugin)
}

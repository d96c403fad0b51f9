//! shapeflow's core: pipeline files, the stage contract and registry, planning with cache
//! keys, and the executor that runs the stage graph on `dagrs`.
//!
//! Map (see `docs/architecture.md`): [`yaml`] -> [`config`] (file structure, env) ->
//! [`resolve`] (params via the [`stage::Registry`], variants merged) -> [`plan`] (cases and
//! keys) -> [`run`] (execution through [`dag`]) -> [`manifest`] (the run record).

pub mod config;
pub mod dag;
pub mod data;
pub mod item;
pub mod manifest;
pub mod plan;
pub mod resolve;
pub mod run;
pub mod slurm;
pub mod stage;
pub mod yaml;

pub use config::{ConfigError, ConfigErrors, ErrorKind, Override, PipelineFile};
pub use data::{CaseDataItem, Kind, SdmSetItem};
pub use indicatif;
pub use item::Item;
pub use plan::{Plan, Reason};
pub use resolve::Resolved;
pub use run::{RunOptions, RunReport, Status};
pub use shapeflow_cache as cache;
pub use shapeflow_formats::atomic;
pub use shapeflow_volume::{case, resample, rng, volume, CaseData, SdmSet, SdmStorage, SdmUnits};
pub use shapeflow_volume::{Grid, Spacing, Volume, VoxelData};
pub use stage::{
    BuildCtx, Built, CancelToken, CaseInfo, DuplicateStage, Inputs, ParamDoc, ParamError, Params,
    Plugin, Port, Progress, Registry, Shape, Stage, StageCtx, StageDef, StageError, StageFactory,
};

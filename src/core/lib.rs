//! shapeflow's core: pipeline files, the stage contract and registry, planning with cache
//! keys, and the executor that runs the stage graph on `dagrs`.
//!
//! Map (see `docs/architecture.md`): [`yaml`] -> [`config`] (file structure, env) ->
//! [`resolve`] (params via the [`stage::Registry`], variants merged) -> [`plan`] (cases and
//! keys) -> [`run`] (execution through [`dag`]) -> [`manifest`] (the run record).

pub mod atomic;
pub mod case;
pub mod config;
pub mod dag;
pub mod item;
pub mod manifest;
pub mod plan;
pub mod resample;
pub mod resolve;
pub mod rng;
pub mod run;
pub mod stage;
pub mod volume;
pub mod yaml;

pub use case::{CaseData, SdmSet, SdmStorage, SdmUnits};
pub use config::{ConfigError, ConfigErrors, ErrorKind, Override, PipelineFile};
pub use indicatif;
pub use item::Item;
pub use plan::{Plan, Reason};
pub use resolve::Resolved;
pub use run::{RunOptions, RunReport, Status};
pub use shapeflow_cache as cache;
pub use stage::{
    BuildCtx, Built, CancelToken, CaseInfo, Inputs, ParamDoc, ParamError, Plugin, Progress,
    Registry, Shape, Stage, StageCtx, StageDef, StageError, StageFactory,
};
pub use volume::{Grid, Spacing, Volume, VoxelData};

//! Dataset layouts on disk behind one trait: find the cases, read one case. `load` knows
//! only [`Layout`]; a new layout is a new file here implementing it, plus its name in
//! `Format` and one arm in [`make`].

mod dicom_rt;
mod msd;
mod nnunet;
mod organ_files;
mod phantom;
mod predictions;

pub use organ_files::OrganFilesSpec;

use crate::LoadParams;
use shapeflow_core::CaseData;
use std::path::PathBuf;

/// A case as a layout found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub id: String,
    /// The split the layout itself defines (a folder, an official split), if any.
    pub split: Option<String>,
    /// Changes whenever the case's source files change.
    pub fingerprint: String,
    /// False for an image without labels (an MSD `test` entry, nnU-Net's `imagesTs/`):
    /// always `test`, whatever the split policy, for `infer` to segment.
    pub labeled: bool,
}

/// One on-disk (or generated) dataset layout.
pub trait Layout: Send + Sync {
    /// Lists the cases, sorted by id. Must be cheap: `plan` calls it.
    fn discover(&self, seed: u64) -> Result<Vec<Found>, String>;
    /// Reads the case `id` (one `discover` returned).
    fn read(&self, seed: u64, id: &str) -> Result<CaseData, String>;
    /// Whether the pipeline seed changes what is read (generated data).
    fn uses_seed(&self) -> bool {
        false
    }
}

/// The layout `p.format` names, rooted at `root` (resolved against the pipeline file).
pub fn make(p: &LoadParams, root: Option<PathBuf>) -> Result<Box<dyn Layout>, String> {
    use crate::Format;
    let root = || {
        root.clone()
            .ok_or("this format needs `root:`, the dataset directory")
    };
    Ok(match p.format {
        Format::Phantom => Box::new(phantom::Phantoms::new(p)),
        Format::Msd => Box::new(msd::Msd::new(
            root()?,
            p.merge.clone(),
            p.allow_outside_root,
        )),
        Format::NnunetV2 => Box::new(nnunet::NnUnet::new(root()?, p.merge.clone())),
        Format::Pddca => Box::new(organ_files::OrganFiles::new(
            root()?,
            OrganFilesSpec::pddca(),
            p,
        )),
        Format::Predictions => Box::new(predictions::Predictions::new(root()?)),
        Format::DicomRt => Box::new(dicom_rt::DicomRt::new(
            root()?,
            p.organ_names(),
            p.aliases.clone(),
        )),
        Format::OrganFiles => Box::new(organ_files::OrganFiles::new(
            root()?,
            OrganFilesSpec::from_params(p)?,
            p,
        )),
    })
}

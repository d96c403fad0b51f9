//! Medical image file formats behind one reader/writer trait: NIfTI-1, NRRD and MetaImage,
//! plus the atomic file writes every file meant for people goes through, and DICOM-RT
//! (a folder of slices and its structure set; `dicom`).
//!
//! This crate knows nothing about pipelines, stages or the cache: it turns files into
//! [`Volume`]s and back. A new format is one new module implementing [`ImageFormat`] and
//! one line in [`FORMATS`].

pub mod alloc;
pub mod atomic;
pub mod contours;
pub mod dicom;
pub mod metaimage;
pub mod nifti;
pub mod nrrd;
pub mod voxels;

pub use voxels::{max_voxels, set_max_voxels, DEFAULT_MAX_VOXELS, MAX_VOXELS_ENV};

pub use nifti::NiftiIo;
use shapeflow_volume::Volume;
use std::path::Path;

/// A file could not be read or written. Names the file.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct FormatError {
    pub path: String,
    pub message: String,
}

pub(crate) fn file_err(path: &Path, message: impl Into<String>) -> FormatError {
    FormatError {
        path: path.display().to_string(),
        message: message.into(),
    }
}

/// One image file format.
pub trait ImageFormat: Sync {
    /// Short name, e.g. `nifti`.
    fn name(&self) -> &'static str;
    /// File name endings this format reads, e.g. `.nii.gz` (lower case, with the dot).
    fn extensions(&self) -> &'static [&'static str];
    fn read(&self, path: &Path) -> Result<Volume, FormatError>;
    fn write(&self, volume: &Volume, path: &Path) -> Result<(), FormatError>;
    /// The file's channels, for formats that hold several in one file (NIfTI's fourth
    /// dimension); by default the one volume [`ImageFormat::read`] gives.
    fn read_channels(&self, path: &Path) -> Result<Vec<Volume>, FormatError> {
        Ok(vec![self.read(path)?])
    }
}

/// NIfTI-1, `.nii` and `.nii.gz`.
pub struct Nifti;

impl ImageFormat for Nifti {
    fn name(&self) -> &'static str {
        "nifti"
    }
    fn extensions(&self) -> &'static [&'static str] {
        &[".nii.gz", ".nii"]
    }
    fn read(&self, path: &Path) -> Result<Volume, FormatError> {
        Volume::read_nifti(path)
    }
    fn read_channels(&self, path: &Path) -> Result<Vec<Volume>, FormatError> {
        nifti::read_channels(path)
    }
    fn write(&self, volume: &Volume, path: &Path) -> Result<(), FormatError> {
        volume.write_nifti(path)
    }
}

/// NRRD, `.nrrd` (attached) and `.nhdr` (detached data).
pub struct Nrrd;

impl ImageFormat for Nrrd {
    fn name(&self) -> &'static str {
        "nrrd"
    }
    fn extensions(&self) -> &'static [&'static str] {
        &[".nrrd", ".nhdr"]
    }
    fn read(&self, path: &Path) -> Result<Volume, FormatError> {
        nrrd::read(path).map_err(|message| FormatError {
            path: path.display().to_string(),
            message,
        })
    }
    fn write(&self, volume: &Volume, path: &Path) -> Result<(), FormatError> {
        let opts = nrrd::WriteOptions {
            gzip: true,
            big_endian: false,
            detached: path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("nhdr")),
        };
        nrrd::write(volume, path, opts).map_err(|message| FormatError {
            path: path.display().to_string(),
            message,
        })
    }
}

/// ITK MetaImage, `.mha` (one file) and `.mhd` (data beside it).
pub struct MetaImage;

impl ImageFormat for MetaImage {
    fn name(&self) -> &'static str {
        "metaimage"
    }
    fn extensions(&self) -> &'static [&'static str] {
        &[".mha", ".mhd"]
    }
    fn read(&self, path: &Path) -> Result<Volume, FormatError> {
        metaimage::read(path).map_err(|m| file_err(path, m))
    }
    fn write(&self, volume: &Volume, path: &Path) -> Result<(), FormatError> {
        metaimage::write(volume, path).map_err(|m| file_err(path, format!("cannot write: {m}")))
    }
}

/// Every format this build reads and writes.
pub static FORMATS: &[&dyn ImageFormat] = &[&Nifti, &Nrrd, &MetaImage];

/// The format whose extension `path` ends with (case-insensitive).
pub fn for_path(path: &Path) -> Option<&'static dyn ImageFormat> {
    let name = path.file_name()?.to_string_lossy().to_ascii_lowercase();
    FORMATS
        .iter()
        .copied()
        .find(|f| f.extensions().iter().any(|e| name.ends_with(e)))
}

/// Reads `path` in the format its name says.
pub fn read(path: &Path) -> Result<Volume, FormatError> {
    match for_path(path) {
        Some(f) => f.read(path),
        None => Err(file_err(
            path,
            format!("unknown image format (known endings: {})", known_endings()),
        )),
    }
}

/// Reads `path`'s channels in the format its name says (a 4D NIfTI: one volume per entry
/// of its fourth dimension; any other image: one).
pub fn read_channels(path: &Path) -> Result<Vec<Volume>, FormatError> {
    match for_path(path) {
        Some(f) => f.read_channels(path),
        None => Err(file_err(
            path,
            format!("unknown image format (known endings: {})", known_endings()),
        )),
    }
}

/// Writes `volume` to `path` in the format its name says, atomically.
pub fn write(volume: &Volume, path: &Path) -> Result<(), FormatError> {
    let f = for_path(path).ok_or_else(|| {
        file_err(
            path,
            format!("unknown image format (known endings: {})", known_endings()),
        )
    })?;
    atomic::write_with(
        path,
        |tmp| f.write(volume, tmp),
        |e| file_err(path, e.to_string()),
    )
}

fn known_endings() -> String {
    FORMATS
        .iter()
        .flat_map(|f| f.extensions().iter().copied())
        .collect::<Vec<_>>()
        .join(", ")
}

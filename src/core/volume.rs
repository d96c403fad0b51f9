//! 3D volumes with their geometry, and NIfTI-1 reading and writing.
//!
//! Voxel order is NIfTI's: x fastest, then y, then z (`index = x + nx * (y + ny * z)`).
//! The affine maps voxel indices to world millimetres in NIfTI's RAS+ convention.

use std::path::Path;

/// Millimetres per voxel along x, y, z.
pub type Spacing = [f64; 3];

/// Voxel values of a volume.
#[derive(Debug, Clone, PartialEq)]
pub enum VoxelData {
    U8(Vec<u8>),
    I16(Vec<i16>),
    F32(Vec<f32>),
}

impl VoxelData {
    pub fn len(&self) -> usize {
        match self {
            VoxelData::U8(v) => v.len(),
            VoxelData::I16(v) => v.len(),
            VoxelData::F32(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Short type name: `u8`, `i16`, `f32`.
    pub fn dtype(&self) -> &'static str {
        match self {
            VoxelData::U8(_) => "u8",
            VoxelData::I16(_) => "i16",
            VoxelData::F32(_) => "f32",
        }
    }

    /// Voxel `i` as f32.
    pub fn get_f32(&self, i: usize) -> f32 {
        match self {
            VoxelData::U8(v) => v[i] as f32,
            VoxelData::I16(v) => v[i] as f32,
            VoxelData::F32(v) => v[i],
        }
    }
}

/// A 3D volume: voxels plus the geometry that places them in the patient.
#[derive(Debug, Clone, PartialEq)]
pub struct Volume {
    pub dims: [usize; 3],
    pub spacing: Spacing,
    /// Voxel index (x, y, z, 1) to world mm, row-major 4 x 4.
    pub affine: [[f64; 4]; 4],
    pub data: VoxelData,
}

/// Errors reading or writing volumes.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("volume data has {got} voxels, dims {dims:?} need {want}")]
    Size {
        dims: [usize; 3],
        got: usize,
        want: usize,
    },
}

fn file_err(path: &Path, message: impl Into<String>) -> VolumeError {
    VolumeError::File {
        path: path.display().to_string(),
        message: message.into(),
    }
}

impl Volume {
    /// A volume with an axis-aligned affine: origin at 0, the given spacing.
    pub fn new(dims: [usize; 3], spacing: Spacing, data: VoxelData) -> Result<Self, VolumeError> {
        let want = dims[0] * dims[1] * dims[2];
        if data.len() != want {
            return Err(VolumeError::Size {
                dims,
                got: data.len(),
                want,
            });
        }
        let mut affine = [[0.0; 4]; 4];
        for (i, row) in affine.iter_mut().enumerate().take(3) {
            row[i] = spacing[i];
        }
        affine[3][3] = 1.0;
        Ok(Volume {
            dims,
            spacing,
            affine,
            data,
        })
    }

    /// Number of voxels.
    pub fn len(&self) -> usize {
        self.dims[0] * self.dims[1] * self.dims[2]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Linear index of voxel (x, y, z).
    #[inline]
    pub fn index(&self, x: usize, y: usize, z: usize) -> usize {
        x + self.dims[0] * (y + self.dims[1] * z)
    }

    /// Writes the volume as NIfTI-1 (`.nii` or `.nii.gz`), geometry in sform and pixdim.
    pub fn write_nifti(&self, path: &Path) -> Result<(), VolumeError> {
        use nifti::writer::WriterOptions;
        let header = nifti::NiftiHeader {
            pixdim: [
                1.0,
                self.spacing[0] as f32,
                self.spacing[1] as f32,
                self.spacing[2] as f32,
                1.0,
                1.0,
                1.0,
                1.0,
            ],
            sform_code: 2,
            qform_code: 0,
            srow_x: self.affine[0].map(|v| v as f32),
            srow_y: self.affine[1].map(|v| v as f32),
            srow_z: self.affine[2].map(|v| v as f32),
            xyzt_units: 2, // millimetres
            ..Default::default()
        };
        let shape = (self.dims[0], self.dims[1], self.dims[2]);
        let opts = WriterOptions::new(path).reference_header(&header);
        let res = match &self.data {
            VoxelData::U8(v) => {
                ndarray::Array3::from_shape_vec(ndarray::ShapeBuilder::f(shape), v.clone())
                    .map_err(|e| e.to_string())
                    .and_then(|a| opts.write_nifti(&a).map_err(|e| e.to_string()))
            }
            VoxelData::I16(v) => {
                ndarray::Array3::from_shape_vec(ndarray::ShapeBuilder::f(shape), v.clone())
                    .map_err(|e| e.to_string())
                    .and_then(|a| opts.write_nifti(&a).map_err(|e| e.to_string()))
            }
            VoxelData::F32(v) => {
                ndarray::Array3::from_shape_vec(ndarray::ShapeBuilder::f(shape), v.clone())
                    .map_err(|e| e.to_string())
                    .and_then(|a| opts.write_nifti(&a).map_err(|e| e.to_string()))
            }
        };
        res.map_err(|m| file_err(path, format!("cannot write NIfTI: {m}")))
    }

    /// Reads a 3D NIfTI-1 file. u8 and i16 stay integer; other types become f32 with
    /// `scl_slope`/`scl_inter` applied. Geometry from sform, else qform, else pixdim.
    pub fn read_nifti(path: &Path) -> Result<Volume, VolumeError> {
        use nifti::{IntoNdArray, NiftiObject, NiftiType, ReaderOptions};
        let obj = ReaderOptions::new()
            .read_file(path)
            .map_err(|e| file_err(path, format!("cannot read NIfTI: {e}")))?;
        let h = obj.header().clone();
        let ndim = h.dim[0] as usize;
        if !(1..=4).contains(&ndim) || (ndim == 4 && h.dim[4] > 1) {
            return Err(file_err(
                path,
                format!("expected a 3D volume, got {ndim} dimensions"),
            ));
        }
        let dims = [
            h.dim[1].max(1) as usize,
            h.dim[2].max(1) as usize,
            h.dim[3].max(1) as usize,
        ];
        let spacing = [h.pixdim[1] as f64, h.pixdim[2] as f64, h.pixdim[3] as f64];
        if spacing.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(file_err(
                path,
                format!("spacing {spacing:?} must be positive"),
            ));
        }
        let scaled = h.scl_slope != 0.0 && (h.scl_slope != 1.0 || h.scl_inter != 0.0);
        let dtype = h
            .data_type()
            .map_err(|e| file_err(path, format!("unsupported datatype: {e}")))?;
        let vol = obj.into_volume();
        let flat_f = |a: ndarray::ArrayD<f32>| -> Vec<f32> { a.t().iter().copied().collect() };
        let data = match dtype {
            NiftiType::Uint8 if !scaled => {
                let a = vol
                    .into_ndarray::<u8>()
                    .map_err(|e| file_err(path, e.to_string()))?;
                VoxelData::U8(a.t().iter().copied().collect())
            }
            NiftiType::Int16 if !scaled => {
                let a = vol
                    .into_ndarray::<i16>()
                    .map_err(|e| file_err(path, e.to_string()))?;
                VoxelData::I16(a.t().iter().copied().collect())
            }
            _ => {
                let a = vol
                    .into_ndarray::<f32>()
                    .map_err(|e| file_err(path, e.to_string()))?;
                VoxelData::F32(flat_f(a))
            }
        };
        if let VoxelData::F32(v) = &data {
            if v.iter().any(|x| x.is_nan()) {
                return Err(file_err(path, "contains NaN voxels"));
            }
        }
        let mut volume =
            Volume::new(dims, spacing, data).map_err(|e| file_err(path, e.to_string()))?;
        if h.sform_code > 0 {
            volume.affine[0] = h.srow_x.map(|v| v as f64);
            volume.affine[1] = h.srow_y.map(|v| v as f64);
            volume.affine[2] = h.srow_z.map(|v| v as f64);
        } else if h.qform_code > 0 {
            let m = h.qform_affine::<f64>();
            for r in 0..4 {
                for c in 0..4 {
                    volume.affine[r][c] = m[(r, c)];
                }
            }
        }
        Ok(volume)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nifti_roundtrip_keeps_data_and_affine() {
        let dir = tempfile::tempdir().unwrap();
        let dims = [5, 4, 3];
        let n = 60;
        for data in [
            VoxelData::U8((0..n).map(|i| i as u8).collect()),
            VoxelData::I16((0..n).map(|i| i as i16 * 37 - 900).collect()),
            VoxelData::F32((0..n).map(|i| i as f32 * 0.25 - 3.0).collect()),
        ] {
            let mut v = Volume::new(dims, [0.5, 0.75, 2.5], data).unwrap();
            v.affine[0][3] = -12.5;
            v.affine[1][3] = 30.25;
            v.affine[2][3] = 7.0;
            let p = dir.path().join(format!("v_{}.nii.gz", v.data.dtype()));
            v.write_nifti(&p).unwrap();
            let back = Volume::read_nifti(&p).unwrap();
            assert_eq!(back, v);
            // x fastest: voxel (1,0,0) is element 1, voxel (0,1,0) is element 5.
            assert_eq!(back.data.get_f32(back.index(1, 0, 0)), v.data.get_f32(1));
            assert_eq!(back.data.get_f32(back.index(0, 1, 0)), v.data.get_f32(5));
        }
    }
}

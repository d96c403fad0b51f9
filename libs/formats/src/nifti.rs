//! NIfTI-1 (`.nii`, `.nii.gz`) reading and writing through the `nifti` crate.
//!
//! Geometry: sform, else qform, else pixdim; RAS+ world millimetres, as [`Volume`] holds it.

use crate::{file_err, FormatError};
use shapeflow_volume::{Volume, VoxelData};
use std::path::Path;

/// NIfTI reading and writing as methods of [`Volume`].
pub trait NiftiIo: Sized {
    /// Reads a 3D NIfTI-1 file. u8 and i16 stay integer; other types become f32 with
    /// `scl_slope`/`scl_inter` applied. Geometry from sform, else qform, else pixdim.
    fn read_nifti(path: &Path) -> Result<Self, FormatError>;
    /// Writes the volume as NIfTI-1 (`.nii` or `.nii.gz`), geometry in sform and pixdim.
    fn write_nifti(&self, path: &Path) -> Result<(), FormatError>;
    /// [`NiftiIo::write_nifti`] through a temporary file and a rename: the file appears
    /// whole or not at all.
    fn write_nifti_atomic(&self, path: &Path) -> Result<(), FormatError>;
}

impl NiftiIo for Volume {
    /// Writes the volume as NIfTI-1 (`.nii` or `.nii.gz`), geometry in sform and pixdim.
    fn write_nifti(&self, path: &Path) -> Result<(), FormatError> {
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

    /// [`Volume::write_nifti`] through a temporary file and a rename: the file appears whole
    /// or not at all.
    fn write_nifti_atomic(&self, path: &Path) -> Result<(), FormatError> {
        crate::atomic::write_with(
            path,
            |tmp| self.write_nifti(tmp),
            |e| file_err(path, format!("cannot write NIfTI: {e}")),
        )
    }

    /// Reads a 3D NIfTI-1 file. u8 and i16 stay integer; other types become f32 with
    /// `scl_slope`/`scl_inter` applied. Geometry from sform, else qform, else pixdim.
    fn read_nifti(path: &Path) -> Result<Volume, FormatError> {
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
    fn nifti_types_and_scaling_are_read() {
        use nifti::writer::WriterOptions;
        let dir = tempfile::tempdir().unwrap();
        let shape = ndarray::ShapeBuilder::f((3, 2, 2));
        let header = nifti::NiftiHeader {
            pixdim: [1.0, 0.5, 0.5, 2.0, 1.0, 1.0, 1.0, 1.0],
            ..Default::default()
        };
        // u16, i32, f64 are read as f32 values.
        let vals: Vec<f64> = (0..12).map(|i| i as f64 * 3.0).collect();
        let p = dir.path().join("u16.nii");
        let a = ndarray::Array3::from_shape_vec(shape, vals.iter().map(|&v| v as u16).collect())
            .unwrap();
        WriterOptions::new(&p)
            .reference_header(&header)
            .write_nifti(&a)
            .unwrap();
        assert_eq!(
            Volume::read_nifti(&p).unwrap().to_f32(),
            vals.iter().map(|&v| v as f32).collect::<Vec<_>>()
        );
        let p = dir.path().join("i32.nii.gz");
        let a =
            ndarray::Array3::from_shape_vec(shape, vals.iter().map(|&v| v as i32 - 20).collect())
                .unwrap();
        WriterOptions::new(&p)
            .reference_header(&header)
            .write_nifti(&a)
            .unwrap();
        assert_eq!(Volume::read_nifti(&p).unwrap().data.get_f32(0), -20.0);
        let p = dir.path().join("f64.nii");
        let a = ndarray::Array3::from_shape_vec(shape, vals.clone()).unwrap();
        WriterOptions::new(&p)
            .reference_header(&header)
            .write_nifti(&a)
            .unwrap();
        let v = Volume::read_nifti(&p).unwrap();
        assert_eq!(v.data.get_f32(11), 33.0);
        assert_eq!(v.spacing, [0.5, 0.5, 2.0]);
        // scl_slope / scl_inter: stored u8 4 with slope 1.5, intercept -1 reads as 5.0. (The
        // nifti writer always stores slope 1, so set the two header fields, bytes 112..120.)
        let p = dir.path().join("scaled.nii");
        let a = ndarray::Array3::from_shape_vec(shape, vec![4u8; 12]).unwrap();
        WriterOptions::new(&p)
            .reference_header(&header)
            .write_nifti(&a)
            .unwrap();
        let mut b = std::fs::read(&p).unwrap();
        b[112..116].copy_from_slice(&1.5f32.to_le_bytes());
        b[116..120].copy_from_slice(&(-1.0f32).to_le_bytes());
        std::fs::write(&p, b).unwrap();
        let v = Volume::read_nifti(&p).unwrap();
        assert_eq!(v.data.dtype(), "f32");
        assert_eq!(v.data.get_f32(5), 5.0);
        // Non-positive spacing and NaN voxels are errors naming the file.
        let bad = nifti::NiftiHeader {
            pixdim: [1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
            ..header.clone()
        };
        let p = dir.path().join("zero_spacing.nii");
        let a = ndarray::Array3::from_shape_vec(shape, vec![1u8; 12]).unwrap();
        WriterOptions::new(&p)
            .reference_header(&bad)
            .write_nifti(&a)
            .unwrap();
        let e = Volume::read_nifti(&p).unwrap_err().to_string();
        assert!(
            e.contains("zero_spacing.nii") && e.contains("spacing"),
            "{e}"
        );
        let p = dir.path().join("nan.nii");
        let a = ndarray::Array3::from_shape_vec(shape, vec![f32::NAN; 12]).unwrap();
        WriterOptions::new(&p)
            .reference_header(&header)
            .write_nifti(&a)
            .unwrap();
        let e = Volume::read_nifti(&p).unwrap_err().to_string();
        assert!(e.contains("nan.nii") && e.contains("NaN"), "{e}");
        // A truncated file is an error, not a panic.
        let full = std::fs::read(dir.path().join("f64.nii")).unwrap();
        let p = dir.path().join("truncated.nii");
        std::fs::write(&p, &full[..full.len() / 2]).unwrap();
        let e = Volume::read_nifti(&p).unwrap_err().to_string();
        assert!(e.contains("truncated.nii"), "{e}");
    }

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

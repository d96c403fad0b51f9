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

/// A voxel grid: dimensions and the voxel-to-world affine (mm, RAS+).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Grid {
    pub dims: [usize; 3],
    pub affine: [[f64; 4]; 4],
}

impl Grid {
    /// World position (mm) of continuous voxel coordinates `ijk`.
    pub fn world(&self, ijk: [f64; 3]) -> [f64; 3] {
        std::array::from_fn(|r| {
            self.affine[r][0] * ijk[0]
                + self.affine[r][1] * ijk[1]
                + self.affine[r][2] * ijk[2]
                + self.affine[r][3]
        })
    }

    /// Spacing (mm) along each voxel axis: the lengths of the affine's columns.
    pub fn spacing(&self) -> [f64; 3] {
        std::array::from_fn(|c| {
            (0..3)
                .map(|r| self.affine[r][c].powi(2))
                .sum::<f64>()
                .sqrt()
        })
    }

    /// The inverse of the 3 x 3 part and the translation: world to voxel coordinates.
    /// `None` when the affine is singular.
    pub fn inverse(&self) -> Option<[[f64; 4]; 3]> {
        let a = &self.affine;
        let m = [
            [a[0][0], a[0][1], a[0][2]],
            [a[1][0], a[1][1], a[1][2]],
            [a[2][0], a[2][1], a[2][2]],
        ];
        let det = m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
            - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
            + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]);
        if det.abs() < 1e-12 {
            return None;
        }
        let inv = [
            [
                (m[1][1] * m[2][2] - m[1][2] * m[2][1]) / det,
                (m[0][2] * m[2][1] - m[0][1] * m[2][2]) / det,
                (m[0][1] * m[1][2] - m[0][2] * m[1][1]) / det,
            ],
            [
                (m[1][2] * m[2][0] - m[1][0] * m[2][2]) / det,
                (m[0][0] * m[2][2] - m[0][2] * m[2][0]) / det,
                (m[0][2] * m[1][0] - m[0][0] * m[1][2]) / det,
            ],
            [
                (m[1][0] * m[2][1] - m[1][1] * m[2][0]) / det,
                (m[0][1] * m[2][0] - m[0][0] * m[2][1]) / det,
                (m[0][0] * m[1][1] - m[0][1] * m[1][0]) / det,
            ],
        ];
        let t = [a[0][3], a[1][3], a[2][3]];
        Some(std::array::from_fn(|r| {
            let tr = -(inv[r][0] * t[0] + inv[r][1] * t[1] + inv[r][2] * t[2]);
            [inv[r][0], inv[r][1], inv[r][2], tr]
        }))
    }

    /// True when both grids have the same dims and affines equal within `tol` mm.
    pub fn same_as(&self, other: &Grid, tol: f64) -> bool {
        self.dims == other.dims
            && (0..3).all(|r| (0..4).all(|c| (self.affine[r][c] - other.affine[r][c]).abs() <= tol))
    }
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

    /// A volume on `grid` (spacing from its affine).
    pub fn from_grid(grid: &Grid, data: VoxelData) -> Result<Self, VolumeError> {
        let mut v = Volume::new(grid.dims, grid.spacing(), data)?;
        v.affine = grid.affine;
        Ok(v)
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

    /// The voxel grid (dims and affine) without the data.
    pub fn grid(&self) -> Grid {
        Grid {
            dims: self.dims,
            affine: self.affine,
        }
    }

    /// A volume of the same grid with other data.
    pub fn with_data(&self, data: VoxelData) -> Result<Volume, VolumeError> {
        let want = self.len();
        if data.len() != want {
            return Err(VolumeError::Size {
                dims: self.dims,
                got: data.len(),
                want,
            });
        }
        Ok(Volume {
            dims: self.dims,
            spacing: self.spacing,
            affine: self.affine,
            data,
        })
    }

    /// All voxels as f32.
    pub fn to_f32(&self) -> Vec<f32> {
        match &self.data {
            VoxelData::U8(v) => v.iter().map(|&x| x as f32).collect(),
            VoxelData::I16(v) => v.iter().map(|&x| x as f32).collect(),
            VoxelData::F32(v) => v.clone(),
        }
    }

    /// The sub-volume `start .. start + size` (clamped to the volume), geometry kept exact:
    /// the origin moves to the world position of voxel `start`.
    pub fn crop(&self, start: [usize; 3], size: [usize; 3]) -> Volume {
        let s: [usize; 3] = std::array::from_fn(|a| start[a].min(self.dims[a]));
        let n: [usize; 3] = std::array::from_fn(|a| size[a].min(self.dims[a] - s[a]));
        let mut affine = self.affine;
        let origin = self.grid().world([s[0] as f64, s[1] as f64, s[2] as f64]);
        for (r, o) in origin.iter().enumerate() {
            affine[r][3] = *o;
        }
        fn take<T: Copy>(src: &[T], d: [usize; 3], s: [usize; 3], n: [usize; 3]) -> Vec<T> {
            let mut out = Vec::with_capacity(n[0] * n[1] * n[2]);
            for z in s[2]..s[2] + n[2] {
                for y in s[1]..s[1] + n[1] {
                    let row = s[0] + d[0] * (y + d[1] * z);
                    out.extend_from_slice(&src[row..row + n[0]]);
                }
            }
            out
        }
        let data = match &self.data {
            VoxelData::U8(v) => VoxelData::U8(take(v, self.dims, s, n)),
            VoxelData::I16(v) => VoxelData::I16(take(v, self.dims, s, n)),
            VoxelData::F32(v) => VoxelData::F32(take(v, self.dims, s, n)),
        };
        Volume {
            dims: n,
            spacing: self.spacing,
            affine,
            data,
        }
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

    /// [`Volume::write_nifti`] through a temporary file and a rename: the file appears whole
    /// or not at all.
    pub fn write_nifti_atomic(&self, path: &Path) -> Result<(), VolumeError> {
        crate::atomic::write_with(
            path,
            |tmp| self.write_nifti(tmp),
            |e| file_err(path, format!("cannot write NIfTI: {e}")),
        )
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

/// The largest 6-connected component of `mask` (flood fill, O(voxels)); empty if none.
pub fn largest_component(mask: &[bool], dims: [usize; 3]) -> Vec<bool> {
    let [nx, ny, nz] = dims;
    let n = mask.len();
    let mut seen = vec![false; n];
    let mut stack: Vec<usize> = Vec::new();
    let mut best = (0usize, usize::MAX);
    let mut fill = |seed: usize, seen: &mut Vec<bool>, mark: Option<&mut Vec<bool>>| -> usize {
        let mut count = 0;
        stack.clear();
        stack.push(seed);
        seen[seed] = true;
        let mut mark = mark;
        while let Some(i) = stack.pop() {
            count += 1;
            if let Some(m) = mark.as_deref_mut() {
                m[i] = true;
            }
            let (x, y, z) = (i % nx, (i / nx) % ny, i / (nx * ny));
            let mut push = |j: usize| {
                if mask[j] && !seen[j] {
                    seen[j] = true;
                    stack.push(j);
                }
            };
            if x > 0 {
                push(i - 1);
            }
            if x + 1 < nx {
                push(i + 1);
            }
            if y > 0 {
                push(i - nx);
            }
            if y + 1 < ny {
                push(i + nx);
            }
            if z > 0 {
                push(i - nx * ny);
            }
            if z + 1 < nz {
                push(i + nx * ny);
            }
        }
        count
    };
    for i in 0..n {
        if mask[i] && !seen[i] {
            let c = fill(i, &mut seen, None);
            if c > best.0 {
                best = (c, i);
            }
        }
    }
    let mut out = vec![false; n];
    if best.1 != usize::MAX {
        let mut seen2 = vec![false; n];
        fill(best.1, &mut seen2, Some(&mut out));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crop_moves_origin_exactly_and_inverse_maps_back() {
        let mut v = Volume::new(
            [4, 5, 6],
            [0.5, 1.0, 2.0],
            VoxelData::U8((0..120).map(|i| i as u8).collect()),
        )
        .unwrap();
        v.affine[0][3] = 10.0;
        let c = v.crop([1, 2, 3], [2, 2, 2]);
        assert_eq!(c.dims, [2, 2, 2]);
        assert_eq!(c.data.get_f32(0), v.data.get_f32(v.index(1, 2, 3)));
        assert_eq!(
            c.grid().world([0.0, 0.0, 0.0]),
            v.grid().world([1.0, 2.0, 3.0])
        );
        let inv = v.grid().inverse().unwrap();
        let w = v.grid().world([1.5, 2.0, 3.25]);
        let back: Vec<f64> = (0..3)
            .map(|r| inv[r][0] * w[0] + inv[r][1] * w[1] + inv[r][2] * w[2] + inv[r][3])
            .collect();
        assert!((back[0] - 1.5).abs() < 1e-12 && (back[2] - 3.25).abs() < 1e-12);
        assert_eq!(v.grid().spacing(), [0.5, 1.0, 2.0]);
    }

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

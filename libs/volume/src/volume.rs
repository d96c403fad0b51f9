//! 3D volumes with their geometry.
//!
//! Voxel order is NIfTI's: x fastest, then y, then z (`index = x + nx * (y + ny * z)`).
//! The affine maps voxel indices to world millimetres in NIfTI's RAS+ convention.

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
    /// The direction each voxel axis points to, as nibabel's `aff2axcodes` writes it
    /// (`RAS`: i to the right, j anterior, k superior; `PLI` for OpenKBP's volumes).
    pub fn axcodes(&self) -> String {
        let a = &self.affine;
        (0..3)
            .map(|c| {
                let r = (0..3)
                    .max_by(|&x, &y| a[x][c].abs().total_cmp(&a[y][c].abs()))
                    .unwrap_or(0);
                let pos = a[r][c] >= 0.0;
                ["RL", "AP", "SI"][r]
                    .chars()
                    .nth(usize::from(!pos))
                    .unwrap_or('?')
            })
            .collect()
    }

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
    #[error("volume data has {got} voxels, dims {dims:?} need {want}")]
    Size {
        dims: [usize; 3],
        got: usize,
        want: usize,
    },
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
}

/// The 6-connected components of `mask` (flood fill, O(voxels)): per voxel its
/// component's number (1, 2, ... in the order of each component's first voxel; 0 outside
/// the mask), and each component's voxel count (`sizes[c - 1]`).
pub fn component_labels(mask: &[bool], dims: [usize; 3]) -> (Vec<u32>, Vec<usize>) {
    let [nx, ny, nz] = dims;
    let n = mask.len();
    let mut ids = vec![0u32; n];
    let mut sizes = Vec::new();
    let mut stack: Vec<usize> = Vec::new();
    for seed in 0..n {
        if !mask[seed] || ids[seed] != 0 {
            continue;
        }
        let id = sizes.len() as u32 + 1;
        let mut count = 0;
        ids[seed] = id;
        stack.push(seed);
        while let Some(i) = stack.pop() {
            count += 1;
            let (x, y, z) = (i % nx, (i / nx) % ny, i / (nx * ny));
            let mut push = |j: usize| {
                if mask[j] && ids[j] == 0 {
                    ids[j] = id;
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
        sizes.push(count);
    }
    (ids, sizes)
}

/// Which of components of `sizes` (as [`component_labels`] counts them) hold at least
/// `share` of the largest one's voxels: 1 (or more) the largest alone (the first of equal
/// ones), 0 (or less) all.
pub fn kept_components(sizes: &[usize], share: f64) -> Vec<bool> {
    let largest = (0..sizes.len()).fold(0, |b, i| if sizes[i] > sizes[b] { i } else { b });
    let most = sizes.get(largest).copied().unwrap_or(0) as f64;
    (0..sizes.len())
        .map(|i| {
            if share >= 1.0 {
                i == largest
            } else {
                sizes[i] as f64 >= share * most
            }
        })
        .collect()
}

/// The largest 6-connected component of `mask` (the first of equal ones); empty if none.
pub fn largest_component(mask: &[bool], dims: [usize; 3]) -> Vec<bool> {
    large_components(mask, dims, 1.0)
}

/// The 6-connected components of `mask` holding at least `share` of the largest one's
/// voxels ([`kept_components`]): 1 keeps [`largest_component`], 0 the whole mask.
pub fn large_components(mask: &[bool], dims: [usize; 3], share: f64) -> Vec<bool> {
    let (ids, sizes) = component_labels(mask, dims);
    let kept = kept_components(&sizes, share);
    ids.iter()
        .map(|&id| id > 0 && kept[id as usize - 1])
        .collect()
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

    /// Components numbered in scan order with their sizes; the largest (the first of
    /// equal ones) and those of at least a share of it.
    #[test]
    fn components_by_size() {
        // A row: sizes 2, 3, 1, 3 (components 1..4).
        let mask: Vec<bool> = [1, 1, 0, 1, 1, 1, 0, 1, 0, 1, 1, 1]
            .iter()
            .map(|&v| v == 1)
            .collect();
        let dims = [12, 1, 1];
        let (ids, sizes) = component_labels(&mask, dims);
        assert_eq!(ids, vec![1, 1, 0, 2, 2, 2, 0, 3, 0, 4, 4, 4]);
        assert_eq!(sizes, vec![2, 3, 1, 3]);
        let as_u8 = |m: Vec<bool>| m.into_iter().map(u8::from).collect::<Vec<_>>();
        assert_eq!(
            as_u8(largest_component(&mask, dims)),
            vec![0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            as_u8(large_components(&mask, dims, 0.5)),
            vec![1, 1, 0, 1, 1, 1, 0, 0, 0, 1, 1, 1]
        );
        assert_eq!(large_components(&mask, dims, 0.0), mask);
        assert_eq!(
            large_components(&mask, dims, 1.0),
            largest_component(&mask, dims)
        );
        // In 3D, 6-connected: diagonal neighbours are apart.
        let mut cube = vec![false; 8];
        cube[0] = true; // (0,0,0)
        cube[3] = true; // (1,1,0)
        cube[7] = true; // (1,1,1)
        let (ids, sizes) = component_labels(&cube, [2, 2, 2]);
        assert_eq!(sizes, vec![1, 2]);
        assert_eq!(ids[3], ids[7]);
        assert!(largest_component(&[false; 4], [4, 1, 1])
            .iter()
            .all(|&k| !k));
    }
}

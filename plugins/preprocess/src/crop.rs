//! Finding the head in a head-and-neck CT, and foreground boxes for MRI.

use shapeflow_core::{Volume, VoxelData};

/// A crop box in voxel indices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CropBox {
    pub start: [usize; 3],
    pub size: [usize; 3],
}

impl CropBox {
    pub fn contains(&self, p: [usize; 3]) -> bool {
        (0..3).all(|a| p[a] >= self.start[a] && p[a] < self.start[a] + self.size[a])
    }
}

/// The voxel axis that points most along world z (superior), and whether index increases
/// towards superior.
pub fn superior_axis(v: &Volume) -> (usize, bool) {
    let a = (0..3)
        .max_by(|&i, &j| v.affine[2][i].abs().total_cmp(&v.affine[2][j].abs()))
        .unwrap_or(2);
    (a, v.affine[2][a] > 0.0)
}

/// Places a window of `size` voxels centred at `centre` inside `0..n`.
fn window(centre: f64, size: usize, n: usize) -> (usize, usize) {
    let size = size.min(n).max(1);
    let start = (centre - size as f64 / 2.0).round().max(0.0) as usize;
    (start.min(n - size), size)
}

/// The head box of a CT: body = HU above `threshold_hu`, its largest connected component;
/// the box spans `size_mm` along each axis, starts at the top of the skull along the
/// superior axis and is centred in-plane on the body's centroid within that slab.
pub fn head_box(ct: &Volume, threshold_hu: f32, size_mm: [f64; 3]) -> Result<CropBox, String> {
    let n = ct.len();
    let body: Vec<bool> = match &ct.data {
        VoxelData::I16(d) => d.iter().map(|&v| v as f32 > threshold_hu).collect(),
        VoxelData::U8(d) => d.iter().map(|&v| v as f32 > threshold_hu).collect(),
        VoxelData::F32(d) => d.iter().map(|&v| v > threshold_hu).collect(),
    };
    debug_assert_eq!(body.len(), n);
    let body = shapeflow_core::volume::largest_component(&body, ct.dims);
    let (sup, up) = superior_axis(ct);
    let dims = ct.dims;
    let coord = |i: usize| {
        [
            i % dims[0],
            (i / dims[0]) % dims[1],
            i / (dims[0] * dims[1]),
        ]
    };
    // Top of the skull: the most superior index holding body.
    let mut top: Option<usize> = None;
    for (i, &b) in body.iter().enumerate() {
        if b {
            let c = coord(i)[sup];
            top = Some(match top {
                None => c,
                Some(t) if up => t.max(c),
                Some(t) => t.min(c),
            });
        }
    }
    let top = top.ok_or_else(|| {
        format!("no voxel above {threshold_hu} HU: is this a CT in Hounsfield units?")
    })?;
    let sizes: [usize; 3] =
        std::array::from_fn(|a| ((size_mm[a] / ct.spacing[a]).round() as usize).clamp(1, dims[a]));
    let (lo, hi) = if up {
        (top + 1 - sizes[sup].min(top + 1), top)
    } else {
        (top, (top + sizes[sup] - 1).min(dims[sup] - 1))
    };
    // In-plane centroid of the body within the head slab.
    let mut sum = [0f64; 3];
    let mut cnt = 0f64;
    for (i, &b) in body.iter().enumerate() {
        if b {
            let c = coord(i);
            if c[sup] >= lo && c[sup] <= hi {
                for a in 0..3 {
                    sum[a] += c[a] as f64;
                }
                cnt += 1.0;
            }
        }
    }
    let mut start = [0usize; 3];
    let mut size = [0usize; 3];
    for a in 0..3 {
        if a == sup {
            start[a] = lo;
            size[a] = hi - lo + 1;
        } else {
            let (s, z) = window(sum[a] / cnt.max(1.0), sizes[a], dims[a]);
            start[a] = s;
            size[a] = z;
        }
    }
    Ok(CropBox { start, size })
}

/// Bounding box of `image != background` (nnU-Net's crop to non-zero) grown by `margin_mm`.
pub fn foreground_box(img: &Volume, background: f32, margin_mm: f64) -> CropBox {
    let dims = img.dims;
    let mut lo = dims;
    let mut hi = [0usize; 3];
    let mut any = false;
    for i in 0..img.len() {
        if img.data.get_f32(i) != background {
            let c = [
                i % dims[0],
                (i / dims[0]) % dims[1],
                i / (dims[0] * dims[1]),
            ];
            for a in 0..3 {
                lo[a] = lo[a].min(c[a]);
                hi[a] = hi[a].max(c[a]);
            }
            any = true;
        }
    }
    if !any {
        return CropBox {
            start: [0; 3],
            size: dims,
        };
    }
    let mut start = [0; 3];
    let mut size = [0; 3];
    for a in 0..3 {
        let m = (margin_mm / img.spacing[a]).ceil() as usize;
        start[a] = lo[a].saturating_sub(m);
        size[a] = (hi[a] + m + 1).min(dims[a]) - start[a];
    }
    CropBox { start, size }
}

/// Organ voxels of `labels` outside `b`.
pub fn lost_label_voxels(labels: &Volume, b: &CropBox) -> usize {
    let VoxelData::U8(l) = &labels.data else {
        return 0;
    };
    let d = labels.dims;
    l.iter()
        .enumerate()
        .filter(|(i, &v)| v != 0 && !b.contains([i % d[0], (i / d[0]) % d[1], i / (d[0] * d[1])]))
        .count()
}

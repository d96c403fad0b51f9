//! Deterministic synthetic datasets: the built-in demo data.
//!
//! - `head-neck`: a CT-like head and neck (HU) with the 9 MICCAI 2015 organs at plausible
//!   positions and sizes: skull and mandible as bone, brain, brainstem, a thin chiasm and optic
//!   nerves running to the eyes, parotids and submandibular glands on both sides, a neck and
//!   shoulders below (so that head-crop has work), per-patient variation and noise. As in a
//!   real CT, the soft-tissue organs differ little from their neighbours in HU and are seen
//!   by what surrounds them: cerebrospinal fluid around the brainstem (the cisterns) and the
//!   chiasm (the suprasellar cistern), orbital fat around the optic nerves, fat planes around
//!   the submandibular glands, fatty parotids against muscle.
//! - `mri`: an MRI-like volume (f32, arbitrary units) with one curved, hippocampus-like organ.
//!
//! World coordinates are RAS+ millimetres with the origin at voxel 0: +x is the patient's
//! right, +y anterior, +z superior. `_R` organs therefore lie at larger x than `_L` ones.

use rayon::prelude::*;
use shapeflow_core::{CaseData, Volume, VoxelData};
use std::sync::Arc;

/// The 9 organs of the MICCAI 2015 challenge, in label order.
pub const HN_ORGANS: [&str; 9] = [
    "BrainStem",
    "Chiasm",
    "Mandible",
    "OpticNerve_L",
    "OpticNerve_R",
    "Parotid_L",
    "Parotid_R",
    "Submandibular_L",
    "Submandibular_R",
];

pub use shapeflow_core::rng::Rng;

/// Per-voxel noise that does not depend on evaluation order (so rayon cannot change it).
fn noise_at(seed: u64, i: usize) -> f64 {
    let mut r = Rng::new(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ (i as u64));
    r.normal()
}

#[derive(Clone, Copy)]
struct Ellipsoid {
    c: [f64; 3],
    r: [f64; 3],
}

/// Thickness of the fluid around the brainstem and the chiasm, mm.
const CSF_MM: f64 = 3.0;
/// Thickness of the fat around the optic nerves and the submandibular glands, mm.
const FAT_MM: f64 = 3.0;

impl Ellipsoid {
    /// The same ellipsoid with every radius `mm` longer.
    fn grown(&self, mm: f64) -> Ellipsoid {
        Ellipsoid {
            c: self.c,
            r: self.r.map(|r| r + mm),
        }
    }

    fn value(&self, p: [f64; 3]) -> f64 {
        (0..3)
            .map(|a| ((p[a] - self.c[a]) / self.r[a]).powi(2))
            .sum()
    }
    fn contains(&self, p: [f64; 3]) -> bool {
        self.value(p) <= 1.0
    }
}

/// Distance from `p` to segment `a`-`b`.
fn seg_dist(p: [f64; 3], a: [f64; 3], b: [f64; 3]) -> f64 {
    let ab: [f64; 3] = std::array::from_fn(|i| b[i] - a[i]);
    let ap: [f64; 3] = std::array::from_fn(|i| p[i] - a[i]);
    let len2: f64 = ab.iter().map(|x| x * x).sum();
    let t = if len2 > 0.0 {
        (ap.iter().zip(&ab).map(|(x, y)| x * y).sum::<f64>() / len2).clamp(0.0, 1.0)
    } else {
        0.0
    };
    (0..3)
        .map(|i| (a[i] + t * ab[i] - p[i]).powi(2))
        .sum::<f64>()
        .sqrt()
}

/// Shape of a head-and-neck phantom volume.
#[derive(Debug, Clone, Copy)]
pub struct HnSpec {
    pub dims: [usize; 3],
    pub spacing: [f64; 3],
    /// Standard deviation of the image noise in HU.
    pub noise_hu: f64,
}

/// The head-and-neck phantom of case `index` (deterministic in `seed` and `index`).
pub fn head_neck(seed: u64, index: u64, spec: HnSpec) -> CaseData {
    let mut rng = Rng::new(seed.wrapping_mul(1_000_003).wrapping_add(index));
    let ext: [f64; 3] = std::array::from_fn(|a| spec.dims[a] as f64 * spec.spacing[a]);
    // Patient placement: the head sits at the top of the field of view.
    let s = rng.range(0.92, 1.08); // overall size
    let cx = ext[0] / 2.0 + rng.range(-6.0, 6.0);
    let cy = ext[1] / 2.0 + rng.range(-6.0, 6.0);
    let top = ext[2] - rng.range(4.0, 14.0); // vertex of the skull
    let mut jit = |m: f64| rng.range(-m, m);
    let head = Ellipsoid {
        c: [cx, cy, top - 78.0 * s],
        r: [72.0 * s, 88.0 * s, 78.0 * s],
    };
    let brain = Ellipsoid {
        c: head.c,
        r: [head.r[0] * 0.88, head.r[1] * 0.88, head.r[2] * 0.86],
    };
    let hc = head.c;
    let at = |dx: f64, dy: f64, dz: f64| [hc[0] + dx * s, hc[1] + dy * s, hc[2] + dz * s];
    let brainstem = Ellipsoid {
        c: at(0.0 + jit(1.5), -12.0 + jit(2.0), -28.0 + jit(2.0)),
        r: [11.0 * s, 11.0 * s, 24.0 * s],
    };
    let chiasm = Ellipsoid {
        c: at(jit(1.0), 20.0 + jit(1.5), -8.0 + jit(1.0)),
        r: [8.0 * s, 3.5 * s, 2.5 * s],
    };
    let eye_l = at(-31.0 + jit(1.5), 62.0 + jit(2.0), -12.0 + jit(1.5));
    let eye_r = at(31.0 + jit(1.5), 62.0 + jit(2.0), -12.0 + jit(1.5));
    let nerve_l = (
        at(-6.0, 22.0, -8.0),
        [eye_l[0], eye_l[1] - 10.0 * s, eye_l[2]],
    );
    let nerve_r = (
        at(6.0, 22.0, -8.0),
        [eye_r[0], eye_r[1] - 10.0 * s, eye_r[2]],
    );
    let nerve_radius = 2.2 * s;
    let parotid_l = Ellipsoid {
        c: at(-52.0 + jit(2.0), -2.0 + jit(2.0), -58.0 + jit(2.0)),
        r: [11.0 * s, 17.0 * s, 19.0 * s],
    };
    let parotid_r = Ellipsoid {
        c: at(52.0 + jit(2.0), -2.0 + jit(2.0), -58.0 + jit(2.0)),
        r: [11.0 * s, 17.0 * s, 19.0 * s],
    };
    let subm_l = Ellipsoid {
        c: at(-30.0 + jit(2.0), 30.0 + jit(2.0), -88.0 + jit(2.0)),
        r: [9.0 * s, 11.0 * s, 8.0 * s],
    };
    let subm_r = Ellipsoid {
        c: at(30.0 + jit(2.0), 30.0 + jit(2.0), -88.0 + jit(2.0)),
        r: [9.0 * s, 11.0 * s, 8.0 * s],
    };
    // Mandible: a U-shaped body (elliptical arc opening posteriorly) and two rami.
    let mand_z = hc[2] - 78.0 * s + jit(2.0);
    let arc_c = [hc[0], hc[1] + 12.0 * s];
    let (arc_rx, arc_ry) = (44.0 * s, 48.0 * s);
    let mut mandible_pts: Vec<[f64; 3]> = (0..=60)
        .map(|k| {
            let t = -1.75 + 3.5 * k as f64 / 60.0; // radians around the chin
            [
                arc_c[0] + arc_rx * t.sin(),
                arc_c[1] + arc_ry * t.cos(),
                mand_z,
            ]
        })
        .collect();
    let ends = [mandible_pts[0], mandible_pts[60]];
    for e in ends {
        for k in 1..=20 {
            mandible_pts.push([e[0], e[1] - 0.3 * k as f64 * s, e[2] + 1.6 * k as f64 * s]);
        }
    }
    let mand_radius = 5.0 * s;
    let mand_lo: [f64; 3] = std::array::from_fn(|a| {
        mandible_pts.iter().map(|m| m[a]).fold(f64::MAX, f64::min) - mand_radius
    });
    let mand_hi: [f64; 3] = std::array::from_fn(|a| {
        mandible_pts.iter().map(|m| m[a]).fold(f64::MIN, f64::max) + mand_radius
    });
    let neck = ([cx, cy - 8.0, 0.0], 50.0 * s);
    let neck_top = head.c[2] - 40.0 * s;
    let shoulders = Ellipsoid {
        c: [cx, cy - 8.0, 0.0],
        r: [120.0 * s, 62.0 * s, 48.0 * s],
    };
    let noise_seed = seed ^ index.wrapping_mul(0xA24B_AED4_963E_E407);

    let [nx, ny, nz] = spec.dims;
    let sp = spec.spacing;
    let slice = nx * ny;
    let mut image = vec![0i16; nx * ny * nz];
    let mut labels = vec![0u8; nx * ny * nz];
    image
        .par_chunks_mut(slice)
        .zip(labels.par_chunks_mut(slice))
        .enumerate()
        .for_each(|(z, (img, lab))| {
            for y in 0..ny {
                for x in 0..nx {
                    let p = [x as f64 * sp[0], y as f64 * sp[1], z as f64 * sp[2]];
                    let i = x + nx * y;
                    let in_neck = p[2] <= neck_top
                        && ((p[0] - neck.0[0]).powi(2) + (p[1] - neck.0[1]).powi(2)).sqrt()
                            <= neck.1;
                    let body = head.contains(p) || in_neck || shoulders.contains(p);
                    let mut hu = if body { 40.0 } else { -1000.0 };
                    if body
                        && p[2] < neck_top
                        && p[2] > 40.0
                        && ((p[0] - cx).powi(2) + (p[1] - (cy - 30.0 * s)).powi(2)).sqrt() < 9.0 * s
                    {
                        hu = 600.0; // cervical spine
                    }
                    let hv = head.value(p);
                    if hv <= 1.0 && hv > 0.80 && p[2] > hc[2] - 20.0 * s {
                        hu = 850.0; // skull
                    } else if brain.contains(p) && p[2] > hc[2] - 22.0 * s {
                        hu = 32.0;
                    }
                    for eye in [eye_l, eye_r] {
                        if (0..3).map(|a| (p[a] - eye[a]).powi(2)).sum::<f64>()
                            <= (12.0 * s).powi(2)
                        {
                            hu = 12.0;
                        }
                    }
                    // What makes the soft-tissue organs visible (before them, so they win).
                    if brainstem.grown(CSF_MM).contains(p) || chiasm.grown(CSF_MM).contains(p) {
                        hu = 8.0; // cerebrospinal fluid
                    }
                    if seg_dist(p, nerve_l.0, nerve_l.1) <= nerve_radius + FAT_MM
                        || seg_dist(p, nerve_r.0, nerve_r.1) <= nerve_radius + FAT_MM
                        || subm_l.grown(FAT_MM).contains(p)
                        || subm_r.grown(FAT_MM).contains(p)
                    {
                        hu = -90.0; // fat
                    }
                    let mut label = 0u8;
                    // Larger organs first: smaller ones take priority where they touch.
                    let near_mandible = (0..3).all(|a| p[a] >= mand_lo[a] && p[a] <= mand_hi[a]);
                    if near_mandible
                        && mandible_pts.iter().any(|&m| {
                            (0..3).map(|a| (p[a] - m[a]).powi(2)).sum::<f64>()
                                <= mand_radius * mand_radius
                        })
                    {
                        hu = 1100.0;
                        label = 3;
                    }
                    if parotid_l.contains(p) {
                        hu = -10.0;
                        label = 6;
                    }
                    if parotid_r.contains(p) {
                        hu = -10.0;
                        label = 7;
                    }
                    if subm_l.contains(p) {
                        hu = 48.0;
                        label = 8;
                    }
                    if subm_r.contains(p) {
                        hu = 48.0;
                        label = 9;
                    }
                    if brainstem.contains(p) {
                        hu = 28.0;
                        label = 1;
                    }
                    if seg_dist(p, nerve_l.0, nerve_l.1) <= nerve_radius {
                        hu = 36.0;
                        label = 4;
                    }
                    if seg_dist(p, nerve_r.0, nerve_r.1) <= nerve_radius {
                        hu = 36.0;
                        label = 5;
                    }
                    if chiasm.contains(p) {
                        hu = 38.0;
                        label = 2;
                    }
                    let gi = z * slice + i;
                    let n = if body {
                        spec.noise_hu * noise_at(noise_seed, gi)
                    } else {
                        3.0 * noise_at(noise_seed, gi)
                    };
                    img[i] = (hu + n).round().clamp(-1024.0, 3071.0) as i16;
                    lab[i] = label;
                }
            }
        });
    let image = Volume::new(spec.dims, spec.spacing, VoxelData::I16(image)).expect("dims match");
    let labels = Volume::new(spec.dims, spec.spacing, VoxelData::U8(labels)).expect("dims match");
    let mut notes = serde_json::Map::new();
    notes.insert(
        "source".into(),
        serde_json::json!(format!("phantom head-neck seed {seed} case {index}")),
    );
    CaseData {
        original: Some(image.grid()),
        images: vec![Arc::new(image)],
        labels: Some(Arc::new(labels)),
        organs: HN_ORGANS.iter().map(|s| s.to_string()).collect(),
        present: vec![true; 9],
        notes,
    }
}

/// An MRI-like phantom with one curved organ ("hippocampus").
pub fn mri(seed: u64, index: u64, dims: [usize; 3], spacing: [f64; 3], noise: f64) -> CaseData {
    let mut rng = Rng::new(seed.wrapping_mul(7_000_003).wrapping_add(index));
    let ext: [f64; 3] = std::array::from_fn(|a| dims[a] as f64 * spacing[a]);
    let s = rng.range(0.85, 1.15);
    let c = [
        ext[0] / 2.0 + rng.range(-3.0, 3.0),
        ext[1] / 2.0 + rng.range(-3.0, 3.0),
        ext[2] / 2.0 + rng.range(-3.0, 3.0),
    ];
    let bend = rng.range(0.3, 0.7);
    let len = ext[1] * 0.32 * s;
    // Centre line: a bent curve along y, thick at the head, thin at the tail.
    let pts: Vec<([f64; 3], f64)> = (0..=40)
        .map(|k| {
            let t = k as f64 / 40.0 * 2.0 - 1.0;
            (
                [c[0] + bend * 8.0 * t * t, c[1] + len * t, c[2] + 4.0 * t],
                (4.2 - 1.6 * (t + 1.0) / 2.0) * s,
            )
        })
        .collect();
    let noise_seed = seed ^ index.wrapping_mul(0x9FB2_1C65_1E98_DF25);
    let [nx, ny, nz] = dims;
    let mut image = vec![0f32; nx * ny * nz];
    let mut labels = vec![0u8; nx * ny * nz];
    image
        .par_chunks_mut(nx * ny)
        .zip(labels.par_chunks_mut(nx * ny))
        .enumerate()
        .for_each(|(z, (img, lab))| {
            for y in 0..ny {
                for x in 0..nx {
                    let p = [
                        x as f64 * spacing[0],
                        y as f64 * spacing[1],
                        z as f64 * spacing[2],
                    ];
                    let i = x + nx * y;
                    // Smooth background: white matter brighter away from the centre.
                    let r = ((p[0] - c[0]).powi(2) + (p[2] - c[2]).powi(2)).sqrt();
                    let mut v = 0.55 + 0.15 * (r / 20.0).min(1.0);
                    let inside = pts.iter().any(|(q, rad)| {
                        (0..3).map(|a| (p[a] - q[a]).powi(2)).sum::<f64>() <= rad * rad
                    });
                    if inside {
                        v = 0.38;
                        lab[i] = 1;
                    }
                    img[i] = (v + noise * noise_at(noise_seed, z * nx * ny + i)) as f32;
                }
            }
        });
    let image = Volume::new(dims, spacing, VoxelData::F32(image)).expect("dims match");
    let labels = Volume::new(dims, spacing, VoxelData::U8(labels)).expect("dims match");
    let mut notes = serde_json::Map::new();
    notes.insert(
        "source".into(),
        serde_json::json!(format!("phantom mri seed {seed} case {index}")),
    );
    CaseData {
        original: Some(image.grid()),
        images: vec![Arc::new(image)],
        labels: Some(Arc::new(labels)),
        organs: vec!["hippocampus".into()],
        present: vec![true],
        notes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_neck_is_deterministic_and_plausible() {
        let spec = HnSpec {
            dims: [64, 64, 56],
            spacing: [3.5, 3.5, 4.3],
            noise_hu: 15.0,
        };
        let a = head_neck(1, 0, spec);
        assert_eq!(a, head_neck(1, 0, spec));
        assert_ne!(a.labels, head_neck(1, 1, spec).labels, "cases differ");
        let counts = a.organ_voxels();
        for (k, n) in counts.iter().enumerate() {
            assert!(*n > 0, "{} missing", HN_ORGANS[k]);
        }
        // Right organs lie at larger x (RAS+).
        let cx = |k: usize| {
            let l = a.labels.as_ref().unwrap();
            let VoxelData::U8(d) = &l.data else {
                unreachable!()
            };
            let (mut s, mut n) = (0.0, 0.0);
            for (i, &v) in d.iter().enumerate() {
                if v as usize == k + 1 {
                    s += (i % l.dims[0]) as f64;
                    n += 1.0;
                }
            }
            s / n
        };
        assert!(cx(6) > cx(5) && cx(4) > cx(3) && cx(8) > cx(7));
        // Mandible is bone, parotid is soft tissue.
        let img = a.image().unwrap();
        let lab = a.labels.as_ref().unwrap();
        let mean = |k: u8| {
            let VoxelData::U8(l) = &lab.data else {
                unreachable!()
            };
            let v: Vec<f32> = l
                .iter()
                .enumerate()
                .filter(|(_, &x)| x == k)
                .map(|(i, _)| img.data.get_f32(i))
                .collect();
            v.iter().sum::<f32>() / v.len() as f32
        };
        assert!(mean(3) > 700.0 && mean(6) < 100.0);
    }

    /// Every organ differs by at least 20 HU from the voxels just outside it (so that it can
    /// be seen and learned), at the demo's resolution without noise.
    #[test]
    fn every_organ_stands_out_from_its_surroundings() {
        let spec = HnSpec {
            dims: [110, 120, 100],
            spacing: [2.0, 2.0, 2.5],
            noise_hu: 0.0,
        };
        let a = head_neck(7, 0, spec);
        let img = a.image().unwrap();
        let VoxelData::U8(lab) = &a.labels.as_ref().unwrap().data else {
            unreachable!()
        };
        let [nx, ny, nz] = spec.dims;
        for k in 1..=9u8 {
            let (mut inside, mut ni, mut ring, mut nr) = (0.0, 0.0, 0.0, 0.0);
            for z in 1..nz - 1 {
                for y in 1..ny - 1 {
                    for x in 1..nx - 1 {
                        let i = x + nx * (y + ny * z);
                        if lab[i] == k {
                            inside += img.data.get_f32(i) as f64;
                            ni += 1.0;
                            continue;
                        }
                        let next = [1, nx, nx * ny];
                        let touches = next.iter().any(|&d| lab[i - d] == k || lab[i + d] == k);
                        if lab[i] == 0 && touches {
                            ring += img.data.get_f32(i) as f64;
                            nr += 1.0;
                        }
                    }
                }
            }
            assert!(ni > 0.0 && nr > 0.0, "{}", HN_ORGANS[k as usize - 1]);
            let (inside, ring) = (inside / ni, ring / nr);
            assert!(
                (inside - ring).abs() >= 20.0,
                "{}: {inside:.1} HU inside vs {ring:.1} HU around",
                HN_ORGANS[k as usize - 1]
            );
        }
    }

    #[test]
    fn mri_phantom_has_one_organ() {
        let a = mri(3, 2, [32, 40, 32], [1.0; 3], 0.03);
        assert_eq!(a.organs, vec!["hippocampus"]);
        let n = a.organ_voxels()[0];
        assert!(n > 300 && n < 5000, "{n}");
    }
}

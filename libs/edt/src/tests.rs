use super::*;

struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Dims of 1 to `max` per axis and an anisotropic spacing (z the coarsest, as in CT).
fn random_grid(rng: &mut XorShift, max: [u64; 3]) -> ([usize; 3], [f64; 3]) {
    let d = max.map(|m| 1 + (rng.next() % m) as usize);
    let s = [
        0.3 + 2.7 * rng.unit(),
        0.3 + 2.7 * rng.unit(),
        0.5 + 4.5 * rng.unit(),
    ];
    (d, s)
}

fn coords(i: usize, d: [usize; 3]) -> [f64; 3] {
    [
        (i % d[0]) as f64,
        ((i / d[0]) % d[1]) as f64,
        (i / (d[0] * d[1])) as f64,
    ]
}

fn dist(a: [f64; 3], b: [f64; 3], s: [f64; 3]) -> f64 {
    (0..3)
        .map(|k| ((a[k] - b[k]) * s[k]).powi(2))
        .sum::<f64>()
        .sqrt()
}

/// Brute force: every voxel against every voxel of the other set.
fn brute_signed(labels: &[u8], d: [usize; 3], s: [f64; 3], label: u8) -> Vec<f64> {
    let n = labels.len();
    (0..n)
        .map(|i| {
            let p = coords(i, d);
            let inside = labels[i] == label;
            if inside && is_boundary(labels, d, i, label) {
                return 0.0;
            }
            let best = (0..n)
                .filter(|&j| (labels[j] == label) != inside)
                .map(|j| dist(p, coords(j, d), s))
                .fold(f64::INFINITY, f64::min);
            if inside {
                -best
            } else {
                best
            }
        })
        .collect()
}

/// The automatic choice, then each algorithm forced, at every vector width available.
fn methods() -> Vec<Method> {
    let mut m = vec![Method::auto()];
    for simd in Simd::available() {
        m.push(Method { simd, brute_max: 0 });
        m.push(Method {
            simd,
            brute_max: usize::MAX,
        });
    }
    m
}

#[test]
fn matches_brute_force_on_random_anisotropic_volumes() {
    let mut rng = XorShift(0x1234_5678_9abc_def1);
    let mut checked = 0;
    for case in 0..300 {
        let (d, s) = random_grid(&mut rng, [9, 9, 7]);
        let n = d[0] * d[1] * d[2];
        let density = rng.unit();
        // Labels 0..3 with blobs: several organs in one map, like the real data.
        let labels: Vec<u8> = (0..n)
            .map(|_| {
                if rng.unit() < density {
                    1 + (rng.next() % 3) as u8
                } else {
                    0
                }
            })
            .collect();
        for label in 1..=3u8 {
            let Some(ours) = signed_map(&labels, d, s, label, Scale::Millimetres) else {
                assert!(!labels.contains(&label));
                continue;
            };
            if labels.iter().all(|&l| l == label) {
                assert!(ours.iter().all(|&v| v == -INF));
                continue;
            }
            let want = brute_signed(&labels, d, s, label);
            // Every algorithm choice: the one picked for this CPU, then FH only and direct
            // minimisation only at each vector width the CPU has.
            for method in methods() {
                let ours = signed_map_with(&labels, d, s, label, Scale::Millimetres, method)
                    .expect("present");
                for (i, (&o, &w)) in ours.iter().zip(&want).enumerate() {
                    assert!(
                        ((o as f64) - w).abs() < 1e-4,
                        "case {case} dims {d:?} spacing {s:?} label {label} voxel {i} \
                         {method:?}: {o} vs {w}"
                    );
                }
            }
            checked += 1;
        }
    }
    assert!(checked > 300, "{checked}");
}

#[test]
fn normalized_map_is_in_unit_range_with_zero_boundary() {
    let d = [20, 18, 12];
    let s = [0.9, 0.9, 2.5];
    let n = d[0] * d[1] * d[2];
    let labels: Vec<u8> = (0..n)
        .map(|i| {
            let p = coords(i, d);
            (((p[0] - 9.0) * 0.9).powi(2)
                + ((p[1] - 8.0) * 0.9).powi(2)
                + ((p[2] - 6.0) * 2.5).powi(2)
                < 36.0) as u8
        })
        .collect();
    let m = signed_map(&labels, d, s, 1, Scale::Normalized).unwrap();
    let min = m.iter().cloned().fold(f32::MAX, f32::min);
    let max = m.iter().cloned().fold(f32::MIN, f32::max);
    assert!(
        (min + 1.0).abs() < 1e-6 && (max - 1.0).abs() < 1e-6,
        "{min} {max}"
    );
    for i in 0..n {
        let b = labels[i] == 1 && is_boundary(&labels, d, i, 1);
        assert_eq!(m[i] == 0.0, b, "voxel {i}");
        assert_eq!(m[i] < 0.0, labels[i] == 1 && !b);
    }
}

#[test]
fn single_voxel_and_full_volume_are_defined() {
    let d = [5, 4, 3];
    let s = [1.0, 2.0, 3.0];
    let mut labels = vec![0u8; 60];
    labels[27] = 1;
    let m = signed_map(&labels, d, s, 1, Scale::Millimetres).unwrap();
    assert_eq!(m[27], 0.0, "a single voxel is all boundary");
    assert!(m.iter().enumerate().all(|(i, &v)| i == 27 || v > 0.0));
    let nm = signed_map(&labels, d, s, 1, Scale::Normalized).unwrap();
    assert_eq!(nm.iter().cloned().fold(0.0, f32::max), 1.0);
    let full = vec![1u8; 60];
    assert!(signed_map(&full, d, s, 1, Scale::Normalized)
        .unwrap()
        .iter()
        .all(|&v| v == -1.0));
    assert!(signed_map(&labels, d, s, 2, Scale::Normalized).is_none());
}

#[test]
fn unsigned_edt_of_a_point_is_the_distance() {
    let d = [7, 6, 5];
    let s = [0.5, 1.5, 3.0];
    let c = 3 + 7 * (2 + 6 * 2);
    let sq = sq_edt(d, s, |i| i == c);
    for (i, v) in sq.iter().enumerate() {
        let want = dist(coords(i, d), coords(c, d), s);
        assert!(((*v as f64).sqrt() - want).abs() < 1e-5);
    }
}

/// The passes on wider volumes than the signed-map property test reaches: row widths from 1 to
/// 40 voxels (the vectorised loop's 16-, 4- and 1-lane paths and its overlapping last chunk),
/// lengths that are not multiples of four (its groups of four outputs), with and without a
/// feature box, squared and not.
#[test]
fn passes_match_brute_force_at_every_width() {
    let mut rng = XorShift(0x0dd_ba11_cafe_f00d);
    for case in 0..60 {
        let (d, s) = random_grid(&mut rng, [40, 11, 9]);
        let n = d[0] * d[1] * d[2];
        let density = 0.002 + 0.1 * rng.unit();
        let features: Vec<usize> = (0..n).filter(|_| rng.unit() < density).collect();
        if features.is_empty() {
            continue;
        }
        let mut bb = BBox {
            lo: [usize::MAX; 3],
            hi: [0; 3],
        };
        for &f in &features {
            for (k, c) in coords(f, d).into_iter().enumerate() {
                bb.lo[k] = bb.lo[k].min(c as usize);
                bb.hi[k] = bb.hi[k].max(c as usize);
            }
        }
        let want: Vec<f64> = (0..n)
            .map(|i| {
                features
                    .iter()
                    .map(|&f| dist(coords(i, d), coords(f, d), s))
                    .fold(f64::INFINITY, f64::min)
            })
            .collect();
        for method in methods() {
            for (boxed, sqrt) in [(false, false), (true, false), (true, true)] {
                let mut buf = vec![INF; n];
                for &f in &features {
                    buf[f] = 0.0;
                }
                edt_passes(&mut buf, d, s, boxed.then_some(bb), sqrt, method);
                for (i, (&o, &w)) in buf.iter().zip(&want).enumerate() {
                    let o = if sqrt { o as f64 } else { (o as f64).sqrt() };
                    assert!(
                        (o - w).abs() < 1e-4,
                        "case {case} dims {d:?} {method:?} box {boxed} sqrt {sqrt} voxel {i}: \
                         {o} vs {w}"
                    );
                }
            }
        }
    }
}

use super::*;
use shapeflow_core::Volume;
use shapeflow_io::phantom;

/// Phantom case `i` (48 x 48 x 40 at 4.5 x 4.5 x 6 mm) and its normalised SDMs.
fn phantom_case(i: u64) -> (CaseData, SdmSet) {
    let c = phantom::head_neck(
        5,
        i,
        phantom::HnSpec {
            dims: [48, 48, 40],
            spacing: [4.5, 4.5, 6.0],
            noise_hu: 10.0,
        },
    );
    let s = shapeflow_sdm::case_sdms(&c, true).unwrap();
    (c, s)
}

fn cases(n: u64) -> Vec<TrainCase> {
    (0..n)
        .map(|i| {
            let (c, s) = phantom_case(i);
            TrainCase::new(&format!("p{i}"), &c, &s).unwrap()
        })
        .collect()
}

#[test]
fn batches_do_not_depend_on_the_number_of_workers() {
    let c = Arc::new(cases(2));
    let cfg = AugmentConfig {
        patch: [16, 16, 8],
        batch: 3,
        elastic_mm: 2.0,
        ..Default::default()
    };
    let one: Vec<Vec<Sample>> = loader(c.clone(), cfg.clone(), 7, 1, 5, 1, 2)
        .iter()
        .collect();
    let four: Vec<Vec<Sample>> = loader(c.clone(), cfg.clone(), 7, 1, 5, 4, 2)
        .iter()
        .collect();
    assert_eq!(one.len(), 5);
    assert_eq!(one, four);
    let other_epoch: Vec<Vec<Sample>> = loader(c, cfg, 7, 2, 5, 2, 2).iter().collect();
    assert_ne!(one, other_epoch);
}

#[test]
fn identity_patch_is_a_plain_crop() {
    let c = cases(1);
    let cfg = AugmentConfig {
        foreground: 1.0,
        ..AugmentConfig::none([9, 7, 5])
    };
    let s = sample(&c, &cfg, 1, 0, 3);
    // Find where the crop came from: the patch's labels and image equal the volume's at an
    // integer offset, since with no rotation or scale the source points are voxel centres.
    let case = &c[0];
    let d = case.dims;
    let l = case.labels();
    let img = case.image();
    let mut found = false;
    'search: for oz in 0..=d[2] - 5 {
        for oy in 0..=d[1] - 7 {
            for ox in 0..=d[0] - 9 {
                let ok = (0..5).all(|z| {
                    (0..7).all(|y| {
                        (0..9).all(|x| {
                            let i = (ox + x) + d[0] * ((oy + y) + d[1] * (oz + z));
                            let o = x + 9 * (y + 7 * z);
                            s.image[o] == img[i] && s.labels[o] == l[i]
                        })
                    })
                });
                if ok {
                    found = true;
                    break 'search;
                }
            }
        }
    }
    assert!(found, "an unaugmented patch is a crop of the case");
    assert!(
        s.labels.iter().any(|&v| v > 0),
        "foreground 1.0 centres the patch on an organ"
    );
}

#[test]
fn foreground_bias_finds_small_organs() {
    let c = cases(2);
    let chiasm = 2u8;
    let count = |fg: f64| {
        let cfg = AugmentConfig {
            foreground: fg,
            ..AugmentConfig::none([8, 8, 4])
        };
        (0..200)
            .filter(|&i| sample(&c, &cfg, 3, 0, i).labels.contains(&chiasm))
            .count()
    };
    let (biased, uniform) = (count(0.9), count(0.0));
    assert!(
        biased > 3 * uniform.max(1),
        "biased {biased} vs uniform {uniform}"
    );
}

#[test]
fn flips_mirror_the_patch_and_swap_left_and_right_organs() {
    let c = cases(1);
    assert_eq!(c[0].left_right_pairs(), vec![(3, 4), (5, 6), (7, 8)]);
    let p = [21, 17, 11];
    let plain = AugmentConfig {
        foreground: 1.0,
        ..AugmentConfig::none(p)
    };
    let flip = AugmentConfig {
        flip: 1.0,
        ..plain.clone()
    };
    // The same random stream: same case, same centre, one mirrored.
    for index in 0..20 {
        let a = sample(&c, &plain, 4, 0, index);
        let b = sample(&c, &flip, 4, 0, index);
        assert!(b.flipped && !a.flipped);
        let swap = |l: u8| match l {
            4 => 5,
            5 => 4,
            6 => 7,
            7 => 6,
            8 => 9,
            9 => 8,
            v => v,
        };
        for z in 0..p[2] {
            for y in 0..p[1] {
                for x in 0..p[0] {
                    let o = x + p[0] * (y + p[1] * z);
                    let m = (p[0] - 1 - x) + p[0] * (y + p[1] * z);
                    assert_eq!(b.labels[o], swap(a.labels[m]));
                    assert_eq!(b.image[o], a.image[m]);
                    // Channel Parotid_L of the flipped patch is Parotid_R's, mirrored.
                    assert_eq!(b.sdms[5][o], a.sdms[6][m]);
                }
            }
        }
    }
}

#[test]
fn sdm_values_scale_with_the_zoom() {
    let c = cases(1);
    let p = [13, 13, 9];
    let base = AugmentConfig {
        foreground: 1.0,
        ..AugmentConfig::none(p)
    };
    let zoom = AugmentConfig {
        scale: [2.0, 2.0],
        ..base.clone()
    };
    let centre = 6 + 13 * (6 + 13 * 4);
    let mut checked = 0;
    for index in 0..10 {
        let (s1, s2) = (
            sample(&c, &base, 9, 0, index),
            sample(&c, &zoom, 9, 0, index),
        );
        assert_eq!(s2.scale, 2.0);
        // The patch centre maps to the same source point at any zoom: its SDM doubles.
        for k in 0..9 {
            let (a, b) = (s1.sdms[k][centre] as f64, s2.sdms[k][centre] as f64);
            let want = if a.abs() >= 1.0 - 1e-4 {
                a
            } else {
                (2.0 * a).clamp(-1.0, 1.0)
            };
            assert!((b - want).abs() < 1e-5, "organ {k}: {a} -> {b}");
            checked += (a != 0.0) as usize;
        }
        // Away from the centre the zoomed patch looks at points twice as close.
        assert_eq!(s1.labels[centre], s2.labels[centre]);
    }
    assert!(checked > 20);
}

/// A volume stored with its left-right axis second (OpenKBP's PLI order): the flip mirrors
/// that axis, not voxel axis 0 (which there runs front to back), and organs named
/// `LeftX`/`RightX` are swapped.
#[test]
fn flips_mirror_the_left_right_axis_of_the_affine() {
    let mut c = phantom::head_neck(
        5,
        0,
        phantom::HnSpec {
            dims: [48, 48, 40],
            spacing: [4.5, 4.5, 6.0],
            noise_hu: 10.0,
        },
    );
    // Relabel the voxel axes: axis 0 now runs posterior, axis 1 left (a PLI-like affine).
    let reorient = |v: &Volume| {
        let mut v = v.clone();
        v.affine[0] = [0.0, -4.5, 0.0, 0.0];
        v.affine[1] = [-4.5, 0.0, 0.0, 0.0];
        Arc::new(v)
    };
    c.images = c.images.iter().map(|v| reorient(v)).collect();
    c.labels = c.labels.as_deref().map(reorient);
    for o in c.organs.iter_mut() {
        if let Some(stem) = o.strip_suffix("_L") {
            *o = format!("Left{stem}");
        } else if let Some(stem) = o.strip_suffix("_R") {
            *o = format!("Right{stem}");
        }
    }
    let s = shapeflow_sdm::case_sdms(&c, true).unwrap();
    let case = TrainCase::new("pli", &c, &s).unwrap();
    assert_eq!(case.left_right_axis(), 1);
    assert_eq!(case.left_right_pairs(), vec![(3, 4), (5, 6), (7, 8)]);
    let cases = vec![case];
    let p = [15, 17, 11];
    let plain = AugmentConfig {
        foreground: 1.0,
        ..AugmentConfig::none(p)
    };
    let flip = AugmentConfig {
        flip: 1.0,
        ..plain.clone()
    };
    for index in 0..10 {
        let a = sample(&cases, &plain, 4, 0, index);
        let b = sample(&cases, &flip, 4, 0, index);
        for z in 0..p[2] {
            for y in 0..p[1] {
                for x in 0..p[0] {
                    let o = x + p[0] * (y + p[1] * z);
                    let m = x + p[0] * ((p[1] - 1 - y) + p[1] * z);
                    assert_eq!(b.image[o], a.image[m], "mirrored along axis 1");
                }
            }
        }
    }
}

/// Band-limited maps through a zoom: the far field stays 1 (zooming out must not turn it
/// into the band), values inside the band scale with the zoom and stay within [-1, 1].
#[test]
fn zoom_keeps_saturated_values_and_clamps_the_rest() {
    assert_eq!(zoomed(1.0, 0.85), 1.0);
    assert_eq!(zoomed(-1.0, 1.15), -1.0);
    assert!((zoomed(0.5, 0.85) - 0.425).abs() < 1e-6);
    assert_eq!(zoomed(0.9, 1.15), 1.0);
    assert_eq!(zoomed(-0.95, 1.15), -1.0);
}

/// A case with a second channel: every channel goes through the same geometry (a copy of
/// channel 0 comes out as channel 0 does, without intensity changes), the intensity
/// augmentation is drawn per channel, and channel 0 is drawn exactly as a one-channel
/// case's (adding channels does not change what a one-channel run sees).
#[test]
fn channels_share_the_geometry_and_draw_their_own_intensities() {
    let (c, s) = phantom_case(0);
    let one = vec![TrainCase::new("p", &c, &s).unwrap()];
    let mut c2 = c.clone();
    c2.images.push(c.images[0].clone());
    let two = vec![TrainCase::new("p", &c2, &s).unwrap()];
    assert_eq!(two[0].channels(), 2);
    let n = 16 * 16 * 8;
    let geometry = AugmentConfig {
        patch: [16, 16, 8],
        elastic_mm: 2.0,
        flip: 0.5,
        ..AugmentConfig::none([16, 16, 8])
    };
    let intensity = AugmentConfig {
        intensity_scale: [0.7, 1.3],
        intensity_shift: [-0.2, 0.2],
        noise: 0.1,
        ..geometry.clone()
    };
    for i in 0..4 {
        let a = sample(&one, &geometry, 3, 0, i);
        let b = sample(&two, &geometry, 3, 0, i);
        assert_eq!(b.image.len(), 2 * n);
        assert_eq!(b.image[..n], a.image[..], "channel 0, sample {i}");
        assert_eq!(b.image[n..], a.image[..], "channel 1 moves as channel 0");
        assert_eq!((b.labels, b.flipped), (a.labels, a.flipped));
        let a = sample(&one, &intensity, 3, 0, i);
        let b = sample(&two, &intensity, 3, 0, i);
        assert_eq!(
            b.image[..n],
            a.image[..],
            "channel 0 draws as before, sample {i}"
        );
        assert_ne!(
            b.image[n..],
            b.image[..n],
            "channel 1 draws its own intensities"
        );
    }
    // A set whose cases differ in channels is refused, naming both.
    let mut b = TrainSetBuilder::in_memory(true);
    b.add("p", &c2, &s, None).unwrap();
    let e = b.add("q", &c, &s, None).unwrap_err();
    assert!(e.contains("case q has 1 image channel(s), case p 2"), "{e}");
}

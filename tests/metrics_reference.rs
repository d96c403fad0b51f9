//! evaluate's metrics against medpy on a real inter-rater pair: PDDCA patient 0522c0057 as
//! annotated in PDDCA and by an oncologist (DeepMind), on the same voxel grid.

mod common;

use common::*;
use shapeflow_core::VoxelData;
use shapeflow_io::{datasets, nrrd};
use shapeflow_metrics::{organ_metrics, organ_metrics_with, Convention, Outcome, Surface};

/// A mask with its dims, spacing and grid.
type Mask = (Vec<bool>, [usize; 3], [f64; 3], shapeflow_core::Grid);

fn read_mask(p: &std::path::Path) -> Option<Mask> {
    if !p.is_file() {
        return None;
    }
    let v = datasets::as_labels(nrrd::read(p).unwrap(), p).unwrap();
    let VoxelData::U8(d) = &v.data else {
        unreachable!()
    };
    Some((
        d.iter().map(|&x| x != 0).collect(),
        v.dims,
        v.spacing,
        v.grid(),
    ))
}

#[test]
fn inter_rater_metrics_match_medpy_and_monai_definitions() {
    let a = shared("pddca-masks/0522c0057/structures");
    let b = shared("deepmind-0522c0057-oncologist");
    let dir = tempfile::tempdir().unwrap();
    let mut ours = Vec::new();
    for (pa, pb) in RATER_PAIRS {
        let (Some((ra, dims, spacing, ga)), Some((rb, _, _, gb))) = (
            read_mask(&a.join(format!("{pa}.nrrd"))),
            read_mask(&b.join(format!("{pb}.nrrd"))),
        ) else {
            continue;
        };
        assert!(
            ga.same_as(&gb, 1e-3),
            "{pa}: the two annotations are on one grid"
        );
        let monai = organ_metrics(&ra, &rb, dims, spacing, 1.0, Convention::Monai);
        let medpy = organ_metrics(&ra, &rb, dims, spacing, 1.0, Convention::Medpy);
        assert_eq!(monai.outcome, Outcome::Compared);
        assert!(
            monai.dice > 0.3 && monai.dice < 0.99,
            "{pa}: Dice {}",
            monai.dice
        );
        write_mask_pair(dir.path(), pa, &ra, &rb, dims, spacing);
        ours.push((pa, monai, medpy));
    }
    assert!(ours.len() >= 7, "organs in common: {}", ours.len());
    let Some(r) = python_json("medpy_metrics.py", &[dir.path().to_str().unwrap()]) else {
        return;
    };
    for (organ, monai, medpy) in &ours {
        let e = &r[*organ];
        let close = |ours: f64, key: &str, tol: f64| {
            let want = e[key].as_f64().unwrap();
            assert!(
                (ours - want).abs() <= tol,
                "{organ} {key}: ours {ours}, reference {want}"
            );
        };
        close(monai.dice, "dice", 1e-3);
        close(monai.hd95, "monai_hd95", 0.05);
        close(monai.assd, "monai_assd", 0.05);
        close(medpy.hd95, "medpy_hd95", 0.05);
        close(medpy.assd, "medpy_assd", 0.05);
        close(monai.hd, "hd", 0.05);
        eprintln!(
            "{organ}: Dice {:.4}, HD95 {:.2} mm (monai) / {:.2} (medpy), ASSD {:.2} / {:.2} mm",
            monai.dice, monai.hd95, medpy.hd95, monai.assd, medpy.assd
        );
    }
    // And MONAI itself.
    let Some(m) = python_json("monai_metrics.py", &[dir.path().to_str().unwrap()]) else {
        return;
    };
    for (organ, monai, _) in &ours {
        let e = &m[*organ];
        for (ours, key, tol) in [
            (monai.dice, "dice", 1e-3),
            (monai.hd95, "hd95", 0.05),
            (monai.assd, "assd", 0.05),
        ] {
            let want = e[key].as_f64().unwrap();
            assert!(
                (ours - want).abs() <= tol,
                "{organ} {key}: ours {ours}, MONAI {want}"
            );
        }
    }
}

#[test]
fn surface_element_metrics_match_deepmind_surface_distance() {
    let a = shared("pddca-masks/0522c0057/structures");
    let b = shared("deepmind-0522c0057-oncologist");
    let dir = tempfile::tempdir().unwrap();
    let mut ours = Vec::new();
    for (pa, pb) in RATER_PAIRS {
        let (Some((ra, dims, spacing, _)), Some((rb, _, _, _))) = (
            read_mask(&a.join(format!("{pa}.nrrd"))),
            read_mask(&b.join(format!("{pb}.nrrd"))),
        ) else {
            continue;
        };
        let m = organ_metrics_with(
            &ra,
            &rb,
            dims,
            spacing,
            2.0,
            Convention::Monai,
            Surface::SurfaceElements,
        );
        write_mask_pair(dir.path(), pa, &ra, &rb, dims, spacing);
        ours.push((pa, m));
    }
    assert!(ours.len() >= 7);
    let Some(r) = python_json(
        "deepmind_metrics.py",
        &[dir.path().to_str().unwrap(), "2.0"],
    ) else {
        return;
    };
    for (organ, m) in &ours {
        let e = &r[*organ];
        let close = |ours: f64, key: &str, tol: f64| {
            let want = e[key].as_f64().unwrap();
            assert!(
                (ours - want).abs() <= tol,
                "{organ} {key}: ours {ours}, surface-distance {want}"
            );
        };
        close(m.hd95, "hd95", 0.05);
        close(m.assd, "assd", 0.05);
        close(m.hd, "hd", 0.05);
        close(m.surface_dice, "surface_dice", 1e-2);
        eprintln!(
            "{organ}: HD95 {:.3} vs {:.3}, ASSD {:.3} vs {:.3}, surface Dice {:.4} vs {:.4}",
            m.hd95, e["hd95"], m.assd, e["assd"], m.surface_dice, e["surface_dice"]
        );
    }
}

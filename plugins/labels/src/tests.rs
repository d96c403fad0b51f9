use super::*;
use shapeflow_core::Volume;

fn case(organs: &[&str], present: &[bool], labels: &[u8]) -> CaseData {
    let v = Volume::new(
        [labels.len(), 1, 1],
        [1.0; 3],
        VoxelData::U8(labels.to_vec()),
    )
    .unwrap();
    CaseData {
        images: Vec::new(),
        labels: Some(Arc::new(v)),
        organs: organs.iter().map(|s| s.to_string()).collect(),
        present: present.to_vec(),
        original: None,
        notes: Default::default(),
    }
}

fn labels(c: &CaseData) -> Vec<u8> {
    match &c.labels.as_ref().unwrap().data {
        VoxelData::U8(d) => d.clone(),
        _ => unreachable!(),
    }
}

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn select_relabels_in_the_listed_order_and_keeps_presence() {
    let c = case(&["A", "B", "C"], &[true, false, true], &[0, 1, 2, 3, 3, 1]);
    let s = select_organs(&c, &names(&["C", "B"])).unwrap();
    assert_eq!(s.organs, ["C", "B"]);
    assert_eq!(s.present, [true, false]);
    // A (1) becomes background; B (2) -> 2; C (3) -> 1.
    assert_eq!(labels(&s), [0, 0, 2, 1, 1, 0]);
    assert!(s.notes.contains_key("select_organs"));
}

#[test]
fn select_passes_an_unlabelled_image_through() {
    let mut c = case(&[], &[], &[0, 0]);
    c.labels = None;
    let s = select_organs(&c, &names(&["Esophagus", "Larynx"])).unwrap();
    assert_eq!(s.organs, ["Esophagus", "Larynx"]);
    assert_eq!(s.present, [false, false]);
    assert!(s.labels.is_none());
}

#[test]
fn select_names_the_missing_organ() {
    let c = case(&["A", "B"], &[true, true], &[0, 1, 2]);
    let e = select_organs(&c, &names(&["A", "Larynx"])).unwrap_err();
    assert!(e.contains("`Larynx`") && e.contains("A, B"), "{e}");
}

#[test]
fn merge_replaces_taken_organs_and_fills_only_background() {
    // Base: A B C; overlay: B D. B's base voxels are cleared; the overlay's B and the new D
    // go where the base says background.
    let base = case(&["A", "B", "C"], &[true; 3], &[0, 1, 2, 2, 3, 0, 0]);
    let over = case(&["B", "D"], &[true; 2], &[1, 1, 0, 1, 2, 2, 0]);
    let m = merge_labels(&base, &over, None, Priority::Base).unwrap();
    assert_eq!(m.organs, ["A", "B", "C", "D"]);
    // voxel 0: bg + overlay B -> B; 1: A keeps against overlay B; 2: base B cleared, no
    // overlay -> 0; 3: base B cleared, overlay B -> B; 4: C keeps against D; 5: D; 6: 0.
    assert_eq!(labels(&m), [2, 1, 0, 2, 3, 4, 0]);
    let m = merge_labels(&base, &over, None, Priority::Overlay).unwrap();
    assert_eq!(labels(&m), [2, 2, 0, 2, 4, 4, 0]);
    // Only D taken: the base's B stays, the overlay's B is ignored.
    let m = merge_labels(&base, &over, Some(&names(&["D"])), Priority::Base).unwrap();
    assert_eq!(m.organs, ["A", "B", "C", "D"]);
    assert_eq!(labels(&m), [0, 1, 2, 2, 3, 4, 0]);
}

#[test]
fn merge_refuses_other_grids_and_unknown_organs() {
    let base = case(&["A"], &[true], &[0, 1, 0]);
    let over = case(&["B"], &[true], &[0, 1]);
    let e = merge_labels(&base, &over, None, Priority::Base).unwrap_err();
    assert!(e.contains("different grids"), "{e}");
    let over = case(&["B"], &[true], &[0, 1, 1]);
    let e = merge_labels(&base, &over, Some(&names(&["Larynx"])), Priority::Base).unwrap_err();
    assert!(e.contains("`Larynx`"), "{e}");
}

#[test]
fn params_are_checked_and_documented() {
    let reg = Registry::new().with(&LabelsPlugin).unwrap();
    reg.check_docs().unwrap();
    let build = |stage: &str, params: serde_json::Value| {
        let f = reg.get(stage).unwrap();
        f.build(
            &params,
            &shapeflow_core::BuildCtx {
                base_dir: ".".into(),
            },
        )
    };
    let e = build("merge-labels", serde_json::json!({"base": "infer"}))
        .err()
        .unwrap();
    assert!(e.message.contains("overlay"), "{e:?}");
    let e = build(
        "merge-labels",
        serde_json::json!({"base": "infer", "overlay": "infer"}),
    )
    .err()
    .unwrap();
    assert!(e.message.contains("base"), "{e:?}");
    let e = build("select-organs", serde_json::json!({"organs": ["A", "A"]}))
        .err()
        .unwrap();
    assert!(e.message.contains("twice"), "{e:?}");
    assert!(build("select-organs", serde_json::json!({})).is_err());
    assert!(build(
        "merge-labels",
        serde_json::json!({"base": "a", "overlay": "b"})
    )
    .is_ok());
}

#![no_main]
//! Any bytes as `dataset.json`, read by the MSD and the nnU-Net v2 layouts (an entry that
//! leaves the dataset folder must be refused, never read).
use libfuzzer_sys::fuzz_target;
#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let root = common::scratch().join("ds");
    let _ = std::fs::create_dir_all(root.join("imagesTr"));
    let _ = std::fs::create_dir_all(root.join("labelsTr"));
    std::fs::write(root.join("dataset.json"), data).expect("write");
    if let Ok(ds) = shapeflow_io::datasets::msd_dataset(&root, false) {
        for c in &ds.cases {
            assert!(c.images.iter().all(|i| i.starts_with(&root)) && c.label.starts_with(&root));
        }
    }
    for format in [shapeflow_io::Format::Msd, shapeflow_io::Format::NnunetV2] {
        let p = shapeflow_io::LoadParams {
            format,
            ..Default::default()
        };
        if let Ok(layout) = shapeflow_io::layouts::make(&p, Some(root.clone())) {
            let _ = layout.discover(0);
        }
    }
});

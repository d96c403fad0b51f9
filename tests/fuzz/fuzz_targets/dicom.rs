#![no_main]
//! Any bytes as a DICOM file in a case folder: scanning the folder, reading it as a one-slice
//! series and as an RTSTRUCT, and rasterising every ROI it holds (on its own grid, else on a
//! small fixed one) return results or errors, never panic, hang or allocate past the limits.
use libfuzzer_sys::fuzz_target;
use shapeflow_formats::dicom;
#[path = "common.rs"]
mod common;

#[global_allocator]
static ALLOC: shapeflow_formats::alloc::Capped = shapeflow_formats::alloc::Capped;

fuzz_target!(|data: &[u8]| {
    shapeflow_formats::set_max_voxels(1 << 22);
    let p = common::file("input.dcm", data);
    let _ = dicom::scan(common::scratch());
    let grid = match dicom::read_series(std::slice::from_ref(&p)) {
        Ok(v) => v.grid(),
        Err(_) => {
            let mut a = [[0.0; 4]; 4];
            for (i, row) in a.iter_mut().enumerate() {
                row[i] = 1.0;
            }
            shapeflow_core::Grid {
                dims: [16, 16, 16],
                affine: a,
            }
        }
    };
    if let Ok(rois) = dicom::read_rtstruct(&p) {
        for roi in &rois {
            let _ = dicom::rasterise(roi, &grid);
        }
    }
});

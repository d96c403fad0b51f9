//! Test helpers: SDMs the way edt-sdm computes them, without depending on that plugin.

use shapeflow_core::{CaseData, SdmSet, SdmUnits, VoxelData};

/// Normalised SDMs of every organ of `c`.
pub fn sdms(c: &CaseData) -> SdmSet {
    let l = c.labels.as_ref().expect("labels");
    let VoxelData::U8(lab) = &l.data else {
        panic!("u8 labels")
    };
    let maps = (0..c.organs.len())
        .map(|k| {
            shapeflow_edt::signed_map(
                lab,
                l.dims,
                l.spacing,
                (k + 1) as u8,
                shapeflow_edt::Scale::Normalized,
            )
            .map(|m| l.with_data(VoxelData::F32(m)).expect("same grid"))
        })
        .collect();
    SdmSet {
        organs: c.organs.clone(),
        maps,
        units: SdmUnits::Normalized,
    }
}

//! The `sdm` family: the `edt-sdm` stage.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use shapeflow_core::SdmSetItem as _;
use shapeflow_core::{
    CaseData, CaseInfo, Inputs, Item, Kind, ParamError, Plugin, Port, Registry, SdmSet, SdmStorage,
    SdmUnits, Shape, Stage, StageCtx, StageDef, StageError, VoxelData,
};
use shapeflow_edt::{signed_map, Scale};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Registers `edt-sdm`.
pub struct SdmPlugin;

impl Plugin for SdmPlugin {
    fn name(&self) -> &'static str {
        "sdm"
    }

    fn register(&self, registry: &mut Registry) {
        registry.add(StageDef::<SdmParams> {
            name: "edt-sdm",
            version: 2,
            summary: "Signed distance map per organ from an exact anisotropic Euclidean distance transform",
            help: HELP,
            build: |p, _| {
                if let Some(b) = p.band_mm {
                    if !(b.is_finite() && b > 0.0 && p.normalize) {
                        return Err(ParamError {
                            path: vec!["band_mm".into()],
                            message: "must be a positive number of mm, with `normalize: true`"
                                .into(),
                        });
                    }
                }
                for (organ, &b) in &p.organ_band_mm {
                    if !(b.is_finite() && b > 0.0 && p.band_mm.is_some()) {
                        return Err(ParamError {
                            path: vec!["organ_band_mm".into(), organ.clone()],
                            message: "must be a positive number of mm, with `band_mm` set".into(),
                        });
                    }
                }
                Ok(Arc::new(EdtSdm(p)))
            },
        });
    }
}

const HELP: &str = r#"
For each organ of each case, the exact Euclidean distance transform with the volume's
anisotropic spacing (Felzenszwalb-Huttenlocher, separable, linear time; the paper used
Danielsson's approximation, this is exact), signed:

  outside the organ       +d(x, organ): distance to the nearest organ voxel
  on the boundary         0; boundary = organ voxels with a face neighbour outside the organ
  inside, off boundary    -d(x, outside): distance to the nearest non-organ voxel

With `normalize: true` (default) the outside is divided by its largest value and the inside
by its largest, giving [-1, 1] (the convention of the SDM literature). Distances are between
voxel centres, in mm.

Cases: an organ absent from a case (not annotated) gets no map and is marked absent; an
annotated organ with no voxels is +1 everywhere (+inf in mm); an organ filling the whole
volume is -1 everywhere (-inf in mm).

Input: a case (from load, head-crop or resample). Output: one map per organ, stored as
quantised i16 + zstd by default.
"#;

/// Params of `edt-sdm`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SdmParams {
    /// Scale to [-1, 1] (inside by its largest distance, outside by its largest); false:
    /// millimetres.
    pub normalize: bool,
    /// Band-limited maps (null: off, the paper's global normalisation): outside distances
    /// clipped at this many mm and divided by it, inside divided by the organ's largest
    /// inside distance, so every organ's map is in [-1, 1] with the same outside scale
    /// whatever the volume's size; the zero level is the surface between voxel centres (half
    /// a voxel outside the organ's voxels), so `sdm < 0` is exactly the organ. Needs
    /// `normalize: true`.
    pub band_mm: Option<f64>,
    /// Per-organ bands in mm in place of `band_mm` (`{Esophagus: 10}`; organs as the case
    /// names them, each one of the case's organs; the others keep `band_mm`). Needs
    /// `band_mm`. Not part of the cache key while empty.
    #[schemars(extend("x-key-omits-default" = true))]
    pub organ_band_mm: BTreeMap<String, f64>,
    /// Cache storage: i16 with a per-map scale, delta-coded in byte planes (error below 1/32766
    /// of the largest distance; about 10x smaller than f32 after zstd), or f32.
    pub storage: SdmStorage,
}

impl Default for SdmParams {
    fn default() -> Self {
        SdmParams {
            normalize: true,
            band_mm: None,
            organ_band_mm: BTreeMap::new(),
            storage: SdmStorage::I16,
        }
    }
}

struct EdtSdm(SdmParams);

impl EdtSdm {
    /// The maps of one case, as the params ask.
    fn sdms(&self, case: &CaseData) -> Result<SdmSet, StageError> {
        let mut s = case_sdms(case, self.0.normalize && self.0.band_mm.is_none())?;
        if let Some(band) = self.0.band_mm {
            if let Some(unknown) = self.0.organ_band_mm.keys().find(|o| !s.organs.contains(o)) {
                return Err(StageError::msg(format!(
                    "edt-sdm: organ_band_mm names `{unknown}`, not one of this case's organs ({})",
                    s.organs.join(", ")
                )));
            }
            band_limit_organs(&mut s, |o| {
                self.0.organ_band_mm.get(o).copied().unwrap_or(band)
            });
        }
        Ok(s)
    }
}

/// Turns millimetre maps into band-limited normalised maps whose zero level is the organ's
/// surface between voxel centres: with `h` half the smallest spacing, outside voxels map to
/// `min(d - h, band) / band` (so the first outside layer is already positive) and organ
/// voxels, boundary ones included, to `(d - h) / (largest inside distance + h)` (so every
/// organ voxel is negative and `sdm < 0` gives back exactly the organ). +inf (annotated,
/// empty) becomes 1, -inf (the organ fills the volume) -1.
pub fn band_limit(s: &mut SdmSet, band_mm: f64) {
    band_limit_organs(s, |_| band_mm)
}

/// [`band_limit`] with each organ's own band, `band_of(organ name)` mm.
pub fn band_limit_organs(s: &mut SdmSet, band_of: impl Fn(&str) -> f64) {
    for (organ, m) in s.organs.iter().zip(s.maps.iter_mut()) {
        let Some(m) = m else { continue };
        let band_mm = band_of(organ);
        let h = 0.5 * m.spacing.iter().copied().fold(f64::INFINITY, f64::min) as f32;
        let mut v = m.to_f32();
        let inner = v
            .iter()
            .filter(|x| x.is_finite() && **x <= 0.0)
            .fold(0f32, |a, &x| a.max(-x))
            + h;
        for x in v.iter_mut() {
            *x = if x.is_infinite() {
                x.signum()
            } else if *x > 0.0 {
                ((*x - h) as f64 / band_mm).min(1.0) as f32
            } else {
                (*x - h) / inner
            };
        }
        *m = m.with_data(VoxelData::F32(v)).unwrap_or_else(|_| m.clone());
    }
    s.units = SdmUnits::Normalized;
}

/// The SDMs of every organ of `case` (absent organs: `None`).
pub fn case_sdms(case: &CaseData, normalize: bool) -> Result<SdmSet, StageError> {
    let units = if normalize {
        SdmUnits::Normalized
    } else {
        SdmUnits::Mm
    };
    // An unlabeled case (a test image without labels): no organ annotated, no map.
    let Some(labels) = case.labels.as_ref() else {
        return Ok(SdmSet {
            organs: case.organs.clone(),
            maps: vec![None; case.organs.len()],
            units,
        });
    };
    let VoxelData::U8(l) = &labels.data else {
        return Err(StageError::msg("label map must be u8"));
    };
    let scale = if normalize {
        Scale::Normalized
    } else {
        Scale::Millimetres
    };
    let n = labels.len();
    let maps: Vec<Option<shapeflow_core::Volume>> = (0..case.organs.len())
        .into_par_iter()
        .map(|k| {
            if !case.present.get(k).copied().unwrap_or(false) {
                return Ok(None);
            }
            let map = signed_map(l, labels.dims, labels.spacing, (k + 1) as u8, scale)
                .unwrap_or_else(|| {
                    // Annotated but empty: everything is outside.
                    vec![if normalize { 1.0 } else { f32::INFINITY }; n]
                });
            labels
                .with_data(VoxelData::F32(map))
                .map(Some)
                .map_err(|e| StageError::msg(e.to_string()))
        })
        .collect::<Result<_, StageError>>()?;
    Ok(SdmSet {
        organs: case.organs.clone(),
        maps,
        units,
    })
}

impl Stage for EdtSdm {
    fn output(&self) -> Kind {
        Kind::Sdms
    }

    fn ports(&self) -> Vec<Port> {
        vec![Port::new("cases", Kind::Case)]
    }

    fn shape(&self) -> Shape {
        Shape::PerCase
    }

    fn run_case(
        &self,
        _ctx: &StageCtx,
        _case: &CaseInfo,
        inputs: &Inputs,
    ) -> Result<Item, StageError> {
        let case = inputs.case("cases")?;
        let s = self.sdms(&case)?;
        Ok(s.to_item(self.0.storage))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shapeflow_core::Volume;

    #[test]
    fn params_are_documented() {
        Registry::new()
            .with(&SdmPlugin)
            .unwrap()
            .check_docs()
            .unwrap();
    }

    fn case() -> CaseData {
        let dims = [12, 10, 8];
        let mut l = vec![0u8; 960];
        for z in 2..6 {
            for y in 3..7 {
                for x in 2..9 {
                    l[x + 12 * (y + 10 * z)] = 1;
                }
            }
        }
        let labels = Volume::new(dims, [0.8, 0.8, 2.0], VoxelData::U8(l)).unwrap();
        CaseData {
            images: Vec::new(),
            labels: Some(std::sync::Arc::new(labels)),
            organs: vec!["a".into(), "b".into(), "c".into()],
            present: vec![true, true, false],
            original: None,
            notes: Default::default(),
        }
    }

    #[test]
    fn absent_empty_and_present_organs() {
        let s = case_sdms(&case(), true).unwrap();
        let a = s.maps[0].as_ref().unwrap().to_f32();
        assert!(a.iter().any(|&v| v < 0.0) && a.iter().all(|&v| (-1.0..=1.0).contains(&v)));
        assert!(
            s.maps[1]
                .as_ref()
                .unwrap()
                .to_f32()
                .iter()
                .all(|&v| v == 1.0),
            "annotated but empty"
        );
        assert!(s.maps[2].is_none(), "absent");
    }

    #[test]
    fn band_limited_maps_by_hand() {
        // The box of `case()` is 7 x 4 x 4 voxels of 0.8 x 0.8 x 2 mm: its largest inside
        // distance is 1.6 mm (two voxels in y from the centre rows to outside); h = 0.4 mm.
        let mut s = case_sdms(&case(), false).unwrap();
        let mm = s.maps[0].as_ref().unwrap().to_f32();
        band_limit(&mut s, 2.0);
        let b = s.maps[0].as_ref().unwrap().to_f32();
        let inner = mm.iter().fold(0f32, |a, &x| a.max(-x));
        assert!((inner - 1.6).abs() < 1e-5, "{inner}");
        let labels = case().labels.unwrap();
        let VoxelData::U8(l) = &labels.data else {
            unreachable!()
        };
        for ((m, v), &lab) in mm.iter().zip(&b).zip(l) {
            let want = if *m > 0.0 {
                ((m - 0.4) / 2.0).min(1.0)
            } else {
                (m - 0.4) / 2.0
            };
            assert!((v - want).abs() < 1e-6, "{m} mm -> {v}, want {want}");
            // The zero level is the surface between voxel centres: sdm < 0 is the organ.
            assert_eq!(*v < 0.0, lab == 1, "{m} mm -> {v}");
        }
        // One voxel (0.8 mm) outside along x: (0.8 - 0.4) / 2 = 0.2; beyond the band, 1.
        let at = |x: usize, y: usize, z: usize| b[x + 12 * (y + 10 * z)];
        assert!((at(9, 4, 3) - 0.2).abs() < 1e-6);
        assert_eq!(at(0, 0, 7), 1.0);
        // A boundary voxel (0 mm in the paper's map) is half a voxel inside: -0.4 / 2.0.
        assert!((at(8, 4, 3) + 0.2).abs() < 1e-6);
        assert!(s.maps[1]
            .as_ref()
            .unwrap()
            .to_f32()
            .iter()
            .all(|&v| v == 1.0));
        assert_eq!(s.units, SdmUnits::Normalized);
    }

    fn build(p: serde_json::Value) -> Result<shapeflow_core::Built, ParamError> {
        let r = Registry::new().with(&SdmPlugin).unwrap();
        let ctx = shapeflow_core::BuildCtx {
            base_dir: ".".into(),
        };
        r.get("edt-sdm").unwrap().build(&p, &ctx)
    }

    /// An organ's own band replaces `band_mm` for its map alone; the inside keeps its scale.
    #[test]
    fn organ_bands_by_hand() {
        let sdms = |p: serde_json::Value| {
            let p: SdmParams = serde_json::from_value(p).unwrap();
            EdtSdm(p).sdms(&case())
        };
        let common = sdms(serde_json::json!({"band_mm": 2.0})).unwrap();
        let own = sdms(serde_json::json!({"band_mm": 2.0, "organ_band_mm": {"a": 1.0}})).unwrap();
        let at = |s: &SdmSet, k: usize, x: usize, y: usize, z: usize| {
            s.maps[k].as_ref().unwrap().to_f32()[x + 12 * (y + 10 * z)]
        };
        // One voxel (0.8 mm) outside along x: (0.8 - 0.4) / 1 against / 2.
        assert!((at(&own, 0, 9, 4, 3) - 0.4).abs() < 1e-6);
        assert!((at(&common, 0, 9, 4, 3) - 0.2).abs() < 1e-6);
        // Two voxels outside: (1.6 - 0.4) / 1, clipped at 1; 0.6 with the common band.
        assert_eq!(at(&own, 0, 10, 4, 3), 1.0);
        assert!((at(&common, 0, 10, 4, 3) - 0.6).abs() < 1e-6);
        // Inside, a boundary voxel: -0.4 / 2.0 with either band (the organ's own depth).
        assert!((at(&own, 0, 8, 4, 3) + 0.2).abs() < 1e-6);
        assert_eq!(own.maps[1], common.maps[1]);
        assert!(own.maps[2].is_none());
        let e = sdms(serde_json::json!({"band_mm": 2.0, "organ_band_mm": {"Esophagus": 1.0}}))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("organ_band_mm") && e.contains("`Esophagus`") && e.contains("a, b, c"),
            "{e}"
        );
    }

    /// `organ_band_mm` is keyed only when it names an organ (maps cached before it existed
    /// keep their keys); a bad band names its organ.
    #[test]
    fn organ_bands_keys_and_errors() {
        let before = build(serde_json::json!({"band_mm": 20})).unwrap().keyed;
        assert!(before.get("organ_band_mm").is_none());
        assert_eq!(
            build(serde_json::json!({"band_mm": 20, "organ_band_mm": {}}))
                .unwrap()
                .keyed,
            before
        );
        let k = build(serde_json::json!({"band_mm": 20, "organ_band_mm": {"Esophagus": 10}}))
            .unwrap()
            .keyed;
        assert_eq!(k["organ_band_mm"]["Esophagus"], 10.0);
        for p in [
            serde_json::json!({"organ_band_mm": {"Esophagus": 10}}),
            serde_json::json!({"band_mm": 20, "organ_band_mm": {"Esophagus": 0}}),
            serde_json::json!({"band_mm": 20, "organ_band_mm": {"Esophagus": -5}}),
        ] {
            let e = build(p).err().unwrap();
            assert_eq!(e.path, vec!["organ_band_mm", "Esophagus"]);
        }
    }

    #[test]
    fn quantised_storage_roundtrips_within_its_step() {
        for normalize in [true, false] {
            let s = case_sdms(&case(), normalize).unwrap();
            let back = SdmSet::from_item(&s.to_item(SdmStorage::I16)).unwrap();
            assert_eq!(back.maps[2], None);
            for k in 0..2 {
                let (a, b) = (
                    s.maps[k].as_ref().unwrap().to_f32(),
                    back.maps[k].as_ref().unwrap().to_f32(),
                );
                let m = a
                    .iter()
                    .filter(|x| x.is_finite())
                    .fold(0f32, |m, x| m.max(x.abs()));
                for (x, y) in a.iter().zip(&b) {
                    if x.is_finite() {
                        assert!((x - y).abs() <= m / 32766.0 + 1e-6, "{x} {y}");
                    } else {
                        assert_eq!(x, y);
                    }
                }
            }
            let exact = SdmSet::from_item(&s.to_item(SdmStorage::F32)).unwrap();
            assert_eq!(exact, s);
        }
    }
}

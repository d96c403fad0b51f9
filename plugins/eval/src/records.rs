//! The typed records `evaluate` writes (one [`CaseRecord`] per case, the item's JSON) and
//! `report` reads back. Infinite distances are written as JSON `null` (JSON has no
//! infinity) and read back as +inf for a compared organ.

use serde::{Deserialize, Serialize};
use shapeflow_metrics::OrganMetrics;
use std::collections::BTreeMap;

/// One organ of one case. `outcome`: `compared`, `both-empty`, `empty-reference`,
/// `empty-prediction` (metrics present), or `absent` / `absent-in-prediction` (not
/// annotated on one side: no metrics).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OrganRecord {
    pub outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dice: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hd95: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assd: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hd: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub surface_dice: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerance_mm: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference_mm3: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prediction_mm3: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_difference: Option<f64>,
    /// Where the reference organ's voxels went: their count per predicted label (a predicted
    /// organ, by the name of the reference organ it is compared with, or [`BACKGROUND`]). Shows an organ lost to a neighbour's channel
    /// (at decoding, the most confident organ wins a voxel) apart from one not found.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labelled_as: BTreeMap<String, u64>,
    /// Where the predicted organ's voxels came from: their count per reference label (the
    /// organ itself, [`BACKGROUND`], another contoured organ), named as in `labelled_as`.
    /// Shows an over-segmentation's source: tissue no one contoured, or a neighbour.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub came_from: BTreeMap<String, u64>,
}

/// The name of label 0 in [`OrganRecord::labelled_as`] and [`OrganRecord::came_from`].
pub const BACKGROUND: &str = "background";

/// The metrics a report summarises, by their record field names.
pub const METRICS: [&str; 6] = [
    "dice",
    "hd95",
    "assd",
    "hd",
    "surface_dice",
    "volume_difference",
];

/// The columns of `metrics.csv` after case, organ and outcome.
pub const CSV_COLUMNS: [&str; 8] = [
    "dice",
    "hd95",
    "assd",
    "hd",
    "surface_dice",
    "reference_mm3",
    "prediction_mm3",
    "volume_difference",
];

impl OrganRecord {
    /// An organ not annotated on one side.
    pub fn absent(outcome: &str) -> Self {
        OrganRecord {
            outcome: outcome.into(),
            ..Default::default()
        }
    }

    pub fn measured(m: &OrganMetrics) -> Self {
        let outcome = serde_json::to_value(m.outcome)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        OrganRecord {
            outcome,
            dice: Some(m.dice),
            hd95: Some(m.hd95),
            assd: Some(m.assd),
            hd: Some(m.hd),
            surface_dice: Some(m.surface_dice),
            tolerance_mm: Some(m.tolerance_mm),
            reference_mm3: Some(m.reference_mm3),
            prediction_mm3: Some(m.prediction_mm3),
            volume_difference: Some(m.volume_difference),
            labelled_as: BTreeMap::new(),
            came_from: BTreeMap::new(),
        }
    }

    /// Whether the organ was compared (its metrics exist).
    pub fn is_measured(&self) -> bool {
        !self.outcome.starts_with("absent")
    }

    /// A metric by name (see [`METRICS`], [`CSV_COLUMNS`]): `None` for an absent organ or
    /// an unknown name, +inf where the record holds `null` (an infinite distance).
    pub fn metric(&self, name: &str) -> Option<f64> {
        let v = match name {
            "dice" => self.dice,
            "hd95" => self.hd95,
            "assd" => self.assd,
            "hd" => self.hd,
            "surface_dice" => self.surface_dice,
            "reference_mm3" => self.reference_mm3,
            "prediction_mm3" => self.prediction_mm3,
            "volume_difference" => self.volume_difference,
            _ => return None,
        };
        self.is_measured().then(|| v.unwrap_or(f64::INFINITY))
    }
}

/// One case: the surface definition, the HD95/ASSD convention and every reference organ.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseRecord {
    pub convention: String,
    pub surface: String,
    pub organs: BTreeMap<String, OrganRecord>,
}

impl CaseRecord {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }

    pub fn from_json(v: &serde_json::Value) -> Result<Self, String> {
        CaseRecord::deserialize(v).map_err(|e| format!("not the output of `evaluate` ({e})"))
    }

    /// Mean Dice over the organs compared in this case.
    pub fn mean_dice(&self) -> Option<f64> {
        let d: Vec<f64> = self
            .organs
            .values()
            .filter_map(|o| o.metric("dice"))
            .collect();
        (!d.is_empty()).then(|| d.iter().sum::<f64>() / d.len() as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn infinite_distances_survive_json_as_null() {
        let mut r = OrganRecord::absent("compared");
        r.dice = Some(0.0);
        r.hd95 = Some(f64::INFINITY);
        let case = CaseRecord {
            convention: "monai".into(),
            surface: "boundary-voxels".into(),
            organs: [
                ("a".to_string(), r),
                ("b".to_string(), OrganRecord::absent("absent")),
            ]
            .into_iter()
            .collect(),
        };
        let j = case.to_json();
        assert!(j["organs"]["a"]["hd95"].is_null());
        let back = CaseRecord::from_json(&j).unwrap();
        assert_eq!(back.organs["a"].metric("hd95"), Some(f64::INFINITY));
        assert_eq!(back.organs["a"].metric("dice"), Some(0.0));
        assert_eq!(back.organs["b"].metric("dice"), None, "absent: no metric");
        assert_eq!(back.mean_dice(), Some(0.0));
        assert!(CaseRecord::from_json(&serde_json::json!({"organs": 3})).is_err());
    }
}

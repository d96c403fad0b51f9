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
        is_measured_outcome(&self.outcome)
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

/// Whether an organ with this outcome was compared (not `absent` on either side).
pub fn is_measured_outcome(outcome: &str) -> bool {
    !outcome.starts_with("absent")
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

/// Per organ, metric and case, the finite values of the measured organs: the `per_case`
/// of a report's `summary.json`, which the paired tests between variants read.
pub type PerCase = BTreeMap<String, BTreeMap<String, BTreeMap<String, f64>>>;

/// A `metrics.csv` that is not a report's.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CsvError {
    #[error("the header is not a report's (`case,organ,outcome,` then metric columns)")]
    Header,
    #[error("line {line}: {message}")]
    Row { line: usize, message: String },
}

/// Reads a report's `metrics.csv` back into [`PerCase`], as `report` built it: absent organs
/// (`absent`, `absent-in-prediction`) and infinite distances (`inf`: one mask empty) are
/// left out, a missed organ's Dice 0 is kept. Columns other than [`METRICS`] are ignored.
pub fn per_case_from_csv(text: &str) -> Result<PerCase, CsvError> {
    let mut lines = text.lines().enumerate();
    let header: Vec<&str> = match lines.next() {
        Some((_, h)) => h.trim_end_matches('\r').split(',').collect(),
        None => return Err(CsvError::Header),
    };
    if header.len() < 4 || header[..3] != ["case", "organ", "outcome"] {
        return Err(CsvError::Header);
    }
    let columns: Vec<(usize, &str)> = header
        .iter()
        .enumerate()
        .skip(3)
        .filter_map(|(i, h)| METRICS.iter().find(|m| *m == h).map(|m| (i, *m)))
        .collect();
    let mut out = PerCase::new();
    for (i, row) in lines {
        let line = i + 1;
        let row = row.trim_end_matches('\r');
        if row.is_empty() {
            continue;
        }
        let cells: Vec<&str> = row.split(',').collect();
        if cells.len() != header.len() {
            return Err(CsvError::Row {
                line,
                message: format!("{} cells, the header has {}", cells.len(), header.len()),
            });
        }
        let (case, organ, outcome) = (cells[0], cells[1], cells[2]);
        if case.is_empty() || organ.is_empty() {
            return Err(CsvError::Row {
                line,
                message: "no case or organ".into(),
            });
        }
        if !is_measured_outcome(outcome) {
            continue;
        }
        for &(c, metric) in &columns {
            let v: f64 = cells[c].parse().map_err(|_| CsvError::Row {
                line,
                message: format!("{metric} `{}` is not a number", cells[c]),
            })?;
            if v.is_finite() {
                out.entry(organ.to_string())
                    .or_default()
                    .entry(metric.to_string())
                    .or_default()
                    .insert(case.to_string(), v);
            }
        }
    }
    Ok(out)
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

    #[test]
    fn metrics_csv_reads_back_as_the_reports_per_case_values() {
        let csv = "case,organ,outcome,dice,hd95,assd,hd,surface_dice,reference_mm3,prediction_mm3,volume_difference\n\
pt_1,Brainstem,compared,0.7692,6.1966,2.1477,9.0000,0.5516,30603.4,25576.3,-0.1643\n\
pt_1,Larynx,absent,0,0,0,0,0,0,0,0\n\
pt_2,Brainstem,empty-prediction,0.0000,inf,inf,inf,0.0000,49844.1,0.0000,-1.0000\n";
        let pc = per_case_from_csv(csv).unwrap();
        assert_eq!(
            pc.keys().collect::<Vec<_>>(),
            ["Brainstem"],
            "absent rows left out"
        );
        let b = &pc["Brainstem"];
        assert_eq!(b["dice"]["pt_1"], 0.7692);
        assert_eq!(b["dice"]["pt_2"], 0.0, "a missed organ counts Dice 0");
        assert!(
            !b["hd95"].contains_key("pt_2"),
            "infinite distances left out"
        );
        assert_eq!(b["hd95"]["pt_1"], 6.1966);
        assert!(
            !b.contains_key("reference_mm3"),
            "only the report's metrics"
        );
        assert_eq!(per_case_from_csv("a,b\n"), Err(CsvError::Header));
        let short = "case,organ,outcome,dice\npt_1,Brainstem,compared\n";
        assert!(matches!(
            per_case_from_csv(short),
            Err(CsvError::Row { line: 2, .. })
        ));
        let bad = "case,organ,outcome,dice\npt_1,Brainstem,compared,high\n";
        let e = per_case_from_csv(bad).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("dice `high`"), "{e}");
    }
}

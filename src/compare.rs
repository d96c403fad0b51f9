//! `pipeline compare`: the report's paired tests between variants whose reports were written
//! by different runs, or kept as records. Each report's `metrics.csv` is read back; a variant
//! run over several seeds is pooled by case and seed, as `report` pools `seeds:`; the table
//! is `report`'s ([`variants_table`]): the ablation table and, with seeds, the spread over
//! them.

use anyhow::{bail, Context, Result};
use shapeflow_eval::records::per_case_from_csv;
use shapeflow_eval::{seed_order, variants_table, VARIANTS_INTRO};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One report to compare: its variant (`<variant>` or `<variant>@<seed>`) and its file.
#[derive(Debug, Clone, PartialEq)]
pub struct Input {
    pub name: String,
    pub csv: PathBuf,
}

/// The variant a report folder stands for: a run writes `<variant>@<seed>`'s report to
/// `report/<variant>_<seed>/`, so a trailing `_<digits>` is the seed.
pub fn name_of_folder(folder: &str) -> String {
    match folder.rsplit_once('_') {
        Some((v, s)) if !v.is_empty() && !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            format!("{v}@{s}")
        }
        _ => folder.to_string(),
    }
}

/// The reports an argument names: `[NAME=]PATH`, where PATH is a `metrics.csv`, a folder
/// holding one, or a folder of such folders (a run's `report/`). Without NAME each report is
/// named by its folder ([`name_of_folder`]).
pub fn inputs_of(arg: &str) -> Result<Vec<Input>> {
    let (name, path) = match arg.split_once('=') {
        Some((n, p)) if !Path::new(arg).exists() => (Some(n.to_string()), PathBuf::from(p)),
        _ => (None, PathBuf::from(arg)),
    };
    let folder_name = |p: &Path| {
        p.file_name()
            .map(|s| name_of_folder(&s.to_string_lossy()))
            .unwrap_or_default()
    };
    if path.is_file() {
        let n = name.unwrap_or_else(|| path.parent().map(folder_name).unwrap_or_default());
        return Ok(vec![Input { name: n, csv: path }]);
    }
    if !path.is_dir() {
        bail!("{}: no such file or folder", path.display());
    }
    let own = path.join("metrics.csv");
    if own.is_file() {
        let n = name.unwrap_or_else(|| folder_name(&path));
        return Ok(vec![Input { name: n, csv: own }]);
    }
    if name.is_some() {
        bail!(
            "{arg}: a name needs one report, but {} holds no metrics.csv",
            path.display()
        );
    }
    let mut found = Vec::new();
    for entry in
        std::fs::read_dir(&path).with_context(|| format!("cannot read {}", path.display()))?
    {
        let sub = entry
            .with_context(|| format!("cannot read {}", path.display()))?
            .path();
        let csv = sub.join("metrics.csv");
        if csv.is_file() {
            found.push(Input {
                name: folder_name(&sub),
                csv,
            });
        }
    }
    if found.is_empty() {
        bail!(
            "{}: no metrics.csv in it or in its folders (a report's output: `runs/<run>/report/`)",
            path.display()
        );
    }
    // Seeds in numeric order (1, 2, 7, 42, 2020), as the report's tables list them.
    found.sort_by(|a, b| {
        let (va, sa) = a.name.rsplit_once('@').unwrap_or((&a.name, ""));
        let (vb, sb) = b.name.rsplit_once('@').unwrap_or((&b.name, ""));
        va.cmp(vb).then_with(|| seed_order(sa, sb))
    });
    Ok(found)
}

/// The comparison of `inputs`: Markdown (the report's ablation table, then the spread over
/// seeds) and the same as JSON.
pub fn compare(inputs: &[Input]) -> Result<(String, serde_json::Value)> {
    let mut seen: BTreeMap<&str, &Path> = BTreeMap::new();
    let mut outputs = Vec::new();
    for i in inputs {
        if i.name.is_empty() {
            bail!(
                "{}: no name for this report; give it as NAME=PATH",
                i.csv.display()
            );
        }
        if let Some(other) = seen.insert(&i.name, &i.csv) {
            bail!(
                "`{}` is named twice: {} and {} (name one as NAME=PATH, e.g. `variant@seed=...`)",
                i.name,
                other.display(),
                i.csv.display()
            );
        }
        let text = std::fs::read_to_string(&i.csv)
            .with_context(|| format!("cannot read {}", i.csv.display()))?;
        let per_case = per_case_from_csv(&text).with_context(|| format!("{}", i.csv.display()))?;
        outputs.push((i.name.clone(), serde_json::json!({ "per_case": per_case })));
    }
    let (table, json) = variants_table(&outputs);
    let variants = json["variants"].as_array().map_or(0, Vec::len);
    if variants < 2 {
        bail!(
            "compare needs two variants or more; all reports are `{}`",
            json["variants"][0].as_str().unwrap_or("")
        );
    }
    if json["rows"].as_array().is_none_or(|r| r.is_empty()) {
        bail!("the reports have no (organ, case) in common: are their seeds named alike?");
    }
    let md = format!("{VARIANTS_INTRO} A missed organ's Dice is 0.\n\n{table}\n");
    let names: Vec<_> = inputs
        .iter()
        .map(|i| serde_json::json!({"name": i.name, "metrics_csv": i.csv}))
        .collect();
    Ok((md, serde_json::json!({"inputs": names, "comparison": json})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_folder_names_its_variant_and_seed() {
        assert_eq!(name_of_folder("joint-c-l03_2020"), "joint-c-l03@2020");
        assert_eq!(name_of_folder("dice-ce-c"), "dice-ce-c");
        assert_eq!(name_of_folder("a_b"), "a_b");
        assert_eq!(name_of_folder("_7"), "_7");
    }

    fn write(dir: &Path, sub: &str, rows: &[(&str, f64)]) -> PathBuf {
        let d = dir.join(sub);
        std::fs::create_dir_all(&d).unwrap();
        let mut csv = String::from("case,organ,outcome,dice,hd95\n");
        for (case, dice) in rows {
            csv.push_str(&format!("{case},Organ,compared,{dice},{}\n", 10.0 - dice));
        }
        std::fs::write(d.join("metrics.csv"), csv).unwrap();
        d
    }

    #[test]
    fn seeds_pair_by_case_and_seed_across_folders() {
        let t = tempfile::tempdir().unwrap();
        let cases = ["c1", "c2", "c3", "c4", "c5", "c6"];
        let rows = |base: f64| -> Vec<(&str, f64)> {
            cases
                .iter()
                .enumerate()
                .map(|(i, c)| (*c, base + i as f64 * 0.01))
                .collect()
        };
        let run_a = t.path().join("run-a/report");
        write(&run_a, "good_2", &rows(0.7));
        write(&run_a, "good_10", &rows(0.8));
        let b1 = write(t.path(), "records/bad_10", &rows(0.5));
        let b2 = write(t.path(), "records/other", &rows(0.4));
        let mut inputs = inputs_of(run_a.to_str().unwrap()).unwrap();
        let names: Vec<&str> = inputs.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["good@2", "good@10"], "seeds in numeric order");
        inputs.extend(inputs_of(b1.to_str().unwrap()).unwrap());
        inputs.extend(inputs_of(&format!("bad@2={}", b2.display())).unwrap());
        let (md, json) = compare(&inputs).unwrap();
        let dice = json["comparison"]["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["metric"] == "dice")
            .unwrap();
        assert_eq!(dice["cases"], 12, "six cases by two seeds: {md}");
        assert_eq!(dice["best"], "good");
        let good = dice["means"]["good"].as_f64().unwrap();
        let bad = dice["means"]["bad"].as_f64().unwrap();
        assert!((good - bad - 0.3).abs() < 1e-9, "{good} {bad}");
        let p = dice["wilcoxon_best_vs"]["bad"]["p_value"].as_f64().unwrap();
        assert!(p < 0.01, "twelve pairs all one way: {p}");
        assert!(
            md.contains("good | Organ | dice | 2: 0.725, 10: 0.825"),
            "{md}"
        );
    }

    #[test]
    fn bad_inputs_are_named() {
        let t = tempfile::tempdir().unwrap();
        let a = write(t.path(), "a_1", &[("c1", 0.5)]);
        let e = inputs_of(t.path().join("nope").to_str().unwrap()).unwrap_err();
        assert!(e.to_string().contains("nope: no such file"), "{e}");
        let inputs = [
            inputs_of(a.to_str().unwrap()).unwrap().remove(0),
            inputs_of(a.to_str().unwrap()).unwrap().remove(0),
        ];
        let e = compare(&inputs).unwrap_err().to_string();
        assert!(e.contains("`a@1` is named twice"), "{e}");
        let e = compare(&inputs[..1]).unwrap_err().to_string();
        assert!(e.contains("two variants"), "{e}");
        let b = write(t.path(), "b", &[("c1", 0.6)]);
        let inputs = [
            inputs[0].clone(),
            inputs_of(b.to_str().unwrap()).unwrap().remove(0),
        ];
        let e = compare(&inputs).unwrap_err().to_string();
        assert!(e.contains("no (organ, case) in common"), "{e}");
        std::fs::write(b.join("metrics.csv"), "case,organ\n").unwrap();
        let e = format!("{:#}", compare(&inputs).unwrap_err());
        assert!(e.contains("b/metrics.csv") && e.contains("header"), "{e}");
    }
}

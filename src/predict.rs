//! `pipeline predict`: a trained model applied to new images, outside the pipeline that
//! trained it.
//!
//! A model package is the folder a run writes for a model stage
//! (`runs/<run>/<train stage>/[<variant>/]`): `model.item` (the model as the cache holds
//! it), `pipeline.json` (the per-case stages that prepared its training cases and the stage
//! that applies it, each with its params as they ran) and the files for people. Predict
//! reads each image as the dataset's source would, replays those stages from the registry
//! with the same params, and runs the applying stage with its output folder set to the
//! user's: the result is what `infer` inside the training pipeline writes for that image.
//! No stage is named here.

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use shapeflow_core::{
    BuildCtx, CancelToken, CaseData, CaseDataItem, CaseInfo, Inputs, Item, Registry, Shape,
    StageCtx,
};
use shapeflow_formats::dicom;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// One recorded stage of `pipeline.json`.
#[derive(Debug, Clone, Deserialize)]
struct Step {
    id: String,
    stage: String,
    version: u32,
    params: serde_json::Value,
    after: Vec<String>,
    bindings: Vec<(String, String)>,
}

#[derive(Debug, Deserialize)]
struct Lineage {
    format: String,
    tool_version: String,
    model_stage: String,
    preprocess: Vec<Step>,
    apply: Vec<Step>,
    /// Whole-dataset stages that made another model from this one (e.g. `calibrate`).
    #[serde(default)]
    models_made: Vec<String>,
}

/// A model package, read.
pub struct Package {
    dir: PathBuf,
    lineage: Lineage,
    model: Arc<Item>,
}

impl Package {
    pub fn open(dir: &Path) -> Result<Package> {
        let lp = dir.join("pipeline.json");
        let text = std::fs::read_to_string(&lp).with_context(|| {
            format!(
                "{}: not a model package (no pipeline.json; runs write it beside a trained \
                 model since 0.1: re-run the training pipeline, the model comes from the cache)",
                dir.display()
            )
        })?;
        let lineage: Lineage =
            serde_json::from_str(&text).with_context(|| format!("{}: unreadable", lp.display()))?;
        if lineage.format != "shapeflow-pipeline/1" {
            bail!(
                "{}: package format `{}` (written by shapeflow {}); this build reads \
                 shapeflow-pipeline/1",
                lp.display(),
                lineage.format,
                lineage.tool_version
            );
        }
        if lineage.apply.is_empty() {
            if !lineage.models_made.is_empty() {
                let names: Vec<String> = lineage
                    .models_made
                    .iter()
                    .map(|m| format!("`{m}`"))
                    .collect();
                bail!(
                    "{}: the pipeline applies not this model but what {} made from it: give \
                     that stage's folder (`<run>/<stage>/...`)",
                    lp.display(),
                    names.join(", ")
                );
            }
            bail!(
                "{}: the training pipeline has no stage that applies this model (e.g. `infer`)",
                lp.display()
            );
        }
        let ip = dir.join("model.item");
        let bytes = std::fs::read(&ip).with_context(|| format!("{}", ip.display()))?;
        let model = Item::decode(&bytes).map_err(|e| anyhow!("{}: {e}", ip.display()))?;
        Ok(Package {
            dir: dir.to_path_buf(),
            lineage,
            model: Arc::new(model),
        })
    }
}

/// One case to predict: its id and its image files in channel order (one file, a 4D NIfTI
/// holding every channel, or a DICOM series folder; or one file per channel).
pub type InputCase = (String, Vec<PathBuf>);

/// The images `input` names, as (case id, files), sorted by id:
/// - an image file: that one case (a 4D NIfTI's fourth dimension as channels);
/// - a folder of images: one case per file, or with nnU-Net's naming
///   (`<case>_0000.<ending>`, `<case>_0001.<ending>`, ...) one case per `<case>`, its
///   files the channels in order;
/// - an MSD / nnU-Net dataset (a folder with `dataset.json`): its unlabeled test images,
///   `imagesTs/` (MSD's `test` entries are those files);
/// - a folder of case folders (PDDCA, OpenKBP: `<case>/ct.nii.gz` + `<case>/structures/`):
///   one case per folder, its image the file named `image`, else the folder's only image,
///   else the DICOM image series the folder holds;
/// - a folder holding one DICOM image series: that one case (the folder's name). For DICOM
///   cases, the prediction is also written as an RTSTRUCT on the series
///   (`<case>.rtstruct.dcm`), which a planning system or 3D Slicer opens with the CT.
pub fn input_images(input: &Path, image: Option<&str>) -> Result<Vec<InputCase>> {
    if input.is_dir() && image.is_none() && dicom_series(input)?.is_some() {
        return Ok(vec![(folder_name(input), vec![input.to_path_buf()])]);
    }
    if input.is_file() {
        let id = image_case_id(input)
            .ok_or_else(|| anyhow!("{}: not an image this build reads", input.display()))?;
        return Ok(vec![(id, vec![input.to_path_buf()])]);
    }
    if input.join("dataset.json").is_file() {
        let ts = input.join("imagesTs");
        if !ts.is_dir() {
            bail!(
                "{}: a dataset without imagesTs/ (its unlabeled test images); to predict its \
                 training images, give {}",
                input.display(),
                input.join("imagesTr").display()
            );
        }
        return images_in(&ts);
    }
    let listed = list_dir(input)?;
    let files: Vec<&PathBuf> = listed.iter().filter(|p| p.is_file()).collect();
    let folders: Vec<&PathBuf> = listed.iter().filter(|p| p.is_dir()).collect();
    if files.iter().all(|p| image_case_id(p).is_none()) && !folders.is_empty() {
        let mut out = Vec::new();
        for f in folders {
            let id = f
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            let chosen = match image {
                Some(name) => {
                    let p = f.join(name);
                    if !p.is_file() {
                        bail!("case folder {}: no image `{name}`", f.display());
                    }
                    p
                }
                None => {
                    let found: Vec<PathBuf> = list_dir(f)?
                        .into_iter()
                        .filter(|p| p.is_file() && image_case_id(p).is_some())
                        .collect();
                    match found.as_slice() {
                        [one] => one.clone(),
                        [] if dicom_series(f)?.is_some() => f.clone(),
                        [] => bail!(
                            "case folder {}: no image (.nii.gz, .nii, .nrrd, .nhdr, .mha, .mhd) \
                             at its top level",
                            f.display()
                        ),
                        many => bail!(
                            "case folder {}: {} images ({}); say which with --image NAME",
                            f.display(),
                            many.len(),
                            many.iter()
                                .filter_map(|p| p.file_name())
                                .map(|n| n.to_string_lossy().to_string())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    }
                }
            };
            out.push((id, vec![chosen]));
        }
        out.sort();
        return Ok(out);
    }
    images_in(input)
}

fn folder_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "case".into())
}

/// The slice files of the one DICOM image series in `dir` (None: no DICOM image there);
/// several series are an error naming them.
fn dicom_series(dir: &Path) -> Result<Option<Vec<PathBuf>>> {
    let folder = dicom::scan(dir).map_err(|e| anyhow!("{e}"))?;
    let one = folder.one_series(dir).map_err(|e| anyhow!("{e}"))?;
    Ok(one.map(<[PathBuf]>::to_vec))
}

/// An input case's image channels: a DICOM series folder's one, else each file's (a 4D
/// NIfTI holds several), all on the first one's grid (as `load` reads a case's files).
fn read_input(paths: &[PathBuf]) -> Result<Vec<shapeflow_core::Volume>> {
    if let [dir] = paths {
        if dir.is_dir() {
            let files = dicom_series(dir)?
                .ok_or_else(|| anyhow!("{}: no DICOM image series", dir.display()))?;
            return Ok(vec![dicom::read_series(&files).map_err(|e| anyhow!("{e}"))?]);
        }
    }
    shapeflow_io::datasets::read_channels(paths).map_err(|e| anyhow!("{e}"))
}

/// The labels the applying stage wrote for a DICOM case (`<id>.nii.gz`, organ names from
/// `labels.json`), as an RTSTRUCT on its series: `<id>.rtstruct.dcm`.
fn write_rtstruct(series_dir: &Path, output: &Path, id: &str) -> Result<PathBuf> {
    let labels_path = output.join(format!("{id}.nii.gz"));
    let labels = shapeflow_formats::read(&labels_path).map_err(|e| anyhow!("{e}"))?;
    let names_path = output.join("labels.json");
    let names: std::collections::BTreeMap<String, String> = serde_json::from_slice(
        &std::fs::read(&names_path).with_context(|| format!("{}", names_path.display()))?,
    )
    .with_context(|| format!("{}: not a label table", names_path.display()))?;
    let mut organs: Vec<(u8, String)> = names
        .into_iter()
        .filter_map(|(k, v)| Some((k.parse::<u8>().ok()?, v)))
        .collect();
    organs.sort();
    let values = labels.to_f32();
    let masks: Vec<Vec<u8>> = organs
        .iter()
        .map(|(v, _)| {
            values
                .iter()
                .map(|&x| u8::from(x == f32::from(*v)))
                .collect()
        })
        .collect();
    let rois: Vec<(&str, &[u8])> = organs
        .iter()
        .zip(&masks)
        .map(|((_, n), m)| (n.as_str(), m.as_slice()))
        .collect();
    let files = dicom_series(series_dir)?
        .ok_or_else(|| anyhow!("{}: no DICOM image series", series_dir.display()))?;
    let series = dicom::read_series_ref(&files).map_err(|e| anyhow!("{e}"))?;
    let out = output.join(format!("{id}.rtstruct.dcm"));
    dicom::write_rtstruct(&out, &series, &labels.grid(), &rois, "shapeflow prediction")
        .map_err(|e| anyhow!("{e}"))?;
    Ok(out)
}

/// The case id of an image file, if it is one this build reads (nnU-Net's `_0000` channel
/// suffix left out).
fn image_case_id(p: &Path) -> Option<String> {
    let stem = image_stem(p)?;
    Some(stem.strip_suffix("_0000").unwrap_or(&stem).to_string())
}

/// An image file's name without its format's ending.
fn image_stem(p: &Path) -> Option<String> {
    let f = shapeflow_formats::for_path(p)?;
    let name = p.file_name()?.to_string_lossy().to_string();
    let lower = name.to_ascii_lowercase();
    let end = f.extensions().iter().find(|e| lower.ends_with(*e))?;
    Some(name[..name.len() - end.len()].to_string())
}

/// `(case, channel)` of an nnU-Net-named stem: `<case>_<4 digits>`.
fn nnunet_channel(stem: &str) -> Option<(&str, usize)> {
    let (case, digits) = stem.rsplit_once('_')?;
    (digits.len() == 4 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| Some((case, digits.parse().ok()?)))
        .flatten()
}

fn list_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    let mut out: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    out.sort();
    Ok(out)
}

/// The images directly in `dir`: one case per file, except that the files of a case named
/// the nnU-Net way (`<case>_0000`, `<case>_0001`, ...) are its channels, in order. A
/// `<case>_NNNN` file without a `<case>_0000` beside it is a case of its own.
fn images_in(dir: &Path) -> Result<Vec<InputCase>> {
    let files: Vec<(String, PathBuf)> = list_dir(dir)?
        .into_iter()
        .filter(|p| p.is_file())
        .filter_map(|p| Some((image_stem(&p)?, p)))
        .collect();
    let stems: std::collections::HashSet<&str> = files.iter().map(|(s, _)| s.as_str()).collect();
    let mut channels: BTreeMap<String, Vec<(usize, PathBuf)>> = BTreeMap::new();
    let mut out: Vec<InputCase> = Vec::new();
    for (stem, p) in &files {
        match nnunet_channel(stem) {
            Some((case, c)) if stems.contains(format!("{case}_0000").as_str()) => {
                channels
                    .entry(case.to_string())
                    .or_default()
                    .push((c, p.clone()));
            }
            _ => out.push((stem.clone(), vec![p.clone()])),
        }
    }
    for (case, mut chs) in channels {
        chs.sort();
        if let Some((i, (c, p))) = chs.iter().enumerate().find(|(i, (c, _))| i != c) {
            bail!(
                "case `{case}`: channel files must be numbered _0000, _0001, ... without gaps; \
                 {} is channel {c} where channel {i} was expected",
                p.display()
            );
        }
        out.push((case, chs.into_iter().map(|(_, p)| p).collect()));
    }
    out.sort();
    if out.is_empty() {
        bail!(
            "{}: no images (.nii.gz, .nii, .nrrd, .nhdr, .mha, .mhd), no case folders holding one",
            dir.display()
        );
    }
    for w in out.windows(2) {
        if w[0].0 == w[1].0 {
            bail!(
                "{} and {} are the same case `{}`",
                w[0].1[0].display(),
                w[1].1[0].display(),
                w[0].0
            );
        }
    }
    Ok(out)
}

/// What one predicted case took.
pub struct Predicted {
    pub id: String,
    pub seconds: f64,
}

/// The steps of `l` that the applying stage reads (the chain behind its per-case inputs).
fn needed(l: &Lineage) -> Vec<&Step> {
    let apply = &l.apply[0];
    let mut want: std::collections::HashSet<&str> =
        apply.after.iter().map(String::as_str).collect();
    for s in l.preprocess.iter().rev() {
        if want.contains(s.id.as_str()) {
            want.extend(s.after.iter().map(String::as_str));
        }
    }
    l.preprocess
        .iter()
        .filter(|s| want.contains(s.id.as_str()))
        .collect()
}

/// Whether two packages replay the same preprocessing and apply the same way; the
/// differences in words if not.
fn differences(a: &Package, b: &Package) -> Vec<String> {
    let describe = |s: &Step| (s.stage.clone(), s.version, s.params.clone());
    let (sa, sb) = (needed(&a.lineage), needed(&b.lineage));
    let mut out = Vec::new();
    if sa.len() != sb.len() {
        out.push(format!(
            "{} preprocessing stages against {}",
            sa.len(),
            sb.len()
        ));
    }
    for (x, y) in sa.iter().zip(&sb) {
        if describe(x) != describe(y) {
            out.push(format!(
                "stage `{}` ({}): {} against {}",
                x.id, x.stage, x.params, y.params
            ));
        }
    }
    let (x, y) = (&a.lineage.apply[0], &b.lineage.apply[0]);
    if describe(x) != describe(y) {
        out.push(format!(
            "`{}` ({}): {} against {}",
            x.id, x.stage, x.params, y.params
        ));
    }
    out
}

/// Applies the packages (one model, or an ensemble whose maps are averaged) to every image
/// of `images`, writing into `output`. An ensemble's packages must replay the same
/// preprocessing and apply the same way; the error says how they differ.
pub fn predict(
    registry: &Registry,
    pkgs: &[Package],
    images: &[InputCase],
    output: &Path,
    overrides: &[(String, serde_json::Value)],
    cancel: &CancelToken,
    bar: &shapeflow_core::indicatif::ProgressBar,
) -> Result<Vec<Predicted>> {
    let pkg = pkgs.first().ok_or_else(|| anyhow!("no model given"))?;
    for other in &pkgs[1..] {
        let d = differences(pkg, other);
        if !d.is_empty() {
            bail!(
                "{} and {} cannot form an ensemble: {}",
                pkg.dir.display(),
                other.dir.display(),
                d.join("; ")
            );
        }
    }
    let model: Arc<Item> = if pkgs.len() == 1 {
        pkg.model.clone()
    } else {
        Arc::new(Item::ensemble(
            pkgs.iter().map(|p| Item::clone(&p.model)).collect(),
        ))
    };
    let l = &pkg.lineage;
    // Preprocessing must be replayed by the version that prepared the training cases; the
    // stage that applies the model is this build's (a newer one applies the same weights,
    // with its fixes), said on stderr.
    let build = |s: &Step, strict: bool| -> Result<Arc<dyn shapeflow_core::Stage>> {
        let f = registry.get(&s.stage).ok_or_else(|| {
            anyhow!(
                "the model needs stage `{}`, which this build does not have",
                s.stage
            )
        })?;
        if f.version() != s.version && !strict {
            eprintln!(
                "note: applying with stage `{}` version {} (the model's pipeline ran version {})",
                s.stage,
                f.version(),
                s.version
            );
        } else if f.version() != s.version {
            bail!(
                "stage `{}` is version {} here, the model was made with version {}: its \
                 preprocessing may differ; retrain, or use the shapeflow it was made with ({})",
                s.stage,
                f.version(),
                s.version,
                l.tool_version
            );
        }
        let built = f
            .build(
                &s.params,
                &BuildCtx {
                    base_dir: pkg.dir.clone(),
                },
            )
            .map_err(|e| {
                anyhow!(
                    "stage `{}` ({}): {}: {}",
                    s.id,
                    s.stage,
                    e.path.join("."),
                    e.message
                )
            })?;
        Ok(built.stage)
    };
    // The applying stage as it ran, with the user's overrides (device, batch, tta, maps).
    let mut apply = l.apply[0].clone();
    for (k, v) in overrides {
        match apply.params.as_object_mut() {
            Some(obj) if obj.contains_key(k) => {
                obj.insert(k.clone(), v.clone());
            }
            _ => bail!(
                "the stage that applies this model (`{}`) has no `{k}` param",
                apply.stage
            ),
        }
    }
    let apply = &apply;
    let mut steps = Vec::new();
    for s in needed(l) {
        steps.push((s, build(s, true)?));
    }
    let applier = build(apply, false)?;
    std::fs::create_dir_all(output)
        .with_context(|| format!("cannot create {}", output.display()))?;
    let scratch = tempfile::Builder::new()
        .prefix("shapeflow-predict-")
        .tempdir()
        .context("cannot create a scratch folder")?;
    let mut done = Vec::new();
    // The next image is read while the network works on this one (one ahead: memory stays
    // at two cases).
    let (tx, rx) = crossbeam_channel::bounded(1);
    let reader_images = images.to_vec();
    let reader = std::thread::spawn(move || {
        for (_, paths) in reader_images {
            let read = read_input(&paths).map_err(|e| e.to_string());
            if tx.send(read).is_err() {
                break;
            }
        }
    });
    for (id, paths) in images {
        let read = rx
            .recv()
            .map_err(|_| anyhow!("the image reader stopped"))?
            .map_err(|e| anyhow!("{e}"));
        let mut read = Some(read);
        let started = Instant::now();
        let info = CaseInfo {
            id: id.clone(),
            split: None,
            fingerprint: String::new(),
        };
        let ctx_for = |stage_id: &'static str, out: &Path| -> StageCtx<'_> {
            StageCtx {
                base_dir: pkg.dir.clone(),
                stage_id,
                seed: 0,
                scratch: scratch.path().to_path_buf(),
                run_dir: output.to_path_buf(),
                output_dir: out.to_path_buf(),
                work_dir: scratch.path().to_path_buf(),
                cancel,
                progress: Default::default(),
            }
        };
        let mut items: HashMap<String, Arc<Item>> = HashMap::new();
        for (s, stage) in &steps {
            let item = if stage.shape() == Shape::Source {
                // The image as the source would give it: no labels, its own grid recorded.
                let channels = read
                    .take()
                    .ok_or_else(|| anyhow!("case `{id}`: two sources in one package"))??;
                let mut notes = serde_json::Map::new();
                notes.insert(
                    "source".into(),
                    serde_json::json!(paths[0].display().to_string()),
                );
                CaseData {
                    original: Some(channels[0].grid()),
                    images: channels.into_iter().map(Arc::new).collect(),
                    labels: None,
                    organs: Vec::new(),
                    present: Vec::new(),
                    notes,
                }
                .to_item()
            } else {
                let inputs = inputs_of(s, &items)?;
                stage
                    .run_case(&ctx_for("predict", scratch.path()), &info, &inputs)
                    .map_err(|e| anyhow!("case `{id}`, stage `{}`: {e}", s.id))?
            };
            items.insert(s.id.clone(), Arc::new(item));
        }
        items.insert(l.model_stage.clone(), model.clone());
        let inputs = inputs_of(apply, &items)?;
        applier
            .run_case(&ctx_for("predict", output), &info, &inputs)
            .map_err(|e| anyhow!("case `{id}`, stage `{}`: {e}", apply.id))?;
        if let [dir] = paths.as_slice() {
            if dir.is_dir() {
                write_rtstruct(dir, output, id)
                    .with_context(|| format!("case `{id}`: RTSTRUCT"))?;
            }
        }
        done.push(Predicted {
            id: id.clone(),
            seconds: started.elapsed().as_secs_f64(),
        });
        bar.set_message(id.clone());
        bar.inc(1);
    }
    drop(rx);
    let _ = reader.join();
    Ok(done)
}

fn inputs_of(s: &Step, items: &HashMap<String, Arc<Item>>) -> Result<Inputs> {
    let mut inputs = Inputs::default();
    for dep in &s.after {
        let item = items.get(dep).ok_or_else(|| {
            anyhow!(
                "stage `{}` reads `{dep}`, which the package does not replay (a whole-dataset \
                 input other than the model is not supported by predict)",
                s.id
            )
        })?;
        inputs.push(dep.clone(), item.clone());
    }
    Ok(inputs.with_bindings(Arc::new(s.bindings.clone())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(p: &Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"").unwrap();
    }

    /// Each kind of input gives its cases; ambiguous or empty ones are named errors.
    #[test]
    fn inputs_are_files_folders_case_folders_or_datasets() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        // Case folders (OpenKBP): the one image at the top level, masks below ignored.
        touch(&r.join("cases/pt_2/ct.nii.gz"));
        touch(&r.join("cases/pt_2/structures/Brainstem.nii.gz"));
        touch(&r.join("cases/pt_1/ct.nii.gz"));
        let got = input_images(&r.join("cases"), None).unwrap();
        assert_eq!(
            got,
            [
                ("pt_1".to_string(), vec![r.join("cases/pt_1/ct.nii.gz")]),
                ("pt_2".to_string(), vec![r.join("cases/pt_2/ct.nii.gz")]),
            ]
        );
        touch(&r.join("cases/pt_1/dose.nii.gz"));
        let e = input_images(&r.join("cases"), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("pt_1") && e.contains("--image"), "{e}");
        let got = input_images(&r.join("cases"), Some("ct.nii.gz")).unwrap();
        assert_eq!(got.len(), 2);
        // An MSD / nnU-Net dataset: its imagesTs.
        touch(&r.join("msd/dataset.json"));
        touch(&r.join("msd/imagesTr/a_0000.nii.gz"));
        let e = input_images(&r.join("msd"), None).unwrap_err().to_string();
        assert!(e.contains("imagesTs") && e.contains("imagesTr"), "{e}");
        touch(&r.join("msd/imagesTs/b_0000.nii.gz"));
        let got = input_images(&r.join("msd"), None).unwrap();
        assert_eq!(
            got,
            [("b".to_string(), vec![r.join("msd/imagesTs/b_0000.nii.gz")])]
        );
        // nnU-Net naming: a case's channel files together, in order; a gap is named; a
        // `_NNNN` file without a `_0000` beside it is a case of its own.
        for f in [
            "c_0001.nii.gz",
            "c_0000.nii.gz",
            "d_0000.nii.gz",
            "run_2019.nii.gz",
        ] {
            touch(&r.join("multi").join(f));
        }
        let got = input_images(&r.join("multi"), None).unwrap();
        assert_eq!(
            got,
            [
                (
                    "c".to_string(),
                    vec![r.join("multi/c_0000.nii.gz"), r.join("multi/c_0001.nii.gz")]
                ),
                ("d".to_string(), vec![r.join("multi/d_0000.nii.gz")]),
                (
                    "run_2019".to_string(),
                    vec![r.join("multi/run_2019.nii.gz")]
                ),
            ]
        );
        touch(&r.join("multi/d_0002.nii.gz"));
        let e = input_images(&r.join("multi"), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("d_0002") && e.contains("channel 1"), "{e}");
        // A folder of images; a single file.
        touch(&r.join("flat/x.nrrd"));
        touch(&r.join("flat/notes.txt"));
        assert_eq!(input_images(&r.join("flat"), None).unwrap().len(), 1);
        assert_eq!(
            input_images(&r.join("flat/x.nrrd"), None).unwrap()[0].0,
            "x"
        );
        std::fs::create_dir_all(r.join("none")).unwrap();
        let e = input_images(&r.join("none"), None).unwrap_err().to_string();
        assert!(e.contains("no images"), "{e}");
    }
}

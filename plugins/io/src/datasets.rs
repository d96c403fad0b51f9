//! Reading cases from disk: the organ-files layout (PDDCA, OpenKBP), the Medical
//! Segmentation Decathlon, and what they share (labels from masks, fingerprints, grids).
//! The layouts themselves, behind one trait, are in `layouts/`.

use crate::layouts::OrganFilesSpec;
use rayon::prelude::*;
use shapeflow_core::{CaseData, Volume, VoxelData};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The official MICCAI 2015 split: the 10 "offsite test" cases (0522c0555 to 0522c0746) are
/// the test set; the training and additional training cases (0522c0001 to 0522c0479) and the
/// 5 "onsite test" cases (0522c0788 to 0522c0878) make the 38 training cases.
pub fn miccai2015_split(case: &str) -> &'static str {
    if ("0522c0555"..="0522c0746").contains(&case) {
        "test"
    } else {
        "train"
    }
}

/// The fingerprint of a case's files, by content: each file's path relative to `root` (so a
/// copy of the dataset elsewhere, or the same share mounted at another path, fingerprints
/// the same) and the blake3 hash of its bytes. Missing files count too. Hashes are
/// remembered by (path, size, modification and change times, inode) in [`memo_dir`], as DVC
/// does, so an unchanged file is not read again; any write to a file changes its change
/// time (which no tool can set back), so an edit that keeps size and modification time is
/// caught too.
pub fn fingerprint(root: &Path, files: &[PathBuf]) -> String {
    use rayon::prelude::*;
    let parts: Vec<String> = files
        .par_iter()
        .map(|f| {
            let rel = f.strip_prefix(root).unwrap_or(f);
            let content = content_hash(f).unwrap_or_else(|| "missing".to_string());
            format!("{}\0{content}\0", rel.to_string_lossy())
        })
        .collect();
    let mut h = blake3::Hasher::new();
    for p in parts {
        h.update(p.as_bytes());
    }
    h.finalize().to_hex()[..32].to_string()
}

/// Where content hashes are remembered: `SHAPEFLOW_HASH_MEMO`, else
/// `$XDG_CACHE_HOME/shapeflow/content-hashes`, else `~/.cache/shapeflow/content-hashes`.
pub fn memo_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SHAPEFLOW_HASH_MEMO") {
        return PathBuf::from(d);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("shapeflow").join("content-hashes")
}

/// The blake3 hash of `f`'s bytes (hex), through the memo; `None` if it cannot be read.
fn content_hash(f: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(f).ok()?;
    let abs = std::fs::canonicalize(f).unwrap_or_else(|_| f.to_path_buf());
    let mut k = blake3::Hasher::new();
    k.update(b"shapeflow-content-memo-v1\0");
    k.update(abs.to_string_lossy().as_bytes());
    for x in [
        m.len(),
        m.mtime() as u64,
        m.mtime_nsec() as u64,
        m.ctime() as u64,
        m.ctime_nsec() as u64,
        m.ino(),
        m.dev(),
    ] {
        k.update(&x.to_le_bytes());
    }
    let memo = memo_dir().join(k.finalize().to_hex().as_str());
    if let Ok(v) = std::fs::read_to_string(&memo) {
        if v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Some(v);
        }
    }
    let mut h = blake3::Hasher::new();
    h.update_reader(std::fs::File::open(f).ok()?).ok()?;
    let hex = h.finalize().to_hex().to_string();
    // A memo that cannot be written only costs a re-read next time.
    let _ = std::fs::create_dir_all(memo_dir())
        .and_then(|()| shapeflow_formats::atomic::write(&memo, hex.as_bytes()));
    Some(hex)
}

/// Reads a NIfTI or NRRD volume by its file name's ending.
pub fn read_volume(path: &Path) -> Result<Volume, String> {
    shapeflow_formats::read(path).map_err(|e| e.to_string())
}

/// A label volume as u8 values; float labels must be whole numbers in 0..=255.
pub fn as_labels(v: Volume, path: &Path) -> Result<Volume, String> {
    let data = match &v.data {
        VoxelData::U8(_) => return Ok(v),
        VoxelData::I16(d) => d
            .iter()
            .map(|&x| u8::try_from(x).map_err(|_| x as f32))
            .collect::<Result<Vec<u8>, f32>>(),
        VoxelData::F32(d) => d
            .iter()
            .map(|&x| {
                if x.fract() == 0.0 && (0.0..=255.0).contains(&x) {
                    Ok(x as u8)
                } else {
                    Err(x)
                }
            })
            .collect(),
    };
    let data = data.map_err(|x| {
        format!(
            "{}: label value {x} is not a whole number in 0..255",
            path.display()
        )
    })?;
    v.with_data(VoxelData::U8(data)).map_err(|e| e.to_string())
}

fn check_same_grid(a: &Volume, a_path: &Path, b: &Volume, b_path: &Path) -> Result<(), String> {
    // 1e-3 mm: float32 header precision on PDDCA origins is about 1e-5.
    if !a.grid().same_as(&b.grid(), 1e-3) {
        return Err(format!(
            "{} and {} are on different voxel grids (dims {:?} vs {:?}, or different geometry)",
            a_path.display(),
            b_path.display(),
            a.dims,
            b.dims
        ));
    }
    Ok(())
}

/// The files of one case of the organ-files layout (PDDCA, OpenKBP).
pub struct OrganFilesCase {
    pub id: String,
    pub image: Option<PathBuf>,
    /// Per organ (in the requested order), the mask file if one exists.
    pub masks: Vec<Option<PathBuf>>,
}

/// Organ file names to try, in order: the organ name, then its aliases.
fn candidates<'a>(organ: &'a str, aliases: &'a BTreeMap<String, Vec<String>>) -> Vec<&'a str> {
    let mut v = vec![organ];
    if let Some(a) = aliases.get(organ) {
        v.extend(a.iter().map(String::as_str));
    }
    v
}

/// The files of one PDDCA case.
pub type PddcaCase = OrganFilesCase;

/// Lists PDDCA cases under `root`: every directory with `structures/` or `img.nrrd`.
pub fn pddca_cases(
    root: &Path,
    organs: &[String],
    aliases: &BTreeMap<String, Vec<String>>,
) -> Result<Vec<PddcaCase>, String> {
    organ_file_cases(root, &OrganFilesSpec::pddca(), organs, aliases)
}

/// Lists the cases under `root`: every directory holding the structures folder or the image
/// file `spec` names, sorted by id. Each organ's mask is the first of its name and its
/// aliases that exists; none: not contoured in that case.
pub fn organ_file_cases(
    root: &Path,
    spec: &OrganFilesSpec,
    organs: &[String],
    aliases: &BTreeMap<String, Vec<String>>,
) -> Result<Vec<OrganFilesCase>, String> {
    let entries = std::fs::read_dir(root)
        .map_err(|e| format!("{}: cannot list the dataset folder: {e}", root.display()))?;
    let mut out = Vec::new();
    for e in entries.flatten() {
        let dir = e.path();
        if !dir.is_dir() {
            continue;
        }
        let structures = dir.join(&spec.structures);
        let image = dir.join(&spec.image);
        if !structures.is_dir() && !image.is_file() {
            continue;
        }
        let masks = organs
            .iter()
            .map(|o| {
                candidates(o, aliases)
                    .into_iter()
                    .map(|n| structures.join(format!("{n}{}", spec.extension)))
                    .find(|p| p.is_file())
            })
            .collect();
        out.push(OrganFilesCase {
            id: e.file_name().to_string_lossy().to_string(),
            image: image.is_file().then_some(image),
            masks,
        });
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// Label priority for overlapping masks: bigger structures first, so that smaller ones
/// (chiasm, optic nerves) keep their voxels where two annotations touch.
/// One label map (0 background, k = organs[k - 1]) from per-organ masks (nonzero =
/// inside; `None` = not contoured), and how many voxels two organs claimed: where masks
/// overlap, the organ of higher [`priority`] (the smaller structure) wins.
pub(crate) fn labels_from_masks(
    n: usize,
    organs: &[String],
    masks: &[Option<&[u8]>],
) -> (Vec<u8>, usize) {
    let mut labels = vec![0u8; n];
    let mut order: Vec<usize> = (0..organs.len()).collect();
    order.sort_by_key(|&k| priority(&organs[k]));
    let mut overlaps = 0usize;
    for k in order {
        let Some(m) = masks.get(k).copied().flatten() else {
            continue;
        };
        for (l, &v) in labels.iter_mut().zip(m) {
            if v != 0 {
                overlaps += usize::from(*l != 0);
                *l = (k + 1) as u8;
            }
        }
    }
    (labels, overlaps)
}

fn priority(organ: &str) -> u8 {
    let o = organ.to_ascii_lowercase();
    if o.contains("chiasm") {
        6
    } else if o.contains("optic") {
        5
    } else if o.contains("stem") {
        4
    } else if o.contains("submandibular") {
        3
    } else if o.contains("parotid") {
        2
    } else {
        1
    }
}

/// Loads one PDDCA case into a label map. Masks must share the image's grid.
pub fn load_pddca(
    case: &PddcaCase,
    organs: &[String],
    require_image: bool,
) -> Result<CaseData, String> {
    load_organ_files(case, "img.nrrd", organs, require_image)
}

/// Loads one case of the organ-files layout into one label map (where masks overlap, the
/// smaller structure wins; the count is in the notes). Masks must share the image's grid.
pub fn load_organ_files(
    case: &OrganFilesCase,
    image_name: &str,
    organs: &[String],
    require_image: bool,
) -> Result<CaseData, String> {
    if case.image.is_none() && require_image {
        return Err(format!(
            "case {}: no {image_name} (set `require_image: false` to load masks alone)",
            case.id
        ));
    }
    // The image and the masks are read and decoded in parallel; errors are reported in file
    // order (image first), so the message does not depend on timing.
    let (image, masks) = rayon::join(
        || {
            case.image
                .as_ref()
                .map(|p| Ok::<_, String>((read_volume(p)?, p.clone())))
        },
        || {
            case.masks
                .par_iter()
                .map(|m| {
                    m.as_ref()
                        .map(|p| Ok::<_, String>((as_labels(read_volume(p)?, p)?, p.clone())))
                        .transpose()
                })
                .collect::<Vec<Result<Option<(Volume, PathBuf)>, String>>>()
        },
    );
    let image = image.transpose()?;
    let masks = masks.into_iter().collect::<Result<Vec<_>, String>>()?;
    let reference = image
        .as_ref()
        .map(|(v, p)| (v.clone(), p.clone()))
        .or_else(|| {
            masks
                .iter()
                .flatten()
                .next()
                .map(|(v, p)| (v.clone(), p.clone()))
        })
        .ok_or_else(|| format!("case {}: neither an image nor any organ mask", case.id))?;
    let mut voxels: Vec<Option<&[u8]>> = Vec::with_capacity(masks.len());
    for (m, p) in masks.iter().flatten() {
        check_same_grid(&reference.0, &reference.1, m, p)?;
    }
    for m in &masks {
        voxels.push(m.as_ref().map(|(m, _)| match &m.data {
            VoxelData::U8(d) => d.as_slice(),
            _ => unreachable!("as_labels gives u8"),
        }));
    }
    let (labels, overlaps) = labels_from_masks(reference.0.len(), organs, &voxels);
    let grid_vol = reference.0;
    let labels = grid_vol
        .with_data(VoxelData::U8(labels))
        .map_err(|e| e.to_string())?;
    let mut notes = serde_json::Map::new();
    notes.insert("source".into(), serde_json::json!(case.id));
    notes.insert("overlapping_voxels".into(), serde_json::json!(overlaps));
    Ok(CaseData {
        original: Some(labels.grid()),
        images: image.map(|(v, _)| Arc::new(v)).into_iter().collect(),
        labels: Some(Arc::new(labels)),
        organs: organs.to_vec(),
        present: masks.iter().map(Option::is_some).collect(),
        notes,
    })
}

/// One case of an MSD or nnU-Net v2 dataset.
pub struct MsdCase {
    pub id: String,
    /// The image files, in channel order: one (MSD: a 4D file holds every channel) or one
    /// per channel (nnU-Net v2's `<case>_0000`, `<case>_0001`, ...).
    pub images: Vec<PathBuf>,
    pub label: PathBuf,
}

impl MsdCase {
    /// Every file the case is read from: its images, then its label.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut f = self.images.clone();
        f.push(self.label.clone());
        f
    }
}

/// The MSD `dataset.json`: training cases and label names.
pub struct MsdDataset {
    pub cases: Vec<MsdCase>,
    /// The `test` entries: images without labels, as (case id, image path).
    pub tests: Vec<(String, Vec<PathBuf>)>,
    /// Label value -> name, background excluded.
    pub labels: BTreeMap<u8, String>,
}

/// Reads `root/dataset.json`. An entry that leaves `root` (an absolute path, or `..`) is
/// refused unless `allow_outside` (the load stage's `allow_outside_root`).
pub fn msd_dataset(root: &Path, allow_outside: bool) -> Result<MsdDataset, String> {
    let path = root.join("dataset.json");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let j: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| format!("{}: invalid JSON: {e}", path.display()))?;
    let mut labels = BTreeMap::new();
    if let Some(m) = j["labels"].as_object() {
        for (k, v) in m {
            let value: u8 = k
                .parse()
                .map_err(|_| format!("{}: label key `{k}` is not a number", path.display()))?;
            if value != 0 {
                labels.insert(value, v.as_str().unwrap_or(k).to_string());
            }
        }
    }
    let training = j["training"]
        .as_array()
        .ok_or_else(|| format!("{}: no `training` list", path.display()))?;
    let mut cases = Vec::new();
    for (i, t) in training.iter().enumerate() {
        let (Some(img), Some(lab)) = (t["image"].as_str(), t["label"].as_str()) else {
            return Err(format!(
                "{}: training entry {i} needs `image` and `label`",
                path.display()
            ));
        };
        for (field, rel) in [("image", img), ("label", lab)] {
            if !allow_outside && escapes(rel) {
                return Err(format!(
                    "{}: training entry {i} `{field}: {rel}` points outside the dataset folder; \
                     refused (set the load stage's `allow_outside_root: true` to allow it)",
                    path.display()
                ));
            }
        }
        let image = root.join(img);
        cases.push(MsdCase {
            id: msd_id(&image, i),
            images: vec![image],
            label: root.join(lab),
        });
    }
    cases.sort_by(|a, b| a.id.cmp(&b.id));
    // `test`: a list of image paths (MSD), or of {image: path}.
    let mut tests = Vec::new();
    for (i, t) in j["test"].as_array().into_iter().flatten().enumerate() {
        let Some(rel) = t.as_str().or_else(|| t["image"].as_str()) else {
            return Err(format!(
                "{}: test entry {i} must be an image path (or {{\"image\": path}})",
                path.display()
            ));
        };
        if !allow_outside && escapes(rel) {
            return Err(format!(
                "{}: test entry {i} `{rel}` points outside the dataset folder; refused (set \
                 the load stage's `allow_outside_root: true` to allow it)",
                path.display()
            ));
        }
        let image = root.join(rel);
        tests.push((msd_id(&image, i), vec![image]));
    }
    tests.sort();
    Ok(MsdDataset {
        cases,
        tests,
        labels,
    })
}

/// An MSD case id: the image's file name without `.nii(.gz)`.
fn msd_id(image: &Path, i: usize) -> String {
    image
        .file_name()
        .map(|n| {
            n.to_string_lossy()
                .trim_end_matches(".gz")
                .trim_end_matches(".nii")
                .to_string()
        })
        .unwrap_or_else(|| format!("case{i}"))
}

/// The channels of a case's image files, in order: each file's channels (a 4D NIfTI holds
/// several), all on the first one's grid. Names the file and the channel that is not.
pub fn read_channels(files: &[PathBuf]) -> Result<Vec<Volume>, String> {
    let mut out: Vec<(Volume, &Path)> = Vec::new();
    for f in files {
        for v in shapeflow_formats::read_channels(f).map_err(|e| e.to_string())? {
            if let Some((first, first_path)) = out.first() {
                check_same_grid(first, first_path, &v, f)?;
            }
            out.push((v, f));
        }
    }
    if out.is_empty() {
        return Err("a case without image files".into());
    }
    Ok(out.into_iter().map(|(v, _)| v).collect())
}

/// An image without labels (a test case): labels `None`, every organ not annotated.
pub fn load_unlabeled(images: &[PathBuf], organs: &[String]) -> Result<CaseData, String> {
    let channels = read_channels(images)?;
    let mut notes = serde_json::Map::new();
    notes.insert("source".into(), source_note(images));
    notes.insert("unlabeled".into(), true.into());
    Ok(CaseData {
        original: Some(channels[0].grid()),
        images: channels.into_iter().map(Arc::new).collect(),
        labels: None,
        organs: organs.to_vec(),
        present: vec![false; organs.len()],
        notes,
    })
}

/// The `source` note: the image file, or the list of them (one per channel).
fn source_note(files: &[PathBuf]) -> serde_json::Value {
    match files {
        [one] => serde_json::json!(one.display().to_string()),
        many => serde_json::json!(many
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()),
    }
}

/// Whether a relative path from a dataset file leaves its folder: absolute, or with a `..`
/// (checked on the words, so a folder that is a symlink stays allowed).
fn escapes(rel: &str) -> bool {
    use std::path::Component;
    let p = Path::new(rel);
    p.is_absolute()
        || rel.starts_with('/')
        || rel.starts_with('\\')
        || p.components().any(|c| {
            matches!(
                c,
                Component::ParentDir | Component::Prefix(_) | Component::RootDir
            )
        })
}

/// Loads an MSD case; `organs` are (name, source label values) after merging.
pub fn load_msd(case: &MsdCase, organs: &[(String, Vec<u8>)]) -> Result<CaseData, String> {
    let channels = read_channels(&case.images)?;
    let label = as_labels(read_volume(&case.label)?, &case.label)?;
    check_same_grid(&channels[0], &case.images[0], &label, &case.label)?;
    let mut map = [0u8; 256];
    for (k, (_, values)) in organs.iter().enumerate() {
        for &v in values {
            map[v as usize] = (k + 1) as u8;
        }
    }
    let VoxelData::U8(src) = &label.data else {
        unreachable!("as_labels gives u8")
    };
    // Values no organ lists become background; how many of each is recorded (and
    // `pipeline inspect` reports it), never lost silently.
    let mut counts = [0usize; 256];
    for &v in src {
        counts[v as usize] += 1;
    }
    let listed: std::collections::HashSet<u8> =
        organs.iter().flat_map(|(_, v)| v.iter().copied()).collect();
    let unlisted: serde_json::Map<String, serde_json::Value> = (1..256)
        .filter(|&v| counts[v] > 0 && !listed.contains(&(v as u8)))
        .map(|v| (v.to_string(), serde_json::json!(counts[v])))
        .collect();
    let remapped: Vec<u8> = src.iter().map(|&v| map[v as usize]).collect();
    let labels = label
        .with_data(VoxelData::U8(remapped))
        .map_err(|e| e.to_string())?;
    let mut notes = serde_json::Map::new();
    notes.insert("source".into(), source_note(&case.images));
    if !unlisted.is_empty() {
        tracing::warn!(
            "{}: label values {:?} are not in the organ table; read as background",
            case.label.display(),
            unlisted.keys().collect::<Vec<_>>()
        );
        notes.insert("unlisted_label_values".into(), unlisted.into());
    }
    Ok(CaseData {
        original: Some(labels.grid()),
        images: channels.into_iter().map(Arc::new).collect(),
        labels: Some(Arc::new(labels)),
        organs: organs.iter().map(|(n, _)| n.clone()).collect(),
        present: vec![true; organs.len()],
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// By content: a copy elsewhere fingerprints the same; an edit that keeps the size and
    /// the modification time changes it; the memo is used (an unchanged file is not re-read).
    #[test]
    fn fingerprints_follow_content_not_place_or_times() {
        let memo = tempfile::tempdir().unwrap();
        std::env::set_var("SHAPEFLOW_HASH_MEMO", memo.path());
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        for d in [a.path(), b.path()] {
            std::fs::create_dir_all(d.join("imagesTr")).unwrap();
            std::fs::write(d.join("imagesTr/x.nii.gz"), b"0123456789").unwrap();
        }
        let files = |d: &Path| vec![d.join("imagesTr/x.nii.gz"), d.join("labelsTr/x.nii.gz")];
        let fa = fingerprint(a.path(), &files(a.path()));
        assert_eq!(
            fa,
            fingerprint(b.path(), &files(b.path())),
            "a copy elsewhere"
        );
        assert!(
            std::fs::read_dir(memo.path()).unwrap().count() >= 2,
            "memo written"
        );
        // Same size, modification time put back: still seen (the change time moved).
        let f = a.path().join("imagesTr/x.nii.gz");
        let mtime = std::fs::metadata(&f).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&f, b"0123456780").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&f)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        assert_ne!(
            fa,
            fingerprint(a.path(), &files(a.path())),
            "an edit keeping size and time"
        );
    }

    #[test]
    fn dataset_json_entries_stay_inside_the_root_unless_allowed() {
        let d = tempfile::tempdir().unwrap();
        let write = |image: &str| {
            let j = serde_json::json!({
                "labels": {"0": "background", "1": "organ"},
                "training": [{"image": image, "label": "./labelsTr/a.nii.gz"}],
            });
            std::fs::write(d.path().join("dataset.json"), j.to_string()).unwrap();
        };
        for bad in [
            "../../etc/secret.nii.gz",
            "/etc/secret.nii.gz",
            "imagesTr/../../x.nii.gz",
        ] {
            write(bad);
            let e = msd_dataset(d.path(), false).err().unwrap();
            assert!(
                e.contains("dataset.json") && e.contains("outside") && e.contains(bad),
                "{e}"
            );
            assert!(msd_dataset(d.path(), true).is_ok(), "{bad}");
        }
        write("./imagesTr/a.nii.gz");
        assert_eq!(msd_dataset(d.path(), false).unwrap().cases.len(), 1);
    }
}

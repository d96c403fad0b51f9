//! Files for people written so that a reader never sees half of one: a hidden temporary
//! file beside the target, then a rename (atomic within one directory).

use std::path::{Path, PathBuf};

/// `.<name>.<pid>.tmp` beside `path`, keeping `path`'s extension last (so a writer that
/// picks its format by extension, e.g. `.nii.gz`, still sees it).
fn temp_beside(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".part-{}-{name}", std::process::id()))
}

/// The name `path` will have once [`write_with`] renames it (its own name if not a
/// temporary): writers of detached data name the data file after it.
pub fn final_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let prefix = format!(".part-{}-", std::process::id());
    match name.strip_prefix(&prefix) {
        Some(rest) => path.with_file_name(rest),
        None => path.to_path_buf(),
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename.
pub fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_with(path, |tmp| std::fs::write(tmp, bytes), |e| e)
}

/// Lets `f` write the temporary file, then renames it to `path` (a rename failure becomes
/// an `E` through `io`); on failure the temporary file is removed and `path` is untouched.
pub fn write_with<E>(
    path: &Path,
    f: impl FnOnce(&Path) -> Result<(), E>,
    io: impl FnOnce(std::io::Error) -> E,
) -> Result<(), E> {
    let tmp = temp_beside(path);
    let r = f(&tmp).and_then(|()| std::fs::rename(&tmp, path).map_err(io));
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

#[cfg(test)]
mod tests {
    #[test]
    fn writes_whole_files_and_leaves_nothing_on_failure() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.json");
        super::write(&p, b"{}").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"{}");
        let r: std::io::Result<()> = super::write_with(
            &p,
            |tmp| {
                std::fs::write(tmp, b"half")?;
                Err(std::io::Error::other("failed"))
            },
            |e| e,
        );
        assert!(r.is_err());
        assert_eq!(std::fs::read(&p).unwrap(), b"{}", "target untouched");
        assert_eq!(
            std::fs::read_dir(d.path()).unwrap().count(),
            1,
            "no temporary left"
        );
    }
}

//! Files for people written so that a reader never sees half of one: a hidden temporary
//! file beside the target, then a rename (atomic within one directory).

use std::path::{Path, PathBuf};

/// Temporaries of this process are numbered, so that threads writing the same file at once
/// (e.g. every case's task writing its folder's `labels.json`) never share one.
static NEXT_TEMP: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// `.part-<pid>-<n>-<name>` beside `path`, keeping `path`'s extension last (so a writer that
/// picks its format by extension, e.g. `.nii.gz`, still sees it).
fn temp_beside(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let n = NEXT_TEMP.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    path.with_file_name(format!(".part-{}-{n}-{name}", std::process::id()))
}

/// The name `path` will have once [`write_with`] renames it (its own name if not a
/// temporary): writers of detached data name the data file after it.
pub fn final_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let prefix = format!(".part-{}-", std::process::id());
    let rest = name.strip_prefix(&prefix).and_then(|r| {
        let (n, rest) = r.split_once('-')?;
        (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())).then_some(rest)
    });
    match rest {
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
    /// Threads writing one file at once each rename a whole file of their own (they shared
    /// one temporary before: a rename found it gone, seen on a cascade's `labels.json`).
    #[test]
    fn threads_writing_one_file_at_once_all_succeed() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("labels.json");
        std::thread::scope(|s| {
            let hs: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        (0..200)
                            .map(|_| super::write(&p, b"{\"1\": \"Esophagus\"}"))
                            .collect::<std::io::Result<Vec<()>>>()
                    })
                })
                .collect();
            for h in hs {
                h.join().unwrap().unwrap();
            }
        });
        assert_eq!(std::fs::read(&p).unwrap(), b"{\"1\": \"Esophagus\"}");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
        let t = super::temp_beside(&p);
        assert_eq!(super::final_path(&t), p);
    }

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

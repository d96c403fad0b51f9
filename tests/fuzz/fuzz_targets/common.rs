// Shared by the fuzz targets: one scratch folder per process.
use std::path::PathBuf;
use std::sync::OnceLock;

#[allow(dead_code)]
pub fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = tempfile::Builder::new()
            .prefix("shapeflow-fuzz-")
            .tempdir()
            .expect("scratch dir");
        d.keep()
    })
}

/// Writes `bytes` to `name` in the scratch folder and returns its path.
#[allow(dead_code)]
pub fn file(name: &str, bytes: &[u8]) -> PathBuf {
    let p = scratch().join(name);
    std::fs::write(&p, bytes).expect("write");
    p
}

// Links libtorch so that binaries run with no exported variables: an rpath to the wheel's
// `torch/lib` in the project's .venv (and to the GPU machine's /opt/torch/.venv), and
// `--no-as-needed -ltorch`, without which libtorch_cuda is dropped and CUDA is never seen.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let libtorch = std::env::var("LIBTORCH")
        .map(PathBuf::from)
        .unwrap_or_default();
    let version = libtorch.join("version.py");
    match std::fs::read_to_string(&version) {
        Ok(v) if v.contains("__version__ = '2.11.0") => {}
        Ok(v) => panic!(
            "libtorch at {} is not 2.11.0 ({}); run scripts/setup-torch.sh",
            libtorch.display(),
            v.lines()
                .find(|l| l.starts_with("__version__"))
                .unwrap_or("unknown version")
        ),
        Err(_) => panic!(
            "no libtorch at {} (LIBTORCH); run scripts/setup-torch.sh",
            libtorch.display()
        ),
    }
    let gpu_machine = ["3.11", "3.12", "3.13"].map(|v| {
        PathBuf::from(format!(
            "/opt/torch/.venv/lib/python{v}/site-packages/torch/lib"
        ))
    });
    for lib in std::iter::once(libtorch.join("lib")).chain(gpu_machine) {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    }
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    println!("cargo:rustc-link-arg=-ltorch");
}

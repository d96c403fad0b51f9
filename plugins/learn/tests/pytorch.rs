//! A model saved by the `train` stage loads in PyTorch (python/shapeflow_unet.py, torch from
//! the project's .venv) and computes the same outputs.

use shapeflow_learn::fit::Mode;
use shapeflow_learn::history::write_outputs;
use shapeflow_learn::model::{self, Model, ModelConfig, Norm};
use shapeflow_learn::tch::{nn, Device, Kind, Tensor};
use shapeflow_learn::unet::{UNet, UNetConfig};
use std::path::Path;
use std::process::Command;

#[test]
fn saved_model_loads_in_pytorch_with_the_same_outputs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let python = root.join(".venv/bin/python");
    if !python.exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs scripts/test.sh, which creates .venv"
        );
        eprintln!("skipped: no .venv (run scripts/setup-torch.sh)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    shapeflow_learn::tch::manual_seed(14);
    let vs = nn::VarStore::new(Device::Cpu);
    let unet = UNetConfig {
        in_channels: 1,
        out_channels: 3,
        depth: 2,
        base_channels: 4,
        groups: 2,
        slope: 0.01,
        max_channels: 16,
    };
    let net = UNet::new(&vs.root(), unet);
    let model = Model {
        config: ModelConfig {
            format: model::FORMAT.into(),
            unet,
            organs: vec!["a".into(), "b".into(), "c".into()],
            mode: Mode::Joint,
            k: 1500.0,
            norm: vec![Norm::Zscore],
            patch: [16, 12, 8],
            spacing: [1.0; 3],
            trained: Default::default(),
            training_data: None,
            left_right_flip: None,
            levels: None,
            contest: Default::default(),
            levels_mirrored: false,
        },
        weights: model::weights_bytes(&vs, dir.path()).unwrap(),
    };
    let out_dir = dir.path().join("train");
    write_outputs(&out_dir, &model, &[]).unwrap();
    let x = Tensor::randn([2, 1, 8, 12, 16], (Kind::Float, Device::Cpu));
    let y = net.forward(&x);
    let io = dir.path().join("io.safetensors");
    Tensor::write_safetensors(&[("input", &x), ("output", &y)], &io).unwrap();
    let out = Command::new(&python)
        .arg(root.join("python/check_load.py"))
        .arg(&out_dir)
        .arg(&io)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(r["shape"], serde_json::json!([2, 3, 8, 12, 16]));
    let (diff, max_abs) = (
        r["max_abs_diff"].as_f64().unwrap(),
        r["max_abs"].as_f64().unwrap(),
    );
    assert!(max_abs > 0.01);
    // Relative: float32 kernels of tch and PyTorch sum in other orders (threads, ISA); measured
    // up to 2.1e-6 of the largest output over 25 random nets (2 threads), 1.1e-6 to 1.3e-6 for
    // this seeded one with 1 to 16 threads; a wrong load differs by the outputs' own size.
    assert!(
        diff <= 1e-5 * max_abs,
        "PyTorch and tch outputs differ by {diff} (largest output {max_abs})"
    );
}

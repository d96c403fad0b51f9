//! One training step (forward, joint loss, backward, Adam) of the UNet in tch, timed; the
//! same step in PyTorch from Python runs in bench/step_peer.py on the same input (written
//! here as safetensors), the same wheel and the same thread count. Driver: bench/step.sh.
//!
//! usage: step [--threads N] [--reps R] [--io PATH] [--device cpu|cuda] [--bf16]
//! Prints one JSON line: median and all step times.

use shapeflow_learn::adam::Adam;
use shapeflow_learn::fit::{self, BatchTensors, Mode};
use shapeflow_learn::tch::{self, nn, Device, Kind, Tensor};
use shapeflow_learn::unet::{UNet, UNetConfig};
use std::time::Instant;

/// The hippocampus study's network and batch (pipelines/hippocampus.yaml).
const CONFIG: UNetConfig = UNetConfig {
    in_channels: 1,
    out_channels: 1,
    depth: 4,
    base_channels: 16,
    groups: 8,
    slope: 0.01,
    max_channels: 256,
};
const BATCH: i64 = 4;
const PATCH: [i64; 3] = [32, 48, 32]; // z, y, x

fn arg(name: &str) -> Option<String> {
    let a: Vec<String> = std::env::args().collect();
    a.iter()
        .position(|x| x == name)
        .and_then(|i| a.get(i + 1).cloned())
}

fn main() {
    let threads: i32 = arg("--threads").and_then(|s| s.parse().ok()).unwrap_or(1);
    let reps: usize = arg("--reps").and_then(|s| s.parse().ok()).unwrap_or(7);
    let device = match arg("--device").as_deref() {
        Some("cuda") => Device::Cuda(0),
        _ => Device::Cpu,
    };
    let bf16 = std::env::args().any(|a| a == "--bf16");
    tch::set_num_threads(threads);
    tch::manual_seed(0);
    let shape = [BATCH, 1, PATCH[0], PATCH[1], PATCH[2]];
    // A sphere per case: image, SDM in [-1, 1], segmentation.
    let grid = |d: i64| Tensor::arange(d, (Kind::Float, Device::Cpu)) - (d as f64 - 1.0) / 2.0;
    let (z, y, x) = (
        grid(PATCH[0]).view([1, 1, -1, 1, 1]),
        grid(PATCH[1]).view([1, 1, 1, -1, 1]),
        grid(PATCH[2]).view([1, 1, 1, 1, -1]),
    );
    let r = (z.square() + y.square() + x.square()).sqrt();
    let sdm = ((&r - 10.0) / 20.0)
        .clamp(-1.0, 1.0)
        .expand(shape, false)
        .contiguous();
    let seg = sdm.lt(0.0).to_kind(Kind::Float);
    let image = (&seg * 2.0 - 1.0) + Tensor::randn(shape, (Kind::Float, Device::Cpu)) * 0.3;
    let present = Tensor::ones([BATCH, 1], (Kind::Float, Device::Cpu));
    let vs = nn::VarStore::new(Device::Cpu);
    let net = UNet::new(&vs.root(), CONFIG);
    if let Some(io) = arg("--io") {
        // The peer starts from the same weights and data.
        let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        for (n, t) in [("image", &image), ("sdm", &sdm), ("seg", &seg)] {
            named.push((format!("data.{n}"), t.shallow_clone()));
        }
        Tensor::write_safetensors(&named, &io).expect("write inputs");
    }
    let t = BatchTensors {
        image: image.to_device(device),
        sdm: sdm.to_device(device),
        seg: seg.to_device(device),
        present: present.to_device(device),
    };
    let mut vs = vs;
    vs.set_device(device);
    let mut adam = Adam::new(&vs, 5e-4);
    let mut times = Vec::new();
    let mut losses = Vec::new();
    for i in 0..reps + 2 {
        let t0 = Instant::now();
        let loss = shapeflow_learn::amp::autocast_bf16(bf16, || {
            fit::loss(
                &net,
                &t,
                Mode::Joint,
                1500.0,
                10.0,
                &fit::SegTerms::default(),
            )
        });
        adam.zero_grad();
        loss.backward();
        adam.step();
        let l = loss.double_value(&[]);
        if i >= 2 {
            times.push(t0.elapsed().as_secs_f64());
        }
        losses.push(l);
    }
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    println!(
        "{}",
        serde_json::json!({
            "tool": if bf16 && device.is_cuda() { "shapeflow-tch-bf16" } else { "shapeflow-tch" },
            "device": format!("{device:?}"),
            "voxels_per_s": (BATCH * PATCH[0] * PATCH[1] * PATCH[2]) as f64 / sorted[sorted.len() / 2],
            "case": format!("unet d{} c{} b{} {}x{}x{}", CONFIG.depth, CONFIG.base_channels, BATCH, PATCH[2], PATCH[1], PATCH[0]),
            "threads": threads,
            "median_s": sorted[sorted.len() / 2],
            "runs": times.len(),
            "times_s": times,
            "losses": losses,
        })
    );
}

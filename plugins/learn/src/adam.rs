//! Adam, exactly as `torch.optim.Adam` (no weight decay, no AMSGrad), with its state
//! (step, first and second moments) saved in checkpoints so that a resumed run continues
//! where it stopped. (tch's optimiser cannot export its state.)
//!
//! The moments of all parameters live in two flat buffers, and the gradients are gathered
//! into a third, so that an update is a dozen whole-buffer operations plus one add per
//! parameter instead of about ten small operations per parameter: on a GPU each operation
//! is a kernel launch, and a 3D UNet has about a hundred parameter tensors. (PyTorch's own
//! Adam gets the same effect from its multi-tensor `foreach` kernels, which tch does not
//! expose.)

use std::collections::BTreeMap;
use std::path::Path;
use tch::{nn::VarStore, Kind, TchError, Tensor};

/// The optimiser over every trainable variable of a store, by name.
pub struct Adam {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Updates done so far.
    pub step: i64,
    /// Each parameter with its offset and length in the flat buffers.
    params: Vec<Param>,
    /// First and second moments, all parameters end to end.
    m: Tensor,
    v: Tensor,
}

struct Param {
    name: String,
    tensor: Tensor,
    offset: i64,
    numel: i64,
}

impl Param {
    /// This parameter's slice of a flat buffer, shaped like the parameter (a view).
    fn slice_of(&self, flat: &Tensor) -> Tensor {
        flat.narrow(0, self.offset, self.numel)
            .view(self.tensor.size().as_slice())
    }
}

impl Adam {
    /// PyTorch's defaults: betas (0.9, 0.999), eps 1e-8.
    pub fn new(vs: &VarStore, lr: f64) -> Adam {
        let mut offset = 0;
        let params: Vec<Param> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect::<BTreeMap<_, _>>()
            .into_iter()
            .map(|(name, tensor)| {
                let numel = tensor.numel() as i64;
                offset += numel;
                Param {
                    name,
                    tensor,
                    offset: offset - numel,
                    numel,
                }
            })
            .collect();
        let zeros = || Tensor::zeros([offset], (Kind::Float, vs.device()));
        Adam {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            step: 0,
            m: zeros(),
            v: zeros(),
            params,
        }
    }

    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            p.tensor.zero_grad();
        }
    }

    /// One update from the gradients `backward` left on the parameters. A parameter that
    /// got no gradient counts as a zero gradient (PyTorch would skip it); every parameter
    /// of the UNet gets one at every step.
    pub fn step(&mut self) {
        self.step += 1;
        let bc1 = 1.0 - self.beta1.powi(self.step as i32);
        let bc2 = 1.0 - self.beta2.powi(self.step as i32);
        let step_size = self.lr / bc1;
        tch::no_grad(|| {
            let grads: Vec<Tensor> = self
                .params
                .iter()
                .map(|p| {
                    let g = p.tensor.grad();
                    if g.defined() {
                        g.reshape([-1])
                    } else {
                        Tensor::zeros([p.numel], (Kind::Float, self.m.device()))
                    }
                })
                .collect();
            let g = Tensor::cat(&grads, 0);
            let _ = self.m.lerp_(&g, 1.0 - self.beta1);
            let _ = self.v.g_mul_scalar_(self.beta2);
            let _ = self.v.addcmul_(&g, &(&g * (1.0 - self.beta2)));
            let denom = self.v.sqrt() / bc2.sqrt() + self.eps;
            let update = (&self.m / denom) * -step_size;
            for p in &mut self.params {
                let _ = p.tensor.g_add_(&p.slice_of(&update));
            }
        });
    }

    /// Writes the moments (`m.<name>`, `v.<name>`) as safetensors; the step is kept by the
    /// caller beside it.
    pub fn save(&self, path: &Path) -> Result<(), TchError> {
        let mut named: Vec<(String, Tensor)> = Vec::with_capacity(2 * self.params.len());
        for p in &self.params {
            named.push((
                format!("m.{}", p.name),
                p.slice_of(&self.m).to_device(tch::Device::Cpu),
            ));
            named.push((
                format!("v.{}", p.name),
                p.slice_of(&self.v).to_device(tch::Device::Cpu),
            ));
        }
        Tensor::write_safetensors(&named, path)
    }

    /// Restores moments saved by [`Adam::save`] and the step count.
    pub fn load(&mut self, path: &Path, step: i64) -> Result<(), TchError> {
        let saved: BTreeMap<String, Tensor> = Tensor::read_safetensors(path)?.into_iter().collect();
        tch::no_grad(|| -> Result<(), TchError> {
            for p in &self.params {
                for (prefix, flat) in [("m", &self.m), ("v", &self.v)] {
                    let key = format!("{prefix}.{}", p.name);
                    let src = saved.get(&key).ok_or_else(|| {
                        TchError::TensorNameNotFound(key.clone(), path.display().to_string())
                    })?;
                    p.slice_of(flat).f_copy_(src)?;
                }
            }
            Ok(())
        })?;
        self.step = step;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{nn, nn::OptimizerConfig, Device, Kind};

    /// Same trajectory as tch's (libtorch's C++) Adam on a small least-squares problem.
    #[test]
    fn matches_libtorch_adam() {
        let run = |ours: bool| -> Vec<f32> {
            // Fixed data and initial weights (other tests share libtorch's global RNG).
            let vals = |n: usize, k: f32| -> Vec<f32> {
                (0..n).map(|i| (i as f32 * k).sin() * 1.3).collect()
            };
            let vs = nn::VarStore::new(Device::Cpu);
            let mut lin = nn::linear(&vs.root() / "lin", 5, 2, Default::default());
            tch::no_grad(|| {
                lin.ws
                    .copy_(&Tensor::from_slice(&vals(10, 0.7)).view([2, 5]));
                lin.bs
                    .as_mut()
                    .unwrap()
                    .copy_(&Tensor::from_slice(&[0.1f32, -0.2]));
            });
            let x = Tensor::from_slice(&vals(80, 1.1)).view([16, 5]);
            let y = Tensor::from_slice(&vals(32, 2.3)).view([16, 2]);
            let mut a = Adam::new(&vs, 0.05);
            let mut b = nn::Adam::default().build(&vs, 0.05).unwrap();
            for _ in 0..20 {
                let loss = (nn::Module::forward(&lin, &x) - &y)
                    .square()
                    .mean(Kind::Float);
                if ours {
                    a.zero_grad();
                    loss.backward();
                    a.step();
                } else {
                    b.backward_step(&loss);
                }
            }
            Vec::<f32>::try_from(lin.ws.flatten(0, -1)).unwrap()
        };
        let (a, b) = (run(true), run(false));
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-5, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn state_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let vs = nn::VarStore::new(Device::Cpu);
        let lin = nn::linear(&vs.root() / "lin", 3, 1, Default::default());
        let mut a = Adam::new(&vs, 0.01);
        let x = Tensor::ones([4, 3], (Kind::Float, Device::Cpu));
        a.zero_grad();
        nn::Module::forward(&lin, &x).sum(Kind::Float).backward();
        a.step();
        let p = dir.path().join("adam.safetensors");
        a.save(&p).unwrap();
        let mut b = Adam::new(&vs, 0.01);
        b.load(&p, a.step).unwrap();
        assert_eq!(b.step, 1);
        assert!(a.m.allclose(&b.m, 0.0, 0.0, false));
        assert!(a.v.allclose(&b.v, 0.0, 0.0, false));
        assert!(a.m.abs().sum(Kind::Float).double_value(&[]) > 0.0);
    }
}

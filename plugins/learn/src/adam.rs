//! Adam, exactly as `torch.optim.Adam` (no weight decay, no AMSGrad), with its state
//! (step, first and second moments) saved in checkpoints so that a resumed run continues
//! where it stopped. (tch's optimiser cannot export its state.)

use std::collections::BTreeMap;
use std::path::Path;
use tch::{nn::VarStore, TchError, Tensor};

/// The optimiser over every trainable variable of a store, by name.
pub struct Adam {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Updates done so far.
    pub step: i64,
    params: Vec<(String, Tensor)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
}

impl Adam {
    /// PyTorch's defaults: betas (0.9, 0.999), eps 1e-8.
    pub fn new(vs: &VarStore, lr: f64) -> Adam {
        let params: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect::<BTreeMap<_, _>>()
            .into_iter()
            .collect();
        let zeros = |p: &[(String, Tensor)]| p.iter().map(|(_, t)| t.zeros_like()).collect();
        Adam {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            step: 0,
            m: zeros(&params),
            v: zeros(&params),
            params,
        }
    }

    pub fn zero_grad(&mut self) {
        for (_, p) in &mut self.params {
            p.zero_grad();
        }
    }

    /// One update from the gradients `backward` left on the parameters.
    pub fn step(&mut self) {
        self.step += 1;
        let bc1 = 1.0 - self.beta1.powi(self.step as i32);
        let bc2 = 1.0 - self.beta2.powi(self.step as i32);
        let step_size = self.lr / bc1;
        tch::no_grad(|| {
            for (((_, p), m), v) in self.params.iter_mut().zip(&mut self.m).zip(&mut self.v) {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let _ = m.lerp_(&g, 1.0 - self.beta1);
                let _ = v.g_mul_scalar_(self.beta2);
                let _ = v.addcmul_(&g, &(&g * (1.0 - self.beta2)));
                let denom = v.sqrt() / bc2.sqrt() + self.eps;
                let _ = p.addcdiv_(&(&*m * -step_size), &denom);
            }
        });
    }

    /// Writes the moments (`m.<name>`, `v.<name>`) as safetensors; the step is kept by the
    /// caller beside it.
    pub fn save(&self, path: &Path) -> Result<(), TchError> {
        let mut named: Vec<(String, Tensor)> = Vec::with_capacity(2 * self.params.len());
        for (((name, _), m), v) in self.params.iter().zip(&self.m).zip(&self.v) {
            named.push((format!("m.{name}"), m.to_device(tch::Device::Cpu)));
            named.push((format!("v.{name}"), v.to_device(tch::Device::Cpu)));
        }
        Tensor::write_safetensors(&named, path)
    }

    /// Restores moments saved by [`Adam::save`] and the step count.
    pub fn load(&mut self, path: &Path, step: i64) -> Result<(), TchError> {
        let saved: BTreeMap<String, Tensor> = Tensor::read_safetensors(path)?.into_iter().collect();
        tch::no_grad(|| -> Result<(), TchError> {
            for (((name, _), m), v) in self.params.iter().zip(&mut self.m).zip(&mut self.v) {
                for (prefix, dst) in [("m", m), ("v", v)] {
                    let key = format!("{prefix}.{name}");
                    let src = saved.get(&key).ok_or_else(|| {
                        TchError::TensorNameNotFound(key.clone(), path.display().to_string())
                    })?;
                    dst.f_copy_(src)?;
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
        for (x, y) in a.m.iter().chain(&a.v).zip(b.m.iter().chain(&b.v)) {
            assert!(x.allclose(y, 0.0, 0.0, false));
        }
        assert!(a
            .m
            .iter()
            .any(|m| m.abs().sum(Kind::Float).double_value(&[]) > 0.0));
    }
}

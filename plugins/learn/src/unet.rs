//! The 3D UNet of Xue et al. (AAAI 2020): `depth` downsamplings, each level two 3x3x3
//! convolutions with GroupNorm and LeakyReLU, max-pooling down, trilinear upsampling followed
//! by a convolution up (instead of transposed convolutions), skip connections at every
//! scale, and a 1x1x1 head with one output channel per organ.

use tch::nn::{self, Module};
use tch::Tensor;

/// Shape of the network.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UNetConfig {
    pub in_channels: i64,
    /// One per organ.
    pub out_channels: i64,
    /// Number of downsamplings (the paper: 6). Patch sizes must be divisible by 2^depth.
    pub depth: usize,
    /// Channels at the first level; doubled at each level down.
    pub base_channels: i64,
    /// GroupNorm groups (channels per level must be divisible by it).
    pub groups: i64,
    /// LeakyReLU negative slope.
    pub slope: f64,
    /// Cap on the channels of deep levels.
    pub max_channels: i64,
}

impl Default for UNetConfig {
    fn default() -> Self {
        UNetConfig {
            in_channels: 1,
            out_channels: 9,
            depth: 6,
            base_channels: 16,
            groups: 8,
            slope: 0.01,
            max_channels: 320,
        }
    }
}

/// Conv 3x3x3 -> GroupNorm -> LeakyReLU, twice.
#[derive(Debug)]
struct Block {
    c1: nn::Conv3D,
    n1: nn::GroupNorm,
    c2: nn::Conv3D,
    n2: nn::GroupNorm,
    slope: f64,
}

/// LeakyReLU. libtorch's fused kernel (one op forward and backward) takes only its
/// default slope of 0.01 through tch; other slopes use max(x, slope x).
fn leaky(x: &Tensor, slope: f64) -> Tensor {
    if slope == 0.01 {
        x.leaky_relu()
    } else {
        x.maximum(&(x * slope))
    }
}

impl Block {
    fn new(p: nn::Path, cin: i64, cout: i64, groups: i64, slope: f64) -> Block {
        let cfg = nn::ConvConfig {
            padding: 1,
            ..Default::default()
        };
        let g = groups.min(cout).max(1);
        Block {
            c1: nn::conv3d(&p / "conv1", cin, cout, 3, cfg),
            n1: nn::group_norm(&p / "norm1", g, cout, Default::default()),
            c2: nn::conv3d(&p / "conv2", cout, cout, 3, cfg),
            n2: nn::group_norm(&p / "norm2", g, cout, Default::default()),
            slope,
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let x = leaky(&self.n1.forward(&self.c1.forward(x)), self.slope);
        leaky(&self.n2.forward(&self.c2.forward(&x)), self.slope)
    }
}

/// The network. `forward` takes [batch, in_channels, z, y, x] and returns
/// [batch, out_channels, z, y, x] (raw outputs: the heads apply tanh or sigmoid).
#[derive(Debug)]
pub struct UNet {
    pub config: UNetConfig,
    down: Vec<Block>,
    /// Per level: the conv after trilinear upsampling, then the block after concatenation.
    up: Vec<(nn::Conv3D, Block)>,
    head: nn::Conv3D,
}

impl UNet {
    pub fn new(p: &nn::Path, cfg: UNetConfig) -> UNet {
        let ch = |level: usize| (cfg.base_channels << level).min(cfg.max_channels);
        let mut down = Vec::new();
        let mut cin = cfg.in_channels;
        for level in 0..=cfg.depth {
            down.push(Block::new(
                p / format!("down{level}"),
                cin,
                ch(level),
                cfg.groups,
                cfg.slope,
            ));
            cin = ch(level);
        }
        let mut up = Vec::new();
        for level in (0..cfg.depth).rev() {
            let upconv = nn::conv3d(
                p / format!("upconv{level}"),
                ch(level + 1),
                ch(level),
                3,
                nn::ConvConfig {
                    padding: 1,
                    ..Default::default()
                },
            );
            let block = Block::new(
                p / format!("up{level}"),
                2 * ch(level),
                ch(level),
                cfg.groups,
                cfg.slope,
            );
            up.push((upconv, block));
        }
        let head = nn::conv3d(p / "head", ch(0), cfg.out_channels, 1, Default::default());
        UNet {
            config: cfg,
            down,
            up,
            head,
        }
    }

    /// Sets every output channel's bias to `value` (the raw output before tanh or sigmoid),
    /// so that training starts from a chosen prediction rather than from 0.
    pub fn set_head_bias(&mut self, value: f64) {
        self.set_head_bias_of(0..self.config.out_channels, value);
    }

    /// [`UNet::set_head_bias`] for the output channels in `channels` alone.
    pub fn set_head_bias_of(&mut self, channels: std::ops::Range<i64>, value: f64) {
        if let Some(b) = self.head.bs.as_mut() {
            tch::no_grad(|| {
                let _ = b
                    .narrow(0, channels.start, channels.end - channels.start)
                    .fill_(value);
            });
        }
    }

    /// Multiplies the output layer's weights by `factor` (its bias untouched), to set the
    /// spread of the initial raw outputs.
    pub fn scale_head_weights(&mut self, factor: f64) {
        tch::no_grad(|| {
            let _ = self.head.ws.g_mul_scalar_(factor);
        });
    }

    /// The input's spatial sizes must be divisible by 2^depth. On the CPU the network runs
    /// channels-last ([`Layout::for_device`]); the output is in the usual layout either way.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.forward_in(x, Layout::for_device(x.device()))
    }

    /// [`UNet::forward`] with the activations in `layout`: the same function, rounded
    /// differently.
    pub fn forward_in(&self, x: &Tensor, layout: Layout) -> Tensor {
        let mut skips = Vec::with_capacity(self.down.len());
        let mut h = match layout {
            Layout::Contiguous => x.shallow_clone(),
            Layout::ChannelsLast => channels_last(x),
        };
        for (i, block) in self.down.iter().enumerate() {
            if i > 0 {
                h = h.max_pool3d([2, 2, 2], [2, 2, 2], [0, 0, 0], [1, 1, 1], false);
            }
            h = block.forward(&h);
            skips.push(h.shallow_clone());
        }
        skips.pop();
        for (upconv, block) in &self.up {
            let skip = skips.pop().expect("one skip per level");
            let size = skip.size();
            let upsampled =
                h.upsample_trilinear3d([size[2], size[3], size[4]], false, None, None, None);
            h = leaky(&upconv.forward(&upsampled), self.config.slope);
            h = block.forward(&Tensor::cat(&[skip, h], 1));
        }
        // A no-op in the usual layout.
        self.head.forward(&h).contiguous()
    }
}

/// How the activations lie in memory. The convolutions follow their input's layout
/// (oneDNN on the CPU), so the input's decides for the whole network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// [batch, channel, z, y, x] with x fastest (NCDHW).
    Contiguous,
    /// The channel fastest (NDHWC, PyTorch's `channels_last_3d`).
    ChannelsLast,
}

impl Layout {
    /// Channels-last on the CPU: oneDNN's 3D convolutions run the OpenKBP cascade's
    /// network 1.2-1.3 times (training step) and 1.7-1.8 times (forward) as fast so on an
    /// AVX2 CPU (`bench/layout.py`, docs/benchmarks.md). CUDA keeps the usual layout (not
    /// measured there).
    pub fn for_device(device: tch::Device) -> Layout {
        if device == tch::Device::Cpu {
            Layout::ChannelsLast
        } else {
            Layout::Contiguous
        }
    }
}

/// The same values with channels-last strides. `as_strided` rather than permuting back: a
/// one-channel tensor permuted back keeps its old strides (its channel stride is free), and
/// libtorch would run it in the usual layout.
pub fn channels_last(x: &Tensor) -> Tensor {
    let size = x.size();
    let [n, c, d, h, w] = size[..] else {
        return x.shallow_clone();
    };
    x.permute([0, 2, 3, 4, 1]).contiguous().as_strided(
        [n, c, d, h, w],
        [d * h * w * c, 1, h * w * c, w * c, c],
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    /// Depth 2, 4 base channels, 3 organs.
    fn small_net(vs: &nn::VarStore) -> UNet {
        let cfg = UNetConfig {
            out_channels: 3,
            depth: 2,
            base_channels: 4,
            groups: 2,
            ..Default::default()
        };
        UNet::new(&vs.root(), cfg)
    }

    #[test]
    fn shapes_and_depth() {
        let vs = nn::VarStore::new(Device::Cpu);
        let net = small_net(&vs);
        let x = Tensor::randn([2, 1, 8, 12, 16], (Kind::Float, Device::Cpu));
        let y = net.forward(&x);
        assert_eq!(y.size(), vec![2, 3, 8, 12, 16]);
        // Three levels of blocks down, two up, upconvs and a head: parameters exist and train.
        assert!(vs.trainable_variables().len() > 20);
        let loss = y.square().mean(Kind::Float);
        loss.backward();
        let grads_ok = vs.trainable_variables().iter().all(|v| v.grad().defined());
        assert!(grads_ok, "every parameter receives a gradient");
    }

    #[test]
    fn channels_last_holds_the_same_values_with_the_channel_fastest() {
        for c in [1i64, 3] {
            let x = Tensor::randn([2, c, 4, 6, 8], (Kind::Float, Device::Cpu));
            let y = channels_last(&x);
            assert_eq!(y.size(), x.size());
            assert_eq!(y.stride(), vec![4 * 6 * 8 * c, 1, 6 * 8 * c, 8 * c, c]);
            assert_eq!(f64::try_from((&y - &x).abs().max()).unwrap(), 0.0);
        }
    }

    #[test]
    fn both_layouts_compute_the_same_network() {
        let vs = nn::VarStore::new(Device::Cpu);
        let net = small_net(&vs);
        let x = Tensor::randn([2, 1, 8, 12, 16], (Kind::Float, Device::Cpu));
        let grads = |layout| {
            for v in vs.trainable_variables() {
                let mut g = v.grad();
                if g.defined() {
                    let _ = g.zero_();
                }
            }
            let y = net.forward_in(&x, layout);
            assert!(y.is_contiguous());
            y.square().mean(Kind::Float).backward();
            let g: Vec<Tensor> = vs
                .trainable_variables()
                .iter()
                .map(|v| v.grad().copy())
                .collect();
            (y, g)
        };
        let (a, ga) = grads(Layout::Contiguous);
        let (b, gb) = grads(Layout::ChannelsLast);
        let diff = f64::try_from((&a - &b).abs().max()).unwrap();
        assert!(diff < 1e-4, "outputs differ by {diff}");
        for (p, q) in ga.iter().zip(&gb) {
            let scale = f64::try_from(p.abs().max()).unwrap().max(1e-3);
            let diff = f64::try_from((p - q).abs().max()).unwrap();
            assert!(
                diff < 1e-3 * scale,
                "gradients differ by {diff} (scale {scale})"
            );
        }
    }

    #[test]
    fn the_papers_depth_of_six() {
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = UNetConfig {
            out_channels: 9,
            depth: 6,
            base_channels: 4,
            groups: 2,
            max_channels: 32,
            ..Default::default()
        };
        let net = UNet::new(&vs.root(), cfg);
        let x = Tensor::zeros([1, 1, 64, 64, 64], (Kind::Float, Device::Cpu));
        assert_eq!(net.forward(&x).size(), vec![1, 9, 64, 64, 64]);
    }
}

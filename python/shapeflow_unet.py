"""The shapeflow UNet in PyTorch: load a model trained by `pipeline` (the `train` stage's
model.safetensors + model.json) and use it from Python.

    from shapeflow_unet import load
    net, config = load("runs/<time>-<name>/train/<variant>")
    with torch.no_grad():
        out = net(x)           # x: [batch, C, z, y, x], C = config["unet"]["in_channels"],
                               # normalised as config["norm"] says (a list, one per channel,
                               # when C > 1)
    sdm = torch.tanh(out)      # sdm and joint heads; torch.sigmoid(out) for dice heads
                               # (dice-sdm: out[:, :len(config["organs"])], the rest are
                               # auxiliary maps)

Parameter names match the Rust model's exactly (down0.conv1.weight, ..., head.bias), so
`net.load_state_dict` takes the safetensors file as is. Only torch is needed: the file is
read with `safetensors` when installed, else by the small reader below.
"""

import json
import os
import struct

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    """Conv 3x3x3 -> GroupNorm -> LeakyReLU, twice."""

    def __init__(self, cin, cout, groups, slope):
        super().__init__()
        g = max(1, min(groups, cout))
        self.conv1 = nn.Conv3d(cin, cout, 3, padding=1)
        self.norm1 = nn.GroupNorm(g, cout)
        self.conv2 = nn.Conv3d(cout, cout, 3, padding=1)
        self.norm2 = nn.GroupNorm(g, cout)
        self.slope = slope

    def forward(self, x):
        x = F.leaky_relu(self.norm1(self.conv1(x)), self.slope)
        return F.leaky_relu(self.norm2(self.conv2(x)), self.slope)


class UNet(nn.Module):
    """Xue et al. (AAAI 2020): `depth` max-pool downsamplings, trilinear upsampling followed
    by a convolution, skip connections at every scale, a 1x1x1 head."""

    def __init__(self, in_channels=1, out_channels=9, depth=6, base_channels=16, groups=8,
                 slope=0.01, max_channels=320):
        super().__init__()
        self.depth, self.slope = depth, slope

        def ch(level):
            return min(base_channels << level, max_channels)

        cin = in_channels
        for level in range(depth + 1):
            setattr(self, f"down{level}", Block(cin, ch(level), groups, slope))
            cin = ch(level)
        for level in reversed(range(depth)):
            setattr(self, f"upconv{level}", nn.Conv3d(ch(level + 1), ch(level), 3, padding=1))
            setattr(self, f"up{level}", Block(2 * ch(level), ch(level), groups, slope))
        self.head = nn.Conv3d(ch(0), out_channels, 1)

    def forward(self, x):
        skips, h = [], x
        for level in range(self.depth + 1):
            if level > 0:
                h = F.max_pool3d(h, 2, 2)
            h = getattr(self, f"down{level}")(h)
            skips.append(h)
        skips.pop()
        for level in reversed(range(self.depth)):
            skip = skips.pop()
            h = F.interpolate(h, size=skip.shape[2:], mode="trilinear", align_corners=False)
            h = F.leaky_relu(getattr(self, f"upconv{level}")(h), self.slope)
            h = getattr(self, f"up{level}")(torch.cat([skip, h], 1))
        return self.head(h)


_DTYPES = {"F32": torch.float32, "F64": torch.float64, "F16": torch.float16,
           "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32, "U8": torch.uint8}


def channels_last(x):
    """`x` ([N, C, D, H, W]) with the channel fastest in memory (NDHWC), as the Rust UNet
    feeds its network on the CPU. Explicit strides: `.contiguous(memory_format=...)` leaves a
    one-channel tensor as it is."""
    n, c, d, h, w = x.shape
    return x.permute(0, 2, 3, 4, 1).contiguous().as_strided(
        (n, c, d, h, w), (d * h * w * c, 1, h * w * c, w * c, c))


def read_safetensors(path):
    """{name: tensor} from a safetensors file (the format: u64 header length, JSON header,
    raw little-endian data)."""
    try:
        from safetensors.torch import load_file
        return load_file(path)
    except ImportError:
        pass
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    body = memoryview(data)[8 + n:]
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        a, b = meta["data_offsets"]
        t = torch.frombuffer(bytearray(body[a:b]), dtype=_DTYPES[meta["dtype"]])
        out[name] = t.reshape(meta["shape"])
    return out


def load(model_dir):
    """(UNet with the trained weights, the model.json config) from a `train` output dir."""
    with open(os.path.join(model_dir, "model.json")) as f:
        config = json.load(f)
    net = UNet(**config["unet"])
    net.load_state_dict(read_safetensors(os.path.join(model_dir, "model.safetensors")))
    net.eval()
    return net, config

"""The OpenKBP cascade's network (depth 4, 8 base channels, max 64, GroupNorm 4, 7 organs,
batch 2 of 32 x 48 x 48) in PyTorch, in the usual layout and channels-last (the input given
NDHWC strides, as plugins/learn/src/unet.rs does on the CPU): median training step
(forward, squared-output loss, backward, Adam) and forward pass, one process, alternating.

usage: .venv/bin/python bench/layout.py [THREADS] [STEPS]"""
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
import torch  # noqa: E402
from shapeflow_unet import UNet, channels_last  # noqa: E402

threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 12
torch.set_num_threads(threads)



def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def run(layout):
    torch.manual_seed(0)
    net = UNet(1, 7, depth=4, base_channels=8, groups=4, max_channels=64)
    x = torch.randn(2, 1, 32, 48, 48)
    if layout == "channels-last":
        x = channels_last(x)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    step = []
    for _ in range(steps + 2):
        t = time.perf_counter()
        opt.zero_grad()
        y = net(x).contiguous()
        (y * y).mean().backward()
        opt.step()
        step.append(time.perf_counter() - t)
    fwd = []
    with torch.no_grad():
        for _ in range(steps + 2):
            t = time.perf_counter()
            net(x)
            fwd.append(time.perf_counter() - t)
    return median(step[2:]), median(fwd[2:])


for layout in ["usual", "channels-last"]:
    s, f = run(layout)
    print(f"threads {threads}  {layout:<14} step {s * 1e3:7.1f} ms  forward {f * 1e3:7.1f} ms")

"""One training step of the same UNet in PyTorch (python/shapeflow_unet.py): the weights and
batch the Rust bench wrote, the same joint loss (Dice of sigmoid(-k sdm) + lambda (L1 +
product), means as plugins/learn/src/losses.rs), torch.optim.Adam. Prints one JSON line.

usage: step_peer.py IO.safetensors THREADS REPS [cpu|cuda] [bf16]

PEER_LAYOUT=channels_last runs the network channels-last (the input given NDHWC strides, as
ours does on the CPU: plugins/learn/src/unet.rs); the default is PyTorch's usual layout."""
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
import torch  # noqa: E402
from shapeflow_unet import UNet, channels_last, read_safetensors  # noqa: E402

io, threads, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
device = sys.argv[4] if len(sys.argv) > 4 else "cpu"
bf16 = len(sys.argv) > 5 and sys.argv[5] == "bf16" and device == "cuda"
torch.set_num_threads(threads)
t = read_safetensors(io)
data = {k[5:]: v.to(device) for k, v in t.items() if k.startswith("data.")}
peer_channels_last = os.environ.get("PEER_LAYOUT") == "channels_last"
if peer_channels_last:
    data["image"] = channels_last(data["image"])
net = UNet(in_channels=1, out_channels=1, depth=4, base_channels=16, groups=8, slope=0.01,
           max_channels=256)
net.load_state_dict({k: v for k, v in t.items() if not k.startswith("data.")})
net.to(device)
opt = torch.optim.Adam(net.parameters(), lr=5e-4)
EPS = 1e-6


def joint(p, y, seg, k=1500.0, lam=10.0):
    s = torch.sigmoid(-k * p)
    dims = (2, 3, 4)
    dice = (2 * (s * seg).sum(dims) + EPS) / (s.sum(dims) + seg.sum(dims) + EPS)
    dice_loss = (1 - dice).mean()
    l1 = (p - y).abs().mean()
    yp = p * y
    prod = (-yp / (yp + p * p + y * y + EPS)).mean()
    return dice_loss + lam * (l1 + prod)


times, losses = [], []
for i in range(reps + 2):
    t0 = time.perf_counter()
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
        loss = joint(torch.tanh(net(data["image"])), data["sdm"], data["seg"])
    opt.zero_grad()
    loss.backward()
    opt.step()
    l = loss.item()
    if i >= 2:
        times.append(time.perf_counter() - t0)
    losses.append(l)
d = data["image"].shape
print(json.dumps({
    "tool": f"pytorch-{torch.__version__}" + ("-bf16" if bf16 else "")
    + ("-channels-last" if peer_channels_last else ""), "device": device,
    "peak_gpu_bytes": torch.cuda.max_memory_allocated() if device == "cuda" else None, "case": f"unet d4 c16 b{d[0]} {d[4]}x{d[3]}x{d[2]}",
    "threads": threads, "median_s": sorted(times)[len(times) // 2], "runs": len(times),
    "times_s": times, "losses": losses}))

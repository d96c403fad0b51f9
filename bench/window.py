"""Per-window cost of the OpenKBP cascade's network (depth 4, 8 base channels, max 64,
GroupNorm 4, 7 organs, windows of 32 x 48 x 48) in inference, by batch size, in the usual
layout and channels-last (as plugins/learn/src/unet.rs runs on the CPU): median forward
pass under torch.inference_mode, one process. Why sliding_window never sends a lone window
(plugins/learn/src/tiling.rs).

usage: .venv/bin/python bench/window.py [THREADS] [REPEATS]"""
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
import torch  # noqa: E402
from shapeflow_unet import UNet, channels_last  # noqa: E402

threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 8
torch.set_num_threads(threads)



torch.manual_seed(0)
net = UNet(1, 7, depth=4, base_channels=8, groups=4, max_channels=64).eval()
for layout, f in [("usual", lambda x: x), ("channels-last", channels_last)]:
    for b in (1, 2, 4, 8):
        x = f(torch.randn(b, 1, 32, 48, 48))
        ts = []
        with torch.inference_mode():
            for _ in range(repeats + 2):
                t = time.perf_counter()
                net(x).contiguous()
                ts.append(time.perf_counter() - t)
        ts = sorted(ts[2:])
        m = ts[len(ts) // 2]
        print(f"threads {threads}  {layout:<14} batch {b}  {m * 1e3:7.1f} ms/call  "
              f"{m * 1e3 / b:6.1f} ms/window")

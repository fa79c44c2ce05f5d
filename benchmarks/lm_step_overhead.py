"""What the LM step costs: training-step time of LM-ResNet vs the plain ResNet of the same depth.

The LM update adds one scalar per block and one fused multiply-add per block on the state, so the
ratio should be close to 1. Prints one line per depth, measured in this one run:

    ratio lm_resnet20 lm/plain 1.02   (ms/step lm 41.3, plain 40.5; cpu, batch 128, float32)

Usage: python benchmarks/lm_step_overhead.py [--device cuda] [--depths 20 56] [--precision bf16]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from odelab.papers.lm_resnet import LMResNet


def step_time(model, x, y, steps: int, warmup: int, dtype) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    use_amp = dtype != torch.float32
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    for i in range(warmup + steps):
        if i == warmup:
            sync()
            t0 = time.perf_counter()
        with torch.autocast(x.device.type, dtype=dtype, enabled=use_amp):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync()
    return (time.perf_counter() - t0) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--depths", type=int, nargs="+", default=[20])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.add_argument("--channels-last", action="store_true")
    a = p.parse_args()
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[a.precision]
    dev = torch.device(a.device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    x = torch.randn(a.batch, 3, 32, 32, device=dev)
    y = torch.randint(0, 10, (a.batch,), device=dev)
    fmt = torch.channels_last if a.channels_last else torch.contiguous_format
    x = x.to(memory_format=fmt)
    for depth in a.depths:
        times = {}
        # interleave the two arms twice so drift in machine load hits both
        for _ in range(2):
            for lm in (True, False):
                m = LMResNet(depth=depth, lm=lm).to(dev, memory_format=fmt).train()
                t = step_time(m, x, y, a.steps, a.warmup, dtype)
                times[lm] = min(times.get(lm, float("inf")), t)
        print(
            f"ratio lm_resnet{depth} lm/plain {times[True] / times[False]:.3f}   "
            f"(ms/step lm {1e3 * times[True]:.1f}, plain {1e3 * times[False]:.1f}; "
            f"{dev.type}{' ' + torch.cuda.get_device_name() if dev.type == 'cuda' else ''}, "
            f"batch {a.batch}, {a.precision}{', channels_last' if a.channels_last else ''})",
            flush=True,
        )


if __name__ == "__main__":
    main()

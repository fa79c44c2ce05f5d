"""LM-ResNet-20 CIFAR-10 epoch time per speed switch, in one process, sized for a lent GPU's
minutes: the recipe's training step (batch 128 gathered from device-resident uint8 images, pad-4
crop + flip + normalise on the device, forward, cross-entropy, backward, SGD 0.1 / 0.9 / 1e-4)
timed over one full epoch (391 steps of 50,000 images) after a warm-up, for each switch:

- ``eager_fp32``: no TF32 anywhere (``cudnn.allow_tf32 = False``, matmul ``highest``);
- ``eager_tf32``: PyTorch's defaults on a GPU (cuDNN convolutions in TF32) + TF32 matmuls;
- ``channels_last``: eager_tf32 with NHWC weights and inputs;
- ``bf16``: channels_last under bf16 autocast (``trainer.precision=bf16-mixed``: a different
  config for the results tables, so never used for a recipe row);
- ``compile``: channels_last + ``torch.compile`` (inductor, default mode);
- ``compile_cudagraphs``: the same in ``reduce-overhead`` mode (CUDA graphs);
- ``concurrent2``: two processes of the fastest fp32/TF32 switch at once (aggregate images/s).

Then ``--check`` trains 60 steps from one initialisation on the same batches with eager_fp32
and with the fastest TF32 switch and prints the largest loss difference (what "does not change
the recipe" is measured by here; the full runs' test error is the final check). Ends with
``ratio lm_resnet20 epoch fastest/eager-fp32 X`` and the fraction of the device's peak.

    python benchmarks/gpu_switches.py --out $OUT/switches --check          # ~3 min on an H100
    python benchmarks/gpu_switches.py --device cpu --steps 4 --options eager_fp32 channels_last

The run path's own epoch time (Lightning, callbacks, validation) is in each run's results.json
(``time/train_epoch_s``); ``benchmarks/framework_overhead.py`` measures the framework's share.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from gpu_speed import count_flops, peak_for  # noqa: E402  (the datasheet peaks, FLOP counting)

from odelab.data.transforms import normalize, random_crop_flip  # noqa: E402
from odelab.papers.lm_resnet import LMResNet  # noqa: E402

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
# option: (tf32, channels_last, bf16 autocast, compile mode or None for eager)
OPTIONS = {
    "eager_fp32": (False, False, False, None),
    "eager_tf32": (True, False, False, None),
    "channels_last": (True, True, False, None),
    "bf16": (True, True, True, None),
    "compile": (True, True, False, "default"),
    "compile_cudagraphs": (True, True, False, "reduce-overhead"),
}
RECIPE_SAFE = ("eager_fp32", "eager_tf32", "channels_last", "compile", "compile_cudagraphs")
RUN_OVERRIDES = {  # the run.py keys that give each switch (speed.* are run-local)
    "eager_fp32": "speed.matmul_precision=highest (+ torch.backends.cudnn.allow_tf32=False)",
    "eager_tf32": "speed.matmul_precision=high",
    "channels_last": "speed.matmul_precision=high speed.channels_last=true",
    "bf16": "trainer.precision=bf16-mixed speed.channels_last=true (not the recipe)",
    "compile": "speed.compile=true speed.channels_last=true speed.matmul_precision=high",
    "compile_cudagraphs": "speed.compile=true speed.compile_mode=reduce-overhead "
    "speed.channels_last=true speed.matmul_precision=high",
}


def set_tf32(on: bool) -> None:
    torch.backends.cudnn.allow_tf32 = on
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.set_float32_matmul_precision("high" if on else "highest")


class Trainer:
    """One model + optimiser + data on a device, stepping the recipe's training step."""

    def __init__(self, option: str, device: str, n_images: int, seed: int = 0, batch: int = 128):
        tf32, self.cl, self.bf16, mode = OPTIONS[option]
        self.dev, self.batch = torch.device(device), batch
        if self.dev.type == "cuda":
            set_tf32(tf32)
        torch.manual_seed(seed)
        g = torch.Generator().manual_seed(1234)
        self.x = torch.randint(0, 256, (n_images, 3, 32, 32), dtype=torch.uint8, generator=g)
        self.y = torch.randint(0, 10, (n_images,), generator=g)
        self.x, self.y = self.x.to(self.dev), self.y.to(self.dev)
        net = LMResNet(depth=20, num_classes=10, in_channels=3).to(self.dev)
        if self.cl:
            net = net.to(memory_format=torch.channels_last)
        self.net = net
        self.opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
        self.fwd = torch.compile(net, mode=None if mode == "default" else mode) if mode else net
        self.mean = torch.tensor(MEAN, device=self.dev).view(1, 3, 1, 1)
        self.std = torch.tensor(STD, device=self.dev).view(1, 3, 1, 1)
        self.gen = torch.Generator(device=self.dev).manual_seed(seed)

    def step(self, idx: torch.Tensor) -> torch.Tensor:
        x = random_crop_flip(self.x[idx], pad=4, generator=self.gen)
        x = normalize(x, self.mean, self.std)
        if self.cl:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.dev.type, dtype=torch.bfloat16, enabled=self.bf16):
            loss = F.cross_entropy(self.fwd(x), self.y[idx])
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss.detach()

    def epoch(self, steps: int, epoch: int = 0) -> float:
        """Seconds for ``steps`` steps of one shuffled epoch (synchronised)."""
        perm = torch.randperm(len(self.x), generator=torch.Generator().manual_seed(epoch))
        perm = perm.to(self.dev)
        self.sync()
        t0 = time.perf_counter()
        for i in range(steps):
            self.step(perm[i * self.batch : (i + 1) * self.batch])
        self.sync()
        return time.perf_counter() - t0

    def sync(self) -> None:
        if self.dev.type == "cuda":
            torch.cuda.synchronize()


def flops_per_image() -> float:
    """Training FLOPs (forward + backward) per 32x32 image of LM-ResNet-20."""
    net = LMResNet(depth=20, num_classes=10, in_channels=3).train()
    return count_flops(net, torch.randn(8, 3, 32, 32)) / 8


def measure(option: str, a) -> dict:
    t0 = time.perf_counter()
    tr = Trainer(option, a.device, a.images)
    steps = a.steps or len(tr.x) // tr.batch + (len(tr.x) % tr.batch > 0)
    warm = tr.epoch(min(a.warmup, steps), epoch=99)  # compilation, cudnn autotuning
    times = [tr.epoch(steps, epoch=e) for e in range(a.repeats)]
    return {"option": option, "steps": steps, "s_per_epoch": statistics.median(times),
            "times": times, "warmup_s": warm, "setup_s": time.perf_counter() - t0}  # fmt: skip


def check(option: str, a, steps: int = 60) -> float:
    """Largest |loss difference| over ``steps`` steps, eager_fp32 vs ``option``, same init and
    batches (the augmentation draws come from the same seeded generator)."""
    losses = {}
    for opt in ("eager_fp32", option):
        tr = Trainer(opt, a.device, a.images)
        perm = torch.randperm(len(tr.x), generator=torch.Generator().manual_seed(0)).to(tr.dev)
        per_epoch = len(tr.x) // tr.batch
        batches = [perm[(i % per_epoch) * tr.batch :][: tr.batch] for i in range(steps)]
        losses[opt] = torch.stack([tr.step(b) for b in batches]).float().cpu()
    return float((losses["eager_fp32"] - losses[option]).abs().max())


def concurrent(option: str, a, n: int = 2) -> float:
    """Seconds per epoch of each of ``n`` processes training at once (median over them)."""
    cmd = [sys.executable, __file__, "--device", a.device, "--options", option, "--worker",
           "--images", str(a.images), "--repeats", "1", "--warmup", str(a.warmup)]  # fmt: skip
    if a.steps:
        cmd += ["--steps", str(a.steps)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(n)]
    outs = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    return statistics.median(o["s_per_epoch"] for o in outs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--options", nargs="+", default=list(OPTIONS), choices=list(OPTIONS))
    p.add_argument("--images", type=int, default=50_000)
    p.add_argument("--steps", type=int, default=0, help="0: one full epoch (391 steps)")
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--concurrent", type=int, default=2, help="0: skip the concurrency row")
    p.add_argument("--check", action="store_true", help="loss agreement with eager_fp32")
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--out", default=None)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        print(json.dumps(measure(a.options[0], a)))
        return
    name = torch.cuda.get_device_name(0) if a.device == "cuda" else "cpu"
    print(f"device {name}, torch {torch.__version__}, {a.images} images, batch 128", flush=True)
    rows = {}
    for option in a.options:
        try:
            rows[option] = measure(option, a)
            r = rows[option]
            print(f"  {option}: {r['s_per_epoch']:.3f} s/epoch ({r['steps']} steps; setup "
                  f"{r['setup_s']:.0f} s, warm-up {r['warmup_s']:.1f} s)", flush=True)  # fmt: skip
        except Exception as e:  # one switch failing (e.g. a compiler error) must not end the rest
            print(f"  {option}: failed: {type(e).__name__}: {e}", flush=True)
    safe = [o for o in RECIPE_SAFE if o in rows]
    fastest = min(safe, key=lambda o: rows[o]["s_per_epoch"]) if safe else None
    if fastest and a.concurrent > 1:
        try:
            t = concurrent(fastest, a, a.concurrent)
            rows[f"concurrent{a.concurrent}"] = {
                "option": f"{a.concurrent} x {fastest}", "s_per_epoch": t,
                "processes": a.concurrent,
            }  # fmt: skip
            print(f"  {a.concurrent} x {fastest} at once: {t:.3f} s/epoch each", flush=True)
        except Exception as e:
            print(f"  concurrent: failed: {type(e).__name__}: {e}", flush=True)
    fpi = flops_per_image()
    images = rows[next(iter(rows))]["steps"] * 128 if rows else a.images
    print("\n| switch | s/epoch | vs eager_fp32 | images/s (all processes) | TFLOP/s | "
          "fraction of peak | run.py overrides |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    base = rows.get("eager_fp32", {}).get("s_per_epoch")
    for key, r in rows.items():
        n = r.get("processes", 1)
        ips = n * images / r["s_per_epoch"]
        tflops = fpi * ips / 1e12
        peak = a.peak_tflops or peak_for(name, "bf16" if key == "bf16" else "fp32")
        frac = f"{tflops / peak:.4f}" if peak else "n/a"
        rel = f"{r['s_per_epoch'] / base:.3f}" if base else "n/a"
        over = RUN_OVERRIDES.get(key, "two runs on one GPU (campaign gpu_share 0.5)")
        print(f"| {key} | {r['s_per_epoch']:.3f} | {rel} | {ips:,.0f} | {tflops:.2f} | {frac} | "
              f"{over} |")  # fmt: skip
    print(f"(training FLOPs per image, forward + backward: {fpi / 1e9:.3f} GFLOP; peak: "
          f"datasheet dense TF32/bf16 for {name}, recalled)")  # fmt: skip
    if fastest and a.check and fastest != "eager_fp32":
        d = check(fastest, a)
        print(f"check: max |loss(eager_fp32) - loss({fastest})| over 60 steps = {d:.2e}")
    if fastest and base:
        print(f"fastest recipe-safe switch: {fastest} ({RUN_OVERRIDES[fastest]})")
        print(
            f"ratio lm_resnet20 epoch fastest/eager-fp32 {rows[fastest]['s_per_epoch'] / base:.3f}"
        )
    if a.out:
        Path(a.out).mkdir(parents=True, exist_ok=True)
        (Path(a.out) / "switches.json").write_text(json.dumps(
            {"device": name, "torch": torch.__version__, "rows": rows, "fastest": fastest,
             "flops_per_image": fpi}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()

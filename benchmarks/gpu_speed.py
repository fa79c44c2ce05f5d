"""Epoch time of LM-ResNet-20 and PreAct-ResNet18 on CIFAR-10 with each speed option, through the
run path (``python run.py``, one process per run), and the achieved fraction of the device's
peak FLOP/s for the model's counted training FLOPs.

Made to run unattended on a lent GPU machine:

    OMP_NUM_THREADS=4 python benchmarks/gpu_speed.py --out /tmp/gpu_speed   # ~15 min on an H100

Full-size CIFAR-10-format data with synthetic pixels (timing only) is written unless
``--data-dir`` holds CIFAR-10. Each option set is one ``run.py`` training of ``--epochs`` epochs;
the epoch time is the last epoch's ``time/train_epoch_s`` (``EpochTimer``: training batches only,
validation off), so compilation and cudnn autotuning in the first epoch are excluded. Options are
run in interleaved rounds (``--rounds``) and the median is reported. The same script measures the
cost of deterministic mode on CPU: ``--device cpu --train-images 1024 --options base
deterministic --models lm_resnet20``.

FLOPs: ``count_flops`` runs one forward + backward of the network under
``torch.utils.flop_counter.FlopCounterMode`` (a multiply-add is 2 FLOPs; convolutions, matmuls,
their gradients); achieved = FLOPs per image x images per epoch / epoch time; the fraction is of
``--peak-tflops`` (default: the dense tensor-core peak for the precision from ``PEAK_TFLOPS``
by device name: NVIDIA datasheet values, TF32 for fp32 runs since cuDNN uses TF32 for
convolutions by default).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

# dense (no sparsity) peak TFLOP/s, SXM parts, from NVIDIA's datasheets: (tf32, bf16/fp16)
PEAK_TFLOPS = {"H200": (494.7, 989.4), "H100": (494.7, 989.4), "A100": (156.0, 312.0)}

MODELS = {
    "lm_resnet20": ["experiment=lm_resnet20_cifar10"],
    "preact_resnet18": [
        "experiment=lm_resnet20_cifar10",
        "model._target_=odelab.modules.classifier.ImageClassifier",
        "~model.pretrain_plain_epochs",
        "~model.net",
        "+model.net={_target_: odelab.papers.yopo.PreActResNet18, num_classes: 10,"
        " in_channels: 3}",
    ],
}

OPTIONS = {
    "base": ["trainer.benchmark=false", "data.device_resident=false", "speed.channels_last=false"],
    "resident": ["trainer.benchmark=false", "data.device_resident=true",
                 "speed.channels_last=false"],
    "benchmark": ["trainer.benchmark=true", "data.device_resident=false",
                  "speed.channels_last=false"],
    "channels_last": ["trainer.benchmark=false", "data.device_resident=false",
                      "speed.channels_last=true"],
    "bf16": ["trainer.benchmark=false", "data.device_resident=false",
             "speed.channels_last=false", "trainer.precision=bf16-mixed"],
    "compile": ["trainer.benchmark=false", "data.device_resident=false",
                "speed.channels_last=false", "speed.compile=true"],
    "all": ["trainer.benchmark=true", "data.device_resident=true", "speed.channels_last=true",
            "trainer.precision=bf16-mixed", "speed.compile=true"],
    "deterministic": ["trainer.benchmark=false", "data.device_resident=false",
                      "speed.channels_last=false", "trainer.deterministic=true"],
}  # fmt: skip


def count_flops(net: nn.Module, x: torch.Tensor, backward: bool = True) -> int:
    """FLOPs of one forward (+ backward) pass of ``net`` on ``x`` (multiply-add = 2 FLOPs)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        out = net(x)
        if backward:
            out.float().sum().backward()
    return int(fc.get_total_flops())


def fraction_of_peak(flops: float, seconds: float, peak_tflops: float) -> float:
    """Achieved FLOP/s (``flops / seconds``) as a fraction of ``peak_tflops`` x 1e12."""
    return flops / seconds / (peak_tflops * 1e12)


def model_flops_per_image(model_overrides: list[str]) -> float:
    """Training FLOPs (forward + backward) per 32x32 image of the experiment's network."""
    import hydra

    from odelab.utils.config import compose_config

    cfg = compose_config([*model_overrides, "paths.output_dir=/tmp"])
    net = hydra.utils.instantiate(cfg.model.net).train()
    b = 8
    return count_flops(net, torch.randn(b, 3, 32, 32)) / b


def peak_for(device_name: str, precision: str) -> float | None:
    for key, (tf32, half) in PEAK_TFLOPS.items():
        if key in device_name:
            return half if ("bf16" in precision or "16" in precision) else tf32
    return None


def run_once(model: str, option: str, a, data_dir: Path, out: Path) -> float | None:
    """One run.py training; the last epoch's training time in seconds (None on failure)."""
    rdir = out / f"{model}_{option}_{len(list(out.glob(f'{model}_{option}_*')))}"
    accel = ["trainer=gpu"] if a.device == "cuda" else ["trainer=cpu"]
    cmd = [sys.executable, "run.py", *MODELS[model], *accel, *OPTIONS[option],
           f"trainer.max_epochs={a.epochs}", "++trainer.limit_val_batches=0",
           "trainer.num_sanity_val_steps=0", "test=false", "logger=csv",
           f"paths.data_dir={data_dir}", "data.train_files=[data_batch_1,data_batch_2]",
           f"data.num_workers={a.num_workers}", f"data.batch_size={a.batch_size}",
           f"hydra.run.dir={rdir}"]  # fmt: skip
    if a.train_images:
        cmd.append(f"data.train_subset={a.train_images}")
    env = {**os.environ, "WANDB_MODE": "offline"}
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    (rdir.parent / f"{rdir.name}.log").write_text(p.stdout + p.stderr)
    try:
        res = json.loads((rdir / "results.json").read_text())
        return float(res["metrics"]["time/train_epoch_s"])
    except (OSError, KeyError, ValueError):
        print(f"  {model} {option}: failed (rc {p.returncode}), see {rdir}.log", flush=True)
        return None


def deterministic_cost(device: str, rounds: int, steps: int, batch: int = 128) -> float:
    """Per-step time of LM-ResNet-20 training with ``torch.use_deterministic_algorithms(True)``
    (+ ``CUBLAS_WORKSPACE_CONFIG``, what ``trainer.deterministic=true`` sets) over the default,
    interleaved rounds, medians; process CPU time on CPU, synchronised wall time on CUDA."""
    import time

    import torch.nn.functional as F

    from odelab.papers.lm_resnet import LMResNet

    dev = torch.device(device)
    clock = time.process_time if dev.type == "cpu" else time.perf_counter
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    net = LMResNet(depth=20, num_classes=10, in_channels=3).to(dev).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    x, y = torch.randn(batch, 3, 32, 32, device=dev), torch.randint(0, 10, (batch,), device=dev)
    times: dict[bool, list[float]] = {False: [], True: []}
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    for _ in range(rounds):
        for det in (False, True):
            torch.use_deterministic_algorithms(det)
            for i in range(steps + 1):
                sync()
                t0 = clock()
                loss = F.cross_entropy(net(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sync()
                if i:  # the first step after a switch warms up
                    times[det].append(clock() - t0)
    torch.use_deterministic_algorithms(False)
    med = {k: statistics.median(v) for k, v in times.items()}
    d, t = 1e3 * med[False], 1e3 * med[True]
    print(f"lm_resnet20 {device}: ms/step default {d:.1f}, deterministic {t:.1f} "
          f"({rounds} rounds x {steps} steps, {clock.__name__})")  # fmt: skip
    return med[True] / med[False]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--options", nargs="+", default=list(OPTIONS), choices=list(OPTIONS))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--num-workers", type=int, default=4)
    p.add_argument("--train-images", type=int, default=0, help="0: all 20,000 of 2 batches")
    p.add_argument("--data-dir", default=os.environ.get("ODELAB_SHARED_DATA", ""))
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--out", default=None)
    p.add_argument("--deterministic-cost", action="store_true",
                   help="only the in-process deterministic-mode step-time ratio")  # fmt: skip
    p.add_argument("--steps", type=int, default=5, help="steps per arm and round (that mode)")
    a = p.parse_args()
    if a.deterministic_cost:
        r = deterministic_cost(a.device, max(a.rounds, 2), a.steps)
        print(f"ratio lm_resnet20 deterministic/default {r:.3f}")
        return
    out = Path(a.out or tempfile.mkdtemp(prefix="odelab-gpu-speed-"))
    out.mkdir(parents=True, exist_ok=True)
    data_dir = Path(a.data_dir) if a.data_dir else out / "data"
    if not (data_dir / "cifar10" / "cifar-10-batches-py" / "data_batch_2").is_file():
        from canonical_data import write_cifar10

        write_cifar10(data_dir, n_per_batch=10000, batches=(1, 2))  # synthetic pixels
    name = torch.cuda.get_device_name(0) if a.device == "cuda" else "cpu"
    n_images = a.train_images or 20000
    print(f"device {name}, torch {torch.__version__}, {n_images} images/epoch, "
          f"batch {a.batch_size}, {a.epochs} epochs, {a.rounds} round(s)", flush=True)  # fmt: skip
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(a.rounds):
        for model in a.models:
            for option in a.options:
                t = run_once(model, option, a, data_dir, out)
                if t is not None:
                    times.setdefault((model, option), []).append(t)
                    print(f"  {model} {option}: {t:.2f} s/epoch", flush=True)
    print("\n| model | option | s/epoch | vs base | TFLOP/s | fraction of peak |")
    print("|---|---|---|---|---|---|")
    for model in a.models:
        fpi = model_flops_per_image(MODELS[model])
        base = statistics.median(times[(model, "base")]) if (model, "base") in times else None
        for option in a.options:
            if (model, option) not in times:
                print(f"| {model} | {option} | failed | | | |")
                continue
            t = statistics.median(times[(model, option)])
            tflops = fpi * n_images / t / 1e12
            prec = "bf16" if "trainer.precision=bf16-mixed" in OPTIONS[option] else "fp32"
            peak = a.peak_tflops or (peak_for(name, prec) if a.device == "cuda" else None)
            frac = f"{fraction_of_peak(fpi * n_images, t, peak):.3f}" if peak else "n/a"
            rel = f"{t / base:.2f}" if base else "n/a"
            print(f"| {model} | {option} | {t:.2f} | {rel} | {tflops:.2f} | {frac} |")
        print(f"(model FLOPs: {model} {fpi / 1e9:.3f} GFLOP per image, forward + backward)")
    (out / "times.json").write_text(json.dumps({f"{m}/{o}": v for (m, o), v in times.items()}))


if __name__ == "__main__":
    main()

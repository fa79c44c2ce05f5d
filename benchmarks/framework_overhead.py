"""Framework overhead: our run path vs a minimal raw PyTorch loop, per training step.

The run path is the Lightning Trainer + LightningModule + callbacks + logger built from the
experiment config by ``odelab.train.instantiate_all``; the raw loop has the same network, data,
augmentation and optimiser.

Arms are interleaved (rounds of: run path, raw loop) so drifting machine load hits both. A step's
time is the interval between consecutive step starts (fetch + transfer + augmentation + forward +
backward + optimiser + every hook and log call); the first ``--warmup`` intervals of each round are
dropped. The ratio is of medians over all rounds, on ``--clock process`` (CPU time of this
process: on a machine shared with other jobs it counts the work done, not the share obtained;
use one thread) or ``wall``. Ends with one line per model:

    ratio lm_resnet20 lightning/raw 1.01
    ratio macaron lightning/raw 1.02

Usage: OMP_NUM_THREADS=1 python benchmarks/framework_overhead.py [--rounds 3] [--steps 12]
       [--data-dir /work/shared/data] [--device cuda]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # canonical_data: synthetic CIFAR when no real copy


class Clock:
    def __init__(self, kind: str, device: torch.device):
        self.now = time.process_time if kind == "process" else time.perf_counter
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def __call__(self) -> float:
        self.sync()
        return self.now()


def _cfg(experiment: str, overrides: list[str], out: Path):
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from odelab.utils.config import compose_config

    cfg = compose_config([f"experiment={experiment}", *overrides], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
        del cfg["hydra"]
    return cfg


def lightning_arm(cfg, steps: int, clock: Clock) -> list[float]:
    """Step-start timestamps of ``steps`` training steps through the run path's objects."""
    import lightning.pytorch as pl

    from odelab.train import instantiate_all

    stamps: list[float] = []

    class Stamp(pl.Callback):
        def on_train_batch_start(self, *args):
            stamps.append(clock())

    pl.seed_everything(0, workers=True)
    objs = instantiate_all(cfg)
    trainer = objs["trainer"]
    trainer.callbacks.insert(0, Stamp())
    trainer.fit(objs["model"], datamodule=objs["datamodule"])
    stamps.append(clock())  # the end of the last step (plus epoch-end hooks: not counted below)
    return stamps[:-1][: steps + 1] if len(stamps) > steps + 1 else stamps[:-1]


def raw_classifier(cfg, steps: int, clock: Clock, device: torch.device) -> list[float]:
    """The minimal loop: same net, DataLoader, crop/flip/normalise and SGD as the config."""
    import hydra

    from odelab.data.transforms import normalize, random_crop_flip

    torch.manual_seed(0)
    dm = hydra.utils.instantiate(cfg.data)
    dm.setup("fit")
    module = hydra.utils.instantiate(cfg.model)
    net = module.net.to(device).train()
    opt = hydra.utils.instantiate(cfg.model.optimizer)(params=module.param_groups())
    mean = torch.tensor(dm.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(dm.std, device=device).view(1, -1, 1, 1)
    g = torch.Generator(device=device).manual_seed(0)
    stamps = []
    for i, (x, y) in enumerate(dm.train_dataloader()):
        if i > steps:
            break
        stamps.append(clock())
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if dm.augment:
            x = random_crop_flip(x, dm.pad, dm.pad_mode, dm.flip, g)
        loss = F.cross_entropy(net(normalize(x, mean, std)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return stamps


def raw_translation(cfg, steps: int, clock: Clock, device: torch.device) -> list[float]:
    """The minimal loop: same net, token batches, label-smoothed loss, Adam + inverse_sqrt."""
    import hydra

    from odelab.modules.translation import label_smoothed_nll

    torch.manual_seed(0)
    dm = hydra.utils.instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    module = hydra.utils.instantiate(cfg.model)
    if module.net is None:
        module._build(dm.vocab_size)
    net = module.net.to(device).train()
    conf = module.configure_optimizers()
    opt, sched = (conf["optimizer"], conf["lr_scheduler"]["scheduler"]) if isinstance(
        conf, dict) else (conf, None)  # fmt: skip
    eps, pad = module.hparams.label_smoothing, net.padding_idx
    clip = cfg.trainer.get("gradient_clip_val") or 0.0
    stamps = []
    for i, batch in enumerate(dm.train_dataloader()):
        if i > steps:
            break
        stamps.append(clock())
        src, prev, tgt, _ = (t.to(device, non_blocking=True) for t in batch)
        loss, _, n = label_smoothed_nll(net(src, prev), tgt, eps, pad)
        loss = loss / n.clamp_min(1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
        opt.step()
        if sched is not None:
            sched.step()
    return stamps


def intervals(stamps: list[float], warmup: int) -> list[float]:
    d = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    return d[warmup:]


MODELS = {
    # name: (experiment, extra overrides, raw loop)
    "lm_resnet20": (
        "lm_resnet20_cifar10",
        ["data.train_files=[data_batch_1,data_batch_2]"],
        raw_classifier,
    ),
    # 3,000 training sentences: BPE preparation in minutes, not tens; batches as the full set
    "macaron": ("macaron_multi30k", ["data.train_subset=3000"], raw_translation),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=12, help="measured steps per arm and round")
    p.add_argument("--warmup", type=int, default=2, help="intervals dropped per round")
    p.add_argument("--clock", choices=["process", "wall"], default="process")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--data-dir", default=os.environ.get("ODELAB_SHARED_DATA", ""))
    p.add_argument("--logger", default="csv", help="logger group option for the run path")
    a = p.parse_args()
    os.environ.setdefault("WANDB_MODE", "offline")
    dev = torch.device(a.device)
    clock = Clock(a.clock if dev.type == "cpu" else "wall", dev)
    tmp = Path(tempfile.mkdtemp(prefix="odelab-overhead-"))
    data_dir = Path(a.data_dir) if a.data_dir else tmp / "data"
    if not (data_dir / "cifar10").is_dir():
        from canonical_data import write_cifar10

        write_cifar10(data_dir, n_per_batch=2000, batches=(1, 2))  # synthetic: timing only
    accel = "gpu" if dev.type == "cuda" else "cpu"
    print(f"device {dev} threads {torch.get_num_threads()} clock {clock.now.__name__} "
          f"torch {torch.__version__} data {data_dir}", flush=True)  # fmt: skip
    ratios = {}
    for name in a.models:
        exp, extra, raw = MODELS[name]
        n = a.steps + a.warmup + 1
        over = [f"paths.data_dir={data_dir}", f"logger={a.logger}", f"trainer.accelerator={accel}",
                "trainer.max_epochs=1", f"++trainer.limit_train_batches={n + 1}",
                "++trainer.limit_val_batches=0", "trainer.num_sanity_val_steps=0",
                "data.num_workers=0", f"data.cache_dir={tmp}/cache", *extra]  # fmt: skip
        if name == "macaron":
            over = [o for o in over if not o.startswith("data.num_workers")]
        else:
            over = [o for o in over if not o.startswith("data.cache_dir")]
        times: dict[str, list[float]] = {"lightning": [], "raw": []}
        for r in range(a.rounds):
            cfg = _cfg(exp, over, tmp / f"{name}_{r}")
            st = lightning_arm(cfg, n, clock)
            times["lightning"] += intervals(st, a.warmup)
            st = raw(cfg, n, clock, dev)
            times["raw"] += intervals(st, a.warmup)
            ml, mr = (1e3 * statistics.median(times[k]) for k in ("lightning", "raw"))
            print(f"{name} round {r}: ms/step lightning {ml:.1f} raw {mr:.1f} (medians so far)",
                  flush=True)  # fmt: skip
        med = {k: statistics.median(v) for k, v in times.items()}
        ratios[name] = med["lightning"] / med["raw"]
        ml, mr, k = 1e3 * med["lightning"], 1e3 * med["raw"], len(times["raw"])
        print(f"{name}: median ms/step lightning {ml:.1f} raw {mr:.1f} over {k} steps per arm",
              flush=True)  # fmt: skip
    for name, r in ratios.items():
        print(f"ratio {name} lightning/raw {r:.3f}")


if __name__ == "__main__":
    main()

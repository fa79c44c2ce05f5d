"""Training-step time of YOPO-m-n vs PGD-k adversarial training, same model and data, one run.

Pairs (the paper's): ``yopo_cifar10`` (YOPO-5-3) vs ``pgd10_cifar10`` (PGD-10) on PreAct-ResNet18
and ``yopo_mnist`` (YOPO-5-10) vs ``pgd40_mnist`` (PGD-40) on the MNIST SmallCNN. Each arm is the
experiment's own composed config (batch size, eps, m, n, sigma, k, step, loss, attack mode,
random start, optimisers), built by ``hydra.utils.instantiate`` and trained through the
project's code (``AdversarialTraining`` under a Lightning ``Trainer``, timed by ``TrainClock``),
interleaved over ``--rounds`` so that a change in machine load hits both (and the pass costs
below, timed in every round too); the first step of each arm is a warm-up and is dropped. Time
per step is the median, by default process CPU time (``--clock process``: the work done, robust
to other jobs on a shared CPU) and wall time. The minibatch is the first ``batch_size``
training images of the real data set when ``--data-dir`` holds it (MNIST, CIFAR-10), else
uniform random pixels (said in the output; a step's cost does not depend on the pixels). On
CPU the PreAct-ResNet18 runs at ``--preact-width`` (default 1/4 of the channels: a full-width
PGD-10 step at batch 256 takes minutes on one thread).

Each pair also times the three kinds of pass on the same model and batch (a full training pass:
train-mode forward + backward to every weight and to z1; a PGD attack pass: forward in the
attack's mode + backward to the input only; one layer-one sign step) and prints

- the step ratio these costs predict: (m full + m (n + 1) layer-one) / (k attack + 2 full),
- the **CPU floor**: the ratio if YOPO's layer-one steps cost nothing, m full / (k attack +
  2 full); no implementation of these passes on this machine goes below it,
- the pass-count ratio m / (k + 2), which assumes an attack pass costs a full pass.

Ends with one line per pair: ``ratio yopo-5-3/pgd-10 <x> (predicted <y>)`` and
``ratio yopo-5-10/pgd-40 <x> (predicted <y>)``.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore")
ROOT = Path(__file__).resolve().parents[1]
PAIRS = (("yopo_cifar10", "pgd10_cifar10", "yopo-5-3", "pgd-10"),
         ("yopo_mnist", "pgd40_mnist", "yopo-5-10", "pgd-40"))  # fmt: skip


def compose(experiment: str, overrides: list[str]):
    from omegaconf import open_dict

    from odelab.utils.config import compose_config

    cfg = compose_config([f"experiment={experiment}", *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = tempfile.gettempdir()
    return cfg


def first_batch(cfg, data_dir: str) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The first ``data.batch_size`` training images in [0, 1] (normalised as the config says)
    and their labels, from the real data set under ``data_dir``; uniform noise if absent."""
    from hydra.utils import instantiate

    from odelab.data import normalize

    b = int(cfg.data.batch_size)
    try:
        dm = instantiate(cfg.data, data_dir=data_dir, train_subset=None, val_size=0, verify="off")
        dm.setup("fit")
        x, y = dm.data_train.tensors
        return normalize(x[:b], dm.mean, dm.std), y[:b].clone(), f"real {dm.dataset_name}"
    except (FileNotFoundError, OSError, RuntimeError, ValueError) as e:
        g = torch.Generator().manual_seed(0)
        shape = (3, 32, 32) if "cifar" in str(cfg.dataset) else (1, 28, 28)
        x, y = torch.rand(b, *shape, generator=g), torch.randint(0, 10, (b,), generator=g)
        return x, y, f"SYNTHETIC uniform pixels ({type(e).__name__}: {str(e)[:80]})"


def build(cfg):
    from hydra.utils import instantiate

    torch.manual_seed(0)
    return instantiate(cfg.model)


def time_arm(cfg, x, y, steps: int, clock: str):
    """Per-step seconds (``clock``, wall) of ``steps`` timed steps after one warm-up step, and
    the passes per step, through AdversarialTraining under a Lightning Trainer."""
    import lightning.pytorch as pl

    from odelab.callbacks import TrainClock

    mod = build(cfg)
    data = torch.utils.data.TensorDataset(x.repeat(steps + 1, 1, 1, 1), y.repeat(steps + 1))
    loader = torch.utils.data.DataLoader(data, batch_size=len(y))
    with tempfile.TemporaryDirectory() as tmp:
        clock_cb = TrainClock(tmp, clock=clock)
        quiet = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, num_sanity_val_steps=0)  # fmt: skip
        trainer = pl.Trainer(max_epochs=1, callbacks=[clock_cb], accelerator="cpu", **quiet)
        trainer.fit(mod, loader)
    passes = {k: v // (steps + 1) for k, v in mod.passes().items()}
    return clock_cb.batch_s[1:], clock_cb.batch_wall_s[1:], passes


def pass_costs(cfg_yopo, cfg_pgd, x, y, clock: str, reps: int) -> dict[str, list[float]]:
    """Seconds of ``reps`` interleaved full training passes, PGD attack passes (in the PGD
    config's attack mode) and YOPO layer-one sign steps, on the same network and batch."""
    import torch.nn.functional as F

    from odelab.papers.yopo.yopo import layer_one_steps

    now = time.process_time if clock == "process" else time.perf_counter
    net = build(cfg_yopo).net
    eps, sigma = float(cfg_yopo.model.eps), float(cfg_yopo.model.yopo.sigma)
    attack_eval = bool(cfg_pgd.model.pgd.eval_mode)
    p = -torch.ones_like(net.layer_one(x))
    eta = torch.empty_like(x).uniform_(-eps, eps)

    def full():
        net.train()
        net.zero_grad(set_to_none=False)
        logits, z1 = net.forward_with_z1(x + eta)
        z1.retain_grad()
        F.cross_entropy(logits, y).backward()

    def attack():
        net.train(not attack_eval)
        xa = (x + eta).requires_grad_(True)
        torch.autograd.grad(F.cross_entropy(net(xa), y), xa)

    def layer_one():
        net.train()
        layer_one_steps(net, x, eta, p, 1, sigma, eps)

    kinds = {"full": full, "attack": attack, "layer_one": layer_one}
    times = {k: [] for k in kinds}
    for f in kinds.values():  # warm-up
        f()
    for _ in range(reps):  # interleaved
        for k, f in kinds.items():
            t0 = now()
            f()
            times[k].append(now() - t0)
    return times


def main(argv: list[str] | None = None) -> list[str]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2, help="timed steps per arm per round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clock", choices=["process", "wall"], default="process")
    ap.add_argument("--preact-width", type=float, default=0.25)
    ap.add_argument("--cnn-width", type=float, default=1.0)
    ap.add_argument("--batch", type=int, default=None, help="override every batch size")
    ap.add_argument("--pass-reps", type=int, default=3, help="timed reps per pass kind per round")
    ap.add_argument("--pairs", nargs="+", default=[p[2] for p in PAIRS],
                    choices=[p[2] for p in PAIRS], help="which pairs (by YOPO arm)")  # fmt: skip
    default_data = os.environ.get("ODELAB_SHARED_DATA", str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--data-dir", default=default_data, help="holds mnist/ and cifar10/")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    import lightning.pytorch  # noqa: F401  (it sets its loggers' levels on import)

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    print(f"torch {torch.__version__}, {args.threads} thread(s), clock {args.clock}, "
          f"{args.rounds} rounds x {args.steps} timed steps per arm (+1 warm-up each), "
          f"data from {args.data_dir}", flush=True)  # fmt: skip
    ratios = []
    t_start = time.perf_counter()
    for exp_a, exp_b, name_a, name_b in PAIRS:
        if name_a not in args.pairs:
            continue
        width = args.preact_width if "cifar" in exp_a else args.cnn_width
        extra = [f"model.net.width={width}", "trainer.accelerator=cpu"]
        if args.batch:
            extra.append(f"data.batch_size={args.batch}")
        cfg_a, cfg_b = compose(exp_a, extra), compose(exp_b, extra)
        x, y, what = first_batch(cfg_a, args.data_dir)
        net_name = cfg_a.model.net._target_.rsplit(".", 1)[-1]
        print(f"{exp_a} vs {exp_b}: {net_name} width {width}, batch {len(y)}, {what}",
              flush=True)  # fmt: skip
        t = {name_a: ([], []), name_b: ([], [])}
        passes, pc = {}, {"full": [], "attack": [], "layer_one": []}
        for _ in range(args.rounds):  # arms and pass costs interleaved: the same machine load
            for name, cfg in ((name_a, cfg_a), (name_b, cfg_b)):
                proc, wall, passes[name] = time_arm(cfg, x, y, args.steps, args.clock)
                t[name][0].extend(proc)
                t[name][1].extend(wall)
            for kind, v in pass_costs(cfg_a, cfg_b, x, y, args.clock, args.pass_reps).items():
                pc[kind].extend(v)
        for name in (name_a, name_b):
            print(f"  {name:10s} {args.clock} {statistics.median(t[name][0]):7.3f} s/step, "
                  f"wall {statistics.median(t[name][1]):7.3f} s/step, passes/step {passes[name]}",
                  flush=True)  # fmt: skip
        c = {kind: statistics.median(v) for kind, v in pc.items()}
        m, n = int(cfg_a.model.yopo.m), int(cfg_a.model.yopo.n)
        k = int(cfg_b.model.pgd.steps)
        full_b = 2 if cfg_b.model.pgd.objective == "adv_plus_clean" else 1
        # YOPO-m-n: m full passes, m (n + 1) layer-one passes (n sign steps + the -H backward);
        # PGD-k: k attack passes + 2 full (adv + clean, the repo's) or 1 (Madry's adv only)
        pgd_cost = k * c["attack"] + full_b * c["full"]
        predicted = (m * c["full"] + m * (n + 1) * c["layer_one"]) / pgd_cost
        floor = m * c["full"] / pgd_cost
        print(f"  pass costs ({args.clock}, ms): full {1e3 * c['full']:.1f}, attack "
              f"{1e3 * c['attack']:.1f} ({c['attack'] / c['full']:.2f} of full), layer-one step "
              f"{1e3 * c['layer_one']:.2f} ({c['layer_one'] / c['full']:.3f} of full)",
              flush=True)  # fmt: skip
        print(f"  predicted {name_a}/{name_b} from pass costs {predicted:.3f}; CPU floor "
              f"(layer-one steps free) {m}x{1e3 * c['full']:.0f} / ({k}x{1e3 * c['attack']:.0f} "
              f"+ {full_b}x{1e3 * c['full']:.0f}) ms = {floor:.3f}; pass-count ratio "
              f"{m}/{k + full_b} = {m / (k + full_b):.3f} (an attack pass costing a full pass)",
              flush=True)  # fmt: skip
        r = statistics.median(t[name_a][0]) / statistics.median(t[name_b][0])
        rw = statistics.median(t[name_a][1]) / statistics.median(t[name_b][1])
        print(f"  measured {name_a}/{name_b} {r:.3f} ({args.clock}), wall {rw:.3f}; measured / "
              f"predicted {r / predicted:.3f}", flush=True)  # fmt: skip
        ratios.append(f"ratio {name_a}/{name_b} {r:.2f} (predicted {predicted:.2f})")
    print(f"total {time.perf_counter() - t_start:.0f} s")
    for line in ratios:
        print(line)
    return ratios


if __name__ == "__main__":
    main()

"""Training-step time of YOPO-m-n vs PGD-k adversarial training, same model and data, one run.

Pairs (the paper's): YOPO-5-3 vs PGD-10 on PreAct-ResNet18 (CIFAR-10-shaped batches) and
YOPO-5-10 vs PGD-40 on the MNIST SmallCNN. Both arms of a pair go through the project's
training code (``AdversarialTraining`` under a Lightning ``Trainer``, timed by ``TrainClock``),
interleaved over ``--rounds`` so that a change in machine load hits both; the first step of
each arm is a warm-up and is dropped. Time per step is the median, by default process CPU time
(``--clock process``: the work done, robust to other jobs on a shared CPU) and wall time.
PGD is the YOPO repo's baseline (adv + clean loss, eval-mode attack). Data: uniform random
pixels and labels (a step's cost does not depend on them).

Each pair also times the three kinds of pass on the same model and batch (a full training pass:
train-mode forward + backward to every weight and to z1; a PGD attack pass: eval-mode forward +
backward to the input only; one layer-one sign step) and prints the step ratio these costs
predict, beside the pass-count ratio (which assumes every pass costs the same).

Ends with one line per pair: ``ratio yopo-5-3/pgd-10 <x>`` and ``ratio yopo-5-10/pgd-40 <x>``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from functools import partial

import torch

warnings.filterwarnings("ignore")


def time_arm(make_net, method: str, cfg: dict, x, y, steps: int, eps: float, clock: str):
    import lightning.pytorch as pl

    from odelab.callbacks import TrainClock
    from odelab.papers.yopo import AdversarialTraining

    torch.manual_seed(0)
    mod = AdversarialTraining(make_net(), partial(torch.optim.SGD, lr=0.01, momentum=0.9),
                              method=method, eps=eps, **{method: cfg})  # fmt: skip
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


def pass_costs(net, x, y, eps: float, sigma: float, clock: str, reps: int) -> dict[str, float]:
    """Median seconds of one full training pass, one PGD attack pass and one layer-one step."""
    import torch.nn.functional as F

    from odelab.papers.yopo.yopo import layer_one_steps

    now = time.process_time if clock == "process" else time.perf_counter
    p = -torch.ones_like(net.layer_one(x))
    eta = torch.empty_like(x).uniform_(-eps, eps)

    def full():
        net.train()
        net.zero_grad(set_to_none=False)
        logits, z1 = net.forward_with_z1(x + eta)
        z1.retain_grad()
        F.cross_entropy(logits, y).backward()

    def attack():
        net.eval()
        xa = (x + eta).requires_grad_(True)
        torch.autograd.grad(F.cross_entropy(net(xa), y), xa)

    def layer_one():
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
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3, help="timed steps per arm per round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clock", choices=["process", "wall"], default="process")
    ap.add_argument("--preact-width", type=float, default=0.25)
    ap.add_argument("--cnn-width", type=float, default=1.0)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--pass-reps", type=int, default=5, help="timed reps per kind of pass")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from odelab.papers.yopo import PreActResNet18, SmallCNN

    g = torch.Generator().manual_seed(0)
    b = args.batch
    pairs = [
        ("yopo-5-3", "pgd-10", lambda: PreActResNet18(width=args.preact_width),
         torch.rand(b, 3, 32, 32, generator=g), 8 / 255,
         {"m": 5, "n": 3, "sigma": 2 / 255}, {"steps": 10, "alpha": 2 / 255}),
        ("yopo-5-10", "pgd-40", lambda: SmallCNN(width=args.cnn_width),
         torch.rand(b, 1, 28, 28, generator=g), 0.3,
         {"m": 5, "n": 10, "sigma": 0.01}, {"steps": 40, "alpha": 0.01}),
    ]  # fmt: skip
    print(f"torch {torch.__version__}, {args.threads} thread(s), batch {b}, clock {args.clock}, "
          f"{args.rounds} rounds x {args.steps} steps per arm", flush=True)  # fmt: skip
    ratios = []
    t_start = time.perf_counter()
    for name_a, name_b, make_net, x, eps, cfg_a, cfg_b in pairs:
        y = torch.randint(0, 10, (b,), generator=g)
        t = {name_a: ([], []), name_b: ([], [])}
        passes = {}
        for _ in range(args.rounds):
            for name, method, cfg in ((name_a, "yopo", cfg_a), (name_b, "pgd", cfg_b)):
                proc, wall, passes[name] = time_arm(make_net, method, cfg, x, y, args.steps,
                                                    eps, args.clock)  # fmt: skip
                t[name][0].extend(proc)
                t[name][1].extend(wall)
        for name in (name_a, name_b):
            print(f"  {name:10s} {args.clock} {statistics.median(t[name][0]):7.3f} s/step, "
                  f"wall {statistics.median(t[name][1]):7.3f} s/step, passes/step {passes[name]}",
                  flush=True)  # fmt: skip
        torch.manual_seed(0)
        c = pass_costs(make_net(), x, y, eps, cfg_a["sigma"], args.clock, args.pass_reps)
        m, n, k = cfg_a["m"], cfg_a["n"], cfg_b["steps"]
        # YOPO-m-n: m full passes, m (n + 1) layer-one passes (n sign steps + the -H backward);
        # PGD-k (adv + clean, the repo's): k attack passes + 2 full; Madry (adv only): k + 1
        yopo_cost = m * c["full"] + m * (n + 1) * c["layer_one"]
        model_ratio = yopo_cost / (k * c["attack"] + 2 * c["full"])
        madry_ratio = yopo_cost / (k * c["attack"] + c["full"])
        print(f"  pass costs ({args.clock}, ms): full {1e3 * c['full']:.1f}, attack "
              f"{1e3 * c['attack']:.1f} ({c['attack'] / c['full']:.2f} of full), layer-one step "
              f"{1e3 * c['layer_one']:.2f} ({c['layer_one'] / c['full']:.3f} of full)",
              flush=True)  # fmt: skip
        print(f"  predicted {name_a}/{name_b} from pass costs {model_ratio:.2f} (Madry's adv-only "
              f"PGD {madry_ratio:.2f}); pass-count ratio {m}/{k + 2} = {m / (k + 2):.2f} assumes "
              f"an attack pass costs a full pass", flush=True)  # fmt: skip
        r = statistics.median(t[name_a][0]) / statistics.median(t[name_b][0])
        rw = statistics.median(t[name_a][1]) / statistics.median(t[name_b][1])
        print(f"  wall-clock ratio {name_a}/{name_b} {rw:.2f}", flush=True)
        ratios.append(f"ratio {name_a}/{name_b} {r:.2f}")
    print(f"total {time.perf_counter() - t_start:.0f} s")
    for line in ratios:
        print(line)


if __name__ == "__main__":
    main()

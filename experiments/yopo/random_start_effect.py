"""What clamping PGD's random start changes in robust accuracy, on a CPU-trained MNIST model.

The YOPO repo's PGD (``IPGD``) takes its first gradient at the unclamped x + U(-eps, eps);
torchattacks (our evaluation) projects the start to [0, 1] first (``random_start_clamp``).
This trains a SmallCNN on real MNIST with FGSM + random start (``--train fgsm``: Wong et al.'s
MNIST recipe, eps 0.3, step 0.375) or PGD-k (``--train pgd``: ``--pgd-steps`` steps of
``--pgd-alpha`` from a clamped random start, adversarial loss only) for a few CPU minutes
(scale printed), then evaluates PGD-40 (eps 0.3, step
0.01, one random start, eval mode) on the first ``--n-test`` test images with both starts, for
``--seeds`` seeds. Each seed draws the *same* uniform start for both variants, so the per-seed
difference is the clamp's effect alone; the spread over seeds is the random start's noise.

    python experiments/yopo/random_start_effect.py --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]


def train(data_dir: str, width: float, steps: int, batch: int, seed: int, how: str = "fgsm",
          pgd_steps: int = 10, pgd_alpha: float = 0.075):  # fmt: skip
    """SmallCNN (``width``) trained ``steps`` minibatches with Adam lr 1e-3 on the 60,000 MNIST
    training images, on FGSM-RS (eps 0.3, alpha 0.375, train-mode attack) or PGD-k examples
    (eps 0.3, eval-mode attack)."""
    from odelab.data import MNISTDataModule
    from odelab.papers.yopo import FGSM, PGD, SmallCNN

    dm = MNISTDataModule(data_dir, mean=[0.0], std=[1.0], verify="off")
    dm.setup("fit")
    xs, ys = dm.data_train.tensors
    torch.manual_seed(seed)
    net = SmallCNN(width=width)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(steps):
        idx = torch.randint(0, len(ys), (batch,), generator=g)
        x, y = xs[idx].float() / 255, ys[idx]
        if how == "fgsm":
            adv = FGSM(net, 0.3, 0.375, random_start=True, eval_mode=False)(x, y)
        else:
            adv = PGD(net, 0.3, pgd_alpha, pgd_steps)(x, y)
        opt.zero_grad()
        F.cross_entropy(net(adv), y).backward()
        opt.step()
    dm.setup("test")
    xt, yt = dm.data_test.tensors
    return net.eval(), xt.float() / 255, yt


def accuracy(net, x, y, attack=None, batch: int = 500) -> float:
    correct = 0
    for i in range(0, len(y), batch):
        xb, yb = x[i : i + batch], y[i : i + batch]
        if attack is not None:
            xb = attack(xb, yb)
        with torch.no_grad():
            correct += int((net(xb).argmax(1) == yb).sum())
    return correct / len(y)


def main(argv: list[str] | None = None) -> dict:
    from odelab.papers.yopo import PGD

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_data = os.environ.get("ODELAB_SHARED_DATA", str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--data-dir", default=default_data)
    ap.add_argument("--width", type=float, default=0.5)
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--train", choices=["fgsm", "pgd"], default="fgsm")
    ap.add_argument("--pgd-steps", type=int, default=10)
    ap.add_argument("--pgd-alpha", type=float, default=0.075)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.process_time()
    net, xt, yt = train(args.data_dir, args.width, args.steps, args.batch, 0, args.train,
                        args.pgd_steps, args.pgd_alpha)  # fmt: skip
    t_train = time.process_time() - t0
    x, y = xt[: args.n_test], yt[: args.n_test]
    clean = accuracy(net, x, y)
    how = ("FGSM-RS eps 0.3 / 0.375" if args.train == "fgsm" else
           f"PGD-{args.pgd_steps} eps 0.3 / {args.pgd_alpha}")  # fmt: skip
    print(f"SmallCNN width {args.width}, {how}, Adam 1e-3, {args.steps} steps "
          f"of batch {args.batch} on 60,000 MNIST digits ({t_train:.0f} CPU-s, "
          f"torch {torch.__version__}, {args.threads} thread); clean accuracy on the first "
          f"{args.n_test} test digits {100 * clean:.2f} %", flush=True)  # fmt: skip
    rows = []
    for seed in range(args.seeds):
        acc = {}
        for clamp in (True, False):
            torch.manual_seed(1000 + seed)  # the same uniform draw for both starts
            atk = PGD(net, 0.3, 0.01, 40, random_start_clamp=clamp)
            acc[clamp] = accuracy(net, x, y, atk)
        rows.append(acc)
        print(f"seed {seed}: PGD-40 robust accuracy clamped start {100 * acc[True]:.2f} %, "
              f"unclamped (YOPO repo) {100 * acc[False]:.2f} %, unclamped - clamped "
              f"{100 * (acc[False] - acc[True]):+.2f} points", flush=True)  # fmt: skip
    diffs = [100 * (r[False] - r[True]) for r in rows]
    mean_c = statistics.fmean(100 * r[True] for r in rows)
    mean_u = statistics.fmean(100 * r[False] for r in rows)
    sd = statistics.stdev(diffs) if len(diffs) > 1 else float("nan")
    print(
        f"mean over {len(rows)} seeds: clamped {mean_c:.2f} %, unclamped {mean_u:.2f} %, "
        f"difference {statistics.fmean(diffs):+.2f} points (sd over seeds {sd:.2f})"
    )
    return {"clean": clean, "rows": rows}


if __name__ == "__main__":
    main()

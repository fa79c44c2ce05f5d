"""The learned source f(u) of a finished ``pdenet_nonlinear*`` run against 15 sin(u), beside the
u-ranges the training and test data cover (where f can be learned vs where rollouts go).

    python experiments/pdenet/nonlinear_f.py <run dir> [--lo -4 --hi 4 --n 17]

Reads ``<run dir>/.hydra/overrides.yaml`` and ``checkpoints/last.ckpt``; the data come from the
same (cached) data module, so nothing is retrained.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import yaml


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--lo", type=float, default=-4.0)
    p.add_argument("--hi", type=float, default=4.0)
    p.add_argument("--n", type=int, default=17)
    a = p.parse_args(argv)

    import hydra

    from odelab.utils.config import compose_config

    overrides = yaml.safe_load((a.run_dir / ".hydra" / "overrides.yaml").read_text()) or []
    cfg = compose_config(overrides)
    ckpt = a.run_dir / "checkpoints" / "last.ckpt"
    ck = torch.load(ckpt, map_location="cpu", weights_only=False)
    net = hydra.utils.instantiate(cfg.model.net)
    net.load_state_dict({k[4:]: v for k, v in ck["state_dict"].items() if k.startswith("net.")})
    if net.f is None:
        raise ValueError(f"{a.run_dir} is not a pdenet_nonlinear run (no learned f)")
    s = torch.linspace(a.lo, a.hi, a.n, dtype=torch.float64)
    with torch.no_grad():
        f = net.f(s)
    print(f"{'u':>6s} {'learned f':>10s} {'15 sin u':>9s}")
    for u, v in zip(s.tolist(), f.tolist(), strict=True):
        print(f"{u:6.2f} {v:10.3f} {15 * torch.sin(torch.tensor(u)).item():9.3f}")
    dm = hydra.utils.instantiate(cfg.data)
    train = torch.cat([dm.stage_batch(st).flatten() for st in range(int(cfg.trainer.max_epochs))])
    dm.setup("test")
    test = torch.cat([b[0] for b in dm.test_dataloader()])
    ranges = {
        "train": (train.min().item(), train.max().item()),
        "test_u0": (test[:, 0].min().item(), test[:, 0].max().item()),
        "test": (test.min().item(), test.max().item()),
    }
    print("training data u-range: [{:.3f}, {:.3f}]".format(*ranges["train"]))
    print("test u0 range: [{:.3f}, {:.3f}]".format(*ranges["test_u0"]))
    print("test trajectories u-range (to the horizon): [{:.3f}, {:.3f}]".format(*ranges["test"]))
    return {"u": s.tolist(), "f": f.tolist(), "true": (15 * torch.sin(s)).tolist(), **ranges}


if __name__ == "__main__":
    main()

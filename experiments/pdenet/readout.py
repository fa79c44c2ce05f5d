"""Read the learned PDE out of a PDE-Net 2.0 run's checkpoint (no data, no rollout): each
channel's expression, every true term's learned coefficient and error, the largest spurious
coefficients. For runs whose test phase did not finish; a finished run has all of this in
results.json["pdenet"].

    python experiments/pdenet/readout.py <run dir> [--ckpt last.ckpt] [--calprec 4]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import sympy
import torch
import yaml


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--ckpt", default="last.ckpt")
    p.add_argument("--calprec", type=int, default=4)
    a = p.parse_args(argv)

    import hydra

    from odelab.data.pde_data import true_terms
    from odelab.utils.config import compose_config

    overrides = yaml.safe_load((a.run_dir / ".hydra" / "overrides.yaml").read_text()) or []
    cfg = compose_config(overrides)
    ck = torch.load(a.run_dir / "checkpoints" / a.ckpt, map_location="cpu", weights_only=False)
    net = hydra.utils.instantiate(cfg.model.net)
    net.load_state_dict({k[4:]: v for k, v in ck["state_dict"].items() if k.startswith("net.")})
    syms = sympy.symbols(net.names)
    local = dict(zip(net.names, syms, strict=True))
    truth = true_terms(cfg.data.equation, cfg.data.get("nu"), cfg.data.get("beta", 1.0))
    out = {"run": str(a.run_dir), "epoch": ck.get("epoch"), "channels": {}}
    for c, poly in zip(net.channel_names, net.polys, strict=True):
        learned = poly.polynomial()
        true = sympy.Poly(sympy.sympify(truth[c], locals=local), *syms).as_dict()
        true = {tuple(int(e) for e in m): float(v) for m, v in true.items()}

        def name(m):
            return "*".join(n if e == 1 else f"{n}**{e}" for n, e in zip(net.names, m) if e) or "1"

        terms = {
            name(m): {
                "true": v,
                "learned": learned.get(m, 0.0),
                "rel_err": abs(learned.get(m, 0.0) - v) / abs(v),
            }
            for m, v in true.items()
        }
        spurious = sorted(
            ((name(m), v) for m, v in learned.items() if m not in true), key=lambda t: -abs(t[1])
        )[:5]
        expr = str(poly.expression(net.names, a.calprec, poly=learned))
        out["channels"][c] = {"expression": expr, "terms": terms, "largest_spurious": spurious}
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()

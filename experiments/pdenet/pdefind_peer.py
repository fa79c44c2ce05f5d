"""Peer: PySINDy PDE-FIND on exactly the trajectories a PDE-Net 2.0 experiment trains on.

    python experiments/pdenet/pdefind_peer.py pdenet2_burgers_lite [--data-dir DIR] [--out F]

The data module of the experiment (same seed, noise, grid, stages) serves the noisy training
batches of every stage; PDE-FIND fits u_t on the library {1, u, v, u², uv, v²} x {1, derivatives
of order <= 2} (periodic finite differences) with STLSQ. The coefficients of the true terms and
the largest spurious ones are printed and written as JSON, in the SymNet's names.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def load_batches(experiment: str, data_dir: str | None, overrides: list[str]):
    import hydra

    from odelab.utils.config import compose_config

    ov = [f"experiment={experiment}", *overrides]
    if data_dir:
        ov.append(f"paths.data_dir={data_dir}")
    cfg = compose_config(ov)
    dm = hydra.utils.instantiate(cfg.data)
    n_stages = int(cfg.trainer.max_epochs)
    return dm, [dm.stage_batch(s).numpy() for s in range(n_stages)]


def sindy_name(name: str, channels: list[str]) -> str:
    """pysindy's 'u_12' / 'uv_1' style names -> ours ('u_xy', 'u*v_x'); x1 = x, x2 = y."""
    out = []
    for factor in name.split(" "):
        m = re.fullmatch(r"([a-z0-9^]*)_?([12]*)", factor)
        base, der = (m.group(1), m.group(2)) if m else (factor, "")
        if der and base in channels:
            out.append(f"{base}_" + "".join("x" if d == "1" else "y" for d in sorted(der)))
        else:
            out.append(base)
    return "*".join(o for o in out if o and o != "1") or "1"


def fit(dm, batches, threshold: float, alpha: float) -> dict:
    import pysindy as ps

    C = dm.channels
    channels = ["u", "v"][:C]
    n = dm.grid_size
    s = np.arange(n) * dm.dx
    X = np.stack(np.meshgrid(s, s, indexing="ij"), axis=-1)  # (x, y, 2)
    # ours [B, T+1, C, H(y), W(x)] -> pysindy (x, y, t, C)
    trajs = [traj.transpose(3, 2, 0, 1) for b in batches for traj in b]
    poly = ps.PolynomialLibrary(degree=2, include_bias=False)
    lib = ps.PDELibrary(
        function_library=poly,
        derivative_order=2,
        spatial_grid=X,
        include_bias=True,
        diff_kwargs={"is_uniform": True, "periodic": True},
    )
    opt = ps.STLSQ(threshold=threshold, alpha=alpha, normalize_columns=True)
    model = ps.SINDy(feature_library=lib, optimizer=opt)
    model.fit(trajs, t=dm.dt, feature_names=channels)
    names = [sindy_name(f, channels) for f in model.get_feature_names()]
    coefs = model.coefficients()
    return {c: dict(zip(names, map(float, coefs[i]), strict=True)) for i, c in enumerate(channels)}


def compare(dm, learned: dict) -> dict:
    import sympy

    truth = dm.true_terms()
    out = {}
    for c, expr in truth.items():
        e = sympy.expand(sympy.sympify(expr))
        true = {
            "*".join(str(f) for f in sympy.Mul.make_args(t.as_coeff_Mul()[1])): float(
                t.as_coeff_Mul()[0]
            )
            for t in sympy.Add.make_args(e)
        }
        got = {}
        for name, v in learned[c].items():
            key = "*".join(sorted(name.split("*")))
            got[key] = got.get(key, 0.0) + v
        terms = {}
        for name, v in true.items():
            key = "*".join(sorted(name.split("*")))
            terms[name] = {"true": v, "learned": got.pop(key, 0.0)}
        spurious = sorted(got.items(), key=lambda kv: -abs(kv[1]))[:5]
        out[c] = {"terms": terms, "largest_spurious": spurious}
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("experiment")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--threshold", type=float, default=0.05)
    p.add_argument("--alpha", type=float, default=1e-5)
    p.add_argument("--out", default=None)
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides (e.g. data.batch_size=2)")
    a = p.parse_args(argv)
    dm, batches = load_batches(a.experiment, a.data_dir, a.overrides)
    learned = fit(dm, batches, a.threshold, a.alpha)
    res = {
        "experiment": a.experiment,
        "n_trajectories": sum(len(b) for b in batches),
        "frames_per_trajectory": batches[0].shape[1],
        "noise": dm.gen_kwargs["noise"],
        "stlsq": {"threshold": a.threshold, "alpha": a.alpha},
        "recovered": compare(dm, learned),
    }
    text = json.dumps(res, indent=2)
    print(text)
    if a.out:
        Path(a.out).write_text(text + "\n")
    return res


if __name__ == "__main__":
    sys.exit(0 if main() else 1)

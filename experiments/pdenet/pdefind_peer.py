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
    """pysindy 2.x feature name -> ours, factors joined by '*', powers written out.

    PDELibrary names a product as <function term><derivative term> with no separator and the
    function term's factors separated by spaces: 'u vu_1' = u·v·∂u/∂x1, 'u^2v_12', 'uu_2',
    'u_22', 'u^2', '1'. Axis 1 is x (columns), axis 2 is y: 'u vu_1' -> 'u*v*u_x'.
    """
    chans = "|".join(map(re.escape, channels))
    m = re.fullmatch(rf"(.*?)({chans})_([12]+)", name)
    func, der = name, None
    if m:
        func = m.group(1)
        der = f"{m.group(2)}_" + "".join("x" if d == "1" else "y" for d in sorted(m.group(3)))
    factors = []
    for tok in func.split():
        if tok != "1":
            base, _, power = tok.partition("^")
            factors += [base] * int(power or 1)
    if der:
        factors.append(der)
    return "*".join(factors) or "1"


def canonical(factors: list[str]) -> str:
    """Order-free key of a monomial given as its factors (powers written out)."""
    return "*".join(sorted(factors))


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
    """Each true term's learned coefficient (0 if PDE-FIND dropped it) and the 5 largest
    coefficients of terms that are not in the true PDE."""
    import sympy

    truth = dm.true_terms()
    out = {}
    for c, expr in truth.items():
        true = {}
        for t in sympy.Add.make_args(sympy.expand(sympy.sympify(expr))):
            coef, mono = t.as_coeff_Mul()
            factors = []
            for f in sympy.Mul.make_args(mono):
                base, exp = f.as_base_exp()
                factors += [str(base)] * int(exp)
            true["*".join(factors)] = (canonical(factors), float(coef))
        got = {}
        for name, v in learned[c].items():
            key = canonical(name.split("*"))
            got[key] = got.get(key, 0.0) + v
        terms = {
            name: {"true": v, "learned": got.pop(key, 0.0)} for name, (key, v) in true.items()
        }
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

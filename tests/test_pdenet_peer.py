"""The PDE-FIND peer (experiments/pdenet/pdefind_peer.py): pysindy feature names are mapped to
ours, and a fit on an exact heat solution recovers ν."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def peer():
    spec = importlib.util.spec_from_file_location(
        "pdefind_peer", ROOT / "experiments" / "pdenet" / "pdefind_peer.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize(
    "name, ours",
    [
        ("1", "1"),
        ("u^2", "u*u"),
        ("u v", "u*v"),
        ("u_2", "u_y"),
        ("u_11", "u_xx"),
        ("v_12", "v_xy"),
        ("uu_1", "u*u_x"),  # u·∂u/∂x: the product has no separator in pysindy 2.x
        ("vu_2", "v*u_y"),
        ("u^2v_2", "u*u*v_y"),
        ("u vv_11", "u*v*v_xx"),
    ],
)
def test_sindy_names(peer, name, ours):
    assert peer.sindy_name(name, ["u", "v"]) == ours


def test_compare_matches_true_terms_in_any_factor_order(peer):
    dm = SimpleNamespace(true_terms=lambda: {"u": "-u*u_x - v*u_y + 0.05*u_xx"})
    learned = {"u": {"u*u_x": -0.9, "v*u_y": -1.1, "u_xx": 0.04, "u*u*v_y": 0.2, "1": -0.01}}
    out = peer.compare(dm, learned)["u"]
    got = {k: v["learned"] for k, v in out["terms"].items()}
    assert got == {"u*u_x": -0.9, "u_y*v": -1.1, "u_xx": 0.04}
    assert out["largest_spurious"] == [("u*u*v_y", 0.2), ("1", -0.01)]


def test_pdefind_recovers_heat_diffusivity(peer):
    """u = Σ a exp(−ν|k|²t) cos(k·x) on 32², ν = 0.1: STLSQ keeps u_xx, u_yy ≈ ν."""
    n, nu, dt, T = 32, 0.1, 0.01, 8
    s = np.arange(n) * 2 * math.pi / n
    y, x = np.meshgrid(s, s, indexing="ij")
    t = np.arange(T + 1)[:, None, None] * dt
    rng = np.random.default_rng(0)
    batch = []
    for _ in range(3):
        modes = [(1, 0), (0, 1), (1, 1), (2, -1), (1, 2)]
        u = sum(
            rng.normal()
            * np.exp(-nu * (kx**2 + ky**2) * t)
            * np.cos(kx * x + ky * y + rng.normal())
            for kx, ky in modes
        )
        batch.append(u[:, None])  # [T+1, C, H, W]
    dm = SimpleNamespace(
        channels=1,
        grid_size=n,
        dx=2 * math.pi / n,
        dt=dt,
        true_terms=lambda: {"u": f"{nu}*u_xx + {nu}*u_yy"},
    )
    learned = peer.fit(dm, [np.stack(batch)], threshold=0.05, alpha=1e-5)
    terms = peer.compare(dm, learned)["u"]["terms"]
    for term in ("u_xx", "u_yy"):
        assert abs(terms[term]["learned"] - nu) < 0.05 * nu, terms

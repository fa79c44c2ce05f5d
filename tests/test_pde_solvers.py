"""PDE solvers (odelab.data.pde_solvers) against exact solutions in float64; measured orders."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

from odelab.data.pde_data import PDETrajectoryDataModule, generate
from odelab.data.pde_solvers import (
    DirichletReactionDiffusion2d,
    SpectralLinear2d,
    UpwindConvectionDiffusion2d,
    grid,
    laplacian_periodic,
    random_lowpass_field,
    upwind2,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # many tiny ops: see conftest


def _const(coefs):
    return lambda y, x: {o: c * torch.ones_like(x) for o, c in coefs.items()}


def test_spectral_fourier_mode_decays_exactly():
    """u_t = 0.2 u_yy + 0.3 u_xx on u0 = sin(2y) cos(3x): u = exp(-(0.8 + 2.7) t) u0."""
    s = SpectralLinear2d(_const({(2, 0): 0.2, (0, 2): 0.3}), spectral_size=16, max_dt=1e-3)
    y, x = grid(32)
    u0 = torch.sin(2 * y) * torch.cos(3 * x)
    u = s.to_grid(s.advance(s.to_spectrum(u0), 0.3), 32)
    exact = math.exp(-3.5 * 0.3) * u0
    assert torch.allclose(u, exact, atol=1e-11)


def test_spectral_constant_advection_translates():
    """u_t = a u_x + b u_y: u(t, y, x) = u0(y + b t, x + a t)."""
    a, b, t = 0.7, -1.3, 0.4
    s = SpectralLinear2d(_const({(0, 1): a, (1, 0): b}), spectral_size=16, max_dt=4e-3)
    y, x = grid(24)
    f = lambda y, x: torch.sin(y + 2 * x) + 0.5 * torch.cos(3 * y)  # noqa: E731
    u = s.to_grid(s.advance(s.to_spectrum(f(y, x)), t), 24)
    assert torch.allclose(u, f(y + b * t, x + a * t), atol=1e-10)


def test_spectral_zero_coefficients_conserve_and_offset_evaluation():
    s = SpectralLinear2d(_const({(0, 1): 0.0}), spectral_size=16)
    y, x = grid(16)
    u0 = torch.cos(y - 2 * x)
    uh = s.advance(s.to_spectrum(u0), 1.0)
    assert torch.allclose(s.to_grid(uh, 16), u0, atol=1e-13)
    # evaluating at a shifted grid = sampling the field at shifted points
    h = 2 * math.pi / 64
    shifted = torch.cos(y + 2 * h - 2 * (x + 3 * h))
    assert torch.allclose(s.to_grid(uh, 16, (2 * h, 3 * h)), shifted)


def test_spectral_rk4_fourth_order_in_time():
    """Variable coefficients: RK4 error vs a fine-step reference falls like dt^4."""
    from odelab.data.pde_solvers import convdiff_coefficients

    g = torch.Generator().manual_seed(0)
    u0 = random_lowpass_field((1,), 24, 3, g)
    errs = []
    ref_solver = SpectralLinear2d(convdiff_coefficients, spectral_size=16, max_dt=1e-3)
    ref = ref_solver.advance(ref_solver.to_spectrum(u0), 0.1)
    for mdt in (0.02, 0.01):
        s = SpectralLinear2d(convdiff_coefficients, spectral_size=16, max_dt=mdt)
        errs.append((s.advance(s.to_spectrum(u0), 0.1) - ref).abs().max().item())
    order = math.log2(errs[0] / errs[1])
    assert 3.6 < order < 4.4, (errs, order)


def test_dirichlet_heat_mode_and_second_order_in_space():
    """ν Δu with zero source on sin(x/2·2)·sin(y): exact decay; 5-point error ~ h²."""
    errs = []
    for n in (16, 32):
        s = DirichletReactionDiffusion2d(n, nu=0.3, source=0.0, cfl=0.1)
        h = s.h
        r = torch.arange(1, n, dtype=torch.float64) * h
        y, x = torch.meshgrid(r, r, indexing="ij")
        u0 = torch.sin(x) * torch.sin(0.5 * y)
        u = s.advance(u0, 0.5)
        exact = math.exp(-0.3 * 1.25 * 0.5) * u0
        errs.append((u - exact).abs().max().item())
    order = math.log2(errs[0] / errs[1])
    assert errs[1] < 1e-3 and 1.8 < order < 2.3, (errs, order)


def test_dirichlet_source_term_pure_reaction():
    """With ν = 0 the ODE u_t = 15 sin u has u(t) = 2 atan(tan(u0/2) e^{15 t}); Euler ~ dt."""
    s = DirichletReactionDiffusion2d(8, nu=1e-12, source=15.0)
    u0 = torch.full((7, 7), 0.5, dtype=torch.float64)
    errs = []
    for steps in (400, 800):
        u = u0.clone()
        for _ in range(steps):
            u = u + (0.1 / steps) * s.source * torch.sin(u)
        exact = 2 * math.atan(math.tan(0.25) * math.exp(1.5))
        errs.append(abs(u[0, 0].item() - exact))
    assert 0.9 < math.log2(errs[0] / errs[1]) < 1.1


def test_upwind_heat_decay_exact_order():
    errs = []
    for n in (16, 32):
        s = UpwindConvectionDiffusion2d(n, kind="heat", nu=0.1, max_dt=1e-3)
        y, x = grid(n)
        u0 = (torch.sin(2 * x) * torch.cos(y))[None]
        u = s.advance(u0, 0.5)
        errs.append((u - math.exp(-0.1 * 5 * 0.5) * u0).abs().max().item())
    assert 1.8 < math.log2(errs[0] / errs[1]) < 2.2, errs


def test_upwind_advection_translates_second_order():
    """u_t + w·∇u = 0 with constant w: translation; upwind-2 error ~ h² (both signs of w)."""
    for w in [(0.8, -0.5), (-0.6, 0.9)]:
        errs = []
        for n in (32, 64):
            s = UpwindConvectionDiffusion2d(n, kind="advection", nu=0.0, max_dt=2e-3, velocity=w)
            y, x = grid(n)
            f = lambda y, x: torch.sin(x + y) + torch.cos(2 * x)  # noqa: E731
            u = s.advance(f(y, x)[None], 0.5)
            errs.append((u[0] - f(y - w[1] * 0.5, x - w[0] * 0.5)).abs().max().item())
        assert 1.8 < math.log2(errs[0] / errs[1]) < 2.3, (w, errs)


def test_rk2_second_order_in_time_burgers():
    g = torch.Generator().manual_seed(1)
    f = random_lowpass_field((1, 2), 32, 2, g)
    u0 = f / f.abs().amax() * 1.5
    ref = UpwindConvectionDiffusion2d(32, "burgers", nu=0.05, max_dt=1e-4).advance(u0, 0.2)
    errs = [
        (UpwindConvectionDiffusion2d(32, "burgers", nu=0.05, max_dt=m).advance(u0, 0.2) - ref)
        .abs()
        .max()
        .item()
        for m in (4e-3, 2e-3)
    ]
    assert 1.8 < math.log2(errs[0] / errs[1]) < 2.3, errs


def test_burgers_spatial_self_convergence():
    """Grid refinement of Burgers (same smooth u0): coarse-grid errors fall like ~h²."""
    y, x = grid(128)

    def u0(y, x):
        return torch.stack([torch.sin(x) + 0.5 * torch.cos(y), torch.cos(x + y)])[None]

    ref = UpwindConvectionDiffusion2d(128, "burgers", max_dt=5e-4).advance(u0(y, x), 0.3)
    errs = []
    for n in (16, 32):
        yy, xx = grid(n)
        u = UpwindConvectionDiffusion2d(n, "burgers", max_dt=5e-4).advance(u0(yy, xx), 0.3)
        errs.append((u - ref[..., :: 128 // n, :: 128 // n]).abs().max().item())
    order = math.log2(errs[0] / errs[1])
    assert 1.6 < order < 2.6, (errs, order)


@pytest.mark.parametrize("equation", ["convdiff", "nonlinear", "burgers", "heat", "cdr"])
def test_generate_shapes_noise_and_determinism(equation):
    kw = dict(grid_size=8, upsample=2, dt=0.01, noise=0.01, spectral_size=8)
    a = generate(equation, 4, 2, seed=3, **kw)
    b = generate(equation, 4, 2, seed=3, **kw)
    C = 2 if equation in ("burgers", "cdr") else 1
    n = 7 if equation == "nonlinear" else 8
    assert a["u"].shape == (4, 3, C, n, n) and a["u"].dtype == torch.float64
    assert torch.equal(a["u"], b["u"])
    rel = (a["u"] - a["clean"]).std() / a["clean"][:, :1].std()
    assert 0.003 < rel.item() < 0.03
    assert not torch.equal(a["u"], generate(equation, 4, 2, seed=4, **kw)["u"])


def test_datamodule_cache_roundtrip_and_corrupt_entry(tmp_path, caplog):
    kw = dict(equation="heat", grid_size=8, upsample=2, n_steps=2, batch_size=3, n_val=2, n_test=2)
    dm = PDETrajectoryDataModule(cache_dir=str(tmp_path), test_steps=3, **kw)
    dm.setup()
    b0 = dm.stage_batch(0)
    files = sorted(tmp_path.glob("*.pt"))
    assert len(files) == 3  # val, test, train stage 0
    assert not torch.equal(b0, dm.stage_batch(1))  # fresh data per stage
    dm2 = PDETrajectoryDataModule(cache_dir=str(tmp_path), test_steps=3, **kw)
    assert torch.equal(dm2.stage_batch(0), b0)
    key = dm.cache_key(dm.params("train", 0, 3, 2))
    (tmp_path / f"{key}.pt").write_bytes(b"not a torch file")
    with caplog.at_level(logging.WARNING):
        again = dm2.stage_batch(0)
    assert torch.equal(again, b0)
    assert "regenerating" in caplog.text
    # a different parameter is a different cache entry
    assert dm.cache_key(dm.params("train", 0, 3, 2)) != dm.cache_key(dm.params("train", 0, 3, 3))
    with pytest.raises(ValueError, match="data.equation"):
        PDETrajectoryDataModule(equation="navier")
    assert np.isfinite(dm.test_data.numpy()).all() and dm.test_data.shape[1] == 4


def composed_rhs(s: UpwindConvectionDiffusion2d, u: torch.Tensor) -> torch.Tensor:
    """The solver's right-hand side written plainly from laplacian_periodic and upwind2."""
    out = s.nu * laplacian_periodic(u, s.h)
    if s.kind in ("burgers", "cdr"):
        wx, wy = u[..., 0:1, :, :].expand_as(u), u[..., 1:2, :, :].expand_as(u)
    elif s.kind == "advection":
        wx, wy = (torch.full_like(u, w) for w in s.velocity)
    else:
        return out
    out = out - wx * upwind2(u, wx, s.h, -1) - wy * upwind2(u, wy, s.h, -2)
    if s.kind == "cdr":
        a = (u**2).sum(dim=-3, keepdim=True)
        uu, vv = u[..., 0:1, :, :], u[..., 1:2, :, :]
        react = [(1 - a) * uu + s.beta * a * vv, -s.beta * a * uu + (1 - a) * vv]
        out = out + torch.cat(react, dim=-3)
    return out


@pytest.mark.parametrize("kind", UpwindConvectionDiffusion2d.KINDS)
def test_upwind_rhs_equals_the_composed_stencils(kind):
    """The padded, in-place rhs is the laplacian_periodic + upwind2 (+ reaction) composition."""
    g = torch.Generator().manual_seed(3)
    channels = 1 if kind == "heat" else 2
    s = UpwindConvectionDiffusion2d(24, kind=kind, nu=0.07, beta=0.8, velocity=(0.6, -1.3))
    for shape in [(channels, 24, 24), (3, 2, channels, 24, 24)]:
        u = torch.randn(shape, generator=g, dtype=torch.float64)
        u_before = u.clone()
        want = composed_rhs(s, u)
        got = s.rhs(u)
        assert torch.equal(u, u_before)  # the in-place updates never touch the input
        assert got.shape == want.shape
        assert (got - want).abs().max() <= 1e-13 * want.abs().max()

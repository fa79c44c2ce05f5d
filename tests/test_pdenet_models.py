"""PDE-Net blocks and SymNet: interpolation exactness, upwinding, read-out, multi-step."""

from __future__ import annotations

import math

import pytest
import sympy
import torch

from odelab.data.pde_solvers import grid, upwind2
from odelab.papers.pdenet.models import (
    LagrangeField2d,
    LagrangeInterp1d,
    PDENetV1Block,
    PolyPDE2d,
    SymNet,
    rollout,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # many tiny ops: see conftest


def test_lagrange_field_reproduces_quadratics_and_interp1d_quartics():
    xs = torch.linspace(0, 2 * math.pi, 17, dtype=torch.float64)[:-1]
    field = LagrangeField2d(1, 4, 2, xs, xs)
    nodes = torch.linspace(0, 2 * math.pi, 9, dtype=torch.float64)
    q = lambda y, x: 1 + 0.3 * x - 0.2 * y + 0.1 * x * y + 0.05 * x**2  # noqa: E731
    with torch.no_grad():
        field.values[0] = q(nodes[:, None], nodes[None, :])
    assert torch.allclose(field()[0], q(xs[:, None], xs[None, :]), atol=1e-12)
    f = LagrangeInterp1d(3, 4, -3.0, 3.0)
    p = lambda u: 0.5 - u + 0.2 * u**3 - 0.01 * u**4  # noqa: E731
    with torch.no_grad():
        f.values.copy_(p(torch.linspace(-3, 3, 13, dtype=torch.float64)))
    u = torch.linspace(-2.9, 2.9, 50, dtype=torch.float64)
    assert torch.allclose(f(u), p(u), atol=1e-12)


def test_v1_block_count_consistency_and_frozen_step():
    torch.manual_seed(0)
    blk = PDENetV1Block(16, 0.01, "linear", max_order=2, kernel_size=5, coef_cells=4)
    u0 = torch.randn(3, 1, 16, 16, dtype=torch.float64)
    traj = rollout(blk, u0, 3)
    assert torch.allclose(traj[:, 3], blk(blk(blk(u0))))
    # frozen filters + c = (0.2 u_yy, 0.3 u_xx) is forward Euler with 4th-order stencils
    blk = PDENetV1Block(32, 1e-3, "linear", max_order=2, constraint="frozen", coef_cells=4)
    with torch.no_grad():
        blk.coefs.values.zero_()
        blk.coefs.values[blk.coef_orders.index((2, 0))] = 0.2
        blk.coefs.values[blk.coef_orders.index((0, 2))] = 0.3
    y, x = grid(32)
    u = (torch.sin(2 * y) * torch.cos(x))[None, None]
    want = u * (1 - 1e-3 * (0.2 * 4 + 0.3 * 1))
    assert torch.allclose(blk(u), want, atol=1e-8)


def test_nonlinear_block_uses_f_of_u():
    blk = PDENetV1Block(9, 0.1, "nonlinear", 2, 7, "frozen", "dirichlet", coef_cells=5)
    with torch.no_grad():
        blk.coefs.values.zero_()
        blk.f.values.copy_(torch.linspace(-15, 15, 81, dtype=torch.float64))  # f(u) = u
    u = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    assert torch.allclose(blk(u), 1.1 * u)


def test_symnet_polynomial_and_forward_mode_grad():
    torch.manual_seed(1)
    net = SymNet(4, hidden_layers=3, init_std=0.5)
    x = torch.randn(10, 4, dtype=torch.float64)
    poly = net.polynomial(prune=0.0, max_terms=10**6)
    val = torch.zeros(10, dtype=torch.float64)
    for mono, c in poly.items():
        val = val + c * torch.prod(x ** torch.tensor(mono, dtype=torch.float64), dim=1)
    assert torch.allclose(val, net(x), atol=1e-10)
    xr = x.clone().requires_grad_()
    (g,) = torch.autograd.grad(net(xr).sum(), xr)
    y, dy = net.forward_with_grad(x, [1, 3])
    assert torch.allclose(y, net(x)) and torch.allclose(dy, g[:, [1, 3]], atol=1e-12)
    with torch.inference_mode():
        net.forward_with_grad(x, [0])
    e = net.expression(["a", "b", "c", "d"], calprec=12)
    assert isinstance(e, sympy.Expr) and len(e.free_symbols) == 4


def test_symnet_forward_mode_grad_batched_matches_autograd():
    """The buffered forward-mode tangents equal autograd for [B, H, W, n_in] inputs, any
    index order / subset, 5 product units (the PolyPDE2d upwind path)."""
    torch.manual_seed(2)
    net = SymNet(6, hidden_layers=5, init_std=0.5)
    x = torch.randn(3, 4, 5, 6, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(net(x).sum(), x)
    for idx in ([4, 0, 2], [5], list(range(6))):
        y, dy = net.forward_with_grad(x.detach(), idx)
        assert y.shape == x.shape[:-1] and dy.shape == (*x.shape[:-1], len(idx))
        assert torch.allclose(y, net(x), atol=1e-13)
        assert torch.allclose(dy, g[..., idx], rtol=1e-12, atol=1e-12)
        # no graph through the weights: a graph on the in-place buffers was never freed (leak)
        assert not y.requires_grad and not dy.requires_grad


def _linear_symnet(net: SymNet, coeffs: dict[int, float]) -> None:
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        for m, c in coeffs.items():
            net.out.weight[0, m] = c


@pytest.mark.parametrize("a", [0.7, -0.7])
def test_polypde_upwind_matches_second_order_upwind(a):
    """SymNet = −a u_x: the upwind choice equals the solver's upwind-2 stencil."""
    m = PolyPDE2d(1, 16, 0.01, 5, 2, "frozen", "upwind", hidden_layers=2)
    _linear_symnet(m.polys[0], {m.names.index("u_x"): -a})
    g = torch.Generator().manual_seed(0)
    u = torch.randn(2, 1, 16, 16, generator=g, dtype=torch.float64)
    h = 2 * math.pi / 16
    want = u - 0.01 * a * upwind2(u, torch.full_like(u, a), h, -1)
    assert torch.allclose(m(u), want, atol=1e-12)
    expr = m.expressions()["u"]
    assert expr == sympy.sympify(f"{-a}*u_x")


def test_polypde_names_and_channels():
    m = PolyPDE2d(2, 8, 0.01, 5, 2, "frozen", "upwind", hidden_layers=2)
    assert m.names[:6] == ["u", "u_x", "u_y", "u_xx", "u_xy", "u_yy"] and m.names[6] == "v"
    u = torch.randn(3, 2, 8, 8, dtype=torch.float64)
    assert m(u).shape == u.shape
    with pytest.raises(ValueError, match="scheme"):
        PolyPDE2d(1, 8, 0.01, scheme="weno")

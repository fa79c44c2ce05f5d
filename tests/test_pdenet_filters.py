"""Moment-constrained filters: K2M/M2K, FD stencils, order of accuracy, constraints."""

from __future__ import annotations

import math

import pytest
import torch

from odelab.papers.pdenet.filters import (
    FilterBank,
    constraint_mask,
    k2m,
    m2k,
    orders_up_to,
    upwind_init_kernels,
)


@pytest.mark.parametrize("n", [3, 5, 7])
def test_moment_kernel_round_trip(n):
    g = torch.Generator().manual_seed(n)
    m = torch.randn(4, n, n, generator=g, dtype=torch.float64)
    assert (k2m(m2k(m)) - m).abs().max() < 1e-12
    assert (m2k(k2m(m)) - m).abs().max() < 1e-11  # A is Vandermonde-like: cond ~ 1e3


pytestmark = pytest.mark.usefixtures("one_thread")  # many tiny ops: see conftest


def test_moment_definition_on_a_kernel():
    """M[i,j] = Σ k^i/i! l^j/j! q[k,l] computed by hand for a random 5×5 kernel."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(5, 5, generator=g, dtype=torch.float64)
    m = k2m(q)
    for i, j in [(0, 0), (1, 0), (0, 2), (2, 3), (4, 4)]:
        want = sum(
            k**i / math.factorial(i) * c**j / math.factorial(j) * q[k + 2, c + 2]
            for k in range(-2, 3)
            for c in range(-2, 3)
        )
        assert abs(m[i, j] - want) < 1e-12


def test_frozen_filters_are_the_standard_fd_stencils():
    bank = FilterBank(orders_up_to(2), kernel_size=5, constraint="frozen")
    k = dict(zip(bank.orders, bank.kernels(), strict=True))
    d1 = torch.tensor([1.0, -8.0, 0.0, 8.0, -1.0], dtype=torch.float64) / 12
    d2 = torch.tensor([-1.0, 16.0, -30.0, 16.0, -1.0], dtype=torch.float64) / 12
    delta = torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    assert torch.allclose(k[(0, 0)], torch.outer(delta, delta), atol=1e-12)
    assert torch.allclose(k[(0, 1)], torch.outer(delta, d1), atol=1e-12)  # ∂_x along columns
    assert torch.allclose(k[(1, 0)], torch.outer(d1, delta), atol=1e-12)
    assert torch.allclose(k[(0, 2)], torch.outer(delta, d2), atol=1e-12)
    assert torch.allclose(k[(1, 1)], torch.outer(d1, d1), atol=1e-12)
    # 3x3: the classic central stencils
    k3 = dict(zip(orders_up_to(2), FilterBank(orders_up_to(2), 3, "frozen").kernels(), strict=1))
    assert torch.allclose(k3[(0, 2)][1], torch.tensor([1.0, -2.0, 1.0], dtype=torch.float64))
    assert torch.allclose(k3[(1, 0)][:, 1], torch.tensor([-0.5, 0.0, 0.5], dtype=torch.float64))


def _expected_order(o, n):
    """Central n-point stencil for d^o/ds^o: accuracy n − o, +1 when n − o is odd."""
    orders = [n - k + ((n - k) % 2) for k in o if k > 0]
    return min(orders) if orders else math.inf


@pytest.mark.parametrize("n", [5, 7])
def test_frozen_filters_order_of_accuracy_on_periodic_function(n):
    """f = exp(sin x + cos 2y): measured error ratios match the stencils' order."""

    def field(m):
        s = torch.arange(m, dtype=torch.float64) * 2 * math.pi / m
        y, x = torch.meshgrid(s, s, indexing="ij")
        return y, x, torch.exp(torch.sin(x) + torch.cos(2 * y))

    def exact(o, y, x, f):
        ex = {
            (0, 1): torch.cos(x),
            (1, 0): -2 * torch.sin(2 * y),
            (0, 2): torch.cos(x) ** 2 - torch.sin(x),
            (2, 0): 4 * torch.sin(2 * y) ** 2 - 4 * torch.cos(2 * y),
            (1, 1): -2 * torch.sin(2 * y) * torch.cos(x),
        }
        return ex[o] * f

    for o in [(0, 1), (1, 0), (0, 2), (2, 0), (1, 1)]:
        errs = []
        for m in (40, 80):
            y, x, f = field(m)
            bank = FilterBank([o], n, "frozen", dx=2 * math.pi / m)
            d = bank(f[None, None])[0, 0, 0]
            errs.append((d - exact(o, y, x, f)).abs().max().item())
        order = math.log2(errs[0] / errs[1])
        assert order > _expected_order(o, n) - 0.4, (o, n, errs, order)


def test_constraints_survive_an_optimiser_step():
    for constraint in ("moment", 2, "free"):
        bank = FilterBank(orders_up_to(2), 5, constraint, dx=0.3)
        opt = torch.optim.SGD(bank.parameters(), lr=1.0)
        u = torch.randn(2, 1, 8, 8, dtype=torch.float64)
        bank(u).pow(2).sum().backward()
        opt.step()
        m = bank.moments
        for f, o in enumerate(bank.orders):
            free, fixed = constraint_mask(o, 5, constraint)
            assert torch.equal(m[f][free == 0], fixed[free == 0]), (constraint, o)
        if constraint == "moment":
            # sum rules: M[a] = 0 for |a| <= |o|, a != o, M[o] = 1, higher moments learnable
            assert m[bank.orders.index((0, 1))][0, 0] == 0 and m[1][0, 1] == 1
            assert bank.free[bank.orders.index((0, 1))][0, 2] == 1
    frozen = FilterBank(orders_up_to(1), 5, "frozen")
    assert not list(frozen.parameters())
    with pytest.raises(ValueError, match="kernel_size"):
        FilterBank(orders_up_to(4), 3, "moment")


def test_upwind_init_kernels_are_second_order():
    for o in [(0, 1), (1, 0), (0, 2), (2, 0), (1, 1)]:
        m = k2m(upwind_init_kernels(o, 5))
        free, fixed = constraint_mask(o, 5, 2)
        assert torch.allclose(m[free == 0], fixed[free == 0], atol=1e-12), o
    # -flip of the forward one-sided kernel is the backward one
    k = upwind_init_kernels((0, 1), 5)
    assert torch.allclose(-k.flip(0, 1)[2, :3], torch.tensor([0.5, -2.0, 1.5], dtype=k.dtype))


def test_dirichlet_bank_zero_pads():
    bank = FilterBank([(0, 0)], 3, "frozen", boundary="dirichlet")
    u = torch.ones(1, 1, 4, 4, dtype=torch.float64)
    assert torch.equal(bank(u)[0, 0, 0], u[0, 0])
    lap = FilterBank([(0, 2)], 3, "frozen", boundary="dirichlet")(u)[0, 0, 0]
    assert lap[0, 0] == -1 and lap[1, 1] == 0


@pytest.mark.parametrize("n", [5, 7])
def test_frozen_filters_order_of_accuracy_up_to_order_4(n):
    """Every order up to 4 (experiments/pdenet/README.md's table): along an axis with a k-th
    derivative the frozen N x N filter is the central N-point stencil, of order N - k rounded
    up to even, and the filter has its worst axis's order (5x5: (1,2), (2,2) are 4th order but
    (0,3), (1,3), (4,0) 2nd; 7x7: 6th and 4th). Exact derivatives by nested autograd of the
    separable f = exp(cos 2y) exp(sin x), float64; the rate between 80 and 160 nodes."""

    def derivatives(fn, s):
        s = s.clone().requires_grad_(True)
        out, v = [], fn(s)
        for _ in range(5):
            out.append(v.detach())
            (v,) = torch.autograd.grad(v.sum(), s, create_graph=True)
        return out

    for o in orders_up_to(4)[1:]:
        errs = []
        for m in (80, 160):
            s = torch.arange(m, dtype=torch.float64) * 2 * math.pi / m
            gx = derivatives(lambda x: torch.exp(torch.sin(x)), s)
            hy = derivatives(lambda y: torch.exp(torch.cos(2 * y)), s)
            f, exact = hy[0][:, None] * gx[0], hy[o[0]][:, None] * gx[o[1]]
            d = FilterBank([o], n, "frozen", dx=2 * math.pi / m)(f[None, None])[0, 0, 0]
            errs.append((d - exact).abs().max().item())
        order = math.log2(errs[0] / errs[1])
        assert abs(order - _expected_order(o, n)) < 0.15, (o, n, errs, order)

"""PDE-Net δt-blocks (v1) and the SymNet / POLYPDE2D model (v2), plain ``nn.Module``s.

v1 (``pdelearner.py``): u_{n+1} = D_id u_n + δt Σ_{i+j ≤ K} c_ij(x, y) (D_ij u_n) (linear), or
u_{n+1} = D_id u_n + δt (Σ_{(i,j) ≠ 0} c_ij D_ij u_n + f(D_00 u_n)) (nonlinear source), the same
block applied k times. v2 (``polypde.py``): u^c_{n+1} = u^c_n + δt SymNet_c({D_ij u^{c'}}).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from odelab.papers.pdenet.filters import FilterBank, Order, orders_up_to


def lagrange_basis(t: torch.Tensor, degree: int) -> torch.Tensor:
    """Lagrange basis on the nodes 0, 1/d, …, 1 at local coordinates t: ``[..., d+1]``."""
    nodes = torch.linspace(0, 1, degree + 1, dtype=t.dtype)
    out = []
    for a in range(degree + 1):
        b = torch.ones_like(t)
        for c in range(degree + 1):
            if c != a:
                b = b * (t - nodes[c]) / (nodes[a] - nodes[c])
        out.append(b)
    return torch.stack(out, dim=-1)


def interp_matrix(points: torch.Tensor, lo: float, hi: float, n_cells: int, degree: int):
    """W ``[len(points), n_cells·degree + 1]``: piecewise degree-d Lagrange interpolation on
    [lo, hi] (points beyond the ends use the end cell's polynomial)."""
    width = (hi - lo) / n_cells
    cell = ((points - lo) / width).floor().clamp(0, n_cells - 1)
    t = (points - lo) / width - cell
    basis = lagrange_basis(t, degree)
    w = points.new_zeros(len(points), n_cells * degree + 1)
    idx = (cell.long() * degree)[:, None] + torch.arange(degree + 1)
    w.scatter_add_(1, idx, basis)
    return w


class LagrangeField2d(nn.Module):
    """A coefficient field c(y, x): piecewise degree-d Lagrange on an n_cells² mesh of [0, 2π]²,
    evaluated on fixed grid nodes (``VariantCoeLinear2d``'s coefficient fields; init N(0, 1))."""

    def __init__(self, n_fields: int, n_cells: int, degree: int, ys: torch.Tensor, xs):
        super().__init__()
        m = n_cells * degree + 1
        self.values = nn.Parameter(torch.randn(n_fields, m, m, dtype=torch.float64))
        self.register_buffer("wy", interp_matrix(ys, 0.0, 2 * math.pi, n_cells, degree))
        self.register_buffer("wx", interp_matrix(xs, 0.0, 2 * math.pi, n_cells, degree))

    def forward(self) -> torch.Tensor:
        """The fields on the grid, ``[n_fields, H, W]``."""
        return self.wy @ self.values @ self.wx.T


class LagrangeInterp1d(nn.Module):
    """f(u): piecewise degree-d Lagrange interpolant with ``n_cells`` cells on [lo, hi]."""

    def __init__(self, n_cells: int = 20, degree: int = 4, lo: float = -15.0, hi: float = 15.0):
        super().__init__()
        self.n_cells, self.degree, self.lo, self.hi = n_cells, degree, lo, hi
        self.values = nn.Parameter(torch.zeros(n_cells * degree + 1, dtype=torch.float64))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        width = (self.hi - self.lo) / self.n_cells
        cell = ((u - self.lo) / width).floor().clamp(0, self.n_cells - 1)
        t = (u - self.lo) / width - cell
        basis = lagrange_basis(t, self.degree)
        idx = (cell.long() * self.degree)[..., None] + torch.arange(self.degree + 1)
        return (self.values[idx] * basis).sum(-1)


def grid_nodes(grid_size: int, boundary: str) -> torch.Tensor:
    """Node coordinates of the learned grid: r·h, r = 0..n−1 (periodic) or 1..n−1 (Dirichlet)."""
    h = 2 * math.pi / grid_size
    start = 1 if boundary == "dirichlet" else 0
    return torch.arange(start, grid_size, dtype=torch.float64) * h


class PDENetV1Block(nn.Module):
    """One δt-block of PDE-Net v1, shared by every step.

    ``kind="linear"``: u⁺ = D_id u + δt Σ_{i+j≤K} c_ij ⊙ D_ij u, c_ij piecewise-quadratic fields.
    ``kind="nonlinear"``: u⁺ = D_id u + δt (Σ_{(i,j)≠(0,0)} c_ij ⊙ D_ij u + f(D_00 u)).
    """

    def __init__(
        self,
        grid_size: int,
        dt: float,
        kind: str = "linear",
        max_order: int = 4,
        kernel_size: int = 5,
        constraint: str | int = "moment",
        boundary: str = "periodic",
        coef_cells: int = 20,
        coef_degree: int = 2,
        f_cells: int = 20,
        f_degree: int = 4,
        f_range: Sequence[float] = (-15.0, 15.0),
    ):
        super().__init__()
        if kind not in ("linear", "nonlinear"):
            raise ValueError(f"model.kind must be linear or nonlinear, got {kind!r}")
        self.kind, self.dt = kind, dt
        dx = 2 * math.pi / grid_size
        self.orders = orders_up_to(max_order)
        self.bank = FilterBank(self.orders, kernel_size, constraint, dx, boundary)
        # D_id: its own order-0 filter; under "moment" only M[0,0] = 1 is fixed, so it can smooth
        self.id_filter = FilterBank([(0, 0)], kernel_size, constraint, dx, boundary)
        nodes = grid_nodes(grid_size, boundary)
        self.coef_orders = self.orders if kind == "linear" else self.orders[1:]
        self.coefs = LagrangeField2d(len(self.coef_orders), coef_cells, coef_degree, nodes, nodes)
        self.f = LagrangeInterp1d(f_cells, f_degree, *f_range) if kind == "nonlinear" else None

    def filter_banks(self) -> list[FilterBank]:
        return [self.bank, self.id_filter]

    def coefficient_fields(self) -> dict[Order, torch.Tensor]:
        return dict(zip(self.coef_orders, self.coefs(), strict=True))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """u ``[B, 1, H, W]`` → u after δt."""
        d = self.bank(u)[:, 0]  # [B, F, H, W]
        base = self.id_filter(u)[:, 0, 0]
        c = self.coefs()
        if self.kind == "linear":
            return (base + self.dt * (c * d).sum(1))[:, None]
        return (base + self.dt * ((c * d[:, 1:]).sum(1) + self.f(d[:, 0])))[:, None]


class SymNet(nn.Module):
    """PDE-Net 2.0's SymNet (``expr.poly``): hidden layer k is Linear(n_in + k, 2) whose two
    outputs are multiplied and appended as a new feature; output Linear(n_in + L, 1).

    Represents polynomials of degree ≤ 2^L in the inputs; init N(0, 0.1²).
    """

    def __init__(self, n_in: int, hidden_layers: int = 5, init_std: float = 0.1):
        super().__init__()
        self.n_in = n_in
        self.layers = nn.ModuleList(
            [nn.Linear(n_in + k, 2, dtype=torch.float64) for k in range(hidden_layers)]
        )
        self.out = nn.Linear(n_in + hidden_layers, 1, dtype=torch.float64)
        for p in self.parameters():
            nn.init.normal_(p, 0.0, init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x ``[..., n_in]`` → ``[...]``."""
        for layer in self.layers:
            a = layer(x)
            x = torch.cat([x, (a[..., :1] * a[..., 1:])], dim=-1)
        return self.out(x)[..., 0]

    def forward_with_grad(self, x: torch.Tensor, idx: Sequence[int]):
        """(y, ∂y/∂x_m for m in ``idx``) by forward-mode differentiation (no autograd, so it
        also runs under ``torch.inference_mode``).

        Features live in a preallocated feature-major buffer ``[f, N]`` (each layer is one
        contiguous matmul and appends one row in place). The tangent of input feature m along
        direction q is the constant e_q, so only the L product units carry tangent rows
        ``[L, q, N]``: ∂a/∂x_q = W[:, m_q] + W[:, hidden] ∂h/∂x_q. Runs under ``no_grad``:
        the outputs carry no graph (the in-place buffers would otherwise keep every call's
        graph alive through a reference cycle: 40 MB per training step at batch 16).
        """
        with torch.no_grad():
            return self._forward_with_grad(x, idx)

    def _forward_with_grad(self, x: torch.Tensor, idx: Sequence[int]):
        lead, n_in, L, q = x.shape[:-1], x.shape[-1], len(self.layers), len(idx)
        N = x[..., 0].numel()
        X = x.new_empty(n_in + L, N)
        X[:n_in] = x.reshape(N, n_in).T
        D = x.new_empty(L, q * N)  # ∂(product unit k)/∂x_{idx[j]}, flattened (j, point)
        for k, layer in enumerate(self.layers):
            f = n_in + k
            W = layer.weight
            a = W @ X[:f] + layer.bias[:, None]  # [2, N]
            da = W[:, idx][:, :, None] + (W[:, n_in:f] @ D[:k]).view(2, q, N)
            X[f] = a[0] * a[1]
            D[k] = (a[0, None] * da[1] + a[1, None] * da[0]).view(-1)
        w = self.out.weight[0]
        y = w @ X + self.out.bias[0]
        dy = w[idx][:, None] + (w[n_in:] @ D).view(q, N)
        return y.reshape(lead), dy.T.reshape(*lead, q)

    def polynomial(
        self, prune: float = 1e-10, max_terms: int = 200
    ) -> dict[tuple[int, ...], float]:
        """The network as an expanded polynomial {exponents: coefficient}.

        After each product unit, terms with |coefficient| < ``prune`` are dropped and at most
        the ``max_terms`` largest are kept: an untrained L-layer SymNet has O(n^(2^L)) terms,
        so the read-out of deep SymNets is a truncation (exact for trained sparse nets whose
        products have few terms; :meth:`readout_error` measures it).
        """
        n = self.n_in
        feats = [(np.eye(n, dtype=np.int64)[m : m + 1], np.ones(1)) for m in range(n)]

        def affine(w, b):
            exps = [np.zeros((1, n), dtype=np.int64)] + [f[0] for f in feats]
            coefs = [np.array([b])] + [wi * f[1] for wi, f in zip(w, feats, strict=True)]
            return _collect(np.concatenate(exps), np.concatenate(coefs))

        for layer in self.layers:
            w, b = layer.weight.detach().cpu().double().numpy(), layer.bias.detach().cpu().numpy()
            (e0, c0), (e1, c1) = affine(w[0], b[0]), affine(w[1], b[1])
            e = (e0[:, None, :] + e1[None, :, :]).reshape(-1, n)
            e, c = _collect(e, (c0[:, None] * c1[None, :]).reshape(-1))
            keep = np.abs(c) >= prune
            e, c = e[keep], c[keep]
            if len(c) > max_terms:
                top = np.argsort(-np.abs(c))[:max_terms]
                e, c = e[top], c[top]
            feats.append((e, c))
        w = self.out.weight.detach().cpu().double().numpy()[0]
        e, c = affine(w, float(self.out.bias.detach()))
        return {
            tuple(int(x) for x in m): float(v)
            for m, v in zip(e, c, strict=True)
            if abs(v) >= prune
        }

    def readout_error(self, x: torch.Tensor, poly: dict[tuple[int, ...], float]) -> float:
        """Relative L2 difference between the net and its read-out polynomial on inputs x."""
        with torch.no_grad():
            y = self(x)
        exps = torch.tensor(list(poly), dtype=x.dtype)
        coefs = torch.tensor(list(poly.values()), dtype=x.dtype)
        p = (torch.prod(x[..., None, :] ** exps, dim=-1) * coefs).sum(-1)
        return float((p - y).norm() / y.norm().clamp_min(1e-300))

    def expression(self, names: Sequence[str], calprec: int = 4, poly=None):
        """The learned polynomial as a sympy expression; terms with |coeff| < 10^−calprec
        dropped (``poly.expression()`` / ``poly.coeffs(calprec)``)."""
        import sympy

        syms = sympy.symbols(list(names))
        terms = [
            round(c, calprec + 2) * sympy.Mul(*[s**e for s, e in zip(syms, m, strict=True)])
            for m, c in (poly if poly is not None else self.polynomial()).items()
            if abs(c) >= 10**-calprec
        ]
        return sympy.Add(*terms)


def _collect(exps: np.ndarray, coefs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sum the coefficients of equal exponent rows."""
    uniq, inv = np.unique(exps, axis=0, return_inverse=True)
    return uniq, np.bincount(inv.reshape(-1), weights=coefs, minlength=len(uniq))


def feature_names(channels: Sequence[str], orders: Sequence[Order]) -> list[str]:
    """SymNet input names: u, u_x, u_y, u_xx, u_xy, u_yy, v, … (x = columns, y = rows)."""
    out = []
    for c in channels:
        for i, j in orders:
            out.append(c if i + j == 0 else f"{c}_{'x' * j}{'y' * i}")
    return out


class PolyPDE2d(nn.Module):
    """PDE-Net 2.0 (``POLYPDE2D``): u^c ← u^c + δt SymNet_c({D_ij u^{c'} : c', i + j ≤ K}).

    ``scheme="upwind"``: each first-derivative input uses kernel k or −flip(k) pointwise, chosen
    by the sign of ∂SymNet_c/∂(that input) (k, the forward one-sided stencil, where > 0).
    """

    def __init__(
        self,
        channels: int,
        grid_size: int,
        dt: float,
        kernel_size: int = 5,
        max_order: int = 2,
        constraint: str | int = "frozen",
        scheme: str = "upwind",
        hidden_layers: int = 5,
        channel_names: Sequence[str] | None = None,
    ):
        super().__init__()
        if scheme not in ("upwind", "central"):
            raise ValueError(f"model.scheme must be upwind or central, got {scheme!r}")
        self.dt, self.scheme, self.n_channels = dt, scheme, channels
        self.orders = orders_up_to(max_order)
        dx = 2 * math.pi / grid_size
        init = "upwind" if scheme == "upwind" else "moment"
        self.bank = FilterBank(self.orders, kernel_size, constraint, dx, "periodic", init)
        self.channel_names = list(channel_names or ["u", "v", "w"][:channels])
        self.names = feature_names(self.channel_names, self.orders)
        n_in = channels * len(self.orders)
        self.polys = nn.ModuleList([SymNet(n_in, hidden_layers) for _ in range(channels)])
        first = [f for f, o in enumerate(self.orders) if sum(o) == 1]
        nf = len(self.orders)
        self.first_idx = [c * nf + f for c in range(channels) for f in first]

    def filter_banks(self) -> list[FilterBank]:
        return [self.bank]

    def features(self, u: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
        """``[B, H, W, C·F]`` = all D_o u^c."""
        d = self.bank.apply(u, kernels)  # [B, C, F, H, W]
        B, C, F, H, W = d.shape
        return d.reshape(B, C * F, H, W).permute(0, 2, 3, 1)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """u ``[B, C, H, W]`` → u after δt."""
        k = self.bank.kernels()
        x = self.features(u, k)
        outs = []
        if self.scheme == "upwind":
            first = torch.tensor(self.first_idx)
            xb = self.features(u, -k.flip(-2, -1))
        for net in self.polys:
            if self.scheme == "upwind":
                _, g = net.forward_with_grad(x.detach(), self.first_idx)
                xc = x.clone()
                xc[..., first] = torch.where(g > 0, x[..., first], xb[..., first])
            else:
                xc = x
            outs.append(net(xc))
        return u + self.dt * torch.stack(outs, dim=1)

    def expressions(self, calprec: int = 4) -> dict[str, object]:
        """Each channel's learned right-hand side (sympy), |coeff| < 10^−calprec dropped."""
        return {
            c: net.expression(self.names, calprec)
            for c, net in zip(self.channel_names, self.polys, strict=True)
        }


def rollout(block: nn.Module, u0: torch.Tensor, n_steps: int) -> torch.Tensor:
    """(u0, block(u0), block²(u0), …) stacked on axis 1: ``[B, n_steps + 1, C, H, W]``."""
    out = [u0]
    u = u0
    for _ in range(n_steps):
        u = block(u)
        out.append(u)
    return torch.stack(out, dim=1)

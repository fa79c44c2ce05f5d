"""Moment-constrained convolution filters (PDE-Net §2.1; aTEAM ``MK.py`` / ``FD.py``).

For an N × N filter q with offsets k (rows, y) and l (columns, x) in {−(N−1)/2 … (N−1)/2}, the
moment matrix is M(q)[i, j] = Σ_{k,l} (k^i/i!) (l^j/j!) q[k, l], so that the correlation
(q ⋆ u) = Σ_{i,j} M[i,j] h^{i+j} ∂_y^i ∂_x^j u + …  The learnable parameter is M; the kernel
is M2K(M) / h^{|o|} for the target derivative o = (o_y, o_x).

Constraints (``constraint``):

- ``"frozen"``: M fixed at its initial value (default e_o: the most accurate N×N stencil);
- ``"moment"``: M[a] = 0 for |a| ≤ |o| except M[o] = 1 (PDE-Net v1's sum rules, accuracy 1);
- integer k (PDE-Net 2.0): M[a] = 0 for |a| < |o| + k except M[o] = 1 (k-th order accuracy);
- ``"free"``: no constraint.

The constrained entries are not parameters at all (M = mask·θ + (1 − mask)·fixed), so any
optimiser step keeps them exact.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

Order = tuple[int, int]


def moment_axis_matrix(n: int, dtype=torch.float64) -> torch.Tensor:
    """A[i, k] = (k − (n−1)//2)^i / i! (rows: moment order i, columns: kernel offset)."""
    off = torch.arange(n, dtype=dtype) - (n - 1) // 2
    return torch.stack([off**i / math.factorial(i) for i in range(n)])


def k2m(kernel: torch.Tensor) -> torch.Tensor:
    """Moment matrix of kernel(s) ``[..., N, N]``: M = A q Aᵀ."""
    a = moment_axis_matrix(kernel.shape[-1], kernel.dtype).to(kernel.device)
    return a @ kernel @ a.T


def m2k(moment: torch.Tensor) -> torch.Tensor:
    """Kernel(s) with moment matrix ``moment``: q = A⁻¹ M A⁻ᵀ."""
    a = moment_axis_matrix(moment.shape[-1], moment.dtype).to(moment.device)
    half = torch.linalg.solve(a, moment)  # A⁻¹ M
    return torch.linalg.solve(a, half.transpose(-1, -2)).transpose(-1, -2)  # (A⁻¹ M) A⁻ᵀ


def orders_up_to(max_order: int) -> list[Order]:
    """All (i, j) with i + j ≤ max_order, by total order then by i: (0,0), (0,1), (1,0), …"""
    return [(i, t - i) for t in range(max_order + 1) for i in range(t + 1)]


def constraint_mask(order: Order, n: int, constraint: str | int):
    """(free, fixed): ``free`` is 1 where M is learnable; ``fixed`` holds constrained values."""
    i, j = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    target = torch.zeros(n, n, dtype=torch.float64)
    target[order] = 1.0
    if constraint == "free":
        free = torch.ones(n, n, dtype=torch.float64)
    elif constraint == "frozen":
        free = torch.zeros(n, n, dtype=torch.float64)
    else:
        acc = 1 if constraint == "moment" else int(constraint)
        if acc < 1:
            raise ValueError(f"constraint must be frozen|moment|free|k>=1, got {constraint}")
        free = ((i + j) >= sum(order) + acc).to(torch.float64)
    return free, target * (1 - free)


def upwind_init_kernels(order: Order, n: int) -> torch.Tensor | None:
    """PDE-Net 2.0 ``initkernels``: one-sided second-order first derivatives, 3-point second
    derivatives and the 2nd-order central mixed derivative, embedded in n × n (scale h = 1)."""
    c = (n - 1) // 2
    k = torch.zeros(n, n, dtype=torch.float64)
    line = {1: torch.tensor([-3.0, 4.0, -1.0]) / 2, 2: torch.tensor([1.0, -2.0, 1.0])}
    if order in ((0, 1), (1, 0)):
        if n < 5:
            return None
        seg = line[1]
        if order == (0, 1):
            k[c, c : c + 3] = seg
        else:
            k[c : c + 3, c] = seg
        return k
    if order in ((0, 2), (2, 0)):
        if order == (0, 2):
            k[c, c - 1 : c + 2] = line[2]
        else:
            k[c - 1 : c + 2, c] = line[2]
        return k
    if order == (1, 1):
        k[c - 1, c - 1] = k[c + 1, c + 1] = 0.25
        k[c - 1, c + 1] = k[c + 1, c - 1] = -0.25
        return k
    if order == (0, 0):
        k[c, c] = 1.0
        return k
    return None


class FilterBank(nn.Module):
    """A bank of N × N filters D_o, one per derivative order o, parameterised by moments.

    ``forward(u)`` maps ``[B, C, H, W]`` to ``[B, C, F, H', W']`` = (D_o u^c) for every filter,
    with periodic padding (output H × W) or zero padding (``"dirichlet"``: the boundary nodes
    are zero, output H × W).

    Args:
        orders: the derivative orders (o_y, o_x).
        kernel_size: N (odd, > max order).
        constraint: ``frozen`` | ``moment`` | ``free`` | an int accuracy order.
        dx: grid spacing h; the kernel of order o is M2K(M)/h^{|o|}.
        init: ``"moment"`` (M = e_o) or ``"upwind"`` (the 2.0 upwind stencils, e_o otherwise).
    """

    def __init__(
        self,
        orders: Sequence[Order],
        kernel_size: int = 5,
        constraint: str | int = "moment",
        dx: float = 1.0,
        boundary: str = "periodic",
        init: str = "moment",
    ):
        super().__init__()
        n = kernel_size
        if n % 2 == 0 or n <= max(sum(o) for o in orders):
            raise ValueError(f"kernel_size must be odd and exceed the max order, got {n}")
        if boundary not in ("periodic", "dirichlet"):
            raise ValueError(f"boundary must be periodic or dirichlet, got {boundary!r}")
        self.orders = [tuple(o) for o in orders]
        self.kernel_size, self.constraint, self.dx, self.boundary = n, constraint, dx, boundary
        free, fixed, init_m = [], [], []
        for o in self.orders:
            fr, fx = constraint_mask(o, n, constraint)
            m0 = torch.zeros(n, n, dtype=torch.float64)
            m0[o] = 1.0
            if init == "upwind":
                k = upwind_init_kernels(o, n)
                if k is not None:
                    m0 = k2m(k)
            free.append(fr)
            fixed.append(fx)
            init_m.append(m0)
        self.register_buffer("free", torch.stack(free))
        self.register_buffer("fixed", torch.stack(fixed))
        if constraint == "frozen":
            self.register_buffer("theta", torch.stack(init_m))
        else:
            self.theta = nn.Parameter(torch.stack(init_m) * self.free)
        scale = torch.tensor([dx ** (-sum(o)) for o in self.orders], dtype=torch.float64)
        self.register_buffer("scale", scale)

    @property
    def moments(self) -> torch.Tensor:
        """M for every filter ``[F, N, N]`` with the constraints applied."""
        if self.constraint == "frozen":
            return self.theta
        return self.free * self.theta + self.fixed

    def free_moments(self) -> torch.Tensor:
        """The learnable moment entries (for the moment sparsity regulariser)."""
        if self.constraint == "frozen":
            return self.theta.new_zeros(0)
        return (self.theta * self.free)[self.free.bool()]

    def kernels(self) -> torch.Tensor:
        """Convolution kernels ``[F, N, N]`` (already divided by h^{|o|})."""
        return m2k(self.moments) * self.scale[:, None, None]

    def pad(self, u: torch.Tensor) -> torch.Tensor:
        p = (self.kernel_size - 1) // 2
        mode = "circular" if self.boundary == "periodic" else "constant"
        return F.pad(u, (p, p, p, p), mode=mode)

    def apply(self, u: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
        """Correlate every channel of ``u`` ``[B, C, H, W]`` with ``kernels`` ``[F, N, N]``."""
        B, C, H, W = u.shape
        out = F.conv2d(self.pad(u.reshape(B * C, 1, H, W)), kernels[:, None].to(u.dtype))
        return out.reshape(B, C, len(kernels), H, W)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.apply(u, self.kernels())

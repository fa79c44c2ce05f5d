"""Mean-field ResNets (Lu, Ma, Lu, Lu, Ying, ICML 2020): residual branches that average M units.

Discrete model, block l = 0..L-1 with M units θ_{l,m} (MLP form)::

    x_0 = E x_in,   x_{l+1} = x_l + s · Σ_m f(x_l; θ_{l,m}),   logits = R x_L
    f(x; U, W, b) = U σ(W x + b)

``scaling="mean_field"``: s = 1/(L·M), i.e. forward Euler with step 1/L on the mean-field ODE
dX/dt = ∫ f(X, θ) ρ(θ, t) dθ over t ∈ [0, 1] with the empirical measure of the M units of block
l as ρ(·, t_l), t_l = l/L. ``scaling="standard"``: s = 1, the 1-scaled ResNet on the same code
path (unit output weights initialised with variance 1/M, so the branch is an ordinary layer).

The convolutional form (:class:`MeanFieldResNet`) uses the same rule with a pre-activation
basic unit f_m(u) = conv3x3(relu(bn(conv3x3_s(relu(bn(u)))))) per unit (the input BN is shared
by the M units of a block) in the CIFAR ResNet layout, L = the number of residual blocks.

Where the paper's text could not be read the choices are ours; experiments/meanfield/README.md
lists which.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from odelab.nn import ProjectionShortcut, he_fanout_init_

SCALINGS = ("mean_field", "standard")
BLOCK_ORDERS = ("fixed", "shuffle")
_ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu}


def _check(scaling: str, block_order: str, depth: int, units: int) -> None:
    if scaling not in SCALINGS:
        raise ValueError(f"scaling={scaling!r} unknown; choose one of {SCALINGS}")
    if block_order not in BLOCK_ORDERS:
        raise ValueError(f"block_order={block_order!r} unknown; choose one of {BLOCK_ORDERS}")
    if depth < 1 or units < 1:
        raise ValueError(f"depth L={depth} and units M={units} must both be >= 1")


def branch_scale(scaling: str, depth: int, units: int) -> float:
    """s in x_{l+1} = x_l + s Σ_m f_m: 1/(L·M) (mean field) or 1 (standard ResNet)."""
    return 1.0 / (depth * units) if scaling == "mean_field" else 1.0


class _OrderMixin:
    """Block order: ``forward(x, order)`` runs the blocks in ``order`` (a sequence of block
    indices); in training with ``block_order="shuffle"`` every forward draws a fresh order from
    :meth:`sample_order` (our reading of the paper's block-switching scheme)."""

    block_order: str

    def sample_order(self, generator: torch.Generator | None = None) -> list[int]:
        """Blocks of every stage in a uniformly random order (transitions stay first)."""
        order = []
        for fixed, movable in self.stages:
            perm = torch.randperm(len(movable), generator=generator).tolist()
            order += list(fixed) + [movable[i] for i in perm]
        return order

    def default_order(self) -> list[int]:
        return [i for fixed, movable in self.stages for i in (*fixed, *movable)]

    def _resolve(self, order: Sequence[int] | None) -> list[int]:
        if order is None:
            if self.training and self.block_order == "shuffle":
                return self.sample_order()
            return self.default_order()
        order = [int(i) for i in order]
        want = self.default_order()
        if sorted(order) != sorted(want):
            raise ValueError(f"order {order} is not a permutation of the blocks {want}")
        return order


class MeanFieldResMLP(_OrderMixin, nn.Module):
    """Residual MLP x_{l+1} = x_l + s Σ_m U_{l,m} σ(W_{l,m}·x_l + b_{l,m}) (module docstring).

    Args:
        in_dim: flattened input size (64 for the 8x8 digits).
        embed_dim: d, the width of the state x.
        depth: L blocks. units: M units per block.
        scaling: ``mean_field`` (s = 1/(L·M)) or ``standard`` (s = 1).
        activation: σ, ``tanh`` or ``relu``.
        block_order: ``fixed`` or ``shuffle`` (a random block order at every training step).
        embed_trainable: train E (else it stays at its random init).
        readout_trainable: train R (else it stays at its random init).

    Parameters are stored stacked: ``W [L, M, d]``, ``b [L, M]``, ``U [L, M, d]``. Init (ours):
    W ~ N(0, 1/d), b ~ N(0, 1), U ~ N(0, 1) (mean field: O(1) particles) or N(0, 1/M) (standard).
    """

    def __init__(
        self,
        in_dim: int = 64,
        embed_dim: int = 32,
        depth: int = 16,
        units: int = 32,
        num_classes: int = 10,
        scaling: str = "mean_field",
        activation: str = "tanh",
        block_order: str = "fixed",
        embed_trainable: bool = True,
        readout_trainable: bool = True,
    ):
        super().__init__()
        _check(scaling, block_order, depth, units)
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation={activation!r}; choose one of {sorted(_ACTIVATIONS)}")
        self.in_dim, self.embed_dim, self.depth, self.units = in_dim, embed_dim, depth, units
        self.num_blocks = depth
        self.num_classes, self.scaling, self.block_order = num_classes, scaling, block_order
        self.activation = activation
        self.sigma = _ACTIVATIONS[activation]
        self.scale = branch_scale(scaling, depth, units)
        self.embed = nn.Linear(in_dim, embed_dim)
        self.embed.requires_grad_(embed_trainable)
        L, M, d = depth, units, embed_dim
        u_std = 1.0 if scaling == "mean_field" else 1.0 / math.sqrt(M)
        self.W = nn.Parameter(torch.randn(L, M, d) / math.sqrt(d))
        self.b = nn.Parameter(torch.randn(L, M))
        self.U = nn.Parameter(torch.randn(L, M, d) * u_std)
        self.readout = nn.Linear(embed_dim, num_classes)
        self.readout.requires_grad_(readout_trainable)
        self.stages = [((), tuple(range(L)))]

    def block_parameter_names(self) -> tuple[str, ...]:
        """Names of the unit (particle) parameters θ_{l,m}."""
        return ("W", "b", "U")

    def branch(self, k: int, x: torch.Tensor) -> torch.Tensor:
        """Σ_m U_{k,m} σ(W_{k,m}·x + b_{k,m}) (block k, unscaled)."""
        return self.sigma(x @ self.W[k].T + self.b[k]) @ self.U[k]

    def embedding(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x.flatten(1))

    def state(
        self, x: torch.Tensor, order: Sequence[int] | None = None, zero_branches: bool = False
    ) -> torch.Tensor:
        """x_L, the state after the blocks in ``order``; ``zero_branches``: x_0."""
        h = self.embedding(x)
        if zero_branches:
            return h
        for k in self._resolve(order):
            h = h + self.scale * self.branch(k, h)
        return h

    def forward(
        self, x: torch.Tensor, order: Sequence[int] | None = None, zero_branches: bool = False
    ) -> torch.Tensor:
        return self.readout(self.state(x, order, zero_branches))

    def first_order(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the shallow ensemble x_0 + s Σ_{l,m} f(x_0; θ_{l,m}): every unit of every
        block evaluated at the input state, i.e. one two-layer network with L·M units."""
        h0 = self.embedding(x)
        act = self.sigma(torch.einsum("bd,lmd->blm", h0, self.W) + self.b)
        return self.readout(h0 + self.scale * torch.einsum("blm,lmd->bd", act, self.U))


class ConvUnits(nn.Module):
    """Σ_m f_m(u) for M pre-activation basic units, f_m(u) = conv_m2(relu(bn_m(conv_m1,s(v)))),
    v = relu(bn(u)) shared; computed as one conv to M·planes channels and a grouped conv
    (groups = M), then the sum over m."""

    def __init__(self, in_planes: int, planes: int, units: int, stride: int = 1):
        super().__init__()
        self.units, self.planes, self.stride = units, planes, stride
        self.in_planes, self.out_planes = in_planes, planes
        self.pre = nn.Sequential(nn.BatchNorm2d(in_planes), nn.ReLU(inplace=True))
        self.conv1 = nn.Conv2d(in_planes, units * planes, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(units * planes)
        self.conv2 = nn.Conv2d(
            units * planes, units * planes, 3, padding=1, groups=units, bias=False
        )

    def unit_outputs(self, u: torch.Tensor) -> torch.Tensor:
        """[B, M, planes, H, W]: every unit's f_m(u)."""
        y = self.conv2(torch.relu(self.bn1(self.conv1(self.pre(u)))))
        return y.unflatten(1, (self.units, self.planes))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.unit_outputs(u).sum(1)


class MeanFieldResNet(_OrderMixin, nn.Module):
    """CIFAR pre-activation ResNet (depth 6n+2, three stages of n blocks) whose block b updates
    u <- P_b(u) + s Σ_m f_{b,m}(u), s = 1/(L·M) (mean field, L = 3n blocks) or 1 (standard).

    P_b is the identity except at the first block of stages 2 and 3 (BN-ReLU-1x1 stride-2
    projection). With ``units=1, scaling="standard"`` this is the plain pre-activation ResNet.
    ``block_order="shuffle"`` permutes, at every training step, the blocks of each stage that
    keep the shape (every block of stage 1, blocks 2..n of stages 2 and 3).

    Init: He fan-out for every conv (odelab.nn); for ``mean_field`` the second conv of each
    unit is re-drawn with its own per-unit fan-out (O(1) particles; ours), so that s Σ_m is an
    average. The grouped conv's fan-out init already gives the standard net variance 1/M.
    """

    def __init__(
        self,
        depth: int = 20,
        units: int = 4,
        widths: Sequence[int] = (16, 32, 64),
        num_classes: int = 10,
        in_channels: int = 3,
        scaling: str = "mean_field",
        block_order: str = "fixed",
    ):
        super().__init__()
        n, rem = divmod(depth - 2, 6)
        if rem or n < 1:
            raise ValueError(f"depth={depth} must be 6n+2 (e.g. 20, 32, 44, 56, 110)")
        if len(widths) != 3:
            raise ValueError(f"widths={list(widths)} must name three stage widths")
        _check(scaling, block_order, 3 * n, units)
        self.depth, self.units, self.num_blocks = depth, units, 3 * n
        self.num_classes, self.scaling, self.block_order = num_classes, scaling, block_order
        self.scale = branch_scale(scaling, self.num_blocks, units)
        self.stem = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        blocks, projections, stages = [], nn.ModuleDict(), []
        in_planes = widths[0]
        for s, (w, stride) in enumerate(zip(widths, (1, 2, 2))):
            first = len(blocks)
            for j in range(n):
                st = stride if j == 0 else 1
                blocks.append(ConvUnits(in_planes, w, units, st))
                if j == 0 and s > 0:
                    projections[str(first)] = ProjectionShortcut(in_planes, w, stride)
                in_planes = w
            idx = tuple(range(first, first + n))
            stages.append((idx[:1], idx[1:]) if s > 0 else ((), idx))
        self.blocks = nn.ModuleList(blocks)
        self.projections = projections
        self.stages = stages
        self.head = nn.Sequential(
            nn.BatchNorm2d(in_planes), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.fc = nn.Linear(in_planes, num_classes)
        he_fanout_init_(self)
        if scaling == "mean_field":
            with torch.no_grad():
                for blk in self.blocks:
                    w = blk.conv2.weight
                    w.normal_(0.0, math.sqrt(2.0 / (9 * blk.planes)))
        self.in_channels = in_channels

    def block_parameter_names(self) -> tuple[str, ...]:
        """Name prefixes of the unit (particle) parameters."""
        return ("blocks.",)

    def _step(self, b: int, u: torch.Tensor, zero: bool = False) -> torch.Tensor:
        skip = self.projections[str(b)](u) if str(b) in self.projections else u
        return skip if zero else skip + self.scale * self.blocks[b](u)

    def forward(
        self, x: torch.Tensor, order: Sequence[int] | None = None, zero_branches: bool = False
    ) -> torch.Tensor:
        u = self.stem(x)
        for b in self._resolve(order):
            u = self._step(b, u, zero_branches)
        return self.fc(self.head(u))

    def first_order(self, x: torch.Tensor) -> torch.Tensor:
        """Per stage, the shallow ensemble: after the stage's transition block (exact), every
        other block of the stage is evaluated at the same state and the branches are summed."""
        u = self.stem(x)
        for fixed, movable in self.stages:
            for b in fixed:
                u = self._step(b, u)
            u = u + self.scale * sum(self.blocks[b](u) for b in movable)
        return self.fc(self.head(u))

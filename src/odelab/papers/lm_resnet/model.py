"""LM-ResNet (Lu, Zhong, Li, Dong, ICML 2018): a ResNet whose blocks take linear multi-step steps.

Paper update for block n with residual branch f_n and one trainable scalar k_n:

    u_{n+1} = (1 - k_n) u_n + k_n u_{n-1} + f_n(u_n)

k_n = 0 is the forward-Euler step, i.e. the plain ResNet. As in the official code
(2prime/LM-ResNet, ``MResNet``), block 0 and the first block of each later stage take a plain
step, u_{n+1} = f_n(u_n) + P(u_n) with P the identity or a BN-ReLU-1x1 projection, and the
"previous state" seen by the next block is P(u_n).

Stochastic depth (paper Sec. 4, SDE reading): f_n is kept with probability p_n, a kept branch is
scaled by 1/p_n during training ("inverted", as in the official code) or by p_n at test time
("test", as in Huang et al. 2016); the LM combination of u_n, u_{n-1} is always applied.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from odelab.nn import (
    PreActBasicBranch,
    PreActBottleneckBranch,
    ProjectionShortcut,
    he_fanout_init_,
)

_BRANCHES = {"basic": PreActBasicBranch, "bottleneck": PreActBottleneckBranch}


def blocks_per_stage(depth: int, block: str) -> int:
    """Depth 6n+2 (basic) or 9n+2 (bottleneck) -> n blocks in each of the three stages."""
    layers_per_block = {"basic": 2, "bottleneck": 3}[block]
    n, rem = divmod(depth - 2, 3 * layers_per_block)
    if rem or n < 1:
        step = 3 * layers_per_block
        raise ValueError(
            f"depth={depth} is impossible for {block} blocks: depth must be {step}n+2 "
            f"(e.g. {', '.join(str(step * i + 2) for i in (1, 2, 3, 6, 9, 18))}); "
            "use model.net.block=bottleneck for depth 164."
        )
    return n


def death_rates(num_blocks: int, p_L: float, schedule: str = "code") -> list[float]:
    """Probability of dropping each block's branch, linear in depth down to survival p_L.

    ``code``: i/(N-1) * (1 - p_L), i = 0..N-1 (official code: block 0 is never dropped).
    ``paper``: l/L * (1 - p_L), l = 1..L (Huang et al.; block 0 has a non-zero rate).
    """
    if not 0.0 < p_L <= 1.0:
        raise ValueError(f"stochastic depth p_L={p_L} must lie in (0, 1]")
    if schedule == "code":
        return [i / max(num_blocks - 1, 1) * (1.0 - p_L) for i in range(num_blocks)]
    if schedule == "paper":
        return [(i + 1) / num_blocks * (1.0 - p_L) for i in range(num_blocks)]
    raise ValueError(f"stochastic depth schedule {schedule!r} unknown; use 'code' or 'paper'")


class LMResNet(nn.Module):
    """Pre-activation CIFAR ResNet / LM-ResNet on one code path (``lm=False`` is the ResNet).

    Args:
        depth: 20/32/44/56/110 (basic) or 164 (bottleneck); any 6n+2 / 9n+2.
        block: ``basic`` | ``bottleneck`` | ``auto`` (bottleneck iff depth == 164).
        widths: stage widths (16, 32, 64 in the paper); narrower for CPU-scale runs.
        lm: use the LM step (one trainable k per LM block); False gives the plain ResNet.
        k_granularity: ``layer`` (one scalar per block, ``MResNet``) or ``channel``
            (one per channel, ``MResNetC``, here in the paper's convention).
        k_init: k_n ~ U(k_init[0], k_init[1]); the paper's U(-0.1, 0).
        stochastic_depth, p_L, sd_schedule, sd_scaling: see :func:`death_rates` and the module doc.
    """

    def __init__(
        self,
        depth: int = 20,
        block: str = "auto",
        widths: Sequence[int] = (16, 32, 64),
        num_classes: int = 10,
        in_channels: int = 3,
        lm: bool = True,
        k_granularity: str = "layer",
        k_init: Sequence[float] = (-0.1, 0.0),
        stochastic_depth: bool = False,
        p_L: float = 0.5,
        sd_schedule: str = "code",
        sd_scaling: str = "inverted",
    ):
        super().__init__()
        block = ("bottleneck" if depth == 164 else "basic") if block == "auto" else block
        if block not in _BRANCHES:
            raise ValueError(f"block={block!r} unknown; choose one of {sorted(_BRANCHES)}")
        if k_granularity not in ("layer", "channel"):
            raise ValueError(f"k_granularity={k_granularity!r}; choose 'layer' or 'channel'")
        if sd_scaling not in ("inverted", "test"):
            raise ValueError(f"sd_scaling={sd_scaling!r}; choose 'inverted' or 'test'")
        if len(widths) != 3:
            raise ValueError(f"widths={list(widths)} must name three stage widths")
        n = blocks_per_stage(depth, block)
        branch_cls = _BRANCHES[block]
        exp = branch_cls.expansion

        self.depth, self.block, self.lm = depth, block, lm
        self.sd_scaling = sd_scaling
        self.lm_active = True  # switched off by the trainer during a plain warm start
        self.stem = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        # Block 0's shortcut: identity (basic) or BN-ReLU-1x1 to 4*w0 (bottleneck).
        self.shortcut0 = (
            ProjectionShortcut(widths[0], widths[0] * exp, stride=1) if exp != 1 else nn.Identity()
        )
        branches, projections, kinds = [], nn.ModuleDict(), []
        in_planes = widths[0]
        for s, (w, stride) in enumerate(zip(widths, (1, 2, 2))):
            for j in range(n):
                i = len(branches)
                first = j == 0
                branches.append(branch_cls(in_planes, w, stride if first else 1))
                if i == 0:
                    kinds.append("first")
                elif first and s > 0:
                    projections[str(i)] = ProjectionShortcut(in_planes, w * exp, stride)
                    kinds.append("transition")
                else:
                    kinds.append("lm" if lm else "euler")
                in_planes = w * exp
        self.branches = nn.ModuleList(branches)
        self.projections = projections
        self.kinds = kinds
        self.ks = nn.ParameterDict()
        if lm:
            for i, kind in enumerate(kinds):
                if kind == "lm":
                    width = branches[i].out_planes
                    shape = (1,) if k_granularity == "layer" else (width, 1, 1)
                    self.ks[str(i)] = nn.Parameter(torch.empty(shape).uniform_(*k_init))
        rates = death_rates(len(branches), p_L, sd_schedule) if stochastic_depth else None
        self.death_rates = rates or [0.0] * len(branches)
        self.head = nn.Sequential(
            nn.BatchNorm2d(in_planes),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.fc = nn.Linear(in_planes, num_classes)
        he_fanout_init_(self)
        self.num_classes = num_classes

    def _branch(self, i: int, u: torch.Tensor) -> torch.Tensor | None:
        """f_i(u) with stochastic depth; None where the branch is dropped."""
        d = self.death_rates[i]
        if d == 0.0:
            return self.branches[i](u)
        if self.training:
            if torch.rand(()).item() < d:  # CPU draw: no device sync
                return None
            f = self.branches[i](u)
            return f / (1.0 - d) if self.sd_scaling == "inverted" else f
        f = self.branches[i](u)
        return f if self.sd_scaling == "inverted" else f * (1.0 - d)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        u = self.stem(x)
        prev = u
        for i, kind in enumerate(self.kinds):
            if kind == "first":
                skip = self.shortcut0(u)
            elif kind == "transition":
                skip = self.projections[str(i)](u)
            else:
                skip = u
            if kind == "lm":
                k = self.ks[str(i)]
                k = k if self.lm_active else k * 0.0
                base = torch.lerp(u, prev, k.to(u.dtype))  # (1-k) u_n + k u_{n-1}, fused
            else:
                base = skip
            f = self._branch(i, u)
            prev, u = skip, (base if f is None else f + base)
        return self.head(u)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))

    def k_values(self) -> dict[int, torch.Tensor]:
        """The learned k_n (paper convention) of each LM block, keyed by block index."""
        return {int(i): k.detach() for i, k in self.ks.items()}


def official_ks_to_paper(ks: torch.Tensor) -> torch.Tensor:
    """The official ``MResNet.ks[i]`` multiplies u_n, so it is 1 - k_n in the paper's notation."""
    return 1.0 - ks

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

Two networks share the stepping code (:class:`_LMStepper`): :class:`LMResNet`, the
pre-activation CIFAR nets of the official code, and :class:`LMResNeXt`, the post-activation
(grouped) bottleneck nets: LM-ResNeXt-29 on CIFAR and LM-ResNet-50/101 on ImageNet.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from odelab.nn import (
    BottleneckBranch,
    ConvBNShortcut,
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


class _LMStepper(nn.Module):
    """What every LM network shares: the k_n, stochastic depth and the stepping loop.

    Subclasses build ``stem``, ``shortcut0``, the branch list with one ``kind`` per block
    (``first``: block 0, skip ``shortcut0``; ``transition``: first block of a later stage, skip
    ``projections[i]``; ``lm`` / ``euler``: identity skip with or without the LM step) and
    ``head``/``fc``, then call :meth:`_init_steps`. ``post_activation`` applies a ReLU after
    every skip sum (ResNet v1 / ResNeXt layout); the pre-activation CIFAR nets have none.
    """

    post_activation = False

    def _init_steps(
        self,
        branches: list[nn.Module],
        kinds: list[str],
        projections: nn.ModuleDict,
        lm: bool,
        k_granularity: str,
        k_init: Sequence[float],
        stochastic_depth: bool,
        p_L: float,
        sd_schedule: str,
        sd_scaling: str,
    ) -> None:
        if k_granularity not in ("layer", "channel"):
            raise ValueError(f"k_granularity={k_granularity!r}; choose 'layer' or 'channel'")
        if sd_scaling not in ("inverted", "test"):
            raise ValueError(f"sd_scaling={sd_scaling!r}; choose 'inverted' or 'test'")
        self.lm = lm
        self.sd_scaling = sd_scaling
        self.lm_active = True  # switched off by the trainer during a plain warm start
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

    def _steps(self, u: torch.Tensor) -> torch.Tensor:
        """Run every block: u_{n+1} = [relu]((1 - k_n) u_n + k_n u_{n-1} + f_n(u_n))."""
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
            new = base if f is None else f + base
            prev, u = skip, (F.relu(new) if self.post_activation else new)
        return u

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self._steps(self.stem(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))

    def k_values(self) -> dict[int, torch.Tensor]:
        """The learned k_n (paper convention) of each LM block, keyed by block index."""
        return {int(i): k.detach() for i, k in self.ks.items()}


class LMResNet(_LMStepper):
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
        if len(widths) != 3:
            raise ValueError(f"widths={list(widths)} must name three stage widths")
        n = blocks_per_stage(depth, block)
        branch_cls = _BRANCHES[block]
        exp = branch_cls.expansion

        self.depth, self.block = depth, block
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
        self._init_steps(
            branches, kinds, projections, lm, k_granularity, k_init,
            stochastic_depth, p_L, sd_schedule, sd_scaling,
        )  # fmt: skip
        self.head = nn.Sequential(
            nn.BatchNorm2d(in_planes),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.fc = nn.Linear(in_planes, num_classes)
        he_fanout_init_(self)
        self.num_classes = num_classes


# ImageNet bottleneck ResNets (He et al. 2016, Table 1): blocks per stage.
IMAGENET_LAYERS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


def resnext_layers(depth: int, stem: str) -> tuple[int, ...]:
    """Blocks per stage: CIFAR ResNeXt depth 9n+2 -> (n, n, n); ImageNet 50/101/152."""
    if stem == "cifar":
        n, rem = divmod(depth - 2, 9)
        if rem or n < 1:
            raise ValueError(
                f"depth={depth} is impossible for a CIFAR ResNeXt (3 stages of bottlenecks): "
                "depth must be 9n+2, e.g. 11, 20, 29"
            )
        return (n, n, n)
    if stem == "imagenet":
        if depth not in IMAGENET_LAYERS:
            raise ValueError(
                f"depth={depth} is not an ImageNet bottleneck ResNet; choose one of "
                f"{sorted(IMAGENET_LAYERS)}"
            )
        return IMAGENET_LAYERS[depth]
    raise ValueError(f"stem={stem!r} unknown; choose 'cifar' or 'imagenet'")


class LMResNeXt(_LMStepper):
    """Post-activation bottleneck ResNet / ResNeXt with LM steps: LM-ResNeXt on CIFAR and
    LM-ResNet-50/101 on ImageNet on one code path (``lm=False``: the plain network).

    Block n: u_{n+1} = relu((1 - k_n) u_n + k_n u_{n-1} + f_n(u_n)) with f_n a (grouped)
    :class:`~odelab.nn.BottleneckBranch`; the first block of every stage takes the plain step
    relu(f_n(u_n) + P(u_n)) with the projection P = BN(conv1x1_s), and the next LM block sees
    P(u_n) as u_{n-1} (the official code's rule for its CIFAR nets).

    Args:
        depth: 9n+2 with ``stem="cifar"`` (ResNeXt-29: n = 3) or 50/101/152 with ``imagenet``.
        stem: ``cifar``: conv3x3(64)-BN-ReLU (Xie et al.'s CIFAR ResNeXt); ``imagenet``:
            conv7x7/2(64)-BN-ReLU-maxpool3x3/2 (He et al.).
        cardinality, base_width: C and d of "C x d" (8, 64 for ResNeXt-29 8x64d; 1, 64 for
            ResNet-50/101).
        widths: bottleneck planes p per stage (outputs are 4p); default (64, 128, 256) for
            CIFAR, (64, 128, 256, 512) for ImageNet.
        lm, k_granularity, k_init, stochastic_depth, p_L, sd_schedule, sd_scaling: as
            :class:`LMResNet`.
    """

    post_activation = True

    def __init__(
        self,
        depth: int = 29,
        stem: str = "cifar",
        cardinality: int = 8,
        base_width: int = 64,
        widths: Sequence[int] | None = None,
        num_classes: int = 100,
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
        layers = resnext_layers(depth, stem)
        widths = tuple(widths or ((64, 128, 256) if stem == "cifar" else (64, 128, 256, 512)))
        if len(widths) != len(layers):
            raise ValueError(
                f"widths={list(widths)} must name {len(layers)} stage widths for stem={stem!r}"
            )
        if cardinality < 1 or int(min(widths) * base_width / 64) < 1:
            raise ValueError(
                f"cardinality={cardinality}, base_width={base_width}, widths={list(widths)}: "
                "each group needs floor(width * base_width / 64) >= 1 channels"
            )
        self.depth, self.stem_kind, self.layers = depth, stem, layers
        self.cardinality, self.base_width = cardinality, base_width
        stem_width = widths[0]  # 64 in both layouts
        stem_layers: list[nn.Module] = (
            [nn.Conv2d(in_channels, stem_width, 3, padding=1, bias=False)]
            if stem == "cifar"
            else [nn.Conv2d(in_channels, stem_width, 7, stride=2, padding=3, bias=False)]
        )
        stem_layers += [nn.BatchNorm2d(stem_width), nn.ReLU(inplace=True)]
        if stem == "imagenet":
            stem_layers.append(nn.MaxPool2d(3, stride=2, padding=1))
        self.stem = nn.Sequential(*stem_layers)

        branches, projections, kinds = [], nn.ModuleDict(), []
        in_planes = stem_width
        for s, (n, w) in enumerate(zip(layers, widths)):
            stride = 1 if s == 0 else 2
            for j in range(n):
                i = len(branches)
                first = j == 0
                b = BottleneckBranch(in_planes, w, stride if first else 1, cardinality, base_width)
                branches.append(b)
                if i == 0:
                    self.shortcut0 = ConvBNShortcut(in_planes, b.out_planes, stride)
                    kinds.append("first")
                elif first:
                    projections[str(i)] = ConvBNShortcut(in_planes, b.out_planes, stride)
                    kinds.append("transition")
                else:
                    kinds.append("lm" if lm else "euler")
                in_planes = b.out_planes
        self._init_steps(
            branches, kinds, projections, lm, k_granularity, k_init,
            stochastic_depth, p_L, sd_schedule, sd_scaling,
        )  # fmt: skip
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(in_planes, num_classes)
        he_fanout_init_(self)
        self.num_classes = num_classes


def official_ks_to_paper(ks: torch.Tensor) -> torch.Tensor:
    """The official ``MResNet.ks[i]`` multiplies u_n, so it is 1 - k_n in the paper's notation."""
    return 1.0 - ks

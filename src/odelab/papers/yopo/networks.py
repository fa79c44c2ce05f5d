"""Networks for YOPO and its peers, each split as ``layer_one`` (f_0) then ``other_layers``.

YOPO's adversary only sees the first layer's Hamiltonian H_0 = <p, f_0(x + eta; theta_0)>, so
every network declares f_0 explicitly; ``forward_with_z1`` returns the logits and z1 = f_0(x).
Inputs are images in [0, 1]; an optional per-channel ``mean``/``std`` normalisation (Fast's
recipe) is applied inside ``layer_one`` so that attacks always work in pixel space.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class Normalize(nn.Module):
    """(x - mean) / std per channel."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


class LayerOneNet(nn.Module):
    """logits = other_layers(layer_one(x)); subclasses fill both sub-modules."""

    layer_one: nn.Module
    other_layers: nn.Module
    num_classes: int

    def _wrap_layer_one(self, first: nn.Module, mean, std) -> nn.Module:
        if mean is None and std is None:
            return first
        if mean is None or std is None:
            raise ValueError("give both mean and std (normalisation inside layer one) or neither")
        return nn.Sequential(Normalize(mean, std), first)

    def forward_with_z1(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, z1) with z1 = f_0(x) the first layer's output (the co-state's position)."""
        z1 = self.layer_one(x)
        return self.other_layers(z1), z1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.other_layers(self.layer_one(x))


class SmallCNN(LayerOneNet):
    """The TRADES/YOPO MNIST SmallCNN: f_0 = ReLU(conv 1->32 3x3); then conv 32->32, pool,
    conv 32->64, conv 64->64, pool, FC 1024->200->200->10 with dropout 0.5 (official code).

    ``width`` scales the channel and hidden sizes (1.0 = official) for CPU-scale runs.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        width: float = 1.0,
        drop: float = 0.5,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ):
        super().__init__()
        c1, c2, h = (max(1, round(v * width)) for v in (32, 64, 200))
        self.num_classes = num_classes
        self.in_channels = in_channels
        conv1 = nn.Conv2d(in_channels, c1, 3)
        self.layer_one = self._wrap_layer_one(nn.Sequential(conv1, nn.ReLU()), mean, std)
        feats = nn.Sequential(
            nn.Conv2d(c1, c1, 3),
            nn.ReLU(),
            nn.MaxPool2d(2, 2),
            nn.Conv2d(c1, c2, 3),
            nn.ReLU(),
            nn.Conv2d(c2, c2, 3),
            nn.ReLU(),
            nn.MaxPool2d(2, 2),
        )
        fc_last = nn.Linear(h, num_classes)
        head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c2 * 4 * 4, h),
            nn.ReLU(),
            nn.Dropout(drop),
            nn.Linear(h, h),
            nn.ReLU(),
            fc_last,
        )
        self.other_layers = nn.Sequential(feats, head)
        for m in self.modules():  # official init: Kaiming-normal convs, BN 1/0, last FC zero
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.zeros_(fc_last.weight)
        nn.init.zeros_(fc_last.bias)


class PreActBlock(nn.Module):
    """y = conv(relu(bn(conv_s(relu(bn(u)))))) + shortcut, the shortcut taken after the first
    BN-ReLU when the shape changes (kuangliu / YOPO-repo PreActBlock)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        short = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + short


class PreActResNet18(LayerOneNet):
    """Pre-activation ResNet-18 for 32x32 images: f_0 = conv 3->64 3x3 (no bias), four stages of
    two PreActBlocks (64, 128, 256, 512), then [BN-ReLU if ``final_bn``], avg-pool, FC.

    ``final_bn=False`` is the YOPO repo's variant (blocks straight into the pooled FC);
    ``final_bn=True`` is the usual one (locuslab/fast_adversarial). ``width`` scales channels.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        final_bn: bool = False,
        width: float = 1.0,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ):
        super().__init__()
        self.num_classes, self.in_channels, self.final_bn = num_classes, in_channels, final_bn
        w = [max(1, round(c * width)) for c in (64, 128, 256, 512)]
        conv1 = nn.Conv2d(in_channels, w[0], 3, padding=1, bias=False)
        self.layer_one = self._wrap_layer_one(conv1, mean, std)
        layers: list[nn.Module] = []
        in_planes = w[0]
        for i, planes in enumerate(w):
            for j in range(2):
                layers.append(PreActBlock(in_planes, planes, 2 if (i > 0 and j == 0) else 1))
                in_planes = planes
        if final_bn:
            layers += [nn.BatchNorm2d(in_planes), nn.ReLU()]
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_planes, num_classes)]
        self.other_layers = nn.Sequential(*layers)


class WideBasic(nn.Module):
    """TRADES/YOPO WRN BasicBlock: BN-ReLU, conv_s, BN-ReLU, (dropout), conv, plus the identity
    or a 1x1 conv of the activated input when the shape changes."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, drop: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, padding=1, bias=False)
        self.drop = drop
        self.equal = in_planes == out_planes
        self.shortcut = (
            None if self.equal else nn.Conv2d(in_planes, out_planes, 1, stride, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.bn1(x))
        out = F.relu(self.bn2(self.conv1(a)))
        if self.drop > 0:
            out = F.dropout(out, p=self.drop, training=self.training)
        out = self.conv2(out)
        return out + (x if self.equal else self.shortcut(a))


class WideResNet(LayerOneNet):
    """WRN-depth-widen (TRADES/YOPO ``wide_resnet.py``): f_0 = conv 3->16 3x3 (no bias), three
    stages of (depth-4)/6 WideBasic blocks (16k, 32k, 64k channels), BN-ReLU, avg-pool, FC.

    The official ``other_layers`` also registers an unused ``sub_block1`` (it only gets weight
    decay); ``unused_sub_block=True`` keeps it for parameter-count parity, default off.
    """

    def __init__(
        self,
        depth: int = 34,
        widen: int = 10,
        num_classes: int = 10,
        in_channels: int = 3,
        drop: float = 0.0,
        unused_sub_block: bool = False,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet depth={depth}: need depth = 6n + 4 (e.g. 16, 28, 34)")
        n = (depth - 4) // 6
        self.num_classes, self.in_channels = num_classes, in_channels
        ch = [16, 16 * widen, 32 * widen, 64 * widen]
        conv1 = nn.Conv2d(in_channels, ch[0], 3, padding=1, bias=False)
        self.layer_one = self._wrap_layer_one(conv1, mean, std)

        def stage(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(
                *[WideBasic(cin if i == 0 else cout, cout, stride if i == 0 else 1, drop)
                  for i in range(n)]
            )  # fmt: skip

        layers = [stage(ch[0], ch[1], 1), stage(ch[1], ch[2], 2), stage(ch[2], ch[3], 2)]
        layers += [nn.BatchNorm2d(ch[3]), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        layers.append(nn.Linear(ch[3], num_classes))
        self.other_layers = nn.Sequential(*layers)
        if unused_sub_block:
            self.unused_sub_block1 = stage(ch[0], ch[1], 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

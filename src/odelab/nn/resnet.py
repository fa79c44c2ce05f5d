"""Pre-activation CIFAR ResNet pieces (He et al. 2016, "Identity Mappings in Deep ResNets").

A *branch* computes only the residual f(u); how u and f(u) are combined (forward Euler, a linear
multi-step scheme, a stochastic step, ...) is the caller's business. This is what lets ResNet and
LM-ResNet share one code path.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class PreActBasicBranch(nn.Sequential):
    """f(u) = conv3x3(relu(bn(conv3x3_s(relu(bn(u))))))."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__(
            nn.BatchNorm2d(in_planes),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(planes),
            nn.ReLU(inplace=True),
            nn.Conv2d(planes, planes, 3, padding=1, bias=False),
        )
        self.in_planes, self.out_planes, self.stride = in_planes, planes, stride


class PreActBottleneckBranch(nn.Sequential):
    """f(u) = 1x1 (4p) <- 3x3_s (p) <- 1x1 (p), each conv preceded by BN-ReLU."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        out = planes * self.expansion
        super().__init__(
            nn.BatchNorm2d(in_planes),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_planes, planes, 1, bias=False),
            nn.BatchNorm2d(planes),
            nn.ReLU(inplace=True),
            nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(planes),
            nn.ReLU(inplace=True),
            nn.Conv2d(planes, out, 1, bias=False),
        )
        self.in_planes, self.out_planes, self.stride = in_planes, out, stride


class ProjectionShortcut(nn.Sequential):
    """P(u) = conv1x1_s(relu(bn(u))): the projection used where the state changes shape."""

    def __init__(self, in_planes: int, out_planes: int, stride: int = 2):
        super().__init__(
            nn.BatchNorm2d(in_planes),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False),
        )


@torch.no_grad()
def he_fanout_init_(module: nn.Module) -> None:
    """Convs ~ N(0, 2/(k*k*C_out)) (He et al., fan-out); BN weight 1, bias 0; Linear as is."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            m.weight.normal_(0.0, math.sqrt(2.0 / n))
        elif isinstance(m, nn.BatchNorm2d):
            m.weight.fill_(1.0)
            m.bias.zero_()


class BottleneckBranch(nn.Sequential):
    """Post-activation (grouped) bottleneck f(u), the ResNet-v1.5 / ResNeXt layout:

    f(u) = bn(conv1x1(relu(bn(gconv3x3_s(relu(bn(conv1x1(u)))))))) with D = C * floor(p * d / 64)
    inner channels in C groups (C = ``groups``, d = ``base_width``) and 4p output channels.
    ResNet (He et al.) is C = 1, d = 64; ResNeXt-29 8x64d (Xie et al.) is C = 8, d = 64. The
    stride sits on the 3x3 conv (torchvision's "v1.5"). The final ReLU comes after the skip sum,
    so the caller applies it.
    """

    expansion = 4

    def __init__(
        self, in_planes: int, planes: int, stride: int = 1, groups: int = 1, base_width: int = 64
    ):
        width = int(planes * base_width / 64) * groups
        out = planes * self.expansion
        super().__init__(
            nn.Conv2d(in_planes, width, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, stride=stride, padding=1, groups=groups, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, out, 1, bias=False),
            nn.BatchNorm2d(out),
        )
        self.in_planes, self.out_planes, self.stride, self.width = in_planes, out, stride, width


class ConvBNShortcut(nn.Sequential):
    """P(u) = bn(conv1x1_s(u)): the post-activation projection ("option B") where shapes change."""

    def __init__(self, in_planes: int, out_planes: int, stride: int = 1):
        super().__init__(
            nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False),
            nn.BatchNorm2d(out_planes),
        )

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

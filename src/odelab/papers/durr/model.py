"""DURR's networks: the recurrent restoration unit, the stopping policy (Q-network), DnCNN-B.

Restoration dynamic (shared weights theta for every step n):

    x_0 = y,    x_{n+1} = x_n - F_theta(x_n)            (residual, ``reinject_input=False``)
                x_{n+1} = x_n - F_theta([x_n, y])       (``reinject_input=True``: y re-enters)

F_theta is a plain conv net: conv-ReLU, (layers-2) x (conv-ReLU), conv. With 7 layers of 64
3x3 channels it has 185,857 parameters (spec target about 1.8e5 [Q]).

Policy (the stopping time): Q_phi(x_n, y, n) in R^2 = (Q(stop), Q(continue)), a strided conv net
on the channels [x_n, y - x_n, n / step_cap] with global average pooling and a linear head.
"""

from __future__ import annotations

import torch
from torch import nn

STOP, CONTINUE = 0, 1


def conv_stack(
    in_ch: int, out_ch: int, channels: int, layers: int, kernel: int, bn: bool = False
) -> nn.Sequential:
    """conv-ReLU, (layers-2) x conv-[BN]-ReLU, conv: the DnCNN-shaped body (``layers >= 2``)."""
    if layers < 2:
        raise ValueError(f"layers={layers}: a conv stack needs at least 2 layers")
    pad = kernel // 2
    mods: list[nn.Module] = [nn.Conv2d(in_ch, channels, kernel, padding=pad), nn.ReLU(True)]
    for _ in range(layers - 2):
        mods.append(nn.Conv2d(channels, channels, kernel, padding=pad, bias=not bn))
        if bn:
            mods.append(nn.BatchNorm2d(channels))
        mods.append(nn.ReLU(True))
    mods.append(nn.Conv2d(channels, out_ch, kernel, padding=pad))
    return nn.Sequential(*mods)


class RecurrentRestorer(nn.Module):
    """The restoration unit: one step ``x -> x - F_theta(x[, y])`` applied repeatedly from y."""

    def __init__(
        self,
        layers: int = 7,
        channels: int = 64,
        kernel: int = 3,
        in_channels: int = 1,
        reinject_input: bool = False,
    ):
        super().__init__()
        self.reinject_input = reinject_input
        in_ch = in_channels * (2 if reinject_input else 1)
        self.f = conv_stack(in_ch, in_channels, channels, layers, kernel)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One step of the dynamic: x_{n+1} from x_n (and y if re-injected)."""
        inp = torch.cat([x, y], 1) if self.reinject_input else x
        return x - self.f(inp)

    def forward(self, y: torch.Tensor, steps: torch.Tensor | int) -> torch.Tensor:
        """x_T with T = ``steps`` (an int, or one int per image: image b stops at steps[b])."""
        if isinstance(steps, int):
            steps = torch.full((y.shape[0],), steps, device=y.device)
        x = y
        for n in range(int(steps.max()) if steps.numel() else 0):
            run = (steps > n).view(-1, 1, 1, 1)
            x = torch.where(run, self.step(x, y), x)
        return x

    def trajectory(self, y: torch.Tensor, steps: int) -> list[torch.Tensor]:
        """[x_0 = y, x_1, ..., x_steps]."""
        xs = [y]
        for _ in range(steps):
            xs.append(self.step(xs[-1], y))
        return xs


class PolicyNet(nn.Module):
    """Q-network of the stopping policy: Q(x_n, y, n) = (Q(stop), Q(continue))."""

    def __init__(self, layers: int = 4, channels: int = 64, kernel: int = 3, step_cap: int = 20):
        super().__init__()
        if layers < 1:
            raise ValueError(f"policy layers={layers} must be >= 1")
        self.step_cap = step_cap
        mods: list[nn.Module] = []
        in_ch = 3
        for i in range(layers):
            mods += [nn.Conv2d(in_ch, channels, kernel, stride=1 if i == 0 else 2), nn.ReLU(True)]
            in_ch = channels
        self.body = nn.Sequential(*mods)
        self.head = nn.Linear(channels, 2)

    def forward(self, x: torch.Tensor, y: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        t = (n.float() / self.step_cap).view(-1, 1, 1, 1).expand_as(x)
        h = self.body(torch.cat([x, y - x, t], 1))
        return self.head(h.mean(dim=(2, 3)))


class DnCNN(nn.Module):
    """DnCNN (Zhang et al. 2017): ``x = y - R(y)``, R = conv-ReLU, (depth-2) conv-BN-ReLU, conv.

    DnCNN-B (blind) uses depth 20 with 64 channels (667,073 parameters).
    """

    def __init__(self, depth: int = 20, channels: int = 64, kernel: int = 3, in_channels: int = 1):
        super().__init__()
        self.r = conv_stack(in_channels, in_channels, channels, depth, kernel, bn=True)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y - self.r(y)


def num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())

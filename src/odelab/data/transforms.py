"""Batch-wise image transforms on tensors: they run on whatever device the batch is on.

Images are ``[B, C, H, W]``; every function works on the whole batch at once (no per-sample
Python loop) and on any dtype, so crops and flips can run on the uint8 batch before it is
converted to float.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

PAD_MODES = ("zeros", "reflect")


def crop_flip(
    x: torch.Tensor,
    top: torch.Tensor,
    left: torch.Tensor,
    flipped: torch.Tensor,
    pad: int,
    pad_mode: str = "zeros",
) -> torch.Tensor:
    """Crop image ``b`` at ``(top[b], left[b])`` from itself padded by ``pad`` pixels per side.

    The padding is ``"zeros"`` or ``"reflect"`` (mirror without repeating the edge, as
    ``torch.nn.functional.pad``); the crop has the original size, and images with ``flipped[b]``
    are then mirrored left-right. Offsets are in padded coordinates, ``0 <= top, left <= 2*pad``,
    so ``top == left == pad`` is the identity. Done as one gather: the padded batch is never built.
    """
    if pad_mode not in PAD_MODES:
        raise ValueError(f"pad_mode={pad_mode!r}: use one of {PAD_MODES}")
    b, c, h, w = x.shape
    if pad_mode == "reflect" and pad >= min(h, w):
        raise ValueError(f"reflect padding needs pad < image size; got pad={pad} for {h}x{w}")
    dev = x.device
    rows = top.to(dev)[:, None] - pad + torch.arange(h, device=dev)  # [B, H] source rows
    cols = left.to(dev)[:, None] - pad + torch.arange(w, device=dev)  # [B, W] source columns
    cols = torch.where(flipped.to(dev)[:, None], cols.flip(1), cols)
    if pad_mode == "reflect":
        rows, cols = _reflect(rows, h), _reflect(cols, w)
    else:
        inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
        rows, cols = rows.clamp(0, h - 1), cols.clamp(0, w - 1)
    out = x[
        torch.arange(b, device=dev)[:, None, None, None],
        torch.arange(c, device=dev)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]
    if pad_mode == "zeros":
        out = out.masked_fill(~inside[:, None], 0)
    return out


def _reflect(i: torch.Tensor, n: int) -> torch.Tensor:
    """Map indices in ``[-(n-1), 2(n-1)]`` into ``[0, n)`` by mirroring at the edges."""
    return torch.where(i < 0, -i, torch.where(i > n - 1, 2 * (n - 1) - i, i))


def random_crop_flip(
    x: torch.Tensor,
    pad: int,
    pad_mode: str = "zeros",
    flip: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The CIFAR augmentation: pad, random crop back to the original size, random h-flip.

    Each image gets its own offsets, uniform over the ``(2*pad+1)**2`` crops, and (if ``flip``)
    is mirrored with probability 1/2. The draws come from ``generator`` (on ``x``'s device) in
    the order top, left, flip, so a seeded generator gives a reproducible batch.
    """
    b, dev = x.shape[0], x.device
    top = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=dev)
    left = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=dev)
    if flip:
        flipped = torch.rand(b, generator=generator, device=dev) < 0.5
    else:
        flipped = torch.zeros(b, dtype=torch.bool, device=dev)
    return crop_flip(x, top, left, flipped, pad, pad_mode)


def normalize(
    x: torch.Tensor,
    mean: Sequence[float] | torch.Tensor,
    std: Sequence[float] | torch.Tensor,
) -> torch.Tensor:
    """uint8 images -> float32 in [0, 1] -> ``(x - mean) / std`` per channel.

    A floating-point ``x`` is taken to be in [0, 1] already. ``mean``/``std`` may be tensors
    already on ``x``'s device (``[C]`` or ``[1, C, 1, 1]``): then nothing is copied to the device.
    """
    x = x.float().div_(255) if x.dtype == torch.uint8 else x.float()
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s

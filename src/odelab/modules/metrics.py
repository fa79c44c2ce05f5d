"""Epoch metrics whose ``update`` never synchronises the device (one sync at ``compute``).

torchmetrics' ``MeanMetric`` checks every update for NaN (``if nans.any()``: a device sync per
step; its ``nan_strategy="disable"`` drops the weights instead) and ``MulticlassAccuracy``
validates its inputs and counts with ``torch.bincount`` (a sync on CUDA). These two keep the
same states and results with tensor-only updates; under DDP they reduce by sum like torchmetrics.
"""

from __future__ import annotations

import torch
from torchmetrics import MeanMetric, Metric


class SyncFreeMean(MeanMetric):
    """Weighted mean ``sum(w * x) / sum(w)`` without the per-update NaN check: a NaN input makes
    the mean NaN (visible) instead of being dropped with a warning."""

    def _cast_and_nan_check_input(self, x, weight=None):
        if not isinstance(x, torch.Tensor):
            x = torch.as_tensor(x, dtype=self.dtype, device=self.device)
        weight = torch.ones_like(x) if weight is None else weight
        if not isinstance(weight, torch.Tensor):
            weight = torch.as_tensor(weight, dtype=self.dtype, device=self.device)
        return x.to(self.dtype), weight.to(self.dtype)


class SyncFreeAccuracy(Metric):
    """Top-1 accuracy ``#{argmax(logits) == y} / #y`` (micro average), counts kept on device."""

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("correct", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        preds = logits.argmax(dim=1) if logits.dim() == target.dim() + 1 else logits
        self.correct += (preds == target).sum()
        self.total += target.numel()

    def compute(self) -> torch.Tensor:
        return self.correct.float() / self.total

"""Wall time per training epoch (validation excluded), for cost tables and speed checks."""

from __future__ import annotations

import time

import lightning.pytorch as pl
import torch


class EpochTimer(pl.Callback):
    """Log ``time/train_epoch_s``: seconds from the first to the end of the last training batch.

    One device synchronisation per epoch, none per step.
    """

    def __init__(self) -> None:
        self._t0: float | None = None
        self.epoch_times: list[float] = []

    @staticmethod
    def _sync(pl_module: pl.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._sync(pl_module)
        self._t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self._t0 is None:
            return
        self._sync(pl_module)
        dt = time.perf_counter() - self._t0
        self.epoch_times.append(dt)
        pl_module.log("time/train_epoch_s", dt, sync_dist=False, rank_zero_only=True)

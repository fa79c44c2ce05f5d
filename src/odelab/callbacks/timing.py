"""Wall time per training epoch (validation excluded), for cost tables and speed checks."""

from __future__ import annotations

import sys
import time
from pathlib import Path

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


class FirstStepStamp(pl.Callback):
    """Log the Unix time at the start of the first training step (``first_train_step_unix=<t>``
    on stderr and in the log) and, if ``path`` is set, write it there: what
    ``benchmarks/startup.py`` subtracts the process start from. Costs nothing after step one."""

    def __init__(self, path: str | None = None) -> None:
        self.path = path
        self.done = False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.done:
            return
        self.done = True
        t = time.time()
        print(f"first_train_step_unix={t:.6f}", file=sys.stderr, flush=True)
        if self.path:
            Path(self.path).write_text(f"{t:.6f}\n")

"""A callback for the SLURM tests, imported by jobs (``PYTHONPATH=tests``); imports nothing from
the test suite, so a job that loads it computes exactly what a job without it computes."""

from __future__ import annotations

import os
import time
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Checkpoint


class PauseOnFirstAttempt(Checkpoint):
    """At the end of training epoch ``epoch`` of a job's first attempt (``SLURM_RESTART_COUNT``
    unset), write the job id to ``flag`` and wait for SIGTERM (at most ``timeout`` s), so that a
    test can interrupt the job mid-training at a known point. Does nothing when not ``enabled``
    or on a restarted attempt.

    A ``Checkpoint`` subclass only so that Lightning orders it after ``ModelCheckpoint``: the
    epoch's checkpoint is on disk when the pause starts.
    """

    def __init__(self, flag: str, epoch: int = 0, timeout: float = 120, enabled: bool = True):
        self.flag, self.epoch, self.timeout, self.enabled = Path(flag), epoch, timeout, enabled

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        first = os.environ.get("SLURM_RESTART_COUNT", "0") == "0"
        if not (self.enabled and first and trainer.current_epoch == self.epoch):
            return
        self.flag.write_text(os.environ.get("SLURM_JOB_ID", ""))
        t0 = time.monotonic()
        while not trainer.received_sigterm and time.monotonic() - t0 < self.timeout:
            time.sleep(0.1)

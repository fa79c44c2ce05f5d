"""Callbacks that inject faults into runs started as subprocesses (``PYTHONPATH=tests``);
imports nothing from the test suite."""

from __future__ import annotations

import os
import signal
import signal as _signal

import lightning.pytorch as pl


class SignalAt(pl.Callback):
    """Send this process ``signal`` (``TERM``, ``INT``, ``KILL``) after training step ``step``,
    as a cluster (SIGTERM), a user (Ctrl-C) or the OOM killer / a node failure (SIGKILL) would."""

    def __init__(self, step: int, signal: str = "TERM"):
        self.step, self.signal = step, signal
        if signal == "INT":  # a shell's background job starts with SIGINT ignored: as in a
            _signal.signal(_signal.SIGINT, _signal.default_int_handler)  # terminal, Ctrl-C

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), getattr(signal, f"SIG{self.signal}"))

"""Callbacks that make runs resumable and interruptible."""

from __future__ import annotations

import logging
import random
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException

from odelab.utils.checkpoint import save_hpc_checkpoint

log = logging.getLogger(__name__)


class RNGStateCallback(pl.Callback):
    """Store the Python, NumPy, torch and CUDA RNG states in every checkpoint; restore on resume.

    Data order and augmentation are already pure functions of (seed, epoch, step); this covers
    everything else that draws from the global generators (e.g. stochastic depth).
    """

    def state_dict(self) -> dict[str, Any]:
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        state = {  # plain types and tensors only: loadable with torch.load(weights_only=True)
            "python": random.getstate(),
            "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        random.setstate(state_dict["python"])
        kind, keys, pos, has_gauss, cached = state_dict["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(state_dict["torch"].cpu())
        if "cuda" in state_dict and torch.cuda.is_available():
            states = state_dict["cuda"]
            if len(states) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(states)


class StopAfterEpochs(pl.Callback):
    """End this job after ``epochs`` epochs (checkpoints written), leaving ``max_epochs`` and so
    every epoch-based schedule untouched: the rest is done by a later job with ``ckpt_path``."""

    def __init__(self, epochs: int):
        self.epochs = epochs

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


class PreemptionCheckpoint(pl.Callback):
    """On SIGTERM during ``fit`` save ``<default_root_dir>/hpc_ckpt_<n>.ckpt`` before exiting.

    SLURM sends SIGTERM on preemption, requeue, cancel and at the time limit; Lightning stops
    after the batch and this saves its state atomically, so a restart loses at most one batch.
    Requeueing is ``--signal=USR1@90``'s job (``slurm/README.md``): a SIGTERM may be a cancel."""

    def __init__(self) -> None:
        self.saved: dict[int, str] = {}  # id(exception) -> the checkpoint saved for it

    def save_for(self, trainer: pl.Trainer, exception: BaseException) -> str | None:
        """Save once per SIGTERM during fit (the results record asks before ``on_exception``
        runs) and return the path; ``None`` for any other exception."""
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != "fit":
            return None
        if id(exception) not in self.saved:
            self.saved[id(exception)] = save_hpc_checkpoint(trainer, "SIGTERM")
        return self.saved[id(exception)]

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception) -> None:
        self.save_for(trainer, exception)

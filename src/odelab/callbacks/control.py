"""Callbacks that make runs resumable and interruptible."""

from __future__ import annotations

import random
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch


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

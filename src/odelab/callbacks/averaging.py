"""Checkpoint averaging (fairseq ``scripts/average_checkpoints.py``): the element-wise mean of
the parameters of the last N checkpoints, loaded into the model at the end of fit so that
``test_ckpt=last`` evaluates the average."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import lightning.pytorch as pl
import torch

log = logging.getLogger(__name__)


def average_state_dicts(states: Sequence[dict]) -> dict:
    """Mean of each floating-point tensor over ``states``; other entries from the last one."""
    if not states:
        raise ValueError("nothing to average: no checkpoints")
    keys = list(states[-1])
    for s in states:
        if list(s) != keys:
            raise ValueError("checkpoints to average have different parameter names")
    out = {}
    for k in keys:
        v = states[-1][k]
        if torch.is_floating_point(v):
            out[k] = sum(s[k].double() for s in states).div(len(states)).to(v.dtype)
        else:
            out[k] = v.clone()
    return out


def average_checkpoints(paths: Sequence[str | Path]) -> dict:
    """Average the ``state_dict`` of Lightning checkpoint files (or plain state-dict files)."""
    states = []
    for p in paths:
        ck = torch.load(p, map_location="cpu", weights_only=True)
        states.append(ck.get("state_dict", ck))
    return average_state_dicts(states)


class AverageLastCheckpoints(pl.Callback):
    """Keep the weights of the last ``n`` epochs (``every_n_epochs`` apart) in ``dirpath``; at
    the end of fit load their average into the model and save it as ``averaged.pt``.
    ``n <= 1`` does nothing (the paper's scripts do not average)."""

    def __init__(self, n: int = 5, dirpath: str = "checkpoints/avg", every_n_epochs: int = 1):
        self.n, self.dirpath, self.every = n, Path(dirpath), every_n_epochs
        self.kept: list[Path] = []

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.n <= 1 or (trainer.current_epoch + 1) % self.every or trainer.sanity_checking:
            return
        p = self.dirpath / f"weights_epoch{trainer.current_epoch:03d}.pt"
        self.kept.append(p)
        if trainer.is_global_zero:
            self.dirpath.mkdir(parents=True, exist_ok=True)
            torch.save({k: v.detach().cpu() for k, v in pl_module.state_dict().items()}, p)
        while len(self.kept) > self.n:
            old = self.kept.pop(0)
            if trainer.is_global_zero:
                old.unlink(missing_ok=True)

    def on_fit_end(self, trainer, pl_module) -> None:
        if self.n <= 1 or not self.kept:
            return
        trainer.strategy.barrier()  # rank 0 wrote the files
        avg = average_checkpoints(self.kept)
        pl_module.load_state_dict(avg)
        if trainer.is_global_zero:
            torch.save(avg, self.dirpath / "averaged.pt")
        log.info("loaded the average of %d checkpoints: %s", len(self.kept), self.kept)

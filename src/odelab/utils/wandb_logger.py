"""Lightning's W&B logger, made unable to break a run."""

from __future__ import annotations

import functools
import logging

from lightning.pytorch.loggers import WandbLogger as _WandbLogger

log = logging.getLogger(__name__)


def _guarded(method):
    """Run ``method``; after the first W&B failure warn once and skip every later W&B call."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        if self._wandb_broken:
            return None
        try:
            return method(self, *args, **kwargs)
        except Exception as e:
            self._wandb_broken = True
            log.warning(
                "W&B failed (%s: %s); no more W&B logging in this run "
                "(results.json and checkpoints are unaffected)",
                type(e).__name__,
                e,
            )
            return None

    return wrapper


class WandbLogger(_WandbLogger):
    """``lightning.pytorch.loggers.WandbLogger`` whose logging calls never raise.

    On preemption SLURM sends SIGTERM to every process of the job, the W&B service included: it
    exits at once, and the metrics the run logs while it checkpoints and stops would raise
    (``ConnectionResetError``) and turn a clean preemption into a crash without a checkpoint.
    Here the first failure is a warning and W&B is off for the rest of this attempt; the
    requeued attempt continues the same W&B run (same id, ``resume: allow``).
    """

    _wandb_broken = False

    log_metrics = _guarded(_WandbLogger.log_metrics)
    log_hyperparams = _guarded(_WandbLogger.log_hyperparams)
    after_save_checkpoint = _guarded(_WandbLogger.after_save_checkpoint)
    finalize = _guarded(_WandbLogger.finalize)
